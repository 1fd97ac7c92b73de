//! Per-4 KiB segment CRCs: the checksums that travel with every payload.
//!
//! A payload at chunk offset `offset` is cut at the multiples of
//! [`BLOCK_SIZE`] of the chunk offset; each piece is a segment and has one
//! CRC32 (crc32fast, IEEE). For block-aligned payloads the segments are the
//! chunk's blocks, so the CRCs are the stored per-block CRCs.

use bytes::{BufMut, Bytes, BytesMut};

/// The checksum granularity: one CRC per 4 KiB block of a chunk.
pub const BLOCK_SIZE: u64 = 4096;

/// Returns the number of segments `len` bytes at chunk offset `offset`
/// cover, or `None` if the range `offset..offset + len` overflows a u64.
pub fn segment_count(offset: u64, len: u64) -> Option<u64> {
    if len == 0 {
        return Some(0);
    }
    let last = offset.checked_add(len - 1)?;
    Some(last / BLOCK_SIZE - offset / BLOCK_SIZE + 1)
}

/// Returns an iterator over the segments of `data` placed at chunk offset
/// `offset`: first up to the next 4 KiB boundary, then whole blocks, then
/// the tail.
pub fn segments(offset: u64, data: &[u8]) -> Segments<'_> {
    // `offset % BLOCK_SIZE` < 4096, so the cast and subtraction are exact.
    let first = (BLOCK_SIZE - offset % BLOCK_SIZE) as usize;
    Segments {
        rest: data,
        next_len: first,
    }
}

/// The iterator [`segments`] returns.
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
    next_len: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (seg, rest) = self.rest.split_at(self.next_len.min(self.rest.len()));
        self.rest = rest;
        self.next_len = BLOCK_SIZE as usize;
        Some(seg)
    }
}

/// Returns the segment CRCs of `data` at chunk offset `offset`.
pub fn segment_crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    segments(offset, data).map(crc32fast::hash).collect()
}

/// Checks `data` at chunk offset `offset` against `crcs`, one per segment.
///
/// # Errors
///
/// The index of the first segment whose CRC differs or is missing; if every
/// segment matches but `crcs` has more values, the segment count.
pub fn verify_segments<I>(offset: u64, data: &[u8], crcs: I) -> Result<(), usize>
where
    I: IntoIterator<Item = u32>,
{
    let mut crcs = crcs.into_iter();
    let mut n = 0;
    for seg in segments(offset, data) {
        if crcs.next() != Some(crc32fast::hash(seg)) {
            return Err(n);
        }
        n += 1;
    }
    match crcs.next() {
        Some(_) => Err(n),
        None => Ok(()),
    }
}

/// The segment CRCs of one frame, kept as their wire bytes (u32 LE each) so
/// a decoded frame's CRCs are a view of the read buffer and an encoded one's
/// are written without conversion.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct SegmentCrcs(Bytes);

impl SegmentCrcs {
    /// No CRCs (a frame without a body, or an empty payload).
    pub const fn empty() -> SegmentCrcs {
        SegmentCrcs(Bytes::new())
    }

    /// Returns the CRCs of `data` at chunk offset `offset`.
    pub fn compute(offset: u64, data: &[u8]) -> SegmentCrcs {
        let mut buf = BytesMut::new();
        for seg in segments(offset, data) {
            buf.put_u32_le(crc32fast::hash(seg));
        }
        SegmentCrcs(buf.freeze())
    }

    /// Returns a value holding `crcs`, e.g. the stored per-block CRCs a
    /// replica returns with a block-aligned read.
    pub fn from_slice(crcs: &[u32]) -> SegmentCrcs {
        let mut buf = BytesMut::with_capacity(crcs.len().saturating_mul(4));
        for c in crcs {
            buf.put_u32_le(*c);
        }
        SegmentCrcs(buf.freeze())
    }

    /// Returns a value viewing wire bytes, or `None` unless their length is
    /// a multiple of 4.
    pub fn from_bytes(bytes: Bytes) -> Option<SegmentCrcs> {
        bytes.len().is_multiple_of(4).then_some(SegmentCrcs(bytes))
    }

