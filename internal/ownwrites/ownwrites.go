// Package ownwrites remembers which version of each object this manager's
// latest write replaced, so that a reconcile can tell a cache that has not
// caught up with that write.
package ownwrites

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// Tracker remembers, per object, the resourceVersion that this manager's
// latest write replaced. A reconcile that reads that version from the cache
// is reading the past: acting on it would redo the write and be refused.
type Tracker struct {
	mu       sync.Mutex
	replaced map[types.NamespacedName]string
}

// New returns an empty Tracker.
func New() *Tracker {
	return &Tracker{replaced: map[types.NamespacedName]string{}}
}

// Wrote records that a write to key replaced resourceVersion replaced.
func (t *Tracker) Wrote(key types.NamespacedName, replaced string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.replaced[key] = replaced
}

// Behind reports whether resourceVersion is the one the latest write to key
// replaced; any other version means the cache has caught up, and the entry
// goes.
func (t *Tracker) Behind(key types.NamespacedName, resourceVersion string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.replaced[key] == resourceVersion {
		return true
	}
	delete(t.replaced, key)
	return false
}

// Forget drops what is known of key: the object is gone.
func (t *Tracker) Forget(key types.NamespacedName) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.replaced, key)
}
