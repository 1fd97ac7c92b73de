//! `cairn`: the command line of Cairn.
//!
//! * namespace: `ls`, `mkdir`, `mv`, `rm`, `stat`, `ln` ([`namespace`]);
//! * volumes: `volume create`, `volume ls`, `volume rotate-key` ([`volume`]);
//! * the meta cluster: `meta status|join|promote|remove` ([`admin`]);
//! * the data side: `admin chunkservers|chains` ([`cluster`]);
//! * data: `put`, `get`, `cp` ([`transfer`]), `cat` ([`cat`]),
//!   `checkpoint save|load|list|prune` ([`checkpoint`]), with a progress
//!   bar ([`progress`]) and the client flags of [`data`];
//! * `mount`: the cluster as a local directory over FUSE ([`mount`]);
//! * `cache stats`: block-cache counters of local clients ([`cache`]);
//! * `doctor`: the slow-job routine with a verdict per check ([`doctor`]);
//! * `warmup`: load files into this machine's mount caches ([`warmup`]);
//! * `dev`: a local cluster (3 meta replicas, 3 chunkservers) in this process ([`dev`], cargo
//!   feature `dev`, on by default).
//!
//! Namespace and admin commands talk to meta through
//! [`cairn_client::MetaClient`] at the addresses of `--meta` (or
//! `CAIRN_META`); data commands connect a whole [`cairn_client::Client`]
//! (meta, chunkservers, block cache); `cache stats` reads local files only.
//! Failures print one line on stderr (see [`report`]) and exit with status
//! 1; usage errors exit with status 2 (clap's convention).

mod admin;
mod cache;
mod cat;
mod checkpoint;
mod cluster;
mod data;
#[cfg(feature = "dev")]
mod dev;
mod doctor;
mod format;
mod k8s;
mod mount;
mod namespace;
mod progress;
mod quota;
mod report;
mod signal;
mod snapshot;
mod transfer;
mod volume;
mod warmup;
mod xattr;

use std::process::ExitCode;
use std::time::Duration;

use cairn_client::{MetaClient, MetaClientOptions};
use cairn_proto::meta::VolumePolicy;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The meta replicas of `cairn dev` with its default ports.
const DEFAULT_META: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// The command line of Cairn, a distributed file system for AI training.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, max_term_width = 100)]
struct Cli {
    /// Meta replicas to talk to (comma-separated host:port; any one
    /// reachable replica is enough).
    #[arg(long, global = true, env = "CAIRN_META", default_value = DEFAULT_META, value_name = "ADDRS")]
    meta: String,

    /// Print machine-readable JSON instead of text (ls, stat, meta status,
    /// volume ls/create, the summaries of put/get/cp/checkpoint,
    /// checkpoint list/prune, cache stats).
    #[arg(long, global = true)]
    json: bool,

    /// Draw no progress bar and print no summary line (put, get, cp,
    /// checkpoint save/load). Bars are also hidden when stderr is not a
    /// terminal.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,

    /// Give up on a meta request after this long, across retries (e.g.
    /// "15s", "500ms").
    #[arg(long, global = true, default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and change the metadata cluster.
    #[command(subcommand)]
    Meta(MetaCommand),

    /// The data side of the cluster: chunkservers and chains.
    #[command(subcommand)]
    Admin(AdminCommand),

    /// List a directory (or show one entry).
    Ls {
        /// Long format: mode, links, uid, gid, size, mtime (UTC), name.
        #[arg(short = 'l')]
        long: bool,
        /// Absolute path.
        #[arg(default_value = "/")]
        path: String,
    },

    /// Create directories.
    Mkdir {
        /// Create missing parents; existing directories are fine.
        #[arg(short = 'p', long)]
        parents: bool,
        /// Permission bits of new directories, in octal.
        #[arg(short = 'm', long, default_value = "755", value_parser = format::parse_mode)]
        mode: u32,
        /// Absolute paths.
        #[arg(required = true)]
        paths: Vec<String>,
    },

    /// Rename or move, atomically; into DST when it is a directory.
    Mv {
        /// Fail when the target exists instead of replacing it.
        #[arg(short = 'n', long)]
        no_clobber: bool,
        /// Absolute path to move.
        src: String,
        /// New absolute path, or an existing directory to move into.
        dst: String,
    },

