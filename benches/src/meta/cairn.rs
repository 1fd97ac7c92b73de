//! The Cairn side of the `meta` workload: `C` clients against a running
//! meta cluster, each a separate [`MetaClient`] (its own channels and its
//! own session, as separate processes would have), each in a directory of
//! its own.
//!
//! Per client count: the clients are connected, their sessions opened and
//! their directories made before anything is timed (so the first timed
//! call finds a warm connection to the leader). Then four phases, each
//! started on every client at once and timed from the first call to the
//! last reply:
//!
//! 1. create: `n` exclusive creates (`O_EXCL`, not opened for write),
//! 2. stat: `n` linearizable `getattr`s of files picked at random among the
//!    client's own creates (meta confirms its leadership through the read
//!    index; clients cache nothing),
//! 3. rename: `n` renames `f…` → `r…` inside the client's directory,
//! 4. unlink: `n` unlinks of the renamed files.
//!
//! Around each phase the Raft counters of every replica are read
//! ([`StatusReply::log_entries_appended`], [`StatusReply::log_flushes`]),
//! so each mutating phase reports how many log entries the leader made
//! durable per fsync: the group-commit factor.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_client::{MetaClient, MetaClientOptions, Owner, RenameFlags};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::StatusReply;
use tokio::task::JoinSet;

use super::{
    Phase, PhaseResult, RaftDelta, ReplicaDelta, SplitMix, SystemKind, SystemResult, file_name,
    renamed_name,
};
use crate::latency::Samples;

/// Mode of the files and directories the benchmark creates.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// One benchmark client.
struct Client {
    meta: MetaClient,
    dir: InodeId,
    owner: Owner,
    /// Inodes of this client's creates, in creation order.
    files: Vec<InodeId>,
    rng: SplitMix,
}

impl Client {
    async fn create(&mut self, n: usize) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        self.files.reserve(n);
        for i in 0..n {
            let name = file_name(i);
            let start = Instant::now();
            let e = self
                .meta
                .create(self.dir, &name, FILE_MODE, self.owner, true, false)
                .await
                .with_context(|| format!("create {name} in directory {}", self.dir))?;
            samples.record(start.elapsed());
            self.files.push(InodeId(e.attr.ino));
        }
        Ok(samples)
    }

    async fn stat(&mut self, n: usize) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        for _ in 0..n {
            let ino = self.files[self.rng.below(self.files.len())];
            let start = Instant::now();
            self.meta
                .getattr(ino)
                .await
                .with_context(|| format!("getattr of inode {ino}"))?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }

    async fn rename(&mut self, n: usize) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        for i in 0..n {
            let (from, to) = (file_name(i), renamed_name(i));
            let start = Instant::now();
            self.meta
                .rename(self.dir, &from, self.dir, &to, RenameFlags::NONE)
                .await
                .with_context(|| format!("rename {from} to {to} in directory {}", self.dir))?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }

    async fn unlink(&mut self, n: usize) -> Result<Samples> {
        let mut samples = Samples::with_capacity(n);
        for i in 0..n {
            let name = renamed_name(i);
            let start = Instant::now();
            self.meta
                .unlink(self.dir, &name)
                .await
                .with_context(|| format!("unlink {name} in directory {}", self.dir))?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }

    async fn run(mut self, phase: Phase, n: usize) -> (Self, Result<Samples>) {
        let r = match phase {
            Phase::Create => self.create(n).await,
            Phase::Stat => self.stat(n).await,
            Phase::Rename => self.rename(n).await,
            Phase::Unlink => self.unlink(n).await,
        };
        (self, r)
    }
}

/// Reads the status of every replica, concurrently; `None` for a replica
/// that did not answer.
async fn statuses(admin: &MetaClient, addrs: &[String]) -> Vec<Option<StatusReply>> {
    let mut set = JoinSet::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (admin, addr) = (admin.clone(), addr.clone());
        set.spawn(async move { (i, admin.status_at(&addr).await.ok()) });
    }
    let mut out = vec![None; addrs.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, s)) = joined {
            out[i] = s;
        }
    }
    out
}

