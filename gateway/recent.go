package gateway

import (
	"sync"

	"github.com/haybale/haybale/needle"
)

// recentRing keeps the most recent uploads for the web page. It is safe
// for concurrent use.
type recentRing struct {
	mu struct {
		sync.Mutex
		// entries is a ring of cap entries; next is where the next upload
		// goes, n how many are filled.
		entries []recentEntry
		next, n int
	}
}

type recentEntry struct {
	id   needle.PhotoID
	resp UploadResponse
}

func newRecentRing(capacity int) *recentRing {
	r := &recentRing{}
	r.mu.entries = make([]recentEntry, capacity)
	return r
}

// add records an upload, dropping the oldest when full.
func (r *recentRing) add(id needle.PhotoID, resp UploadResponse) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.entries[r.mu.next] = recentEntry{id: id, resp: resp}
	r.mu.next = (r.mu.next + 1) % len(r.mu.entries)
	r.mu.n = min(r.mu.n+1, len(r.mu.entries))
}

// list returns the uploads, newest first.
func (r *recentRing) list() []UploadResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]UploadResponse, 0, r.mu.n)
	c := len(r.mu.entries)
	for i := 1; i <= r.mu.n; i++ {
		out = append(out, r.mu.entries[(r.mu.next-i+c)%c].resp)
	}
	return out
}

// remove drops the photo id, keeping the order of the others.
func (r *recentRing) remove(id needle.PhotoID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := len(r.mu.entries)
	kept := make([]recentEntry, 0, r.mu.n)
	for i := r.mu.n; i >= 1; i-- { // oldest first
		if e := r.mu.entries[(r.mu.next-i+c)%c]; e.id != id {
			kept = append(kept, e)
		}
	}
	if len(kept) == r.mu.n {
		return
	}
	clear(r.mu.entries)
	copy(r.mu.entries, kept)
	r.mu.n = len(kept)
	r.mu.next = len(kept) % c
}
