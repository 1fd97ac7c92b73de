//! The `client` workload: Cairn through its client library, end to end
//! — 3 `cairn-meta` and 3 `cairn-chunkserver` processes on loopback
//! ([`crate::servers`]), a volume with replication 3 — beside baselines
//! measured in the same run on the same disk.
//!
//! | phase | Cairn ([`cairn`]) | baseline | ratio |
//! |---|---|---|---|
//! | seq read ×1, ×N | a fresh client reads 1 (then N) files front to back, 4 MiB `read_at` calls, one task per file | `O_DIRECT` reads of the same bytes, one thread per stream ([`crate::raw`]) | MiB/s ÷ raw |
//! | checkpoint write | one file, 8 MiB `write_at` calls one after the other, fsync, close | `O_DIRECT` 8 MiB writes, one `fdatasync` at the end, ÷ 3 | MiB/s ÷ (raw ÷ 3) |
//! | checkpoint save | `Checkpoints::save_reader` of the same size | the same | MiB/s ÷ (raw ÷ 3) |
//! | read 4K | 4 KiB `read_at` at random offsets, queue depth 1, no client cache | `O_DIRECT` pread of the same offsets; loopback TCP ping-pong ([`crate::pingpong`]) | p50 ÷ (pread p50 + ping-pong p50) |
//! | read 4K ×N | the same with N tasks | pread with N threads | IOPS ÷ pread IOPS |
//! | small write | `write_file` of many small files by T tasks | `std::fs` create + write + fsync by T threads ([`local`]) | files/s ÷ local |
//! | small read ×1, ×T | `read_file` in random order, 1 then T tasks | `O_DIRECT` open + read + close | files/s ÷ local |
//!
//! Every replica of a chain is on this one disk, so a replicated write
//! puts three copies of every byte on it: the write baseline is a third of
//! the raw disk's rate. Reads are served by one replica each.
//!
//! "Cold": each read phase uses a client connected just before it, so
//! nothing it reads is in its block cache; the chunkservers read with
//! `O_DIRECT` (no page cache) and the raw and local baselines do too. The
//! sequential readers get a small memory cache (`--seq-cache`), since
//! read-ahead is sized from it (a stream's window is at most an eighth)
//! and is off without one; the random and
//! small-file readers have none, so every read goes to a chunkserver.
//!
//! As in `cairn-bench chunk`, systems run one after the other, never
//! concurrently. Beside the figures: the CPU every process used during
//! Cairn's part of each phase and each chunkserver's own handling time
//! per request ([`crate::watch`]), this process's peak resident memory
//! after each Cairn part (the benchmark is the client), and the peak
//! resident memory of every process.

pub mod cairn;
pub mod local;
mod table;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_client::Client;
use cairn_client::cache::CacheStats;
use cairn_client::crypto::{KeyRing, VolumeKey};
use cairn_proto::meta::{VolumeKeyCheck, VolumePolicy};
use cairn_proto::units::parse_size;
use clap::Args;
use serde::Serialize;

use crate::chunk::WARMUP_READS;
use crate::layout::{self, BLOCK, Layout, MAX_DEPTH, random_blocks};
use crate::machine::{self, Machine};
use crate::measure::{self, Compared, Measured, Rate, blocking, p50_over_sum, rate_ratios};
use crate::meta::SplitMix;
use crate::servers::{CHUNKSERVERS, ChainRoute, Finished, Servers, Setup};
use crate::watch::{Around, ServerClock, Watch};
use crate::{CommonArgs, ProcessRss, build_profile, pingpong, raw};

pub use table::print_table;

/// Help text of `cairn-bench client --help`.
pub const LONG_ABOUT: &str = "\
The client library (cairn_client) end to end, beside baselines measured in the
same run, on the same disk.

Starts 3 cairn-meta replicas and 3 cairn-chunkserver processes (one shard each)
on 127.0.0.1 with their data in --data-dir (release binaries from --bin-dir),
creates a volume with replication 3 (64 MiB chunks, stripe width 8), so every
byte written lands three times on this disk, and runs these phases through
cairn_client::Client, each followed by its baselines:

  seq read ×1, ×N  Sequential reads, cold: a client connected just before reads
               1 file, then --streams files at once (one task per file, each
               front to back in 4 MiB File::read_at calls). The files, of
               --seq-size each, were written beforehand by another client.
               The reading client has a --seq-cache memory cache, which
               sizes read-ahead (each stream's read-ahead window is at most
               an eighth of it). Figures: GB/s, per-read latency.
               Baseline raw: O_DIRECT reads of the same bytes from a file on
               the same disk, 4 MiB at a time, one thread per stream, each
               reading its own region front to back.
               ratio = cairn MiB/s ÷ raw MiB/s.
  checkpoint write  One --checkpoint-size file written front to back in 8 MiB
               write_at calls, one after the other, then fsync and close (a
               write returns once every replica has synced it). Figures:
               MiB/s, per-write latency.
               Baselines: raw, 1 sync: O_DIRECT 8 MiB writes of a
               preallocated file, one fdatasync after the last (in the time);
               raw ÷ 3: its MiB/s divided by 3, since the disk takes every
               byte three times. ratio = cairn MiB/s ÷ (raw MiB/s ÷ 3).
  checkpoint save  The same size saved with Checkpoints::save_reader: temporary
               file, 8 MiB writes, fsync, close, size and CRC32 recorded in an
               xattr, atomic rename. ratio = its MiB/s ÷ (raw MiB/s ÷ 3).
  read 4K      4 KiB File::read_at calls at random 4 KiB-aligned offsets of a
               --random-set file, one at a time (queue depth 1), from a client
               with no block cache, so every read is one request to one
               chunkserver replica (after 200 unrecorded warm-up reads).
               Figures: latency p50, p99, p99.9 in µs. Baselines:
                 pread          the same offsets of a file of the same size on
                                the same disk, pread with O_DIRECT
                 tcp ping-pong  a bare loopback TCP round trip of the same
                                sizes, TCP_NODELAY, no storage
               ratio = cairn p50 ÷ (pread p50 + ping-pong p50): what the
               client, the chunkserver and the protocol add to one disk read
               plus one network round trip.
  read 4K ×N   The same with --readers tasks sharing the open file (other
               random offsets). Figure: IOPS. Baseline: O_DIRECT pread with
               --readers threads. ratio = cairn IOPS ÷ pread IOPS.
  small write  --small-files files of --small-size written into one directory
               by --small-tasks tasks, each Client::write_file (create, write,
               close). Figure: files/s. Baseline local: std::fs, the same
               files by as many threads, each created, written and fsynced.
               ratio = cairn files/s ÷ local files/s.
  small read ×1, ×T  The files read back whole in a random order by a client
               with no block cache (Client::read_file: open, read, close),
               with 1 task, then with --small-tasks tasks. Baseline local:
               each file opened with O_DIRECT, read, closed, same order and
               threads — O_DIRECT, so the just-written files do not come from
               the page cache (the chunkservers do not use it either).
               ratio = cairn files/s ÷ local files/s.

