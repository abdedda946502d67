//! Buffered, checked reads of frames: one storage read fills the lent buffer, and frames are
//! parsed out of it until one crosses its end. Recovery speed depends on this being few, large
//! reads rather than one read per frame.

use super::Layout;
use crate::frame::{self, Frame, FrameError, Header, HEADER_LEN, OVERHEAD};
use crate::storage::Storage;
use core::ops::Range;

/// Which storage bytes the buffer currently holds.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Window {
    start: u64,
    len: usize,
}

/// What occupies a frame-aligned position.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    /// Every header byte holds the erased value.
    Erased,
    /// Less than one frame's overhead is left before the end of the segment.
    NoRoom,
    /// A frame whose checksum matched.
    Valid {
        header: Header,
        /// The payload, as a range of the buffer.
        payload: Range<usize>,
        crc: u32,
        /// Bytes the frame occupies with its padding.
        padded: usize,
    },
    /// Bytes that are neither erased nor a frame.
    Bad(FrameError),
}

/// Reads frames from a storage through a lent buffer.
pub(super) struct Reader<'a, S> {
    pub storage: &'a mut S,
    pub buffer: &'a mut [u8],
    pub layout: Layout,
    window: Window,
    /// Bytes a refill reads at most (rounded up to the read size): small while hopping from
    /// segment header to segment header, the whole buffer while walking frames.
    read_limit: usize,
}

impl<'a, S: Storage> Reader<'a, S> {
    pub fn new(storage: &'a mut S, buffer: &'a mut [u8], layout: Layout) -> Self {
        Self {
            storage,
            buffer,
            layout,
            window: Window::default(),
            read_limit: usize::MAX,
        }
    }

    /// Limits how much later refills read; `usize::MAX` reads as much as the buffer holds.
    pub fn set_read_limit(&mut self, limit: usize) {
        self.read_limit = limit;
    }

    /// Makes the buffer hold `[offset, offset + need)`, reading from `offset` up to `end` or the
    /// buffer's size. Returns false when `offset + need` is past `end`.
    fn ensure(&mut self, offset: u64, need: usize, end: u64) -> Result<bool, S::Error> {
        let window_end = self.window.start + self.window.len as u64;
        if offset >= self.window.start && offset + need as u64 <= window_end {
            return Ok(true);
        }
        if offset + need as u64 > end {
            return Ok(false);
        }
        let read_size = self.layout.geometry.read_size as usize;
        let usable = self.buffer.len() / read_size * read_size;
        let wanted = need
            .max(self.read_limit)
            .div_ceil(read_size)
            .saturating_mul(read_size);
        // Read past the segment's end when the buffer allows: the next epoch usually lives in
        // the next slot, so a replay keeps streaming. Frames are still bounded by `end`.
        let stored = u64::from(self.layout.segments) * self.layout.segment_size;
        let len = usable.min(wanted).min((stored - offset) as usize);
        self.window = Window::default();
        self.storage.read(offset, &mut self.buffer[..len])?;
        self.window = Window { start: offset, len };
        Ok(len >= need)
    }

    /// The buffered bytes from `offset` to the end of the window.
    fn bytes_at(&self, offset: u64) -> Range<usize> {
        let relative = (offset - self.window.start) as usize;
        relative..self.window.len
    }

    /// Parses what lies at `offset`, a frame-aligned position before `end`.
    pub fn frame_at(&mut self, offset: u64, end: u64) -> Result<Slot, S::Error> {
        if !self.ensure(offset, OVERHEAD, end)? {
            return Ok(Slot::NoRoom);
        }
        let erased = self.layout.geometry.erased_value;
        let range = self.bytes_at(offset);
        if self.buffer[range.start..range.start + HEADER_LEN]
            .iter()
            .all(|&byte| byte == erased)
        {
            return Ok(Slot::Erased);
        }
        let payload_max = self.layout.payload_max.max(super::CONTROL_PAYLOAD_MAX);
        let mut parsed = Frame::new_checked(&self.buffer[range], payload_max);
        if let Err(FrameError::Incomplete {
            needed: Some(needed),
        }) = parsed
        {
            if !self.ensure(offset, needed, end)? {
                return Ok(Slot::Bad(FrameError::TooLong));
            }
            parsed = Frame::new_checked(&self.buffer[self.bytes_at(offset)], payload_max);
        }
        let start = self.bytes_at(offset).start;
        Ok(match parsed {
            Ok(frame) => {
                let padded = frame::padded_len(frame.payload().len(), self.layout.write_size());
                if offset + padded as u64 > end {
                    return Ok(Slot::Bad(FrameError::TooLong));
                }
                // Values no writer produces: refusing them keeps recovery's arithmetic in range.
                let header = frame.header();
                if header.epoch == u32::MAX || header.sequence >= super::SEQUENCE_LIMIT {
                    return Ok(Slot::Bad(FrameError::BadHeader));
                }
                let payload_start = start + HEADER_LEN;
                Slot::Valid {
                    header: frame.header(),
                    payload: payload_start..payload_start + frame.payload().len(),
                    crc: frame.crc(),
                    padded,
                }
            }
            Err(error) => Slot::Bad(error),
        })
    }

    /// Whether every byte in `[offset, end)` holds the erased value. Checks what the buffer
    /// already holds first and stops at the first written byte, so it reads only the bytes
    /// that are not buffered yet and up to where the answer is known. `offset` is
    /// read-size-aligned.
    pub fn is_erased(&mut self, mut offset: u64, end: u64) -> Result<bool, S::Error> {
        let erased = self.layout.geometry.erased_value;
        let read_size = self.layout.geometry.read_size as usize;
        let usable = self.buffer.len() / read_size * read_size;
        while offset < end {
            let window_end = self.window.start + self.window.len as u64;
            if offset < self.window.start || offset >= window_end {
                let chunk = usable.min((end - offset) as usize);
                if !self.ensure(offset, chunk, end)? {
                    break;
                }
            }
            let range = self.bytes_at(offset);
            let len = range.len().min((end - offset) as usize);
            let bytes = &self.buffer[range.start..range.start + len];
            if bytes.iter().any(|&byte| byte != erased) {
                return Ok(false);
            }
            offset += len as u64;
        }
        Ok(true)
    }

    /// The first write-aligned offset in `[offset, end]` from which every byte up to `end` holds
    /// the erased value: where fresh space begins after whatever was written.
    pub fn first_free(&mut self, mut offset: u64, end: u64) -> Result<u64, S::Error> {
        let erased = self.layout.geometry.erased_value;
        let write_size = self.layout.write_size();
        let whole = (self.buffer.len() / write_size * write_size).max(write_size);
        let mut free = offset;
        while offset < end {
            let chunk = whole.min((end - offset) as usize);
            if !self.ensure(offset, chunk, end)? {
                break;
            }
            let range = self.bytes_at(offset);
            let bytes = &self.buffer[range.start..range.start + chunk];
            if let Some(last) = bytes.iter().rposition(|&byte| byte != erased) {
                let written_end = offset + last as u64 + 1;
                free = written_end.div_ceil(write_size as u64) * write_size as u64;
            }
            offset += chunk as u64;
        }
        Ok(free)
    }
}
