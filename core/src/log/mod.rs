//! A segmented, append-only log over [`Storage`], with crash recovery and space reclamation.
//!
//! # Layout
//!
//! The storage is cut into `n` equal segments of whole erase blocks. Segments are used as a ring:
//! the segment of epoch `e` always lives in slot `e % n`, so the ring needs no table in RAM.
//! Each segment opens with a *segment header* frame (its epoch, where the live log starts, the
//! layout) followed by user frames, each carrying the next sequence number, and release frames.
//! SPEC.md gives the bytes and the recovery rules.
//!
//! # What it guarantees
//!
//! - [`Log::append`] writes one frame; [`Log::sync`] makes every appended frame durable. A frame is
//!   durable once a `sync` that started after its `append` returned `Ok`.
//! - After any crash, [`Log::open`] yields every durable frame exactly once, in sequence order,
//!   then possibly some frames that were appended but never synced, and nothing else. This holds
//!   for a crash during recovery too: recovery writes nothing.
//! - A torn tail (frames lost or torn by the crash) is skipped and reported as
//!   [`Recovery::torn_tail`]. Damage to a frame that was known to be durable (a later frame
//!   records that it had been synced) is *mid-log corruption*: reported as
//!   [`Recovery::corruption`] with its position and what was skipped. With
//!   [`Policy::StopAtCorruption`] (the default) recovery yields the consistent prefix before it;
//!   with [`Policy::Strict`] it refuses to open.
//! - After [`Log::close`], appends continue right after the last frame. After a crash (or any
//!   open without a close marker) they go to a freshly erased segment, since a write cut short
//!   may have left words that must not be programmed again; after damage too. The first frame
//!   there repeats the expected sequence number, which later recoveries recognise as a
//!   deliberate cut and never read behind. Only when every segment is live do appends continue
//!   in the newest segment, after all written bytes plus one largest frame of margin (less
//!   when the segment is nearly full: one control frame of room always stays for a release).
//! - Space is reclaimed: [`Log::release_before`] frees whole segments older than a frame (a
//!   checkpoint). The release is recorded in a release frame, durable with the next sync, and a
//!   segment is erased for reuse only once its release is durable.
//! - Appended frames collect in the lent buffer and go to storage in one write per sync.
//! - Frames can be read back after open: [`Log::read`] at a position, [`Log::read_next`] with a
//!   [`Cursor`] in sequence order; every frame read is checked (CRC, epoch) again.
//! - No word is written twice between erases; every write is whole write-size words.
//!
//! # What it does not guarantee
//!
//! - Damage to the last synced batch, when nothing was written after it, is indistinguishable
//!   from a torn write and is reported as a torn tail (with the count of frames discarded).
//! - Frames before a release may be yielded again by a recovery until the release is durable;
//!   users replay idempotently (a checkpoint resets state).
//! - Epochs are 32-bit and sequence numbers stay below 2^63: past either, appends fail with
//!   [`AppendError::EpochsExhausted`].

mod read;
mod recover;
mod window;

#[cfg(test)]
mod read_tests;
#[cfg(test)]
mod tests;

use crate::frame::{self, EmitError, Header};
use crate::storage::{Geometry, GeometryError, Storage};
use serde::{Deserialize, Serialize};

pub use read::{Cursor, FrameRef, ReadError, ReadFrame};
pub use recover::{Damage, DamageCause, Recovery};

/// Kind of the frame that opens every segment.
pub const KIND_SEGMENT_HEADER: u8 = 1;
/// Kind of the frame that records where the live log starts after a release.
pub const KIND_RELEASE: u8 = 2;
/// Kind of the frame a clean [`Log::close`] writes last: appends may continue right after it.
pub const KIND_CLOSE: u8 = 3;
/// The smallest kind available to users of the log; kinds below are the log's own.
pub const KIND_USER_MIN: u8 = 16;