    /// Remove files, symlinks and (with -r) directory trees.
    Rm {
        /// Remove directories and their contents, depth-first.
        #[arg(short = 'r', short_alias = 'R', long)]
        recursive: bool,
        /// Ignore paths that do not exist.
        #[arg(short = 'f', long)]
        force: bool,
        /// Absolute paths ("/" is refused).
        #[arg(required = true)]
        paths: Vec<String>,
    },

    /// Show every attribute of a path, including its layout.
    Stat {
        /// Absolute path; a symlink is shown, not followed.
        path: String,
    },

    /// Make a symbolic link (-s) or a hard link.
    Ln {
        /// Make a symbolic link to TARGET (stored as given).
        #[arg(short = 's', long)]
        symbolic: bool,
        /// What the link points to (an absolute path for a hard link).
        target: String,
        /// The new link, or an existing directory to create it in.
        link_path: String,
    },

    /// List, get, set and remove extended attributes (user.* names, as
    /// programs set them through a mount; values up to 64 KiB).
    #[command(subcommand)]
    Xattr(xattr::XattrCommand),

    /// Create and list volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),

    /// Take, list and delete volume snapshots: read-only copies of a
    /// volume's tree, read under /VOLUME/.snapshots/NAME.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),

    /// Set and show directory quotas: bytes and inodes counted under one
    /// directory of a volume (the CSI driver's volumes carved out of a
    /// shared Cairn volume).
    #[command(subcommand)]
    Quota(quota::QuotaCommand),

    /// Upload local files and directory trees into Cairn, several files at
    /// once, with a progress bar.
    Put(transfer::PutArgs),

    /// Download Cairn files and directory trees to the local file system,
    /// several files at once, with a progress bar.
    Get(transfer::GetArgs),

    /// Print Cairn files to stdout.
    Cat(cat::CatArgs),

    /// Copy files (and, with -r, directory trees) within Cairn, several
    /// files at once, with a progress bar.
    Cp(transfer::CpArgs),

    /// Save, load, list and prune checkpoints: files published atomically
    /// in a directory with their size, CRC32 and metrics.
    Checkpoint(checkpoint::CheckpointArgs),

    /// Inspect the client block caches on this machine.
    #[command(subcommand)]
    Cache(cache::CacheCommand),

    /// Diagnose a slow training job: read, checkpoint, cache and cluster
    /// checks on PATH, each with a verdict against the training
    /// thresholds.
    ///
    /// Measures sequential read (1 MiB, 4 jobs, direct), random read
    /// (4 KiB, 16 jobs, direct) and a checkpoint save and restore on
    /// PATH — a directory on this machine (a Cairn mount, or any
    /// directory as a baseline) or an absolute Cairn path read through
    /// the client library — then the cache counters (with --cache-dir),
    /// meta quorum, chunkservers, space, under-replicated chains, clock
    /// skew and the round trip to every chunkserver, and host facts.
    /// Test files go into PATH/.cairn-doctor-HOST-PID and are removed at
    /// the end, on failure and on Ctrl-C. Exits 1 when a check is
    /// critical or could not run.
    Doctor(doctor::DoctorArgs),

    /// Load files or trees into the caches of this machine's Cairn mount
    /// before a job starts.
    ///
    /// PATHs are files or directories on a `cairn mount` (or CSI volume)
    /// of this machine; the mount itself reads them, so the blocks land in
    /// the cache its readers use: memory first, overflowing into its SSD
    /// tier when it has one (`cairn mount --cache-dir`). Parallel, with
    /// progress; run again after an interruption and what is already
    /// cached is not fetched again. `cairn cache stats --type memory|ssd`
    /// (with the mount's --cache-dir) shows the result.
    Warmup(warmup::WarmupArgs),

    /// Plan Kubernetes training jobs (TFJob, PyTorchJob, TrainJob, Volcano
    /// Job) against the cluster.
    #[command(subcommand)]
    K8s(k8s::K8sCommand),

    /// Run a local cluster (3 meta replicas, 3 chunkservers) in this process until Ctrl-C.
    #[cfg(feature = "dev")]
    Dev(dev::DevArgs),

