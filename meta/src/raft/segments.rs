//! The Raft log's entries in append-only segment files (DESIGN §4, revised
//! 2026-12-03: sled's flush on every append was the largest cost of a
//! metadata mutation).
//!
//! Owns one directory of a replica. Each segment is a file named after the
//! index of its first entry (`00000000000000000042.seg`), zero-filled to
//! [`SEGMENT_BYTES`] when it is created, so later appends overwrite blocks
//! that already exist and an `fdatasync` flushes data only, never the
//! file's size or extent map. A segment holds records of consecutive
//! entries:
//!
//! ```text
//! | len: u32 LE | crc32 of payload: u32 LE | payload: bincode of Entry |
//! ```
//!
//! A record whose length is 0 ends the segment's log (the zero fill).
//!
//! Invariants:
//!
//! * **Every entry in memory is in a segment**, written there (to the page
//!   cache) before [`Segments::append`] returns; it is on stable storage
//!   once the segment file it names has been `fdatasync`ed (the caller's
//!   flusher does that, one sync for every append queued meanwhile).
//! * **Recovery reads a prefix.** A segment is read record by record until
//!   the zero fill, a torn record (bad length or CRC) or an entry whose
//!   index does not follow its predecessor; everything after that point in
//!   the last segment is an unsynced tail and is ignored (then zeroed on
//!   the next append). A hole between two segments that the purged prefix
//!   does not explain is refused as corruption: an acknowledged entry must
//!   never silently go missing.
//! * **Truncation is durable before it returns.** Truncated records are
//!   zeroed and synced, and later segments unlinked with the directory
//!   synced, so no entry of an older term can reappear behind newer ones
//!   after a crash (that would break Raft's log-matching property).
//!   Truncation happens only on log conflicts, so its syncs cost nothing
//!   on the common path.
//! * Purged segments are unlinked without a directory sync: one that comes
//!   back after a crash holds only entries at or below the durable
//!   `last_purged`, which recovery skips and deletes.
//!
//! Entries are also kept in memory (from the last purge on), so reads for
//! replication and applying never touch the disk. openraft purges the log
//! behind each snapshot, which bounds them (`snapshot_every` entries plus
//! the ones kept for lagging followers).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::types::Entry;

/// The size of a segment file (zero-filled when it is created).
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Bytes of a record's header: length and CRC.
const HEADER: usize = 8;

/// The largest record accepted when reading (a length past it is torn).
const MAX_RECORD: usize = SEGMENT_BYTES as usize - HEADER;

/// Where an entry's record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    /// The first index of the entry's segment (its key in `files`).
    segment: u64,
    offset: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    first: u64,
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// The index the next record must have.
    next_index: u64,
}

/// The entries of a log directory: in memory, and in segment files.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    /// Segment files by first index.
    files: BTreeMap<u64, Arc<File>>,
    current: Option<Current>,
    /// The lowest index not purged (the first entry's, when there is one).
    first: u64,
    /// Entries by index, with where each one's record starts.
    entries: BTreeMap<u64, (Entry, Loc)>,
    /// Encoding buffer, reused across appends.
    buf: Vec<u8>,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// Returns the first index a segment file's name stands for.
fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a segment's records from its start: the entries of the readable
/// prefix with their offsets, and where that prefix ends.
fn read_segment(path: &Path, first: u64) -> io::Result<(Vec<(Entry, u64)>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut next = first;
    while at + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        if len == 0 || len > MAX_RECORD || at + HEADER + len > bytes.len() {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(entry) = bincode::deserialize::<Entry>(payload) else {
            break;
        };
        if entry.log_id.index != next {
            break;
        }
        out.push((entry, at as u64));
        next += 1;
        at += HEADER + len;
    }
    Ok((out, at as u64))
}

