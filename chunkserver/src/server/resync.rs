//! Resync: bringing a chain's syncing members up to date (DESIGN §5, §8;
//! issue 6), run by the chain's **head**, one task per shard.
//!
//! A member turns syncing when it returns after an outage, or when meta
//! appends it as a replacement for a lost one; syncing members sit at the
//! tail of the write path, take every write they can build on what they
//! hold, and serve no reads. The head brings them up to date:
//!
//! 1. **Drain**: it waits until no write routed with an older version of
//!    the chain (one that may not have reached the new member) is still
//!    under way on this shard. Every later write goes down the whole
//!    chain, so a chunk created from now on reaches the syncing member from
//!    its first version.
//! 2. **List**: the chunks of the chain this shard holds — each chunk's
//!    header records its chain, so the head needs neither meta nor the
//!    file lengths meta knows (a file being written may have chunks past
//!    its recorded length).
//! 3. **Copy by version**: per chunk, under the chunk's lock (no write to
//!    it can be in flight anywhere in the chain: writes enter at the head
//!    and hold that lock down the chain and back), it settles versions left
//!    pending here, asks each syncing member for its committed version,
//!    length and content digest (Stat; the digest is built from the stored
//!    block CRCs, because a chunk removed and written again restarts at
//!    version 1, so a member away during both holds another "version 1";
//!    clients cut truncated-away chunks to length 0 rather than remove
//!    them, so versions keep counting, but chunks removed by older
//!    clients and by GC still can),
//!    and copies the chunk only to members whose copy differs, in pieces of
//!    at most [`PIECE`] bytes ([`Opcode::Install`]).
//!    So a member back from a short outage receives only the chunks
//!    written meanwhile. Reads at the source verify every block's CRC; a
//!    corrupt block fails the copy (reported to meta; a corrupt replica is
//!    never a copy source) and the pass is retried later; the receiver
//!    verifies the CRCs again before storing. A write arriving at a
//!    syncing member for a chunk it missed versions of is acknowledged
//!    without storing and leaves the chunk to this copy.
//! 4. **Clones** (snapshots, DESIGN §3): a copy carries no clones, so the
//!    member refuses snapshot reads up to its *snapshot floor* (the newest
//!    seq it knew when the copy arrived; Stat reports it). When a member's
//!    floor lies above the head's, the head lists the member's clones
//!    ([`Opcode::Clones`]), sends those it holds between the two floors,
//!    newest first, in pieces ([`Opcode::InstallClone`]; the member shares
//!    the blocks a clone has in common with the next newer one), then
//!    lowers the member's floor to its own and gives it the chunk's birth
//!    and newest write seq ([`Opcode::SnapFloor`]), so both keep the same
//!    clones from then on. All under the chunk's lock. So a rebuilt
//!    replica serves every snapshot its source serves, and snapshots
//!    survive the loss of every replica that existed when they were taken.
//!    A clone corrupt at the source is skipped (the member keeps its floor
//!    for that chunk); a member that does not know these opcodes keeps its
//!    floor too.
//! 5. **Report**: when every shard has passed over every chunk at one
//!    chain version, the control thread reports the chain synced at that
//!    version (heartbeat) and meta makes the syncing members serving —
//!    only if the chain has not changed since, so a member that failed
//!    mid-copy is never promoted.
//!
//! Chains with the fewest serving members go first. Copies are paced to
//! the configured rate (bytes/s per shard), [`WINDOW`] chunks in flight.
//!
//! Chunks written before the chain id was recorded (header chain 0) are
//! not listed; none exist in a cluster formatted by this version.
//!
//! # Repair of a corrupt replica
//!
//! A chunk whose stored block fails its CRC on a read or a scrub is queued
//! on its shard; the same loop rewrites it from another **serving**
//! member (a syncing one is never a source): under the chunk's lock here,
//! with no pending version here (they settle first), it reads the whole
//! committed version from the member with ReadChunk — the source checks
//! its own CRCs, so a corrupt source answers with an error and the next
//! member is tried, and the reply's CRCs are checked on arrival — and
//! accepts it only at this replica's own committed version and length.
//! Under this replica's lock no write can be between it and the source
//! (writes upstream wait for the lock; downstream members committed what
//! it committed), so equal versions are equal bytes. The blocks are then
//! replaced in one atomic metadata update
//! ([`ShardStore::rewrite_committed`](crate::store::ShardStore::rewrite_committed)):
//! a crash leaves the corrupt blocks (found again) or the good ones.

