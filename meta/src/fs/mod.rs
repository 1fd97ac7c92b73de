//! The metadata state machine: namespace, layouts, volumes, sessions,
//! chunkservers and the chain table.
//!
//! [`FsState`] applies Raft log entries ([`Command`]s) deterministically:
//! inode numbers, object ids, session ids and node ids come from counters
//! in the state; times come from the command (stamped by the leader). Each
//! entry is one atomic batch together with the applied log id (see
//! [`store`]), so the state is always exactly "every entry up to
//! `last_applied`".
//!
//! Retries: a command carrying (client id, seq) of a live session is
//! answered from the reply cache when that seq was already applied
//! (Ongaro's thesis §6.3); replies below the client's `ack_below` are
//! forgotten, and a seq below the highest `ack_below` the client ever sent
//! is refused as stale — also a late copy of a request that still carries
//! its own, older `ack_below` (a copy delayed past its retry's answer
//! must not run a second time once that answer was forgotten: a second
//! truncate would empty a file written since). Read-only queries
//! live in [`read`]; operations are split by concept into the sibling
//! modules.

mod chains;
pub mod compression;
mod keys;
pub mod locks;
mod namespace;
pub mod read;
pub mod restore;
mod session;
pub mod snapshots;
pub mod store;
mod types;

use std::sync::Arc;

use cairn_proto::ErrorCode;
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use crate::raft::types::{LogId, StoredMembership, TypeConfig};
pub use store::{Kv, MemKv, StoreError, Txn};
pub use types::*;

/// Format version of the state stored in sled and in snapshots.
pub const FORMAT_VERSION: u32 = 1;

/// Inode of the root directory.
pub const ROOT_INO: u64 = 1;

/// Replies cached per client beyond `ack_below` before the oldest are
/// dropped: bounds the cache when a client never acknowledges.
const MAX_CACHED_REPLIES: usize = 1024;

/// Counter names under the `m` prefix.
pub(crate) mod counter {
    pub const NEXT_INO: &str = "next_ino";
    pub const NEXT_OBJECT: &str = "next_object";
    pub const NEXT_SESSION: &str = "next_session";
    pub const NEXT_NODE: &str = "next_node";
    pub const NEXT_CHUNKSERVER: &str = "next_chunkserver";
    pub const NEXT_TARGET: &str = "next_target";
    pub const NEXT_VOLUME: &str = "next_volume";
    pub const CHAINS_VERSION: &str = "chains_version";
    pub const CREATE_CURSOR: &str = "create_cursor";
    pub const NEXT_CHAIN: &str = "next_chain";
    /// The first object id whose writes beyond its recorded size are
    /// tracked (`key::extent`); set by the first create after an upgrade.
    pub const EXTENTS_FROM: &str = "extents_from";
    /// Snapshot seqs, cluster-wide (see [`super::snapshots`]).
    pub const SNAP_SEQ: &str = "snap_seq";
}

/// Facts under the `m` prefix that are not counters.
pub(crate) mod fact {
    pub const CLUSTER_ID: &str = "cluster_id";
    pub const LAST_APPLIED: &str = "last_applied";
    pub const MEMBERSHIP: &str = "membership";
    pub const FORMAT: &str = "format";
}

/// The metadata state machine over a [`Kv`].
pub struct FsState<K: Kv = store::SledKv> {
    kv: K,
    chains_tx: Arc<tokio::sync::watch::Sender<u64>>,
}

/// A snapshot's payload: the format version and every key-value pair.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    format: u32,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

type FsResult<T> = Result<T, OpError>;

