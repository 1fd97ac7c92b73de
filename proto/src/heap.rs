//! A global allocator that counts heap allocations, for the figures of
//! issue 14 (DESIGN §10: a 4 KiB read allocates nothing beyond pooled
//! buffers). `cairn-bench` installs it to count the client's allocations
//! per operation, the `cairn-chunkserver` binary to export its own as a
//! metric.
//!
//! [`Counting`] is the system allocator behind two relaxed atomic counters
//! (allocations, with `realloc` counting as one, and bytes asked for),
//! which count only while at least one [`On`] guard lives: at other times
//! an allocation costs one load of a flag that is rarely written, not two
//! additions every thread contends for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Guards alive (counting is on while it is not 0).
static ON: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting while an [`On`] lives.
#[derive(Debug)]
pub struct Counting;

fn count(size: usize) {
    if ON.load(Ordering::Relaxed) == 0 {
        return;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every call is passed unchanged to `System`, which upholds
// `GlobalAlloc`'s contract; the counters are atomics and allocate nothing.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Counting is on while it lives (guards may overlap). Counts are
/// meaningful only in a process whose global allocator is [`Counting`].
#[derive(Debug)]
pub struct On(());

/// Turns counting on until the guard drops.
pub fn on() -> On {
    ON.fetch_add(1, Ordering::Relaxed);
    On(())
}

impl Drop for On {
    fn drop(&mut self) {
        ON.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether an [`On`] lives now.
pub fn counting() -> bool {
    ON.load(Ordering::Relaxed) > 0
}

/// Allocations and bytes counted so far.
pub fn totals() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}
