//! The servers of the data-path workloads (`chunk`, `client`):
//! `cairn-meta` replicas, started through [`crate::cluster`] (the
//! `cairn-jepsen` harness, as every workload does), and [`CHUNKSERVERS`]
//! `cairn-chunkserver` processes started here, since the harness knows
//! only meta; and [`Setup`], what such a workload checks and prepares
//! before it starts them.
//!
//! Each chunkserver gets its own data directory and log file (its stderr)
//! in the run's working directory, one shard, every meta replica's
//! address, and a metrics listener on a free loopback port. It is ready
//! when it prints its one stdout line, `cairn-chunkserver ready: shards
//! ADDR,...`; the pipe stays open for the process's life so a late write
//! to stdout can never fail. Children are started under `setpriv
//! --pdeathsig KILL` when it exists (as the harness starts meta), so even a
//! benchmark killed outright leaves no server behind, and are killed when
//! dropped. [`Servers::run_then_stop`] runs a workload against them, reads
//! every process's peak memory while they are still alive, and stops them,
//! also on failure or Ctrl-C.
//!
//! Scrubbing: every chunkserver scrubs once at start, over an empty store,
//! and `--scrub-interval` keeps the next pass out of the run, so the
//! scrubber never reads while a phase measures.
//!
//! Routing: meta adds chains as chunkservers register ([`Servers::routes`]
//! and [`Servers::serving_chains`] wait for them): a replication-1 table
//! with one chain per target and a replication-3 table once three
//! chunkservers exist, one chain per target too, each target once at
//! each position. `cairn-bench chunk` uses the 1-replica chain of the
//! first chunkserver and the 3-replica chain that the first chunkserver
//! heads; with one shard per chunkserver, every chunk lives on shard 0, so
//! a chain member's address is its chunkserver's only shard port.
//! `cairn-bench client` lets the client library route, over every chain.
//!
//! What the servers did during a run (handling times, CPU) is read by
//! [`crate::watch`].

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use cairn_client::{MetaClient, MetaClientOptions};
use cairn_proto::ids::{ChainId, ChainVersion};
use cairn_proto::meta::{Chain, ChainTable, ChainTables, TargetState};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::cluster::{Cluster, ClusterOptions};
use crate::machine::{self, FsInfo};
use crate::meta::DataLocation;
use crate::{CommonArgs, ProcessRss, build_profile};

/// Chunkservers a run starts: enough for one 3-replica chain.
pub const CHUNKSERVERS: usize = 3;

/// How long a chunkserver may take to print its ready line, and the chain
/// tables to include every chunkserver.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a chunkserver prints on stdout once its shards listen.
const READY_PREFIX: &str = "cairn-chunkserver ready: shards ";

/// How long chunkservers get to learn a chain table meta just published.
const TABLE_PROPAGATION: Duration = Duration::from_millis(300);

/// Log lines of a chunkserver an error message quotes.
const LOG_TAIL_LINES: usize = 20;

/// One `cairn-chunkserver` process.
#[derive(Debug)]
pub struct ChunkserverProc {
    /// Its name in tables: `cs1`, `cs2`, ….
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its shard's data-plane address (`127.0.0.1:port`).
    pub shard_addr: String,
    /// Where its Prometheus metrics are served.
    pub metrics_addr: SocketAddr,
    /// Its stderr.
    pub log_path: PathBuf,
    child: Child,
    /// Kept open: see the module docs.
    _stdout: Lines<BufReader<ChildStdout>>,
}

/// One member of a chain, head first.
#[derive(Debug, Clone, Serialize)]
pub struct RouteMember {
    /// The member's target.
    pub target_id: u64,
    /// Its chunkserver as meta numbers it.
    pub chunkserver_id: u64,
    /// Its chunkserver's name in this run (`cs1`, …).
    pub name: String,
    /// Its shard's address.
    pub addr: String,
    /// Index of its process in [`Servers::chunkservers`].
    #[serde(skip)]
    pub process: usize,
}

