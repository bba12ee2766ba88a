package evloop

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
)

// Supported reports whether event loops run on this system.
const Supported = true

// Server runs the loops. It is safe for concurrent use.
type Server struct {
	opts     Options
	handler  Handler
	fallback http.Handler
	loops    []*loop
	next     atomic.Uint32 // round robin over the loops
	draining atomic.Bool
	stopped  sync.WaitGroup // the loops' goroutines

	unverified atomic.Int64 // answers cut short: Verified reported false

	jmu      sync.Mutex
	jobs     []*job
	running  int
	workers  sync.WaitGroup
	shutOnce sync.Once
}

// job is a request answered off the loop, or waiting for the reads the
// loop makes for it (read or reads set).
type job struct {
	c        *conn
	req      *Request
	fallback bool // for the fallback handler, not Blocked
	ans      Answer

	// The reads the loop makes for the request: read is the ReadDone of
	// Answer.Read, reads the ReadsDone of Answer.Reads. res holds the
	// results of the nres reads taken, read i tagged tag0+i; inFlight
	// counts those submitted and not done yet.
	read     ReadDone
	reads    ReadsDone
	res      [MaxReads]ReadResult
	nres     int
	inFlight int
	tag0     uint64
}

// Unverified reports how many answers were cut short because their
// Verified reported false before a send of their file's bytes (see
// Answer.Verified): each ended its connection. One whose connection
// ended otherwise before the answer's turn to be sent came is not
// counted.
func (s *Server) Unverified() int64 { return s.unverified.Load() }

// submit queues j for a worker, starting one if fewer than Workers run.
func (s *Server) submit(j *job) {
	s.jmu.Lock()
	s.jobs = append(s.jobs, j)
	if s.running < s.opts.Workers {
		s.running++
		s.workers.Add(1)
		go s.work()
	}
	s.jmu.Unlock()
}

// work answers queued jobs until there are none.
func (s *Server) work() {
	defer s.workers.Done()
	for {
		s.jmu.Lock()
		if len(s.jobs) == 0 {
			s.running--
			s.jmu.Unlock()
			return
		}
		j := s.jobs[0]
		s.jobs[0] = nil
		s.jobs = s.jobs[1:]
		s.jmu.Unlock()
		s.answer(j)
		j.c.l.complete(j)
	}
}

// answer answers j: the Handler allowed to block, or the fallback.
func (s *Server) answer(j *job) {
	defer func() {
		if p := recover(); p != nil {
			// As net/http does for a handler that panics: log it and
			// end the connection without an answer.
			s.opts.Logger.Error("evloop: handler panic", "panic", p, "target", string(j.req.Target))
			j.ans.release()
			j.ans.reset()
			j.ans.Status = -1
		}
	}()
	if !j.fallback {
		switch s.handler(j.req, &j.ans, true) {
		case Answered:
			return
		case Blocked, Pending:
			// Off the loop no read can be taken (Answer.Read refuses).
			j.ans.release()
			s.opts.Logger.Error("evloop: handler blocked off the loop", "target", string(j.req.Target))
			errorAnswer(&j.ans, http.StatusInternalServerError, "internal error")
			return
		}
		j.ans.release()
	}
	// A fallback answer is bounded as the answer it is written in.
	ctx := context.Background()
	if s.opts.WriteTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opts.WriteTimeout)
		defer cancel()
	}
	serveFallback(ctx, s.fallback, j.req, j.c.remote, &j.ans)
}

const (
	// maxIovec bounds the buffers of one writev.
	maxIovec = 64
	// lingerTime is how long a connection closed by the server after an
	// answer (an error, Connection: close, or one cut short, see
	// Answer.Verified) still reads and drops what the client sends, so
	// that the client reads the answers instead of a reset (as net/http
	// waits before closing).
	lingerTime = 500 * time.Millisecond
	// readBufferStart is a connection's read buffer at first; it doubles
	// up to MaxHeaderBytes only for a request whose headers need it.
	readBufferStart = 4 << 10
)

// loop is one event loop: an epoll instance, the connections it serves,
// and an eventfd by which other goroutines hand it work.
type loop struct {
	srv    *Server
	epfd   int
	epf    *os.File        // epfd in Go's netpoller, for waiting (wait)
	eprc   syscall.RawConn // epf's
	evfd   int
	conns  []*conn // by descriptor
	n      int     // live connections
	events [128]unix.EpollEvent
	turn   uint64 // counts the loop's waits: what a Handler found, it found in this turn
	req    Request
	ans    Answer
	iov    [maxIovec]unix.Iovec
	now    time.Time
	date   []byte // "Date: ...\r\n", of now's second
	dsec   int64
	tick   time.Duration
	last   time.Time // of the last timeout scan

	// ring makes the reads Handlers ask for (Answer.Read), nil where
	// io_uring cannot be had; ringFD is its eventfd in the epoll set (-1
	// without). reads are the jobs whose reads are in flight, by tag;
	// cur is the connection whose request the Handler is answering.
	ring     *vfs.LoopRing
	ringFD   int
	reads    map[uint64]*job
	tag      uint64
	cur      *conn
	readDone func(tag uint64, n int, err error)

	mu       sync.Mutex // guards what follows
	woken    bool       // the eventfd was written and not yet read
	done     []*job
	enrolled []*conn
	drain    bool // close idle connections, end the others after their answers
	kill     bool // close every connection now
	stop     bool // end the loop once it has no connection
	exited   bool // the loop has ended: its descriptors are closed
	empty    chan struct{}
}

