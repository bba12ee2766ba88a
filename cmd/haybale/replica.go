package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/tools"
)

func newReplicaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Check and repair volume replicas",
	}
	var (
		vid      uint32
		from, to string
		jsonOut  bool
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
		Example: `  haybale replica sync --vid 7 --from store1:8081 --to store2:8081`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if vid == 0 || from == "" || to == "" {
				return fmt.Errorf("--vid, --from and --to are required")
			}
			_, err := tools.ReplicaSync(c.Context(), vid, from, to, tools.Output{W: c.OutOrStdout(), JSON: jsonOut, Progress: os.Stderr})
			return err
		},
	}
	sync.Flags().Uint32Var(&vid, "vid", 0, "volume to copy")
	sync.Flags().StringVar(&from, "from", "", "gRPC address of the store holding a healthy copy")
	sync.Flags().StringVar(&to, "to", "", "gRPC address of the store to repair")
	sync.Flags().BoolVar(&jsonOut, "json", false, "write machine-readable JSON")
	cmd.AddCommand(sync)
	cmd.AddCommand(newReplicaCheckCmd())
	return cmd
}

func newReplicaCheckCmd() *cobra.Command {
	var (
		vid        uint32
		all        bool
		repair     bool
		jsonOut    bool
		directory  string
		secretFile string
	)
	check := &cobra.Command{
		Use:   "check --directory ADDR (--vid N | --all) [--repair]",
		Short: "Compare the replicas of volumes needle by needle, and repair what is missing",
		Long: `Asks the directory where each volume lives, lists every needle and tombstone
of every replica (the stores' ListNeedles, which reads and verifies each
needle) and reports: needles missing on some replica, the same (key, size)
holding different images or checksums, damaged needles, and deletes not
applied on every replica. Replicas of one write are byte-identical, so
healthy replicas report no difference.

With --repair it copies what is missing through the stores' normal Write and
Delete: missing needles are read from a replica that has them and written
with their cookie and append time; missing tombstones are written as
deletes. A needle is never overwritten: different images and damaged
needles are only reported (sync the volume from a healthy replica). The
volumes are then checked again.

With a cluster secret, give its file (--secret-file) so that repair writes
carry a write token; without it, deletes get their token from the directory
and writes are sent without one.

Exit status: 0 when the replicas agree (after the repair, with --repair),
1 on errors, 2 when differences remain.`,
		Example: `  haybale replica check --directory dir1:7070 --vid 7
  haybale replica check --directory dir1:7070 --all --repair --secret-file /etc/haybale/secret
  haybale replica check --directory dir1:7070 --all --json | jq '.volumes[].differences'`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if directory == "" {
				return fmt.Errorf("--directory is required")
			}
			if (vid == 0) == !all {
				return fmt.Errorf("give exactly one of --vid N and --all")
			}
			opts := tools.ReplicaCheckOptions{Repair: repair}
			if vid != 0 {
				opts.Vids = []uint32{vid}
			}
			if repair {
				tok, closeFn, err := repairTokens(directory, secretFile)
				if err != nil {
					return err
				}
				defer closeFn()
				opts.Token = tok
			}
			_, err := tools.ReplicaCheck(c.Context(), directory, opts, tools.Output{W: c.OutOrStdout(), JSON: jsonOut, Progress: os.Stderr})
			return err
		},
	}
	check.Flags().Uint32Var(&vid, "vid", 0, "volume to check")
	check.Flags().BoolVar(&all, "all", false, "check every volume the directory knows")
	check.Flags().BoolVar(&repair, "repair", false, "copy missing needles and tombstones to the replicas that lack them")
	check.Flags().StringVar(&directory, "directory", "", "gRPC address HOST:PORT of the directory (required)")
	check.Flags().StringVar(&secretFile, "secret-file", "", "file holding the cluster secret, to sign the write tokens of repairs")
	check.Flags().BoolVar(&jsonOut, "json", false, "write machine-readable JSON")
	return check
}

// repairTokenLife is how long a token signed for one repair stays valid.
const repairTokenLife = 5 * time.Minute

// repairTokens returns the token source of a repair: tokens signed with
// the cluster secret when secretFile is given; otherwise the directory's
// AuthorizeDelete for deletes, and no token for writes.
func repairTokens(directory, secretFile string) (func(context.Context, uint32, uint64, uint64, bool) (string, error), func(), error) {
	if secretFile != "" {
		secret, err := token.LoadSecret(secretFile)
		if err != nil {
			return nil, nil, err
		}
		signer, err := token.NewSigner(secret)
		if err != nil {
			return nil, nil, err
		}
		return func(_ context.Context, vid uint32, key, _ uint64, _ bool) (string, error) {
			return signer.Sign(token.Claims{Vid: vid, KeyStart: key, KeyCount: 1, Expiry: time.Now().Add(repairTokenLife)})
		}, func() {}, nil
	}
	conn, err := grpc.NewClient(directory, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("directory %s: %w", directory, err)
	}
	dir := directorypb.NewDirectoryClient(conn)
	return func(ctx context.Context, vid uint32, key, cookie uint64, tombstone bool) (string, error) {
		if !tombstone {
			return "", nil
		}
		id := needle.PhotoID{Vid: vid, Key: key, Cookie: cookie}
		resp, err := dir.AuthorizeDelete(ctx, &directorypb.AuthorizeDeleteRequest{PhotoId: id.String()})
		if err != nil {
			return "", fmt.Errorf("authorize the delete of %s: %w", id, err)
		}
		return resp.GetWriteToken(), nil
	}, func() { conn.Close() }, nil
}
