//! Mount processes that outlive the node plugin's container.
//!
//! A container runtime ends a container by killing every process in the
//! container's cgroup (runc and crun do so whenever the container shares
//! the node's PID namespace, and a container with a PID namespace of its
//! own takes every process in it down with its first one). A FUSE mount
//! whose process dies leaves each pod that bind-mounted it with
//! "transport endpoint is not connected" until that pod restarts: the
//! known failure of FUSE-based CSI drivers on every plugin upgrade, crash
//! or OOM kill.
//!
//! So with `--mount-cgroup NAME` the node plugin runs in the node's PID
//! namespace (the pod's `hostPID`) and moves each mount process, right
//! after starting it, into the cgroup `NAME` at the root of every cgroup
//! hierarchy of the node (one for cgroup v2, one per controller for v1),
//! out of its own container's. Stopping, restarting or replacing the
//! plugin's container (an upgrade) then leaves the mounts serving, and
//! the next plugin adopts them from its state directory by pid.
//!
//! Why this and not the alternatives:
//! * a second "mounter" container in the same pod survives a restart of
//!   the plugin's container but not a new pod (every DaemonSet rollout);
//! * a mount pod per volume made through the Kubernetes API (JuiceFS's
//!   way) survives everything but puts the API server on the mount path,
//!   needs pod-creating RBAC on every node, and cannot be exercised
//!   without a cluster;
//! * `systemd-run` on the node needs systemd there and the mount binary
//!   on the node's file system.
//!
//! The mount process keeps the rest of its namespaces: the mount
//! namespace of the container that started it (its binary and libraries,
//! already loaded, and the cluster DNS configuration stay readable after
//! the container ends), and the network namespace of the pod, which is why
//! the chart runs the node plugin on the node's network (`hostNetwork`,
//! with `ClusterFirstWithHostNet` DNS): a pod's network ends with the pod.
//!
//! Moving a process into a cgroup outside one's own cgroup namespace is
//! refused by the kernel (cgroup v2 gives containers a namespace of their
//! own), so the plugin does it through a copy of itself run by
//! `nsenter --target 1 --cgroup` ([`HELPER_ARG`]), which writes through the
//! node's cgroup file system as `/proc/1/root/sys/fs/cgroup` shows it.
//! PID 1 stands for "the node" there; where the plugin may not reach the
//! node's init (a sandbox that keeps a capability from everyone else),
//! `--node-pid` names another process of the node's own namespaces.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The first argument that makes `cairn-csi` place a process in a cgroup
/// and exit (run by the plugin itself under `nsenter`; not for users).
pub const HELPER_ARG: &str = "__place-in-cgroup";

/// Where the node's cgroup file system shows from the node plugin's
/// container: under the root of the mount namespace of `node_pid` (PID 1,
/// the node's init, unless told otherwise).
pub fn node_cgroup_fs(node_pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{node_pid}/root/sys/fs/cgroup"))
}

/// Whether `name` can be a cgroup directory name of ours: letters, digits,
/// `-`, `_` and `.`, not `.` or `..`, at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The roots of the cgroup hierarchies mounted under `fs`: `fs` itself
/// for cgroup v2 (it has `cgroup.procs`), else each directory under it
/// that has one (the v1 controllers, and the v2 tree a hybrid setup
/// mounts at `unified`). Symbolic links (`cpu` → `cpu,cpuacct`) are
/// skipped: their target is listed under its own name.
pub fn hierarchy_roots(fs: &Path) -> std::io::Result<Vec<PathBuf>> {
    if fs.join("cgroup.procs").exists() {
        return Ok(vec![fs.to_path_buf()]);
    }
    let mut roots = Vec::new();
    for e in std::fs::read_dir(fs)? {
        let e = e?;
        if e.file_type()?.is_dir() && e.path().join("cgroup.procs").exists() {
            roots.push(e.path());
        }
    }
    roots.sort();
    Ok(roots)
}

/// Makes cgroup `name` at the root of every hierarchy under `fs` and, with
/// a `pid`, moves that process (all its threads) into it. A v1 cpuset
/// cgroup starts with no CPUs and memory nodes and takes no process until
/// it has some, so a new one gets its parent's.
///
/// # Errors
/// No hierarchy under `fs`, or a directory or file that cannot be made or
/// written (named in the message).
pub fn place(fs: &Path, name: &str, pid: Option<u32>) -> Result<(), String> {
    let roots = hierarchy_roots(fs).map_err(|e| format!("reading {}: {e}", fs.display()))?;
    if roots.is_empty() {
        return Err(format!("no cgroup hierarchy under {}", fs.display()));
    }
    for root in roots {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = dir.join(file);
            let empty = std::fs::read_to_string(&own).is_ok_and(|s| s.trim().is_empty());
            if empty {
                let parent = std::fs::read_to_string(root.join(file))
                    .map_err(|e| format!("reading {}: {e}", root.join(file).display()))?;
                std::fs::write(&own, parent.trim())
                    .map_err(|e| format!("writing {}: {e}", own.display()))?;
            }
        }
        if let Some(pid) = pid {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .map_err(|e| format!("moving process {pid} into {}: {e}", procs.display()))?;
        }
    }
    Ok(())
}

