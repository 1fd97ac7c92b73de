//! Garbage collection of deleted files' data (DESIGN §11), a leader duty.
//!
//! When a file's last link goes and no session holds it open, meta moves
//! its layout to the garbage list with the time (`fs::Garbage`). Once an
//! entry is older than `gc_grace` — longer than any client cache TTL, so
//! a reader that opened the file before the delete (read-only opens are
//! not registered with meta) finishes its reads — the leader removes the
//! object's chunks from their chains: a RemoveMany to each chain head's
//! shard naming many chunks at once, which removes down the chain,
//! successors first, one metadata flush per replica for the whole list.
//! Only when every chunk is gone from every replica (or never existed)
//! does it forget the entry through Raft; a chain that cannot be reached keeps the entry for
//! the next round, so a crash or leader change at any point only repeats
//! removals.
//!
//! Which chunks: those below the object's extent — its recorded size, or
//! further where a writer reported sending data beyond it (a failed write,
//! see `fs::session`). An empty file costs no request at all. Where the
//! extent is unknown (a writer died with the file open, or the object
//! predates extent tracking), one stripe beyond the size as well, for the
//! writes whose length never reached meta. Truncated-away chunks never
//! reach this list: the client removes them on every replica before meta
//! records the shorter length.
//!
//! Pace: a round (once a second) sends at most `gc_chunks_per_sec`
//! removals, and at least one object's, so a mass delete drains at a
//! bounded rate instead of taking the chunkservers from foreground I/O.
//! Rounds walk the garbage list by object id with a cursor that wraps, so
//! entries still in their grace period never block older-deleted ones.
//!
//! Chunks meta never knew of (a chunkserver away during a delete, a write
//! that landed after its writer's session ended) are found by
//! chunkservers' chunk reports instead (`report_chunks` in `service`).
//!
//! Batching matters: one Remove per chunk cost each replica a durable
//! metadata flush (sled flush + fdatasync, ~0.8 ms of CPU measured by
//! `cairn-bench small`'s collect step); a list shares one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use cairn_client::data::{DataPool, into_result, remove_many_request, remove_request};
use cairn_proto::chain::ChainView;
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId};
use cairn_proto::{CairnStatus, ErrorCode};
use futures::StreamExt;

use crate::fs::{Garbage, Op};
use crate::service::{Shared, chain_tables_pb, now_ns};

/// Garbage entries read per round.
const SCAN_PER_ROUND: usize = 4096;
/// Removal requests in flight at once.
const PARALLEL: usize = 16;
/// Chunks named in one removal request.
const BATCH: usize = 256;
/// One removal's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The collector's connections to chunkservers.
pub struct Gc {
    pool: DataPool,
    /// The last object id the previous round read; `None`: from the start.
    cursor: Mutex<Option<u64>>,
}

impl Default for Gc {
    fn default() -> Self {
        Self {
            pool: DataPool::new(Duration::from_secs(2)),
            cursor: Mutex::new(None),
        }
    }
}

/// Returns the address of the shard of `chain`'s head that owns `chunk`.
fn head_addr(view: &ChainView, chain: u32, chunk: ChunkId) -> Result<String, CairnStatus> {
    let unavailable = |m: String| CairnStatus::new(ErrorCode::Unavailable, m);
    let c = view
        .chain(chain)
        .ok_or_else(|| unavailable(format!("chain {chain} is not in the table")))?;
    let head = c
        .write_path()
        .next()
        .ok_or_else(|| unavailable(format!("chain {chain} has no member to write")))?;
    view.shard_addr(head.chunkserver, chunk)
        .ok_or_else(|| unavailable(format!("no address for chunkserver {}", head.chunkserver)))
}

/// Which chunks of a garbage object to remove.
fn chunks_to_remove(g: &Garbage, extent: Option<u64>) -> u64 {
    let l = &g.layout;
    if l.chains.is_empty() || l.chunk_size == 0 {
        return 0;
    }
    match extent {
        Some(bytes) => bytes.max(g.size).div_ceil(l.chunk_size),
        None => g.size.div_ceil(l.chunk_size) + l.chains.len() as u64,
    }
}

