//! Encrypted volumes' keys as meta knows them (DESIGN §7): per volume, the
//! key version new files are created under and a check value of each
//! version's key ([`VolumeKeys`], stored under `y` + volume id). Keys are
//! given to clients by users and never reach meta; a client compares its
//! key's check value with the one here to tell a wrong key from a right one.
//!
//! Invariants:
//! * A volume is encrypted exactly when it has a keys record. Volumes made
//!   before encryption existed have none and stay plain (some of them have
//!   `policy.encrypted` set over plain-text data).
//! * Every file of an encrypted volume has a [`SALT_LEN`]-byte salt and the
//!   key version that was current when it was created; every other file
//!   has an empty salt and version 0. The salt is drawn by the leader and
//!   carried in the log entry ([`Op::Create`](super::Op::Create)), never
//!   drawn while applying, so every replica stores the same one; only the
//!   apply step knows the parent's volume, so it decides whether to keep it.
//!   Link and rename keep the inode, so they keep its salt and version.
//! * Versions are 1, 2, ... without gaps, and no two versions share a check
//!   value: a rotation to the same key would protect nothing and leave two
//!   versions a client cannot tell apart.

use super::store::{Kv, Txn, key};
use super::{
    FsResult, KEY_CHECK_LEN, KeyCheck, Reply, SALT_LEN, VolumeKeys, VolumePolicy, fail, namespace,
};

/// Returns volume `id`'s keys (`None`: a plain volume, or no volume).
pub(crate) fn of<K: Kv + ?Sized>(t: &Txn<'_, K>, id: u64) -> FsResult<Option<VolumeKeys>> {
    if id == 0 {
        return Ok(None);
    }
    Ok(t.get::<VolumeKeys>(&key::volume_keys(id))?)
}

/// Returns the salt and key version of a new file in volume `volume`: the
/// leader's `salt` and the current key version in an encrypted volume, an
/// empty salt and 0 elsewhere.
///
/// # Errors
/// `Internal` when the volume is encrypted and `salt` is not [`SALT_LEN`]
/// bytes (a leader that did not draw one): such a file could not be
/// encrypted, and clients would store its contents as plain text.
pub(crate) fn for_new_file<K: Kv + ?Sized>(
    t: &Txn<'_, K>,
    volume: u64,
    salt: &[u8],
) -> FsResult<(Vec<u8>, u32)> {
    let Some(keys) = of(t, volume)? else {
        return Ok((Vec::new(), 0));
    };
    if salt.len() != SALT_LEN {
        fail!(
            Internal,
            "a new file of encrypted volume {volume} needs a {SALT_LEN}-byte salt from the \
             leader, not {} bytes",
            salt.len()
        );
    }
    Ok((salt.to_vec(), keys.current))
}

/// Creates encrypted volume `name` with `policy`; its key version 1 has
/// `check`.
pub(crate) fn create_volume<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    name: &str,
    policy: &VolumePolicy,
    check: [u8; KEY_CHECK_LEN],
    now: i64,
) -> FsResult<Reply> {
    let policy = VolumePolicy {
        encrypted: true,
        ..policy.clone()
    };
    let volume = match namespace::create_volume(t, name, &policy, now)? {
        Reply::Volume(v) => v,
        other => fail!(Internal, "volume creation answered {other:?}"),
    };
    let keys = VolumeKeys::first(check);
    t.put(key::volume_keys(volume.id), &keys);
    Ok(Reply::EncryptedVolume { volume, keys })
}

/// Adds key version current + 1, with `check`, to encrypted volume `name`.
///
/// # Errors
/// `NotFound` (no such volume); `Invalid` when the volume is not encrypted
/// or `check` is already one of its versions'.
pub(crate) fn rotate<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    name: &str,
    check: [u8; KEY_CHECK_LEN],
) -> FsResult<Reply> {
    let volume = namespace::volume_named(t, name)?;
    let Some(mut keys) = of(t, volume.id)? else {
        fail!(Invalid, "volume {name} is not encrypted");
    };
    if let Some(k) = keys.checks.iter().find(|k| k.check == check) {
        fail!(
            Invalid,
            "that key is already version {} of volume {name}; rotate to a new key",
            k.version
        );
    }
    let Some(version) = keys.current.checked_add(1) else {
        fail!(Invalid, "volume {name} has used every key version");
    };
    keys.checks.push(KeyCheck { version, check });
    keys.current = version;
    t.put(key::volume_keys(volume.id), &keys);
    Ok(Reply::EncryptedVolume { volume, keys })
}

/// Forgets volume `id`'s keys (its root directory is gone).
pub(crate) fn forget<K: Kv + ?Sized>(t: &mut Txn<'_, K>, id: u64) {
    t.delete(key::volume_keys(id));
}
