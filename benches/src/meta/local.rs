//! The local-file-system baseline of the `meta` workload: the same four
//! phases as [`super::cairn`], with `std::fs` on a directory of the disk
//! the cluster's data lives on, by `C` threads (one directory each).
//!
//! Two variants, because the honest comparison depends on what is asked:
//!
//! * [`Durability::PageCache`]: plain syscalls. Nothing is durable when
//!   they return; this is the ceiling set by the kernel's dentry and page
//!   caches, which no networked, replicated service reaches.
//! * [`Durability::Fsync`]: every mutation is made durable before the next
//!   one starts, as every acknowledged Cairn mutation is durable on a
//!   majority of replicas: a create fsyncs the new file and its directory
//!   (the inode and the entry), a rename and an unlink fsync the
//!   directory. A stat is the same in both variants.
//!
//! Threads are real OS threads, so `C` clients here are `C` blocked
//! syscalls at a time, like `C` processes; ext4 then group-commits their
//! fsyncs in its journal, the local analogue of Raft group commit.
//!
//! A [`Worker`] works on any directory, so `cairn-bench small` runs the
//! same calls through a `cairn mount` (with [`Durability::PageCache`]:
//! no fsync, every Cairn mutation is durable when it returns) and adds
//! `mkdir` and `rmdir`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Phase, PhaseResult, SplitMix, SystemKind, SystemResult, file_name, renamed_name};
use crate::latency::Samples;
use crate::raw::in_threads;

/// Whether local mutations are made durable one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Plain syscalls, durable only when the kernel writes back.
    PageCache,
    /// fsync of the file (on create) and of the directory after every
    /// create, rename, unlink, mkdir and rmdir.
    Fsync,
}

/// One client: a thread's own directory, where it creates `f…` files
/// (renamed to `r…`) and `d…` directories.
pub struct Worker {
    dir: PathBuf,
    /// The directory, open for fsync.
    dir_file: File,
}

/// Name of the `i`-th directory a worker makes.
pub fn dir_name(i: usize) -> String {
    format!("d{i:07}")
}

impl Worker {
    /// Makes the directory `dir` (its parent must exist) and returns its
    /// worker.
    ///
    /// # Errors
    /// When it cannot be made or opened.
    pub fn new(dir: PathBuf) -> Result<Worker> {
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir_file = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        Ok(Worker { dir, dir_file })
    }

