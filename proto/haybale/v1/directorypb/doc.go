// Package directorypb holds the Go code generated from
// haybale/v1/directory.proto: the messages of the Directory service and its
// gRPC client and server stubs.
//
// Everything but this file and the tests is generated; run `make proto` at the
// repository root to regenerate.
package directorypb
