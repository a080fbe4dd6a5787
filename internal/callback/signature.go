package callback

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Prefixes of Standard Webhooks keys: "whsec_" and the base64 of a shared
// HMAC key, "whsk_" and the base64 of an ed25519 private key, "whpk_" and the
// base64 of an ed25519 public key.
const (
	SymmetricPrefix  = "whsec_"
	PrivateKeyPrefix = "whsk_"
	PublicKeyPrefix  = "whpk_"
)

// Signature versions: v1 is HMAC-SHA256 with a shared key, v1a ed25519.
const (
	VersionSymmetric  = "v1"
	VersionAsymmetric = "v1a"
)

// Key is one signing key from a model's secret: either a shared whsec_ key or
// a whsk_ ed25519 private key.
type Key struct {
	shared  []byte
	private ed25519.PrivateKey
}

// Version is the signature version the key signs with: v1 or v1a.
func (k Key) Version() string {
	if k.private != nil {
		return VersionAsymmetric
	}
	return VersionSymmetric
}

// PublicKey is the whpk_ key that verifies the key's signatures; a shared
// key has none, and answers "".
func (k Key) PublicKey() string {
	if k.private == nil {
		return ""
	}
	return PublicKeyPrefix + base64.StdEncoding.EncodeToString(k.private.Public().(ed25519.PublicKey))
}

// sign is the key's entry in the webhook-signature header for content.
func (k Key) sign(content []byte) string {
	if k.private != nil {
		return VersionAsymmetric + "," + base64.StdEncoding.EncodeToString(ed25519.Sign(k.private, content))
	}
	mac := hmac.New(sha256.New, k.shared)
	mac.Write(content)
	return VersionSymmetric + "," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// ParseKeys reads the signing keys in a secret value: one or more whsec_ or
// whsk_ keys, in any mix, separated by white space, so a new key can be added
// before the old one is removed, and a model can move from shared keys to
// ed25519 ones without a gap. Each delivery is signed with every key.
func ParseKeys(secret string) ([]Key, error) {
	fields := strings.Fields(secret)
	if len(fields) == 0 {
		return nil, fmt.Errorf("signing secret holds no key")
	}
	keys := make([]Key, 0, len(fields))
	for i, f := range fields {
		key, err := parseKey(f)
		if err != nil {
			return nil, fmt.Errorf("signing key %d %w", i+1, err)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// parseKey reads one key; its errors continue "signing key N".
func parseKey(field string) (Key, error) {
	if encoded, ok := strings.CutPrefix(field, SymmetricPrefix); ok {
		shared, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			return Key{}, fmt.Errorf("is not base64 after %s: %w", SymmetricPrefix, err)
		}
		if len(shared) < 24 {
			return Key{}, fmt.Errorf("is %d bytes; Standard Webhooks %s keys are 24 to 64 bytes", len(shared), SymmetricPrefix)
		}
		return Key{shared: shared}, nil
	}
	encoded, ok := strings.CutPrefix(field, PrivateKeyPrefix)
	if !ok {
		return Key{}, fmt.Errorf("starts with neither %s nor %s", SymmetricPrefix, PrivateKeyPrefix)
	}
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return Key{}, fmt.Errorf("is not base64 after %s: %w", PrivateKeyPrefix, err)
	}
	switch len(raw) {
	case ed25519.SeedSize:
		return Key{private: ed25519.NewKeyFromSeed(raw)}, nil
	case ed25519.PrivateKeySize:
		// The seed followed by its public key, as Go, libsodium and others
		// keep ed25519 private keys: a public half that does not belong to
		// the seed would publish a key that verifies nothing.
		private := ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
		if !bytes.Equal(private, raw) {
			return Key{}, fmt.Errorf("is not an ed25519 private key: its last 32 bytes are not the public key of its first 32")
		}
		return Key{private: private}, nil
	}
	return Key{}, fmt.Errorf("is %d bytes after %s; an ed25519 private key is 32 bytes (the seed) or 64 (the seed and the public key)",
		len(raw), PrivateKeyPrefix)
}

// PublicKeys lists the whpk_ keys that verify keys' v1a signatures, in the
// order of keys; shared keys have none.
func PublicKeys(keys []Key) []string {
	var public []string
	for _, key := range keys {
		if p := key.PublicKey(); p != "" {
			public = append(public, p)
		}
	}
	return public
}

// Signature is the webhook-signature header for one delivery: per key, a
// "v1,<base64 HMAC-SHA256>" or "v1a,<base64 ed25519 signature>" of
// "{webhook-id}.{webhook-timestamp}.{body}", separated by spaces.
func Signature(keys []Key, webhookID string, timestamp time.Time, body []byte) string {
	ts := strconv.FormatInt(timestamp.Unix(), 10)
	content := append([]byte(webhookID+"."+ts+"."), body...)
	signed := make([]string, 0, len(keys))
	for _, key := range keys {
		signed = append(signed, key.sign(content))
	}
	return strings.Join(signed, " ")
}