/// What recovery does when it finds mid-log corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Policy {
    /// Yield the consistent prefix before the damage, report it, and append after it.
    #[default]
    StopAtCorruption,
    /// Refuse to open: [`OpenError::Corrupted`].
    Strict,
}

/// How a log is laid out and recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// Segment size in bytes, a multiple of the erase size; 0 means one erase block.
    pub segment_size: u32,
    /// Largest payload a frame may carry. The lent buffer must hold one padded frame of it.
    pub payload_max: u32,
    /// What to do on mid-log corruption.
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            segment_size: 0,
            payload_max: 256,
            policy: Policy::StopAtCorruption,
        }
    }
}

/// Where a frame lives: the epoch of its segment and its absolute byte offset in the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Position {
    /// Epoch of the segment holding the frame.
    pub epoch: u32,
    /// Absolute byte offset of the frame in the storage.
    pub offset: u64,
}

/// A frame the log yields during recovery.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The frame's sequence number.
    pub sequence: u64,
    /// The user kind (at least [`KIND_USER_MIN`]).
    pub kind: u8,
    /// Where the frame is stored.
    pub position: Position,
    /// The stored CRC-32C, which matched.
    pub crc: u32,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// The receipt of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Appended {
    /// The sequence number the frame was given.
    pub sequence: u64,
    /// Where it was written.
    pub position: Position,
}

/// Why a configuration cannot be used with a storage and buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// The storage geometry breaks the nesting rules.
    Geometry(GeometryError),
    /// The segment size is not a whole number of erase blocks, or too small for two frames.
    SegmentSize,
    /// Fewer than two segments fit in the storage.
    TooFewSegments,
    /// The lent buffer cannot hold one frame of `payload_max` bytes.
    BufferTooSmall,
}

/// Why [`Log::open`] failed. Recovery writes nothing, so the storage is unchanged in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum OpenError<E, V> {
    /// The configuration does not fit the storage or buffer.
    Config(ConfigError),
    /// The storage was written with another segment size or write size than configured, or
    /// with a larger payload limit.
    LayoutMismatch {
        /// Segment size recorded in the storage.
        segment_size: u32,
        /// Write size recorded in the storage.
        write_size: u32,
        /// Payload limit recorded in the storage.
        payload_max: u32,
    },
    /// Mid-log corruption under [`Policy::Strict`].
    Corrupted(Damage),
    /// The storage failed.
    Storage(E),
    /// The visitor refused an entry.
    Visitor(V),
}

/// A record that passed its checksum but that the service replaying the log cannot accept: a
/// bug, a log written by another service, or one written by a build with larger capacities.
/// Every service's `open` fails with it (inside [`OpenError::Visitor`]) and writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReplayError {
    /// The payload does not decode as a record of its kind (or is not canonical).
    BadPayload {
        /// Sequence number of the frame.
        sequence: u64,
    },
    /// A kind the service does not write.
    UnknownKind {
        /// Sequence number of the frame.
        sequence: u64,
        /// The kind found.
        kind: u8,
    },
    /// The records need more room than the service's capacities (const generics), or
    /// overflow a count.
    Capacity {
        /// Sequence number of the frame.
        sequence: u64,
    },
    /// A record whose predecessor from the same origin is missing (replicated log).
    Gap {
        /// Sequence number of the frame.
        sequence: u64,
    },
}

impl core::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadPayload { sequence } => {
                write!(f, "record {sequence} does not decode as a record of its kind")
            }
            Self::UnknownKind { sequence, kind } => {
                write!(f, "record {sequence} has kind {kind}, which this service does not write")
            }
            Self::Capacity { sequence } => write!(
                f,
                "record {sequence} needs more room than this build's capacities, or overflows a count"
            ),
            Self::Gap { sequence } => {
                write!(f, "record {sequence} follows a missing record of its origin")
            }
        }
    }
}

impl core::error::Error for ReplayError {}

