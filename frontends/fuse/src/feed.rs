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
//! The stream is a lease: the mount asks meta's leader to renew it every
//! [`cairn_proto::CHANGE_FEED_HEARTBEAT`], and the leader answers while its own read
//! lease holds (a quorum acknowledged it recently), and ends the stream
//! otherwise. When the stream breaks or falls silent for [`FEED_SILENCE`](cairn_client::meta_client::feed::FEED_SILENCE) (the
//! leader changed or was cut off, meta is unreachable), the mount goes back
//! to the short TTLs at once, invalidates every name it handed out with the
//! long TTL (it remembers them, up to [`crate::fs::MAX_TRACKED_NAMES`]) and
//! every attribute the kernel holds, and subscribes again; the new stream
//! starts with a reset. So the kernel's staleness is bounded by the silence
//! timeout (1.5 s), not by the TTL. It is a bound, not a guarantee of
//! linearizable `stat`: the kernel hears of a change after meta
//! acknowledged it.
//!
//! Close-to-open does not rest on the kernel's caches: `open` asks meta,
//! or answers from the mount's lease caches (`cairn_client::leased`), which meta
//! keeps exact: it acknowledges no other client's change before this mount
//! dropped it from them and said so (`cairn_meta::changes`). A name whose
//! inode was replaced answers ESTALE, which makes the kernel look it up
//! again.
//!
//! The same feed keeps the mount's own cache of directories' attributes
//! honest (`fs/dirattrs.rs`): the inodes and the parents of the entries a
//! change names are dropped from it, and a reset or a lost feed drops it
//! whole.
//!
//! [`FsConfig::cached_ttl`]: crate::FsConfig::cached_ttl

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cairn_client::leased::Leased;
use cairn_client::meta_client::ChangeStream;
use cairn_client::meta_client::feed::{LeaseHolder, RESUBSCRIBE, follow_lease_stream};
use cairn_proto::meta::{Changes, WatchChangesRequest};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::fs::Inner;

/// How long after a loss the names are invalidated a second time: a reply
/// given the long TTL just before the loss may reach the kernel after the
/// first pass.
const SECOND_PASS: Duration = Duration::from_millis(200);

/// Follows the change feed until the file system is dropped.
pub(crate) async fn follow(fs: Weak<Inner>) {
    loop {
        let Some(meta) = fs.upgrade().map(|i| i.client().meta().clone()) else {
            return;
        };
        match meta.watch_changes().await {
            Ok((requests, mut stream)) => {
                if !follow_stream(&fs, &requests, &mut stream).await {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "change feed unavailable"),
        }
        let Some(inner) = fs.upgrade() else { return };
        inner.lease_cache().lost();
        // Only a feed that was connected handed out long TTLs: a meta that
        // stays unreachable costs no invalidation sweep per retry.
        inner.dir_attrs.clear();
        if let Some(names) = inner.set_feed_live(false) {
            info!("meta change feed lost: short kernel cache TTLs until it is back");
            forget_everything(&inner, names).await;
        }
        drop(inner);
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

/// Follows one stream until it breaks or falls silent (returns true) or
/// the file system is dropped (false): the lease caches as every holder
/// keeps them ([`follow_lease_stream`]), then each change on to the
/// kernel's caches.
async fn follow_stream(
    fs: &Weak<Inner>,
    requests: &mpsc::Sender<WatchChangesRequest>,
    stream: &mut ChangeStream,
) -> bool {
    // The kernel's invalidations run in order on a thread of their own: a
    // notification waits for the kernel's directory lock, which a request
    // this mount is still answering may hold, and that request may wait
    // for a mutation that waits for this mount's acknowledgements.
    let (kernel, mut queue) = mpsc::unbounded_channel::<(Arc<Inner>, Changes)>();
    let invalidator = tokio::spawn(async move {
        while let Some((inner, changes)) = queue.recv().await {
            let _ = tokio::task::spawn_blocking(move || invalidate(&inner, &changes)).await;
        }
    });
    // The closure owns the queue's sender: it is dropped when the stream
    // ends, which ends the invalidator.
    let alive = follow_lease_stream(fs, requests, stream, move |inner, changes| {
        let reset = changes.reset;
        if reset && !inner.feed_live.load(Ordering::Acquire) {
            inner.set_feed_live(true);
            info!("meta change feed connected: kernel caches kept longer");
        }
        // Another client's unlock (or a reset, which may hide one): this
        // mount's lock waiters ask again now.
        if reset || !changes.unlocked.is_empty() {
            inner.unlocked.notify_waiters();
        }
        if reset || !changes.inos.is_empty() || !changes.entries.is_empty() {
            let _ = kernel.send((inner, changes));
        }
    })
    .await;
    // Earlier changes reach the kernel before a loss's sweep.
    let _ = invalidator.await;
    alive
}

impl LeaseHolder for Inner {
    fn leased(&self) -> &Leased {
        self.lease_cache()
    }

    /// The directories' attributes this mount's own changes left
    /// (`fs/dirattrs.rs`) are dropped before the acknowledgement too.
    fn dropped(&self, changes: &Changes) {
        if changes.reset {
            self.dir_attrs.clear();
        } else {
            let parents = changes.entries.iter().map(|e| e.parent);
            self.dir_attrs
                .forget(changes.inos.iter().copied().chain(parents));
        }
    }
}

/// Drops every name handed out with the long TTL, and every attribute the
/// kernel holds, twice (see [`SECOND_PASS`]).
async fn forget_everything(inner: &Arc<Inner>, names: Vec<(u64, String)>) {
    let names = Arc::new(names);
    for pass in 0..2 {
        if pass == 1 {
            tokio::time::sleep(SECOND_PASS).await;
        }
        let (i, n) = (inner.clone(), names.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let Some(notifier) = i.notifier.get() else {
                return;
            };
            for (parent, name) in n.iter() {
                let _ = notifier.inval_entry(i.kernel(*parent), OsStr::new(name));
            }
            for ino in i.known_inodes(None) {
                let _ = notifier.inval_inode(i.kernel(ino), -1, 0);
            }
        })
        .await;
    }
}

/// Tells the kernel to drop what it cached of `changes` (the mount's own
/// caches dropped them already, in [`follow_stream`]).
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
        inner.forget_name(e.parent, &e.name);
        if let Err(err) = n.inval_entry(inner.kernel(e.parent), OsStr::new(&e.name)) {
            // ENOENT: the kernel had nothing cached there.
            debug!(parent = e.parent, name = %e.name, error = %err, "entry invalidation");
        }
    }
}