use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::ErrorCode;
use cairn_proto::frame::{CloneInfo, CloneList, Frame, Header, Opcode, SegmentCrcs};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, SessionId};

use super::{Reject, Result, Shard, seal_bytes, sealed, seals_of};
use crate::chain::{Member, MemberState};
use crate::store::{NO_SEAL, ReadMode, Seal, StoreError, WriteIn};

/// Bytes per Install frame (below the 16 MiB frame limit).
pub const PIECE: u64 = 8 << 20;

/// Chunks copied concurrently per shard.
pub const WINDOW: usize = 4;

/// How often a shard looks for chains to sync.
const TICK: Duration = Duration::from_millis(200);

/// First pause before retrying a failed repair (doubled each failure).
const REPAIR_RETRY: Duration = Duration::from_millis(500);
/// Longest pause before retrying a failed repair.
const REPAIR_RETRY_MAX: Duration = Duration::from_secs(60);

/// How often a shard counts the bytes each snapshot holds alone (also
/// whenever the snapshot list changes).
const SPACE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a resync waits for older writes to drain before it gives up
/// for this round.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Resync pace.
#[derive(Debug, Clone, Copy)]
pub struct ResyncConfig {
    /// Bytes per second a shard may send (0: unlimited).
    pub rate_per_shard: u64,
}

/// One chain to sync: its id, version and syncing members.
#[derive(Debug, Clone)]
struct Job {
    chain: u32,
    version: u64,
    serving: usize,
    syncing: Vec<Member>,
}

/// What [`Shard::send_pieces`] copies of a chunk.
#[derive(Debug, Clone, Copy)]
enum Copied {
    /// The committed version (`total` bytes); `expect` as in
    /// [`Shard::copy_chunk`].
    Committed {
        version: u64,
        total: u64,
        expect: u64,
    },
    /// One clone.
    Clone(CloneInfo),
}

impl Copied {
    fn version_and_len(&self) -> (u64, u64) {
        match self {
            Self::Committed { version, total, .. } => (*version, *total),
            Self::Clone(c) => (c.version, c.len),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Committed { version, .. } => format!("version {version}"),
            Self::Clone(c) => format!("clone {}", c.seq),
        }
    }
}

