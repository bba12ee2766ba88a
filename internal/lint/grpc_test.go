package lint

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// grpcConstructors are the grpc functions that open a connection or build
// a server. Outside internal/rpc they would skip its TLS, limits and role
// checks.
var grpcConstructors = map[string]bool{"NewClient": true, "NewServer": true, "Dial": true, "DialContext": true}

// grpcCalls returns "file:line name" for each call of a grpc constructor
// in src.
func grpcCalls(fset *token.FileSet, f *ast.File) []string {
	grpcName := ""
	for _, imp := range f.Imports {
		if strings.Trim(imp.Path.Value, `"`) == "google.golang.org/grpc" {
			grpcName = "grpc"
			if imp.Name != nil {
				grpcName = imp.Name.Name
			}
		}
	}
	if grpcName == "" {
		return nil
	}
	var found []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); ok && x.Name == grpcName && grpcConstructors[sel.Sel.Name] {
			found = append(found, fset.Position(call.Pos()).String()+" grpc."+sel.Sel.Name)
		}
		return true
	})
	return found
}

// TestGRPCOnlyThroughRPC fails when code outside internal/rpc (tests and
// generated code aside) dials or serves gRPC directly.
func TestGRPCOnlyThroughRPC(t *testing.T) {
	root := "../.."
	fset := token.NewFileSet()
	var bad []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && rel != "." || rel == filepath.Join("internal", "rpc") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || strings.HasSuffix(path, ".pb.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		bad = append(bad, grpcCalls(fset, f)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf("%s: dial and serve gRPC through internal/rpc (rpc.Dial, rpc.NewServer)", b)
	}
}

func TestGRPCCallsFound(t *testing.T) {
	src := `package p
import g "google.golang.org/grpc"
func f() { g.NewServer(); g.NewClient("x") }`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := grpcCalls(fset, f); len(got) != 2 {
		t.Fatalf("found %v, want the two calls", got)
	}
}
