// The sleep worker does what the service kinfer replaced did: it waits (5 s by
// default) and answers "OK". It is the default model's worker in the samples
// and the local stack.
package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/kinfer/kinfer/pkg/worker"
)

func main() {
	delay := flag.Duration("delay", 5*time.Second, "how long to wait before answering")
	answer := flag.String("answer", "OK", "the result to answer with")
	flag.Parse()

	worker.Run(func(ctx context.Context, _ worker.Request) (any, error) {
		select {
		case <-time.After(*delay):
			return *answer, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("stopped after less than %s: %w", *delay, ctx.Err())
		}
	})
}
