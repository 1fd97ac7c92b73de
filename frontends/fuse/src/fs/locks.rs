//! The file locks this mount took on meta, and when a close drops them.
//!
//! A lock taken through the mount lives on meta, keyed by the kernel's lock
//! owner: for a POSIX lock the process (its files table), for a flock or
//! an OFD lock the open file. The kernel forwards the lock requests but
//! never their end at close, so the mount releases them itself:
//!
//! * a process's close of any descriptor of the file (FLUSH, which names
//!   the process) drops that process's locks, as POSIX says;
//! * the last close of an open file (RELEASE) drops the locks taken
//!   through that open file, its handle: flock and OFD locks.
//!
//! Two races make this more than a set of owners:
//!
//! * **Owners are reused.** A flock or OFD owner is the open file's
//!   address. The kernel does not wait for a RELEASE, so a new open may
//!   get the same address, and take a lock with the same owner, before
//!   the old file's RELEASE is handled. Keyed by owner alone, that late
//!   RELEASE dropped the new open's lock, and another mount took the lock
//!   while its holder was still writing (`fuse_locks` lost appends so).
//!   So each entry remembers the handle its latest lock came through, and
//!   a RELEASE drops only the entries of its own handle.
//! * **Unlocks and locks of one owner cross on the way to meta.** A
//!   RELEASE that took its entry out before the new open's lock arrived
//!   still sends its unlock, and the two requests may reach meta in either
//!   order. A lock of an owner whose unlock is in flight waits for it
//!   ([`LockTable::record`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// An inode and a lock owner.
type Key = (u64, u64);

/// An unlock of one owner's locks on one inode, to send to meta: taken out
/// of the table, it holds later locks of that owner back until it is
/// dropped (after meta answered, or when its task ends otherwise).
#[derive(Debug)]
pub(crate) struct Unlock {
    pub(crate) ino: u64,
    pub(crate) owner: u64,
    /// Closed when the unlock is done: what waiting locks wait for.
    gate: Arc<Semaphore>,
}

impl Drop for Unlock {
    fn drop(&mut self) {
        self.gate.close();
    }
}

/// The mount's locks on meta (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LockTable {
    /// Owners holding locks taken here, with the handle of the latest.
    held: HashMap<Key, u64>,
    /// Unlocks on their way to meta; closed gates are leftovers.
    unlocking: HashMap<Key, Arc<Semaphore>>,
}

impl LockTable {
    /// Records a lock of `owner` on `ino` taken through handle `fh`
    /// (before it is sent: a close racing the grant still releases it).
    /// `Err`: an unlock of that owner is on its way; wait for the gate to
    /// close ([`wait`]) and record again.
    pub(crate) fn record(&mut self, ino: u64, owner: u64, fh: u64) -> Result<(), Arc<Semaphore>> {
        if let Some(gate) = self.unlocking.get(&(ino, owner)) {
            if !gate.is_closed() {
                return Err(gate.clone());
            }
            self.unlocking.remove(&(ino, owner));
        }
        self.held.insert((ino, owner), fh);
        Ok(())
    }

    /// Whether `owner` took a lock on `ino` here.
    pub(crate) fn holds(&self, ino: u64, owner: u64) -> bool {
        self.held.contains_key(&(ino, owner))
    }

    /// Whether a lock on `ino` was taken through handle `fh`.
    pub(crate) fn through(&self, ino: u64, fh: u64) -> bool {
        self.held.iter().any(|(&(i, _), &f)| i == ino && f == fh)
    }

    /// Takes `owner`'s locks on `ino` out (a process closed the file): the
    /// unlock to send, if it took any here.
    pub(crate) fn take_owner(&mut self, ino: u64, owner: u64) -> Option<Unlock> {
        self.held.remove(&(ino, owner))?;
        Some(self.unlocking(ino, owner))
    }

    /// Takes out the locks taken on `ino` through handle `fh` (its open
    /// file is gone): the unlocks to send.
    pub(crate) fn take_handle(&mut self, ino: u64, fh: u64) -> Vec<Unlock> {
        let mut owners = Vec::new();
        self.held.retain(|&(i, o), f| {
            let taken = i == ino && *f == fh;
            if taken {
                owners.push(o);
            }
            !taken
        });
        owners.into_iter().map(|o| self.unlocking(ino, o)).collect()
    }

    fn unlocking(&mut self, ino: u64, owner: u64) -> Unlock {
        if self.unlocking.len() > 64 {
            self.unlocking.retain(|_, g| !g.is_closed());
        }
        let gate = Arc::new(Semaphore::new(0));
        self.unlocking.insert((ino, owner), gate.clone());
        Unlock { ino, owner, gate }
    }
}

/// Waits until the unlock behind `gate` is done.
pub(crate) async fn wait(gate: Arc<Semaphore>) {
    // No permit is ever added: acquiring returns when the gate closes.
    let _ = gate.acquire().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_drops_only_the_locks_taken_through_its_handle() {
        let mut t = LockTable::default();
        // A flock through handle 1 (owner 7: the open file's address).
        t.record(5, 7, 1).unwrap();
        assert!(t.through(5, 1));
        // The file is closed; a new open, handle 2, gets the same address
        // and locks before the old RELEASE is handled.
        t.record(5, 7, 2).unwrap();
        assert!(t.take_handle(5, 1).is_empty(), "the late release");
        assert!(t.holds(5, 7), "the new open's lock stays");
        let u = t.take_handle(5, 2);
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].ino, u[0].owner), (5, 7));
        assert!(!t.holds(5, 7));
        // Other inodes and handles are left alone.
        t.record(5, 8, 3).unwrap();
        t.record(6, 9, 3).unwrap();
        assert_eq!(t.take_handle(6, 3).len(), 1);
        assert!(t.holds(5, 8));
    }

    #[test]
    fn a_process_close_drops_its_locks_whatever_the_handle() {
        let mut t = LockTable::default();
        t.record(5, 7, 1).unwrap();
        assert!(t.take_owner(5, 8).is_none());
        let u = t.take_owner(5, 7).expect("held");
        assert_eq!((u.ino, u.owner), (5, 7));
        assert!(!t.through(5, 1));
    }

    #[tokio::test]
    async fn a_lock_waits_for_its_owners_unlock_in_flight() {
        let mut t = LockTable::default();
        t.record(5, 7, 1).unwrap();
        let u = t.take_handle(5, 1).pop().expect("held");
        let gate = t.record(5, 7, 2).expect_err("the unlock is in flight");
        // Another owner, or another inode, does not wait.
        t.record(5, 8, 2).unwrap();
        t.record(6, 7, 2).unwrap();
        let waiter = tokio::spawn(wait(gate));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(u);
        waiter.await.unwrap();
        t.record(5, 7, 2).unwrap();
        assert!(t.through(5, 2));
    }
}
