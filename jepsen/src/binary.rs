//! Finding the built server binaries.
//!
//! System tests start the binaries `cargo build --bins` left next to the
//! test executable: a test runs from `target/<profile>/deps/`, so the
//! binaries are one directory up. `CAIRN_BIN_DIR` overrides the directory
//! (to test an installed or release build).
//!
//! The harness does not build anything itself: cargo serializes builds on
//! a shared target directory and a test that invokes cargo would deadlock
//! behind its own build. A binary older than its sources is the caller's
//! business (`scripts/test` builds every binary first).

use std::path::PathBuf;

/// Environment variable naming the directory that holds the binaries.
pub const BIN_DIR_ENV: &str = "CAIRN_BIN_DIR";

/// Returns the directory the Cairn binaries are taken from: `$CAIRN_BIN_DIR`
/// when set, else `target/<profile>/` derived from the running test
/// executable.
///
/// # Panics
/// When the path of the running executable cannot be determined.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot determine the test executable's path");
    let mut dir = exe
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    // Integration tests live in target/<profile>/deps/.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Returns the path of binary `name` (e.g. `"cairn-meta"`).
///
/// # Panics
/// When the binary does not exist, with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run `cargo build --bins` (or `cargo build -p cairn-meta --bins`) \
         first, or point {BIN_DIR_ENV} at the directory holding it",
        path.display()
    );
    path
}
