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

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Phase, PhaseResult, SplitMix, SystemKind, SystemResult, file_name, renamed_name};
use crate::latency::Samples;

/// Whether local mutations are made durable one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Plain syscalls, durable only when the kernel writes back.
    PageCache,
    /// fsync of the file (on create) and of the directory after every
    /// create, rename and unlink.
    Fsync,
}

/// One client: a thread's directory and what it created.
struct Worker {
    dir: PathBuf,
    /// The directory, open for fsync.
    dir_file: File,
    created: usize,
    rng: SplitMix,
}

impl Worker {
    fn sync_dir(&self, durability: Durability) -> Result<()> {
        if durability == Durability::Fsync {
            self.dir_file
                .sync_all()
                .with_context(|| format!("fsync of directory {}", self.dir.display()))?;
        }
        Ok(())
    }

    fn create(&mut self, n: usize, durability: Durability) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        for i in 0..n {
            let path = self.dir.join(file_name(i));
            let start = Instant::now();
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
            self.sync_dir(durability)?;
            samples.record(start.elapsed());
            self.created += 1;
        }
        Ok(samples)
    }

    fn stat(&mut self, n: usize) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        for _ in 0..n {
            let path = self.dir.join(file_name(self.rng.below(self.created)));
            let start = Instant::now();
            std::fs::metadata(&path).with_context(|| format!("stat of {}", path.display()))?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }

    fn rename(&mut self, n: usize, durability: Durability) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        for i in 0..n {
            let from = self.dir.join(file_name(i));
            let to = self.dir.join(renamed_name(i));
            let start = Instant::now();
            std::fs::rename(&from, &to)
                .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
            self.sync_dir(durability)?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }

    fn unlink(&mut self, n: usize, durability: Durability) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        for i in 0..n {
            let path = self.dir.join(renamed_name(i));
            let start = Instant::now();
            std::fs::remove_file(&path).with_context(|| format!("unlinking {}", path.display()))?;
            self.sync_dir(durability)?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }
}

/// Runs one phase on every worker at once (one thread each) and returns
/// its throughput and latencies.
fn run_phase(
    workers: &mut [Worker],
    phase: Phase,
    per_client: usize,
    durability: Durability,
) -> Result<PhaseResult> {
    let start = Instant::now();
    let results: Vec<Result<Samples>> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .map(|w| {
                s.spawn(move || match phase {
                    Phase::Create => w.create(per_client, durability),
                    Phase::Stat => w.stat(per_client),
                    Phase::Rename => w.rename(per_client, durability),
                    Phase::Unlink => w.unlink(per_client, durability),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a benchmark thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut all = Samples::with_capacity(per_client * workers.len());
    for r in results {
        all.merge(r?);
    }
    Ok(PhaseResult::new(phase, &all, elapsed, None))
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
    let mut workers = (0..clients)
        .map(|k| {
            let dir = root.join(format!("client-{k:03}"));
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir_file =
                File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
            Ok(Worker {
                dir,
                dir_file,
                created: 0,
                rng: SplitMix::new(seed ^ k as u64),
            })
        })
        .collect::<Result<Vec<_>>>()?;
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
        let r = run_phase(&mut workers, phase, per_client, durability)?;
        super::progress(clients, kind, &r);
        phases.push(r);
    }
    drop(workers);
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    Ok(SystemResult::new(kind, phases))
}
