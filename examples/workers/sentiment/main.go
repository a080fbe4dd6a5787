// The sentiment worker does real inference with no download: a linear
// bag-of-words model, shipped in model.json, scores a text as positive or
// negative.
//
// Input: {"text": "..."} or a plain JSON string. Result: {"label":
// "positive"|"negative", "score": the probability of positive}.
//
// It loads its model once per process, before it takes any request, and says
// so on stderr in one line, "loaded model <name> (<n> weights) in <time>":
// run as a pool, a pod loads it once however many requests it serves.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/kinfer/kinfer/pkg/worker"
)

//go:embed model.json
var modelJSON []byte

type model struct {
	Name      string             `json:"name"`
	Bias      float64            `json:"bias"`
	Negations []string           `json:"negations"`
	Weights   map[string]float64 `json:"weights"`
}

// loadedMessage starts the line the worker writes to stderr each time it
// loads its model: tests count these lines.
const loadedMessage = "loaded model "

// negationSpan is how many words after a negation have their weight flipped.
const negationSpan = 2

// Result is what the worker answers.
type Result struct {
	Label string  `json:"label"`
	Score float64 `json:"score"`
	Model string  `json:"model"`
}

func (m *model) predict(text string) Result {
	negations := make(map[string]bool, len(m.Negations))
	for _, n := range m.Negations {
		negations[n] = true
	}
	logit, flip := m.Bias, 0
	for _, word := range tokens(text) {
		if negations[word] {
			flip = negationSpan
			continue
		}
		weight := m.Weights[word]
		if flip > 0 {
			weight, flip = -weight, flip-1
		}
		logit += weight
	}
	score := 1 / (1 + math.Exp(-logit))
	label := "negative"
	if score >= 0.5 {
		label = "positive"
	}
	return Result{Label: label, Score: math.Round(score*1000) / 1000, Model: m.Name}
}

// tokens splits text into lowercase words, keeping apostrophes inside words.
func tokens(text string) []string {
	return strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && r != '\''
	})
}

// load decodes the embedded model and reports on stderr how long it took.
func load(stderr io.Writer) (*model, error) {
	start := time.Now()
	var m model
	if err := json.Unmarshal(modelJSON, &m); err != nil {
		return nil, fmt.Errorf("model.json: %w", err)
	}
	_, _ = fmt.Fprintf(stderr, "%s%s (%d weights) in %s\n", loadedMessage, m.Name, len(m.Weights), time.Since(start).Round(time.Microsecond))
	return &m, nil
}

func main() {
	m, err := load(os.Stderr)
	if err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "sentiment:", err)
		os.Exit(1)
	}
	worker.Run(func(_ context.Context, req worker.Request) (any, error) {
		var in struct {
			Text string `json:"text"`
		}
		if err := json.Unmarshal(req.Input, &in.Text); err != nil {
			if err := req.Decode(&in); err != nil {
				return nil, err
			}
		}
		if strings.TrimSpace(in.Text) == "" {
			return nil, worker.BadInput(`input must be {"text": "..."} or a string, with some text`)
		}
		return m.predict(in.Text), nil
	})
}