    fn sync_dir(&self, durability: Durability) -> Result<()> {
        if durability == Durability::Fsync {
            self.dir_file
                .sync_all()
                .with_context(|| format!("fsync of directory {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// Creates files `f0000000` to `f{n-1}` (`O_CREAT|O_EXCL|O_WRONLY`,
    /// then close).
    ///
    /// # Errors
    /// The first failed call, with the path.
    pub fn create(&self, n: usize, durability: Durability) -> Result<Samples> {
        Samples::time_each(0..n, |i| {
            let path = self.dir.join(file_name(i));
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            if durability == Durability::Fsync {
                f.sync_all()
                    .with_context(|| format!("fsync of {}", path.display()))?;
            }
            drop(f);
            self.sync_dir(durability)
        })
    }

    /// Stats file `f…` number `i` for each `i` of `picks`.
    ///
    /// # Errors
    /// The first failed call, with the path.
    pub fn stat(&self, picks: &[usize]) -> Result<Samples> {
        Samples::time_each(picks, |&i| {
            let path = self.dir.join(file_name(i));
            std::fs::metadata(&path).with_context(|| format!("stat of {}", path.display()))?;
            Ok(())
        })
    }

    /// Stats name `r…` number `i` for each `i` of `picks`, which must not
    /// exist (before [`Self::rename`] makes them).
    ///
    /// # Errors
    /// A name that exists, or another failure, with the path.
    pub fn stat_missing(&self, picks: &[usize]) -> Result<Samples> {
        Samples::time_each(picks, |&i| {
            let path = self.dir.join(renamed_name(i));
            match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("stat of {}", path.display())),
                Ok(_) => anyhow::bail!("{} exists", path.display()),
            }
        })
    }

    /// Renames files `f…` to `r…`, numbers `0..n`.
    ///
    /// # Errors
    /// The first failed call, with the paths.
    pub fn rename(&self, n: usize, durability: Durability) -> Result<Samples> {
        Samples::time_each(0..n, |i| {
            let from = self.dir.join(file_name(i));
            let to = self.dir.join(renamed_name(i));
            std::fs::rename(&from, &to)
                .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
            self.sync_dir(durability)
        })
    }

    /// Unlinks the renamed files `r…`, numbers `0..n`.
    ///
    /// # Errors
    /// The first failed call, with the path.
    pub fn unlink(&self, n: usize, durability: Durability) -> Result<Samples> {
        Samples::time_each(0..n, |i| {
            let path = self.dir.join(renamed_name(i));
            std::fs::remove_file(&path).with_context(|| format!("unlinking {}", path.display()))?;
            self.sync_dir(durability)
        })
    }

    /// Makes directories `d0000000` to `d{n-1}`; with
    /// [`Durability::Fsync`], fsyncs the worker's directory after each
    /// (which holds the new entry; ext4 commits the new directory's inode
    /// in the same journal transaction).
    ///
    /// # Errors
    /// The first failed call, with the path.
    pub fn mkdir(&self, n: usize, durability: Durability) -> Result<Samples> {
        Samples::time_each(0..n, |i| {
            let path = self.dir.join(dir_name(i));
            std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
            self.sync_dir(durability)
        })
    }

    /// Removes directories `d…`, numbers `0..n`.
    ///
    /// # Errors
    /// The first failed call, with the path.
    pub fn rmdir(&self, n: usize, durability: Durability) -> Result<Samples> {
        Samples::time_each(0..n, |i| {
            let path = self.dir.join(dir_name(i));
            std::fs::remove_dir(&path).with_context(|| format!("rmdir {}", path.display()))?;
            self.sync_dir(durability)
        })
    }
}

/// Runs `op(k, worker)` on every worker at once (one thread each, `k` the
/// worker's index) and returns the merged latencies and the wall time
/// until the last thread ended.
///
/// # Errors
/// The first worker's error.
pub fn on_workers(
    workers: &[Worker],
    op: impl Fn(usize, &Worker) -> Result<Samples> + Sync,
) -> Result<(Samples, Duration)> {
    let start = Instant::now();
    let samples = in_threads(workers.len(), "benchmark", |k| op(k, &workers[k]))?;
    Ok((samples, start.elapsed()))
}

/// Runs one phase on every worker at once (one thread each) and returns
/// its throughput and latencies; `picks[k]` are the files worker `k`
/// stats.
fn run_phase(
    workers: &[Worker],
    phase: Phase,
    per_client: usize,
    durability: Durability,
    picks: &[Vec<usize>],
) -> Result<PhaseResult> {
    let (samples, elapsed) = on_workers(workers, |k, w| match phase {
        Phase::Create => w.create(per_client, durability),
        Phase::Stat => w.stat(&picks[k]),
        Phase::Rename => w.rename(per_client, durability),
        Phase::Unlink => w.unlink(per_client, durability),
    })?;
    Ok(PhaseResult::new(phase, &samples, elapsed, None))
}

/// Runs the four phases with `clients` threads, `per_client` operations
/// each, under `root` (which must not exist yet, and is removed after).
///
/// # Errors
/// Any failed file-system call, with the path.
pub fn run(
    root: &Path,
    clients: usize,
    per_client: usize,
    durability: Durability,
    seed: u64,
) -> Result<SystemResult> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let workers = (0..clients)
        .map(|k| Worker::new(root.join(format!("client-{k:03}"))))
        .collect::<Result<Vec<_>>>()?;
    // Each client stats random files among its own creates.
    let picks: Vec<Vec<usize>> = (0..clients)
        .map(|k| {
            let mut rng = SplitMix::new(seed ^ k as u64);
            (0..per_client).map(|_| rng.below(per_client)).collect()
        })
        .collect();
    if durability == Durability::Fsync {
        // The client directories themselves are not part of what is
        // measured; make them durable before the first create.
        File::open(root)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync of {}", root.display()))?;
    }
    let kind = match durability {
        Durability::PageCache => SystemKind::Local,
        Durability::Fsync => SystemKind::LocalFsync,
    };
    let mut phases = Vec::with_capacity(Phase::ALL.len());
    for phase in Phase::ALL {
        let r = run_phase(&workers, phase, per_client, durability, &picks)?;
        super::progress(clients, kind, &r);
        phases.push(r);
    }
    drop(workers);
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    Ok(SystemResult::new(kind, phases))
}
