//! The pure decisions of the meta retry loop, kept apart from tonic so they
//! are tested without a network: which address to try next ([`AddrBook`]),
//! how long to wait ([`Backoff`]), what an error means for the loop
//! ([`classify`]) and what to tell the user when it gives up ([`Tried`]).
//!
//! The loop itself lives in the parent module; it owns the channels and the
//! clock.

use std::fmt;
use std::time::Duration;

use cairn_proto::{CairnStatus, ErrorCode};

/// The first wait after a failed attempt.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between two attempts.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Returns `addr` without a `http://` / `https://` scheme or a trailing `/`,
/// the form addresses are compared in (leader hints carry bare
/// `host:port`, users may type either).
pub(crate) fn normalize(addr: &str) -> &str {
    let a = addr.trim();
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.trim_end_matches('/')
}

/// Checks that `addr` looks like `host:port` (optionally with a scheme) and
/// returns its normalized form.
///
/// # Errors
/// [`ErrorCode::Invalid`] naming the address.
pub(crate) fn parse_addr(addr: &str) -> Result<String, CairnStatus> {
    let a = normalize(addr);
    let bad = || {
        CairnStatus::new(
            ErrorCode::Invalid,
            format!("meta address {addr:?} is not of the form host:port"),
        )
    };
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(a.to_string())
}

/// The meta addresses a client knows, in the order given, plus any leader
/// address learned from a hint. Indices are stable: addresses are only
/// appended, never removed or reordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrBook {
    addrs: Vec<String>,
}

impl AddrBook {
    /// Returns a book of `addrs`, normalized and without duplicates.
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`] when the list is empty or an address is
    /// malformed.
    pub(crate) fn new<S: AsRef<str>>(
        addrs: impl IntoIterator<Item = S>,
    ) -> Result<Self, CairnStatus> {
        let mut book = Self { addrs: Vec::new() };
        for a in addrs {
            let a = a.as_ref().trim();
            if a.is_empty() {
                continue;
            }
            let a = parse_addr(a)?;
            if book.position(&a).is_none() {
                book.addrs.push(a);
            }
        }
        if book.addrs.is_empty() {
            return Err(CairnStatus::new(
                ErrorCode::Invalid,
                "no meta address given (expected host:port[,host:port...])",
            ));
        }
        Ok(book)
    }

    /// Returns how many addresses the book holds (at least one).
    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Returns the address at `idx` (taken modulo the length).
    pub(crate) fn get(&self, idx: usize) -> &str {
        &self.addrs[idx % self.addrs.len()]
    }

    /// Returns every address, in order.
    pub(crate) fn all(&self) -> &[String] {
        &self.addrs
    }

    /// Returns the index of `addr`, compared in normalized form.
    pub(crate) fn position(&self, addr: &str) -> Option<usize> {
        let a = normalize(addr);
        self.addrs.iter().position(|x| x == a)
    }

    /// Appends `addr` (already validated by [`parse_addr`]) and returns its
    /// index; returns the existing index when it is already known.
    pub(crate) fn push(&mut self, addr: String) -> usize {
        if let Some(i) = self.position(&addr) {
            return i;
        }
        self.addrs.push(addr);
        self.addrs.len() - 1
    }

    /// Returns the index after `idx`, wrapping around.
    pub(crate) fn next(&self, idx: usize) -> usize {
        (idx % self.addrs.len() + 1) % self.addrs.len()
    }
}

/// Exponential backoff: 10 ms, doubling, capped at 500 ms.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    /// Returns a backoff at its first step.
    pub(crate) fn new() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }

    /// Returns the wait before the next attempt and advances.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        d
    }
}

/// What the retry loop does after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Go to this address (a NOT_LEADER hint).
    Redirect(String),
    /// Try the next address after a backoff (UNAVAILABLE, a transport
    /// failure, a time-out, NOT_LEADER without a hint).
    Rotate,
    /// Return the error to the caller: the request itself was refused.
    Stop,
}

/// Returns what an error means for the retry loop.
pub(crate) fn classify(e: &CairnStatus) -> Step {
    match e.code {
        ErrorCode::NotLeader => match e.leader_addr.as_deref().map(normalize) {
            Some(a) if !a.is_empty() => Step::Redirect(a.to_string()),
            _ => Step::Rotate,
        },
        c if c.is_retryable() => Step::Rotate,
        _ => Step::Stop,
    }
}

/// The addresses a call tried, in first-tried order, for the give-up
/// message.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tried {
    addrs: Vec<String>,
    attempts: u32,
}

impl Tried {
    /// Records an attempt on `addr`.
    pub(crate) fn note(&mut self, addr: &str) {
        self.attempts += 1;
        if !self.addrs.iter().any(|a| a == addr) {
            self.addrs.push(addr.to_string());
        }
    }

    /// Returns how many attempts were made.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addrs.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_normalizes_dedups_and_rejects_garbage() {
        let b =
            AddrBook::new(["127.0.0.1:7001", "http://127.0.0.1:7001/", " h2:7002", ""]).unwrap();
        assert_eq!(b.all(), ["127.0.0.1:7001", "h2:7002"]);
        assert_eq!(b.position("http://h2:7002"), Some(1));
        assert!(AddrBook::new(Vec::<String>::new()).is_err());
        assert!(AddrBook::new([""]).is_err());
        for bad in ["localhost", "h:notaport", ":7001", "h:70000", "a/b:1"] {
            let e = AddrBook::new([bad]).unwrap_err();
            assert_eq!(e.code, ErrorCode::Invalid, "{bad}");
            assert!(e.message.contains(bad), "{}", e.message);
        }
    }

    #[test]
    fn rotation_wraps_and_hints_append() {
        let mut b = AddrBook::new(["a:1", "b:2", "c:3"]).unwrap();
        assert_eq!(b.next(0), 1);
        assert_eq!(b.next(2), 0);
        assert_eq!(b.next(7), 2); // stale index beyond the end still rotates
        assert_eq!(b.get(4), "b:2");
        assert_eq!(b.push("b:2".into()), 1);
        assert_eq!(b.push("d:4".into()), 3);
        assert_eq!(b.len(), 4);
        assert_eq!(b.next(2), 3);
        assert_eq!(b.next(3), 0);
        let one = AddrBook::new(["a:1"]).unwrap();
        assert_eq!(one.next(0), 0);
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new();
        let got: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 320, 500, 500, 500]);
    }

    #[test]
    fn errors_classify() {
        let hinted = CairnStatus::not_leader(Some((2, "http://10.0.0.2:7001".into())));
        assert_eq!(classify(&hinted), Step::Redirect("10.0.0.2:7001".into()));
        assert_eq!(classify(&CairnStatus::not_leader(None)), Step::Rotate);
        for c in [
            ErrorCode::Unavailable,
            ErrorCode::TimedOut,
            ErrorCode::NotInitialized,
        ] {
            assert_eq!(classify(&CairnStatus::new(c, "x")), Step::Rotate, "{c}");
        }
        for c in [
            ErrorCode::NotFound,
            ErrorCode::Exists,
            ErrorCode::SessionExpired,
            ErrorCode::Internal,
            ErrorCode::StaleSequence,
        ] {
            assert_eq!(classify(&CairnStatus::new(c, "x")), Step::Stop, "{c}");
        }
    }

    #[test]
    fn tried_lists_each_address_once() {
        let mut t = Tried::default();
        for a in ["a:1", "b:2", "a:1", "c:3"] {
            t.note(a);
        }
        assert_eq!(t.to_string(), "a:1, b:2, c:3");
        assert_eq!(t.attempts(), 4);
    }
}
