//! The syscall side of the `small` workload: one directory tree worked on
//! with `std::fs` from OS threads, on the `cairn mount` or on a local
//! directory. The namespace phases are the `meta` workload's local
//! [`Worker`]s (one per thread, each in its own directory); the small
//! files are the `client` workload's local functions, with buffered reads
//! (the workload drops the page cache before each read phase).
//!
//! Blocking; callers run it on a blocking thread.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::{Job, Op};
use crate::client::local::{read_small, write_small};
use crate::latency::Samples;
use crate::measure::Measured;
use crate::meta::local::{Durability, Worker, on_workers};

/// One system driven through syscalls.
pub struct Posix {
    root: PathBuf,
    /// Where the read phases read (`root` unless [`Posix::reading`]).
    reads: PathBuf,
    durability: Durability,
    /// The worker of the 1-thread phases.
    single: Vec<Worker>,
    /// The workers of the concurrent phases.
    many: Vec<Worker>,
}

impl Posix {
    /// Makes `root` and the workers' directories in it (`x1-0` and
    /// `xT-0` … `xT-{T-1}` for `threads` T); with [`Durability::Fsync`],
    /// syncs `root` so that the directories are durable before anything
    /// is measured.
    ///
    /// # Errors
    /// When a directory cannot be made or synced.
    pub fn new(root: PathBuf, threads: usize, durability: Durability) -> Result<Posix> {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let workers = |n: usize| {
            (0..n)
                .map(|k| Worker::new(root.join(format!("x{n}-{k}"))))
                .collect::<Result<Vec<_>>>()
        };
        let single = workers(1)?;
        let many = if threads == 1 {
            Vec::new()
        } else {
            workers(threads)?
        };
        if durability == Durability::Fsync {
            File::open(&root)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync of {}", root.display()))?;
        }
        Ok(Posix {
            reads: root.clone(),
            root,
            durability,
            single,
            many,
        })
    }

    /// The read phases read the small files under `root` instead: those
    /// another client wrote.
    #[must_use]
    pub fn reading(mut self, root: PathBuf) -> Posix {
        self.reads = root;
        self
    }

    /// Runs `job`.
    ///
    /// # Errors
    /// The first failed call, with its path.
    pub fn run(&self, job: &Job) -> Result<Measured> {
        let (d, n) = (self.durability, job.count);
        let dir = self.root.join(job.small_dir());
        match job.op {
            Op::Write => write_small(&dir, n, job.threads, &job.data, d == Durability::Fsync),
            Op::Read | Op::Reread => {
                let dir = self.reads.join(job.small_dir());
                read_small(&dir, &job.order, job.threads, &job.data, false)
            }
            Op::Create => self.namespace(job, |w| w.create(n, d)),
            Op::Stat => self.namespace(job, |w| w.stat(&job.order)),
            Op::Missing => self.namespace(job, |w| w.stat_missing(&job.order)),
            Op::Rename => self.namespace(job, |w| w.rename(n, d)),
            Op::Unlink => self.namespace(job, |w| w.unlink(n, d)),
            Op::Mkdir => self.namespace(job, |w| w.mkdir(n, d)),
            Op::Rmdir => self.namespace(job, |w| w.rmdir(n, d)),
        }
    }

    /// Runs `op` on the workers of `job`'s thread count, all at once.
    fn namespace(
        &self,
        job: &Job,
        op: impl Fn(&Worker) -> Result<Samples> + Sync,
    ) -> Result<Measured> {
        let workers = if job.threads == 1 {
            &self.single
        } else {
            &self.many
        };
        if workers.len() != job.threads {
            bail!("no workers for {} threads", job.threads);
        }
        let (samples, elapsed) = on_workers(workers, |_, w| op(w))?;
        Ok(Measured::new(samples, 0, elapsed))
    }
}