// conn is a connection of a loop. Only its loop touches it, but for the
// fields a job reads (the request's bytes, remote) while busy.
type conn struct {
	l      *loop
	fd     int
	remote string
	in     []byte // the read buffer: in[r:] is not parsed yet
	r      int
	out    []segment // answers queued, from outHead on
	head   int
	queued int64 // bytes in out
	arena  []byte
	blank  int // CR and LF bytes that may still be skipped (skipBlank)

	readable bool // the socket may hold bytes not read yet
	hup      bool // the client closed its side: its end is to be read
	started  bool // the client has sent something
	busy     bool // a request is answered off the loop
	closing  bool // close once the queue is written
	eof      bool // the client closed its side
	closed   bool
	linger   time.Time // when set, the connection is lingering until then

	reqStart   time.Time // first byte of the request being read
	lastActive time.Time
	writeStart time.Time // the answer at the head of the queue
}

// segment is a part of a queued answer: bytes, or a file range sent with
// sendfile. done is set on the last segment of an answer.
type segment struct {
	b    []byte
	file bool
	// mayWait: writing b may read the disk (Answer.BodyInFile).
	mayWait bool
	// turn is the loop's turn in which the Handler made the answer of a
	// file body or of one with mayWait (its pages found in the page cache
	// then), or 0 for an answer made off the loop or by a ReadDone; or
	// the turn in which verify last reported the bytes still verified.
	turn uint64
	// verify is the answer's Verified, for a file body or one with
	// mayWait; unverified is set once it reported false.
	verify     Verifier
	unverified bool
	fd         int
	off        int64
	n          int64
	done       io.Closer
}

// New starts the loops of a server answering with h on the loops and
// with fallback off them for what h declines.
func New(h Handler, fallback http.Handler, opts Options) (*Server, error) {
	opts = opts.withDefaults()
	s := &Server{opts: opts, handler: h, fallback: fallback}
	tick := time.Second
	for _, d := range []time.Duration{opts.ReadHeaderTimeout, opts.IdleTimeout, opts.WriteTimeout} {
		if d > 0 {
			tick = min(tick, d/4)
		}
	}
	tick = max(tick, 5*time.Millisecond)
	for range opts.Loops {
		l, err := newLoop(s, tick)
		if err != nil {
			for _, l := range s.loops {
				l.stopNow()
			}
			s.stopped.Wait()
			return nil, err
		}
		s.loops = append(s.loops, l)
		s.stopped.Add(1)
		go func() {
			defer s.stopped.Done()
			l.run()
		}()
	}
	return s, nil
}

func newLoop(s *Server, tick time.Duration) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("evloop: epoll_create: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("evloop: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("evloop: epoll_ctl: %w", err)
	}
	// The loop waits for its epoll set in Go's netpoller (an epoll
	// descriptor is readable while it has events), not in epoll_wait: a
	// goroutine parked there holds no thread and no P, so the goroutines
	// answering off the loops, and the loops themselves, run as soon as
	// they are woken. A loop blocked in epoll_wait would keep its P in a
	// system call until sysmon took it back (20 us to 10 ms later), each
	// time the loop went idle: under cold reads, which all go off the
	// loop, that halved the rate.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("evloop: epoll: %w", err)
	}
	epf := os.NewFile(uintptr(epfd), "epoll")
	eprc, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		unix.Close(evfd)
		return nil, fmt.Errorf("evloop: epoll: %w", err)
	}
	l := &loop{srv: s, epfd: epfd, epf: epf, eprc: eprc, evfd: evfd, tick: tick, empty: make(chan struct{}, 1), ringFD: -1}
	l.readDone = l.doneRead
	l.openRing()
	return l, nil
}

// loopRingPlaces is how many reads one loop's ring has in flight at most;
// a Handler's Read beyond it is refused (the request then goes off the
// loop).
const loopRingPlaces = 256

// newLoopRing sets a loop's ring up; a variable so that tests can make the
// system refuse io_uring.
var newLoopRing = vfs.NewLoopRing

// openRing gives l a ring of its own, its eventfd in l's epoll set; where
// io_uring cannot be had, l has none and Answer.Read refuses every read.
func (l *loop) openRing() {
	ring, err := newLoopRing(loopRingPlaces)
	if err != nil {
		l.srv.opts.Logger.Debug("evloop: no io_uring; reads that wait go off the loop", "err", err)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ring.EventFD())}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ring.EventFD(), &ev); err != nil {
		ring.Close(nil)
		l.srv.opts.Logger.Warn("evloop: epoll_ctl on the io_uring eventfd failed; reads that wait go off the loop", "err", err)
		return
	}
	l.ring, l.ringFD, l.reads = ring, ring.EventFD(), make(map[uint64]*job)
}

