package store

import (
	"testing"
	"time"
)

func TestParseRange(t *testing.T) {
	cases := []struct {
		h          string
		size       int64
		start, end int64
		res        rangeResult
	}{
		{"bytes=0-0", 10, 0, 1, rangeOne},
		{"bytes=0-9", 10, 0, 10, rangeOne},
		{"bytes=0-99", 10, 0, 10, rangeOne},
		{"bytes=9-", 10, 9, 10, rangeOne},
		{"bytes=-3", 10, 7, 10, rangeOne},
		{"bytes=-30", 10, 0, 10, rangeOne},
		{"bytes= 2 - 4 ", 10, 2, 5, rangeOne},
		{"bytes=10-", 10, 0, 0, rangeUnsatisfiable},
		{"bytes=-0", 10, 0, 0, rangeUnsatisfiable},
		{"bytes=0-", 0, 0, 0, rangeUnsatisfiable},
		{"bytes=99999999999999999999999999999-", 10, 0, 0, rangeUnsatisfiable},
		{"bytes=1-99999999999999999999999999999", 10, 1, 10, rangeOne},
		{"bytes=5-4", 10, 0, 0, rangeInvalid},
		{"bytes=a-", 10, 0, 0, rangeInvalid},
		{"bytes=+1-2", 10, 0, 0, rangeInvalid},
		{"bytes=-", 10, 0, 0, rangeInvalid},
		{"bytes=", 10, 0, 0, rangeInvalid},
		{"bytes", 10, 0, 0, rangeInvalid},
		{"", 10, 0, 0, rangeInvalid},
		{"bytes=0-1,3-4", 10, 0, 0, rangeIgnore},
		{"items=0-1", 10, 0, 0, rangeIgnore},
	}
	for _, c := range cases {
		start, end, res := parseRange(c.h, c.size)
		if res != c.res || (res == rangeOne && (start != c.start || end != c.end)) {
			t.Errorf("parseRange(%q, %d) = %d, %d, %v; want %d, %d, %v", c.h, c.size, start, end, res, c.start, c.end, c.res)
		}
	}
}

// FuzzParseRange checks that no Range or entity-tag header panics and that
// a satisfiable range always lies inside the body.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-1", "bytes=-5", "bytes=5-", "bytes=0-1,2-3", `"abc", W/"d"`, "*", "bytes=99999999999999999999-"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		if size < 0 {
			return
		}
		start, end, res := parseRange(h, size)
		if res == rangeOne && (start < 0 || start >= end || end > size) {
			t.Fatalf("parseRange(%q, %d) = [%d, %d)", h, size, start, end)
		}
		etag := []byte(`"0123456789abcdef"`)
		etagListMatch([]string{h}, etag, true)
		etagListMatch([]string{h}, etag, false)
		ifRangeHolds([]string{h}, etag, time.Unix(0, 0))
	})
}
