//! Recovery: find the live segments, replay their frames in sequence order, and decide whether
//! damage is a torn tail (lost to a crash, never acknowledged) or mid-log corruption.
//!
//! Recovery only reads. A crash during recovery leaves the storage as it was, so recovery can
//! always run again and reach the same result.
//!
//! The walk (SPEC.md section 4.5 gives every rule):
//! 1. Read every slot's first frame; the valid segment header with the highest epoch `H` is the
//!    newest segment. The live log starts at the latest position that `H`'s header and `H`'s
//!    release frames record.
//! 2. Walk from there, yielding user frames whose sequence numbers follow on exactly.
//! 3. Where the walk breaks (a bad frame, garbage after the last frame, a missing segment, a
//!    sequence gap), look for where an earlier recovery continued the log: a later frame of the
//!    same segment, or a later segment, carrying exactly the expected sequence number. If there is
//!    none, scan everything after the break (and the slots beyond `H`): if any valid frame
//!    records, by its `unsynced` field, that the missing frame had already been synced, the
//!    damage is mid-log corruption; if not, the missing frames were never durable and the damage
//!    is a torn tail.

use super::window::{Reader, Slot};
use super::{
    Entry, Layout, Log, OpenError, Policy, Position, Release, SegmentHeader, Start, KIND_CLOSE,
    KIND_RELEASE, KIND_SEGMENT_HEADER, KIND_USER_MIN,
};
use crate::frame::FrameError;
use crate::storage::Storage;

/// What recovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Recovery {
    /// User frames yielded.
    pub frames: u64,
    /// Live segments walked.
    pub segments: u32,
    /// The sequence number the next append will get.
    pub next_sequence: u64,
    /// Frames lost or torn by a crash, truncated; none of them had been synced.
    pub torn_tail: Option<Damage>,
    /// Damage to frames that had been synced: the log was cut before it.
    pub corruption: Option<Damage>,
    /// Breaks that an earlier recovery had already reported and cut off.
    pub earlier_cuts: u32,
    /// Whether appends continue in the newest segment (true) or open a fresh one.
    pub appends_in_place: bool,
}

impl Recovery {
    /// True when recovery found neither a torn tail nor corruption.
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.corruption.is_none()
    }
}

/// Where the log broke and what was skipped from there on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Damage {
    /// Where the break is.
    pub position: Position,
    /// The first sequence number not recovered, when known.
    pub expected_sequence: Option<u64>,
    /// What was found there.
    pub cause: DamageCause,
    /// Bytes examined from the break on (to the end of the newest segment, and the slots
    /// searched beyond it), written or erased; none of it was yielded.
    pub bytes_skipped: u64,
    /// Valid frames found after the break and not yielded.
    pub frames_skipped: u64,
}

/// What was found where the log broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DamageCause {
    /// Bytes that do not decode as a frame.
    Frame(FrameError),
    /// A valid frame with another sequence number than the one expected.
    Sequence {
        /// The sequence number found.
        found: u64,
    },
    /// A valid frame from another epoch (stale data in the segment).
    StaleEpoch,
    /// A live segment whose header is missing or damaged.
    MissingSegment,
    /// The frames end, but the space after them is not erased.
    GarbageAfterEnd,
}

/// How the walk of one segment ended.
enum SegmentEnd {
    /// After the last frame, the rest is erased (or too small for a frame).
    Clean(u64),
    /// Something other than erased space follows the last frame.
    Broken(u64, DamageCause),
}

/// A segment header as found in a slot.
#[derive(Clone, Copy)]
struct SlotHeader {
    first_sequence: u64,
    header: SegmentHeader,
    /// Where the first frame after the header starts.
    body: u64,
}

type OpenResult<T, S, V> = Result<T, OpenError<<S as Storage>::Error, V>>;

