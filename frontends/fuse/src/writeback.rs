//! Write-behind for writes through the mount.
//!
//! The kernel hands a writer's data over in requests of at most 1 MiB and
//! waits for each before the application's `write(2)` returns. Sent to the
//! chain one by one, each would cost a synced replicated write: a
//! checkpoint written through the mount would crawl at one 1 MiB chain
//! write at a time. Instead, contiguous writes are gathered into pieces of
//! up to [`PIECE`] bytes (the client's `max_write`), and full pieces are
//! written in the background, [`MAX_IN_FLIGHT`] per file at a time and at
//! most the mount's budget of bytes in all — so `write(2)` returns once
//! the data is in memory, as on every network file system with a write
//! cache (NFS, CephFS, JuiceFS).
//!
//! What is promised, and when:
//! - `fsync(2)` and `close(2)` (FLUSH) return once every byte written
//!   before them is on every replica and the length is on meta; a write
//!   that failed in the background fails them with its error (ENOSPC from
//!   a full cluster, EIO for most others), and so does every `write(2)`
//!   after it failed until then, so a checkpoint is never reported saved
//!   when it is not and a writer filling a full cluster stops at once.
//! - Reads through the mount see the writes: the kernel's page cache has
//!   them, and a read that reaches us first waits for pending ones.
//! - Writes never overtake each other on overlapping bytes: a piece waits
//!   for earlier pieces it overlaps before it is sent.
//!
//! `--no-write-back` makes every `write(2)` synchronous instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use cairn_client::{CairnStatus, File};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Largest piece sent in one write (the client's `max_write`).
pub const PIECE: usize = 8 << 20;
/// Pieces of one file in flight at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Unit of the mount-wide budget of bytes in flight.
pub const BUDGET_UNIT: usize = 1 << 20;

type Result<T> = std::result::Result<T, CairnStatus>;

/// Write-behind state of one open inode.
pub struct WriteBack {
    file: Arc<File>,
    budget: Arc<Semaphore>,
    state: Mutex<State>,
    /// Highest end offset written through this inode (for `getattr`).
    end: AtomicU64,
}

#[derive(Default)]
struct State {
    buf: BytesMut,
    start: u64,
    in_flight: Vec<InFlight>,
    /// A background write failed; reported by every write until a flush
    /// or fsync reports it too and clears it.
    error: Option<CairnStatus>,
}

struct InFlight {
    from: u64,
    to: u64,
    task: JoinHandle<Result<()>>,
}

/// Whether `[a, b)` and `[c, d)` share a byte.
fn overlaps(a: u64, b: u64, c: u64, d: u64) -> bool {
    a < d && c < b
}

impl WriteBack {
    /// Write-behind over `file`, drawing on `budget` (permits of
    /// [`BUDGET_UNIT`] bytes, shared by the mount).
    pub fn new(file: Arc<File>, budget: Arc<Semaphore>) -> Self {
        let end = file.len();
        Self {
            file,
            budget,
            state: Mutex::new(State::default()),
            end: AtomicU64::new(end),
        }
    }

    /// The file it writes.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The file's length counting writes not yet on the replicas.
    pub fn file_len(&self) -> u64 {
        self.end.load(Ordering::Acquire).max(self.file.len())
    }

    /// Takes `data` for `offset`; returns once it is buffered (or sent).
    ///
    /// # Errors
    /// A background write failed since the last flush or fsync.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut s = self.state.lock().await;
        // Every write that ended reports now, not once MAX_IN_FLIGHT later
        // pieces (up to 32 MiB buffered for nothing) push it out.
        collect(&mut s, |f| f.task.is_finished()).await;
        // Kept for the flush or fsync too: a program that goes on to them
        // learns its data is not all stored, whatever it made of this.
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        let contiguous = !s.buf.is_empty() && s.start + s.buf.len() as u64 == offset;
        if !contiguous || s.buf.len() + data.len() > PIECE {
            self.submit(&mut s).await;
            s.start = offset;
        }
        s.buf.extend_from_slice(data);
        self.end
            .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
        if s.buf.len() >= PIECE {
            self.submit(&mut s).await;
        }
        Ok(())
    }

    /// Sends the buffered piece in the background, after waiting for
    /// pieces it overlaps and for a slot.
    async fn submit(&self, s: &mut State) {
        if s.buf.is_empty() {
            return;
        }
        let data: Bytes = std::mem::take(&mut s.buf).freeze();
        let (from, to) = (s.start, s.start + data.len() as u64);
        // Earlier writes to the same bytes land first.
        collect(s, |f| overlaps(from, to, f.from, f.to)).await;
        while s.in_flight.len() >= MAX_IN_FLIGHT {
            let f = s.in_flight.remove(0);
            record(s, f.task.await);
        }
        let units = u32::try_from(data.len().div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        let permit: Option<OwnedSemaphorePermit> =
            self.budget.clone().acquire_many_owned(units).await.ok();
        let file = self.file.clone();
        let task = tokio::spawn(async move {
            let r = file.write_at(from, data).await;
            drop(permit);
            r
        });
        s.in_flight.push(InFlight { from, to, task });
    }

    /// Sends what is buffered and waits for every write in flight.
    ///
    /// # Errors
    /// The first background write that failed since the last report.
    pub async fn settle(&self) -> Result<()> {
        let mut s = self.state.lock().await;
        self.submit(&mut s).await;
        for f in std::mem::take(&mut s.in_flight) {
            record(&mut s, f.task.await);
        }
        match s.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records that the file was truncated or extended to `len` (after a
    /// [`Self::settle`]): the length no longer counts earlier writes.
    pub fn set_len(&self, len: u64) {
        self.end.store(len, Ordering::Release);
    }

    /// Whether nothing is buffered or in flight (without waiting).
    pub fn is_idle(&self) -> bool {
        self.state
            .try_lock()
            .is_ok_and(|s| s.buf.is_empty() && s.in_flight.is_empty())
    }
}

/// Waits for the writes in flight that `pick` selects (at once for those
/// that ended) and records how they ended.
async fn collect(s: &mut State, pick: impl Fn(&InFlight) -> bool) {
    let mut i = 0;
    while i < s.in_flight.len() {
        if pick(&s.in_flight[i]) {
            let f = s.in_flight.remove(i);
            record(s, f.task.await);
        } else {
            i += 1;
        }
    }
}

fn record(s: &mut State, r: std::result::Result<Result<()>, tokio::task::JoinError>) {
    let r = match r {
        Ok(r) => r,
        Err(e) => Err(CairnStatus::new(
            cairn_client::ErrorCode::Internal,
            format!("background write task: {e}"),
        )),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "a background write failed; the next writes and the flush or fsync report it");
        s.error.get_or_insert(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_half_open() {
        assert!(overlaps(0, 10, 5, 6));
        assert!(overlaps(5, 6, 0, 10));
        assert!(!overlaps(0, 10, 10, 20));
        assert!(!overlaps(10, 20, 0, 10));
        assert!(overlaps(0, 10, 9, 11));
    }
}
