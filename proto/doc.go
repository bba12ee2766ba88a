// Package proto owns haybale's gRPC API: the .proto definitions under
// haybale/v1 and the Go code generated from them, which is committed.
//
// The API has two services in the proto package haybale.v1:
//
//   - Store (haybale/v1/store.proto, Go package storepb): writes of needle
//     batches, deletes, whole-needle reads for repair and tools, and volume
//     administration (allocate, status, mark read-only). Compaction, volume
//     copy and erasure-coding RPCs are still to come; their names are listed
//     in the service comment.
//   - Directory (haybale/v1/directory.proto, Go package directorypb): key
//     assignment with write tokens, volume lookup, store and volume listings,
//     the stores' heartbeat stream, and photo URL construction. It imports
//     store.proto for VolumeState and VolumeInfo, which heartbeats carry.
//
// The comments in the .proto files are the API documentation. Image reads by
// end users and CDNs are not here: they are plain HTTP (see DESIGN.md).
//
// Running `make proto` at the repository root lints the definitions and
// regenerates the Go code with buf and the protoc-gen-go and
// protoc-gen-go-grpc plugins, all built from pinned versions with `go run`
// (see buf.gen.yaml and the Makefile), so only Go is needed. Never edit the
// *.pb.go files by hand. Changes must stay wire compatible: add fields with
// new numbers, and reserve the numbers and names of removed ones.
package proto
