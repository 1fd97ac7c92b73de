//! Stall detection: a shard with a request stuck says so in the log, with
//! what the request is and what the shard's durability steps are doing.
//!
//! A request waits on the chunk's lock, its own DMA I/O, a forward down the
//! chain (bounded by the peer timeout), and the shard's two group-committed
//! durability steps: the data file's `fdatasync` and the block map's flush
//! (sled's flush plus an `fdatasync` of its file, on a blocking thread). A
//! disk that stops answering, or a flush that never returns, holds every
//! writer of the shard behind it (and every later write of the same chunk
//! behind the chunk's lock) while other requests go on, and from outside it
//! looks like a chunkserver that times out for no reason.
//!
//! Each shard keeps a [`Progress`], atomics shared with a watchdog thread
//! that owns no executor (so it also sees a shard whose executor is
//! wedged): a fixed table of the requests in flight (when each started,
//! its opcode and chunk; no allocation per request, and a request that
//! finds the table full is simply not watched) and since when each
//! durability step has been running. When the oldest request has been in
//! flight for [`STALL_AFTER`], the watchdog logs a warning naming it and
//! the step running longest, again every [`STALL_AFTER`] while that lasts,
//! and once when no request is that old any more.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_proto::frame::Opcode;
use cairn_proto::ids::{ChunkId, ObjectId};

/// How old a request in flight may get before the watchdog warns (healthy
/// requests take milliseconds; the client gives up on one after 10 s).
pub const STALL_AFTER: Duration = Duration::from_secs(3);

/// How often the watchdog looks.
const POLL: Duration = Duration::from_millis(250);

/// Requests watched per shard at once.
const SLOTS: usize = 256;

/// A durability step whose running time [`Progress`] tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The data file's `fdatasync`.
    DataSync,
    /// The block map's flush (sled flush and `fdatasync`).
    MetaFlush,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Self::DataSync => "data file fdatasync",
            Self::MetaFlush => "block map flush",
        }
    }
}

/// One request in flight: `(started ms + 1) << 8 | opcode` (0: free), and
/// its chunk.
#[derive(Debug, Default)]
struct Slot {
    started_op: AtomicU64,
    object: AtomicU64,
    index: AtomicU64,
}

/// One shard's requests in flight and durability steps, shared with the
/// watchdog. Only the shard's thread takes and frees slots.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    slots: Box<[Slot]>,
    /// Where the next free-slot search starts (shard thread only).
    next: AtomicU64,
    /// Milliseconds after `epoch` plus one at which the running data sync
    /// started; 0 when none runs.
    data_sync: AtomicU64,
    /// The same for the block map's flush.
    meta_flush: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            next: AtomicU64::new(0),
            data_sync: AtomicU64::new(0),
            meta_flush: AtomicU64::new(0),
        }
    }
}

/// Watches a request until dropped.
#[derive(Debug)]
pub struct RequestGuard<'a>(Option<&'a Slot>);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            slot.started_op.store(0, Ordering::Relaxed);
        }
    }
}

