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

// Pending is what a Handler returns on the loop after Answer.Read took a
// read: the loop calls the read's ReadDone once the read is done. A
// Handler whose Read was taken returns Pending; Pending returned without
// a read taken is met as Blocked (off the loop, as an internal error).
const Pending Result = Declined + 1

// ReadDone is called on the loop once a read taken by Answer.Read is
// done, with what pread(2) would have returned: the count read (fewer at
// the end of the file), or the read's error. It fills a, a fresh Answer,
// and says what it did: Answered; Blocked, for the Handler to be called
// off the loop with mayBlock true (a read the system refused to make, for
// one); or Declined, for the fallback. It must not wait for anything. It
// is called exactly once for every read taken, even when the connection
// is gone by then (the answer is then dropped, its Done closed) or the
// server is stopping, so that whatever the read holds is released.
type ReadDone func(a *Answer, n int, err error) Result
