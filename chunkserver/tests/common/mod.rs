//! A real cluster for chunkserver tests: one in-process meta replica and
//! `cairn-chunkserver` processes, each with its own target directory,
//! talking over loopback TCP.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_chunkserver::chain::{ChainView, MemberState};
use cairn_client::data::{self, DataError, DataPool};
use cairn_meta::MetaConfig;
use cairn_proto::frame::Frame;
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient;
use tokio::sync::watch;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One chunkserver process.
pub struct Cs {
    pub dir: PathBuf,
    pub metrics: String,
    /// The data-plane address (one shard, fixed port across restarts).
    pub addr: String,
    pub child: Option<Child>,
    pub extra_env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub meta_addr: String,
    /// meta's Prometheus endpoint.
    pub meta_metrics: String,
    meta_stop: Option<watch::Sender<bool>>,
    meta: Option<cairn_meta::MetaHandle>,
    pub cs: Vec<Cs>,
    pub pool: DataPool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Ports a chunkserver's shards may take: shard k listens on base + k.
const SHARD_PORTS: u16 = 4;

/// A free port outside the ranges of `bases` (each [`SHARD_PORTS`]
/// long), and, when `range`, with the [`SHARD_PORTS`] - 1 ports after it
/// free as well: the OS hands out a port that was free a moment ago, so
/// a base picked alone can have its second shard's port taken (a metrics
/// port picked just before, or another server).
fn free_port_outside(bases: &[u16], range: bool) -> u16 {
    let inside = |p: u16| {
        bases
            .iter()
            .any(|b| (*b..b.saturating_add(SHARD_PORTS)).contains(&p))
    };
    loop {
        let p = free_port();
        let span = if range { SHARD_PORTS } else { 1 };
        let Some(end) = p.checked_add(span) else {
            continue;
        };
        if (p..end).any(inside) {
            continue;
        }
        let after: Vec<_> = (p + 1..end)
            .map_while(|q| std::net::TcpListener::bind(("127.0.0.1", q)).ok())
            .collect();
        if after.len() == usize::from(span - 1) {
            return p;
        }
    }
}

pub fn chunk(o: u64, i: u64) -> ChunkId {
    ChunkId {
        object: ObjectId(o),
        index: i,
    }
}

/// Deterministic test bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Starts one in-process meta replica (bootstrapped, short Raft timings)
/// with data under `dir/meta`; returns it and the sender that stops it.
pub async fn start_meta(
    dir: &Path,
    chunkserver_timeout: Duration,
    metrics: Option<std::net::SocketAddr>,
) -> (cairn_meta::MetaHandle, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let mut rx2 = rx.clone();
    let meta = cairn_meta::start(
        MetaConfig {
            data_dir: dir.join("meta"),
            listen: "127.0.0.1:0".parse().unwrap(),
            bootstrap: true,
            replicas: 1,
            raft_heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            chunkserver_timeout,
            metrics_listen: metrics,
            ..MetaConfig::default()
        },
        async move {
            let _ = rx2.wait_for(|s| *s).await;
        },
    )
    .await
    .expect("start meta");
    (meta, tx)
}

impl Cluster {
    /// Starts meta and `n` chunkservers; `args` are extra flags for all.
    pub async fn start(n: usize, args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta_metrics = format!("127.0.0.1:{}", free_port());
        let (meta, tx) = start_meta(
            dir.path(),
            Duration::from_secs(10),
            Some(meta_metrics.parse().unwrap()),
        )
        .await;
        let meta_addr = meta.addr.to_string();
        let mut c = Cluster {
            meta_addr,
            meta_metrics,
            meta_stop: Some(tx),
            meta: Some(meta),
            cs: Vec::new(),
            pool: DataPool::new(Duration::from_secs(2)),
            dir,
        };
        let mut bases = Vec::new();
        for i in 0..n {
            let d = c.dir.path().join(format!("cs{i}"));
            let addr = free_port_outside(&bases, true);
            bases.push(addr);
            let metrics = free_port_outside(&bases, false);
            c.cs.push(Cs {
                dir: d,
                metrics: format!("127.0.0.1:{metrics}"),
                addr: format!("127.0.0.1:{addr}"),
                child: None,
                extra_env: Vec::new(),
                extra_args: args.iter().map(|s| (*s).to_string()).collect(),
            });
            c.spawn(i);
        }
        c.wait_chains(n).await;
        c
    }

