package main

import (
	"os"

	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "haybale",
		Short:         "haybale is a Haystack-style photo blob store",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Flags not given on the command line come from the environment
		// and the config file (config.go).
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyConfig(cmd, os.LookupEnv)
		},
	}
	root.PersistentFlags().String("config", "", "YAML file of flag values, one section per subcommand (default $"+configEnvVar+")")
	// One constructor per subcommand, each in its own file.
	root.AddCommand(
		newVersionCmd(),
		newVolumeCmd(),
		newECCmd(),
		newReplicaCmd(),
		newStoreCmd(),
		newDirectoryCmd(),
		newBenchCmd(),
		newGatewayCmd(),
		newCacheCmd(),
		newServerCmd(),
		newCertCmd(),
	)
	addConfigHelp(root)
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
