//! Compressed volumes through the real `cairn` binary against a real
//! cluster (`cairn dev`): what a user who chose compression checks when
//! making volumes. `volume create --compression` makes the volume (with
//! `--encrypted` too), `volume ls` shows the algorithm and unit, and a bad
//! unit, or a unit without a compression, is refused clearly and creates
//! nothing.

use std::process::Output;

use serde_json::Value;

mod common;

use common::Dev;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `volume ls --json`, by volume name.
fn listed(dev: &Dev) -> std::collections::BTreeMap<String, Value> {
    let out = dev.ok(["volume", "ls", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)));
    all.into_iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect()
}

#[test]
fn compressed_volumes_are_made_and_listed_and_bad_units_refused() {
    let dev = Dev::start();
    let local = tempfile::tempdir().unwrap();
    let key = local.path().join("both.key");

    let made = dev.ok(["volume", "create", "lz", "--compression", "lz4"]);
    assert!(
        stdout(&made).contains("compressed (lz4/64KiB)"),
        "{}",
        stdout(&made)
    );
    // With encryption, a unit of its own and small chunks.
    dev.ok([
        "volume".as_ref(),
        "create".as_ref(),
        "both".as_ref(),
        "--compression".as_ref(),
        "zstd".as_ref(),
        "--compression-unit".as_ref(),
        "128KiB".as_ref(),
        "--chunk-size".as_ref(),
        "1MiB".as_ref(),
        "--encrypted".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]);
    dev.ok(["volume", "create", "plain"]);

    let ls = stdout(&dev.ok(["volume", "ls"]));
    assert!(ls.contains("COMPRESSION") && ls.contains("RATIO"), "{ls}");
    let row = |name: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {ls}"))
            .to_string()
    };
    assert!(row("lz").contains("lz4/64KiB"), "{ls}");
    let both = row("both");
    assert!(
        both.contains("zstd/128KiB") && both.contains("yes (key v1)"),
        "{ls}"
    );
    assert!(row("plain").contains("none"), "{ls}");

    let vols = listed(&dev);
    assert_eq!(vols["lz"]["policy"]["compression"], "lz4/64KiB");
    assert_eq!(vols["lz"]["policy"]["compression_unit"], 65536);
    assert!(
        vols["lz"]["compression_ratio"].is_null(),
        "nothing written yet"
    );
    assert_eq!(vols["both"]["policy"]["compression"], "zstd/128KiB");
    assert_eq!(vols["both"]["policy"]["encrypted"], true);
    assert_eq!(vols["plain"]["policy"]["compression"], "none");
    assert_eq!(vols["plain"]["policy"]["compression_unit"], 0);

    // A unit that is not a power of two from 16KiB to 1MiB: meta refuses,
    // naming the volume and the unit.
    let bad = dev.cairn([
        "volume",
        "create",
        "bad",
        "--compression",
        "lz4",
        "--compression-unit",
        "3KiB",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("volume bad: compression unit 3072 bytes is not a power of two"),
        "{}",
        stderr(&bad)
    );
    // A unit without a compression: refused before meta is asked.
    let bare = dev.cairn(["volume", "create", "bare", "--compression-unit", "64KiB"]);
    assert_eq!(bare.status.code(), Some(1), "{}", stderr(&bare));
    assert!(
        stderr(&bare).contains("--compression-unit needs --compression lz4 or zstd"),
        "{}",
        stderr(&bare)
    );
    // An algorithm the CLI does not know is a usage error.
    let unknown = dev.cairn(["volume", "create", "lzma", "--compression", "lzma"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    let vols = listed(&dev);
    for name in ["bad", "bare", "lzma"] {
        assert!(!vols.contains_key(name), "{name} was created: {vols:?}");
    }
}
