//! [`MetaCluster`]: real `cairn-meta` processes that a test starts, kills,
//! restarts, wipes and partitions.
//!
//! The shape follows TiKV's `test_raftstore::Cluster`: one object owns
//! every replica of the test, knows how each was started, and answers the
//! questions tests ask about them (who leads, who caught up). The
//! difference is that replicas are whole processes of the built binary,
//! so a kill is a real `SIGKILL` and a restart really recovers from disk.
//!
//! * Each replica has a data directory and a log file (stdout and stderr,
//!   appended across restarts with a marker line per start) under one
//!   temporary directory. [`MetaCluster::dump_logs`] prints their tails;
//!   dropping the cluster while a test panics does so too. Set
//!   `CAIRN_KEEP_DIRS=1` to keep the directory after the test.
//! * Addresses: on loopback, `127.0.0.1` with ports picked by binding port
//!   0 (kept across restarts, so a restarted replica is where its peers
//!   expect it). With [`ClusterOpts::netns`] every replica runs in its own
//!   network namespace of a [`NetLab`] and can be partitioned.
//! * Replica 0 starts with `--bootstrap`; the others with `--join` the
//!   address of replica 0, and the leader promotes them to voters.
//! * Children are started under `setpriv --pdeathsig KILL` when it exists,
//!   so even a test process killed outright leaves no server behind; a
//!   dropped cluster kills every replica it started.
//!
//! Questions are asked through the `Status` RPC of each replica, over a
//! raw gRPC client ([`RawMeta`]) that talks to that one replica only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cairn_client::{MetaClient, MetaClientOptions};
use cairn_proto::meta::{Empty, StatusReply};
use tempfile::TempDir;

use crate::binary;
use crate::netns::NetLab;
use crate::ports::free_ports;
use crate::raw::{RawMeta, raw_client};

/// Port every replica listens on inside its own namespace.
const NETNS_PORT: u16 = 7001;

/// How long one `Status` call may take before the replica counts as not
/// answering.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

/// Lines of each log [`MetaCluster::dump_logs`] prints.
const DUMP_LINES: usize = 80;

/// Log lines [`MetaCluster::dump_logs`] leaves out of its tails: openraft
/// repeats them every heartbeat while a peer is down or cut off (they stay
/// in the files).
const NOISE: [&str; 4] = [
    "openraft::replication",
    "openraft::engine::handler::replication_handler",
    "failure sending RaftMsg to RaftCore",
    "RPCError err=",
];

/// What a server's log says when its listening port was taken.
pub(crate) const PORT_TAKEN: &str = "Address already in use";

/// How a [`MetaCluster`] is started.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Run every replica in its own network namespace (needed for
    /// [`MetaCluster::isolate`]); needs root, iproute2 and nftables.
    pub netns: bool,
    /// `--raft-heartbeat`; `None`: the binary's default.
    pub raft_heartbeat: Option<Duration>,
    /// `--election-timeout`; `None`: the binary's default.
    pub election_timeout: Option<Duration>,
    /// `--replicas`, the voter count the leader grows to; `None`: the
    /// number of replicas started.
    pub replicas: Option<usize>,
    /// More flags for every replica.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` of the replicas (`CAIRN_TEST_LOG` overrides it).
    pub log_filter: String,
    /// How long [`MetaCluster::start`] waits for a leader and all voters.
    pub ready_timeout: Duration,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        Self {
            netns: false,
            // Half the production election timeout keeps failover tests
            // fast; see `with_default_timings` for the production values.
            raft_heartbeat: Some(Duration::from_millis(100)),
            election_timeout: Some(Duration::from_millis(500)),
            replicas: None,
            extra_args: Vec::new(),
            log_filter: "info,openraft=warn".to_string(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl ClusterOpts {
    /// Returns these options with every replica in its own namespace.
    pub fn with_netns(mut self) -> Self {
        self.netns = true;
        self
    }

    /// Returns these options without timing flags: the replicas run the
    /// production heartbeat and election timeout of their defaults.
    pub fn with_default_timings(mut self) -> Self {
        self.raft_heartbeat = None;
        self.election_timeout = None;
        self
    }
}

/// A replica as a leader elected by a majority sees it.
#[derive(Debug, Clone)]
pub struct Leader {
    /// Index of the leading replica in the cluster.
    pub index: usize,
    /// Its Raft node id.
    pub node_id: u64,
    /// Its term.
    pub term: u64,
    /// Its full status.
    pub status: StatusReply,
}

/// One replica: how it is started and its process.
#[derive(Debug)]
struct Replica {
    data_dir: PathBuf,
    log_path: PathBuf,
    listen: SocketAddr,
    advertise: String,
    bootstrap: bool,
    join: Vec<String>,
    netns: Option<String>,
    child: Option<Child>,
    starts: u32,
}

/// A cluster of real `cairn-meta` processes; see the module docs.
pub struct MetaCluster {
    opts: ClusterOpts,
    bin: PathBuf,
    replicas: Vec<Replica>,
    /// Declared after `replicas`: the processes in the namespaces are
    /// killed (in `Drop::drop`) before the namespaces go.
    lab: Option<NetLab>,
    dir: Option<TempDir>,
    /// Set by [`MetaCluster::mark_failed`]: keep the directory on drop.
    failed: bool,
}

impl std::fmt::Debug for MetaCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCluster")
            .field("addrs", &self.addrs())
            .field("dir", &self.dir())
            .finish_non_exhaustive()
    }
}

