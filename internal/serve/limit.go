package serve

import (
	"net"
	"sync"
)

// limitListener bounds the connections served at once without wrapping
// them: Accept takes a slot before it accepts, and the server gives the
// slot back when the connection ends (connEnded, from the servers'
// ConnState hooks). Connections further than the bound wait in the
// kernel's accept queue. The accepted connections are the listener's own
// (a *net.TCPConn for TCP), so the fast path keeps its writev and sendfile
// (see RawTCP), which a wrapping limiter such as netutil.LimitListener
// would hide.
type limitListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{} // closed by Close: Accept stops waiting
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, n int) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), done: make(chan struct{})}
}

// Accept waits for a free slot, then accepts a connection that holds it
// until connEnded.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return c, nil
}

// connEnded gives back the slot of a connection that was closed or taken
// over by its handler. Each accepted connection ends exactly once.
func (l *limitListener) connEnded() { <-l.slots }

// Close closes the listener and wakes an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}
