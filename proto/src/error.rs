//! Stable error codes shared by every Cairn crate and both protocols.
//!
//! A code's number never changes meaning once released: old clients and
//! servers read them. Over gRPC a code travels in the status details as an
//! encoded [`ErrorDetail`](crate::meta::ErrorDetail) beside a human message;
//! [`CairnStatus`] converts both ways. Every code maps to the errno a POSIX
//! frontend reports and to a [`std::io::ErrorKind`].

use prost::Message;

/// A stable Cairn error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum ErrorCode {
    /// Something failed that has no better code; see the message.
    Internal = 1,
    /// No such file, directory, inode, volume or session (ENOENT).
    NotFound = 2,
    /// The name already exists (EEXIST).
    Exists = 3,
    /// A path component or the target is not a directory (ENOTDIR).
    NotDir = 4,
    /// The target is a directory where a non-directory is required (EISDIR).
    IsDir = 5,
    /// Directory not empty (ENOTEMPTY).
    NotEmpty = 6,
    /// Invalid argument, e.g. a directory moved into its own subtree (EINVAL).
    Invalid = 7,
    /// A name longer than 255 bytes (ENAMETOOLONG).
    NameTooLong = 8,
    /// Rename or link across volumes (EXDEV).
    CrossVolume = 9,
    /// No space left on the cluster or a target (ENOSPC).
    NoSpace = 10,
    /// Volume quota exceeded (EDQUOT).
    QuotaExceeded = 11,
    /// Operation not permitted (EPERM).
    NotPermitted = 12,
    /// No such extended attribute (ENODATA).
    NoData = 13,
    /// Too many hard links (EMLINK).
    TooManyLinks = 14,
    /// Value too large for its buffer or limit (E2BIG / ERANGE).
    TooBig = 15,
    /// This replica is not the Raft leader; retry on the hinted leader.
    NotLeader = 16,
    /// The service cannot answer now (no quorum, shutting down); retry.
    Unavailable = 17,
    /// The request carried a chain version older than the replica's.
    StaleChainVersion = 18,
    /// The request carried a chain version newer than the replica's.
    NewerChainVersion = 19,
    /// Stored or transmitted data failed its CRC check (EIO).
    Checksum = 20,
    /// The session expired or is unknown; open a new one.
    SessionExpired = 21,
    /// A malformed request or frame.
    BadRequest = 22,
    /// The request timed out (ETIMEDOUT).
    TimedOut = 23,
    /// A write carried an older snapshot sequence than the replica knows.
    StaleSnapSeq = 24,
    /// The block range is being written; read another replica or retry.
    Pending = 25,
    /// A request with this (client, sequence) was already superseded.
    StaleSequence = 26,
    /// An I/O error on a server's disk (EIO).
    Io = 27,
    /// A symlink loop or too deep a path (ELOOP).
    Loop = 28,
    /// Permission denied (EACCES).
    AccessDenied = 29,
    /// The cluster is not initialized yet.
    NotInitialized = 30,
    /// A replica holds this chunk version with other bytes: the sender lost
    /// a write (a crash or a failed local write while it was forwarded)
    /// that its successors kept. It copies the chunk from the tail; retry.
    Diverged = 31,
}

impl ErrorCode {
    /// Every code, for tests and for tables in docs.
    pub const ALL: [ErrorCode; 31] = [
        Self::Internal,
        Self::NotFound,
        Self::Exists,
        Self::NotDir,
        Self::IsDir,
        Self::NotEmpty,
        Self::Invalid,
        Self::NameTooLong,
        Self::CrossVolume,
        Self::NoSpace,
        Self::QuotaExceeded,
        Self::NotPermitted,
        Self::NoData,
        Self::TooManyLinks,
        Self::TooBig,
        Self::NotLeader,
        Self::Unavailable,
        Self::StaleChainVersion,
        Self::NewerChainVersion,
        Self::Checksum,
        Self::SessionExpired,
        Self::BadRequest,
        Self::TimedOut,
        Self::StaleSnapSeq,
        Self::Pending,
        Self::StaleSequence,
        Self::Io,
        Self::Loop,
        Self::AccessDenied,
        Self::NotInitialized,
        Self::Diverged,
    ];

