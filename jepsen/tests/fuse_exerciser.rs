//! A randomized file exerciser in the manner of fsx (issue 15): random
//! sequences of pwrite, pread, O_APPEND writes, truncates up and down,
//! fallocate, fsync, rename-over and reopen through a real `cairn mount`,
//! each checked against a byte model of the file right after it runs (the
//! bytes it touched and the size; the whole file after reopen and every
//! few hundred operations).
//!
//! Two runs: one mount working on a few files, and two mounts taking turns
//! on one file with close-to-open between them (each turn opens, checks
//! the whole file, works, closes).
//!
//! `CAIRN_FSX_OPS` sets the operations per run (CI: 12,000);
//! `CAIRN_FSX_SEED` replays a run (the seed is printed first). The full
//! run, a million operations:
//!
//! ```sh
//! CAIRN_FSX_OPS=1000000 cargo test --release -p cairn-jepsen --test fuse_exerciser -- --nocapture
//! ```

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use cairn_client::ClientOptions;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_jepsen::fuse::Mount;
use cairn_proto::meta::VolumePolicy;

/// Largest file the exerciser makes: eight 256 KiB chunks over four chains.
const MAX_LEN: u64 = 2 << 20;
/// Largest single write or read.
const MAX_IO: u64 = 300 << 10;
/// Operations between whole-file checks.
const FULL_CHECK_EVERY: u64 = 500;