/// Why an operation did not apply: a user-visible failure (the command is
/// answered with it and changes nothing) or a store failure (fatal).
#[derive(Debug)]
pub(crate) enum OpError {
    Fs(FsError),
    Store(StoreError),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

impl From<FsError> for OpError {
    fn from(e: FsError) -> Self {
        OpError::Fs(e)
    }
}

/// Returns an `Err(OpError::Fs)` with `code` and a formatted message.
macro_rules! fail {
    ($code:ident, $($arg:tt)*) => {
        return Err($crate::fs::OpError::Fs($crate::fs::FsError::new(
            cairn_proto::ErrorCode::$code,
            format!($($arg)*),
        )))
    };
}
pub(crate) use fail;

impl<K: Kv> FsState<K> {
    /// Opens the state machine over `kv`, checking its format version.
    ///
    /// # Errors
    /// [`StoreError::Format`] when the data is of a newer format.
    pub fn open(kv: K) -> Result<Self, StoreError> {
        kv.recover()?;
        let mut t = Txn::new(&kv);
        match t.get::<u32>(&store::key::meta(fact::FORMAT))? {
            None => {
                t.put(store::key::meta(fact::FORMAT), &FORMAT_VERSION);
                t.commit()?;
            }
            Some(v) if v <= FORMAT_VERSION => {}
            Some(v) => {
                return Err(StoreError::Format(format!(
                    "metadata format {v} is newer than this build understands ({FORMAT_VERSION}); \
                     upgrade cairn-meta"
                )));
            }
        }
        let state = Self {
            kv,
            chains_tx: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let v = state.chains_version()?;
        state.chains_tx.send_replace(v);
        Ok(state)
    }

    /// Returns the underlying store.
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// Returns a receiver that sees the chain-table version change.
    pub fn watch_chains(&self) -> tokio::sync::watch::Receiver<u64> {
        self.chains_tx.subscribe()
    }

    /// Returns the last applied log id and the last applied membership.
    ///
    /// # Errors
    /// A store failure.
    pub fn applied_state(&self) -> Result<(Option<LogId>, StoredMembership), StoreError> {
        let t = Txn::new(&self.kv);
        let last = t.get::<LogId>(&store::key::meta(fact::LAST_APPLIED))?;
        let membership = t
            .get::<StoredMembership>(&store::key::meta(fact::MEMBERSHIP))?
            .unwrap_or_default();
        Ok((last, membership))
    }

    /// Applies one log entry and returns its response.
    ///
    /// A command that fails for a user-visible reason changes nothing but
    /// the applied log id (and the reply cache) and returns the error as
    /// its response.
    ///
    /// # Errors
    /// A store failure; the replica must stop applying.
    pub fn apply(
        &self,
        log_id: &LogId,
        payload: &EntryPayload<TypeConfig>,
    ) -> Result<Response, StoreError> {
        let mut t = Txn::new(&self.kv);
        let response = match payload {
            EntryPayload::Blank => Ok(Reply::Unit),
            EntryPayload::Membership(m) => {
                t.put(
                    store::key::meta(fact::MEMBERSHIP),
                    &StoredMembership::new(Some(*log_id), m.clone()),
                );
                Ok(Reply::Unit)
            }
            EntryPayload::Normal(cmd) => self.apply_command(&mut t, cmd)?,
        };
        t.put(store::key::meta(fact::LAST_APPLIED), log_id);
        // Only the entry's own write changes the chain-table version, so
        // the store is not read for it (two sled reads per entry were 2% of
        // a replica's CPU in a rename profile).
        let chains_key = store::key::meta(counter::CHAINS_VERSION);
        let chains_after = match t.written(&chains_key) {
            Some(Some(bytes)) => Some(store::decode::<u64>(&chains_key, bytes)?),
            _ => None,
        };
        t.commit()?;
        if let Some(v) = chains_after {
            self.chains_tx
                .send_if_modified(|cur| std::mem::replace(cur, v) != v);
        }
        Ok(response)
    }

    /// Runs a command with the reply cache around it.
    fn apply_command(&self, t: &mut Txn<'_, K>, cmd: &Command) -> Result<Response, StoreError> {
        let cached = cmd.client_id != 0 && cmd.seq != 0;
        // The highest `ack_below` the client sent before this command.
        let mut acked = 0;
        if cached {
            if let Some(r) = t.get::<Response>(&store::key::reply(cmd.client_id, cmd.seq))? {
                return Ok(r);
            }
            acked = t
                .get::<u64>(&store::key::acked(cmd.client_id))?
                .unwrap_or(0);
            if cmd.seq < cmd.ack_below.max(acked) {
                return Ok(Err(FsError::new(
                    ErrorCode::StaleSequence,
                    format!(
                        "request {} of client {} was already answered",
                        cmd.seq, cmd.client_id
                    ),
                )));
            }
            if t.get_raw(&store::key::session(cmd.client_id))?.is_none() {
                return Ok(Err(FsError::new(
                    ErrorCode::SessionExpired,
                    format!("session {} is unknown or expired", cmd.client_id),
                )));
            }
        }
        let sp = t.savepoint();
        let response = match self.run_op(t, cmd) {
            Ok(reply) => Ok(reply),
            Err(OpError::Fs(e)) => {
                t.restore(sp);
                Err(e)
            }
            Err(OpError::Store(e)) => return Err(e),
        };
        if cached {
            self.cache_reply(t, cmd, acked, &response)?;
        }
        Ok(response)
    }

    /// Caches `response` to `cmd`, whose client had acknowledged
    /// everything below `acked` before it, and forgets acknowledged ones.
    fn cache_reply(
        &self,
        t: &mut Txn<'_, K>,
        cmd: &Command,
        acked: u64,
        response: &Response,
    ) -> Result<(), StoreError> {
        if acked < cmd.ack_below {
            t.put(store::key::acked(cmd.client_id), &cmd.ack_below);
        }
        let prefix = store::key::reply_prefix(cmd.client_id);
        let old = t.scan(&prefix, None, MAX_CACHED_REPLIES + 1)?;
        let mut kept = old.len();
        for (k, _) in &old {
            let seq = u64::from_be_bytes(k[9..17].try_into().unwrap_or([0; 8]));
            if seq < cmd.ack_below || kept >= MAX_CACHED_REPLIES {
                t.delete(k.clone());
                kept -= 1;
            }
        }
        t.put(store::key::reply(cmd.client_id, cmd.seq), response);
        Ok(())
    }

    fn run_op(&self, t: &mut Txn<'_, K>, cmd: &Command) -> FsResult<Reply> {
        let now = cmd.time_ns;
        match &cmd.op {
            Op::Batch(cmds) => {
                let mut out = Vec::with_capacity(cmds.len());
                for c in cmds {
                    if matches!(c.op, Op::Batch(_)) {
                        out.push(Err(FsError::new(ErrorCode::BadRequest, "nested batch")));
                        continue;
                    }
                    out.push(self.apply_command(t, c).map_err(OpError::Store)?);
                }
                Ok(Reply::Batch(out))
            }
            Op::InitCluster { cluster_id } => namespace::init_cluster(t, cluster_id, now),
            Op::AllocateNodeId { .. } => Ok(Reply::NodeId(next(t, counter::NEXT_NODE, 2)?)),
            Op::Mkdir {
                parent,
                name,
                mode,
                uid,
                gid,
            } => namespace::mkdir(t, *parent, name, *mode, *uid, *gid, None, now),
            Op::Create {
                parent,
                name,
                mode,
                uid,
                gid,
                exclusive,
                open_for_write,
                salt,
            } => {
                let reply = namespace::create(
                    t,
                    namespace::NewFile {
                        parent: *parent,
                        name,
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                        exclusive: *exclusive,
                        salt,
                    },
                    now,
                )?;
                if *open_for_write
                    && cmd.client_id != 0
                    && let Reply::Entry { attr, .. } = &reply
                {
                    session::open(t, cmd.client_id, attr.ino, true)?;
                }
                Ok(reply)
            }
            Op::Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => namespace::symlink(t, *parent, name, target, *uid, *gid, now),
            Op::SetLock {
                ino,
                owner,
                start,
                end,
                kind,
                pid,
            } => locks::set_lock(t, cmd.client_id, *ino, *owner, *start, *end, *kind, *pid),
            Op::Mknod {
                parent,
                name,
                kind,
                mode,
                uid,
                gid,
            } => namespace::mknod(t, *parent, name, *kind, *mode, *uid, *gid, now),
            Op::Link {
                ino,
                new_parent,
                new_name,
            } => namespace::link(t, *ino, *new_parent, new_name, now),
            Op::Unlink {
                parent,
                name,
                held_open,
            } => namespace::unlink(t, *parent, name, cmd.client_id, *held_open, now),
            Op::Rmdir { parent, name } => namespace::rmdir(t, *parent, name, now),
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                noreplace,
                exchange,
            } => namespace::rename(
                t,
                namespace::RenameArgs {
                    parent: *parent,
                    name,
                    new_parent: *new_parent,
                    new_name,
                    noreplace: *noreplace,
                    exchange: *exchange,
                },
                now,
            ),
            Op::SetAttr { ino, attr } => namespace::setattr(t, *ino, attr, now),
            Op::SetXattr {
                ino,
                name,
                value,
                create_only,
                replace_only,
            } => namespace::setxattr(t, *ino, name, value, *create_only, *replace_only, now),
            Op::RemoveXattr { ino, name } => namespace::removexattr(t, *ino, name, now),
            // A plain volume. The service refuses `policy.encrypted` here
            // (that takes a key check: CreateEncryptedVolume); entries of
            // builds that accepted it apply as they did then, as a plain
            // volume (no keys record).
            Op::CreateVolume { name, policy } => namespace::create_volume(t, name, policy, now),
            Op::CreateEncryptedVolume {
                name,
                policy,
                check,
            } => keys::create_volume(t, name, policy, *check, now),
            Op::RotateVolumeKey { name, check } => keys::rotate(t, name, *check),
            Op::SetVolumeQuota {
                name,
                bytes,
                inodes,
            } => namespace::set_volume_quota(t, name, *bytes, *inodes),
            Op::SetDirQuota { ino, bytes, inodes } => {
                namespace::set_dir_quota(t, *ino, *bytes, *inodes)
            }
            Op::CreateVolumeWith {
                name,
                policy,
                check,
                compression: algo,
                unit,
            } => compression::create_volume(t, name, policy, *check, *algo, *unit, now),
            Op::OpenSession { client_name } => session::open_session(t, client_name, now),
            Op::CloseSession { session } => session::close_session(t, *session, now),
            Op::Open { ino, write } => {
                let inode = namespace::inode(t, *ino)?;
                if *write && inode.kind != Kind::File {
                    fail!(IsDir, "inode {ino} is not a regular file");
                }
                if cmd.client_id != 0 {
                    session::open(t, cmd.client_id, *ino, *write)?;
                }
                Ok(Reply::Attr(inode))
            }
            Op::Close { ino, length } => session::close(t, cmd.client_id, *ino, *length, now),
            Op::CloseCounted {
                ino,
                length,
                logical,
                stored,
            } => {
                // Counted first: closing an unlinked file frees its inode.
                compression::count(t, *ino, *logical, *stored)?;
                session::close(t, cmd.client_id, *ino, *length, now)
            }
            Op::ReleaseFiles { inos } => session::release_files(t, cmd.client_id, inos, now),
            Op::MarkExtent { ino, extent } => session::mark_extent(t, *ino, *extent),
            Op::ReportLength {
                ino,
                length,
                truncate_gen,
            } => session::report_length(t, *ino, *length, *truncate_gen, now),
            Op::RegisterChunkserver {
                node_uuid,
                host,
                shard_ports,
                zone,
                targets,
            } => chains::register(t, node_uuid, host, shard_ports, zone, targets),
            Op::SetTargetStates { changes } => chains::set_target_states(t, changes),
            Op::ChainSynced { chain, version } => chains::chain_synced(t, *chain, *version),
            Op::ReplaceTargets { changes } => chains::replace_targets(t, changes),
            Op::AddMember {
                chain,
                target,
                chunkserver,
            } => chains::add_member(t, *chain, *target, *chunkserver),
            Op::SetMaintenance {
                chunkserver,
                until_ns,
                hold,
            } => {
                if *until_ns == 0 {
                    t.delete(store::key::maintenance(*chunkserver));
                } else {
                    t.put(
                        store::key::maintenance(*chunkserver),
                        &Maintenance {
                            until_ns: *until_ns,
                            hold: *hold,
                        },
                    );
                }
                Ok(Reply::Unit)
            }
            Op::CreateSnapshot { volume, name } => snapshots::create(t, volume, name, now),
            Op::DeleteSnapshot { volume, name } => snapshots::delete(t, volume, name),
            Op::MergeSnapshot { volume, seq } => {
                snapshots::merge(t, *volume, *seq, snapshots::MERGE_PER_ENTRY)?;
                Ok(Reply::Unit)
            }
            Op::RestoreSnapshot {
                volume,
                snapshot,
                to,
            } => restore::start(t, volume, snapshot, to, now),
            Op::RestoreStep { volume } => restore::step(t, *volume, restore::STEP_ENTRIES, now),
            Op::CopyUp { ino, discard } => restore::copy_up(t, cmd.client_id, *ino, *discard, now),
            Op::CopyDone { ino } => restore::copy_done(t, cmd.client_id, *ino),
            Op::ForgetGarbage { objects } => {
                for o in objects {
                    t.delete(store::key::garbage(*o));
                    t.delete(store::key::extent(*o));
                }
                Ok(Reply::Unit)
            }
        }
    }

    /// Returns the current chain-table version.
    ///
    /// # Errors
    /// A store failure.
    pub fn chains_version(&self) -> Result<u64, StoreError> {
        Ok(Txn::new(&self.kv)
            .get(&store::key::meta(counter::CHAINS_VERSION))?
            .unwrap_or(0))
    }

    /// Serializes the whole state (including the applied log id and
    /// membership) for a Raft snapshot.
    ///
    /// # Errors
    /// A store failure.
    pub fn export(&self) -> Result<Vec<u8>, StoreError> {
        let data = SnapshotData {
            format: FORMAT_VERSION,
            entries: self.kv.dump()?,
        };
        Ok(store::encode(&data))
    }

