//! Progress of the commands that move data (`put`, `get`, `cp`,
//! `checkpoint save|load`): one bar while they run, one summary when they
//! end.
//!
//! # Drawing
//! The bar is an [`indicatif`] bar drawn on stderr, so it never mixes with
//! data or JSON on stdout. It is hidden when stderr is not a terminal (a
//! log file or a CI job gets no control characters) and with `--quiet`.
//! Totals are known before the first byte moves (the commands walk their
//! sources first), so the bar shows bytes done/total, throughput (binary
//! units, MiB/s) and an ETA, with "files done/total" as its message. A
//! steady tick redraws it while one large piece is in flight, so the
//! throughput and ETA keep moving. indicatif limits redraws to 20 per
//! second whatever the update rate, so workers update it per piece
//! without throttling of their own. Errors printed while it is drawn go
//! through [`Progress::report`], which hides the bar for the line.
//!
//! # Summary
//! [`Summary::print`]: one line on stderr (`put 123 files, 1.2 GiB in 3.4 s
//! (356.0 MiB/s)`), like `dd` reports its statistics, unless `--quiet`;
//! with `--json`, a JSON object on stdout instead (on stderr when stdout
//! carries the data, as `checkpoint load -o -` does).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::format::human_bytes;
use crate::report;

/// A bar with known totals.
const BAR: &str = "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                   {binary_bytes_per_sec} ETA {eta}";
/// A stream of unknown length (a checkpoint saved from stdin).
const SPINNER: &str = "{spinner} {msg} {binary_bytes} {binary_bytes_per_sec} {elapsed}";

/// The progress of one command. Shared by its workers (`&self` methods,
/// atomic counters).
#[derive(Debug)]
pub struct Progress {
    op: &'static str,
    bar: ProgressBar,
    files_total: AtomicU64,
    files_done: AtomicU64,
    failed: AtomicU64,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    started: Instant,
    /// Shown instead of "files done/total" (single-stream commands).
    label: Option<String>,
}

impl Progress {
    /// Starts the progress of `op` over `files` files and `bytes` bytes
    /// (`None`: unknown, a spinner is drawn instead of a bar).
    pub fn new(op: &'static str, files: u64, bytes: Option<u64>, quiet: bool) -> Self {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let template = if bytes.is_some() { BAR } else { SPINNER };
        // The templates are constants; the fallback only guards against an
        // indicatif that no longer knows a key.
        let style = ProgressStyle::with_template(template)
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(bytes, target).with_style(style);
        bar.enable_steady_tick(Duration::from_millis(250));
        let p = Self {
            op,
            bar,
            files_total: AtomicU64::new(files),
            files_done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(bytes.unwrap_or(0)),
            started: Instant::now(),
            label: None,
        };
        p.update_message();
        p
    }

    /// Shows `label` instead of the file count (a command that moves one
    /// stream, such as a checkpoint).
    #[must_use]
    pub fn with_label(mut self, label: String) -> Self {
        self.bar.set_message(label.clone());
        self.label = Some(label);
        self
    }

    fn update_message(&self) {
        if self.label.is_some() {
            return;
        }
        let done = self.files_done.load(Ordering::Relaxed);
        let total = self.files_total.load(Ordering::Relaxed);
        self.bar
            .set_message(format!("{} {done}/{total} files", self.op));
    }

    /// Counts `n` more bytes done (acknowledged by the destination).
    pub fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        self.bar.inc(n);
    }

    /// Sets the bytes done to `n` (for callers that report a running
    /// total).
    pub fn set_bytes(&self, n: u64) {
        self.bytes_done.store(n, Ordering::Relaxed);
        self.bar.set_position(n);
    }

    /// A file turned out to be `actual` bytes instead of the `planned`
    /// (it changed between the walk and the copy): corrects the total.
    pub fn resize(&self, planned: u64, actual: u64) {
        if planned == actual {
            return;
        }
        let next = |t: u64| t.saturating_add(actual).saturating_sub(planned);
        let prev = self
            .bytes_total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(next(t)))
            .unwrap_or_else(|t| t);
        let total = next(prev);
        self.bar.set_length(total);
    }

    /// Counts one more file done.
    pub fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.update_message();
    }

    /// Prints `e` (hiding the bar meanwhile) and counts a failure.
    pub fn report(&self, e: &anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.bar.suspend(|| report::print(e));
    }

    /// Counts `n` failures whose causes were already reported (sources
    /// that could not be walked, files under a directory that could not
    /// be created).
    pub fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    /// Removes the bar and returns the summary.
    pub fn finish(&self) -> Summary {
        self.bar.finish_and_clear();
        Summary {
            op: self.op,
            files: self.files_done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes: self.bytes_done.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }
}

