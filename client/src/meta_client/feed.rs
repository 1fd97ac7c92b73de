//! Following meta's change feed for a cache kept under the client's lease
//! ([`crate::leased`]; the protocol is in `cairn_meta::changes`).
//!
//! One loop serves both holders of such a cache: the FUSE mount (its
//! `open`/`lookup` answers, plus its kernel caches) and [`MetaClient`]
//! itself (the paths the native client resolves, when
//! [`super::MetaClientOptions::cache_leases`] is on). For each message it
//! drops what the changes name from the lease cache and the holder's other
//! caches, then applies the grant, then acknowledges: meta's ordering
//! promise is that a grant never overtakes a change, so a cache answers
//! under a grant only what no acknowledged change touched.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cairn_proto::CHANGE_FEED_HEARTBEAT;
use cairn_proto::meta::{Changes, WatchChangesRequest};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use super::{ChangeStream, Inner, MetaClient};
use crate::leased::Leased;

/// Silence after which the stream counts as lost: meta answers a renewal
/// sent every [`CHANGE_FEED_HEARTBEAT`] while its read lease holds.
pub const FEED_SILENCE: Duration = Duration::from_millis(1500);

/// Pause before subscribing again after the stream broke.
pub const RESUBSCRIBE: Duration = Duration::from_millis(300);

/// What keeps a cache under the lease.
pub trait LeaseHolder: Send + Sync + 'static {
    /// The lease cache.
    fn leased(&self) -> &Leased;

    /// Drops what `changes` name (everything, on a reset) from the
    /// holder's other caches that must not outlive the acknowledgement;
    /// called after the lease cache dropped them, before the grant and the
    /// acknowledgement.
    fn dropped(&self, _changes: &Changes) {}
}

/// Follows one stream until it breaks or falls silent (returns true) or
/// the holder is dropped (false): renews the lease every
/// [`CHANGE_FEED_HEARTBEAT`], drops what each change names, applies
/// grants, acknowledges, then hands each message to `then`.
pub async fn follow_lease_stream<T: LeaseHolder>(
    holder: &Weak<T>,
    requests: &mpsc::Sender<WatchChangesRequest>,
    stream: &mut ChangeStream,
    mut then: impl FnMut(Arc<T>, Changes),
) -> bool {
    let mut renew = tokio::time::interval(CHANGE_FEED_HEARTBEAT);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut applied = 0;
    loop {
        let changes = tokio::select! {
            m = stream.message() => match m {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => return true,
            },
            _ = renew.tick() => {
                if heard.elapsed() >= FEED_SILENCE {
                    debug!("change feed silent for {FEED_SILENCE:?}: counted as lost");
                    return true;
                }
                let Some(h) = holder.upgrade() else { return false };
                // Acknowledgements ride along, in case one did not fit.
                let req = WatchChangesRequest {
                    renew: h.leased().renewal(),
                    acked: applied,
                    ..Default::default()
                };
                let _ = requests.try_send(req);
                continue;
            }
        };
        heard = Instant::now();
        let Some(h) = holder.upgrade() else {
            return false;
        };
        if changes.reset {
            h.leased().reset();
        } else if !changes.inos.is_empty() || !changes.entries.is_empty() {
            let names = changes.entries.iter().map(|e| (e.parent, e.name.as_str()));
            h.leased().changed(&changes.inos, names);
        }
        h.dropped(&changes);
        if changes.granted != 0 {
            h.leased().granted(changes.granted);
        }
        if changes.seq > applied {
            applied = changes.seq;
            let ack = WatchChangesRequest {
                acked: applied,
                ..Default::default()
            };
            let _ = requests.try_send(ack);
        }
        then(h, changes);
    }
}

impl LeaseHolder for Inner {
    fn leased(&self) -> &Leased {
        &self.paths
    }
}

impl MetaClient {
    /// Starts following the change feed for the path cache, once.
    pub(super) fn start_path_leases(&self) {
        if self.inner.paths_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.subscribe();
        tokio::spawn(path_lease_loop(weak, stop));
    }
}

/// Keeps the path cache's lease until the client is closed or dropped.
async fn path_lease_loop(weak: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let subscribed = MetaClient { inner }.watch_changes().await;
        match subscribed {
            Ok((requests, mut stream)) => {
                let alive = tokio::select! {
                    alive = follow_lease_stream(&weak, &requests, &mut stream, |_, _| {}) => alive,
                    _ = stop.changed() => false,
                };
                if !alive {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "change feed unavailable: paths resolved on meta"),
        }
        if let Some(inner) = weak.upgrade() {
            inner.paths.lost();
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(RESUBSCRIBE) => {}
        }
    }
}
