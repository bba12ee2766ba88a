package bench

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"testing"
)

func TestProcStatus(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	st, err := procStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st["VmRSS"] <= 0 || st["RssAnon"] <= 0 || st["VmRSS"] < st["RssAnon"] || st["VmRSS"]%1024 != 0 {
		t.Errorf("VmRSS %d, RssAnon %d: want positive byte counts, RSS at least anon", st["VmRSS"], st["RssAnon"])
	}
	if _, err := procStatus(-1); err == nil {
		t.Error("status of a process that cannot exist: no error")
	}
}

func TestScrapeMetrics(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "# HELP go_memstats_heap_alloc_bytes x\n# TYPE go_memstats_heap_alloc_bytes gauge\n"+
			"go_memstats_heap_alloc_bytes 1.2345e+06\nhaybale_store_index_mapped_bytes 4096\n"+
			"haybale_store_volumes{state=\"writable\"} 4\n")
	}))
	defer srv.Close()
	m, err := scrapeMetrics(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if m["go_memstats_heap_alloc_bytes"] != 1234500 || m["haybale_store_index_mapped_bytes"] != 4096 || len(m) != 2 {
		t.Errorf("scraped %v", m)
	}
	if _, err := scrapeMetrics(srv.URL + "/nothing"); err == nil {
		t.Error("a 404 page scraped without error")
	}
}

func TestMemPhotoIDs(t *testing.T) {
	ids := memPhotoIDs(100, 4, 8)
	for i, id := range ids {
		// Runs of 8 consecutive keys share a volume, the volumes in turn.
		if id.Key != uint64(i+1) || id.Vid != 1+uint32(i/8%4) || id.Cookie == 0 {
			t.Fatalf("photo %d: %+v", i, id)
		}
	}
	if every := deleteEvery(0.25); every != 4 || !memDeleted(8, every) || memDeleted(9, every) || memDeleted(8, deleteEvery(0)) {
		t.Errorf("deleteEvery(0.25) = %d", every)
	}
}
