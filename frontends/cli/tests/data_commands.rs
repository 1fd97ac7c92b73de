//! The data commands of the real `cairn` binary against a real cluster
//! (`cairn dev`: 3 meta replicas and 3 chunkservers in one process, as in
//! `dev_cluster.rs`): `put`, `get`, `cat`, `cp`, `checkpoint` and
//! `cache stats`, checked the way a user would — the bytes that come back
//! are the bytes that went in, failures exit 1 naming the path, JSON
//! parses.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;

use common::Dev;

/// Deterministic pseudo-random bytes, different per seed.
fn data(seed: u64, len: usize) -> Vec<u8> {
    cairn_jepsen::data_cluster::pattern(seed, len).to_vec()
}

/// Every entry under `root`: relative path → contents (`None` for a
/// directory).
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Makes the test tree: nested directories, an empty directory, a 0-byte
/// file, a 5 MiB file (several 1 MiB chunks, not a whole 8 MiB piece) and
/// 50 small files. Returns its file count and bytes.
fn make_tree(root: &Path) -> (u64, u64) {
    std::fs::create_dir_all(root.join("nested/a/b")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("small")).unwrap();
    std::fs::write(root.join("zero"), b"").unwrap();
    std::fs::write(root.join("big.bin"), data(1, 5 << 20)).unwrap();
    std::fs::write(root.join("nested/a/b/deep.txt"), b"deep down\n").unwrap();
    let mut bytes = (5 << 20) + 10;
    for i in 0..50u64 {
        let d = data(100 + i, 1000 + 37 * i as usize);
        bytes += d.len() as u64;
        std::fs::write(root.join(format!("small/f{i:02}")), d).unwrap();
    }
    (53, bytes)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

#[test]
fn data_commands_round_trip_through_a_dev_cluster() {
    let mut dev = Dev::start();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    let (files, bytes) = make_tree(&src);
    dev.ok([
        "volume",
        "create",
        "t",
        "--chunk-size",
        "1MiB",
        "--stripe-width",
        "4",
    ]);
    // Encryption needs a key: without --key-file the volume is refused,
    // with the reason (tests/encryption.rs covers encrypted volumes).
    let refused = dev.cairn(["volume", "create", "sec", "--encrypted"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--encrypted needs --key-file"),
        "{}",
        stderr(&refused)
    );
    let volumes = json(&dev.ok(["--json", "volume", "ls"]));
    let volumes = volumes.as_array().expect("a list of volumes");
    assert!(volumes.iter().all(|v| v["name"] != "sec"), "{volumes:?}");
    assert!(
        volumes.iter().all(|v| v["policy"]["encrypted"] == false),
        "{volumes:?}"
    );

    // put a tree into an existing directory: it lands under its name.
    let out = dev.ok([
        "--json".as_ref(),
        "put".as_ref(),
        "-j".as_ref(),
        "4".as_ref(),
        src.as_os_str(),
        "/t".as_ref(),
    ]);
    let summary = json(&out);
    assert_eq!(summary["op"], "put");
    assert_eq!(summary["files"], files);
    assert_eq!(summary["bytes"], bytes);
    assert_eq!(summary["failed"], 0);

    // get it back into a new local directory: every file byte for byte,
    // every directory (the empty one too).
    let back = local.path().join("back");
    let out = dev.ok(["get".as_ref(), "/t/src".as_ref(), back.as_os_str()]);
    let line = stderr(&out);
    assert!(
        line.starts_with(&format!("get {files} files, 5.1 MiB in ")) && line.ends_with("/s)\n"),
        "summary line: {line}"
    );
    let want = tree(&src);
    assert_eq!(want.len(), 58, "53 files and 5 directories");
    assert!(tree(&back) == want, "get returned a different tree");

    // cat equals the file; several paths concatenate.
    let out = dev.ok(["cat", "/t/src/big.bin"]);
    assert!(out.stdout == data(1, 5 << 20), "cat of big.bin differs");
    assert!(out.stderr.is_empty(), "cat printed {}", stderr(&out));
    let out = dev.ok([
        "cat",
        "/t/src/nested/a/b/deep.txt",
        "/t/src/zero",
        "/t/src/small/f00",
    ]);
    let mut expected = b"deep down\n".to_vec();
    expected.extend(data(100, 1000));
    assert!(out.stdout == expected, "cat of three files differs");

    // Extended attributes: set, list, get (raw, hex, JSON), refused when
    // too large; cp gives copies the source's.
    dev.ok(["xattr", "set", "/t/src/zero", "user.dataset", "imagenet-v2"]);
    let blob = local.path().join("blob");
    std::fs::write(&blob, [0u8, 1, 2, 255]).unwrap();
    dev.ok([
        "xattr".as_ref(),
        "set".as_ref(),
        "/t/src/zero".as_ref(),
        "user.crc".as_ref(),
        "--value-file".as_ref(),
        blob.as_os_str(),
    ]);
    let out = dev.ok(["xattr", "get", "/t/src/zero", "user.dataset"]);
    assert_eq!(out.stdout, b"imagenet-v2");
    let out = dev.ok(["xattr", "get", "--hex", "/t/src/zero", "user.crc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "000102ff");
    let listed = json(&dev.ok(["--json", "xattr", "ls", "/t/src/zero"]));
    assert_eq!(
        listed,
        serde_json::json!([{"name": "user.crc", "size": 4}, {"name": "user.dataset", "size": 11}])
    );
    let out = dev.cairn([
        "xattr",
        "set",
        "--create",
        "/t/src/zero",
        "user.dataset",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    std::fs::write(&blob, vec![7u8; (64 << 10) + 1]).unwrap();
    let out = dev.cairn([
        "xattr".as_ref(),
        "set".as_ref(),
        "/t/src/zero".as_ref(),
        "user.big".as_ref(),
        "--value-file".as_ref(),
        blob.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("65536"), "{}", stderr(&out));

    // cp -r within Cairn, then get the copy: the same tree.
    dev.ok(["cp", "-r", "/t/src", "/t/copy"]);
    let out = dev.ok(["xattr", "get", "/t/copy/zero", "user.dataset"]);
    assert_eq!(out.stdout, b"imagenet-v2", "cp dropped an xattr");
    dev.ok(["xattr", "rm", "/t/copy/zero", "user.dataset"]);
    let out = dev.cairn(["xattr", "get", "/t/copy/zero", "user.dataset"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("cairn: xattr get /t/copy/zero:"),
        "{}",
        stderr(&out)
    );
    let copy = local.path().join("copy");
    dev.ok([
        "-q".as_ref(),
        "get".as_ref(),
        "/t/copy".as_ref(),
        copy.as_os_str(),
    ]);
    assert!(tree(&copy) == want, "cp -r made a different tree");

    // Failures exit 1 with one line naming the path, and no panic.
    let zero = src.join("zero");
    let out = dev.cairn(["put".as_ref(), zero.as_os_str(), "/t/missing/zero".as_ref()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.starts_with("cairn: put /t/missing/zero: No such file or directory"),
        "{e}"
    );
    let nope = local.path().join("nope");
    let out = dev.cairn(["put".as_ref(), nope.as_os_str(), "/t".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "put {}: No such file or directory",
            nope.display()
        )),
        "{e}"
    );
    let out = dev.cairn(["cat", "/t/src/absent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("cairn: cat /t/src/absent: No such file or directory"));
    let out = dev.cairn(["cp", "/t/src", "/t/copy2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/t/src is a directory (use -r"),
        "{}",
        stderr(&out)
    );
    assert!(!e.contains("panicked"));

    // Checkpoints: save from a file with a metric, list, load, prune.
    let ck = local.path().join("model.pt");
    std::fs::write(&ck, data(7, 3 << 20)).unwrap();
    dev.ok([
        "checkpoint".as_ref(),
        "save".as_ref(),
        "/t/ckpt".as_ref(),
        "step-1".as_ref(),
        ck.as_os_str(),
        "--metric".as_ref(),
        "loss=0.5".as_ref(),
        "--metric".as_ref(),
        "step=100".as_ref(),
    ]);
    let list = json(&dev.ok(["--json", "checkpoint", "list", "/t/ckpt"]));
    let items = list.as_array().expect("a JSON array");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["name"], "step-1");
    assert_eq!(items[0]["size"], 3 << 20);
    assert_eq!(items[0]["metrics"]["loss"], 0.5);
    assert_eq!(items[0]["metrics"]["step"], 100.0);
    assert_eq!(items[0]["crc32"], crc32fast::hash(&data(7, 3 << 20)));
    let text = dev.ok(["checkpoint", "list", "/t/ckpt"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("step-1") && text.contains("3 MiB") && text.contains("loss=0.5"));

    let loaded = local.path().join("loaded.pt");
    dev.ok([
        "checkpoint".as_ref(),
        "load".as_ref(),
        "/t/ckpt".as_ref(),
        "step-1".as_ref(),
        "-o".as_ref(),
        loaded.as_os_str(),
    ]);
    assert!(
        std::fs::read(&loaded).unwrap() == data(7, 3 << 20),
        "load -o"
    );
    let out = dev.ok(["checkpoint", "load", "/t/ckpt"]);
    assert!(out.stdout == data(7, 3 << 20), "load to stdout");

    for (i, name) in ["step-2", "step-3"].into_iter().enumerate() {
        std::fs::write(&ck, data(8 + i as u64, 1 << 20)).unwrap();
        dev.ok([
            "checkpoint".as_ref(),
            "save".as_ref(),
            "/t/ckpt".as_ref(),
            name.as_ref(),
            ck.as_os_str(),
        ]);
    }
    let out = dev.ok(["checkpoint", "prune", "/t/ckpt", "--keep", "1"]);
    let pruned = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        pruned.contains("removed /t/ckpt/step-1") && pruned.contains("removed /t/ckpt/step-2"),
        "{pruned}"
    );
    let list = json(&dev.ok(["--json", "checkpoint", "list", "/t/ckpt"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["step-3"]);
    let out = dev.ok(["checkpoint", "load", "/t/ckpt"]);
    assert!(out.stdout == data(9, 1 << 20), "the newest is step-3");
    let out = dev.cairn(["checkpoint", "load", "/t/no-ckpt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no checkpoint in /t/no-ckpt"),
        "{}",
        stderr(&out)
    );

    // cache stats: a `cat` with a cache directory publishes its counters
    // when it closes. That process has exited by the time `cache stats`
    // runs, so the stats module may already count it as dead and drop its
    // file: what is asserted is a well-formed merged object (zeros when no
    // live client publishes) and the process count that goes with it.
    let cache = local.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    dev.ok([
        "cat".as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
        "/t/src/big.bin".as_ref(),
    ]);
    let stats = json(&dev.ok([
        "--json".as_ref(),
        "cache".as_ref(),
        "stats".as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
    ]));
    assert!(stats["merged"].is_object(), "{stats}");
    assert!(stats["merged"]["memory"].is_object(), "{stats}");
    let processes = stats["processes"].as_u64().expect("a process count");
    assert_eq!(
        stats["per_process"].as_array().map(Vec::len),
        Some(processes as usize)
    );
    let text = dev.ok([
        "cache".as_ref(),
        "stats".as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.starts_with("TIER") && text.contains("\nmemory "),
        "{text}"
    );
    let memory = json(&dev.ok([
        "--json".as_ref(),
        "cache".as_ref(),
        "stats".as_ref(),
        "--type".as_ref(),
        "memory".as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
    ]));
    assert_eq!(memory["tier"], "memory", "{memory}");
    for key in [
        "capacity_bytes",
        "used_bytes",
        "hits",
        "misses",
        "hit_ratio",
        "evictions",
        "prefetch_hits",
    ] {
        assert!(memory[key].is_number(), "{key} in {memory}");
    }
    let out = dev.cairn(["cache", "stats", "--type", "disk"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown tier is a usage error"
    );
    let out = dev.cairn(["cache", "stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--cache-dir"), "{}", stderr(&out));

    assert!(dev.stop(), "cairn dev did not stop cleanly");
}