/// SplitMix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A length: mostly small, sometimes up to `max`, sometimes aligned.
    fn len(&mut self, max: u64) -> u64 {
        match self.below(10) {
            0..=4 => 1 + self.below(4096.min(max)),
            5..=6 => 4096 * (1 + self.below((max / 4096).max(1))),
            _ => 1 + self.below(max),
        }
    }

    /// An offset in `0..=limit`, often near 4 KiB and chunk boundaries.
    fn offset(&mut self, limit: u64) -> u64 {
        let o = match self.below(4) {
            0 => (self.below(limit / 4096 + 1) * 4096).saturating_sub(self.below(3)),
            1 => (self.below(limit / (256 << 10) + 1) * (256 << 10)).saturating_sub(self.below(5)),
            _ => self.below(limit + 1),
        };
        o.min(limit)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// One file, its open handle and what it must hold.
struct Subject {
    path: PathBuf,
    file: File,
    model: Vec<u8>,
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The exerciser's state: its random source, the last operations (shown
/// when a check fails) and a count.
struct Fsx {
    rng: Rng,
    seed: u64,
    done: u64,
    history: VecDeque<String>,
}

impl Fsx {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            seed,
            done: 0,
            history: VecDeque::new(),
        }
    }

    fn note(&mut self, what: String) {
        if self.history.len() == 40 {
            self.history.pop_front();
        }
        self.history.push_back(what);
    }

    fn fail(&self, s: &Subject, what: &str) -> ! {
        panic!(
            "operation {} on {} (seed {}, replay with CAIRN_FSX_SEED={}): {what}\nlast operations:\n  {}",
            self.done,
            s.path.display(),
            self.seed,
            self.seed,
            self.history
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    }

    /// Reads `len` bytes at `at` and compares them with the model.
    fn check_range(&self, s: &Subject, at: u64, len: u64) {
        let end = (at + len).min(s.model.len() as u64);
        if at >= end {
            return;
        }
        let mut got = vec![0u8; (end - at) as usize];
        if let Err(e) = s.file.read_exact_at(&mut got, at) {
            self.fail(s, &format!("pread {len} at {at}: {e}"));
        }
        let want = &s.model[at as usize..end as usize];
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            self.fail(
                s,
                &format!(
                    "bytes differ at {} (read {:#04x}, model {:#04x}) in a read of {len} at {at}",
                    at + i as u64,
                    got[i],
                    want[i]
                ),
            );
        }
    }

    fn check_size(&self, s: &Subject) {
        match s.file.metadata() {
            Ok(m) if m.size() == s.model.len() as u64 => {}
            Ok(m) => self.fail(
                s,
                &format!("size {} where the model has {}", m.size(), s.model.len()),
            ),
            Err(e) => self.fail(s, &format!("fstat: {e}")),
        }
    }

    /// Reads the whole file past its end too: nothing may follow.
    fn check_all(&self, s: &Subject) {
        self.check_size(s);
        self.check_range(s, 0, s.model.len() as u64);
        let mut past = [0u8; 16];
        match s.file.read_at(&mut past, s.model.len() as u64) {
            Ok(0) => {}
            Ok(n) => self.fail(s, &format!("{n} bytes read past the end")),
            Err(e) => self.fail(s, &format!("read at the end: {e}")),
        }
    }

    /// Runs one random operation on `s` and checks it.
    fn step(&mut self, s: &mut Subject) {
        self.done += 1;
        let len_now = s.model.len() as u64;
        match self.rng.below(100) {
            // pwrite, possibly past the end (a hole between).
            0..=34 => {
                let at = self.rng.offset(len_now.min(MAX_LEN - 1));
                let n = self.rng.len(MAX_IO).min(MAX_LEN - at);
                let data = self.rng.bytes(n as usize);
                self.note(format!("pwrite {n} at {at}"));
                if let Err(e) = s.file.write_all_at(&data, at) {
                    self.fail(s, &format!("pwrite: {e}"));
                }
                let end = (at + n) as usize;
                if s.model.len() < end {
                    s.model.resize(end, 0);
                }
                s.model[at as usize..end].copy_from_slice(&data);
                self.check_range(s, at.saturating_sub(7), n + 14);
            }
            // pread anywhere, past the end too.
            35..=59 => {
                let at = self.rng.offset(len_now + 4096);
                let n = self.rng.len(MAX_IO);
                self.note(format!("pread {n} at {at}"));
                self.check_range(s, at, n);
            }
            // Append through an O_APPEND descriptor.
            60..=66 => {
                let n = self.rng.len(64 << 10).min(MAX_LEN.saturating_sub(len_now));
                if n == 0 {
                    return;
                }
                let data = self.rng.bytes(n as usize);
                self.note(format!("append {n} at {len_now}"));
                let r = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .and_then(|mut f| f.write_all(&data));
                if let Err(e) = r {
                    self.fail(s, &format!("append: {e}"));
                }
                s.model.extend_from_slice(&data);
                self.check_range(s, len_now.saturating_sub(5), n + 5);
            }
            // Truncate down or up.
            67..=76 => {
                let to = if self.rng.below(3) == 0 {
                    self.rng.offset(MAX_LEN)
                } else {
                    self.rng.offset(len_now)
                };
                self.note(format!("truncate {len_now} -> {to}"));
                if let Err(e) = s.file.set_len(to) {
                    self.fail(s, &format!("ftruncate: {e}"));
                }
                s.model.resize(to as usize, 0);
                self.check_size(s);
                self.check_range(s, to.saturating_sub(4096), 8192);
            }
            // fallocate: grows like a truncate up, or (KEEP_SIZE) nothing.
            77..=80 => {
                let at = self.rng.offset(len_now.min(MAX_LEN - 1));
                let n = self.rng.len(MAX_IO).min(MAX_LEN - at);
                let keep = self.rng.below(2) == 0;
                let flags = if keep {
                    rustix::fs::FallocateFlags::KEEP_SIZE
                } else {
                    rustix::fs::FallocateFlags::empty()
                };
                self.note(format!("fallocate {n} at {at} keep_size={keep}"));
                if let Err(e) = rustix::fs::fallocate(&s.file, flags, at, n) {
                    self.fail(s, &format!("fallocate: {e}"));
                }
                if !keep && s.model.len() < (at + n) as usize {
                    s.model.resize((at + n) as usize, 0);
                }
                self.check_size(s);
            }
            81..=84 => {
                self.note("fsync".into());
                if let Err(e) = s.file.sync_all() {
                    self.fail(s, &format!("fsync: {e}"));
                }
            }
            // Reopen: close, open (close-to-open), check everything.
            85..=91 => {
                self.note("reopen".into());
                s.file = open_rw(&s.path);
                self.check_all(s);
            }
            // Replace the file the way checkpoints are published: write a
            // temporary file, fsync, rename it over.
            _ => {
                let n = self.rng.len(MAX_IO);
                let data = self.rng.bytes(n as usize);
                let tmp = s.path.with_extension("tmp");
                self.note(format!("rename-over with {n} bytes"));
                let r = File::create(&tmp)
                    .and_then(|mut f| f.write_all(&data).and_then(|()| f.sync_all()))
                    .and_then(|()| std::fs::rename(&tmp, &s.path));
                if let Err(e) = r {
                    self.fail(s, &format!("rename-over: {e}"));
                }
                // The old descriptor still reads the replaced file; the
                // model follows the name.
                s.file = open_rw(&s.path);
                s.model = data;
                self.check_all(s);
            }
        }
        if self.done.is_multiple_of(FULL_CHECK_EVERY) {
            self.check_all(s);
        }
    }
}

