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
// NewColdPlan and WriteColdPlan turn volume dumps into a cold-read plan:
// every image once, in a random order, as request paths and as fio iologs
// of the same needles, so that bench/serve-compare.sh -c can compare a
// store's cold GETs with fio's reads of exactly the same byte ranges.
// RunGetOnce is the client of that comparison: it GETs every path of a
// list once over C keep-alive connections, one request in flight each,
// and drops each body in the kernel, so that it takes as little as it
// can of the CPU it shares with the server.
//
// The run functions are safe to call concurrently with each other; each
// run's workers share nothing but atomic counters.
package bench
