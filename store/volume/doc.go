// Package volume owns one haybale volume: the append-only file of needles
// <vid>.dat, its index hint file <vid>.idx, the compact in-RAM index, group
// commit, start-up recovery and the read path, and the erasure-coded (EC)
// form of sealed volumes: shards, their index and deletion journal,
// encode, healthy and degraded reads, verify, rebuild and decode. It has no
// network code.
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
// goroutine that writes queued batches at the end of the file (one pwrite
// for what it takes at once, when small) into the open round, and one
// syncer goroutine that fdatasyncs a round, publishes its needles to the
// index and wakes exactly the writers of that round. The two are pipelined
// one round deep: while the syncer waits for the disk, the committer writes
// the batches that arrive into the next round, which it hands over as soon
// as the syncer is free, so a round holds everything that arrived while the
// round before was syncing. Each round is acknowledged after an fdatasync
// that began once its bytes were written, rounds are acknowledged in file
// order, and a write refused because of a tombstone of the round still
// syncing is answered after that round.
// Every needle of a batch but the last carries the "batch continues" flag,
// so recovery drops a batch whose end never reached the disk: a batch lands
// whole or not at all.
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
// pwrite fails (ENOSPC, EIO, short write) only its round fails: the volume
// truncates the file back to the end of the round before (which may still
// be syncing) and stays writable; if that truncate fails too, or when
// fdatasync fails (after which the kernel may have dropped the dirty pages,
// so no later sync can be trusted), the volume turns read-only with state
// StateFailed. A failed fdatasync fails its round and the round already
// written behind it, which is never synced. A failed volume keeps serving
// every needle acknowledged before, and refuses writes until it is
// reopened, when recovery re-verifies the tail.
//
// # Index memory
//
// The in-RAM index (index.go) costs about 4.5 bytes per image: one 18-byte
// record per photo, plus 14 bytes per deleted photo for its tombstone
// (tombset.go). Both arrays are mapped outside the Go heap (offheap.go), so
// the collector neither scans them nor lets GOGC headroom double them, and
// a store's RSS stays close to what the index needs. Their memory is
// unmapped when the volume closes, when compaction swaps in a new index,
// and when a merge replaces them; every use of the index is under the
// volume's lock, and the unmapping under its write lock, so no read can
// touch memory after it is freed.
//
// # Reads
//
// Read looks the (key, size) up in the in-RAM index and reads the whole
// needle with exactly one pread, then checks magic, key, size code, checksum
// and cookie. Damaged bytes yield an error for which IsCorruption is true
// and are never returned; a wrong cookie reads exactly like a missing image.
//
// ReadRef, the serving path, checks the same and costs at most one disk
// read as well, but copies nothing when it can: on Linux each generation of
// the .dat is mapped read-only (shared, MADV_RANDOM) over the volume's
// whole possible extent, with a read-only file description of its own
// (marked POSIX_FADV_RANDOM). With Options.Pins (a store's default), a
// needle of PinMin bytes or more whose pages are all in the page cache
// (mincore) is verified where it lies, through a read-only mapping of its
// own pages (its verified mapping), touched by nothing but its own
// verification, and returned as a Ref: its bytes in the file's mapping,
// and the descriptor and offset from which a server sends them with
// sendfile. A later read of it skips the checksum when /proc/self/pagemap
// says that every page of that mapping is still present: a mapped page
// cannot have been dropped and read again from the disk since it was
// hashed. A page missing means verifying again (through that mapping when
// the needle is resident, else with one pread). The argument, its limits
// (it guards against the disk, not against writes into the file through
// the page cache, which the store never makes) and the bound on mappings
// are in pins_linux.go.
//
// A mapped Ref holds the verified mapping it was answered from until
// Release, and Ref.StillVerified asks it again (one PAGEMAP_SCAN) whether
// its pages are still the ones verified: the kernel reads the file's
// pages once more when it sends them, so a server asks before every send
// that does not follow the read at once (after a full socket, behind
// earlier answers, off the reading goroutine) and ends the connection
// rather than send bytes no longer proven (a page that leaves between
// that question and the send itself is not caught; see pins_linux.go for
// this and the proof's other limit). Every other needle (not all
// resident, under PinMin, whose verified mapping another read is
// verifying, that could get no mapping, or read while as many verified
// mappings exist as Pins allows, and every needle of a volume
// without Options.Pins) is read with one pread on that descriptor, which
// reads exactly its pages (no readahead), into the caller's buffer;
// faults on the mapping never read the disk on purpose. A Ref holds its
// generation's mapping and descriptor: a compaction's swap or Close drops
// the volume's hold, and the last Ref released unmaps and closes, so bytes
// are never pulled from under an answer being written. A fault on a
// verified mapping (an I/O error) is caught and the read retried with
// pread, which reports it as an error.
//
// With Options.Direct (a store's default, haybale store --direct-reads), a
// needle of MapMin bytes or more not wholly in the page cache is read
// instead with one pread on a third descriptor of the generation, opened
// with O_DIRECT: its range rounded out to 4 KiB (vfs.DirectAlign) goes
// from the device into an aligned buffer (one of a small pool in huge
// pages, where ReadRef verifies it and lends the buffer to the Ref until
// Release; Read copies it out), no page-cache page is allocated or
// filled, and the needle stays out of the page cache, which one-off reads
// of cold needles would otherwise churn. A fixed table of fingerprints
// (DirectReads, 4 bytes a slot for the whole store) remembers the needles
// read direct; one read cold again while still remembered is read buffered
// and stays resident, so needles read again and again live in memory. A
// file system that refuses O_DIRECT (or cannot be mapped) reads buffered;
// Status says why. See direct.go.
//
// A read that waits for the disk blocks no thread: direct reads, and
// buffered reads of needles not in the page cache (tried first with
// RWF_NOWAIT, which copies resident pages at once and starts reading the
// missing ones), wait through the process's io_uring, whose completions
// wake the reader through the netpoller (vfs.RingPread); where io_uring
// cannot be had, they are preads. EC volumes read the segments of a cold
// needle on their local shards the same way (ECOptions.Direct): one
// aligned direct read per segment, copied out; rebuilds stay buffered.
// Without Direct, a needle's segments are read buffered from each local
// shard's POSIX_FADV_RANDOM descriptor (its mapping's), so a cold needle
// reads its pages and no readahead; streams of the whole volume (decode,
// regenerating the ecx) read the shard files, with readahead. An event
// loop makes the reads of a needle on one or two segments of local shards
// itself, one per segment (ECVolume.StartColdRead, see ec_coldread.go); a
// needle on more segments is read by ECVolume.Read.
//
// # Erasure-coded volumes
//
// A sealed volume can be turned into an erasure-coded (EC) volume: the bytes
// of its .dat file (superblock included) form the data stream, which is cut
// into rows of ECDataShards blocks, and each row gets ECParityShards parity
// blocks computed with Reed-Solomon (github.com/klauspost/reedsolomon, its
// default Vandermonde-derived code over GF(2^8)). Shard i (0..13) holds block
// i of every row: shards 0..9 hold the data, 10..13 the parity.
//
// Rows use large blocks (default 1 GiB) while at least a full large row of
// the stream remains, then small blocks (default 1 MiB) for the tail; the
// last small row is padded with zeros. With L the large and S the small
// block size and D the stream length:
//
//	large rows  nL = floor(D / (10 L))
//	small rows  nS = ceil((D - nL*10*L) / (10 S))
//	stream offset of block i of large row r:  r*10*L + i*L
//	stream offset of block i of small row s:  nL*10*L + s*10*S + i*S
//	shard offset of large row r:  r*L
//	shard offset of small row s:  nL*L + s*S
//
// Shard offsets count from the end of the shard header, in the shard's
// "data area". A needle at stream offset o lies in one data block, or in two
// (rarely more) when it straddles a block boundary. Reed-Solomon works byte
// column by byte column, so any byte range of a block can be rebuilt from the
// same range of any 10 other blocks of its row.
//
// # Files of an EC volume
//
// <vid>.ec00 .. <vid>.ec13 are the shards, <vid>.ecx the needle index,
// <vid>.ecj the deletion journal. Integers are little-endian.
//
// Shard files and the ecx begin with the same 128-byte header:
//
//	offset  size  field
//	0       8     magic: "HAYECSHD" in a shard, "HAYECIDX" in the ecx
//	8       4     EC format version (1)
//	12      4     vid
//	16      4     compaction generation of the encoded .dat
//	20      4     shard: the shard index 0..13; ecx: the number of records
//	24      8     D: length of the data stream (the .dat's size)
//	32      8     L: large block size in bytes
//	40      8     S: small block size in bytes
//	48      1     data shards (10)
//	49      1     parity shards (4)
//	50      10    reserved, zero
//	60      64    the encoded .dat's superblock (stream bytes [0, 64))
//	124     4     CRC-32C (Castagnoli) of bytes [0, 124)
//
// A shard's data area follows its header: nL*L + nS*S bytes, block after
// block in row order. Every shard of a set carries the same header but for
// the shard index.
//
// The ecx follows its header with one 24-byte record per live needle, in the
// idx record format (key, size code, offset and length in 8-byte stream
// units, CRC-32C; the tombstone bit is never set), sorted by (key, size
// code), each pair at most once. It is written once, at encode time, and is
// loaded into the same packed in-RAM index a volume uses.
//
// The ecj begins with a 24-byte header and holds one 24-byte record per
// delete, appended and synced before the delete is acknowledged:
//
//	header  offset  size  field
//	        0       8     magic "HAYECJNL"
//	        8       4     EC format version (1)
//	        12      4     vid
//	        16      4     compaction generation
//	        20      4     CRC-32C of bytes [0, 20)
//
//	record  offset  size  field
//	        0       8     key
//	        8       8     cookie
//	        16      4     size code (0xFFFFFFFF: every size of the photo)
//	        20      4     CRC-32C of bytes [0, 20)
//
// A torn or damaged last record is a delete that was never acknowledged: it
// is cut off when the journal is opened. A damaged record followed by intact
// ones is damage, not a torn append: the intact records are kept (a delete
// is never undone) and the journal is rewritten without the damaged one,
// which the other holders' journals give back. Space of deleted needles is
// reclaimed only when the volume is decoded (or decoded and encoded again).
//
// Every holder keeps the whole ecx and ecj. The ecx is the same everywhere;
// the journals converge: a holder that missed deletes (it was down) merges
// the others' (MergeJournal), appending the records it lacks, and every
// holder ends with the union. Journal records are compared as a set: two
// journals hold the same deletes when their JournalDigest (count of
// distinct records, and the sum modulo 2^64 of the xxHash64 of each
// record's bytes [0, 20)) agree. A lost or damaged ecx is copied from
// another holder (InstallECIndex), or rebuilt from the shards
// (RegenerateECX): the data shards, row by row, are the encoded .dat, and
// walking its needles as Reindex does gives back the same index, byte for
// byte.
//
// # Commit points
//
// Encode writes every shard and the journal under temporary names, syncs
// them, renames them into place, syncs the directory, and only then writes
// the ecx atomically: the ecx is the commit point, so shard files without an
// ecx are leftovers of an encode that did not finish and the .dat is still
// the volume. Rebuild writes each regenerated shard under a temporary name
// and renames it over the lost one. Decode builds the new .dat (with the
// next compaction generation, the journal's deletes applied and compacted
// away) in a temporary directory and renames it into place last. When a
// directory holds both a .dat and an ecx for one vid, the .dat wins if its
// generation is newer (a decode finished), else the EC form wins (an encode
// finished): see ResolveEC.
//
// A Volume and an ECVolume are safe for concurrent use.
package volume
