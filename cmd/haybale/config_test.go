package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// runConfigured executes the command line args with env as the whole
// environment and, when yaml is not empty, a config file holding it passed
// with --config. The target command's RunE is replaced by a no-op, so only
// flag resolution runs; the command is returned for inspecting its flags.
func runConfigured(t *testing.T, env map[string]string, yaml string, args ...string) (*cobra.Command, error) {
	t.Helper()
	root := newRootCmd()
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		return applyConfig(cmd, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	target, _, err := root.Find(args)
	if err != nil {
		t.Fatalf("find %v: %v", args, err)
	}
	target.RunE = func(*cobra.Command, []string) error { return nil }
	target.Run = nil
	if yaml != "" {
		path := filepath.Join(t.TempDir(), "haybale.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", path)
	}
	root.SetArgs(args)
	root.SetOut(new(bytes.Buffer))
	root.SetErr(new(bytes.Buffer))
	return target, root.Execute()
}

func flagValue(t *testing.T, cmd *cobra.Command, name string) string {
	t.Helper()
	f := cmd.Flags().Lookup(name)
	if f == nil {
		t.Fatalf("%s has no flag --%s", cmd.CommandPath(), name)
	}
	return f.Value.String()
}

func TestConfigPrecedence(t *testing.T) {
	const yaml = `
store:
  http: ":9001"
  dir: /from/config
  volume-size-limit: 1GiB
`
	tests := []struct {
		name string
		env  map[string]string
		yaml string
		args []string
		want string // --http of haybale store
	}{
		{"default", nil, "", nil, ":8080"},
		{"config over default", nil, yaml, nil, ":9001"},
		{"env over config", map[string]string{"HAYBALE_HTTP": ":9002"}, yaml, nil, ":9002"},
		{"env without config", map[string]string{"HAYBALE_HTTP": ":9002"}, "", nil, ":9002"},
		{"flag over env and config", map[string]string{"HAYBALE_HTTP": ":9002"}, yaml, []string{"--http", ":9003"}, ":9003"},
		{"empty env value still counts", map[string]string{"HAYBALE_HTTP": ""}, yaml, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := runConfigured(t, tc.env, tc.yaml, append([]string{"store"}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if got := flagValue(t, cmd, "http"); got != tc.want {
				t.Errorf("--http = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestConfigValueKinds(t *testing.T) {
	cmd, err := runConfigured(t, nil, `
directory:
  dir: /srv/dir
  replication: 3
  volume-size-limit: 512MiB
  cache-nodes: [http://cache1:8100, http://cache2:8100]
  heartbeat-interval: 2s
  compact-threshold: 0.30
`, "directory")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"dir":                "/srv/dir",
		"replication":        "3",
		"volume-size-limit":  "512MiB",
		"cache-nodes":        "[http://cache1:8100,http://cache2:8100]",
		"heartbeat-interval": "2s",
		"compact-threshold":  "0.3",
	} {
		if got := flagValue(t, cmd, name); got != want {
			t.Errorf("--%s = %q, want %q", name, got, want)
		}
	}

	// A list from the environment is comma-separated, and replaces the
	// config file's list rather than adding to it.
	cmd, err = runConfigured(t, map[string]string{"HAYBALE_CACHE_NODES": "a:1,b:2"}, "directory:\n  cache-nodes: [x:1]\n", "directory")
	if err != nil {
		t.Fatal(err)
	}
	if got := flagValue(t, cmd, "cache-nodes"); got != "[a:1,b:2]" {
		t.Errorf("--cache-nodes = %q, want [a:1,b:2]", got)
	}

	// Nested commands have sections named by their path; inherited
	// persistent flags count as theirs.
	cmd, err = runConfigured(t, nil, "\"bench upload\":\n  photos: 7\n  url: http://gw:8000\n\"volume verify\":\n  json: true\n", "bench", "upload")
	if err != nil {
		t.Fatal(err)
	}
	if got := flagValue(t, cmd, "photos"); got != "7" {
		t.Errorf("bench upload --photos = %q, want 7", got)
	}
}

func TestConfigFileFromEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("gateway:\n  directory: dir1:7070\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, err := runConfigured(t, map[string]string{"HAYBALE_CONFIG": path}, "", "gateway")
	if err != nil {
		t.Fatal(err)
	}
	if got := flagValue(t, cmd, "directory"); got != "dir1:7070" {
		t.Errorf("--directory = %q, want dir1:7070 from $HAYBALE_CONFIG", got)
	}
}

func TestConfigReservedEnv(t *testing.T) {
	// HAYBALE_PHOTOS names the test corpus, not bench's --photos.
	cmd, err := runConfigured(t, map[string]string{"HAYBALE_PHOTOS": "/work/shared/photos"}, "", "bench", "upload")
	if err != nil {
		t.Fatalf("HAYBALE_PHOTOS was read as a flag: %v", err)
	}
	if got := flagValue(t, cmd, "photos"); got != "50" {
		t.Errorf("--photos = %q, want the default 50", got)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		yaml string
		args []string
		want []string // substrings of the error
	}{
		{
			name: "unknown keys are named",
			yaml: "store:\n  dir: /x\n  bogus: 1\n  volume-size: 2\n",
			args: []string{"store"},
			want: []string{`unknown key(s) in section "store": bogus, volume-size`},
		},
		{
			name: "unknown keys of another section are named too",
			yaml: "gateway:\n  directroy: x:1\n",
			args: []string{"store"},
			want: []string{`section "gateway": directroy`},
		},
		{
			name: "unknown section",
			yaml: "stores:\n  dir: /x\n",
			args: []string{"store"},
			want: []string{`unknown section(s) "stores"`, "store"},
		},
		{
			name: "a group without flags of its own is no section",
			yaml: "bench:\n  url: x\n",
			args: []string{"store"},
			want: []string{`unknown section(s) "bench"`},
		},
		{
			name: "the config file cannot name itself",
			yaml: "store:\n  config: other.yaml\n",
			args: []string{"store"},
			want: []string{`section "store": config`},
		},
		{
			name: "bad value names the file line and flag",
			yaml: "store:\n  dir: /x\n  volume-size-limit: lots\n",
			args: []string{"store"},
			want: []string{"line 3", "store.volume-size-limit", `invalid size "lots"`},
		},
		{
			name: "bad environment value names the variable",
			env:  map[string]string{"HAYBALE_REPLICATION": "three"},
			args: []string{"directory"},
			want: []string{"HAYBALE_REPLICATION", "--replication"},
		},
		{
			name: "not a mapping",
			yaml: "- store\n- gateway\n",
			args: []string{"store"},
			want: []string{"want a mapping of sections"},
		},
		{
			name: "section not a mapping",
			yaml: "store: /srv\n",
			args: []string{"store"},
			want: []string{`section "store": want a mapping`},
		},
		{
			name: "mapping as a value",
			yaml: "store:\n  dir: {a: b}\n",
			args: []string{"store"},
			want: []string{"store.dir", "not a mapping"},
		},
		{
			name: "list for a single-valued flag",
			yaml: "store:\n  dir: [a, b]\n",
			args: []string{"store"},
			want: []string{"--dir takes one value"},
		},
		{
			name: "duplicate key",
			yaml: "store:\n  dir: a\n  dir: b\n",
			args: []string{"store"},
			want: []string{"store.dir given twice"},
		},
		{
			name: "invalid YAML",
			yaml: "store:\n  dir: [\n",
			args: []string{"store"},
			want: []string{"config "},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runConfigured(t, tc.env, tc.yaml, tc.args...)
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigMissingFile(t *testing.T) {
	_, err := runConfigured(t, nil, "", "store", "--config", filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("err = %v, want one naming the missing file", err)
	}
}

func TestConfigEmptyFile(t *testing.T) {
	for _, yaml := range []string{"# nothing yet\n", "store:\n"} {
		cmd, err := runConfigured(t, nil, yaml, "store")
		if err != nil {
			t.Fatalf("%q: %v", yaml, err)
		}
		if got := flagValue(t, cmd, "http"); got != ":8080" {
			t.Errorf("%q: --http = %q, want the default", yaml, got)
		}
	}
}

func TestHelpDocumentsConfig(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"store", "--help"}, []string{`section "store"`, "HAYBALE_VOLUME_SIZE_LIMIT", "HAYBALE_DIR", "HAYBALE_LOG_LEVEL", "--config"}},
		{[]string{"server", "--help"}, []string{`section "server"`, "HAYBALE_PUBLIC_URL", "HAYBALE_CACHE_CAPACITY"}},
		{[]string{"cache", "--help"}, []string{`section "cache"`, "HAYBALE_CAPACITY"}},
		{[]string{"bench", "upload", "--help"}, []string{`section "bench upload"`, `"bench upload":`, "HAYBALE_URL"}},
		{[]string{"volume", "verify", "--help"}, []string{"HAYBALE_JSON"}},
	} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(tc.args)
		if err := root.Execute(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("haybale %s does not mention %q:\n%s", strings.Join(tc.args, " "), w, out.String())
			}
		}
		for _, w := range tc.want {
			if strings.HasPrefix(w, "HAYBALE_") && strings.Count(out.String(), w+" ")+strings.Count(out.String(), w+"\n") > 1 {
				t.Errorf("haybale %s lists %s more than once:\n%s", strings.Join(tc.args, " "), w, out.String())
			}
		}
		if strings.Contains(out.String(), "HAYBALE_HELP") || strings.Contains(out.String(), "HAYBALE_CONFIG,") {
			t.Errorf("haybale %s lists a flag that cannot be configured:\n%s", strings.Join(tc.args, " "), out.String())
		}
	}
}

func TestEnvVarName(t *testing.T) {
	for flag, want := range map[string]string{
		"dir":               "HAYBALE_DIR",
		"volume-size-limit": "HAYBALE_VOLUME_SIZE_LIMIT",
		"log-format":        "HAYBALE_LOG_FORMAT",
	} {
		if got := envVarName(flag); got != want {
			t.Errorf("envVarName(%q) = %q, want %q", flag, got, want)
		}
	}
}
