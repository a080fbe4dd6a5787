package hack

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// dockerfiles are the Dockerfiles built from the repository root, with the
// Go packages each one builds (none for an image with no Go in it).
var dockerfiles = map[string][]string{
	"Dockerfile":                  {"."},
	"examples/workers/Dockerfile": {"./examples/workers/sleep", "./examples/workers/echo", "./examples/workers/sentiment"},
	"examples/python/Dockerfile":  nil,
}

// No Docker engine runs where the tests do, so the build context is checked
// instead: every file a Dockerfile's COPY names, and every tracked file under
// a folder it names, is sent to the builder, as judged by the matcher Docker
// itself uses on .dockerignore; and the Go code an image builds lies within
// what it copies.
func TestDockerfilesFindWhatTheyCopyInTheBuildContext(t *testing.T) {
	files := trackedFiles(t)
	pm := dockerignore(t)
	found, err := filepath.Glob(filepath.Join("..", "examples", "*", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(found, filepath.Join("..", "Dockerfile")) {
		rel, _ := filepath.Rel("..", f)
		if _, ok := dockerfiles[filepath.ToSlash(rel)]; !ok {
			t.Errorf("%s is not in this test's list of Dockerfiles", rel)
		}
	}
	for dockerfile, packages := range dockerfiles {
		t.Run(dockerfile, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("..", dockerfile))
			if err != nil {
				t.Fatal(err)
			}
			sources := copySources(string(raw))
			if len(sources) == 0 {
				t.Fatal("no COPY from the build context")
			}
			for _, src := range sources {
				for _, missing := range lostFromContext(pm, files, src) {
					t.Errorf("COPY %s: %s is not in the build context (.dockerignore)", src, missing)
				}
			}
			for _, dir := range goPackageDirs(t, packages) {
				if !slices.ContainsFunc(sources, func(src string) bool { return within(dir, src) }) {
					t.Errorf("it builds Go code in %s/, which no COPY brings in", dir)
				}
			}
		})
	}
}

// The check itself: a folder that .dockerignore leaves out is caught, and a
// file brought back with ! is not.
func TestLostFromContext(t *testing.T) {
	pm, err := patternmatcher.New([]string{"examples/", "!examples/keep/", "*.md"})
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"examples/gone/a.go", "examples/keep/b.go", "main.go", "README.md"}
	tests := []struct {
		src  string
		want []string
	}{
		{src: "examples/gone/", want: []string{"examples/gone/a.go"}},
		{src: "examples/keep/", want: nil},
		{src: "main.go", want: nil},
		{src: "README.md", want: []string{"README.md"}},
		{src: "absent/", want: []string{"absent/"}},
	}
	for _, tc := range tests {
		if got := lostFromContext(pm, files, tc.src); !slices.Equal(got, tc.want) {
			t.Errorf("lostFromContext(%q) = %q, want %q", tc.src, got, tc.want)
		}
	}
	if got := copySources("FROM x\nCOPY --from=builder /w /w\ncopy a.go \\\n  b/ ./\nCOPY [\"c d\", \"/e\"]\n"); !slices.Equal(got, []string{"a.go", "b/", "c d"}) {
		t.Errorf("copySources = %q", got)
	}
}

// lostFromContext lists what of src the build context lacks: src itself when
// no tracked file is or lies under it, else every file under it that
// .dockerignore leaves out.
func lostFromContext(pm *patternmatcher.PatternMatcher, files []string, src string) []string {
	clean := path.Clean(strings.TrimPrefix(src, "./"))
	var lost []string
	matched := false
	for _, f := range files {
		if f != clean && !strings.HasPrefix(f, clean+"/") && clean != "." {
			continue
		}
		matched = true
		if ignored, _, err := pm.MatchesUsingParentResults(f, patternmatcher.MatchInfo{}); err != nil || ignored {
			lost = append(lost, f)
		}
	}
	if !matched {
		return []string{src}
	}
	return lost
}

// copySources reads the build-context sources of a Dockerfile's COPY and ADD
// instructions (not those copying from another stage).
func copySources(dockerfile string) []string {
	var sources []string
	scanner := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(dockerfile, "\\\n", " ")))
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 3 || (!strings.EqualFold(fields[0], "COPY") && !strings.EqualFold(fields[0], "ADD")) {
			continue
		}
		args := fields[1:]
		fromStage := false
		for len(args) > 0 && strings.HasPrefix(args[0], "--") {
			fromStage = fromStage || strings.HasPrefix(args[0], "--from")
			args = args[1:]
		}
		if fromStage {
			continue
		}
		if rest := strings.Join(args, " "); strings.HasPrefix(rest, "[") {
			var list []string
			if json.Unmarshal([]byte(rest), &list) == nil && len(list) > 1 {
				sources = append(sources, list[:len(list)-1]...)
			}
			continue
		}
		if len(args) > 1 {
			sources = append(sources, args[:len(args)-1]...)
		}
	}
	return sources
}

func within(dir, src string) bool {
	src = path.Clean(strings.TrimPrefix(src, "./"))
	return dir == src || strings.HasPrefix(dir, src+"/") || src == "."
}

// goPackageDirs lists the repository folders whose Go code the packages
// build from, as go list sees them.
func goPackageDirs(t *testing.T, packages []string) []string {
	t.Helper()
	if len(packages) == 0 {
		return nil
	}
	cmd := exec.Command("go", append([]string{"list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}"}, packages...)...)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", packages, err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, dir := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			t.Fatal(err)
		}
		if rel = filepath.ToSlash(rel); rel == "." {
			rel = "main.go" // the root's one Go file that is not a test
		}
		if !slices.Contains(dirs, rel) {
			dirs = append(dirs, rel)
		}
	}
	return dirs
}

func dockerignore(t *testing.T) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join("..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

// trackedFiles are the repository's files as a fresh clone has them.
func trackedFiles(t *testing.T) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
}
