// Package e2e holds haybale's end-to-end tests: they build the haybale
// binary once and run it as real processes on 127.0.0.1, with real programs
// around it.
//
//   - TestCDN puts nginx, configured as a caching reverse proxy, in front of
//     `haybale server` and checks cache hits, byte-identical bodies,
//     revalidation (304) and Range requests through it.
//   - TestBrowser drives headless Chromium (github.com/chromedp/chromedp) to
//     upload a photo through the web page and checks that the four sizes
//     load at their sizes; it keeps a screenshot.
//   - TestCluster runs a directory, three stores on three racks, a cache and
//     a gateway as separate processes with replication 3, kills a store with
//     SIGKILL and checks reads, refused uploads and the store's return.
//   - TestECCluster runs a directory, 14 stores on 7 racks, a cache and a
//     gateway, erasure-codes the volumes of some uploads with `haybale ec
//     encode --directory`, kills 4 stores with SIGKILL, reads every image
//     through the cache with its old ETag, rebuilds the lost shards with
//     `haybale ec rebuild`, then kills more stores and reads every image
//     from each survivor.
//
// A test whose external program (nginx, chromium) is not installed, or that
// needs the photo corpus named by HAYBALE_PHOTOS when it is unset, skips
// with a message saying what is missing; .ci/run installs both programs.
// Screenshots go to the folder named by HAYBALE_ARTIFACTS when it is set.
// The package has no code outside its tests.
package e2e