Also reported: the CPU every process used during Cairn's part of each phase,
in cores kept busy (meta0-2, cs1-3, cairn-bench, which is the client: one
chunkserver near 1.0 is bound by its shard thread, cairn-bench near 2.0 by
the machine); each chunkserver's own handling time per request; the peak
resident memory (VmHWM) of this process after each Cairn part and of every
process; the client's heap allocations per 4 KiB read (a counting allocator,
less the process's idle rate); the machine and the command line. Compare ratios across runs and
machines, not absolute rates.

Defaults take a few minutes on a 2-core machine and need about 30 GiB of
free space in --data-dir; a quick run: --seq-size 256MiB --checkpoint-size
256MiB --random-set 256MiB --random-reads 2000 --small-files 1000.";

/// Bytes of one sequential `read_at` (and of one write of the data sets).
pub const SEQ_IO: u64 = 4 << 20;

/// Bytes of one checkpoint `write_at`, as `Checkpoints::save_reader` does.
pub const CHECKPOINT_IO: u64 = 8 << 20;

/// Meta replicas a run starts.
pub const META_REPLICAS: usize = 3;

/// The volume the run creates.
pub const VOLUME: &str = "bench";

/// The plain volume of `--beside-plain`.
pub const PLAIN_VOLUME: &str = "bench-plain";

/// The volume's policy: replication 3 (every byte three times on this
/// disk), Cairn's default chunk size and stripe width; with `key`,
/// encrypted under it (version 1).
fn volume_policy(
    key: Option<&VolumeKey>,
    compression: Option<BenchCompression>,
    unit: u32,
) -> VolumePolicy {
    VolumePolicy {
        compression: compression.map_or(0, |c| c.wire()),
        compression_unit: if compression.is_some() { unit } else { 0 },
        replication: 3,
        chunk_size: 64 << 20,
        stripe_width: 8,
        encrypted: key.is_some(),
        key_checks: key
            .map(|k| VolumeKeyCheck {
                version: 1,
                check: k.check_value().to_vec(),
            })
            .into_iter()
            .collect(),
        ..VolumePolicy::default()
    }
}

/// Arguments of `cairn-bench client`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Bytes of each sequential-read file, one file per stream (a multiple
    /// of 4 MiB, e.g. 1GiB, 256MiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB", value_name = "SIZE")]
    pub seq_size: u64,
    /// Streams (files read at once) of the second sequential-read phase;
    /// the first has one.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub streams: usize,
    /// Memory block cache of the sequential readers' clients; it sizes
    /// read-ahead (a stream's window is at most an eighth of it; 0 turns
    /// read-ahead off too).
    #[arg(long, value_parser = parse_size, default_value = "64MiB", value_name = "SIZE")]
    pub seq_cache: u64,
    /// Bytes of the checkpoint written, and saved (a multiple of 8 MiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB", value_name = "SIZE")]
    pub checkpoint_size: u64,
    /// Size of the file the random reads pick from (a multiple of 4 MiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB", value_name = "SIZE")]
    pub random_set: u64,
    /// Random 4 KiB reads recorded per system in each random-read phase,
    /// after 200 unrecorded warm-up reads.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub random_reads: usize,
    /// Concurrent readers of the second random-read phase: tasks on Cairn,
    /// threads on the raw disk.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub readers: usize,
    /// Files of the small-files phases.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub small_files: usize,
    /// Bytes of each small file (a multiple of 4 KiB).
    #[arg(long, value_parser = parse_size, default_value = "128KiB", value_name = "SIZE")]
    pub small_size: u64,
    /// Writers of the small files, and readers of the second small-read
    /// phase: tasks on Cairn, threads on the local file system.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub small_tasks: usize,
    /// Seed of the random offsets and orders and of the bytes written.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Make the volume encrypted (AES-256-GCM on the client, a generated
    /// key): every phase then measures what encryption costs; compare
    /// with a run without the flag (the ratios to the same baselines).
    #[arg(long)]
    pub encrypted: bool,
    /// Make the volume compressed (on the client, in --compression-unit
    /// units): every
    /// phase then measures what compression costs; compare with a run
    /// without the flag. Combine with --compressible to measure it on data
    /// that shrinks (the default bytes are random and are stored raw).
    #[arg(long, value_enum, value_name = "ALGO")]
    pub compression: Option<BenchCompression>,
    /// Write text-like bytes that lz4 shrinks about 2-3× (numbered lines
    /// of words), in Cairn and in the raw baselines alike, instead of
    /// random ones.
    #[arg(long)]
    pub compressible: bool,
    /// The compression unit (with --compression): 16KiB to 1MiB
    /// [default: 64KiB].
    #[arg(long, value_parser = parse_size, value_name = "SIZE", requires = "compression")]
    pub compression_unit: Option<u64>,
    /// With --encrypted or --compression: run every phase on a plain
    /// volume first, then on the transformed one, against the same
    /// servers in the same run, and print what the transform costs
    /// (transformed ÷ plain, and the client's CPU of each).
    #[arg(long)]
    pub beside_plain: bool,
    /// Options shared by every workload.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A compression of the benchmark volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchCompression {
    /// LZ4.
    Lz4,
    /// Zstandard, level 3.
    Zstd,
}

