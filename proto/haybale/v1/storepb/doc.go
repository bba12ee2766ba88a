// Package storepb holds the Go code generated from haybale/v1/store.proto:
// the messages of the Store service and its gRPC client and server stubs.
//
// Everything but this file and the tests is generated; run `make proto` at the
// repository root to regenerate.
package storepb
