package hack

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// These tests run hack/control-plane.sh in a scratch copy of the repository's
// layout, with a fake `go` first on PATH that records each call and builds an
// empty executable. They pin down when the script builds and when it must not.

const rootGoMod = `module github.com/kinfer/kinfer

go 1.26.0

require (
	k8s.io/api v0.37.2
	k8s.io/client-go v0.37.2
)
`

const k8sGoMod = `module github.com/kinfer/kinfer/hack/k8s

go 1.26.0

require k8s.io/kubernetes v1.37.2
`

// fakeGo writes "<package>" to $GO_CALLS for each build and creates the -o file.
const fakeGo = `#!/usr/bin/env bash
out= pkg=
while (($#)); do
	case "$1" in
	-o) out=$2; shift ;;
	-*) ;;
	*) pkg=$1 ;;
	esac
	shift
done
echo "${pkg}" >>"${GO_CALLS}"
printf '#!/bin/sh\n' >"${out}" && chmod +x "${out}"
`

var allPrograms = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

type scratch struct {
	root, calls string
	env         []string
}

func newScratch(t *testing.T, k8sMod string) *scratch {
	t.Helper()
	root := t.TempDir()
	script, err := os.ReadFile("control-plane.sh")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "hack", "control-plane.sh"), string(script), 0o755)
	write(t, filepath.Join(root, "go.mod"), rootGoMod, 0o644)
	write(t, filepath.Join(root, "hack", "k8s", "go.mod"), k8sMod, 0o644)
	fakeBin := filepath.Join(root, "fakebin")
	write(t, filepath.Join(fakeBin, "go"), fakeGo, 0o755)

	s := &scratch{root: root, calls: filepath.Join(root, "go-calls")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBEBUILDER_ASSETS=") && !strings.HasPrefix(kv, "PATH=") {
			s.env = append(s.env, kv)
		}
	}
	s.env = append(s.env, "PATH="+fakeBin+string(os.PathListSeparator)+os.Getenv("PATH"), "GO_CALLS="+s.calls)
	return s
}

func (s *scratch) run(t *testing.T, extraEnv ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.root, "hack", "control-plane.sh"))
	cmd.Env = append(append([]string{}, s.env...), extraEnv...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

func (s *scratch) builds(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(s.calls)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(raw))
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func TestControlPlaneBuildsMissingBinariesOnce(t *testing.T) {
	s := newScratch(t, k8sGoMod)

	stdout, stderr, err := s.run(t)
	if err != nil {
		t.Fatalf("first run failed: %v\n%s", err, stderr)
	}
	dir := filepath.Join(s.root, "bin", "k8s", "v1.37.2")
	if got := strings.TrimSpace(stdout); got != dir {
		t.Errorf("stdout = %q, want only the binaries' folder %q", got, dir)
	}
	want := []string{
		"go.etcd.io/etcd/server/v3",
		"k8s.io/kubernetes/cmd/kube-apiserver",
		"k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kube-scheduler",
	}
	if got := s.builds(t); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("first run built %v, want %v", got, want)
	}
	for _, name := range allPrograms {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s not in %s: %v", name, dir, err)
		}
		if !strings.Contains(stderr, "building "+name) {
			t.Errorf("stderr does not say it is building %s:\n%s", name, stderr)
		}
	}

	if err := os.Remove(s.calls); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := s.run(t); err != nil {
		t.Fatalf("second run failed: %v\n%s", err, stderr)
	}
	if got := s.builds(t); len(got) != 0 {
		t.Errorf("second run rebuilt %v; cached binaries must be reused", got)
	}

	if err := os.Remove(filepath.Join(dir, "kube-scheduler")); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := s.run(t); err != nil {
		t.Fatalf("third run failed: %v\n%s", err, stderr)
	}
	if got := s.builds(t); strings.Join(got, " ") != "k8s.io/kubernetes/cmd/kube-scheduler" {
		t.Errorf("after removing kube-scheduler the run built %v, want only kube-scheduler", got)
	}
}

func TestControlPlaneUsesKubebuilderAssets(t *testing.T) {
	tests := []struct {
		name       string
		programs   []string
		wantErr    string
		wantStdout bool
	}{
		{name: "folder with etcd and kube-apiserver", programs: []string{"etcd", "kube-apiserver"}, wantStdout: true},
		{name: "folder without kube-apiserver", programs: []string{"etcd"}, wantErr: "has no kube-apiserver"},
		{name: "empty folder", wantErr: "has no etcd"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newScratch(t, k8sGoMod)
			assets := t.TempDir()
			for _, p := range tc.programs {
				write(t, filepath.Join(assets, p), "#!/bin/sh\n", 0o755)
			}

			stdout, stderr, err := s.run(t, "KUBEBUILDER_ASSETS="+assets)
			if got := s.builds(t); len(got) != 0 {
				t.Errorf("built %v although KUBEBUILDER_ASSETS was set", got)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(stderr, tc.wantErr) {
					t.Errorf("err = %v, stderr = %q; want a failure saying %q", err, stderr, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("run failed: %v\n%s", err, stderr)
			}
			if got := strings.TrimSpace(stdout); got != assets {
				t.Errorf("stdout = %q, want %q", got, assets)
			}
		})
	}
}

func TestControlPlaneRefusesAVersionMismatch(t *testing.T) {
	s := newScratch(t, strings.Replace(k8sGoMod, "v1.37.2", "v1.36.3", 1))

	_, stderr, err := s.run(t)
	if err == nil {
		t.Fatal("run succeeded although hack/k8s builds another Kubernetes than go.mod uses")
	}
	for _, want := range []string{"k8s.io/api v0.37.2", "v1.36.3", "hack/k8s/update.sh v1.37.2"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not mention %q:\n%s", want, stderr)
		}
	}
	if got := s.builds(t); len(got) != 0 {
		t.Errorf("built %v despite the mismatch", got)
	}
}
