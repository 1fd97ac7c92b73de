//! Compressed volumes: the unit format (DESIGN §7 leaves compression to
//! the client; this module is the decision and its record).
//!
//! # Units
//! A compressed volume's files are cut into *units* of a fixed size (the
//! volume's `compression_unit`, a power of two from 16 KiB to 1 MiB,
//! 64 KiB by default) aligned in the file. Every unit is stored in its own
//! place in its chunk — the bytes `[k·U, (k+1)·U)` of the file stay at the
//! same chunk offsets as in a plain file — in one of two forms:
//!
//! * **packed**: an 8-byte header (`b'Z'`, the algorithm, two zero bytes,
//!   the compressed length as a u32 LE), the compressed bytes, zeros to the
//!   end of the unit. Chunkservers store whole blocks of zeros without a
//!   seal as holes, so a unit packed into `n` blocks takes `n` blocks of
//!   disk on each replica.
//! * **raw**: the unit's bytes as they are, when packing would not save at
//!   least one 4 KiB block (already compressed data: JPEG, video, zstd
//!   shards). A unit of zeros is raw too, and takes no space at all.
//!
//! Which form a unit has is said by the *seal of its first block*, never by
//! its bytes: a raw unit may hold any bytes, a header look-alike included
//! (a file of Cairn's own chunk dumps, or bytes chosen to mislead). On a
//! plain volume a packed unit's first block carries [`PACKED_MARK`] in the
//! seal the chunkservers store beside the block (they never interpret
//! seals) and raw blocks carry none. On an encrypted volume every stored
//! block is sealed, compression comes before encryption, and the nonce's
//! top bit is the mark (set on a packed unit's blocks, clear on a raw
//! unit's): the nonce is authenticated by the GCM tag, so a chunkserver
//! cannot flip a unit from one form to the other, and nonces keep 95
//! random bits, still far beyond the per-file bound of the crypto module.
//!
//! # Why this format
//! * A 4 KiB random read reads one unit, in one request to one replica,
//!   like any other read: the unit's place is known without an index.
//! * Nothing new crosses the data plane or meta: the chunk stays a flat
//!   address space, so replication, resync, repair, CRCs end to end,
//!   truncation and garbage collection work on compressed files unchanged.
//! * What it costs: a write of part of a unit reads the unit first (as a
//!   sealed block is read first on an encrypted volume), and the wire
//!   carries whole units (the zeros of a packed unit's tail travel too;
//!   chunkservers drop them). Disk space, the scarce resource of a dataset
//!   store, is what compression saves here; the bench reports what it does
//!   to throughput.
//!
//! A unit decodes to exactly `U` bytes or the read fails with
//! [`ErrorCode::Checksum`]: a corrupt or foreign header is never data.

use std::cell::RefCell;

use cairn_proto::{CairnStatus, ErrorCode};

use crate::cache::BLOCK;
use crate::crypto::{SEAL_LEN, Seal};

/// The bytes of a packed unit's header.
pub const HEADER_LEN: usize = 8;

/// The smallest and largest unit.
pub const MIN_UNIT: u64 = 16 << 10;
/// See [`MIN_UNIT`].
pub const MAX_UNIT: u64 = 1 << 20;

/// The seal a packed unit's first block carries on a plain volume (any
/// seal with the top bit of its first byte set means "packed").
pub const PACKED_MARK: Seal = {
    let mut s = [0u8; SEAL_LEN];
    s[0] = 0x80;
    s[1] = b'Z';
    s
};

/// Whether `seal` (of a unit's first block) marks a packed unit.
pub fn is_packed(seal: &Seal) -> bool {
    seal[0] & 0x80 != 0
}

/// The zstd level: the library's default. Measured on text-like data
/// (`cairn-bench client --compressible`, README "Compressed volumes"):
/// ratio 3.20 against lz4's 2.00, at 1.8× lz4's client CPU per byte
/// written and 1.75× per byte read.
const ZSTD_LEVEL: i32 = 3;

/// A compression algorithm (the wire values of meta's `Compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// LZ4 block format.
    Lz4,
    /// Zstandard, level 3.
    Zstd,
}

