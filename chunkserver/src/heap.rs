//! Counts the chunkserver process's heap allocations, for the
//! `heap_allocations_total` metric that `cairn-bench chunk` turns into
//! allocations per request (issue 14, DESIGN §10: a 4 KiB read should
//! allocate nothing beyond pooled buffers).
//!
//! The `cairn-chunkserver` binary installs [`Counting`] as its global
//! allocator and calls [`mark_installed`]: the system allocator behind one
//! relaxed atomic counter (an allocation, a zeroed allocation and a
//! reallocation count one each; frees are not counted). A process that
//! runs the chunkserver without it (tests, `cairn dev`) reports no such
//! metric rather than a zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting allocations.
#[derive(Debug)]
pub struct Counting;

// SAFETY: every call is passed unchanged to `System`, which upholds
// `GlobalAlloc`'s contract; the counter is an atomic and allocates nothing.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Records that this process's global allocator is [`Counting`] (the
/// binary's `main` calls it first thing).
pub fn mark_installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// Heap allocations since the process started, when they are counted.
pub fn allocations() -> Option<u64> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| ALLOCATIONS.load(Ordering::Relaxed))
}