    /// Returns the code for a wire value, or `None` for a value this build
    /// does not know (a newer peer); callers treat that as [`Self::Internal`].
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as u32 == v)
    }

    /// Returns the errno a POSIX frontend reports for this code.
    pub fn errno(self) -> i32 {
        // Linux values; Cairn runs on Linux only.
        match self {
            Self::NotFound | Self::SessionExpired => 2, // ENOENT
            Self::Exists => 17,                         // EEXIST
            Self::NotDir => 20,                         // ENOTDIR
            Self::IsDir => 21,                          // EISDIR
            Self::NotEmpty => 39,                       // ENOTEMPTY
            Self::Invalid | Self::BadRequest => 22,     // EINVAL
            Self::NameTooLong => 36,                    // ENAMETOOLONG
            Self::CrossVolume => 18,                    // EXDEV
            Self::NoSpace => 28,                        // ENOSPC
            Self::QuotaExceeded => 122,                 // EDQUOT
            Self::NotPermitted => 1,                    // EPERM
            Self::NoData => 61,                         // ENODATA
            Self::TooManyLinks => 31,                   // EMLINK
            Self::TooBig => 7,                          // E2BIG
            Self::TimedOut => 110,                      // ETIMEDOUT
            Self::Loop => 40,                           // ELOOP
            Self::AccessDenied => 13,                   // EACCES
            Self::NotLeader
            | Self::Unavailable
            | Self::StaleChainVersion
            | Self::NewerChainVersion
            | Self::Pending
            | Self::StaleSnapSeq
            | Self::NotInitialized
            | Self::Diverged => 11, // EAGAIN
            Self::Internal | Self::Checksum | Self::StaleSequence | Self::Io => 5, // EIO
        }
    }

    /// Returns the `std::io::ErrorKind` that best matches this code.
    pub fn io_kind(self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self {
            Self::NotFound | Self::SessionExpired => K::NotFound,
            Self::Exists => K::AlreadyExists,
            Self::NotDir => K::NotADirectory,
            Self::IsDir => K::IsADirectory,
            Self::NotEmpty => K::DirectoryNotEmpty,
            Self::Invalid | Self::BadRequest => K::InvalidInput,
            Self::NameTooLong => K::InvalidFilename,
            Self::CrossVolume => K::CrossesDevices,
            Self::NoSpace => K::StorageFull,
            Self::QuotaExceeded => K::QuotaExceeded,
            Self::NotPermitted | Self::AccessDenied => K::PermissionDenied,
            Self::TooManyLinks => K::TooManyLinks,
            Self::TooBig => K::FileTooLarge,
            Self::TimedOut => K::TimedOut,
            Self::NotLeader
            | Self::Unavailable
            | Self::StaleChainVersion
            | Self::NewerChainVersion
            | Self::Pending
            | Self::StaleSnapSeq
            | Self::NotInitialized
            | Self::Diverged => K::WouldBlock,
            Self::Checksum => K::InvalidData,
            Self::Loop => K::InvalidInput,
            Self::NoData | Self::Internal | Self::StaleSequence | Self::Io => K::Other,
        }
    }

    /// Returns whether the same request may succeed if sent again (to the
    /// hinted leader, another replica, or after a table refresh).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::NotLeader
                | Self::Unavailable
                | Self::StaleChainVersion
                | Self::NewerChainVersion
                | Self::Pending
                | Self::StaleSnapSeq
                | Self::TimedOut
                | Self::NotInitialized
                | Self::Diverged
        )
    }

    /// Returns the gRPC status code this error travels under.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code as G;
        match self {
            Self::NotFound | Self::SessionExpired | Self::NoData => G::NotFound,
            Self::Exists => G::AlreadyExists,
            Self::NotDir
            | Self::IsDir
            | Self::NotEmpty
            | Self::CrossVolume
            | Self::TooManyLinks
            | Self::StaleChainVersion
            | Self::NewerChainVersion
            | Self::StaleSnapSeq
            | Self::StaleSequence
            | Self::Loop
            | Self::NotInitialized => G::FailedPrecondition,
            Self::Invalid | Self::NameTooLong | Self::BadRequest | Self::TooBig => {
                G::InvalidArgument
            }
            Self::NoSpace | Self::QuotaExceeded => G::ResourceExhausted,
            Self::NotPermitted | Self::AccessDenied => G::PermissionDenied,
            Self::NotLeader | Self::Unavailable | Self::Pending | Self::Diverged => G::Unavailable,
            Self::TimedOut => G::DeadlineExceeded,
            Self::Checksum => G::DataLoss,
            Self::Internal | Self::Io => G::Internal,
        }
    }

    /// A short lowercase name, used in logs, metrics labels and `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::NotFound => "not_found",
            Self::Exists => "exists",
            Self::NotDir => "not_dir",
            Self::IsDir => "is_dir",
            Self::NotEmpty => "not_empty",
            Self::Invalid => "invalid",
            Self::NameTooLong => "name_too_long",
            Self::CrossVolume => "cross_volume",
            Self::NoSpace => "no_space",
            Self::QuotaExceeded => "quota_exceeded",
            Self::NotPermitted => "not_permitted",
            Self::NoData => "no_data",
            Self::TooManyLinks => "too_many_links",
            Self::TooBig => "too_big",
            Self::NotLeader => "not_leader",
            Self::Unavailable => "unavailable",
            Self::StaleChainVersion => "stale_chain_version",
            Self::NewerChainVersion => "newer_chain_version",
            Self::Checksum => "checksum",
            Self::SessionExpired => "session_expired",
            Self::BadRequest => "bad_request",
            Self::TimedOut => "timed_out",
            Self::StaleSnapSeq => "stale_snap_seq",
            Self::Pending => "pending",
            Self::StaleSequence => "stale_sequence",
            Self::Io => "io",
            Self::Loop => "loop",
            Self::AccessDenied => "access_denied",
            Self::NotInitialized => "not_initialized",
            Self::Diverged => "diverged",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Cairn error as it crosses gRPC: a stable code, a human message and,
