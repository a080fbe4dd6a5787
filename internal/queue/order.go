package queue

import "time"

// Place is where a waiting request stands among its model's waiting
// requests: a higher priority first, then the older, then by name, so that
// no two requests of a model share a place.
type Place struct {
	Priority int32
	Created  time.Time
	Name     string
}

// Before reports whether p starts before q.
func (p Place) Before(q Place) bool {
	if p.Priority != q.Priority {
		return p.Priority > q.Priority
	}
	if !p.Created.Equal(q.Created) {
		return p.Created.Before(q.Created)
	}
	return p.Name < q.Name
}

// order keeps one model's waiting requests sorted by place. Adding, removing,
// finding how many stand before a request, and finding the request at a
// position each cost O(log n) expected, whatever the length: it is a treap
// (a binary search tree kept balanced by random weights) whose nodes count
// the nodes below them.
type order struct {
	root *node
	seed uint64
}

type node struct {
	place       Place
	weight      uint64
	size        int
	left, right *node
}

func (n *node) count() int {
	if n == nil {
		return 0
	}
	return n.size
}

func (n *node) resize() *node {
	n.size = 1 + n.left.count() + n.right.count()
	return n
}

// Len is how many requests wait.
func (o *order) Len() int { return o.root.count() }

// Add puts p in its place; p must not be there already.
func (o *order) Add(p Place) {
	before, after := split(o.root, func(q Place) bool { return q.Before(p) })
	o.root = merge(merge(before, &node{place: p, weight: o.next(), size: 1}), after)
}

// Remove takes p out, and reports whether it was there.
func (o *order) Remove(p Place) bool {
	before, rest := split(o.root, func(q Place) bool { return q.Before(p) })
	found, after := split(rest, func(q Place) bool { return !p.Before(q) })
	o.root = merge(before, after)
	return found != nil
}

// Rank is how many requests stand before p, and whether p is there.
func (o *order) Rank(p Place) (int, bool) {
	rank := 0
	for n := o.root; n != nil; {
		switch {
		case p.Before(n.place):
			n = n.left
		case n.place.Before(p):
			rank += n.left.count() + 1
			n = n.right
		default:
			return rank + n.left.count(), true
		}
	}
	return rank, false
}

// At is the request at position i (0 is the first to start); i must be
// below Len.
func (o *order) At(i int) Place {
	n := o.root
	for {
		switch left := n.left.count(); {
		case i < left:
			n = n.left
		case i == left:
			return n.place
		default:
			i -= left + 1
			n = n.right
		}
	}
}

// next draws a node's weight (splitmix64): any spread of weights keeps the
// tree balanced in expectation; they need not be unpredictable.
func (o *order) next() uint64 {
	o.seed += 0x9e3779b97f4a7c15
	z := o.seed
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// split parts t into the nodes for which left holds and the rest; left must
// hold for a prefix of the order.
func split(t *node, left func(Place) bool) (*node, *node) {
	if t == nil {
		return nil, nil
	}
	if left(t.place) {
		a, b := split(t.right, left)
		t.right = a
		return t.resize(), b
	}
	a, b := split(t.left, left)
	t.left = b
	return a, t.resize()
}

// merge joins a and b, every node of a standing before every node of b.
func merge(a, b *node) *node {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.weight > b.weight:
		a.right = merge(a.right, b)
		return a.resize()
	default:
		b.left = merge(a, b.left)
		return b.resize()
	}
}
