//! Garbage collection of deleted files' data (DESIGN §11), a leader duty.
//!
//! When a file's last link goes and no session holds it open, meta moves
//! its layout to the garbage list with the time (`fs::Garbage`). Once an
//! entry is older than `gc_grace` — longer than any client cache TTL, so
//! a reader that opened the file before the delete (read-only opens are
//! not registered with meta) finishes its reads — the leader removes the
//! object's chunks from their chains: a Remove to each chain's head, which
//! removes down the chain, successors first. Only when every chunk is gone
//! from every replica (or never existed: NOT_FOUND) does it forget the
//! entry through Raft; a chain that cannot be reached keeps the entry for
//! the next round, so a crash or leader change at any point only repeats
//! removals.
//!
//! Which chunks: those below the recorded size, plus one stripe beyond it,
//! for a writer that died before its last length report reached meta.
//! Truncated-away chunks never reach this list: the client removes them on
//! every replica before meta records the shorter length.
//!
//! Not here yet: orphan reconciliation against chunkservers' chunk
//! reports.

use std::time::Duration;

use cairn_client::data::{DataPool, into_result, remove_request};
use cairn_proto::chain::ChainView;
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId};
use cairn_proto::{CairnStatus, ErrorCode};
use futures::StreamExt;

use crate::fs::{Garbage, Op};
use crate::service::{Shared, chain_tables_pb, now_ns};

/// Objects handled per round (each round is one leader duty tick).
const OBJECTS_PER_ROUND: usize = 256;
/// Chunk removals in flight at once.
const PARALLEL: usize = 16;
/// One removal's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The collector's connections to chunkservers.
pub struct Gc {
    pool: DataPool,
}

impl Default for Gc {
    fn default() -> Self {
        Self {
            pool: DataPool::new(Duration::from_secs(2)),
        }
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
        let due: Vec<Garbage> = shared
            .fs
            .garbage()
            .map_err(CairnStatus::from)?
            .into_iter()
            .filter(|g| now.saturating_sub(g.since_ns) >= grace)
            .take(OBJECTS_PER_ROUND)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let tables = chain_tables_pb(shared).map_err(|s| CairnStatus::from_status(&s))?;
        let view = ChainView::from_pb(&tables);
        let mut done = Vec::new();
        let mut chunks = 0u64;
        for g in &due {
            match self.remove_object(&view, g).await {
                Ok(n) => {
                    done.push(g.layout.object_id);
                    chunks += n;
                }
                Err(e) => {
                    tracing::info!(object = g.layout.object_id, error = %e, "garbage kept for the next round");
                }
            }
        }
        if done.is_empty() {
            return Ok(());
        }
        let objects = done.len();
        shared
            .propose(None, Op::ForgetGarbage { objects: done })
            .await?;
        tracing::info!(objects, chunks, "garbage collected");
        Ok(())
    }

    /// Removes every chunk of `g` from its chain; returns how many
    /// removals it sent.
    async fn remove_object(&self, view: &ChainView, g: &Garbage) -> Result<u64, CairnStatus> {
        let l = &g.layout;
        if l.chains.is_empty() || l.chunk_size == 0 {
            return Ok(0);
        }
        let stripe = l.chains.len() as u64;
        let count = g.size.div_ceil(l.chunk_size) + stripe;
        let results: Vec<Result<(), CairnStatus>> = futures::stream::iter(0..count)
            .map(|index| {
                let chunk = ChunkId {
                    object: ObjectId(l.object_id),
                    index,
                };
                let chain = l.chains[(index % stripe) as usize];
                self.remove_chunk(view, chain, chunk)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(count)
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
        let head = c
            .write_path()
            .next()
            .ok_or_else(|| unavailable(format!("chain {chain} has no member to write")))?;
        let addr = view.shard_addr(head.chunkserver, chunk).ok_or_else(|| {
            unavailable(format!("no address for chunkserver {}", head.chunkserver))
        })?;
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
