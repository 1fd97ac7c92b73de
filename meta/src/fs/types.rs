//! The Raft command and response types and the records the state machine
//! stores. Everything here is serialized into the Raft log or into sled, so
//! changing a field is a format change. The encoding is bincode, which has
//! no field names and ignores `#[serde(default)]`: evolve these types by
//! adding enum variants at the end (never reordering), or by a new record
//! type with a bump of [`FORMAT_VERSION`](super::FORMAT_VERSION) and a
//! migration.

use std::collections::BTreeSet;

use cairn_proto::ErrorCode;
use serde::{Deserialize, Serialize};

/// One Raft log entry's payload: a mutation stamped by the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Session id of the requester (0: no session, no retry protection).
    pub client_id: u64,
    /// The requester's sequence number for this mutation.
    pub seq: u64,
    /// Every seq below this one has been answered to the client.
    pub ack_below: u64,
    /// The leader's wall clock when it accepted the request, in ns since the
    /// epoch. Applying nodes use this, never their own clock.
    pub time_ns: i64,
    /// What to do.
    pub op: Op,
}

impl Command {
    /// Returns a command without retry protection (cluster-internal ops).
    pub fn internal(time_ns: i64, op: Op) -> Self {
        Self {
            client_id: 0,
            seq: 0,
            ack_below: 0,
            time_ns,
            op,
        }
    }
}

/// The kind of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO (named pipe). Special files are metadata only: the kernel
    /// serves their I/O itself. Appended after the first three kinds, so
    /// stored inodes and dentries keep their bincode index.
    Fifo,
    /// A UNIX domain socket.
    Socket,
    /// A character device node, with its device number. The number lives
    /// in the kind (it never changes after mknod) so that [`Inode`] keeps
    /// its stored form.
    CharDevice(u32),
    /// A block device node, with its device number.
    BlockDevice(u32),
}

impl Kind {
    /// Whether this is a special file (FIFO, socket, device node).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDevice(_) | Kind::BlockDevice(_)
        )
    }

    /// The device number of a device node, 0 for other kinds.
    pub fn rdev(self) -> u32 {
        match self {
            Kind::CharDevice(d) | Kind::BlockDevice(d) => d,
            _ => 0,
        }
    }
}

/// A time given to setattr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// The request's time (UTIME_NOW).
    Now,
    /// This time, in ns since the epoch.
    At(i64),
}

/// Attribute changes of a setattr; `None` leaves a field as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate up or down); bumps the truncate generation.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// A volume's policy (DESIGN §3).
///
/// Its encoding is fixed (it is inside stored [`Volume`]s, log entries and
/// cached replies): an encrypted volume's keys live in [`VolumeKeys`]
/// instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePolicy {
    /// Replicas per chunk, 1 to 3.
    pub replication: u32,
    /// Chunk size in bytes, a power of two.
    pub chunk_size: u64,
    /// Chains per file.
    pub stripe_width: u32,
    /// Client-side encryption of file contents, as requested. Only a
    /// volume with a [`VolumeKeys`] record is encrypted: volumes created
    /// before encryption existed may have this set over plain-text data.
    pub encrypted: bool,
    /// Byte quota, 0 = unlimited.
    pub quota_bytes: u64,
    /// Inode quota, 0 = unlimited.
    pub quota_inodes: u64,
}

impl Default for VolumePolicy {
    fn default() -> Self {
        Self {
            replication: 3,
            chunk_size: 64 << 20,
            stripe_width: 8,
            encrypted: false,
            quota_bytes: 0,
            quota_inodes: 0,
        }
    }
}

/// Length of a key check value, in bytes.
pub const KEY_CHECK_LEN: usize = 16;

/// Length of a file's encryption salt, in bytes.
pub const SALT_LEN: usize = 16;

/// The check value of one version of a volume's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCheck {
    /// Key version, from 1.
    pub version: u32,
    /// An HKDF output of the key: lets a client tell a wrong key from a
    /// right one. The key itself never reaches meta.
    pub check: [u8; KEY_CHECK_LEN],
}

/// What meta knows of an encrypted volume's keys: which version new files
/// are created under and a check value per version.
///
/// Stored beside the [`Volume`] record (`y` + volume id), not in it, so
/// volume records keep their encoding: a volume without this record is
/// plain, which is what every volume created before encryption existed is
/// (some have `policy.encrypted` set, but their data was stored as plain
/// text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeKeys {
    /// The key version new files are created under (from 1).
    pub current: u32,
    /// One check per version, versions 1 to `current` in order.
    pub checks: Vec<KeyCheck>,
}

