package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/spf13/pflag"
)

// decodeMemoryShare is the share of the process's memory (the cgroup
// limit, else the machine's RAM) that --decode-memory defaults to.
const decodeMemoryShare = 0.5

// uploadLimitFlags are the flags of the roles that accept uploads
// (`haybale gateway` and `haybale server`) about hostile input.
type uploadLimitFlags struct {
	decodeMemory   byteSize
	allowedOrigins []string
	webp           bool
}

func (f *uploadLimitFlags) register(fs *pflag.FlagSet) {
	fs.Var(&f.decodeMemory, "decode-memory", "memory budget of decoding and resizing, e.g. 2GiB; each upload is charged an estimate from its header before decoding, and one over the whole budget is refused with 413 (0: half of the cgroup memory limit, or of RAM)")
	fs.BoolVar(&f.webp, "webp", true, "encode every stored size as WebP too, beside its JPEG or PNG (--webp=false: JPEG/PNG only; the WebP encoder, libwebp in WebAssembly, multiplies the upload CPU by about 6, see bench/RESULTS.md)")
	fs.StringSliceVar(&f.allowedOrigins, "allowed-origins", nil, "origins (https://host[:port], comma-separated) whose web pages may upload and delete through a browser, besides the gateway's own")
}

func (f *uploadLimitFlags) validate() error {
	if f.decodeMemory < 0 {
		return fmt.Errorf("--decode-memory %v: must not be negative", f.decodeMemory)
	}
	return nil
}

// decodeBudget returns --decode-memory, or its default: decodeMemoryShare
// of the cgroup memory limit where there is one, else of the machine's
// RAM. It also gives the Go runtime a soft memory limit (GOMEMLIMIT, unless
// the environment sets one) of 90% of that memory less offHeap, so that
// garbage left by finished decodes is collected before it adds up to an
// out-of-memory kill. offHeap is memory the process may hold outside the
// Go heap (the images a cache in the same process keeps in its memfd);
// at most half of the 90% is set aside for it.
func (f *uploadLimitFlags) decodeBudget(logger *slog.Logger, offHeap int64) (int64, error) {
	total, err := memlimit.ApplyFallback(memlimit.FromCgroup, memlimit.FromSystem)()
	if err != nil || total == 0 {
		total = 0
		logger.Warn("cannot read the memory limit of this process", "err", err)
	}
	if total > 0 {
		// Never below half of the 90%: the heap needs room of its own.
		outside := min(uint64(max(offHeap, 0)), uint64(float64(total)*0.45))
		soft := uint64(float64(total)*0.9) - outside
		if _, err := memlimit.Set(memlimit.WithRatio(1), memlimit.WithProvider(memlimit.Limit(soft))); err != nil {
			logger.Warn("cannot set the Go soft memory limit", "err", err)
		}
	}
	budget := int64(f.decodeMemory)
	if budget == 0 {
		if total == 0 {
			return 0, fmt.Errorf("cannot tell how much memory this machine has: set --decode-memory")
		}
		budget = int64(float64(total) * decodeMemoryShare)
	}
	logger.Info("decode memory budget", "bytes", budget, "memory", total)
	return budget, nil
}

// serverOrigins returns the origins whose pages may upload to `haybale
// server`: --allowed-origins and the origin of --public-url, under which
// browsers reach it (through a proxy that rewrites Host, say).
func serverOrigins(allowed []string, publicURL string) []string {
	out := slices.Clone(allowed)
	if o := originOf(publicURL); o != "" {
		out = append(out, o)
	}
	return out
}

// originOf returns the web origin (scheme://host[:port]) of an absolute
// URL, or "" when it has none.
func originOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// reachableFromElsewhere reports whether a listener on addr (host:port)
// accepts connections from other machines: any address but loopback
// ones and "localhost".
func reachableFromElsewhere(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true
	}
	if strings.EqualFold(host, "localhost") {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}
