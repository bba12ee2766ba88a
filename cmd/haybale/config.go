package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Every flag of every subcommand can also come from the environment or from
// a YAML config file. The precedence is:
//
//	flag on the command line > HAYBALE_<FLAG> > config file > default
//
// The environment variable of a flag is HAYBALE_ followed by the flag name
// in upper case with dashes as underscores: --volume-size-limit is
// HAYBALE_VOLUME_SIZE_LIMIT. It applies to whichever subcommand runs, so one
// environment can hold several roles' settings. The names in
// reservedEnvVars are left to the tests and never read as flags.
//
// The config file (--config FILE, or HAYBALE_CONFIG) is a YAML mapping of
// sections, one per subcommand, keyed by the subcommand's name ("store",
// "bench upload"), whose keys are flag names:
//
//	store:
//	  dir: /srv/haybale
//	  volume-size-limit: 32GiB
//	  rack: r1
//	directory:
//	  replication: 3
//	  cache-nodes: [http://cache1:8100, http://cache2:8100]
//
// A list value sets a list flag. The whole file is checked whatever
// subcommand runs: a section that names no subcommand, or a key that names
// no flag of its subcommand, is an error that names them, so a typo never
// silently falls back to a default.

// configEnvVar names the config file when --config is not given.
const configEnvVar = "HAYBALE_CONFIG"

// envPrefix starts every flag's environment variable.
const envPrefix = "HAYBALE_"

// reservedEnvVars are environment variables of the test suite that look like
// flag variables (bench has a --photos flag) but are never read as flags.
var reservedEnvVars = []string{"HAYBALE_PHOTOS", "HAYBALE_ARTIFACTS"}

// unsettable are flags that neither the environment nor a config file may
// set: they choose the configuration itself or only print help.
var unsettable = []string{"config", "help", "version"}

// envVarName returns the environment variable of a flag.
func envVarName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// sectionName returns a command's section in the config file: its path
// below the root command, e.g. "store" or "bench upload".
func sectionName(cmd *cobra.Command) string {
	path := cmd.CommandPath()
	if root := cmd.Root(); root != cmd {
		path = strings.TrimPrefix(path, root.Name()+" ")
	}
	return path
}

// configValue is one value of the config file: a scalar as written, or a
// list of scalars.
type configValue struct {
	scalar string
	list   []string
	isList bool
	line   int
}

// config is a parsed config file: section -> flag name -> value.
type config struct {
	file     string
	sections map[string]map[string]configValue
}

// loadConfig reads and parses a config file. An empty file is an empty
// config.
func loadConfig(path string) (*config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.file = path
	return c, nil
}

// parseConfig parses the YAML of a config file.
func parseConfig(data []byte) (*config, error) {
	c := &config{sections: map[string]map[string]configValue{}}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return c, nil
		}
		return nil, err
	}
	if len(doc.Content) == 0 {
		return c, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return c, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of sections named after subcommands (store:, directory:, ...)", root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, body := root.Content[i], root.Content[i+1]
		name := key.Value
		if _, dup := c.sections[name]; dup {
			return nil, fmt.Errorf("line %d: section %q given twice", key.Line, name)
		}
		section := map[string]configValue{}
		c.sections[name] = section
		if body.Kind == yaml.ScalarNode && body.Tag == "!!null" {
			continue // "store:" with nothing under it
		}
		if body.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("line %d: section %q: want a mapping of flag names to values", body.Line, name)
		}
		for j := 0; j+1 < len(body.Content); j += 2 {
			k, v := body.Content[j], body.Content[j+1]
			if _, dup := section[k.Value]; dup {
				return nil, fmt.Errorf("line %d: %s.%s given twice", k.Line, name, k.Value)
			}
			val, err := nodeValue(v)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s.%s: %w", v.Line, name, k.Value, err)
			}
			section[k.Value] = val
		}
	}
	return c, nil
}

// nodeValue turns a YAML node into a configValue. Scalars keep their text
// as written, so "80e6", "0.30" and "32GiB" reach the flag unchanged.
func nodeValue(n *yaml.Node) (configValue, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		return configValue{scalar: n.Value, line: n.Line}, nil
	case yaml.SequenceNode:
		v := configValue{isList: true, list: []string{}, line: n.Line}
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return configValue{}, errors.New("want a list of plain values")
			}
			v.list = append(v.list, item.Value)
		}
		return v, nil
	case yaml.AliasNode:
		return nodeValue(n.Alias)
	}
	return configValue{}, errors.New("want a value or a list of values, not a mapping")
}

// lookupFlag finds a flag of cmd, its own or inherited from a parent.
func lookupFlag(cmd *cobra.Command, name string) *pflag.Flag {
	if f := cmd.Flags().Lookup(name); f != nil {
		return f
	}
	return cmd.InheritedFlags().Lookup(name)
}

// configurable reports whether cmd has a section in the config file: a
// runnable command of this program (not cobra's help and completion) with
// at least one settable flag.
func configurable(cmd *cobra.Command) bool {
	if !cmd.Runnable() || cmd.Hidden {
		return false
	}
	if top := strings.Fields(sectionName(cmd)); len(top) == 0 || top[0] == "help" || top[0] == "completion" {
		return false
	}
	settable := false
	visit := func(f *pflag.Flag) { settable = settable || !slices.Contains(unsettable, f.Name) }
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	return settable
}

// configurableCommands lists every command under root that has a section.
func configurableCommands(root *cobra.Command) []*cobra.Command {
	var cmds []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if configurable(sub) {
				cmds = append(cmds, sub)
			}
			walk(sub)
		}
	}
	walk(root)
	return cmds
}