/// Why [`Log::append`] failed. No frame was appended; the sequence number was not consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AppendError<E> {
    /// The payload is larger than the configured `payload_max`, or did not serialize.
    Encode(EmitError),
    /// Every segment holds live frames: release some with [`Log::release_before`].
    Full,
    /// 2^32 - 1 segments have been opened, or 2^63 frames appended; the storage must be
    /// reformatted.
    EpochsExhausted,
    /// A storage write, erase or sync failed; the log is poisoned and must be reopened.
    Storage(E),
    /// An earlier storage error poisoned the log; reopen it to recover.
    Poisoned,
}

/// Why [`Log::sync`] or [`Log::release_before`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SyncError<E> {
    /// The sync failed: nothing since the previous successful sync may be acknowledged, and the
    /// log is poisoned.
    Storage(E),
    /// An earlier storage error poisoned the log.
    Poisoned,
    /// `release_before` was given a position that is not a frame appended to this log;
    /// nothing changed.
    NotDurable,
}

/// Where the live log begins: the frame at `offset` in the segment of `epoch`, which has
/// sequence number `sequence`. Offset 0 means the segment's header, whose own sequence field
/// then gives the first sequence number. Ordered by epoch, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Start {
    pub epoch: u32,
    pub offset: u32,
    pub sequence: u64,
}

impl Start {
    /// The beginning of the segment of `epoch`.
    pub const fn segment(epoch: u32) -> Self {
        Self {
            epoch,
            offset: 0,
            sequence: 0,
        }
    }
}

/// The payload of a segment header frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentHeader {
    /// Where the live log began when this segment was opened.
    pub start: Start,
    /// Segment size the log was formatted with.
    pub segment_size: u32,
    /// Write size the log was formatted with.
    pub write_size: u32,
    /// Largest user payload the writer allowed: a reader must allow at least as much.
    pub payload_max: u32,
}

/// Sequence numbers stay below this bound, so that `+1` never overflows, even on frames read
/// from a crafted image; a writer would need 2^63 appends to reach it.
pub(crate) const SEQUENCE_LIMIT: u64 = 1 << 63;

/// The payload of a release frame: everything before `start` is no longer needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Release {
    /// The new beginning of the live log.
    pub start: Start,
}

/// Sizes derived once from geometry and configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub geometry: Geometry,
    pub segment_size: u64,
    pub segments: u32,
    pub payload_max: usize,
    /// Padded bytes of the largest control frame (segment header or release).
    pub control_len: usize,
    /// Padded bytes of the largest user frame.
    pub frame_max: usize,
}

impl Layout {
    fn new(geometry: Geometry, config: &Config, buffer_len: usize) -> Result<Self, ConfigError> {
        geometry.validate().map_err(ConfigError::Geometry)?;
        let erase = geometry.erase_size as u64;
        let segment_size = match config.segment_size {
            0 => erase,
            size => size as u64,
        };
        let write = geometry.write_size as usize;
        let control_len = frame::padded_len(CONTROL_PAYLOAD_MAX, write);
        let frame_max = frame::padded_len(config.payload_max as usize, write);
        if segment_size % erase != 0 || segment_size < (2 * control_len + frame_max) as u64 {
            return Err(ConfigError::SegmentSize);
        }
        let segments = geometry.capacity / segment_size;
        if segments < 2 || segments > u32::MAX as u64 {
            return Err(ConfigError::TooFewSegments);
        }
        let read = geometry.read_size as usize;
        if buffer_len / read * read < frame_max + control_len {
            return Err(ConfigError::BufferTooSmall);
        }
        Ok(Self {
            geometry,
            segment_size,
            segments: segments as u32,
            payload_max: config.payload_max as usize,
            control_len,
            frame_max,
        })
    }

    pub fn slot_start(&self, epoch: u32) -> u64 {
        (epoch % self.segments) as u64 * self.segment_size
    }

    pub fn write_size(&self) -> usize {
        self.geometry.write_size as usize
    }
}

/// Upper bound of a control frame's postcard payload: five u32 varints and one u64 varint.
const CONTROL_PAYLOAD_MAX: usize = 5 * 5 + 10;