pub(super) fn run<S: Storage, B: AsMut<[u8]>, V>(
    log: &mut Log<S, B>,
    policy: Policy,
    visit: impl FnMut(Entry<'_>) -> Result<(), V>,
) -> OpenResult<Recovery, S, V> {
    let layout = log.layout;
    let mut reader = Reader::new(&mut log.storage, log.buffer.as_mut(), layout);
    let Some((newest, newest_header)) = find_newest(&mut reader)? else {
        return headerless(log, policy);
    };
    let start = start_point(&mut reader, newest, newest_header)?;
    let mut walk = Walk {
        reader,
        visit,
        policy,
        newest,
        report: Recovery::default(),
        expected: None,
        max_sequence: newest_header.first_sequence,
        walked: None,
        start_epoch: start.epoch,
        closed: false,
    };
    let outcome = walk.run(start)?;
    let report = walk.report;
    let max_sequence = walk.max_sequence;
    log.newest_epoch = newest;
    log.start = start;
    log.pending_start = start;
    log.release = start;
    match outcome {
        Outcome::InPlace {
            epoch,
            offset,
            next,
        } => {
            log.next_sequence = next;
            log.head = Some(super::Head {
                epoch,
                offset,
                end: layout.slot_start(epoch) + layout.segment_size,
            });
        }
        Outcome::Cut { next } => log.next_sequence = next,
        Outcome::Abandon => {
            // Nothing before the damage survives: the next segment records itself as the start.
            log.next_sequence = max_sequence.saturating_add(1);
            log.release = Start::segment(newest.saturating_add(1));
        }
    }
    Ok(Recovery {
        next_sequence: log.next_sequence,
        appends_in_place: log.head.is_some(),
        ..report
    })
}

/// No segment header anywhere: an empty log, a crash while the first segment was being written,
/// or a log whose every header was damaged. Frames that record earlier frames as synced tell the
/// last case apart; then the damage is reported and the log restarts after every stale epoch.
fn headerless<S: Storage, B: AsMut<[u8]>, V>(
    log: &mut Log<S, B>,
    policy: Policy,
) -> OpenResult<Recovery, S, V> {
    let layout = log.layout;
    let mut reader = Reader::new(&mut log.storage, log.buffer.as_mut(), layout);
    let mut found: Option<(Position, u64)> = None;
    let (mut max_epoch, mut max_sequence, mut frames) = (0u32, 0u64, 0u64);
    for slot in 0..layout.segments {
        let start = layout.slot_start(slot);
        let end = start + layout.segment_size;
        let mut at = start;
        while at < end {
            match reader.frame_at(at, end).map_err(OpenError::Storage)? {
                Slot::Valid { header, padded, .. } if header.epoch % layout.segments == slot => {
                    frames += u64::from(header.kind >= KIND_USER_MIN);
                    max_epoch = max_epoch.max(header.epoch);
                    max_sequence = max_sequence.max(header.sequence);
                    if header.sequence > u64::from(header.unsynced) && found.is_none() {
                        let position = Position {
                            epoch: header.epoch,
                            offset: at,
                        };
                        found = Some((position, header.sequence));
                    }
                    at += padded as u64;
                }
                Slot::NoRoom => break,
                _ => at += layout.write_size() as u64,
            }
        }
    }
    let Some((position, _)) = found else {
        return Ok(Recovery::default());
    };
    let damage = super::Damage {
        position,
        expected_sequence: None,
        cause: DamageCause::MissingSegment,
        bytes_skipped: layout.geometry.capacity,
        frames_skipped: frames,
    };
    if policy == Policy::Strict {
        return Err(OpenError::Corrupted(damage));
    }
    log.newest_epoch = max_epoch;
    log.release = Start::segment(max_epoch.saturating_add(1));
    log.next_sequence = max_sequence.saturating_add(1);
    Ok(Recovery {
        corruption: Some(damage),
        next_sequence: log.next_sequence,
        ..Recovery::default()
    })
}

/// Reads the header of the segment in `epoch`'s slot, if it is a valid header of that epoch.
fn read_header<S: Storage>(
    reader: &mut Reader<'_, S>,
    epoch: u32,
) -> Result<Option<SlotHeader>, S::Error> {
    let layout = reader.layout;
    let start = layout.slot_start(epoch);
    reader.set_read_limit(layout.control_len);
    let found = reader.frame_at(start, start + layout.segment_size);
    reader.set_read_limit(usize::MAX);
    let Slot::Valid {
        header,
        payload,
        padded,
        ..
    } = found?
    else {
        return Ok(None);
    };
    if header.kind != KIND_SEGMENT_HEADER || header.epoch != epoch {
        return Ok(None);
    }
    let Ok(segment) = postcard::from_bytes::<SegmentHeader>(&reader.buffer[payload]) else {
        return Ok(None);
    };
    Ok(Some(SlotHeader {
        first_sequence: header.sequence,
        header: segment,
        body: start + padded as u64,
    }))
}

/// Pass 1: the newest valid segment header of any slot.
fn find_newest<S: Storage, V>(
    reader: &mut Reader<'_, S>,
) -> OpenResult<Option<(u32, SlotHeader)>, S, V> {
    let layout = reader.layout;
    let mut newest: Option<(u32, SlotHeader)> = None;
    for slot in 0..layout.segments {
        let start = layout.slot_start(slot);
        reader.set_read_limit(layout.control_len);
        let found = reader.frame_at(start, start + layout.segment_size);
        reader.set_read_limit(usize::MAX);
        let found = found.map_err(OpenError::Storage)?;
        let Slot::Valid {
            header, payload, ..
        } = found
        else {
            continue;
        };
        if header.kind != KIND_SEGMENT_HEADER {
            continue;
        }
        // Any readable header with another geometry means the configuration is wrong: refuse
        // rather than treat the log as empty and erase it.
        if let Ok(recorded) = postcard::from_bytes::<SegmentHeader>(&reader.buffer[payload]) {
            check_layout(&layout, &recorded)?;
        }
        if header.epoch % layout.segments != slot {
            continue;
        }
        let Some(slot_header) = read_header(reader, header.epoch).map_err(OpenError::Storage)?
        else {
            continue;
        };
        if newest.is_none_or(|(epoch, _)| header.epoch > epoch) {
            newest = Some((header.epoch, slot_header));
        }
    }
    Ok(newest)
}

fn check_layout<E, V>(layout: &Layout, header: &SegmentHeader) -> Result<(), OpenError<E, V>> {
    if header.segment_size as u64 != layout.segment_size
        || header.write_size != layout.geometry.write_size
        || header.payload_max as usize > layout.payload_max
    {
        return Err(OpenError::LayoutMismatch {
            segment_size: header.segment_size,
            write_size: header.write_size,
            payload_max: header.payload_max,
        });
    }
    Ok(())
}

/// Where the live log begins: the latest of what the newest header and the newest segment's
/// release frames record.
fn start_point<S: Storage, V>(
    reader: &mut Reader<'_, S>,
    newest: u32,
    header: SlotHeader,
) -> OpenResult<Start, S, V> {
    let layout = reader.layout;
    let oldest_possible = Start::segment(newest.saturating_sub(layout.segments - 1).max(1));
    let mut start = header.header.start.max(oldest_possible);
    // Release frames may follow damage and a continuation, so look past anything invalid.
    let end = layout.slot_start(newest) + layout.segment_size;
    let mut offset = header.body;
    while offset < end {
        let slot = reader.frame_at(offset, end).map_err(OpenError::Storage)?;
        match slot {
            Slot::Valid {
                header: frame,
                payload,
                padded,
                ..
            } => {
                let release = (frame.kind == KIND_RELEASE && frame.epoch == newest)
                    .then(|| postcard::from_bytes::<Release>(&reader.buffer[payload]).ok())
                    .flatten();
                offset += padded as u64;
                // A release written with the frame it releases to (before their common sync)
                // counts only if that frame landed too.
                if let Some(release) = release {
                    if release.start > start && release_target_is_intact(reader, release.start)? {
                        start = release.start;
                    }
                }
            }
            Slot::NoRoom => break,
            _ => offset += layout.write_size() as u64,
        }
    }
    if start.epoch > newest {
        return Ok(Start::segment(newest));
    }
    Ok(start)
}

/// Whether the frame a release points at is there, valid, with the recorded sequence number.
fn release_target_is_intact<S: Storage, V>(
    reader: &mut Reader<'_, S>,
    start: Start,
) -> OpenResult<bool, S, V> {
    let layout = reader.layout;
    if start.offset == 0 {
        return Ok(true);
    }
    let slot_start = layout.slot_start(start.epoch);
    let at = slot_start + u64::from(start.offset);
    let end = slot_start + layout.segment_size;
    if at >= end {
        return Ok(false);
    }
    let found = reader.frame_at(at, end).map_err(OpenError::Storage)?;
    Ok(matches!(found, Slot::Valid { header, .. }
        if header.epoch == start.epoch && header.sequence == start.sequence))
}

enum Outcome {
    /// Append in the newest segment from `offset` on: after its last frame when it ends cleanly,
    /// after all written bytes when it ends in damage.
    InPlace { epoch: u32, offset: u64, next: u64 },
    /// The walk stopped at damage: append in a fresh segment, continuing at `next`.
    Cut { next: u64 },
    /// The damage left no prefix at all: start afresh in a new segment.
    Abandon,
}

struct Walk<'a, S, F> {
    reader: Reader<'a, S>,
    visit: F,
    policy: Policy,
    newest: u32,
    report: Recovery,
    /// The next sequence number the walk expects, once known.
    expected: Option<u64>,
    /// The highest sequence number seen in any valid frame or header.
    max_sequence: u64,
    /// The last segment whose frames the walk read.
    walked: Option<u32>,
    /// The oldest live epoch.
    start_epoch: u32,
    /// Whether the last frame walked is a close marker: the writer stopped cleanly there.
    closed: bool,
}

