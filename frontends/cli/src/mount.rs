//! `cairn mount`: the cluster (or one volume) as a local directory, served
//! by this process until SIGINT / SIGTERM or an external `umount`.
//!
//! The client's retry budgets are set to `--io-timeout` and every kernel
//! request is bounded by it, so with the cluster gone applications get
//! ETIMEDOUT or EIO after that long instead of a hung mount.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use cairn_client::Client;
use cairn_fuse::{FsConfig, MountConfig, Mounted};

use crate::data::{self, DataArgs};
use crate::signal::Signals;

/// Flags of `cairn mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Empty directory to mount on.
    pub dir: PathBuf,

    /// Mount this directory of the cluster (a volume such as "/datasets")
    /// instead of its root.
    #[arg(long, value_name = "PATH")]
    pub volume: Option<String>,

    /// How long the kernel may cache a name lookup (0 = ask every time).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub entry_ttl: Duration,

    /// How long the kernel may cache attributes (size, mode, times). Files
    /// are re-checked on every open whatever this is (close-to-open).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub attr_ttl: Duration,

    /// How long the kernel may cache names and attributes while meta's
    /// change feed is connected: changes made by other clients invalidate
    /// them as they happen (within milliseconds), so a stat of an unchanged
    /// file never leaves the machine. If the feed is lost (meta failing
    /// over), everything cached is dropped within 1.5 s and --entry-ttl and
    /// --attr-ttl apply until it is back. 0 = do not use the feed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,

    /// Fail a request the cluster has not answered within this long,
    /// retries included, with ETIMEDOUT or EIO.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub io_timeout: Duration,

    /// Bypass the kernel page cache: every read reaches Cairn (random-read
    /// workloads over data far larger than memory).
    #[arg(long)]
    pub direct_io: bool,

    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,

    /// Make every write(2) wait until the chain has the data, instead of
    /// gathering writes in memory and sending them in the background
    /// (fsync and close wait for them either way).
    #[arg(long)]
    pub no_write_back: bool,

    /// Memory the background writes of the mount may use.
    #[arg(long, default_value = "256MiB", value_parser = cairn_proto::units::parse_size)]
    pub write_back_budget: u64,

    /// Let other users use the mount (default: yes as root, no otherwise;
    /// unprivileged it needs user_allow_other in /etc/fuse.conf).
    #[arg(long, overrides_with = "no_allow_other")]
    pub allow_other: bool,

    /// Only the mounting user may use the mount.
    #[arg(long)]
    pub no_allow_other: bool,

    /// Unmount automatically if this process dies (through fusermount3).
    /// Off by default: a vanished mount would let jobs write into the
    /// directory underneath; a dead one fails loudly with ENOTCONN.
    #[arg(long)]
    pub auto_unmount: bool,

    /// Kernel read-ahead for the mount (root only), e.g. "8MiB"; 0 keeps
    /// the kernel's default.
    #[arg(long, default_value = "8MiB", value_parser = cairn_proto::units::parse_size)]
    pub read_ahead: u64,

    /// Threads reading requests from the kernel.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,

    /// Take over the FUSE connection given as standard input (an open
    /// /dev/fuse of the mount at DIR, whose mount process died) instead of
    /// mounting: programs using DIR see a pause, not an error. The CSI node
    /// plugin runs this with the dead process's other flags; root with
    /// CAP_NET_ADMIN (as the privileged node plugin has).
    #[arg(long)]
    pub fuse_fd_on_stdin: bool,

    /// Serve this mount's client metrics (reads, writes, checkpoints,
    /// cache tiers; see `deploy/prometheus/`) at http://IP:PORT/metrics
    /// for Prometheus.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Serve the same metrics on a unix socket at PATH (mode 0600), for a
    /// local collector such as the CSI node plugin, which merges its
    /// mounts' metrics into one endpoint.
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,

    #[command(flatten)]
    pub data: DataArgs,
}

impl MountArgs {
    /// The mount settings these flags ask for.
    pub fn config(&self) -> MountConfig {
        MountConfig {
            fs: FsConfig {
                entry_ttl: self.entry_ttl,
                attr_ttl: self.attr_ttl,
                cached_ttl: self.cache_ttl,
                timeout: self.io_timeout,
                direct_io: self.direct_io,
                write_back: !self.no_write_back,
                write_back_budget: usize::try_from(self.write_back_budget).unwrap_or(usize::MAX),
            },
            volume: self.volume.clone(),
            allow_other: if self.allow_other {
                Some(true)
            } else if self.no_allow_other {
                Some(false)
            } else {
                None
            },
            auto_unmount: self.auto_unmount,
            read_only: self.read_only,
            threads: self.threads,
            read_ahead: (self.read_ahead > 0).then_some(self.read_ahead),
        }
    }
}

