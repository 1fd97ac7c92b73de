//! Counts the chunkserver process's heap allocations, for the
//! `heap_allocations_total` metric that `cairn-bench chunk` turns into
//! allocations per request (issue 14, DESIGN §10: a 4 KiB read should
//! allocate nothing beyond pooled buffers).
//!
//! The `cairn-chunkserver` binary installs [`Counting`] as its global
//! allocator: the system allocator behind one relaxed atomic counter (an
//! allocation, a zeroed allocation and a reallocation count one each;
//! frees are not counted). It counts only when the process was started
//! with `CAIRN_COUNT_ALLOCATIONS=1` (as `cairn-bench` starts it; [`enable`]):
//! otherwise an allocation costs one load of a flag that never changes, not
//! an addition every thread contends for. A process that does not count
//! (the default, tests, `cairn dev`) reports no such metric rather than a
//! zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// The environment variable that turns counting on.
pub const ENV: &str = "CAIRN_COUNT_ALLOCATIONS";

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The system allocator, counting allocations.
#[derive(Debug)]
pub struct Counting;

// SAFETY: every call is passed unchanged to `System`, which upholds
// `GlobalAlloc`'s contract; the counter is an atomic and allocates nothing.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Starts counting when [`ENV`] is `1`; call it only where the global
/// allocator is [`Counting`] (the binary's `main`, first thing).
pub fn enable() {
    if std::env::var(ENV).is_ok_and(|v| v == "1") {
        COUNTING.store(true, Ordering::Relaxed);
    }
}

/// Heap allocations since counting started, when they are counted.
pub fn allocations() -> Option<u64> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| ALLOCATIONS.load(Ordering::Relaxed))
}
