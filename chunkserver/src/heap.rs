//! The chunkserver's heap allocations, for the `heap_allocations_total`
//! metric that `cairn-bench chunk` turns into allocations per request
//! (issue 14, DESIGN §10: a 4 KiB read should allocate nothing beyond
//! pooled buffers).
//!
//! The `cairn-chunkserver` binary's global allocator is
//! [`cairn_proto::heap::Counting`]; it counts only when the process was
//! started with `CAIRN_COUNT_ALLOCATIONS=1` (as `cairn-bench` starts it;
//! [`enable`]). Otherwise an allocation costs one load of a flag, not an
//! addition every thread contends for, and the metric is absent rather
//! than zero (also in processes that run the chunkserver with another
//! allocator: tests, `cairn dev`).

use cairn_proto::heap;

/// The environment variable that turns counting on.
pub const ENV: &str = "CAIRN_COUNT_ALLOCATIONS";

/// Starts counting, for the life of the process, when [`ENV`] is `1`; call
/// it only where the global allocator is the counting one (the binary's
/// `main`, first thing).
pub fn enable() {
    if std::env::var(ENV).is_ok_and(|v| v == "1") {
        std::mem::forget(heap::on());
    }
}

/// Heap allocations since counting started, when they are counted.
pub fn allocations() -> Option<u64> {
    heap::counting().then(|| heap::totals().0)
}
