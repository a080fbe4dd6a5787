// The echo worker answers with its input, unchanged: handy to see what a
// worker receives.
package main

import (
	"context"

	"github.com/kinfer/kinfer/pkg/worker"
)

func main() {
	worker.Run(func(_ context.Context, req worker.Request) (any, error) {
		return req.Input, nil
	})
}
