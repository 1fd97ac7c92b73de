//! [`DataCluster`]: a whole Cairn cluster of real processes — `cairn-meta`
//! replicas ([`MetaCluster`]) and `cairn-chunkserver`s on loopback — for
//! tests of the data path through the client library: start, kill -9,
//! restart, wait for the chain table to settle.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_client::{Client, ClientOptions};
use cairn_proto::meta as pb;

use crate::binary::binary;
use crate::cluster::{ClusterOpts, MetaCluster, PORT_TAKEN};
use crate::ports::free_port_run;

/// How a [`DataCluster`] is started.
#[derive(Debug, Clone)]
pub struct DataOpts {
    /// Meta replicas.
    pub metas: usize,
    /// Chunkservers (one target each).
    pub chunkservers: usize,
    /// Shards (cores) per chunkserver.
    pub shards: u32,
    /// Meta's `--chunkserver-timeout`: how soon a killed chunkserver
    /// leaves its chains.
    pub chunkserver_timeout: Duration,
    /// Capacity each chunkserver reports.
    pub capacity: String,
    /// Each chunkserver's data directory on an ext4 file system of this
    /// many bytes of its own (a loop device; needs root), so its disk
    /// really fills, whatever `capacity` says; `None`: the test's
    /// temporary directory.
    pub disk_bytes: Option<u64>,
    /// More `cairn-meta` flags (e.g. `--gc-grace 2s`).
    pub meta_args: Vec<String>,
    /// More `cairn-chunkserver` flags (e.g. `--resync-rate 64MiB`).
    pub chunkserver_args: Vec<String>,
    /// Every meta replica in its own network namespace
    /// ([`ClusterOpts::netns`]), for [`MetaCluster::isolate`]; the
    /// chunkservers and the test's clients stay in the root namespace and
    /// reach every replica. Meta cannot reach the chunkservers' data ports
    /// then (they listen on loopback): nothing that needs it (garbage
    /// collection of removed files) can be tested this way.
    pub meta_netns: bool,
}

impl Default for DataOpts {
    fn default() -> Self {
        Self {
            metas: 3,
            chunkservers: 3,
            shards: 2,
            chunkserver_timeout: Duration::from_secs(3),
            capacity: "8GiB".to_string(),
            disk_bytes: None,
            meta_args: Vec::new(),
            chunkserver_args: Vec::new(),
            meta_netns: false,
        }
    }
}

struct Cs {
    dir: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
    /// `dir` is a loop-mounted file system ([`DataOpts::disk_bytes`]).
    mounted: bool,
}

/// Meta replicas and chunkservers as processes; see the module docs.
pub struct DataCluster {
    /// The meta replicas.
    pub meta: MetaCluster,
    opts: DataOpts,
    cs: Vec<Cs>,
}

