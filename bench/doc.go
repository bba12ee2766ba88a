// Package bench holds haybale's load generators and benchmark reports, as
// configuration structs and run functions that print their figures; the
// `haybale bench` commands bind flags to them.
//
// RunStoreGet loads photos into a store over gRPC and measures GET
// throughput and latency over HTTP, uniform and Zipf-skewed, at several
// connection counts. It can export the same images as static files and
// write sampled request paths, so that a static file server (nginx) can be
// measured with the same bytes, paths and request mix; bench/RESULTS.md
// records the figures and the exact commands.
//
// The run functions are safe to call concurrently with each other; each
// run's workers share nothing but atomic counters.
package bench