    /// Mount the cluster (or one volume) on a local directory with FUSE,
    /// for programs that use files: serves until Ctrl-C / SIGTERM, then
    /// unmounts.
    Mount(mount::MountArgs),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Chunkservers: address and shard ports, alive or down, zone, targets,
    /// space used and capacity.
    Chunkservers,
    /// Chains: members head to tail with their states (serving, syncing,
    /// offline), how many chains are under-replicated, and the repair's
    /// progress (bytes copied, current rate). A syncing member is being
    /// caught up by its chain's head; a chunkserver dead longer than meta's
    /// --replace-after is replaced in its chains by others.
    Chains {
        /// Only the chains with fewer serving members than their
        /// replication factor.
        #[arg(long)]
        under_replicated: bool,
    },
    /// Put a chunkserver in maintenance before taking its machine down (a
    /// reboot, a disk swap): its targets leave their chains at once, so
    /// writes route around it, stay out while the window lasts, and are
    /// not replaced by other chunkservers. Lift it with --off (or let it
    /// end): they rejoin and are resynced by version, copying only what
    /// changed. (A chunkserver stopped with SIGTERM does this by itself
    /// for the length of meta's --maintenance-window.)
    Maintenance {
        /// The chunkserver's id (see `cairn admin chunkservers`).
        id: u64,
        /// How long the window lasts at most (e.g. "2h").
        #[arg(long = "for", value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Lift the window now.
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MetaCommand {
    /// Leader, term, log indexes, members and health.
    Status,
    /// Add the replica at ADDR to the cluster as a learner.
    Join {
        /// host:port of the new replica.
        addr: String,
    },
    /// Promote learner ID to voter.
    Promote {
        /// Node id.
        id: u64,
    },
    /// Remove replica ID from the cluster.
    Remove {
        /// Node id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume: a top-level directory /NAME with its own policy.
    Create {
        /// Volume name (becomes /NAME).
        name: String,
        /// Copies of each chunk (1-3).
        #[arg(long, default_value_t = 3)]
        replication: u32,
        /// Chunk size, a power of two (e.g. 64MiB).
        #[arg(long, default_value = "64MiB", value_parser = format::parse_size)]
        chunk_size: u64,
        /// Chains each file is striped over.
        #[arg(long, default_value_t = 8)]
        stripe_width: u32,
        /// Encrypt file contents on the clients (AES-256-GCM per 4 KiB
        /// block, a key per file derived from the volume key). Needs
        /// --key-file. Costs client CPU (the cipher takes about 0.13
        /// CPU-seconds per GiB on an AES-NI/VAES core; on the development
        /// VM sequential reads ran at 1.0-1.2x a plain volume, checkpoint
        /// writes at 0.9-1.05x and checkpoint API saves at 0.8x) and 28
        /// bytes of chunkserver metadata per 4 KiB block; a write smaller
        /// than 4 KiB reads its block first. File names are not encrypted.
        #[arg(long)]
        encrypted: bool,
        /// The volume key file (with --encrypted): read when it exists,
        /// else a new key is generated and written there (mode 0600).
        /// Keep it: without it the data cannot be read.
        #[arg(long, value_name = "PATH")]
        key_file: Option<std::path::PathBuf>,
        /// Compress file contents on the clients, before encryption (works
        /// with --encrypted). lz4: fast (measured on text: 2.0x smaller,
        /// sequential reads at 0.94x of plain, checkpoint writes at 0.73x,
        /// about 3.5 client CPU-seconds per GB written); use it for datasets
        /// and checkpoints that compress. zstd: smaller (3.2x on the same
        /// text) at about twice lz4's CPU. A unit that does not shrink by a
        /// 4 KiB block is stored as it is, and a 4 KiB random read reads a
        /// whole unit. Fixed when the volume is created; see README:
        /// Compressed volumes.
        #[arg(long, value_enum, default_value_t = volume::Compression::None)]
        compression: volume::Compression,
        /// Size of a compression unit (with --compression lz4 or zstd): a
        /// power of two from 16KiB to 1MiB, at most --chunk-size. Larger
        /// units compress better, smaller ones make random reads cheaper
        /// (lz4 on text: 16KiB 1.4x and 4 KiB reads at p50 0.32 ms, 64KiB
        /// 2.0x and 0.28 ms, 256KiB 2.3x and 0.62 ms). [default: 64KiB]
        #[arg(long, value_name = "SIZE", value_parser = format::parse_size)]
        compression_unit: Option<u64>,
        /// Byte quota (e.g. 10TiB); 0 = unlimited.
        #[arg(long, default_value = "0", value_parser = format::parse_size)]
        quota_bytes: u64,
        /// Inode quota; 0 = unlimited.
        #[arg(long, default_value_t = 0)]
        quota_inodes: u64,
    },
    /// List volumes with their policy and usage.
    Ls,
    /// Start a new key version of an encrypted volume: files created from
    /// now on use it, older files keep theirs. The new key is added to the
    /// key file, which must hold the current version.
    RotateKey {
        /// Volume name.
        name: String,
        /// The volume's key file (all its versions).
        #[arg(long, value_name = "PATH")]
        key_file: std::path::PathBuf,
    },
    /// Change a volume's quotas (what a CSI volume expansion does). A
    /// quota below what the volume uses refuses new data and files until
    /// use falls under it; nothing is deleted.
    #[command(arg_required_else_help = true)]
    SetQuota {
        /// Volume name.
        name: String,
        /// Byte quota (e.g. "100GiB"; 0 = unlimited).
        #[arg(long, value_parser = cairn_proto::units::parse_size, value_name = "SIZE")]
        bytes: Option<u64>,
        /// Inode quota (0 = unlimited).
        #[arg(long, value_name = "N")]
        inodes: Option<u64>,
    },
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Err only when a subscriber is already installed: keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn connect(cli: &Cli) -> anyhow::Result<MetaClient> {
    connect_meta(&cli.meta, cli.timeout).await
}

/// Connects to the meta replicas `meta` (comma-separated), giving up on a
/// request after `timeout`.
async fn connect_meta(meta: &str, timeout: Duration) -> anyhow::Result<MetaClient> {
    let opts = MetaClientOptions {
        deadline: timeout,
        request_timeout: timeout.min(Duration::from_secs(10)),
        ..MetaClientOptions::default()
    };
    MetaClient::connect(meta.split(','), opts)
        .await
        .map_err(|e| anyhow::anyhow!("--meta {meta}: {}", e.message))
}

/// Runs a command that moves data, on a [`cairn_client::Client`]; `None`
/// for the other commands.
async fn run_data(cli: &Cli) -> Option<anyhow::Result<()>> {
    let copy = |jobs: usize, recursive: bool| transfer::CopyOptions {
        recursive,
        jobs,
        quiet: cli.quiet,
        json: cli.json,
    };
    let data = match &cli.command {
        Command::Put(a) => &a.data,
        Command::Get(a) => &a.data,
        Command::Cat(a) => &a.data,
        Command::Cp(a) => &a.data,
        Command::Checkpoint(a) => &a.data,
        _ => return None,
    };
    let c = match data::connect(&cli.meta, data, cli.timeout).await {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let result = match &cli.command {
        Command::Put(a) => transfer::put(&c, &a.sources, &a.dest, copy(a.jobs, true)).await,
        Command::Get(a) => transfer::get(&c, &a.sources, &a.dest, copy(a.jobs, true)).await,
        Command::Cp(a) => transfer::cp(&c, &a.sources, &a.dest, copy(a.jobs, a.recursive)).await,
        Command::Cat(a) => cat::cat(&c, &a.paths).await,
        Command::Checkpoint(a) => {
            let out = checkpoint::Output {
                quiet: cli.quiet,
                json: cli.json,
            };
            checkpoint::run(&c, &a.command, out).await
        }
        _ => Ok(()),
    };
    data::close(&c).await;
    Some(result)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    #[cfg(feature = "dev")]
    if let Command::Dev(args) = cli.command {
        init_tracing("warn,openraft=off");
        return dev::run(args).await;
    }
    if let Command::Mount(args) = &cli.command {
        init_tracing("warn");
        return mount::run(&cli.meta, args).await;
    }
    init_tracing("error");
    if let Command::Cache(cmd) = &cli.command {
        return cache::run(cmd, cli.json);
    }
    if let Command::Warmup(args) = &cli.command {
        return warmup::run(args, cli.quiet, cli.json).await;
    }
    if let Command::Doctor(args) = &cli.command {
        return doctor::run(&cli.meta, cli.timeout, args, cli.json, cli.quiet).await;
    }
    if let Command::K8s(k8s::K8sCommand::Plan(args)) = &cli.command {
        return k8s::plan(&cli.meta, cli.timeout, args, cli.json).await;
    }
    if let Some(result) = run_data(&cli).await {
        return result;
    }
    let c = connect(&cli).await?;
    let json = cli.json;
    let result = match &cli.command {
        Command::Meta(MetaCommand::Status) => admin::status(&c, json).await,
        Command::Admin(AdminCommand::Chunkservers) => cluster::chunkservers(&c, json).await,
        Command::Admin(AdminCommand::Chains { under_replicated }) => {
            cluster::chains(&c, *under_replicated, json).await
        }
        Command::Admin(AdminCommand::Maintenance { id, duration, off }) => {
            cluster::maintenance(&c, *id, (!off).then_some(*duration), json).await
        }
        Command::Meta(MetaCommand::Join { addr }) => admin::join(&c, addr).await,
        Command::Meta(MetaCommand::Promote { id }) => admin::promote(&c, *id, json).await,
        Command::Meta(MetaCommand::Remove { id }) => admin::remove(&c, *id, json).await,
        Command::Ls { long, path } => namespace::ls(&c, path, *long, json).await,
        Command::Mkdir {
            parents,
            mode,
            paths,
        } => namespace::mkdir(&c, paths, *parents, *mode).await,
        Command::Mv {
            no_clobber,
            src,
            dst,
        } => namespace::mv(&c, src, dst, *no_clobber).await,
        Command::Rm {
            recursive,
            force,
            paths,
        } => namespace::rm(&c, paths, *recursive, *force).await,
        Command::Stat { path } => namespace::stat(&c, path, json).await,
        Command::Ln {
            symbolic,
            target,
            link_path,
        } => namespace::ln(&c, target, link_path, *symbolic).await,
        Command::Xattr(cmd) => xattr::run(&c, cmd, json).await,
        Command::Volume(VolumeCommand::Create {
            name,
            replication,
            chunk_size,
            stripe_width,
            encrypted,
            key_file,
            compression,
            compression_unit,
            quota_bytes,
            quota_inodes,
        }) => {
            let policy = VolumePolicy {
                replication: *replication,
                chunk_size: *chunk_size,
                stripe_width: *stripe_width,
                encrypted: *encrypted,
                quota_bytes: *quota_bytes,
                quota_inodes: *quota_inodes,
                ..VolumePolicy::default()
            };
            match volume::with_compression(name, policy, *compression, *compression_unit) {
                Ok(policy) => volume::create(&c, name, policy, key_file.as_deref(), json).await,
                Err(e) => Err(e),
            }
        }
        Command::Volume(VolumeCommand::Ls) => volume::ls(&c, json).await,
        Command::Snapshot(cmd) => snapshot::run(&c, cmd, json).await,
        Command::Quota(cmd) => quota::run(&c, cmd, json).await,
        Command::Volume(VolumeCommand::RotateKey { name, key_file }) => {
            volume::rotate_key(&c, name, key_file, json).await
        }
        Command::Volume(VolumeCommand::SetQuota {
            name,
            bytes,
            inodes,
        }) => volume::set_quota(&c, name, *bytes, *inodes, json).await,
        #[cfg(feature = "dev")]
        Command::Dev(_) | Command::Mount(_) => Ok(()),
        // Handled above.
        Command::Put(_)
        | Command::Get(_)
        | Command::Cat(_)
        | Command::Cp(_)
        | Command::Checkpoint(_)
        | Command::Cache(_)
        | Command::Doctor(_)
        | Command::Warmup(_)
        | Command::K8s(_) => Ok(()),
    };
    // Release the session (if a mutation opened one) now rather than at
    // its expiry; a failure here changes nothing for the user.
    if let Err(e) = c.close().await {
        tracing::debug!(error = %e, "closing the meta session");
    }
    result
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is::<report::Reported>() {
                report::print(&e);
            }
            ExitCode::FAILURE
        }
    }
}