// loopRead is an Answer's link to the loop it is made on, for Read.
type loopRead struct {
	l     *loop // nil off the loop, or where the loop has no ring
	taken bool  // Read took a read
}

// Read asks the loop to read len(b) bytes at off of the descriptor fd
// without waiting for the disk (through the loop's io_uring), and to call
// done on the loop once the read is done, which answers the request; the
// Handler then returns Pending. fd and b must stay valid, and b untouched,
// until done is called. Read reports false, having taken nothing, where
// the loop cannot make the read: off the loop (mayBlock true), where the
// system has no io_uring, when as many reads as the loop's ring holds are
// in flight, or when the kernel refuses the submission; and for a second
// Read (or Reads) for the same request. The Handler then answers some
// other way (Blocked).
func (a *Answer) Read(fd int, b []byte, off int64, done ReadDone) bool {
	if done == nil || len(b) == 0 {
		return false
	}
	return a.take([]FileRead{{FD: fd, Buf: b, Off: off}}, done, nil)
}

// Reads is Read for up to MaxReads reads (see read.go): the loop submits
// them all and calls done once, when every read submitted is done, with
// each read's result. It reports false, having taken nothing, where Read
// would, for no reads or more than MaxReads, or when the first read
// cannot be submitted. When a later read cannot be submitted (the ring
// filled part way), Reads reports true: the reads submitted are made, and
// done sees the others failed with the submission's error. Every
// descriptor and buffer must stay valid, and the buffers untouched, until
// done is called.
func (a *Answer) Reads(reads []FileRead, done ReadsDone) bool {
	if done == nil || len(reads) == 0 || len(reads) > MaxReads {
		return false
	}
	for _, r := range reads {
		if len(r.Buf) == 0 {
			return false
		}
	}
	return a.take(reads, nil, done)
}

// ringSubmit submits one read to a loop's ring; a variable so that tests
// can make the ring refuse a submission part way through a request.
var ringSubmit = (*vfs.LoopRing).Read

// take submits reads (one, or up to MaxReads) to the loop's ring for the
// request being answered, whose answer one or many then makes.
func (a *Answer) take(reads []FileRead, one ReadDone, many ReadsDone) bool {
	l := a.loopRead.l
	if l == nil || a.loopRead.taken {
		return false
	}
	tag0 := l.tag + 1
	var j *job
	for i, r := range reads {
		tag := tag0 + uint64(i)
		if err := ringSubmit(l.ring, r.FD, r.Buf, r.Off, tag); err != nil {
			if j == nil {
				return false // nothing in flight: nothing taken
			}
			// The ring filled part way: the reads submitted are in
			// flight, so the request is taken; the others fail.
			for k := i; k < len(reads); k++ {
				j.res[k] = ReadResult{Err: err}
			}
			break
		}
		if j == nil {
			j = &job{c: l.cur, req: l.req.clone(), read: one, reads: many, tag0: tag0, nres: len(reads)}
			j.ans.sendfileOK = a.sendfileOK
		}
		l.reads[tag] = j
		j.inFlight++
		l.tag = tag
	}
	a.loopRead.taken = true
	return true
}

// doneRead records the completion of the read tag in its job and, once
// the job has no read in flight, hands it to the Handler's ReadDone (or
// ReadsDone), which answers, on the loop; the answer is queued, or the
// request goes off the loop as the ReadDone asked.
func (l *loop) doneRead(tag uint64, n int, err error) {
	j, ok := l.recordRead(tag, n, err)
	if !ok {
		return
	}
	res := l.callRead(j)
	switch {
	case res == Answered:
		l.finish(j) // drops it if the connection is gone or cut short
	case j.c.closed:
		j.ans.release()
	case !j.c.linger.IsZero():
		// Cut short while the read was made: nothing more is answered on
		// the connection.
		j.c.busy = false
		j.ans.release()
	default:
		j.ans.release()
		sendfileOK := j.ans.sendfileOK
		j.ans.reset()
		j.ans.sendfileOK = sendfileOK
		j.fallback = res == Declined
		l.srv.submit(j)
	}
}

// recordRead keeps the result of the read tag in its job, and returns the
// job once every read of it submitted is done (ok true).
func (l *loop) recordRead(tag uint64, n int, err error) (j *job, ok bool) {
	j = l.reads[tag]
	delete(l.reads, tag)
	j.res[tag-j.tag0] = ReadResult{N: n, Err: err}
	j.inFlight--
	return j, j.inFlight == 0
}

// callRead calls j's ReadDone. One that panics is met as a Handler that
// panics: logged, and its connection ended with no answer.
func (l *loop) callRead(j *job) (res Result) {
	defer func() {
		if p := recover(); p != nil {
			l.srv.opts.Logger.Error("evloop: handler panic", "panic", p, "target", string(j.req.Target))
			j.ans.release()
			j.ans.reset()
			j.ans.Status = -1
			res = Answered
		}
	}()
	if j.read != nil {
		return j.read(&j.ans, j.res[0].N, j.res[0].Err)
	}
	return j.reads(&j.ans, j.res[:j.nres])
}