impl BenchCompression {
    fn wire(self) -> i32 {
        match self {
            BenchCompression::Lz4 => cairn_proto::meta::Compression::Lz4 as i32,
            BenchCompression::Zstd => cairn_proto::meta::Compression::Zstd as i32,
        }
    }
}

/// One phase of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Sequential reads, one stream.
    SeqRead,
    /// Sequential reads, `--streams` streams.
    SeqReadStreams,
    /// One file written front to back, fsync, close.
    CheckpointWrite,
    /// The same through `Checkpoints::save_reader`.
    CheckpointSave,
    /// 4 KiB random reads at queue depth 1.
    RandomRead,
    /// 4 KiB random reads by `--readers` readers.
    RandomReadConcurrent,
    /// Small files written.
    SmallWrite,
    /// Small files read by one reader.
    SmallRead,
    /// Small files read by `--small-tasks` readers.
    SmallReadConcurrent,
}

impl Phase {
    /// Returns the phase's name in tables (`×N`: see the settings).
    pub fn name(self) -> &'static str {
        match self {
            Phase::SeqRead => "seq read ×1",
            Phase::SeqReadStreams => "seq read ×N",
            Phase::CheckpointWrite => "checkpoint write",
            Phase::CheckpointSave => "checkpoint save",
            Phase::RandomRead => "read 4K",
            Phase::RandomReadConcurrent => "read 4K ×N",
            Phase::SmallWrite => "small write ×N",
            Phase::SmallRead => "small read ×1",
            Phase::SmallReadConcurrent => "small read ×N",
        }
    }

    /// Returns the rate the phase compares, and the baseline it divides
    /// by; `None` for the latency phase.
    fn compares(self) -> Option<(Rate, System)> {
        match self {
            Phase::SeqRead | Phase::SeqReadStreams => Some((Rate::MibPerSec, System::RawRead)),
            Phase::CheckpointWrite | Phase::CheckpointSave => {
                Some((Rate::MibPerSec, System::RawWriteThird))
            }
            Phase::RandomRead => None,
            Phase::RandomReadConcurrent => Some((Rate::OpsPerSec, System::Pread)),
            Phase::SmallWrite | Phase::SmallRead | Phase::SmallReadConcurrent => {
                Some((Rate::OpsPerSec, System::Local))
            }
        }
    }

    /// Returns how Cairn is driven in the phase.
    fn cairn(self) -> System {
        match self {
            Phase::CheckpointSave => System::CairnCheckpoint,
            _ => System::Cairn,
        }
    }

    /// Returns how the phase's ratio is computed.
    fn ratio_of(self) -> &'static str {
        match self {
            Phase::SeqRead | Phase::SeqReadStreams => "cairn MiB/s ÷ raw MiB/s",
            Phase::CheckpointWrite => "cairn MiB/s ÷ (raw, 1 sync MiB/s ÷ 3)",
            Phase::CheckpointSave => "checkpoint API MiB/s ÷ (raw, 1 sync MiB/s ÷ 3)",
            Phase::RandomRead => "cairn p50 ÷ (pread p50 + tcp ping-pong p50)",
            Phase::RandomReadConcurrent => "cairn IOPS ÷ pread IOPS",
            Phase::SmallWrite | Phase::SmallRead | Phase::SmallReadConcurrent => {
                "cairn files/s ÷ local files/s"
            }
        }
    }
}

/// A system measured in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Cairn through `Client` and `File`.
    Cairn,
    /// Cairn through `Checkpoints::save_reader`.
    CairnCheckpoint,
    /// `O_DIRECT` sequential reads.
    RawRead,
    /// `O_DIRECT` sequential writes, one fdatasync at the end.
    RawWrite,
    /// [`System::RawWrite`]'s rates divided by 3 (derived).
    RawWriteThird,
    /// `O_DIRECT` 4 KiB preads.
    Pread,
    /// Loopback TCP round trips.
    TcpPingPong,
    /// The local file system (`std::fs`).
    Local,
}