/// Creates a zero-filled segment file and makes it and its name durable.
fn create_segment(dir: &Path, first: u64) -> io::Result<File> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < SEGMENT_BYTES {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

impl Segments {
    /// Opens the log in `dir` (creating the directory), reading every
    /// entry above `last_purged`.
    ///
    /// # Errors
    /// I/O errors, and [`io::ErrorKind::InvalidData`] when the segments
    /// leave a hole that purging does not explain.
    pub fn open(dir: &Path, last_purged: Option<u64>) -> io::Result<Segments> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            if let Some(first) = e.file_name().to_str().and_then(parse_name) {
                names.push((first, e.path()));
            }
        }
        names.sort();
        let floor = last_purged.map_or(0, |p| p + 1);
        let mut s = Segments {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            current: None,
            first: floor,
            entries: BTreeMap::new(),
            buf: Vec::new(),
        };
        let mut iter = names.into_iter().peekable();
        while let Some((first, path)) = iter.next() {
            let next_first = iter.peek().map(|(f, _)| *f);
            if next_first.is_some_and(|n| n <= floor) {
                // Wholly purged: a leftover of a purge the crash undid.
                fs::remove_file(&path)?;
                continue;
            }
            let expected = s.next_index();
            if first > expected && !s.entries.is_empty() {
                return Err(corrupt(format!(
                    "raft log: entries {expected}..{first} are missing before segment {}",
                    path.display()
                )));
            }
            let (records, end) = read_segment(&path, first)?;
            let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
            let last = first + records.len() as u64;
            if next_first.is_some_and(|n| n != last) && last > floor {
                return Err(corrupt(format!(
                    "raft log: segment {} ends at entry {last} but the next one starts at {}",
                    path.display(),
                    next_first.unwrap_or_default()
                )));
            }
            for (entry, offset) in records {
                let index = entry.log_id.index;
                if index < floor {
                    continue;
                }
                if s.entries.is_empty() {
                    s.first = index;
                }
                let loc = Loc {
                    segment: first,
                    offset,
                };
                s.entries.insert(index, (entry, loc));
            }
            s.files.insert(first, file.clone());
            s.current = Some(Current {
                first,
                file,
                end,
                next_index: last,
            });
        }
        Ok(s)
    }

    /// Returns the lowest index not purged.
    pub fn first_index(&self) -> u64 {
        self.first
    }

    /// Returns the index after the last entry held (the lowest index not
    /// purged when none is).
    fn next_index(&self) -> u64 {
        self.entries
            .last_key_value()
            .map_or(self.first, |(i, _)| i + 1)
    }

    /// Returns the last entry held.
    pub fn last(&self) -> Option<&Entry> {
        self.entries.last_key_value().map(|(_, (e, _))| e)
    }

    /// Returns clones of the entries with indexes in `[start, end)`.
    pub fn range(&self, start: u64, end: Option<u64>) -> Vec<Entry> {
        let end = end.unwrap_or(u64::MAX);
        if start >= end {
            return Vec::new();
        }
        self.entries
            .range(start..end)
            .map(|(_, (e, _))| e.clone())
            .collect()
    }

    /// Writes `entries` (ascending, above the last one held) to the current
    /// segment, rolling to a new one when it is full or the indexes jump.
    /// Returns the segment files written, for the caller to sync.
    ///
    /// openraft appends consecutive entries (after a purge, the log may
    /// restart higher up); its storage suite also appends with gaps, which
    /// land in a new segment (such a log reads back up to the gap).
    ///
    /// # Errors
    /// I/O errors, and an entry at or below the last one held.
    pub fn append(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> io::Result<Vec<Arc<File>>> {
        let mut written: Vec<Arc<File>> = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            if let Some((&last, _)) = self.entries.last_key_value()
                && index <= last
            {
                return Err(io::Error::other(format!(
                    "raft log: appending entry {index} after entry {last}"
                )));
            }
            if self.entries.is_empty() {
                self.first = index;
            }
            self.buf.clear();
            self.buf.extend_from_slice(&[0; HEADER]);
            bincode::serialize_into(&mut self.buf, &entry).map_err(io::Error::other)?;
            let len = self.buf.len() - HEADER;
            if len > MAX_RECORD {
                return Err(io::Error::other(format!(
                    "raft log entry {index} is {len} bytes, larger than a segment"
                )));
            }
            let crc = crc32fast::hash(&self.buf[HEADER..]);
            self.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
            self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
            let fits = self.current.as_ref().is_some_and(|c| {
                c.next_index == index
                    && c.end + self.buf.len() as u64 + HEADER as u64 <= SEGMENT_BYTES
            });
            if !fits {
                self.roll(index)?;
            }
            let Some(cur) = self.current.as_mut() else {
                return Err(io::Error::other("raft log: no segment to append to"));
            };
            // The record, then a zero header, in one write: whatever an
            // undone truncate or a torn earlier write left behind it is
            // never read as a record (the next record overwrites it).
            let record = self.buf.len() as u64;
            self.buf.extend_from_slice(&[0; HEADER]);
            cur.file.write_all_at(&self.buf, cur.end)?;
            let loc = Loc {
                segment: cur.first,
                offset: cur.end,
            };
            cur.end += record;
            cur.next_index = index + 1;
            self.entries.insert(index, (entry, loc));
            if !written.iter().any(|f| Arc::ptr_eq(f, &cur.file)) {
                written.push(cur.file.clone());
            }
        }
        Ok(written)
    }

    /// Starts a new segment whose first entry is `index`, syncing the one
    /// it follows first.
    fn roll(&mut self, index: u64) -> io::Result<()> {
        // A later segment's existence must imply that the earlier ones are
        // whole on disk, or recovery could not tell a hole from a tail.
        if let Some(c) = &self.current {
            c.file.sync_data()?;
        }
        let file = Arc::new(create_segment(&self.dir, index)?);
        self.files.insert(index, file.clone());
        self.current = Some(Current {
            first: index,
            file,
            end: 0,
            next_index: index,
        });
        Ok(())
    }

    /// Removes the entries from `index` on, durably (see the module docs).
    ///
    /// # Errors
    /// I/O errors.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        self.entries.split_off(&index);
        // Segments that start at or after `index` go whole.
        let doomed: Vec<u64> = self.files.range(index..).map(|(f, _)| *f).collect();
        for first in &doomed {
            self.files.remove(first);
            fs::remove_file(self.dir.join(segment_name(*first)))?;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        // The segment holding `index` keeps what precedes it.
        let Some((&first, file)) = self.files.range(..index).next_back() else {
            self.current = None;
            return Ok(());
        };
        let file = file.clone();
        let last_loc = self.entries.last_key_value().map(|(_, (_, l))| *l);
        let end = match last_loc {
            Some(l) if l.segment == first => {
                // Just past the last kept record: its start plus its size.
                let mut header = [0u8; HEADER];
                file.read_exact_at(&mut header, l.offset)?;
                let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
                l.offset + HEADER as u64 + u64::from(len)
            }
            _ => 0,
        };
        let old_end = self
            .current
            .as_ref()
            .filter(|c| c.first == first)
            .map_or(SEGMENT_BYTES, |c| c.end + HEADER as u64);
        if old_end > end {
            let zeros = vec![0u8; (old_end - end).min(SEGMENT_BYTES - end) as usize];
            file.write_all_at(&zeros, end)?;
        }
        file.sync_data()?;
        let next_index = if last_loc.is_some_and(|l| l.segment == first) {
            self.next_index()
        } else {
            first
        };
        self.current = Some(Current {
            first,
            file,
            end,
            next_index,
        });
        Ok(())
    }

    /// Forgets the entries up to and including `index` and unlinks the
    /// segments that hold nothing else. The caller has made `index` durable
    /// as the last purged entry first.
    ///
    /// # Errors
    /// I/O errors.
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        self.entries = self.entries.split_off(&(index + 1));
        self.first = self.first.max(index + 1);
        // A segment goes when the next one starts at or below `index + 1`,
        // or when it is the last one and all its entries are purged.
        let firsts: Vec<u64> = self.files.keys().copied().collect();
        for (i, first) in firsts.iter().enumerate() {
            let all_purged = match firsts.get(i + 1) {
                Some(next) => *next <= index + 1,
                None => self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.first == *first && c.next_index <= index + 1),
            };
            if !all_purged {
                break;
            }
            self.files.remove(first);
            if self.current.as_ref().is_some_and(|c| c.first == *first) {
                self.current = None;
            }
            fs::remove_file(self.dir.join(segment_name(*first)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Command, Op};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::internal(
                index as i64,
                Op::AllocateNodeId {
                    addr: format!("node-{index}-{}", "x".repeat((index % 7) as usize)),
                },
            )),
        }
    }

    fn indexes(s: &Segments) -> Vec<(u64, u64)> {
        s.range(0, None)
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[test]
    fn appended_entries_come_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        let files = s.append((1..=100).map(|i| entry(1, i))).unwrap();
        assert_eq!(files.len(), 1);
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(s.first_index(), 1);
        assert_eq!(s.range(0, None).len(), 100);
        assert_eq!(s.range(10, Some(13)).len(), 3);
        assert_eq!(s.last().map(|e| e.log_id.index), Some(100));
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=10).map(|i| entry(1, i))).unwrap();
        let tail = s.entries[&10].1.offset;
        drop(s);
        let path = dir.path().join(segment_name(1));
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        // Flip a payload byte of the last record: its CRC fails.
        f.write_all_at(&[0xff], tail + HEADER as u64 + 3).unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(s.range(0, None).len(), 9);
        // Appending overwrites the torn record.
        s.append([entry(2, 10)]).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(s.last().map(|e| e.log_id.leader_id.term), Some(2));
    }

    #[test]
    fn truncated_entries_never_come_back_behind_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=20).map(|i| entry(1, i))).unwrap();
        s.truncate(11).unwrap();
        // Fewer, same-sized new entries: the old 14..20 must not follow.
        s.append((11..=13).map(|i| entry(2, i))).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        let got = indexes(&s);
        assert_eq!(got.len(), 13);
        assert_eq!(got[12], (2, 13));
    }

    #[test]
    fn segments_roll_purge_and_truncate_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        // Large entries fill segments quickly.
        let big = |term, index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::internal(
                0,
                Op::AllocateNodeId {
                    addr: "y".repeat(3 << 20),
                },
            )),
        };
        for i in 1..=12 {
            s.append([big(1, i)]).unwrap();
        }
        assert!(s.files.len() >= 3, "{:?}", s.files.keys());
        s.purge(5).unwrap();
        assert_eq!(s.first_index(), 6);
        s.truncate(10).unwrap();
        s.append([big(3, 10)]).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), Some(5)).unwrap();
        let got = indexes(&s);
        assert_eq!(got.first(), Some(&(1, 6)));
        assert_eq!(got.last(), Some(&(3, 10)));
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn a_purge_past_the_end_restarts_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=5).map(|i| entry(1, i))).unwrap();
        s.purge(50).unwrap();
        assert_eq!(s.first_index(), 51);
        assert!(s.last().is_none());
        s.append((51..=53).map(|i| entry(2, i))).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), Some(50)).unwrap();
        assert_eq!(indexes(&s), vec![(2, 51), (2, 52), (2, 53)]);
    }
}