fn setpriv() -> Option<&'static str> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

fn fmt_ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

impl MetaCluster {
    /// Starts `n` replicas and returns once a leader exists and `n` voters
    /// are in the membership.
    ///
    /// # Errors
    /// When namespaces cannot be set up (with [`ClusterOpts::netns`]), a
    /// process cannot be started, or the cluster is not ready within
    /// [`ClusterOpts::ready_timeout`] (the logs are printed and the
    /// directory kept then).
    ///
    /// # Panics
    /// When the `cairn-meta` binary is missing ("run cargo build --bins
    /// first").
    pub async fn start(n: usize, opts: ClusterOpts) -> Result<MetaCluster> {
        // A port that passed the free check can still be bound by another
        // process before the replica binds it (a CI run saw it once): the
        // replica exits with "address in use", and the start is tried
        // again on fresh ports.
        let mut tries = 0;
        loop {
            let last = tries == 4 || opts.netns;
            match Self::start_once(n, opts.clone(), last).await {
                Err(e) if !last && format!("{e:#}").contains(PORT_TAKEN) => {
                    tries += 1;
                    println!("[cluster] {e:#}; trying other ports");
                }
                r => return r,
            }
        }
    }

    /// One try of [`MetaCluster::start`]. When `last` is false and a
    /// replica could not bind its port, the error says [`PORT_TAKEN`] and
    /// the logs are neither printed nor kept.
    async fn start_once(n: usize, opts: ClusterOpts, last: bool) -> Result<MetaCluster> {
        assert!(n >= 1, "a cluster needs at least one replica");
        let bin = binary::binary("cairn-meta");
        let dir = tempfile::Builder::new()
            .prefix("cairn-jepsen-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let lab = if opts.netns {
            Some(NetLab::create(n)?)
        } else {
            None
        };
        let listens: Vec<SocketAddr> = match &lab {
            Some(lab) => (0..n)
                .map(|i| SocketAddr::from((lab.node_ip(i), NETNS_PORT)))
                .collect(),
            None => free_ports(n)?
                .into_iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
        };
        let first = listens[0].to_string();
        let replicas = (0..n)
            .map(|i| Replica {
                data_dir: dir.path().join(format!("n{i}")),
                log_path: dir.path().join(format!("n{i}.log")),
                listen: listens[i],
                advertise: listens[i].to_string(),
                bootstrap: i == 0,
                join: if i == 0 {
                    Vec::new()
                } else {
                    vec![first.clone()]
                },
                netns: lab.as_ref().map(|l| l.netns(i).to_string()),
                child: None,
                starts: 0,
            })
            .collect();
        let mut cluster = MetaCluster {
            opts,
            bin,
            replicas,
            lab,
            dir: Some(dir),
            failed: false,
        };
        println!(
            "[cluster] starting {n} replicas at {:?} in {}",
            cluster.addrs(),
            cluster.dir().display()
        );
        let started = Instant::now();
        let timeout = cluster.opts.ready_timeout;
        let ready = async {
            cluster.spawn(0)?;
            cluster
                .wait_for_status(0, timeout, "replica 0 to lead", |s| s.state == "Leader")
                .await?;
            for i in 1..n {
                cluster.spawn(i)?;
            }
            cluster.wait_for_voters(n, timeout).await?;
            anyhow::Ok(())
        };
        if let Err(e) = ready.await {
            if !last && let Some(i) = (0..n).find(|&i| cluster.log(i).contains(PORT_TAKEN)) {
                bail!("replica {i} ({}): {PORT_TAKEN}", cluster.addr(i));
            }
            // Dropping it now kills the replicas, prints their logs and
            // keeps the directory.
            cluster.mark_failed();
            return Err(e.context("the cluster did not become ready"));
        }
        println!("[cluster] ready after {}", fmt_ms(started.elapsed()));
        Ok(cluster)
    }

