package callback

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// The example in the Standard Webhooks specification.
func TestSignatureMatchesTheSpecExample(t *testing.T) {
	keys, err := ParseKeys("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := Signature(keys, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("Signature = %q, want %q", got, want)
	}
}

func TestSignatureCarriesOneSignaturePerKey(t *testing.T) {
	old := "whsec_" + base64.StdEncoding.EncodeToString([]byte("an-old-key-of-32-bytes-length!!!"))
	current := "whsec_" + base64.StdEncoding.EncodeToString([]byte("the-new-key-of-32-bytes-length!!"))
	keys, err := ParseKeys(old + "  " + current + "\n")
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	body := []byte(`{"type":"inference.completed","id":"1234","status":"succeeded","result":"OK"}`)
	header := Signature(keys, "msg_1", ts, body)

	parts := strings.Split(header, " ")
	if len(parts) != 2 {
		t.Fatalf("header %q has %d signatures, want 2", header, len(parts))
	}
	for _, secret := range []string{old, current} {
		if !verifies(secret, "msg_1", "1700000000", body, header) {
			t.Errorf("no signature in %q verifies with %s", header, secret)
		}
	}
	if verifies("whsec_"+base64.StdEncoding.EncodeToString([]byte("some-other-key-of-32-bytes-long!")), "msg_1", "1700000000", body, header) {
		t.Error("a signature verified with a key that did not sign")
	}
	if verifies(current, "msg_1", "1700000000", append(body, ' '), header) {
		t.Error("a signature verified a changed body")
	}
}

// verifies checks header the way the specification tells receivers to, written
// apart from Signature: decode the key, sign "id.timestamp.body", and accept
// when any v1 entry matches in constant time.
func verifies(secret, id, timestamp string, body []byte, header string) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + timestamp + "." + string(body)))
	want := mac.Sum(nil)
	for _, entry := range strings.Fields(header) {
		version, sig, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

func TestParseKeysRefuses(t *testing.T) {
	tests := map[string]string{
		"empty":          "   ",
		"missing prefix": base64.StdEncoding.EncodeToString([]byte("a-key-that-is-long-enough-for-it")),
		"not base64":     "whsec_not*base64!",
		"too short":      "whsec_" + base64.StdEncoding.EncodeToString([]byte("short")),
		"second bad":     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_%%%",
	}
	for name, secret := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseKeys(secret); err == nil {
				t.Errorf("ParseKeys(%q) succeeded", secret)
			}
		})
	}
}
