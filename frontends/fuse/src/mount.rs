//! Mounting and unmounting.
//!
//! As root (how a CSI node plugin runs it) fuser mounts with mount(2)
//! directly and the mount is open to every user (`allow_other`) with the
//! kernel checking permission bits (`default_permissions`). Unprivileged,
//! fuser goes through the setuid `fusermount3` helper (package fuse3);
//! where the system does not permit that the error says what is missing.
//!
//! No `auto_unmount` by default: when the mount process dies, a mount that
//! vanished would leave training jobs writing into the empty directory
//! underneath, while a dead mount fails loudly with ENOTCONN. Stopping with
//! SIGTERM / Ctrl-C unmounts cleanly; a busy mount is then detached lazily
//! (`umount -l`), so the stop never hangs.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_client::Client;
use cairn_proto::ids::VolumeId;
use cairn_proto::meta::FileType as Kind;
use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use tracing::{info, warn};

use crate::fs::{CairnFs, FsConfig};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Kernel cache TTLs, the per-request time limit, direct I/O.
    pub fs: FsConfig,
    /// Mount this directory of the cluster (a volume, say "/datasets")
    /// instead of its root.
    pub volume: Option<String>,
    /// Let every user use the mount (`allow_other`). `None`: yes as root,
    /// no otherwise (it needs `user_allow_other` in /etc/fuse.conf).
    pub allow_other: Option<bool>,
    /// Unmount when this process dies, through fusermount3.
    pub auto_unmount: bool,
    /// Mount read-only.
    pub read_only: bool,
    /// Threads reading requests from the kernel (each hands them to the
    /// runtime at once).
    pub threads: usize,
    /// Kernel read-ahead of the mount, in bytes (root only; `None` leaves
    /// the kernel's 128 KiB).
    pub read_ahead: Option<u64>,
}

impl Default for MountConfig {
    fn default() -> Self {
        Self {
            fs: FsConfig::default(),
            volume: None,
            allow_other: None,
            auto_unmount: false,
            read_only: false,
            threads: 2,
            read_ahead: Some(8 << 20),
        }
    }
}

/// A live mount. [`Mounted::unmount`] ends it; dropping it unmounts too.
pub struct Mounted {
    session: Option<BackgroundSession>,
    dir: PathBuf,
    /// Serving a connection taken over ([`resume`]): fuser did not mount
    /// it, so unmounting is `umount`'s job here.
    resumed: bool,
}

fn is_root() -> bool {
    cairn_client::meta_client::Owner::current().uid == 0
}

/// `(major, minor)` of a Linux device number (glibc's encoding).
pub fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// fuser's settings for a mount with `options`: who may use it, reader
/// threads, and whether each reads its own clone of `/dev/fuse`.
fn session_config(
    cfg: &MountConfig,
    allow_other: bool,
    options: Vec<MountOption>,
    clone_fd: bool,
) -> Config {
    let mut fcfg = Config::default();
    fcfg.mount_options = options;
    fcfg.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fcfg.n_threads = Some(cfg.threads.max(1));
    fcfg.clone_fd = clone_fd;
    fcfg
}

/// The Cairn inode and volume a mount of `cfg.volume` serves as its root.
async fn mount_root(client: &Client, cfg: &MountConfig) -> io::Result<(u64, VolumeId)> {
    let err = |m: String| io::Error::other(m);
    Ok(match &cfg.volume {
        None => (1, VolumeId(0)),
        Some(v) => {
            let a = client
                .meta()
                .resolve(v)
                .await
                .map_err(|e| err(format!("--volume {v}: {}", e.message)))?;
            if a.kind != Kind::Directory as i32 {
                return Err(err(format!("--volume {v}: not a directory")));
            }
            (a.ino, VolumeId(a.volume_id))
        }
    })
}

/// Serves the FUSE connection `kernel` (an open `/dev/fuse` of the mount
/// at `dir`, whose process died) instead of mounting: the mount point and
/// everything the kernel holds of it stay as they are, so the processes
/// using it see a pause (see [`crate::takeover`]). `cfg` must be the dead
/// process's.
///
/// # Errors
/// The volume missing, or the takeover refused (it needs root).
pub async fn resume(
    client: Client,
    dir: &Path,
    kernel: std::os::fd::OwnedFd,
    cfg: MountConfig,
) -> io::Result<Mounted> {
    let err = |m: String| io::Error::other(m);
    let (root, volume) = mount_root(&client, &cfg).await?;
    let allow_other = cfg.allow_other.unwrap_or(is_root());
    // The relay's socket cannot be cloned as /dev/fuse can.
    let fcfg = session_config(&cfg, allow_other, Vec::new(), false);
    let acl = fcfg.acl;
    let fs = CairnFs::new(
        client,
        tokio::runtime::Handle::current(),
        cfg.fs.clone(),
        root,
        volume,
    );
    fs.inner.start_adopting();
    let inner = fs.inner.clone();
    let feed_fs = fs.inner.clone();
    let fusers = crate::takeover::relay(kernel, cfg.threads.max(1))?;
    let session = tokio::task::spawn_blocking(move || {
        let s = fuser::Session::from_fd(fs, fusers, acl, fcfg)?;
        let _ = inner.notifier.set(s.notifier());
        s.spawn()
    })
    .await
    .map_err(|e| err(format!("takeover task: {e}")))?
    .map_err(|e| err(format!("taking over the mount at {}: {e}", dir.display())))?;
    if !cfg.fs.cached_ttl.is_zero() {
        tokio::spawn(crate::feed::follow(std::sync::Arc::downgrade(&feed_fs)));
    }
    info!(dir = %dir.display(), root, "took over the mount of a process that died");
    Ok(Mounted {
        session: Some(session),
        dir: dir.to_path_buf(),
        resumed: true,
    })
}

