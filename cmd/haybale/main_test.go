package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/haybale/haybale/tools"
)

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("check: %w", tools.ErrReplicasDiffer), 2},
		{fmt.Errorf("verify: %w", tools.ErrCorrupt), 2},
		{errors.New("directory unreachable"), 1},
	} {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
