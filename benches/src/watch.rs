//! What the servers did around one measured run of Cairn: each
//! chunkserver's own handling time per request and the CPU every process
//! used, to tell server time from network and client time, and a server
//! that computes from one that waits on the disk.
//!
//! [`scrape`] reads a chunkserver's request counters from its Prometheus
//! page (`request_duration_seconds` sum and count per opcode);
//! [`cpu_seconds`] reads how much CPU a process has used. A
//! [`ServerClock`] takes both before and after a run, over the processes
//! a [`Watch`] names (a chain's members for `cairn-bench chunk`, every
//! process for `cairn-bench client`), and returns the differences
//! ([`Around`]). A failed metrics scrape costs only the handling times and
//! adds a note; it never fails a run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::servers::{ChainRoute, Servers};

/// A chunkserver's own handling time for one opcode over one run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerTime {
    /// The chunkserver (`cs1`, …).
    pub chunkserver: String,
    /// Its place in the chain watched (`only`, `head`, `middle`, `tail`),
    /// or `any` when every chunkserver is watched over all its chains.
    pub role: &'static str,
    /// The opcode (`read`, `write`, `forward`, …).
    pub op: String,
    /// Requests of that opcode it handled during the run.
    pub requests: u64,
    /// Their mean handling time (from decoded request to reply queued), µs.
    pub mean_us: f64,
    /// How many of them were answered with an error.
    pub errors: u64,
    /// Payload bytes they carried in.
    pub bytes_in: u64,
    /// Payload bytes their replies carried out.
    pub bytes_out: u64,
    /// Heap allocations the chunkserver process made during the run per
    /// request it handled (all opcodes), less what reading its metrics
    /// costs; `None` when its binary does not count them.
    pub allocations_per_request: Option<f64>,
}

impl ServerTime {
    /// Returns the mean payload per request in KiB, in whichever direction
    /// the opcode carries data (out for reads, in for writes).
    pub fn mean_kib(&self) -> f64 {
        let bytes = self.bytes_in.max(self.bytes_out);
        bytes as f64 / 1024.0 / self.requests.max(1) as f64
    }
}

/// The CPU one process used during one run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// The process (`cs1`, `meta0`, `cairn-bench`).
    pub process: String,
    /// CPU seconds it used (all threads; 10 ms resolution).
    pub cpu_seconds: f64,
    /// Wall seconds of the measurement.
    pub wall_seconds: f64,
    /// `cpu_seconds / wall_seconds`: how many cores it kept busy on
    /// average (the shard of a one-shard chunkserver is one thread).
    pub cores: f64,
}

/// The processes a [`ServerClock`] watches.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Chunkservers whose handling times are read: index in
    /// [`Servers::chunkservers`] and role.
    chunkservers: Vec<(usize, &'static str)>,
    /// Processes whose CPU is read: name and pid.
    cpu: Vec<(String, u32)>,
}

/// The name of this process in CPU figures: the benchmark is the client.
pub const THIS_PROCESS: &str = "cairn-bench";

impl Watch {
    /// Returns a watch of `route`'s members (their handling times and
    /// CPU, named by their role in it) and of this process's CPU.
    pub fn route(servers: &Servers, route: &ChainRoute) -> Watch {
        let n = route.members.len();
        let chunkservers: Vec<(usize, &'static str)> = route
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match i {
                    _ if n == 1 => "only",
                    0 => "head",
                    _ if i + 1 == n => "tail",
                    _ => "middle",
                };
                (m.process, role)
            })
            .collect();
        let mut cpu: Vec<(String, u32)> = chunkservers
            .iter()
            .map(|&(p, _)| {
                let cs = &servers.chunkservers()[p];
                (cs.name.clone(), cs.pid)
            })
            .collect();
        cpu.push((THIS_PROCESS.to_string(), std::process::id()));
        Watch { chunkservers, cpu }
    }

    /// Returns a watch of every chunkserver's handling times, and of the
    /// CPU of every process started (meta replicas `meta0`, … and
    /// chunkservers `cs1`, …) and of this one.
    pub fn all(servers: &Servers) -> Watch {
        let chunkservers = (0..servers.chunkservers().len())
            .map(|i| (i, "any"))
            .collect();
        let mut cpu: Vec<(String, u32)> = servers
            .meta_pids()
            .into_iter()
            .map(|(i, pid)| (format!("meta{i}"), pid))
            .collect();
        cpu.extend(
            servers
                .chunkservers()
                .iter()
                .map(|c| (c.name.clone(), c.pid)),
        );
        cpu.push((THIS_PROCESS.to_string(), std::process::id()));
        Watch { chunkservers, cpu }
    }

    /// Returns this watch with the CPU of one more process, `name`.
    pub fn with_process(mut self, name: &str, pid: u32) -> Watch {
        self.cpu.push((name.to_string(), pid));
        self
    }
}

/// What the servers (and the client) did around one run of Cairn.
#[derive(Debug, Clone, Default)]
pub struct Around {
    /// The watched chunkservers' handling times, per opcode with requests.
    pub server_time: Vec<ServerTime>,
    /// Every watched process's CPU.
    pub cpu: Vec<ProcessCpu>,
}

