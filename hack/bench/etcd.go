package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
)

// etcdKV reads and writes etcd through its JSON gateway (/v3/kv/...), which
// etcd serves on its client URL.
type etcdKV struct{ url string }

type etcdPair struct {
	Key   []byte `json:"key"` // encoding/json writes []byte as base64, as the gateway wants
	Value []byte `json:"value,omitempty"`
}

func (e etcdKV) call(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", path, resp.Status, raw)
	}
	return json.Unmarshal(raw, out)
}

// withSuffix returns every key and value under /registry whose key ends with
// one of suffixes.
func (e etcdKV) withSuffix(ctx context.Context, suffixes ...string) ([]etcdPair, error) {
	var out struct{ Kvs []etcdPair }
	in := map[string]any{"key": []byte("/registry/"), "range_end": []byte("/registry0")}
	if err := e.call(ctx, "/v3/kv/range", in, &out); err != nil {
		return nil, err
	}
	var found []etcdPair
	for _, kv := range out.Kvs {
		for _, suffix := range suffixes {
			if strings.HasSuffix(string(kv.Key), suffix) {
				found = append(found, kv)
			}
		}
	}
	return found, nil
}

// etcdMaxTxnOps is etcd's default --max-txn-ops: the most operations one
// transaction may hold.
const etcdMaxTxnOps = 128

// put writes pairs in transactions of at most etcdMaxTxnOps.
func (e etcdKV) put(ctx context.Context, pairs []etcdPair) error {
	for len(pairs) > 0 {
		n := min(etcdMaxTxnOps, len(pairs))
		ops := make([]map[string]etcdPair, 0, n)
		for _, p := range pairs[:n] {
			ops = append(ops, map[string]etcdPair{"request_put": p})
		}
		var out struct{ Succeeded bool }
		if err := e.call(ctx, "/v3/kv/txn", map[string]any{"success": ops}, &out); err != nil {
			return err
		}
		if !out.Succeeded {
			return fmt.Errorf("etcd refused a transaction of %d puts", n)
		}
		pairs = pairs[n:]
	}
	return nil
}

// etcdCopier writes copies of objects created through the API server straight
// into etcd, as the API server stored them, with the name and UIDs replaced:
// for the memory run a finished request with its Job and its pod, for the
// queue run a waiting request alone. Names are fixed-width and UIDs
// fixed-length, so the replacement keeps the stored encodings (JSON for the
// request, protobuf for the Job and the pod) valid. The API server's watch on
// etcd then serves them like any other object. Creating them through the API
// server would cost a write or more each and take minutes per 10 000 on two
// cores; the manager, which lists and watches them through the API server,
// cannot tell the difference. Copies keep the original's creation time.
type etcdCopier struct {
	etcd     etcdKV
	template []etcdPair
	uids     []types.UID
	// name is the name of copy i; copy 0 is the original.
	name func(i int) string
}

// newHeldCopier creates held request 0 through the API server and reads back
// how it was stored.
func newHeldCopier(ctx context.Context, cl *cluster, ns string) (*etcdCopier, error) {
	uids, err := heldRequest(ctx, cl, ns)
	if err != nil {
		return nil, err
	}
	return readTemplate(ctx, cl, ns, heldName, uids, "its request, Job and pod")
}

// readTemplate reads back how the objects named name(0) in ns (and its pod,
// name(0)+"-x", if any) were stored: as many objects as uids, described by
// what for errors.
func readTemplate(ctx context.Context, cl *cluster, ns string, name func(int) string, uids []types.UID, what string) (*etcdCopier, error) {
	etcd := etcdKV{url: cl.stack.EtcdURL()}
	template, err := etcd.withSuffix(ctx, "/"+ns+"/"+name(0), "/"+ns+"/"+name(0)+"-x")
	if err != nil {
		return nil, err
	}
	if len(template) != len(uids) {
		return nil, fmt.Errorf("found %d stored objects for %s, want %s", len(template), name(0), what)
	}
	return &etcdCopier{etcd: etcd, template: template, uids: uids, name: name}, nil
}

// copies writes copies from to to-1.
func (h *etcdCopier) copies(ctx context.Context, from, to int) error {
	batch := etcdMaxTxnOps / len(h.template) // copies per transaction
	return parallel((to-from+batch-1)/batch, 4, func(b int) error {
		var pairs []etcdPair
		for i := from + b*batch; i < min(to, from+(b+1)*batch); i++ {
			replace := make([]string, 0, 2+2*len(h.uids))
			replace = append(replace, h.name(0), h.name(i))
			for _, uid := range h.uids {
				replace = append(replace, string(uid), string(uuid.NewUUID()))
			}
			r := strings.NewReplacer(replace...)
			for _, kv := range h.template {
				pairs = append(pairs, etcdPair{Key: []byte(r.Replace(string(kv.Key))), Value: []byte(r.Replace(string(kv.Value)))})
			}
		}
		return h.etcd.put(ctx, pairs)
	})
}

func heldName(i int) string { return fmt.Sprintf("held-%06d", i) }
