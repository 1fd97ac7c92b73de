//! Which directories a client lists whole under its lease, so that their
//! names are answered from its lease cache ([`crate::leased`], "Names that
//! do not exist"), for the mount's lookups and the native client's path
//! resolution alike. Two reasons to list one:
//!
//! * **Names that do not exist.** A missing name costs a meta round trip
//!   each time it is asked for: a create's lookup through the mount, a
//!   program's `exists()` or `stat` before it writes. Once meta has said a
//!   name does not exist in a directory this client made itself
//!   ([`MetaClient::mkdir`] records them), the client lists it (names
//!   only, [`MetaClient::absent_listing`]).
//! * **Scans.** A training epoch opens every file of a dataset directory
//!   that another client wrote: one lookup on meta per file, a third of a
//!   cold 128 KiB file's time through the mount. Once [`SCAN_AFTER`] files
//!   of one directory were looked up on meta, the client lists it with
//!   every file's attributes, which meta covers with the lease as a lookup
//!   would (`ReadDirReply.attrs_leased`); the rest of the epoch's lookups
//!   and opens there are answered from memory
//!   ([`MetaClient::scan_listing`]). A directory is listed again only
//!   after as many more lookups on meta as an eighth of its size (changes
//!   by others drop what they name), so a listing costs at most eight
//!   entries read per lookup it saves.
//!
//! The price, in both cases: a listed directory makes every other client's
//! change of a name in it wait for this client's acknowledgement (one
//! round trip, as for a name it looked up; its lease's end if it stopped
//! answering), and a listed file's writes too, as for a file it looked up.
//! Directories a client made itself are rarely changed by others; a
//! dataset being read is rarely written. Not a directory being listed, or
//! found larger than [`LISTED_AT_MOST`] entries.
//!
//! A directory is read in pages of [`MetaClientOptions::listing_page`]
//! entries (`ReadDirRequest.paged`: meta covers the directory on every
//! page), so a flat dataset directory of thousands of files is listed
//! too, not only one that fits a page. The pages are kept only if no
//! change reached this client from the first to the last (the lease
//! cache's ticket), as for one page; a busy namespace can thus refuse a
//! large listing, which is then made again only after an eighth of its
//! size in lookups. A directory found too large costs one listing (and
//! the covers meta registered for it) and is not listed again.
//!
//! [`MetaClientOptions::listing_page`]: super::MetaClientOptions::listing_page

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use cairn_proto::ids::InodeId;
use cairn_proto::meta::FileType;
use tracing::debug;

use super::MetaClient;
use crate::Result;
use crate::leased::Listed;

/// Largest directory listed for the lease cache: half the lease cache's
/// capacity ([`crate::leased::MAX_ATTRS`]), so a listing leaves room for
/// the rest. ImageNet's class directories (~1,300 files) and COCO's
/// val2017 (5,000) fit; ImageNet's flat validation set (50,000) and COCO's
/// train2017 (118,287) do not, and are looked up file by file.
pub const LISTED_AT_MOST: u32 = (crate::leased::MAX_ATTRS / 2) as u32;

/// Entries per page of a listing (the default of
/// [`super::MetaClientOptions::listing_page`]).
pub(super) const PAGE: u32 = 4096;

/// Files of one directory looked up on meta before the client lists it
/// with their attributes (see the module docs).
pub const SCAN_AFTER: u32 = 4;

/// Most directories remembered as made here (and as being listed or too
/// large, and scanned); past it the sets start over.
const REMEMBERED: usize = 4096;

/// Directories this client made, those being listed or found too large
/// to list, and the lookups on meta counted towards a scan's listing.
#[derive(Default)]
pub(super) struct Listings {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Directories this client made (the ones it lists for absent names).
    made: HashSet<u64>,
    /// Being listed, or found too large.
    busy: HashSet<u64>,
    /// Per directory, files looked up on meta since it was last listed
    /// with attributes, and how many make it worth listing again.
    scans: HashMap<u64, Scan>,
}

#[derive(Clone, Copy)]
struct Scan {
    looked_up: u32,
    worth: u32,
}

impl State {
    fn forget_if_full(&mut self) {
        if self.made.len() >= REMEMBERED || self.scans.len() >= REMEMBERED {
            self.made.clear();
            self.busy.clear();
            self.scans.clear();
        }
    }
}

impl Listings {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This client made directory `ino` ([`MetaClient::mkdir`]).
    pub(super) fn made(&self, ino: u64) {
        let mut s = self.state();
        s.forget_if_full();
        s.made.insert(ino);
    }

    /// Marks `dir` busy when it is one to list for absent names now.
    fn start(&self, dir: u64) -> bool {
        let mut s = self.state();
        s.made.contains(&dir) && s.busy.insert(dir)
    }

