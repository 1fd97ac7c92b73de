//! Striping math (DESIGN §3): which chunk, chain and chunk offset a byte
//! range of a file maps to. Pure, so it is tested without a cluster.
//!
//! Chunk `i` of a file is `(object_id, i)` and lives on chain
//! `chains[i % chains.len()]`. A range is cut at chunk boundaries and at
//! `max_io` bytes (the largest request the client sends), so every
//! [`Piece`] is one data-plane request to one chain.

use cairn_proto::ids::{ChainId, ChunkId, ObjectId};
use cairn_proto::meta::Layout;
use cairn_proto::{CairnStatus, ErrorCode};

/// A file's layout: where its chunks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    /// The file's data object.
    pub object: ObjectId,
    /// Bytes per chunk (a power of two).
    pub chunk_size: u64,
    /// The stripe: chunk `i` lives on `chains[i % chains.len()]`.
    pub chains: Vec<ChainId>,
}

/// One contiguous part of a request inside one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The chunk.
    pub chunk: ChunkId,
    /// Its chain.
    pub chain: ChainId,
    /// Offset inside the chunk.
    pub chunk_offset: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Bytes.
    pub len: u64,
}

impl FileLayout {
    /// Builds the layout from meta's message.
    ///
    /// # Errors
    /// [`ErrorCode::Internal`] for a layout meta should never hand out (no
    /// chains, a chunk size that is not a power of two).
    pub fn from_pb(l: &Layout) -> Result<Self, CairnStatus> {
        if l.chains.is_empty() || !l.chunk_size.is_power_of_two() {
            return Err(CairnStatus::new(
                ErrorCode::Internal,
                format!(
                    "object {} has an invalid layout ({} chains, chunk size {})",
                    l.object_id,
                    l.chains.len(),
                    l.chunk_size
                ),
            ));
        }
        Ok(Self {
            object: ObjectId(l.object_id),
            chunk_size: l.chunk_size,
            chains: l.chains.iter().map(|c| ChainId(*c)).collect(),
        })
    }

    /// Returns the chunk holding file offset `offset` and its chain.
    pub fn chunk_at(&self, offset: u64) -> (ChunkId, ChainId) {
        self.chunk(offset / self.chunk_size)
    }

    /// Returns chunk `index` and its chain.
    pub fn chunk(&self, index: u64) -> (ChunkId, ChainId) {
        let stripe = self.chains.len() as u64;
        // `index % stripe` is below the stripe length, a usize.
        let chain = self.chains[usize::try_from(index % stripe).unwrap_or(0)];
        (
            ChunkId {
                object: self.object,
                index,
            },
            chain,
        )
    }

    /// Cuts `[offset, offset + len)` into pieces at chunk boundaries and
    /// at multiples of `max_io` (`max_io` 0 is treated as unlimited).
    pub fn pieces(&self, offset: u64, len: u64, max_io: u64) -> Pieces<'_> {
        Pieces {
            layout: self,
            pos: offset,
            end: offset.saturating_add(len),
            max_io: if max_io == 0 { u64::MAX } else { max_io },
        }
    }

    /// Returns the indexes of chunks holding bytes at or after `from` and
    /// before `to` (whole or partial).
    pub fn chunks_between(&self, from: u64, to: u64) -> std::ops::Range<u64> {
        if to <= from {
            return 0..0;
        }
        from / self.chunk_size..to.div_ceil(self.chunk_size)
    }
}

/// The iterator of [`FileLayout::pieces`].
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    layout: &'a FileLayout,
    pos: u64,
    end: u64,
    max_io: u64,
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.pos >= self.end {
            return None;
        }
        let cs = self.layout.chunk_size;
        let chunk_offset = self.pos % cs;
        // Cut at multiples of `max_io` in the file, not `max_io` after the
        // start: two reads of overlapping ranges (a read and a prefetch)
        // then ask for the same pieces, which the cache can serve whole.
        let to_io_boundary = self.max_io - self.pos % self.max_io;
        let len = (cs - chunk_offset)
            .min(self.end - self.pos)
            .min(to_io_boundary);
        let (chunk, chain) = self.layout.chunk_at(self.pos);
        let p = Piece {
            chunk,
            chain,
            chunk_offset,
            file_offset: self.pos,
            len,
        };
        self.pos += len;
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> FileLayout {
        FileLayout {
            object: ObjectId(9),
            chunk_size: 1 << 20,
            chains: vec![ChainId(4), ChainId(5), ChainId(6)],
        }
    }

    #[test]
    fn pieces_cover_the_range_exactly_and_respect_boundaries() {
        let l = layout();
        for (off, len, max) in [
            (0, 0, 0),
            (0, 1, 0),
            (4095, 2, 0),
            ((1 << 20) - 1, 2, 0),
            (123, 5 << 20, 0),
            (123, 5 << 20, 256 << 10),
            (7 << 20, 1 << 20, 0),
        ] {
            let ps: Vec<_> = l.pieces(off, len, max).collect();
            let mut pos = off;
            for p in &ps {
                assert_eq!(p.file_offset, pos);
                assert!(p.len > 0);
                assert!(p.chunk_offset + p.len <= l.chunk_size, "{p:?}");
                if max > 0 {
                    assert!(p.len <= max);
                    assert!(
                        p.file_offset % max == 0 || p.file_offset == off,
                        "pieces after the first start at multiples of max_io: {p:?}"
                    );
                }
                assert_eq!(p.chunk.index, pos / l.chunk_size);
                assert_eq!(p.chunk_offset, pos % l.chunk_size);
                assert_eq!(p.chain, l.chains[(p.chunk.index % 3) as usize]);
                pos += p.len;
            }
            assert_eq!(
                pos,
                off + len,
                "pieces of ({off}, {len}) end at the range's end"
            );
        }
    }

    #[test]
    fn stripe_rotates_over_chains() {
        let l = layout();
        let chains: Vec<_> = (0..6).map(|i| l.chunk(i).1.0).collect();
        assert_eq!(chains, vec![4, 5, 6, 4, 5, 6]);
        assert_eq!(l.chunks_between(0, 0), 0..0);
        assert_eq!(l.chunks_between(1, 2), 0..1);
        assert_eq!(l.chunks_between((1 << 20) - 1, (1 << 20) + 1), 0..2);
        assert_eq!(l.chunks_between(1 << 20, 3 << 20), 1..3);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let mut pb = Layout {
            object_id: 1,
            chunk_size: 3 << 20,
            chains: vec![1],
            replication: 3,
        };
        assert!(FileLayout::from_pb(&pb).is_err());
        pb.chunk_size = 1 << 20;
        pb.chains.clear();
        assert!(FileLayout::from_pb(&pb).is_err());
        pb.chains.push(2);
        assert_eq!(FileLayout::from_pb(&pb).unwrap().chains, vec![ChainId(2)]);
    }
}