// closeRing waits for the reads still in flight (their buffers must
// outlive them), has each request's ReadDone, once all its reads are
// done, release what it holds, drops
// the answers (the loop's connections are closed), and closes the ring.
func (l *loop) closeRing() {
	if l.ring == nil {
		return
	}
	ringClose(l.ring, func(tag uint64, n int, err error) {
		if j, ok := l.recordRead(tag, n, err); ok {
			l.callRead(j)
			j.ans.release()
		}
	})
	if len(l.reads) > 0 {
		// The ring could not be waited on (it is kept for the life of
		// the process, see vfs.LoopRing.Close): the reads left in it may
		// still write their buffers, so their requests, and whatever
		// their ReadDone would have released (a buffer of a pool outside
		// Go's heap, a volume's descriptor), stay reachable for good too.
		abandonedMu.Lock()
		abandonedReads = append(abandonedReads, l.reads)
		abandonedMu.Unlock()
	}
}

// ringClose closes a loop's ring; a variable so that tests can have a
// ring that cannot be waited on.
var ringClose = (*vfs.LoopRing).Close

// abandonedReads holds the requests of the reads a closing loop could not
// wait for, for the life of the process.
var (
	abandonedMu    sync.Mutex
	abandonedReads []map[uint64]*job
)

// wait returns the loop's ready events: at once if there are some, else
// once there are, or after the loop's tick with none. It parks the
// goroutine in Go's netpoller while it waits (see newLoop).
func (l *loop) wait() (int, error) {
	n, err := rawEpollPoll(l.epfd, l.events[:])
	if n != 0 || err != nil && err != unix.EINTR {
		return n, err
	}
	if err := l.epf.SetReadDeadline(time.Now().Add(l.tick)); err != nil {
		return 0, err
	}
	var werr error
	err = l.eprc.Read(func(fd uintptr) bool {
		n, werr = rawEpollPoll(int(fd), l.events[:])
		if werr == unix.EINTR {
			n, werr = 0, nil
		}
		return n != 0 || werr != nil
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, nil
	case err != nil:
		return 0, err
	}
	return n, werr
}

// Enroll hands c, a *net.TCPConn (or another connection with a
// descriptor), to a loop, which serves it from then on; c itself is
// closed. On error c is closed too.
func (s *Server) Enroll(c net.Conn) error {
	remote := c.RemoteAddr().String()
	fd, err := takeFD(c)
	if err != nil || s.draining.Load() {
		if err == nil {
			unix.Close(fd)
			err = ErrClosed
		}
		if s.opts.OnClose != nil {
			s.opts.OnClose()
		}
		return err
	}
	l := s.loops[int(s.next.Add(1))%len(s.loops)]
	cn := &conn{l: l, fd: fd, remote: remote, readable: true}
	l.mu.Lock()
	if l.exited {
		l.mu.Unlock()
		unix.Close(fd)
		if s.opts.OnClose != nil {
			s.opts.OnClose()
		}
		return ErrClosed
	}
	l.enrolled = append(l.enrolled, cn)
	l.wakeLocked()
	l.mu.Unlock()
	return nil
}

// takeFD returns a non-blocking duplicate of c's descriptor and closes c.
func takeFD(c net.Conn) (int, error) {
	defer c.Close()
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("evloop: a %T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("evloop: %w", err)
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, fmt.Errorf("evloop: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("evloop: dup: %w", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("evloop: %w", err)
	}
	return fd, nil
}

// Shutdown stops taking connections, closes the idle ones, lets the
// others finish the answers they owe (each then closes), and waits for
// them until ctx ends, when it closes the rest. It then stops the loops
// and waits for the answers still being made off the loops. It is safe
// to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.shutOnce.Do(func() {
		s.draining.Store(true)
		for _, l := range s.loops {
			l.mu.Lock()
			l.drain = true
			l.wakeLocked()
			l.mu.Unlock()
		}
		for _, l := range s.loops {
			select {
			case <-l.empty:
			case <-ctx.Done():
				err = fmt.Errorf("evloop: drain: %w", ctx.Err())
			}
			if err != nil {
				break
			}
		}
		for _, l := range s.loops {
			l.stopNow()
		}
		s.stopped.Wait()
		// Answers still made off the loops are dropped as they finish
		// (their connections are closed); wait for them so that nothing
		// the handlers use is closed under them.
		s.workers.Wait()
	})
	return err
}

// stopNow closes every connection of l and ends it.
func (l *loop) stopNow() {
	l.mu.Lock()
	l.kill, l.stop = true, true
	l.wakeLocked()
	l.mu.Unlock()
}

// wakeLocked makes the loop look at its queues; l.mu is held.
func (l *loop) wakeLocked() {
	if l.woken {
		return
	}
	l.woken = true
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(l.evfd, one[:])
}

// complete hands the loop an answer made off it.
func (l *loop) complete(j *job) {
	l.mu.Lock()
	if l.exited {
		l.mu.Unlock()
		j.ans.release()
		return
	}
	l.done = append(l.done, j)
	l.wakeLocked()
	l.mu.Unlock()
}

