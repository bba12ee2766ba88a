# haybale build targets.

.PHONY: test check fmt-check vet staticcheck build proto e2e

# Tool versions. Tools are run with `go run pkg@version`, so a machine with
# only Go can run every target.
STATICCHECK_VERSION := v0.8.2
STATICCHECK := go run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# test is the project's test command: formatting, vet, staticcheck, then
# every test under the race detector. The race detector makes the largest
# photos too slow to decode, so the corpus tests skip them under -race; they
# run again in full without it.
test: check
	go test -race ./...
	go test -count=1 -run 'TestCorpus' ./resizer ./gateway

check: fmt-check vet staticcheck

fmt-check:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	go vet ./...

staticcheck:
	$(STATICCHECK) ./...

build:
	go build -o haybale ./cmd/haybale

# e2e runs only the end-to-end tests: nginx as a CDN, headless Chromium and
# a cluster of haybale processes (`make test` runs them too). They skip
# what is not installed; .ci/run installs nginx and chromium.
e2e:
	go test -count=1 -v ./e2e/

# Generator versions. buf is pinned here; the plugins are pinned in
# proto/buf.gen.yaml: protoc-gen-go v1.36.12 (keep it equal to the
# google.golang.org/protobuf version in go.mod) and protoc-gen-go-grpc v1.6.2
# (its code needs google.golang.org/grpc v1.64.0 or later).
BUF_VERSION := v1.75.0
BUF         := go run github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

# proto lints proto/haybale/v1/*.proto and regenerates the committed Go code
# beside them (storepb, directorypb). It needs only Go: buf and both plugins
# are built from their pinned versions by `go run`, no protoc involved. The
# first run downloads and builds buf (a minute or two, network needed for the
# module proxy); later runs come from the build cache.
proto:
	cd proto && $(BUF) lint
	cd proto && $(BUF) generate
