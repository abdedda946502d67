//! Reading frames back after open: one frame at a [`Position`] ([`Log::read`]), or a [`Cursor`]
//! that walks user frames in sequence order ([`Log::read_next`]).
//!
//! # Guarantees
//!
//! - Every frame returned passed its CRC and carries the epoch of the segment its position
//!   names, so a position whose segment was released and overwritten gives an error
//!   ([`ReadError::Released`] while the log knows it is released, [`ReadError::NoFrame`] when the
//!   bytes there belong to another epoch), never another frame's data.
//! - Frames still waiting in the unsynced batch are readable: a read first hands the batch to
//!   the storage (a write, not a sync: durability is unchanged, and batching is cut short).
//! - A cursor follows the same rules as recovery (SPEC.md section 4.6): it yields user frames
//!   whose sequence numbers follow on exactly, skips log frames (kinds below
//!   [`KIND_USER_MIN`]), crosses into the next segment when one ends, and after a break looks
//!   for the frame carrying the expected number (a cut left by an earlier recovery) before it
//!   moves on. Every walk is bounded by the words of the storage.
//! - Any position, valid or not, gives a result or an error, never a panic.
//!
//! # Not guaranteed
//!
//! - [`Log::read`] at an exact position checks the epoch, not that the frame was part of the
//!   recovered log (a frame of a torn tail may still be readable there): callers that need the
//!   log's order walk with a [`Cursor`], or check [`ReadFrame::sequence`].

use super::window::{Reader, Slot};
use super::{Layout, Log, Position, Start, KIND_SEGMENT_HEADER, KIND_USER_MIN};
use crate::frame::OVERHEAD;
use crate::storage::Storage;
use core::ops::Range;

/// A frame read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReadFrame {
    /// The frame's sequence number (for log frames: that of the next user frame).
    pub sequence: u64,
    /// The frame's kind.
    pub kind: u8,
    /// Payload bytes.
    pub payload_len: usize,
    /// The stored CRC-32C, which matched.
    pub crc: u32,
    /// Where the frame is.
    pub position: Position,
    /// Where the next frame is: right after this one, or the start of the next segment when
    /// this one is the last of a segment that is not the head. After damage or a cut, only a
    /// [`Cursor`] finds the log's next frame.
    pub next: Position,
}

/// Why a read returned no frame. Reads change nothing, except that a failed hand-over of the
/// batch to the storage ([`ReadError::Storage`]) poisons the log as a failed append would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReadError<E> {
    /// Not a write-size-aligned offset inside the slot of the position's epoch; nothing changed.
    InvalidPosition,
    /// Before the start of the live log: released, and possibly overwritten; nothing changed.
    Released,
    /// At or after the end of the log: nothing was written there yet; nothing changed.
    End,
    /// No valid frame of the position's segment there (damage, another epoch's bytes, or not a
    /// frame boundary); nothing changed.
    NoFrame,
    /// `out` cannot hold the payload of `needed` bytes; nothing changed.
    BufferTooSmall {
        /// The payload's length.
        needed: usize,
    },
    /// The storage failed. A read error changes nothing; a failed write of the batch poisons
    /// the log.
    Storage(E),
    /// An earlier storage error poisoned the log; nothing changed.
    Poisoned,
}

/// A place in the log to read the next user frame from, with the sequence number expected
/// there. Plain data: it can be stored, copied and used again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cursor {
    position: Position,
    expected: Option<u64>,
}

impl Cursor {
    /// A cursor at `position`, expecting the frame there to carry `expected_sequence` (`None`:
    /// whatever the first frame found there carries).
    pub const fn new(position: Position, expected_sequence: Option<u64>) -> Self {
        Self {
            position,
            expected: expected_sequence,
        }
    }

    /// Where the next read looks.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The sequence number the next user frame must carry, once known.
    pub fn expected_sequence(&self) -> Option<u64> {
        self.expected
    }
}