/// Appended frames waiting in the lent buffer for one storage write: `len` bytes for `offset`.
#[derive(Debug, Clone, Copy, Default)]
struct Batch {
    offset: u64,
    len: usize,
}

/// The segment appends go to.
#[derive(Debug, Clone, Copy)]
struct Head {
    epoch: u32,
    /// Absolute offset of the next write.
    offset: u64,
    /// Absolute end of the segment.
    end: u64,
}

/// The append-only log. `S` is the storage, `B` the lent buffer (an array, a `&mut [u8]` or a
/// `Vec<u8>`), used for reads during recovery and to encode frames afterwards.
#[derive(Debug)]
pub struct Log<S, B> {
    storage: S,
    buffer: B,
    layout: Layout,
    /// The segment appends go to; `None` when the next append must open a fresh segment.
    head: Option<Head>,
    /// Frames appended but not yet handed to the storage.
    batch: Batch,
    /// The newest epoch with a valid header, 0 when the log is empty.
    newest_epoch: u32,
    /// Where the live log begins, as recorded durably (segment header or release frame).
    start: Start,
    /// Where the live log begins, as recorded by a header or release frame not yet synced.
    pending_start: Start,
    /// Where the live log begins in memory: releases not yet recorded included.
    release: Start,
    /// A release of a frame not yet durable, applied at the next successful sync.
    release_at_sync: Option<Start>,
    next_sequence: u64,
    /// Every sequence number below this one is durable.
    durable_sequence: u64,
    poisoned: bool,
}

