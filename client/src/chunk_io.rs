//! One chunk request, made reliable (DESIGN §7): replica choice, fail-over
//! and retries over the pipelined connections of [`crate::data`].
//!
//! # Reads
//! A read goes to one serving member of the chain, picked round-robin so
//! load spreads over the replicas (CRAQ makes every serving replica return
//! the committed version). A replica that is dirty (PENDING), unreachable,
//! out of its lease (UNAVAILABLE), times out, or returns bytes that fail
//! the end-to-end CRC check is skipped and the next serving member is
//! asked at once; after every member failed once, the client backs off and
//! starts over with a fresh view. A chunk no replica has (NOT_FOUND) is a
//! hole: the caller reads zeros. Only serving members are asked: a syncing
//! replica never serves reads.
//!
//! # Writes, truncates and removes
//! They go to the chain's head (the first non-offline member). A write
//! carries the client's id and a sequence number: a retry reuses both, so
//! the head applies it once even when only the reply was lost. A head that
//! cannot reach its successor answers UNAVAILABLE, and the write is retried
//! (same sequence) until meta has taken the dead member out of the chain
//! and the new chain version reached us (the watch stream, or a refresh
//! after a chain-version answer). Nothing is acknowledged to the caller
//! before every replica of the chain holds the bytes on stable storage.
//!
//! # Chain versions
//! STALE_CHAIN_VERSION (our view is behind) reloads the table from the meta
//! leader. NEWER_CHAIN_VERSION (the replica is behind) waits briefly for
//! the replica to catch up and asks again.
//!
//! Every operation gives up after [`IoOptions::deadline`] with the last
//! error, UNAVAILABLE when it was a transient one; errors that cannot heal
//! (INVALID, NO_SPACE, ...) return at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::chain::{ChainInfo, ChainView, MemberState};
use cairn_proto::frame::{Flags, Frame, Header};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId};
use cairn_proto::{CairnStatus, ErrorCode};
use tokio::time::Instant;
use tracing::debug;

use crate::chains::ChainCache;

/// What a write sends besides its place.
#[derive(Debug, Clone, Default)]
pub struct WriteData {
    /// The bytes.
    pub data: Bytes,
    /// Empty for plain data, or one
    /// [`SEAL_LEN`](cairn_proto::frame::SEAL_LEN)-byte seal per 4 KiB block
    /// of an encrypted write (which then covers whole blocks).
    pub seals: Bytes,
    /// The chunk version the write is conditional on (0: the chunk does
    /// not exist yet): the head refuses it ([`ErrorCode::StaleSequence`])
    /// if the chunk's committed version is another (a read-modify-write
    /// whose read is stale). `None`: unconditional.
    pub expect_version: Option<u64>,
}

impl WriteData {
    /// An unconditional plain write of `data`.
    pub fn plain(data: Bytes) -> Self {
        Self {
            data,
            ..Self::default()
        }
    }
}

/// A read with its seals, from [`ChunkIo::read_sealed`].
#[derive(Debug, Clone, Default)]
pub struct SealedRead {
    /// The bytes the chain has (short at the chunk's end, empty for a
    /// missing chunk).
    pub data: Bytes,
    /// One seal per 4 KiB segment of `data` (all zero for a block without
    /// one), or empty when no block has one.
    pub seals: Bytes,
    /// The chunk's committed version the data is from (0: missing chunk).
    pub version: u64,
}
use crate::data::{
    DataError, DataPool, into_result, read_request, remove_request, truncate_request,
    verify_read_reply, write_request,
};
use crate::layout::Piece;

/// Timeouts and retry budget of data-plane requests.
#[derive(Debug, Clone)]
pub struct IoOptions {
    /// One request's time limit (connect included).
    pub request_timeout: Duration,
    /// Total time one chunk operation may take with its retries; long
    /// enough to outlast meta replacing a dead chunkserver (its heartbeat
    /// timeout, 10 s by default).
    pub deadline: Duration,
    /// Connection time limit.
    pub connect_timeout: Duration,
}

impl Default for IoOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Sends chunk requests with fail-over and retries.
#[derive(Debug)]
pub struct ChunkIo {
    pool: DataPool,
    chains: Arc<ChainCache>,
    opts: IoOptions,
    /// Round-robin start for replica choice.
    next_replica: AtomicUsize,
}

/// What one attempt's error asks for.
enum Next {
    /// Try another replica / again now.
    Retry,
    /// Our table is behind: reload it.
    Refresh,
    /// The replica is behind: give it a moment.
    Wait,
    /// Cannot heal: give up.
    Fail,
}

