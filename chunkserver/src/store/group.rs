//! Group commit of one durability step (the data file's `fdatasync`, the
//! metadata store's flush) across the concurrent writers of one shard.
//!
//! A writer that has finished its part (its DMA writes done, or its sled
//! batch applied) takes a ticket, then waits until a sync that *started
//! after* the ticket was taken has completed. At most one sync runs at a
//! time; when it finishes, every ticket issued before it started is done,
//! so one sync covers every writer that was waiting, and the writers that
//! arrived while it ran share the next one.
//!
//! A failed sync poisons the group for good: after a failed `fsync` the
//! kernel may have dropped the dirty pages, and a later `fsync` that
//! succeeds proves nothing (the PostgreSQL "fsyncgate" lesson). The shard
//! must be reopened, which rebuilds its state from what is durable.
//!
//! Single-threaded (`!Send`): it lives in one glommio executor.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every waiter when something changed; a generation counter makes a
/// wake-up that happens before the waiter parks impossible to miss.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Returns a future that completes after the next [`Self::notify_all`].
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            generation: self.generation.get(),
        }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }
}

/// The future of [`Notify::notified`].
#[derive(Debug)]
pub struct Notified<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.notify.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// One group-committed durability step.
#[derive(Debug, Default)]
pub struct GroupSync {
    issued: Cell<u64>,
    done: Cell<u64>,
    running: Cell<bool>,
    poisoned: Cell<bool>,
    syncs: Cell<u64>,
    notify: Notify,
}

/// Resets `running` and wakes the waiters even if the syncing task is
/// dropped mid-sync, so a cancelled leader never wedges the group.
struct RunningGuard<'a>(&'a GroupSync);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
        self.0.notify.notify_all();
    }
}

impl GroupSync {
    /// Returns a ticket for work finished before this call.
    pub fn ticket(&self) -> u64 {
        let t = self.issued.get() + 1;
        self.issued.set(t);
        t
    }

    /// Returns the newest ticket issued so far.
    pub fn issued(&self) -> u64 {
        self.issued.get()
    }

    /// Returns the newest ticket known durable.
    #[cfg(test)]
    pub fn done(&self) -> u64 {
        self.done.get()
    }

    /// Returns how many syncs ran (for tests and metrics).
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }

    /// Returns whether a sync failed.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }

    /// Waits until the work of `ticket` is durable, running `sync` (as the
    /// group's leader) when no sync that covers it is running. Returns the
    /// ticket through which syncs completed.
    ///
    /// # Errors
    /// The sync's error for its leader; [`io::ErrorKind::Other`] for every
    /// waiter once the group is poisoned.
    pub async fn wait<F, Fut>(&self, ticket: u64, sync: F) -> io::Result<u64>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        loop {
            if self.poisoned.get() {
                return Err(io::Error::other(
                    "an earlier sync failed; reopen the target",
                ));
            }
            if self.done.get() >= ticket {
                return Ok(self.done.get());
            }
            if self.running.get() {
                let notified = self.notify.notified();
                notified.await;
                continue;
            }
            self.running.set(true);
            let guard = RunningGuard(self);
            let target = self.issued.get();
            let result = sync().await;
            self.syncs.set(self.syncs.get() + 1);
            match result {
                Ok(()) => self.done.set(self.done.get().max(target)),
                Err(e) => {
                    self.poisoned.set(true);
                    drop(guard);
                    return Err(e);
                }
            }
            drop(guard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn one_sync_covers_every_waiter() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let g = Rc::new(GroupSync::default());
                let mut tasks = Vec::new();
                for _ in 0..16 {
                    let g = g.clone();
                    tasks.push(glommio::spawn_local(async move {
                        let t = g.ticket();
                        g.wait(t, || async {
                            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                            Ok(())
                        })
                        .await
                    }));
                }
                for t in tasks {
                    assert!(t.await.is_ok());
                }
                // The first sync covers the first writer only if it ran
                // before the others took tickets; at most two syncs.
                assert!(g.syncs() <= 2, "{} syncs", g.syncs());
                assert_eq!(g.done(), 16);
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .join()
            .unwrap_or_else(|e| panic!("{e:?}"));
    }

    #[test]
    fn a_failed_sync_poisons_the_group() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let g = GroupSync::default();
                let t = g.ticket();
                let r = g
                    .wait(t, || async { Err(io::Error::other("disk gone")) })
                    .await;
                assert!(r.is_err());
                let t = g.ticket();
                assert!(g.wait(t, || async { Ok(()) }).await.is_err());
                assert!(g.is_poisoned());
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .join()
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
}
