//! The block allocator of one shard's data file: an in-memory set of free
//! extents, rebuilt at open from every block entry (committed and pending).
//!
//! Nothing about free space is persisted: the metadata store is the single
//! source of truth, and a block no entry references is free. That is safe
//! only because of the **deferred free** rule kept here: a block released
//! by a metadata change (commit, remove, truncate) becomes allocatable only
//! after that change is flushed. Otherwise a new write could overwrite the
//! block, a crash could lose the unflushed change, and the recovered
//! metadata would reference bytes that are no longer what its CRC says.
//!
//! Blocks that were allocated for a write but never recorded in metadata
//! (the write failed before its batch) go straight back to the free set.
//!
//! Allocation is next-fit from a cursor, preferring one extent that holds
//! the whole request so a write's blocks are contiguous and go out as one
//! DMA write; otherwise it gathers pieces. All or nothing: a request that
//! does not fit changes nothing.

use std::collections::BTreeMap;

/// A run of contiguous blocks: `(first block number, count)`.
pub type Run = (u64, u64);

/// Why the allocator could not be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Two block entries reference the same data block.
    #[error("block {0} is referenced twice")]
    DoubleReference(u64),
    /// A block entry references a block past the end of the data file.
    #[error("block {0} lies past the end of the data file")]
    OutOfFile(u64),
}

/// The free space of one data file.
#[derive(Debug)]
pub struct Allocator {
    /// Free extents: start → length.
    free: BTreeMap<u64, u64>,
    free_count: u64,
    total: u64,
    cursor: u64,
    /// Blocks freed by metadata changes not yet flushed: (flush ticket of
    /// the change, block).
    deferred: Vec<(u64, u64)>,
}

impl Allocator {
    /// Returns the allocator of a file of `total` blocks in which exactly
    /// the blocks of `used` (any order) are taken.
    ///
    /// # Errors
    /// [`AllocError`] if `used` names a block twice or one past `total`.
    pub fn rebuild(total: u64, mut used: Vec<u64>) -> Result<Self, AllocError> {
        used.sort_unstable();
        let mut a = Self {
            free: BTreeMap::new(),
            free_count: 0,
            total,
            cursor: 0,
            deferred: Vec::new(),
        };
        let mut next = 0u64;
        for (i, &b) in used.iter().enumerate() {
            if i > 0 && used[i - 1] == b {
                return Err(AllocError::DoubleReference(b));
            }
            if b >= total {
                return Err(AllocError::OutOfFile(b));
            }
            if b > next {
                a.free.insert(next, b - next);
                a.free_count += b - next;
            }
            next = b + 1;
        }
        if total > next {
            a.free.insert(next, total - next);
            a.free_count += total - next;
        }
        Ok(a)
    }

    /// Returns the blocks in the file.
    pub fn total_blocks(&self) -> u64 {
        self.total
    }

    /// Returns the blocks free for allocation now.
    pub fn free_blocks(&self) -> u64 {
        self.free_count
    }

    /// Returns the blocks waiting for a metadata flush before reuse.
    pub fn deferred_blocks(&self) -> u64 {
        self.deferred.len() as u64
    }

    /// Returns the blocks in use (referenced, in flight or deferred).
    pub fn used_blocks(&self) -> u64 {
        self.total - self.free_count
    }

    /// Takes `n` blocks, as few runs as it can; `None` (and nothing taken)
    /// if fewer than `n` are free.
    pub fn alloc(&mut self, n: u64) -> Option<Vec<Run>> {
        if n == 0 {
            return Some(Vec::new());
        }
        if n > self.free_count {
            return None;
        }
        // One extent that holds everything, searched from the cursor on,
        // then from the start.
        let fit = self
            .free
            .range(self.cursor..)
            .chain(self.free.range(..self.cursor))
            .find(|(_, len)| **len >= n)
            .map(|(s, _)| *s);
        let mut runs = Vec::new();
        match fit {
            Some(start) => {
                self.take(start, n);
                runs.push((start, n));
            }
            None => {
                let mut need = n;
                while need > 0 {
                    let Some((&start, &len)) = self.free.iter().next_back() else {
                        break;
                    };
                    let take = len.min(need);
                    // Take from the end of the largest-address extent so
                    // the remaining extents keep their keys.
                    let s = start + len - take;
                    self.take(s, take);
                    runs.push((s, take));
                    need -= take;
                }
                runs.reverse();
            }
        }
        Some(runs)
    }