fn classify(e: &DataError) -> Next {
    match e.code() {
        // A snapshot's seq (in the chain tables) the writer had not seen.
        ErrorCode::StaleChainVersion | ErrorCode::StaleSnapSeq => Next::Refresh,
        ErrorCode::NewerChainVersion => Next::Wait,
        ErrorCode::Checksum => Next::Retry,
        _ if e.is_retryable() => Next::Retry,
        _ => Next::Fail,
    }
}

fn to_status(e: &DataError, what: &str) -> CairnStatus {
    let code = match e.code() {
        // A transient failure that outlived the deadline.
        ErrorCode::Pending
        | ErrorCode::Diverged
        | ErrorCode::StaleChainVersion
        | ErrorCode::NewerChainVersion
        | ErrorCode::StaleSnapSeq => ErrorCode::Unavailable,
        c => c,
    };
    CairnStatus::new(code, format!("{what}: {e}"))
}

/// Exponential backoff, 5 ms doubling to 500 ms.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(5))
    }
    async fn wait(&mut self, deadline: Instant) {
        let d = self
            .0
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(d).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(500));
    }
}

fn no_chain(chain: ChainId) -> DataError {
    DataError::Status {
        code: ErrorCode::Unavailable,
        message: format!("chain {chain} is not in the chain table (or has no member to ask)"),
        pending: false,
    }
}

impl ChunkIo {
    /// Returns chunk I/O over `chains`.
    pub fn new(chains: Arc<ChainCache>, opts: IoOptions) -> Self {
        Self {
            pool: DataPool::new(opts.connect_timeout),
            chains,
            opts,
            next_replica: AtomicUsize::new(0),
        }
    }

    /// The chain cache.
    pub fn chains(&self) -> &Arc<ChainCache> {
        &self.chains
    }

