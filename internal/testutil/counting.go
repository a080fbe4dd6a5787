package testutil

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CountingClient counts the objects read through it, by namespace: one for
// each Get that finds one, and each object a List returns. Reads from the
// manager's cache never reach the API server, so its metrics cannot show
// what they cost; this can.
type CountingClient struct {
	client.Client

	mu   sync.Mutex
	read map[string]int
}

// NewCountingClient counts the reads made through c.
func NewCountingClient(c client.Client) *CountingClient {
	return &CountingClient{Client: c, read: map[string]int{}}
}

// Get implements client.Reader.
func (c *CountingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	err := c.Client.Get(ctx, key, obj, opts...)
	if err == nil {
		c.add(key.Namespace, 1)
	}
	return err
}

// List implements client.Reader.
func (c *CountingClient) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	err := c.Client.List(ctx, list, opts...)
	if err == nil {
		var o client.ListOptions
		o.ApplyOptions(opts)
		c.add(o.Namespace, meta.LenList(list))
	}
	return err
}

func (c *CountingClient) add(namespace string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read[namespace] += n
}

// Read is how many objects of namespace were read so far.
func (c *CountingClient) Read(namespace string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read[namespace]
}