/// Measures [`Around`] one run: [`ServerClock::start`] before it,
/// [`ServerClock::stop`] after.
pub struct ServerClock<'a> {
    servers: &'a Servers,
    watch: Watch,
    before: Option<Vec<OpTimes>>,
    /// Heap allocations one metrics scrape costs each chunkserver (two
    /// scrapes back to back at the start).
    scrape_allocations: Vec<Option<u64>>,
    /// CPU seconds of each of `watch.cpu` at the start.
    cpu_before: Vec<Option<f64>>,
    started: Instant,
}

impl<'a> ServerClock<'a> {
    /// Reads the counters of what `watch` names; a failed scrape adds a
    /// note to `notes`.
    pub async fn start(servers: &'a Servers, watch: Watch, notes: &mut Vec<String>) -> Self {
        // Twice: what the second adds to the allocation count is what one
        // scrape costs, subtracted from the run's count at the end.
        let first = scrape_all(servers, &watch).await;
        let before = match scrape_all(servers, &watch).await {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!("chunkserver metrics unavailable: {e:#}"));
                None
            }
        };
        let scrape_allocations = match (&first, &before) {
            (Ok(f), Some(b)) => f
                .iter()
                .zip(b)
                .map(|(f, b)| Some(b.heap_allocations?.saturating_sub(f.heap_allocations?)))
                .collect(),
            _ => Vec::new(),
        };
        let cpu_before = watch.cpu.iter().map(|&(_, pid)| cpu_seconds(pid)).collect();
        Self {
            servers,
            watch,
            before,
            scrape_allocations,
            cpu_before,
            started: Instant::now(),
        }
    }

    /// Reads the counters again and returns the differences.
    pub async fn stop(self, notes: &mut Vec<String>) -> Around {
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = self
            .watch
            .cpu
            .iter()
            .zip(&self.cpu_before)
            .filter_map(|((name, pid), before)| {
                let used = cpu_seconds(*pid)? - (*before)?;
                Some(ProcessCpu {
                    process: name.clone(),
                    cpu_seconds: used,
                    wall_seconds: wall,
                    cores: if wall > 0.0 { used / wall } else { 0.0 },
                })
            })
            .collect();
        let mut out = Around {
            server_time: Vec::new(),
            cpu,
        };
        let Some(before) = self.before else {
            return out;
        };
        let after = match scrape_all(self.servers, &self.watch).await {
            Ok(a) => a,
            Err(e) => {
                notes.push(format!("chunkserver metrics unavailable: {e:#}"));
                return out;
            }
        };
        for (i, &(process, role)) in self.watch.chunkservers.iter().enumerate() {
            let diff = after[i].since(&before[i]);
            let requests: u64 = diff.iter().map(|(_, d)| d.requests).sum();
            let allocations_per_request = (|| {
                let made = after[i]
                    .heap_allocations?
                    .checked_sub(before[i].heap_allocations?)?;
                let scrape = self.scrape_allocations.get(i).copied().flatten()?;
                (requests > 0).then(|| made.saturating_sub(scrape) as f64 / requests as f64)
            })();
            for (op, d) in diff {
                out.server_time.push(ServerTime {
                    chunkserver: self.servers.chunkservers()[process].name.clone(),
                    role,
                    op,
                    requests: d.requests,
                    mean_us: d.seconds * 1e6,
                    errors: d.errors,
                    bytes_in: d.bytes_in,
                    bytes_out: d.bytes_out,
                    allocations_per_request,
                });
            }
        }
        out
    }
}

/// Reads the request counters of every chunkserver `watch` names.
async fn scrape_all(servers: &Servers, watch: &Watch) -> Result<Vec<OpTimes>> {
    let mut out = Vec::with_capacity(watch.chunkservers.len());
    for &(process, _) in &watch.chunkservers {
        out.push(scrape(servers.chunkservers()[process].metrics_addr).await?);
    }
    Ok(out)
}

/// The counters of one opcode of one chunkserver.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpCounters {
    /// Requests handled.
    pub requests: u64,
    /// Seconds spent handling them.
    pub seconds: f64,
    /// Requests answered with an error (a replica that is behind, a
    /// pending range: the client retries elsewhere).
    pub errors: u64,
    /// Payload bytes received in requests.
    pub bytes_in: u64,
    /// Payload bytes sent in replies.
    pub bytes_out: u64,
}

/// Request counters of one chunkserver at one moment, by opcode, and its
/// heap allocations so far (when its binary counts them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpTimes {
    /// Counters by opcode.
    pub ops: BTreeMap<String, OpCounters>,
    /// `heap_allocations_total`.
    pub heap_allocations: Option<u64>,
}

