//! Client-side encryption of file contents (DESIGN §7): volume keys and
//! key files, the per-file keys derived from them, and the sealing of
//! 4 KiB blocks. Pure: no I/O except [`KeyRing::from_file`]; [`crate::file`]
//! seals and opens blocks, [`crate::client`] checks keys against meta.
//!
//! # Threat model
//! Stolen disks, curious chunkserver operators and observers of the
//! network learn nothing of file contents: chunkservers only ever store and
//! move ciphertext, the local SSD cache holds ciphertext, and the keys never
//! leave the clients. A malicious chunkserver cannot alter a block
//! undetected: every block carries an AES-GCM tag over its ciphertext and
//! its place (object and block index), so a flipped bit, a truncated block,
//! a block from elsewhere or a block sealed under another key fails with
//! [`CryptoError::Tag`]. What it *can* do, and what this design does not
//! prevent:
//! * serve an older sealed version of the same block (a rollback): nothing
//!   outside the chunkservers records which seal is the newest;
//! * claim a block is a hole, which reads as zeros (a hole has no seal);
//! * refuse service, or learn access patterns, block counts and timing.
//!
//! File names, sizes, the directory tree and all other metadata are not
//! encrypted.
//!
//! # Keys
//! * A volume key is 32 random bytes given by the user (a key file, an
//!   environment variable, a CSI secret) or drawn by `cairn volume create
//!   --encrypted`, under a version `1, 2, ...`. Rotation adds a version for
//!   new files; every file keeps the version recorded in its inode, so a
//!   client needs every version its files were written under. Version 0
//!   means "not encrypted" in meta and never names a key.
//! * Keys never reach meta. Meta stores, per version, a check value
//!   ([`VolumeKey::check_value`], HKDF-SHA256 with info `"cairn key check
//!   v1"`, 16 bytes): enough to tell the right key from a wrong one before
//!   any block is written under it, and no help in finding the key (it is
//!   a PRF output; the key has 256 bits).
//! * A file key is HKDF-SHA256(ikm = volume key, salt = the inode's random
//!   salt, info = `"cairn file key v1"`), an AES-256-GCM key. The distinct
//!   `info` strings keep the check value and file keys independent.
//! * Key bytes live in [`Zeroizing`] buffers, and a file key's expanded
//!   cipher state is wiped when the key is dropped ([`WipedKey`]); no
//!   `Debug` output and no error message prints key material.
//!
//! # Blocks
//! Each 4 KiB block is encrypted on its own under a fresh random 96-bit
//! nonce; the seal ([`SEAL_LEN`] bytes: nonce, then the 16-byte tag) is
//! stored by the chunkservers beside the block's CRC and returned with
//! reads. A block is sealed on its own so a 4 KiB random read needs
//! nothing else, and a new nonce per write means rewriting a block never
//! reuses one.
//!
//! Random nonces rather than counters: a counter would need state that
//! survives crashes and is shared by every client writing the file, which
//! meta would have to hand out. NIST SP 800-38D §8.3 allows random 96-bit
//! nonces for up to 2^32 encryptions under one key (collision chance below
//! 2^-32). Because every file has its own key, that is a bound *per file*:
//! 2^32 block writes, 16 TiB written to a single file, far beyond any file
//! this system holds. A nonce of all zeros is never drawn (it is drawn
//! again), so an all-zero seal always means "no seal" ([`is_no_seal`]).
//!
//! The associated data is the file's object id then the block's index in
//! the file, both u64 little-endian. It binds a block to its place: a
//! chunkserver that swaps two blocks, or moves a block to another offset or
//! another file, fails the tag. Anything that moves ciphertext to another
//! object or offset must open and re-seal it. The key version is not in
//! the associated data: another version is another key, which fails anyway.
//!
//! # Key files
//! Text, one key per line: `VERSION:HEX` with 64 hexadecimal digits (32
//! bytes), or a bare `HEX` meaning version 1. Blank lines and lines
//! starting with `#` are ignored; spaces around fields and CRLF line ends
//! are accepted. [`KeyRing::to_file_text`] writes this format. Errors name
//! the volume and the line number, never the key. A key file that other
//! users can access is read, with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use std::alloc::Layout;
use std::mem::ManuallyDrop;
use std::sync::atomic::{Ordering, compiler_fence};

use hkdf::Hkdf;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Bytes of a block's seal: the 12-byte nonce, then the 16-byte GCM tag.
pub const SEAL_LEN: usize = 28;
/// A block's seal (nonce then tag); all zeros means "no seal".
pub type Seal = [u8; SEAL_LEN];
/// Bytes of a volume key.
pub const KEY_LEN: usize = 32;
/// Bytes of a key's check value.
pub const CHECK_LEN: usize = 16;

const NONCE_LEN: usize = 12;
const FILE_KEY_INFO: &[u8] = b"cairn file key v1";
const CHECK_INFO: &[u8] = b"cairn key check v1";
/// A key file larger than this is not a key file (and reading, say,
/// `/dev/zero` by mistake must end).
const MAX_KEY_FILE: u64 = 1 << 20;