/// Connects a client whose retry budgets end within `io_timeout`.
///
/// # Errors
/// Meta unreachable, a bad cache directory, or a key file that cannot be
/// read or is not its volume's.
pub async fn connect(meta: &str, args: &MountArgs) -> anyhow::Result<Client> {
    let mut opts = data::client_options(&args.data, args.io_timeout)?;
    opts.io.deadline = args.io_timeout;
    opts.io.request_timeout = opts.io.request_timeout.min(args.io_timeout);
    Client::connect(meta.split(','), opts)
        .await
        .map_err(|e| data::connect_error(meta, &e))
}

/// Mounts `client` at `args.dir`.
///
/// # Errors
/// As [`cairn_fuse::mount`].
pub async fn mount(client: Client, args: &MountArgs) -> anyhow::Result<Mounted> {
    if args.fuse_fd_on_stdin {
        use std::os::fd::AsFd;
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("--fuse-fd-on-stdin: standard input")?;
        return cairn_fuse::resume(client, &args.dir, fd, args.config())
            .await
            .context("cairn mount --fuse-fd-on-stdin");
    }
    cairn_fuse::mount(client, &args.dir, args.config())
        .await
        .context("cairn mount")
}

/// Waits until a signal arrives or the mount goes away, then unmounts.
pub async fn serve_until_stopped(mounted: Mounted, signals: &mut Signals, who: &str) {
    let dir = mounted.dir().display().to_string();
    loop {
        tokio::select! {
            sig = signals.recv() => {
                eprintln!("{who}: {sig}; unmounting {dir}");
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if !mounted.is_mounted() {
                    eprintln!("{who}: {dir} was unmounted");
                    break;
                }
            }
        }
    }
    unmount(mounted, who).await;
}

/// Unmounts on a blocking thread (umount waits for the kernel).
pub async fn unmount(mounted: Mounted, who: &str) {
    match tokio::task::spawn_blocking(move || mounted.unmount()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("{who}: unmount: {e}"),
        Err(e) => eprintln!("{who}: unmount task: {e}"),
    }
}

/// `cairn mount`.
///
/// # Errors
/// Connection or mount failures.
pub async fn run(meta: &str, args: &MountArgs) -> anyhow::Result<()> {
    let mut signals = Signals::new().context("installing signal handlers")?;
    let client = connect(meta, args).await?;
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let (bound, task) = cairn_client::metrics::serve(addr, client.metrics().clone())
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
            Some((bound, task))
        }
        None => None,
    };
    let socket = match &args.metrics_socket {
        Some(path) => Some(
            cairn_client::metrics::serve_unix(path, client.metrics().clone())
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-socket {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mounted = mount(client.clone(), args).await?;
    eprintln!(
        "cairn mount: {} serves {}{} (meta {meta}{}); stop with Ctrl-C or SIGTERM",
        args.dir.display(),
        args.volume.as_deref().unwrap_or("/"),
        if args.read_only { " read-only" } else { "" },
        metrics.as_ref().map_or_else(String::new, |(a, _)| format!(
            ", metrics http://{a}/metrics"
        )),
    );
    serve_until_stopped(mounted, &mut signals, "cairn mount").await;
    if let Some((_, task)) = metrics {
        task.abort();
    }
    if let Some(task) = socket {
        task.abort();
        if let Some(path) = &args.metrics_socket {
            let _ = std::fs::remove_file(path);
        }
    }
    data::close(&client).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        m: MountArgs,
    }

    #[test]
    fn flags_become_the_mount_config() {
        let t = T::parse_from([
            "t",
            "/mnt/x",
            "--volume",
            "/datasets",
            "--attr-ttl",
            "5s",
            "--io-timeout",
            "3s",
            "--no-allow-other",
            "--read-ahead",
            "0",
        ]);
        let c = t.m.config();
        assert_eq!(c.volume.as_deref(), Some("/datasets"));
        assert_eq!(c.fs.attr_ttl, Duration::from_secs(5));
        assert_eq!(c.fs.entry_ttl, Duration::from_secs(1));
        assert_eq!(c.fs.timeout, Duration::from_secs(3));
        assert_eq!(c.allow_other, Some(false));
        assert_eq!(c.read_ahead, None);
        let d = T::parse_from(["t", "/mnt/y"]).m.config();
        assert_eq!(d.allow_other, None);
        assert_eq!(d.read_ahead, Some(8 << 20));
        assert!(!d.fs.direct_io && !d.read_only && !d.auto_unmount);
    }
}
