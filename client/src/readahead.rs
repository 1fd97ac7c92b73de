//! Read-ahead decisions for one open file (DESIGN §7). Pure: the file
//! handle asks [`ReadAhead::on_read`] after every read and starts the
//! prefetch it returns.
//!
//! A stream is sequential once two reads in a row start where the previous
//! one ended. From then on the client keeps `window` bytes ahead of the
//! reader prefetched into the block cache, starting a new prefetch when
//! less than half a window is left, and doubles the window each time (up to
//! the configured maximum) — the Linux page cache's ramp-up, so a short
//! sequential run costs little and a long stream gets deep read-ahead. A
//! jump elsewhere resets the detector (random readers pay nothing).

/// Read-ahead state of one file handle.
#[derive(Debug, Clone)]
pub struct ReadAhead {
    /// Where the last read ended.
    last_end: u64,
    /// Sequential reads in a row.
    streak: u32,
    /// Prefetched (or being prefetched) up to here.
    ahead: u64,
    window: u64,
    initial: u64,
    max: u64,
}

impl ReadAhead {
    /// Reads in a row that make a stream sequential.
    pub const STREAK: u32 = 2;

    /// A detector ramping from `initial` to `max` bytes of read-ahead
    /// (`max` 0 disables read-ahead).
    pub fn new(initial: u64, max: u64) -> Self {
        Self {
            last_end: u64::MAX,
            streak: 0,
            ahead: 0,
            window: initial.min(max),
            initial: initial.min(max),
            max,
        }
    }

    /// The largest window this stream may reach (0: read-ahead off).
    pub fn max_window(&self) -> u64 {
        self.max
    }

    /// Records a read of `[offset, offset + len)` of a file of `size`
    /// bytes; returns the range to prefetch now, if any.
    ///
    /// Once a stream is established, a read that lands within a window of
    /// its head is still the stream: several reads of one sequential
    /// reader in flight at once (the kernel's read-ahead through FUSE, a
    /// reader with a queue depth) arrive in any order, and restarting the
    /// ramp on each would leave them all to demand reads.
    pub fn on_read(&mut self, offset: u64, len: u64, size: u64) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len);
        if offset == self.last_end {
            self.streak = self.streak.saturating_add(1);
            self.last_end = end;
        } else if self.last_end != u64::MAX
            && self.streak >= Self::STREAK
            && offset.abs_diff(self.last_end) <= self.window.max(len)
        {
            self.last_end = self.last_end.max(end);
        } else {
            self.streak = 0;
            self.ahead = 0;
            self.window = self.initial;
            self.last_end = end;
        }
        let head = self.last_end;
        if self.max == 0 || self.streak < Self::STREAK || head >= size {
            return None;
        }
        self.ahead = self.ahead.max(head);
        if self.ahead >= size || self.ahead - head >= self.window / 2 {
            return None;
        }
        let from = self.ahead;
        let to = (from + self.window).min(size);
        self.ahead = to;
        self.window = (self.window * 2).min(self.max);
        Some((from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    #[test]
    fn random_reads_prefetch_nothing() {
        let mut ra = ReadAhead::new(256 * K, 8 << 20);
        for off in [5 * K * 4, 900 * K, 12 * K, 4 << 20, 77 * K] {
            assert_eq!(ra.on_read(off, 4 * K, 64 << 20), None);
        }
    }

    #[test]
    fn a_stream_ramps_up_and_stays_ahead() {
        let mut ra = ReadAhead::new(256 * K, 4 << 20);
        let size = 64 << 20;
        let mut prefetched_to = 0;
        let mut windows = vec![];
        let mut off = 0;
        while off < size {
            if let Some((a, b)) = ra.on_read(off, 128 * K, size) {
                assert!(a >= off + 128 * K, "prefetch starts after what was read");
                assert!(
                    a == prefetched_to || prefetched_to == 0,
                    "no gap, no overlap"
                );
                prefetched_to = b;
                windows.push(b - a);
            }
            if off > 1 << 20 {
                assert!(
                    prefetched_to > off + 128 * K || prefetched_to == size,
                    "keeps ahead of the reader at {off}"
                );
            }
            off += 128 * K;
        }
        assert_eq!(prefetched_to, size, "prefetch stops at the end of the file");
        assert_eq!(windows[0], 256 * K);
        assert!(
            windows.contains(&(4 << 20)),
            "window grows to the max: {windows:?}"
        );
        assert!(windows.iter().all(|w| *w <= 4 << 20));
    }

    #[test]
    fn reads_arriving_out_of_order_stay_one_stream() {
        let mut ra = ReadAhead::new(1 << 20, 8 << 20);
        let size = 256 << 20;
        let m = 1 << 20;
        // Sequential start, then pairs of 1 MiB reads swapped in flight.
        for i in 0..3 {
            ra.on_read(i * m, m, size);
        }
        let mut prefetched_to = 0;
        let mut i = 3;
        while i + 1 < 120 {
            for off in [(i + 1) * m, i * m] {
                if let Some((_, b)) = ra.on_read(off, m, size) {
                    prefetched_to = b;
                }
            }
            assert!(
                prefetched_to > (i + 2) * m,
                "fell behind at {i} MiB: prefetched to {prefetched_to}"
            );
            i += 2;
        }
        // A far jump is still a new stream.
        assert_eq!(ra.on_read(200 * m, 4096, size), None);
    }

    #[test]
    fn a_jump_resets_and_disabled_does_nothing() {
        let mut ra = ReadAhead::new(256 * K, 4 << 20);
        for i in 0..4 {
            ra.on_read(i * 4 * K, 4 * K, 1 << 30);
        }
        assert_eq!(ra.on_read(500 << 20, 4 * K, 1 << 30), None);
        let mut off = ReadAhead::new(256 * K, 0);
        for i in 0..10 {
            assert_eq!(off.on_read(i * 4 * K, 4 * K, 1 << 30), None);
        }
    }
}