impl Algo {
    /// The algorithm of meta's `Compression` value (0: none).
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`] for a value this client does not know.
    pub fn from_wire(v: i32) -> Result<Option<Algo>, CairnStatus> {
        match v {
            0 => Ok(None),
            1 => Ok(Some(Algo::Lz4)),
            2 => Ok(Some(Algo::Zstd)),
            other => Err(CairnStatus::new(
                ErrorCode::Invalid,
                format!("unknown compression {other}: this client is older than the volume"),
            )),
        }
    }

    fn tag(self) -> u8 {
        match self {
            Algo::Lz4 => 1,
            Algo::Zstd => 2,
        }
    }

    /// The name users type (`lz4`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            Algo::Lz4 => "lz4",
            Algo::Zstd => "zstd",
        }
    }
}

/// How a compressed volume's files are stored: the algorithm and the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// The algorithm.
    pub algo: Algo,
    /// Bytes per unit.
    pub unit: u64,
}

thread_local! {
    static ZSTD_C: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl Codec {
    /// The codec of a volume whose policy says `compression` and `unit`.
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`] for an unknown algorithm or a unit that is
    /// not a power of two from [`MIN_UNIT`] to [`MAX_UNIT`].
    pub fn from_policy(compression: i32, unit: u64) -> Result<Option<Codec>, CairnStatus> {
        let Some(algo) = Algo::from_wire(compression)? else {
            return Ok(None);
        };
        if !unit.is_power_of_two() || !(MIN_UNIT..=MAX_UNIT).contains(&unit) {
            return Err(CairnStatus::new(
                ErrorCode::Invalid,
                format!("compression unit {unit} is not a power of two from 16 KiB to 1 MiB"),
            ));
        }
        Ok(Some(Codec { algo, unit }))
    }

    /// Packs one whole unit into `scratch` (reused between calls, so a
    /// stream of units allocates once): on [`Packing::Packed`]`(n)` its
    /// first `n` bytes are the stored unit, header and zero padding
    /// included.
    pub fn pack_into(&self, data: &[u8], scratch: &mut Vec<u8>) -> Packing {
        debug_assert_eq!(data.len() as u64, self.unit);
        if data.iter().all(|b| *b == 0) {
            // Stored raw, its blocks are all holes.
            return Packing::Zero;
        }
        // Packing must save at least one block.
        let room = self.unit as usize - BLOCK as usize - HEADER_LEN;
        // lz4 wants room for its worst case; zstd stops at the limit.
        let cap = match self.algo {
            Algo::Lz4 => lz4_flex::block::get_maximum_output_size(data.len()),
            Algo::Zstd => room,
        };
        if scratch.len() < HEADER_LEN + cap {
            scratch.resize(HEADER_LEN + cap, 0);
        }
        let out = &mut scratch[HEADER_LEN..HEADER_LEN + cap];
        let n = match self.algo {
            Algo::Lz4 => lz4_flex::block::compress_into(data, out).ok(),
            Algo::Zstd => ZSTD_C.with(|c| {
                let mut c = c.borrow_mut();
                if c.is_none() {
                    *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
                }
                c.as_mut()?.compress_to_buffer(data, out).ok()
            }),
        };
        let Some(n) = n.filter(|n| *n <= room) else {
            return Packing::Raw;
        };
        // HEADER_LEN + n <= unit - BLOCK: at least one block saved.
        let packed = (HEADER_LEN + n).div_ceil(BLOCK as usize) * BLOCK as usize;
        scratch[0] = b'Z';
        scratch[1] = self.algo.tag();
        scratch[2..4].fill(0);
        scratch[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        scratch[HEADER_LEN + n..packed].fill(0);
        Packing::Packed(packed)
    }

    /// Decodes a packed unit from `stored` into `out` (one unit long).
    ///
    /// # Errors
    /// [`ErrorCode::Checksum`] for a header that is not this codec's or
    /// bytes that do not decompress to exactly one unit.
    pub fn decode_into(&self, stored: &[u8], out: &mut [u8]) -> Result<(), CairnStatus> {
        let bad = |why: &str| {
            CairnStatus::new(
                ErrorCode::Checksum,
                format!("a compressed unit does not decode: {why}"),
            )
        };
        let h = stored
            .get(..HEADER_LEN)
            .ok_or_else(|| bad("it is cut short"))?;
        if h[0] != b'Z' || h[2..4] != [0, 0] {
            return Err(bad("its header is not one"));
        }
        let n = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let body = stored
            .get(HEADER_LEN..HEADER_LEN + n)
            .ok_or_else(|| bad("its length passes its end"))?;
        let got = match h[1] {
            1 => lz4_flex::block::decompress_into(body, out).map_err(|e| bad(&e.to_string())),
            2 => ZSTD_D.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = zstd::bulk::Decompressor::new().ok();
                }
                let d = d.as_mut().ok_or_else(|| bad("no zstd context"))?;
                d.decompress_to_buffer(body, out)
                    .map_err(|e| bad(&e.to_string()))
            }),
            other => return Err(bad(&format!("unknown algorithm {other}"))),
        }?;
        if got != out.len() {
            return Err(bad(&format!("it holds {got} bytes, not {}", out.len())));
        }
        Ok(())
    }
}

