//! The meta cluster a workload runs against: `cairn-jepsen`'s
//! [`MetaCluster`] (real `cairn-meta` processes on loopback), with what a
//! benchmark needs on top:
//!
//! * the replicas' data directories inside the run's working directory, so
//!   Cairn's fsyncs hit the same disk as the local baseline's;
//! * the binary's production Raft timings (`MetaConfig` defaults) rather
//!   than the harness's shortened test ones;
//! * the process id of each replica, for its peak resident memory;
//! * a garbage-collection grace of [`GC_GRACE`] instead of 10 minutes, so
//!   that data a workload deletes is collected within the run and its cost
//!   is measured (the `small` workload's collect step) rather than left to
//!   whatever runs next.
//!
//! The harness takes its directory from the process-wide default of the
//! `tempfile` crate, which [`Cluster::start`] points at the working
//! directory ([`tempfile::env::override_temp_dir`] can be set once per
//! process, which suits a benchmark that starts one cluster). It does not
//! report child pids, so they are found in `/proc`: the children of this
//! process whose command line names the replica's data directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_jepsen::{ClusterOpts, MetaCluster};

/// The replicas' `--gc-grace`.
pub const GC_GRACE: &str = "2s";

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Replicas to start (all become voters).
    pub replicas: usize,
    /// Directory in which the cluster makes its own (data and logs).
    pub data_dir: PathBuf,
    /// Directory holding `cairn-meta`.
    pub bin_dir: PathBuf,
}

/// A running meta cluster; [`Cluster::stop`] (or dropping it) kills every
/// replica.
pub struct Cluster {
    inner: MetaCluster,
    pids: Vec<Option<u32>>,
}

impl Cluster {
    /// Starts the cluster and returns once it has a leader and every
    /// replica is a voter.
    ///
    /// # Errors
    /// When the binary is not in `bin_dir`, the data directory cannot be
    /// used, or the cluster does not become ready.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        let want = opts.bin_dir.join("cairn-meta");
        let harness_bin = cairn_jepsen::binary::bin_dir().join("cairn-meta");
        if same_file(&want, &harness_bin) != Some(true) {
            bail!(
                "the cluster harness starts {} but {} was asked for: set {}={} instead of \
                 passing --bin-dir",
                harness_bin.display(),
                want.display(),
                cairn_jepsen::binary::BIN_DIR_ENV,
                opts.bin_dir.display()
            );
        }
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("creating {}", opts.data_dir.display()))?;
        if let Err(already) = tempfile::env::override_temp_dir(&opts.data_dir)
            && already != opts.data_dir
        {
            bail!(
                "a cluster was already started in {} by this process",
                already.display()
            );
        }
        let mut harness = ClusterOpts::default().with_default_timings();
        harness.extra_args = vec!["--gc-grace".into(), GC_GRACE.into()];
        let inner = MetaCluster::start(opts.replicas, harness).await?;
        if !inner.dir().starts_with(&opts.data_dir) {
            bail!(
                "the cluster harness put its data in {}, not under {}",
                inner.dir().display(),
                opts.data_dir.display()
            );
        }
        let pids = (0..inner.len())
            .map(|i| child_with_arg(inner.data_dir(i)))
            .collect();
        Ok(Cluster { inner, pids })
    }

    /// Returns every replica's address.
    pub fn addrs(&self) -> Vec<String> {
        self.inner.addrs()
    }

    /// Returns `(replica index, pid)` of every replica process that was
    /// found.
    pub fn pids(&self) -> Vec<(usize, u32)> {
        self.pids
            .iter()
            .enumerate()
            .filter_map(|(i, pid)| pid.map(|p| (i, p)))
            .collect()
    }

    /// Returns `(name, pid)` of every replica process that was found.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.pids()
            .into_iter()
            .map(|(i, p)| {
                (
                    format!("cairn-meta replica {i} ({})", self.inner.addr(i)),
                    p,
                )
            })
            .collect()
    }

    /// Returns the directory holding the replicas' data and logs.
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }

    /// Kills every replica and removes the cluster's directory.
    pub async fn stop(mut self) {
        self.inner.stop_all();
        drop(self.inner);
    }
}

/// Returns whether two paths name the same existing file (`None` when
/// either does not exist).
fn same_file(a: &Path, b: &Path) -> Option<bool> {
    Some(a.canonicalize().ok()? == b.canonicalize().ok()?)
}

/// Returns the pid of a child of this process that has `arg` as one of its
/// command-line arguments.
fn child_with_arg(arg: &Path) -> Option<u32> {
    let me = std::process::id();
    let want = arg.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces; fields after its
        // closing parenthesis are: state, ppid, ...
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        if ppid != me {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        cmdline.split(|&b| b == 0).any(|a| a == want).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn finds_a_child_by_its_argument() {
        let dir = tempfile::tempdir().unwrap();
        // `; true` keeps the shell from exec'ing sleep, so the shell, whose
        // command line holds the directory, stays the child.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "sh"])
            .arg(dir.path())
            .spawn()
            .unwrap();
        // Give the exec a moment to replace the forked image's command line.
        let mut found = None;
        for _ in 0..100 {
            found = child_with_arg(dir.path());
            if found.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some(child.id()));
        assert_eq!(child_with_arg(Path::new("/no/such/argument")), None);
    }
}
