package queue

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestPlaceOrder(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	// Each place starts before the next.
	places := []Place{
		{Priority: 5, Created: t0.Add(time.Hour), Name: "z"},
		{Priority: 1, Created: t0, Name: "b"},
		{Priority: 1, Created: t0, Name: "c"},
		{Priority: 1, Created: t0.Add(time.Second), Name: "a"},
		{Priority: 0, Created: t0, Name: "a"},
	}
	for i := range places {
		for j := range places {
			if got, want := places[i].Before(places[j]), i < j; got != want {
				t.Errorf("%+v.Before(%+v) = %v, want %v", places[i], places[j], got, want)
			}
		}
	}
}

// TestOrderMatchesASortedList drives the order and a plainly sorted list
// with the same random additions and removals, and compares every answer.
func TestOrderMatchesASortedList(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var o order
	var want []Place
	for step := range 20000 {
		p := Place{
			Priority: int32(rng.IntN(3)),
			Created:  t0.Add(time.Duration(rng.IntN(50)) * time.Second),
			Name:     fmt.Sprintf("r-%d", rng.IntN(2000)),
		}
		i, found := slices.BinarySearchFunc(want, p, comparePlaces)
		if rng.IntN(3) == 0 || found {
			if got := o.Remove(p); got != found {
				t.Fatalf("step %d: Remove(%+v) = %v, want %v", step, p, got, found)
			}
			if found {
				want = slices.Delete(want, i, i+1)
			}
		} else {
			o.Add(p)
			want = slices.Insert(want, i, p)
		}
		if o.Len() != len(want) {
			t.Fatalf("step %d: Len() = %d, want %d", step, o.Len(), len(want))
		}
		if len(want) == 0 {
			continue
		}
		k := rng.IntN(len(want))
		if got := o.At(k); got != want[k] {
			t.Fatalf("step %d: At(%d) = %+v, want %+v", step, k, got, want[k])
		}
		if rank, ok := o.Rank(want[k]); !ok || rank != k {
			t.Fatalf("step %d: Rank(%+v) = %d, %v; want %d, true", step, want[k], rank, ok, k)
		}
	}
	got := make([]Place, o.Len())
	for i := range got {
		got[i] = o.At(i)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("final order (-want +got):\n%s", diff)
	}
}

func TestOrderRankOfAbsentPlace(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var o order
	for i := range 10 {
		o.Add(Place{Created: t0.Add(time.Duration(i) * time.Second), Name: "r"})
	}
	rank, ok := o.Rank(Place{Created: t0.Add(4500 * time.Millisecond), Name: "r"})
	if ok || rank != 5 {
		t.Errorf("Rank of a place between the 5th and 6th = %d, %v; want 5, false", rank, ok)
	}
}

// The tree stays shallow however the requests arrive: in creation order,
// as a backlog does, a plain search tree would be a list.
func TestOrderStaysBalanced(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var o order
	const n = 100000
	for i := range n {
		o.Add(Place{Created: t0.Add(time.Duration(i) * time.Millisecond), Name: "r"})
	}
	if d := depth(o.root); d > 60 {
		t.Errorf("depth %d for %d requests added in order; a balanced tree has about %d", d, n, 2*17)
	}
}

func depth(n *node) int {
	if n == nil {
		return 0
	}
	return 1 + max(depth(n.left), depth(n.right))
}

func comparePlaces(a, b Place) int {
	switch {
	case a.Before(b):
		return -1
	case b.Before(a):
		return 1
	}
	return 0
}
