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
//! leader acknowledges its own writes only after applying them; every
//! write an earlier leader acknowledged is in this leader's log when it
//! takes office (Raft's leader completeness). So the lease is granted only
//! once this replica has applied its log as far as it reached when it saw
//! itself take office, and an entry of the current term. The index matters
//! after a restart of the whole cluster: openraft restores a committed vote,
//! so the old leader may lead again in its old term at once, with its state
//! machine behind its log (the committed index it saved may be stale) and
//! its last applied entry already of that term.
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
//!
//! A leader that resumed its old term after a restart won no vote, so the
//! argument does not hold for it: its earlier incarnation may have granted
//! a lease just before it died. It started after that, so every such lease
//! has ended by `start + CLIENT_LEASE_BOUND + span`, and the fence is never
//! before that (1.41 s after the process started, by default).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::{LogId, ServerState};

use crate::raft::network::ELIDE_WINDOW;
use crate::raft::types::MetaRaft;

/// When this replica, as leader, last had a quorum's acknowledgement of
/// its leadership, as far as reads may rely on it.
#[derive(Debug, Clone)]
pub struct LeaderLease {
    acked: Arc<Mutex<Option<Instant>>>,
    span: Duration,
    /// The term this replica leads in and when it saw itself take office.
    office: Arc<Mutex<Option<Office>>>,
    /// How long after taking office mutations wait (module docs).
    fence_after: Duration,
    /// Before this no mutation is acknowledged, whatever the office: an
    /// earlier incarnation of this replica may have granted client leases
    /// that run until then (module docs).
    restart_fence: Instant,
    /// `election_timeout_max`: a leader without a quorum's acknowledgement
    /// for longer may have been replaced ([`Self::cut_off`]).
    silent_after: Duration,
}

/// This replica's current term of office as leader.
#[derive(Debug, Clone, Copy)]
struct Office {
    term: u64,
    /// When this replica saw itself take office.
    at: Instant,
    /// Its last log index then: every write an earlier leader
    /// acknowledged is at or before it.
    log_index: Option<u64>,
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
    /// The index of the last applied entry, if any.
    pub applied_index: Option<u64>,
    /// The last log index when this replica saw itself take office.
    pub office_log_index: Option<u64>,
    /// Milliseconds from the last quorum-acknowledged send to publication.
    pub millis_since_quorum_ack: Option<u64>,
}

