//! The client's copy of the chain table (DESIGN §7).
//!
//! Loaded from the meta leader when the client connects, then kept current
//! by meta's `WatchChains` stream (any replica; reconnected after a break,
//! and a silent replica's connection breaks on its keep-alive).
//! A data-plane answer that says our copy is behind (STALE_CHAIN_VERSION)
//! or ahead of the replica's (NEWER_CHAIN_VERSION) triggers
//! [`ChainCache::refresh`], a linearizable read from the leader, so a
//! request never waits for the stream. Readers take an `Arc` of the current
//! [`ChainView`] without holding a lock across I/O; only newer views
//! replace it.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cairn_proto::chain::ChainView;
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient as Grpc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::{MetaClient, Result};

/// The chain table as this client knows it.
#[derive(Debug)]
pub struct ChainCache {
    meta: MetaClient,
    view: RwLock<Arc<ChainView>>,
    /// Refreshes in a row are serialized (one leader read at a time).
    refreshing: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
    watcher: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ChainCache {
    fn drop(&mut self) {
        if let Some(h) = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
    }
}

impl ChainCache {
    /// Loads the table from meta and starts following its changes.
    ///
    /// # Errors
    /// Meta unreachable within the meta client's deadline.
    pub async fn start(meta: MetaClient) -> Result<Arc<Self>> {
        let t = meta.get_chains().await?;
        let (changed, _) = watch::channel(t.version);
        let cache = Arc::new(Self {
            meta: meta.clone(),
            view: RwLock::new(Arc::new(ChainView::from_pb(&t))),
            refreshing: tokio::sync::Mutex::new(()),
            changed,
            watcher: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&cache);
        let handle = tokio::spawn(async move {
            follow(meta.addrs(), weak).await;
        });
        *cache.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(cache)
    }

    /// Returns the current view.
    pub fn view(&self) -> Arc<ChainView> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs `t` if it is newer than the current view.
    fn publish(&self, t: &pb::ChainTables) {
        let mut v = self.view.write().unwrap_or_else(PoisonError::into_inner);
        if t.version > v.version {
            debug!(version = t.version, "chain table updated");
            *v = Arc::new(ChainView::from_pb(t));
            self.changed.send_replace(t.version);
        }
    }

    /// Reads the table from the meta leader unless a view newer than
    /// `seen` arrived meanwhile; returns the current view.
    ///
    /// # Errors
    /// Meta unreachable within the meta client's deadline.
    pub async fn refresh(&self, seen: u64) -> Result<Arc<ChainView>> {
        let _one = self.refreshing.lock().await;
        let v = self.view();
        if v.version > seen {
            return Ok(v);
        }
        let t = self.meta.get_chains().await?;
        self.publish(&t);
        Ok(self.view())
    }

    /// Waits until the view is newer than `seen` or `timeout` passes.
    pub async fn wait_newer(&self, seen: u64, timeout: Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > seen)).await;
    }
}

/// Follows meta's chain-table stream until the cache is dropped,
/// reconnecting to the next replica after a break.
async fn follow(addrs: Vec<String>, cache: std::sync::Weak<ChainCache>) {
    let mut i = 0usize;
    loop {
        let addr = addrs[i % addrs.len().max(1)].clone();
        i += 1;
        let Some(known) = cache.upgrade().map(|c| c.view().version) else {
            return;
        };
        let stream = async {
            // With keep-alive: a frozen or cut-off replica breaks the watch
            // within seconds instead of holding it silent.
            let channel = cache.upgrade()?.meta.channel_to(&addr).ok()?;
            let mut c = Grpc::new(channel);
            let s = c
                .watch_chains(pb::WatchChainsRequest {
                    known_version: known,
                })
                .await
                .ok()?;
            Some(s.into_inner())
        };
        if let Some(mut s) = stream.await {
            while let Ok(Some(t)) = s.message().await {
                let Some(c) = cache.upgrade() else {
                    return;
                };
                c.publish(&t);
            }
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