/// Returns whether `seal` is the all-zero "no seal" (a hole, or a block
/// never written under encryption).
pub fn is_no_seal(seal: &Seal) -> bool {
    seal.iter().all(|b| *b == 0)
}

/// Why a key could not be read or found. Messages name the volume, and
/// the file and line where there is one; never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("volume '{volume}': cannot read key file {}: {source}", path.display())]
    Io {
        /// The volume.
        volume: String,
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is too large to be one.
    #[error("volume '{volume}': {} is larger than {MAX_KEY_FILE} bytes, not a key file", path.display())]
    TooLarge {
        /// The volume.
        volume: String,
        /// The file.
        path: PathBuf,
    },
    /// A line of the key file is malformed.
    #[error("volume '{volume}': key file line {line}: {reason}")]
    Parse {
        /// The volume.
        volume: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the line's text).
        reason: &'static str,
    },
    /// A line gives key version 0, which means "not encrypted".
    #[error(
        "volume '{volume}': key file line {line}: key version 0 is not allowed (versions start at 1)"
    )]
    Version0 {
        /// The volume.
        volume: String,
        /// 1-based line number.
        line: usize,
    },
    /// Two lines give the same version.
    #[error("volume '{volume}': key file line {line}: key version {version} appears a second time")]
    Duplicate {
        /// The volume.
        volume: String,
        /// The version.
        version: u32,
        /// 1-based line number of the second occurrence.
        line: usize,
    },
    /// The key file holds no key.
    #[error("volume '{volume}': the key file holds no key")]
    Empty {
        /// The volume.
        volume: String,
    },
    /// A version the key ring does not hold.
    #[error("volume '{volume}': key version {version} was not given (the key file lacks it)")]
    MissingVersion {
        /// The volume.
        volume: String,
        /// The version.
        version: u32,
    },
}

/// A block that failed to decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The tag did not verify.
    #[error(
        "block {block} of object {object} failed authentication: the data was altered or the key is wrong"
    )]
    Tag {
        /// The file's object id.
        object: u64,
        /// The block's index in the file.
        block: u64,
    },
}

/// A volume key: zeroized on drop, never shown by `Debug`.
#[derive(Clone)]
pub struct VolumeKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VolumeKey(..)")
    }
}

/// HKDF-SHA256 extract-and-expand into `out`.
fn hkdf(ikm: &[u8], salt: Option<&[u8]>, info: &[u8], out: &mut [u8]) {
    // `expand` only fails for outputs over 255 hash lengths (8160 bytes);
    // ours are 16 and 32 bytes.
    let _ = Hkdf::<Sha256>::new(salt, ikm).expand(info, out);
}

impl VolumeKey {
    /// Returns the key of these bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(b))
    }

    /// Returns the key written as 64 hexadecimal digits (either case,
    /// surrounding whitespace ignored), or `None` when `hex` is not that.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let b = hex.trim().as_bytes();
        if b.len() != KEY_LEN * 2 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        for (out, pair) in k.iter_mut().zip(b.chunks_exact(2)) {
            *out = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(k))
    }

    /// Returns a new key drawn from the operating system's random source.
    ///
    /// # Panics
    /// If the operating system cannot supply random bytes.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&mut k[..]);
        Self(k)
    }

    /// Returns the key as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(KEY_LEN * 2));
        for b in self.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Returns the value meta stores for this key's version:
    /// HKDF-SHA256(ikm = key, no salt, info = `"cairn key check v1"`),
    /// 16 bytes. It tells a wrong key from the right one without revealing
    /// the key.
    pub fn check_value(&self) -> [u8; CHECK_LEN] {
        let mut out = [0u8; CHECK_LEN];
        hkdf(&self.0[..], None, CHECK_INFO, &mut out);
        out
    }

    /// Returns the AES-256-GCM key of the file whose inode has `salt`:
    /// HKDF-SHA256(ikm = key, salt, info = `"cairn file key v1"`).
    pub fn file_key(&self, salt: &[u8]) -> FileKey {
        let k = self.file_key_bytes(salt);
        let Ok(key) = UnboundKey::new(&AES_256_GCM, &k[..]) else {
            unreachable!("AES-256-GCM takes any {KEY_LEN}-byte key");
        };
        FileKey {
            cipher: WipedKey(ManuallyDrop::new(Box::new(LessSafeKey::new(key)))),
        }
    }

    fn file_key_bytes(&self, salt: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        hkdf(&self.0[..], Some(salt), FILE_KEY_INFO, &mut k[..]);
        k
    }
}

