package callback

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// receivedCallback is what a receiver got from one attempt.
type receivedCallback struct {
	header http.Header
	body   []byte
}

// sendToReceiver makes one real attempt, signed with secret, to a local
// receiver and returns what the receiver got.
func sendToReceiver(t *testing.T, secret string) receivedCallback {
	t.Helper()
	keys, err := ParseKeys(secret)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan receivedCallback, 1)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- receivedCallback{header: r.Header.Clone(), body: body}
	}))
	defer receiver.Close()

	out := newSender(t, loopbackOnly, false).Send(context.Background(), Attempt{
		URL: receiver.URL, WebhookID: "msg_2f0c5a7d", Timestamp: time.Now(), Keys: keys, Timeout: 5 * time.Second,
		Body: []byte(`{"type":"inference.completed","id":"1234","status":"succeeded","result":{"label":"positive"}}`),
	})
	if !out.Delivered() {
		t.Fatalf("outcome %+v, want delivered", out)
	}
	return <-got
}

// Receivers verify kinfer's callbacks with the official Standard Webhooks
// library for Go, headers and body as they arrived, each with the one
// whsec_ secret it was given while the model's secret rotates; and the
// library refuses them when anything signed or the key differs.
func TestOfficialLibraryVerifiesCallbacks(t *testing.T) {
	old := "whsec_" + base64.StdEncoding.EncodeToString([]byte("an-old-key-of-32-bytes-length!!!"))
	current := "whsec_" + base64.StdEncoding.EncodeToString([]byte("the-new-key-of-32-bytes-length!!"))
	// An ed25519 key among them adds a v1a entry, which the library skips.
	private := "whsk_" + base64.StdEncoding.EncodeToString(rfc8032Seed)
	call := sendToReceiver(t, old+" "+private+" "+current)

	for _, secret := range []string{old, current} {
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify(call.body, call.header); err != nil {
			t.Errorf("with %s: %v", secret[:12], err)
		}
	}

	wh, err := standardwebhooks.NewWebhook(current)
	if err != nil {
		t.Fatal(err)
	}
	tampered := func(change func(h http.Header, body []byte) []byte) (http.Header, []byte) {
		h, body := call.header.Clone(), append([]byte{}, call.body...)
		return h, change(h, body)
	}
	for name, change := range map[string]func(http.Header, []byte) []byte{
		"changed body": func(_ http.Header, body []byte) []byte { return append(body, ' ') },
		"changed id": func(h http.Header, body []byte) []byte {
			h.Set("webhook-id", "msg_other")
			return body
		},
		"changed timestamp": func(h http.Header, body []byte) []byte {
			ts, err := strconv.ParseInt(h.Get("webhook-timestamp"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			h.Set("webhook-timestamp", strconv.FormatInt(ts-1, 10))
			return body
		},
		"changed signature": func(h http.Header, body []byte) []byte {
			h.Set("webhook-signature", strings.ReplaceAll(h.Get("webhook-signature"), "v1,", "v1,A"))
			return body
		},
		"v1a entries only": func(h http.Header, body []byte) []byte {
			var kept []string
			for _, entry := range strings.Fields(h.Get("webhook-signature")) {
				if strings.HasPrefix(entry, "v1a,") {
					kept = append(kept, entry)
				}
			}
			h.Set("webhook-signature", strings.Join(kept, " "))
			return body
		},
	} {
		t.Run(name, func(t *testing.T) {
			h, body := tampered(change)
			if err := wh.Verify(body, h); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
				t.Errorf("the library answered %v, want %v", err, standardwebhooks.ErrNoMatchingSignature)
			}
		})
	}

	other, err := standardwebhooks.NewWebhook("whsec_" + base64.StdEncoding.EncodeToString([]byte("some-other-key-of-32-bytes-long!")))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Verify(call.body, call.header); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Errorf("a key that did not sign: %v, want %v", err, standardwebhooks.ErrNoMatchingSignature)
	}
}
