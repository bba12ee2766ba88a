package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
)

// TestLeaderFailover runs uploads and reads through one client while the
// directory's leader is stopped: the client, and the stores' heartbeaters,
// find the new leader by themselves.
func TestLeaderFailover(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Directories: 3, Stores: 3, Replication: 3,
		Heartbeat: 50 * time.Millisecond, Secret: []byte("a secret for the failover test")})
	cl := newClient(t, c)
	first := writePhoto(t, cl, images(1))

	type acked struct {
		id   needle.PhotoID
		seed byte
	}
	var (
		mu         sync.Mutex
		photos     []acked
		writeErrs  []error
		afterKill  int
		killed     bool
		readErrs   []error
		stop       = make(chan struct{})
		wg         sync.WaitGroup
		seed       byte = 2
		writerDone      = make(chan struct{})
	)
	wg.Add(2)
	go func() { // uploads
		defer wg.Done()
		defer close(writerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := seed
			seed++
			ctx, cancel := context.WithTimeout(bg, 20*time.Second)
			id, err := cl.WritePhoto(ctx, images(s))
			cancel()
			mu.Lock()
			if err != nil {
				writeErrs = append(writeErrs, err)
			} else {
				photos = append(photos, acked{id, s})
				if killed {
					afterKill++
				}
			}
			mu.Unlock()
		}
	}()
	go func() { // reads of acknowledged photos never fail
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			mu.Lock()
			if len(photos) == 0 {
				mu.Unlock()
				continue
			}
			p := photos[i%len(photos)]
			mu.Unlock()
			if _, err := cl.Read(bg, p.id, needle.SizeSmall); err != nil {
				mu.Lock()
				readErrs = append(readErrs, fmt.Errorf("read %s: %w", p.id, err))
				mu.Unlock()
			}
		}
	}()

	waitCount := func(what string, cond func() bool) {
		t.Helper()
		c.Eventually(what, func() error {
			mu.Lock()
			defer mu.Unlock()
			if !cond() {
				return errors.New("not yet")
			}
			return nil
		})
	}
	waitCount("uploads before the failover", func() bool { return len(photos) >= 10 })
	old := c.Leader()
	killedAt := time.Now()
	old.Stop()
	mu.Lock()
	killed = true
	mu.Unlock()
	t.Logf("stopped the leader %s", old.ID)
	waitCount("uploads after the failover", func() bool { return afterKill >= 20 })
	close(stop)
	wg.Wait()
	<-writerDone

	newLeader := c.Leader()
	if newLeader == old {
		t.Fatalf("the stopped node %s still leads", old.ID)
	}
	// Every store heartbeats to the new leader.
	c.Eventually("stores heard by the new leader", func() error {
		for _, st := range newLeader.Srv.Directory().Stores() {
			if seen := time.Unix(0, st.LastHeartbeatUnixNano); !seen.After(killedAt) {
				return fmt.Errorf("store %s last heard %v, before the failover", st.ID, seen)
			}
		}
		return nil
	})

	t.Logf("%d uploads (%d after the failover), %d failed", len(photos), afterKill, len(writeErrs))
	for _, err := range writeErrs {
		// The directory call waits for the new leader; a failure is only
		// allowed while a store write races the failover, and is logged.
		t.Logf("upload failed: %v", err)
	}
	for _, err := range readErrs {
		t.Errorf("read of an acknowledged photo failed: %v", err)
	}
	keys := map[uint64]needle.PhotoID{}
	for _, p := range photos {
		if other, dup := keys[p.id.Key]; dup {
			t.Fatalf("key %d issued twice: %s and %s", p.id.Key, other, p.id)
		}
		keys[p.id.Key] = p.id
		f, err := cl.Read(bg, p.id, needle.SizeSmall)
		if err != nil {
			t.Fatalf("acknowledged photo %s lost: %v", p.id, err)
		}
		if want := images(p.seed)[needle.SizeSmall].Data; !bytes.Equal(f.Data, want) {
			t.Fatalf("photo %s: wrong bytes", p.id)
		}
	}
	// The leader-only calls work through the new leader too.
	if _, err := cl.PhotoURLs(bg, first); err != nil {
		t.Errorf("PhotoURLs after the failover: %v", err)
	}
	if err := cl.Delete(bg, first); err != nil {
		t.Errorf("Delete after the failover: %v", err)
	}
	if _, err := cl.Read(bg, first, needle.SizeSmall); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("read of the deleted photo: %v, want ErrNotFound", err)
	}
}