/// Every key version of one volume that the user supplied. Never empty,
/// and never holds version 0 when read from a key file.
#[derive(Clone)]
pub struct KeyRing {
    volume: String,
    /// Invariant: not empty (every constructor inserts a key, nothing
    /// removes one).
    keys: BTreeMap<u32, VolumeKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("volume", &self.volume)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Parses a key file's text (format in the module docs).
    ///
    /// # Errors
    /// [`KeyError::Parse`] (a malformed line), [`KeyError::Version0`],
    /// [`KeyError::Duplicate`], [`KeyError::Empty`] (no key at all). Each
    /// names `volume` and, where there is one, the line.
    pub fn parse(volume: &str, text: &str) -> Result<KeyRing, KeyError> {
        let mut keys = BTreeMap::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason| KeyError::Parse {
                volume: volume.to_string(),
                line: line_no,
                reason,
            };
            let (version, hex) = match line.split_once(':') {
                Some((v, h)) => {
                    let v = v.trim();
                    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(bad("the version before ':' must be a decimal number"));
                    }
                    let v = v
                        .parse::<u32>()
                        .map_err(|_| bad("the version before ':' is too large"))?;
                    (v, h)
                }
                None => (1, line),
            };
            if version == 0 {
                return Err(KeyError::Version0 {
                    volume: volume.to_string(),
                    line: line_no,
                });
            }
            let key = VolumeKey::from_hex(hex).ok_or_else(|| {
                bad("expected 64 hexadecimal digits (a 32-byte key), as VERSION:HEX or HEX")
            })?;
            if keys.insert(version, key).is_some() {
                return Err(KeyError::Duplicate {
                    volume: volume.to_string(),
                    version,
                    line: line_no,
                });
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                volume: volume.to_string(),
            });
        }
        Ok(KeyRing {
            volume: volume.to_string(),
            keys,
        })
    }

    /// Reads and parses the key file at `path`. Logs a warning (and reads
    /// it anyway) when users other than its owner may access it.
    ///
    /// # Errors
    /// [`KeyError::Io`] (it cannot be read, or is not UTF-8),
    /// [`KeyError::TooLarge`], and those of [`Self::parse`].
    pub fn from_file(volume: &str, path: &Path) -> Result<KeyRing, KeyError> {
        let io = |source| KeyError::Io {
            volume: volume.to_string(),
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    volume,
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "other users can access this key file; chmod 600 it"
                );
            }
        }
        // Sized up front so the buffer holding keys is not reallocated,
        // which would leave unzeroized copies behind.
        let cap = usize::try_from(meta.len().min(MAX_KEY_FILE)).unwrap_or(0) + 1;
        let mut text = Zeroizing::new(String::with_capacity(cap));
        file.take(MAX_KEY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(KeyError::TooLarge {
                volume: volume.to_string(),
                path: path.to_path_buf(),
            });
        }
        Self::parse(volume, &text)
    }

    /// Returns a ring of one key (bytes from a caller, e.g. a CSI secret).
    /// `version` should not be 0, which meta uses for plain files: no file
    /// asks for it, and [`Self::to_file_text`] would write a line that
    /// [`Self::parse`] refuses.
    pub fn single(volume: &str, version: u32, key: VolumeKey) -> KeyRing {
        KeyRing {
            volume: volume.to_string(),
            keys: BTreeMap::from([(version, key)]),
        }
    }

    /// Returns the volume's name.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// Returns the key of `version`.
    ///
    /// # Errors
    /// [`KeyError::MissingVersion`] (naming the volume and the version).
    pub fn get(&self, version: u32) -> Result<&VolumeKey, KeyError> {
        self.keys
            .get(&version)
            .ok_or_else(|| KeyError::MissingVersion {
                volume: self.volume.clone(),
                version,
            })
    }

    /// Returns the highest version and its key.
    pub fn newest(&self) -> (u32, &VolumeKey) {
        match self.keys.iter().next_back() {
            Some((v, k)) => (*v, k),
            // Every constructor inserts a key and nothing removes one.
            None => unreachable!("a KeyRing always holds a key"),
        }
    }

    /// Returns the versions held, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// Adds `key` as `version`, replacing a key already there. `version`
    /// should not be 0 (see [`Self::single`]).
    pub fn insert(&mut self, version: u32, key: VolumeKey) {
        self.keys.insert(version, key);
    }

    /// Returns the ring as key-file text (`VERSION:HEX` lines, oldest
    /// first, after a comment naming the volume), which [`Self::parse`]
    /// reads back.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        // `{:?}` quotes the name, so no character of it can end the
        // comment line.
        let mut s = Zeroizing::new(format!(
            "# Cairn key file of volume {:?}: VERSION:KEY (64 hex digits) per line.\n\
             # Keep it secret, and keep every version: a file written under a\n\
             # version cannot be read without it.\n",
            self.volume
        ));
        s.reserve(self.keys.len() * (KEY_LEN * 2 + 12));
        for (v, k) in &self.keys {
            s.push_str(&v.to_string());
            s.push(':');
            s.push_str(&k.to_hex());
            s.push('\n');
        }
        s
    }
}

