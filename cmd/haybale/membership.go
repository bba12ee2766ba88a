package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

// membershipTimeout bounds one membership command, failover included.
const membershipTimeout = 20 * time.Second

// operatorDirFlags are the flags with which an operator command reaches
// the directory: its nodes' gRPC addresses and the operator certificate.
type operatorDirFlags struct {
	directory string
	tls       operatorTLSFlags
}

func (f *operatorDirFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.directory, "directory", "127.0.0.1:7070", "gRPC address HOST:PORT of a directory node, or of every node, comma-separated (the leader is found and followed)")
	f.tls.register(fs)
}

// call runs fn with a client of the directory's leader.
func (f *operatorDirFlags) call(ctx context.Context, fn func(context.Context, directorypb.DirectoryClient) error) error {
	addrs, err := dirconn.SplitAddrs(f.directory)
	if err != nil {
		return fmt.Errorf("--directory: %w", err)
	}
	creds, err := f.tls.credentials()
	if err != nil {
		return err
	}
	conn, err := dirconn.New(dirconn.Options{Addrs: addrs, Credentials: creds, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, membershipTimeout)
	defer cancel()
	return fn(ctx, directorypb.NewDirectoryClient(conn))
}

// printMembers writes a members table.
func printMembers(out io.Writer, ms []*directorypb.Member) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tRAFT ADDRESS\tROLE\tGRPC\tHTTP")
	for _, m := range ms {
		role := "follower"
		switch {
		case m.GetLeader():
			role = "leader"
		case !m.GetVoter():
			role = "non-voter"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", m.GetId(), m.GetRaftAddr(), role, m.GetGrpcAddr(), m.GetHttpAddr())
	}
	return w.Flush()
}

// newDirectoryAddCmd is `haybale directory add`.
func newDirectoryAddCmd() *cobra.Command {
	var f operatorDirFlags
	var id, raftAddr string
	cmd := &cobra.Command{
		Use:   "add --id ID --raft-addr HOST:PORT",
		Short: "Add a node to a directory cluster (operator role)",
		Long: `add asks the directory's leader to add a node to the raft cluster as a
voter. Start the new node first with its --raft-id and --raft-addr and no
--bootstrap: once added it catches up from a snapshot and the log, and then
answers reads and can be elected. Adding a member already present at the
same address changes nothing. Prints the members after the change.`,
		Example: "  haybale directory add --certs-dir ca/operator-alice --directory host1:7070,host2:7070 --id d4 --raft-addr host4:7072",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" || raftAddr == "" {
				return fmt.Errorf("--id and --raft-addr are required")
			}
			return f.call(cmd.Context(), func(ctx context.Context, c directorypb.DirectoryClient) error {
				resp, err := c.AddMember(ctx, &directorypb.AddMemberRequest{Id: id, RaftAddr: raftAddr})
				if err != nil {
					return fmt.Errorf("add member %s: %w", id, err)
				}
				return printMembers(cmd.OutOrStdout(), resp.GetMembers())
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "raft id of the node to add (its --raft-id)")
	cmd.Flags().StringVar(&raftAddr, "raft-addr", "", "raft address HOST:PORT of the node to add (its --raft-addr)")
	f.register(cmd.Flags())
	return cmd
}

// newDirectoryRemoveCmd is `haybale directory remove`.
func newDirectoryRemoveCmd() *cobra.Command {
	var f operatorDirFlags
	var id string
	cmd := &cobra.Command{
		Use:   "remove --id ID",
		Short: "Remove a node from a directory cluster (operator role)",
		Long: `remove asks the directory's leader to remove a node from the raft cluster;
removing the leader makes it step down once the change is committed. Keep an
odd number of voters: a cluster of three survives one lost node, of five
two. Prints the members after the change.`,
		Example: "  haybale directory remove --certs-dir ca/operator-alice --directory host1:7070,host2:7070 --id d3",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return fmt.Errorf("--id is required")
			}
			return f.call(cmd.Context(), func(ctx context.Context, c directorypb.DirectoryClient) error {
				resp, err := c.RemoveMember(ctx, &directorypb.RemoveMemberRequest{Id: id})
				if err != nil {
					return fmt.Errorf("remove member %s: %w", id, err)
				}
				return printMembers(cmd.OutOrStdout(), resp.GetMembers())
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "raft id of the node to remove")
	f.register(cmd.Flags())
	return cmd
}

// newStoreRemoveCmd is `haybale store remove`.
func newStoreRemoveCmd() *cobra.Command {
	var f operatorDirFlags
	var id string
	cmd := &cobra.Command{
		Use:   "remove --id STORE_ID",
		Short: "Make the directory forget a store (operator role)",
		Long: `remove asks the directory's leader to forget a store: its record goes and it
leaves the replica lists of its volumes, which then count as
under-replicated. Use it for a store that is gone for good; a store that
heartbeats again registers anew.`,
		Example: "  haybale store remove --certs-dir ca/operator-alice --directory host1:7070,host2:7070 --id store3",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return fmt.Errorf("--id is required")
			}
			return f.call(cmd.Context(), func(ctx context.Context, c directorypb.DirectoryClient) error {
				if _, err := c.RemoveStore(ctx, &directorypb.RemoveStoreRequest{StoreId: id}); err != nil {
					return fmt.Errorf("remove store %s: %w", id, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "store %s removed\n", id)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "id of the store to forget (as `haybale directory` lists it)")
	f.register(cmd.Flags())
	return cmd
}
