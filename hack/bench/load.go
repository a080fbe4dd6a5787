package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kinfer/kinfer/internal/shim"
)

var httpClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256},
}

// parallel runs do(i) for i in [0, n) on workers goroutines and returns the
// first error.
func parallel(n, workers int, do func(i int) error) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := do(i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// steady runs do(i) for i in [0, n) at rate per second, each in its own
// goroutine, and waits for them all.
func steady(n int, rate float64, do func(i int) error) error {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		wg.Go(func() {
			if err := do(i); err != nil {
				once.Do(func() { firstErr = err })
			}
		})
	}
	wg.Wait()
	return firstErr
}

// submit POSTs the original service's body to a shim and marks when it was
// sent and when the shim answered (the request is then stored).
func submit(ctx context.Context, cl *cluster, namespace, id, callbackURL string, tl *timeline) error {
	body, err := json.Marshal(map[string]string{"id": id, "callback_url": callbackURL})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		"http://"+cl.shimAddr+"/v1/namespaces/"+namespace+"/inferences", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+cl.shimToken)
	name := shim.ObjectName(id)
	if tl != nil {
		tl.mark(name, "submit", time.Now())
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("the shim answered %d to %s", resp.StatusCode, id)
	}
	if tl != nil {
		tl.mark(name, "stored", time.Now())
	}
	return nil
}

// submitAll submits n requests named prefix-NNNNN through the shim, from
// clients in parallel, with callbacks to rcv, and waits for every callback;
// it returns how many were called back per second from the first submit.
func submitAll(ctx context.Context, cl *cluster, namespace, prefix string, n, clients int, rcv *receiver, tl *timeline) (float64, error) {
	start := time.Now()
	err := parallel(n, clients, func(i int) error {
		return submit(ctx, cl, namespace, fmt.Sprintf("%s-%05d", prefix, i), rcv.url+"/fast", tl)
	})
	if err != nil {
		return 0, err
	}
	if err := waitFor(ctx, "callbacks", 10*time.Minute, func() bool { return tl.count("callback") == n }); err != nil {
		return 0, fmt.Errorf("%w (%v)", err, tl)
	}
	return float64(n) / tl.last("callback").Sub(start).Seconds(), nil
}
