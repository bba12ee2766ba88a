package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/tools"
)

func newReplicaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Repair volume replicas",
	}
	var (
		vid      uint32
		from, to string
		jsonOut  bool
		tls      operatorTLSFlags
	)
	sync := &cobra.Command{
		Use:   "sync --vid N --from ADDR --to ADDR",
		Short: "Copy a volume from a healthy replica to a store that lost it or has it damaged",
		Long: `The store at --to pulls volume N from the store at --from, verifies every
needle, rebuilds its idx and serves the copy in place of whatever it had. An
interrupted sync resumes where it stopped when run again from the same
source. The volume must be read-only on the source (the directory marks a
volume read-only while one of its replicas is missing); a writable source
could acknowledge writes the copy would miss, so it is refused.

Exit status: 0 when the copy is in service, 1 on errors.`,
		Example: `  haybale replica sync --certs-dir ca/operator-alice --vid 7 --from store1:8081 --to store2:8081`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if vid == 0 || from == "" || to == "" {
				return fmt.Errorf("--vid, --from and --to are required")
			}
			creds, err := tls.credentials()
			if err != nil {
				return err
			}
			_, err = tools.ReplicaSync(c.Context(), creds, vid, from, to, tools.Output{W: c.OutOrStdout(), JSON: jsonOut, Progress: os.Stderr})
			return err
		},
	}
	sync.Flags().Uint32Var(&vid, "vid", 0, "volume to copy")
	sync.Flags().StringVar(&from, "from", "", "gRPC address of the store holding a healthy copy")
	sync.Flags().StringVar(&to, "to", "", "gRPC address of the store to repair")
	sync.Flags().BoolVar(&jsonOut, "json", false, "write machine-readable JSON")
	tls.register(sync.Flags())
	cmd.AddCommand(sync)
	return cmd
}
