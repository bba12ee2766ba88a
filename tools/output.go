package tools

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// ErrCorrupt is returned by commands that found damaged data (after they
// have reported it).
var ErrCorrupt = errors.New("tools: damaged data found")

// Output says where a command writes.
type Output struct {
	// W receives the report (text, or JSON when JSON is set).
	W io.Writer
	// JSON selects machine-readable output.
	JSON bool
	// Progress receives progress; nil for none. When it is a terminal a
	// progress bar is drawn, otherwise a plain line every 10%.
	Progress io.Writer
}

func (o Output) printf(format string, args ...any) {
	if !o.JSON {
		fmt.Fprintf(o.W, format, args...)
	}
}

func (o Output) json(v any) error {
	if !o.JSON {
		return nil
	}
	enc := json.NewEncoder(o.W)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// progress returns a callback for byte progress, and a function that ends
// the display.
func (o Output) progress(desc string) (func(done, total int64), func()) {
	return o.progressOf(desc, true)
}

// progressCount is progress for a count of needles rather than
// bytes.
func (o Output) progressCount(desc string) (func(done, total int64), func()) {
	return o.progressOf(desc, false)
}

func (o Output) progressOf(desc string, bytes bool) (func(done, total int64), func()) {
	unit := "bytes"
	if !bytes {
		unit = "needles"
	}
	if o.Progress == nil {
		return nil, func() {}
	}
	if f, ok := o.Progress.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		var bar *progressbar.ProgressBar
		return func(done, total int64) {
				if bar == nil {
					opts := []progressbar.Option{
						progressbar.OptionSetWriter(o.Progress),
						progressbar.OptionSetDescription(desc),
						progressbar.OptionShowBytes(bytes),
						progressbar.OptionThrottle(100 * time.Millisecond),
						progressbar.OptionClearOnFinish(),
					}
					if !bytes {
						opts = append(opts, progressbar.OptionShowCount())
					}
					bar = progressbar.NewOptions64(total, opts...)
				}
				bar.Set64(done)
			}, func() {
				if bar != nil {
					bar.Finish()
				}
			}
	}
	last := int64(-1)
	return func(done, total int64) {
		if total <= 0 {
			return
		}
		pct := done * 100 / total / 10 * 10
		if pct != last {
			last = pct
			fmt.Fprintf(o.Progress, "%s: %d%% (%d of %d %s)\n", desc, pct, done, total, unit)
		}
	}, func() {}
}
