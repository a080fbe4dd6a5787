package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Each slot freed is taken by the start queueLimit places after it, and a
// slot no start has taken yet counts as free until the run stopped.
func TestRefillsPairSlotsFreedWithTheStartsThatTakeThem(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(0, 0).Add(time.Duration(ms) * time.Millisecond) }
	first := []time.Time{at(0), at(1), at(2), at(3)} // the slots free at first
	tests := []struct {
		name          string
		starts, frees []time.Time
		stop          time.Time
		want          []refill
	}{
		{
			name:   "every slot freed taken",
			starts: append(first, at(30), at(45)),
			frees:  []time.Time{at(10), at(20)},
			stop:   at(100),
			want:   []refill{{freed: at(10), took: 20 * time.Millisecond}, {freed: at(20), took: 25 * time.Millisecond}},
		},
		{
			name:   "a slot still free when the run stopped",
			starts: append(first, at(30)),
			frees:  []time.Time{at(10), at(20)},
			stop:   at(100),
			want:   []refill{{freed: at(10), took: 20 * time.Millisecond}, {freed: at(20), took: 80 * time.Millisecond}},
		},
		{
			name:   "nothing freed",
			starts: first,
			stop:   at(100),
			want:   []refill{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := refills(tc.starts, tc.frees, tc.stop)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(refill{})); diff != "" {
				t.Errorf("refills (-want +got):\n%s", diff)
			}
		})
	}
}
