package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/tools"
)

func newVolumeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "volume",
		Short: "Verify, reindex, compact, dump and export volume files",
		Long: `Operator commands on volume files (<vid>.dat). The offline commands work on
the files of a stopped store.

Exit status: 0 when all is well, 1 on errors, 2 when damaged data was found.`,
	}
	var jsonOut bool
	cmd.PersistentFlags().BoolVar(&jsonOut, "json", false, "write machine-readable JSON")
	out := func(c *cobra.Command) tools.Output {
		return tools.Output{W: c.OutOrStdout(), JSON: jsonOut, Progress: os.Stderr}
	}

	cmd.AddCommand(&cobra.Command{
		Use:   "verify FILE.dat",
		Short: "Check every needle's checksum and report live, deleted and damaged needles",
		Example: `  haybale volume verify data/7.dat
  haybale volume verify --json data/7.dat | jq .corrupt`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, err := tools.Verify(c.Context(), args[0], out(c))
			return err
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:     "reindex FILE.dat",
		Short:   "Rebuild the .idx from the volume alone (replaces it atomically)",
		Example: `  haybale volume reindex data/7.dat`,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, err := tools.Reindex(c.Context(), args[0], out(c))
			return err
		},
	})
	var storeAddr string
	var vid uint32
	var tls operatorTLSFlags
	compact := &cobra.Command{
		Use:   "compact FILE.dat | --store ADDR --vid N",
		Short: "Rewrite a volume keeping only live needles (offline, or online through a store)",
		Long: `Writes a new generation of the volume holding only live needles (the newest
of each key and size, nothing deleted), with its idx, and swaps it in
atomically: a crash at any moment leaves the old or the new volume complete.

With FILE.dat it works on the files of a stopped store. With --store and
--vid the running store compacts the volume while it keeps serving reads and
taking writes, and reports the bytes reclaimed.`,
		Example: `  haybale volume compact data/7.dat
  haybale volume compact --certs-dir ca/operator-alice --store store1:8081 --vid 7`,
		RunE: func(c *cobra.Command, args []string) error {
			if storeAddr != "" || vid != 0 {
				if len(args) != 0 || storeAddr == "" || vid == 0 {
					return fmt.Errorf("online compaction takes --store and --vid and no file")
				}
				creds, err := tls.credentials()
				if err != nil {
					return err
				}
				_, err = tools.CompactOnline(c.Context(), creds, storeAddr, vid, out(c))
				return err
			}
			if len(args) != 1 {
				return fmt.Errorf("give one FILE.dat, or --store and --vid")
			}
			_, err := tools.CompactFile(c.Context(), args[0], out(c))
			return err
		},
	}
	compact.Flags().StringVar(&storeAddr, "store", "", "gRPC address of a running store, for online compaction")
	compact.Flags().Uint32Var(&vid, "vid", 0, "volume to compact on --store")
	tls.register(compact.Flags())
	cmd.AddCommand(compact)
	cmd.AddCommand(&cobra.Command{
		Use:   "dump FILE.dat",
		Short: "List every needle, one line each (JSON lines with --json)",
		Example: `  haybale volume dump data/7.dat
  haybale volume dump --json data/7.dat | jq 'select(.live)'`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return tools.Dump(c.Context(), args[0], out(c))
		},
	})
	var to string
	export := &cobra.Command{
		Use:   "export FILE.dat --to DIR|-",
		Short: "Write every live image to a folder, or as a tar stream to stdout",
		Long: `Writes every live image as a file named <photo ID>.<size>.<ext>, into DIR,
or as a tar stream on standard output with --to -.`,
		Example: `  haybale volume export data/7.dat --to /tmp/vol7
  haybale volume export data/7.dat --to - > vol7.tar`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if to == "-" {
				o := out(c)
				o.W = os.Stderr
				_, err := tools.ExportTar(c.Context(), args[0], c.OutOrStdout(), o)
				return err
			}
			_, err := tools.Export(c.Context(), args[0], to, out(c))
			return err
		},
	}
	export.Flags().StringVar(&to, "to", "", "destination folder, or - for a tar stream on stdout")
	export.MarkFlagRequired("to")
	cmd.AddCommand(export)
	return cmd
}