// run is the loop.
func (l *loop) run() {
	defer func() {
		l.closeRing()
		l.mu.Lock()
		l.exited = true
		l.epf.Close() // leaves the netpoller, then closes epfd
		unix.Close(l.evfd)
		for _, j := range l.done {
			j.ans.release()
		}
		for _, c := range l.enrolled {
			unix.Close(c.fd)
			l.ended()
		}
		l.done, l.enrolled = nil, nil
		l.mu.Unlock()
	}()
	var done []*job
	var enrolled []*conn
	for {
		n, err := l.wait()
		l.turn++
		if err != nil && err != unix.EINTR {
			l.srv.opts.Logger.Error("evloop: epoll_wait failed; closing the loop's connections", "err", err)
			l.mu.Lock()
			l.kill, l.stop = true, true
			l.mu.Unlock()
			n = 0
		}
		l.setNow(time.Now())
		for i := range n {
			ev := &l.events[i]
			fd := int(ev.Fd)
			if fd == l.evfd {
				continue // handled below, whatever else happened
			}
			if fd == l.ringFD {
				l.ring.Reap(l.readDone)
				continue
			}
			if fd >= len(l.conns) || l.conns[fd] == nil {
				continue
			}
			c := l.conns[fd]
			if ev.Events&unix.EPOLLERR != 0 {
				l.close(c)
				continue
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
				c.readable = true
			}
			if ev.Events&(unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
				c.hup = true // read to the end: a short read is not all
			}
			c.pump()
		}
		l.mu.Lock()
		if l.woken {
			var b [8]byte
			unix.Read(l.evfd, b[:])
			l.woken = false
		}
		done, l.done = l.done, done[:0]
		enrolled, l.enrolled = l.enrolled, enrolled[:0]
		drain, kill, stop := l.drain, l.kill, l.stop
		l.mu.Unlock()
		for _, c := range enrolled {
			l.add(c, drain || kill)
		}
		clear(enrolled)
		for _, j := range done {
			l.finish(j)
		}
		clear(done)
		if kill {
			for _, c := range l.conns {
				if c != nil {
					l.close(c)
				}
			}
		}
		if l.now.Sub(l.last) >= l.tick || drain {
			l.last = l.now
			l.scan(drain)
		}
		if drain && l.n == 0 {
			select {
			case l.empty <- struct{}{}:
			default:
			}
		}
		if stop && l.n == 0 {
			return
		}
	}
}

// setNow sets the loop's clock and, each second, its Date field.
func (l *loop) setNow(now time.Time) {
	l.now = now
	if sec := now.Unix(); sec != l.dsec || l.date == nil {
		l.dsec = sec
		l.date = append(l.date[:0], "Date: "...)
		l.date = now.UTC().AppendFormat(l.date, http.TimeFormat)
		l.date = append(l.date, '\r', '\n')
	}
}

// add starts serving c, or closes it when the server is shutting down.
func (l *loop) add(c *conn, refuse bool) {
	if refuse {
		unix.Close(c.fd)
		l.ended()
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.srv.opts.Logger.Warn("evloop: epoll_ctl failed; connection closed", "err", err)
		unix.Close(c.fd)
		l.ended()
		return
	}
	for c.fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*conn, len(l.conns)+64)...)
	}
	l.conns[c.fd] = c
	l.n++
	c.lastActive = l.now
	c.in = make([]byte, 0, readBufferStart)
	c.pump()
}

// ended reports a connection's end to the server's owner.
func (l *loop) ended() {
	if f := l.srv.opts.OnClose; f != nil {
		f()
	}
}

// close closes c at once, dropping what it had queued.
func (l *loop) close(c *conn) {
	if c.closed {
		return
	}
	c.closed = true
	for i := c.head; i < len(c.out); i++ {
		c.out[i].release()
	}
	c.out, c.head, c.queued = nil, 0, 0
	l.conns[c.fd] = nil
	unix.Close(c.fd) // also leaves the epoll set
	l.n--
	l.ended()
}

// finish queues the answer of a job, or drops it when its connection is
// gone.
func (l *loop) finish(j *job) {
	c := j.c
	if c.closed {
		j.ans.release()
		return
	}
	c.busy = false
	if !c.linger.IsZero() {
		// c was cut short while this answer was made: nothing more is
		// sent on it.
		j.ans.release()
		return
	}
	c.lastActive = l.now
	if j.ans.Status < 0 { // the handler panicked
		l.close(c)
		return
	}
	c.queue(j.req, &j.ans, false)
	c.pump()
}

