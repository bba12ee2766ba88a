package directory

import (
	"context"
	"testing"
	"time"
)

// BenchmarkAssign measures Assign of one key (key blocks of 50) on a
// single node (FSM in memory, commands applied directly) and on the leader
// of a three-node raft cluster on the in-memory transport, where each key
// block is a committed raft entry. Both use three stores and replication 3.
func BenchmarkAssign(b *testing.B) {
	ctx := context.Background()
	run := func(b *testing.B, d *Directory) {
		if _, err := d.Assign(ctx, 1); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := d.Assign(ctx, 1); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.Run("single", func(b *testing.B) {
		stores := newMemStores("s1", "s2", "s3")
		fsm := OpenMemoryFSM()
		d, err := NewDirectory(Options{Secret: testSecret, Replication: 3, MinWritable: 1, MinStoreFreeBytes: 1, KeyBlock: 50,
			HeartbeatInterval: time.Minute, Logger: quietLogger()}, fsm, newLocalLog(fsm), stores)
		if err != nil {
			b.Fatal(err)
		}
		defer d.Close()
		for _, id := range []string{"s1", "s2", "s3"} {
			d.Heartbeat(ctx, stores.heartbeat(id))
		}
		run(b, d)
	})
	b.Run("raft3", func(b *testing.B) {
		c := newTestCluster(b, 3, func(o *RaftOptions) {
			o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
		})
		l := c.leader()
		c.beat()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
					c.beat()
				}
			}
		}()
		run(b, l.d)
	})
}
