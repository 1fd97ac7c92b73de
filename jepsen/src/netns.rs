//! Network partitions with Linux network namespaces and nftables.
//!
//! A [`NetLab`] builds a private network for one test:
//!
//! ```text
//!  root namespace (the test process)          hub namespace        replica namespaces
//!  ┌──────────────────────────────┐        ┌───────────────┐     ┌────────────────────┐
//!  │ <root veth> 10.213.X.254/24  │──veth──│               │─────│ eth0 10.213.X.1/24 │ replica 0
//!  └──────────────────────────────┘        │   bridge br0  │─────│ eth0 10.213.X.2/24 │ replica 1
//!                                          │               │─────│ eth0 10.213.X.3/24 │ replica 2
//!                                          └───────────────┘     └────────────────────┘
//! ```
//!
//! * Every replica runs in its own namespace (`ip netns exec`) and listens
//!   on its own address, so partitions are cut per replica without touching
//!   the machine's other traffic.
//! * The bridge lives in a namespace of its own, not in the root namespace:
//!   the host's firewall (a Docker `FORWARD DROP` policy with
//!   `br_netfilter`, for example) then never sees the bridged traffic, and
//!   the only thing the lab adds to the root namespace is one veth end with
//!   a private /24 address, through which the test process reaches every
//!   replica directly.
//! * The subnet `10.213.X.0/24` is picked per lab among those no root
//!   interface uses yet; namespace and interface names carry the process id
//!   and a counter, so concurrent tests and test processes do not collide.
//! * [`NetLab::isolate`] loads an nftables table inside one replica's
//!   namespace that drops packets to and from the other replicas' addresses
//!   (both directions, established connections included: they stall as in
//!   a real partition, no reset is sent). The test process, at the bridge
//!   address, still reaches the isolated replica, which is what lets a test
//!   ask it questions. [`NetLab::heal`] deletes the table.
//!
//! Dropping the lab deletes the namespaces (and with them the bridge and
//! the veths) and the root veth. Processes running inside the namespaces
//! must be stopped first (the cluster does that).
//!
//! Needs root, iproute2 and nftables.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// Environment variable that turns a failed namespace setup into a skipped
/// test instead of a failed one.
pub const SKIP_NETNS_ENV: &str = "CAIRN_SKIP_NETNS";

/// The nftables table [`NetLab::isolate`] loads.
const NFT_TABLE: &str = "cairn_jepsen";

/// Host part of the root (test client) address in the lab subnet.
const CLIENT_HOST: u8 = 254;

static LABS: AtomicU32 = AtomicU32::new(0);

/// Returns whether `CAIRN_SKIP_NETNS=1` asks to skip namespace tests.
pub fn skip_requested() -> bool {
    std::env::var(SKIP_NETNS_ENV).is_ok_and(|v| v == "1")
}

/// A private network of namespaces for `n` replicas; see the module docs.
#[derive(Debug)]
pub struct NetLab {
    subnet: u8,
    hub: String,
    root_if: String,
    nodes: Vec<String>,
    /// Namespaces created so far (hub first), for cleanup.
    created: Vec<String>,
    /// veth interfaces created in the root namespace, for cleanup of a
    /// setup that failed before moving them (deleting a moved one fails
    /// harmlessly).
    links: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

impl NetLab {
    /// Builds the network for `n` replicas.
    ///
    /// # Errors
    /// When `ip` or `nft` is missing, the process is not root, or any step
    /// fails; the message says what is needed. Whatever was built is torn
    /// down again.
    pub fn create(n: usize) -> Result<NetLab> {
        Self::build(n).context(
            "cannot set up network namespaces for the partition test (needs root, iproute2 \
             and nftables; set CAIRN_SKIP_NETNS=1 to skip such tests)",
        )
    }

