// Command haybale is the single binary of haybale: one subcommand per role
// (store, directory, cache, gateway, server) and the operator tools. It
// only parses flags and wires packages together; the logic lives in the
// library packages.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "haybale:", err)
		os.Exit(1)
	}
}