impl DataCluster {
    /// Starts the cluster and returns once every chain of the
    /// `min(3, chunkservers)`-replica table has all members serving.
    ///
    /// # Errors
    /// A process failed to start or the table never settled.
    pub async fn start(opts: DataOpts) -> Result<DataCluster> {
        let meta_opts = ClusterOpts {
            extra_args: [
                "--chunkserver-timeout".into(),
                format!("{}ms", opts.chunkserver_timeout.as_millis()),
            ]
            .into_iter()
            .chain(opts.meta_args.iter().cloned())
            .collect(),
            netns: opts.meta_netns,
            ..ClusterOpts::default()
        };
        let meta = MetaCluster::start(opts.metas, meta_opts).await?;
        let mut c = DataCluster {
            meta,
            opts: opts.clone(),
            cs: Vec::new(),
        };
        for _ in 0..opts.chunkservers {
            c.add_chunkserver()?;
        }
        c.wait_all_serving(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// Adds a chunkserver (a new target) to the running cluster and
    /// returns its index.
    ///
    /// # Errors
    /// No free ports, or it did not start.
    pub fn add_chunkserver(&mut self) -> Result<usize> {
        let i = self.cs.len();
        let dir = self.meta.dir().join(format!("cs{i}"));
        let log = self.meta.dir().join(format!("cs{i}.log"));
        let port = free_port_run(u16::try_from(self.opts.shards)?)?;
        let mounted = match self.opts.disk_bytes {
            Some(bytes) => {
                small_disk(&self.meta.dir().join(format!("cs{i}.img")), &dir, bytes)?;
                true
            }
            None => false,
        };
        self.cs.push(Cs {
            dir,
            log,
            port,
            child: None,
            mounted,
        });
        // A port that passed the free check can still be bound by someone
        // else before the chunkserver binds it; try fresh ports then.
        let mut tries = 0;
        loop {
            match self.spawn(i) {
                Ok(()) => return Ok(i),
                Err(e) if tries < 4 && format!("{e:#}").contains(PORT_TAKEN) => {
                    tries += 1;
                    println!("[cluster] chunkserver {i}: {e:#}; trying other ports");
                    self.cs[i].port = free_port_run(u16::try_from(self.opts.shards)?)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts (or restarts) chunkserver `i` and waits until it listens.
    ///
    /// # Errors
    /// The process did not start or print its ready line.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let meta = self.meta.addrs().join(",");
        let cs = &mut self.cs[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cs.log)
            .with_context(|| format!("opening {}", cs.log.display()))?;
        writeln!(log, "===== [jepsen] start chunkserver {i} =====")?;
        let mut child = Command::new(binary("cairn-chunkserver"))
            .arg("--meta")
            .arg(&meta)
            .arg("--data-dir")
            .arg(&cs.dir)
            .arg("--port")
            .arg(cs.port.to_string())
            .arg("--shards")
            .arg(self.opts.shards.to_string())
            .arg("--capacity")
            .arg(&self.opts.capacity)
            .args(&self.opts.chunkserver_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting cairn-chunkserver (run cargo build --bins first)")?;
        let out = child.stdout.take().context("chunkserver stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("cairn-chunkserver ready") {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&cs.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            bail!(
                "chunkserver {i} did not start: {line:?}; last lines of {}:\n{}",
                cs.log.display(),
                lines[lines.len().saturating_sub(5)..].join("\n")
            );
        }
        println!(
            "[cluster] chunkserver {i} on port {} (pid {})",
            cs.port,
            child.id()
        );
        cs.child = Some(child);
        Ok(())
    }

    /// kill -9 chunkserver `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.cs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
            println!("[cluster] killed chunkserver {i}");
        }
    }

    /// The index (for [`Self::kill`], [`Self::spawn`]) of the chunkserver
    /// meta knows by `id`, found by its first shard port.
    ///
    /// # Errors
    /// Meta unreachable or no such chunkserver.
    pub async fn index_of(&self, id: u64) -> Result<usize> {
        let t = self.chains().await?;
        let info = t
            .chunkservers
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| anyhow::anyhow!("meta knows no chunkserver {id}"))?;
        let port = info.shard_ports.first().copied().unwrap_or(0);
        self.cs
            .iter()
            .position(|c| u32::from(c.port) == port)
            .ok_or_else(|| anyhow::anyhow!("chunkserver {id} (port {port}) is not one of ours"))
    }

    /// How chunkserver `i` exited, if it was started, not killed by the
    /// harness, and exited on its own.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.cs[i].child.as_mut()?.try_wait().ok().flatten()
    }

    /// Whether chunkserver `i` is running (started and not killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.cs[i].child.is_some()
    }

