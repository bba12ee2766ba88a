package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/directory"
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
	// The online forms (--store, --directory) call the cluster as an
	// operator; the offline forms need no credentials.
	var tls operatorTLSFlags
	cmd.PersistentFlags().BoolVar(&jsonOut, "json", false, "write machine-readable JSON")
	tls.register(cmd.PersistentFlags())
	out := func(c *cobra.Command) tools.Output {
		return tools.Output{W: c.OutOrStdout(), JSON: jsonOut, Progress: os.Stderr}
	}

	var encOut, storeAddr, dirAddr string
	var encVid uint32
	var large, small int64
	encode := &cobra.Command{
		Use:   "encode FILE.dat --out DIR | --store ADDR --vid N | --directory ADDR --vid N",
		Short: "Encode a volume into 14 shards, an index and an empty journal (offline, or on a running store)",
		Long: `Encodes the volume file (named <vid>.dat) into DIR. Data is laid out in rows of
10 blocks of --large-block bytes while a full row remains, then of
--small-block bytes; each row gets 4 parity blocks. The .dat is not changed;
a crash leaves DIR without an .ecx (no EC volume) or with a complete one.

With --store and --vid the running store encodes its sealed volume in place,
serves it as an EC volume from then on (same image paths and ETags) and
removes the .dat.

With --directory and --vid the directory's leader erasure-codes the cluster's
read-only or sealed volume (mark a writable one read-only first): it
compacts the replicas not sealed yet, has one of them encode the volume,
spreads the 14 shards over the live stores on distinct racks as far as
labels allow, verifies every shard, records the volume as EC and replaces
the plain replicas, printing each step. It is the job the directory's
--ec-after policy runs by itself; one runs at a time. The report says how
many store and rack losses the placement survives. While the shards
move, the directory refuses deletes of the volume's photos (retry them).`,
		Example: `  haybale ec encode data/7.dat --out warm/
  haybale ec encode --json data/7.dat --out warm/ | jq .straddling
  haybale ec encode --certs-dir ca/operator-alice --store store1:8081 --vid 7
  haybale ec encode --certs-dir ca/operator-alice --directory dir1:7070 --vid 7`,
		RunE: func(c *cobra.Command, args []string) error {
			opts := tools.ECEncodeOptions{LargeBlock: large, SmallBlock: small}
			if dirAddr != "" {
				if len(args) != 0 || encOut != "" || storeAddr != "" || encVid == 0 {
					return fmt.Errorf("cluster encoding takes --directory and --vid, and no file, --out or --store")
				}
				creds, err := tls.credentials()
				if err != nil {
					return err
				}
				_, err = tools.ECEncodeCluster(c.Context(), creds, dirAddr, encVid, opts, out(c))
				return err
			}
			if storeAddr != "" || encVid != 0 {
				if len(args) != 0 || encOut != "" || storeAddr == "" || encVid == 0 {
					return fmt.Errorf("online encoding takes --store and --vid, and no file or --out")
				}
				creds, err := tls.credentials()
				if err != nil {
					return err
				}
				_, err = tools.ECEncodeOnline(c.Context(), creds, storeAddr, encVid, opts, out(c))
				return err
			}
			if len(args) != 1 || encOut == "" {
				return fmt.Errorf("give one FILE.dat and --out DIR, or --store and --vid")
			}
			_, err := tools.ECEncode(c.Context(), args[0], encOut, opts, out(c))
			return err
		},
	}
	encode.Flags().StringVar(&encOut, "out", "", "folder to write the EC files into")
	encode.Flags().StringVar(&storeAddr, "store", "", "gRPC address of a running store, for online encoding")
	encode.Flags().StringVar(&dirAddr, "directory", "", "gRPC address of the directory, whose leader encodes the cluster's volume and places its shards")
	encode.Flags().Uint32Var(&encVid, "vid", 0, "volume to encode (with --store: sealed; with --directory: read-only or sealed)")
	encode.Flags().Int64Var(&large, "large-block", 1<<30, "large block size in bytes")
	encode.Flags().Int64Var(&small, "small-block", 1<<20, "small block size in bytes")
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
	var rebuildDir string
	rebuild := &cobra.Command{
		Use:   "rebuild DIR | --directory ADDR --vid N",
		Short: "Regenerate the missing and damaged shards of the EC volumes in DIR, or of a cluster's EC volume",
		Long: `Offline, regenerates the missing and damaged shards of the EC volumes in DIR
from the others; an index (.ecx) that is missing or damaged is first rebuilt
from the shards (byte-identical to the one the encode wrote), and a journal
whose header is damaged is rewritten with its intact deletes. With
--directory and --vid, every live holder of the cluster's EC volume first
syncs its index and deletion journal with the others (a lost index comes
back from another holder or from the shards; every journal becomes the
union of all, so no holder serves a photo another deleted), then the shards
that no live store holds are regenerated on live stores (ones without the
volume first), each rebuilding from 10 shards read from its peers.`,
		Example: `  haybale ec rebuild warm/
  haybale ec rebuild --certs-dir ca/operator-alice --directory dir1:7070 --vid 7`,
		RunE: func(c *cobra.Command, args []string) error {
			if rebuildDir != "" {
				if len(args) != 0 || vid == 0 {
					return fmt.Errorf("cluster rebuild takes --directory and --vid, and no folder")
				}
				creds, err := tls.credentials()
				if err != nil {
					return err
				}
				_, err = tools.ECRebuildCluster(c.Context(), creds, rebuildDir, vid, out(c))
				return err
			}
			if len(args) != 1 {
				return fmt.Errorf("give one DIR, or --directory and --vid")
			}
			_, err := tools.ECRebuild(c.Context(), args[0], vid, out(c))
			return err
		},
	}
	rebuild.Flags().StringVar(&rebuildDir, "directory", "", "gRPC address of the directory, to rebuild a cluster's EC volume")
	var decOut, decStore, decDir string
	var decReplicas int
	decode := &cobra.Command{
		Use:   "decode DIR --out FILE.dat | --store ADDR --vid N | --directory ADDR --vid N",
		Short: "Turn an EC volume back into a plain volume, applying its journaled deletes (offline, or on a running store)",
		Long: `Rebuilds the volume file from the shards (rebuilding what lost or damaged
shards cannot give), applies the deletion journal and compacts the deletes
away. Offline it writes FILE.dat and leaves the EC files as they are; with
--store and --vid the running store decodes its EC volume in place, serves
the plain volume from then on and removes the EC files. With --directory
and --vid the cluster's EC volume becomes a replicated one again: the
holder with the most shards decodes it, --replicas - 1 other stores (on
other racks as far as labels allow) copy and seal it, and every other
holder removes its EC files; the directory then records the volume sealed
on those replicas. Holders that are down keep their files: run it again
once they are back.`,
		Example: `  haybale ec decode warm/ --out data/7.dat
  haybale ec decode --vid 7 warm/ --out /tmp/7.dat
  haybale ec decode --certs-dir ca/operator-alice --store store1:8081 --vid 7
  haybale ec decode --certs-dir ca/operator-alice --directory dir1:7070 --vid 7 --replicas 3`,
		RunE: func(c *cobra.Command, args []string) error {
			if decDir != "" {
				if len(args) != 0 || decOut != "" || decStore != "" || vid == 0 {
					return fmt.Errorf("cluster decoding takes --directory and --vid, and no folder, --out or --store")
				}
				creds, err := tls.credentials()
				if err != nil {
					return err
				}
				_, err = tools.ECDecodeCluster(c.Context(), creds, decDir, vid, decReplicas, out(c))
				return err
			}
			if decStore != "" {
				if len(args) != 0 || decOut != "" || vid == 0 {
					return fmt.Errorf("online decoding takes --store and --vid, and no folder or --out")
				}
				creds, err := tls.credentials()
				if err != nil {
					return err
				}
				_, err = tools.ECDecodeOnline(c.Context(), creds, decStore, vid, out(c))
				return err
			}
			if len(args) != 1 || decOut == "" {
				return fmt.Errorf("give one DIR and --out FILE.dat, --store and --vid, or --directory and --vid")
			}
			_, err := tools.ECDecode(c.Context(), args[0], vid, decOut, out(c))
			return err
		},
	}
	decode.Flags().StringVar(&decOut, "out", "", "volume file to write (name it <vid>.dat to get its .idx beside it)")
	decode.Flags().StringVar(&decStore, "store", "", "gRPC address of a running store, for online decoding")
	decode.Flags().StringVar(&decDir, "directory", "", "gRPC address of the directory, to turn a cluster's EC volume back into a replicated one")
	decode.Flags().IntVar(&decReplicas, "replicas", directory.DefaultReplication, "plain replicas to make (with --directory)")
	var statusDir string
	statusCmd := &cobra.Command{
		Use:   "status --directory ADDR",
		Short: "Show each EC volume of a cluster: its shards, their holders, their journals, and what is missing",
		Long: `Shows, for each EC volume of the cluster, which live store holds which
shards, the holders that are down or failed (an index lost, for example),
the shards no live holder serves, and each holder's deletion journal: its
number of deletes and the digest of their set. When the journals differ, a
holder missed deletes: the stores merge them at their next sync (every
minute), or run haybale ec rebuild --directory ... --vid N.`,
		Example: `  haybale ec status --certs-dir ca/operator-alice --directory dir1:7070`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if statusDir == "" {
				return fmt.Errorf("status needs --directory")
			}
			creds, err := tls.credentials()
			if err != nil {
				return err
			}
			_, err = tools.ECStatus(c.Context(), creds, statusDir, out(c))
			return err
		},
	}
	statusCmd.Flags().StringVar(&statusDir, "directory", "", "gRPC address of the directory")
	cmd.AddCommand(statusCmd)
	for _, sub := range []*cobra.Command{verify, rebuild, decode} {
		sub.Flags().Uint32Var(&vid, "vid", 0, "EC volume to work on (default: every one in DIR; decode needs it when DIR holds several)")
		cmd.AddCommand(sub)
	}
	return cmd
}
