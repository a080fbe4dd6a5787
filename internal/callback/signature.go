package callback

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks secrets are "whsec_" followed by the base64 of the key.
const secretPrefix = "whsec_"

// ParseKeys reads the signing keys in a secret value: one or more whsec_ keys
// separated by white space, so a new key can be added before the old one is
// removed. Each delivery is signed with every key.
func ParseKeys(secret string) ([][]byte, error) {
	fields := strings.Fields(secret)
	if len(fields) == 0 {
		return nil, fmt.Errorf("signing secret holds no key")
	}
	keys := make([][]byte, 0, len(fields))
	for i, f := range fields {
		encoded, ok := strings.CutPrefix(f, secretPrefix)
		if !ok {
			return nil, fmt.Errorf("signing key %d does not start with %s", i+1, secretPrefix)
		}
		key, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			return nil, fmt.Errorf("signing key %d is not base64 after %s: %w", i+1, secretPrefix, err)
		}
		if len(key) < 24 {
			return nil, fmt.Errorf("signing key %d is %d bytes; Standard Webhooks keys are 24 to 64 bytes", i+1, len(key))
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// Signature is the webhook-signature header for one delivery: a "v1,<base64
// HMAC-SHA256>" of "{webhook-id}.{webhook-timestamp}.{body}" per key, separated
// by spaces.
func Signature(keys [][]byte, webhookID string, timestamp time.Time, body []byte) string {
	signed := make([]string, 0, len(keys))
	for _, key := range keys {
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(webhookID))
		mac.Write([]byte("."))
		mac.Write([]byte(strconv.FormatInt(timestamp.Unix(), 10)))
		mac.Write([]byte("."))
		mac.Write(body)
		signed = append(signed, "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	return strings.Join(signed, " ")
}