/// What a read may see: the log's live range, copied so that the reader can borrow the storage.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    layout: Layout,
    newest_epoch: u32,
    /// Where appends go in the head segment, if there is one.
    head: Option<(u32, u64)>,
    /// The first live position.
    live: Position,
}

impl Bounds {
    /// Checks `position` and returns the end of its segment.
    fn check<E>(&self, position: Position) -> Result<u64, ReadError<E>> {
        let slot_start = self.layout.slot_start(position.epoch);
        let end = slot_start + self.layout.segment_size;
        let aligned = position
            .offset
            .is_multiple_of(self.layout.write_size() as u64);
        if position.epoch == 0 || position.offset < slot_start || position.offset >= end {
            return Err(ReadError::InvalidPosition);
        }
        if !aligned {
            return Err(ReadError::InvalidPosition);
        }
        if position < self.live {
            return Err(ReadError::Released);
        }
        let past_head = self
            .head
            .is_some_and(|(epoch, offset)| epoch == position.epoch && position.offset >= offset);
        if position.epoch > self.newest_epoch || past_head {
            return Err(ReadError::End);
        }
        Ok(end)
    }

    /// The start of the segment after `epoch` (its header).
    fn next_segment(&self, epoch: u32) -> Position {
        let epoch = epoch.saturating_add(1);
        Position {
            epoch,
            offset: self.layout.slot_start(epoch),
        }
    }

    /// Where the frame after one of `padded` bytes at `position` would start.
    fn after(&self, position: Position, padded: usize, end: u64) -> Position {
        let offset = position.offset + padded as u64;
        if offset + OVERHEAD as u64 > end {
            return self.next_segment(position.epoch);
        }
        Position {
            epoch: position.epoch,
            offset,
        }
    }
}

/// Whether a valid frame at the cursor's position continues the log.
fn follows(cursor: &Cursor, kind: u8, sequence: u64, at_slot_start: bool) -> Continuation {
    let header = kind == KIND_SEGMENT_HEADER;
    if header != at_slot_start {
        return Continuation::No;
    }
    match cursor.expected {
        None => Continuation::Yes,
        Some(expected) if sequence == expected => Continuation::Yes,
        // A segment whose first frames were cut off: search it for the expected number.
        Some(expected) if header && sequence > expected => Continuation::Search,
        Some(_) if header => Continuation::SkipSegment,
        Some(_) => Continuation::No,
    }
}

enum Continuation {
    Yes,
    No,
    Search,
    SkipSegment,
}

/// A frame found by a walk and its payload's range in the reader's buffer.
type Found = (ReadFrame, Range<usize>);

/// A frame and its payload, borrowed from the log's buffer.
pub type FrameRef<'a> = (ReadFrame, &'a [u8]);

/// Walks from the cursor to the next user frame; returns it and its payload's range in the
/// reader's buffer, or `None` at the end of the log.
fn walk<S: Storage>(
    reader: &mut Reader<'_, S>,
    bounds: &Bounds,
    cursor: &mut Cursor,
) -> Result<Option<Found>, ReadError<S::Error>> {
    let layout = bounds.layout;
    let write_size = layout.write_size() as u64;
    let words = layout.segment_size / write_size + 1;
    let limit = u64::from(layout.segments).saturating_mul(words);
    for _ in 0..limit {
        let position = cursor.position;
        let end = match bounds.check(position) {
            Ok(end) => end,
            Err(ReadError::End) => return Ok(None),
            Err(error) => return Err(error),
        };
        let at_slot_start = position.offset == layout.slot_start(position.epoch);
        let slot = reader
            .frame_at(position.offset, end)
            .map_err(ReadError::Storage)?;
        let Slot::Valid {
            header,
            payload,
            crc,
            padded,
        } = slot
        else {
            cursor.position = step(bounds, position, write_size, end);
            continue;
        };
        let verdict = if header.epoch == position.epoch {
            follows(cursor, header.kind, header.sequence, at_slot_start)
        } else {
            Continuation::No
        };
        match verdict {
            Continuation::Yes => {}
            Continuation::No => {
                cursor.position = step(bounds, position, write_size, end);
                continue;
            }
            Continuation::Search => {
                cursor.position = bounds.after(position, padded, end);
                continue;
            }
            Continuation::SkipSegment => {
                cursor.position = bounds.next_segment(position.epoch);
                continue;
            }
        }
        let next = bounds.after(position, padded, end);
        cursor.position = next;
        if header.kind < KIND_USER_MIN {
            cursor.expected = Some(header.sequence);
            continue;
        }
        cursor.expected = Some(header.sequence.saturating_add(1));
        let frame = ReadFrame {
            sequence: header.sequence,
            kind: header.kind,
            payload_len: payload.len(),
            crc,
            position,
            next,
        };
        return Ok(Some((frame, payload)));
    }
    Err(ReadError::NoFrame)
}

