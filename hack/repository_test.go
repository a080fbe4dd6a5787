package hack

import (
	"encoding/base64"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// signingKey matches a Standard Webhooks secret: whsec_ (a shared key) or
// whsk_ (an ed25519 private key), and base64.
var signingKey = regexp.MustCompile(`(whsec|whsk)_[A-Za-z0-9+/]{16,}={0,2}`)

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
			_, encoded, _ := strings.Cut(string(match), "_")
			key, err := base64.StdEncoding.DecodeString(encoded)
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

// check-tracked-files.sh keeps built programs and large files out of the
// repository (make verify runs it): it must pass a clean tree and fail on
// each kind of file that does not belong.
func TestCheckTrackedFiles(t *testing.T) {
	script, err := filepath.Abs("check-tracked-files.sh")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		file    string
		content []byte
		refused bool
	}{
		{name: "source", file: "main.go", content: []byte("package main\n"), refused: false},
		{name: "over 1 MiB", file: "data.txt", content: []byte(strings.Repeat("x", 1<<20+1)), refused: true},
		{name: "compiled program", file: "localnode", content: append([]byte("\x7fELF\x02\x01\x01\x00"), make([]byte, 64)...), refused: true},
		{name: "python byte code", file: "__pycache__/client.cpython-311.pyc", content: []byte("\xa7\r\r\n\x00\x00\x00\x00"), refused: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			repo := t.TempDir()
			git(t, repo, "init", "-q")
			if err := os.WriteFile(filepath.Join(repo, "README"), []byte("text\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(repo, tc.file)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.content, 0o755); err != nil {
				t.Fatal(err)
			}
			git(t, repo, "add", "-A")
			cmd := exec.Command(script)
			cmd.Dir = repo
			out, err := cmd.CombinedOutput()
			if refused := err != nil; refused != tc.refused {
				t.Errorf("refused = %v, want %v; it said:\n%s", refused, tc.refused, out)
			}
			if tc.refused && !strings.Contains(string(out), tc.file) {
				t.Errorf("the refusal does not name %s:\n%s", tc.file, out)
			}
		})
	}
}

func git(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

// docs/api.md shows the receiver examples whole, so what readers copy is
// what the tests run: each file must appear in the document as one fenced
// block, byte for byte. The Python receiver's packages come from PyPI, which
// tests cannot reach, so it is only parsed.
func TestDocsShowTheReceiverExamples(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	for file, fence := range map[string]string{
		"examples/receivers/node/receiver.js":   "```js\n",
		"examples/receivers/python/receiver.py": "```python\n",
	} {
		code, err := os.ReadFile(filepath.Join("..", file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(doc), fence+string(code)+"```\n") {
			t.Errorf("docs/api.md does not show %s as it is; copy the file into its block again", file)
		}
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed; the Python receiver is not parsed")
	}
	parse := exec.Command(python, "-c", "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])",
		filepath.Join("..", "examples", "receivers", "python", "receiver.py"))
	if out, err := parse.CombinedOutput(); err != nil {
		t.Errorf("the Python receiver does not parse: %v\n%s", err, out)
	}
}
