// Command haybale is the single binary of haybale: one subcommand per role
// (store, directory, cache, gateway, server) and the operator tools. It
// only parses flags and wires packages together; the logic lives in the
// library packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/haybale/haybale/tools"
)

// exitCode maps an error to the process exit status: 2 when damaged data
// was found or replicas still differ, 1 for every other failure.
func exitCode(err error) int {
	if errors.Is(err, tools.ErrCorrupt) || errors.Is(err, tools.ErrReplicasDiffer) {
		return 2
	}
	return 1
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "haybale:", err)
		stop()
		os.Exit(exitCode(err))
	}
}