// findCommand returns the command under root whose section name is name.
func findCommand(root *cobra.Command, name string) *cobra.Command {
	for _, c := range configurableCommands(root) {
		if sectionName(c) == name {
			return c
		}
	}
	return nil
}

// runnableSections lists the section names of the commands under root.
func runnableSections(root *cobra.Command) []string {
	var names []string
	for _, c := range configurableCommands(root) {
		names = append(names, sectionName(c))
	}
	slices.Sort(names)
	return names
}

// check verifies every section and key of the file against the commands
// under root, naming whatever matches nothing.
func (c *config) check(root *cobra.Command) error {
	var unknownSections []string
	var problems []string
	for _, name := range sortedKeys(c.sections) {
		cmd := findCommand(root, name)
		if cmd == nil {
			unknownSections = append(unknownSections, fmt.Sprintf("%q", name))
			continue
		}
		var unknown []string
		for _, key := range sortedKeys(c.sections[name]) {
			if lookupFlag(cmd, key) == nil || slices.Contains(unsettable, key) {
				unknown = append(unknown, key)
			}
		}
		if len(unknown) > 0 {
			problems = append(problems, fmt.Sprintf("unknown key(s) in section %q: %s (see haybale %s --help)",
				name, strings.Join(unknown, ", "), name))
		}
	}
	if len(unknownSections) > 0 {
		problems = append([]string{fmt.Sprintf("unknown section(s) %s; sections are subcommand names: %s",
			strings.Join(unknownSections, ", "), strings.Join(runnableSections(root), ", "))}, problems...)
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// setFlag sets a flag from the environment or the config file. A list value
// replaces the default of a list flag.
func setFlag(fs *pflag.FlagSet, f *pflag.Flag, v configValue) error {
	if v.isList {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if err := sv.Replace(v.list); err != nil {
				return err
			}
			f.Changed = true
			return nil
		}
		if len(v.list) != 1 {
			return fmt.Errorf("--%s takes one value, not a list", f.Name)
		}
		return fs.Set(f.Name, v.list[0])
	}
	return fs.Set(f.Name, v.scalar)
}

// applyConfig fills the flags of cmd that were not given on the command
// line, from the environment (lookupEnv) and then from the config file
// named by --config or HAYBALE_CONFIG. It runs before every subcommand.
func applyConfig(cmd *cobra.Command, lookupEnv func(string) (string, bool)) error {
	var cfg *config
	path, _ := cmd.Flags().GetString("config")
	if !cmd.Flags().Changed("config") {
		if env, ok := lookupEnv(configEnvVar); ok && env != "" {
			path = env
		}
	}
	if path != "" {
		var err error
		if cfg, err = loadConfig(path); err != nil {
			return err
		}
		if err := cfg.check(cmd.Root()); err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
	}
	section := sectionName(cmd)
	fs := cmd.Flags()
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || slices.Contains(unsettable, f.Name) {
			return
		}
		name := envVarName(f.Name)
		if v, ok := lookupEnv(name); ok && !slices.Contains(reservedEnvVars, name) {
			if err := setFlag(fs, f, configValue{scalar: v}); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q (--%s): %w", name, v, f.Name, err))
			}
			return
		}
		if cfg == nil {
			return
		}
		if v, ok := cfg.sections[section][f.Name]; ok {
			if err := setFlag(fs, f, v); err != nil {
				errs = append(errs, fmt.Errorf("config %s line %d: %s.%s (--%s): %w", cfg.file, v.line, section, f.Name, f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// configHelp is the footer added to the long help of every configurable
// subcommand: where else its flags can come from, by name.
func configHelp(cmd *cobra.Command) string {
	var names []string
	add := func(f *pflag.Flag) {
		if n := envVarName(f.Name); !slices.Contains(unsettable, f.Name) && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	cmd.Flags().VisitAll(add)
	cmd.InheritedFlags().VisitAll(add)
	if len(names) == 0 {
		return ""
	}
	slices.Sort(names)
	section := sectionName(cmd)
	var b strings.Builder
	b.WriteString("\n\nConfiguration: each flag can also be set by an environment variable or in\n")
	fmt.Fprintf(&b, "the YAML file named by --config (or $%s), in the section %q\n", configEnvVar, section)
	fmt.Fprintf(&b, "with flag names as keys:\n\n  %s:\n    %s: ...\n\n", quoteSection(section), exampleFlag(cmd))
	b.WriteString("Precedence: command line, then environment, then config file, then default.\n")
	b.WriteString("Environment variables:\n")
	line := " "
	for _, n := range names {
		if len(line)+len(n)+1 > 78 {
			b.WriteString(line + "\n")
			line = " "
		}
		line += " " + n
	}
	b.WriteString(line)
	return b.String()
}

// quoteSection writes a section name as a YAML key.
func quoteSection(s string) string {
	if strings.Contains(s, " ") {
		return `"` + s + `"`
	}
	return s
}

// exampleFlag picks a flag of cmd to show in the help's example.
func exampleFlag(cmd *cobra.Command) string {
	for _, name := range []string{"dir", "directory", "url", "http"} {
		if cmd.Flags().Lookup(name) != nil {
			return name
		}
	}
	name := "flag-name"
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if name == "flag-name" && !slices.Contains(unsettable, f.Name) {
			name = f.Name
		}
	})
	return name
}

// addConfigHelp appends configHelp to the long help of every command under
// root that has a section.
func addConfigHelp(root *cobra.Command) {
	for _, c := range configurableCommands(root) {
		long := c.Long
		if long == "" {
			long = c.Short
		}
		c.Long = long + configHelp(c)
	}
}
