package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/tools"
)

func newECCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ec",
		Short: "Erasure-code sealed volumes (Reed-Solomon 10+4): encode, verify, rebuild, decode",
		Long: `Operator commands on erasure-coded (EC) volumes. A sealed volume encodes into
14 shard files <vid>.ec00..<vid>.ec13 (10 data, 4 parity), a sorted index
<vid>.ecx and a deletion journal <vid>.ecj; any 4 shards can be lost. These
commands work on the files of a stopped store.

Exit status: 0 when all is well, 1 on errors, 2 when damaged data was found
(verify), or could not be repaired (rebuild, decode).`,
	}
	var jsonOut bool
	var vid uint32
	cmd.PersistentFlags().BoolVar(&jsonOut, "json", false, "write machine-readable JSON")
	out := func(c *cobra.Command) tools.Output {
		return tools.Output{W: c.OutOrStdout(), JSON: jsonOut, Progress: os.Stderr}
	}

	var encOut string
	var large, small int64
	encode := &cobra.Command{
		Use:   "encode FILE.dat --out DIR",
		Short: "Encode a volume file into 14 shards, an index and an empty journal",
		Long: `Encodes the volume file (named <vid>.dat) into DIR. Data is laid out in rows of
10 blocks of --large-block bytes while a full row remains, then of
--small-block bytes; each row gets 4 parity blocks. The .dat is not changed;
a crash leaves DIR without an .ecx (no EC volume) or with a complete one.`,
		Example: `  haybale ec encode data/7.dat --out warm/
  haybale ec encode --json data/7.dat --out warm/ | jq .straddling`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, err := tools.ECEncode(c.Context(), args[0], encOut, tools.ECEncodeOptions{LargeBlock: large, SmallBlock: small}, out(c))
			return err
		},
	}
	encode.Flags().StringVar(&encOut, "out", "", "folder to write the EC files into")
	encode.Flags().Int64Var(&large, "large-block", 1<<30, "large block size in bytes")
	encode.Flags().Int64Var(&small, "small-block", 1<<20, "small block size in bytes")
	encode.MarkFlagRequired("out")
	cmd.AddCommand(encode)

	verify := &cobra.Command{
		Use:   "verify DIR",
		Short: "Check shards, row parity and every needle of the EC volumes in DIR",
		Example: `  haybale ec verify warm/
  haybale ec verify --vid 7 --json warm/ | jq '.[0].missing'`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, err := tools.ECVerify(c.Context(), args[0], vid, out(c))
			return err
		},
	}
	rebuild := &cobra.Command{
		Use:     "rebuild DIR",
		Short:   "Regenerate the missing and damaged shards of the EC volumes in DIR",
		Example: `  haybale ec rebuild warm/`,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, err := tools.ECRebuild(c.Context(), args[0], vid, out(c))
			return err
		},
	}
	var decOut string
	decode := &cobra.Command{
		Use:   "decode DIR --out FILE.dat",
		Short: "Turn an EC volume back into a plain volume file, applying its journaled deletes",
		Example: `  haybale ec decode warm/ --out data/7.dat
  haybale ec decode --vid 7 warm/ --out /tmp/7.dat`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if decOut == "" {
				return fmt.Errorf("decode needs --out FILE.dat")
			}
			_, err := tools.ECDecode(c.Context(), args[0], vid, decOut, out(c))
			return err
		},
	}
	decode.Flags().StringVar(&decOut, "out", "", "volume file to write (name it <vid>.dat to get its .idx beside it)")
	for _, sub := range []*cobra.Command{verify, rebuild, decode} {
		sub.Flags().Uint32Var(&vid, "vid", 0, "EC volume to work on (default: every one in DIR; decode needs it when DIR holds several)")
		cmd.AddCommand(sub)
	}
	return cmd
}
