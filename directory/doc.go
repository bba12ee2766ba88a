// Package directory is haybale's directory: it knows the stores and the
// logical volumes, hands out photo keys with write tokens, decides where new
// volumes live, and builds image URLs. Server serves it over gRPC
// (directorypb.Directory) and HTTP (a status page, /api/v1/status,
// /metrics, /healthz, /readyz).
//
// # State
//
// The durable state is an FSM in a bbolt file (StateFile in the data
// directory): store records, volume records and the key sequencer's
// high-water mark. It changes only through FSM.Apply of a Command
// (reserve_keys, store_report, create_volume, set_volume_state), which is
// deterministic, so a replicated log (hashicorp/raft) can drive it later.
// Decisions that need a clock or a random choice (liveness, placement, vids)
// are made by the server and expressed as commands.
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
// blocks of Options.KeyBlock: the block's end is applied as the new
// high-water mark before any key of the block is handed out, so no key is
// handed out twice across restarts and crashes; a restart skips the rest of
// the last block.
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
// failed allocation leaves it read-only, so its vid is never reused. A vid
// reported by a store but unknown to the directory is adopted.
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
