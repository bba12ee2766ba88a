package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// runHaybale runs a haybale command to its end and returns its output and
// exit status.
func runHaybale(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("haybale %v: %v", args, err)
	}
	return string(out), 0
}

// TestECCluster runs a directory, 14 stores on 7 racks, a cache and a
// gateway as processes; it seals the volumes holding some uploads, encodes
// them with `haybale ec encode --directory`, kills 4 stores with SIGKILL,
// reads every image through the cache with its old ETag, rebuilds the
// lost shards with `haybale ec rebuild`, kills 4 more stores and reads
// every image from the survivors.
func TestECCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 17 processes")
	}
	base := t.TempDir()
	dirGRPC, dirHTTP, cacheHTTP, gwHTTP := freePort(t), freePort(t), freePort(t), freePort(t)
	cacheURL := "http://" + cacheHTTP
	// The internal plane runs --insecure here: this test is about erasure
	// coding, and TestClusterRefusesAttacks covers the certificates.
	secret := filepath.Join(base, "secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("e2e-ec-secret-", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--log-level", "warn", "--insecure"}
	dir := startHaybale(t, "directory", append([]string{"directory", "--secret-file", secret,
		"--dir", filepath.Join(base, "directory"), "--grpc", dirGRPC, "--http", dirHTTP,
		"--replication", "2", "--heartbeat-interval", "300ms", "--volume-size-limit", "64MiB",
		"--cache-nodes", cacheURL}, common...)...)
	waitHealthy(t, dir, "http://"+dirHTTP+"/healthz")
	stores := make([]*clusterStore, 14)
	for i := range stores {
		s := &clusterStore{name: fmt.Sprintf("store%d", i), http: freePort(t)}
		s.args = append([]string{"store",
			"--dir", filepath.Join(base, s.name), "--http", s.http, "--grpc", freePort(t),
			"--directory", dirGRPC, "--rack", fmt.Sprintf("rack%d", i/2), "--volume-size-limit", "64MiB",
			"--secret-file", secret}, common...)
		s.start(t)
		stores[i] = s
	}
	waitAlive(t, dirHTTP, 14)
	cacheInternal := freePort(t)
	cache := startHaybale(t, "cache", append([]string{"cache",
		"--directory", dirGRPC, "--http", cacheHTTP, "--internal", cacheInternal, "--capacity", "64MiB", "--lookup-ttl", "1s"}, common...)...)
	gw := startHaybale(t, "gateway", append([]string{"gateway",
		"--directory", dirGRPC, "--http", gwHTTP, "--cache-nodes", cacheURL, "--cache-internal", cacheInternal}, common...)...)
	waitHealthy(t, cache, cacheURL+"/healthz")
	gateway := "http://" + gwHTTP
	waitHealthy(t, gw, gateway+"/healthz")

	vids := map[uint32]bool{}
	var paths []string
	for i := range 3 {
		status, up, body, err := upload(gateway, syntheticJPEG(t, 700+100*i, 500+50*i, 20+i))
		if err != nil || status != 201 {
			t.Fatalf("upload %d: %d %s %v", i, status, body, err)
		}
		vid, err := strconv.ParseUint(strings.SplitN(up.ID, "-", 2)[0], 10, 32)
		if err != nil {
			t.Fatal(err)
		}
		vids[uint32(vid)] = true
		for _, size := range sizeLetters {
			paths = append(paths, "/p/"+up.ID+"/"+size)
		}
	}

	conn, err := grpc.NewClient(dirGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dc := directorypb.NewDirectoryClient(conn)
	ctx := context.Background()
	lookup := func(vid uint32) *directorypb.LookupResponse {
		resp, err := dc.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// Seal: read-only in the directory, then compacted on every replica.
	for vid := range vids {
		if _, err := dc.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "e2e"}); err != nil {
			t.Fatal(err)
		}
		for _, r := range lookup(vid).GetReplicas() {
			eventually(t, 15*time.Second, fmt.Sprintf("compact volume %d on %s", vid, r.GetStoreId()), func() error {
				if out, code := runHaybale(t, "volume", "compact", "--insecure", "--store", r.GetGrpcAddr(), "--vid", fmt.Sprint(vid)); code != 0 {
					return fmt.Errorf("exit %d: %s", code, out)
				}
				return nil
			})
		}
		eventually(t, 15*time.Second, fmt.Sprintf("volume %d sealed", vid), func() error {
			if st := lookup(vid).GetState(); st != storepb.VolumeState_VOLUME_STATE_SEALED {
				return fmt.Errorf("state %v", st)
			}
			return nil
		})
	}
	// What the images answer before the encode, from a store.
	type answer struct {
		body []byte
		etag string
	}
	before := map[string]answer{}
	for _, p := range paths {
		vid, _ := strconv.ParseUint(strings.SplitN(strings.TrimPrefix(p, "/p/"), "-", 2)[0], 10, 32)
		resp, b := fetch(t, "http://"+lookup(uint32(vid)).GetReplicas()[0].GetHttpAddr()+p)
		if resp.StatusCode != 200 {
			t.Fatalf("%s before the encode: %d", p, resp.StatusCode)
		}
		before[p] = answer{b, resp.Header.Get("ETag")}
	}

	for vid := range vids {
		out, code := runHaybale(t, "ec", "encode", "--insecure", "--directory", dirGRPC, "--vid", fmt.Sprint(vid),
			"--large-block", "65536", "--small-block", "4096")
		if code != 0 || !strings.Contains(out, "survives the loss of any 4 store(s), any 2 rack(s)") {
			t.Fatalf("ec encode volume %d: exit %d\n%s", vid, code, out)
		}
		t.Logf("ec encode volume %d: %s", vid, strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]))
		eventually(t, 15*time.Second, fmt.Sprintf("volume %d EC on 14 stores", vid), func() error {
			resp := lookup(vid)
			if resp.GetState() != storepb.VolumeState_VOLUME_STATE_EC || len(resp.GetReplicas()) != 14 {
				return fmt.Errorf("state %v, %d holders", resp.GetState(), len(resp.GetReplicas()))
			}
			return nil
		})
	}

	// kill -9 four stores; the images were never read through the cache,
	// so it fetches each from the stores left.
	for _, s := range stores[:4] {
		s.proc.kill9()
	}
	check := func(what, origin string) {
		t.Helper()
		for p, want := range before {
			eventually(t, 20*time.Second, what+": "+p, func() error {
				resp, b, err := tryFetch(origin + p)
				if err != nil {
					return err
				}
				if resp.StatusCode != 200 || !bytes.Equal(b, want.body) || resp.Header.Get("ETag") != want.etag {
					return fmt.Errorf("%d, %d bytes, ETag %s (want %s)", resp.StatusCode, len(b), resp.Header.Get("ETag"), want.etag)
				}
				return nil
			})
		}
	}
	check("through the cache with 4 stores killed", cacheURL)
	waitAlive(t, dirHTTP, 10)
	out, code := runHaybale(t, "ec", "status", "--insecure", "--directory", dirGRPC)
	if code != 2 || !strings.Contains(out, "degraded") {
		t.Fatalf("ec status with 4 stores down: exit %d\n%s", code, out)
	}
	for vid := range vids {
		out, code := runHaybale(t, "ec", "rebuild", "--insecure", "--directory", dirGRPC, "--vid", fmt.Sprint(vid))
		if code != 0 || !strings.Contains(out, "rebuilt shards") {
			t.Fatalf("ec rebuild volume %d: exit %d\n%s", vid, code, out)
		}
	}
	if out, code := runHaybale(t, "ec", "status", "--insecure", "--directory", dirGRPC); code != 0 {
		t.Fatalf("ec status after the rebuild: exit %d\n%s", code, out)
	}
	// More stores down, as many as the rebuilt placement allows (at most 4
	// shards of any volume lost): every image still reads from each
	// survivor.
	lost := map[uint32]int{}
	var survivors []*clusterStore
	killed := 0
	for _, s := range stores[4:] {
		counts := map[uint32]int{}
		for vid := range vids {
			conn, err := grpc.NewClient(storeGRPC(s), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			st, err := storepb.NewStoreClient(conn).VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: vid})
			conn.Close()
			if err != nil {
				t.Fatalf("%s: volume %d: %v", s.name, vid, err)
			}
			counts[vid] = len(st.GetVolumes()[0].GetEcShardIds())
		}
		fits := killed < 4
		for vid, n := range counts {
			fits = fits && lost[vid]+n <= 4
		}
		if !fits {
			survivors = append(survivors, s)
			continue
		}
		for vid, n := range counts {
			lost[vid] += n
		}
		s.proc.kill9()
		killed++
	}
	t.Logf("killed %d more stores after the rebuild; shards lost per volume: %v", killed, lost)
	if killed < 2 {
		t.Fatalf("only %d more stores could be killed", killed)
	}
	for _, s := range survivors {
		check("from "+s.name+" with "+fmt.Sprint(4+killed)+" stores killed", "http://"+s.http)
	}
}

// storeGRPC returns the gRPC address a cluster store was started with.
func storeGRPC(s *clusterStore) string {
	for i, a := range s.args {
		if a == "--grpc" && i+1 < len(s.args) {
			return s.args[i+1]
		}
	}
	return ""
}
