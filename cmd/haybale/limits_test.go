package main

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestServerBindsLoopback: the front port defaults to loopback, and any
// other address without an API key needs --public-uploads.
func TestServerBindsLoopback(t *testing.T) {
	f := serverFlags{}
	f.register(pflag.NewFlagSet("server", pflag.ContinueOnError))
	if f.httpAddr != "127.0.0.1:8000" || reachableFromElsewhere(f.httpAddr) {
		t.Fatalf("default --http %q is reachable from other machines", f.httpAddr)
	}
	f.dir, f.httpAddr = t.TempDir(), "0.0.0.0:0"
	err := runServer(context.Background(), &f, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--public-uploads") || !strings.Contains(err.Error(), "--api-key-file") {
		t.Fatalf("err = %v, want a refusal naming --api-key-file and --public-uploads", err)
	}
}

func TestReachableFromElsewhere(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8000": false, "[::1]:8000": false, "localhost:8000": false, "127.1.2.3:1": false,
		":8000": true, "0.0.0.0:8000": true, "[::]:8000": true, "10.1.2.3:8000": true, "photos.example.com:80": true,
		"not an address": true,
	} {
		if got := reachableFromElsewhere(addr); got != want {
			t.Errorf("reachableFromElsewhere(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestOriginOf(t *testing.T) {
	for in, want := range map[string]string{
		"http://localhost:8000": "http://localhost:8000", "https://photos.example.com/base/": "https://photos.example.com",
	} {
		if got := originOf(in); got != want {
			t.Errorf("originOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWebPFlag: WebP outputs are on unless --webp=false, for the gateway
// and the all-in-one server alike.
func TestWebPFlag(t *testing.T) {
	var g gatewayFlags
	fs := pflag.NewFlagSet("gateway", pflag.ContinueOnError)
	g.register(fs)
	if !g.limits.webp {
		t.Error("gateway: WebP is off by default")
	}
	if err := fs.Parse([]string{"--webp=false"}); err != nil || g.limits.webp {
		t.Errorf("gateway --webp=false: webp %v, err %v", g.limits.webp, err)
	}
	var s serverFlags
	fs = pflag.NewFlagSet("server", pflag.ContinueOnError)
	s.register(fs)
	if err := fs.Parse([]string{"--webp=false"}); err != nil || s.limits.webp {
		t.Errorf("server --webp=false: webp %v, err %v", s.limits.webp, err)
	}
}
