//! How the command line reports failures:
//! `cairn: mkdir /a/b: No such file or directory (not_found: ...)` on
//! stderr and exit status 1 — the errno text a shell user knows, then the
//! stable Cairn code and meta's message for the details. Never a panic or
//! a debug dump.
//!
//! Commands over several paths (`mkdir a b`, `rm a b`) report each failure
//! as it happens, go on with the rest and fail at the end with
//! [`Reported`], which `main` does not print again.

use std::fmt;

use cairn_proto::{CairnStatus, ErrorCode};

/// Returns the strerror(3) text of `code`'s errno, e.g. "No such file or
/// directory".
pub fn strerror(code: ErrorCode) -> String {
    let s = std::io::Error::from_raw_os_error(code.errno()).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A failed operation on a path (or on nothing in particular).
#[derive(Debug)]
pub struct OpError {
    /// The command or step, e.g. `mkdir`.
    pub op: String,
    /// The path it was about, if any.
    pub path: Option<String>,
    /// What meta (or the client) said.
    pub status: CairnStatus,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op)?;
        if let Some(p) = &self.path {
            write!(f, " {p}")?;
        }
        write!(
            f,
            ": {} ({}: {})",
            strerror(self.status.code),
            self.status.code,
            self.status.message
        )
    }
}

impl std::error::Error for OpError {}

/// Attaches the operation (and path) to a client error.
pub trait Context<T> {
    /// Returns the error as an [`OpError`] for `op` on `path`.
    fn op(self, op: &str, path: &str) -> anyhow::Result<T>;
    /// Returns the error as an [`OpError`] for `op`, about no path.
    fn op_only(self, op: &str) -> anyhow::Result<T>;
}

impl<T> Context<T> for Result<T, CairnStatus> {
    fn op(self, op: &str, path: &str) -> anyhow::Result<T> {
        self.map_err(|status| {
            OpError {
                op: op.to_string(),
                path: Some(path.to_string()),
                status,
            }
            .into()
        })
    }

    fn op_only(self, op: &str) -> anyhow::Result<T> {
        self.map_err(|status| {
            OpError {
                op: op.to_string(),
                path: None,
                status,
            }
            .into()
        })
    }
}

/// Returns an [`OpError`] for a failure the CLI itself detected.
pub fn op_error(
    op: &str,
    path: &str,
    code: ErrorCode,
    message: impl Into<String>,
) -> anyhow::Error {
    OpError {
        op: op.to_string(),
        path: Some(path.to_string()),
        status: CairnStatus::new(code, message),
    }
    .into()
}

/// Marks a failure whose details were already printed.
#[derive(Debug)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("some operations failed")
    }
}

impl std::error::Error for Reported {}

/// Prints `e` the way `main` does, for commands that go on after a
/// failure.
pub fn print(e: &anyhow::Error) {
    eprintln!("cairn: {e:#}");
}