    /// Returns the wire bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Returns the number of CRCs.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// Returns whether there are no CRCs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the `i`-th CRC, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u32> {
        let at = i.checked_mul(4)?;
        let bytes = self.0.get(at..)?.first_chunk::<4>()?;
        Some(u32::from_le_bytes(*bytes))
    }

    /// Returns an iterator over the CRCs.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// Checks `data` at chunk offset `offset` against these CRCs; see
    /// [`verify_segments`].
    ///
    /// # Errors
    ///
    /// The index of the first bad or missing segment.
    pub fn verify(&self, offset: u64, data: &[u8]) -> Result<(), usize> {
        verify_segments(offset, data, self.iter())
    }
}

impl std::fmt::Debug for SegmentCrcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|c| format!("{c:08x}")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segment lengths the brief's table asks for, computed by hand.
    #[test]
    fn segment_boundaries_follow_the_chunk_offset() {
        let cases: &[(u64, usize, &[usize])] = &[
            (0, 0, &[]),
            (0, 1, &[1]),
            (0, 4096, &[4096]),
            (0, 8193, &[4096, 4096, 1]),
            (1, 0, &[]),
            (1, 1, &[1]),
            (1, 4096, &[4095, 1]),
            (1, 8193, &[4095, 4096, 2]),
            (4095, 0, &[]),
            (4095, 1, &[1]),
            (4095, 4096, &[1, 4095]),
            (4095, 8193, &[1, 4096, 4096]),
            (4096, 0, &[]),
            (4096, 1, &[1]),
            (4096, 4096, &[4096]),
            (4096, 8193, &[4096, 4096, 1]),
            (4097, 0, &[]),
            (4097, 1, &[1]),
            (4097, 4096, &[4095, 1]),
            (4097, 8193, &[4095, 4096, 2]),
        ];
        let data: Vec<u8> = (0..8193u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for &(offset, len, want) in cases {
            let data = &data[..len];
            let lens: Vec<usize> = segments(offset, data).map(<[u8]>::len).collect();
            assert_eq!(lens, want, "offset {offset} len {len}");
            assert_eq!(segment_count(offset, len as u64), Some(want.len() as u64));
            let mut at = 0;
            let expect: Vec<u32> = want
                .iter()
                .map(|l| {
                    at += l;
                    crc32fast::hash(&data[at - l..at])
                })
                .collect();
            let crcs = segment_crcs(offset, data);
            assert_eq!(crcs, expect, "offset {offset} len {len}");
            assert_eq!(
                SegmentCrcs::compute(offset, data)
                    .iter()
                    .collect::<Vec<_>>(),
                expect
            );
            assert_eq!(verify_segments(offset, data, crcs.iter().copied()), Ok(()));
        }
    }

    #[test]
    fn aligned_payload_crcs_are_the_block_crcs() {
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 253) as u8).collect();
        let crcs = segment_crcs(8192, &data);
        let blocks: Vec<u32> = data.chunks(4096).map(crc32fast::hash).collect();
        assert_eq!(crcs, blocks);
        // Known value: CRC-32/IEEE of "123456789".
        assert_eq!(segment_crcs(0, b"123456789"), vec![0xCBF4_3926]);
    }

    #[test]
    fn verify_names_the_first_bad_segment() {
        let mut data = vec![0u8; 8193];
        let crcs = segment_crcs(1, &data);
        data[4095] ^= 1; // first byte of segment 1 at offset 1
        assert_eq!(verify_segments(1, &data, crcs.iter().copied()), Err(1));
        data[4095] ^= 1;
        assert_eq!(verify_segments(1, &data, crcs[..2].iter().copied()), Err(2));
        let mut more = crcs.clone();
        more.push(0);
        assert_eq!(verify_segments(1, &data, more), Err(3));
        assert_eq!(verify_segments(0, &[], [0u32]), Err(0));
    }

    #[test]
    fn count_overflow_is_reported() {
        assert_eq!(segment_count(u64::MAX, 1), Some(1));
        assert_eq!(segment_count(u64::MAX, 2), None);
        assert_eq!(segment_count(u64::MAX - 4095, 4096), Some(1));
    }

    #[test]
    fn crcs_view_accessors() {
        let c = SegmentCrcs::from_slice(&[1, 0xDEAD_BEEF]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(1), Some(0xDEAD_BEEF));
        assert_eq!(c.get(2), None);
        assert_eq!(c.get(usize::MAX), None);
        assert_eq!(&c.as_bytes()[..4], &[1, 0, 0, 0]);
        assert!(SegmentCrcs::from_bytes(Bytes::from_static(&[0; 3])).is_none());
        assert!(SegmentCrcs::empty().is_empty());
    }
}
