//! Encrypted volumes through the real `cairn` binary against a real
//! cluster (`cairn dev`): what a user who chose encryption checks. The
//! contents written through `put`, `cp` and `checkpoint save` come back
//! whole through `get`, `cat` and `checkpoint load`, and are found nowhere
//! on the chunkservers' disks nor in the client's SSD cache directory
//! (while the same bytes in a plain volume are, which shows the search
//! works). A missing or wrong key fails naming the volume; key rotation
//! keeps old files readable; a tampered block reads as an error, never as
//! data.

use std::process::Output;

mod common;

use cairn_jepsen::disk::files_containing;
use common::Dev;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Bytes that contain `canary` many times, at block-straddling offsets,
/// `len` long.
fn canary_data(canary: &[u8], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut i = 0u64;
    while v.len() < len {
        v.extend_from_slice(canary);
        v.extend_from_slice(format!(" line {i} of the secret training set\n").as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

#[test]
fn encrypted_volumes_keep_contents_off_every_disk() {
    let dev = Dev::start();
    let local = tempfile::tempdir().unwrap();
    let key = local.path().join("sec.key");
    let cache = local.path().join("cache");
    let canary = format!("CANARY-{}-{}", std::process::id(), rand_suffix());
    let canary = canary.as_bytes();

    // --encrypted needs a key file; without one nothing is created.
    let refused = dev.cairn(["volume", "create", "sec", "--encrypted"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--key-file"),
        "{}",
        stderr(&refused)
    );

    // With a path that does not exist, a new key is written there (0600).
    let out = dev.ok([
        "volume".as_ref(),
        "create".as_ref(),
        "sec".as_ref(),
        "--encrypted".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--chunk-size".as_ref(),
        "1MiB".as_ref(),
    ]);
    assert!(stderr(&out).contains("keep it safe"), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is the owner's only");
    dev.ok(["volume", "create", "plain"]);
    let ls = String::from_utf8_lossy(&dev.ok(["volume", "ls"]).stdout).into_owned();
    assert!(ls.contains("yes (key v1)"), "{ls}");

    let keyed = format!("sec={}", key.display());
    // The data flags follow the (first) subcommand.
    let with_key = |args: &[&std::ffi::OsStr]| {
        let mut v: Vec<std::ffi::OsString> = vec![args[0].to_os_string()];
        v.extend([
            "--key-file".into(),
            keyed.clone().into(),
            "--cache-dir".into(),
            cache.clone().into(),
        ]);
        v.extend(args[1..].iter().map(|a| a.to_os_string()));
        v
    };

    // Contents of awkward sizes: a few bytes, a partial block, several
    // chunks with a partial last block.
    let small = local.path().join("small.txt");
    let mid = local.path().join("mid.bin");
    let big = local.path().join("big.bin");
    std::fs::write(&small, canary).unwrap();
    std::fs::write(&mid, canary_data(canary, 10_000)).unwrap();
    std::fs::write(&big, canary_data(canary, (2 << 20) + 12_345)).unwrap();
    for f in [&small, &mid, &big] {
        dev.ok(with_key(&["put".as_ref(), f.as_os_str(), "/sec/".as_ref()]));
    }
    // The same bytes in a plain volume: the search below must find them.
    dev.ok(["put".as_ref(), mid.as_os_str(), "/plain/".as_ref()]);
    dev.ok(with_key(&[
        "cp".as_ref(),
        "/sec/big.bin".as_ref(),
        "/sec/copy.bin".as_ref(),
    ]));
    dev.ok(with_key(&[
        "checkpoint".as_ref(),
        "save".as_ref(),
        "/sec/ckpt".as_ref(),
        "step-1".as_ref(),
        big.as_os_str(),
    ]));

    // Everything comes back whole, twice (the second time from the
    // client's caches).
    for round in 0..2 {
        for (name, src) in [
            ("small.txt", &small),
            ("mid.bin", &mid),
            ("big.bin", &big),
            ("copy.bin", &big),
        ] {
            let out = dev.ok(with_key(&["cat".as_ref(), format!("/sec/{name}").as_ref()]));
            assert!(
                out.stdout == std::fs::read(src).unwrap(),
                "cat {name}, round {round}"
            );
        }
    }
    let back = local.path().join("back.bin");
    dev.ok(with_key(&[
        "get".as_ref(),
        "/sec/big.bin".as_ref(),
        back.as_os_str(),
    ]));
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&big).unwrap(),
        "get"
    );
    let out = dev.ok(with_key(&[
        "checkpoint".as_ref(),
        "load".as_ref(),
        "/sec/ckpt".as_ref(),
    ]));
    assert!(
        out.stdout == std::fs::read(&big).unwrap(),
        "checkpoint load"
    );

    // The canary is on disk in the plain volume only.
    let found = files_containing(&dev.dir_path, canary);
    assert!(
        !found.is_empty(),
        "the search finds the plain volume's copy of the canary"
    );
    // The plain copy of mid.bin is on disk; nothing longer than one line of
    // the encrypted-only files is.
    let big_only = &std::fs::read(&big).unwrap()[10_000..10_400];
    assert!(
        files_containing(&dev.dir_path, big_only).is_empty(),
        "plaintext of an encrypted file on a chunkserver's disk"
    );
    assert!(
        files_containing(&cache, canary).is_empty(),
        "plaintext in the client's SSD cache directory"
    );

    // No key: a clear error naming the volume, and no data.
    let out = dev.cairn(["cat", "/sec/small.txt"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("'sec'") && stderr(&out).contains("no key"),
        "{}",
        stderr(&out)
    );
    // A wrong key: refused at connect, naming the volume.
    let wrong = local.path().join("wrong.key");
    dev.ok([
        "volume".as_ref(),
        "create".as_ref(),
        "other".as_ref(),
        "--encrypted".as_ref(),
        "--key-file".as_ref(),
        wrong.as_os_str(),
    ]);
    let wrong_spec = format!("sec={}", wrong.display());
    let out = dev.cairn(["cat", "--key-file", &wrong_spec, "/sec/small.txt"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("'sec'") && stderr(&out).contains("not that volume's key"),
        "{}",
        stderr(&out)
    );

    // Rotation: new files use version 2, old ones stay readable with the
    // key file that now holds both; a copy of the old file cannot read the
    // new file and says why.
    let old_key = local.path().join("old.key");
    std::fs::copy(&key, &old_key).unwrap();
    let out = dev.ok([
        "volume".as_ref(),
        "rotate-key".as_ref(),
        "sec".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("key version 2"));
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.lines().any(|l| l.starts_with("1:")) && text.lines().any(|l| l.starts_with("2:")));
    dev.ok(with_key(&[
        "put".as_ref(),
        mid.as_os_str(),
        "/sec/after.bin".as_ref(),
    ]));
    let attr =
        String::from_utf8_lossy(&dev.ok(["--json", "stat", "/sec/after.bin"]).stdout).into_owned();
    assert!(attr.contains("\"key_version\": 2"), "{attr}");
    for name in ["mid.bin", "after.bin"] {
        let out = dev.ok(with_key(&["cat".as_ref(), format!("/sec/{name}").as_ref()]));
        assert!(
            out.stdout == std::fs::read(&mid).unwrap(),
            "{name} after rotation"
        );
    }
    let old_spec = format!("sec={}", old_key.display());
    let out = dev.ok(["cat", "--key-file", &old_spec, "/sec/mid.bin"]);
    assert!(out.stdout == std::fs::read(&mid).unwrap());
    let out = dev.cairn(["cat", "--key-file", &old_spec, "/sec/after.bin"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("key version 2"), "{}", stderr(&out));
}

/// A suffix that differs between runs, so no stale file can hold the
/// canary.
fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