// scan applies the timeouts, and while draining closes idle connections
// and ends the others after their answers.
func (l *loop) scan(drain bool) {
	o := &l.srv.opts
	for _, c := range l.conns {
		if c == nil {
			continue
		}
		switch {
		case !c.linger.IsZero():
			if l.now.After(c.linger) {
				l.close(c)
			}
		case c.head < len(c.out):
			// Also while a later request waits for its answer (busy): a
			// client that reads nothing must not be kept for as long as
			// that answer takes (a read of a hung device, say).
			if drain {
				c.closing = true
			}
			if o.WriteTimeout > 0 && l.now.Sub(c.writeStart) > o.WriteTimeout {
				l.close(c) // a client that does not read its answers
			}
		case c.busy:
			if drain {
				c.closing = true
			}
		case c.r < len(c.in):
			if drain || l.now.Sub(c.reqStart) > o.ReadHeaderTimeout {
				l.close(c) // too slow to send its request
			}
		default:
			// A new connection must start its first request within
			// ReadHeaderTimeout, as under net/http; a kept-alive one may
			// then wait IdleTimeout for its next.
			limit := o.IdleTimeout
			if !c.started {
				limit = o.ReadHeaderTimeout
			}
			if drain || l.now.Sub(c.lastActive) > limit {
				l.close(c)
			}
		}
	}
}

// paused reports whether c's requests wait: for an answer made off the
// loop, for its queued answers to drain, or for its end.
func (c *conn) paused() bool {
	return c.busy || c.closing || c.queued > int64(c.l.srv.opts.MaxQueued)
}

// pump reads, parses, answers and writes what c allows now.
func (c *conn) pump() {
	for !c.closed {
		if !c.linger.IsZero() {
			c.discard()
			return
		}
		progress := c.read()
		if c.parse() {
			progress = true
		}
		full := c.paused()
		c.flush()
		if full && !c.paused() {
			progress = true // written below the bound: parse on
		}
		if c.closed || !progress || c.paused() {
			break
		}
	}
	if c.closed || c.busy || c.head < len(c.out) {
		return
	}
	if c.closing {
		// The last answer is written.
		if c.linger.IsZero() {
			c.endWrites()
		}
		return
	}
	if c.eof {
		c.l.close(c)
	}
}

// endWrites stops c's sending after what it has written, and drops what
// its client still sends for a while (c lingers), so that the client
// reads what was sent: a close with bytes of the client's unread would
// reset the connection, and the client could lose the answers still in
// the socket.
func (c *conn) endWrites() {
	unix.Shutdown(c.fd, unix.SHUT_WR)
	c.linger = c.l.now.Add(lingerTime)
	if c.busy {
		// A request of c is still being answered (off the loop, or by a
		// read of the loop) and its bytes lie in c.in: what the client
		// still sends is read into a buffer of its own.
		c.in = make([]byte, 0, readBufferStart)
	}
	c.r, c.in = 0, c.in[:0]
	c.discard()
}

// cut ends c at the answer at its head, whose bytes not sent yet may no
// longer be sent (its Verifier reported false): that answer and every
// one queued after it are dropped, the answer is counted
// (Server.Unverified), and c ends as after its last answer (endWrites),
// so that the answers before it, already in the socket, still reach the
// client whole, and this one short of its Content-Length. Nothing is
// sent on c after it: an answer still being made for c is dropped when
// it is done (finish).
func (c *conn) cut() {
	for i := c.head; i < len(c.out); i++ {
		c.out[i].release()
	}
	c.out, c.head, c.queued = nil, 0, 0
	c.closing = true
	c.l.srv.unverified.Add(1)
	c.endWrites()
}

// discard reads and drops what a lingering connection's client sends,
// closing the connection at its end.
func (c *conn) discard() {
	for c.readable {
		n, err := rawRead(c.fd, c.in[:cap(c.in)])
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			c.readable = false
		case err != nil || n == 0:
			c.l.close(c)
			return
		}
	}
}

// read reads what the socket holds into c's buffer, unless c is paused
// or the buffer is full. It reports whether it read anything.
func (c *conn) read() bool {
	got := false
	for c.readable && !c.paused() && !c.eof {
		if len(c.in) == cap(c.in) {
			switch limit := c.l.srv.opts.MaxHeaderBytes; {
			case c.r > 0:
				n := copy(c.in, c.in[c.r:])
				c.in, c.r = c.in[:n], 0
			case cap(c.in) < limit:
				grown := make([]byte, len(c.in), min(2*cap(c.in), limit))
				copy(grown, c.in)
				c.in = grown
			default:
				return got // a request too large: parse answers 431
			}
		}
		if c.r == len(c.in) {
			c.reqStart = c.l.now
		}
		free := c.in[len(c.in):cap(c.in)]
		n, err := rawRead(c.fd, free)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			c.readable = false
		case err != nil:
			c.readable, c.eof = false, true
		case n == 0:
			c.readable, c.eof = false, true
		default:
			c.in = c.in[:len(c.in)+n]
			c.lastActive = c.l.now
			c.started = true
			got = true
			if n < len(free) && !c.hup {
				c.readable = false // drained; the next edge says when more came
			}
		}
	}
	return got
}