/// The next word to examine after a position that does not continue the log.
fn step(bounds: &Bounds, position: Position, write_size: u64, end: u64) -> Position {
    let offset = position.offset + write_size;
    if offset + OVERHEAD as u64 > end {
        return bounds.next_segment(position.epoch);
    }
    Position {
        epoch: position.epoch,
        offset,
    }
}

impl<S: Storage, B: AsMut<[u8]>> Log<S, B> {
    /// Reads the frame at `position` (of any kind) and copies its payload into the start of
    /// `out`. The frame's CRC and epoch are checked, not that it is the log's next frame after
    /// some other one: walk with [`Log::read_next`] for that.
    pub fn read(
        &mut self,
        position: Position,
        out: &mut [u8],
    ) -> Result<ReadFrame, ReadError<S::Error>> {
        let (frame, payload) = self.read_ref(position)?;
        let target = out
            .get_mut(..payload.len())
            .ok_or(ReadError::BufferTooSmall {
                needed: payload.len(),
            })?;
        target.copy_from_slice(payload);
        Ok(frame)
    }

    /// Reads the frame at `position` (of any kind); its payload is borrowed from the log's
    /// buffer until the next call.
    pub fn read_ref(&mut self, position: Position) -> Result<FrameRef<'_>, ReadError<S::Error>> {
        let bounds = self.read_bounds()?;
        let end = bounds.check(position)?;
        let mut reader = self.reader();
        let slot = reader
            .frame_at(position.offset, end)
            .map_err(ReadError::Storage)?;
        let Slot::Valid {
            header,
            payload,
            crc,
            padded,
        } = slot
        else {
            return Err(ReadError::NoFrame);
        };
        if header.epoch != position.epoch {
            return Err(ReadError::NoFrame);
        }
        let mut next = bounds.after(position, padded, end);
        // Outside the head segment, nothing more will be written after the last frame: the
        // next frame is the next segment's header.
        if next.epoch == position.epoch && bounds.check::<S::Error>(next).is_ok() {
            let peek = reader
                .frame_at(next.offset, end)
                .map_err(ReadError::Storage)?;
            let continues =
                matches!(peek, Slot::Valid { header, .. } if header.epoch == position.epoch);
            if !continues {
                next = bounds.next_segment(position.epoch);
            }
        }
        let frame = ReadFrame {
            sequence: header.sequence,
            kind: header.kind,
            payload_len: payload.len(),
            crc,
            position,
            next,
        };
        // The peek may have moved the window: read the payload again if so.
        let payload = match reader.frame_at(position.offset, end) {
            Ok(Slot::Valid { payload, .. }) => payload,
            Ok(_) => return Err(ReadError::NoFrame),
            Err(error) => return Err(ReadError::Storage(error)),
        };
        Ok((frame, &self.buffer.as_mut()[payload]))
    }

    /// Reads the next user frame from `cursor` and advances it; `None` at the end of the log
    /// (the cursor stays there, so a later call sees frames appended meanwhile). The payload is
    /// borrowed from the log's buffer until the next call.
    pub fn read_next(
        &mut self,
        cursor: &mut Cursor,
    ) -> Result<Option<FrameRef<'_>>, ReadError<S::Error>> {
        let bounds = self.read_bounds()?;
        let mut walker = *cursor;
        let mut reader = self.reader();
        let found = walk(&mut reader, &bounds, &mut walker)?;
        *cursor = walker;
        match found {
            Some((frame, payload)) => Ok(Some((frame, &self.buffer.as_mut()[payload]))),
            None => Ok(None),
        }
    }

    /// A cursor at the first live frame.
    pub fn cursor(&self) -> Cursor {
        let start = self.live_start();
        let expected = (start.offset != 0).then_some(start.sequence);
        Cursor::new(self.start_position(start), expected)
    }

    /// A cursor at the first live frame of the segment of `epoch`, or past the end of the log
    /// when nothing was written there yet. A released `epoch` gives a cursor whose reads say
    /// [`ReadError::Released`].
    ///
    /// A segment's header alone does not say which of its frames are live: after a crash with
    /// every segment live, recovery resumes appending inside the newest segment behind a cut,
    /// and frames written before the cut with the same sequence numbers are not part of the log.
    /// So the cursor is found by walking from the live start with the expected sequence numbers,
    /// as recovery does: the cost is a read of every live frame before `epoch`.
    pub fn segment_cursor(&mut self, epoch: u32) -> Result<Cursor, ReadError<S::Error>> {
        let start = self.live_start();
        if epoch < start.epoch {
            let position = Position {
                epoch,
                offset: self.layout.slot_start(epoch),
            };
            return Ok(Cursor::new(position, None));
        }
        let mut cursor = self.cursor();
        // Bounded: every step consumes one live frame, and the log holds finitely many.
        loop {
            let mut probe = cursor;
            match self.read_next(&mut probe)? {
                Some((frame, _)) if frame.position.epoch < epoch => cursor = probe,
                _ => return Ok(cursor),
            }
        }
    }

    /// The epoch of the first live segment (frames before it are released).
    pub fn first_live_epoch(&self) -> u32 {
        self.live_start().epoch
    }

    /// The epoch of the newest segment, 0 when nothing was ever written.
    pub fn newest_epoch(&self) -> u32 {
        self.newest_epoch
    }

    fn live_start(&self) -> Start {
        self.release.max(self.start)
    }

    fn start_position(&self, start: Start) -> Position {
        Position {
            epoch: start.epoch,
            offset: self.layout.slot_start(start.epoch) + u64::from(start.offset),
        }
    }

    /// Hands the batch to the storage, so that reads see it, and captures the live range.
    fn read_bounds(&mut self) -> Result<Bounds, ReadError<S::Error>> {
        if self.poisoned {
            return Err(ReadError::Poisoned);
        }
        if let Err(error) = self.flush() {
            self.poisoned = true;
            return Err(ReadError::Storage(error));
        }
        Ok(Bounds {
            layout: self.layout,
            newest_epoch: self.newest_epoch,
            head: self.head.map(|head| (head.epoch, head.offset)),
            live: self.start_position(self.live_start()),
        })
    }

    /// A frame reader over the area of the buffer that holds no queued frames.
    fn reader(&mut self) -> Reader<'_, S> {
        let scratch = self.layout.frame_max + self.layout.control_len;
        Reader::new(
            &mut self.storage,
            &mut self.buffer.as_mut()[..scratch],
            self.layout,
        )
    }
}

impl<E: core::fmt::Display> core::fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::InvalidPosition => f.write_str("not a frame position of the log's layout"),
            Self::Released => f.write_str("the position was released (and may be overwritten)"),
            Self::End => f.write_str("no frame written at this position yet"),
            Self::NoFrame => f.write_str("no valid frame of that segment at this position"),
            Self::BufferTooSmall { needed } => {
                write!(f, "the buffer cannot hold the payload of {needed} bytes")
            }
            Self::Storage(error) => write!(f, "storage error while reading: {error}"),
            Self::Poisoned => f.write_str("an earlier storage error poisoned the log; reopen it"),
        }
    }
}
