//! The background scrubber (DESIGN §5, invariant 3): re-reads every stored
//! block of a shard against its CRC, paced so it never starves client I/O,
//! and reports corrupt replicas so meta can repair them.
//!
//! One scrubber runs per shard, inside the shard's glommio executor
//! ([`run_scrubber`]; `Rc`, not `Send`). A pass lists the shard's chunks,
//! scrubs each with [`ShardStore::scrub_chunk`] (committed and pending
//! versions), and sleeps as long as [`RateLimiter`] says the bytes it read
//! cost at [`ScrubConfig::bytes_per_sec`]; passes are
//! [`ScrubConfig::interval_between_passes`] apart. It talks to:
//!
//! * the store, read-only;
//! * [`Metrics`]: chunks, blocks, bytes and bad blocks checked, errors,
//!   finished passes and the progress of the pass under way; bad blocks
//!   also count as CRC failures;
//! * its caller, through `report`: one [`CorruptReport`] per chunk with
//!   bad blocks, every pass (the node forwards them to meta's
//!   `ReportCorruption`, which keeps them as soft state, so a lost report
//!   comes back next pass).
//!
//! A block that fails its CRC is scrubbed a second time before it is
//! reported: a commit racing with the scrub can release a block the scrub
//! is about to read and let a new write reuse it, which looks like a bad
//! CRC once; real corruption fails again.
//!
//! The stop flag is checked between chunks and at least every
//! [`STOP_POLL`] while sleeping, so a stop takes effect within one chunk's
//! scrub (a few block reads) or [`STOP_POLL`].
//!
//! Run it in a low-priority task queue (`Latency::NotImportant`, few
//! shares) so glommio's scheduler favours the data plane; the rate limit
//! bounds the disk bandwidth it takes.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::ids::ChunkId;

use crate::metrics::Metrics;
use crate::store::layout::BLOCK_SIZE;
use crate::store::{ShardStore, StoreError};

/// How often a sleeping scrubber looks at its stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(50);

/// The shortest pause between passes, whatever the configuration says, so
/// an empty shard is not listed in a busy loop.
const MIN_PASS_PAUSE: Duration = Duration::from_millis(10);

/// How much unused budget the rate limiter banks while the scrubber is
/// busy elsewhere (a burst of this many seconds' worth of bytes).
const BURST: Duration = Duration::from_millis(100);

/// How one shard's scrubber is paced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Bytes per second this shard's scrubber reads, at most (averaged over
    /// a pass); 0: no limit.
    pub bytes_per_sec: u64,
    /// Pause between the end of a pass and the start of the next.
    pub interval_between_passes: Duration,
}

impl Default for ScrubConfig {
    /// 16 MiB/s per shard (a 4 TB disk with 4 shards is read about every
    /// 17 hours) and an hour between passes.
    fn default() -> Self {
        Self {
            bytes_per_sec: 16 << 20,
            interval_between_passes: Duration::from_secs(3600),
        }
    }
}

/// A chunk replica with blocks whose stored bytes fail their CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptReport {
    /// The chunk.
    pub chunk: ChunkId,
    /// Block indexes within the chunk, ascending, without duplicates.
    pub bad_blocks: Vec<u32>,
}

/// Paces reads to a byte rate: a pure token bucket over virtual time, fed
/// the clock by its caller (so it is tested without sleeping).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    burst: Duration,
    /// When the bytes consumed so far will have been paid for.
    paid_until: Option<Instant>,
}

impl RateLimiter {
    /// Returns a limiter for `bytes_per_sec` (0: unlimited) that lets up
    /// to `burst` worth of unused time be caught up after an idle spell.
    pub fn new(bytes_per_sec: u64, burst: Duration) -> Self {
        Self {
            bytes_per_sec,
            burst,
            paid_until: None,
        }
    }