/// What a command moved, for its last line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The command (`put`, `get`, ...).
    pub op: &'static str,
    /// Files completed.
    pub files: u64,
    /// Failures reported.
    pub failed: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// Returns the throughput in bytes per second (0 for an instant run).
    pub fn bytes_per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        // Precision loss is irrelevant for a rate printed with a decimal.
        if s > 0.0 { self.bytes as f64 / s } else { 0.0 }
    }

    /// Returns the summary line, e.g. `put 123 files, 1.2 GiB in 3.4 s
    /// (356.0 MiB/s)`.
    pub fn line(&self) -> String {
        let files = if self.files == 1 { "file" } else { "files" };
        let mut s = format!(
            "{} {} {files}, {} in {:.1} s ({}/s)",
            self.op,
            self.files,
            human_bytes(self.bytes),
            self.elapsed.as_secs_f64(),
            // Truncation to whole bytes per second is what is printed.
            human_bytes(self.bytes_per_second() as u64)
        );
        if self.failed > 0 {
            s.push_str(&format!(", {} failed", self.failed));
        }
        s
    }

    /// Returns the summary as JSON.
    pub fn json(&self) -> Value {
        json!({
            "op": self.op,
            "files": self.files,
            "failed": self.failed,
            "bytes": self.bytes,
            "seconds": self.elapsed.as_secs_f64(),
            "bytes_per_second": self.bytes_per_second(),
        })
    }

    /// Prints the summary: JSON (on stdout, or stderr when
    /// `stdout_is_data`) with `json`, else the line on stderr unless
    /// `quiet`.
    pub fn print(&self, quiet: bool, json: bool, stdout_is_data: bool) {
        print_summary(&self.line(), &self.json(), quiet, json, stdout_is_data);
    }
}

/// Prints a summary `line` or its `json` form by the rules of
/// [`Summary::print`].
pub fn print_summary(line: &str, json: &Value, quiet: bool, as_json: bool, stdout_is_data: bool) {
    if as_json {
        let text = serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string());
        if stdout_is_data {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    } else if !quiet {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(files: u64, bytes: u64, ms: u64, failed: u64) -> Summary {
        Summary {
            op: "put",
            files,
            failed,
            bytes,
            elapsed: Duration::from_millis(ms),
        }
    }

    #[test]
    fn summary_lines() {
        assert_eq!(
            summary(123, 3 << 29, 2000, 0).line(),
            "put 123 files, 1.5 GiB in 2.0 s (768 MiB/s)"
        );
        assert_eq!(
            summary(1, 512, 0, 0).line(),
            "put 1 file, 512 B in 0.0 s (0 B/s)"
        );
        assert_eq!(
            summary(2, 4096, 1000, 3).line(),
            "put 2 files, 4 KiB in 1.0 s (4 KiB/s), 3 failed"
        );
    }

    #[test]
    fn summary_json() {
        let v = summary(3, 1 << 20, 500, 1).json();
        assert_eq!(v["op"], "put");
        assert_eq!(v["files"], 3);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["bytes"], 1 << 20);
        assert_eq!(v["bytes_per_second"], f64::from(2 << 20));
    }

    #[test]
    fn totals_follow_resized_files() {
        let p = Progress::new("get", 2, Some(100), true);
        p.resize(40, 60);
        assert_eq!(p.bytes_total.load(Ordering::Relaxed), 120);
        p.resize(60, 0);
        assert_eq!(p.bytes_total.load(Ordering::Relaxed), 60);
        p.add_bytes(10);
        p.file_done();
        let s = p.finish();
        assert_eq!((s.files, s.bytes, s.failed), (1, 10, 0));
    }
}
