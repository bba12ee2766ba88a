// Package directory is haybale's directory: it knows the stores and the
// logical volumes, hands out photo keys with write tokens, decides where new
// volumes live, and builds image URLs.
//
// Directory is the domain logic (state machine, sequencer, placement,
// liveness) with Go types and the sentinel errors of errors.go; it knows
// nothing of gRPC. grpc.go is a thin adapter serving it as
// directorypb.Directory, with one error-to-status mapping. Server runs it:
// gRPC and HTTP (a status page, /api/v1/status, /metrics, /healthz,
// /readyz) through internal/serve.
//
// # State
//
// The state is an FSM: store records, volume records, directory node
// records, the key sequencer's high-water mark and the vid mark. It
// changes only through FSM.Apply of a Command (reserve_keys, store_report,
// create_volume, set_volume_state, remove_store, set_node), which is
// deterministic. Decisions that need a clock or a random choice (liveness,
// placement, vids) are made by the leader and expressed as commands,
// committed through a Log.
//
// # Single node and cluster
//
// A single-node directory (the default, and what `haybale server` runs) is
// the plain FSM in a bbolt file (StateFile in the data directory), applied
// directly: no raft is involved, and data folders of earlier versions are
// upgraded in place (state version 1 to 2). With Options.Raft the node is
// a member of a cluster of 1, 3 or 5 directories: commands are entries of
// a hashicorp/raft log (raft-boltdb as log and stable store, raft's file
// snapshot store), the FSM is held in memory on every node and rebuilt
// from the last snapshot and the log after it. Raft between the nodes runs
// over mutual TLS from the cluster CA (raftnet.go): a node accepts raft
// connections only from a certificate of the directory role and dials only
// peers presenting one, so no other role and nothing outside the cluster
// can vote, append entries or install a snapshot. On an insecure plane
// (`--insecure`) raft runs over plain TCP.
//
// Only the leader decides: Assign, heartbeats, allocations, state changes
// and delete tokens. A follower answers Lookup, PhotoURLs and the lists
// from its own state (it hears no heartbeats, so it reports liveness as
// unknown) as long as that state is fresh: it heard from the leader within
// two heartbeat timeouts and applied all it knows committed (Raft.Fresh),
// so a node that just restarted does not call a volume unknown from an old
// snapshot. Otherwise, and for everything else, it answers with a
// NotLeaderError naming the leader's
// gRPC address, which the gRPC adapter sends as UNAVAILABLE with an
// errdetails.ErrorInfo (reason NOT_LEADER, metadata "leader"). A new
// leader first commits a barrier, so that it has applied every entry of
// earlier leaders, before it decides anything; and it gives every
// recorded store a grace period of MissedHeartbeats intervals to find it
// before calling it dead, so an election never makes healthy volumes
// read-only.
//
// Heartbeat figures that change all the time (free space, sizes, counts,
// the time of the last heartbeat) are kept in memory as they arrive and
// persisted with a store_report at most every Options.PersistInterval;
// anything structural in a report (addresses, rack, the set of volumes,
// their states, a volume reaching its size limit) is persisted at once.
//
// # Keys
//
// Keys are handed out in increasing order. The sequencer reserves them in
// blocks of Options.KeyBlock: the block's end is committed as the new
// high-water mark before any key of the block is handed out, so no key is
// handed out twice across restarts, crashes and leader changes; each of
// them skips the rest of the last block.
//
// # Volumes
//
// A volume is writable for Assign when its logical state is writable, it is
// not being allocated, it has Options.Replication replicas, every replica's
// store is alive and reports it writable, and it is below its size limit.
// A store is alive while its last heartbeat is at most MissedHeartbeats
// intervals old. A dead store's volumes are read-only in every view (not in
// the persisted state), and come back by themselves when it heartbeats
// again. A replica reporting its volume not writable, or at its size limit,
// makes the logical volume read-only for good; the directory then asks
// every replica still writing to it to stop, through heartbeat answers.
//
// When fewer than Options.MinWritable assignable volumes have room left
// (below 90% of their limit), a volume is allocated in the background; when
// none is assignable, Assign allocates one and waits. A new volume gets
// Options.Replication live stores with Options.MinStoreFreeBytes free, on
// distinct racks as far as the rack labels allow (a store without a label
// counts as its own rack), preferring stores with fewer writable volumes and
// more free space. It is recorded as allocating, created on each store with
// Store.AllocateVolume, and made writable once all of them succeeded; a
// failed allocation leaves it read-only, so its vid is never reused; so
// does an allocation cut short by a crash or a failover. A store's
// heartbeat built before it acknowledged a new volume cannot hide it, however
// late it arrives: stores stamp each report and each acknowledgement with
// one strictly increasing report clock, and for that volume the directory
// ignores the absence of it from a report stamped at or before the
// acknowledgement (mergeAllocated; stores without a report clock get two
// heartbeat intervals instead). Vids come from
// the vid mark (the largest vid handed out) and never wrap: when the mark
// reaches 4294967295, allocation fails. A vid reported by a store but
// unknown to the directory is adopted only when it is at most the mark;
// a higher one is not adopted but listed as suspect on the store's record
// and the status page, for an operator. RemoveStore forgets a store; a
// store that stops heartbeating is never picked for a new volume.
//
// # Erasure coding
//
// The directory runs the one erasure-coding workflow of the cluster
// (ecjob.go, Directory.EncodeEC), dialing the stores with its directory
// certificate: freeze (read-only on every replica), compact the replicas
// not sealed yet, encode on one replica, place the 14 shards on distinct
// live stores (distinct racks as far as labels allow), verify that every
// holder serves the shards placed on it, drop the encoder's extra shards,
// and switch the record to EC; every plain replica is replaced (by shards,
// or by the index and journal alone). Every step leaves the volume
// readable, plain or EC, and a run resumes from where the stores are, so a
// job cut short by a failure, a crash or a failover is finished by the next
// run. Operators start it with the EcEncode RPC (leader only; followers
// forward it), which refuses a writable volume; the automatic policy
// (ecpolicy.go, Options.ECAfter and ECFullPercent) freezes the volumes that
// are full and quiet by the last-append times the stores report, and takes
// first the volumes some replicas already hold as EC. One job runs at a
// time (ErrBusy otherwise); a failed policy job is retried after a backoff
// that doubles per failure. From the encode step to the job's end,
// AuthorizeDelete refuses the volume's photos: a delete then could miss
// the holders the record does not list yet. The status page,
// /api/v1/status and /metrics show the jobs.
//
// # URLs
//
// PhotoURLs answers <base>/p/<photo ID>/<letter>.jpg for each size, where
// base is the CDN URL when configured, else the cache node owning the key
// (needle.Owner over Options.CacheNodes, the same function the caches use),
// else the public URL (or http://<http addr>) of a live store holding a
// replica, chosen by needle.Owner over the live replicas so that a photo's
// URLs are stable.
package directory