/// for [`ErrorCode::NotLeader`], the leader's id and address when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CairnStatus {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The current leader's node id, if known (NotLeader only).
    pub leader_id: Option<u64>,
    /// The current leader's address, if known (NotLeader only).
    pub leader_addr: Option<String>,
}

impl CairnStatus {
    /// Returns a status with `code` and `message` and no leader hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            leader_id: None,
            leader_addr: None,
        }
    }

    /// Returns a NotLeader status that points at `leader` when known.
    pub fn not_leader(leader: Option<(u64, String)>) -> Self {
        let (leader_id, leader_addr) = match leader {
            Some((id, addr)) => (Some(id), Some(addr)),
            None => (None, None),
        };
        Self {
            code: ErrorCode::NotLeader,
            message: match &leader_addr {
                Some(a) => format!("not the leader; the leader is {a}"),
                None => "not the leader and no leader is known yet".to_string(),
            },
            leader_id,
            leader_addr,
        }
    }

    /// Decodes a gRPC status. A status without Cairn details (a transport
    /// failure, a foreign server) maps to a code from its gRPC code.
    pub fn from_status(s: &tonic::Status) -> Self {
        if let Ok(d) = crate::meta::ErrorDetail::decode(s.details())
            && let Some(code) = ErrorCode::from_u32(d.code)
        {
            return Self {
                code,
                message: s.message().to_string(),
                leader_id: (d.leader_id != 0).then_some(d.leader_id),
                leader_addr: (!d.leader_addr.is_empty()).then_some(d.leader_addr),
            };
        }
        let code = match s.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                ErrorCode::Unavailable
            }
            tonic::Code::DeadlineExceeded => ErrorCode::TimedOut,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists => ErrorCode::Exists,
            tonic::Code::InvalidArgument => ErrorCode::BadRequest,
            tonic::Code::PermissionDenied => ErrorCode::AccessDenied,
            tonic::Code::ResourceExhausted => ErrorCode::NoSpace,
            tonic::Code::DataLoss => ErrorCode::Checksum,
            _ => ErrorCode::Internal,
        };
        Self::new(code, s.message().to_string())
    }

    /// Encodes this error as a gRPC status with Cairn details.
    pub fn to_status(&self) -> tonic::Status {
        let d = crate::meta::ErrorDetail {
            code: self.code as u32,
            leader_id: self.leader_id.unwrap_or(0),
            leader_addr: self.leader_addr.clone().unwrap_or_default(),
        };
        tonic::Status::with_details(
            self.code.grpc_code(),
            self.message.clone(),
            d.encode_to_vec().into(),
        )
    }

    /// Returns whether the request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

impl From<CairnStatus> for tonic::Status {
    fn from(e: CairnStatus) -> Self {
        e.to_status()
    }
}

impl From<tonic::Status> for CairnStatus {
    fn from(s: tonic::Status) -> Self {
        Self::from_status(&s)
    }
}

impl From<CairnStatus> for std::io::Error {
    fn from(e: CairnStatus) -> Self {
        std::io::Error::new(e.code.io_kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c as u32), "duplicate wire value {c:?}");
            assert_eq!(ErrorCode::from_u32(c as u32), Some(c));
            assert!(seen.len() <= ErrorCode::ALL.len());
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::from_u32(9999), None);
    }

    #[test]
    fn status_round_trip_keeps_code_and_leader() {
        let e = CairnStatus::not_leader(Some((3, "127.0.0.1:7003".into())));
        let back = CairnStatus::from_status(&e.to_status());
        assert_eq!(back, e);
        let e = CairnStatus::new(ErrorCode::NotEmpty, "directory /a is not empty");
        let back = CairnStatus::from_status(&e.to_status());
        assert_eq!(back.code, ErrorCode::NotEmpty);
        assert_eq!(back.message, "directory /a is not empty");
        assert_eq!(back.leader_addr, None);
    }

    #[test]
    fn foreign_status_maps_by_grpc_code() {
        let s = tonic::Status::unavailable("connection refused");
        assert_eq!(CairnStatus::from_status(&s).code, ErrorCode::Unavailable);
        assert!(CairnStatus::from_status(&s).is_retryable());
    }

    #[test]
    fn posix_errnos() {
        assert_eq!(ErrorCode::NotFound.errno(), 2);
        assert_eq!(ErrorCode::NotEmpty.errno(), 39);
        assert_eq!(ErrorCode::CrossVolume.errno(), 18);
        assert_eq!(ErrorCode::NameTooLong.errno(), 36);
    }
}