    fn build(n: usize) -> Result<NetLab> {
        if n == 0 || n > 200 {
            bail!("a lab holds 1 to 200 replicas, not {n}");
        }
        run(Command::new("nft").arg("--version")).context("nftables (`nft`) is not usable")?;
        let counter = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are limited to 15 bytes: keep the tag short.
        let tag = format!("{:x}{:x}", pid & 0xf_ffff, counter & 0xff);
        let subnet = pick_subnet(pid, counter)?;
        let mut lab = NetLab {
            subnet,
            hub: format!("cj-{pid}-{counter}-hub"),
            root_if: format!("cj{tag}c"),
            nodes: (0..n).map(|i| format!("cj-{pid}-{counter}-n{i}")).collect(),
            created: Vec::new(),
            links: Vec::new(),
        };
        // On any error `lab` is dropped, which removes what exists.
        let hub = lab.hub.clone();
        lab.add_namespace(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;

        // The root side: one veth end with the client address.
        let peer = format!("cj{tag}p");
        let root_if = lab.root_if.clone();
        lab.add_veth(&root_if, &peer)?;
        ip(&["link", "set", &peer, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &peer, "master", "br0", "up"])?;
        let client = format!("{}/24", lab.client_ip());
        ip(&["addr", "add", &client, "dev", &lab.root_if])?;
        ip(&["link", "set", &lab.root_if, "up"])?;

        for i in 0..n {
            let ns = lab.nodes[i].clone();
            lab.add_namespace(&ns)?;
            let inner = format!("cj{tag}{i}a");
            let outer = format!("cj{tag}{i}b");
            lab.add_veth(&inner, &outer)?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            let addr = format!("{}/24", lab.node_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn add_veth(&mut self, a: &str, b: &str) -> Result<()> {
        ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.links.push(a.to_string());
        Ok(())
    }

    fn add_namespace(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        Ok(())
    }

    /// Returns the number of replica namespaces.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Returns whether the lab has no replica namespaces (never true).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Returns the address of the test process in the lab (the root veth).
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, CLIENT_HOST)
    }

    /// Returns the address of replica `i` inside its namespace.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        let host = u8::try_from(i + 1).expect("at most 200 replicas");
        Ipv4Addr::new(10, 213, self.subnet, host)
    }

    /// Returns the namespace name of replica `i`, for `ip netns exec`.
    pub fn netns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Cuts replica `i` off from every other replica (both directions);
    /// the test process can still reach it. Isolating twice is an error.
    ///
    /// # Errors
    /// When nft fails.
    pub fn isolate(&self, i: usize) -> Result<()> {
        let others: Vec<String> = (0..self.nodes.len())
            .filter(|j| *j != i)
            .map(|j| self.node_ip(j).to_string())
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let set = others.join(", ");
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             \tchain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             \tchain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i], "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())
            .context("writing nft rules")?;
        let out = child.wait_with_output().context("waiting for nft")?;
        if !out.status.success() {
            bail!(
                "nft -f in {} failed: {}",
                self.nodes[i],
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!(
            "[netlab] isolated replica {i} ({}) from {set}",
            self.node_ip(i)
        );
        Ok(())
    }

    /// Removes the partition of replica `i`.
    ///
    /// # Errors
    /// When nft fails (for example the replica was not isolated).
    pub fn heal(&self, i: usize) -> Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.nodes[i],
            "nft",
            "delete",
            "table",
            "inet",
            NFT_TABLE,
        ]))?;
        println!("[netlab] healed replica {i} ({})", self.node_ip(i));
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Namespace deletion is asynchronous in the kernel; delete the root
        // veth explicitly so its address is gone at once.
        for link in self.links.drain(..) {
            let _ = Command::new("ip")
                .args(["link", "del", &link])
                .stderr(Stdio::null())
                .status();
        }
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                println!("[netlab] cleanup: {e:#}");
            }
        }
    }
}

/// Picks `X` for `10.213.X.0/24` among the subnets no root interface has
/// an address in, starting at a spot derived from the pid and counter.
fn pick_subnet(pid: u32, counter: u32) -> Result<u8> {
    let out = ip(&["-4", "-o", "addr", "show"])?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = (pid.wrapping_mul(7).wrapping_add(counter.wrapping_mul(31))) % 240;
    for k in 0..240 {
        let x = 10 + (start + k) % 240;
        if !used.contains(&format!("inet 10.213.{x}.")) {
            return Ok(u8::try_from(x).expect("below 256"));
        }
    }
    bail!("every 10.213.X.0/24 subnet is in use on this machine")
}
