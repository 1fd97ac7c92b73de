//! Waiting for the signals that ask a foreground process to stop: SIGINT
//! (Ctrl-C) and SIGTERM (what `docker stop` and Kubernetes send).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Installed handlers for SIGINT and SIGTERM. Installed at creation, so a
/// signal that arrives before anyone waits is not lost; [`Signals::recv`]
/// can be awaited again after it fired.
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// When the handlers cannot be installed.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM and returns its name.
    /// Cancel-safe: usable as a `select!` branch.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