// parse answers the complete requests in c's buffer, until c pauses. It
// reports whether it answered any.
func (c *conn) parse() bool {
	l := c.l
	parsed := false
	for !c.paused() && !c.closed {
		data := c.in[c.r:]
		n := skipBlank(data, &c.blank) // CR and LF after a POST
		data, c.r = data[n:], c.r+n
		if len(data) == 0 {
			c.in, c.r = c.in[:0], 0
			break
		}
		end := bytes.Index(data, crlf2)
		limit := l.srv.opts.MaxHeaderBytes
		if end < 0 && len(data) < limit && !c.eof {
			break // not all here yet
		}
		parsed = true
		a := &l.ans
		a.reset()
		req := &l.req
		switch {
		case end < 0 && len(data) >= limit, end+4 > limit:
			c.failed(a, http.StatusRequestHeaderFieldsTooLarge, "request line and headers too large")
			return true
		case end < 0:
			c.failed(a, http.StatusBadRequest, "malformed request") // cut short by the client's end
			return true
		}
		raw := data[:end+4]
		c.r += end + 4
		if c.r < len(c.in) {
			c.reqStart = l.now // the next request's first bytes are here
		}
		if err := req.parse(raw); err != nil {
			c.failed(a, errorStatus(err), err.Error())
			return true
		}
		c.blank = req.blankAfter()
		if req.body {
			c.failed(a, http.StatusRequestEntityTooLarge, "request bodies are not accepted")
			return true
		}
		if l.srv.draining.Load() {
			req.close = true // as net/http answers after Shutdown
		}
		a.sendfileOK = c.head == len(c.out)
		if l.ring != nil {
			a.loopRead.l, l.cur = l, c
		}
		res, ok := l.handle(req, a)
		switch {
		case a.loopRead.taken:
			res = Pending // its ReadDone (or ReadsDone) answers
		case res == Pending:
			// No read was taken, so no ReadDone will answer: the request
			// goes off the loop rather than leave the connection waiting.
			res = Blocked
		}
		if !ok {
			l.close(c)
			return true
		}
		switch res {
		case Pending:
			a.release()
			c.busy = true
		case Answered:
			c.queue(req, a, true)
		case Blocked:
			a.release()
			c.offload(req, false)
		default:
			a.release()
			c.offload(req, true)
		}
	}
	return parsed
}

// handle calls the Handler on the loop. A Handler that panics is met as
// net/http meets one: the panic is logged and the connection ends with no
// answer (ok false), while the loop serves its other connections on.
func (l *loop) handle(req *Request, a *Answer) (res Result, ok bool) {
	defer func() {
		if p := recover(); p != nil {
			l.srv.opts.Logger.Error("evloop: handler panic", "panic", p, "target", string(req.Target))
			a.release()
			ok = false
		}
	}()
	return l.srv.handler(req, a, false), true
}

// failed queues an error answer that ends c, and drops what was not
// parsed.
func (c *conn) failed(a *Answer, code int, msg string) {
	errorAnswer(a, code, msg)
	c.queue(&Request{Minor: 1, close: true}, a, false)
	c.in, c.r = c.in[:0], 0
}

// offload has req answered off the loop; c reads nothing more until the
// answer is queued.
func (c *conn) offload(req *Request, fallback bool) {
	c.busy = true
	j := &job{c: c, req: req.clone(), fallback: fallback}
	j.ans.sendfileOK = c.head == len(c.out)
	c.l.srv.submit(j)
}

// queue puts a's answer to req at the end of c's queue; fresh when the
// Handler made it on the loop in this turn.
func (c *conn) queue(req *Request, a *Answer, fresh bool) {
	l := c.l
	closeConn := req.close || a.closeConn || l.srv.draining.Load()
	start := len(c.arena)
	if req.Minor == 0 {
		c.arena = append(c.arena, "HTTP/1.0 "...)
	} else {
		c.arena = append(c.arena, "HTTP/1.1 "...)
	}
	c.arena = appendStatus(c.arena, a.Status)
	if !a.noDate {
		c.arena = append(c.arena, l.date...)
	}
	c.arena = append(c.arena, a.hdr...)
	switch {
	case closeConn && req.Minor == 1:
		c.arena = append(c.arena, "Connection: close\r\n"...)
	case !closeConn && req.Minor == 0:
		c.arena = append(c.arena, "Connection: keep-alive\r\n"...)
	}
	c.arena = append(c.arena, '\r', '\n')
	if c.head == len(c.out) {
		c.writeStart = l.now
	}
	hdr := c.arena[start:len(c.arena):len(c.arena)]
	var turn uint64
	if fresh {
		turn = l.turn
	}
	done := a.Done
	a.Done = nil
	c.push(segment{b: hdr}, nil)
	switch {
	case a.file:
		c.push(segment{file: true, fd: a.fd, off: a.off, n: a.n, turn: turn, verify: a.Verified}, done)
	case len(a.Body) > 0:
		var v Verifier
		if a.BodyInFile {
			v = a.Verified
		}
		c.push(segment{b: a.Body, mayWait: a.BodyInFile, turn: turn, verify: v}, done)
	default:
		c.out[len(c.out)-1].done = done
	}
	if closeConn {
		c.closing = true
	}
}

// push appends s, whose end is that of the answer done belongs to.
func (c *conn) push(s segment, done io.Closer) {
	s.done = done
	if s.file {
		c.queued += s.n
	} else {
		c.queued += int64(len(s.b))
	}
	c.out = append(c.out, s)
}

