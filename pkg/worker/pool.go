package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The work API's terms (docs/workers.md, "Pools").
const (
	// takeWaitSeconds is how long a take waits for work before it answers
	// with none.
	takeWaitSeconds = 20
	// defaultLeaseSeconds stands in for a lease time the manager left out.
	defaultLeaseSeconds = 30
	// reportTimeout bounds one attempt to report an outcome.
	reportTimeout = 30 * time.Second
	// maxAnswerBytes bounds what is read of an answer: a take's items carry
	// inputs of up to 64 KiB each.
	maxAnswerBytes = 64 << 20
)

var (
	// errRefused: the work API refuses this pod, and asking again will not
	// change that.
	errRefused = errors.New("the work API refused this pod")
	// errLeaseGone is why a handler's context ends when the manager took the
	// request back.
	errLeaseGone = errors.New("the request's lease is gone: it was canceled, timed out or handed out again")
	// errTimedOut is why a handler's context ends when the request's timeout
	// has passed.
	errTimedOut = errors.New("the request's timeout has passed")
)

// pool serves requests from the manager's work API until the manager lets
// the pod go or the context ends (SIGTERM).
type pool struct {
	base   string // KINFER_WORK_URL without a trailing slash
	token  string
	pod    string
	model  string
	max    int // requests per take
	client *http.Client
	// minBackoff and maxBackoff bound the wait between attempts while the
	// manager cannot answer: it is starting, is not the leader, or nothing
	// listens.
	minBackoff, maxBackoff time.Duration

	logMu  sync.Mutex // the renewals log from their own goroutine
	stderr io.Writer
}

func newPool(getenv func(string) string, size int, stderr io.Writer) *pool {
	return &pool{
		base:       strings.TrimSuffix(getenv(EnvWorkURL), "/"),
		token:      getenv(EnvWorkToken),
		pod:        getenv(EnvPodName),
		model:      getenv(EnvModel),
		max:        size,
		client:     &http.Client{},
		minBackoff: 500 * time.Millisecond,
		maxBackoff: 30 * time.Second,
		stderr:     stderr,
	}
}

