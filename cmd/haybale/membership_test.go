package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// Bad cluster flags are refused with the cause before anything starts.
func TestDirectoryClusterFlagErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	base := []string{"directory", "--insecure", "--dir", dir, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--seed-from", "x.db"}, "need --raft-id"},
		{[]string{"--raft-id", "d1", "--raft-addr", "127.0.0.1:7072", "--bootstrap", "d1@127.0.0.1:7072,d2@127.0.0.1:7073", "--seed-from", "x.db"},
			"this node alone"},
		{[]string{"--raft-id", "d1", "--raft-addr", "127.0.0.1:7072", "--bootstrap", "d1@127.0.0.1:7072", "--seed-from", filepath.Join(dir, "missing.db")},
			"--seed-from"},
	} {
		_, err := runCLI(t, append(base, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	for _, args := range [][]string{
		{"directory", "add", "--insecure", "--directory", "127.0.0.1:1", "--id", "d2"},
		{"directory", "remove", "--insecure", "--directory", "127.0.0.1:1"},
		{"store", "remove", "--insecure", "--directory", "127.0.0.1:1"},
		{"store", "remove", "--insecure", "--directory", "nohost", "--id", "s1"},
	} {
		if _, err := runCLI(t, args...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