impl VolumeKeys {
    /// Returns the keys of a new encrypted volume: version 1 with `check`.
    pub fn first(check: [u8; KEY_CHECK_LEN]) -> Self {
        Self {
            current: 1,
            checks: vec![KeyCheck { version: 1, check }],
        }
    }
}

/// What meta knows of a compressed volume: how clients compress its files
/// and how much they wrote.
///
/// Stored beside the [`Volume`] record (`z` + volume id), like
/// [`VolumeKeys`], so volume records keep their encoding: a volume without
/// this record is uncompressed, which is what every volume created before
/// compression existed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCompression {
    /// The algorithm, a `cairn.meta.v1.Compression` value other than NONE
    /// (see [`compression`](super::compression)).
    pub algo: u8,
    /// Bytes per compression unit: a power of two from 16 KiB to 1 MiB, at
    /// most the volume's chunk size.
    pub unit: u32,
    /// Bytes clients wrote in compression units since the volume was
    /// created, before compression.
    pub logical: u64,
    /// The same writes as sent to the chunkservers, per replica (whole
    /// 4 KiB blocks).
    pub stored: u64,
}

impl VolumeCompression {
    /// Returns the record of a new volume compressed with `algo` in units
    /// of `unit` bytes: nothing written yet.
    pub fn new(algo: u8, unit: u32) -> Self {
        Self {
            algo,
            unit,
            logical: 0,
            stored: 0,
        }
    }
}

/// A target as a chunkserver registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// UUID from the target's superblock.
    pub uuid: String,
    /// Capacity in bytes.
    pub capacity: u64,
}

/// The state of a target in its chains (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetState {
    /// Serves reads and writes.
    Serving,
    /// Receives writes, serves no reads, until resynced.
    Syncing,
    /// Out of service.
    Offline,
}

