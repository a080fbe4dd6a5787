package main

import (
	"net"
	"slices"
	"testing"
)

// The local shim checks no credentials and its manager may call back to this
// machine's loopback ports, so by default nobody else on the network may reach it.
func TestShimListensOnLoopbackByDefault(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	host, _, err := net.SplitHostPort(o.shimAddr)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Errorf("the shim listens on %q by default, want a loopback address", o.shimAddr)
	}
	if args := managerArgs(o); !slices.Contains(args, "--shim-bind-address="+o.shimAddr) {
		t.Errorf("the manager is started with %v, without the shim address", args)
	}
}

func TestShimAddressCanBeOpened(t *testing.T) {
	o, err := parseFlags([]string{"--shim-bind-address=:9000"})
	if err != nil {
		t.Fatal(err)
	}
	if args := managerArgs(o); !slices.Contains(args, "--shim-bind-address=:9000") {
		t.Errorf("the manager is started with %v, not on :9000", args)
	}
}
