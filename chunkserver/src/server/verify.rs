//! After an unclean start: every chunk checked against its chain's tail
//! before this replica trusts it for reads.
//!
//! Writes store a version and forward it at once (see [`super`]), so a
//! replica killed between the two leaves its successors holding a version
//! it never stored. A write that follows finds that out (the successor
//! compares bytes and answers [`cairn_proto::ErrorCode::Diverged`]); a read would not:
//! the chunk looks clean here at the previous version while the tail
//! serves the newer one, and a reader moving from the tail to this replica
//! would go back in time.
//!
//! So a shard that starts without the clean-stop mark (`node.rs`) is
//! *suspect*. A read of a chunk not yet checked asks the tail for its
//! committed version, as a read of a dirty range does, and is answered
//! PENDING (the client reads another replica) when the tail holds a
//! version this replica does not. A background pass checks every chunk
//! under its lock — the head holds the lock down the chain for a write,
//! so a newer version at the tail is then one this replica lost, never one
//! in flight — marks lost ones diverged (their next write copies them from
//! the tail), and ends the suspect state once every chunk is checked.
//! Chunks are listed in id order, so what is checked is one mark (every
//! chunk up to it) plus the few chunks whose tails could not be asked,
//! not a set as large as the target. The resync
//! loop copies diverged chunks from their tails in the background (as
//! does a chunk's next write), so their reads come back here. A chunk whose
//! tail cannot be asked is tried again a second later; the tail itself
//! and chunks of chains no longer in the table have nothing to compare,
//! and a member that is not serving (back after an outage long enough for
//! meta to notice) is left to the resync, which compares every chunk with
//! the head's copy anyway. A resync's copy of a chunk also ends its
//! diverged state.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use cairn_proto::frame::{Header, Opcode};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId};

use super::{Result, Shard};
use crate::chain::MemberState;

/// The pause between passes while some chunks could not be checked.
const RETRY: Duration = Duration::from_secs(1);

impl Shard {
    /// Starts the suspect state of an unclean start.
    pub fn suspect_after_crash(&self) {
        self.suspect.set(true);
    }

    /// Whether `chunk` is unchecked since an unclean start.
    pub(super) fn unverified(&self, chunk: ChunkId) -> bool {
        self.suspect.get()
            && (self.verified_through.get().is_none_or(|t| chunk > t)
                || self.recheck.borrow().contains(&chunk))
    }

    /// Records `chunk` as checked by other means than the pass (a read
    /// that asked the tail, a resync's copy).
    pub(super) fn checked(&self, chunk: ChunkId) {
        self.recheck.borrow_mut().remove(&chunk);
    }