/// Runs the shard's resync loop until `stop` is set; `synced(chain,
/// version)` is called when this shard has synced a chain at a version.
pub async fn run(
    shard: Rc<Shard>,
    cfg: ResyncConfig,
    stop: Rc<Cell<bool>>,
    synced: impl Fn(u32, u64),
) {
    let mut done: HashSet<(u32, u64)> = HashSet::new();
    // The live snapshot list clones were last pruned against.
    let mut pruned_for: Option<std::sync::Arc<crate::control::LiveSnapshots>> = None;
    let mut space_at: Option<Instant> = None;
    let mut backoff: std::collections::HashMap<ChunkId, (Instant, Duration)> =
        std::collections::HashMap::new();
    while !stop.get() {
        glommio::timer::sleep(TICK).await;
        if !shard.control.serving() {
            continue;
        }
        if shard.control.wants_chunk_list(shard.shard) {
            match shard.chunk_list() {
                Ok(l) => shard.control.set_chunk_list(shard.shard, l),
                Err(e) => tracing::warn!("listing chunks for the chunk report: {}", e.msg),
            }
        }
        // Clones no snapshot reads any more go when meta's list changes;
        // then, and every SPACE_INTERVAL, the bytes each snapshot holds
        // alone are counted again.
        if let Some(live) = shard.control.live_snapshots()
            && pruned_for.as_ref() != Some(&live)
        {
            match shard.store.prune_clones(&live.seqs, live.upto).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(clones = n, "freed chunk clones no snapshot reads");
                    }
                    pruned_for = Some(live);
                    space_at = None;
                }
                Err(e) => tracing::warn!("pruning chunk clones: {e}"),
            }
        }
        if let Some(live) = &pruned_for
            && space_at.is_none_or(|t: Instant| t.elapsed() >= SPACE_INTERVAL)
        {
            match shard.store.snapshot_space(&live.seqs).await {
                Ok(m) => shard.control.set_snapshot_space(shard.shard, m),
                Err(e) => tracing::warn!("counting snapshot space: {e}"),
            }
            space_at = Some(Instant::now());
        }
        let orphans = shard.control.take_removals(shard.shard);
        if !orphans.is_empty()
            && let Err(e) = shard.remove_orphans(&orphans).await
        {
            tracing::warn!("removing orphaned chunks: {}", e.msg);
        }
        shard.converge_diverged().await;
        let repairs = std::mem::take(&mut *shard.repairs.borrow_mut());
        for chunk in repairs {
            if backoff
                .get(&chunk)
                .is_some_and(|(next, _)| Instant::now() < *next)
            {
                shard.queue_repair(chunk);
                continue;
            }
            match shard.repair_chunk(chunk).await {
                Ok(()) => {
                    backoff.remove(&chunk);
                }
                Err(e) => {
                    // Retried with a growing pause (a chain with no other
                    // serving member has no source until one returns).
                    let delay = backoff
                        .get(&chunk)
                        .map_or(REPAIR_RETRY, |(_, d)| (*d * 2).min(REPAIR_RETRY_MAX));
                    tracing::warn!(%chunk, retry_in = ?delay, "repair of a corrupt replica failed: {}", e.msg);
                    backoff.insert(chunk, (Instant::now() + delay, delay));
                    shard.queue_repair(chunk);
                }
            }
        }
        let jobs = shard.jobs(&done);
        // Forget chain versions that are gone.
        let view = shard.current_view();
        done.retain(|(c, v)| view.chain(*c).is_some_and(|i| i.version == *v));
        for job in jobs {
            if stop.get() {
                break;
            }
            shard.metrics.repair_chain(true);
            let r = shard.clone().sync_chain(&job, cfg).await;
            shard.metrics.repair_chain(false);
            match r {
                Ok(copied) => {
                    tracing::info!(
                        chain = job.chain,
                        version = job.version,
                        shard = shard.shard,
                        copied,
                        "chain synced on this shard"
                    );
                    done.insert((job.chain, job.version));
                    synced(job.chain, job.version);
                }
                Err(e) => tracing::info!(
                    chain = job.chain,
                    version = job.version,
                    "resync pass incomplete, retrying: {}",
                    e.msg
                ),
            }
        }
    }
}