/// Returns the Raft counter deltas between two reads of every replica.
fn raft_delta(
    addrs: &[String],
    before: &[Option<StatusReply>],
    after: &[Option<StatusReply>],
) -> RaftDelta {
    let is_leader = |s: &StatusReply| s.state.eq_ignore_ascii_case("leader");
    let replicas: Vec<ReplicaDelta> = addrs
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|(addr, pair)| match pair {
            (Some(b), Some(a)) => Some(ReplicaDelta {
                node_id: a.node_id,
                addr: addr.clone(),
                leader: is_leader(b) && is_leader(a) && a.term == b.term,
                entries_appended: a
                    .log_entries_appended
                    .saturating_sub(b.log_entries_appended),
                flushes: a.log_flushes.saturating_sub(b.log_flushes),
            }),
            _ => None,
        })
        .collect();
    let leader = replicas.iter().find(|r| r.leader);
    RaftDelta {
        leader_node: leader.map(|l| l.node_id),
        entries_appended: leader.map(|l| l.entries_appended),
        flushes: leader.map(|l| l.flushes),
        entries_per_flush: leader
            .filter(|l| l.flushes > 0)
            .map(|l| l.entries_appended as f64 / l.flushes as f64),
        // Filled in by `PhaseResult::new`, which knows the operation count.
        ops_per_flush: None,
        replicas,
    }
}

/// Connects `clients` clients, each with its own session and directory
/// under `parent`.
async fn connect_clients(
    addrs: &[String],
    parent: InodeId,
    clients: usize,
    seed: u64,
) -> Result<Vec<Client>> {
    let owner = Owner::current();
    let mut set = JoinSet::new();
    for k in 0..clients {
        let addrs = addrs.to_vec();
        set.spawn(async move {
            let opts = MetaClientOptions {
                client_name: format!("cairn-bench/{}/client-{k}", std::process::id()),
                ..MetaClientOptions::default()
            };
            let meta = MetaClient::connect(&addrs, opts)
                .await
                .context("connecting a client")?;
            meta.session_id().await.context("opening a session")?;
            let dir = meta
                .mkdir(parent, &format!("client-{k:03}"), DIR_MODE, owner)
                .await
                .with_context(|| format!("making the directory of client {k}"))?;
            anyhow::Ok(Client {
                meta,
                dir: InodeId(dir.attr.ino),
                owner,
                files: Vec::new(),
                rng: SplitMix::new(seed ^ k as u64),
            })
        });
    }
    let mut out = Vec::with_capacity(clients);
    while let Some(joined) = set.join_next().await {
        out.push(joined.context("a client task failed")??);
    }
    Ok(out)
}

/// Runs one phase on every client at once; returns the clients, the
/// merged latencies and the wall time from start to the last reply.
async fn run_phase(
    clients: Vec<Client>,
    phase: Phase,
    per_client: usize,
) -> Result<(Vec<Client>, Samples, Duration)> {
    let total = clients.len() * per_client;
    let start = Instant::now();
    let mut set = JoinSet::new();
    for c in clients {
        set.spawn(c.run(phase, per_client));
    }
    let mut back = Vec::with_capacity(set.len());
    let mut all = Samples::with_capacity(total);
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let (c, r) = joined.context("a client task panicked")?;
        back.push(c);
        match r {
            Ok(s) => all.merge(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_error {
        close_all(&back).await;
        return Err(e.context(format!("{} phase", phase.name())));
    }
    Ok((back, all, elapsed))
}

/// Closes every client's session (best effort: an unclosed session just
/// expires on meta).
async fn close_all(clients: &[Client]) {
    let mut set = JoinSet::new();
    for c in clients {
        let meta = c.meta.clone();
        set.spawn(async move { meta.close().await });
    }
    while set.join_next().await.is_some() {}
}

/// Runs the four phases with `clients` clients, `per_client` operations
/// each, in a new directory `name` under `parent`. `admin` reads the
/// replicas' Raft counters at `addrs`.
///
/// # Errors
/// A failed call, with what it was; the clients' sessions are closed
/// first.
pub async fn run(
    admin: &MetaClient,
    addrs: &[String],
    parent: InodeId,
    name: &str,
    clients: usize,
    per_client: usize,
    seed: u64,
) -> Result<SystemResult> {
    let dir = admin
        .mkdir(parent, name, DIR_MODE, Owner::current())
        .await
        .with_context(|| format!("making benchmark directory {name}"))?;
    let mut pool = connect_clients(addrs, InodeId(dir.attr.ino), clients, seed).await?;
    if pool.len() != clients {
        bail!("{} of {clients} clients connected", pool.len());
    }
    let mut phases = Vec::with_capacity(Phase::ALL.len());
    for phase in Phase::ALL {
        let before = statuses(admin, addrs).await;
        let (back, samples, elapsed) = run_phase(pool, phase, per_client).await?;
        pool = back;
        let after = statuses(admin, addrs).await;
        let delta = raft_delta(addrs, &before, &after);
        let r = PhaseResult::new(phase, &samples, elapsed, Some(delta));
        super::progress(clients, SystemKind::Cairn, &r);
        phases.push(r);
    }
    close_all(&pool).await;
    Ok(SystemResult::new(SystemKind::Cairn, phases))
}
