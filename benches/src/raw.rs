//! The raw-disk baselines: the same I/O as the Cairn side, straight to a
//! file on the same disk with `O_DIRECT`, so neither side is served by
//! the page cache (the chunkserver's data file is `O_DIRECT` too, through
//! glommio's `DmaFile`).
//!
//! * [`write()`]: the pieces of a [`Layout`] by `depth` threads, each its own
//!   chunks' regions of one file in order (as Cairn's `depth` writers
//!   each fill their own chunks). The file is preallocated with
//!   `fallocate`, as the chunkserver preallocates its data file in
//!   extents. [`Sync::EachWrite`] makes each write durable
//!   (`fdatasync`) before the thread's next one, which is what a Cairn
//!   acknowledgement means; [`Sync::AtEnd`] syncs once after the last
//!   write (the disk's streaming ceiling; the sync is inside the time).
//! * [`read`]: the same pieces read back the same way.
//! * [`random_reads`]: 4 KiB preads at given aligned offsets, one at a
//!   time (queue depth 1) per thread, from one thread or several.
//! * [`in_threads`]: the threads every baseline runs on, their samples
//!   merged.
//!
//! Buffers are aligned for `O_DIRECT` without `unsafe`: a `Vec` with 4 KiB
//! to spare and its aligned sub-slice ([`AlignedBuf`]). All of this is
//! blocking; callers run it on a blocking thread.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FallocateFlags, OFlag, fallocate};

use crate::latency::Samples;
use crate::layout::{BLOCK, Layout};
use crate::measure::Measured;

/// Alignment `O_DIRECT` needs (the logical block size, at most 4 KiB).
const ALIGN: usize = 4096;

/// A heap buffer whose usable part starts at a 4 KiB boundary.
#[derive(Debug)]
pub struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Returns a zeroed buffer of `len` bytes aligned to 4 KiB.
    pub fn new(len: usize) -> Self {
        let buf = vec![0u8; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Self { buf, start, len }
    }

    /// Returns the aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Returns the aligned bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// When the raw writes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `fdatasync` after every write, before the thread's next one.
    EachWrite,
    /// One `fdatasync` after the last write.
    AtEnd,
}

/// Opens the file at `path` with `O_DIRECT`, for reading, or for writing
/// too when `create` (creating or truncating it).
///
/// # Errors
/// When it cannot be opened (`O_DIRECT` is refused on tmpfs, for one).
pub fn open_direct(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(create)
        .custom_flags(OFlag::O_DIRECT.bits())
        .open(path)
        .with_context(|| format!("opening {} with O_DIRECT", path.display()))
}

/// Writes the data set `layout` describes to a new file at `path`, every
/// piece holding `data` (one piece long); returns the writes' latencies
/// and the wall time, the final sync included.
///
/// # Errors
/// When the file cannot be created, preallocated, written or synced
/// (`O_DIRECT` is refused on tmpfs, for one).
pub fn write(path: &Path, layout: &Layout, data: &[u8], sync: Sync) -> Result<Measured> {
    if data.len() as u64 != layout.io_size {
        bail!("the write pattern is {} bytes, not one piece", data.len());
    }
    let file = open_direct(path, true)?;
    let len = i64::try_from(layout.bytes).context("data set too large")?;
    fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, len)
        .with_context(|| format!("preallocating {}", path.display()))?;
    // The allocation is durable before the clock starts, as the
    // chunkserver's data-file extents mostly are.
    file.sync_all()
        .with_context(|| format!("fsync of {}", path.display()))?;
    let start = Instant::now();
    let samples = per_piece(
        layout,
        "writer",
        || {
            let mut buf = AlignedBuf::new(data.len());
            buf.as_mut_slice().copy_from_slice(data);
            buf
        },
        |buf, b| {
            file.write_all_at(buf.as_slice(), b)
                .with_context(|| format!("O_DIRECT write at {b}"))?;
            if sync == Sync::EachWrite {
                file.sync_data().context("fdatasync")?;
            }
            Ok(())
        },
    )?;
    if sync == Sync::AtEnd {
        file.sync_data().context("the final fdatasync")?;
    }
    Ok(measured(layout, start, samples))
}