/// A mutation of the metadata state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// First entry of a new cluster: records its id.
    InitCluster {
        /// Random cluster id chosen by the bootstrapping node.
        cluster_id: String,
    },
    /// Allocates a Raft node id for a joining replica.
    AllocateNodeId {
        /// The replica's address, for the operator's records.
        addr: String,
    },
    /// mkdir(2). A directory made in the root is a volume root.
    Mkdir {
        /// Parent directory.
        parent: u64,
        /// New entry's name.
        name: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// open(O_CREAT) of a regular file.
    Create {
        /// Parent directory.
        parent: u64,
        /// New entry's name.
        name: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// O_EXCL.
        exclusive: bool,
        /// Register the file as open for write in the session.
        open_for_write: bool,
        /// Per-file salt for encryption: [`SALT_LEN`] random bytes chosen
        /// by the leader for every create. Kept only when the parent's
        /// volume is encrypted (only the apply step knows that); other
        /// files get an empty salt.
        salt: Vec<u8>,
    },
    /// symlink(2).
    Symlink {
        /// Parent directory.
        parent: u64,
        /// New entry's name.
        name: String,
        /// Link target.
        target: String,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// link(2).
    Link {
        /// Existing inode (not a directory).
        ino: u64,
        /// Directory of the new name.
        new_parent: u64,
        /// New name.
        new_name: String,
    },
    /// unlink(2).
    Unlink {
        /// Parent directory.
        parent: u64,
        /// Name to remove.
        name: String,
        /// The requester's session holds the file open.
        held_open: bool,
    },
    /// rmdir(2).
    Rmdir {
        /// Parent directory.
        parent: u64,
        /// Name to remove.
        name: String,
    },
    /// rename(2) / renameat2(2).
    Rename {
        /// Source directory.
        parent: u64,
        /// Source name.
        name: String,
        /// Destination directory.
        new_parent: u64,
        /// Destination name.
        new_name: String,
        /// RENAME_NOREPLACE.
        noreplace: bool,
        /// RENAME_EXCHANGE.
        exchange: bool,
    },
    /// setattr (chmod, chown, truncate, utimens).
    SetAttr {
        /// The inode.
        ino: u64,
        /// The changes.
        attr: SetAttr,
    },
    /// setxattr(2).
    SetXattr {
        /// The inode.
        ino: u64,
        /// Attribute name.
        name: String,
        /// Attribute value.
        value: Vec<u8>,
        /// XATTR_CREATE.
        create_only: bool,
        /// XATTR_REPLACE.
        replace_only: bool,
    },
    /// removexattr(2).
    RemoveXattr {
        /// The inode.
        ino: u64,
        /// Attribute name.
        name: String,
    },
    /// Creates a volume: a directory in the root with its own policy.
    CreateVolume {
        /// Volume (and root directory) name.
        name: String,
        /// Its policy.
        policy: VolumePolicy,
    },
    /// Opens a client session; its id is the client id of later requests.
    OpenSession {
        /// Client description for operators.
        client_name: String,
    },
    /// Closes a session, releasing its open files.
    CloseSession {
        /// Session id.
        session: u64,
    },
    /// Opens a file; write opens are recorded in the session.
    Open {
        /// The file.
        ino: u64,
        /// Open for write.
        write: bool,
    },
    /// Closes a file, reporting the writer's length.
    Close {
        /// The file.
        ino: u64,
        /// Length the writer saw, with the truncate generation it wrote under.
        length: Option<(u64, u64)>,
    },
    /// Reports a writer's length (fsync) under a truncate generation.
    ReportLength {
        /// The file.
        ino: u64,
        /// Length.
        length: u64,
        /// Truncate generation the writer wrote under.
        truncate_gen: u64,
    },
    /// Registers (or re-registers) a chunkserver and its targets.
    RegisterChunkserver {
        /// Stable chunkserver UUID.
        node_uuid: String,
        /// Data-plane host.
        host: String,
        /// One port per shard.
        shard_ports: Vec<u32>,
        /// Failure domain, may be empty.
        zone: String,
        /// Its targets.
        targets: Vec<TargetSpec>,
    },
    /// Changes targets' states in every chain they are in.
    SetTargetStates {
        /// (target id, new state).
        changes: Vec<(u64, TargetState)>,
    },
    /// A chain's head copied everything its syncing members lacked at
    /// chain version `version`: they become serving, if the chain is still
    /// at that version.
    ChainSynced {
        /// Chain id.
        chain: u32,
        /// The chain version the sync ran at.
        version: u64,
    },
    /// Replaces offline members of chains by new targets, appended as
    /// syncing (re-replication): (chain, offline target, new target, its
    /// chunkserver). Skipped for a chain where the old target is no longer
    /// an offline member or the new one's chunkserver already is one.
    ReplaceTargets {
        /// The replacements.
        changes: Vec<(u32, u64, u64, u64)>,
    },
    /// Opens (`until_ns > 0`) or lifts (`until_ns == 0`) a chunkserver's
    /// maintenance window.
    SetMaintenance {
        /// Chunkserver id.
        chunkserver: u64,
        /// End of the window, ns since the epoch; 0 lifts it.
        until_ns: i64,
        /// See [`Maintenance::hold`].
        hold: bool,
    },
    /// Adds a target to a chain as syncing at its tail (the rebalancer);
    /// once synced, the chain's most loaded other member leaves it. Skipped
    /// when the chain has a member on that chunkserver or is repairing.
    AddMember {
        /// Chain id.
        chain: u32,
        /// The target.
        target: u64,
        /// Its chunkserver.
        chunkserver: u64,
    },
    /// The garbage collector removed these objects' chunks from every
    /// replica: forget them.
    ForgetGarbage {
        /// Object ids.
        objects: Vec<u64>,
    },
    /// Several commands in one log entry (group commit by the leader's
    /// proposer): applied in order, each with its own result and its own
    /// reply-cache entry, all in one atomic batch with the log id.
    Batch(Vec<Command>),
    /// Releases the session's write opens of these files (closed without a
    /// length to report). Appended last: variants keep their bincode index.
    ReleaseFiles {
        /// The files.
        inos: Vec<u64>,
    },
    /// A writer sent data up to `extent` (the end of its furthest write,
    /// which may have reached some replicas even if it failed) beyond the
    /// length it reports: the garbage collector must look that far when
    /// the file is deleted. Appended last (bincode index).
    MarkExtent {
        /// The file.
        ino: u64,
        /// End of the furthest write sent, in bytes.
        extent: u64,
    },
    /// Creates an encrypted volume: [`Op::CreateVolume`] plus the check
    /// value of its first key (version 1). [`Op::CreateVolume`] creates
    /// plain volumes only. Appended last (bincode index).
    CreateEncryptedVolume {
        /// Volume (and root directory) name.
        name: String,
        /// Its policy.
        policy: VolumePolicy,
        /// Check value of key version 1.
        check: [u8; KEY_CHECK_LEN],
    },
    /// Adds key version current + 1 to an encrypted volume; files created
    /// afterwards use it, older files keep theirs. Appended last (bincode
    /// index).
    RotateVolumeKey {
        /// Volume name.
        name: String,
        /// Check value of the new key.
        check: [u8; KEY_CHECK_LEN],
    },
    /// Creates a volume with its compression and, when `check` is set, its
    /// first key, in one entry: a compressed volume (encrypted or not) is
    /// never seen without its [`VolumeCompression`] record. `compression`
    /// NONE (0) with `unit` 0 creates an uncompressed volume. The leader
    /// proposes it for compressed volumes only ([`Op::CreateVolume`] and
    /// [`Op::CreateEncryptedVolume`] for the others). Appended last
    /// (bincode index).
    CreateVolumeWith {
        /// Volume (and root directory) name.
        name: String,
        /// Its policy (`encrypted` is taken from `check`).
        policy: VolumePolicy,
        /// Check value of key version 1: an encrypted volume.
        check: Option<[u8; KEY_CHECK_LEN]>,
        /// The algorithm, a `cairn.meta.v1.Compression` value.
        compression: u8,
        /// Bytes per compression unit (0: the default, 64 KiB).
        unit: u32,
    },
    /// [`Op::Close`] of a file of a compressed volume by a writer that
    /// wrote `logical` bytes in compression units, `stored` after
    /// compression: adds them to the counters of the file's volume (nothing
    /// when the volume has no [`VolumeCompression`] record), then closes,
    /// in one entry under one request id, so a retried close counts its
    /// bytes once (the reply cache answers the retry). Appended last
    /// (bincode index).
    CloseCounted {
        /// The file.
        ino: u64,
        /// As in [`Op::Close`].
        length: Option<(u64, u64)>,
        /// Bytes before compression.
        logical: u64,
        /// Bytes sent to the chunkservers, per replica.
        stored: u64,
    },
    /// mknod(2): a FIFO, socket or device node (metadata only). Appended
    /// after the others (bincode index).
    Mknod {
        /// Parent directory.
        parent: u64,
        /// New entry's name.
        name: String,
        /// A special kind ([`Kind::is_special`]); others are refused.
        kind: Kind,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// fcntl F_SETLK / flock: takes, changes or releases the command's
    /// session's lock of `owner` on a byte range (see [`super::locks`]).
    /// Appended last (bincode index).
    SetLock {
        /// The file.
        ino: u64,
        /// The lock owner within the session.
        owner: u64,
        /// First byte.
        start: u64,
        /// Last byte, inclusive (`u64::MAX`: to the end of any file).
        end: u64,
        /// Read, write or unlock.
        kind: super::locks::LockKind,
        /// The locking process's id.
        pid: u32,
    },
    /// Sets a volume's quotas (a CSI volume expansion, `cairn volume
    /// set-quota`); `None` keeps one as it is, 0 means unlimited. A quota
    /// below what the volume uses refuses new allocations until usage
    /// falls under it; nothing is removed. Appended last (bincode index).
    SetVolumeQuota {
        /// Volume name.
        name: String,
        /// New byte quota.
        bytes: Option<u64>,
        /// New inode quota.
        inodes: Option<u64>,
    },
    /// Takes snapshot `name` of a volume (see [`super::snapshots`]);
    /// answers the existing one when the name is taken by a ready
    /// snapshot (idempotent). Appended last (bincode index).
    CreateSnapshot {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// Deletes snapshot `name` of a volume: gone from listings and reads
    /// at once; its records are merged away by this entry and, when there
    /// are many, by [`Op::MergeSnapshot`]s. Appended last (bincode index).
    DeleteSnapshot {
        /// Volume name.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// Goes on merging away the records of deleted snapshot `seq` of
    /// volume `volume` (proposed by the leader until it is gone).
    /// Appended last (bincode index).
    MergeSnapshot {
        /// Volume id.
        volume: u64,
        /// The snapshot's seq.
        seq: u64,
    },
    /// Starts restoring snapshot `snapshot` of volume `volume` into a new
    /// writable volume `to` (see [`super::restore`]): the volume exists at
    /// once, hidden, and [`Op::RestoreStep`]s copy the tree into it.
    /// Appended last (bincode index).
    RestoreSnapshot {
        /// Source volume name.
        volume: String,
        /// Snapshot name.
        snapshot: String,
        /// The new volume's name.
        to: String,
    },
    /// Copies the next part of a restore's tree (proposed by the leader
    /// until the restore is done). Appended last (bincode index).
    RestoreStep {
        /// The new volume's id.
        volume: u64,
    },
    /// A client is about to write a file whose data is still the
    /// snapshot's ([`Origin`]): with `discard` (the file is being
    /// truncated to 0), the origin goes and the file is emptied; otherwise
    /// the command's session claims the copy. Appended last (bincode
    /// index).
    CopyUp {
        /// The file.
        ino: u64,
        /// Drop the snapshot's data instead of copying it.
        discard: bool,
    },
    /// The claiming session copied the file's data into its own object:
    /// the file no longer reads the snapshot. Appended last (bincode
    /// index).
    CopyDone {
        /// The file.
        ino: u64,
    },
    /// Sets directory `ino`'s quotas (`None` keeps one, 0 means
    /// unlimited), making it a quota directory if it is not one: then it
    /// must be an empty directory that is not a volume's root and not under
    /// another quota directory. Answers [`Reply::DirQuota`]. Appended last
    /// (bincode index).
    SetDirQuota {
        /// The directory.
        ino: u64,
        /// New byte quota.
        bytes: Option<u64>,
        /// New inode quota.
        inodes: Option<u64>,
    },
}

/// A file of a restored volume whose data is still read from the snapshot
/// it was restored from (`b` + ino; versioned like inodes): chunk `i` of
/// `object` as snapshot `seq` of volume `volume` saw it, through the file's
/// own layout's chains and chunk size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The source volume.
    pub volume: u64,
    /// The snapshot's seq.
    pub seq: u64,
    /// The source file's object.
    pub object: u64,
    /// The session copying the data now (0: none).
    pub copier: u64,
    /// When it claimed the copy (leader time).
    pub claimed_ns: i64,
}

/// A restore in progress (`R` + the new volume's id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    /// The source volume.
    pub source: u64,
    /// The snapshot's seq.
    pub seq: u64,
    /// The snapshot's name.
    pub snapshot: String,
    /// The new volume's name (its root entry is made at the end).
    pub name: String,
    /// Directories still to copy: (source directory, its copy), with the
    /// name of the last entry copied from the first one.
    pub queue: Vec<(u64, u64)>,
    /// The last entry copied from `queue[0]`.
    pub after: Option<String>,
    /// Inodes copied so far.
    pub copied: u64,
    /// Inodes the snapshot holds.
    pub total: u64,
    /// The tree is copied; the hard-link map is being cleared.
    pub cleaning: bool,
}

impl Op {
    /// Returns a short name of the operation for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::InitCluster { .. } => "init_cluster",
            Op::AllocateNodeId { .. } => "allocate_node_id",
            Op::Mkdir { .. } => "mkdir",
            Op::Create { .. } => "create",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::SetAttr { .. } => "setattr",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::CreateVolume { .. } => "create_volume",
            Op::CreateEncryptedVolume { .. } => "create_encrypted_volume",
            Op::RotateVolumeKey { .. } => "rotate_volume_key",
            Op::CreateVolumeWith { .. } => "create_volume_with",
            Op::OpenSession { .. } => "open_session",
            Op::CloseSession { .. } => "close_session",
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::ReleaseFiles { .. } => "release_files",
            Op::MarkExtent { .. } => "mark_extent",
            Op::CloseCounted { .. } => "close_counted",
            Op::Mknod { .. } => "mknod",
            Op::SetVolumeQuota { .. } => "set_volume_quota",
            Op::SetLock { .. } => "set_lock",
            Op::ReportLength { .. } => "report_length",
            Op::RegisterChunkserver { .. } => "register_chunkserver",
            Op::SetTargetStates { .. } => "set_target_states",
            Op::ForgetGarbage { .. } => "forget_garbage",
            Op::ChainSynced { .. } => "chain_synced",
            Op::ReplaceTargets { .. } => "replace_targets",
            Op::AddMember { .. } => "add_member",
            Op::SetMaintenance { .. } => "set_maintenance",
            Op::Batch(_) => "batch",
            Op::CreateSnapshot { .. } => "create_snapshot",
            Op::DeleteSnapshot { .. } => "delete_snapshot",
            Op::MergeSnapshot { .. } => "merge_snapshot",
            Op::RestoreSnapshot { .. } => "restore_snapshot",
            Op::RestoreStep { .. } => "restore_step",
            Op::CopyUp { .. } => "copy_up",
            Op::CopyDone { .. } => "copy_done",
            Op::SetDirQuota { .. } => "set_dir_quota",
        }
    }
}

