//! Write opens released in the background, many per meta entry.
//!
//! A file opened for write is held in the client's session on meta (so an
//! unlink does not free its data under an open handle, DESIGN §4). Closing
//! one through which nothing was written has no length to report, so the
//! release need not hold up `close`: it is queued here and sent within
//! [`RELEASE_DELAY`] as one `ReleaseFiles` request naming every file queued
//! meanwhile. A dataset writer that creates empty files, or a tool that
//! opens files read-write and only reads, then costs one Raft entry per
//! file (the create or open) instead of two.
//!
//! Order matters only against a new write open of the same file by this
//! client: a release sent after it would drop the new open's hold. So an
//! open for write first takes the file out of the queue, and waits for a
//! release already on its way (the flusher holds the queue's lock until meta
//! answered). A release that is never sent (the client dies) is done by
//! meta when the session expires; so is one that fails.

use std::sync::{Arc, Weak};
use std::time::Duration;

use cairn_proto::ids::InodeId;
use cairn_proto::meta::ReleaseFilesRequest;
use tokio::sync::{Mutex, Notify};
use tracing::{debug, warn};

use super::{Inner, MetaClient};

/// How long a release may wait for others to share its request. A writer
/// through a mount publishes its length at close(2) (FLUSH) and releases
/// at RELEASE, so one thread writing small files queues one release per
/// file every ~15 ms (`cairn-bench small`, one thread): at 100 ms about
/// six share an entry, where 20 ms sent one or two per entry (a third of
/// the meta entries of a small file). What the wait delays is only the
/// freeing of a file unlinked meanwhile; nobody reads the hold otherwise.
pub const RELEASE_DELAY: Duration = Duration::from_millis(100);

/// Most files one request names (meta accepts up to 4096).
pub const MAX_RELEASE_BATCH: usize = 1024;

/// The queue of files to release.
#[derive(Debug, Default)]
pub(crate) struct Releases {
    queue: Mutex<Vec<u64>>,
    queued: Notify,
}

impl Releases {
    /// Queues `ino` for release.
    pub(crate) async fn push(&self, ino: InodeId) {
        self.queue.lock().await.push(ino.0);
        self.queued.notify_one();
    }

    /// Takes `ino` out of the queue, after any release being sent.
    pub(crate) async fn cancel(&self, ino: InodeId) {
        self.queue.lock().await.retain(|i| *i != ino.0);
    }
}

/// Sends queued releases until the client is closed or dropped.
pub(crate) async fn release_loop(
    weak: Weak<Inner>,
    releases: Arc<Releases>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        // `notify_one` leaves a permit when nobody waits: a push while this
        // loop was sending is not missed.
        tokio::select! {
            _ = stop.changed() => return,
            () = releases.queued.notified() => {}
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(RELEASE_DELAY) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let client = MetaClient { inner };
        let mut queue = releases.queue.lock().await;
        while !queue.is_empty() {
            let n = queue.len().min(MAX_RELEASE_BATCH);
            let inos: Vec<u64> = queue.drain(..n).collect();
            let r = client
                .mutate(
                    "release_files",
                    |rid| ReleaseFilesRequest {
                        rid: Some(rid),
                        inos: inos.clone(),
                    },
                    |l: super::Link, r| async move { attempt!(l, release_files, r) },
                    // Releasing write opens changes no attribute or name
                    // (meta's change feed does not report it either).
                    |_| Some(crate::leased::Changed::default()),
                )
                .await;
            match r {
                Ok(_) => debug!(files = inos.len(), "released files closed unwritten"),
                // The session's expiry releases them instead.
                Err(e) => warn!(files = inos.len(), error = %e, "releasing closed files failed"),
            }
        }
    }
}
