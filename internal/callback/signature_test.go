package callback

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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
		"empty":            "   ",
		"missing prefix":   base64.StdEncoding.EncodeToString([]byte("a-key-that-is-long-enough-for-it")),
		"not base64":       "whsec_not*base64!",
		"too short":        "whsec_" + base64.StdEncoding.EncodeToString([]byte("short")),
		"second bad":       "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_%%%",
		"public key":       "whpk_" + base64.StdEncoding.EncodeToString(rfc8032Public),
		"whsk_ not base64": "whsk_%%%",
		"whsk_ 31 bytes":   "whsk_" + base64.StdEncoding.EncodeToString(rfc8032Seed[:31]),
		"whsk_ 48 bytes":   "whsk_" + base64.StdEncoding.EncodeToString(append(rfc8032Seed, rfc8032Seed[:16]...)),
		"whsk_ 64 bytes whose public half is another key's": "whsk_" +
			base64.StdEncoding.EncodeToString(append(append([]byte{}, rfc8032Seed...), make([]byte, 32)...)),
	}
	for name, secret := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseKeys(secret); err == nil {
				t.Errorf("ParseKeys(%q) succeeded", secret)
			}
		})
	}
}

// The first test vector of RFC 8032, section 7.1: an ed25519 private key (the
// 32-byte seed) and its public key.
var (
	rfc8032Seed   = mustHex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	rfc8032Public = mustHex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// A whsk_ key is the base64 of the private key, either the 32-byte seed of
// RFC 8032 or the 64 bytes of seed and public key that Go and libsodium keep;
// both name the same key, whose whpk_ key is the base64 of the public key.
func TestPrivateKeyEncodingsMatchRFC8032(t *testing.T) {
	wantPublic := "whpk_" + base64.StdEncoding.EncodeToString(rfc8032Public)
	for name, secret := range map[string]string{
		"seed":            "whsk_" + base64.StdEncoding.EncodeToString(rfc8032Seed),
		"seed and public": "whsk_" + base64.StdEncoding.EncodeToString(append(append([]byte{}, rfc8032Seed...), rfc8032Public...)),
	} {
		t.Run(name, func(t *testing.T) {
			keys, err := ParseKeys(secret)
			if err != nil {
				t.Fatal(err)
			}
			if got := keys[0].Version(); got != "v1a" {
				t.Errorf("Version = %q, want v1a", got)
			}
			if diff := cmp.Diff([]string{wantPublic}, PublicKeys(keys)); diff != "" {
				t.Errorf("PublicKeys (-want +got):\n%s", diff)
			}
		})
	}
}

// A secret may mix shared and ed25519 keys, as during a move from one to the
// other or a rotation: each key adds its own entry, in the secret's order,
// and each verifies with what a receiver holds (the whsec_ secret, or the
// whpk_ public key with crypto/ed25519).
func TestSignatureSignsWithEveryKindOfKey(t *testing.T) {
	shared := "whsec_" + base64.StdEncoding.EncodeToString([]byte("a-shared-key-of-32-bytes-length!"))
	oldSeed := sha256.Sum256([]byte("the old ed25519 seed"))
	newSeed := sha256.Sum256([]byte("the new ed25519 seed"))
	keys, err := ParseKeys(shared + " whsk_" + base64.StdEncoding.EncodeToString(oldSeed[:]) +
		"\n whsk_" + base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(newSeed[:])))
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	body := []byte(`{"type":"inference.completed","id":"1234","status":"succeeded","result":"OK"}`)
	header := Signature(keys, "msg_1", ts, body)

	entries := strings.Split(header, " ")
	versions := make([]string, 0, len(entries))
	for _, e := range entries {
		version, _, _ := strings.Cut(e, ",")
		versions = append(versions, version)
	}
	if diff := cmp.Diff([]string{"v1", "v1a", "v1a"}, versions); diff != "" {
		t.Fatalf("versions in %q (-want +got):\n%s", header, diff)
	}
	if !verifies(shared, "msg_1", "1700000000", body, header) {
		t.Errorf("the v1 entry of %q does not verify", header)
	}
	wantPublic := []string{
		"whpk_" + base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(oldSeed[:]).Public().(ed25519.PublicKey)),
		"whpk_" + base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(newSeed[:]).Public().(ed25519.PublicKey)),
	}
	if diff := cmp.Diff(wantPublic, PublicKeys(keys)); diff != "" {
		t.Errorf("PublicKeys (-want +got):\n%s", diff)
	}
	for i, public := range wantPublic {
		if !verifiesEd25519(public, entries[i+1], "1700000000", body) {
			t.Errorf("%s does not verify %q", public, entries[i+1])
		}
		if verifiesEd25519(public, entries[2-i], "1700000000", body) {
			t.Errorf("%s verifies the other key's signature", public)
		}
		if verifiesEd25519(public, entries[i+1], "1700000001", body) {
			t.Error("a v1a signature verified another timestamp")
		}
		if verifiesEd25519(public, entries[i+1], "1700000000", append(body, ' ')) {
			t.Error("a v1a signature verified a changed body")
		}
	}
}

// verifiesEd25519 checks one v1a entry of a delivery with webhook-id msg_1
// with a whpk_ key, using crypto/ed25519 directly as a receiver would.
func verifiesEd25519(public, entry, timestamp string, body []byte) bool {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(public, "whpk_"))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return false
	}
	version, encoded, _ := strings.Cut(entry, ",")
	sig, err := base64.StdEncoding.DecodeString(encoded)
	if version != "v1a" || err != nil {
		return false
	}
	return ed25519.Verify(raw, []byte("msg_1."+timestamp+"."+string(body)), sig)
}
