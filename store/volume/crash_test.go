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
		run, err := runCrashChild(dir, cycle*10_000_000+1, time.Duration(20+r.IntN(300))*time.Millisecond, nil)
		if err != nil {
			t.Fatalf("cycle %d: %v", cycle, err)
		}
		for k, c := range run.acked {
			acked[k] = c
		}
		for k := range run.photos {
			photos[k] = true
		}
		for k := range run.deleted {
			deleted[k] = true
		}
		n := len(run.acked) + len(run.photos)

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

// crashRun is what one crash child acknowledged before it was killed.
type crashRun struct {
	acked   map[uint64]uint64 // key -> checksum of a single-needle write
	photos  map[uint64]bool   // keys written as four-needle batches
	deleted map[uint64]bool   // keys whose delete was acknowledged
}

// runCrashChild starts a crash child on dir, lets it acknowledge writes
// for about killAfter once it has acknowledged its first, kills it with
// SIGKILL and returns what it acknowledged. It fails unless the child was
// still running when the kill came: a child that stopped on its own (a
// failed write, a panic, an early exit) makes the cycle prove nothing.
func runCrashChild(dir string, firstKey int, killAfter time.Duration, env []string) (crashRun, error) {
	run := crashRun{acked: map[uint64]uint64{}, photos: map[uint64]bool{}, deleted: map[uint64]bool{}}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, "HAYBALE_CRASH_FIRST_KEY="+strconv.Itoa(firstKey))
	cmd.Env = append(cmd.Env, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return run, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return run, err
	}
	var mu sync.Mutex
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
				run.acked[k] = c
			case f[0] == "photo":
				run.photos[k] = true
			case f[0] == "del":
				run.deleted[k] = true
			}
			mu.Unlock()
		}
	}()
	select {
	case <-started:
	case <-done:
		// The child closed its output without acknowledging anything.
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		cmd.Wait()
		return run, errors.New("child acknowledged nothing in 30s")
	}
	select {
	case <-time.After(killAfter):
	case <-done: // the child stopped on its own: Wait below reports how
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return run, fmt.Errorf("kill: %w", err)
	}
	<-done
	werr := cmd.Wait()
	mu.Lock()
	defer mu.Unlock()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return run, fmt.Errorf("the child was not killed: it stopped on its own (%v) after %d acknowledgements", werr, len(run.acked)+len(run.photos)+len(run.deleted))
	}
	return run, nil
}

// TestCrashHarnessDetectsEarlyExit makes the crash child exit by itself
// after a few writes: the harness must report the cycle as failed rather
// than check a volume that was never cut mid-write.
func TestCrashHarnessDetectsEarlyExit(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("running as the crash child")
	}
	for _, code := range []string{"0", "3"} {
		_, err := runCrashChild(t.TempDir(), 1, 30*time.Second, []string{crashExitEnv + "=" + code})
		if err == nil {
			t.Fatalf("child exiting with status %s after its first writes was taken for a kill", code)
		}
		t.Logf("exit %s: %v", code, err)
	}
}

// crashExitEnv makes the crash child exit with the given status after its
// first acknowledged writes, to test the harness.
const crashExitEnv = "HAYBALE_VOLUME_CRASH_EXIT"

// TestCrashChild is the child side of TestCrashKill9; it does nothing in a
// normal run.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("only runs as TestCrashKill9's child")
	}
	first, _ := strconv.ParseUint(os.Getenv("HAYBALE_CRASH_FIRST_KEY"), 10, 64)
	exitCode := os.Getenv(crashExitEnv)
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
				if exitCode != "" && k >= first+20 {
					v.Close()
					code, _ := strconv.Atoi(exitCode)
					os.Exit(code)
				}
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