    /// Runs `attempt` against the endpoints `pick` chooses from the current
    /// view until it succeeds, fails for good, or the deadline passes.
    /// `pick(view, chain, round)` returns the address to ask, or `None`
    /// when the chain has nobody to ask.
    async fn retry<T, P, A, F>(
        &self,
        what: &(dyn Fn() -> String + Sync),
        chain: ChainId,
        pick: P,
        attempt: A,
    ) -> Result<T, CairnStatus>
    where
        P: Fn(&ChainView, &ChainInfo, usize) -> Option<Arc<str>>,
        A: Fn(Arc<str>, ChainVersion) -> F,
        F: std::future::Future<Output = Result<T, DataError>>,
    {
        let deadline = Instant::now() + self.opts.deadline;
        let mut backoff = Backoff::new();
        let mut round = 0usize;
        loop {
            let view = self.chains.view();
            let target = view
                .chain(chain.0)
                .and_then(|c| pick(&view, c, round).map(|a| (a, ChainVersion(c.version))));
            let err = match target {
                None => no_chain(chain),
                Some((addr, version)) => match attempt(addr, version).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                },
            };
            round += 1;
            if Instant::now() >= deadline {
                return Err(to_status(&err, &what()));
            }
            debug!(error = %err, round, "chunk request failed; retrying");
            match classify(&err) {
                Next::Fail => return Err(to_status(&err, &what())),
                Next::Refresh => {
                    if let Err(e) = self.chains.refresh(view.version).await {
                        debug!(error = %e, "chain table refresh failed");
                        backoff.wait(deadline).await;
                    }
                }
                Next::Wait => backoff.wait(deadline).await,
                Next::Retry => {
                    // Another member first; back off once every member of
                    // the chain failed in this round of attempts.
                    let members = view.chain(chain.0).map_or(1, |c| c.members.len().max(1));
                    if round.is_multiple_of(members) {
                        backoff.wait(deadline).await;
                        // A dead member leaves the chain through meta;
                        // don't wait for the stream to tell us.
                        let _ = self.chains.refresh(view.version).await;
                    }
                }
            }
        }
    }

    /// Reads `piece`; returns the bytes the chain has, which end early at
    /// the chunk's end (a short or empty result is a hole to the caller).
    ///
    /// # Errors
    /// No replica could serve it within the deadline; CHECKSUM only if
    /// every replica's copy failed its CRC.
    pub async fn read(&self, piece: &Piece) -> Result<Bytes, CairnStatus> {
        self.read_sealed(piece).await.map(|r| r.data)
    }

    /// [`Self::read`] that also returns the blocks' seals and the chunk
    /// version read: the reads of encrypted files.
    ///
    /// # Errors
    /// As [`Self::read`].
    pub async fn read_sealed(&self, piece: &Piece) -> Result<SealedRead, CairnStatus> {
        self.read_from(piece, false, None).await
    }

    /// [`Self::read_sealed`] of the chunk as snapshot `seq` saw it (DESIGN
    /// §3): a replica answers from its clone, or from the committed
    /// version when the chunk has not changed since; a chunk that did not
    /// exist then reads as a hole.
    ///
    /// # Errors
    /// As [`Self::read`].
    pub async fn read_snapshot(&self, piece: &Piece, seq: u64) -> Result<SealedRead, CairnStatus> {
        self.read_from(piece, false, Some(seq)).await
    }

    /// [`Self::read_sealed`] from the chain's head, flagged
    /// [`Flags::CONDITIONAL`]: the read of a read-modify-write, answered
    /// once the head's pending versions are committed, so its version is
    /// the one the head will compare the conditional write with (another
    /// replica's, or the head's own before that, lags while writes are in
    /// flight, and a merge conditional on it lost again and again).
    ///
    /// # Errors
    /// As [`Self::read`].
    pub async fn read_at_head(&self, piece: &Piece) -> Result<SealedRead, CairnStatus> {
        self.read_from(piece, true, None).await
    }

    async fn read_from(
        &self,
        piece: &Piece,
        head: bool,
        snapshot: Option<u64>,
    ) -> Result<SealedRead, CairnStatus> {
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        let chunk = piece.chunk;
        let len = u32::try_from(piece.len).unwrap_or(u32::MAX);
        let what = || {
            format!(
                "reading {} bytes at {} of chunk {chunk}",
                piece.len, piece.chunk_offset
            )
        };
        self.retry(
            &what,
            piece.chain,
            |view, c, round| {
                if head {
                    return head_addr(view, c, chunk);
                }
                let serving = || c.members.iter().filter(|m| m.state == MemberState::Serving);
                let n = serving().count();
                if n == 0 {
                    return None;
                }
                let m = serving().nth((start + round) % n)?;
                view.shard_addr_shared(m.chunkserver, chunk)
            },
            |addr, version| async move {
                let mut req = read_request(piece.chain, version, chunk, piece.chunk_offset, len);
                if head {
                    req.header.flags = req.header.flags | Flags::CONDITIONAL;
                }
                if let Some(seq) = snapshot {
                    req.header.flags = req.header.flags | Flags::SNAPSHOT;
                    req.header.snap_seq = seq;
                }
                match self.call(&addr, req).await {
                    Ok(reply) => {
                        verify_read_reply(&reply)?;
                        Ok(SealedRead {
                            version: reply.header.version,
                            data: reply.payload,
                            seals: reply.seals,
                        })
                    }
                    Err(DataError::Status {
                        code: ErrorCode::NotFound,
                        ..
                    }) => Ok(SealedRead::default()),
                    Err(e) => Err(e),
                }
            },
        )
        .await
    }

    /// Writes `w` at `piece` (of a file of volume `volume`) through the
    /// chain head as write `seq` of client `client_id`, under the chain
    /// table's snapshot seq (DESIGN §3; asking for no clone when the volume
    /// has no snapshot); returns once every replica has it durably.
    ///
    /// # Errors
    /// As the module docs say; never a partial success.
    /// [`ErrorCode::StaleSequence`] when a conditional write
    /// ([`WriteData::expect_version`]) found the chunk at another version.
    /// Returns the chunk version the write committed as.
    pub async fn write(
        &self,
        piece: &Piece,
        w: WriteData,
        client_id: u64,
        seq: u64,
        volume: u64,
    ) -> Result<u64, CairnStatus> {
        let WriteData {
            data,
            seals,
            expect_version,
        } = w;
        let chunk = piece.chunk;
        let what = || {
            format!(
                "writing {} bytes at {} of chunk {chunk}",
                data.len(),
                piece.chunk_offset
            )
        };
        self.retry(
            &what,
            piece.chain,
            |view, c, _| head_addr(view, c, chunk),
            |addr, version| {
                let (snap_seq, no_clone) = self.snap_context(volume);
                let req = write_request(
                    piece.chain,
                    version,
                    chunk,
                    piece.chunk_offset,
                    data.clone(),
                    client_id,
                    seq,
                    snap_seq,
                );
                let req = if no_clone {
                    Frame {
                        header: Header {
                            flags: req.header.flags | Flags::NO_CLONE,
                            ..req.header
                        },
                        ..req
                    }
                } else {
                    req
                };
                let req = match expect_version {
                    None => req,
                    Some(v) => Frame {
                        header: Header {
                            version: v,
                            flags: req.header.flags | Flags::CONDITIONAL,
                            ..req.header
                        },
                        ..req
                    },
                };
                let req = if seals.is_empty() {
                    Ok(req)
                } else {
                    req.with_seals(seals.clone())
                };
                async move {
                    let req = req.map_err(DataError::Protocol)?;
                    self.call(&addr, req).await.map(|r| r.header.version)
                }
            },
        )
        .await
    }

    /// Truncates `chunk` (of a file of volume `volume`) to `new_len` bytes
    /// on every replica (a missing chunk is already short enough), under
    /// the snapshot seq as [`Self::write`].
    ///
    /// # Errors
    /// As [`Self::write`].
    pub async fn truncate(
        &self,
        chunk: ChunkId,
        chain: ChainId,
        new_len: u64,
        volume: u64,
    ) -> Result<(), CairnStatus> {
        let what = || format!("truncating chunk {chunk} to {new_len} bytes");
        self.retry(
            &what,
            chain,
            |view, c, _| head_addr(view, c, chunk),
            |addr, version| async move {
                let (snap_seq, no_clone) = self.snap_context(volume);
                let req = truncate_request(chain, version, chunk, new_len, snap_seq, no_clone);
                ok_if_missing(self.call(&addr, req).await)
            },
        )
        .await
    }

    /// The snapshot seq a mutation of a file of `volume` carries now, and
    /// whether it asks for no clone (the volume has no snapshot): both from
    /// one chain table, which lists a volume's snapshots as of its seq.
    fn snap_context(&self, volume: u64) -> (u64, bool) {
        let view = self.chains.view();
        (view.snap_seq, !view.has_snapshots(volume))
    }

    /// Removes `chunk` from every replica (a missing chunk is fine).
    ///
    /// # Errors
    /// As [`Self::write`].
    pub async fn remove(&self, chunk: ChunkId, chain: ChainId) -> Result<(), CairnStatus> {
        let what = || format!("removing chunk {chunk}");
        self.retry(
            &what,
            chain,
            |view, c, _| head_addr(view, c, chunk),
            |addr, version| async move {
                ok_if_missing(
                    self.call(&addr, remove_request(chain, version, chunk))
                        .await,
                )
            },
        )
        .await
    }

    async fn call(&self, addr: &str, req: Frame) -> Result<Frame, DataError> {
        into_result(self.pool.call(addr, req, self.opts.request_timeout).await?)
    }
}

