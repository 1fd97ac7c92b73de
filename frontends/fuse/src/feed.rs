//! Longer kernel caches, kept honest by meta's change feed (DESIGN §4).
//!
//! While the mount holds the leader's `WatchChanges` stream, it gives the
//! kernel entries and attributes for [`FsConfig::cached_ttl`] instead of
//! the short `entry_ttl` / `attr_ttl`, and turns every change another
//! client commits into a kernel invalidation as it arrives: attributes of
//! the inodes it names (those the kernel was told of), and the directory
//! entries it names. So a `stat` of an unchanged file is answered by the
//! kernel, and one changed elsewhere is seen within a stream round trip.
//!
//! When the stream breaks (the leader changed, meta is unreachable) the
//! mount goes back to the short TTLs at once and subscribes again; the new
//! stream starts with a reset, on which every attribute the kernel holds
//! is invalidated. Entries handed out while the feed was up may then stay
//! in the kernel until their TTL runs out, which is what bounds staleness
//! across a failover. Close-to-open never depends on any of this: `open`
//! asks meta, and a name whose inode was replaced answers ESTALE, which
//! makes the kernel look it up again.
//!
//! [`FsConfig::cached_ttl`]: crate::FsConfig::cached_ttl

use std::ffi::OsStr;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_proto::meta::Changes;
use tracing::{debug, info};

use crate::fs::Inner;

/// Pause before subscribing again after the stream broke.
const RESUBSCRIBE: Duration = Duration::from_millis(300);

/// Follows the change feed until the file system is dropped.
pub(crate) async fn follow(fs: Weak<Inner>) {
    let mut was_live = false;
    loop {
        let Some(meta) = fs.upgrade().map(|i| i.client().meta().clone()) else {
            return;
        };
        match meta.watch_changes().await {
            Ok(mut stream) => {
                while let Ok(Some(changes)) = stream.message().await {
                    let Some(inner) = fs.upgrade() else { return };
                    // On a thread of its own: a notification waits for the
                    // kernel's directory lock, which a request this mount is
                    // still answering may hold.
                    let (i, c) = (inner.clone(), changes.clone());
                    let _ = tokio::task::spawn_blocking(move || invalidate(&i, &c)).await;
                    if changes.reset && !inner.feed_live.swap(true, Ordering::AcqRel) {
                        if !was_live {
                            info!("meta change feed connected: kernel caches kept longer");
                        }
                        was_live = true;
                    }
                }
            }
            Err(e) => debug!(error = %e, "change feed unavailable"),
        }
        let Some(inner) = fs.upgrade() else { return };
        if inner.feed_live.swap(false, Ordering::AcqRel) {
            debug!("meta change feed lost: short kernel cache TTLs until it is back");
        }
        drop(inner);
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

/// Tells the kernel to drop what it cached of `changes`.
fn invalidate(inner: &Inner, changes: &Changes) {
    let Some(n) = inner.notifier.get() else {
        return;
    };
    let known = inner.known_inodes((!changes.reset).then_some(changes.inos.as_slice()));
    for ino in known {
        // Attributes only (negative offset); data is revalidated at open.
        if let Err(e) = n.inval_inode(inner.kernel(ino), -1, 0) {
            debug!(ino, error = %e, "attribute invalidation");
        }
    }
    for e in &changes.entries {
        if let Err(err) = n.inval_entry(inner.kernel(e.parent), OsStr::new(&e.name)) {
            // ENOENT: the kernel had nothing cached there.
            debug!(parent = e.parent, name = %e.name, error = %err, "entry invalidation");
        }
    }
}
