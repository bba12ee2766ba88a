package volume

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

var crashCycles = flag.Int("crash.cycles", 5, "kill -9 cycles in TestCrashKill9")

const crashChildEnv = "HAYBALE_VOLUME_CRASH_CHILD"

// crashData derives a needle's bytes from its key, so the parent can check
// contents without the child sending them.
func crashData(key uint64) []byte {
	r := rand.New(rand.NewPCG(key, 7))
	b := make([]byte, 200+r.IntN(6000))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestCrashKill9 runs a child process that appends needles (single ones
// and four-needle photo batches) and deletes from several goroutines and
// prints each acknowledged write and delete; the parent kills
// it with SIGKILL at a random moment, reopens the volume and checks that
// every acknowledged needle reads back bit-exact. Run more cycles with
// -crash.cycles=N.
func TestCrashKill9(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("running as the crash child")
	}
	dir := t.TempDir()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	acked := map[uint64]uint64{} // key -> checksum of a single-needle write
	photos := map[uint64]bool{}  // keys written as four-needle batches
	deleted := map[uint64]bool{} // keys whose delete was acknowledged
	for cycle := 0; cycle < *crashCycles; cycle++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, "HAYBALE_CRASH_FIRST_KEY="+strconv.Itoa(cycle*10_000_000+1))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		got := map[uint64]uint64{}
		photosGot := map[uint64]bool{}
		delGot := map[uint64]bool{}
		started := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stdout)
			once := sync.Once{}
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) < 2 {
					continue
				}
				once.Do(func() { close(started) })
				k, _ := strconv.ParseUint(f[1], 10, 64)
				mu.Lock()
				switch {
				case f[0] == "ack" && len(f) == 3:
					c, _ := strconv.ParseUint(f[2], 16, 64)
					got[k] = c
				case f[0] == "photo":
					photosGot[k] = true
				case f[0] == "del":
					delGot[k] = true
				}
				mu.Unlock()
			}
		}()
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatal("child acknowledged nothing in 30s")
		}
		time.Sleep(time.Duration(20+r.IntN(300)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-done
		cmd.Wait()
		mu.Lock()
		for k, c := range got {
			acked[k] = c
		}
		for k := range photosGot {
			photos[k] = true
		}
		for k := range delGot {
			deleted[k] = true
		}
		n := len(got) + len(photosGot)
		mu.Unlock()

		v, err := Open(context.Background(), dir, 1, Options{})
		if err != nil {
			t.Fatalf("cycle %d: reopen: %v", cycle, err)
		}
		for k := range deleted {
			if _, _, err := v.Read(k, k^0xc0ffee, needle.SizeCode(k%4), nil); !errors.Is(err, ErrNotFound) {
				t.Fatalf("cycle %d: acknowledged delete of key %d lost: %v", cycle, k, err)
			}
		}
		for k := range photos {
			for s := needle.SizeThumb; s <= needle.SizeLarge; s++ {
				nd, _, err := v.Read(k, k^0xc0ffee, s, nil)
				if err != nil || string(nd.Data) != string(crashData(k*8+uint64(s))) {
					t.Fatalf("cycle %d: acknowledged photo %d size %v lost or changed: %v", cycle, k, s, err)
				}
			}
		}
		for k, c := range acked {
			if k%5 == 0 {
				continue // deleted, or its delete was in flight
			}
			nd, _, err := v.Read(k, k^0xc0ffee, needle.SizeCode(k%4), nil)
			if err != nil {
				t.Fatalf("cycle %d: acknowledged key %d lost: %v", cycle, k, err)
			}
			if nd.Checksum != c || string(nd.Data) != string(crashData(k)) {
				t.Fatalf("cycle %d: key %d reads back different bytes", cycle, k)
			}
		}
		if err := v.Check(); err != nil {
			t.Fatalf("cycle %d: %v", cycle, err)
		}
		v.Close()
		t.Logf("cycle %d: %d writes acknowledged this cycle; in all %d needles, %d photos, %d deletes, all intact", cycle, n, len(acked), len(photos), len(deleted))
	}
}

// TestCrashChild is the child side of TestCrashKill9; it does nothing in a
// normal run.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("only runs as TestCrashKill9's child")
	}
	first, _ := strconv.ParseUint(os.Getenv("HAYBALE_CRASH_FIRST_KEY"), 10, 64)
	ctx := context.Background()
	v, err := Open(ctx, dir, 1, Options{})
	if errors.Is(err, os.ErrNotExist) {
		v, err = Create(ctx, dir, 1, Options{})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	var wg sync.WaitGroup
	const writers = 8
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			say := func(format string, args ...any) {
				outMu.Lock()
				fmt.Fprintf(out, format, args...)
				out.Flush()
				outMu.Unlock()
			}
			for k := first + uint64(w); ; k += writers {
				if k%3 == 0 {
					// A whole photo: four needles in one batch.
					var ns []*needle.Needle
					for s := needle.SizeThumb; s <= needle.SizeLarge; s++ {
						ns = append(ns, &needle.Needle{Key: k, Cookie: k ^ 0xc0ffee, Size: s, ContentType: needle.TypeJPEG, Data: crashData(k*8 + uint64(s))})
					}
					if _, err := v.Write(ctx, ns); err != nil {
						fmt.Fprintln(os.Stderr, "crash child write:", err)
						os.Exit(3)
					}
					say("photo %d\n", k)
					continue
				}
				n := &needle.Needle{Key: k, Cookie: k ^ 0xc0ffee, Size: needle.SizeCode(k % 4), ContentType: needle.TypeJPEG, Data: crashData(k)}
				if _, err := v.Write(ctx, []*needle.Needle{n}); err != nil {
					fmt.Fprintln(os.Stderr, "crash child write:", err)
					os.Exit(3)
				}
				say("ack %d %x\n", k, n.Checksum)
				if k%5 == 0 {
					if _, err := v.Delete(ctx, k, k^0xc0ffee, needle.SizeAll); err != nil {
						fmt.Fprintln(os.Stderr, "crash child delete:", err)
						os.Exit(3)
					}
					say("del %d\n", k)
				}
			}
		}(w)
	}
	wg.Wait()
}
