//! The servers of the `chunk` workload: one `cairn-meta` replica, started
//! through [`crate::cluster`] (the `cairn-jepsen` harness, as every
//! workload does), and [`CHUNKSERVERS`] `cairn-chunkserver` processes
//! started here, since the harness knows only meta.
//!
//! Each chunkserver gets its own data directory and log file (its stderr)
//! in the run's working directory, one shard, and a metrics listener on a
//! free loopback port. It is ready when it prints its one stdout line,
//! `cairn-chunkserver ready: shards ADDR,...`; the pipe stays open for the
//! process's life so a late write to stdout can never fail. Children are
//! started under `setpriv --pdeathsig KILL` when it exists (as the harness
//! starts meta), so even a benchmark killed outright leaves no server
//! behind, and are killed when dropped.
//!
//! Scrubbing: every chunkserver scrubs once at start, over an empty store,
//! and `--scrub-interval` keeps the next pass out of the run, so the
//! scrubber never reads while a phase measures.
//!
//! Routing: meta adds chains as chunkservers register ([`Servers::routes`]
//! waits for them): a replication-1 table with one chain per target and a
//! replication-3 table once three chunkservers exist. The workload uses
//! the 1-replica chain of the first chunkserver and the 3-replica chain
//! that the first chunkserver heads. With one shard per chunkserver, every
//! chunk lives on shard 0, so a chain member's address is its
//! chunkserver's only shard port.
//!
//! [`scrape`] reads a chunkserver's request counters from its Prometheus
//! page (`request_duration_seconds` sum and count per opcode), which tells
//! how much of a request's time the server spent handling it;
//! [`cpu_seconds`] reads how much CPU a process has used, which tells a
//! server that computes from one that waits.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cairn_proto::ids::{ChainId, ChainVersion};
use cairn_proto::meta::{ChainTables, Empty, TargetState};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::cluster::{Cluster, ClusterOptions};

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
    /// Starts meta, then the chunkservers, and returns once every
    /// chunkserver printed its ready line.
    ///
    /// # Errors
    /// A missing binary, a process that does not start or exits, or one
    /// that is not ready within 30 s (its log's tail is in the error).
    pub async fn start(dir: &Path, bin_dir: &Path) -> Result<Servers> {
        let meta = Cluster::start(ClusterOptions {
            replicas: 1,
            data_dir: dir.join("meta"),
            bin_dir: bin_dir.to_path_buf(),
        })
        .await
        .context("starting cairn-meta")?;
        let meta_addr = meta
            .addrs()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the meta cluster has no replica"))?;
        let mut servers = Servers {
            meta,
            chunkservers: Vec::with_capacity(CHUNKSERVERS),
        };
        let bin = bin_dir.join("cairn-chunkserver");
        for i in 1..=CHUNKSERVERS {
            let cs = spawn_chunkserver(&bin, &format!("cs{i}"), &meta_addr, dir)
                .await
                .with_context(|| format!("starting chunkserver cs{i}"))?;
            eprintln!(
                "chunk: {} ready at {} (pid {}, log {})",
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

    /// Returns the meta replica's address.
    pub fn meta_addr(&self) -> String {
        self.meta.addrs().into_iter().next().unwrap_or_default()
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

    /// Waits until meta's chain tables hold the chains the run needs with
    /// every member serving, then gives the chunkservers a moment to see
    /// the same table, and returns the chains.
    ///
    /// # Errors
    /// When meta does not answer or the chains are not there within 30 s.
    pub async fn routes(&self) -> Result<Routes> {
        let addr = self.meta_addr();
        let meta = cairn_jepsen::raw::raw_client(&addr, Duration::from_secs(2))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match meta.clone().get_chains(Empty {}).await {
                Ok(t) => match self.resolve(&t.into_inner()) {
                    Ok(routes) => {
                        tokio::time::sleep(TABLE_PROPAGATION).await;
                        return Ok(routes);
                    }
                    Err(why) => why,
                },
                Err(e) => format!("GetChains: {}", e.message()),
            };
            if Instant::now() > deadline {
                bail!(
                    "the chunkservers did not join their chains within {READY_TIMEOUT:?}: {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Finds the run's chains in `t`, or says what is missing.
    fn resolve(&self, t: &ChainTables) -> Result<Routes, String> {
        // Meta's chunkserver id of each process, found by its address.
        let mut ids = Vec::with_capacity(self.chunkservers.len());
        for cs in &self.chunkservers {
            let info = t
                .chunkservers
                .iter()
                .find(|i| {
                    i.shard_ports
                        .first()
                        .is_some_and(|p| format!("{}:{p}", i.host) == cs.shard_addr)
                })
                .ok_or_else(|| format!("{} has not registered yet", cs.name))?;
            ids.push(info.id);
        }
        let route = |replication: u32| -> Result<ChainRoute, String> {
            let table = t
                .tables
                .iter()
                .find(|tb| tb.replication == replication)
                .ok_or_else(|| format!("no {replication}-replica chain table yet"))?;
            let serving = |c: &&cairn_proto::meta::Chain| {
                c.targets.len() == replication as usize
                    && c.targets
                        .iter()
                        .all(|m| m.state == TargetState::Serving as i32)
            };
            let chain = table
                .chains
                .iter()
                .filter(serving)
                .find(|c| c.targets[0].chunkserver_id == ids[0])
                .or_else(|| table.chains.iter().find(serving))
                .ok_or_else(|| format!("no serving {replication}-replica chain yet"))?;
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

/// Starts one chunkserver named `name` with its directory and log in
/// `dir`, and waits for its ready line.
async fn spawn_chunkserver(
    bin: &Path,
    name: &str,
    meta_addr: &str,
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
        .arg(meta_addr)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", "127.0.0.1", "--port", "0", "--shards", "1"])
        .args(["--scrub-rate", "0", "--scrub-interval", "100h"])
        .arg("--metrics-listen")
        .arg(metrics_addr.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
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

/// Request counters of one chunkserver at one moment: opcode → (requests,
/// seconds spent handling them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpTimes(pub BTreeMap<String, (u64, f64)>);

impl OpTimes {
    /// Parses the `request_duration_seconds` sums and counts of a
    /// chunkserver's metrics page.
    pub fn parse(page: &str) -> OpTimes {
        const SERIES: &str = "cairn_chunkserver_request_duration_seconds_";
        let mut out = BTreeMap::<String, (u64, f64)>::new();
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(SERIES) else {
                continue;
            };
            let (kind, rest) = if let Some(r) = rest.strip_prefix("sum{op=\"") {
                ("sum", r)
            } else if let Some(r) = rest.strip_prefix("count{op=\"") {
                ("count", r)
            } else {
                continue;
            };
            let Some((op, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let e = out.entry(op.to_string()).or_default();
            if kind == "sum" {
                e.1 = v;
            } else {
                e.0 = v as u64;
            }
        }
        OpTimes(out)
    }

    /// Returns, per opcode with requests in between, how many requests
    /// were handled from `before` to `self` and the mean seconds each.
    pub fn since(&self, before: &OpTimes) -> Vec<(String, u64, f64)> {
        self.0
            .iter()
            .filter_map(|(op, &(n, s))| {
                let (n0, s0) = before.0.get(op).copied().unwrap_or_default();
                let dn = n.checked_sub(n0).filter(|&d| d > 0)?;
                Some((op.clone(), dn, (s - s0).max(0.0) / dn as f64))
            })
            .collect()
    }
}

/// Reads the request counters of the chunkserver serving metrics at
/// `addr`.
///
/// # Errors
/// When the page cannot be fetched in 5 s.
pub async fn scrape(addr: SocketAddr) -> Result<OpTimes> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut page = String::new();
        s.read_to_string(&mut page).await?;
        std::io::Result::Ok(page)
    };
    let page = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow!("no answer from {addr} in 5 s"))?
        .with_context(|| format!("fetching http://{addr}/metrics"))?;
    Ok(OpTimes::parse(&page))
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`,
/// 100 on every Linux architecture this runs on).
const USER_HZ: f64 = 100.0;

/// Returns the CPU time (user + system, all threads, exited ones
/// included) process `pid` has used, in seconds with a 10 ms resolution,
/// or `None` when it cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat)
}

/// Returns utime + stime of a `/proc/<pid>/stat` line, in seconds.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its last `)` start with field 3 (state), so utime and
    // stime (fields 14 and 15) are the 12th and 13th.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_from_proc_stat() {
        let stat = "4672 (cairn (chunk)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 14 0 100";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn parses_request_times_and_differences() {
        let page = "\
# TYPE cairn_chunkserver_request_duration_seconds histogram
cairn_chunkserver_request_duration_seconds_bucket{op=\"read\",le=\"0.00001\"} 3
cairn_chunkserver_request_duration_seconds_sum{op=\"read\"} 0.5
cairn_chunkserver_request_duration_seconds_count{op=\"read\"} 10
cairn_chunkserver_request_duration_seconds_sum{op=\"write\"} 0
cairn_chunkserver_request_duration_seconds_count{op=\"write\"} 0
cairn_chunkserver_requests_total{op=\"read\"} 10
";
        let before = OpTimes::parse(page);
        assert_eq!(before.0.get("read"), Some(&(10, 0.5)));
        assert_eq!(before.0.get("write"), Some(&(0, 0.0)));
        let after = OpTimes::parse(&page.replace("} 0.5", "} 1.5").replace("} 10\n", "} 30\n"));
        assert_eq!(after.since(&before), vec![("read".to_string(), 20, 0.05)]);
        assert!(before.since(&before).is_empty());
    }
}
