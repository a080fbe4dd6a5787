package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// charts is what the figures are drawn from: the raw samples and values the
// sections measured, kept beside the table.
type charts struct {
	latencies  []latencySeries
	throughput []bar
	heap       []heapPoint
}

// latencySeries is one mode's submit → callback times.
type latencySeries struct {
	name    string
	samples []time.Duration
}

// bar is one throughput figure, in requests (or Jobs) per second.
type bar struct {
	name string
	rate float64
}

// heapPoint is the manager's heap over one held size: the median run and
// the range of the runs.
type heapPoint struct {
	held          int
	inUse, lo, hi float64
}

// chartFile names a chart written beside the report at out.
func chartFile(out, name string) string {
	base := strings.TrimSuffix(filepath.Base(out), filepath.Ext(out))
	return filepath.Join(filepath.Dir(out), base+"-"+name+".svg")
}

// write draws each chart that has data as an SVG beside out, and returns
// markdown that shows them, with paths relative to out.
func (c *charts) write(out string) (string, error) {
	var md strings.Builder
	for _, chart := range []struct {
		name, title string
		draw        func() (*plot.Plot, error)
		ok          bool
	}{
		{"latency", "submit → callback, by mode", c.latencyPlot, len(c.latencies) > 0},
		{"throughput", "throughput next to bare Jobs", c.throughputPlot, len(c.throughput) > 0},
		{"heap", "manager heap against finished requests held", c.heapPlot, len(c.heap) > 0},
	} {
		if !chart.ok {
			continue
		}
		p, err := chart.draw()
		if err != nil {
			return "", fmt.Errorf("chart %s: %w", chart.name, err)
		}
		path := chartFile(out, chart.name)
		if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, path); err != nil {
			return "", fmt.Errorf("chart %s: %w", chart.name, err)
		}
		fmt.Fprintf(&md, "![%s](%s)\n", chart.title, filepath.Base(path))
	}
	return md.String(), nil
}

// cdf is the share of samples at or under each sample, in milliseconds,
// on a log axis (so at least a tenth of a millisecond).
func cdf(samples []time.Duration) plotter.XYs {
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	xys := make(plotter.XYs, len(sorted))
	for i, d := range sorted {
		xys[i].X = math.Max(float64(d)/float64(time.Millisecond), 0.1)
		xys[i].Y = float64(i+1) / float64(len(sorted))
	}
	return xys
}

func (c *charts) latencyPlot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "submit → callback, by mode (share of requests at or under a time)"
	p.X.Label.Text = "milliseconds (log scale)"
	p.Y.Label.Text = "share of requests"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top, p.Legend.Left = true, true
	lines := make([]any, 0, 2*len(c.latencies))
	for _, s := range c.latencies {
		if len(s.samples) > 0 {
			lines = append(lines, fmt.Sprintf("%s (%d)", s.name, len(s.samples)), cdf(s.samples))
		}
	}
	return p, plotutil.AddLines(p, lines...)
}

func (c *charts) throughputPlot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "throughput on the local cluster, in one run"
	p.Y.Label.Text = "per second"
	values := make(plotter.Values, len(c.throughput))
	names := make([]string, len(c.throughput))
	for i, b := range c.throughput {
		values[i], names[i] = b.rate, b.name
	}
	bars, err := plotter.NewBarChart(values, 1.2*vg.Centimeter)
	if err != nil {
		return nil, err
	}
	bars.Color = plotutil.Color(0)
	p.Add(bars)
	p.NominalX(names...)
	return p, nil
}

func (c *charts) heapPlot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "manager heap in use after GC (median of runs, bars: range)"
	p.X.Label.Text = "finished requests held"
	p.Y.Label.Text = "MiB"
	p.Y.Min = 0
	xys := make(plotter.XYs, len(c.heap))
	yerr := make(plotter.YErrors, len(c.heap))
	for i, h := range c.heap {
		xys[i].X, xys[i].Y = float64(h.held), h.inUse
		yerr[i].Low, yerr[i].High = h.inUse-h.lo, h.hi-h.inUse
	}
	if err := plotutil.AddLinePoints(p, "heap", xys); err != nil {
		return nil, err
	}
	bars, err := plotter.NewYErrorBars(struct {
		plotter.XYs
		plotter.YErrors
	}{xys, yerr})
	if err != nil {
		return nil, err
	}
	p.Add(bars)
	return p, nil
}

// removeCharts deletes charts a run did not draw, so that none from an
// older run is left beside a report that no longer shows it.
func removeCharts(out string) {
	for _, name := range []string{"latency", "throughput", "heap"} {
		_ = os.Remove(chartFile(out, name))
	}
}
