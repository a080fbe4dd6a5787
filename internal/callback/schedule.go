package callback

import (
	"math/rand/v2"
	"time"
)

// maxRetryAfter caps how long a receiver can push the next attempt away, so a
// misconfigured Retry-After cannot park a delivery for years.
const maxRetryAfter = 24 * time.Hour

// Jitter spreads a wait by up to ±10%, so receivers that failed together are
// not retried together.
func Jitter(wait time.Duration) time.Duration {
	return wait + time.Duration((rand.Float64()*0.2-0.1)*float64(wait))
}

// Next returns how long to wait after a failed attempt, given the retry
// schedule and how many attempts have been made (the failed one included). The
// wait is the schedule's entry for this retry, jittered, or the receiver's
// Retry-After when that is longer. ok is false once the schedule is used up.
func Next(
	schedule []time.Duration, attempts int32, retryAfter time.Duration, jitter func(time.Duration) time.Duration,
) (wait time.Duration, ok bool) {
	i := int(attempts) - 1
	if i < 0 || i >= len(schedule) {
		return 0, false
	}
	wait = jitter(schedule[i])
	if retryAfter > wait {
		wait = retryAfter
	}
	return wait, true
}
