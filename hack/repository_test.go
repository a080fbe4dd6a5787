package hack

import (
	"encoding/base64"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// signingKey matches a Standard Webhooks secret: whsec_ and base64.
var signingKey = regexp.MustCompile(`whsec_[A-Za-z0-9+/]{16,}={0,2}`)

// A signing key published in the repository signs for anyone who reads it:
// a user who applies a sample unchanged would accept forged callbacks. Test
// files may hold keys of their own, which nothing installs.
func TestNoSigningKeyInTheRepository(t *testing.T) {
	root := ".."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			switch rel {
			case ".git", "bin", "dist":
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, "_test.go") {
			return nil
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, match := range signingKey.FindAll(raw, -1) {
			key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(string(match), "whsec_"))
			if err == nil && len(key) >= 16 {
				t.Errorf("%s holds the signing key %s; generate keys where they are used instead", rel, match)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