    /// Replaces the whole state with a snapshot made by [`Self::export`].
    ///
    /// # Errors
    /// [`StoreError::Decode`] or [`StoreError::Format`] for a bad snapshot;
    /// a store failure.
    pub fn import(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let data: SnapshotData = store::decode(b"snapshot", bytes)?;
        if data.format > FORMAT_VERSION {
            return Err(StoreError::Format(format!(
                "snapshot format {} is newer than this build understands ({FORMAT_VERSION})",
                data.format
            )));
        }
        self.kv.replace_all(data.entries)?;
        let v = self.chains_version()?;
        self.chains_tx.send_replace(v);
        Ok(())
    }
}

/// Returns the next value of counter `name` (starting at `first`).
pub(crate) fn next<K: Kv + ?Sized>(t: &mut Txn<'_, K>, name: &str, first: u64) -> FsResult<u64> {
    let key = store::key::meta(name);
    let v: u64 = t.get(&key)?.unwrap_or(first);
    t.put(key, &(v + 1));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    mod restore;
    mod snapshots;

    use super::*;

    struct Sm {
        fs: FsState<MemKv>,
        index: u64,
    }

    impl Sm {
        fn new() -> Self {
            let mut s = Self {
                fs: FsState::open(MemKv::default()).unwrap(),
                index: 0,
            };
            s.run(Command::internal(
                1,
                Op::InitCluster {
                    cluster_id: "t".into(),
                },
            ))
            .unwrap();
            s
        }

        fn run(&mut self, cmd: Command) -> Response {
            self.index += 1;
            let id = LogId::new(CommittedLeaderId::new(1, 1), self.index);
            self.fs.apply(&id, &EntryPayload::Normal(cmd)).unwrap()
        }

        fn op(&mut self, op: Op) -> Response {
            self.run(Command::internal(self.index as i64 * 10, op))
        }

        fn session(&mut self) -> u64 {
            match self.op(Op::OpenSession {
                client_name: "test".into(),
            }) {
                Ok(Reply::Session(id)) => id,
                r => panic!("{r:?}"),
            }
        }

        fn create(&mut self, name: &str) -> Inode {
            match self.op(Op::Create {
                parent: ROOT_INO,
                name: name.into(),
                mode: 0o644,
                uid: 1,
                gid: 1,
                exclusive: true,
                open_for_write: false,
                salt: vec![],
            }) {
                Ok(Reply::Entry { attr, .. }) => attr,
                r => panic!("{r:?}"),
            }
        }
    }

    fn create_op(name: &str) -> Op {
        Op::Create {
            parent: ROOT_INO,
            name: name.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            open_for_write: false,
            salt: vec![],
        }
    }

    #[test]
    fn retried_create_excl_gets_its_first_answer() {
        let mut sm = Sm::new();
        let sid = sm.session();
        let cmd = Command {
            client_id: sid,
            seq: 1,
            ack_below: 1,
            time_ns: 5,
            op: create_op("ckpt"),
        };
        let first = sm.run(cmd.clone());
        assert!(matches!(first, Ok(Reply::Entry { .. })));
        // The same request again (a retry after a lost reply or failover).
        assert_eq!(sm.run(cmd.clone()), first);
        // A new request for the same name is a real EEXIST.
        let again = Command {
            seq: 2,
            ..cmd.clone()
        };
        assert_eq!(sm.run(again).unwrap_err().code, ErrorCode::Exists);
        // Once acknowledged, the old seq is stale rather than re-applied.
        let late = Command {
            seq: 1,
            ack_below: 3,
            ..cmd
        };
        let stale = Command {
            seq: 3,
            ..late.clone()
        };
        sm.run(stale).unwrap_err();
        assert_eq!(sm.run(late).unwrap_err().code, ErrorCode::StaleSequence);
    }

    /// A late copy of a request (delayed in a queue or the network past
    /// its retry's answer) still carries its own, older `ack_below`. Once
    /// a later request acknowledged it, its cached answer is gone, and the
    /// copy must be refused, not run again: a second truncate would empty
    /// the file written since.
    #[test]
    fn a_late_copy_with_its_old_ack_below_is_not_run_again() {
        let mut sm = Sm::new();
        let sid = sm.session();
        let f = sm.create("f");
        let truncate = Command {
            client_id: sid,
            seq: 1,
            ack_below: 1,
            time_ns: 5,
            op: Op::SetAttr {
                ino: f.ino,
                attr: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
        };
        sm.run(truncate.clone()).unwrap();
        let gen_ = sm.fs.getattr(f.ino).unwrap().truncate_gen;
        let report = Command {
            client_id: sid,
            seq: 2,
            ack_below: 2,
            time_ns: 6,
            op: Op::ReportLength {
                ino: f.ino,
                length: 6,
                truncate_gen: gen_,
            },
        };
        sm.run(report).unwrap();
        assert_eq!(sm.fs.getattr(f.ino).unwrap().size, 6);
        // The late copy of seq 1, as it was first sent.
        assert_eq!(sm.run(truncate).unwrap_err().code, ErrorCode::StaleSequence);
        assert_eq!(sm.fs.getattr(f.ino).unwrap().size, 6, "ran again");
        // The floor is the session's: a new request still runs.
        let next = Command {
            client_id: sid,
            seq: 3,
            ack_below: 3,
            time_ns: 7,
            op: create_op("g"),
        };
        sm.run(next).unwrap();
    }

    #[test]
    fn unknown_session_is_refused() {
        let mut sm = Sm::new();
        let cmd = Command {
            client_id: 99,
            seq: 1,
            ack_below: 0,
            time_ns: 5,
            op: create_op("x"),
        };
        assert_eq!(sm.run(cmd).unwrap_err().code, ErrorCode::SessionExpired);
        assert_eq!(
            sm.fs.lookup(ROOT_INO, "x").unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn unlinked_open_file_lives_until_close() {
        let mut sm = Sm::new();
        let sid = sm.session();
        let f = sm.create("data");
        sm.run(Command {
            client_id: sid,
            seq: 1,
            ack_below: 0,
            time_ns: 1,
            op: Op::Open {
                ino: f.ino,
                write: true,
            },
        })
        .unwrap();
        let r = sm.op(Op::Unlink {
            parent: ROOT_INO,
            name: "data".into(),
            held_open: false,
        });
        assert!(matches!(r, Ok(Reply::Removed { freed: true, .. })));
        // Name gone, inode alive, data not garbage yet.
        assert!(sm.fs.lookup(ROOT_INO, "data").is_err());
        assert_eq!(sm.fs.getattr(f.ino).unwrap().nlink, 0);
        assert!(sm.fs.garbage(None, usize::MAX).unwrap().is_empty());
        // The writer's close with its length settles, then frees.
        sm.run(Command {
            client_id: sid,
            seq: 2,
            ack_below: 2,
            time_ns: 2,
            op: Op::Close {
                ino: f.ino,
                length: Some((100, 0)),
            },
        })
        .unwrap();
        assert_eq!(sm.fs.getattr(f.ino).unwrap_err().code, ErrorCode::NotFound);
        let g = sm.fs.garbage(None, usize::MAX).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].size, 100);
        // The collector removed its chunks: forgotten (and again: no-op).
        for _ in 0..2 {
            sm.op(Op::ForgetGarbage {
                objects: vec![g[0].layout.object_id],
            })
            .unwrap();
            assert!(sm.fs.garbage(None, usize::MAX).unwrap().is_empty());
        }
    }

    #[test]
    fn special_files_are_metadata_only_and_keep_their_device_number() {
        let mut sm = Sm::new();
        let mknod = |sm: &mut Sm, name: &str, kind: Kind| {
            sm.op(Op::Mknod {
                parent: ROOT_INO,
                name: name.into(),
                kind,
                mode: 0o4640,
                uid: 7,
                gid: 8,
            })
        };
        let dev = (8 << 8) | 1;
        for (name, kind) in [
            ("fifo", Kind::Fifo),
            ("sock", Kind::Socket),
            ("tty", Kind::CharDevice(dev)),
            ("sda1", Kind::BlockDevice(dev)),
        ] {
            let attr = entry_attr(mknod(&mut sm, name, kind));
            assert_eq!(
                (attr.kind, attr.mode, attr.uid, attr.gid),
                (kind, 0o4640, 7, 8)
            );
            assert_eq!((attr.size, attr.nlink, attr.layout.is_none()), (0, 1, true));
            assert_eq!(
                sm.fs.lookup(ROOT_INO, name).unwrap().kind.rdev(),
                kind.rdev()
            );
            assert_eq!(
                mknod(&mut sm, name, kind).unwrap_err().code,
                ErrorCode::Exists
            );
        }
        let (listed, _) = sm.fs.readdir(ROOT_INO, b"", 100, false).unwrap();
        assert!(
            listed
                .iter()
                .any(|e| e.name == "tty" && e.kind == Kind::CharDevice(dev))
        );
        // Not a way to make files, directories or links.
        for kind in [Kind::File, Kind::Dir, Kind::Symlink] {
            assert_eq!(
                mknod(&mut sm, "x", kind).unwrap_err().code,
                ErrorCode::Invalid
            );
        }
        // Links, renames and unlinks as any non-directory; never truncated.
        let tty = sm.fs.lookup(ROOT_INO, "tty").unwrap();
        sm.op(Op::Link {
            ino: tty.ino,
            new_parent: ROOT_INO,
            new_name: "tty2".into(),
        })
        .unwrap();
        sm.op(Op::Rename {
            parent: ROOT_INO,
            name: "tty2".into(),
            new_parent: ROOT_INO,
            new_name: "console".into(),
            noreplace: false,
            exchange: false,
        })
        .unwrap();
        let console = sm.fs.lookup(ROOT_INO, "console").unwrap();
        assert_eq!(
            (console.ino, console.nlink, console.kind),
            (tty.ino, 2, tty.kind)
        );
        let truncate = Op::SetAttr {
            ino: tty.ino,
            attr: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        };
        assert_eq!(sm.op(truncate).unwrap_err().code, ErrorCode::Invalid);
        for name in ["tty", "console", "fifo", "sock", "sda1"] {
            sm.op(Op::Unlink {
                parent: ROOT_INO,
                name: name.into(),
                held_open: false,
            })
            .unwrap();
        }
        assert_eq!(
            sm.fs.getattr(tty.ino).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert!(sm.fs.garbage(None, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn locks_conflict_across_sessions_and_go_with_their_session() {
        use locks::LockKind::{Read, Unlock, Write};
        let mut sm = Sm::new();
        let f = sm.create("db");
        let (a, b) = (sm.session(), sm.session());
        let mut seq = 0;
        let mut lock = |sm: &mut Sm, sid: u64, owner: u64, range: (u64, u64), kind| {
            seq += 1;
            let cmd = Command {
                client_id: sid,
                seq,
                ack_below: 0,
                time_ns: 1,
                op: Op::SetLock {
                    ino: f.ino,
                    owner,
                    start: range.0,
                    end: range.1,
                    kind,
                    pid: sid as u32,
                },
            };
            match sm.run(cmd) {
                Ok(Reply::Lock(held)) => held.map(|h| (h.session, h.owner, h.range.start)),
                r => panic!("{r:?}"),
            }
        };
        assert_eq!(lock(&mut sm, a, 1, (0, 99), Read), None);
        // Readers share; a writer waits for them, on overlapping bytes only.
        assert_eq!(lock(&mut sm, b, 1, (50, 60), Read), None);
        assert_eq!(lock(&mut sm, b, 1, (50, 60), Write), Some((a, 1, 0)));
        assert_eq!(lock(&mut sm, b, 1, (100, u64::MAX), Write), None);
        // Another owner of the same session conflicts too (fcntl and flock
        // owners are processes and open files, not machines).
        assert_eq!(lock(&mut sm, a, 2, (200, 200), Read), Some((b, 1, 100)));
        assert_eq!(
            sm.fs
                .get_lock(f.ino, a, 2, (0, 10), Write)
                .unwrap()
                .map(|h| h.session),
            Some(a)
        );
        assert_eq!(sm.fs.get_lock(f.ino, a, 1, (0, 10), Write).unwrap(), None);
        // Unlocking frees the bytes for the waiter.
        assert_eq!(lock(&mut sm, a, 1, (0, u64::MAX), Unlock), None);
        assert_eq!(lock(&mut sm, b, 1, (50, 60), Write), None);
        assert_eq!(lock(&mut sm, a, 1, (0, 0), Write), None);
        // A closed session's locks go with it.
        sm.op(Op::CloseSession { session: b }).unwrap();
        assert_eq!(lock(&mut sm, a, 1, (0, u64::MAX), Write), None);
        assert_eq!(
            sm.fs
                .get_lock(f.ino, 99, 1, (5, 5), Read)
                .unwrap()
                .map(|h| h.session),
            Some(a)
        );
        // Two owners of one session: when one unlocks, the other's lock is
        // still the session's, and closing the session drops it.
        let c = sm.session();
        assert_eq!(lock(&mut sm, a, 1, (0, u64::MAX), Unlock), None);
        assert_eq!(lock(&mut sm, c, 1, (0, 9), Write), None);
        assert_eq!(lock(&mut sm, c, 2, (10, 19), Write), None);
        assert_eq!(lock(&mut sm, c, 1, (0, u64::MAX), Unlock), None);
        assert_eq!(lock(&mut sm, a, 1, (15, 15), Read), Some((c, 2, 10)));
        sm.op(Op::CloseSession { session: c }).unwrap();
        assert_eq!(lock(&mut sm, a, 1, (0, u64::MAX), Write), None);
        // Without a session, or with a bad range, nothing is locked.
        let bad = |sm: &mut Sm, client_id: u64, start: u64| {
            sm.run(Command {
                client_id,
                seq: 1_000,
                ack_below: 0,
                time_ns: 1,
                op: Op::SetLock {
                    ino: f.ino,
                    owner: 1,
                    start,
                    end: 5,
                    kind: Write,
                    pid: 1,
                },
            })
            .unwrap_err()
            .code
        };
        assert_eq!(bad(&mut sm, 0, 0), ErrorCode::BadRequest);
        assert_eq!(bad(&mut sm, a, 6), ErrorCode::Invalid);
    }

    #[test]
    fn garbage_extent_covers_what_writers_sent_and_only_that() {
        let mut sm = Sm::new();
        let unlink = |sm: &mut Sm, name: &str| {
            sm.op(Op::Unlink {
                parent: ROOT_INO,
                name: name.into(),
                held_open: false,
            })
            .unwrap();
        };
        let extent_of = |sm: &Sm, ino: u64| {
            let g = sm.fs.garbage(None, usize::MAX).unwrap();
            let g = g.iter().find(|g| g.layout.object_id == ino).cloned();
            let g = g.expect("the file is garbage");
            sm.fs.garbage_extent(&g).unwrap()
        };
        // Never written: nothing to remove.
        let empty = sm.create("empty");
        let empty_obj = empty.layout.clone().unwrap().object_id;
        unlink(&mut sm, "empty");
        assert_eq!(extent_of(&sm, empty_obj), Some(0));

        // Written and reported: its size; a failed write beyond: further; a
        // mark below the size changes nothing.
        let f = sm.create("failed");
        let obj = f.layout.clone().unwrap().object_id;
        sm.op(Op::ReportLength {
            ino: f.ino,
            length: 100,
            truncate_gen: 0,
        })
        .unwrap();
        sm.op(Op::MarkExtent {
            ino: f.ino,
            extent: 5000,
        })
        .unwrap();
        sm.op(Op::MarkExtent {
            ino: f.ino,
            extent: 50,
        })
        .unwrap();
        unlink(&mut sm, "failed");
        assert_eq!(extent_of(&sm, obj), Some(5000));
        // Forgetting the garbage forgets the extent.
        sm.op(Op::ForgetGarbage { objects: vec![obj] }).unwrap();
        let g = Garbage {
            layout: f.layout.clone().unwrap(),
            size: 100,
            since_ns: 0,
        };
        assert_eq!(sm.fs.garbage_extent(&g).unwrap(), Some(100));

        // A writer whose session ended with the file open: unknown.
        let sid = sm.session();
        let mut op = create_op("orphaned");
        if let Op::Create { open_for_write, .. } = &mut op {
            *open_for_write = true;
        }
        let w = match sm.run(Command {
            client_id: sid,
            seq: 1,
            ack_below: 0,
            time_ns: 1,
            op,
        }) {
            Ok(Reply::Entry { attr, .. }) => attr,
            r => panic!("{r:?}"),
        };
        sm.op(Op::CloseSession { session: sid }).unwrap();
        unlink(&mut sm, "orphaned");
        assert_eq!(extent_of(&sm, w.layout.unwrap().object_id), None);
    }

    #[test]
    fn session_close_releases_held_files() {
        let mut sm = Sm::new();
        let sid = sm.session();
        let f = sm.create("tmp");
        sm.run(Command {
            client_id: sid,
            seq: 1,
            ack_below: 0,
            time_ns: 1,
            op: Op::Unlink {
                parent: ROOT_INO,
                name: "tmp".into(),
                held_open: true,
            },
        })
        .unwrap();
        assert!(sm.fs.getattr(f.ino).is_ok());
        sm.op(Op::CloseSession { session: sid }).unwrap();
        assert!(sm.fs.getattr(f.ino).is_err());
        assert!(sm.fs.sessions().unwrap().is_empty());
    }

    #[test]
    fn released_files_leave_the_session_and_unlinked_ones_are_freed() {
        let mut sm = Sm::new();
        let sid = sm.session();
        let mut seq = 0;
        let mut as_client = |sm: &mut Sm, op: Op| {
            seq += 1;
            sm.run(Command {
                client_id: sid,
                seq,
                ack_below: 0,
                time_ns: 1,
                op,
            })
        };
        let mut opened = Vec::new();
        for name in ["kept", "gone"] {
            let mut op = create_op(name);
            if let Op::Create { open_for_write, .. } = &mut op {
                *open_for_write = true;
            }
            match as_client(&mut sm, op) {
                Ok(Reply::Entry { attr, .. }) => opened.push(attr.ino),
                r => panic!("{r:?}"),
            }
        }
        // Unlinked while open for write: its data outlives the unlink.
        as_client(
            &mut sm,
            Op::Unlink {
                parent: ROOT_INO,
                name: "gone".into(),
                held_open: false,
            },
        )
        .unwrap();
        assert!(sm.fs.getattr(opened[1]).is_ok());
        let stranger = sm.create("never-opened").ino;
        let r = as_client(
            &mut sm,
            Op::ReleaseFiles {
                inos: vec![opened[0], opened[1], stranger],
            },
        );
        assert_eq!(r, Ok(Reply::Unit));
        let s = &sm.fs.sessions().unwrap()[0];
        assert!(s.open_write.is_empty() && s.held.is_empty(), "{s:?}");
        assert!(sm.fs.getattr(opened[0]).is_ok(), "a linked file stays");
        assert!(
            sm.fs.getattr(opened[1]).is_err(),
            "the unlinked one is freed"
        );
        assert!(sm.fs.getattr(stranger).is_ok());
    }

    #[test]
    fn stale_length_reports_are_dropped() {
        let mut sm = Sm::new();
        let f = sm.create("ck");
        let report = |sm: &mut Sm, length: u64, truncate_gen: u64| {
            sm.op(Op::ReportLength {
                ino: f.ino,
                length,
                truncate_gen,
            })
            .unwrap();
        };
        report(&mut sm, 1000, 0);
        sm.op(Op::SetAttr {
            ino: f.ino,
            attr: SetAttr {
                size: Some(10),
                ..SetAttr::default()
            },
        })
        .unwrap();
        // An old writer (generation 0) reports again: ignored.
        report(&mut sm, 1000, 0);
        let a = sm.fs.getattr(f.ino).unwrap();
        assert_eq!((a.size, a.truncate_gen), (10, 1));
        report(&mut sm, 20, 1);
        let grown = sm.fs.getattr(f.ino).unwrap();
        assert_eq!(grown.size, 20);
        // An overwrite that leaves the length as it was still moves mtime
        // and the version: other clients' caches must drop the old bytes.
        report(&mut sm, 20, 1);
        let a = sm.fs.getattr(f.ino).unwrap();
        assert_eq!(a.size, 20);
        assert!(a.version > grown.version && a.mtime > grown.mtime, "{a:?}");
    }

    #[test]
    fn chunkservers_build_balanced_chains_and_layouts_use_them() {
        let mut sm = Sm::new();
        for n in 0..4 {
            let r = sm.op(Op::RegisterChunkserver {
                node_uuid: format!("cs{n}"),
                host: "127.0.0.1".into(),
                shard_ports: vec![9000 + n],
                zone: String::new(),
                targets: vec![TargetSpec {
                    uuid: format!("t{n}"),
                    capacity: 1 << 30,
                }],
            });
            assert!(matches!(r, Ok(Reply::Chunkserver { .. })), "{r:?}");
        }
        let tables = sm.fs.chain_tables().unwrap();
        let r3 = &tables.iter().find(|(r, _)| *r == 3).unwrap().1;
        assert_eq!(r3.len(), 4);
        let v = sm.fs.chains_version().unwrap();
        let watch = sm.fs.watch_chains();
        assert_eq!(*watch.borrow(), v, "watchers see the applied version");
        // Re-registering unchanged changes nothing.
        sm.op(Op::RegisterChunkserver {
            node_uuid: "cs0".into(),
            host: "127.0.0.1".into(),
            shard_ports: vec![9000],
            zone: String::new(),
            targets: vec![TargetSpec {
                uuid: "t0".into(),
                capacity: 1 << 30,
            }],
        })
        .unwrap();
        assert_eq!(sm.fs.chains_version().unwrap(), v);
        let a = sm.create("a");
        let b = sm.create("b");
        let (la, lb) = (a.layout.unwrap(), b.layout.unwrap());
        assert_eq!(la.chains.len(), 4);
        assert_ne!(la.chains[0], lb.chains[0], "per-file offset spreads files");
        assert_ne!(la.object_id, lb.object_id);
        // Offline: every chain keeps at least one serving target.
        sm.op(Op::SetTargetStates {
            changes: vec![(1, TargetState::Offline), (2, TargetState::Offline)],
        })
        .unwrap();
        let mut offline = 0;
        for (_, chains) in sm.fs.chain_tables().unwrap() {
            for c in chains {
                assert!(
                    c.members.iter().any(|m| m.state == TargetState::Serving),
                    "{c:?}"
                );
                offline += c
                    .members
                    .iter()
                    .filter(|m| m.state == TargetState::Offline)
                    .count();
            }
        }
        // Each of the two targets is in 1 chain of r=2 and 3 of r=3 (its
        // single-replica chains keep it serving).
        assert!(offline >= 6, "{offline}");
        assert!(sm.fs.chains_version().unwrap() > v);
        assert!(watch.has_changed().unwrap());
        assert_eq!(*watch.borrow(), sm.fs.chains_version().unwrap());
        // Back as syncing: at the tail of every chain, so every head is a
        // serving member that saw every write.
        sm.op(Op::SetTargetStates {
            changes: vec![(1, TargetState::Syncing), (2, TargetState::Syncing)],
        })
        .unwrap();
        for (_, chains) in sm.fs.chain_tables().unwrap() {
            for c in chains {
                let first_syncing = c
                    .members
                    .iter()
                    .position(|m| m.state == TargetState::Syncing)
                    .unwrap_or(c.members.len());
                assert!(
                    c.members[first_syncing..]
                        .iter()
                        .all(|m| m.state == TargetState::Syncing),
                    "a syncing member ahead of a serving one: {c:?}"
                );
                assert_eq!(c.members[0].state, TargetState::Serving, "{c:?}");
            }
        }
    }

    #[test]
    fn batch_applies_each_command_with_its_own_result() {
        let mut sm = Sm::new();
        let sid = sm.session();
        let c = |seq, name: &str| Command {
            client_id: sid,
            seq,
            ack_below: 0,
            time_ns: 7,
            op: create_op(name),
        };
        let batch = Command::internal(7, Op::Batch(vec![c(1, "a"), c(2, "a"), c(3, "b")]));
        let Ok(Reply::Batch(rs)) = sm.run(batch.clone()) else {
            panic!("not a batch reply");
        };
        assert!(rs[0].is_ok());
        assert_eq!(rs[1].as_ref().unwrap_err().code, ErrorCode::Exists);
        assert!(rs[2].is_ok(), "a failed command rolls back only itself");
        assert!(sm.fs.lookup(ROOT_INO, "a").is_ok() && sm.fs.lookup(ROOT_INO, "b").is_ok());
        // Retried one by one after a failover: the first answers.
        assert_eq!(sm.run(c(1, "a")), rs[0]);
        assert_eq!(sm.run(c(3, "b")), rs[2]);
        let nested = Command::internal(7, Op::Batch(vec![batch]));
        let Ok(Reply::Batch(rs)) = sm.run(nested) else {
            panic!("not a batch reply");
        };
        assert_eq!(rs[0].as_ref().unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut sm = Sm::new();
        sm.create("x");
        let data = sm.fs.export().unwrap();
        let other = FsState::open(MemKv::default()).unwrap();
        other.import(&data).unwrap();
        assert_eq!(
            other.lookup(ROOT_INO, "x").unwrap().ino,
            sm.fs.lookup(ROOT_INO, "x").unwrap().ino
        );
        assert_eq!(
            other.applied_state().unwrap().0,
            sm.fs.applied_state().unwrap().0
        );
        assert!(other.import(b"garbage").is_err());
    }

    fn create_in(sm: &mut Sm, parent: u64, name: &str, salt: &[u8]) -> Response {
        let mut op = create_op(name);
        if let Op::Create {
            parent: p, salt: s, ..
        } = &mut op
        {
            *p = parent;
            *s = salt.to_vec();
        }
        sm.op(op)
    }

    fn entry_attr(r: Response) -> Inode {
        match r {
            Ok(Reply::Entry { attr, .. }) => attr,
            r => panic!("{r:?}"),
        }
    }

    fn encrypted_volume(sm: &mut Sm, name: &str, check: [u8; KEY_CHECK_LEN]) -> Volume {
        match sm.op(Op::CreateEncryptedVolume {
            name: name.into(),
            policy: VolumePolicy::default(),
            check,
        }) {
            Ok(Reply::EncryptedVolume { volume, keys }) => {
                assert_eq!(keys, VolumeKeys::first(check));
                assert!(volume.policy.encrypted);
                volume
            }
            r => panic!("{r:?}"),
        }
    }

    fn plain_volume(sm: &mut Sm, name: &str) -> Volume {
        match sm.op(Op::CreateVolume {
            name: name.into(),
            policy: VolumePolicy::default(),
        }) {
            Ok(Reply::Volume(v)) => v,
            r => panic!("{r:?}"),
        }
    }

    fn rotate(name: &str, check: [u8; KEY_CHECK_LEN]) -> Op {
        Op::RotateVolumeKey {
            name: name.into(),
            check,
        }
    }

    #[test]
    fn only_files_of_encrypted_volumes_keep_a_salt_and_key_version() {
        let mut sm = Sm::new();
        let plain = plain_volume(&mut sm, "plain");
        let sec = encrypted_volume(&mut sm, "sec", [1; 16]);
        let salt = [7u8; SALT_LEN];

        let f = entry_attr(create_in(&mut sm, plain.root_ino, "f", &salt));
        assert_eq!((f.salt.as_slice(), f.key_version), (&[][..], 0));
        let r = entry_attr(create_in(&mut sm, ROOT_INO, "r", &salt));
        assert_eq!((r.salt.as_slice(), r.key_version), (&[][..], 0));

        let e = entry_attr(create_in(&mut sm, sec.root_ino, "e", &salt));
        assert_eq!((e.salt.as_slice(), e.key_version), (&salt[..], 1));
        let stored = sm.fs.getattr(e.ino).unwrap();
        assert_eq!((stored.salt, stored.key_version), (salt.to_vec(), 1));
        // Deeper in the volume too.
        let d = entry_attr(sm.op(Op::Mkdir {
            parent: sec.root_ino,
            name: "d".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }));
        let deep = entry_attr(create_in(&mut sm, d.ino, "deep", &[9; SALT_LEN]));
        assert_eq!((deep.salt, deep.key_version), (vec![9; SALT_LEN], 1));

        // Without the leader's salt a file of an encrypted volume is not
        // created (its contents would be stored as plain text).
        for bad in [&[][..], &[7; 15][..]] {
            let err = create_in(&mut sm, sec.root_ino, "nosalt", bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::Internal, "{err}");
            assert_eq!(
                sm.fs.lookup(sec.root_ino, "nosalt").unwrap_err().code,
                ErrorCode::NotFound
            );
        }

        // An existing file is returned as is (O_CREAT without O_EXCL), and
        // link and rename keep the inode's salt and version.
        let mut again = create_op("e");
        if let Op::Create {
            parent,
            salt: s,
            exclusive,
            ..
        } = &mut again
        {
            *parent = sec.root_ino;
            *s = vec![8; SALT_LEN];
            *exclusive = false;
        }
        assert_eq!(entry_attr(sm.op(again)).salt, salt.to_vec());
        let linked = entry_attr(sm.op(Op::Link {
            ino: e.ino,
            new_parent: d.ino,
            new_name: "e2".into(),
        }));
        assert_eq!((linked.salt.as_slice(), linked.key_version), (&salt[..], 1));
        let moved = match sm.op(Op::Rename {
            parent: sec.root_ino,
            name: "e".into(),
            new_parent: d.ino,
            new_name: "e3".into(),
            noreplace: false,
            exchange: false,
        }) {
            Ok(Reply::Renamed { attr, .. }) => attr,
            r => panic!("{r:?}"),
        };
        assert_eq!((moved.salt.as_slice(), moved.key_version), (&salt[..], 1));

        let keys = sm.fs.volume_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[&sec.id], VolumeKeys::first([1; 16]));
        // What the leader asks before drawing a salt for a create.
        assert!(sm.fs.creates_plain_files(plain.root_ino));
        assert!(sm.fs.creates_plain_files(ROOT_INO));
        assert!(!sm.fs.creates_plain_files(sec.root_ino));
        assert!(!sm.fs.creates_plain_files(d.ino));
        assert!(
            !sm.fs.creates_plain_files(10_000),
            "unknown: not known plain"
        );
    }

    #[test]
    fn rotation_bumps_the_key_version_of_new_files_only() {
        let mut sm = Sm::new();
        let sec = encrypted_volume(&mut sm, "sec", [1; 16]);
        plain_volume(&mut sm, "plain");
        let old = entry_attr(create_in(&mut sm, sec.root_ino, "old", &[3; SALT_LEN]));
        assert_eq!(old.key_version, 1);

        let sid = sm.session();
        let cmd = Command {
            client_id: sid,
            seq: 1,
            ack_below: 1,
            time_ns: 5,
            op: rotate("sec", [2; 16]),
        };
        let first = sm.run(cmd.clone());
        let Ok(Reply::EncryptedVolume { volume, keys }) = &first else {
            panic!("{first:?}");
        };
        assert_eq!(volume.id, sec.id);
        assert_eq!(keys.current, 2);
        assert_eq!(
            keys.checks,
            vec![
                KeyCheck {
                    version: 1,
                    check: [1; 16]
                },
                KeyCheck {
                    version: 2,
                    check: [2; 16]
                }
            ]
        );
        // A retry of the same request is answered, not applied again.
        assert_eq!(sm.run(cmd), first);
        assert_eq!(sm.fs.volume_keys().unwrap()[&sec.id].current, 2);

        let new = entry_attr(create_in(&mut sm, sec.root_ino, "new", &[4; SALT_LEN]));
        assert_eq!(new.key_version, 2);
        assert_eq!(sm.fs.getattr(old.ino).unwrap().key_version, 1);

        // Refused: a key the volume already has, a plain volume, no volume.
        for (check, version) in [([1; 16], 1), ([2; 16], 2)] {
            let e = sm.op(rotate("sec", check)).unwrap_err();
            assert_eq!(e.code, ErrorCode::Invalid);
            let want = format!("that key is already version {version}");
            assert!(e.message.contains(&want), "{e}");
        }
        let e = sm.op(rotate("plain", [5; 16])).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Invalid, "volume plain is not encrypted")
        );
        assert_eq!(
            sm.op(rotate("nope", [5; 16])).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(sm.fs.volume_keys().unwrap()[&sec.id].current, 2);
        let e = sm.op(rotate("sec", [3; 16]));
        assert!(matches!(e, Ok(Reply::EncryptedVolume { ref keys, .. }) if keys.current == 3));
    }

    #[test]
    fn a_removed_volume_takes_its_keys_along() {
        let mut sm = Sm::new();
        encrypted_volume(&mut sm, "sec", [1; 16]);
        sm.op(Op::Rmdir {
            parent: ROOT_INO,
            name: "sec".into(),
        })
        .unwrap();
        assert!(sm.fs.volume_keys().unwrap().is_empty());
        // A plain volume of the same name is plain.
        let v = plain_volume(&mut sm, "sec");
        let f = entry_attr(create_in(&mut sm, v.root_ino, "f", &[1; SALT_LEN]));
        assert!(f.salt.is_empty());
    }

    fn create_with(
        name: &str,
        check: Option<[u8; KEY_CHECK_LEN]>,
        algo: u8,
        unit: u32,
        chunk_size: u64,
    ) -> Op {
        Op::CreateVolumeWith {
            name: name.into(),
            policy: VolumePolicy {
                chunk_size,
                ..VolumePolicy::default()
            },
            check,
            compression: algo,
            unit,
        }
    }

    fn compressed_volume(sm: &mut Sm, name: &str, algo: u8, unit: u32) -> Volume {
        match sm.op(create_with(name, None, algo, unit, 64 << 20)) {
            Ok(Reply::VolumeWith {
                volume,
                keys: None,
                compression: Some(c),
            }) => {
                assert_eq!((c.algo, c.logical, c.stored), (algo, 0, 0));
                volume
            }
            r => panic!("{r:?}"),
        }
    }

    /// A close without a length that counts compressed bytes.
    fn count(ino: u64, logical: u64, stored: u64) -> Op {
        Op::CloseCounted {
            ino,
            length: None,
            logical,
            stored,
        }
    }

    #[test]
    fn compressed_volumes_are_made_with_their_record_in_one_entry() {
        let mut sm = Sm::new();
        // lz4, the unit defaulted.
        let lz = compressed_volume(&mut sm, "lz", compression::LZ4, 0);
        assert!(!lz.policy.encrypted);
        let c = sm.fs.compression_of(lz.id).unwrap().unwrap();
        assert_eq!(c, VolumeCompression::new(compression::LZ4, 64 << 10));
        assert!(sm.fs.volume_keys().unwrap().is_empty());

        // zstd and encryption in the same entry: the volume, its key and
        // its compression appear together.
        let index = sm.index;
        let r = sm.op(create_with(
            "both",
            Some([4; 16]),
            compression::ZSTD,
            1 << 20,
            1 << 20,
        ));
        assert_eq!(sm.index, index + 1, "one log entry");
        let Ok(Reply::VolumeWith {
            volume,
            keys: Some(keys),
            compression: Some(c),
        }) = r
        else {
            panic!("{r:?}");
        };
        assert!(volume.policy.encrypted);
        assert_eq!(keys, VolumeKeys::first([4; 16]));
        assert_eq!(c, VolumeCompression::new(compression::ZSTD, 1 << 20));
        assert_eq!(sm.fs.volume_keys().unwrap()[&volume.id], keys);
        let all = sm.fs.volume_compression().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[&volume.id], c);
        // Files of it are sealed as in any encrypted volume.
        let f = entry_attr(create_in(&mut sm, volume.root_ino, "f", &[2; SALT_LEN]));
        assert_eq!(f.key_version, 1);

        // NONE with no unit is an uncompressed volume, even through this op;
        // `encrypted` follows the check, not the flag.
        let r = sm.op(Op::CreateVolumeWith {
            name: "neither".into(),
            policy: VolumePolicy {
                encrypted: true,
                ..VolumePolicy::default()
            },
            check: None,
            compression: compression::NONE,
            unit: 0,
        });
        let Ok(Reply::VolumeWith {
            volume,
            keys: None,
            compression: None,
        }) = r
        else {
            panic!("{r:?}");
        };
        assert!(!volume.policy.encrypted);
        assert_eq!(sm.fs.compression_of(volume.id).unwrap(), None);

        // The old ops make no record.
        let plain = plain_volume(&mut sm, "plain");
        let sec = encrypted_volume(&mut sm, "sec", [1; 16]);
        for v in [&plain, &sec] {
            assert_eq!(sm.fs.compression_of(v.id).unwrap(), None);
        }
        assert_eq!(sm.fs.volume_compression().unwrap().len(), 2);
    }

    #[test]
    fn a_bad_compression_creates_nothing() {
        let mut sm = Sm::new();
        let chunk = 64 << 20;
        let cases = [
            (9, 0, chunk, "volume v: unknown compression 9"),
            (
                compression::NONE,
                64 << 10,
                chunk,
                "volume v: compression_unit needs a compression",
            ),
            (
                compression::LZ4,
                3 << 10,
                chunk,
                "volume v: compression unit 3072 bytes",
            ),
            (compression::LZ4, 8 << 10, chunk, "is not a power of two"),
            (compression::ZSTD, 2 << 20, chunk, "is not a power of two"),
            (compression::LZ4, 96 << 10, chunk, "is not a power of two"),
            (
                compression::LZ4,
                128 << 10,
                64 << 10,
                "larger than its chunk size",
            ),
        ];
        for (check, (algo, unit, chunk_size, want)) in [None, Some([1; 16])]
            .into_iter()
            .flat_map(|c| cases.map(|case| (c, case)))
        {
            let e = sm
                .op(create_with("v", check, algo, unit, chunk_size))
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::Invalid, "{e}");
            assert!(e.message.contains(want), "{e}");
            assert_eq!(
                sm.fs.lookup(ROOT_INO, "v").unwrap_err().code,
                ErrorCode::NotFound
            );
        }
        // A bad policy is refused as CreateVolume refuses it.
        let e = sm
            .op(create_with("v", None, compression::LZ4, 0, 3))
            .unwrap_err();
        assert!(
            e.message.contains("chunk size must be a power of two"),
            "{e}"
        );
        assert!(sm.fs.volumes().unwrap().is_empty());
        assert!(sm.fs.volume_compression().unwrap().is_empty());
        assert!(sm.fs.volume_keys().unwrap().is_empty());
    }

    #[test]
    fn compression_counters_add_up_per_volume() {
        let mut sm = Sm::new();
        let a = compressed_volume(&mut sm, "a", compression::LZ4, 0);
        let b = compressed_volume(&mut sm, "b", compression::ZSTD, 128 << 10);
        let plain = plain_volume(&mut sm, "plain");
        let fa = entry_attr(create_in(&mut sm, a.root_ino, "f", &[]));
        let ga = entry_attr(create_in(&mut sm, a.root_ino, "g", &[]));
        let fb = entry_attr(create_in(&mut sm, b.root_ino, "f", &[]));
        let fp = entry_attr(create_in(&mut sm, plain.root_ino, "f", &[]));
        for op in [
            count(fa.ino, 1 << 20, 300 << 10),
            count(ga.ino, 64 << 10, 64 << 10),
            count(fa.ino, 100, 4096),
            count(fb.ino, 5 << 20, 1 << 20),
            // Not counted: an uncompressed volume.
            count(fp.ino, 1 << 20, 1 << 20),
        ] {
            assert!(matches!(sm.op(op), Ok(Reply::Attr(_))));
        }
        // Nor a close of an unknown inode (refused).
        assert!(sm.op(count(99_999, 1 << 20, 1 << 20)).is_err());
        let all = sm.fs.volume_compression().unwrap();
        assert_eq!(all.len(), 2);
        let (ca, cb) = (all[&a.id], all[&b.id]);
        assert_eq!(
            (ca.logical, ca.stored),
            (
                (1 << 20) + (64 << 10) + 100,
                (300 << 10) + (64 << 10) + 4096
            )
        );
        assert_eq!((cb.logical, cb.stored), (5 << 20, 1 << 20));
        assert_eq!((cb.algo, cb.unit), (compression::ZSTD, 128 << 10));

        // A removed file counts nothing more; its volume keeps what it had.
        sm.op(Op::Unlink {
            parent: a.root_ino,
            name: "g".into(),
            held_open: false,
        })
        .unwrap();
        assert!(sm.op(count(ga.ino, 1, 1)).is_err());
        assert_eq!(sm.fs.compression_of(a.id).unwrap(), Some(ca));
    }

    /// Command `seq` of session `sid`.
    fn session_command(sid: u64, seq: u64, op: Op) -> Command {
        Command {
            client_id: sid,
            seq,
            ack_below: 0,
            time_ns: 1,
            op,
        }
    }

    /// A create of `name` in `parent`, opened for write.
    fn create_for_write(name: &str, parent_ino: u64) -> Op {
        let mut op = create_op(name);
        if let Op::Create {
            parent,
            open_for_write,
            ..
        } = &mut op
        {
            *parent = parent_ino;
            *open_for_write = true;
        }
        op
    }

    #[test]
    fn a_counted_close_counts_once_and_counts_an_unlinked_file() {
        let mut sm = Sm::new();
        let v = compressed_volume(&mut sm, "v", compression::LZ4, 0);
        let sid = sm.session();
        let as_client = |seq: u64, op: Op| session_command(sid, seq, op);
        let f = entry_attr(sm.run(as_client(1, create_for_write("f", v.root_ino))));
        let close = Op::CloseCounted {
            ino: f.ino,
            length: Some((1000, 0)),
            logical: 65_536,
            stored: 8192,
        };
        // A retry after a lost reply: the cached reply, counted once.
        for _ in 0..2 {
            assert!(matches!(
                sm.run(as_client(2, close.clone())),
                Ok(Reply::Attr(_))
            ));
        }
        let c = sm.fs.compression_of(v.id).unwrap().unwrap();
        assert_eq!((c.logical, c.stored), (65_536, 8192));
        assert_eq!(sm.fs.getattr(f.ino).unwrap().size, 1000);
        // An unlinked file still open for write: counted, then freed.
        sm.run(as_client(
            3,
            Op::Open {
                ino: f.ino,
                write: true,
            },
        ))
        .unwrap();
        sm.run(as_client(
            4,
            Op::Unlink {
                parent: v.root_ino,
                name: "f".into(),
                held_open: true,
            },
        ))
        .unwrap();
        sm.run(as_client(
            5,
            Op::CloseCounted {
                ino: f.ino,
                length: None,
                logical: 100,
                stored: 4096,
            },
        ))
        .unwrap();
        let c = sm.fs.compression_of(v.id).unwrap().unwrap();
        assert_eq!((c.logical, c.stored), (65_636, 12_288));
        assert_eq!(sm.fs.getattr(f.ino).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn a_removed_volume_forgets_its_compression() {
        let mut sm = Sm::new();
        let v = compressed_volume(&mut sm, "z", compression::ZSTD, 0);
        let f = entry_attr(create_in(&mut sm, v.root_ino, "f", &[]));
        sm.op(count(f.ino, 10, 4096)).unwrap();
        sm.op(Op::Unlink {
            parent: v.root_ino,
            name: "f".into(),
            held_open: false,
        })
        .unwrap();
        sm.op(Op::Rmdir {
            parent: ROOT_INO,
            name: "z".into(),
        })
        .unwrap();
        assert!(sm.fs.volume_compression().unwrap().is_empty());
        assert_eq!(sm.fs.compression_of(v.id).unwrap(), None);
        // A volume of the same name made the old way is uncompressed.
        let again = plain_volume(&mut sm, "z");
        assert_ne!(again.id, v.id);
        assert!(sm.fs.volume_compression().unwrap().is_empty());
        // And a removed encrypted compressed volume takes both records.
        sm.op(create_with(
            "both",
            Some([1; 16]),
            compression::LZ4,
            0,
            64 << 20,
        ))
        .unwrap();
        sm.op(Op::Rmdir {
            parent: ROOT_INO,
            name: "both".into(),
        })
        .unwrap();
        assert!(sm.fs.volume_compression().unwrap().is_empty());
        assert!(sm.fs.volume_keys().unwrap().is_empty());
    }

    #[test]
    fn new_ops_and_replies_are_appended_after_the_old_ones() {
        // bincode writes a variant as its index (u32 LE): the log and the
        // reply cache of older builds decode only if old indexes hold.
        let index = |bytes: Vec<u8>| u32::from_le_bytes(bytes[..4].try_into().unwrap());
        let rotate = Op::RotateVolumeKey {
            name: "v".into(),
            check: [0; 16],
        };
        assert_eq!(index(store::encode(&rotate)), 29);
        assert_eq!(
            index(store::encode(&create_with("v", None, 1, 0, 1 << 20))),
            30
        );
        assert_eq!(index(store::encode(&count(1, 2, 3))), 31);
        let made = Reply::VolumeWith {
            volume: Volume {
                id: 1,
                name: "v".into(),
                root_ino: 2,
                policy: VolumePolicy::default(),
                snap_seq: 0,
                used_bytes: 0,
                used_inodes: 0,
            },
            keys: None,
            compression: None,
        };
        assert_eq!(index(store::encode(&made)), 11);
        assert_eq!(index(store::encode(&Reply::Batch(vec![]))), 9);
    }

    /// `Volume` and `VolumePolicy` as every build before encrypted volumes
    /// wrote them (bincode: no field names, no defaults).
    #[derive(Serialize)]
    struct PolicyBefore {
        replication: u32,
        chunk_size: u64,
        stripe_width: u32,
        encrypted: bool,
        quota_bytes: u64,
        quota_inodes: u64,
    }

    #[derive(Serialize)]
    struct VolumeBefore {
        id: u64,
        name: String,
        root_ino: u64,
        policy: PolicyBefore,
        snap_seq: u64,
        used_bytes: u64,
        used_inodes: u64,
    }

    #[test]
    fn a_volume_quota_can_be_raised_lowered_and_lifted() {
        let mut sm = Sm::new();
        let Ok(Reply::Volume(v)) = sm.op(Op::CreateVolume {
            name: "q".into(),
            policy: VolumePolicy {
                quota_inodes: 2,
                quota_bytes: 1 << 30,
                ..VolumePolicy::default()
            },
        }) else {
            panic!("no volume")
        };
        // The root counts: one more file fits, the next does not.
        entry_attr(create_in(&mut sm, v.root_ino, "a", &[]));
        let e = create_in(&mut sm, v.root_ino, "b", &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded, "{e:?}");
        let quota = |bytes, inodes| Op::SetVolumeQuota {
            name: "q".into(),
            bytes,
            inodes,
        };
        let Ok(Reply::VolumeWith { volume, .. }) = sm.op(quota(Some(2 << 30), Some(3))) else {
            panic!("no volume reply")
        };
        assert_eq!(
            (volume.policy.quota_bytes, volume.policy.quota_inodes),
            (2 << 30, 3),
            "both raised"
        );
        entry_attr(create_in(&mut sm, v.root_ino, "b", &[]));
        // Inodes only: bytes keep their quota; 0 lifts the limit.
        let Ok(Reply::VolumeWith { volume, .. }) = sm.op(quota(None, Some(0))) else {
            panic!("no volume reply")
        };
        assert_eq!(
            (volume.policy.quota_bytes, volume.policy.quota_inodes),
            (2 << 30, 0)
        );
        for n in 0..5 {
            entry_attr(create_in(&mut sm, v.root_ino, &format!("f{n}"), &[]));
        }
        let listed = sm.fs.volumes().unwrap();
        assert_eq!(listed[0].policy.quota_bytes, 2 << 30, "recorded");
        let e = sm
            .op(Op::SetVolumeQuota {
                name: "none".into(),
                bytes: Some(1),
                inodes: None,
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
    }

    #[test]
    fn a_directory_quota_charges_its_whole_subtree_and_keeps_its_edges() {
        let mut sm = Sm::new();
        let Ok(Reply::Volume(v)) = sm.op(Op::CreateVolume {
            name: "shared".into(),
            policy: VolumePolicy::default(),
        }) else {
            panic!("no volume")
        };
        let mkdir = |sm: &mut Sm, parent: u64, name: &str| {
            entry_attr(sm.op(Op::Mkdir {
                parent,
                name: name.into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            }))
        };
        let quota = |ino, bytes, inodes| Op::SetDirQuota { ino, bytes, inodes };
        let pv = mkdir(&mut sm, v.root_ino, "pvc-1");
        let outside = mkdir(&mut sm, v.root_ino, "other");
        // Where a quota cannot start.
        let e = sm.op(quota(v.root_ino, Some(1), None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid, "a volume's root: {e:?}");
        entry_attr(create_in(&mut sm, outside.ino, "f", &[]));
        let e = sm.op(quota(outside.ino, Some(1), None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotEmpty, "{e:?}");

        let Ok(Reply::DirQuota(q)) = sm.op(quota(pv.ino, Some(1 << 20), Some(3))) else {
            panic!("no quota")
        };
        assert_eq!(
            (q.quota_bytes, q.quota_inodes, q.used_inodes),
            (1 << 20, 3, 0)
        );
        // Three inodes at any depth fit, the fourth does not.
        let sub = mkdir(&mut sm, pv.ino, "sub");
        let a = entry_attr(create_in(&mut sm, pv.ino, "a", &[]));
        let b = entry_attr(create_in(&mut sm, sub.ino, "b", &[]));
        let e = create_in(&mut sm, sub.ino, "c", &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded, "{e:?}");
        let e = sm.op(quota(sub.ino, Some(1), None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid, "quotas do not nest: {e:?}");
        // Bytes: growing a file past the quota is refused, shrinking frees.
        let grow = |ino, size| Op::SetAttr {
            ino,
            attr: SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
        };
        sm.op(grow(a.ino, 1 << 19)).unwrap();
        let e = sm.op(grow(b.ino, (1 << 19) + 1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded, "{e:?}");
        sm.op(grow(b.ino, 1 << 19)).unwrap();
        let used = |sm: &mut Sm| {
            let Ok(Reply::DirQuota(q)) = sm.op(quota(pv.ino, None, None)) else {
                panic!("no quota")
            };
            (q.used_inodes, q.used_bytes)
        };
        assert_eq!(used(&mut sm), (3, 1 << 20));
        let below = sm.fs.dir_quota(b.ino).unwrap().expect("b is under pvc-1");
        assert_eq!((below.ino, below.used_inodes), (pv.ino, 3));
        // Nothing crosses the quota's edge: rename and link out or in are
        // EXDEV (a copy), within it they work.
        let mv = |parent, name: &str, new_parent| Op::Rename {
            parent,
            name: name.into(),
            new_parent,
            new_name: name.into(),
            noreplace: false,
            exchange: false,
        };
        for op in [
            mv(pv.ino, "a", outside.ino),
            mv(outside.ino, "f", sub.ino),
            mv(v.root_ino, "other", pv.ino),
            Op::Link {
                ino: a.ino,
                new_parent: outside.ino,
                new_name: "a2".into(),
            },
        ] {
            let e = sm.op(op).unwrap_err();
            assert_eq!(e.code, ErrorCode::CrossVolume, "{e:?}");
        }
        sm.op(mv(pv.ino, "a", sub.ino)).unwrap();
        // The quota directory itself moves with its contents.
        sm.op(mv(v.root_ino, "pvc-1", outside.ino)).unwrap();
        // Removing gives back inodes and bytes.
        sm.op(Op::Unlink {
            parent: sub.ino,
            name: "a".into(),
            held_open: false,
        })
        .unwrap();
        assert_eq!(used(&mut sm), (2, 1 << 19));
        // Raising the quota lets the refused create in.
        sm.op(quota(pv.ino, None, Some(0))).unwrap();
        entry_attr(create_in(&mut sm, sub.ino, "c", &[]));
        assert_eq!(used(&mut sm), (3, 1 << 19));
        // The volume is charged as well.
        let vol = sm.fs.volumes().unwrap().remove(0);
        assert_eq!(vol.used_bytes, 1 << 19);
        // An emptied quota directory removed takes its quota with it.
        for (parent, name) in [(sub.ino, "b"), (sub.ino, "c")] {
            sm.op(Op::Unlink {
                parent,
                name: name.into(),
                held_open: false,
            })
            .unwrap();
        }
        sm.op(Op::Rmdir {
            parent: pv.ino,
            name: "sub".into(),
        })
        .unwrap();
        assert_eq!(used(&mut sm), (0, 0));
        sm.op(Op::Rmdir {
            parent: outside.ino,
            name: "pvc-1".into(),
        })
        .unwrap();
        assert_eq!(sm.fs.dir_quota(outside.ino).unwrap(), None);
        let f = sm.fs.lookup(outside.ino, "f").unwrap();
        assert_eq!(sm.fs.dir_quota(f.ino).unwrap(), None, "under no quota");
        assert!(sm.fs.dir_quota(pv.ino).is_err(), "gone with its directory");
    }

    #[test]
    fn volumes_recorded_before_encryption_existed_are_plain() {
        let mut sm = Sm::new();
        // Builds before the refusal accepted `encrypted` and stored plain
        // text: such a volume must not turn encrypted now.
        let v = sm.op(Op::CreateVolume {
            name: "old".into(),
            policy: VolumePolicy {
                encrypted: true,
                ..VolumePolicy::default()
            },
        });
        let Ok(Reply::Volume(v)) = v else {
            panic!("{v:?}")
        };
        let before = VolumeBefore {
            id: v.id,
            name: "old".into(),
            root_ino: v.root_ino,
            policy: PolicyBefore {
                replication: 3,
                chunk_size: 64 << 20,
                stripe_width: 8,
                encrypted: true,
                quota_bytes: 0,
                quota_inodes: 0,
            },
            snap_seq: 0,
            used_bytes: 0,
            used_inodes: 1,
        };
        let bytes = store::encode(&before);
        assert_eq!(store::encode(&v), bytes, "the record's encoding changed");
        let mut t = Txn::new(sm.fs.kv());
        t.put_raw(store::key::volume(v.id), bytes);
        t.commit().unwrap();

        let listed = sm.fs.volumes().unwrap();
        assert_eq!(listed, vec![v.clone()]);
        assert!(sm.fs.volume_keys().unwrap().is_empty());
        assert!(sm.fs.creates_plain_files(v.root_ino));
        let f = entry_attr(create_in(&mut sm, v.root_ino, "f", &[1; SALT_LEN]));
        assert_eq!((f.salt.as_slice(), f.key_version), (&[][..], 0));
        let e = sm.op(rotate("old", [1; 16])).unwrap_err();
        assert_eq!(e.message, "volume old is not encrypted");
    }
}
