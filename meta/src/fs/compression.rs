//! Compressed volumes as meta knows them: per volume, the algorithm and
//! unit clients compress file contents with, and how many bytes they wrote
//! before and after compression ([`VolumeCompression`], stored under `z` +
//! volume id). Compression happens on the clients, before encryption; meta
//! only records the choice and the counters (`cairn volume ls` shows the
//! ratio).
//!
//! Invariants:
//! * A volume is compressed exactly when it has a compression record. The
//!   record is made in the entry that makes the volume
//!   ([`Op::CreateVolumeWith`](super::Op::CreateVolumeWith)) and removed
//!   with the volume; the algorithm and unit never change (files already
//!   written were cut into units of that size). Volumes made before
//!   compression existed have none and stay uncompressed.
//! * The unit is a power of two from [`MIN_UNIT`] to [`MAX_UNIT`] and at
//!   most the volume's chunk size, so a unit never spans two chunks.
//! * The counters only grow, and count a close's bytes once: see
//!   [`Op::CloseCounted`](super::Op::CloseCounted).

use super::store::{Kv, Txn, key};
use super::{
    FsResult, Inode, KEY_CHECK_LEN, Reply, VolumeCompression, VolumePolicy, fail, keys, namespace,
};

/// `cairn.meta.v1.Compression.COMPRESSION_NONE`.
pub const NONE: u8 = 0;
/// `cairn.meta.v1.Compression.COMPRESSION_LZ4`.
pub const LZ4: u8 = 1;
/// `cairn.meta.v1.Compression.COMPRESSION_ZSTD`.
pub const ZSTD: u8 = 2;

/// The unit of a compressed volume created with unit 0.
pub const DEFAULT_UNIT: u32 = 64 << 10;
/// The smallest compression unit.
pub const MIN_UNIT: u32 = 16 << 10;
/// The largest compression unit.
pub const MAX_UNIT: u32 = 1 << 20;

/// Returns the name of algorithm `algo` ("none", "lz4", "zstd"), or `None`
/// for a value this build does not know.
pub fn algo_name(algo: u8) -> Option<&'static str> {
    match algo {
        NONE => Some("none"),
        LZ4 => Some("lz4"),
        ZSTD => Some("zstd"),
        _ => None,
    }
}

/// Returns the compression volume `name` with chunk size `chunk_size` is
/// created with when asked for `algo` (a `cairn.meta.v1.Compression`
/// value, as sent or as logged) in units of `unit` bytes: `None` for an
/// uncompressed volume, else the algorithm and the effective unit (0 means
/// [`DEFAULT_UNIT`]). The rule of both the service and the state machine.
///
/// # Errors
/// A message for an `Invalid` answer, naming the volume: an unknown
/// algorithm, a unit without an algorithm, a unit that is not a power of
/// two from [`MIN_UNIT`] to [`MAX_UNIT`] or is larger than `chunk_size`.
pub fn settle(
    name: &str,
    algo: impl Into<i64>,
    unit: u32,
    chunk_size: u64,
) -> Result<Option<(u8, u32)>, String> {
    let algo = algo.into();
    let Some(algo) = u8::try_from(algo).ok().filter(|a| algo_name(*a).is_some()) else {
        return Err(format!(
            "volume {name}: unknown compression {algo} (known: 0 none, 1 lz4, 2 zstd)"
        ));
    };
    if algo == NONE {
        if unit != 0 {
            return Err(format!(
                "volume {name}: compression_unit needs a compression (lz4 or zstd)"
            ));
        }
        return Ok(None);
    }
    let unit = if unit == 0 { DEFAULT_UNIT } else { unit };
    if !unit.is_power_of_two() || !(MIN_UNIT..=MAX_UNIT).contains(&unit) {
        return Err(format!(
            "volume {name}: compression unit {unit} bytes is not a power of two from 16 KiB \
             (16384) to 1 MiB (1048576)"
        ));
    }
    if u64::from(unit) > chunk_size {
        return Err(format!(
            "volume {name}: compression unit {unit} bytes is larger than its chunk size \
             ({chunk_size} bytes)"
        ));
    }
    Ok(Some((algo, unit)))
}

/// Returns volume `id`'s compression (`None`: uncompressed, or no volume).
pub(crate) fn of<K: Kv + ?Sized>(t: &Txn<'_, K>, id: u64) -> FsResult<Option<VolumeCompression>> {
    if id == 0 {
        return Ok(None);
    }
    Ok(t.get::<VolumeCompression>(&key::volume_compression(id))?)
}

