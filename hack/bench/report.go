package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// row is one figure: what was measured, its value, and the target it is held to.
type row struct {
	section, measure, value, target, verdict string
}

type report struct {
	rows   []row
	notes  []string
	charts charts
}

func (r *report) add(section, measure, value string) {
	r.rows = append(r.rows, row{section: section, measure: measure, value: value})
}

// check adds a figure with a target; met says whether the target holds.
func (r *report) check(section, measure, value, target string, met bool) {
	verdict := "missed"
	if met {
		verdict = "met"
	}
	r.rows = append(r.rows, row{section: section, measure: measure, value: value, target: target, verdict: verdict})
}

func (r *report) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *report) print() {
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintln(w, "SECTION\tMEASURE\tVALUE\tTARGET\t")
	for _, x := range r.rows {
		_, _ = fmt.Fprintf(w, "%s\t%s\t%s\t%s\t\n", x.section, x.measure, x.value, strings.TrimSpace(x.target+" "+x.verdict))
	}
	_ = w.Flush()
	for _, n := range r.notes {
		fmt.Println("  - " + n)
	}
}

const (
	beginMarker = "<!-- bench:begin (written by make bench; edit outside the markers) -->"
	endMarker   = "<!-- bench:end -->"
)

// write puts the results between the markers of o.out, keeping the prose
// around them; a new file gets the results alone.
func (r *report) write(o *options, took time.Duration) error {
	var b strings.Builder
	b.WriteString(beginMarker + "\n\n")
	fmt.Fprintf(&b, "Measured %s on %s; `make bench%s` took %s.\n\n", time.Now().UTC().Format("2006-01-02"),
		machine(), map[bool]string{true: " BENCH_SHORT=1", false: ""}[o.short], took.Round(time.Second))
	fmt.Fprintf(&b, "kinfer %s, %s, Kubernetes %s (control plane built from source), sizes: %d requests on the local cluster, "+
		"%d operator-only, %.0f/s for %s, %d+%d isolation at %.0f/s each, held %v, %d shim submits, %d clients, "+
		"queued %v with %d starts timed, a burst of %d with %d starts timed after it, %d pooled requests next to %d with "+
		"one Job each, the pool at %.0f/s for %s, rate steps of %s.\n\n",
		gitCommit(o.root), runtime.Version(), filepath.Base(o.assets), o.localRequests, o.envtestRequests, o.latencyRate,
		o.latencyDuration, o.isolationRequests, o.isolationRequests, o.isolationRate, o.held, o.shimRequests, o.clients,
		o.queued, o.queueStarts, o.burst, o.burstWindow, o.poolRequests, o.poolJobRequests, o.poolLatencyRate,
		o.poolLatencyDuration, o.poolStepDuration)
	b.WriteString("| section | measure | value | target |\n| --- | --- | --- | --- |\n")
	for _, x := range r.rows {
		target := x.target
		if x.verdict != "" {
			target += " — **" + x.verdict + "**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", x.section, x.measure, x.value, target)
	}
	removeCharts(o.out)
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	images, err := r.charts.write(o.out)
	if err != nil {
		return err
	}
	if images != "" {
		b.WriteString("\n" + images)
	}
	if len(r.notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.notes {
			b.WriteString("- " + n + "\n")
		}
	}
	b.WriteString("\n" + endMarker)

	old, err := os.ReadFile(o.out)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	content := []byte(b.String() + "\n")
	if i, j := bytes.Index(old, []byte(beginMarker)), bytes.Index(old, []byte(endMarker)); i >= 0 && j > i {
		content = append(append(append([]byte{}, old[:i]...), b.String()...), old[j+len(endMarker):]...)
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(o.out, content, 0o644)
}

func machine() string {
	cpu := "unknown CPU"
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(strings.SplitN(string(raw), "\n", 2)[0], "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%d CPUs (%s)%s", runtime.NumCPU(), cpu, mem)
}

func gitCommit(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "(unknown commit)"
	}
	return strings.TrimSpace(string(out))
}