/// What [`Codec::pack_into`] made of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// All zeros: stored raw, as holes.
    Zero,
    /// Stored as it is.
    Raw,
    /// Packed into this many bytes (whole blocks) of the scratch buffer.
    Packed(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One unit as it is stored.
    #[derive(Debug, PartialEq, Eq)]
    enum Stored {
        Raw,
        Packed(Vec<u8>),
    }

    impl Codec {
        fn encode(&self, data: &[u8]) -> Stored {
            let mut scratch = Vec::new();
            match self.pack_into(data, &mut scratch) {
                Packing::Packed(n) => {
                    scratch.truncate(n);
                    Stored::Packed(scratch)
                }
                Packing::Zero | Packing::Raw => Stored::Raw,
            }
        }

        fn decode(&self, stored: &[u8]) -> Result<Vec<u8>, CairnStatus> {
            let mut out = vec![0u8; self.unit as usize];
            self.decode_into(stored, &mut out)?;
            Ok(out)
        }
    }

    fn text(len: usize) -> Vec<u8> {
        let words = b"the quick brown fox jumps over the lazy dog 0123456789 ";
        (0..len)
            .map(|i| words[(i * 7 + i / 13) % words.len()])
            .collect()
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn text_packs_and_round_trips_with_both_algorithms() {
        for algo in [Algo::Lz4, Algo::Zstd] {
            for unit in [MIN_UNIT, 64 << 10, MAX_UNIT] {
                let c = Codec { algo, unit };
                let data = text(unit as usize);
                let Stored::Packed(p) = c.encode(&data) else {
                    panic!("{algo:?}/{unit}: text did not pack");
                };
                assert_eq!(p.len() % BLOCK as usize, 0);
                assert!(p.len() as u64 <= unit / 2, "{algo:?}/{unit}: {}", p.len());
                assert_eq!(c.decode(&p).unwrap(), data);
                // The zeros after the compressed bytes are not needed.
                let n = u32::from_le_bytes(p[4..8].try_into().unwrap()) as usize;
                assert_eq!(c.decode(&p[..HEADER_LEN + n]).unwrap(), data);
            }
        }
    }

    #[test]
    fn what_does_not_shrink_by_a_block_stays_raw() {
        for algo in [Algo::Lz4, Algo::Zstd] {
            let c = Codec {
                algo,
                unit: 64 << 10,
            };
            let mut scratch = Vec::new();
            assert_eq!(c.pack_into(&noise(64 << 10, 3), &mut scratch), Packing::Raw);
            assert_eq!(
                c.pack_into(&vec![0u8; 64 << 10], &mut scratch),
                Packing::Zero
            );
            // 60 KiB of noise and 4 KiB of text: at best one block saved
            // minus the header, so it stays raw.
            let mut d = noise(60 << 10, 5);
            d.extend(text(4 << 10));
            assert_eq!(c.encode(&d), Stored::Raw, "{algo:?}");
            // Half noise, half text: packed, and still decodes.
            let mut d = noise(32 << 10, 7);
            d.extend(text(32 << 10));
            match c.encode(&d) {
                Stored::Packed(p) => assert_eq!(c.decode(&p).unwrap(), d),
                Stored::Raw => panic!("{algo:?}: half text did not pack"),
            }
        }
    }

    #[test]
    fn damaged_units_are_errors_never_data() {
        let c = Codec {
            algo: Algo::Lz4,
            unit: 64 << 10,
        };
        let data = text(64 << 10);
        let Stored::Packed(p) = c.encode(&data) else {
            panic!("text did not pack");
        };
        let n = u32::from_le_bytes(p[4..8].try_into().unwrap()) as usize;
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let mut x = p.clone();
        x[0] = b'Y';
        cases.push(x);
        let mut x = p.clone();
        x[1] = 9;
        cases.push(x);
        let mut x = p.clone();
        x[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(x);
        cases.push(p[..HEADER_LEN + n - 1].to_vec());
        cases.push(p[..4].to_vec());
        // A zstd header read by the lz4 path and the other way round.
        let z = Codec {
            algo: Algo::Zstd,
            unit: 32 << 10,
        };
        let Stored::Packed(zp) = z.encode(&text(32 << 10)) else {
            panic!("text did not pack");
        };
        cases.push(zp);
        for (i, bad) in cases.iter().enumerate() {
            let e = c.decode(bad).expect_err(&format!("case {i} decoded"));
            assert_eq!(e.code, ErrorCode::Checksum, "case {i}");
        }
    }

    #[test]
    fn policy_values_map_to_codecs() {
        assert_eq!(Codec::from_policy(0, 0).unwrap(), None);
        assert_eq!(
            Codec::from_policy(2, 1 << 20).unwrap(),
            Some(Codec {
                algo: Algo::Zstd,
                unit: 1 << 20
            })
        );
        assert!(Codec::from_policy(1, 3 << 10).is_err());
        assert!(Codec::from_policy(1, 8 << 10).is_err());
        assert!(Codec::from_policy(1, 2 << 20).is_err());
        assert!(Codec::from_policy(7, 64 << 10).is_err());
        assert!(is_packed(&PACKED_MARK));
        assert!(!is_packed(&[0u8; SEAL_LEN]));
    }
}