impl<S: Storage, B: AsMut<[u8]>> Log<S, B> {
    /// Opens the log: recovers it from `storage`, calling `visit` for every frame in sequence
    /// order, and returns the log ready to append with what recovery found.
    pub fn open<V>(
        storage: S,
        mut buffer: B,
        config: Config,
        visit: impl FnMut(Entry<'_>) -> Result<(), V>,
    ) -> Result<(Self, Recovery), OpenError<S::Error, V>> {
        let layout = Layout::new(storage.geometry(), &config, buffer.as_mut().len())
            .map_err(OpenError::Config)?;
        let mut log = Self {
            storage,
            buffer,
            layout,
            head: None,
            batch: Batch::default(),
            newest_epoch: 0,
            // Epochs start at 1; recovery overwrites these when it finds segments.
            start: Start::segment(1),
            pending_start: Start::segment(1),
            release: Start::segment(1),
            release_at_sync: None,
            next_sequence: 0,
            durable_sequence: 0,
            poisoned: false,
        };
        let recovery = recover::run(&mut log, config.policy, visit)?;
        // Frames read back may sit in a page cache that was never flushed (a killed process,
        // not a power cut); flush them before treating them as durable.
        log.storage.sync().map_err(OpenError::Storage)?;
        log.durable_sequence = log.next_sequence;
        Ok((log, recovery))
    }

    /// Appends one frame of `kind` (at least [`KIND_USER_MIN`]) whose payload `fill` writes into
    /// the given area, returning its length. The frame is durable after the next [`Log::sync`];
    /// until then it may wait in the lent buffer, so a write error may surface at the sync.
    pub fn append(
        &mut self,
        kind: u8,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, EmitError>,
    ) -> Result<Appended, AppendError<S::Error>> {
        debug_assert!(kind >= KIND_USER_MIN, "kinds below 16 belong to the log");
        if self.poisoned {
            return Err(AppendError::Poisoned);
        }
        if self.next_sequence >= SEQUENCE_LIMIT - 1 {
            return Err(AppendError::EpochsExhausted);
        }
        let len = self.encode(kind, fill)?;
        let fits = self
            .head
            .is_some_and(|head| head.offset + (len + self.layout.control_len) as u64 <= head.end);
        if !fits {
            self.open_segment()?;
            // The epoch is part of the frame: encode again for the new segment. `fill` was
            // consumed, so the bytes are re-stamped in place rather than regenerated.
            self.restamp_epoch(len);
        }
        self.write_encoded(len)
    }

    /// Appends one frame whose payload is `value` serialized with postcard.
    pub fn append_postcard<T: Serialize>(
        &mut self,
        kind: u8,
        value: &T,
    ) -> Result<Appended, AppendError<S::Error>> {
        self.append(kind, |area| {
            postcard::to_slice(value, area)
                .map(|used| used.len())
                .map_err(|_| EmitError::BufferTooSmall)
        })
    }

    /// Makes every appended frame durable. An error poisons the log: nothing appended since the
    /// previous successful sync may be acknowledged, and every later call fails.
    pub fn sync(&mut self) -> Result<(), SyncError<S::Error>> {
        if self.poisoned {
            return Err(SyncError::Poisoned);
        }
        self.flush_and_sync().map_err(SyncError::Storage)?;
        self.after_sync();
        Ok(())
    }

    /// Declares every segment older than the one holding `frame` free for reuse: `frame` makes
    /// the frames before it redundant (a checkpoint, typically). When `frame` is already durable
    /// the release applies now; otherwise it applies with the next successful sync, which makes
    /// `frame` and the release record durable together.
    pub fn release_before(&mut self, frame: Appended) -> Result<(), SyncError<S::Error>> {
        if self.poisoned {
            return Err(SyncError::Poisoned);
        }
        let slot_start = self.layout.slot_start(frame.position.epoch);
        let offset = frame
            .position
            .offset
            .checked_sub(slot_start)
            .filter(|&offset| offset > 0 && offset < self.layout.segment_size);
        let (Some(offset), true) = (
            offset,
            frame.sequence < self.next_sequence && frame.position.epoch <= self.newest_epoch,
        ) else {
            return Err(SyncError::NotDurable);
        };
        let start = Start {
            epoch: frame.position.epoch,
            offset: offset as u32,
            sequence: frame.sequence,
        };
        if frame.sequence < self.durable_sequence {
            self.release = self.release.max(start);
        } else {
            self.release_at_sync = Some(self.release_at_sync.map_or(start, |at| at.max(start)));
        }
        self.record_release_early()
    }

    /// Releases the segments before `frame` once the checkpoint that justifies it is durable:
    /// call it right after the sync that made that checkpoint (and any records it copied
    /// forward) durable, never before. `frame` is often a record durable long ago (the oldest
    /// one still needed), so [`Log::release_before`] applies at once and writes a release
    /// frame; unsynced writes land independently, so released before that sync, the release
    /// frame could reach the medium without the checkpoint and recovery would start past
    /// records still needed. When the release frees a segment it is synced at once: every
    /// restart after a crash begins a fresh segment, so on a small log releases lost to crashes
    /// would add up until no segment is free. Returns whether a segment was freed.
    pub fn release_checkpointed(&mut self, frame: Appended) -> Result<bool, SyncError<S::Error>> {
        let live = self.first_live_epoch();
        self.release_before(frame)?;
        let freed = self.first_live_epoch() > live;
        if freed {
            self.sync()?;
        }
        Ok(freed)
    }

    /// Records the release in a release frame right away (durable with the next sync), so that
    /// a crash soon after does not leave recovery with every segment live. Only a release that
    /// frees a segment is worth a frame: within a segment the recorded start may lag, since
    /// replaying from an older durable position is still correct. The head's reserve is kept
    /// for the release frame `open_segment` may need.
    fn record_release_early(&mut self) -> Result<(), SyncError<S::Error>> {
        let target = self
            .release
            .max(self.release_at_sync.unwrap_or(self.release));
        let recorded = self.start.max(self.pending_start);
        let room = self
            .head
            .is_some_and(|head| head.offset + 2 * self.layout.control_len as u64 <= head.end);
        if target.epoch > recorded.epoch && room {
            let epoch = self.head.map_or(0, |head| head.epoch);
            let release = Release { start: target };
            self.write_control(KIND_RELEASE, epoch, &release)
                .map_err(|error| match error {
                    AppendError::Storage(error) => SyncError::Storage(error),
                    _ => SyncError::Poisoned,
                })?;
            self.pending_start = target;
        }
        Ok(())
    }

    /// What a successful sync makes true.
    fn after_sync(&mut self) {
        self.durable_sequence = self.next_sequence;
        if let Some(start) = self.release_at_sync.take() {
            self.release = self.release.max(start);
        }
        self.start = self.start.max(self.pending_start);
    }

    /// Syncs and marks a clean shutdown, so that the next open appends right after the last
    /// frame. Without it (a crash, a kill), the next open cannot know that no write was cut
    /// short at the end, and appends move to a freshly erased segment.
    pub fn close(mut self) -> Result<(), SyncError<S::Error>> {
        if self.poisoned {
            return Err(SyncError::Poisoned);
        }
        let room = self
            .head
            .is_some_and(|head| head.offset + 2 * self.layout.control_len as u64 <= head.end);
        if room {
            let epoch = self.head.map_or(0, |head| head.epoch);
            self.write_control(KIND_CLOSE, epoch, &())
                .map_err(|error| match error {
                    AppendError::Storage(error) => SyncError::Storage(error),
                    _ => SyncError::Poisoned,
                })?;
        }
        self.sync()
    }

    /// The sequence number the next append will get.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Every frame with a lower sequence number is durable.
    pub fn durable_sequence(&self) -> u64 {
        self.durable_sequence
    }

    /// Segments neither live nor needed: how many more segments can be opened before
    /// [`AppendError::Full`].
    pub fn free_segments(&self) -> u32 {
        if self.newest_epoch == 0 {
            return self.layout.segments;
        }
        let live = self.newest_epoch - self.release.epoch.min(self.newest_epoch) + 1;
        self.layout.segments.saturating_sub(live)
    }

    /// Total number of segments.
    pub fn segments(&self) -> u32 {
        self.layout.segments
    }

    /// Bytes per segment.
    pub fn segment_size(&self) -> u64 {
        self.layout.segment_size
    }

    /// True once a storage error poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The storage, for inspection.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, mutable: for a simulator arming a power cut or injecting faults, like
    /// `BufWriter::get_mut`. Writing, erasing or syncing through it behind the log's back voids
    /// the log's guarantees.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage and buffer back.
    pub fn into_parts(self) -> (S, B) {
        (self.storage, self.buffer)
    }

    fn encode(
        &mut self,
        kind: u8,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, EmitError>,
    ) -> Result<usize, AppendError<S::Error>> {
        let header = self.header(kind, self.head.map_or(0, |head| head.epoch));
        let payload_max = self.layout.payload_max;
        let write_size = self.layout.write_size();
        let erased = self.layout.geometry.erased_value;
        let buffer = &mut self.buffer.as_mut()[..self.layout.frame_max];
        frame::emit(buffer, header, write_size, erased, |area| {
            let length = fill(&mut area[..payload_max])?;
            if length > payload_max {
                return Err(EmitError::BufferTooSmall);
            }
            Ok(length)
        })
        .map_err(AppendError::Encode)
    }

    fn header(&self, kind: u8, epoch: u32) -> Header {
        let unsynced = self.next_sequence - self.durable_sequence;
        Header {
            kind,
            sequence: self.next_sequence,
            epoch,
            unsynced: unsynced.min(u32::MAX as u64) as u32,
        }
    }

    /// Rewrites the epoch and unsynced fields of the encoded frame in the buffer, and its CRC.
    fn restamp_epoch(&mut self, len: usize) {
        let epoch = self.head.map_or(0, |head| head.epoch);
        let header = self.header(KIND_USER_MIN, epoch);
        frame::restamp(
            &mut self.buffer.as_mut()[..len],
            header.epoch,
            header.unsynced,
        );
    }

    fn write_encoded(&mut self, len: usize) -> Result<Appended, AppendError<S::Error>> {
        let Some(head) = self.head.as_mut() else {
            return Err(AppendError::Full);
        };
        let offset = head.offset;
        let epoch = head.epoch;
        head.offset += len as u64;
        if let Err(error) = self.write_frame(offset, 0..len) {
            self.poisoned = true;
            return Err(AppendError::Storage(error));
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        Ok(Appended {
            sequence,
            position: Position { epoch, offset },
        })
    }

    /// Writes a control frame into the head segment (its space was reserved).
    fn write_control<T: Serialize>(
        &mut self,
        kind: u8,
        epoch: u32,
        value: &T,
    ) -> Result<(), AppendError<S::Error>> {
        let header = self.header(kind, epoch);
        let write_size = self.layout.write_size();
        let erased = self.layout.geometry.erased_value;
        // Control frames use the area after the user frame, which may hold a frame waiting to
        // be written once this control frame is out.
        let area = self.layout.frame_max..self.layout.frame_max + self.layout.control_len;
        let buffer = &mut self.buffer.as_mut()[area.clone()];
        let len = frame::emit_postcard(buffer, header, write_size, erased, value)
            .map_err(AppendError::Encode)?;
        let Some(head) = self.head.as_mut() else {
            return Err(AppendError::Full);
        };
        // Every append leaves room for one control frame, and recovery resumes in place only
        // with that room; refuse rather than write past the segment if that ever fails to hold.
        if head.offset + len as u64 > head.end {
            return Err(AppendError::Full);
        }
        let offset = head.offset;
        head.offset += len as u64;
        if let Err(error) = self.write_frame(offset, area.start..area.start + len) {
            self.poisoned = true;
            return Err(AppendError::Storage(error));
        }
        Ok(())
    }

    /// Queues the encoded frame in `range` of the buffer for writing at `offset`. Frames that
    /// follow one another collect in the rest of the lent buffer and go out in one storage write
    /// at the next sync (or when the batch area fills), so a group commit costs one write call
    /// rather than one per frame. Without room for a batch, frames are written at once.
    fn write_frame(&mut self, offset: u64, range: core::ops::Range<usize>) -> Result<(), S::Error> {
        let batch_start = self.layout.frame_max + self.layout.control_len;
        let capacity = self.buffer.as_mut().len() - batch_start;
        let len = range.len();
        let follows = self.batch.offset + self.batch.len as u64 == offset;
        if self.batch.len > 0 && (!follows || self.batch.len + len > capacity) {
            self.flush()?;
        }
        if len > capacity {
            return self.storage.write(offset, &self.buffer.as_mut()[range]);
        }
        if self.batch.len == 0 {
            self.batch.offset = offset;
        }
        let at = batch_start + self.batch.len;
        self.buffer.as_mut().copy_within(range, at);
        self.batch.len += len;
        Ok(())
    }

    /// Writes the queued frames, if any.
    fn flush(&mut self) -> Result<(), S::Error> {
        if self.batch.len == 0 {
            return Ok(());
        }
        let batch_start = self.layout.frame_max + self.layout.control_len;
        let bytes = &self.buffer.as_mut()[batch_start..batch_start + self.batch.len];
        self.batch.len = 0;
        self.storage.write(self.batch.offset, bytes)
    }

    /// Writes the queued frames and syncs; any error poisons the log.
    fn flush_and_sync(&mut self) -> Result<(), S::Error> {
        let result = self.flush().and_then(|()| self.storage.sync());
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Opens the next segment in the ring: records pending releases durably, erases the slot,
    /// writes the header. The new segment becomes the head.
    fn open_segment(&mut self) -> Result<(), AppendError<S::Error>> {
        let epoch = self
            .newest_epoch
            .checked_add(1)
            .ok_or(AppendError::EpochsExhausted)?;
        if epoch == u32::MAX {
            return Err(AppendError::EpochsExhausted);
        }
        let segments = self.layout.segments;
        let victim = epoch.checked_sub(segments);
        if victim.is_some_and(|victim| victim >= self.release.epoch) {
            return Err(AppendError::Full);
        }
        if victim.is_some_and(|victim| victim >= self.start.epoch) {
            self.record_release()?;
        }
        let start = self.layout.slot_start(epoch);
        // Queued frames of the old head go out first, keeping storage operations in order.
        if let Err(error) = self.flush() {
            self.poisoned = true;
            return Err(AppendError::Storage(error));
        }
        if let Err(error) = self.storage.erase(start, self.layout.segment_size) {
            self.poisoned = true;
            return Err(AppendError::Storage(error));
        }
        let end = start + self.layout.segment_size;
        self.head = Some(Head {
            epoch,
            offset: start,
            end,
        });
        self.newest_epoch = epoch;
        // Releases are only ever made for durable frames, so recording the in-memory release
        // point here is safe; it counts as durable once this header is synced.
        let header = SegmentHeader {
            start: self.release.max(self.start),
            segment_size: self.layout.segment_size as u32,
            write_size: self.layout.geometry.write_size,
            payload_max: self.layout.payload_max as u32,
        };
        self.pending_start = self.pending_start.max(header.start);
        self.write_control(KIND_SEGMENT_HEADER, epoch, &header)
    }

    /// Writes a release frame into the head segment and syncs, so that a crash during the erase
    /// that follows cannot make recovery look for the released segments.
    fn record_release(&mut self) -> Result<(), AppendError<S::Error>> {
        let Some(head) = self.head else {
            // No writable head: recovery found damage with no prefix before it and abandoned
            // every live segment (the only way to have a release pending without a head). A crash
            // during the erase that follows leaves that same damage for the next recovery, which
            // abandons them again; there is nothing to record.
            self.start = self.release;
            return Ok(());
        };
        if self.pending_start < self.release {
            self.pending_start = self.release;
            let release = Release {
                start: self.release,
            };
            self.write_control(KIND_RELEASE, head.epoch, &release)?;
        }
        self.flush_and_sync().map_err(AppendError::Storage)?;
        self.after_sync();
        Ok(())
    }
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Geometry(error) => write!(f, "unusable storage geometry: {error}"),
            Self::SegmentSize => f.write_str(
                "the segment size must be whole erase blocks with room for a header and two frames",
            ),
            Self::TooFewSegments => f.write_str("the storage must hold at least two segments"),
            Self::BufferTooSmall => f.write_str("the lent buffer cannot hold one frame"),
        }
    }
}

impl<E: core::fmt::Display, V: core::fmt::Display> core::fmt::Display for OpenError<E, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Config(error) => error.fmt(f),
            Self::LayoutMismatch {
                segment_size,
                write_size,
                payload_max,
            } => write!(
                f,
                "the log was written with segment size {segment_size}, write size \
                 {write_size} and payload limit {payload_max}, which the configuration does not \
                 match"
            ),
            Self::Corrupted(damage) => {
                write!(
                    f,
                    "mid-log corruption, refusing to open (strict policy): {damage}"
                )
            }
            Self::Storage(error) => write!(f, "storage error during recovery: {error}"),
            Self::Visitor(error) => write!(f, "a recovered record was refused: {error}"),
        }
    }
}

impl<E: core::fmt::Display> core::fmt::Display for AppendError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Encode(error) => error.fmt(f),
            Self::Full => f.write_str("the log is full: every segment holds live records"),
            Self::EpochsExhausted => f.write_str("the log has used all 2^32 segment epochs"),
            Self::Storage(error) => write!(f, "storage error, the log is poisoned: {error}"),
            Self::Poisoned => f.write_str("an earlier storage error poisoned the log; reopen it"),
        }
    }
}

impl<E: core::fmt::Display> core::fmt::Display for SyncError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Storage(error) => {
                write!(
                    f,
                    "sync failed, nothing since the last sync is durable: {error}"
                )
            }
            Self::Poisoned => f.write_str("an earlier storage error poisoned the log; reopen it"),
            Self::NotDurable => f.write_str("cannot release before a record that is not durable"),
        }
    }
}
