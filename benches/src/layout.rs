//! Where the bytes of a data set go, identically for Cairn and for the
//! raw-disk baseline, so both do the same I/O in the same order.
//!
//! A data set is a flat range of `bytes` bytes cut into 1 MiB pieces (one
//! write or read each) and into chunks of `chunk_bytes` (at most 64 MiB,
//! Cairn's chunk size). Byte `b` of the set is byte `b % chunk_bytes` of
//! chunk `b / chunk_bytes` on Cairn, and byte `b` of the file on the raw
//! disk. Each of the `depth` workers owns the chunks `w, w + depth, …` and
//! goes through them in order, one piece at a time: writes to one Cairn
//! chunk are serialized by the chain's head (one version after the
//! other), so `depth` operations in flight need `depth` chunks, and the
//! raw baseline's threads then write the same regions of its file in the
//! same order.
//!
//! `cairn-bench client` lays its raw baselines out with
//! [`Layout::regions`] instead: one region per stream, read or written
//! front to back by one worker in pieces of the size the client uses, as
//! its Cairn streams do with their files.
//!
//! Pure: no I/O, so the arithmetic is tested on its own.

use anyhow::{Result, bail};
use serde::Serialize;

use crate::meta::SplitMix;

/// Bytes of one sequential write or read.
pub const IO_SIZE: u64 = 1 << 20;

/// Cairn's chunk size: no chunk of a data set is larger.
pub const MAX_CHUNK: u64 = 64 << 20;

/// Bytes of one random read, and their alignment.
pub const BLOCK: u64 = 4096;

/// Most operations in flight a run accepts (`--depth`).
pub const MAX_DEPTH: usize = 256;

/// How a data set is cut into pieces, chunks and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Bytes in the set.
    pub bytes: u64,
    /// Bytes per operation ([`IO_SIZE`], or as given to
    /// [`Layout::regions`]).
    pub io_size: u64,
    /// Bytes per chunk: [`MAX_CHUNK`], or less when that leaves a worker
    /// without a chunk (a whole region with [`Layout::regions`]).
    pub chunk_bytes: u64,
    /// Chunks in the set (the last may be partial).
    pub chunks: u64,
    /// Workers, i.e. operations in flight.
    pub depth: usize,
}

impl Layout {
    /// Returns the layout of `bytes` bytes for `depth` workers: chunks of
    /// 64 MiB, smaller when the set has fewer than `depth` of them (never
    /// below one piece).
    ///
    /// # Errors
    /// A size that is zero or not a multiple of 1 MiB, or a depth outside
    /// `1..=`[`MAX_DEPTH`].
    pub fn new(bytes: u64, depth: usize) -> Result<Layout> {
        if bytes == 0 || !bytes.is_multiple_of(IO_SIZE) {
            bail!("{bytes} bytes is not a positive multiple of 1 MiB");
        }
        if !(1..=MAX_DEPTH).contains(&depth) {
            bail!("--depth must be between 1 and {MAX_DEPTH}, not {depth}");
        }
        let per_worker = (bytes / depth as u64) / IO_SIZE * IO_SIZE;
        let chunk_bytes = per_worker.clamp(IO_SIZE, MAX_CHUNK);
        Ok(Layout {
            bytes,
            io_size: IO_SIZE,
            chunk_bytes,
            chunks: bytes.div_ceil(chunk_bytes),
            depth,
        })
    }

    /// Returns the layout of `regions` regions of `region_bytes` bytes
    /// each, one per worker, each cut into pieces of `io_size` bytes: worker
    /// `w` goes through region `w` front to back, as one sequential stream.
    ///
    /// # Errors
    /// Zero regions, an `io_size` that is zero or not a multiple of
    /// [`BLOCK`], or a region size that is zero or not a multiple of it.
    pub fn regions(region_bytes: u64, regions: usize, io_size: u64) -> Result<Layout> {
        if io_size == 0 || !io_size.is_multiple_of(BLOCK) {
            bail!("a piece of {io_size} bytes is not a positive multiple of 4 KiB");
        }
        if region_bytes == 0 || !region_bytes.is_multiple_of(io_size) {
            bail!(
                "{region_bytes} bytes is not a positive multiple of {} KiB",
                io_size >> 10
            );
        }
        if !(1..=MAX_DEPTH).contains(&regions) {
            bail!("between 1 and {MAX_DEPTH} regions, not {regions}");
        }
        Ok(Layout {
            bytes: region_bytes * regions as u64,
            io_size,
            chunk_bytes: region_bytes,
            chunks: regions as u64,
            depth: regions,
        })
    }

    /// Returns the number of operations that cover the set.
    pub fn pieces(&self) -> u64 {
        self.bytes / self.io_size
    }

    /// Returns the byte offsets (in the set) of the pieces worker `w`
    /// handles, in the order it handles them.
    pub fn worker_pieces(&self, w: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut chunk = w as u64;
        while chunk < self.chunks {
            let start = chunk * self.chunk_bytes;
            let end = (start + self.chunk_bytes).min(self.bytes);
            out.extend((start..end).step_by(self.io_size as usize));
            chunk += self.depth as u64;
        }
        out
    }