    /// Counts a file of `dir` looked up on meta; marks `dir` busy when
    /// that makes it one to list with attributes now.
    fn looked_up(&self, dir: u64) -> bool {
        let mut s = self.state();
        s.forget_if_full();
        let scan = s.scans.entry(dir).or_insert(Scan {
            looked_up: 0,
            worth: SCAN_AFTER,
        });
        scan.looked_up += 1;
        if scan.looked_up < scan.worth {
            return false;
        }
        scan.looked_up = 0;
        s.busy.insert(dir)
    }

    fn any_made(&self) -> bool {
        !self.state().made.is_empty()
    }

    /// A listing of `dir` of `entries` names ended; one with attributes
    /// (`plus`) is made again for a scan after an eighth as many lookups on
    /// meta (module docs).
    fn done(&self, dir: u64, plus: bool, entries: usize) {
        let mut s = self.state();
        s.busy.remove(&dir);
        if let Some(scan) = s.scans.get_mut(&dir).filter(|_| plus) {
            let eighth = u32::try_from(entries / 8).unwrap_or(u32::MAX);
            scan.worth = SCAN_AFTER.max(eighth);
        }
    }
}

/// What reading a directory whole for the lease cache found.
enum Whole {
    /// Every page leased: its entries, and whether meta covered the
    /// files' attributes too.
    Leased {
        entries: Vec<cairn_proto::meta::DirEntry>,
        attrs: bool,
    },
    /// A page came back without the cover, after this many entries.
    NotLeased(usize),
    /// More than [`LISTED_AT_MOST`] entries.
    TooLarge,
}

impl MetaClient {
    /// Meta said a name in `parent` does not exist: the listing of
    /// `parent` that makes it complete in the lease cache, to be spawned
    /// by the caller (the mount's FUSE threads run outside the runtime),
    /// or `None` when there is nothing to do (see the module docs).
    pub fn absent_listing(&self, parent: u64) -> Option<impl Future<Output = ()> + use<>> {
        if self.path_cache().complete(parent) || !self.inner.listings.start(parent) {
            return None;
        }
        Some(self.clone().list(parent, false))
    }

    /// Meta answered a lookup of a file in `parent` under the lease: the
    /// listing of `parent` with every file's attributes when this makes
    /// [`SCAN_AFTER`] such lookups (or, after a listing, an eighth of its
    /// size), to be spawned by the caller; `None` otherwise (see the module
    /// docs). Not for the root.
    pub fn scan_listing(&self, parent: u64) -> Option<impl Future<Output = ()> + use<>> {
        if parent == InodeId::ROOT.0 || !self.inner.listings.looked_up(parent) {
            return None;
        }
        Some(self.clone().list(parent, true))
    }

    /// Lists `parent` whole under the lease, in pages, with the files'
    /// attributes when `plus`, and keeps what meta covered.
    async fn list(self, parent: u64, plus: bool) {
        let m = self;
        let t = m.path_cache().begin(m.mutations());
        let listed = match m.read_whole(parent, plus).await {
            Ok(Whole::Leased { entries, attrs }) => {
                let names = entries.iter().map(|e| Listed {
                    name: &e.name,
                    ino: e.ino,
                    dir: e.kind == FileType::Directory as i32,
                    attr: e.attr.as_ref().filter(|_| attrs),
                });
                m.path_cache().keep_listing(t, m.mutations(), parent, names);
                Some(entries.len())
            }
            // Not leased (no feed yet, or not the leader): the next lookup
            // tries again.
            Ok(Whole::NotLeased(n)) => Some(n),
            // Too large: not listed again.
            Ok(Whole::TooLarge) => None,
            Err(e) => {
                debug!(parent, error = %e, "listing a directory for the lease cache failed");
                Some(0)
            }
        };
        if let Some(entries) = listed {
            // Listed (kept, or refused because something moved: a later
            // lookup lists it again), or failed.
            m.inner.listings.done(parent, plus, entries);
        }
    }

    /// Reads directory `parent` whole in leased pages.
    async fn read_whole(&self, parent: u64, plus: bool) -> Result<Whole> {
        let page = self.inner.opts.listing_page.max(1);
        let mut entries = Vec::new();
        let mut cookie = Vec::new();
        let mut attrs = plus;
        loop {
            let r = self
                .readdir_leased_page(InodeId(parent), &cookie, page, plus)
                .await?;
            if !r.leased {
                return Ok(Whole::NotLeased(entries.len() + r.entries.len()));
            }
            attrs &= r.attrs_leased;
            entries.extend(r.entries);
            if entries.len() > LISTED_AT_MOST as usize {
                return Ok(Whole::TooLarge);
            }
            if r.next_cookie.is_empty() {
                return Ok(Whole::Leased { entries, attrs });
            }
            cookie = r.next_cookie;
        }
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
        if !self.inner.listings.any_made() || !self.path_cache().live() {
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
