//! Crash failpoints for fault tests.
//!
//! `CAIRN_FAILPOINT=name:N` makes the process abort (like `kill -9`: no
//! destructors, no flushes) the `N`th time the code passes the named
//! point, so a test can stop a chunkserver at an exact step of a write —
//! before or after the local sync, before forwarding, before committing.
//! Unset, a failpoint costs one relaxed atomic load. They are compiled in
//! every build rather than behind a cargo feature so the binary the tests
//! kill is the binary users run.
//!
//! Points: `chunk.write.before_local` (head/replica, before persisting),
//! `chunk.write.before_forward` (about to forward; the local store may be
//! under way or done),
//! `chunk.write.before_commit` (successor acknowledged, not yet committed
//! here), `chunk.write.before_reply` (durable on every replica, committed
//! at the tail, reply not yet sent), `chunk.write.after_reply` (a non-tail
//! replica's reply handed to its connection's writer, the version not yet
//! committed here); in
//! the chunk engine, `chunk.store.before_data_sync` (blocks written with
//! O_DIRECT, not yet fdatasync'ed), `chunk.store.before_meta_batch` (data
//! synced, not yet referenced), `chunk.store.before_meta_flush` (referenced
//! in sled, not yet flushed); `chunk.write.forwarded_unpersisted` (a
//! non-tail replica forwards first and crashes once its successors have
//! the version and it has not started storing it — armed, it also makes
//! every write take that order); `chunk.write.local_error` (not a crash:
//! the `N`th local store of a forwarded version fails as an I/O error
//! would, after the successors have it).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    remaining: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("CAIRN_FAILPOINT").ok()?;
            let (name, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
            let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
            Some(Armed {
                name: name.to_string(),
                remaining: AtomicU64::new(n),
            })
        })
        .as_ref()
}

/// Passes failpoint `name`: aborts the process if it is armed and this is
/// the configured hit.
pub fn hit(name: &str) {
    if fires(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Passes failpoint `name`: true once, on the configured hit, for points
/// that inject an error instead of a crash.
pub fn fires(name: &str) -> bool {
    let Some(a) = armed() else { return false };
    a.name == name && a.remaining.fetch_sub(1, Ordering::AcqRel) == 1
}

/// Whether failpoint `name` is armed in this process: a point that needs
/// the code around it to take one fixed order of otherwise concurrent
/// steps asks this first.
pub fn is_armed(name: &str) -> bool {
    armed().is_some_and(|a| a.name == name)
}
