// Package volume owns one haybale volume: the append-only file of needles
// <vid>.dat, its index hint file <vid>.idx, the compact in-RAM index, group
// commit, start-up recovery and the read path. It has no network code.
//
// # Volume file (<vid>.dat)
//
// A volume begins with a 64-byte superblock; needles (see package needle)
// follow from offset 64, each at an 8-byte-aligned offset. Integers are
// little-endian.
//
//	offset  size  field
//	0       8     magic "HAYBALEV"
//	8       4     format version: 1 or 2 (written: 2)
//	12      4     vid
//	16      8     creation time, Unix nanoseconds
//	24      4     compaction generation (0 for a new volume)
//	28      8     format 2: needle secret, not all zero; format 1: zero
//	36      24    reserved, zero
//	60      4     CRC-32C (Castagnoli) of bytes [0, 60)
//
// The format version is also the format of every needle in the volume (see
// package needle). Format 2 derives the needle magics from the secret, which
// is chosen once per logical volume (the directory sends the same one to
// every replica; Create picks a random one when none is given) and is
// copied with the superblock by compaction, replica sync and CopyTo, so the
// replicas of a volume stay byte-identical. The secret never leaves the
// storage tier: reads return needle data, never headers. Format-1 volumes
// still open and serve reads, and take deletes (a tombstone is a batch of
// its own and holds no data), but no longer take images: they open
// read-only, so no new data lands where it could be mistaken for needles.
// Offsets in the in-RAM index and the idx file are in 8-byte units held in a
// uint32, so a volume holds at most 32 GiB (MaxSize).
//
// # Index hint file (<vid>.idx)
//
// The idx is a fixed-record, append-only hint. It starts with a 24-byte
// header, followed by one 24-byte record per needle, appended only after the
// needle's bytes are durable:
//
//	header  offset  size  field
//	        0       8     magic "HAYIDX01"
//	        8       4     vid
//	        12      4     compaction generation of the .dat it indexes
//	        16      4     reserved, zero
//	        20      4     CRC-32C of bytes [0, 20)
//
//	record  offset  size  field
//	        0       8     key
//	        8       4     size code
//	        12      4     needle offset in 8-byte units
//	        16      4     bits 0..30: needle length in 8-byte units;
//	                      bit 31: the needle is a tombstone
//	        20      4     CRC-32C of bytes [0, 20)
//
// The idx is never synced on the write path: it is a hint. At open the
// volume loads records until the first torn or damaged one (or one pointing
// past the end of the .dat), cuts the idx there, then scans the .dat from the
// end of the last indexed needle to its end and indexes what it finds. An
// idx whose header names another vid or generation is rebuilt from the .dat
// alone.
//
// # Recovery
//
// The scan of the unindexed part of the .dat is strict about batches: a
// batch lands whole or not at all, so a batch that damage touches is
// dropped whole, and every other batch is kept whole, whichever needle of
// its neighbour is damaged. After a damaged stretch the scan finds the next
// needle by its header magic (in format 2 only the store can write those)
// and asks it whether it starts a batch: a tombstone always does (it is a
// batch of its own), and in format 2 the header magic says so; in format 1,
// which does not record it, the damaged needles' own headers tell when they
// still decode, and otherwise the next needle is taken to start a batch so
// that no intact batch is lost. A needle that starts a batch while another
// is open ends the open one as torn.
//
// Bytes after the last complete batch (a round that reached the disk only
// in part, or a batch whose last needle is damaged, whose other needles may
// have been acknowledged) are copied into <vid>.dat.torn-<offset>-<time>
// (see TornPath) and made durable before they are cut off the .dat: no
// byte that may have been acknowledged is ever thrown away. Damage followed
// by valid needles is never cut: it stays in place, unindexed, until
// compaction drops it.
//
// # Writes and group commit
//
// Write appends a batch of needles and returns only after they are durable
// (fdatasync). Concurrent writers share syncs: each volume has one committer
// goroutine that takes every queued batch as one round, writes it (one
// pwrite for a small round), syncs once, publishes the needles to the index
// and wakes exactly the writers of that round; batches that arrive during a
// round form the next one. Every needle
// of a batch but the last carries the "batch continues" flag, so recovery
// drops a batch whose end never reached the disk: a batch lands whole or not
// at all.
//
// # Deletes
//
// Delete appends a tombstone needle. Tombstones are permanent: a tombstone
// for (key, size) removes that image whether the image's needle lies before
// or after it in the file, the index remembers every tombstone and where it
// lies, Write refuses a deleted (key, size) (ErrDeleted), a delete of a key
// the volume does not hold yet still appends its tombstone, and compaction
// copies every tombstone verbatim. Keys are handed out once and never
// reused, so this only ever keeps deleted what its writer gave up, even when
// the write lands after the delete. Replica sync carries tombstones of both
// sides over (Tombstones, ApplyTombstones, Retire), and List gives replica
// checks every needle and tombstone.
//
// # Failures
//
// A failed write is never acknowledged and its bytes are never served: the
// index learns of a needle only after the sync that made it durable. When a
// pwrite fails (ENOSPC, EIO, short write) the volume truncates the file back
// to its last durable end and stays writable; if that truncate fails too, or
// when fdatasync fails (after which the kernel may have dropped the dirty
// pages, so no later sync can be trusted), the volume turns read-only with
// state StateFailed: it keeps serving every needle acknowledged before, and
// refuses writes until it is reopened, when recovery re-verifies the tail.
//
// # Reads
//
// Read looks the (key, size) up in the in-RAM index and reads the whole
// needle with exactly one pread, then checks magic, key, size code, checksum
// and cookie. Damaged bytes yield an error for which IsCorruption is true
// and are never returned; a wrong cookie reads exactly like a missing image.
//
// A Volume is safe for concurrent use.
package volume
