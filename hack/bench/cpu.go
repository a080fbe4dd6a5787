package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ticksPerSecond is USER_HZ, the unit of CPU times in /proc on Linux.
const ticksPerSecond = 100

// cpuSample is the CPU time used so far by each process the harness started
// (by program name, with its children: those it has waited for, such as the
// workers of finished pods the local node ran, and those still running, such
// as a pool's pods), by the harness itself (its clients and receivers), and
// by the whole machine.
type cpuSample struct {
	at              time.Time
	byProgram       map[string]time.Duration
	machineBusy     time.Duration // every core's non-idle time
	machineCapacity time.Duration // every core's time
}

func sampleCPU() (cpuSample, error) {
	s := cpuSample{at: time.Now(), byProgram: map[string]time.Duration{}}
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return s, err
	}
	parent := map[int]int{}
	times := map[int]time.Duration{}
	program := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fields, err := statFields(pid)
		if err != nil {
			continue // ended since the directory was read
		}
		parent[pid], _ = strconv.Atoi(fields[1])
		ticks := sumFields(fields, 11, 12) // utime, stime
		if pid != self {
			ticks += sumFields(fields, 13, 14) // cutime, cstime: children waited for
		}
		times[pid] = time.Duration(ticks) * time.Second / ticksPerSecond
		if argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			program[pid] = filepath.Base(strings.SplitN(string(argv), "\x00", 2)[0])
		}
	}
	for pid, t := range times {
		switch {
		case pid == self:
			s.byProgram["harness"] += t
		case parent[pid] == self:
			s.byProgram[program[pid]] += t
		case parent[parent[pid]] == self:
			// A child still running: once it ends and is waited for, its
			// time moves into its parent's, counted above.
			s.byProgram[program[parent[pid]]] += t
		}
	}
	s.machineBusy, s.machineCapacity, err = machineCPU()
	return s, err
}

// statFields are the fields of /proc/pid/stat after the command name (which
// is in parentheses and may hold spaces): state is [0], ppid [1], utime [11].
func statFields(pid int) ([]string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	end := strings.LastIndexByte(string(raw), ')')
	if end < 0 || end+2 > len(raw) {
		return nil, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(string(raw[end+2:]))
	if len(fields) < 15 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	return fields, nil
}

func sumFields(fields []string, at ...int) int64 {
	var sum int64
	for _, i := range at {
		v, _ := strconv.ParseInt(fields[i], 10, 64)
		sum += v
	}
	return sum
}

// machineCPU is the time all cores have spent busy, and in all, since boot.
func machineCPU() (busy, capacity time.Duration, err error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var all, idle int64
	for i, f := range fields[1:9] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		all += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	toDuration := func(ticks int64) time.Duration { return time.Duration(ticks) * time.Second / ticksPerSecond }
	return toDuration(all - idle), toDuration(all), nil
}

// cpuUse is what the processes and the machine spent between two samples.
type cpuUse struct {
	wall      time.Duration
	byProgram map[string]time.Duration
	busy      float64 // share of the machine's cores that was busy
}

func cpuBetween(a, b cpuSample) cpuUse {
	u := cpuUse{wall: b.at.Sub(a.at), byProgram: map[string]time.Duration{}}
	for name, t := range b.byProgram {
		u.byProgram[name] = t - a.byProgram[name]
	}
	if capacity := b.machineCapacity - a.machineCapacity; capacity > 0 {
		u.busy = float64(b.machineBusy-a.machineBusy) / float64(capacity)
	}
	return u
}

// compareCPU describes, per item, the CPU each program used in two runs of
// n items each, busiest first, and how busy the machine was.
func compareCPU(a, b cpuUse, n int) string {
	names := make([]string, 0, len(b.byProgram))
	for name := range b.byProgram {
		names = append(names, name)
	}
	for name := range a.byProgram {
		if _, ok := b.byProgram[name]; !ok {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(x, y string) int { return cmp.Compare(b.byProgram[y], b.byProgram[x]) })
	perItem := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	var parts []string
	var totalA, totalB time.Duration
	for _, name := range names {
		totalA += a.byProgram[name]
		totalB += b.byProgram[name]
		if perItem(a.byProgram[name]) < 0.5 && perItem(b.byProgram[name]) < 0.5 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.0f → %.0f", name, perItem(a.byProgram[name]), perItem(b.byProgram[name])))
	}
	return fmt.Sprintf("ms per item: %s; all %.0f → %.0f. Cores busy: %.0f%% → %.0f%%",
		strings.Join(parts, ", "), perItem(totalA), perItem(totalB), 100*a.busy, 100*b.busy)
}

// measureCPU runs f and returns the CPU used while it ran.
func measureCPU(f func() error) (cpuUse, error) {
	before, err := sampleCPU()
	if err != nil {
		return cpuUse{}, err
	}
	if err := f(); err != nil {
		return cpuUse{}, err
	}
	after, err := sampleCPU()
	if err != nil {
		return cpuUse{}, err
	}
	return cpuBetween(before, after), nil
}