impl Compared for System {
    fn label(self) -> &'static str {
        match self {
            System::Cairn => "cairn",
            System::CairnCheckpoint => "cairn checkpoint API",
            System::RawRead => "raw",
            System::RawWrite => "raw, 1 sync",
            System::RawWriteThird => "raw, 1 sync ÷ 3",
            System::Pread => "pread",
            System::TcpPingPong => "tcp ping-pong",
            System::Local => "local",
        }
    }

    fn description(self) -> &'static str {
        match self {
            System::Cairn => {
                "cairn_client::Client/File, 3 meta + 3 chunkservers on loopback, replication 3, every replica on this disk; reads CRC-checked, writes acknowledged once every replica synced"
            }
            System::CairnCheckpoint => {
                "Checkpoints::save_reader: temporary file, 8 MiB writes, fsync, close, size + CRC32 xattr, atomic rename"
            }
            System::RawRead => {
                "O_DIRECT pread of a file on the same disk, same bytes, same read size, one thread per stream"
            }
            System::RawWrite => {
                "O_DIRECT 8 MiB pwrite to a preallocated file, one fdatasync after the last (in the time)"
            }
            System::RawWriteThird => {
                "raw, 1 sync MiB/s divided by 3: the disk takes every replicated byte three times"
            }
            System::Pread => {
                "pread of 4 KiB with O_DIRECT, same offsets, file of the same size, same readers"
            }
            System::TcpPingPong => pingpong::DESCRIPTION,
            System::Local => {
                "std::fs on the same disk: create + write + fsync per file; reads open O_DIRECT (not from the page cache), read, close"
            }
        }
    }

    fn is_cairn(self) -> bool {
        matches!(self, System::Cairn | System::CairnCheckpoint)
    }
}

/// The figures of one system in one phase.
pub type SystemResult = measure::SystemResult<System>;

/// Everything measured in one phase.
pub type PhaseResult = measure::PhaseResult<Phase, System>;

/// The client side of one phase, read right after Cairn's part.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSide {
    /// The phase.
    pub phase: Phase,
    /// This process's peak resident memory (`VmHWM`) so far, in KiB: the
    /// clients of every phase up to this one (the baselines use a few
    /// MiB of buffers).
    pub peak_rss_kib: Option<u64>,
    /// The reading client's block-cache counters (read phases).
    pub cache: Option<CacheStats>,
}

/// Writing a data set a phase reads (not compared; for information).
#[derive(Debug, Clone, Serialize)]
pub struct SetupWrite {
    /// What was written, in words.
    pub what: String,
    /// Cairn's figures.
    pub result: SystemResult,
}

/// The sizes a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Bytes of each sequential-read file.
    pub seq_size: u64,
    /// Streams of the second sequential-read phase.
    pub streams: usize,
    /// Bytes of one sequential read.
    pub seq_io: u64,
    /// Memory cache of the sequential readers' clients.
    pub seq_cache: u64,
    /// Bytes of the checkpoint.
    pub checkpoint_size: u64,
    /// Bytes of one checkpoint write.
    pub checkpoint_io: u64,
    /// Bytes of the random reads' file.
    pub random_set: u64,
    /// Random reads recorded per system and phase.
    pub random_reads: usize,
    /// Unrecorded warm-up reads before them.
    pub warmup_reads: usize,
    /// Readers of the concurrent random-read phase.
    pub readers: usize,
    /// Small files.
    pub small_files: usize,
    /// Bytes of each small file.
    pub small_size: u64,
    /// Writers, and readers of the concurrent small-read phase.
    pub small_tasks: usize,
    /// Seed of the offsets, orders and bytes.
    pub seed: u64,
    /// Whether the volume was encrypted.
    pub encrypted: bool,
    /// The volume's compression, if any.
    pub compression: Option<BenchCompression>,
    /// Whether the bytes written were text-like (compressible).
    pub compressible: bool,
    /// Bytes per compression unit.
    pub compression_unit: u64,
    /// Whether every phase ran on a plain volume too (`--beside-plain`).
    pub beside_plain: bool,
}

/// The volume the run used.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    /// Its name (its root is `/NAME`).
    pub name: &'static str,
    /// Replicas of every chunk.
    pub replication: u32,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Chains a file's chunks rotate over.
    pub stripe_width: u32,
    /// Whether file contents were encrypted.
    pub encrypted: bool,
    /// The compression, if any.
    pub compression: Option<BenchCompression>,
    /// Bytes written in compression units before and after compression,
    /// as meta counted them at the end of the run (0 without compression).
    pub logical_bytes: u64,
    /// See `logical_bytes`.
    pub stored_bytes: u64,
    /// The 3-replica chains, each with its members head first.
    pub chains: Vec<ChainRoute>,
}

/// The whole report of `cairn-bench client`, as written to --json.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    /// Always `"client"`.
    pub workload: &'static str,
    /// The command line, one argument per element.
    pub command_line: Vec<String>,
    /// When and how long, the binaries, where the data lived, notes.
    #[serde(flatten)]
    pub run: Finished,
    /// The machine.
    pub machine: Machine,
    /// `release` or `debug` (the benchmark binary's build).
    pub bench_build: &'static str,
    /// Meta replicas started.
    pub meta_replicas: usize,
    /// Chunkservers started (one shard each).
    pub chunkservers: usize,
    /// The volume.
    pub volume: VolumeInfo,
    /// The sizes used.
    pub settings: Settings,
    /// Writing the data sets the read phases read.
    pub setup_writes: Vec<SetupWrite>,
    /// The phases, in run order.
    pub phases: Vec<PhaseResult>,
    /// With `--beside-plain`: the same phases on a plain volume, run
    /// first against the same servers (empty otherwise).
    pub plain_phases: Vec<PhaseResult>,
    /// The client side of each phase.
    pub client: Vec<ClientSide>,
    /// Peak resident memory of every process started, and of the
    /// benchmark, read just before the servers were stopped.
    pub peak_rss: Vec<ProcessRss>,
}