/// Marks a durability step running until dropped.
#[derive(Debug)]
pub struct StepGuard<'a>(&'a AtomicU64);

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The oldest request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oldest {
    /// How long it has been in flight.
    pub age: Duration,
    /// What it asks for.
    pub opcode: Option<Opcode>,
    /// The chunk it names.
    pub chunk: ChunkId,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 9)
    }

    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX >> 9)
    }

    fn step_slot(&self, step: Step) -> &AtomicU64 {
        match step {
            Step::DataSync => &self.data_sync,
            Step::MetaFlush => &self.meta_flush,
        }
    }

    /// Watches a request for `chunk`, which arrived at `started` (the
    /// caller's own clock reading: no second one per request), until the
    /// guard drops. Called only on the shard's thread.
    pub fn request(&self, opcode: Opcode, chunk: ChunkId, started: Instant) -> RequestGuard<'_> {
        let n = self.slots.len();
        let start = self.next.load(Ordering::Relaxed) as usize;
        for i in 0..n {
            let k = (start + i) % n;
            let slot = &self.slots[k];
            if slot.started_op.load(Ordering::Relaxed) == 0 {
                self.next.store(((k + 1) % n) as u64, Ordering::Relaxed);
                slot.object.store(chunk.object.0, Ordering::Relaxed);
                slot.index.store(chunk.index, Ordering::Relaxed);
                let v = ((self.ms_at(started) + 1) << 8) | u64::from(opcode as u8);
                slot.started_op.store(v, Ordering::Relaxed);
                return RequestGuard(Some(slot));
            }
        }
        RequestGuard(None)
    }

    /// Marks `step` running until the guard drops (a shard runs at most
    /// one of each at a time: they are group-committed).
    pub fn step(&self, step: Step) -> StepGuard<'_> {
        let slot = self.step_slot(step);
        slot.store(self.now_ms() + 1, Ordering::Relaxed);
        StepGuard(slot)
    }

    /// How long `step` has been running at `now`, if it is.
    pub fn running(&self, step: Step, now: Instant) -> Option<Duration> {
        match self.step_slot(step).load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(
                self.ms_at(now).saturating_sub(at - 1),
            )),
        }
    }

    /// The durability step running longest at `now`, with how long.
    fn longest_step(&self, now: Instant) -> Option<(Step, Duration)> {
        [Step::DataSync, Step::MetaFlush]
            .into_iter()
            .filter_map(|s| self.running(s, now).map(|d| (s, d)))
            .max_by_key(|(_, d)| *d)
    }

    /// The oldest request in flight at `now`.
    pub fn oldest(&self, now: Instant) -> Option<Oldest> {
        let (mut best, mut at) = (0u64, None);
        for (k, slot) in self.slots.iter().enumerate() {
            let v = slot.started_op.load(Ordering::Relaxed);
            if v != 0 && (best == 0 || v >> 8 < best >> 8) {
                best = v;
                at = Some(k);
            }
        }
        let slot = &self.slots[at?];
        Some(Oldest {
            age: Duration::from_millis(self.ms_at(now).saturating_sub((best >> 8) - 1)),
            opcode: Opcode::from_u8((best & 0xff) as u8),
            chunk: ChunkId {
                object: ObjectId(slot.object.load(Ordering::Relaxed)),
                index: slot.index.load(Ordering::Relaxed),
            },
        })
    }
}

/// What the watchdog concluded about one shard at one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No request is older than [`STALL_AFTER`] (and none was at the last
    /// warning), or the warning is not due again yet.
    Fine,
    /// A request has been in flight for [`STALL_AFTER`] or more: warn.
    Stalled(Oldest),
    /// No request is that old any more, after a warning.
    Recovered,
}

/// The watchdog's memory of one shard.
#[derive(Debug, Default)]
pub struct Watch {
    /// When the last warning of the current stall was logged.
    warned: Cell<Option<Instant>>,
}

impl Watch {
    /// Looks at `p` at time `now`: [`Verdict::Stalled`] at most once per
    /// [`STALL_AFTER`] while a request that old is in flight,
    /// [`Verdict::Recovered`] once after.
    pub fn look(&self, p: &Progress, now: Instant) -> Verdict {
        match p.oldest(now).filter(|o| o.age >= STALL_AFTER) {
            None => match self.warned.take() {
                Some(_) => Verdict::Recovered,
                None => Verdict::Fine,
            },
            Some(o) => {
                let due = self
                    .warned
                    .get()
                    .is_none_or(|w| now.saturating_duration_since(w) >= STALL_AFTER);
                if due {
                    self.warned.set(Some(now));
                    Verdict::Stalled(o)
                } else {
                    Verdict::Fine
                }
            }
        }
    }
}