/// Creates volume `name` with `policy`, compressed with `algo` in units of
/// `unit` bytes (none for [`NONE`]) and encrypted with a first key of
/// check value `check` when given.
///
/// # Errors
/// `Invalid` for a bad policy or compression (see [`settle`]); those of
/// volume creation.
pub(crate) fn create_volume<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    name: &str,
    policy: &VolumePolicy,
    check: Option<[u8; KEY_CHECK_LEN]>,
    algo: u8,
    unit: u32,
    now: i64,
) -> FsResult<Reply> {
    namespace::validate_policy(policy)?;
    let compression = match settle(name, algo, unit, policy.chunk_size) {
        Ok(c) => c.map(|(algo, unit)| VolumeCompression::new(algo, unit)),
        Err(why) => fail!(Invalid, "{why}"),
    };
    let (volume, keys) = match check {
        Some(check) => match keys::create_volume(t, name, policy, check, now)? {
            Reply::EncryptedVolume { volume, keys } => (volume, Some(keys)),
            other => fail!(Internal, "volume creation answered {other:?}"),
        },
        None => {
            let policy = VolumePolicy {
                encrypted: false,
                ..policy.clone()
            };
            match namespace::create_volume(t, name, &policy, now)? {
                Reply::Volume(v) => (v, None),
                other => fail!(Internal, "volume creation answered {other:?}"),
            }
        }
    };
    if let Some(c) = &compression {
        t.put(key::volume_compression(volume.id), c);
    }
    Ok(Reply::VolumeWith {
        volume,
        keys,
        compression,
    })
}

/// Adds `logical` and `stored` bytes to the counters of the volume of file
/// `ino`; nothing when the inode or the volume's record is gone (the file
/// was removed, the volume is uncompressed).
pub(crate) fn count<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    logical: u64,
    stored: u64,
) -> FsResult<Reply> {
    let Some(i) = t.get::<Inode>(&key::inode(ino))? else {
        return Ok(Reply::Unit);
    };
    let Some(mut c) = of(t, i.volume)? else {
        return Ok(Reply::Unit);
    };
    c.logical = c.logical.saturating_add(logical);
    c.stored = c.stored.saturating_add(stored);
    t.put(key::volume_compression(i.volume), &c);
    Ok(Reply::Unit)
}

/// Forgets volume `id`'s compression (its root directory is gone).
pub(crate) fn forget<K: Kv + ?Sized>(t: &mut Txn<'_, K>, id: u64) {
    t.delete(key::volume_compression(id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_defaults_the_unit_and_refuses_naming_the_volume() {
        let chunk = 64 << 20;
        assert_eq!(settle("v", NONE, 0, chunk), Ok(None));
        assert_eq!(settle("v", LZ4, 0, chunk), Ok(Some((LZ4, DEFAULT_UNIT))));
        assert_eq!(settle("v", ZSTD, 1 << 20, chunk), Ok(Some((ZSTD, 1 << 20))));
        assert_eq!(
            settle("v", LZ4, 16 << 10, 64 << 10),
            Ok(Some((LZ4, 16 << 10)))
        );
        assert_eq!(
            settle("v", LZ4, 64 << 10, 64 << 10),
            Ok(Some((LZ4, 64 << 10)))
        );
        let refusals = [
            (3, 0, chunk, "unknown compression 3"),
            (255, 0, chunk, "unknown compression 255"),
            (
                NONE,
                64 << 10,
                chunk,
                "compression_unit needs a compression",
            ),
            (
                LZ4,
                3 << 10,
                chunk,
                "compression unit 3072 bytes is not a power of two",
            ),
            (
                LZ4,
                8 << 10,
                chunk,
                "compression unit 8192 bytes is not a power of two",
            ),
            (
                ZSTD,
                2 << 20,
                chunk,
                "2097152 bytes is not a power of two from 16 KiB",
            ),
            (LZ4, (64 << 10) + 1, chunk, "is not a power of two"),
            (
                LZ4,
                128 << 10,
                64 << 10,
                "is larger than its chunk size (65536 bytes)",
            ),
        ];
        for (algo, unit, chunk_size, want) in refusals {
            let e = settle("vol9", algo, unit, chunk_size).expect_err(want);
            assert!(e.starts_with("volume vol9: "), "{e}");
            assert!(e.contains(want), "{e}");
        }
        let e = settle("v", -1, 0, chunk).expect_err("negative");
        assert!(e.contains("unknown compression -1"), "{e}");
        assert_eq!(algo_name(LZ4), Some("lz4"));
        assert_eq!(algo_name(ZSTD), Some("zstd"));
        assert_eq!(algo_name(7), None);
    }
}