/// A file's data layout (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The file's object id.
    pub object_id: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Chains of the stripe; chunk i lives on `chains[i % len]`.
    pub chains: Vec<u32>,
    /// Replication factor of the chain table the ids refer to.
    pub replication: u32,
}

/// An inode as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (for symlinks, the target's length).
    pub size: u64,
    /// Link count; a directory counts its name, `.` and each subdirectory.
    pub nlink: u32,
    /// Access time, ns since the epoch.
    pub atime: i64,
    /// Modification time.
    pub mtime: i64,
    /// Status change time.
    pub ctime: i64,
    /// Creation time.
    pub crtime: i64,
    /// Volume the inode belongs to (0: the root directory itself).
    pub volume: u64,
    /// Directories: the parent directory (the root is its own parent).
    pub parent: u64,
    /// Files: the data layout.
    pub layout: Option<Layout>,
    /// Files: bumped by every truncate.
    pub truncate_gen: u64,
    /// Bumped by every change.
    pub version: u64,
    /// Symlinks: the target.
    pub target: Option<String>,
    /// Files of encrypted volumes: per-file salt for key derivation
    /// ([`SALT_LEN`] bytes); empty elsewhere. Never changes (link and
    /// rename keep the inode).
    pub salt: Vec<u8>,
    /// Files of encrypted volumes: the volume key version the file was
    /// created under; 0 elsewhere.
    pub key_version: u32,
}