/// The AES-256-GCM key of one file. `Debug` never shows it.
///
/// # Why ring
/// The cipher is ring's AES-256-GCM (BoringSSL's assembly: AES-NI or VAES
/// stitched with CLMUL GHASH, chosen at run time), not RustCrypto's
/// `aes-gcm`, which earlier releases used. A 4 KiB block seals at 8.1 GiB/s
/// with ring against 2.7 GiB/s with `aes-gcm` on our EPYC machines, and an
/// encrypted sequential read was CPU-bound on the cipher (0.39 CPU-s per
/// GiB on top of the plain path's 0.25, on 2 cores shared with the
/// chunkservers). The format is the same standard AES-256-GCM (96-bit
/// nonce, 128-bit tag, the same associated data), so blocks written by
/// either open with the other; a test holds both to that. HKDF and SHA-256
/// stay RustCrypto's.
#[derive(Clone)]
pub struct FileKey {
    cipher: WipedKey,
}

/// ring's expanded AES-GCM key, boxed so it lives at one address, and
/// overwritten with zeros when dropped (ring does not wipe its keys).
/// Copies made while it was built on the stack are not wiped; nor are
/// RustCrypto's.
struct WipedKey(ManuallyDrop<Box<LessSafeKey>>);

// `WipedKey::drop` frees the key without running its destructor: that is
// only sound while it has none (no `Drop`, nothing owned on the heap). A
// ring release that changes this fails the build here.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

impl Clone for WipedKey {
    fn clone(&self) -> Self {
        Self(ManuallyDrop::new(Box::new((**self.0).clone())))
    }
}

impl std::ops::Deref for WipedKey {
    type Target = LessSafeKey;

    fn deref(&self) -> &LessSafeKey {
        &self.0
    }
}

impl Drop for WipedKey {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `self.0` is taken once, here, and never used again.
        let raw = Box::into_raw(unsafe { ManuallyDrop::take(&mut self.0) });
        let layout = Layout::new::<LessSafeKey>();
        // SAFETY: `raw` is the only pointer to a live `LessSafeKey` that a
        // `Box` allocated with `layout` from the global allocator. Its
        // bytes are overwritten and the memory freed without running its
        // destructor, which is sound because it has none to run: it holds
        // round keys and GHASH tables in arrays and a `&'static Algorithm`,
        // no heap memory and no `Drop` (ring 0.17; asserted at compile
        // time above). The zeroed bytes are never read as a `LessSafeKey`.
        unsafe {
            let bytes = raw.cast::<u8>();
            for i in 0..layout.size() {
                std::ptr::write_volatile(bytes.add(i), 0);
            }
            compiler_fence(Ordering::SeqCst);
            std::alloc::dealloc(bytes, layout);
        }
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// Fresh nonces for the blocks of one write, drawn from the operating
/// system's random source in one call per [`NONCE_BATCH`] nonces instead
/// of one per block (131,072 `getrandom` system calls per 512 MiB sealed).
/// Every nonce comes from random bytes used once; a `Nonces` lives for one
/// write on one thread and is never kept, shared or reused (no state
/// survives a fork).
pub struct Nonces {
    buf: Vec<u8>,
    used: usize,
    /// Nonces still to be drawn by the next refill (the caller's count).
    wanted: usize,
}

/// Most nonces drawn from the operating system at once.
const NONCE_BATCH: usize = 256;

impl Nonces {
    /// Nonces for about `blocks` blocks (more are drawn if asked for).
    pub fn new(blocks: usize) -> Self {
        Self {
            buf: Vec::new(),
            used: 0,
            wanted: blocks.max(1),
        }
    }

    /// Returns a random nonce that is not all zeros, its top bit set to
    /// `mark` when given.
    fn next(&mut self, mark: Option<bool>) -> [u8; NONCE_LEN] {
        loop {
            if self.used + NONCE_LEN > self.buf.len() {
                let n = self.wanted.clamp(1, NONCE_BATCH);
                self.wanted = self.wanted.saturating_sub(n);
                self.buf.resize(n * NONCE_LEN, 0);
                fill_random(&mut self.buf);
                self.used = 0;
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&self.buf[self.used..self.used + NONCE_LEN]);
            self.used += NONCE_LEN;
            match mark {
                Some(true) => nonce[0] |= 0x80,
                Some(false) => nonce[0] &= 0x7f,
                None => {}
            }
            if nonce.iter().any(|b| *b != 0) {
                return nonce;
            }
        }
    }
}

/// Fills `buf` from the operating system's random source.
///
/// # Panics
/// If the operating system cannot supply random bytes: a key or nonce must
/// never be predictable, so there is no fallback.
fn fill_random(buf: &mut [u8]) {
    if let Err(e) = OsRng.try_fill_bytes(buf) {
        panic!("the operating system's random source failed: {e}");
    }
}

/// The associated data of block `block` of object `object`.
fn aad(object: u64, block: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&object.to_le_bytes());
    a[8..].copy_from_slice(&block.to_le_bytes());
    a
}

impl FileKey {
    /// Encrypts `data` (one block, at most 4 KiB by convention) in place
    /// under a fresh random nonce, binding it to block index `block` of
    /// object `object`; returns the seal (nonce then tag), never all zeros.
    ///
    /// # Panics
    /// If the operating system cannot supply random bytes, or if `data`
    /// is over 64 GiB (GCM's limit).
    pub fn seal(&self, object: u64, block: u64, data: &mut [u8]) -> Seal {
        self.seal_with(&mut Nonces::new(1), object, block, data, None)
    }

