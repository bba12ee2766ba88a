// Package lint holds tests that enforce the project's layering: which
// packages each package may import (DESIGN.md's package table) and
// conventions that keep libraries well behaved.
package lint

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/haybale/haybale"

// allowed lists, for each package, the project packages it may import (by
// path relative to the module) and the third-party import-path prefixes it
// may use. The standard library is allowed everywhere unless the rule says
// otherwise. A package missing from this table fails the test, so a new
// package has to be placed in the layering on purpose.
var allowed = map[string]rule{
	"needle":                       {thirdParty: []string{"github.com/cespare/xxhash/v2"}},
	"internal/vfs":                 {},
	"internal/vfs/errorfs":         {project: []string{"internal/vfs"}},
	"internal/lint":                {},
	"internal/imagehttp":           {project: []string{"needle"}},
	"internal/evloop":              {project: []string{"internal/vfs"}, thirdParty: []string{"golang.org/x/sys/unix"}},
	"internal/serve":               {project: []string{"internal/evloop"}, thirdParty: []string{"google.golang.org/grpc", "github.com/valyala/fasthttp", "golang.org/x/sys/unix"}},
	"internal/token":               {thirdParty: []string{"github.com/golang-jwt/jwt/v5"}},
	"internal/pki":                 {},
	"internal/placement":           {},
	"internal/rpc":                 {project: []string{"internal/pki"}, thirdParty: []string{"google.golang.org/grpc"}},
	"internal/rpc/rpctest":         {project: []string{"internal/pki", "internal/rpc"}},
	"internal/dirconn":             {project: []string{"internal/pki", "internal/rpc"}, thirdParty: []string{"google.golang.org/grpc", "google.golang.org/genproto/googleapis/rpc/errdetails"}},
	"store/volume":                 {project: []string{"needle", "internal/vfs"}, thirdParty: []string{"github.com/klauspost/reedsolomon", "github.com/google/btree", "github.com/cespare/xxhash/v2", "golang.org/x/sys/unix"}, noNetwork: true},
	"resizer":                      {project: []string{"internal/thumbhash"}, thirdParty: []string{"github.com/disintegration/imaging", "golang.org/x/image", "golang.org/x/sync/semaphore", "github.com/gen2brain/heic", "github.com/gen2brain/avif", "github.com/gen2brain/webp"}, noNetwork: true},
	"internal/thumbhash":           {noNetwork: true},
	"proto":                        {},
	"proto/haybale/v1/storepb":     {thirdParty: []string{"google.golang.org/grpc", "google.golang.org/protobuf"}},
	"proto/haybale/v1/directorypb": {project: []string{"proto/haybale/v1/storepb"}, thirdParty: []string{"google.golang.org/grpc", "google.golang.org/protobuf"}},
	"store":                        {project: []string{"store/volume", "needle", "internal/vfs", "internal/token", "internal/imagehttp", "internal/serve", "internal/evloop", "internal/rpc", "internal/pki", "internal/dirconn", "proto/*"}, thirdParty: anyThirdParty},
	"directory":                    {project: []string{"needle", "internal/placement", "internal/token", "internal/serve", "internal/rpc", "internal/pki", "internal/dirconn", "proto/*"}, thirdParty: anyThirdParty},
	"client":                       {project: []string{"needle", "internal/token", "internal/rpc", "internal/pki", "internal/dirconn", "proto/*"}, thirdParty: anyThirdParty},
	"cache":                        {project: []string{"needle", "client", "internal/imagehttp", "internal/serve", "internal/evloop", "internal/pki", "proto/*"}, thirdParty: anyThirdParty},
	"gateway":                      {project: []string{"resizer", "client", "needle", "internal/serve", "proto/*"}, thirdParty: anyThirdParty},
	"tools":                        {project: []string{"store/volume", "internal/placement", "client", "needle", "internal/vfs", "internal/rpc", "internal/pki", "proto/*"}, thirdParty: anyThirdParty},
	"bench":                        {project: []string{"client", "needle", "internal/rpc", "internal/pki", "proto/*"}, thirdParty: anyThirdParty},
	"internal/imagetest":           {thirdParty: []string{"github.com/disintegration/imaging"}},
	"internal/testcluster":         {project: []string{"*"}, thirdParty: anyThirdParty},
	"cmd/haybale":                  {project: []string{"*"}, thirdParty: anyThirdParty},
	"e2e":                          {project: []string{"*"}, thirdParty: anyThirdParty},
}

