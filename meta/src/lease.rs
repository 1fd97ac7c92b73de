//! The leader's read lease: linearizable reads without a quorum round per
//! call (DESIGN §4).
//!
//! openraft's followers refuse to vote for anyone else until
//! `election_timeout_max` has passed since they last heard from their
//! leader, and the leader learns, from each heartbeat or append a quorum
//! acknowledged, the time it *sent* that message. So no other leader can
//! exist before that send time plus `election_timeout_max`. The leader
//! serves reads from its own state while less than [`LeaderLease::span`]
//! (half the *minimum* election timeout: a wide margin for clock-rate drift
//! between machines and for scheduling delays in reading the time) has
//! passed since that send time; past it, or on any doubt, it falls back to
//! openraft's read index (a heartbeat round).
//!
//! A read must also see every write acknowledged before it started. The
//! leader acknowledges its own writes only after applying them; writes of
//! earlier leaders are covered once it has applied an entry of its own
//! term (its first entry commits everything before it). So the lease is
//! only granted while the last applied entry is of the current term.
//!
//! The send time comes from openraft's metrics (`millis_since_quorum_ack`,
//! published on every turn of the Raft core's loop). This replica records
//! the time it *observed* each publication, which is later than the
//! publication, so the send time it derives could only be later than the
//! true one by the observer's own delay: the lease span's margin covers it,
//! and one millisecond more covers the metric's rounding down. An empty
//! append answered on a follower's behalf (`raft::network::ELIDE_WINDOW`)
//! stands for a real acknowledgement of a message sent up to that window
//! earlier, so the window is subtracted too.
//!
//! # Clients' cache leases
//!
//! The leader grants clients' cache leases only under this read lease
//! (`crate::changes`), so every grant of an earlier leader happened before
//! that leader's last quorum-acknowledged send `s` plus [`LeaderLease::span`].
//! Some replica that voted for this leader acknowledged that send, and
//! waited `election_timeout_max` after it before voting, so this leader took
//! office at `b >= s + election_timeout_max`. A client's lease ends
//! [`cairn_proto::CLIENT_LEASE`] after its renewal, before the grant, so
//! every earlier leader's lease has ended by
//! `b + CLIENT_LEASE_BOUND + span - election_timeout_max`:
//! [`LeaderLease::fence`], before which this leader acknowledges no
//! mutation (0.41 s after an election with the default 1 s timeout).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::raft::network::ELIDE_WINDOW;
use crate::raft::types::MetaRaft;

/// When this replica, as leader, last had a quorum's acknowledgement of
/// its leadership, as far as reads may rely on it.
#[derive(Debug, Clone)]
pub struct LeaderLease {
    acked: Arc<Mutex<Option<Instant>>>,
    span: Duration,
    /// The term this replica leads in and when it saw itself take office.
    office: Arc<Mutex<Option<(u64, Instant)>>>,
    /// How long after taking office mutations wait (module docs).
    fence_after: Duration,
}

/// The fields of openraft's metrics the lease is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseFacts {
    /// This replica is the leader.
    pub leader: bool,
    /// The current term.
    pub term: u64,
    /// The term of the last applied entry, if any.
    pub applied_term: Option<u64>,
    /// Milliseconds from the last quorum-acknowledged send to publication.
    pub millis_since_quorum_ack: Option<u64>,
}

/// Returns the latest instant that a quorum is known to have acknowledged
/// this leader, if the lease may be granted at all.
pub fn acked_at(observed: Instant, f: LeaseFacts) -> Option<Instant> {
    if !f.leader || f.applied_term != Some(f.term) {
        return None;
    }
    let ms = f.millis_since_quorum_ack?;
    observed.checked_sub(Duration::from_millis(ms.saturating_add(1)) + ELIDE_WINDOW)
}

impl LeaderLease {
    /// Returns a lease of `election_timeout_min / 2` that is never valid
    /// until [`LeaderLease::watch`] feeds it.
    pub fn new(election_timeout_min: Duration, election_timeout_max: Duration) -> Self {
        let span = election_timeout_min / 2;
        Self {
            acked: Arc::new(Mutex::new(None)),
            span,
            office: Arc::new(Mutex::new(None)),
            fence_after: fence_after(span, election_timeout_max),
        }
    }