    /// Starts (or restarts) chunkserver `i` and waits until it listens.
    pub fn spawn(&mut self, i: usize) {
        let cs = &mut self.cs[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-chunkserver"));
        cmd.arg("--meta")
            .arg(&self.meta_addr)
            .arg("--data-dir")
            .arg(&cs.dir)
            .arg("--metrics-listen")
            .arg(&cs.metrics)
            .arg("--port")
            .arg(cs.addr.rsplit(':').next().unwrap_or("0"))
            .args(&cs.extra_args)
            .env("RUST_LOG", "info")
            .env("CAIRN_COUNT_ALLOCATIONS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &cs.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn cairn-chunkserver");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("read ready line");
        assert!(
            line.starts_with("cairn-chunkserver ready"),
            "chunkserver {i} did not start: {line:?}"
        );
        cs.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.cs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for chunkserver `i` to exit on its own (a failpoint abort).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(c) = self.cs[i].child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.cs[i].child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub async fn stop_meta(&mut self) {
        if let Some(tx) = self.meta_stop.take() {
            let _ = tx.send(true);
        }
        if let Some(m) = self.meta.take() {
            let _ = m.wait().await;
        }
    }

    pub async fn chains(&self) -> pb::ChainTables {
        let mut c = MetaClient::connect(format!("http://{}", self.meta_addr))
            .await
            .expect("connect meta");
        c.get_chains(pb::Empty {})
            .await
            .expect("get chains")
            .into_inner()
    }

    pub async fn view(&self) -> ChainView {
        ChainView::from_pb(&self.chains().await)
    }

    /// Waits until a replication-`n` table exists with every member serving
    /// and every chunkserver's lease live (its first heartbeat answered).
    pub async fn wait_chains(&self, n: usize) {
        let start = Instant::now();
        loop {
            let t = self.chains().await;
            let ok = cairn_proto::chain::fully_serving(&t, n);
            if ok && t.chunkservers.len() >= n {
                // Let every chunkserver see the table through its watch.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no {n}-replica chain table: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A chain of the replication-`n` table: (id, version, member addresses
    /// for `chunk` head first, chunkserver index of each member).
    pub async fn chain(&self, n: usize, which: usize, chunk: ChunkId) -> Chain {
        let t = self.chains().await;
        let table = t
            .tables
            .iter()
            .find(|tb| tb.replication as usize == n)
            .expect("table");
        let c = &table.chains[which % table.chains.len()];
        let view = ChainView::from_pb(&t);
        let info = view.chain(c.id).expect("chain in view");
        let members = info
            .members
            .iter()
            .filter(|m| m.state != MemberState::Offline)
            .map(|m| view.shard_addr(m.chunkserver, chunk).expect("address"))
            .collect();
        Chain {
            id: ChainId(c.id),
            version: ChainVersion(c.version),
            members,
            chunkservers: info.members.iter().map(|m| m.chunkserver).collect(),
        }
    }

    pub async fn call(&self, addr: &str, f: Frame) -> Result<Frame, DataError> {
        self.pool.call(addr, f, TIMEOUT).await
    }

    /// Reads `len` bytes of `chunk` at `offset` from replica `addr`,
    /// verifying the reply's CRCs.
    pub async fn read(
        &self,
        ch: &Chain,
        addr: &str,
        chunk: ChunkId,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, DataError> {
        let r = self
            .call(
                addr,
                data::read_request(ch.id, ch.version, chunk, offset, len),
            )
            .await?;
        let r = data::into_result(r)?;
        data::verify_read_reply(&r)?;
        Ok(r.payload)
    }

    /// Writes through the head.
    pub async fn write(
        &self,
        ch: &Chain,
        chunk: ChunkId,
        offset: u64,
        bytes: &[u8],
        client: u64,
        seq: u64,
    ) -> Result<Frame, DataError> {
        let f = data::write_request(
            ch.id,
            ch.version,
            chunk,
            offset,
            Bytes::copy_from_slice(bytes),
            client,
            seq,
            0,
        );
        data::into_result(self.call(&ch.members[0], f).await?)
    }

    /// GET /metrics of chunkserver `i`.
    pub fn metrics(&self, i: usize) -> String {
        http_metrics(&self.cs[i].metrics)
    }

    /// GET /ready of chunkserver `i`: the whole reply.
    pub fn ready(&self, i: usize) -> String {
        http_get(&self.cs[i].metrics, "/ready")
    }
}

/// GET /metrics from `addr`.
pub fn http_metrics(addr: &str) -> String {
    http_get(addr, "/metrics")
}

/// GET `path` from `addr`: the whole reply.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("http");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

impl Cluster {
    /// The process index of the chunkserver serving `addr`.
    pub fn index_of(&self, addr: &str) -> usize {
        self.cs
            .iter()
            .position(|c| c.addr == addr)
            .expect("address of a test chunkserver")
    }

    pub fn data_file(&self, i: usize) -> PathBuf {
        self.cs[i].dir.join("data").join("shard-0.dat")
    }
}

/// A metric's value from Prometheus text (sum over label sets matching
/// `name` exactly or with labels).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub struct Chain {
    pub id: ChainId,
    pub version: ChainVersion,
    pub members: Vec<String>,
    pub chunkservers: Vec<u64>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.cs.len() {
            self.kill(i);
        }
        if let Some(tx) = self.meta_stop.take() {
            let _ = tx.send(true);
        }
    }
}

/// Finds `needle` in the file at `path`; returns its offset.
pub fn find_in_file(path: &Path, needle: &[u8]) -> Option<u64> {
    let data = std::fs::read(path).ok()?;
    data.windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p as u64)
}