    /// Returns how long `bytes` take at the configured rate.
    pub fn cost(&self, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let ns = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Records that `bytes` were read at `now` and returns how long to
    /// sleep before reading more, so the average stays at the rate.
    pub fn consume(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        // Unused time older than the burst allowance is forfeited.
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        let start = self.paid_until.map_or(floor, |p| p.max(floor));
        let until = start + self.cost(bytes);
        self.paid_until = Some(until);
        until.saturating_duration_since(now)
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Chunks scrubbed.
    pub chunks: u64,
    /// Stored blocks checked.
    pub blocks: u64,
    /// Chunks reported corrupt.
    pub corrupt_chunks: u64,
    /// Chunks with a corrupt old version (a snapshot's clone) that the
    /// current version does not share: snapshot reads of those blocks fail
    /// their CRC here and go to another replica.
    pub corrupt_clones: u64,
    /// Chunks that could not be checked (I/O or metadata errors).
    pub errors: u64,
    /// Whether the pass ended early because of the stop flag.
    pub stopped: bool,
}

/// Scrubs `store` pass after pass until `stop` is set; see the module
/// docs. Reports each corrupt chunk through `report` once per pass.
pub async fn run_scrubber(
    store: Rc<ShardStore>,
    cfg: ScrubConfig,
    metrics: Arc<Metrics>,
    report: impl Fn(CorruptReport) + 'static,
    stop: Rc<Cell<bool>>,
) {
    let mut limiter = RateLimiter::new(cfg.bytes_per_sec, BURST);
    let pause = cfg.interval_between_passes.max(MIN_PASS_PAUSE);
    let shard = store.shard();
    while !stop.get() {
        let s = scrub_pass(&store, &mut limiter, &metrics, &report, &stop).await;
        if s.stopped {
            break;
        }
        tracing::debug!(
            shard,
            chunks = s.chunks,
            blocks = s.blocks,
            corrupt = s.corrupt_chunks,
            errors = s.errors,
            "scrub pass finished"
        );
        if !sleep_unless_stopped(pause, &stop).await {
            break;
        }
    }
}

/// Runs one pass over every chunk of `store`; returns what it found.
pub async fn scrub_pass(
    store: &ShardStore,
    limiter: &mut RateLimiter,
    metrics: &Metrics,
    report: &impl Fn(CorruptReport),
    stop: &Cell<bool>,
) -> PassSummary {
    let mut summary = PassSummary::default();
    let chunks = match store.list_chunks() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(shard = store.shard(), "scrub: listing chunks: {e}");
            metrics.scrub_error();
            summary.errors += 1;
            return summary;
        }
    };
    let mut pass = metrics.scrub_pass(chunks.len() as u64);
    for chunk in chunks {
        if stop.get() {
            summary.stopped = true;
            return summary;
        }
        let (blocks_read, outcome) = scrub_one(store, chunk).await;
        match outcome {
            Ok(Some((blocks, bad, bad_clones))) => {
                if !bad_clones.is_empty() {
                    summary.corrupt_clones += 1;
                    tracing::error!(
                        %chunk,
                        bad_clone_blocks = ?bad_clones,
                        "scrub: blocks of old versions kept for snapshots fail their CRC; \
                         snapshot reads of them go to other replicas"
                    );
                }
                summary.chunks += 1;
                summary.blocks += blocks;
                metrics.scrubbed_chunk(blocks, blocks * BLOCK_SIZE, bad.len() as u64);
                if !bad.is_empty() {
                    summary.corrupt_chunks += 1;
                    tracing::error!(%chunk, bad_blocks = ?bad, "scrub: stored blocks fail their CRC");
                    report(CorruptReport {
                        chunk,
                        bad_blocks: bad,
                    });
                }
            }
            // Removed since the listing.
            Ok(None) => {}
            Err(e) => {
                summary.errors += 1;
                metrics.scrub_error();
                tracing::warn!(%chunk, "scrub: {e}");
            }
        }
        pass.advance();
        let wait = limiter.consume(blocks_read * BLOCK_SIZE, Instant::now());
        if wait.is_zero() {
            // Chunks with no stored blocks never wait on I/O: let the data
            // plane in anyway.
            glommio::yield_if_needed().await;
        } else if !sleep_unless_stopped(wait, stop).await {
            summary.stopped = true;
            return summary;
        }
    }
    pass.finish();
    summary
}

/// What [`scrub_one`] found: blocks checked, confirmed bad blocks of the
/// current version (ascending, deduplicated) and of clones.
type Found = (u64, Vec<u32>, Vec<(u64, u32)>);