    /// Returns the instant before which this replica, as leader,
    /// acknowledges no mutation: earlier leaders' client leases may still
    /// run until then (module docs). `None`: it does not lead (or has not
    /// seen itself take office yet), so the caller waits the whole span.
    pub fn fence(&self) -> Option<Instant> {
        let office = *self.office.lock().unwrap_or_else(PoisonError::into_inner);
        office.map(|(_, at)| at + self.fence_after)
    }

    /// The most a mutation waits after an election (see [`Self::fence`]).
    pub fn fence_after(&self) -> Duration {
        self.fence_after
    }

    /// How long after a quorum's acknowledgement reads may rely on it.
    pub fn span(&self) -> Duration {
        self.span
    }

    /// Follows `raft`'s metrics until they end (the replica shuts down).
    pub fn watch(&self, raft: &MetaRaft) {
        let mut rx = raft.metrics();
        let acked = self.acked.clone();
        let office = self.office.clone();
        tokio::spawn(async move {
            loop {
                let at = {
                    let m = rx.borrow_and_update();
                    {
                        let mut o = office.lock().unwrap_or_else(PoisonError::into_inner);
                        if m.state != ServerState::Leader {
                            *o = None;
                        } else if o.is_none_or(|(term, _)| term != m.current_term) {
                            *o = Some((m.current_term, Instant::now()));
                        }
                    }
                    let facts = LeaseFacts {
                        leader: m.state == ServerState::Leader,
                        term: m.current_term,
                        applied_term: m.last_applied.map(|l| l.leader_id.term),
                        millis_since_quorum_ack: m.millis_since_quorum_ack,
                    };
                    acked_at(Instant::now(), facts)
                };
                *acked.lock().unwrap_or_else(PoisonError::into_inner) = at;
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Returns true if a read may be served from this replica's state now.
    pub fn valid(&self) -> bool {
        let acked = *self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        acked.is_some_and(|t| t.elapsed() < self.span)
    }
}

/// How long a new leader holds mutations back: what is left of the
/// longest client lease an earlier leader could have granted (module docs).
fn fence_after(span: Duration, election_timeout_max: Duration) -> Duration {
    (cairn_proto::CLIENT_LEASE_BOUND + span).saturating_sub(election_timeout_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> LeaseFacts {
        LeaseFacts {
            leader: true,
            term: 4,
            applied_term: Some(4),
            millis_since_quorum_ack: Some(20),
        }
    }

    #[test]
    fn the_lease_runs_from_the_acknowledged_send_time() {
        let now = Instant::now();
        let at = acked_at(now, facts()).expect("granted");
        assert_eq!(now - at, Duration::from_millis(21) + ELIDE_WINDOW);
    }

    #[test]
    fn no_lease_for_a_follower_an_unapplied_term_or_no_quorum() {
        let now = Instant::now();
        let follower = LeaseFacts {
            leader: false,
            ..facts()
        };
        let behind = LeaseFacts {
            applied_term: Some(3),
            ..facts()
        };
        let nothing_applied = LeaseFacts {
            applied_term: None,
            ..facts()
        };
        let no_quorum = LeaseFacts {
            millis_since_quorum_ack: None,
            ..facts()
        };
        for f in [follower, behind, nothing_applied, no_quorum] {
            assert_eq!(acked_at(now, f), None, "{f:?}");
        }
    }

    #[test]
    fn a_lease_expires_after_its_span() {
        let lease = LeaderLease::new(Duration::from_millis(600), Duration::from_secs(1));
        assert_eq!(lease.span(), Duration::from_millis(300));
        assert!(!lease.valid(), "never fed");
        *lease.acked.lock().unwrap() = Some(Instant::now());
        assert!(lease.valid());
        *lease.acked.lock().unwrap() = Instant::now().checked_sub(Duration::from_millis(301));
        assert!(!lease.valid());
    }

    #[test]
    fn a_new_leader_waits_out_what_is_left_of_its_predecessors_client_leases() {
        // Defaults: 0.6–1 s elections, a 0.3 s read lease.
        let lease = LeaderLease::new(Duration::from_millis(600), Duration::from_secs(1));
        assert_eq!(lease.fence_after(), Duration::from_millis(410));
        assert_eq!(lease.fence(), None, "not leading");
        // Long elections leave nothing to wait for.
        assert_eq!(
            fence_after(Duration::from_millis(600), Duration::from_secs(3)),
            Duration::ZERO
        );
    }
}
