package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/tools"
)

// runReplicaCheck runs `haybale replica check` with args and returns its
// output and exit status.
func runReplicaCheck(t *testing.T, args ...string) (string, int) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetArgs(append([]string{"replica", "check", "--insecure"}, args...))
	root.SetOut(&out)
	root.SetErr(new(bytes.Buffer))
	if err := root.ExecuteContext(context.Background()); err != nil {
		return out.String(), exitCode(err)
	}
	return out.String(), 0
}

// TestReplicaCheckCommand finds a photo one replica lacks (exit status 2),
// repairs it with tokens signed from --secret-file (exit status 0), and
// refuses bad flags with a message.
func TestReplicaCheckCommand(t *testing.T) {
	secret := []byte("a secret for the replica check command")
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	c := testcluster.Start(t, testcluster.Options{Stores: 2, Replication: 2, Secret: secret})
	ctx := context.Background()
	var vid uint32
	c.Eventually("a volume is assigned", func() error {
		a, err := c.Directory.Assign(ctx, &directorypb.AssignRequest{Count: 1})
		if err != nil {
			return err
		}
		vid = a.GetVid()
		if _, err := c.Stores[0].Srv.Store().Volume(vid); err != nil {
			return err
		}
		_, err = c.Stores[1].Srv.Store().Volume(vid)
		return err
	})
	v, err := c.Stores[0].Srv.Store().Volume(vid)
	if err != nil {
		t.Fatal(err)
	}
	ns := []*needle.Needle{{Key: 1 << 41, Cookie: 9, Size: needle.SizeThumb, ContentType: needle.TypeJPEG, Data: []byte("thumb"), AppendTime: time.Now().UnixNano()}}
	if _, err := v.Write(ctx, ns); err != nil {
		t.Fatal(err)
	}
	vidArg := fmt.Sprint(vid)
	out, code := runReplicaCheck(t, "--directory", c.DirAddr, "--vid", vidArg, "--json")
	var res tools.ReplicaCheckResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 2 || res.Remaining != 1 {
		t.Fatalf("check: exit %d, %v, %+v\n%s", code, err, res, out)
	}
	out, code = runReplicaCheck(t, "--directory", c.DirAddr, "--all", "--repair", "--secret-file", secretFile)
	if code != 0 || !strings.Contains(out, "repaired") {
		t.Fatalf("repair: exit %d\n%s", code, out)
	}
	if v1, err := c.Stores[1].Srv.Store().Volume(vid); err != nil || !v1.Has(1<<41, needle.SizeThumb) {
		t.Fatal("the repair did not copy the needle")
	}
	for _, args := range [][]string{
		{"--vid", vidArg},
		{"--directory", c.DirAddr},
		{"--directory", c.DirAddr, "--vid", vidArg, "--all"},
	} {
		if _, code := runReplicaCheck(t, args...); code != 1 {
			t.Fatalf("%v: exit %d, want 1", args, code)
		}
	}
}