    /// [`Self::seal`] with the nonce taken from `nonces` (what a write of
    /// many blocks uses) and, with `mark`, its top bit set (`Some(true)`)
    /// or clear: the mark of a compressed volume's packed units
    /// ([`crate::compress`]), authenticated with the block (altering it
    /// fails the tag). The other 95 bits stay random.
    ///
    /// # Panics
    /// As [`Self::seal`].
    pub fn seal_with(
        &self,
        nonces: &mut Nonces,
        object: u64,
        block: u64,
        data: &mut [u8],
        mark: Option<bool>,
    ) -> Seal {
        self.seal_with_nonce(nonces.next(mark), object, block, data)
    }

    /// [`Self::seal_with`] reading the plain text from `input` and writing
    /// the cipher text to `out` (of the same length), in one pass: what a
    /// write uses for the blocks it covers whole, instead of copying them
    /// into the buffer it sends and sealing them there.
    ///
    /// # Panics
    /// As [`Self::seal`], and when the two lengths differ.
    pub fn seal_into(
        &self,
        nonces: &mut Nonces,
        (object, block): (u64, u64),
        input: &[u8],
        out: &mut [u8],
    ) -> Seal {
        assert_eq!(
            input.len(),
            out.len(),
            "sealing {} bytes into {}",
            input.len(),
            out.len()
        );
        // ring seals in place, so the plain text is copied first (for
        // 4 KiB, about a tenth of the seal's own time).
        out.copy_from_slice(input);
        self.seal_with_nonce(nonces.next(None), object, block, out)
    }

    fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        object: u64,
        block: u64,
        data: &mut [u8],
    ) -> Seal {
        let len = data.len();
        let tag = match self.cipher.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(object, block)),
            data,
        ) {
            Ok(tag) => tag,
            // A silent fallback would store plain text: refuse loudly.
            Err(_) => panic!("cannot seal {len} bytes: over GCM's 64 GiB limit"),
        };
        let mut seal = [0u8; SEAL_LEN];
        seal[..NONCE_LEN].copy_from_slice(&nonce);
        seal[NONCE_LEN..].copy_from_slice(tag.as_ref());
        seal
    }

    /// Decrypts `data` in place after checking its tag against `seal` and
    /// its place (`object`, `block`).
    ///
    /// # Errors
    /// [`CryptoError::Tag`] when the tag does not verify (altered
    /// ciphertext or seal, the wrong key, the wrong place, an all-zero
    /// seal); `data` then holds zeros, so no unauthenticated plaintext is
    /// ever exposed.
    pub fn open(
        &self,
        object: u64,
        block: u64,
        data: &mut [u8],
        seal: &Seal,
    ) -> Result<(), CryptoError> {
        let tag_err = || CryptoError::Tag { object, block };
        let (nonce, tag) = seal.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| tag_err())?;
        let tag = Tag::try_from(tag).map_err(|_| tag_err())?;
        self.cipher
            .open_in_place_separate_tag(nonce, Aad::from(aad(object, block)), tag, data, 0..)
            .map(|_| ())
            .map_err(|_| tag_err())
    }

    /// [`Self::open`] reading the cipher text from `input` and writing the
    /// plain text to `out` (of the same length) in one pass: what a read
    /// uses, since the bytes it received are shared with their frame.
    /// `out` holds zeros when the tag does not verify.
    ///
    /// # Errors
    /// As [`Self::open`]; [`CryptoError::Tag`] also when the lengths
    /// differ.
    pub fn open_into(
        &self,
        (object, block): (u64, u64),
        input: &[u8],
        out: &mut [u8],
        seal: &Seal,
    ) -> Result<(), CryptoError> {
        if input.len() != out.len() {
            return Err(CryptoError::Tag { object, block });
        }
        // ring opens in place: copy, then open (zeroed on failure).
        out.copy_from_slice(input);
        self.open(object, block, out, seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> VolumeKey {
        VolumeKey::from_bytes([b; KEY_LEN])
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7) as u8).collect()
    }

    #[test]
    fn marked_seals_carry_their_mark_and_open() {
        let fk = key(1).file_key(b"salt-of-file-one");
        for packed in [true, false] {
            for _ in 0..64 {
                let plain = pattern(4096);
                let mut c = plain.clone();
                let seal = fk.seal_with(&mut Nonces::new(1), 42, 7, &mut c, Some(packed));
                assert_eq!(crate::compress::is_packed(&seal), packed);
                fk.open(42, 7, &mut c, &seal).unwrap();
                assert_eq!(c, plain);
            }
        }
        // Flipping the mark fails the tag.
        let mut c = pattern(4096);
        let mut seal = fk.seal_with(&mut Nonces::new(1), 42, 7, &mut c, Some(true));
        seal[0] ^= 0x80;
        assert!(fk.open(42, 7, &mut c, &seal).is_err());
    }

    #[test]
    fn blocks_round_trip() {
        let fk = key(1).file_key(b"salt-of-file-one");
        for len in [4096usize, 1000, 1, 0] {
            let plain = pattern(len);
            let mut c = plain.clone();
            let seal = fk.seal(42, 7, &mut c);
            assert!(!is_no_seal(&seal));
            if len > 0 {
                assert_ne!(c, plain, "ciphertext differs from the plaintext");
            }
            fk.open(42, 7, &mut c, &seal).unwrap();
            assert_eq!(c, plain);
        }
    }

    /// Batched nonces are fresh, never zero, carry the asked mark, and a
    /// write of more blocks than its batch still gets them.
    #[test]
    fn batched_nonces_are_fresh_and_marked() {
        let mut nonces = Nonces::new(3);
        let mut seen = std::collections::HashSet::new();
        for i in 0..600 {
            let mark = [None, Some(true), Some(false)][i % 3];
            let n = nonces.next(mark);
            assert!(n.iter().any(|b| *b != 0));
            match mark {
                Some(true) => assert_eq!(n[0] & 0x80, 0x80),
                Some(false) => assert_eq!(n[0] & 0x80, 0),
                None => {}
            }
            assert!(seen.insert(n), "nonce {i} repeated");
        }
        let fk = key(1).file_key(b"salt");
        let mut nonces = Nonces::new(2);
        let mut a = *b"same";
        let mut b = *b"same";
        let sa = fk.seal_with(&mut nonces, 1, 0, &mut a, None);
        let sb = fk.seal_with(&mut nonces, 1, 0, &mut b, None);
        assert_ne!(sa, sb);
        assert_ne!(a, b);
        fk.open(1, 0, &mut a, &sa).unwrap();
        assert_eq!(&a, b"same");
    }

    #[test]
    fn sealing_into_another_buffer_opens_like_sealing_in_place() {
        let fk = key(1).file_key(b"salt-of-file-one");
        let plain: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut out = vec![0u8; 4096];
        let seal = fk.seal_into(&mut Nonces::new(1), (42, 7), &plain, &mut out);
        assert_ne!(out, plain, "sealed into the output buffer");
        let mut in_place = plain.clone();
        let other = fk.seal(42, 7, &mut in_place);
        assert_ne!(seal, other, "each seal draws its own nonce");
        let mut back = vec![0u8; 4096];
        fk.open_into((42, 7), &out, &mut back, &seal).unwrap();
        assert_eq!(back, plain);
        // A flipped byte fails the tag and leaves zeros, not plain text.
        out[100] ^= 1;
        let mut zeroed = vec![9u8; 4096];
        assert!(fk.open_into((42, 7), &out, &mut zeroed, &seal).is_err());
        assert!(zeroed.iter().all(|b| *b == 0));
        out[100] ^= 1;
        fk.open(42, 7, &mut out, &seal).unwrap();
        assert_eq!(out, plain);
        // Bound to its place like any seal.
        let mut again = vec![0u8; 4096];
        let seal = fk.seal_into(&mut Nonces::new(1), (42, 7), &plain, &mut again);
        assert!(fk.open(42, 8, &mut again, &seal).is_err());
    }

    /// Blocks sealed by releases before ring (RustCrypto's `aes-gcm`, the
    /// same key derivation and associated data) open, and blocks sealed now
    /// open with `aes-gcm`: the stored format did not change.
    #[test]
    fn blocks_sealed_by_rustcrypto_aes_gcm_open_and_the_other_way() {
        use aes_gcm::aead::{AeadInOut as _, KeyInit as _};
        let vk = key(3);
        let salt = b"salt-of-an-old-file";
        let old = aes_gcm::Aes256Gcm::new((&*vk.file_key_bytes(salt)).into());
        let fk = vk.file_key(salt);
        let plain = pattern(4096);

        let nonce = [0x42u8; NONCE_LEN];
        let mut c = plain.clone();
        let tag = old
            .encrypt_inout_detached(&nonce.into(), &aad(9, 5), c.as_mut_slice().into())
            .unwrap();
        let mut seal = [0u8; SEAL_LEN];
        seal[..NONCE_LEN].copy_from_slice(&nonce);
        seal[NONCE_LEN..].copy_from_slice(&tag);
        let mut back = vec![0u8; 4096];
        fk.open_into((9, 5), &c, &mut back, &seal).unwrap();
        assert_eq!(back, plain, "an old block opens with ring");

        let mut c = plain.clone();
        let seal = fk.seal(9, 5, &mut c);
        let nonce = aes_gcm::Nonce::try_from(&seal[..NONCE_LEN]).unwrap();
        let tag = aes_gcm::Tag::try_from(&seal[NONCE_LEN..]).unwrap();
        old.decrypt_inout_detached(&nonce, &aad(9, 5), c.as_mut_slice().into(), &tag)
            .unwrap();
        assert_eq!(c, plain, "a new block opens with aes-gcm");
    }

    #[test]
    fn a_clone_outlives_the_key_it_came_from() {
        let fk = key(4).file_key(b"salt");
        let copy = fk.clone();
        drop(fk);
        let mut c = pattern(4096);
        let seal = copy.seal(1, 2, &mut c);
        copy.open(1, 2, &mut c, &seal).unwrap();
        assert_eq!(c, pattern(4096), "a clone outlives the key it came from");
    }

    #[test]
    fn seals_use_fresh_nonces() {
        let fk = key(1).file_key(b"salt");
        let (mut a, mut b) = (pattern(4096), pattern(4096));
        let (sa, sb) = (fk.seal(1, 0, &mut a), fk.seal(1, 0, &mut b));
        assert_ne!(sa[..NONCE_LEN], sb[..NONCE_LEN]);
        assert_ne!(a, b, "same plaintext, same place, different ciphertext");
    }

    #[test]
    fn every_alteration_fails_and_exposes_no_plain_text() {
        let fk = key(1).file_key(b"salt-of-file-one");
        let mut c = pattern(4096);
        let seal = fk.seal(42, 7, &mut c);
        let tag_err = Err(CryptoError::Tag {
            object: 42,
            block: 7,
        });

        let mut flipped = c.clone();
        flipped[2048] ^= 1;
        assert_eq!(fk.open(42, 7, &mut flipped, &seal), tag_err);
        assert!(
            flipped.iter().all(|b| *b == 0),
            "a failed open leaves zeros, never unauthenticated plain text"
        );

        for i in [0, NONCE_LEN, SEAL_LEN - 1] {
            let mut bad = seal;
            bad[i] ^= 0x80;
            assert_eq!(
                fk.open(42, 7, &mut c.clone(), &bad),
                tag_err,
                "seal byte {i}"
            );
        }
        assert_eq!(fk.open(42, 7, &mut c.clone(), &[0; SEAL_LEN]), tag_err);
        assert_eq!(
            fk.open(42, 7, &mut c[..4095].to_vec(), &seal),
            tag_err,
            "truncated"
        );
        assert!(
            fk.open(42, 8, &mut c.clone(), &seal).is_err(),
            "another block"
        );
        assert!(
            fk.open(43, 7, &mut c.clone(), &seal).is_err(),
            "another object"
        );
        let wrong_key = key(2).file_key(b"salt-of-file-one");
        assert!(
            wrong_key.open(42, 7, &mut c.clone(), &seal).is_err(),
            "wrong key"
        );
        let wrong_salt = key(1).file_key(b"salt-of-file-two");
        assert!(
            wrong_salt.open(42, 7, &mut c.clone(), &seal).is_err(),
            "other file"
        );

        let e = fk
            .open(42, 8, &mut c.clone(), &seal)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("block 8 of object 42") && e.contains("key is wrong"),
            "{e}"
        );
    }

    #[test]
    fn only_all_zero_seals_are_no_seals() {
        assert!(is_no_seal(&[0; SEAL_LEN]));
        let mut s = [0; SEAL_LEN];
        s[SEAL_LEN - 1] = 1;
        assert!(!is_no_seal(&s));
    }

    /// Known answers computed independently with Python: RFC 5869
    /// HKDF-SHA256 written with `hmac` + `hashlib` (no salt = 32 zero
    /// bytes), AES-256-GCM from the `cryptography` package. They pin the
    /// on-disk format: a change here makes existing files unreadable.
    #[test]
    fn known_answers() {
        assert_eq!(
            key(0).check_value(),
            [
                0x7a, 0x91, 0xea, 0x92, 0xa5, 0xff, 0x90, 0xd2, 0xfc, 0x9d, 0x03, 0x2c, 0x4b, 0x7e,
                0x1f, 0xee
            ]
        );
        assert_eq!(
            key(1).check_value(),
            [
                0xd1, 0xd6, 0xb4, 0xe8, 0xfe, 0x5b, 0xde, 0xa9, 0x06, 0x1f, 0x0e, 0x39, 0x68, 0x78,
                0xf9, 0x69
            ]
        );

        let salt: Vec<u8> = (0..16).collect();
        let fk_bytes = key(1).file_key_bytes(&salt);
        assert_eq!(
            VolumeKey::from_bytes(*fk_bytes).to_hex().as_str(),
            "10ddd78b4c681ecc74cbf11112487fa2f68cdd3fe1131996e3239f875f3485c6"
        );

        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| i as u8 + 1);
        let mut data = pattern(64);
        let seal = key(1)
            .file_key(&salt)
            .seal_with_nonce(nonce, 42, 7, &mut data);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&data),
            "f727687ad6f5f90ddc050782249c7c54bbbbd206f6ad5aa3d39af274097d43af\
             0478ade54b8b4764b2e21dadc4cc8cd363266d2aacc4faeb680ef16762a1231e"
        );
        assert_eq!(seal[..NONCE_LEN], nonce);
        assert_eq!(hex(&seal[NONCE_LEN..]), "e24d42957754843a3b8fd3e6f1ecbb47");
    }

    #[test]
    fn check_values_differ_per_key_and_are_stable() {
        assert_ne!(key(1).check_value(), key(2).check_value());
        assert_eq!(key(1).check_value(), key(1).clone().check_value());
        assert_ne!(
            VolumeKey::generate().check_value(),
            VolumeKey::generate().check_value()
        );
    }

    #[test]
    fn key_files_parse() {
        let hex1 = "ab".repeat(32);
        let hex2 = "CD".repeat(32);
        let text = format!("\u{feff}# comment\n\n  {hex1}  \r\n 2 : {hex2}\n# 3:{hex1}\n");
        let ring = KeyRing::parse("sec", &text).unwrap();
        assert_eq!(ring.volume(), "sec");
        assert_eq!(ring.versions().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(ring.newest().0, 2);
        assert_eq!(ring.get(1).unwrap().to_hex().as_str(), hex1);
        assert_eq!(ring.get(2).unwrap().to_hex().as_str(), hex2.to_lowercase());

        let e = ring.get(3).unwrap_err();
        assert!(matches!(e, KeyError::MissingVersion { version: 3, .. }));
        let e = e.to_string();
        assert!(e.contains("'sec'") && e.contains("version 3"), "{e}");
        assert!(ring.get(0).is_err());

        let only = KeyRing::parse("v", &format!("7:{hex1}")).unwrap();
        assert_eq!(only.versions().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn file_text_round_trips() {
        let mut ring = KeyRing::single("we\nird", 1, VolumeKey::generate());
        ring.insert(2, VolumeKey::generate());
        ring.insert(10, key(9));
        let text = ring.to_file_text();
        let back = KeyRing::parse("we\nird", &text).unwrap();
        assert_eq!(back.versions().collect::<Vec<_>>(), [1, 2, 10]);
        for v in [1, 2, 10] {
            assert_eq!(
                back.get(v).unwrap().to_hex().as_str(),
                ring.get(v).unwrap().to_hex().as_str()
            );
        }
        assert_eq!(back.newest().0, 10);
    }

    #[test]
    fn key_file_errors_name_volume_and_line_but_not_the_key() {
        let hex1 = "ab".repeat(32);
        let hex2 = "cd".repeat(32);
        let cases = [
            (format!("{}\n", &hex1[..62]), "line 1"),
            (format!("{hex1}00\n"), "line 1"),
            (format!("# c\n\n1:{}zz\n", &hex1[..62]), "line 3"),
            (format!("x:{hex1}\n"), "line 1"),
            (format!("-1:{hex1}\n"), "line 1"),
            (format!("99999999999:{hex1}\n"), "line 1"),
            (format!("1:2:{hex1}\n"), "line 1"),
            (format!("{hex2}\n0:{hex1}\n"), "line 2: key version 0"),
            (
                format!("{hex1}\n1:{hex2}\n"),
                "line 2: key version 1 appears",
            ),
            ("# nothing\n\n".to_string(), "holds no key"),
            (String::new(), "holds no key"),
        ];
        for (text, want) in cases {
            let e = KeyRing::parse("vol-x", &text).unwrap_err().to_string();
            assert!(e.contains("volume 'vol-x'") && e.contains(want), "{e}");
            assert!(!e.contains("abab") && !e.contains("cdcd"), "{e}");
        }
    }

    #[test]
    fn key_files_are_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sec.key");
        let ring = KeyRing::single("sec", 1, key(5));
        std::fs::write(&path, ring.to_file_text().as_bytes()).unwrap();
        let back = KeyRing::from_file("sec", &path).unwrap();
        assert_eq!(back.get(1).unwrap().check_value(), key(5).check_value());

        let missing = dir.path().join("none.key");
        let e = KeyRing::from_file("v", &missing).unwrap_err();
        assert!(matches!(e, KeyError::Io { .. }));
        let e = e.to_string();
        assert!(e.contains("'v'") && e.contains("none.key"), "{e}");

        let big = dir.path().join("big.key");
        std::fs::write(&big, vec![b'#'; MAX_KEY_FILE as usize + 1]).unwrap();
        let e = KeyRing::from_file("v", &big).unwrap_err();
        assert!(matches!(e, KeyError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn hex_keys() {
        let k = VolumeKey::from_hex(&format!(" {} ", "0F".repeat(32))).unwrap();
        assert_eq!(k.to_hex().as_str(), "0f".repeat(32));
        assert!(VolumeKey::from_hex(&"0f".repeat(31)).is_none());
        assert!(VolumeKey::from_hex(&format!("{}0g", "0f".repeat(31))).is_none());
        // A multi-byte character must not be split into "digits".
        assert!(VolumeKey::from_hex(&format!("{}é", "0f".repeat(31))).is_none());
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let k = key(0xAB);
        let mut ring = KeyRing::single("sec", 1, k.clone());
        ring.insert(2, key(0xAB));
        let fk = k.file_key(b"salt");
        for s in [format!("{k:?}"), format!("{ring:?}"), format!("{fk:?}")] {
            assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        }
        assert!(format!("{ring:?}").contains("sec"));
    }
}