var anyThirdParty = []string{""}

// networkPackages may not be imported by engines and codecs.
var networkPackages = []string{"net", "net/http", "net/rpc", "google.golang.org/grpc", "github.com/prometheus/"}

type rule struct {
	project    []string // module-relative paths; "x/*" allows everything under x; "*" allows all
	thirdParty []string // import-path prefixes
	noNetwork  bool
}

type pkg struct {
	ImportPath string
	Imports    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-json", module+"/...")
	cmd.Dir = "../.."
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("go list: %v\n%s", err, errb.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(&out)
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages")
	}
	return pkgs
}

func isStd(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

func matchProject(patterns []string, rel string) bool {
	for _, p := range patterns {
		switch {
		case p == "*":
			return true
		case strings.HasSuffix(p, "/*"):
			if strings.HasPrefix(rel, strings.TrimSuffix(p, "*")) {
				return true
			}
		case p == rel:
			return true
		}
	}
	return false
}

func checkImport(r rule, imp string) error {
	if r.noNetwork {
		for _, n := range networkPackages {
			if imp == n || (strings.HasSuffix(n, "/") && strings.HasPrefix(imp, n)) || strings.HasPrefix(imp, n+"/") {
				return fmt.Errorf("network package %s in a package that must have no network code", imp)
			}
		}
	}
	if rel, ok := strings.CutPrefix(imp, module+"/"); ok {
		if rel == "cmd" || strings.HasPrefix(rel, "cmd/") {
			return fmt.Errorf("imports %s: nothing imports cmd", imp)
		}
		if !matchProject(r.project, rel) {
			return fmt.Errorf("imports project package %s, which the package table does not allow", rel)
		}
		return nil
	}
	if isStd(imp) {
		return nil
	}
	for _, p := range r.thirdParty {
		if strings.HasPrefix(imp, p) {
			return nil
		}
	}
	return fmt.Errorf("imports third-party package %s, which the package table does not allow", imp)
}

func TestImportLayering(t *testing.T) {
	var problems []string
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		r, ok := allowed[rel]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: not in the package table (internal/lint/lint_test.go)", rel))
			continue
		}
		for _, imp := range p.Imports {
			if err := checkImport(r, imp); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", rel, err))
			}
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
}

// TestRulesCatchViolations proves the checker rejects what it must, so the
// layering test cannot pass vacuously.
func TestRulesCatchViolations(t *testing.T) {
	bad := []struct {
		pkg, imp string
	}{
		{"needle", "github.com/prometheus/client_golang/prometheus"},
		{"needle", module + "/internal/vfs"},
		{"store/volume", "net/http"},
		{"store/volume", "google.golang.org/grpc"},
		{"store/volume", module + "/store"},
		{"resizer", "net"},
		{"store", module + "/cmd/haybale"},
		{"internal/vfs", "golang.org/x/sys/unix"},
		{"cache", module + "/store/volume"},
		{"internal/token", module + "/needle"},
		{"internal/token", "google.golang.org/grpc"},
		{"cache", module + "/internal/token"},
	}
	for _, b := range bad {
		if err := checkImport(allowed[b.pkg], b.imp); err == nil {
			t.Errorf("%s importing %s was allowed", b.pkg, b.imp)
		}
	}
	good := []struct{ pkg, imp string }{
		{"needle", "github.com/cespare/xxhash/v2"},
		{"needle", "encoding/binary"},
		{"store/volume", module + "/needle"},
		{"cmd/haybale", module + "/store"},
		{"internal/token", "github.com/golang-jwt/jwt/v5"},
		{"directory", module + "/internal/token"},
		{"store", module + "/internal/token"},
	}
	for _, g := range good {
		if err := checkImport(allowed[g.pkg], g.imp); err != nil {
			t.Errorf("%s importing %s: %v", g.pkg, g.imp, err)
		}
	}
}
