//! Configuration of a metadata replica.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of one `cairn-meta` replica. Production values are the
/// defaults; durations are written as "500ms", "10s".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct MetaConfig {
    /// Directory holding the sled database (Raft log, state machine, node
    /// identity).
    pub data_dir: PathBuf,
    /// Address the gRPC server (clients, chunkservers and Raft peers)
    /// listens on.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this replica; defaults to
    /// `listen`.
    pub advertise: Option<String>,
    /// Bootstrap a new cluster when the data directory is empty and no
    /// `join` peer knows a cluster (only the first StatefulSet ordinal).
    pub bootstrap: bool,
    /// Addresses of existing replicas to join when the data directory is
    /// empty.
    pub join: Vec<String>,
    /// Voters the cluster grows to by promoting caught-up learners; beyond
    /// it, learners are promoted only through the admin API.
    pub replicas: usize,
    /// Raft heartbeat interval.
    #[serde(with = "humantime_serde_compat")]
    pub raft_heartbeat: Duration,
    /// Raft election timeout (the minimum; the maximum is twice this).
    #[serde(with = "humantime_serde_compat")]
    pub election_timeout: Duration,
    /// A chunkserver silent this long is declared dead.
    #[serde(with = "humantime_serde_compat")]
    pub chunkserver_timeout: Duration,
    /// A client session not renewed this long expires.
    #[serde(with = "humantime_serde_compat")]
    pub session_timeout: Duration,
    /// Take a state-machine snapshot (and compact the log) every this many
    /// entries.
    pub snapshot_every: u64,
    /// sled page-cache size in bytes.
    pub cache_bytes: u64,
    /// Address of the Prometheus `/metrics` endpoint; none when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a deleted file's data stays on the chunkservers before the
    /// garbage collector removes it: longer than any client cache TTL, so a
    /// reader that opened the file before the delete finishes its reads.
    #[serde(with = "humantime_serde_compat")]
    pub gc_grace: Duration,
    /// At most this many chunk removals per second by the garbage
    /// collector (each removes the chunk on every replica of its chain), so
    /// that deleting many files never takes the chunkservers from
    /// foreground I/O; at least one object is collected per second.
    #[serde(default = "default_gc_chunks_per_sec")]
    pub gc_chunks_per_sec: u64,
    /// How long a chunkserver may stay dead before its targets are
    /// replaced in their chains by targets on other chunkservers
    /// (re-replication). Shorter outages (a restart, a reboot) are
    /// resynced by version instead, copying only what changed.
    #[serde(with = "humantime_serde_compat", default = "default_replace_after")]
    pub replace_after: Duration,
    /// How long a chunkserver that announced a restart (SIGTERM) may stay
    /// away before its targets are replaced like a dead one's.
    #[serde(
        with = "humantime_serde_compat",
        default = "default_maintenance_window"
    )]
    pub maintenance_window: Duration,
}

fn default_maintenance_window() -> Duration {
    Duration::from_secs(1800)
}

fn default_gc_chunks_per_sec() -> u64 {
    500
}

fn default_replace_after() -> Duration {
    Duration::from_secs(300)
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/cairn/meta"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            advertise: None,
            bootstrap: false,
            join: Vec::new(),
            replicas: 3,
            raft_heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            chunkserver_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(60),
            snapshot_every: 10_000,
            cache_bytes: 64 << 20,
            metrics_listen: None,
            gc_grace: Duration::from_secs(600),
            gc_chunks_per_sec: default_gc_chunks_per_sec(),
            replace_after: default_replace_after(),
            maintenance_window: default_maintenance_window(),
        }
    }
}

/// The ordinal of a StatefulSet pod from its host name: the number after
/// the last '-' ("cairn-meta-2" → 2), `None` when there is none.
pub fn statefulset_ordinal(host: &str) -> Option<u32> {
    let host = host.split('.').next().unwrap_or(host);
    let (_, n) = host.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl MetaConfig {
    /// Returns the address peers use to reach this replica.
    pub fn advertise_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// Checks the configuration for values that cannot work.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.raft_heartbeat.is_zero() || self.raft_heartbeat >= self.election_timeout {
            return Err("raft-heartbeat must be positive and below election-timeout".into());
        }
        if !(1..=7).contains(&self.replicas) {
            return Err("replicas must be between 1 and 7".into());
        }
        if self.gc_chunks_per_sec == 0 {
            return Err("gc-chunks-per-sec must be at least 1".into());
        }
        if self.snapshot_every < 100 {
            return Err("snapshot-every must be at least 100".into());
        }
        if self.chunkserver_timeout < self.raft_heartbeat * 2 {
            return Err("chunkserver-timeout is too short".into());
        }
        if !self.bootstrap && self.join.is_empty() && !self.data_dir.join("db").exists() {
            // Allowed: the replica may already hold data; checked at start.
        }
        Ok(())
    }
}

/// Human-readable durations ("500ms", "10s") in config files.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_parse_human_units() {
        MetaConfig::default().validate().unwrap();
        let c: MetaConfig =
            serde_json::from_str(r#"{"election-timeout":"2s","raft-heartbeat":"150ms"}"#).unwrap();
        assert_eq!(c.election_timeout, Duration::from_secs(2));
        assert_eq!(c.raft_heartbeat, Duration::from_millis(150));
        let bad = MetaConfig {
            raft_heartbeat: Duration::from_secs(5),
            ..MetaConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn statefulset_ordinals_come_from_the_host_name() {
        assert_eq!(statefulset_ordinal("cairn-meta-0"), Some(0));
        assert_eq!(statefulset_ordinal("cairn-meta-12"), Some(12));
        assert_eq!(
            statefulset_ordinal("cairn-meta-2.cairn-meta.ns.svc.cluster.local"),
            Some(2)
        );
        assert_eq!(statefulset_ordinal("cairn-meta"), None);
        assert_eq!(statefulset_ordinal("meta-"), None);
        assert_eq!(statefulset_ordinal("laptop"), None);
        assert_eq!(statefulset_ordinal("cairn-meta-0a"), None);
    }
}