/// A volume as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Volume id (also the `volume` of its inodes).
    pub id: u64,
    /// Name (the root directory's entry name).
    pub name: String,
    /// Root directory inode.
    pub root_ino: u64,
    /// Policy.
    pub policy: VolumePolicy,
    /// Snapshot sequence.
    pub snap_seq: u64,
    /// Bytes charged (settled file lengths).
    pub used_bytes: u64,
    /// Inodes charged.
    pub used_inodes: u64,
}

/// A directory with a quota of its own (`q` + its ino): a CSI volume
/// carved out of a shared Cairn volume, or `cairn quota set`. Every inode
/// made under it (at any depth) is charged to it as well as to the volume
/// (`u` + ino names the quota directory an inode is charged to), so rename
/// and link across its boundary fail with EXDEV, as with XFS project
/// quotas, and quota directories do not nest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirQuota {
    /// The directory.
    pub ino: u64,
    /// Its volume.
    pub volume: u64,
    /// Byte quota, 0 = unlimited.
    pub quota_bytes: u64,
    /// Inode quota, 0 = unlimited.
    pub quota_inodes: u64,
    /// Bytes charged (settled file lengths) under the directory.
    pub used_bytes: u64,
    /// Inodes charged under the directory (not counting itself).
    pub used_inodes: u64,
}