fn ok_if_missing(r: Result<Frame, DataError>) -> Result<(), DataError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn head_addr(view: &ChainView, c: &ChainInfo, chunk: ChunkId) -> Option<Arc<str>> {
    let head = c.write_path().next()?;
    view.shard_addr_shared(head.chunkserver, chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: ErrorCode) -> DataError {
        DataError::Status {
            code,
            message: String::new(),
            pending: code == ErrorCode::Pending,
        }
    }

    #[test]
    fn errors_decide_the_next_step() {
        assert!(matches!(
            classify(&status(ErrorCode::StaleChainVersion)),
            Next::Refresh
        ));
        assert!(matches!(
            classify(&status(ErrorCode::NewerChainVersion)),
            Next::Wait
        ));
        for c in [
            ErrorCode::Pending,
            ErrorCode::Unavailable,
            ErrorCode::Checksum,
        ] {
            assert!(matches!(classify(&status(c)), Next::Retry), "{c:?}");
        }
        let gone = DataError::Closed {
            addr: "x".into(),
            reason: "eof".into(),
        };
        assert!(matches!(classify(&gone), Next::Retry));
        for c in [ErrorCode::Invalid, ErrorCode::NoSpace, ErrorCode::Internal] {
            assert!(matches!(classify(&status(c)), Next::Fail), "{c:?}");
        }
    }

    #[test]
    fn transient_codes_surface_as_unavailable() {
        let e = to_status(&status(ErrorCode::Pending), "reading");
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.starts_with("reading: "), "{}", e.message);
        assert_eq!(
            to_status(&status(ErrorCode::NoSpace), "w").code,
            ErrorCode::NoSpace
        );
    }
}
