package serve

import (
	"context"
	"errors"
	"syscall"
	"time"
)

// serveLoop accepts connections and hands them to the event loops until
// Shutdown closes the listener.
func (s *HTTP) serveLoop() error {
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.stopping:
				return nil
			default:
			}
			if temporaryAccept(err) {
				// Out of descriptors or the like: back off, as net/http
				// does, rather than spin.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.opts.Logger.Warn(s.opts.Name+": accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if err := s.loopSrv.Enroll(c); err != nil {
			s.opts.Logger.Warn(s.opts.Name+": connection not served", "err", err)
		}
	}
}

// shutdownLoop stops accepting, then drains the loops until ctx ends.
func (s *HTTP) shutdownLoop(ctx context.Context) error {
	s.ln.Close()
	return s.loopSrv.Shutdown(ctx)
}

// temporaryAccept reports whether an accept failed for want of a
// resource that may come back (descriptors, memory), or for a connection
// aborted before it was accepted.
func temporaryAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// EventLoop reports whether the connections are served on event loops
// (Options.Loop, where they can run).
func (s *HTTP) EventLoop() bool { return s.loopSrv != nil }

// Unverified reports how many answers the event loops cut short because
// their proof failed before a send of file-backed bytes (see
// evloop.Answer.Verified); 0 without event loops.
func (s *HTTP) Unverified() int64 {
	if s.loopSrv == nil {
		return 0
	}
	return s.loopSrv.Unverified()
}