// batchSize reads KINFER_BATCH_SIZE, which the manager sets from the model.
func batchSize(getenv func(string) string, stderr io.Writer) int {
	value := getenv(EnvBatchSize)
	if value == "" {
		return 1
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < 1 {
		_, _ = fmt.Fprintf(stderr, "kinfer worker: %s=%q is not a positive number; taking one request at a time\n", EnvBatchSize, value)
		return 1
	}
	return n
}

// workItem is one request as a take hands it out.
type workItem struct {
	Lease          string          `json:"lease"`
	ID             string          `json:"id"`
	Name           string          `json:"name"`
	Input          json.RawMessage `json:"input"`
	LeaseSeconds   int             `json:"lease_seconds"`
	TimeoutSeconds int             `json:"timeout_seconds"`
}

func (w workItem) String() string {
	if w.Name != "" {
		return "request " + w.Name
	}
	return "request " + w.ID
}

func (w workItem) request(model string) Request {
	input := w.Input
	if len(input) == 0 {
		input = json.RawMessage("null")
	}
	return Request{ID: w.ID, Name: w.Name, Model: model, Input: input}
}

type takeAnswer struct {
	Items []workItem `json:"items"`
	Exit  bool       `json:"exit"`
}

func (p *pool) run(ctx context.Context, handle BatchHandler) int {
	for ctx.Err() == nil {
		take, err := p.take(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			p.logf("%v", err)
			return ExitFailed
		}
		if err := p.serveBatch(ctx, handle, take.Items); err != nil {
			p.logf("%v", err)
			return ExitFailed
		}
		if take.Exit {
			p.logf("the manager needs this pod no more; exiting")
			return ExitOK
		}
	}
	p.logf("stopping: the pod is being terminated")
	return ExitOK
}

func (p *pool) take(ctx context.Context) (*takeAnswer, error) {
	body, err := json.Marshal(map[string]int{"max": p.max, "wait_seconds": takeWaitSeconds})
	if err != nil {
		return nil, err
	}
	ans, err := p.sendRetrying(ctx, ctx, "/take", body, (takeWaitSeconds+15)*time.Second)
	if err != nil {
		return nil, err
	}
	if ans.status != http.StatusOK {
		return nil, refused("/take", ans)
	}
	var take takeAnswer
	if err := json.Unmarshal(ans.body, &take); err != nil {
		return nil, fmt.Errorf("the work API's answer to /take is not a take's answer: %v", err)
	}
	return &take, nil
}

// serveBatch has handle work on items while their leases are renewed, then
// reports each outcome. Its error means the pod must stop.
func (p *pool) serveBatch(stop context.Context, handle BatchHandler, items []workItem) error {
	if len(items) == 0 {
		return nil
	}
	reqs := make([]Request, len(items))
	for i, item := range items {
		reqs[i] = item.request(p.model)
	}
	work, cancel := context.WithCancelCause(stop)
	defer cancel(nil)
	if deadline, ok := latestDeadline(items, time.Now()); ok {
		var cancelTimeout context.CancelFunc
		work, cancelTimeout = context.WithDeadlineCause(work, deadline, errTimedOut)
		defer cancelTimeout()
	}

	// The renewals keep on after SIGTERM: a handler that still finishes in
	// time gets its results reported.
	renewing, stopRenewing := context.WithCancel(context.WithoutCancel(stop))
	leases := slices.Clone(items)
	gone := make([]bool, len(items))
	var wg sync.WaitGroup
	wg.Go(func() { p.renew(renewing, leases, gone, func() { cancel(errLeaseGone) }) })
	outs := outcomes(work, handle, reqs)
	stopRenewing()
	wg.Wait()

	terminated := stop.Err() != nil
	for i, item := range items {
		if gone[i] {
			p.logf("dropped the outcome of %s: its lease is gone", item)
			continue
		}
		if err := p.report(stop, item, outs[i], terminated); err != nil {
			return err
		}
	}
	return nil
}

// latestDeadline is when the last of the items times out; none when one of
// them has no timeout.
func latestDeadline(items []workItem, now time.Time) (time.Time, bool) {
	latest := 0
	for _, item := range items {
		if item.TimeoutSeconds <= 0 {
			return time.Time{}, false
		}
		latest = max(latest, item.TimeoutSeconds)
	}
	return now.Add(time.Duration(latest) * time.Second), true
}

// renew renews each lease a third of its lease time after the last renewal
// until ctx ends, marking in gone the leases the manager took back; once all
// are gone, it calls allGone.
func (p *pool) renew(ctx context.Context, items []workItem, gone []bool, allGone func()) {
	for {
		timer := time.NewTimer(renewInterval(items, gone))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		for i := range items {
			if !gone[i] {
				gone[i] = p.renewLease(ctx, &items[i])
			}
		}
		if !slices.Contains(gone, false) {
			allGone()
			return
		}
	}
}

// renewLease renews one lease, keeping the lease time the manager answers,
// and reports whether the lease is gone. Any other failure is left to the
// next renewal: the lease lasts three times as long as the wait.
func (p *pool) renewLease(ctx context.Context, item *workItem) (gone bool) {
	ans, err := p.send(ctx, leasePath(item.Lease, "renew"), nil, leaseTime(item.LeaseSeconds))
	switch {
	case err != nil:
		if ctx.Err() == nil {
			p.logf("cannot renew the lease of %s: %v", item, err)
		}
	case ans.status == http.StatusGone:
		p.logf("stopping %s: %v", item, errLeaseGone)
		return true
	case ans.status == http.StatusOK:
		var renewed struct {
			LeaseSeconds int `json:"lease_seconds"`
		}
		if json.Unmarshal(ans.body, &renewed) == nil && renewed.LeaseSeconds > 0 {
			item.LeaseSeconds = renewed.LeaseSeconds
		}
	default:
		p.logf("cannot renew the lease of %s: %s", item, ans)
	}
	return false
}

// renewInterval is a third of the shortest lease time still held.
func renewInterval(items []workItem, gone []bool) time.Duration {
	shortest := time.Duration(math.MaxInt64)
	for i, item := range items {
		if !gone[i] {
			shortest = min(shortest, leaseTime(item.LeaseSeconds))
		}
	}
	return shortest / 3
}

func leaseTime(seconds int) time.Duration {
	if seconds <= 0 {
		seconds = defaultLeaseSeconds
	}
	return time.Duration(seconds) * time.Second
}

// report sends an outcome: the result, or the error. After SIGTERM an error
// is not sent, since it most likely says the work was stopped, and a request
// whose lease expires is handed out again. Its error means the pod must stop.
func (p *pool) report(stop context.Context, item workItem, out Outcome, terminated bool) error {
	path, body, failure := outcomeCall(item, out)
	if failure != nil {
		if terminated {
			p.logf("abandoned %s as the pod is being terminated (%v); it will be handed out again", item, failure)
			return nil
		}
		p.logf("%s failed: %v", item, failure)
	}
	ans, err := p.sendRetrying(context.WithoutCancel(stop), stop, path, body, reportTimeout)
	switch {
	case err != nil:
		p.logf("cannot report the outcome of %s: %v", item, err)
	case ans.status/100 == 2:
	case ans.status == http.StatusGone:
		p.logf("dropped the outcome of %s: the request has already ended", item)
	case ans.status == http.StatusUnauthorized:
		return refused(path, ans)
	default:
		p.logf("the work API refused the outcome of %s: %s", item, ans)
	}
	return nil
}

// outcomeCall is the call that reports out, and the error it reports, if any:
// out's own, or why its result cannot be sent.
func outcomeCall(item workItem, out Outcome) (path string, body []byte, failure error) {
	failure = out.Err
	if failure == nil {
		encoded, err := encodeResult(out.Result, MaxPoolResultBytes)
		switch {
		case errors.Is(err, errResultTooLarge):
			failure = fmt.Errorf("the result is %d bytes of JSON; the work API takes at most %d bytes, "+
				"so store large results elsewhere and return a reference", len(encoded), MaxPoolResultBytes)
		case err != nil:
			failure = err
		default:
			return leasePath(item.Lease, "result"), encoded, nil
		}
	}
	// A string and a bool always encode.
	body, _ = json.Marshal(struct {
		Message  string `json:"message"`
		BadInput bool   `json:"bad_input"`
	}{Message: failure.Error(), BadInput: IsBadInput(failure)})
	return leasePath(item.Lease, "error"), body, failure
}

func leasePath(lease, call string) string {
	return "/leases/" + url.PathEscape(lease) + "/" + call
}

// answer is the manager's answer to a call.
type answer struct {
	status     int
	body       []byte
	retryAfter time.Duration // from Retry-After; 0 without one
}

func (a *answer) String() string {
	text := strings.TrimSpace(string(a.body))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	status := fmt.Sprintf("%d %s", a.status, http.StatusText(a.status))
	if text == "" {
		return status
	}
	return status + ": " + text
}

func refused(path string, ans *answer) error {
	if ans.status == http.StatusUnauthorized {
		return fmt.Errorf("%w: POST %s answered %s; is %s this model's work token?", errRefused, path, ans, EnvWorkToken)
	}
	return fmt.Errorf("%w: POST %s answered %s; is %s this model's work URL?", errRefused, path, ans, EnvWorkURL)
}

// send makes one call. An error means the manager did not answer.
func (p *pool) send(ctx context.Context, path string, body []byte, timeout time.Duration) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+p.token)
	req.Header.Set("Kinfer-Pod", p.pod)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return nil, err
	}
	return &answer{status: resp.StatusCode, body: data, retryAfter: retryAfter(resp.Header.Get("Retry-After"))}, nil
}