    /// Returns `(chunk index, offset in the chunk)` of byte `b` of the set.
    pub fn locate(&self, b: u64) -> (u64, u64) {
        (b / self.chunk_bytes, b % self.chunk_bytes)
    }
}

/// Returns `n` offsets of [`BLOCK`]-aligned blocks drawn uniformly from a
/// set of `bytes` bytes, reproducibly for `seed`.
pub fn random_blocks(bytes: u64, n: usize, seed: u64) -> Vec<u64> {
    let blocks = (bytes / BLOCK).max(1) as usize;
    let mut rng = SplitMix::new(seed);
    (0..n).map(|_| rng.below(blocks) as u64 * BLOCK).collect()
}

/// Returns `len` pseudo-random bytes for `seed`: what every write sends,
/// so nothing along the way can profit from zeros or repetition inside a
/// piece.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix::new(seed ^ 0xc0ff_ee00);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Returns `len` text-like bytes (numbered lines of words, as tokenized
/// corpora and logs look) that lz4 shrinks about 2-3×.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the", "model", "epoch", "batch", "loss", "gradient", "tensor", "shard", "token", "of",
        "sample", "and", "step", "learning", "rate", "to",
    ];
    let mut rng = SplitMix::new(seed ^ 0x7e47);
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{line:07}\t").as_bytes());
        for _ in 0..12 {
            let r = rng.next_u64();
            out.extend_from_slice(WORDS[(r % 16) as usize].as_bytes());
            out.push(if r >> 60 == 0 { b',' } else { b' ' });
        }
        out.extend_from_slice(
            format!("{:.4}\n", (rng.next_u64() % 100_000) as f64 / 1e4).as_bytes(),
        );
        line += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn default_sizes_use_full_chunks() {
        let l = Layout::new(1 << 30, 4).unwrap();
        assert_eq!(l.chunk_bytes, 64 * MIB);
        assert_eq!(l.chunks, 16);
        assert_eq!(l.pieces(), 1024);
        let w1 = l.worker_pieces(1);
        assert_eq!(w1.len(), 256);
        // Worker 1 owns chunks 1, 5, 9, 13, each front to back.
        assert_eq!(w1[0], 64 * MIB);
        assert_eq!(w1[63], 128 * MIB - MIB);
        assert_eq!(w1[64], 5 * 64 * MIB);
        assert_eq!(l.locate(w1[64] + MIB), (5, MIB));
    }

    #[test]
    fn small_sets_get_small_chunks_so_every_worker_has_one() {
        let l = Layout::new(8 * MIB, 4).unwrap();
        assert_eq!(l.chunk_bytes, 2 * MIB);
        assert_eq!(l.chunks, 4);
        assert!((0..4).all(|w| l.worker_pieces(w).len() == 2));
        // Fewer pieces than workers: one-piece chunks, idle workers.
        let l = Layout::new(2 * MIB, 4).unwrap();
        assert_eq!((l.chunk_bytes, l.chunks), (MIB, 2));
        assert!(l.worker_pieces(3).is_empty());
    }

    #[test]
    fn workers_cover_every_piece_exactly_once() {
        for (bytes, depth) in [(1u64 << 30, 4), (100 * MIB, 3), (7 * MIB, 8), (MIB, 1)] {
            let l = Layout::new(bytes, depth).unwrap();
            let mut all: Vec<u64> = (0..depth).flat_map(|w| l.worker_pieces(w)).collect();
            all.sort_unstable();
            let want: Vec<u64> = (0..l.pieces()).map(|p| p * MIB).collect();
            assert_eq!(all, want, "{bytes} bytes, depth {depth}");
            assert!(l.chunk_bytes <= MAX_CHUNK);
        }
    }

    #[test]
    fn regions_are_streams_front_to_back() {
        let l = Layout::regions(16 * MIB, 3, 4 * MIB).unwrap();
        assert_eq!((l.bytes, l.pieces(), l.depth), (48 * MIB, 12, 3));
        assert_eq!(
            l.worker_pieces(1),
            vec![16 * MIB, 20 * MIB, 24 * MIB, 28 * MIB]
        );
        assert_eq!(l.locate(20 * MIB), (1, 4 * MIB));
        assert!(Layout::regions(16 * MIB, 0, 4 * MIB).is_err());
        assert!(Layout::regions(6 * MIB, 1, 4 * MIB).is_err());
        assert!(Layout::regions(16 * MIB, 1, 1000).is_err());
    }

    #[test]
    fn bad_sizes_and_depths_are_refused() {
        assert!(Layout::new(0, 1).is_err());
        assert!(Layout::new(MIB + 1, 1).is_err());
        assert!(Layout::new(MIB, 0).is_err());
        assert!(Layout::new(MIB, MAX_DEPTH + 1).is_err());
    }

    #[test]
    fn random_blocks_are_aligned_in_range_and_reproducible() {
        let a = random_blocks(256 * MIB, 1000, 7);
        assert_eq!(a, random_blocks(256 * MIB, 1000, 7));
        assert_ne!(a, random_blocks(256 * MIB, 1000, 8));
        assert!(a.iter().all(|&b| b % BLOCK == 0 && b < 256 * MIB));
        assert_eq!(pattern(10, 1).len(), 10);
        assert_ne!(pattern(64, 1), pattern(64, 2));
    }
}
