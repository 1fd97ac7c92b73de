//! `cairn-bench`: end-to-end benchmarks of Cairn against real processes.
//!
//! Every workload is a subcommand of the `cairn-bench` binary and follows
//! the same rules, because figures from a shared, noisy 2-core machine are
//! only worth their ratios (see `NOTES.md`):
//!
//! * **A baseline in the same run.** Each workload measures the closest
//!   local equivalent (the local file system, the raw disk) right beside
//!   Cairn and reports Cairn ÷ baseline. Compare ratios across runs and
//!   machines, not absolute numbers.
//! * **Every process's memory.** The peak resident memory (`VmHWM`) of
//!   every process a workload starts, and of the benchmark itself, is
//!   reported beside throughput and latency (DESIGN §10).
//! * **Every figure in JSON.** `--json FILE` writes everything the table
//!   shows and more (per-replica counters, max and mean latencies), with
//!   the machine (`nproc`, kernel) and the command line, so runs can be
//!   compared by a script later.
//! * **Real processes, release builds.** Servers are the release binaries
//!   next to the benchmark's own executable (`target/release/`), started
//!   on loopback through the `cairn-jepsen` harness — the same launcher the
//!   system tests use, so a benchmark never drifts from how the servers are
//!   really started.
//!
//! Modules:
//!
//! * [`meta`]: `cairn-bench meta`, metadata operations per second.
//! * [`chunk`]: `cairn-bench chunk`, chunkserver read latency and write and
//!   read throughput beside the raw disk and network.
//! * [`client`]: `cairn-bench client`, the client library end to end
//!   (sequential reads, checkpoint writes, random reads, small files) on
//!   a 3-meta, 3-chunkserver cluster beside the raw disk, the network and
//!   the local file system.
//! * [`fuse`]: `cairn-bench fuse`, a `cairn mount` beside the native
//!   client and the same fio jobs on the local file system.
//! * [`small`]: `cairn-bench small`, metadata and small-file operations
//!   through a `cairn mount`, through the native client and on the local
//!   file system (plain and fsynced).
//! * [`snapshot`]: `cairn-bench snapshot`, what a volume snapshot costs:
//!   taking one, the first write after it, creates, its space.
//! * [`mount`]: the servers, a volume and its `cairn mount`, for the
//!   workloads that go through FUSE.
//! * [`cluster`]: the meta cluster a workload runs against.
//! * [`servers`]: meta plus chunkservers, for the data-path workloads, and
//!   what those check before they start them.
//! * [`watch`]: what the servers did during a run (handling times, CPU).
//! * [`measure`]: a system's figures in a phase and the ratios between
//!   Cairn and its baselines.
//! * [`raw`], [`pingpong`], [`layout`]: the raw-disk and network baselines
//!   and how a data set is cut for them.
//! * [`latency`]: latency samples and percentiles.
//! * [`machine`]: machine description, file-system type, peak RSS.
//! * [`report`]: formatting helpers and the JSON file.
//!
//! A new workload is a new module with its `Args` (flattening
//! [`CommonArgs`]), a `run` returning a serializable report, and a table
//! printer; `main.rs` only dispatches.

pub mod allocs;
pub mod chunk;
pub mod client;
pub mod cluster;
pub mod fuse;
pub mod latency;
pub mod layout;
pub mod machine;
pub mod measure;
pub mod meta;
pub mod mount;
pub mod pingpong;
pub mod raw;
pub mod repair;
pub mod report;
pub mod servers;
pub mod small;
pub mod snapshot;
pub mod watch;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

/// Environment variable naming the directory that holds the Cairn binaries
/// (shared with `cairn-jepsen`).
pub const BIN_DIR_ENV: &str = "CAIRN_BIN_DIR";

/// Options every workload takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Also write every figure, the machine and the command line to FILE as
    /// JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Directory in which the run makes its working directory (the servers'
    /// data and logs, the local baseline's files). Put it on the disk you
    /// mean to measure; tmpfs makes every fsync free. [default: $TMPDIR or
    /// /tmp]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory holding the release binaries to start (cairn-meta, …).
    /// [default: the directory of this executable, i.e. target/release]
    #[arg(long, value_name = "DIR", env = BIN_DIR_ENV)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the working directory (data and server logs) instead of
    /// removing it at the end.
    #[arg(long)]
    pub keep_data: bool,
}

impl CommonArgs {
    /// Returns the directory to take server binaries from.
    ///
    /// # Errors
    /// When no --bin-dir is given and this executable's path is unknown.
    pub fn bin_dir(&self) -> Result<PathBuf> {
        if let Some(d) = self.bin_dir.as_ref().filter(|d| !d.as_os_str().is_empty()) {
            return Ok(d.clone());
        }
        let exe = std::env::current_exe().context("finding this executable's directory")?;
        let mut dir = exe
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        // `cargo test`/`cargo bench` executables live in target/<profile>/deps.
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Ok(dir)
    }

    /// Returns a new, empty working directory named `prefix…` inside
    /// --data-dir (or the system's temporary directory).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn work_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let parent = self.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&parent)
            .with_context(|| format!("creating a working directory in {}", parent.display()))
    }

    /// Removes the working directory, or keeps it (and says where) with
    /// --keep-data.
    ///
    /// # Errors
    /// When it cannot be removed.
    pub fn finish_work_dir(&self, dir: tempfile::TempDir) -> Result<()> {
        if self.keep_data {
            let kept = dir.keep();
            eprintln!("kept the working directory {}", kept.display());
            return Ok(());
        }
        let path = dir.path().to_path_buf();
        dir.close()
            .with_context(|| format!("removing {}", path.display()))
    }
}

/// The peak resident memory of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRss {
    /// What the process is (`cairn-meta node 1`, `cairn-bench`).
    pub process: String,
    /// Its process id.
    pub pid: u32,
    /// `VmHWM` in KiB; `None` when it could not be read (the process had
    /// exited).
    pub peak_rss_kib: Option<u64>,
}

impl ProcessRss {
    /// Reads the peak resident memory of `pid` now.
    pub fn read(process: String, pid: u32) -> Self {
        Self {
            process,
            pid,
            peak_rss_kib: machine::peak_rss_kib(pid),
        }
    }
}

/// Returns `"release"` or `"debug"`: how this benchmark was built.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}
