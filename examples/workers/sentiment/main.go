// The sentiment worker does real inference with no download: a linear
// bag-of-words model, shipped in model.json, scores a text as positive or
// negative.
//
// Input: {"text": "..."} or a plain JSON string. Result: {"label":
// "positive"|"negative", "score": the probability of positive}.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"math"
	"strings"
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

func main() {
	var m model
	if err := json.Unmarshal(modelJSON, &m); err != nil {
		panic("model.json: " + err.Error())
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
