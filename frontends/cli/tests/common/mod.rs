//! A real `cairn dev` process for the CLI's end-to-end tests.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `cairn dev` process, stopped with SIGINT when dropped (also when a
/// test fails midway).
pub struct Dev {
    pub child: Child,
    /// `--meta` addresses it printed.
    pub meta: String,
    /// Its "cairn dev: ... ready" line.
    pub ready: String,
    /// How long it took to print its addresses.
    pub startup: Duration,
    /// Its data directory.
    pub dir_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dev {
    /// Starts `cairn dev` on free ports in a temporary directory and
    /// waits until it printed its addresses.
    pub fn start() -> Dev {
        Self::start_with(&[])
    }

    /// As [`Self::start`], with more `cairn dev` flags.
    pub fn start_with(extra: &[&std::ffi::OsStr]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["dev", "--port", "0", "--dir"])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairn dev");
        // Drain stderr so a chatty cluster never blocks on a full pipe.
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink);
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = Instant::now();
        let mut meta = None;
        let mut ready = String::new();
        for line in lines.by_ref() {
            let line = line.expect("stdout");
            if line.starts_with("cairn dev:") {
                ready = line.clone();
            }
            if let Some(m) = line.trim().strip_prefix("--meta:") {
                meta = Some(m.trim().to_string());
            }
            if line.contains("chunkservers (data plane)") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let meta = meta.expect("cairn dev printed its --meta line");
        Dev {
            child,
            meta,
            ready,
            startup: started.elapsed(),
            dir_path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    /// Runs `cairn ARGS` against the cluster.
    pub fn cairn<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["--meta", &self.meta, "--timeout", "30s"])
            .args(args)
            .env_remove("CAIRN_CACHE_DIR")
            .env("RUST_LOG", "error")
            .output()
            .expect("run cairn")
    }

    /// Runs `cairn ARGS` and requires success.
    pub fn ok<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.cairn(&args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({:?}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Stops the cluster with SIGINT; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
