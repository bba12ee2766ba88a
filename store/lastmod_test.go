package store

import (
	"math"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

// TestAppendLastModifiedAsTimeFormat checks the hand-written Last-Modified
// against time.Time.AppendFormat with http.TimeFormat, as the net/http
// path writes it: at the edges of days, months, leap years, centuries and
// the epoch, before 1970, outside years 1-9999 (left to AppendFormat), and
// at random instants.
func TestAppendLastModifiedAsTimeFormat(t *testing.T) {
	want := func(ns int64) string {
		return time.Unix(0, ns).UTC().Truncate(time.Second).Format(http.TimeFormat)
	}
	var times []int64
	for _, s := range []string{
		"1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2000-02-29T12:00:00Z",
		"2000-03-01T00:00:00Z", "1900-02-28T23:59:59Z", "1900-03-01T00:00:00Z",
		"2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z", "2100-03-01T00:00:00Z",
		"1677-09-21T00:12:44Z", "2262-04-11T23:47:16Z", "2026-12-02T03:04:05Z",
	} {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		ns := tm.UnixNano()
		times = append(times, ns, ns-1, ns+1, ns+int64(time.Second)-1)
	}
	times = append(times, 0, -1, 1, math.MinInt64, math.MaxInt64, -int64(time.Second), -int64(time.Second)-1)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		times = append(times, int64(rng.Uint64()))
	}
	buf := make([]byte, 0, 64)
	for _, ns := range times {
		got := string(appendLastModified(buf[:0], &needle.Needle{AppendTime: ns}))
		if w := want(ns); got != w {
			t.Fatalf("append time %d: Last-Modified %q, want %q", ns, got, w)
		}
	}
	// It appends: what the buffer held stays.
	if got := string(appendLastModified([]byte("x"), &needle.Needle{})); got != "x"+want(0) {
		t.Fatalf("appended to %q: %q", "x", got)
	}
}

// BenchmarkAppendLastModified prints the cost of one Last-Modified value.
func BenchmarkAppendLastModified(b *testing.B) {
	n := &needle.Needle{AppendTime: time.Date(2026, 12, 2, 3, 4, 5, 6, time.UTC).UnixNano()}
	buf := make([]byte, 0, 64)
	for b.Loop() {
		buf = appendLastModified(buf[:0], n)
	}
}
