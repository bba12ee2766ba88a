package directory

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

func TestSequencerConcurrentNoDuplicates(t *testing.T) {
	f := openFSM(t, filepath.Join(t.TempDir(), "state.db"))
	defer f.Close()
	q := newSequencer(f, newLocalLog(f), 7) // a small block, so blocks are crossed often
	const workers, per = 16, 200
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				n := uint64(1 + (w+i)%5)
				first, err := q.next(context.Background(), n)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for k := first; k < first+n; k++ {
					if seen[k] {
						t.Errorf("key %d issued twice", k)
					}
					seen[k] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if seen[0] {
		t.Fatal("key 0 issued")
	}
	if hw := f.HighWater(); hw < uint64(len(seen)) {
		t.Fatalf("high water %d below the %d keys issued", hw, len(seen))
	}
}

func TestSequencerRestartNeverReissues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	var last uint64
	for round := range 4 {
		f := openFSM(t, path)
		q := newSequencer(f, newLocalLog(f), 100)
		for i := range 30 {
			first, err := q.next(context.Background(), uint64(1+i%3))
			if err != nil {
				t.Fatal(err)
			}
			if first <= last {
				t.Fatalf("round %d: key %d issued after %d", round, first, last)
			}
			last = first + uint64(i%3)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSequencerLargeCount(t *testing.T) {
	f := openFSM(t, filepath.Join(t.TempDir(), "state.db"))
	defer f.Close()
	q := newSequencer(f, newLocalLog(f), 10)
	a, _ := q.next(context.Background(), 25) // more than a block
	b, _ := q.next(context.Background(), 1)
	if a != 1 || b != 26 || f.HighWater() < 26 {
		t.Fatalf("keys %d, %d; high water %d", a, b, f.HighWater())
	}
	if _, err := q.next(context.Background(), 0); err == nil {
		t.Fatal("zero keys granted")
	}
}

// The kill -9 test re-executes the test binary with killChildEnv set; the
// child runs a directory with one fake store and prints every assigned
// range as "KEYS <first> <count>" once Assign returned it.
const killChildEnv = "HAYBALE_DIRECTORY_KILL_CHILD"

func TestKillChild(t *testing.T) {
	dir := os.Getenv(killChildEnv)
	if dir == "" {
		t.Skip("run by TestSequencerSurvivesKill")
	}
	s := startDirectory(t, Options{Dir: dir, Replication: 1, KeyBlock: 50})
	startFakeStore(t, s, "child-store", "")
	c := dirClient(t, s)
	for {
		resp, err := c.Assign(context.Background(), &directorypb.AssignRequest{Count: 3})
		if err != nil {
			fmt.Println("ERR", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		fmt.Printf("KEYS %d %d\n", resp.GetKeyStart(), resp.GetKeyCount())
	}
}

func TestSequencerSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("subprocess test")
	}
	dir := t.TempDir()
	var maxPrinted uint64
	for cycle := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.v")
		cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var first uint64
		ranges := 0
		for sc.Scan() && ranges < 200 {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || f[0] != "KEYS" {
				continue
			}
			start, err1 := strconv.ParseUint(f[1], 10, 64)
			n, err2 := strconv.ParseUint(f[2], 10, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("bad line %q", sc.Text())
			}
			if ranges == 0 {
				first = start
			}
			if start <= maxPrinted {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("cycle %d: key %d reissued (a previous run printed up to %d)", cycle, start, maxPrinted)
			}
			maxPrinted = start + n - 1
			ranges++
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if ranges < 200 {
			t.Fatalf("cycle %d: the child printed only %d ranges", cycle, ranges)
		}
		t.Logf("cycle %d: keys %d .. %d, then SIGKILL", cycle, first, maxPrinted)
	}
}
