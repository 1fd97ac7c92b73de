//! Requests started on the FUSE thread that received them, finished on
//! the runtime.
//!
//! A kernel request that needs the cluster used to become a tokio task at
//! once: the FUSE thread queued it and a runtime worker, usually asleep on
//! this 2-core class of machine, was woken to run it. That wake-up (50–60
//! µs of run delay each, `perf sched latency`) sat in series before the
//! request even left for meta or a chunkserver.
//!
//! [`start`] instead polls the request's future once on the calling
//! thread, inside the runtime's context: it runs until it first waits,
//! which for a read or a mutation is after its request is on the socket
//! (the data and meta clients write an idle connection's request from the
//! caller). Only then does the future become a task, and not on this
//! thread: its waker holds it, and the first wake-up (the connection's
//! reader task delivering the reply, a timer) spawns it from the thread
//! that woke it, a runtime worker already running, so it continues there
//! without another thread being woken. A request that finishes in that
//! first poll costs no task at all.
//!
//! What the first poll may not do is block the FUSE thread on something
//! only a FUSE thread can finish; the futures run here are the ones that
//! ran as tasks before, which only await (they never block), and the one
//! kernel notification they may send synchronously (an attribute
//! invalidation at open) is sent from FUSE threads already.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Wake, Waker};

use tokio::runtime::Handle;

/// A request's future once it waits.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a started request is.
enum State {
    /// In its first poll on the starting thread.
    Polling,
    /// Woken during its first poll: the starting thread spawns it.
    WokenWhilePolling,
    /// Waiting, held here until its first wake-up.
    Parked(Task),
    /// Spawned (or finished): later wake-ups go to the task's own waker.
    Gone,
}

/// The waker of a started request until it becomes a task.
struct Resume {
    state: Mutex<State>,
    rt: Handle,
}

impl Wake for Resume {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *s, State::Gone) {
            State::Polling => *s = State::WokenWhilePolling,
            State::Parked(task) => {
                drop(s);
                self.rt.spawn(task);
            }
            other => *s = other,
        }
    }
}

/// Runs `fut` on this thread until it first waits, then as a task of
/// `rt` spawned by whoever wakes it (see the module docs).
pub(crate) fn start(rt: &Handle, fut: impl Future<Output = ()> + Send + 'static) {
    let _in_rt = rt.enter();
    let mut task: Task = Box::pin(fut);
    let resume = Arc::new(Resume {
        state: Mutex::new(State::Polling),
        rt: rt.clone(),
    });
    let waker = Waker::from(resume.clone());
    if task
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_ready()
    {
        return;
    }
    let mut s = resume.state.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(*s, State::WokenWhilePolling) {
        *s = State::Gone;
        drop(s);
        rt.spawn(task);
    } else {
        *s = State::Parked(task);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_request_that_never_waits_finishes_on_the_caller() {
        let rt = runtime();
        let caller = std::thread::current().id();
        let (tx, rx) = std::sync::mpsc::channel();
        start(rt.handle(), async move {
            let _ = tx.send(std::thread::current().id());
        });
        assert_eq!(rx.try_recv().ok(), Some(caller));
    }

    #[test]
    fn a_waiting_request_runs_until_it_waits_then_finishes_on_the_runtime() {
        let rt = runtime();
        let caller = std::thread::current().id();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        start(rt.handle(), async move {
            // What a request does before its first wait: send.
            let _ = sent_tx.send(std::thread::current().id());
            let v = reply_rx.await.unwrap_or(0);
            let _ = done_tx.send((v, std::thread::current().id()));
        });
        assert_eq!(sent_rx.try_recv().ok(), Some(caller), "sent at once");
        assert!(done_rx.try_recv().is_err(), "still waiting for its reply");
        // The reply comes from a runtime task, as a connection's reader's.
        rt.spawn(async move {
            let _ = reply_tx.send(7);
        });
        let (v, on) = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("finished after its reply");
        assert_eq!(v, 7);
        assert_ne!(on, caller, "finished on the runtime");
    }

    #[test]
    fn a_wake_during_the_first_poll_is_not_lost() {
        let rt = runtime();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        start(rt.handle(), async move {
            // Wakes itself and waits once (a yield).
            tokio::task::yield_now().await;
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("finished after waking itself in its first poll");
    }

    #[test]
    fn timers_and_many_wakes_finish_each_request_once() {
        let rt = runtime();
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..200u64 {
            let done = done.clone();
            start(rt.handle(), async move {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                // Woken from another thread while parked, or not at all.
                if i % 2 == 0 {
                    tokio::spawn(async move {
                        let _ = tx.send(());
                    });
                    let _ = rx.await;
                } else {
                    drop(tx);
                    tokio::time::sleep(Duration::from_millis(i % 7)).await;
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 200);
    }
}