fn ops() -> u64 {
    std::env::var("CAIRN_FSX_OPS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(12_000)
}

fn seed() -> u64 {
    std::env::var("CAIRN_FSX_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

async fn cluster_with_volume() -> DataCluster {
    let cluster = DataCluster::start(DataOpts::default()).await.unwrap();
    let client = cluster.client(ClientOptions::default()).await.unwrap();
    let policy = VolumePolicy {
        chunk_size: 256 << 10,
        stripe_width: 4,
        ..VolumePolicy::default()
    };
    client.meta().create_volume("fsx", policy).await.unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model() {
    let _serial = cairn_jepsen::serial().await;
    let cluster = cluster_with_volume().await;
    let dir = cluster.meta.dir().join("mnt");
    let mount = Mount::start(&cluster.meta.addrs(), &dir, &["--volume", "/fsx"]).unwrap();
    let root = mount.dir().to_path_buf();
    let (n, seed) = (ops(), seed());
    println!("fsx: {n} operations on 3 files, seed {seed}");
    let t0 = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        let mut fsx = Fsx::new(seed);
        let mut files: Vec<Subject> = (0..3)
            .map(|i| {
                let path = root.join(format!("f{i}"));
                Subject {
                    file: open_rw(&path),
                    path,
                    model: Vec::new(),
                }
            })
            .collect();
        for _ in 0..n {
            let i = fsx.rng.below(files.len() as u64) as usize;
            fsx.step(&mut files[i]);
        }
        for s in &files {
            fsx.check_all(s);
        }
    })
    .await;
    if let Err(e) = r {
        panic!("{e}\nmount log:\n{}", mount.log_text());
    }
    println!(
        "fsx: {n} operations matched the model in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mounts_taking_turns_match_the_model() {
    let _serial = cairn_jepsen::serial().await;
    let cluster = cluster_with_volume().await;
    let base = cluster.meta.dir().to_path_buf();
    let meta = cluster.meta.addrs();
    let a = Mount::start(&meta, &base.join("a"), &["--volume", "/fsx"]).unwrap();
    let b = Mount::start(&meta, &base.join("b"), &["--volume", "/fsx"]).unwrap();
    let roots = [a.dir().to_path_buf(), b.dir().to_path_buf()];
    let (n, seed) = (ops() / 2, seed());
    println!("fsx: {n} operations on one file from two mounts, seed {seed}");
    let r = tokio::task::spawn_blocking(move || {
        let mut fsx = Fsx::new(seed);
        let mut model = Vec::new();
        let mut turn = 0;
        while fsx.done < n {
            // Close-to-open: this mount opens what the other one closed.
            let path = roots[turn % 2].join("shared");
            let mut s = Subject {
                file: open_rw(&path),
                path,
                model: std::mem::take(&mut model),
            };
            fsx.note(format!("turn {turn}: open on mount {}", turn % 2));
            fsx.check_all(&s);
            for _ in 0..1 + fsx.rng.below(40) {
                fsx.step(&mut s);
            }
            model = std::mem::take(&mut s.model);
            turn += 1;
        }
    })
    .await;
    if let Err(e) = r {
        panic!(
            "{e}\nmount a:\n{}\nmount b:\n{}",
            a.log_text(),
            b.log_text()
        );
    }
}