/// A chain as the benchmark routes to it.
#[derive(Debug, Clone, Serialize)]
pub struct ChainRoute {
    /// The chain.
    pub chain: ChainId,
    /// Its version (sent with every request, for fencing).
    pub chain_version: ChainVersion,
    /// Its members, head first.
    pub members: Vec<RouteMember>,
}

impl ChainRoute {
    /// Returns the head's address, where writes (and this benchmark's
    /// reads) go.
    pub fn head(&self) -> &str {
        self.members.first().map_or("", |m| m.addr.as_str())
    }

    /// Returns the members' names head to tail, `cs1 → cs2 → cs3`.
    pub fn path(&self) -> String {
        self.members
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

/// The two chains a run uses.
#[derive(Debug, Clone, Serialize)]
pub struct Routes {
    /// A 1-replica chain on the first chunkserver.
    pub single: ChainRoute,
    /// A 3-replica chain headed by the first chunkserver.
    pub replicated: ChainRoute,
    /// The chain-table version they were read from.
    pub table_version: u64,
}

/// Meta and the chunkservers of a run; [`Servers::stop`] (or dropping
/// them) kills every process.
pub struct Servers {
    meta: Cluster,
    chunkservers: Vec<ChunkserverProc>,
}

/// Returns a free loopback port (bound, then released).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn setpriv() -> Option<&'static str> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

/// Returns the last `n` lines of the file at `path` (empty when it cannot
/// be read).
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Servers {
    /// Starts `meta_replicas` meta replicas, then the chunkservers, and
    /// returns once every chunkserver printed its ready line.
    ///
    /// # Errors
    /// A missing binary, a process that does not start or exits, or one
    /// that is not ready within 30 s (its log's tail is in the error).
    pub async fn start(dir: &Path, bin_dir: &Path, meta_replicas: usize) -> Result<Servers> {
        let meta = Cluster::start(ClusterOptions {
            replicas: meta_replicas,
            data_dir: dir.join("meta"),
            bin_dir: bin_dir.to_path_buf(),
        })
        .await
        .context("starting cairn-meta")?;
        let meta_addrs = meta.addrs().join(",");
        if meta_addrs.is_empty() {
            bail!("the meta cluster has no replica");
        }
        let mut servers = Servers {
            meta,
            chunkservers: Vec::with_capacity(CHUNKSERVERS),
        };
        let bin = bin_dir.join("cairn-chunkserver");
        for i in 1..=CHUNKSERVERS {
            let cs = spawn_chunkserver(&bin, &format!("cs{i}"), &meta_addrs, dir)
                .await
                .with_context(|| format!("starting chunkserver cs{i}"))?;
            eprintln!(
                "servers: {} ready at {} (pid {}, log {})",
                cs.name,
                cs.shard_addr,
                cs.pid,
                cs.log_path.display()
            );
            servers.chunkservers.push(cs);
        }
        Ok(servers)
    }

    /// Returns the chunkserver processes, in start order.
    pub fn chunkservers(&self) -> &[ChunkserverProc] {
        &self.chunkservers
    }

    /// Returns every meta replica's address.
    pub fn meta_addrs(&self) -> Vec<String> {
        self.meta.addrs()
    }

    /// Returns `(replica index, pid)` of every meta replica found.
    pub fn meta_pids(&self) -> Vec<(usize, u32)> {
        self.meta.pids()
    }

    /// Returns `(name, pid)` of every process started.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut out = self.meta.processes();
        out.extend(self.chunkservers.iter().map(|c| {
            (
                format!("cairn-chunkserver {} ({})", c.name, c.shard_addr),
                c.pid,
            )
        }));
        out
    }

    /// Returns the peak resident memory of every process started, and of
    /// this one, which tables call `this_process`.
    pub fn peak_rss(&self, this_process: &str) -> Vec<ProcessRss> {
        let mut out: Vec<ProcessRss> = self
            .processes()
            .into_iter()
            .map(|(name, pid)| ProcessRss::read(name, pid))
            .collect();
        out.push(ProcessRss::read(
            this_process.to_string(),
            std::process::id(),
        ));
        out
    }

    /// Runs `work` against the servers until it ends or Ctrl-C, reads the
    /// peak resident memory of every process (as [`Self::peak_rss`]) while
    /// they are still alive, stops them, and returns both.
    pub async fn run_then_stop<T>(
        self,
        this_process: &str,
        work: impl AsyncFnOnce(&Servers) -> Result<T>,
    ) -> (Result<T>, Vec<ProcessRss>) {
        let result = tokio::select! {
            r = work(&self) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        };
        // Read before stopping: VmHWM is gone with the process.
        let peak_rss = self.peak_rss(this_process);
        self.stop().await;
        (result, peak_rss)
    }

    /// Polls meta's chain tables until `find` accepts them (returns `Ok`)
    /// or 30 s pass, then gives the chunkservers a moment to see the same
    /// table.
    async fn wait_for_tables<T>(
        &self,
        find: impl Fn(&ChainTables) -> Result<T, String>,
    ) -> Result<T> {
        let meta = MetaClient::connect(self.meta_addrs(), MetaClientOptions::default())
            .await
            .context("connecting to meta")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match meta.get_chains().await {
                Ok(t) => match find(&t) {
                    Ok(found) => {
                        tokio::time::sleep(TABLE_PROPAGATION).await;
                        return Ok(found);
                    }
                    Err(why) => why,
                },
                Err(e) => format!("GetChains: {e}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "the chunkservers did not join their chains within {READY_TIMEOUT:?}: {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until meta's chain tables hold the chains `cairn-bench chunk`
    /// needs with every member serving, and returns them.
    ///
    /// # Errors
    /// When meta does not answer or the chains are not there within 30 s.
    pub async fn routes(&self) -> Result<Routes> {
        self.wait_for_tables(|t| self.resolve(t)).await
    }

    /// Waits until the table of `replication` has one chain per
    /// chunkserver (each has one target) with every member serving, and
    /// returns its chains.
    ///
    /// # Errors
    /// When meta does not answer or the chains are not there within 30 s.
    pub async fn serving_chains(&self, replication: u32) -> Result<Vec<ChainRoute>> {
        self.wait_for_tables(|t| {
            let ids = self.chunkserver_ids(t)?;
            let table = table(t, replication)?;
            if table.chains.len() < self.chunkservers.len() {
                return Err(format!(
                    "{} of {} {replication}-replica chains so far",
                    table.chains.len(),
                    self.chunkservers.len()
                ));
            }
            table
                .chains
                .iter()
                .map(|c| {
                    if serving(c, replication) {
                        self.chain_route(&ids, c)
                    } else {
                        Err(format!("chain {} is not serving yet", c.id))
                    }
                })
                .collect()
        })
        .await
    }

    /// Returns meta's chunkserver id of each process, found by its
    /// address, or says which has not registered.
    fn chunkserver_ids(&self, t: &ChainTables) -> Result<Vec<u64>, String> {
        self.chunkservers
            .iter()
            .map(|cs| {
                t.chunkservers
                    .iter()
                    .find(|i| {
                        i.shard_ports
                            .first()
                            .is_some_and(|p| format!("{}:{p}", i.host) == cs.shard_addr)
                    })
                    .map(|info| info.id)
                    .ok_or_else(|| format!("{} has not registered yet", cs.name))
            })
            .collect()
    }

    /// Returns `chain` as a route, its members named by this run's
    /// processes (`ids` from [`Self::chunkserver_ids`]).
    fn chain_route(&self, ids: &[u64], chain: &Chain) -> Result<ChainRoute, String> {
        let members = chain
            .targets
            .iter()
            .map(|m| {
                let process = ids
                    .iter()
                    .position(|&id| id == m.chunkserver_id)
                    .ok_or_else(|| {
                        format!(
                            "chain {} has a member on chunkserver {}, not one of this run's",
                            chain.id, m.chunkserver_id
                        )
                    })?;
                let cs = &self.chunkservers[process];
                Ok(RouteMember {
                    target_id: m.target_id,
                    chunkserver_id: m.chunkserver_id,
                    name: cs.name.clone(),
                    addr: cs.shard_addr.clone(),
                    process,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ChainRoute {
            chain: ChainId(chain.id),
            chain_version: ChainVersion(chain.version),
            members,
        })
    }

    /// Finds the chains of `cairn-bench chunk` in `t`, or says what is
    /// missing.
    fn resolve(&self, t: &ChainTables) -> Result<Routes, String> {
        let ids = self.chunkserver_ids(t)?;
        let route = |replication: u32| -> Result<ChainRoute, String> {
            let table = table(t, replication)?;
            let chain = table
                .chains
                .iter()
                .filter(|c| serving(c, replication))
                .find(|c| c.targets[0].chunkserver_id == ids[0])
                .or_else(|| table.chains.iter().find(|c| serving(c, replication)))
                .ok_or_else(|| format!("no serving {replication}-replica chain yet"))?;
            self.chain_route(&ids, chain)
        };
        Ok(Routes {
            single: route(1)?,
            replicated: route(CHUNKSERVERS as u32)?,
            table_version: t.version,
        })
    }

    /// Kills every chunkserver, then meta (which removes its directory).
    pub async fn stop(mut self) {
        for cs in &mut self.chunkservers {
            let _ = cs.child.start_kill();
            let _ = cs.child.wait().await;
        }
        self.meta.stop().await;
    }
}

/// Returns the chain table of `replication` in `t`, or says it is missing.
fn table(t: &ChainTables, replication: u32) -> Result<&ChainTable, String> {
    t.tables
        .iter()
        .find(|tb| tb.replication == replication)
        .ok_or_else(|| format!("no {replication}-replica chain table yet"))
}

/// Returns whether `c` has all `replication` members, every one serving.
fn serving(c: &Chain, replication: u32) -> bool {
    c.targets.len() == replication as usize
        && c.targets
            .iter()
            .all(|m| m.state == TargetState::Serving as i32)
}

/// What a data-path workload checks and prepares before it starts the
/// servers: both binaries, a working directory on a disk, the start time
/// and the first notes.
pub struct Setup {
    started: Instant,
    started_unix: u64,
    /// Directory holding the binaries.
    pub bin_dir: PathBuf,
    meta_binary: PathBuf,
    chunkserver_binary: PathBuf,
    /// The run's working directory: the servers' data and logs, the
    /// baselines' files.
    pub work: tempfile::TempDir,
    fs: Option<FsInfo>,
    /// Things a reader of the report should know (warnings); a workload
    /// adds its own.
    pub notes: Vec<String>,
}

/// What [`Setup::finish`] returns for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    /// Unix time the run started, in seconds.
    pub started_unix: u64,
    /// Seconds the whole benchmark took, server start and stop included.
    pub seconds: f64,
    /// The cairn-meta binary that ran.
    pub meta_binary: PathBuf,
    /// The cairn-chunkserver binary that ran.
    pub chunkserver_binary: PathBuf,
    /// Where the data lived.
    pub data: DataLocation,
    /// Things a reader should know about this run (warnings).
    pub notes: Vec<String>,
}

impl Setup {
    /// Checks that both binaries exist and makes the working directory
    /// `cairn-bench-WORKLOAD-…` in --data-dir; prints the first notes.
    ///
    /// # Errors
    /// A missing binary, a directory that cannot be made, or one on tmpfs
    /// (no `O_DIRECT` and no disk to measure).
    pub fn new(common: &CommonArgs, workload: &str) -> Result<Setup> {
        let started = Instant::now();
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let bin_dir = common.bin_dir()?;
        let meta_binary = bin_dir.join("cairn-meta");
        let chunkserver_binary = bin_dir.join("cairn-chunkserver");
        for (b, krate) in [
            (&meta_binary, "cairn-meta"),
            (&chunkserver_binary, "cairn-chunkserver"),
        ] {
            if !b.is_file() {
                bail!(
                    "{} not found: build it with `cargo build --release -p {krate}`, or point \
                     --bin-dir / CAIRN_BIN_DIR at the directory that holds it",
                    b.display()
                );
            }
        }
        let work = common.work_dir(&format!("cairn-bench-{workload}-"))?;
        let fs = machine::fs_of(work.path());
        if let Some(f) = fs.as_ref().filter(|f| f.fs_type == "tmpfs") {
            bail!(
                "the data directory is on tmpfs ({}), which has no O_DIRECT and no disk to \
                 measure: pass --data-dir on a disk",
                f.mount_point
            );
        }
        let mut notes = Vec::new();
        if build_profile() == "debug" {
            notes.push("cairn-bench is a debug build: client-side figures are pessimistic".into());
        }
        for n in &notes {
            eprintln!("warning: {n}");
        }
        Ok(Setup {
            started,
            started_unix,
            bin_dir,
            meta_binary,
            chunkserver_binary,
            work,
            fs,
            notes,
        })
    }

    /// Removes the working directory (or keeps it with --keep-data) and
    /// returns the run's facts for the report.
    ///
    /// # Errors
    /// When the directory cannot be removed.
    pub fn finish(self, common: &CommonArgs) -> Result<Finished> {
        let data = DataLocation {
            dir: self.work.path().to_path_buf(),
            fs: self.fs,
            kept: common.keep_data,
        };
        common.finish_work_dir(self.work)?;
        Ok(Finished {
            started_unix: self.started_unix,
            seconds: self.started.elapsed().as_secs_f64(),
            meta_binary: self.meta_binary,
            chunkserver_binary: self.chunkserver_binary,
            data,
            notes: self.notes,
        })
    }
}

/// Starts one chunkserver named `name` with its directory and log in
/// `dir`, talking to the meta replicas `meta_addrs` (comma separated), and
/// waits for its ready line.
async fn spawn_chunkserver(
    bin: &Path,
    name: &str,
    meta_addrs: &str,
    dir: &Path,
) -> Result<ChunkserverProc> {
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p cairn-chunkserver`",
            bin.display()
        );
    }
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = match setpriv() {
        Some(sp) => {
            let mut c = Command::new(sp);
            c.args(["--pdeathsig", "KILL", "--"]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("--meta")
        .arg(meta_addrs)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", "127.0.0.1", "--port", "0", "--shards", "1"])
        .args(["--scrub-rate", "0", "--scrub-interval", "100h"])
        .arg("--metrics-listen")
        .arg(metrics_addr.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        // Heap allocations per request, beside the handling times.
        .env("CAIRN_COUNT_ALLOCATIONS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{name}'s stdout is not piped"))?;
    let mut lines = BufReader::new(stdout).lines();
    let failed = |why: String| {
        anyhow!(
            "{why}; the last lines of {}:\n{}",
            log_path.display(),
            log_tail(&log_path, LOG_TAIL_LINES)
        )
    };
    let line = match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
        Err(_) => return Err(failed(format!("not ready within {READY_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(failed(format!("reading its stdout: {e}"))),
        Ok(Ok(None)) => {
            let status = child.wait().await.map(|s| s.to_string());
            return Err(failed(format!(
                "it exited before it was ready ({})",
                status.unwrap_or_else(|e| e.to_string())
            )));
        }
        Ok(Ok(Some(line))) => line,
    };
    let shards = line
        .strip_prefix(READY_PREFIX)
        .ok_or_else(|| failed(format!("unexpected first line on stdout: {line:?}")))?;
    let shard_addr = shards
        .split(',')
        .next()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| failed(format!("no shard address in {line:?}")))?
        .to_string();
    Ok(ChunkserverProc {
        name: name.to_string(),
        pid,
        shard_addr,
        metrics_addr,
        log_path,
        child,
        _stdout: lines,
    })
}