// sendRetrying makes a call, each attempt under ctx, until the manager gives
// an answer other than "not now" (5xx, 429) or stop ends, waiting in between
// as Retry-After says or else longer each time.
func (p *pool) sendRetrying(ctx, stop context.Context, path string, body []byte, timeout time.Duration) (*answer, error) {
	for attempt := 0; ; attempt++ {
		ans, err := p.send(ctx, path, body, timeout)
		if err == nil && !retryable(ans.status) {
			return ans, nil
		}
		problem := fmt.Sprint(err)
		wait := p.backoff(attempt)
		if err == nil {
			problem = ans.String()
			if ans.retryAfter > 0 {
				wait = min(ans.retryAfter, p.maxBackoff)
			}
		}
		if stop.Err() != nil {
			return nil, fmt.Errorf("POST %s: %s, and the pod is being terminated", path, problem)
		}
		p.logf("POST %s: %s; trying again in %v", path, problem, wait.Round(time.Millisecond))
		timer := time.NewTimer(wait)
		select {
		case <-stop.Done():
			timer.Stop()
			return nil, fmt.Errorf("POST %s: %s, and the pod is being terminated", path, problem)
		case <-timer.C:
		}
	}
}

func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// backoff doubles from minBackoff up to maxBackoff, jittered so that a pool's
// pods do not all call at once when the manager comes back.
func (p *pool) backoff(attempt int) time.Duration {
	wait := p.maxBackoff
	if attempt < 30 {
		wait = min(p.minBackoff<<attempt, p.maxBackoff)
	}
	return wait/2 + rand.N(wait/2+1)
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(value string) time.Duration {
	if value == "" {
		return 0
	}
	if seconds, err := strconv.Atoi(value); err == nil {
		return max(time.Duration(seconds)*time.Second, 0)
	}
	if at, err := http.ParseTime(value); err == nil {
		return max(time.Until(at), 0)
	}
	return 0
}

func (p *pool) logf(format string, args ...any) {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	_, _ = fmt.Fprintf(p.stderr, "kinfer worker: "+format+"\n", args...)
}