impl<S: Storage, V, F: FnMut(Entry<'_>) -> Result<(), V>> Walk<'_, S, F> {
    fn run(&mut self, start: Start) -> OpenResult<Outcome, S, V> {
        let mut epoch = start.epoch;
        // Where to start reading the segment, when the walk resumes inside it (after a cut, or
        // at a released position) rather than at a header that continues it.
        let mut resume_at: Option<u64> = None;
        if start.offset != 0 {
            resume_at = Some(self.reader.layout.slot_start(epoch) + u64::from(start.offset));
            self.expected = Some(start.sequence);
        }
        loop {
            let end = match resume_at.take() {
                Some(offset) => self.walk_segment(epoch, offset)?,
                None => {
                    let header =
                        read_header(&mut self.reader, epoch).map_err(OpenError::Storage)?;
                    match header {
                        Some(header) if self.continues(&header) => {
                            self.expected = Some(header.first_sequence);
                            self.walk_segment(epoch, header.body)?
                        }
                        _ => {
                            let at = self.reader.layout.slot_start(epoch);
                            SegmentEnd::Broken(at, missing(header))
                        }
                    }
                }
            };
            let (at, cause, broken) = match end {
                SegmentEnd::Clean(offset) if epoch == self.newest => {
                    if self.successor_was_durable()? {
                        let at = self.reader.layout.slot_start(epoch + 1);
                        return self.damaged(epoch + 1, at, DamageCause::MissingSegment);
                    }
                    let next = self.expected.unwrap_or(0);
                    if self.closed {
                        return Ok(Outcome::InPlace {
                            epoch,
                            offset,
                            next,
                        });
                    }
                    return self.after_unclean_shutdown(offset, next);
                }
                SegmentEnd::Clean(_) => {
                    let at = self.reader.layout.slot_start(epoch + 1);
                    (at, DamageCause::MissingSegment, false)
                }
                SegmentEnd::Broken(offset, cause) => (offset, cause, true),
            };
            match self.continuation(epoch + 1, broken)? {
                Some((next_epoch, offset)) => {
                    epoch = next_epoch;
                    resume_at = offset;
                }
                None if broken => return self.damaged(epoch, at, cause),
                None => return self.damaged(epoch + 1, at, cause),
            }
        }
    }

    /// Whether frames of epochs after the newest valid header prove the walk's end was synced:
    /// then a newer segment's header was damaged after it was written, and its frames are lost
    /// rather than never written.
    fn successor_was_durable(&mut self) -> OpenResult<bool, S, V> {
        Ok(self.scan_beyond_newest()?.durable_lost)
    }

    /// Frames of epochs after the newest valid header, in the slots outside the live range whose
    /// start suggests a segment with a lost header (see `may_hold_frames`). The same test for
    /// every slot keeps the verdict the same when a later open sees another slot as the
    /// successor of its newest segment.
    fn scan_beyond_newest(&mut self) -> OpenResult<Evidence, S, V> {
        let layout = self.reader.layout;
        let live = self.newest - self.start_epoch.min(self.newest) + 1;
        let mut evidence = Evidence::default();
        // Whether the last slot probed opened erased: then the next one likely does too (the
        // never-written part of a ring), and its whole probe is read at once.
        let mut erased_run = false;
        for step in 1..=layout.segments.saturating_sub(live) {
            let Some(epoch) = self.newest.checked_add(step) else {
                break;
            };
            let start = layout.slot_start(epoch);
            let end = start + layout.segment_size;
            if !self.may_hold_frames(start, end, &mut erased_run)? {
                continue;
            }
            let newest = self.newest;
            let slot = epoch % layout.segments;
            self.scan_slot(&mut evidence, start, end, |found| {
                found > newest && found % layout.segments == slot
            })?;
        }
        Ok(evidence)
    }

    /// Whether a slot outside the live range may hold frames of a segment whose header was
    /// lost: its first bytes are damaged or a frame other than a segment header, or they read as
    /// erased while the bytes where the first frames would follow (one control frame and one
    /// largest frame from the slot's start) do not. A slot that opens with a valid segment header
    /// (a stale one) or is erased where frames would be is passed over.
    ///
    /// The verdict depends only on the bytes, not on how they are read, so the reads are sized
    /// to what settles it: a first read of one control frame (a segment header, or enough to see
    /// that the slot opens erased; `frame_at` reads on when a frame claims to be longer), then,
    /// for a slot erased at its start, the rest of the probe, up to its first written byte.
    /// `erased_run` carries whether the previous slot opened erased: then this one is read
    /// with the whole probe at once, saving a second read per slot in a never-written tail.
    fn may_hold_frames(
        &mut self,
        start: u64,
        end: u64,
        erased_run: &mut bool,
    ) -> OpenResult<bool, S, V> {
        let layout = self.reader.layout;
        let probe = layout.control_len + layout.frame_max;
        let probe_end = (start + probe as u64).min(end);
        let refill = if *erased_run {
            probe
        } else {
            layout.control_len
        };
        self.reader.set_read_limit(refill);
        let first = self.reader.frame_at(start, end);
        *erased_run = matches!(first, Ok(Slot::Erased));
        let verdict = match first {
            Ok(Slot::Valid { header, .. }) => Ok(header.kind != KIND_SEGMENT_HEADER),
            Ok(Slot::Erased) => self
                .reader
                .is_erased(start, probe_end)
                .map(|erased| !erased),
            Ok(Slot::NoRoom) => Ok(false),
            Ok(Slot::Bad(_)) => Ok(true),
            Err(error) => Err(error),
        };
        self.reader.set_read_limit(usize::MAX);
        verdict.map_err(OpenError::Storage)
    }

    /// Whether a header follows on from the walk so far (always, for the first segment).
    fn continues(&self, header: &SlotHeader) -> bool {
        self.expected
            .is_none_or(|expected| header.first_sequence == expected)
    }

    /// After a segment ended at `expected`, where the walk continues: the next segment if its
    /// header follows on; or a later segment that an earlier recovery cut the log into, either
    /// opened at exactly `expected` or continued with a frame of sequence `expected` after the
    /// frames it voided. `None` when nothing continues the log.
    fn continuation(
        &mut self,
        from: u32,
        broken: bool,
    ) -> OpenResult<Option<(u32, Option<u64>)>, S, V> {
        let Some(expected) = self.expected else {
            return Ok(None);
        };
        let layout = self.reader.layout;
        for epoch in from..=self.newest {
            let header = read_header(&mut self.reader, epoch).map_err(OpenError::Storage)?;
            let Some(header) = header else { continue };
            self.max_sequence = self.max_sequence.max(header.first_sequence);
            if header.first_sequence == expected {
                if broken || epoch != from {
                    self.report.earlier_cuts += 1;
                }
                return Ok(Some((epoch, None)));
            }
            if header.first_sequence < expected {
                return Ok(None);
            }
            let end = layout.slot_start(epoch) + layout.segment_size;
            let body = header.body - layout.write_size() as u64;
            if let Some(offset) = self.resume_point(epoch, body, end)? {
                self.report.earlier_cuts += 1;
                return Ok(Some((epoch, Some(offset))));
            }
        }
        Ok(None)
    }

    /// Yields the frames of one segment from `offset` on, and says how the segment ends.
    fn walk_segment(&mut self, epoch: u32, mut offset: u64) -> OpenResult<SegmentEnd, S, V> {
        let layout = self.reader.layout;
        let end = layout.slot_start(epoch) + layout.segment_size;
        self.report.segments += 1;
        self.walked = Some(epoch);
        loop {
            match self.walk_frames(epoch, offset, end)? {
                SegmentEnd::Broken(at, cause) => match self.resume_point(epoch, at, end)? {
                    Some(resume) => {
                        self.report.earlier_cuts += 1;
                        offset = resume;
                    }
                    None => return Ok(SegmentEnd::Broken(at, cause)),
                },
                clean => return Ok(clean),
            }
        }
    }

    /// After a break at `from`, where an earlier recovery continued this segment: the first frame
    /// after it that carries the expected sequence number. Frames written before a crash follow
    /// one another, so only an append made after recovery can repeat the expected number there.
    fn resume_point(&mut self, epoch: u32, from: u64, end: u64) -> OpenResult<Option<u64>, S, V> {
        let Some(expected) = self.expected else {
            return Ok(None);
        };
        let write_size = self.reader.layout.write_size() as u64;
        let mut at = from + write_size;
        while at < end {
            match self.reader.frame_at(at, end).map_err(OpenError::Storage)? {
                Slot::Valid { header, .. }
                    if header.epoch == epoch
                        && header.sequence == expected
                        && header.kind != KIND_SEGMENT_HEADER =>
                {
                    return Ok(Some(at));
                }
                Slot::Valid { padded, .. } => at += padded as u64,
                Slot::NoRoom => break,
                _ => at += write_size,
            }
        }
        Ok(None)
    }

    /// Yields frames from `offset` until something other than the next frame is found.
    fn walk_frames(
        &mut self,
        epoch: u32,
        mut offset: u64,
        end: u64,
    ) -> OpenResult<SegmentEnd, S, V> {
        loop {
            let slot = self
                .reader
                .frame_at(offset, end)
                .map_err(OpenError::Storage)?;
            let (header, payload, crc, padded) = match slot {
                Slot::NoRoom => return Ok(SegmentEnd::Clean(offset)),
                Slot::Erased => return self.after_last_frame(offset, end),
                Slot::Bad(error) => {
                    return Ok(SegmentEnd::Broken(offset, DamageCause::Frame(error)))
                }
                Slot::Valid {
                    header,
                    payload,
                    crc,
                    padded,
                } => (header, payload, crc, padded),
            };
            let expected = self.expected.unwrap_or(header.sequence);
            if header.epoch != epoch {
                return Ok(SegmentEnd::Broken(offset, DamageCause::StaleEpoch));
            }
            if header.sequence != expected || header.kind == KIND_SEGMENT_HEADER {
                let cause = DamageCause::Sequence {
                    found: header.sequence,
                };
                return Ok(SegmentEnd::Broken(offset, cause));
            }
            self.closed = header.kind == KIND_CLOSE;
            if header.kind >= KIND_USER_MIN {
                let entry = Entry {
                    sequence: header.sequence,
                    kind: header.kind,
                    position: Position { epoch, offset },
                    crc,
                    payload: &self.reader.buffer[payload],
                };
                (self.visit)(entry).map_err(OpenError::Visitor)?;
                self.report.frames += 1;
                self.expected = Some(expected + 1);
                self.max_sequence = self.max_sequence.max(expected);
            }
            offset += padded as u64;
        }
    }

    fn after_last_frame(&mut self, offset: u64, end: u64) -> OpenResult<SegmentEnd, S, V> {
        let free = self
            .reader
            .first_free(offset, end)
            .map_err(OpenError::Storage)?;
        Ok(if free == offset {
            SegmentEnd::Clean(offset)
        } else {
            SegmentEnd::Broken(offset, DamageCause::GarbageAfterEnd)
        })
    }

    /// The walk broke at `offset` in `epoch` with nothing continuing it: classify and report.
    fn damaged(
        &mut self,
        epoch: u32,
        offset: u64,
        cause: DamageCause,
    ) -> OpenResult<Outcome, S, V> {
        let evidence = self.scan_after(epoch, offset)?;
        let damage = super::Damage {
            position: Position { epoch, offset },
            expected_sequence: self.expected,
            cause,
            bytes_skipped: evidence.bytes,
            frames_skipped: evidence.frames,
        };
        if evidence.durable_lost {
            if self.policy == Policy::Strict {
                return Err(OpenError::Corrupted(damage));
            }
            self.report.corruption = Some(damage);
        } else {
            self.report.torn_tail = Some(damage);
        }
        let Some(next) = self.expected else {
            return Ok(Outcome::Abandon);
        };
        // The successor of the newest segment has no header to append after.
        if epoch > self.newest {
            return Ok(Outcome::Cut { next });
        }
        // After the damage when it is in the newest segment, else after that segment's own
        // (voided) frames.
        let offset = if self.walked == Some(self.newest) {
            offset
        } else {
            self.reader.layout.slot_start(self.newest)
        };
        self.after_unclean_shutdown(offset, next)
    }

    /// Where appends go when the log was not closed: a write may have been cut short without
    /// landing a byte, and the contract forbids programming such a word again, so appends move
    /// to a freshly erased segment. Only when every slot is live (a run of crashes before any
    /// release) do they continue in the newest segment, after everything written from `from`
    /// on plus one largest frame, so that the log keeps working.
    fn after_unclean_shutdown(&mut self, from: u64, next: u64) -> OpenResult<Outcome, S, V> {
        let layout = self.reader.layout;
        let victim = (self.newest + 1).checked_sub(layout.segments);
        if victim.is_none_or(|victim| victim < self.start_epoch) {
            return Ok(Outcome::Cut { next });
        }
        // Leave one largest frame of room after the last written byte: a torn frame that starts
        // before it may reach that far, and new bytes written into its missing part could
        // complete it into a valid stale frame.
        let epoch = self.newest;
        let end = layout.slot_start(epoch) + layout.segment_size;
        let written_end = self
            .reader
            .first_free(from, end)
            .map_err(OpenError::Storage)?;
        let margin = layout.frame_max.max(layout.control_len) as u64;
        // Keep room for one control frame at the end, as every append does: the release that
        // must be recorded before the next segment is erased goes there. Where the margin and
        // that room overlap, the room wins (the margin shrinks): without it the log could never
        // open another segment.
        let control_room = end.saturating_sub(layout.control_len as u64);
        let offset = written_end
            .saturating_add(margin)
            .min(control_room)
            .max(written_end)
            .min(end);
        Ok(Outcome::InPlace {
            epoch,
            offset,
            next,
        })
    }

    /// Scans every frame-aligned position from `offset` in `first_epoch` to the end of the newest
    /// segment, and the slots beyond it, for valid frames, and whether any proves that the
    /// expected frame was synced.
    fn scan_after(&mut self, first_epoch: u32, offset: u64) -> OpenResult<Evidence, S, V> {
        let layout = self.reader.layout;
        let mut evidence = Evidence {
            // A missing first segment has no expected frame: whatever was there was durable.
            durable_lost: self.expected.is_none(),
            ..Evidence::default()
        };
        for epoch in first_epoch..=self.newest {
            let segment_start = layout.slot_start(epoch);
            let end = segment_start + layout.segment_size;
            let from = if epoch == first_epoch {
                offset
            } else {
                segment_start
            };
            self.scan_slot(&mut evidence, from, end, |found| found == epoch)?;
        }
        let beyond = self.scan_beyond_newest()?;
        evidence.bytes += beyond.bytes;
        evidence.frames += beyond.frames;
        evidence.durable_lost |= beyond.durable_lost;
        Ok(evidence)
    }

    /// Adds to `evidence` the valid frames in `[from, end)` whose epoch `accept` takes.
    fn scan_slot(
        &mut self,
        evidence: &mut Evidence,
        from: u64,
        end: u64,
        accept: impl Fn(u32) -> bool,
    ) -> OpenResult<(), S, V> {
        let write_size = self.reader.layout.write_size() as u64;
        evidence.bytes += end.saturating_sub(from);
        let mut at = from;
        while at < end {
            match self.reader.frame_at(at, end).map_err(OpenError::Storage)? {
                Slot::Valid { header, padded, .. } if accept(header.epoch) => {
                    evidence.frames += u64::from(header.kind >= KIND_USER_MIN);
                    self.max_sequence = self.max_sequence.max(header.sequence);
                    let synced_below = header.sequence.saturating_sub(header.unsynced as u64);
                    if self
                        .expected
                        .is_some_and(|expected| expected < synced_below)
                    {
                        evidence.durable_lost = true;
                    }
                    at += padded as u64;
                }
                Slot::NoRoom => break,
                _ => at += write_size,
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Evidence {
    bytes: u64,
    frames: u64,
    durable_lost: bool,
}

fn missing(header: Option<SlotHeader>) -> DamageCause {
    match header {
        None => DamageCause::MissingSegment,
        Some(header) => DamageCause::Sequence {
            found: header.first_sequence,
        },
    }
}

impl core::fmt::Display for DamageCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Frame(error) => error.fmt(f),
            Self::Sequence { found } => {
                write!(f, "a frame with unexpected sequence number {found}")
            }
            Self::StaleEpoch => f.write_str("a frame left over from an earlier use of the segment"),
            Self::MissingSegment => f.write_str("a segment whose header is missing or damaged"),
            Self::GarbageAfterEnd => f.write_str("written bytes after the last frame"),
        }
    }
}

impl core::fmt::Display for Damage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} at epoch {} offset {}",
            self.cause, self.position.epoch, self.position.offset
        )?;
        if let Some(sequence) = self.expected_sequence {
            write!(f, " (expected sequence {sequence})")?;
        }
        write!(
            f,
            "; {} bytes and {} valid frames after it skipped",
            self.bytes_skipped, self.frames_skipped
        )
    }
}

