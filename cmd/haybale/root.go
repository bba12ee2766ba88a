package main

import (
	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "haybale",
		Short:         "haybale is a Haystack-style photo blob store",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// One constructor per subcommand, each in its own file.
	root.AddCommand(
		newVersionCmd(),
		newVolumeCmd(),
		newReplicaCmd(),
		newStoreCmd(),
		newDirectoryCmd(),
		newBenchCmd(),
		newGatewayCmd(),
		newCacheCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			cmd.Println("haybale", version())
		},
	}
}