impl Shard {
    /// The distinct (object, chain) pairs of the chunks this shard holds.
    fn chunk_list(&self) -> Result<Vec<(u64, u32)>> {
        let mut out = Vec::new();
        for c in self.store.list_chunks()? {
            if let Some(st) = self.store.stat(c)? {
                out.push((c.object.0, st.chain));
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Removes this shard's chunks of the (object, chain) pairs meta
    /// confirmed orphaned in two chunk reports (chain 0: every chunk of the
    /// object), each under its lock.
    async fn remove_orphans(&self, orphans: &[(u64, u32)]) -> Result<()> {
        let set: HashSet<(u64, u32)> = orphans.iter().copied().collect();
        let me = self.control.chunkserver_id();
        let mut removed = 0u64;
        for c in self.store.list_chunks()? {
            let _lock = self.lock(c).await?;
            let Some(st) = self.store.stat(c)? else {
                continue;
            };
            if set.contains(&(c.object.0, 0)) {
                // An unreferenced object: it never comes back.
                self.store.remove(c).await?;
                removed += 1;
                continue;
            }
            if st.chain == 0 || !set.contains(&(c.object.0, st.chain)) {
                continue;
            }
            // Meta found the chunk's chain without this chunkserver; it may
            // have made it a member again since (a rebalancing move), and
            // the chain's head may be copying the chunk here right now.
            let member_again = self
                .current_view()
                .chain(st.chain)
                .is_some_and(|ch| ch.members.iter().any(|m| m.chunkserver == me));
            if !member_again {
                self.store.remove(c).await?;
                removed += 1;
            }
        }
        tracing::warn!(removed, shard = self.shard, "orphaned chunks removed");
        Ok(())
    }

    /// Rewrites this replica's copy of `chunk` from a healthy serving
    /// member; see the module docs.
    async fn repair_chunk(&self, chunk: ChunkId) -> Result<()> {
        let _lock = self.lock(chunk).await?;
        let Some(st) = self.store.stat(chunk)? else {
            return Ok(()); // removed meanwhile
        };
        if !st.pending_versions.is_empty() {
            return Err(Reject::new(
                ErrorCode::Pending,
                format!("{chunk} has pending versions here; repairing once they settle"),
            ));
        }
        let view = self.current_view();
        let Some(chain) = view.chain(st.chain) else {
            return Err(Reject::new(
                ErrorCode::Unavailable,
                format!("{chunk}: its chain {} is not in the table", st.chain),
            ));
        };
        let me = self.control.chunkserver_id();
        let mut last = Reject::new(
            ErrorCode::Unavailable,
            format!("{chunk}: no other serving replica of chain {}", st.chain),
        );
        for m in chain
            .write_path()
            .filter(|m| m.chunkserver != me && m.state == MemberState::Serving)
        {
            let Some(addr) = view.shard_addr(m.chunkserver, chunk) else {
                continue;
            };
            match self
                .fetch_committed(
                    &addr,
                    st.chain,
                    chain.version,
                    chunk,
                    st.committed_version,
                    st.committed_len,
                )
                .await
            {
                Ok((data, crcs, seals)) => {
                    let w = WriteIn {
                        offset: 0,
                        data: &data,
                        segment_crcs: &crcs,
                        seals: &seals,
                        snap: crate::store::Snap::default(),
                    };
                    self.store
                        .rewrite_committed(st.chain, chunk, st.committed_version, w)
                        .await?;
                    self.metrics.installed(data.len() as u64);
                    tracing::warn!(
                        %chunk,
                        version = st.committed_version,
                        from = m.target,
                        "corrupt replica rewritten from a healthy one"
                    );
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reads committed version `version` (`len` bytes) of `chunk` from the
    /// replica at `addr`, CRC-checked; an error if it holds another version.
    pub(crate) async fn fetch_committed(
        &self,
        addr: &str,
        chain: u32,
        chain_version: u64,
        chunk: ChunkId,
        version: u64,
        len: u64,
    ) -> Result<(Vec<u8>, Vec<u32>, Vec<Seal>)> {
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut crcs = Vec::new();
        let mut seals: Vec<Seal> = Vec::new();
        let mut offset = 0;
        while offset < len {
            let n = PIECE.min(len - offset);
            let q = Frame::new(Header {
                chunk,
                chain: ChainId(chain),
                chain_version: ChainVersion(chain_version),
                offset,
                length: u32::try_from(n).unwrap_or(u32::MAX),
                ..Header::request(Opcode::ReadChunk, 0)
            });
            let reply = self.peers.call(addr, q).await?;
            if let Some(code) = reply.error_code() {
                return Err(Reject::new(
                    code,
                    format!(
                        "{addr} could not supply {chunk}: {}",
                        reply.error_message().unwrap_or_default()
                    ),
                ));
            }
            if reply.header.version != version || reply.payload.len() as u64 != n {
                return Err(Reject::new(
                    ErrorCode::Pending,
                    format!(
                        "{addr} holds version {} of {chunk} ({} bytes at {offset}), this replica {version}",
                        reply.header.version,
                        reply.payload.len()
                    ),
                ));
            }
            reply.verify_payload().map_err(|e| {
                Reject::new(ErrorCode::Checksum, format!("{chunk} from {addr}: {e}"))
            })?;
            let got = seals_of(&reply.seals);
            if !got.is_empty() {
                // Pieces before this one had no sealed block.
                seals.resize(crcs.len(), NO_SEAL);
                seals.extend(got);
            } else if !seals.is_empty() {
                seals.resize(crcs.len() + reply.crcs.len(), NO_SEAL);
            }
            data.extend_from_slice(&reply.payload);
            crcs.extend(reply.crcs.iter());
            offset += n;
        }
        Ok((data, crcs, seals))
    }

    /// Chains this chunkserver heads that have syncing members, fewest
    /// serving members first.
    fn jobs(&self, done: &HashSet<(u32, u64)>) -> Vec<Job> {
        let view = self.current_view();
        let me = self.control.chunkserver_id();
        let mut jobs: Vec<Job> = view
            .chains()
            .filter(|(id, c)| !done.contains(&(*id, c.version)))
            .filter_map(|(id, c)| {
                let head = c.write_path().next()?;
                if head.chunkserver != me || head.state != MemberState::Serving {
                    return None;
                }
                let syncing: Vec<Member> = c
                    .write_path()
                    .filter(|m| m.state == MemberState::Syncing)
                    .cloned()
                    .collect();
                if syncing.is_empty() {
                    return None;
                }
                Some(Job {
                    chain: id,
                    version: c.version,
                    serving: c
                        .write_path()
                        .filter(|m| m.state == MemberState::Serving)
                        .count(),
                    syncing,
                })
            })
            .collect();
        jobs.sort_by_key(|j| (j.serving, j.chain));
        jobs
    }

    /// One pass over the chain's chunks on this shard; returns the chunks
    /// copied.
    async fn sync_chain(self: Rc<Self>, job: &Job, cfg: ResyncConfig) -> Result<u64> {
        let started = Instant::now();
        while self.older_writes_inflight(job.chain, job.version) {
            if started.elapsed() > DRAIN_LIMIT {
                return Err(Reject::new(
                    ErrorCode::Unavailable,
                    "writes routed with an older chain version are still under way",
                ));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let mut chunks = Vec::new();
        for c in self.store.list_chunks()? {
            if self.store.stat(c)?.is_some_and(|s| s.chain == job.chain) {
                chunks.push(c);
            }
        }
        let gate = Rc::new(glommio::sync::Semaphore::new(WINDOW as u64));
        let copied = Rc::new(Cell::new(0u64));
        let failed: Rc<Cell<Option<Reject>>> = Rc::new(Cell::new(None));
        let mut tasks = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            if self.chain_moved(job) {
                break;
            }
            let Ok(permit) = gate.clone().acquire_static_permit(1).await else {
                break;
            };
            if let Some(e) = failed.take() {
                failed.set(Some(e));
                break;
            }
            let (me, job, copied, failed) =
                (self.clone(), job.clone(), copied.clone(), failed.clone());
            tasks.push(glommio::spawn_local(async move {
                match me.sync_chunk(&job, chunk, cfg).await {
                    Ok(true) => copied.set(copied.get() + 1),
                    Ok(false) => {}
                    Err(e) => failed.set(Some(e)),
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await;
        }
        if let Some(e) = failed.take() {
            return Err(e);
        }
        if self.chain_moved(job) {
            return Err(Reject::new(
                ErrorCode::StaleChainVersion,
                format!("chain {} changed during the resync", job.chain),
            ));
        }
        Ok(copied.get())
    }

    fn chain_moved(&self, job: &Job) -> bool {
        self.current_view()
            .chain(job.chain)
            .is_none_or(|c| c.version != job.version)
    }

    /// Brings `chunk` up to date on the job's syncing members; returns
    /// whether any copy was needed.
    async fn sync_chunk(&self, job: &Job, chunk: ChunkId, cfg: ResyncConfig) -> Result<bool> {
        let _lock = self.lock(chunk).await?;
        let h = Header {
            chunk,
            chain: ChainId(job.chain),
            chain_version: ChainVersion(job.version),
            ..Header::request(Opcode::Write, 0)
        };
        let route = self.route(&h)?;
        if !route.is_head {
            return Err(Reject::new(
                ErrorCode::StaleChainVersion,
                format!("no longer the head of chain {}", job.chain),
            ));
        }
        self.settle_pending(&route, &h, chunk).await?;
        let Some(st) = self.store.stat(chunk)? else {
            return Ok(false); // removed meanwhile
        };
        if st.committed_version == 0 {
            return Ok(false);
        }
        let mut copied = false;
        let ours = self.store.digest(chunk)?;
        let snaps = self.store.clone_list(chunk)?;
        for m in &job.syncing {
            let Some(addr) = route.view.shard_addr(m.chunkserver, chunk) else {
                return Err(Reject::new(
                    ErrorCode::Unavailable,
                    format!("no address for chunkserver {}", m.chunkserver),
                ));
            };
            let q = Frame::new(Header {
                chunk,
                chain: h.chain,
                chain_version: h.chain_version,
                client_seq: super::STAT_DIGEST,
                ..Header::request(Opcode::Stat, 0)
            });
            let reply = self.peers.call(&addr, q).await?;
            let (version, len, digest) = match reply.error_code() {
                None => (
                    reply.header.version,
                    reply.header.offset,
                    reply.header.client_seq,
                ),
                Some(ErrorCode::NotFound) => (0, 0, 0),
                Some(code) => {
                    return Err(Reject::new(
                        code,
                        format!(
                            "syncing member {} refused Stat: {}",
                            m.target,
                            reply.error_message().unwrap_or_default()
                        ),
                    ));
                }
            };
            // The member's snapshot floor (0 from an older chunkserver).
            let mut floor = reply.header.snap_seq;
            if version == st.committed_version && len == st.committed_len && Some(digest) == ours {
                self.metrics.repair_current();
            } else {
                let expect = super::replica_state_tag(version, len, digest);
                self.copy_chunk(
                    &h,
                    &addr,
                    st.committed_version,
                    st.committed_len,
                    expect,
                    cfg,
                )
                .await?;
                copied = true;
                // The copy came without clones: the member now refuses
                // snapshots up to the newest seq it knows.
                floor = u64::MAX;
            }
            if let Some(snaps) = &snaps
                && floor > snaps.floor
                && (!snaps.clones.is_empty() || snaps.floor < self.control.snap_seq())
            {
                copied |= self
                    .sync_clones(&h, &addr, st.committed_version, snaps, cfg)
                    .await?;
            }
        }
        Ok(copied)
    }

    /// Gives a member the clones this replica holds and it lacks (those
    /// between the two snapshot floors), newest first, then lowers the
    /// member's floor to this replica's: from then on it serves the same
    /// snapshots. The caller holds the chunk's lock, with `version`
    /// committed here and nothing pending. Returns whether anything was
    /// copied. A clone that fails its CRC here is not copied and the
    /// member keeps its floor (it reads those snapshots from others); an
    /// older member that does not know clones is left as it is.
    async fn sync_clones(
        &self,
        h: &Header,
        addr: &str,
        version: u64,
        ours: &CloneList,
        cfg: ResyncConfig,
    ) -> Result<bool> {
        let q = Frame::new(Header {
            chunk: h.chunk,
            chain: h.chain,
            chain_version: h.chain_version,
            ..Header::request(Opcode::Clones, 0)
        });
        let reply = self.peers.call(addr, q).await?;
        match reply.error_code() {
            None => {}
            Some(ErrorCode::BadRequest) => {
                tracing::debug!(chunk = %h.chunk, addr, "member does not list clones: left at its snapshot floor");
                return Ok(false);
            }
            Some(code) => {
                return Err(Reject::new(
                    code,
                    format!(
                        "{addr} could not list its clones of {}: {}",
                        h.chunk,
                        reply.error_message().unwrap_or_default()
                    ),
                ));
            }
        }
        let theirs = CloneList::decode(&reply.payload).map_err(|e| {
            Reject::new(
                ErrorCode::BadRequest,
                format!("clone list from {addr}: {e}"),
            )
        })?;
        if theirs.floor <= ours.floor {
            return Ok(false);
        }
        let mut copied = false;
        for c in ours.clones.iter().rev() {
            if c.seq <= ours.floor || c.seq > theirs.floor || theirs.clones.contains(c) {
                continue;
            }
            match self.copy_clone(h, addr, c, cfg).await {
                Ok(()) => copied = true,
                Err(e) if e.code == ErrorCode::Checksum => {
                    tracing::warn!(chunk = %h.chunk, seq = c.seq, "a block of this clone is corrupt here: the member keeps its snapshot floor");
                    return Ok(copied);
                }
                Err(e) => return Err(e),
            }
        }
        let q = Frame::new(Header {
            chunk: h.chunk,
            chain: h.chain,
            chain_version: h.chain_version,
            version,
            snap_seq: ours.floor,
            offset: ours.birth,
            client_seq: ours.seq,
            ..Header::request(Opcode::SnapFloor, 0)
        });
        let reply = self.peers.call(addr, q).await?;
        if let Some(code @ (ErrorCode::Pending | ErrorCode::StaleSequence)) = reply.error_code() {
            // Left over state there (a version pending since a crash):
            // the member keeps its floor and reads those snapshots from
            // others; a later pass tries again.
            tracing::warn!(chunk = %h.chunk, addr, ?code, "member kept its snapshot floor");
            return Ok(copied);
        }
        if let Some(code) = reply.error_code() {
            return Err(Reject::new(
                code,
                format!(
                    "{addr} did not take the snapshot floor of {}: {}",
                    h.chunk,
                    reply.error_message().unwrap_or_default()
                ),
            ));
        }
        Ok(copied)
    }

    /// Sends clone `c` of the chunk to `addr` in pieces
    /// ([`Opcode::InstallClone`]); the caller holds the chunk's lock.
    async fn copy_clone(
        &self,
        h: &Header,
        addr: &str,
        c: &CloneInfo,
        cfg: ResyncConfig,
    ) -> Result<()> {
        self.send_pieces(h, addr, Copied::Clone(*c), cfg).await
    }

    /// Sends committed version `version` (`total` bytes) of the chunk to
    /// `addr` in pieces; the caller holds the chunk's lock. `expect` is the
    /// receiver's state as its Stat showed it ([`super::replica_state_tag`]):
    /// the receiver installs only over that state, so a copy that arrives
    /// after this call gave up on it changes nothing.
    async fn copy_chunk(
        &self,
        h: &Header,
        addr: &str,
        version: u64,
        total: u64,
        expect: u64,
        cfg: ResyncConfig,
    ) -> Result<()> {
        let what = Copied::Committed {
            version,
            total,
            expect,
        };
        self.send_pieces(h, addr, what, cfg).await
    }

    /// Sends `what` of the chunk to `addr` in pieces of at most [`PIECE`]
    /// bytes, each read and CRC-checked here, paced to the configured rate.
    async fn send_pieces(
        &self,
        h: &Header,
        addr: &str,
        what: Copied,
        cfg: ResyncConfig,
    ) -> Result<()> {
        let chunk = h.chunk;
        let (version, total) = what.version_and_len();
        let mut offset = 0u64;
        loop {
            let n = PIECE.min(total - offset);
            let (data, crcs, seals) = if n == 0 {
                (Bytes::new(), SegmentCrcs::default(), Bytes::new())
            } else {
                let read = match what {
                    Copied::Committed { .. } => {
                        self.store.read(chunk, offset, n, ReadMode::Committed).await
                    }
                    Copied::Clone(c) => self.store.read_clone(chunk, c.seq, offset, n).await,
                };
                let out = match read {
                    Ok(o) => o,
                    Err(StoreError::Checksum { block, .. }) => {
                        self.metrics.crc_failure();
                        if let Copied::Committed { .. } = what {
                            // Repaired here from another serving member;
                            // the pass retries after.
                            (self.corrupt)(chunk, vec![block]);
                            self.queue_repair(chunk);
                        }
                        return Err(Reject::new(
                            ErrorCode::Checksum,
                            format!(
                                "block {block} of {} of {chunk} is corrupt here: not a copy \
                                 source",
                                what.name()
                            ),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                };
                if out.version != version || out.data.len() as u64 != n {
                    return Err(Reject::new(
                        ErrorCode::Internal,
                        format!("{} of {chunk} changed under its lock", what.name()),
                    ));
                }
                (
                    out.data,
                    SegmentCrcs::from_slice(&out.block_crcs),
                    seal_bytes(&out.block_seals),
                )
            };
            let base = Header {
                chunk,
                chain: h.chain,
                chain_version: h.chain_version,
                version,
                offset,
                client_seq: total,
                ..Header::request(Opcode::Install, 0)
            };
            let header = match what {
                Copied::Committed { expect, .. } => Header {
                    client_id: SessionId(expect),
                    ..base
                },
                Copied::Clone(c) => Header {
                    opcode: Opcode::InstallClone,
                    snap_seq: c.seq,
                    client_id: SessionId(c.birth),
                    ..base
                },
            };
            let f = Frame::with_payload_crcs(header, data, crcs)
                .and_then(|f| sealed(f, seals))
                .map_err(|e| Reject::new(ErrorCode::Internal, format!("install frame: {e}")))?;
            let reply = self.peers.call(addr, f).await?;
            if let Some(code) = reply.error_code() {
                return Err(Reject::new(
                    code,
                    format!(
                        "{addr} refused {} of {chunk}: {}",
                        what.name(),
                        reply.error_message().unwrap_or_default()
                    ),
                ));
            }
            self.metrics.repair_copied(n);
            self.pace(n, cfg).await;
            offset += n;
            if offset >= total {
                return Ok(());
            }
        }
    }

    /// Waits as long as sending `bytes` takes at the configured rate.
    async fn pace(&self, bytes: u64, cfg: ResyncConfig) {
        if cfg.rate_per_shard == 0 {
            return;
        }
        let now = Instant::now();
        let cost = Duration::from_secs_f64(bytes as f64 / cfg.rate_per_shard as f64);
        let next = self.pace_next.get().max(now) + cost;
        self.pace_next.set(next);
        let wait = next.saturating_duration_since(now);
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
    }
}