impl ClientReport {
    /// Returns the result of `phase`, if it ran.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == phase)
    }
}

/// The sizes of a run, checked.
struct Plan {
    settings: Settings,
}

impl Plan {
    fn new(a: &ClientArgs) -> Result<Plan> {
        let multiple = |v: u64, of: u64, flag: &str| {
            if v == 0 || !v.is_multiple_of(of) {
                bail!("{flag} must be a positive multiple of {} KiB", of >> 10);
            }
            Ok(())
        };
        multiple(a.seq_size, SEQ_IO, "--seq-size")?;
        multiple(a.checkpoint_size, CHECKPOINT_IO, "--checkpoint-size")?;
        multiple(a.random_set, SEQ_IO, "--random-set")?;
        multiple(a.small_size, BLOCK, "--small-size")?;
        for (v, flag) in [
            (a.streams, "--streams"),
            (a.readers, "--readers"),
            (a.small_tasks, "--small-tasks"),
        ] {
            if !(1..=MAX_DEPTH).contains(&v) {
                bail!("{flag} must be between 1 and {MAX_DEPTH}, not {v}");
            }
        }
        if a.random_reads == 0 || a.small_files == 0 {
            bail!("--random-reads and --small-files must be at least 1");
        }
        if a.beside_plain && !a.encrypted && a.compression.is_none() {
            bail!(
                "--beside-plain compares a transformed volume with a plain one: add --encrypted and/or --compression"
            );
        }
        Ok(Plan {
            settings: Settings {
                seq_size: a.seq_size,
                streams: a.streams,
                seq_io: SEQ_IO,
                seq_cache: a.seq_cache,
                checkpoint_size: a.checkpoint_size,
                checkpoint_io: CHECKPOINT_IO,
                random_set: a.random_set,
                random_reads: a.random_reads,
                warmup_reads: WARMUP_READS,
                readers: a.readers,
                small_files: a.small_files,
                small_size: a.small_size,
                small_tasks: a.small_tasks,
                seed: a.seed,
                encrypted: a.encrypted,
                compression: a.compression,
                compressible: a.compressible,
                compression_unit: a.compression_unit.unwrap_or(64 << 10),
                beside_plain: a.beside_plain,
            },
        })
    }

    /// Returns `len` bytes of the run's pattern.
    fn pattern(&self, len: u64) -> Bytes {
        if self.settings.compressible {
            Bytes::from(layout::text(len as usize, self.settings.seed))
        } else {
            Bytes::from(layout::pattern(len as usize, self.settings.seed))
        }
    }
}

/// What [`run_all`] measured.
#[derive(Default)]
struct Outcome {
    chains: Vec<ChainRoute>,
    setup_writes: Vec<SetupWrite>,
    phases: Vec<PhaseResult>,
    client: Vec<ClientSide>,
    /// The volume's (logical, stored) bytes at the end.
    stored: (u64, u64),
}

/// Runs the phases: holds what they share and collects what they measure.
struct Runner<'a> {
    servers: &'a Servers,
    plan: &'a Plan,
    /// The volume the phases work in.
    volume: &'a str,
    /// Where the raw and local baselines' files go.
    dir: &'a Path,
    notes: &'a mut Vec<String>,
    out: &'a mut Outcome,
}

