package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/directory"
)

// newDirectoryMembersCmd is `haybale directory members`: the raft members
// as a node's status page reports them.
func newDirectoryMembersCmd() *cobra.Command {
	var httpAddr string
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the nodes of a directory cluster and which one leads",
		Long: `members asks one directory node (its HTTP address) for the raft
configuration and prints each member's id, raft address, role and client
addresses. Any node answers; a node that cannot reach the others still
lists the configuration it knows.`,
		Example: "  haybale directory members --http host1:7071",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := fetchDirectoryStatus(ctx, httpAddr)
			if err != nil {
				return err
			}
			if st.Raft == nil {
				return fmt.Errorf("directory at %s is a single node (started without --raft-id)", httpAddr)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tRAFT ADDRESS\tROLE\tGRPC\tHTTP")
			for _, m := range st.Raft.Members {
				role := "follower"
				switch {
				case m.Leader:
					role = "leader"
				case !m.Voter:
					role = "non-voter"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", m.ID, m.RaftAddr, role, m.GRPCAddr, m.HTTPAddr)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&httpAddr, "http", "127.0.0.1"+directory.DefaultHTTPAddr, "HTTP address (host:port or URL) of any directory node")
	return cmd
}

// fetchDirectoryStatus reads a directory node's /api/v1/status.
func fetchDirectoryStatus(ctx context.Context, addr string) (directory.Status, error) {
	base := strings.TrimRight(addr, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/status", nil)
	if err != nil {
		return directory.Status{}, fmt.Errorf("directory status: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return directory.Status{}, fmt.Errorf("directory status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return directory.Status{}, fmt.Errorf("directory status at %s: %s: %s", base, resp.Status, strings.TrimSpace(string(body)))
	}
	var st directory.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&st); err != nil {
		return directory.Status{}, fmt.Errorf("directory status at %s: %w", base, err)
	}
	return st, nil
}