#[cfg(test)]
// Dropping a log marks where a process would stop; the borrow ends there.
#[allow(clippy::drop_non_drop)]
mod tests {
    use super::*;
    use crate::log::{Config, Log};
    use crate::storage::RamStorage;
    use proptest::prelude::*;

    const SIZE: usize = 4096;
    const SLOT: usize = 512;

    /// The probe as first written: the whole probe in one read, then a search for written
    /// bytes in it. The sized reads must decide exactly as this does.
    fn whole_probe<S: Storage>(reader: &mut Reader<'_, S>, start: u64, end: u64) -> bool {
        let layout = reader.layout;
        let probe = (layout.control_len + layout.frame_max) as u64;
        reader.set_read_limit(probe as usize);
        let verdict = match reader.frame_at(start, end).unwrap() {
            Slot::Valid { header, .. } => header.kind != KIND_SEGMENT_HEADER,
            Slot::Erased => reader.first_free(start, (start + probe).min(end)).unwrap() != start,
            Slot::NoRoom => false,
            Slot::Bad(_) => true,
        };
        reader.set_read_limit(usize::MAX);
        verdict
    }

    /// A log of `frames` synced frames of `len` bytes, in 8 slots of 512 bytes.
    fn written(frames: u8, len: usize) -> RamStorage<SIZE> {
        let mut storage = RamStorage::<SIZE>::new(8, SLOT as u32, 0xFF).unwrap();
        let config = Config {
            payload_max: 64,
            ..Config::default()
        };
        let (mut log, _) =
            Log::open(&mut storage, [0u8; 256], config, |_| Ok::<(), ()>(())).unwrap();
        for byte in 0..frames {
            if log
                .append(KIND_USER_MIN, |area| {
                    area[..len].fill(byte);
                    Ok(len)
                })
                .is_err()
            {
                break;
            }
            log.sync().unwrap();
        }
        drop(log);
        storage
    }

