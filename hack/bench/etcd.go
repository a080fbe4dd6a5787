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

// put writes pairs in transactions of at most 128 (etcd's --max-txn-ops).
func (e etcdKV) put(ctx context.Context, pairs []etcdPair) error {
	const perTxn = 128
	for len(pairs) > 0 {
		n := min(perTxn, len(pairs))
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

// heldCopier makes finished requests as copies of one created through the
// API server (heldRequest: the request, its Job and its pod), written into
// etcd as the API server stored it, with the name and UIDs replaced. Names
// are fixed-width and UIDs fixed-length, so the replacement keeps the stored
// encodings (JSON for the request, protobuf for the Job and the pod) valid.
// The API server's watch on etcd then serves them like any other object.
// Creating them through the API server would cost four writes each and take
// minutes per 10 000 on two cores; the manager, which lists and watches them
// through the API server, cannot tell the difference.
type heldCopier struct {
	etcd     etcdKV
	template []etcdPair
	uids     []types.UID
}

// newHeldCopier creates held request 0 through the API server and reads back
// how it was stored.
func newHeldCopier(ctx context.Context, cl *cluster, ns string) (*heldCopier, error) {
	uids, err := heldRequest(ctx, cl, ns)
	if err != nil {
		return nil, err
	}
	etcd := etcdKV{url: cl.stack.EtcdURL()}
	template, err := etcd.withSuffix(ctx, "/"+ns+"/"+heldName(0), "/"+ns+"/"+heldName(0)+"-x")
	if err != nil {
		return nil, err
	}
	if len(template) != 3 {
		return nil, fmt.Errorf("found %d stored objects for held request 0, want its request, Job and pod", len(template))
	}
	return &heldCopier{etcd: etcd, template: template, uids: uids}, nil
}

// copies writes held requests from to to-1.
func (h *heldCopier) copies(ctx context.Context, from, to int) error {
	const batch = 40 // held requests per transaction: 3 puts each, within etcd's 128
	return parallel((to-from+batch-1)/batch, 4, func(b int) error {
		var pairs []etcdPair
		for i := from + b*batch; i < min(to, from+(b+1)*batch); i++ {
			replace := make([]string, 0, 2+2*len(h.uids))
			replace = append(replace, heldName(0), heldName(i))
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