    /// Checks every chunk of this shard against its tail (and then those
    /// whose tails could not be asked, again and again) until all are
    /// checked, or `stop`.
    pub async fn verify_after_crash(self: Rc<Self>, stop: Rc<Cell<bool>>) {
        let mut listed = false;
        while self.suspect.get() && !stop.get() {
            if self.control.view_version() == 0 {
                // No chain table from meta yet: nothing to compare with.
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let pass = if listed {
                self.recheck_pass(&stop).await
            } else {
                self.first_pass(&stop).await
            };
            match pass {
                Ok(true) => listed = true,
                Ok(false) => {}
                Err(e) => tracing::warn!(shard = self.shard, "checking chunks: {}", e.msg),
            }
            let left = self.recheck.borrow().len();
            if listed && left == 0 {
                self.suspect.set(false);
                self.verified_through.set(None);
                tracing::info!(
                    shard = self.shard,
                    diverged = self.diverged.borrow().len(),
                    "every chunk checked against its chain's tail after the unclean start"
                );
                return;
            }
            if listed {
                tracing::info!(shard = self.shard, left, "chunks not checked yet; retrying");
            }
            glommio::timer::sleep(RETRY).await;
        }
    }

    /// Checks every listed chunk in id order, moving the checked mark
    /// along; true once it has gone through them all.
    async fn first_pass(&self, stop: &Cell<bool>) -> Result<bool> {
        for chunk in self.store.list_chunks()? {
            if stop.get() {
                return Ok(false);
            }
            if self.verified_through.get().is_some_and(|t| chunk <= t) {
                continue;
            }
            if !self.verify_or_queue(chunk).await {
                self.recheck.borrow_mut().insert(chunk);
            }
            self.verified_through.set(Some(chunk));
        }
        Ok(true)
    }

    /// Checks the chunks whose tails could not be asked before.
    async fn recheck_pass(&self, stop: &Cell<bool>) -> Result<bool> {
        let chunks: Vec<ChunkId> = self.recheck.borrow().iter().copied().collect();
        for chunk in chunks {
            if stop.get() {
                return Ok(false);
            }
            if self.verify_or_queue(chunk).await {
                self.checked(chunk);
            }
        }
        Ok(true)
    }

    /// Checks one chunk: true when checked.
    async fn verify_or_queue(&self, chunk: ChunkId) -> bool {
        match self.verify_chunk(chunk).await {
            Ok(done) => done,
            Err(e) => {
                tracing::debug!(%chunk, "checking against the tail: {}", e.msg);
                false
            }
        }
    }

    /// Checks `chunk` against its tail under its lock: true once checked.
    async fn verify_chunk(&self, chunk: ChunkId) -> Result<bool> {
        let _lock = self.lock(chunk).await?;
        let Some(st) = self.store.stat(chunk)? else {
            return Ok(true);
        };
        let view = self.current_view();
        let Some(info) = view.chain(st.chain) else {
            // Chain 0 (an old chunk) or a chain gone from the table: no
            // read is routed here for it.
            return Ok(true);
        };
        let me = self.control.chunkserver_id();
        if !info
            .members
            .iter()
            .any(|m| m.chunkserver == me && m.state == MemberState::Serving)
        {
            // Syncing or offline here: no reads, and the resync compares
            // the chunk with the head's and copies it whole if it differs
            // (a crash window's lost version included).
            return Ok(true);
        }
        let Some(tail) = view.tail(st.chain, chunk) else {
            return Ok(false);
        };
        if tail.chunkserver == me {
            return Ok(true);
        }
        let Ok((tail_version, _)) = self
            .tail_committed(&tail.addr, ChainId(st.chain), info.version, chunk)
            .await
        else {
            return Ok(false);
        };
        let newest = st
            .pending_versions
            .last()
            .copied()
            .unwrap_or(0)
            .max(st.committed_version);
        if tail_version > newest {
            tracing::warn!(
                %chunk,
                here = newest,
                tail = tail_version,
                "the tail holds a version this replica lost in the crash; the chunk diverged here"
            );
            self.diverge(chunk);
        } else if tail_version > st.committed_version {
            self.store
                .commit_through(chunk, tail_version, false)
                .await?;
        }
        Ok(true)
    }

    /// Copies each chunk diverged here from its tail without waiting for
    /// its next write (so its reads come back here); run by the resync
    /// loop. A chunk the tail cannot supply yet stays diverged for the
    /// next round.
    pub(super) async fn converge_diverged(&self) {
        let chunks: Vec<ChunkId> = self.diverged.borrow().iter().copied().collect();
        for chunk in chunks {
            if let Err(e) = self.converge_one(chunk).await {
                tracing::debug!(%chunk, "diverged chunk not caught up yet: {}", e.msg);
            }
        }
    }

    async fn converge_one(&self, chunk: ChunkId) -> Result<()> {
        let Some(st) = self.store.stat(chunk)? else {
            // Removed meanwhile: nothing here to disagree with the chain.
            self.diverged.borrow_mut().remove(&chunk);
            return Ok(());
        };
        let view = self.current_view();
        let Some(info) = view.chain(st.chain) else {
            return Ok(());
        };
        let h = Header {
            chunk,
            chain: ChainId(st.chain),
            chain_version: ChainVersion(info.version),
            ..Header::request(Opcode::Stat, 0)
        };
        let route = self.route(&h)?;
        let _lock = self.lock(chunk).await?;
        self.converge(&route, &h, chunk).await
    }
}