/// Returns the latest instant that a quorum is known to have acknowledged
/// this leader, if the lease may be granted at all.
pub fn acked_at(observed: Instant, f: LeaseFacts) -> Option<Instant> {
    if !f.leader || f.applied_term != Some(f.term) || f.applied_index < f.office_log_index {
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
            restart_fence: Instant::now() + cairn_proto::CLIENT_LEASE_BOUND + span,
            silent_after: election_timeout_max,
        }
    }

    /// Resolves once this replica, leading, has had no quorum's
    /// acknowledgement for longer than `election_timeout_max`, counting
    /// from `since` at the earliest: the other replicas may have elected
    /// another leader by then, and nothing proposed here commits until a
    /// quorum hears from it again. Pending while it does not lead or has
    /// had no acknowledgement in this office yet (nothing can be said).
    ///
    /// A leader cut off from the others keeps believing it leads (openraft
    /// does not step down on its own), so a mutation or a read index
    /// waiting on it used to wait out the whole Raft timeout (5 s) before
    /// the client tried elsewhere.
    pub async fn cut_off(&self, since: Instant) {
        loop {
            let acked = *self.acked.lock().unwrap_or_else(PoisonError::into_inner);
            let wait = match acked {
                Some(a) => {
                    let until = a.max(since) + self.silent_after;
                    if Instant::now() >= until {
                        return;
                    }
                    until - Instant::now()
                }
                None => self.silent_after,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Returns the instant before which this replica, as leader,
    /// acknowledges no mutation: earlier leaders' client leases may still
    /// run until then (module docs). `None`: it does not lead (or has not
    /// seen itself take office yet), so the caller waits the whole span.
    pub fn fence(&self) -> Option<Instant> {
        let office = *self.office.lock().unwrap_or_else(PoisonError::into_inner);
        office.map(|o| (o.at + self.fence_after).max(self.restart_fence))
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
                    let office_log_index = {
                        let mut o = office.lock().unwrap_or_else(PoisonError::into_inner);
                        if m.state != ServerState::Leader {
                            *o = None;
                        } else if o.is_none_or(|o| o.term != m.current_term) {
                            *o = Some(Office {
                                term: m.current_term,
                                at: Instant::now(),
                                log_index: m.last_log_index,
                            });
                        }
                        o.and_then(|o| o.log_index)
                    };
                    let facts = LeaseFacts {
                        leader: m.state == ServerState::Leader,
                        term: m.current_term,
                        applied_term: m.last_applied.map(|l| l.leader_id.term),
                        applied_index: m.last_applied.map(|l| l.index),
                        office_log_index,
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

    /// Waits until this replica has applied its log as far as it reached
    /// when it took office as leader (every write an earlier leader
    /// acknowledged: module docs), and returns its last applied log id
    /// then. A read index confirmed by openraft is not enough on its own:
    /// a leader that resumed its old term after a restart may confirm a
    /// stale committed index.
    ///
    /// # Errors
    /// When the log is not applied that far within `timeout`.
    pub async fn applied_through_office(
        &self,
        raft: &MetaRaft,
        timeout: Duration,
    ) -> Result<Option<LogId<u64>>, String> {
        let floor = {
            let m = raft.metrics();
            let m = m.borrow();
            let office = *self.office.lock().unwrap_or_else(PoisonError::into_inner);
            match office {
                Some(o) if o.term == m.current_term => o.log_index,
                // Not seen taking office yet: everything in the log now.
                _ => m.last_log_index,
            }
        };
        let Some(floor) = floor else {
            return Ok(None);
        };
        let m = raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(floor), "the log as far as it reached at election")
            .await
            .map_err(|e| format!("the leader has not applied its log yet: {e}"))?;
        Ok(m.last_applied)
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
            applied_index: Some(30),
            office_log_index: Some(30),
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
        // Resumed its old term after a restart, its log applied only in part.
        let replaying = LeaseFacts {
            applied_index: Some(8),
            office_log_index: Some(63),
            ..facts()
        };
        for f in [follower, behind, nothing_applied, no_quorum, replaying] {
            assert_eq!(acked_at(now, f), None, "{f:?}");
        }
    }

    #[tokio::test]
    async fn a_leader_without_acknowledgements_counts_as_cut_off_after_the_election_timeout() {
        let timeout = Duration::from_millis(100);
        let lease = LeaderLease::new(timeout / 2, timeout);
        let cut = |since| {
            let lease = lease.clone();
            async move { lease.cut_off(since).await }
        };
        // No acknowledgement yet: nothing can be said.
        let never = tokio::time::timeout(timeout * 3, cut(Instant::now())).await;
        assert!(never.is_err(), "cut off without ever leading");
        // Acknowledged long ago: cut off one election timeout after `since`.
        *lease.acked.lock().unwrap() = Some(Instant::now() - Duration::from_secs(5));
        let since = Instant::now();
        cut(since).await;
        assert!(since.elapsed() >= timeout, "{:?}", since.elapsed());
        // Acknowledgements that keep coming: never.
        let feeder = {
            let acked = lease.acked.clone();
            tokio::spawn(async move {
                loop {
                    *acked.lock().unwrap() = Some(Instant::now());
                    tokio::time::sleep(timeout / 10).await;
                }
            })
        };
        let fed = tokio::time::timeout(timeout * 5, cut(Instant::now())).await;
        feeder.abort();
        assert!(fed.is_err(), "cut off while a quorum acknowledged");
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
        // Whatever the office, never before an earlier incarnation's leases
        // have run out.
        let at = Instant::now();
        *lease.office.lock().unwrap() = Some(Office {
            term: 1,
            at,
            log_index: None,
        });
        let fence = lease.fence().expect("leading");
        assert!(fence >= lease.restart_fence && fence >= at + lease.fence_after());
        // Long elections leave nothing to wait for.
        assert_eq!(
            fence_after(Duration::from_millis(600), Duration::from_secs(3)),
            Duration::ZERO
        );
    }
}
