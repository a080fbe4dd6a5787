package ownwrites

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

func TestTracker(t *testing.T) {
	key := types.NamespacedName{Namespace: "ns", Name: "req-1"}
	tr := New()
	if tr.Behind(key, "5") {
		t.Error("behind before any write")
	}
	tr.Wrote(key, "5")
	for range 2 { // asked again, as a requeued reconcile would
		if !tr.Behind(key, "5") {
			t.Error("the replaced version is not taken for the past")
		}
	}
	if tr.Behind(key, "6") {
		t.Error("a newer version is taken for the past")
	}
	if tr.Behind(key, "5") {
		t.Error("once the cache caught up, an old version is still remembered")
	}
	tr.Wrote(key, "7")
	tr.Forget(key)
	if tr.Behind(key, "7") {
		t.Error("a forgotten object is still remembered")
	}
}
