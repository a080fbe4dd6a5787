package callback

import (
	"testing"
	"time"
)

func noJitter(d time.Duration) time.Duration { return d }

func TestNext(t *testing.T) {
	schedule := []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute}
	tests := []struct {
		name       string
		attempts   int32
		retryAfter time.Duration
		wantWait   time.Duration
		wantOK     bool
	}{
		{name: "after the first attempt", attempts: 1, wantWait: 5 * time.Second, wantOK: true},
		{name: "after the second attempt", attempts: 2, wantWait: 5 * time.Minute, wantOK: true},
		{name: "after the last scheduled retry", attempts: 3, wantWait: 30 * time.Minute, wantOK: true},
		{name: "schedule used up", attempts: 4, wantOK: false},
		{name: "no attempt made yet", attempts: 0, wantOK: false},
		{name: "a longer Retry-After wins", attempts: 1, retryAfter: time.Minute, wantWait: time.Minute, wantOK: true},
		{name: "a shorter Retry-After does not", attempts: 2, retryAfter: time.Minute, wantWait: 5 * time.Minute, wantOK: true},
		{name: "Retry-After cannot extend a used-up schedule", attempts: 4, retryAfter: time.Minute, wantOK: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wait, ok := Next(schedule, tc.attempts, tc.retryAfter, noJitter)
			if wait != tc.wantWait || ok != tc.wantOK {
				t.Errorf("Next = (%v, %v), want (%v, %v)", wait, ok, tc.wantWait, tc.wantOK)
			}
		})
	}
}

func TestNextWithEmptyScheduleMakesOneAttempt(t *testing.T) {
	if _, ok := Next(nil, 1, 0, noJitter); ok {
		t.Error("an empty schedule allowed a retry")
	}
}

func TestJitterStaysWithinTenPercent(t *testing.T) {
	const wait = 10 * time.Second
	low, high := wait, wait
	for range 10000 {
		got := Jitter(wait)
		if got < 9*time.Second || got > 11*time.Second {
			t.Fatalf("Jitter(%v) = %v, outside ±10%%", wait, got)
		}
		low, high = min(low, got), max(high, got)
	}
	// Jitter that never moves would not spread retries at all.
	if high-low < time.Second {
		t.Errorf("10000 jittered waits span only %v", high-low)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	tests := map[string]time.Duration{
		"":                              0,
		"120":                           2 * time.Minute,
		"0":                             0,
		"-5":                            0,
		"soon":                          0,
		"Tue, 24 Nov 2026 12:05:00 GMT": 5 * time.Minute,
		"Tue, 24 Nov 2026 11:00:00 GMT": 0,
		"99999999":                      maxRetryAfter,
	}
	for header, want := range tests {
		if got := retryAfter(header, now); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", header, got, want)
		}
	}
}
