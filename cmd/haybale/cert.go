package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/haybale/haybale/internal/pki"
)

func newCertCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Create the cluster CA and issue the certificates of nodes and operators",
		Long: `Every internal call of a cluster (gRPC between stores, the directory,
gateways, caches and operator tools, and the caches' eviction and metrics
listener) uses mutual TLS with certificates from one cluster CA. Each
certificate names a role (store, directory, gateway, cache or operator) and a
name, as the URI haybale://<role>/<name>; servers allow each call only to the
roles that need it, and a store may speak only for the store ID its
certificate names.

  haybale cert init  --ca-dir ca                     # once: ca/ca.crt, ca/ca.key
  haybale cert issue --ca-dir ca --role store --name store1 --host store1.example,10.0.0.11
                                                     # writes ca/store-store1/{ca.crt,node.crt,node.key}

Copy each issued folder to its machine and pass it as --certs-dir. Keep
ca.key on the operator's machine only: whoever holds it can mint any role.
Keys are written with mode 0600 and are never printed.`,
	}
	cmd.AddCommand(newCertInitCmd(), newCertIssueCmd())
	return cmd
}

func newCertInitCmd() *cobra.Command {
	var caDir string
	var lifetime time.Duration
	cmd := &cobra.Command{
		Use:     "init",
		Short:   "Create the cluster CA (ca.crt and ca.key) in --ca-dir",
		Example: "  haybale cert init --ca-dir /secure/haybale-ca",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if caDir == "" {
				return fmt.Errorf("--ca-dir is required")
			}
			ca, err := pki.NewCA("haybale cluster CA", lifetime)
			if err != nil {
				return err
			}
			if err := ca.Save(caDir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created the cluster CA in %s (%s; %s, mode 0600: keep it secret), valid until %s\n",
				caDir, pki.CACertFile, pki.CAKeyFile, ca.Cert.NotAfter.Format(time.DateOnly))
			return nil
		},
	}
	cmd.Flags().StringVar(&caDir, "ca-dir", "", "folder to create the CA in (created 0700 if missing; existing files are never overwritten)")
	cmd.Flags().DurationVar(&lifetime, "lifetime", pki.DefaultCALifetime, "validity of the CA certificate")
	return cmd
}

func newCertIssueCmd() *cobra.Command {
	var caDir, role, name, out string
	var hosts []string
	var lifetime time.Duration
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a certificate for a node or an operator, signed by the cluster CA",
		Long: `issue writes a node folder holding ca.crt, node.crt and node.key (mode
0600), to pass as --certs-dir to the process it is for.

--role is what the holder may do: store, directory, gateway, cache or
operator (operator tools, benchmarks, metrics scraping). --name names it; for
a store it is its store ID (a store refuses to start over a data folder that
belongs to another ID). --host lists the DNS names and IP addresses under
which the node is dialed (its --grpc and internal addresses as the other
roles reach them); callers check them.`,
		Example: `  haybale cert issue --ca-dir ca --role directory --name dir1 --host dir1.example
  haybale cert issue --ca-dir ca --role store --name store1 --host store1.example,10.0.0.11
  haybale cert issue --ca-dir ca --role operator --name alice`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := pki.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			id := pki.Identity{Role: r, Name: name}
			if err := id.Validate(); err != nil {
				return fmt.Errorf("--name: %w", err)
			}
			if caDir == "" {
				return fmt.Errorf("--ca-dir is required")
			}
			if r != pki.RoleOperator && len(hosts) == 0 {
				return fmt.Errorf("--host is required for a %s: the names or addresses the other roles dial it under", r)
			}
			ca, err := pki.LoadCA(caDir)
			if err != nil {
				return err
			}
			is, err := ca.Issue(pki.IssueOptions{Identity: id, Hosts: hosts, Lifetime: lifetime})
			if err != nil {
				return err
			}
			if out == "" {
				out = filepath.Join(caDir, string(r)+"-"+name)
			}
			if err := ca.SaveNode(out, is); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s (hosts %s), valid until %s, in %s: pass it as --certs-dir\n",
				id.URI(), strings.Join(hosts, ","), is.Cert.NotAfter.Format(time.DateOnly), out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&caDir, "ca-dir", "", "folder of the cluster CA (from `haybale cert init`)")
	f.StringVar(&role, "role", "", "role of the holder: store, directory, gateway, cache or operator")
	f.StringVar(&name, "name", "", "name of the holder (a store's ID for a store): letters, digits, '.', '_', '-'")
	f.StringSliceVar(&hosts, "host", nil, "DNS names and IP addresses the node is dialed under (comma-separated)")
	f.StringVar(&out, "out", "", "node folder to write (default <ca-dir>/<role>-<name>)")
	f.DurationVar(&lifetime, "lifetime", pki.DefaultCertLifetime, "validity of the certificate (at most the CA's)")
	return cmd
}