/// Mounts `client`'s cluster at `dir` and serves it on the current tokio
/// runtime until [`Mounted::unmount`] or an external `umount`.
///
/// # Errors
/// `dir` missing, not a directory or a dead mount; the volume missing;
/// the mount refused (the message says what the system lacks).
pub async fn mount(client: Client, dir: &Path, cfg: MountConfig) -> io::Result<Mounted> {
    let err = |m: String| io::Error::other(m);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(err(format!("{} is not a directory", dir.display()))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(err(format!(
                "{} is a dead FUSE mount (transport endpoint is not connected); \
                 clean it with `umount -l {}` first",
                dir.display(),
                dir.display()
            )));
        }
        Err(e) => return Err(err(format!("mount point {}: {e}", dir.display()))),
    }
    let (root, volume) = mount_root(&client, &cfg).await?;
    let root_user = is_root();
    let allow_other = cfg.allow_other.unwrap_or(root_user);
    let mut options = vec![
        MountOption::FSName("cairn".into()),
        MountOption::Subtype("cairn".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if cfg.read_only {
        options.push(MountOption::RO);
    }
    if cfg.auto_unmount {
        options.push(MountOption::AutoUnmount);
    }
    let fcfg = session_config(&cfg, allow_other, options, true);

    let fs = CairnFs::new(
        client,
        tokio::runtime::Handle::current(),
        cfg.fs.clone(),
        root,
        volume,
    );
    let inner = fs.inner.clone();
    let feed_fs = fs.inner.clone();
    let path = dir.to_path_buf();
    let session = tokio::task::spawn_blocking(move || {
        let s = fuser::Session::new(fs, &path, &fcfg)?;
        let _ = inner.notifier.set(s.notifier());
        s.spawn()
    })
    .await
    .map_err(|e| err(format!("mount task: {e}")))?
    .map_err(|e| {
        let hint = if root_user {
            String::new()
        } else {
            "; unprivileged mounts need fusermount3 (package fuse3) and read-write access to \
             /dev/fuse, and --allow-other needs user_allow_other in /etc/fuse.conf"
                .to_string()
        };
        err(format!("mounting {}: {e}{hint}", dir.display()))
    })?;
    if !cfg.fs.cached_ttl.is_zero() {
        tokio::spawn(crate::feed::follow(std::sync::Arc::downgrade(&feed_fs)));
    }
    let m = Mounted {
        session: Some(session),
        dir: dir.to_path_buf(),
        resumed: false,
    };
    if let Some(bytes) = cfg.read_ahead {
        m.set_read_ahead(bytes);
    }
    info!(dir = %dir.display(), root, allow_other, "mounted");
    Ok(m)
}

impl Mounted {
    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the kernel still has the mount (false after an external
    /// `umount` or `fusermount3 -u`).
    pub fn is_mounted(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Raises the kernel's read-ahead for this mount (its backing device
    /// info in sysfs; only root may write it).
    fn set_read_ahead(&self, bytes: u64) {
        let Ok(m) = std::fs::metadata(&self.dir) else {
            return;
        };
        let (major, minor) = dev_major_minor(m.dev());
        let p = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        if let Err(e) = std::fs::write(&p, (bytes / 1024).to_string()) {
            info!(path = p, error = %e, "kernel read-ahead left at its default");
        }
    }

    /// Unmounts: a plain unmount, or, when files are still open on it, a
    /// lazy one (the mount leaves the namespace at once; those files fail
    /// with ENOTCONN once this process exits).
    ///
    /// # Errors
    /// When neither unmount works.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        if s.guard.is_finished() {
            return Ok(());
        }
        if self.resumed {
            // The kernel ends the connection, then the relay stops fuser.
            let plain = Command::new("umount").arg(&self.dir).output();
            if !plain.is_ok_and(|o| o.status.success()) {
                lazy_unmount(&self.dir)?;
            }
            return s.join();
        }
        match s.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "unmount failed; detaching lazily");
                lazy_unmount(&self.dir)
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            warn!(dir = %self.dir.display(), error = %e, "unmount on drop failed");
        }
    }
}

/// `umount -l` as root, `fusermount3 -u -z` otherwise.
pub fn lazy_unmount(dir: &Path) -> io::Result<()> {
    let mut c = if is_root() {
        let mut c = Command::new("umount");
        c.arg("-l");
        c
    } else {
        let mut c = Command::new("fusermount3");
        c.args(["-u", "-z"]);
        c
    };
    let out = c.arg(dir).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "lazy unmount of {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_like_glibc() {
        // makedev(0, 52) and makedev(259, 1048577).
        assert_eq!(dev_major_minor(52), (0, 52));
        let (ma, mi) = (259u64, 1_048_577u64);
        let dev = ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12);
        assert_eq!(dev_major_minor(dev), (ma, mi));
    }
}