impl Gc {
    /// One round: removes the chunks of garbage older than the grace
    /// period and forgets the objects done.
    ///
    /// # Errors
    /// Reading the state machine or proposing failed.
    pub async fn round(&self, shared: &Shared) -> Result<(), CairnStatus> {
        let grace = i64::try_from(shared.config.gc_grace.as_nanos()).unwrap_or(i64::MAX);
        let now = now_ns();
        let after = *self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let page = shared
            .fs
            .garbage(after, SCAN_PER_ROUND)
            .map_err(CairnStatus::from)?;
        let mut budget = shared.config.gc_chunks_per_sec;
        let mut due = Vec::new();
        let mut stopped_after = None;
        for g in page
            .iter()
            .filter(|g| now.saturating_sub(g.since_ns) >= grace)
        {
            let extent = shared.fs.garbage_extent(g).map_err(CairnStatus::from)?;
            let count = chunks_to_remove(g, extent);
            if count > budget && !due.is_empty() {
                stopped_after = due.last().map(|(g, _): &(Garbage, u64)| g.layout.object_id);
                break;
            }
            budget = budget.saturating_sub(count);
            due.push((g.clone(), count));
        }
        // The next round goes on where the budget ran out, else after this
        // page, else (the list's end) from the start.
        let next = stopped_after.or_else(|| {
            (page.len() == SCAN_PER_ROUND)
                .then(|| page.last().map(|g| g.layout.object_id))
                .flatten()
        });
        *self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        if due.is_empty() {
            return Ok(());
        }
        let tables = chain_tables_pb(shared).map_err(|s| CairnStatus::from_status(&s))?;
        let view = ChainView::from_pb(&tables);
        let failed = self.remove_chunks(&view, &due).await;
        let mut done = Vec::new();
        let mut chunks = 0u64;
        for (g, count) in &due {
            let object = g.layout.object_id;
            if let Some(e) = failed.get(&object) {
                tracing::info!(object, error = %e, "garbage kept for the next round");
            } else {
                done.push(object);
                chunks += count;
            }
        }
        if done.is_empty() {
            return Ok(());
        }
        let objects = done.len();
        shared
            .propose(None, Op::ForgetGarbage { objects: done })
            .await?;
        shared
            .gc
            .objects
            .fetch_add(objects as u64, std::sync::atomic::Ordering::Relaxed);
        shared
            .gc
            .chunks
            .fetch_add(chunks, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(objects, chunks, "garbage collected");
        Ok(())
    }

    /// Removes chunks `0..count` of each object of `due` from their
    /// chains: one RemoveMany per chain head shard and [`BATCH`] chunks,
    /// [`PARALLEL`] at once. Returns the objects some chunk of which could
    /// not be removed, with the error.
    async fn remove_chunks(
        &self,
        view: &ChainView,
        due: &[(Garbage, u64)],
    ) -> HashMap<u64, CairnStatus> {
        let mut failed = HashMap::new();
        let mut groups: BTreeMap<(u32, String), Vec<ChunkId>> = BTreeMap::new();
        for (g, count) in due {
            let l = &g.layout;
            let stripe = l.chains.len() as u64;
            for index in 0..*count {
                let chunk = ChunkId {
                    object: ObjectId(l.object_id),
                    index,
                };
                let chain = l.chains[(index % stripe) as usize];
                match head_addr(view, chain, chunk) {
                    Ok(addr) => groups.entry((chain, addr)).or_default().push(chunk),
                    Err(e) => {
                        failed.insert(l.object_id, e);
                    }
                }
            }
        }
        let requests: Vec<(u32, String, Vec<ChunkId>)> = groups
            .into_iter()
            .flat_map(|((chain, addr), chunks)| {
                chunks
                    .chunks(BATCH)
                    .map(|part| (chain, addr.clone(), part.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let results: Vec<(Vec<ChunkId>, Result<(), CairnStatus>)> = futures::stream::iter(requests)
            .map(|(chain, addr, chunks)| async move {
                let r = self.remove_batch(view, chain, &addr, &chunks).await;
                (chunks, r)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (chunks, r) in results {
            if let Err(e) = r {
                for c in chunks {
                    failed.insert(c.object.0, e.clone());
                }
            }
        }
        failed
    }

    /// Removes `chunks` (of chain `chain`, head shard `addr`) in one
    /// request; a chunkserver that does not know RemoveMany (an older
    /// build, during an upgrade) gets them one by one.
    async fn remove_batch(
        &self,
        view: &ChainView,
        chain: u32,
        addr: &str,
        chunks: &[ChunkId],
    ) -> Result<(), CairnStatus> {
        let unavailable = |m: String| CairnStatus::new(ErrorCode::Unavailable, m);
        let c = view
            .chain(chain)
            .ok_or_else(|| unavailable(format!("chain {chain} is not in the table")))?;
        let req = remove_many_request(ChainId(chain), ChainVersion(c.version), chunks);
        let reply = self
            .pool
            .call(addr, req, REQUEST_TIMEOUT)
            .await
            .and_then(into_result);
        match reply {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::BadRequest => {
                tracing::debug!(%addr, error = %e, "RemoveMany refused: removing one by one");
                for &chunk in chunks {
                    self.remove_chunk(view, chain, chunk).await?;
                }
                Ok(())
            }
            Err(e) => Err(unavailable(format!(
                "removing {} chunks at {addr}: {e}",
                chunks.len()
            ))),
        }
    }

    async fn remove_chunk(
        &self,
        view: &ChainView,
        chain: u32,
        chunk: ChunkId,
    ) -> Result<(), CairnStatus> {
        let unavailable = |m: String| CairnStatus::new(ErrorCode::Unavailable, m);
        let c = view
            .chain(chain)
            .ok_or_else(|| unavailable(format!("chain {chain} is not in the table")))?;
        let addr = head_addr(view, chain, chunk)?;
        let req = remove_request(ChainId(chain), ChainVersion(c.version), chunk);
        let reply = self
            .pool
            .call(&addr, req, REQUEST_TIMEOUT)
            .await
            .and_then(into_result);
        match reply {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(unavailable(format!("removing {chunk} at {addr}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Layout;

    fn garbage(size: u64) -> Garbage {
        Garbage {
            layout: Layout {
                object_id: 7,
                chunk_size: 1000,
                chains: vec![1, 2, 3, 4],
                replication: 3,
            },
            size,
            since_ns: 0,
        }
    }

    #[test]
    fn removes_the_written_chunks_and_a_stripe_more_only_when_unknown() {
        assert_eq!(chunks_to_remove(&garbage(0), Some(0)), 0);
        assert_eq!(chunks_to_remove(&garbage(1), Some(1)), 1);
        assert_eq!(chunks_to_remove(&garbage(1000), Some(1000)), 1);
        assert_eq!(chunks_to_remove(&garbage(1001), Some(1001)), 2);
        // A failed write reached further than the size.
        assert_eq!(chunks_to_remove(&garbage(10), Some(3500)), 4);
        // Unknown: the size's chunks and one stripe beyond.
        assert_eq!(chunks_to_remove(&garbage(0), None), 4);
        assert_eq!(chunks_to_remove(&garbage(2500), None), 7);
        let mut no_chains = garbage(5000);
        no_chains.layout.chains.clear();
        assert_eq!(chunks_to_remove(&no_chains, None), 0);
    }
}