    /// Returns the number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Returns whether the cluster has no replicas (never true).
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Returns the directory holding the data directories and logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("?"), |d| d.path())
    }

    /// Returns the data directory of replica `i`.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.replicas[i].data_dir
    }

    /// Returns the address clients and peers use for replica `i`.
    pub fn addr(&self, i: usize) -> &str {
        &self.replicas[i].advertise
    }

    /// Returns every replica's address.
    pub fn addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.advertise.clone()).collect()
    }

    /// Returns the index of the replica advertising `addr`.
    pub fn index_of_addr(&self, addr: &str) -> Option<usize> {
        self.replicas.iter().position(|r| r.advertise == addr)
    }

    /// Returns the network lab, when the cluster runs in namespaces.
    pub fn lab(&self) -> Option<&NetLab> {
        self.lab.as_ref()
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let filter =
            std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| self.opts.log_filter.clone());
        let replicas = self.opts.replicas.unwrap_or(self.replicas.len());
        let r = &mut self.replicas[i];
        if r.child.is_some() {
            bail!("replica {i} is already running");
        }
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            r.data_dir.display().to_string(),
            "--listen".into(),
            r.listen.to_string(),
            "--advertise".into(),
            r.advertise.clone(),
            "--replicas".into(),
            replicas.to_string(),
        ];
        if let Some(d) = self.opts.raft_heartbeat {
            args.extend(["--raft-heartbeat".into(), format!("{}ms", d.as_millis())]);
        }
        if let Some(d) = self.opts.election_timeout {
            args.extend(["--election-timeout".into(), format!("{}ms", d.as_millis())]);
        }
        if r.bootstrap {
            args.push("--bootstrap".into());
        }
        for j in &r.join {
            args.push("--join".into());
            args.push(j.clone());
        }
        args.extend(self.opts.extra_args.iter().cloned());

        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &r.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Some(sp) = setpriv() {
            argv.extend([sp, "--pdeathsig", "KILL", "--"].map(String::from));
        }
        argv.push(self.bin.display().to_string());
        argv.extend(args);

        r.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log_path)
            .with_context(|| format!("opening {}", r.log_path.display()))?;
        writeln!(
            log,
            "===== [jepsen] start #{} of replica {i}: {} =====",
            r.starts,
            argv.join(" ")
        )?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", filter)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        println!(
            "[cluster] started replica {i} at {} (pid {}, start #{})",
            r.advertise,
            child.id(),
            r.starts
        );
        r.child = Some(child);
        Ok(())
    }

    /// Returns whether replica `i`'s process is running (started and not
    /// exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.replicas[i].child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Returns the indexes of replicas started and not killed.
    pub fn started(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| self.replicas[*i].child.is_some())
            .collect()
    }

    /// Checks that every replica the test started is still running and
    /// that no replica's log reports a panic: a replica that exited by
    /// itself crashed, and one whose Raft task panicked is a zombie (the
    /// process serves, the consensus behind it is gone).
    ///
    /// # Errors
    /// Names each replica that exited, with its exit status, and each
    /// panic with its message.
    pub fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for (i, r) in self.replicas.iter_mut().enumerate() {
            if let Some(c) = r.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                dead.push(format!("replica {i} ({}) exited: {status}", r.advertise));
            }
        }
        dead.extend(self.panics());
        if dead.is_empty() {
            Ok(())
        } else {
            bail!("{}", dead.join("; "))
        }
    }

    /// Kills replica `i` with SIGKILL and reaps it. Killing a stopped
    /// replica does nothing.
    pub fn kill(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        if let Some(mut c) = r.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            println!(
                "[cluster] killed replica {i} ({}) with SIGKILL",
                r.advertise
            );
        }
    }

    /// Restarts the stopped replica `i` with the same data directory,
    /// address and flags.
    ///
    /// # Errors
    /// When it is running or cannot be started.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)
    }

    /// Deletes the data directory of the stopped replica `i` and starts it
    /// again with an empty one, joining through the other replicas (never
    /// bootstrapping): it comes back as a new learner, under a new node id.
    ///
    /// # Errors
    /// When it is running, or the directory cannot be removed.
    pub fn restart_wiped(&mut self, i: usize) -> Result<()> {
        if self.replicas[i].child.is_some() {
            bail!("replica {i} must be stopped before its data is wiped");
        }
        let others: Vec<String> = (0..self.len())
            .filter(|j| *j != i)
            .map(|j| self.replicas[j].advertise.clone())
            .collect();
        let r = &mut self.replicas[i];
        if r.data_dir.exists() {
            std::fs::remove_dir_all(&r.data_dir)
                .with_context(|| format!("removing {}", r.data_dir.display()))?;
        }
        println!("[cluster] wiped {}", r.data_dir.display());
        r.bootstrap = false;
        r.join = others;
        self.spawn(i)
    }

    /// Moves the stopped replica `i` to a new free loopback port: the next
    /// start listens and advertises there (a replica rescheduled to another
    /// host). Only for loopback clusters.
    ///
    /// # Errors
    /// When it is running, the cluster runs in namespaces, or no port is
    /// free.
    pub fn move_to_new_port(&mut self, i: usize) -> Result<String> {
        if self.lab.is_some() {
            bail!("replicas in namespaces keep their address");
        }
        if self.replicas[i].child.is_some() {
            bail!("replica {i} must be stopped before it moves");
        }
        let port = free_ports(1)?[0];
        let r = &mut self.replicas[i];
        r.listen = SocketAddr::from(([127, 0, 0, 1], port));
        r.advertise = r.listen.to_string();
        println!("[cluster] replica {i} moves to {}", r.advertise);
        Ok(r.advertise.clone())
    }

    /// Stops replica `i` with SIGSTOP (it keeps its sockets but answers
    /// nothing) until [`Self::resume`].
    ///
    /// # Errors
    /// When it is not running or `kill` fails.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, "STOP")
    }

    /// Continues a replica paused by [`Self::pause`].
    ///
    /// # Errors
    /// When it is not running or `kill` fails.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        self.signal(i, "CONT")
    }

    fn signal(&mut self, i: usize, sig: &str) -> Result<()> {
        let pid = self.replicas[i]
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("replica {i} is not running"))?;
        let st = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .context("running kill")?;
        if !st.success() {
            bail!("kill -{sig} {pid} failed: {st}");
        }
        println!("[cluster] sent SIG{sig} to replica {i} (pid {pid})");
        Ok(())
    }

    /// Kills every replica (SIGKILL).
    pub fn stop_all(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
    }

    /// Cuts replica `i` off from the other replicas; see
    /// [`NetLab::isolate`].
    ///
    /// # Errors
    /// When the cluster does not run in namespaces, or nft fails.
    pub fn isolate(&self, i: usize) -> Result<()> {
        self.lab
            .as_ref()
            .ok_or_else(|| anyhow!("isolate needs a cluster started with ClusterOpts::netns"))?
            .isolate(i)
    }

    /// Heals the partition of replica `i`.
    ///
    /// # Errors
    /// When the cluster does not run in namespaces, or nft fails.
    pub fn heal(&self, i: usize) -> Result<()> {
        self.lab
            .as_ref()
            .ok_or_else(|| anyhow!("heal needs a cluster started with ClusterOpts::netns"))?
            .heal(i)
    }

    // ------------------------------------------------------------ clients

    /// Returns a raw gRPC client of replica `i` alone (no retries, no
    /// redirection), with a request timeout of `timeout`.
    ///
    /// # Errors
    /// When the address is unusable.
    pub fn direct(&self, i: usize, timeout: Duration) -> Result<RawMeta> {
        raw_client(self.addr(i), timeout)
    }

    /// Returns a [`MetaClient`] over every replica.
    ///
    /// # Errors
    /// When an address is unusable.
    pub async fn client(&self) -> Result<MetaClient> {
        self.client_of(&(0..self.len()).collect::<Vec<_>>()).await
    }

    /// Returns a [`MetaClient`] that knows only the replicas `idx` (it may
    /// still follow a leader hint elsewhere).
    ///
    /// # Errors
    /// When an address is unusable.
    pub async fn client_of(&self, idx: &[usize]) -> Result<MetaClient> {
        let opts = MetaClientOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(8),
            deadline: Duration::from_secs(20),
            client_name: format!("cairn-jepsen/{}", std::process::id()),
            ..MetaClientOptions::default()
        };
        let addrs: Vec<&str> = idx.iter().map(|i| self.addr(*i)).collect();
        Ok(MetaClient::connect(addrs, opts).await?)
    }

    // ------------------------------------------------------------ questions

    /// Returns the status replica `i` reports about itself.
    ///
    /// # Errors
    /// When it does not answer within a short timeout.
    pub async fn status(&self, i: usize) -> Result<StatusReply> {
        let mut c = self.direct(i, STATUS_TIMEOUT)?;
        let r = tokio::time::timeout(STATUS_TIMEOUT, c.status(Empty {}))
            .await
            .map_err(|_| anyhow!("replica {i} ({}) did not answer Status", self.addr(i)))?
            .with_context(|| format!("Status of replica {i} ({})", self.addr(i)))?;
        Ok(r.into_inner())
    }

    /// Waits until replica `i`'s status satisfies `pred`; returns it.
    ///
    /// # Errors
    /// On time-out, with the last status or error seen.
    pub async fn wait_for_status(
        &self,
        i: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&StatusReply) -> bool,
    ) -> Result<StatusReply> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status(i).await {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => format!("{s:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                let panics = self.panics();
                if !panics.is_empty() {
                    bail!(
                        "timed out after {timeout:?} waiting for {what}; replicas PANICKED: {}; last: {last}",
                        panics.join("; ")
                    );
                }
                bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the current leader: the replica that says it leads with the
    /// highest term, confirmed by a majority of the cluster (itself
    /// included) naming it leader in that term. An isolated old leader that
    /// still believes it leads is therefore not taken.
    ///
    /// # Errors
    /// When there is no such leader right now.
    pub async fn find_leader(&self) -> Result<Leader> {
        let mut seen = Vec::new();
        let mut silent = Vec::new();
        for i in self.started() {
            match self.status(i).await {
                Ok(s) => seen.push((i, s)),
                Err(e) => silent.push(format!("{e:#}")),
            }
        }
        let best = seen
            .iter()
            .filter(|(_, s)| s.state == "Leader")
            .max_by_key(|(_, s)| s.term);
        let Some((index, s)) = best else {
            bail!(
                "no replica says it leads: {} {}",
                summarize(&seen),
                silent.join("; ")
            );
        };
        let votes = seen
            .iter()
            .filter(|(_, o)| o.leader_id == s.node_id && o.term == s.term)
            .count();
        if votes * 2 <= self.len() {
            bail!(
                "replica {index} (node {}) leads term {} but only {votes} of {} replicas follow it: {}",
                s.node_id,
                s.term,
                self.len(),
                summarize(&seen)
            );
        }
        Ok(Leader {
            index: *index,
            node_id: s.node_id,
            term: s.term,
            status: s.clone(),
        })
    }

    /// Waits until [`Self::find_leader`] finds a leader.
    ///
    /// # Errors
    /// On time-out, with the last reason.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<Leader> {
        self.wait_for_leader_where(timeout, |_| true).await
    }

    /// Waits until a leader is found that satisfies `pred` (e.g. "not the
    /// replica just killed", "a term above 3").
    ///
    /// # Errors
    /// On time-out, with the last reason.
    pub async fn wait_for_leader_where(
        &self,
        timeout: Duration,
        pred: impl Fn(&Leader) -> bool,
    ) -> Result<Leader> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.find_leader().await {
                Ok(l) if pred(&l) => return Ok(l),
                Ok(l) => format!(
                    "leader is replica {} (node {}, term {}), not the one wanted",
                    l.index, l.node_id, l.term
                ),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("no leader within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the index of the leader, waiting up to 10 s for one.
    ///
    /// # Errors
    /// When there is none.
    pub async fn leader(&self) -> Result<usize> {
        Ok(self.wait_for_leader(Duration::from_secs(10)).await?.index)
    }

    /// Waits until the leader's membership has `n` voters (and no joint
    /// configuration in flight); returns the leader's status.
    ///
    /// # Errors
    /// On time-out.
    pub async fn wait_for_voters(&self, n: usize, timeout: Duration) -> Result<StatusReply> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.find_leader().await {
                Ok(l) => {
                    let voters = l.status.members.iter().filter(|m| m.voter).count();
                    if voters == n {
                        return Ok(l.status);
                    }
                    format!("{voters} voters: {:?}", l.status.members)
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("the cluster did not reach {n} voters within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until replica `i` has applied at least `index`; returns its
    /// status.
    ///
    /// # Errors
    /// On time-out.
    pub async fn wait_applied(
        &self,
        i: usize,
        index: u64,
        timeout: Duration,
    ) -> Result<StatusReply> {
        self.wait_for_status(
            i,
            timeout,
            &format!("replica {i} to apply index {index}"),
            |s| s.applied_index >= index,
        )
        .await
    }

    /// Waits until every started replica has applied what the leader has
    /// applied now; returns the leader and that index.
    ///
    /// # Errors
    /// On time-out, or when there is no leader.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<(Leader, u64)> {
        let leader = self.wait_for_leader(timeout).await?;
        let target = leader.status.applied_index;
        for i in self.started() {
            self.wait_applied(i, target, timeout).await?;
        }
        Ok((leader, target))
    }

    // ------------------------------------------------------------ logs

    /// Returns the whole log of replica `i` (every start).
    pub fn log(&self, i: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.replicas[i].log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Returns every panic reported in the replicas' logs, as "replica i
    /// panicked: <location>: <message>".
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.replicas.len() {
            let log = self.log(i);
            let mut lines = log.lines();
            while let Some(l) = lines.next() {
                if let Some(at) = l.find("panicked at") {
                    let msg = lines.next().unwrap_or_default();
                    out.push(format!("replica {i} {} {msg}", &l[at..]));
                }
            }
        }
        out
    }

    /// Marks the test as failed: the temporary directory (data and logs)
    /// is kept when the cluster is dropped. A panic while the cluster is
    /// dropped does the same.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    /// Prints the last lines of every replica's log, and before them every
    /// line of any log that reports a panic (with the 30 lines after it).
    pub fn dump_logs(&self) {
        for (i, r) in self.replicas.iter().enumerate() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            for (n, _) in lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains("panicked at"))
            {
                println!(
                    "----- replica {i}: PANIC at line {} of {} -----",
                    n + 1,
                    r.log_path.display()
                );
                for l in lines.iter().skip(n).take(30) {
                    println!("{l}");
                }
            }
        }
        for (i, r) in self.replicas.iter().enumerate() {
            println!(
                "----- replica {i} ({}) log {} (last {DUMP_LINES} lines) -----",
                r.advertise,
                r.log_path.display()
            );
            let (lines, skipped) = tail(&r.log_path, DUMP_LINES);
            for line in lines {
                println!("{line}");
            }
            if skipped > 0 {
                println!("({skipped} repetitive openraft lines left out; see the file)");
            }
        }
        println!("----- end of logs -----");
    }
}

/// Returns the last `n` lines of the file at `path` that are not
/// [`NOISE`] (reading at most its last 1 MiB), and how many noise lines
/// were left out among them.
fn tail(path: &Path, n: usize) -> (Vec<String>, usize) {
    let Ok(mut f) = File::open(path) else {
        return (vec!["(no log)".to_string()], 0);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(1 << 20)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let (noise, kept): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| NOISE.iter().any(|p| l.contains(p)));
    let lines = kept[kept.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect();
    (lines, noise.len())
}

/// One line per replica: state, node id, term, leader, applied index.
fn summarize(seen: &[(usize, StatusReply)]) -> String {
    seen.iter()
        .map(|(i, s)| {
            format!(
                "[{i}: node {} {} term {} leader {} applied {}]",
                s.node_id, s.state, s.term, s.leader_id, s.applied_index
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Drop for MetaCluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking() || self.failed;
        self.stop_all();
        if failed {
            self.dump_logs();
        }
        let keep = std::env::var("CAIRN_KEEP_DIRS").is_ok_and(|v| v == "1");
        if (keep || failed)
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            println!("[cluster] kept {}", path.display());
        }
    }
}
