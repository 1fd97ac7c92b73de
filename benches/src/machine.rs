//! What a benchmark ran on, read from `/proc` (Linux only): the machine
//! (cores, kernel as `uname(2)` reports it, CPU, memory), the file system
//! a directory lives on, and the peak resident memory of processes.
//!
//! Peak resident memory is the kernel's high-water mark `VmHWM` from
//! `/proc/<pid>/status`: the largest resident set the process ever had,
//! which is what a memory limit has to accommodate (DESIGN §10). It can be
//! read only while the process is alive, so callers read it before they
//! stop what they started.

use std::path::Path;

use serde::Serialize;

/// The machine a benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may run on (what `nproc` prints).
    pub nproc: usize,
    /// `uname -srm`: kernel name, release and machine.
    pub kernel: String,
    /// `uname -v`: the kernel's build string.
    pub kernel_version: String,
    /// Host name.
    pub hostname: String,
    /// The first CPU's model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal` from `/proc/meminfo`, in KiB.
    pub mem_total_kib: u64,
}

/// The file system a path lives on, from `/proc/self/mounts`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FsInfo {
    /// Mount point (the longest one that is a prefix of the path).
    pub mount_point: String,
    /// File system type, e.g. `ext4`, `tmpfs`.
    pub fs_type: String,
    /// Device, e.g. `/dev/vda`.
    pub device: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Returns the description of this machine; fields that cannot be read
/// are empty or zero.
pub fn describe() -> Machine {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = format!(
        "{} {} {}",
        read_trimmed("/proc/sys/kernel/ostype"),
        read_trimmed("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH
    );
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| status_kib(&s, "MemTotal:"))
        .unwrap_or(0);
    Machine {
        nproc,
        kernel,
        kernel_version: read_trimmed("/proc/sys/kernel/version"),
        hostname: read_trimmed("/proc/sys/kernel/hostname"),
        cpu_model,
        mem_total_kib,
    }
}

/// Returns the value of a `Key:   1234 kB` line of a `/proc` file, in KiB.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Returns the peak resident memory (`VmHWM`) of process `pid` in KiB, or
/// `None` when the process is gone or the field is missing.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmHWM:")
}

/// Returns the peak resident memory (`VmHWM`) of this process in KiB.
pub fn self_peak_rss_kib() -> Option<u64> {
    peak_rss_kib(std::process::id())
}

/// The note [`drop_caches`] adds when it cannot drop the caches.
pub const CACHES_NOT_DROPPED: &str =
    "could not drop the page cache (not root): cold phases may read cached data";

/// Writes dirty pages back (`sync`), then drops the page cache and the
/// dentry and inode caches (`echo 3 > /proc/sys/vm/drop_caches`, root
/// only); when that fails, adds [`CACHES_NOT_DROPPED`] to `notes` once.
pub fn drop_caches(notes: &mut Vec<String>) {
    let _ = std::process::Command::new("sync").status();
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err()
        && !notes.iter().any(|n| n == CACHES_NOT_DROPPED)
    {
        notes.push(CACHES_NOT_DROPPED.to_string());
    }
}

/// Returns the file system `path` lives on, or `None` when
/// `/proc/self/mounts` cannot be read.
pub fn fs_of(path: &Path) -> Option<FsInfo> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let device = f.next()?;
            let mount_point = unescape_mount(f.next()?);
            let fs_type = f.next()?;
            path.starts_with(&mount_point).then(|| FsInfo {
                mount_point,
                fs_type: fs_type.to_string(),
                device: device.to_string(),
            })
        })
        // Later mounts over the same point shadow earlier ones, so among
        // equally long prefixes the last one wins.
        .fold(None, |best: Option<FsInfo>, m| match best {
            Some(b) if b.mount_point.len() > m.mount_point.len() => Some(b),
            _ => Some(m),
        })
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/self/mounts`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(digits) = b.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status_fields() {
        let status =
            "Name:\tcairn-meta\nVmPeak:\t  900 kB\nVmHWM:\t   43210 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(43_210));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn own_peak_rss_and_machine_are_readable() {
        assert!(self_peak_rss_kib().is_some_and(|k| k > 0));
        let m = describe();
        assert!(m.nproc >= 1);
        assert!(m.kernel.starts_with("Linux"));
        assert!(fs_of(Path::new("/")).is_some_and(|f| f.mount_point == "/"));
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\"), "/end\\");
    }
}