/// Reads back the data set [`write()`] wrote at `path`, with the same
/// threads and order; checks the first piece of every chunk against
/// `data`.
///
/// # Errors
/// When the file cannot be read or holds other bytes.
pub fn read(path: &Path, layout: &Layout, data: &[u8]) -> Result<Measured> {
    let file = open_direct(path, false)?;
    let start = Instant::now();
    let samples = per_piece(
        layout,
        "reader",
        || AlignedBuf::new(layout.io_size as usize),
        |buf, b| {
            file.read_exact_at(buf.as_mut_slice(), b)
                .with_context(|| format!("O_DIRECT read at {b}"))?;
            if layout.locate(b).1 == 0 && buf.as_slice() != data {
                bail!("the raw file holds other bytes at {b} than were written");
            }
            Ok(())
        },
    )?;
    Ok(measured(layout, start, samples))
}

/// Runs `op` on every piece of `layout` from `layout.depth` threads, each
/// with its own state from `setup` and its pieces in order, timing each
/// call; returns every sample.
fn per_piece<S>(
    layout: &Layout,
    who: &str,
    setup: impl Fn() -> S + std::marker::Sync,
    op: impl Fn(&mut S, u64) -> Result<()> + std::marker::Sync,
) -> Result<Samples> {
    in_threads(layout.depth, who, |w| {
        let mut state = setup();
        let pieces = layout.worker_pieces(w);
        let mut samples = Samples::with_capacity(pieces.len());
        for b in pieces {
            let t0 = Instant::now();
            op(&mut state, b)?;
            samples.record(t0.elapsed());
        }
        Ok(samples)
    })
}

/// Runs `work(w)` for `w` in `0..threads`, each on its own thread, and
/// merges the samples they return; the first error wins (`who` names the
/// threads if one panics).
///
/// # Errors
/// The first thread's error, or a panic.
pub fn in_threads(
    threads: usize,
    who: &str,
    work: impl Fn(usize) -> Result<Samples> + std::marker::Sync,
) -> Result<Samples> {
    let per_thread = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let work = &work;
                s.spawn(move || work(w))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a {who} thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut samples = Samples::default();
    for s in per_thread {
        samples.merge(s);
    }
    Ok(samples)
}

fn measured(layout: &Layout, start: Instant, samples: Samples) -> Measured {
    Measured {
        ops: samples.len(),
        bytes: layout.bytes,
        elapsed: start.elapsed(),
        samples,
        retries: 0,
    }
}

/// Reads one 4 KiB block at each offset of `picks` from the file at
/// `path`: the first `warmup` one at a time, unrecorded, then the rest by
/// `threads` threads, each taking every `threads`-th of them one at a time
/// (queue depth 1 per thread). Checks every block against `data` (the
/// piece pattern every piece holds).
///
/// # Errors
/// When the file cannot be read or holds other bytes.
pub fn random_reads(
    path: &Path,
    picks: &[u64],
    warmup: usize,
    data: &[u8],
    threads: usize,
) -> Result<Measured> {
    let file = open_direct(path, false)?;
    let read = |buf: &mut AlignedBuf, off: u64| -> Result<()> {
        file.read_exact_at(buf.as_mut_slice(), off)
            .with_context(|| format!("O_DIRECT read of 4 KiB at {off}"))?;
        let at = (off % data.len() as u64) as usize;
        if buf.as_slice() != &data[at..at + BLOCK as usize] {
            bail!("the raw file holds other bytes at {off} than were written");
        }
        Ok(())
    };
    let (warm, recorded) = picks.split_at(warmup.min(picks.len()));
    let mut buf = AlignedBuf::new(BLOCK as usize);
    for &off in warm {
        read(&mut buf, off)?;
    }
    let threads = threads.max(1);
    let start = Instant::now();
    let samples = in_threads(threads, "reader", |t| {
        let mut buf = AlignedBuf::new(BLOCK as usize);
        let mut samples = Samples::with_capacity(recorded.len() / threads + 1);
        for &off in recorded.iter().skip(t).step_by(threads) {
            let t0 = Instant::now();
            read(&mut buf, off)?;
            samples.record(t0.elapsed());
        }
        Ok(samples)
    })?;
    Ok(Measured {
        ops: samples.len(),
        bytes: samples.len() as u64 * BLOCK,
        elapsed: start.elapsed(),
        samples,
        retries: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [1usize, 4096, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.as_mut_slice().len(), len);
        }
    }
}
