//! The local-file-system baseline of the small-files phases: the same
//! files, names and order as [`super::cairn::write_small`] and
//! [`super::cairn::read_small`], with `std::fs` in a directory on the disk
//! the servers' data lives on, by as many threads as Cairn has tasks.
//!
//! * Writes: create, write, `fsync` each file before the thread's next
//!   one — a Cairn `write_file` returns once the data is on every replica
//!   and the file's length is committed in meta. The directory is not
//!   fsynced per file (on ext4, a file's fsync commits the journal
//!   transaction that holds its new directory entry anyway).
//! * Reads: open with `O_DIRECT`, one read of the whole file, close. The
//!   files were just written, so without `O_DIRECT` every read would come
//!   from the page cache, which Cairn's chunkservers (`O_DIRECT` data
//!   files) never use; the kernel's dentry and inode caches stay warm, as
//!   meta's caches do.
//!
//! `cairn-bench small` uses the same calls without the fsync (a local
//! figure for reference, and writes through a `cairn mount`, whose close
//! is durable) and with buffered reads after it dropped the page cache.
//!
//! Blocking; callers run it on a blocking thread.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::latency::Samples;
use crate::measure::Measured;
use crate::meta::file_name;
use crate::raw::{AlignedBuf, in_threads, open_direct};

/// Writes `n` files `f0000000`, … of `data` into `dir` (created first,
/// outside the time) by `threads` threads, thread `t` writing files `t,
/// t + threads, …`, each created, written and closed; with `fsync`, the
/// directory is synced before the first and each file before its close.
///
/// # Errors
/// Any failed call, with the path.
pub fn write_small(
    dir: &Path,
    n: usize,
    threads: usize,
    data: &[u8],
    fsync: bool,
) -> Result<Measured> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if fsync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync of {}", dir.display()))?;
    }
    let start = Instant::now();
    let samples = in_threads(threads, "writer", |t| {
        let mut samples = Samples::with_capacity(n / threads + 1);
        for i in (t..n).step_by(threads) {
            let path = dir.join(file_name(i));
            let t0 = Instant::now();
            let mut f =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            f.write_all(data)
                .and_then(|()| if fsync { f.sync_all() } else { Ok(()) })
                .with_context(|| format!("writing {}", path.display()))?;
            drop(f);
            samples.record(t0.elapsed());
        }
        Ok(samples)
    })?;
    Ok(Measured::new(
        samples,
        (n * data.len()) as u64,
        start.elapsed(),
    ))
}

/// Reads the files [`write_small`] wrote in `dir` in the order of `order`
/// by `threads` threads, thread `t` reading every `threads`-th file of
/// `order` from the `t`-th on, each opened (with `O_DIRECT` when
/// `direct`), read whole and closed; checks each against `data` (whose
/// length must be a multiple of 4 KiB with `direct`).
///
/// # Errors
/// Any failed call, or a file holding other bytes.
pub fn read_small(
    dir: &Path,
    order: &[usize],
    threads: usize,
    data: &[u8],
    direct: bool,
) -> Result<Measured> {
    let start = Instant::now();
    let samples = in_threads(threads, "reader", |t| {
        let mut buf = AlignedBuf::new(data.len());
        let mut samples = Samples::with_capacity(order.len() / threads + 1);
        for &i in order.iter().skip(t).step_by(threads) {
            let path = dir.join(file_name(i));
            let t0 = Instant::now();
            let f = if direct {
                open_direct(&path, false)?
            } else {
                File::open(&path).with_context(|| format!("opening {}", path.display()))?
            };
            f.read_exact_at(buf.as_mut_slice(), 0)
                .with_context(|| format!("reading {}", path.display()))?;
            drop(f);
            samples.record(t0.elapsed());
            if buf.as_slice() != data {
                bail!("{} holds other bytes than were written", path.display());
            }
        }
        Ok(samples)
    })?;
    Ok(Measured::new(
        samples,
        (order.len() * data.len()) as u64,
        start.elapsed(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_then_reads_back_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        if crate::machine::fs_of(dir.path()).is_some_and(|f| f.fs_type == "tmpfs") {
            eprintln!("skipped: the temporary directory is on tmpfs, which has no O_DIRECT");
            return;
        }
        let data = crate::layout::pattern(8192, 1);
        let w = write_small(dir.path(), 10, 3, &data, true).unwrap();
        assert_eq!((w.ops, w.bytes), (10, 81_920));
        let order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7];
        let r = read_small(dir.path(), &order, 2, &data, true).unwrap();
        assert_eq!((r.ops, r.bytes), (10, 81_920));
        let other = crate::layout::pattern(8192, 2);
        assert!(read_small(dir.path(), &order, 2, &other, true).is_err());
        let plain = dir.path().join("plain");
        write_small(&plain, 4, 2, &other, false).unwrap();
        let r = read_small(&plain, &[2, 0, 3, 1], 1, &other, false).unwrap();
        assert_eq!((r.ops, r.bytes), (4, 32_768));
    }
}