impl Runner<'_> {
    /// Runs Cairn's part of `phase` between a [`ServerClock`]'s start and
    /// stop, then reads this process's peak memory and `reader`'s cache
    /// counters.
    async fn cairn(
        &mut self,
        phase: Phase,
        reader: Option<&Client>,
        work: impl Future<Output = Result<Measured>>,
    ) -> Result<(SystemResult, Around)> {
        let clock = ServerClock::start(self.servers, Watch::all(self.servers), self.notes).await;
        let m = work.await;
        let around = clock.stop(self.notes).await;
        self.out.client.push(ClientSide {
            phase,
            peak_rss_kib: machine::self_peak_rss_kib(),
            cache: reader.map(Client::cache_stats),
        });
        let m = m.with_context(|| format!("Cairn's {}", phase.name()))?;
        let r = SystemResult::new(phase.cairn(), &m);
        progress(phase, &r);
        Ok((r, around))
    }

    /// Runs a blocking baseline of `phase` and returns its result.
    async fn baseline(
        &self,
        phase: Phase,
        system: System,
        work: impl FnOnce() -> Result<Measured> + Send + 'static,
    ) -> Result<SystemResult> {
        let m = blocking(work)
            .await
            .with_context(|| format!("the {} baseline of {}", system.label(), phase.name()))?;
        let r = SystemResult::new(system, &m);
        progress(phase, &r);
        Ok(r)
    }

    /// Records a finished phase, computing its ratio.
    fn finish(
        &mut self,
        phase: Phase,
        what: String,
        mut systems: Vec<SystemResult>,
        around: Around,
    ) {
        let ratio = match phase.compares() {
            Some((rate, reference)) => rate_ratios(&mut systems, reference, rate),
            None => p50_over_sum(
                &systems,
                System::Cairn,
                &[System::Pread, System::TcpPingPong],
            ),
        };
        self.out.phases.push(PhaseResult {
            phase,
            what,
            systems,
            ratio,
            ratio_of: phase.ratio_of(),
            server_time: around.server_time,
            cpu: around.cpu,
        });
    }

    /// Records writing a data set to Cairn.
    fn setup(&mut self, what: String, m: &Measured) {
        let result = SystemResult::new(System::Cairn, m);
        eprintln!(
            "  setup: {what}: {} MiB in {:.2} s = {:.1} MiB/s",
            m.bytes >> 20,
            result.seconds,
            result.mib_per_sec
        );
        self.out.setup_writes.push(SetupWrite { what, result });
    }

    /// The sequential reads: files written by `writer`, read by fresh
    /// clients.
    async fn sequential(&mut self, writer: &Client) -> Result<()> {
        let s = &self.plan.settings;
        let (size, n) = (s.seq_size, s.streams);
        let data = self.plan.pattern(SEQ_IO);
        let dir = format!("/{}/seq", self.volume);
        writer
            .create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {dir}"))?;
        let paths: Vec<String> = (0..n).map(|i| format!("{dir}/stream-{i}")).collect();
        eprintln!(
            "client: writing {n} × {} MiB to Cairn and to a raw file",
            size >> 20
        );
        let m = cairn::write_files(writer, &paths, size, data.clone())
            .await
            .context("writing the sequential-read files")?;
        self.setup(
            format!(
                "{n} files of {} MiB, one writer task each, 4 MiB write_at calls",
                size >> 20
            ),
            &m,
        );
        let raw_file = self.dir.join("raw-sequential");
        {
            let (p, d) = (raw_file.clone(), data.clone());
            let all = Layout::regions(size, n, SEQ_IO)?;
            blocking(move || raw::write(&p, &all, &d, raw::Sync::AtEnd))
                .await
                .context("writing the raw sequential-read file")?;
        }
        let runs: &[(Phase, usize)] = if n > 1 {
            &[(Phase::SeqRead, 1), (Phase::SeqReadStreams, n)]
        } else {
            &[(Phase::SeqRead, 1)]
        };
        for &(phase, streams) in runs {
            let reader = cairn::connect(self.servers, s.seq_cache).await?;
            let (cairn, around) = self
                .cairn(
                    phase,
                    Some(&reader),
                    cairn::read_files(&reader, &paths[..streams], size, data.clone()),
                )
                .await?;
            reader.close().await.context("closing the reading client")?;
            let layout = Layout::regions(size, streams, SEQ_IO)?;
            let (p, d) = (raw_file.clone(), data.clone());
            let raw = self
                .baseline(phase, System::RawRead, move || raw::read(&p, &layout, &d))
                .await?;
            let what = format!(
                "{streams} × {} MiB, {streams} stream(s), 4 MiB reads, client memory cache {} MiB",
                size >> 20,
                s.seq_cache >> 20
            );
            self.finish(phase, what, vec![cairn, raw], around);
        }
        let _ = std::fs::remove_file(&raw_file);
        Ok(())
    }

    /// The checkpoint: written with `write_at`, then saved through the
    /// checkpoint API, beside a third of the raw disk's write rate.
    async fn checkpoint(&mut self, writer: &Client) -> Result<()> {
        let size = self.plan.settings.checkpoint_size;
        let data = self.plan.pattern(CHECKPOINT_IO);
        let dir = format!("/{}/checkpoint", self.volume);
        writer
            .create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {dir}"))?;
        let path = format!("{dir}/write-at");
        let (cairn, around) = self
            .cairn(
                Phase::CheckpointWrite,
                None,
                cairn::write_files(writer, std::slice::from_ref(&path), size, data.clone()),
            )
            .await?;
        let raw_file = self.dir.join("raw-checkpoint");
        let layout = Layout::regions(size, 1, CHECKPOINT_IO)?;
        let (p, d) = (raw_file.clone(), data.clone());
        let raw = self
            .baseline(Phase::CheckpointWrite, System::RawWrite, move || {
                raw::write(&p, &layout, &d, raw::Sync::AtEnd)
            })
            .await?;
        let _ = std::fs::remove_file(&raw_file);
        let third = SystemResult::divided(&raw, System::RawWriteThird, 3.0);
        let what = format!(
            "one file of {} MiB, 8 MiB write_at calls one after the other, fsync, close",
            size >> 20
        );
        self.finish(
            Phase::CheckpointWrite,
            what,
            vec![cairn, raw, third.clone()],
            around,
        );
        let (api, around) = self
            .cairn(
                Phase::CheckpointSave,
                None,
                cairn::save_checkpoint(writer, &format!("{dir}/api"), "step-1", size, data),
            )
            .await?;
        let what = format!(
            "Checkpoints::save_reader of {} MiB (8 MiB writes, fsync, record, rename)",
            size >> 20
        );
        self.finish(Phase::CheckpointSave, what, vec![api, third], around);
        Ok(())
    }

    /// The 4 KiB random reads, at queue depth 1 and with `--readers`
    /// readers, from a client without a block cache.
    async fn random(&mut self, writer: &Client) -> Result<()> {
        let s = &self.plan.settings;
        let size = s.random_set;
        let data = self.plan.pattern(SEQ_IO);
        let dir = format!("/{}/random", self.volume);
        writer
            .create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {dir}"))?;
        let path = format!("{dir}/set");
        eprintln!(
            "client: writing the {} MiB random-read file to Cairn and to a raw file",
            size >> 20
        );
        let m = cairn::write_files(writer, std::slice::from_ref(&path), size, data.clone())
            .await
            .context("writing the random-read file")?;
        self.setup(
            format!("one file of {} MiB, 4 MiB write_at calls", size >> 20),
            &m,
        );
        let raw_file = self.dir.join("raw-random");
        {
            let (p, d) = (raw_file.clone(), data.clone());
            let layout = Layout::regions(size, 1, SEQ_IO)?;
            blocking(move || raw::write(&p, &layout, &d, raw::Sync::AtEnd))
                .await
                .context("writing the raw random-read file")?;
        }
        let reader = cairn::connect(self.servers, 0).await?;
        for (phase, readers, seed) in [
            (Phase::RandomRead, 1, s.seed),
            (
                Phase::RandomReadConcurrent,
                s.readers,
                s.seed.wrapping_add(1),
            ),
        ] {
            // Other offsets for the second phase: a disk (or the host
            // behind a virtual one) may cache what was just read.
            let picks = random_blocks(size, WARMUP_READS + s.random_reads, seed);
            let idle = crate::allocs::idle_rate(std::time::Duration::from_millis(500)).await;
            let allocs = std::sync::Mutex::new(None);
            let (cairn, around) = self
                .cairn(
                    phase,
                    Some(&reader),
                    cairn::random_reads(
                        &reader,
                        &path,
                        &picks,
                        WARMUP_READS,
                        readers,
                        data.clone(),
                        Some((idle, &allocs)),
                    ),
                )
                .await?;
            if let Some(a) = *allocs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                self.notes.push(format!(
                    "{}: the client allocated {:.1} times ({:.0} bytes) per 4 KiB read \
                     (process-wide heap allocations while reading, less the idle rate)",
                    phase.name(),
                    a.allocations,
                    a.bytes
                ));
            }
            let (p, d) = (raw_file.clone(), data.clone());
            let pread = self
                .baseline(phase, System::Pread, move || {
                    raw::random_reads(&p, &picks, WARMUP_READS, &d, readers)
                })
                .await?;
            let mut systems = vec![cairn, pread];
            if phase == Phase::RandomRead {
                let m = pingpong::run(s.random_reads, WARMUP_READS)
                    .await
                    .context("the TCP ping-pong")?;
                let r = SystemResult::new(System::TcpPingPong, &m);
                progress(phase, &r);
                systems.push(r);
            }
            let what = format!(
                "{} reads of 4 KiB at random aligned offsets of a {} MiB file, {readers} \
                 reader(s) one read at a time each, no client cache (after {WARMUP_READS} \
                 unrecorded)",
                crate::report::thousands(s.random_reads as f64),
                size >> 20
            );
            self.finish(phase, what, systems, around);
        }
        reader.close().await.context("closing the reading client")?;
        let _ = std::fs::remove_file(&raw_file);
        Ok(())
    }

    /// The small files: written by `writer`, read back in random orders by
    /// a client without a block cache; the same on the local file system.
    async fn small_files(&mut self, writer: &Client) -> Result<()> {
        let s = &self.plan.settings;
        let (n, tasks) = (s.small_files, s.small_tasks);
        let data = self.plan.pattern(s.small_size);
        let dir = format!("/{}/small", self.volume);
        let local_dir = self.dir.join("small");
        let kib = s.small_size >> 10;
        let (cairn, around) = self
            .cairn(
                Phase::SmallWrite,
                None,
                cairn::write_small(writer, &dir, n, tasks, data.clone()),
            )
            .await?;
        let (p, d) = (local_dir.clone(), data.clone());
        let local = self
            .baseline(Phase::SmallWrite, System::Local, move || {
                local::write_small(&p, n, tasks, &d, true)
            })
            .await?;
        let what = format!("{n} files of {kib} KiB into one directory, {tasks} writers");
        self.finish(Phase::SmallWrite, what, vec![cairn, local], around);
        let reader = cairn::connect(self.servers, 0).await?;
        for (phase, readers, seed) in [
            (Phase::SmallRead, 1, s.seed),
            (Phase::SmallReadConcurrent, tasks, s.seed.wrapping_add(1)),
        ] {
            let mut order: Vec<usize> = (0..n).collect();
            SplitMix::new(seed).shuffle(&mut order);
            let (cairn, around) = self
                .cairn(
                    phase,
                    Some(&reader),
                    cairn::read_small(&reader, &dir, &order, readers, data.clone()),
                )
                .await?;
            let (p, d) = (local_dir.clone(), data.clone());
            let local = self
                .baseline(phase, System::Local, move || {
                    local::read_small(&p, &order, readers, &d, true)
                })
                .await?;
            let what = format!(
                "{n} files of {kib} KiB read whole in a random order, {readers} reader(s), \
                 no client cache; local reads O_DIRECT"
            );
            self.finish(phase, what, vec![cairn, local], around);
        }
        reader.close().await.context("closing the reading client")?;
        let _ = std::fs::remove_dir_all(&local_dir);
        Ok(())
    }
}

