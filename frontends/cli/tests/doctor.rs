//! `cairn doctor` end to end against a real `cairn dev` cluster and its
//! FUSE mount: the report a user attaches to a ticket has every check with
//! its unit and verdict, an unreachable cluster is a failed check (exit 1,
//! report still written), and no test file survives the run or a Ctrl-C.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_jepsen::fuse::is_mounted;
use common::Dev;
use serde_json::Value;

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// The check carries a positive value in `unit` and a threshold verdict.
fn measured(report: &Value, name: &str, unit: &str) -> f64 {
    let c = check(report, name);
    assert_eq!(c["unit"], unit, "{c}");
    assert!(
        ["ok", "warning", "critical"].contains(&c["verdict"].as_str().unwrap()),
        "{c}"
    );
    assert!(c["thresholds"].is_string(), "{c}");
    let v = c["value"].as_f64().unwrap_or_else(|| panic!("{c}"));
    assert!(v >= 0.0, "{c}");
    v
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".cairn-doctor"))
        .collect()
}

const SMALL: [&str; 6] = [
    "--read-size",
    "16MiB",
    "--checkpoint-size",
    "16MiB",
    "--random-reads",
    "320",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_every_check_through_a_mount_and_the_library_and_cleans_up() {
    let mnt = tempfile::tempdir().unwrap();
    let dir = mnt.path().canonicalize().unwrap();
    let mut dev = Dev::start_with(&[std::ffi::OsStr::new("--mount"), dir.as_os_str()]);
    let t0 = Instant::now();
    while !is_mounted(&dir) {
        assert!(t0.elapsed() < Duration::from_secs(20), "not mounted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dev.ok(["volume", "create", "demo"]);
    let work = dir.join("demo/jobs");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("keep.txt"), b"the user's file").unwrap();

    // Through the mount, the report in a file.
    let report_file = dev.dir_path.join("mount-report.json");
    let mut args = vec!["doctor".to_string(), work.display().to_string()];
    args.extend(SMALL.iter().map(|s| (*s).to_string()));
    args.extend([
        "--report".into(),
        report_file.display().to_string(),
        "-q".into(),
    ]);
    let out = dev.ok(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("data_read_throughput") && text.contains("verdict:"),
        "{text}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    assert_eq!(r["target"]["mode"], "local", "{r:#}");
    assert!(
        r["target"]["fs_type"].as_str().unwrap().contains("cairn"),
        "the mount is recognised as Cairn: {r:#}"
    );
    assert!(r["timestamp"].as_str().unwrap().starts_with("20"), "{r:#}");
    assert!(measured(&r, "data_read_throughput", "MB/s") > 0.0);
    assert!(measured(&r, "data_read_latency", "ms") > 0.0);
    assert!(measured(&r, "checkpoint_save_time", "s") > 0.0);
    assert!(measured(&r, "checkpoint_restore_time", "s") > 0.0);
    // Same host, same clock: well inside the warning threshold.
    assert!(measured(&r, "clock_skew", "ms") < 100.0, "{r:#}");
    assert_eq!(check(&r, "meta quorum")["verdict"], "ok", "{r:#}");
    assert_eq!(check(&r, "chunkservers alive")["verdict"], "ok", "{r:#}");
    assert_eq!(
        check(&r, "under-replicated chains")["verdict"],
        "ok",
        "{r:#}"
    );
    assert!(measured(&r, "chunkserver 1 round trip", "µs") > 0.0);
    assert_eq!(r["verdict"], "ok", "a healthy dev cluster: {r:#}");
    assert!(leftovers(&work).is_empty(), "{:?}", leftovers(&work));
    assert_eq!(
        std::fs::read(work.join("keep.txt")).unwrap(),
        b"the user's file",
        "the user's files are untouched"
    );

    // Through the client library, the report on stdout, cache counters
    // read from a (here empty) cache directory.
    let cache = dev.dir_path.join("cache");
    std::fs::create_dir(&cache).unwrap();
    let mut args = vec![
        "--json".to_string(),
        "doctor".into(),
        "/demo/jobs".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
        "-q".into(),
    ];
    args.extend(SMALL.iter().map(|s| (*s).to_string()));
    let out = dev.ok(&args);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["target"]["mode"], "cairn", "{r:#}");
    assert!(measured(&r, "data_read_throughput", "MB/s") > 0.0);
    assert!(measured(&r, "checkpoint_restore_time", "s") > 0.0);
    assert_eq!(check(&r, "cache_eviction_rate")["verdict"], "ok", "{r:#}");
    assert!(leftovers(&work).is_empty(), "{:?}", leftovers(&work));

    // Ctrl-C in the middle of a long run: exit 1, nothing left behind.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--meta", &dev.meta, "doctor", "-q", "--read-size", "8GiB"])
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while leftovers(&work).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no test directory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status, err)
    })
    .await
    .unwrap();
    assert!(!out.0.success(), "an interrupted doctor fails");
    assert!(out.1.contains("stopped by SIGINT"), "{}", out.1);
    assert!(leftovers(&work).is_empty(), "{:?}", leftovers(&work));
    assert!(dev.stop(), "cairn dev did not exit cleanly");
}

#[test]
fn an_unreachable_cluster_is_a_failed_check_and_exit_1_with_the_report_written() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "--meta",
            "127.0.0.1:1",
            "--timeout",
            "2s",
            "doctor",
            "--quick",
        ])
        .arg(dir.path())
        .arg("--report")
        .arg(&report)
        .env_remove("CAIRN_CACHE_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("critical or failed"), "{stderr}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["verdict"], "failed", "{r:#}");
    let meta = check(&r, "meta quorum");
    assert!(
        meta["detail"].as_str().unwrap().contains("127.0.0.1:1"),
        "the failure names the address: {meta}"
    );
    // --quick measured nothing, and the host facts are there anyway.
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["group"] != "io")
    );
    assert!(
        check(&r, "host")["detail"]
            .as_str()
            .unwrap()
            .contains("CPUs")
    );
}
