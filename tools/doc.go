// Package tools holds haybale's operator commands as library functions, one
// file per command: verifying, reindexing, compacting, dumping and exporting
// volume files, erasure coding them (encode, verify, rebuild, decode, and
// placing and rebuilding shards in a cluster), and the online operations
// that go through a running store.
// cmd/haybale binds them to flags.
//
// Every command writes a human-readable report, or JSON when asked, to the
// Output's writer, and shows progress for long operations: a progress bar
// when the progress writer is a terminal, plain lines otherwise. Commands
// return errors; ErrCorrupt marks a finding of damaged data, which callers
// turn into a distinct exit status.
package tools
