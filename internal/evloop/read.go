package evloop

// Reads made by the loop.
//
// A request whose answer waits for the disk goes off the loop (Blocked),
// to a goroutine that reads and answers it: a hand-off to another
// goroutine and back for every such request. Where the system has
// io_uring, a Handler may instead ask the loop to make the read itself
// (Answer.Read) and return Pending: the loop submits the read to an
// io_uring of its own, without waiting, and serves its other connections;
// the read's completion arrives as an event of the loop's epoll set, and
// the loop calls the Handler's ReadDone on the loop, which answers. While
// the read is in flight the loop reads and parses nothing more of the
// connection, as while an answer is made off the loop, so answers leave in
// the order of the requests.

// Pending is what a Handler returns on the loop after Answer.Read (or
// Answer.Reads) took its reads: the loop calls the ReadDone (ReadsDone)
// once they are done. A Handler whose reads were taken returns Pending;
// Pending returned without a read taken is met as Blocked (off the loop,
// as an internal error).
const Pending Result = Declined + 1

// ReadDone is called on the loop once a read taken by Answer.Read is
// done, with what pread(2) would have returned: the count read (fewer at
// the end of the file), or the read's error. It fills a, a fresh Answer,
// and says what it did: Answered; Blocked, for the Handler to be called
// off the loop with mayBlock true (a read the system refused to make, for
// one); or Declined, for the fallback. It must not wait for anything. It
// is called exactly once for every read taken, even when the connection
// is gone by then (the answer is then dropped, its Done closed) or the
// server is stopping, so that whatever the read holds is released. The
// one exception: a stopping loop whose ring cannot be waited on (the
// kernel refuses io_uring_enter) never calls it for the reads left in
// the ring, whose buffers the kernel may still write; it keeps those
// requests, and so whatever they hold, for the life of the process.
type ReadDone func(a *Answer, n int, err error) Result

// Several reads for one request.
//
// An answer may need a few ranges that are not contiguous on the disk (an
// erasure-coded needle that crosses a block boundary lies on two shard
// files). Answer.Reads takes up to MaxReads reads for one request: the
// loop submits them all, without waiting, and calls the Handler's
// ReadsDone once, when every read it submitted is done, with one result
// per read in the order given. One callback for the set, rather than one
// per read, keeps the Handler free of counting: it sees every result at
// once and answers from all of them, or sends the request off the loop.
//
// When the loop's ring takes some reads and refuses the next (it filled
// part way), the reads already submitted stay in flight, their buffers
// with them: the request is taken all the same (Reads reports true), and
// the reads not submitted come back in ReadsDone with the submission's
// error (vfs.ErrRingFull, say), so that the Handler, seeing a read that
// failed, answers some other way (Blocked) once the others are done. A
// request therefore ends exactly once, and no buffer the kernel may still
// write is given back early.

// MaxReads is how many reads Answer.Reads takes for one request: two, the
// ranges of a needle over two shard segments. A request that needs more
// is answered off the loop. The bound keeps a request's results in a
// fixed array of its job, and one request's share of the loop's ring
// small.
const MaxReads = 2

// FileRead is one read of Answer.Reads: len(Buf) bytes at Off of the
// descriptor FD, into Buf.
type FileRead struct {
	FD  int
	Buf []byte
	Off int64
}

// ReadResult is what one read returned, as pread(2) would: the count
// read (fewer at the end of the file), or the read's error (for a read
// the loop could not submit, the submission's).
type ReadResult struct {
	N   int
	Err error
}

// ReadsDone is ReadDone for the reads of Answer.Reads: it is called on
// the loop once every read submitted is done, with the results of all
// the reads taken, in the order given (res is valid only during the
// call). It answers as ReadDone does, and is likewise called exactly once
// for every request whose reads were taken, even when the connection is
// gone or the server is stopping (with ReadDone's one exception).
type ReadsDone func(a *Answer, res []ReadResult) Result