// release releases what s holds.
func (s *segment) release() {
	if s.done != nil {
		s.done.Close()
		s.done = nil
	}
	s.b = nil
	s.verify = nil
}

// verified reports whether the bytes of s may be sent in this turn
// without the scheduler: s was answered in this turn, or its Verifier
// reports now that they are still those its Handler verified (then it is
// not asked again in this turn). It reports false, with s marked
// unverified and the answer counted, when the Verifier says they are
// not, or said so before (it is not asked again; cut counts the answer
// when it ends the connection); and false for a later send without a
// Verifier, which goes through the scheduler.
func (c *conn) verified(s *segment) bool {
	if s.turn == c.l.turn {
		return true
	}
	if s.unverified || s.verify == nil {
		return false
	}
	if !s.verify.StillVerified() {
		s.unverified = true
		return false
	}
	s.turn = c.l.turn
	return true
}

// appendStatus appends "<code> <reason>\r\n", as net/http writes it.
func appendStatus(b []byte, code int) []byte {
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if text := http.StatusText(code); text != "" {
		b = append(b, text...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(code), 10)
	}
	return append(b, '\r', '\n')
}

// flush writes c's queue until it is empty or the socket is full.
func (c *conn) flush() {
	for c.head < len(c.out) && !c.closed {
		s := &c.out[c.head]
		if s.unverified {
			// Bytes that are no longer those the Handler verified: the
			// answer is cut short rather than sent with them.
			c.cut()
			return
		}
		if s.file {
			fresh := s.turn == c.l.turn || s.n > 0 && c.verified(s)
			if s.unverified {
				c.cut()
				return
			}
			for s.n > 0 {
				k, err := sendfile(c.fd, s.fd, &s.off, int(min(s.n, 1<<30)), fresh)
				if k > 0 {
					s.n -= int64(k)
					c.queued -= int64(k)
				}
				switch {
				case err == unix.EAGAIN:
					return // the EPOLLOUT edge resumes it
				case err == unix.EINTR:
				case err != nil || k == 0:
					// A client gone, or a file shorter than its index
					// says: the answer cannot be completed.
					c.l.close(c)
					return
				}
			}
			c.advance()
			continue
		}
		iov := c.l.iov[:0]
		total := 0
		mayWait := false
		i := c.head
	gather:
		for ; i < len(c.out) && len(iov) < maxIovec && !c.out[i].file; i++ {
			g := &c.out[i]
			if len(g.b) == 0 {
				continue
			}
			if g.mayWait && g.turn != c.l.turn && !c.verified(g) {
				if g.unverified {
					// Send what comes before it (the earlier answers, its
					// header); the connection ends when it reaches the
					// head.
					break gather
				}
				mayWait = true
			}
			v := unix.Iovec{Base: &g.b[0]}
			v.SetLen(len(g.b))
			iov = append(iov, v)
			total += len(g.b)
		}
		// A write of bytes of memory only never waits: made without the
		// scheduler (raw_linux.go), as is one of a file's mapping in the
		// turn its Handler found its pages in the page cache, or in which
		// its Verifier found them still verified. Otherwise they may have
		// to fault in from the disk: through the scheduler.
		sys := rawCall
		if mayWait {
			sys = waitingCall
		}
		if total == 0 {
			if !c.out[c.head].unverified {
				c.advance() // empty; an unverified head ends c above
			}
			continue
		}
		var r uintptr
		var e syscall.Errno
		if i < len(c.out) && c.out[i].file && c.out[i].n > 0 {
			// A file body follows: MSG_MORE holds these bytes (its
			// headers) until sendfile's fill the segment, so that they do
			// not leave in a small packet of their own (nginx corks the
			// socket for the same).
			msg := unix.Msghdr{Iov: &iov[0]}
			msg.SetIovlen(len(iov))
			r, _, e = sys(unix.SYS_SENDMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_MORE|unix.MSG_NOSIGNAL)
		} else {
			r, _, e = sys(unix.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		}
		clear(iov) // no pointer into the answers stays behind
		switch {
		case e == unix.EAGAIN:
			return
		case e == unix.EINTR:
			continue
		case e != 0:
			c.l.close(c)
			return
		}
		n := int(r)
		c.queued -= int64(n)
		for n > 0 {
			s := &c.out[c.head]
			if n < len(s.b) {
				s.b = s.b[n:]
				break
			}
			n -= len(s.b)
			c.advance()
		}
		if int(r) < total {
			return // the socket is full; the EPOLLOUT edge resumes it
		}
	}
	if c.head == len(c.out) && c.head > 0 {
		clear(c.out)
		c.out, c.head = c.out[:0], 0
		c.arena = c.arena[:0]
		c.lastActive = c.l.now
	}
}

// advance ends the segment at the head of c's queue.
func (c *conn) advance() {
	s := &c.out[c.head]
	if s.done != nil {
		c.writeStart = c.l.now // the next answer's write starts
	}
	s.release()
	c.head++
}
