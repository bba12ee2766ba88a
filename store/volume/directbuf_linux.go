package volume

import "golang.org/x/sys/unix"

// mapSlab maps directSlab bytes of anonymous memory aligned to directSlab
// and asks for them to be backed by a transparent huge page. A system
// without transparent huge pages (or with them off) still gives the
// memory, in ordinary pages.
func mapSlab() ([]byte, error) {
	b, err := unix.Mmap(-1, 0, 2*directSlab, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	// Keep the aligned directSlab bytes inside, give back the rest.
	at := alignTo(b, directSlab)
	if at > 0 {
		unix.Munmap(b[:at])
	}
	if rest := b[at+directSlab:]; len(rest) > 0 {
		unix.Munmap(rest)
	}
	slab := b[at : at+directSlab : at+directSlab]
	unix.Madvise(slab, unix.MADV_HUGEPAGE) // advice: without it, ordinary pages
	return slab, nil
}

// unmapSlab unmaps a region mapSlab returned.
func unmapSlab(b []byte) { unix.Munmap(b) }
