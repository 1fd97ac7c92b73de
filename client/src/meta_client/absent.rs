//! Which directories a client lists so that names that do not exist in
//! them are answered from its lease cache ([`crate::leased`], "Names that
//! do not exist"), for the mount's lookups and the native client's path
//! resolution alike.
//!
//! A name that does not exist costs a meta round trip each time it is
//! asked for: a create's lookup through the mount, a program's `exists()`
//! or `stat` before it writes. Once meta has said a name does not exist in
//! a directory, the client lists that directory under its lease
//! ([`MetaClient::readdir_leased`]) in the background; from then on the
//! directory is complete in the lease cache and every missing name in it
//! is answered from memory until a change names it.
//!
//! Policy: only directories this client made itself ([`MetaClient::mkdir`]
//! records them). A listed directory makes every other client's change of
//! a name in it wait for this client's acknowledgement (one round trip,
//! as for a name it looked up), which a directory the client fills itself
//! — a job's output, a dataset being written — rarely meets; a shared
//! directory others write into would make them wait. Not a directory
//! listed already, being listed, or found larger than [`LISTED_AT_MOST`]
//! entries (meta covers only a directory that fits in one page).

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use cairn_proto::ids::InodeId;
use cairn_proto::meta::FileType;
use tracing::debug;

use super::MetaClient;

/// Largest directory listed to answer absent names from the lease cache.
const LISTED_AT_MOST: u32 = 1024;

/// Most directories remembered as made here (and as being listed or too
/// large); past it the sets start over.
const REMEMBERED: usize = 4096;

/// Directories this client made, and those being listed or found too
/// large to list.
#[derive(Default)]
pub(super) struct Listings {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Directories this client made (the ones it lists).
    made: HashSet<u64>,
    /// Being listed, or found too large.
    busy: HashSet<u64>,
}

impl Listings {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This client made directory `ino` ([`MetaClient::mkdir`]).
    pub(super) fn made(&self, ino: u64) {
        let mut s = self.state();
        if s.made.len() >= REMEMBERED {
            s.made.clear();
            s.busy.clear();
        }
        s.made.insert(ino);
    }

    /// Marks `dir` busy when it is one to list now.
    fn start(&self, dir: u64) -> bool {
        let mut s = self.state();
        s.made.contains(&dir) && s.busy.insert(dir)
    }

    fn any_made(&self) -> bool {
        !self.state().made.is_empty()
    }

    fn done(&self, dir: u64) {
        self.state().busy.remove(&dir);
    }
}

impl MetaClient {
    /// Meta said a name in `parent` does not exist: the listing of
    /// `parent` that makes it complete in the lease cache, to be spawned
    /// by the caller (the mount's FUSE threads run outside the runtime),
    /// or `None` when there is nothing to do (see the module docs).
    pub fn absent_listing(&self, parent: u64) -> Option<impl Future<Output = ()> + use<>> {
        if self.path_cache().complete(parent) || !self.inner.absent.start(parent) {
            return None;
        }
        let m = self.clone();
        Some(async move {
            let t = m.path_cache().begin(m.mutations());
            let whole = match m.readdir_leased(InodeId(parent), LISTED_AT_MOST).await {
                Ok((entries, true)) => {
                    let names = entries.iter().map(|e| {
                        let dir = e.kind == FileType::Directory as i32;
                        (e.name.as_str(), e.ino, dir)
                    });
                    m.path_cache().keep_listing(t, m.mutations(), parent, names);
                    true
                }
                // Too large: not listed again. Not leased (no feed yet, or
                // not the leader): the next absent name tries again.
                Ok((entries, false)) => entries.len() < LISTED_AT_MOST as usize,
                Err(e) => {
                    debug!(parent, error = %e, "listing a directory for the lease cache failed");
                    true
                }
            };
            if whole {
                // Listed (kept, or refused because something moved: the
                // next absent name lists it again), or failed.
                m.inner.absent.done(parent);
            }
        })
    }

    /// [`Self::resolve`] was told the path of `names` does not exist:
    /// lists its directory in the background when it is one to list (see
    /// the module docs). A directory the path cache cannot walk to yet (a
    /// path only ever made, never resolved) is resolved on meta first,
    /// once, which keeps its path there; only by a client that made a
    /// directory, so that others never pay for it.
    pub(super) fn list_for_absent_names(&self, names: &[&str]) {
        // The root is never listed for the lease cache.
        let Some((_, dirs)) = names.split_last().filter(|(_, d)| !d.is_empty()) else {
            return;
        };
        if let Some(parent) = self.path_cache().resolve_dir(dirs, self.mutations()) {
            if let Some(listing) = self.absent_listing(parent) {
                tokio::spawn(listing);
            }
            return;
        }
        // Kept only under a running lease: without one, nothing to gain.
        if !self.inner.absent.any_made() || !self.path_cache().live() {
            return;
        }
        let m = self.clone();
        let dirs: Vec<String> = dirs.iter().map(ToString::to_string).collect();
        tokio::spawn(async move {
            let comps: Vec<&str> = dirs.iter().map(String::as_str).collect();
            let path = super::paths::join(&comps);
            match m.resolve_kept(&path, &comps, m.mutations()).await {
                Ok(a) => {
                    if let Some(listing) = m.absent_listing(a.ino) {
                        listing.await;
                    }
                }
                Err(e) => debug!(path, error = %e, "resolving a directory to list it failed"),
            }
        });
    }
}