    proptest! {
        #[test]
        fn sized_probe_reads_decide_as_one_whole_read(
            frames in 0u8..80,
            len in 1usize..=64,
            // Per slot: bytes erased from its start, and bytes set to a value at an offset.
            damage in prop::collection::vec((0usize..=SLOT, 0usize..SLOT, any::<u8>()), 8),
            hints in prop::collection::vec(any::<bool>(), 8),
        ) {
            let mut storage = written(frames, len);
            for (slot, &(erased, at, value)) in damage.iter().enumerate() {
                let bytes = &mut storage.bytes_mut()[slot * SLOT..(slot + 1) * SLOT];
                bytes[..erased].fill(0xFF);
                if value != 0xFF {
                    bytes[at] = value;
                }
            }
            let config = Config {
                payload_max: 64,
                ..Config::default()
            };
            let layout = Layout::new(storage.geometry(), &config, 256).unwrap();
            let mut expected = [false; 8];
            let mut buffer = [0u8; 256];
            for (slot, verdict) in expected.iter_mut().enumerate() {
                // A fresh reader per slot: nothing buffered helps the reference.
                let mut reader = Reader::new(&mut storage, &mut buffer, layout);
                let start = (slot * SLOT) as u64;
                *verdict = whole_probe(&mut reader, start, start + SLOT as u64);
            }
            // One reader for all slots, as recovery has: what the last slot left buffered and
            // the read-size hint must not change a verdict.
            let mut walk = Walk {
                reader: Reader::new(&mut storage, &mut buffer, layout),
                visit: |_: Entry<'_>| Ok::<(), ()>(()),
                policy: Policy::Strict,
                newest: 0,
                report: Recovery::default(),
                expected: None,
                max_sequence: 0,
                walked: None,
                start_epoch: 0,
                closed: false,
            };
            for (slot, &hint) in hints.iter().enumerate() {
                let start = (slot * SLOT) as u64;
                let mut erased_run = hint;
                let verdict = walk.may_hold_frames(start, start + SLOT as u64, &mut erased_run);
                prop_assert_eq!(verdict.ok(), Some(expected[slot]), "slot {}", slot);
            }
        }
    }
}
