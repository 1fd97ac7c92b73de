//! A run through a real FUSE mount, shared by the workloads that measure
//! one (`fuse`, `small`): the servers ([`crate::servers`]), a volume, and
//! `cairn mount` — the release binary next to the servers, as its own
//! process, started and stopped through the `cairn-jepsen` harness
//! ([`cairn_jepsen::fuse::Mount`]) that the system tests use.
//!
//! [`run_mounted`] checks the binaries, starts 3 `cairn-meta` replicas and
//! the chunkservers, creates the volume (default policy: replication 3),
//! mounts it on `mnt/` in the run's working directory and runs the
//! workload against it. Afterwards it reads the mount's peak memory,
//! unmounts (SIGTERM, waiting for the process and the mount to go), reads
//! every server's peak memory and stops them. A failed or interrupted
//! workload drops the mount instead, which kills the process and detaches
//! the mount point (`umount -l`), so no dead mount is left behind.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use cairn_client::{MetaClient, MetaClientOptions};
use cairn_jepsen::fuse::Mount;
use cairn_proto::meta::VolumePolicy;
use clap::Args;

use crate::client::META_REPLICAS;
use crate::servers::{CHUNKSERVERS, Finished, Servers, Setup};
use crate::{CommonArgs, ProcessRss};

/// The mount process's name in memory and CPU tables.
pub const PROCESS: &str = "cairn mount";

/// Mount point name inside the working directory.
const MOUNT_DIR: &str = "mnt";

/// The flag of the mounting workloads that passes settings on to `cairn
/// mount`.
#[derive(Debug, Clone, Default, Args)]
pub struct MountFlags {
    /// Extra flags for `cairn mount` (space-separated), to compare
    /// settings: e.g. "--read-ahead 32MiB", "--direct-io" or "--entry-ttl
    /// 0s".
    #[arg(
        long = "mount-args",
        value_name = "FLAGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub extra: String,
}

/// What a workload gets while the volume is mounted.
pub struct Mounted<'a> {
    /// The running servers.
    pub servers: &'a Servers,
    /// The mount point: the volume's root as the kernel shows it.
    pub root: PathBuf,
    /// The run's working directory (on the disk measured), for local
    /// baselines.
    pub work: PathBuf,
    /// The `cairn mount` process.
    pub pid: u32,
}

/// What [`run_mounted`] returns besides the workload's own result.
pub struct MountedRun<T> {
    /// What the workload returned.
    pub value: T,
    /// When and how long, the binaries, where the data lived, every note.
    pub run: Finished,
    /// Peak resident memory of every server, of this process and of the
    /// mount.
    pub peak_rss: Vec<ProcessRss>,
    /// The notes the workload added.
    pub notes: Vec<String>,
}

/// Fails unless the `cairn` binary is in `setup`'s binary directory.
fn require_cairn(setup: &Setup) -> Result<()> {
    let cairn = setup.bin_dir.join("cairn");
    if !cairn.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p cairn-cli`",
            cairn.display()
        );
    }
    Ok(())
}

/// Starts the servers, creates volume `volume`, mounts it with `cairn
/// mount --volume /VOLUME` plus `mount_flags` and runs
/// `work` against it; then unmounts and stops everything (see the module
/// docs). `workload` names the working directory and progress lines;
/// `this_process` is this process's name in the memory table.
///
/// # Errors
/// A missing binary, servers or a mount that do not start, `work`'s
/// error, or an unmount that fails.
pub async fn run_mounted<T>(
    common: &CommonArgs,
    workload: &str,
    volume: &str,
    mount_flags: &MountFlags,
    this_process: &str,
    work: impl AsyncFnOnce(&Mounted<'_>, &mut Vec<String>) -> Result<T>,
) -> Result<MountedRun<T>> {
    let mut setup = Setup::new(common, workload)?;
    require_cairn(&setup)?;
    eprintln!(
        "{workload}: starting {META_REPLICAS} cairn-meta replicas and {CHUNKSERVERS} \
         chunkservers from {}",
        setup.bin_dir.display()
    );
    let servers = Servers::start(setup.work.path(), &setup.bin_dir, META_REPLICAS).await?;
    let dir = setup.work.path().to_path_buf();
    let mut notes = Vec::new();
    let mut mount_rss = None;
    let (result, mut peak_rss) = servers
        .run_then_stop(this_process, async |servers| {
            let meta_addrs = servers.meta_addrs();
            let admin = MetaClient::connect(&meta_addrs, MetaClientOptions::default())
                .await
                .context("connecting to meta")?;
            admin
                .create_volume(volume, VolumePolicy::default())
                .await
                .with_context(|| format!("creating volume {volume}"))?;
            admin.close().await.context("closing the admin session")?;
            let mnt = dir.join(MOUNT_DIR);
            eprintln!("{workload}: mounting /{volume} on {}", mnt.display());
            let root_flag = format!("/{volume}");
            let mut flags = vec!["--volume", root_flag.as_str()];
            flags.extend(mount_flags.extra.split_whitespace());
            let mut mount =
                Mount::start(&meta_addrs, &mnt, &flags).map_err(|e| anyhow!("{e:#}"))?;
            let pid = mount
                .pid()
                .ok_or_else(|| anyhow!("cairn mount exited at once"))?;
            let mounted = Mounted {
                servers,
                root: mount.dir().to_path_buf(),
                work: dir.clone(),
                pid,
            };
            // On an error the mount is dropped: killed and detached.
            let value = work(&mounted, &mut notes).await?;
            mount_rss = Some(ProcessRss::read(PROCESS.into(), pid));
            mount.stop().map_err(|e| anyhow!("{e:#}"))?;
            Ok(value)
        })
        .await;
    let value = result?;
    peak_rss.extend(mount_rss);
    setup.notes.extend(notes.iter().cloned());
    let run = setup.finish(common)?;
    Ok(MountedRun {
        value,
        run,
        peak_rss,
        notes,
    })
}