/// Starts the watchdog over every shard's progress; it ends when `stop`
/// is set.
pub fn spawn_watchdog(shards: Vec<Arc<Progress>>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let watches: Vec<Watch> = shards.iter().map(|_| Watch::default()).collect();
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(POLL);
            let now = Instant::now();
            for (k, (p, w)) in shards.iter().zip(&watches).enumerate() {
                match w.look(p, now) {
                    Verdict::Fine => {}
                    Verdict::Stalled(o) => {
                        let step = p.longest_step(now).map_or_else(
                            || "no durability step is running".to_string(),
                            |(s, ran)| format!("the {} has been running for {ran:?}", s.name()),
                        );
                        tracing::warn!(
                            shard = k,
                            "a {} of {} has been in flight for {:?}: {step}",
                            o.opcode.map_or("request", Opcode::name),
                            o.chunk,
                            o.age
                        );
                    }
                    Verdict::Recovered => {
                        tracing::info!(shard = k, "no request is stuck any more");
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(o: u64) -> ChunkId {
        ChunkId {
            object: ObjectId(o),
            index: 2,
        }
    }

    #[test]
    fn warns_about_the_oldest_request_once_per_period_and_once_after() {
        let p = Progress::default();
        let w = Watch::default();
        let t0 = Instant::now();
        assert_eq!(w.look(&p, t0), Verdict::Fine, "idle");
        let stuck = p.request(Opcode::Write, c(7), t0);
        let later = t0 + STALL_AFTER / 2;
        // Other requests come and go meanwhile.
        for _ in 0..1000 {
            drop(p.request(Opcode::Read, c(8), later));
        }
        assert_eq!(w.look(&p, later), Verdict::Fine);
        let at = t0 + STALL_AFTER + POLL;
        let Verdict::Stalled(o) = w.look(&p, at) else {
            panic!(
                "a request in flight for {:?} is not reported",
                STALL_AFTER + POLL
            );
        };
        assert_eq!((o.opcode, o.chunk), (Some(Opcode::Write), c(7)));
        assert!(o.age >= STALL_AFTER, "{:?}", o.age);
        assert_eq!(w.look(&p, at + POLL), Verdict::Fine, "not again at once");
        assert!(matches!(w.look(&p, at + STALL_AFTER), Verdict::Stalled(_)));
        drop(stuck);
        assert_eq!(w.look(&p, at + STALL_AFTER * 2), Verdict::Recovered);
        assert_eq!(w.look(&p, at + STALL_AFTER * 3), Verdict::Fine);
    }

    #[test]
    fn a_full_table_leaves_requests_unwatched_not_broken() {
        let p = Progress::default();
        let held: Vec<_> = (0..SLOTS as u64)
            .map(|i| p.request(Opcode::Read, c(i), Instant::now()))
            .collect();
        let extra = p.request(Opcode::Write, c(999), Instant::now());
        assert!(extra.0.is_none());
        drop(held);
        let t = Instant::now() + STALL_AFTER * 2;
        assert!(p.oldest(t).is_none(), "every slot freed");
        let _again = p.request(Opcode::Write, c(5), Instant::now());
        assert_eq!(p.oldest(t).unwrap().chunk, c(5));
    }

    #[test]
    fn names_the_step_running_longest() {
        let p = Progress::default();
        let now = || Instant::now();
        assert!(p.longest_step(now()).is_none());
        let g = p.step(Step::MetaFlush);
        std::thread::sleep(Duration::from_millis(20));
        let _d = p.step(Step::DataSync);
        let (s, ran) = p.longest_step(now()).unwrap();
        assert_eq!(s, Step::MetaFlush);
        assert!(ran >= Duration::from_millis(20), "{ran:?}");
        drop(g);
        assert_eq!(p.longest_step(now()).unwrap().0, Step::DataSync);
        assert!(p.running(Step::MetaFlush, now()).is_none());
    }
}
