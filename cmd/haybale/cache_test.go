package main

import (
	"testing"

	"github.com/spf13/pflag"
)

// TestCacheEventLoopDefault checks that `haybale cache` serves its public
// listener on the event loops unless told otherwise, and that
// --event-loop=false selects fasthttp.
func TestCacheEventLoopDefault(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{{nil, true}, {[]string{"--event-loop=false"}, false}, {[]string{"--event-loop"}, true}} {
		var f cacheFlags
		fs := pflag.NewFlagSet("cache", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		if f.eventLoop != c.want {
			t.Errorf("%q: event loop %v, want %v", c.args, f.eventLoop, c.want)
		}
	}
}