/// A volume snapshot as stored (`S` + volume + seq).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The volume's id.
    pub volume: u64,
    /// Its sequence number: from the cluster-wide counter, so later
    /// snapshots (of any volume) have larger ones.
    pub seq: u64,
    /// Its name, unique among the volume's snapshots.
    pub name: String,
    /// When it was taken (leader time, ns since the epoch).
    pub created_ns: i64,
    /// Bytes the volume's files held when it was taken.
    pub used_bytes: u64,
    /// Inodes the volume held when it was taken.
    pub used_inodes: u64,
    /// Being deleted: hidden from listings and reads, its records still
    /// being merged away.
    pub deleting: bool,
}

/// A client session as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id.
    pub id: u64,
    /// Client description.
    pub client_name: String,
    /// When it was opened (leader time).
    pub opened_ns: i64,
    /// Files open for write.
    pub open_write: BTreeSet<u64>,
    /// Unlinked files this session still holds open.
    pub held: BTreeSet<u64>,
}

/// A registered target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// Target id.
    pub id: u64,
    /// UUID from its superblock.
    pub uuid: String,
    /// Capacity in bytes at registration.
    pub capacity: u64,
}

/// A registered chunkserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverRecord {
    /// Chunkserver id.
    pub id: u64,
    /// Stable UUID.
    pub node_uuid: String,
    /// Data-plane host.
    pub host: String,
    /// One port per shard.
    pub shard_ports: Vec<u32>,
    /// Failure domain.
    pub zone: String,
    /// Targets.
    pub targets: Vec<TargetRecord>,
}

