package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
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
		tls        operatorTLSFlags
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

Repairs need tokens: with the cluster secret's file (--secret-file) the
tool signs its own; without it, deletes get their token from the directory
and missing needles cannot be copied (they are reported as failed repairs).

Exit status: 0 when the replicas agree (after the repair, with --repair),
1 on errors, 2 when differences remain.`,
		Example: `  haybale replica check --certs-dir ca/operator-alice --directory dir1:7070 --vid 7
  haybale replica check --certs-dir ca/operator-alice --directory dir1:7070 --all --repair --secret-file /etc/haybale/secret
  haybale replica check --certs-dir ca/operator-alice --directory dir1:7070 --all --json | jq '.volumes[].differences'`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if directory == "" {
				return fmt.Errorf("--directory is required")
			}
			if (vid == 0) == !all {
				return fmt.Errorf("give exactly one of --vid N and --all")
			}
			creds, err := tls.credentials()
			if err != nil {
				return err
			}
			opts := tools.ReplicaCheckOptions{Repair: repair}
			if vid != 0 {
				opts.Vids = []uint32{vid}
			}
			if repair {
				tok, closeFn, err := repairTokens(creds, directory, secretFile)
				if err != nil {
					return err
				}
				defer closeFn()
				opts.Token = tok
			}
			_, err = tools.ReplicaCheck(c.Context(), creds, directory, opts, tools.Output{W: c.OutOrStdout(), JSON: jsonOut, Progress: os.Stderr})
			return err
		},
	}
	check.Flags().Uint32Var(&vid, "vid", 0, "volume to check")
	check.Flags().BoolVar(&all, "all", false, "check every volume the directory knows")
	check.Flags().BoolVar(&repair, "repair", false, "copy missing needles and tombstones to the replicas that lack them")
	check.Flags().StringVar(&directory, "directory", "", "gRPC address HOST:PORT of the directory (required)")
	check.Flags().StringVar(&secretFile, "secret-file", "", "file holding the cluster secret, to sign the write tokens of repairs")
	check.Flags().BoolVar(&jsonOut, "json", false, "write machine-readable JSON")
	tls.register(check.Flags())
	return check
}

// repairTokenLife is how long a token signed for one repair stays valid.
const repairTokenLife = 5 * time.Minute

// repairTokens returns the token source of a repair: tokens signed with
// the cluster secret when secretFile is given; otherwise the directory's
// AuthorizeDelete for deletes, and an error for writes (only the cluster
// secret can sign a write token for a key that was already assigned).
func repairTokens(creds *rpc.Credentials, directory, secretFile string) (func(context.Context, uint32, uint64, uint64, bool) (string, error), func(), error) {
	if secretFile != "" {
		secret, err := token.LoadSecret(secretFile)
		if err != nil {
			return nil, nil, err
		}
		signer, err := token.NewSigner(secret)
		if err != nil {
			return nil, nil, err
		}
		return func(_ context.Context, vid uint32, key, cookie uint64, tombstone bool) (string, error) {
			kind, ck := token.KindWrite, uint64(0)
			if tombstone {
				kind, ck = token.KindDelete, cookie
			}
			return signer.Sign(token.Claims{Kind: kind, Vid: vid, KeyStart: key, KeyCount: 1, Cookie: ck, Expiry: time.Now().Add(repairTokenLife)})
		}, func() {}, nil
	}
	conn, err := rpc.Dial(creds, directory, []pki.Role{pki.RoleDirectory})
	if err != nil {
		return nil, nil, fmt.Errorf("directory %s: %w", directory, err)
	}
	dir := directorypb.NewDirectoryClient(conn)
	return func(ctx context.Context, vid uint32, key, cookie uint64, tombstone bool) (string, error) {
		if !tombstone {
			return "", fmt.Errorf("copying a missing needle needs a write token: give --secret-file (the cluster secret)")
		}
		id := needle.PhotoID{Vid: vid, Key: key, Cookie: cookie}
		resp, err := dir.AuthorizeDelete(ctx, &directorypb.AuthorizeDeleteRequest{PhotoId: id.String()})
		if err != nil {
			return "", fmt.Errorf("authorize the delete of %s: %w", id, err)
		}
		return resp.GetWriteToken(), nil
	}, func() { conn.Close() }, nil
}