    /// Removes `[start, start + n)` from the free extent that contains it.
    fn take(&mut self, start: u64, n: u64) {
        let Some((&s, &len)) = self.free.range(..=start).next_back() else {
            return;
        };
        if start + n > s + len {
            return;
        }
        self.free.remove(&s);
        if start > s {
            self.free.insert(s, start - s);
        }
        if s + len > start + n {
            self.free.insert(start + n, s + len - start - n);
        }
        self.free_count -= n;
        self.cursor = start + n;
    }

    /// Returns `run` to the free set now: for blocks no metadata ever
    /// referenced. A block already free is ignored (and reported false).
    pub fn free_now(&mut self, run: Run) -> bool {
        let (mut start, mut len) = run;
        if len == 0 || start + len > self.total {
            return false;
        }
        let prev = self.free.range(..=start).next_back().map(|(s, l)| (*s, *l));
        if let Some((s, l)) = prev
            && s + l > start
        {
            return false;
        }
        if let Some((&s, _)) = self.free.range(start..).next()
            && s < start + len
        {
            return false;
        }
        self.free_count += len;
        if let Some((s, l)) = prev
            && s + l == start
        {
            self.free.remove(&s);
            start = s;
            len += l;
        }
        if let Some(l) = self.free.remove(&(start + len)) {
            len += l;
        }
        self.free.insert(start, len);
        true
    }

    /// Records that `block` was released by a metadata change that becomes
    /// durable with flush `ticket`.
    pub fn defer_free(&mut self, ticket: u64, block: u64) {
        self.deferred.push((ticket, block));
    }

    /// Frees every deferred block whose change is durable now that flushes
    /// through `ticket` completed.
    pub fn release_through(&mut self, ticket: u64) {
        let mut keep = Vec::new();
        let deferred = std::mem::take(&mut self.deferred);
        for (t, b) in deferred {
            if t <= ticket {
                self.free_now((b, 1));
            } else {
                keep.push((t, b));
            }
        }
        self.deferred = keep;
    }

    /// Adds the blocks from the current end up to `total` (the data file
    /// grew); a smaller `total` changes nothing.
    pub fn grow_to(&mut self, total: u64) {
        if total <= self.total {
            return;
        }
        let old = self.total;
        self.total = total;
        self.free_now((old, total - old));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_finds_gaps_and_rejects_bad_references() {
        let a = Allocator::rebuild(10, vec![3, 0, 4, 9]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.free_blocks(), 6);
        assert_eq!(
            a.free.iter().map(|(s, l)| (*s, *l)).collect::<Vec<_>>(),
            vec![(1, 2), (5, 4)]
        );
        assert_eq!(
            Allocator::rebuild(10, vec![1, 1]).err(),
            Some(AllocError::DoubleReference(1))
        );
        assert_eq!(
            Allocator::rebuild(10, vec![10]).err(),
            Some(AllocError::OutOfFile(10))
        );
    }

    #[test]
    fn alloc_prefers_one_run_and_is_all_or_nothing() {
        let mut a = Allocator::rebuild(10, vec![2, 5]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.alloc(3), Some(vec![(6, 3)]));
        assert_eq!(a.free_blocks(), 5);
        // Free: 0-1, 3-4, 9. Six blocks do not fit: nothing taken.
        assert_eq!(a.alloc(6), None);
        assert_eq!(a.free_blocks(), 5);
        let runs = a.alloc(5).unwrap_or_default();
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 5);
        assert_eq!(a.free_blocks(), 0);
        assert_eq!(a.alloc(1), None);
    }

    #[test]
    fn free_coalesces_and_refuses_double_free() {
        let mut a = Allocator::rebuild(8, (0..8).collect()).unwrap_or_else(|e| panic!("{e}"));
        assert!(a.free_now((2, 1)));
        assert!(a.free_now((4, 1)));
        assert!(a.free_now((3, 1)));
        assert_eq!(a.free.len(), 1);
        assert!(!a.free_now((3, 1)));
        assert!(!a.free_now((1, 2)));
        assert_eq!(a.free_blocks(), 3);
        assert_eq!(a.alloc(3), Some(vec![(2, 3)]));
    }

    #[test]
    fn deferred_frees_wait_for_their_flush() {
        let mut a = Allocator::rebuild(4, (0..4).collect()).unwrap_or_else(|e| panic!("{e}"));
        a.defer_free(5, 1);
        a.defer_free(7, 2);
        assert_eq!(a.alloc(1), None);
        a.release_through(6);
        assert_eq!(a.free_blocks(), 1);
        assert_eq!(a.deferred_blocks(), 1);
        a.release_through(7);
        assert_eq!(a.free_blocks(), 2);
        a.grow_to(6);
        a.grow_to(5);
        assert_eq!(a.total_blocks(), 6);
        assert_eq!(a.free_blocks(), 4);
    }
}