/// Runs `cairn-csi __place-in-cgroup NODE_PID NAME [PID]` under `nsenter
/// --target NODE_PID --cgroup`, as the plugin does for each mount process
/// it starts (and without a pid once at start, to fail early where it
/// cannot work).
///
/// # Errors
/// `nsenter` or the helper failed; the message carries what it printed.
pub fn place_on_node(node_pid: u32, name: &str, pid: Option<u32>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding cairn-csi itself: {e}"))?;
    let node = node_pid.to_string();
    let mut cmd = Command::new("nsenter");
    cmd.args(["--target", &node, "--cgroup", "--"])
        .arg(exe)
        .args([HELPER_ARG, &node, name]);
    if let Some(pid) = pid {
        cmd.arg(pid.to_string());
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running nsenter (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "placing {} in cgroup {name} of the node: {}",
            pid.map_or_else(|| "nothing".to_string(), |p| format!("process {p}")),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process shares the node's PID namespace: `node_pid` (PID
/// 1, the node's init there) is in another cgroup than this process. In a
/// container with a PID namespace of its own PID 1 is one of the
/// container's processes, in the container's cgroup.
pub fn in_node_pid_namespace(node_pid: u32) -> bool {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let own = read("/proc/self/cgroup");
    let node = read(&format!("/proc/{node_pid}/cgroup"));
    !node.is_empty() && node != own
}

/// The helper's entry point: `ARGS` after [`HELPER_ARG`] are `NODE_PID
/// NAME [PID]`. Returns the process's exit code.
pub fn helper_main(args: &[String]) -> std::process::ExitCode {
    let usage = || {
        eprintln!("cairn-csi {HELPER_ARG} NODE_PID NAME [PID]: internal, run by the node plugin");
        std::process::ExitCode::from(2)
    };
    let (node, name, pid) = match args {
        [node, name] => (node, name, None),
        [node, name, pid] => match pid.parse::<u32>() {
            Ok(p) => (node, name, Some(p)),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    let Ok(node) = node.parse::<u32>() else {
        return usage();
    };
    if !valid_name(name) {
        return usage();
    }
    match place(&node_cgroup_fs(node), name, pid) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_plain_path_components() {
        assert!(valid_name("cairn-csi-mounts"));
        assert!(valid_name("a.b_c"));
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_v2_tree_is_one_hierarchy_and_the_process_lands_in_it() {
        let fs = tempfile::tempdir().unwrap();
        std::fs::write(fs.path().join("cgroup.procs"), "1\n").unwrap();
        std::fs::create_dir(fs.path().join("kubepods")).unwrap();
        std::fs::write(fs.path().join("kubepods/cgroup.procs"), "").unwrap();
        assert_eq!(
            hierarchy_roots(fs.path()).unwrap(),
            vec![fs.path().to_path_buf()]
        );
        place(fs.path(), "mounts", Some(4242)).unwrap();
        let procs = std::fs::read_to_string(fs.path().join("mounts/cgroup.procs")).unwrap();
        assert_eq!(procs, "4242");
    }

    #[test]
    fn v1_places_the_process_in_every_controller_and_gives_a_new_cpuset_its_parents_cpus() {
        let fs = tempfile::tempdir().unwrap();
        for c in ["memory", "cpuset", "cpu,cpuacct", "unified"] {
            std::fs::create_dir(fs.path().join(c)).unwrap();
            std::fs::write(fs.path().join(c).join("cgroup.procs"), "1\n").unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", fs.path().join("cpu")).unwrap();
        // Not a hierarchy: no cgroup.procs.
        std::fs::create_dir(fs.path().join("empty")).unwrap();
        std::fs::write(fs.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(fs.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        // What the kernel makes on mkdir: empty cpuset files.
        std::fs::create_dir(fs.path().join("cpuset/mounts")).unwrap();
        std::fs::write(fs.path().join("cpuset/mounts/cpuset.cpus"), "").unwrap();
        std::fs::write(fs.path().join("cpuset/mounts/cpuset.mems"), "\n").unwrap();

        let roots = hierarchy_roots(fs.path()).unwrap();
        let names: Vec<String> = roots
            .iter()
            .map(|r| r.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["cpu,cpuacct", "cpuset", "memory", "unified"]);

        place(fs.path(), "mounts", Some(77)).unwrap();
        for n in &names {
            let procs = fs.path().join(n).join("mounts/cgroup.procs");
            assert_eq!(std::fs::read_to_string(&procs).unwrap(), "77", "{n}");
        }
        let cpus = std::fs::read_to_string(fs.path().join("cpuset/mounts/cpuset.cpus")).unwrap();
        let mems = std::fs::read_to_string(fs.path().join("cpuset/mounts/cpuset.mems")).unwrap();
        assert_eq!((cpus.as_str(), mems.as_str()), ("0-1", "0"));
    }

    #[test]
    fn without_a_pid_only_the_cgroups_are_made_and_no_hierarchy_is_an_error() {
        let fs = tempfile::tempdir().unwrap();
        std::fs::write(fs.path().join("cgroup.procs"), "1\n").unwrap();
        place(fs.path(), "mounts", None).unwrap();
        assert!(fs.path().join("mounts").is_dir());
        assert!(!fs.path().join("mounts/cgroup.procs").exists());

        let none = tempfile::tempdir().unwrap();
        let e = place(none.path(), "mounts", Some(1)).unwrap_err();
        assert!(e.contains("no cgroup hierarchy"), "{e}");
    }
}