/// Prints one measured system to stderr, so a long run shows progress.
fn progress(phase: Phase, r: &SystemResult) {
    let lat = r.latency.unwrap_or_default();
    eprintln!(
        "  {:<16} {:<20} {:>7} ops, {:>6} MiB in {:>6.2} s: {:>8.1} MiB/s, {:>8.0} ops/s, \
         p50 {:>7.1} µs, p99 {:>8.1} µs",
        phase.name(),
        r.system.label(),
        r.ops,
        r.bytes >> 20,
        r.seconds,
        r.mib_per_sec,
        r.ops_per_sec,
        lat.p50_us,
        lat.p99_us,
    );
}

/// Runs every phase against started servers in the run's volume, or with
/// `plain` in a plain volume of its own (`--beside-plain`); `dir` holds
/// the baselines' files.
async fn run_all(
    servers: &Servers,
    plan: &Plan,
    plain: bool,
    dir: &Path,
    notes: &mut Vec<String>,
    out: &mut Outcome,
) -> Result<()> {
    let volume = if plain { PLAIN_VOLUME } else { VOLUME };
    out.chains = servers.serving_chains(3).await?;
    eprintln!(
        "client: 3-replica chains {}",
        out.chains
            .iter()
            .map(|c| format!("{} ({})", c.chain, c.path()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let key = (plan.settings.encrypted && !plain).then(VolumeKey::generate);
    let compression = plan.settings.compression.filter(|_| !plain);
    let admin = cairn::connect(servers, 0).await?;
    admin
        .meta()
        .create_volume(
            volume,
            volume_policy(
                key.as_ref(),
                compression,
                u32::try_from(plan.settings.compression_unit).unwrap_or(u32::MAX),
            ),
        )
        .await
        .context("creating the benchmark volume")?;
    admin.close().await.context("closing the admin client")?;
    if let Some(k) = key {
        // Every client connected from now on gets the key.
        cairn::use_key(std::sync::Arc::new(KeyRing::single(VOLUME, 1, k)));
    }
    let writer = cairn::connect(servers, 0).await?;
    let mut runner = Runner {
        servers,
        plan,
        volume,
        dir,
        notes,
        out,
    };
    runner.sequential(&writer).await?;
    runner.checkpoint(&writer).await?;
    runner.random(&writer).await?;
    runner.small_files(&writer).await?;
    let volumes = writer.meta().list_volumes().await?;
    if let Some(v) = volumes.iter().find(|v| v.name == volume) {
        out.stored = (v.logical_bytes, v.stored_bytes);
    }
    writer.close().await.context("closing the writing client")?;
    Ok(())
}

/// Runs the `client` workload and returns its report. Starts the servers
/// and stops them again, also when the run fails or is interrupted
/// (Ctrl-C).
///
/// # Errors
/// Bad sizes, a missing binary, servers that do not start, a failed
/// operation or baseline.
pub async fn run(args: &ClientArgs, command_line: Vec<String>) -> Result<ClientReport> {
    let plan = Plan::new(args)?;
    let mut setup = Setup::new(&args.common, "client")?;
    eprintln!(
        "client: starting {META_REPLICAS} cairn-meta replicas and {CHUNKSERVERS} chunkservers \
         from {}",
        setup.bin_dir.display()
    );
    let servers = Servers::start(setup.work.path(), &setup.bin_dir, META_REPLICAS).await?;
    let dir: PathBuf = setup.work.path().join("baselines");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut outcome = Outcome::default();
    let mut plain = Outcome::default();
    let notes = &mut setup.notes;
    let (result, peak_rss) = servers
        .run_then_stop(
            "cairn-bench (this process: the clients and the baselines)",
            async |servers| {
                if plan.settings.beside_plain {
                    eprintln!("client: every phase on a plain volume first (--beside-plain)");
                    run_all(servers, &plan, true, &dir, notes, &mut plain).await?;
                    std::fs::remove_dir_all(&dir)
                        .and_then(|()| std::fs::create_dir_all(&dir))
                        .with_context(|| format!("emptying {}", dir.display()))?;
                }
                run_all(servers, &plan, false, &dir, notes, &mut outcome).await
            },
        )
        .await;
    result?;
    let run = setup.finish(&args.common)?;
    let policy = volume_policy(None, None, 0);
    Ok(ClientReport {
        workload: "client",
        command_line,
        run,
        machine: machine::describe(),
        bench_build: build_profile(),
        meta_replicas: META_REPLICAS,
        chunkservers: CHUNKSERVERS,
        volume: VolumeInfo {
            name: VOLUME,
            replication: policy.replication,
            chunk_size: policy.chunk_size,
            stripe_width: policy.stripe_width,
            encrypted: plan.settings.encrypted,
            compression: plan.settings.compression,
            logical_bytes: outcome.stored.0,
            stored_bytes: outcome.stored.1,
            chains: outcome.chains,
        },
        settings: plan.settings,
        setup_writes: outcome.setup_writes,
        phases: outcome.phases,
        plain_phases: plain.phases,
        client: outcome.client,
        peak_rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClientArgs,
    }

    fn args(extra: &[&str]) -> ClientArgs {
        let mut argv = vec!["client"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    #[test]
    fn defaults_make_a_valid_plan_and_bad_sizes_are_refused() {
        let p = Plan::new(&args(&[])).unwrap();
        assert_eq!(p.settings.seq_size, 1 << 30);
        assert_eq!((p.settings.streams, p.settings.readers), (4, 16));
        assert_eq!(p.settings.small_files, 10_000);
        let quick = args(&["--seq-size", "256MiB", "--small-files", "2000"]);
        assert_eq!(Plan::new(&quick).unwrap().settings.seq_size, 256 << 20);
        for bad in [
            &["--seq-size", "6MiB"][..],
            &["--checkpoint-size", "4MiB"],
            &["--small-size", "1000"],
            &["--streams", "0"],
            &["--random-reads", "0"],
            // Beside plain needs something to compare with plain.
            &["--beside-plain"],
        ] {
            assert!(Plan::new(&args(bad)).is_err(), "{bad:?} accepted");
        }
        let both = Plan::new(&args(&["--encrypted", "--beside-plain"])).unwrap();
        assert!(both.settings.beside_plain && both.settings.encrypted);
    }

    #[test]
    fn every_phase_compares_with_a_baseline_it_runs() {
        for phase in [
            Phase::SeqRead,
            Phase::CheckpointWrite,
            Phase::CheckpointSave,
            Phase::RandomReadConcurrent,
            Phase::SmallRead,
        ] {
            let (_, reference) = phase.compares().unwrap();
            assert!(!reference.is_cairn(), "{phase:?}");
        }
        assert!(Phase::RandomRead.compares().is_none());
    }
}
