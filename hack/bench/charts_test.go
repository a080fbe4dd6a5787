package main

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestChartsAreDrawnBesideTheReport(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "benchmarks.md")
	ms := func(ns ...int) []time.Duration {
		ds := make([]time.Duration, len(ns))
		for i, n := range ns {
			ds[i] = time.Duration(n) * time.Millisecond
		}
		return ds
	}
	c := charts{
		latencies:  []latencySeries{{"one Job per request", ms(900, 1200, 3000)}, {"warm pool", ms(8, 12, 40)}},
		throughput: []bar{{"2: bare Jobs", 30}, {"9: pool, max 4", 80}},
		heap:       []heapPoint{{held: 0, inUse: 20, lo: 19, hi: 21}, {held: 10000, inUse: 60, lo: 58, hi: 63}},
	}

	md, err := c.write(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"latency", "throughput", "heap"} {
		path := filepath.Join(dir, "benchmarks-"+name+".svg")
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s chart: %v", name, err)
		}
		var svg struct {
			XMLName xml.Name
		}
		if err := xml.Unmarshal(raw, &svg); err != nil || svg.XMLName.Local != "svg" {
			t.Errorf("%s chart is not an SVG document (%v, root %q)", name, err, svg.XMLName.Local)
		}
		if !strings.Contains(md, "](benchmarks-"+name+".svg)") {
			t.Errorf("the report does not show the %s chart: %q", name, md)
		}
	}
}

func TestOnlyChartsWithDataAreDrawn(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "benchmarks.md")
	c := charts{heap: []heapPoint{{held: 0, inUse: 20, lo: 20, hi: 20}}}
	md, err := c.write(out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(md, "latency") || !strings.Contains(md, "heap") {
		t.Errorf("report shows %q; want the heap chart alone", md)
	}
	if _, err := os.Stat(filepath.Join(dir, "benchmarks-latency.svg")); !os.IsNotExist(err) {
		t.Errorf("a latency chart was drawn without latencies (%v)", err)
	}
}

func TestCDFRisesToOneOverSortedSamples(t *testing.T) {
	xys := cdf([]time.Duration{30 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 0})
	wantX := []float64{0.1, 10, 20, 30}
	for i, p := range xys {
		if p.X != wantX[i] || p.Y != float64(i+1)/4 {
			t.Errorf("point %d is (%v, %v), want (%v, %v)", i, p.X, p.Y, wantX[i], float64(i+1)/4)
		}
	}
}