    /// Freezes chunkserver `i` (SIGSTOP): its sockets stay open and
    /// nothing answers, as with a host that hangs. [`Self::resume`] thaws
    /// it; dropping the cluster kills it either way.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
        println!("[cluster] paused chunkserver {i}");
    }

    /// Thaws chunkserver `i` after [`Self::pause`] (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
        println!("[cluster] resumed chunkserver {i}");
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.cs[i].child {
            let _ = Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Sends SIGTERM to chunkserver `i` and waits for it to exit (a clean
    /// stop, as a rolling restart does).
    pub fn terminate(&mut self, i: usize) {
        self.signal(i, "-TERM");
        if let Some(mut c) = self.cs[i].child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    println!("[cluster] stopped chunkserver {i}");
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            println!("[cluster] chunkserver {i} ignored SIGTERM; killed");
        }
    }

    /// Bytes every chunkserver has copied as a sync source, as meta last
    /// heard (heartbeats), summed.
    ///
    /// # Errors
    /// Meta unreachable.
    pub async fn repair_bytes(&self) -> Result<u64> {
        Ok(self
            .chains()
            .await?
            .chunkservers
            .iter()
            .filter_map(|c| c.repair.map(|r| r.bytes_copied))
            .sum())
    }

    /// Chunkserver `i`'s target directory.
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        &self.cs[i].dir
    }

    /// Number of chunkservers.
    pub fn chunkservers(&self) -> usize {
        self.cs.len()
    }

    /// The chain tables as the meta leader has them.
    ///
    /// # Errors
    /// Meta unreachable.
    pub async fn chains(&self) -> Result<pb::ChainTables> {
        Ok(self.meta.client().await?.get_chains().await?)
    }

    /// Chain `id` as the meta leader has it.
    ///
    /// # Errors
    /// Meta unreachable, or no such chain.
    pub async fn chain(&self, id: u32) -> Result<pb::Chain> {
        self.chains()
            .await?
            .tables
            .into_iter()
            .flat_map(|t| t.chains)
            .find(|c| c.id == id)
            .ok_or_else(|| anyhow::anyhow!("chain {id} is not in the chain tables"))
    }

    /// Waits until the replication-`min(3, n)` table has every member of
    /// every chain serving.
    ///
    /// # Errors
    /// Not within `timeout`.
    pub async fn wait_all_serving(&self, timeout: Duration) -> Result<()> {
        let n = self.cs.len().min(3);
        let start = Instant::now();
        loop {
            let t = self.chains().await?;
            let ok = cairn_proto::chain::fully_serving(&t, n);
            if ok {
                // Let every chunkserver see the table through its watch.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("the chain table never had every member serving: {t:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every 3-replica chain has three serving members, none
    /// of them chunkserver `gone` (its replacement finished its resync).
    ///
    /// # Errors
    /// Meta unreachable, or not healed within `timeout` (the table).
    pub async fn wait_healed_without(&self, gone: u64, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let t = self.chains().await?;
            let healed = chains_of(&t, 3).all(|ch| {
                ch.targets.len() == 3
                    && ch.targets.iter().all(|m| {
                        m.state == pb::TargetState::Serving as i32 && m.chunkserver_id != gone
                    })
            });
            if healed {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("the chains did not heal without chunkserver {gone}: {t:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts 4 chunkservers whose meta replaces a dead one after 2 s: the
    /// cluster [`Self::lose_all_but_the_resynced`] needs.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_replacing() -> Result<DataCluster> {
        Self::start(DataOpts {
            chunkservers: 4,
            meta_args: vec!["--replace-after".into(), "2s".into()],
            ..DataOpts::default()
        })
        .await
    }

    /// Kills chunkserver 0 for good and waits until its replacement has
    /// resynced every chain it was in, then kills chunkservers 1 and 2:
    /// chains that lost chunkserver 0 can then be read only from the copies
    /// the resync made on chunkserver 3. For a cluster from
    /// [`Self::start_replacing`].
    ///
    /// # Errors
    /// Meta unreachable, or the chains not healed within 120 s.
    pub async fn lose_all_but_the_resynced(&mut self) -> Result<()> {
        let mut gone = None;
        for cs in self.chains().await?.chunkservers {
            if self.index_of(cs.id).await? == 0 {
                gone = Some(cs.id);
            }
        }
        let gone = gone.context("chunkserver 0 in the chain table")?;
        self.kill(0);
        self.wait_healed_without(gone, Duration::from_secs(120))
            .await?;
        self.kill(1);
        self.kill(2);
        Ok(())
    }

    /// A client of this cluster with `opts`.
    ///
    /// # Errors
    /// Meta unreachable.
    pub async fn client(&self, opts: ClientOptions) -> Result<Client> {
        Ok(Client::connect(self.meta.addrs(), opts).await?)
    }

    /// The tail of chunkserver `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.cs[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for DataCluster {
    /// Stops the chunkservers and prints the warnings and errors each
    /// logged (the last 20): the test harness shows a test's output only
    /// when it fails, and a chunkserver that stalled or refused something
    /// says why there.
    fn drop(&mut self) {
        for i in 0..self.cs.len() {
            self.kill(i);
        }
        for cs in self.cs.iter().filter(|c| c.mounted) {
            let _ = Command::new("umount").arg("-l").arg(&cs.dir).status();
        }
        for (i, cs) in self.cs.iter().enumerate() {
            let text = std::fs::read_to_string(&cs.log).unwrap_or_default();
            let notable: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            if !notable.is_empty() {
                println!("[cluster] chunkserver {i} warnings and errors (last 20):");
                for l in &notable[notable.len().saturating_sub(20)..] {
                    println!("  {l}");
                }
            }
        }
    }
}

/// The chains of `replication`-replica tables in `t`.
pub fn chains_of(t: &pb::ChainTables, replication: u32) -> impl Iterator<Item = &pb::Chain> {
    t.tables
        .iter()
        .filter(move |tb| tb.replication == replication)
        .flat_map(|tb| tb.chains.iter())
}

/// Deterministic pseudo-random bytes (xorshift), different per seed: test
/// data whose every copy can be regenerated for comparison.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Clients `a` and `b` write alternate 100-byte slots `0..slots` of the
/// existing file `path` (`a` the even ones, `b` the odd ones, at once),
/// slot `i` filled with byte `i % 251 + 1`, pausing 1 ms between writes as
/// programs sharing a block do (two tight loops on one block could make
/// one read-modify-write lose 100 races in a row: a known limit).
///
/// # Errors
/// The first failed open, write or close.
pub async fn write_alternate_slots(a: &Client, b: &Client, path: &str, slots: usize) -> Result<()> {
    let run = |client: Client, parity: usize, path: String| async move {
        let f = client.open(&path, cairn_client::OpenOptions::WRITE).await?;
        for slot in (parity..slots).step_by(2) {
            let byte = (slot % 251) as u8 + 1;
            f.write_at(slot as u64 * 100, Bytes::from(vec![byte; 100]))
                .await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        f.close().await?;
        Ok::<_, cairn_client::CairnStatus>(())
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(run(a.clone(), 0, path.to_string())),
        tokio::spawn(run(b.clone(), 1, path.to_string()))
    );
    ra.context("writer a")??;
    rb.context("writer b")??;
    Ok(())
}

/// Checks that `back` holds what [`write_alternate_slots`] wrote to
/// `slots` slots.
///
/// # Errors
/// The first slot that lost its write.
pub fn check_alternate_slots(back: &[u8], slots: usize) -> Result<()> {
    for slot in 0..slots {
        let want = (slot % 251) as u8 + 1;
        let got = back
            .get(slot * 100..slot * 100 + 100)
            .with_context(|| format!("the file ends before slot {slot}"))?;
        if !got.iter().all(|x| *x == want) {
            bail!("slot {slot} lost its write: {:?}", &got[..8]);
        }
    }
    Ok(())
}

/// Makes `dir` an ext4 file system of `bytes` in the image file `image`
/// (a loop device), for a chunkserver whose disk must really fill.
fn small_disk(image: &std::path::Path, dir: &std::path::Path, bytes: u64) -> Result<()> {
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    std::fs::File::create(image)?.set_len(bytes)?;
    run(Command::new("mkfs.ext4").arg("-q").arg(image))?;
    std::fs::create_dir_all(dir)?;
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(image)
        .arg(dir))
    .context("a small disk for a chunkserver needs root and loop devices")
}
