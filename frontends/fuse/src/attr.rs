//! Conversions between Cairn's metadata and the kernel's view: attributes,
//! inode numbers, times and error numbers. Pure functions, unit-tested.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::meta::{Attr, FileType as Kind};
use cairn_proto::{CairnStatus, ErrorCode};
use fuser::{Errno, FileAttr, FileType, INodeNo};

/// `st_blksize` reported for every inode. Tools size their buffers by it
/// (`cp`, Python's buffered I/O): 128 KiB keeps sequential copies to a few
/// kernel requests per MiB without making a buffered 4 KiB random read
/// fetch a whole chunk piece (1 MiB) as a larger value would.
pub const BLKSIZE: u32 = 128 * 1024;

/// Maps inode numbers between Cairn and the kernel. The kernel's root is
/// always 1; the mount's root (the cluster root or a volume's directory)
/// is whatever inode meta gave it, so the two are swapped. Cairn's own
/// inode 1 (the cluster root) lies above a volume mount and is never
/// reached from inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InoMap {
    root: u64,
}

impl InoMap {
    /// A map for a mount whose root is Cairn inode `root`.
    pub fn new(root: u64) -> Self {
        Self { root }
    }

    /// The Cairn inode the kernel's `ino` stands for.
    pub fn cairn(self, ino: INodeNo) -> u64 {
        if ino.0 == 1 { self.root } else { ino.0 }
    }

    /// The kernel's number for Cairn inode `ino`.
    pub fn kernel(self, ino: u64) -> INodeNo {
        if ino == self.root {
            INodeNo(1)
        } else {
            INodeNo(ino)
        }
    }
}

/// Nanoseconds since the epoch → `SystemTime` (negative ones before it).
pub fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// `SystemTime` → nanoseconds since the epoch (saturating).
pub fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The kernel's file type for a Cairn kind.
pub fn kind(k: i32) -> FileType {
    match Kind::try_from(k) {
        Ok(Kind::Directory) => FileType::Directory,
        Ok(Kind::Symlink) => FileType::Symlink,
        Ok(Kind::Fifo) => FileType::NamedPipe,
        Ok(Kind::Socket) => FileType::Socket,
        Ok(Kind::CharDevice) => FileType::CharDevice,
        Ok(Kind::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The kernel's attributes for `a`, with `size` in place of meta's when
/// this mount knows a newer length (its own unreported writes).
pub fn file_attr(a: &Attr, map: InoMap, size: u64) -> FileAttr {
    FileAttr {
        ino: map.kernel(a.ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.crtime_ns),
        kind: kind(a.kind),
        perm: u16::try_from(a.mode & 0o7777).unwrap_or(0),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// An errno from a raw value.
pub fn raw(n: i32) -> Errno {
    Errno::from(std::io::Error::from_raw_os_error(n))
}

/// The errno a failed Cairn call gives the application. Conditions the
/// client library retries (an unreachable cluster, a chain being
/// replaced) have already outlasted its retry budget when they arrive
/// here: they become EIO, not EAGAIN, which programs doing blocking I/O
/// would misread as "try again now".
pub fn errno(e: &CairnStatus) -> Errno {
    let n = match e.code {
        ErrorCode::TimedOut => libc::ETIMEDOUT,
        c if c.is_retryable() => libc::EIO,
        c => c.errno(),
    };
    if n == libc::EIO || n == libc::ETIMEDOUT {
        // The application sees only the number: say why here.
        tracing::warn!(code = e.code.name(), error = %e.message, "request failed with EIO/ETIMEDOUT");
    }
    raw(n)
}

/// As [`errno`], for a call naming an inode the kernel handed us: when meta
/// no longer knows it (freed by another client), ESTALE makes the kernel
/// look the path up again instead of failing with ENOENT.
pub fn errno_by_ino(e: &CairnStatus) -> Errno {
    if e.code == ErrorCode::NotFound {
        raw(libc::ESTALE)
    } else {
        errno(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_swapped_both_ways() {
        let m = InoMap::new(42);
        assert_eq!(m.cairn(INodeNo(1)), 42);
        assert_eq!(m.kernel(42), INodeNo(1));
        assert_eq!(m.cairn(INodeNo(7)), 7);
        assert_eq!(m.kernel(7), INodeNo(7));
        let whole = InoMap::new(1);
        assert_eq!(whole.cairn(INodeNo(1)), 1);
        assert_eq!(whole.kernel(1), INodeNo(1));
    }

    #[test]
    fn times_round_trip_including_before_the_epoch() {
        for ns in [0, 1, 1_700_000_000_123_456_789, -5_000_000_001] {
            assert_eq!(nanos(time(ns)), ns);
        }
    }

    #[test]
    fn attributes_carry_mode_size_and_kind() {
        let a = Attr {
            ino: 9,
            kind: Kind::Regular as i32,
            mode: 0o104_755,
            uid: 10,
            gid: 20,
            size: 1000,
            nlink: 2,
            mtime_ns: 5_000_000_000,
            ..Default::default()
        };
        let f = file_attr(&a, InoMap::new(1), 4097);
        assert_eq!(f.ino, INodeNo(9));
        assert_eq!(f.size, 4097);
        assert_eq!(f.blocks, 9);
        assert_eq!(f.perm, 0o4755);
        assert_eq!(f.kind, FileType::RegularFile);
        assert_eq!((f.uid, f.gid, f.nlink), (10, 20, 2));
        assert_eq!(f.mtime, UNIX_EPOCH + Duration::from_secs(5));
        let d = Attr {
            kind: Kind::Directory as i32,
            ..a.clone()
        };
        assert_eq!(file_attr(&d, InoMap::new(1), 0).kind, FileType::Directory);
    }

    #[test]
    fn errors_map_to_posix_and_retryable_ones_to_eio() {
        let e = |c| errno(&CairnStatus::new(c, "x"));
        assert_eq!(e(ErrorCode::NotFound), Errno::ENOENT);
        assert_eq!(e(ErrorCode::Exists), Errno::EEXIST);
        assert_eq!(e(ErrorCode::NotEmpty), raw(libc::ENOTEMPTY));
        assert_eq!(e(ErrorCode::Unavailable), Errno::EIO);
        assert_eq!(e(ErrorCode::NotLeader), Errno::EIO);
        assert_eq!(e(ErrorCode::TimedOut), raw(libc::ETIMEDOUT));
        assert_eq!(
            errno_by_ino(&CairnStatus::new(ErrorCode::NotFound, "gone")),
            raw(libc::ESTALE)
        );
        assert_eq!(
            errno_by_ino(&CairnStatus::new(ErrorCode::Exists, "x")),
            Errno::EEXIST
        );
    }
}
