package callback

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// nodeModules is where make receivers installs the packages of the Node
// receiver example, from its package-lock.json.
var nodeModules = filepath.Join("..", "..", "bin", "receivers", "node", "node_modules")

// The receivers in examples/receivers, which docs/api.md shows, take real
// callbacks: with a whsec_ secret they verify the v1 signatures with the
// standardwebhooks package of their language, with whpk_ keys the v1a
// signatures with the platform's ed25519; they refuse callbacks signed with
// other keys. The Node receiver runs where node and its packages are
// installed (make test and make receivers install them). The Python one is
// not run here: its packages come from PyPI.
func TestNodeReceiverVerifiesCallbacks(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed; the Node receiver example is not tested")
	}
	if _, err := os.Stat(filepath.Join(nodeModules, "standardwebhooks")); err != nil {
		t.Skip("the Node receiver example's packages are not installed; make receivers installs them")
	}
	nodePath, err := filepath.Abs(nodeModules)
	if err != nil {
		t.Fatal(err)
	}
	testReceiver(t, []string{node, filepath.Join("..", "..", "examples", "receivers", "node", "receiver.js")}, "NODE_PATH="+nodePath)
}

// testReceiver runs a receiver example (argv, with env added) against
// callbacks signed with keys it trusts and keys it does not.
func testReceiver(t *testing.T, argv []string, env ...string) {
	shared := func(s string) string { return "whsec_" + base64.StdEncoding.EncodeToString([]byte(s)) }
	private := func(s string) ed25519.PrivateKey {
		seed := sha256.Sum256([]byte(s))
		return ed25519.NewKeyFromSeed(seed[:])
	}
	whsk := func(k ed25519.PrivateKey) string { return "whsk_" + base64.StdEncoding.EncodeToString(k.Seed()) }
	whpk := func(k ed25519.PrivateKey) string {
		return "whpk_" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
	}
	old, current, other := shared("an-old-key-of-32-bytes-length!!!"), shared("the-new-key-of-32-bytes-length!!"), shared("some-other-key-of-32-bytes-long!")
	oldKey, newKey, otherKey := private("old"), private("new"), private("other")

	tests := []struct {
		name      string
		env       string
		delivered []string // signing secrets the receiver must accept
		refused   []string // and those it must refuse
	}{
		{
			name:      "whsec_ secret, standardwebhooks package",
			env:       "WEBHOOK_SECRET=" + current,
			delivered: []string{old + " " + current, current + " " + whsk(newKey)},
			refused:   []string{other, old, whsk(newKey)},
		},
		{
			name:      "whpk_ public keys, ed25519",
			env:       "WEBHOOK_PUBLIC_KEYS=" + whpk(oldKey) + " " + whpk(newKey),
			delivered: []string{whsk(oldKey), whsk(newKey), current + " " + whsk(otherKey) + " " + whsk(newKey)},
			refused:   []string{whsk(otherKey), current},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url, events := startReceiver(t, argv, append(env, tc.env))
			for i, secret := range append(append([]string{}, tc.delivered...), tc.refused...) {
				keys, err := ParseKeys(secret)
				if err != nil {
					t.Fatal(err)
				}
				id := "msg_" + strings.Repeat("n", i+1)
				body := []byte(`{"type":"inference.completed","id":"` + id + `","status":"succeeded","result":{"label":"positive"}}`)
				out := newSender(t, loopbackOnly, false).Send(context.Background(), Attempt{
					URL: url, WebhookID: id, Timestamp: time.Now(), Body: body, Keys: keys, Timeout: 10 * time.Second,
				})
				if i >= len(tc.delivered) {
					if out.StatusCode != http.StatusUnauthorized {
						t.Errorf("signed with %d key(s) it does not trust: outcome %+v, want 401", len(keys), out)
					}
					continue
				}
				if !out.Delivered() {
					t.Fatalf("signed with %d key(s), one trusted: outcome %+v, want delivered", len(keys), out)
				}
				got := <-events
				if got.WebhookID != id || !jsonEqual(got.Event, body) {
					t.Errorf("the receiver printed %s %s, want %s %s", got.WebhookID, got.Event, id, body)
				}
			}
		})
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

// received is a line a receiver example prints for a callback it verified.
type received struct {
	WebhookID string          `json:"webhookID"`
	Event     json.RawMessage `json:"event"`
}

// startReceiver runs a receiver example with env added to the test's, and
// returns its URL and the callbacks it verifies.
func startReceiver(t *testing.T, argv, env []string) (string, <-chan received) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "PORT=0", "WEBHOOK_SECRET=", "WEBHOOK_PUBLIC_KEYS="), env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})

	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("the receiver printed nothing: %v", errors.Join(lines.Err(), io.ErrUnexpectedEOF))
	}
	url, ok := strings.CutPrefix(lines.Text(), "listening on ")
	if !ok {
		t.Fatalf("the receiver's first line is %q, want listening on <url>", lines.Text())
	}
	events := make(chan received, 16)
	go func() {
		for lines.Scan() {
			var r received
			if json.Unmarshal(lines.Bytes(), &r) == nil {
				events <- r
			}
		}
	}()
	return url, events
}