/// One member of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainMember {
    /// Target id.
    pub target: u64,
    /// Its chunkserver.
    pub chunkserver: u64,
    /// Its state in this chain.
    pub state: TargetState,
}

/// A chain of targets, head first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// Chain id (stable).
    pub id: u32,
    /// Bumped on every membership or state change.
    pub version: u64,
    /// Members, head to tail.
    pub members: Vec<ChainMember>,
}

/// A chunkserver's maintenance window: its targets stay members of their
/// chains (offline, then resynced by version) and are not replaced until
/// `until_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// End of the window (leader wall-clock time, ns since the epoch).
    pub until_ns: i64,
    /// Set by an operator (`cairn admin maintenance`): its targets stay
    /// offline, even while it heartbeats, until the window is lifted or
    /// ends. Unset (a SIGTERM restart): lifted when it heartbeats again.
    pub hold: bool,
}

/// Data whose last reference went away, for the garbage collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    /// The object.
    pub layout: Layout,
    /// Bytes it held.
    pub size: u64,
    /// When it became garbage (leader time).
    pub since_ns: i64,
}

/// What the state machine answers for a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to report.
    Unit,
    /// A new or changed entry and its parent.
    Entry {
        /// The entry's inode.
        attr: Inode,
        /// The parent directory after the change.
        parent: Option<Inode>,
    },
    /// An inode's attributes.
    Attr(Inode),
    /// Result of unlink or rmdir.
    Removed {
        /// The removed inode.
        ino: u64,
        /// Its last link went away.
        freed: bool,
        /// The parent after the change.
        parent: Inode,
    },
    /// Result of rename.
    Renamed {
        /// The moved inode.
        attr: Inode,
        /// The replaced inode, if any, and whether it was freed.
        replaced: Option<(u64, bool)>,
    },
    /// A new volume.
    Volume(Volume),
    /// A new session id.
    Session(u64),
    /// A new node id.
    NodeId(u64),
    /// A registered chunkserver and its target ids.
    Chunkserver {
        /// Chunkserver id.
        id: u64,
        /// Target ids, in the request's order.
        target_ids: Vec<u64>,
    },
    /// The results of a batch, in order.
    Batch(Vec<Response>),
    /// An encrypted volume (new or rotated) and its keys. Appended last
    /// (bincode index); plain volumes are answered with [`Reply::Volume`].
    EncryptedVolume {
        /// The volume.
        volume: Volume,
        /// Its keys.
        keys: VolumeKeys,
    },
    /// A volume made by [`Op::CreateVolumeWith`], with its keys (`None`:
    /// plain) and its compression (`None`: uncompressed). Appended last
    /// (bincode index).
    VolumeWith {
        /// The volume.
        volume: Volume,
        /// Its keys.
        keys: Option<VolumeKeys>,
        /// Its compression.
        compression: Option<VolumeCompression>,
    },
    /// A lock request's answer: `None` granted, or the lock in its way.
    /// Appended last (bincode index).
    Lock(Option<super::locks::LockHolder>),
    /// A snapshot (taken, found or being deleted). Appended last (bincode
    /// index).
    Snapshot(Snapshot),
    /// A restore: the new volume and the job copying into it (`None` once
    /// done). Appended last (bincode index).
    Restore(Volume, Option<RestoreJob>),
    /// A file's origin as [`Op::CopyUp`] left it (`None`: nothing to copy).
    /// Appended last (bincode index).
    Origin(Option<Origin>),
    /// A directory quota as it is now. Appended last (bincode index).
    DirQuota(DirQuota),
}

/// An operation's failure: a stable code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FsError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl FsError {
    /// Returns an error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<FsError> for cairn_proto::CairnStatus {
    fn from(e: FsError) -> Self {
        cairn_proto::CairnStatus::new(e.code, e.message)
    }
}

/// The state machine's answer to a log entry.
pub type Response = Result<Reply, FsError>;
