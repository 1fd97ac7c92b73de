//! `cairn mount` processes for tests over a real FUSE mount.
//!
//! [`Mount::start`] runs the built `cairn` binary's `mount` command against
//! a cluster's meta replicas and returns once the kernel lists the mount;
//! [`Mount::stop`] sends SIGTERM and waits for the process and the mount to
//! go; dropping a `Mount` kills the process and detaches a mount left
//! behind (`umount -l`), so a failed test leaves no dead mount point.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::binary::binary;

/// Whether `dir` is a mount point right now (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// A running `cairn mount`.
pub struct Mount {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Mount {
    /// Mounts the cluster at `meta` on `dir` (created if missing) with the
    /// extra `cairn mount` flags `args`, logging to `dir`'s sibling
    /// `<name>.log`.
    ///
    /// # Errors
    /// The process exited or the mount did not appear within 20 s; the
    /// message carries the log.
    pub fn start(meta: &[String], dir: &Path, args: &[&str]) -> Result<Mount> {
        Self::start_as(meta, dir, args, None)
    }

    /// As [`Self::start`], run as `uid:gid` through setpriv when given.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_as(
        meta: &[String],
        dir: &Path,
        args: &[&str],
        user: Option<(u32, u32)>,
    ) -> Result<Mount> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let log = dir.with_extension("log");
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = match user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".to_string(),
                ]);
                c.arg(binary("cairn"));
                c
            }
            None => Command::new(binary("cairn")),
        };
        cmd.arg("--meta")
            .arg(meta.join(","))
            .arg("mount")
            .arg(&dir)
            .args(args)
            // CAIRN_MOUNT_LOG: another filter for the mounts' logs (e.g.
            // `fuser=debug` for every FUSE request when chasing a failure).
            .env(
                "RUST_LOG",
                std::env::var("CAIRN_MOUNT_LOG")
                    .unwrap_or_else(|_| "warn,cairn_fuse::feed=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("starting cairn mount")?;
        let mut m = Mount {
            child: Some(child),
            dir,
            log,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if is_mounted(&m.dir) {
                return Ok(m);
            }
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                m.child = None;
                bail!("cairn mount exited with {st}: {}", m.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} was not mounted within 20 s: {}",
            m.dir.display(),
            m.log_text()
        )
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `path` under the mount point.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The process's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits up to 30 s for the process to exit.
    ///
    /// # Errors
    /// It did not exit in time, or the mount stayed.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("the mount process is not running");
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait()? {
                if is_mounted(&self.dir) {
                    bail!(
                        "cairn mount exited ({st}) but {} is still mounted",
                        self.dir.display()
                    );
                }
                return Ok(st);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "cairn mount did not exit within 30 s of SIGTERM: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Through a mount, writes `model` to the file at `path`, overwrites
/// `patch` at `at` (unaligned, in place), cuts the file to `cut` and
/// fsyncs, then appends `tail` with `O_APPEND`, changing `model` the same
/// way: a file's data path exercised the way programs use it.
///
/// # Errors
/// The first failed file operation.
pub fn write_patch_cut_append(
    path: &Path,
    model: &mut Vec<u8>,
    (patch, at): (&[u8], usize),
    cut: usize,
    tail: &[u8],
) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    std::fs::write(path, &model[..]).with_context(|| format!("writing {}", path.display()))?;
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(patch, at as u64)?;
    if model.len() < at + patch.len() {
        model.resize(at + patch.len(), 0);
    }
    model[at..at + patch.len()].copy_from_slice(patch);
    f.set_len(cut as u64)?;
    model.resize(cut, 0);
    f.sync_all()?;
    drop(f);
    let mut f = OpenOptions::new().append(true).open(path)?;
    f.write_all(tail)?;
    model.extend_from_slice(tail);
    Ok(())
}