impl OpTimes {
    /// Parses the per-opcode series of a chunkserver's metrics page:
    /// `request_duration_seconds` sum and count, `request_errors_total`,
    /// `received_bytes_total` and `sent_bytes_total`.
    pub fn parse(page: &str) -> OpTimes {
        const PREFIX: &str = "cairn_chunkserver_";
        let mut out = BTreeMap::<String, OpCounters>::new();
        let mut heap_allocations = None;
        for line in page.lines() {
            if let Some(v) = line.strip_prefix("cairn_chunkserver_heap_allocations_total ") {
                heap_allocations = v.trim().parse().ok();
                continue;
            }
            let Some((series, rest)) = line
                .strip_prefix(PREFIX)
                .and_then(|l| l.split_once("{op=\""))
            else {
                continue;
            };
            let Some((op, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let e = out.entry(op.to_string()).or_default();
            match series {
                "request_duration_seconds_sum" => e.seconds = v,
                "request_duration_seconds_count" => e.requests = v as u64,
                "request_errors_total" => e.errors = v as u64,
                "received_bytes_total" => e.bytes_in = v as u64,
                "sent_bytes_total" => e.bytes_out = v as u64,
                _ => {}
            }
        }
        OpTimes {
            ops: out,
            heap_allocations,
        }
    }

    /// Returns, per opcode with requests in between, what changed from
    /// `before` to `self`, the seconds as the mean per request.
    pub fn since(&self, before: &OpTimes) -> Vec<(String, OpCounters)> {
        self.ops
            .iter()
            .filter_map(|(op, now)| {
                let b = before.ops.get(op).copied().unwrap_or_default();
                let requests = now.requests.checked_sub(b.requests).filter(|&d| d > 0)?;
                Some((
                    op.clone(),
                    OpCounters {
                        requests,
                        seconds: (now.seconds - b.seconds).max(0.0) / requests as f64,
                        errors: now.errors.saturating_sub(b.errors),
                        bytes_in: now.bytes_in.saturating_sub(b.bytes_in),
                        bytes_out: now.bytes_out.saturating_sub(b.bytes_out),
                    },
                ))
            })
            .collect()
    }
}

/// Reads the request counters of the chunkserver serving metrics at
/// `addr`.
///
/// # Errors
/// When the page cannot be fetched in 5 s.
pub async fn scrape(addr: SocketAddr) -> Result<OpTimes> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut page = String::new();
        s.read_to_string(&mut page).await?;
        std::io::Result::Ok(page)
    };
    let page = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow!("no answer from {addr} in 5 s"))?
        .with_context(|| format!("fetching http://{addr}/metrics"))?;
    Ok(OpTimes::parse(&page))
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`,
/// 100 on every Linux architecture this runs on).
const USER_HZ: f64 = 100.0;

/// Returns the CPU time (user + system, all threads, exited ones
/// included) process `pid` has used, in seconds with a 10 ms resolution,
/// or `None` when it cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat)
}

/// Returns utime + stime of a `/proc/<pid>/stat` line, in seconds.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its last `)` start with field 3 (state), so utime and
    // stime (fields 14 and 15) are the 12th and 13th.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_from_proc_stat() {
        let stat = "4672 (cairn (chunk)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 14 0 100";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn parses_request_counters_and_differences() {
        let page = "\
# TYPE cairn_chunkserver_request_duration_seconds histogram
cairn_chunkserver_request_duration_seconds_bucket{op=\"read\",le=\"0.00001\"} 3
cairn_chunkserver_request_duration_seconds_sum{op=\"read\"} 0.5
cairn_chunkserver_request_duration_seconds_count{op=\"read\"} 10
cairn_chunkserver_request_duration_seconds_sum{op=\"write\"} 0
cairn_chunkserver_request_duration_seconds_count{op=\"write\"} 0
cairn_chunkserver_requests_total{op=\"read\"} 10
cairn_chunkserver_request_errors_total{op=\"read\"} 1
cairn_chunkserver_sent_bytes_total{op=\"read\"} 40960
cairn_chunkserver_received_bytes_total{op=\"read\"} 0
";
        let before = OpTimes::parse(page);
        let read = OpCounters {
            requests: 10,
            seconds: 0.5,
            errors: 1,
            bytes_in: 0,
            bytes_out: 40_960,
        };
        assert_eq!(before.ops.get("read"), Some(&read));
        assert_eq!(before.ops.get("write"), Some(&OpCounters::default()));
        assert_eq!(before.heap_allocations, None);
        let counted = OpTimes::parse(&format!(
            "{page}# TYPE cairn_chunkserver_heap_allocations_total counter\n\
             cairn_chunkserver_heap_allocations_total 1234\n"
        ));
        assert_eq!(counted.heap_allocations, Some(1234));
        assert_eq!(counted.ops, before.ops);
        let after = OpTimes::parse(
            &page
                .replace("} 0.5", "} 1.5")
                .replace("} 10\n", "} 30\n")
                .replace("} 40960", "} 122880"),
        );
        let diff = after.since(&before);
        assert_eq!(diff.len(), 1);
        let (op, d) = &diff[0];
        assert_eq!(op, "read");
        assert_eq!((d.requests, d.seconds, d.errors), (20, 0.05, 0));
        assert_eq!((d.bytes_in, d.bytes_out), (0, 81_920));
        assert!(before.since(&before).is_empty());
    }
}
