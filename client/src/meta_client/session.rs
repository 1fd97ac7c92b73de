//! A client session with meta and the request ids of its mutations.
//!
//! Every mutation carries `RequestId { client_id, seq, ack_below }` so that
//! meta answers a retry with the reply of the first application (DESIGN §4,
//! Ongaro's thesis §6.3):
//!
//! * `client_id` is the session id;
//! * `seq` is strictly increasing per session, starting at 1, and a retry of
//!   the same mutation reuses it;
//! * `ack_below` is the lowest seq still in flight (its own seq included):
//!   every seq below it has had its reply received or been abandoned, so
//!   meta may forget their cached replies and refuses them as stale.
//!
//! The next seq is allocated under the same lock as the in-flight set. With
//! a separate atomic counter two concurrent mutations could interleave
//! (A takes 5, B takes 6 and computes `ack_below = 6` before A inserts 5),
//! and meta would then refuse A's retry of seq 5 as stale.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_proto::ids::SessionId;
use cairn_proto::meta::RequestId;

/// Allocates seqs and tracks which are in flight.
#[derive(Debug)]
pub(crate) struct SeqTracker {
    state: Mutex<SeqState>,
}

#[derive(Debug)]
struct SeqState {
    next: u64,
    in_flight: BTreeSet<u64>,
}

impl SeqTracker {
    /// Returns a tracker whose first seq is 1.
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(SeqState {
                next: 1,
                in_flight: BTreeSet::new(),
            }),
        }
    }

    /// Allocates the next seq, marks it in flight and returns
    /// `(seq, ack_below)`.
    pub(crate) fn begin(&self) -> (u64, u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = s.next;
        s.next += 1;
        s.in_flight.insert(seq);
        let ack_below = s.in_flight.first().copied().unwrap_or(seq);
        (seq, ack_below)
    }

    /// Marks `seq` as answered (or abandoned: it will never be sent again).
    pub(crate) fn finish(&self, seq: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.in_flight.remove(&seq);
    }

    /// Returns the `ack_below` a mutation sent now would carry, without
    /// allocating a seq.
    #[cfg(test)]
    pub(crate) fn ack_below(&self) -> u64 {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.in_flight.first().copied().unwrap_or(s.next)
    }
}

/// An open session: its id, its timeout and its seq space.
#[derive(Debug)]
pub(crate) struct Session {
    /// The id meta assigned; also the `client_id` of request ids.
    pub(crate) id: SessionId,
    /// Meta expires the session when it is not renewed for this long.
    pub(crate) timeout: Duration,
    /// The seqs of this session's mutations.
    pub(crate) seqs: SeqTracker,
}

impl Session {
    /// Returns a session with a fresh seq space.
    pub(crate) fn new(id: SessionId, timeout: Duration) -> Self {
        Self {
            id,
            timeout,
            seqs: SeqTracker::new(),
        }
    }

    /// Returns how often the session is renewed: a third of its timeout
    /// (what meta asks for), but not more often than every 100 ms.
    pub(crate) fn renew_period(&self) -> Duration {
        (self.timeout / 3).max(Duration::from_millis(100))
    }
}

/// One mutation in flight: holds its request id for every retry and marks
/// the seq answered when dropped, whatever the outcome (including the
/// caller's future being dropped).
#[derive(Debug)]
pub(crate) struct Ticket {
    session: Arc<Session>,
    seq: u64,
    ack_below: u64,
}

impl Ticket {
    /// Allocates a seq in `session`.
    pub(crate) fn begin(session: Arc<Session>) -> Self {
        let (seq, ack_below) = session.seqs.begin();
        Self {
            session,
            seq,
            ack_below,
        }
    }

    /// Returns the request id every attempt of this mutation carries.
    pub(crate) fn request_id(&self) -> RequestId {
        RequestId {
            client_id: self.session.id.0,
            seq: self.seq,
            ack_below: self.ack_below,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.session.seqs.finish(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_start_at_one_and_ack_below_tracks_the_oldest_in_flight() {
        let t = SeqTracker::new();
        assert_eq!(t.ack_below(), 1);
        assert_eq!(t.begin(), (1, 1));
        assert_eq!(t.begin(), (2, 1));
        assert_eq!(t.begin(), (3, 1));
        // 2 answers first: 1 is still in flight, so nothing moves.
        t.finish(2);
        assert_eq!(t.begin(), (4, 1));
        t.finish(1);
        assert_eq!(t.ack_below(), 3);
        assert_eq!(t.begin(), (5, 3));
        for s in [3, 4, 5] {
            t.finish(s);
        }
        // Nothing in flight: the next seq acknowledges everything before it.
        assert_eq!(t.ack_below(), 6);
        assert_eq!(t.begin(), (6, 6));
        // Finishing twice or an unknown seq is harmless.
        t.finish(6);
        t.finish(6);
        t.finish(99);
        assert_eq!(t.begin(), (7, 7));
    }

    #[test]
    fn ticket_keeps_its_id_and_releases_on_drop() {
        let s = Arc::new(Session::new(SessionId(42), Duration::from_secs(30)));
        let a = Ticket::begin(Arc::clone(&s));
        let b = Ticket::begin(Arc::clone(&s));
        assert_eq!(
            a.request_id(),
            RequestId {
                client_id: 42,
                seq: 1,
                ack_below: 1
            }
        );
        // A retry asks again: same id.
        assert_eq!(a.request_id(), a.request_id());
        assert_eq!(b.request_id().ack_below, 1);
        drop(a);
        assert_eq!(s.seqs.ack_below(), 2);
        drop(b);
        assert_eq!(s.seqs.ack_below(), 3);
        assert_eq!(s.renew_period(), Duration::from_secs(10));
        let short = Session::new(SessionId(1), Duration::from_millis(30));
        assert_eq!(short.renew_period(), Duration::from_millis(100));
    }
}