/// Scrubs `chunk`, confirming bad blocks with a second scrub. Returns the
/// blocks read (for pacing) and what it found, or `None` if the chunk is
/// gone.
async fn scrub_one(store: &ShardStore, chunk: ChunkId) -> (u64, Result<Option<Found>, StoreError>) {
    let first = match store.scrub_chunk(chunk).await {
        Ok(r) => r,
        Err(StoreError::NotFound { .. }) => return (0, Ok(None)),
        Err(e) => return (0, Err(e)),
    };
    if first.bad_blocks.is_empty() && first.bad_clone_blocks.is_empty() {
        return (
            first.blocks_checked,
            Ok(Some((first.blocks_checked, Vec::new(), Vec::new()))),
        );
    }
    let mut read = first.blocks_checked;
    let second = match store.scrub_chunk(chunk).await {
        Ok(r) => r,
        Err(StoreError::NotFound { .. }) => return (read, Ok(None)),
        Err(e) => return (read, Err(e)),
    };
    read += second.blocks_checked;
    let mut bad = second.bad_blocks;
    bad.sort_unstable();
    bad.dedup();
    (
        read,
        Ok(Some((second.blocks_checked, bad, second.bad_clone_blocks))),
    )
}

/// Sleeps `d`, waking every [`STOP_POLL`] to look at `stop`; returns false
/// if it was set.
async fn sleep_unless_stopped(d: Duration, stop: &Cell<bool>) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.get() {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        glommio::timer::sleep(left.min(STOP_POLL)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let mut l = RateLimiter::new(0, BURST);
        let t = Instant::now();
        assert_eq!(l.consume(u64::MAX, t), Duration::ZERO);
        assert_eq!(l.cost(1 << 40), Duration::ZERO);
    }

    #[test]
    fn steady_reads_average_to_the_rate() {
        // 1 MiB/s, 64 KiB per step, sleeping exactly as told.
        let mut l = RateLimiter::new(1 << 20, Duration::ZERO);
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..64 {
            now += l.consume(64 << 10, now);
        }
        // 4 MiB at 1 MiB/s: 4 s (the last step's wait included).
        let took = now - t0;
        assert!(
            took >= Duration::from_millis(3999) && took <= Duration::from_millis(4001),
            "{took:?}"
        );
        assert_eq!(l.cost(1 << 20), Duration::from_secs(1));
    }

    #[test]
    fn idle_credit_is_capped_and_slow_work_is_not_delayed() {
        let burst = Duration::from_millis(100);
        let mut l = RateLimiter::new(1_000_000, burst);
        let t0 = Instant::now();
        // 1 MB costs 1 s; the first call may use the burst allowance.
        assert_eq!(l.consume(1_000_000, t0), Duration::from_millis(900));
        // After 3 s idle only `burst` is banked: 200 kB (0.2 s) waits 0.1 s.
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(l.consume(200_000, t1), Duration::from_millis(100));
        // Reading faster than the rate accumulates debt.
        assert_eq!(l.consume(100_000, t1), Duration::from_millis(200));
        // A caller slower than the rate (1 s of other work) never waits.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(l.consume(50_000, t2), Duration::ZERO);
        assert_eq!(l.consume(50_000, t2), Duration::ZERO);
        assert_eq!(l.consume(50_000, t2), Duration::from_millis(50));
    }

    #[test]
    fn huge_costs_saturate() {
        let l = RateLimiter::new(1, BURST);
        assert_eq!(l.cost(u64::MAX), Duration::from_nanos(u64::MAX));
    }

    mod on_disk {
        use std::cell::RefCell;
        use std::io::{Read, Seek, SeekFrom, Write};

        use cairn_proto::ids::ObjectId;

        use super::*;
        use crate::store::{ReadMode, Target, layout};

        fn chunk(o: u64) -> ChunkId {
            ChunkId {
                object: ObjectId(o),
                index: 0,
            }
        }

        /// A block nobody could mistake for another one.
        fn block(c: u64, b: u32) -> Vec<u8> {
            format!("cairn scrub test: chunk {c} block {b}; ")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(layout::BLOCK)
                .collect()
        }

        async fn put(s: &ShardStore, c: u64, blocks: u32) {
            let data: Vec<u8> = (0..blocks).flat_map(|b| block(c, b)).collect();
            let crcs = cairn_proto::frame::segment_crcs(0, &data);
            s.write_pending(chunk(c), 1, 0, &data, &crcs)
                .await
                .expect("write");
            s.commit(chunk(c), 1).await.expect("commit");
        }

        /// Flips one byte of the stored copy of `wanted` in `path`, with
        /// ordinary buffered I/O and a sync (a later O_DIRECT read sees it).
        fn corrupt(path: &std::path::Path, wanted: &[u8]) {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .expect("open data file");
            let mut buf = vec![0u8; 1 << 20];
            let mut base = 0u64;
            loop {
                let mut n = 0;
                while n < buf.len() {
                    match f.read(&mut buf[n..]).expect("read data file") {
                        0 => break,
                        m => n += m,
                    }
                }
                assert!(n > 0, "block not found in the data file");
                if let Some(i) = buf[..n]
                    .chunks_exact(layout::BLOCK)
                    .position(|b| b == wanted)
                {
                    let at = base + (i * layout::BLOCK) as u64 + 100;
                    f.seek(SeekFrom::Start(at)).expect("seek");
                    f.write_all(&[wanted[100] ^ 0xff]).expect("write");
                    f.sync_all().expect("sync");
                    return;
                }
                base += n as u64;
            }
        }

        #[test]
        fn a_pass_reports_a_flipped_byte_and_stops_promptly() {
            let dir = tempfile::tempdir().expect("tempdir");
            Target::format(dir.path(), 1).expect("format");
            let path = dir.path().to_path_buf();
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let target = Target::open(&path).expect("open target");
                    let store = Rc::new(target.open_shard(0).await.expect("open shard"));
                    put(&store, 1, 3).await;
                    put(&store, 2, 3).await;
                    corrupt(&target.data_path(0), &block(1, 1));

                    let metrics = Arc::new(Metrics::default());
                    let reports = Rc::new(RefCell::new(Vec::new()));
                    let stop = Rc::new(Cell::new(false));
                    let sink = reports.clone();
                    let task = glommio::spawn_local(run_scrubber(
                        store.clone(),
                        ScrubConfig {
                            bytes_per_sec: 0,
                            interval_between_passes: Duration::from_secs(3600),
                        },
                        metrics.clone(),
                        move |r| sink.borrow_mut().push(r),
                        stop.clone(),
                    ));
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while metrics.scrub_counts().2 == 0 {
                        assert!(Instant::now() < deadline, "no pass finished");
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                    // Stopping wakes it from the hour-long pause.
                    stop.set(true);
                    let t = Instant::now();
                    task.await;
                    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

                    assert_eq!(
                        *reports.borrow(),
                        vec![CorruptReport {
                            chunk: chunk(1),
                            bad_blocks: vec![1],
                        }]
                    );
                    assert_eq!(metrics.scrub_counts(), (2, 1, 1));
                    assert_eq!(metrics.crc_failures(), 1);
                    assert_eq!(metrics.scrub_progress(), 0.0);
                    let page = metrics.render();
                    assert!(page.contains("cairn_chunkserver_blocks_scrubbed_total 6\n"));
                    assert!(page.contains("cairn_chunkserver_scrub_bytes_total 24576\n"));
                    // Reads refuse the block too; its neighbours still read.
                    let bad = store.read(chunk(1), 4096, 10, ReadMode::Committed).await;
                    assert!(matches!(bad, Err(StoreError::Checksum { block: 1, .. })));
                    let ok = store.read(chunk(1), 8192, 10, ReadMode::Committed).await;
                    assert_eq!(&ok.expect("read block 2").data[..], &block(1, 2)[..10]);

                    // A paced pass: 9 blocks read (the bad chunk twice) at
                    // 72 KiB/s take 0.5 s, less the 0.1 s burst.
                    let mut limiter = RateLimiter::new(9 * 4096 * 2, BURST);
                    let t = Instant::now();
                    let s = scrub_pass(&store, &mut limiter, &metrics, &|_| {}, &Cell::new(false))
                        .await;
                    let took = t.elapsed();
                    assert!(
                        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
                        "{took:?}"
                    );
                    assert_eq!(
                        s,
                        PassSummary {
                            chunks: 2,
                            blocks: 6,
                            corrupt_chunks: 1,
                            corrupt_clones: 0,
                            errors: 0,
                            stopped: false,
                        }
                    );
                    drop(target);
                })
                .expect("spawn executor")
                .join()
                .expect("executor");
        }
    }
}
