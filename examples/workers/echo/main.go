// The echo worker answers with its input, unchanged: handy to see what a
// worker receives. With --request it answers with everything it was given:
// {"id", "model", "input"}.
package main

import (
	"context"
	"flag"

	"github.com/kinfer/kinfer/pkg/worker"
)

func main() {
	whole := flag.Bool("request", false, `answer {"id", "model", "input"} instead of the input alone`)
	flag.Parse()

	worker.Run(func(_ context.Context, req worker.Request) (any, error) {
		if *whole {
			return map[string]any{"id": req.ID, "model": req.Model, "input": req.Input}, nil
		}
		return req.Input, nil
	})
}
