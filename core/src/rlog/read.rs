//! Reads in the total order: by causal depth, then dot. No per-entry index: a page is found by
//! one walk of the log keeping the smallest keys (bounded by [`READ_PAGE`]), a second walk
//! counts their siblings, then the page's entries are read by position.

use super::wire::{self, Message, ReadEntry, ReadKey, Writer, KIND_ENTRY};
use super::{Rlog, RlogError, READ_PAGE};
use crate::log::Position;
use crate::net::SocketAddr;
use crate::service::Transmit;
use crate::storage::Storage;
use core::cmp::Ordering;
use heapless::Vec;

/// What a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReadPage {
    /// Where to read the next page from.
    pub next: ReadKey,
    /// True when no entry follows `next` (at the time of the read).
    pub done: bool,
    /// Entries visited.
    pub count: usize,
}

/// The entry of a sibling group (entries of one depth) that `rule` ranks highest; ties keep
/// the earlier one. The rule is the application's: compare data, prefer an origin, and so on.
pub fn resolve<'a, 'b>(
    group: &'b [ReadEntry<'a>],
    mut rule: impl FnMut(&ReadEntry<'a>, &ReadEntry<'a>) -> Ordering,
) -> Option<&'b ReadEntry<'a>> {
    let mut best: Option<&ReadEntry<'a>> = None;
    for entry in group {
        best = match best {
            Some(current) if rule(entry, current) != Ordering::Greater => Some(current),
            _ => Some(entry),
        };
    }
    best
}

/// Bytes reserved before a read reply's entries: variant, request id, key, flag, length.
const REPLY_PREFIX: usize = 1 + 10 + (10 + 5 + 10) + 1 + 3;
/// The variant index of [`Message::ReadReply`].
const REPLY_VARIANT: u32 = 6;

type Page = Vec<(ReadKey, Position), READ_PAGE>;

impl<S: Storage, B: AsMut<[u8]>, const N: usize, const P: usize, const SEG: usize>
    Rlog<S, B, N, P, SEG>
{
    /// Visits up to `max` (at most [`READ_PAGE`]) durable entries after `from` in the read
    /// order; `visit` returns false to stop early (the page then ends before that entry).
    pub fn read(
        &mut self,
        from: ReadKey,
        max: usize,
        mut visit: impl FnMut(ReadEntry<'_>) -> bool,
    ) -> Result<ReadPage, RlogError<S::Error>> {
        let max = max.clamp(1, READ_PAGE);
        let (page, more) = self.select(from, max)?;
        let siblings = self.count_siblings(&page)?;
        let mut next = from;
        for (index, &(key, position)) in page.iter().enumerate() {
            let (_, payload) = self.log.read_ref(position).map_err(RlogError::Read)?;
            let Some(checked) = wire::check_record(payload, usize::MAX) else {
                continue;
            };
            let entry = ReadEntry {
                dot: checked.dot(),
                depth: checked.depth,
                siblings: siblings[index],
                data: checked.record.data,
            };
            if !visit(entry) {
                return Ok(ReadPage {
                    next,
                    done: false,
                    count: index,
                });
            }
            next = key;
        }
        Ok(ReadPage {
            next,
            done: !more,
            count: page.len(),
        })
    }

    /// Walks every durable entry: its key and position.
    fn each_entry(
        &mut self,
        mut visit: impl FnMut(ReadKey, Position),
    ) -> Result<(), RlogError<S::Error>> {
        let mut cursor = self.log.cursor();
        for _ in 0..self.frames_bound() {
            let Some((frame, payload)) =
                self.log.read_next(&mut cursor).map_err(RlogError::Read)?
            else {
                return Ok(());
            };
            if frame.kind != KIND_ENTRY {
                continue;
            }
            let Some(checked) = wire::check_record(payload, usize::MAX) else {
                continue;
            };
            if checked.record.counter <= self.durable.get(checked.record.origin) {
                visit(checked.key(), frame.position);
            }
        }
        Ok(())
    }

    /// The `max` smallest keys after `from`, and whether more follow.
    fn select(&mut self, from: ReadKey, max: usize) -> Result<(Page, bool), RlogError<S::Error>> {
        let mut page = Page::new();
        let mut more = false;
        self.each_entry(|key, position| {
            if key <= from {
                return;
            }
            let at = page.partition_point(|&(other, _)| other < key);
            if page.len() >= max {
                more = true;
                if at >= page.len() {
                    return;
                }
                page.pop();
            }
            // Room was made above.
            let _ = page.insert(at, (key, position));
        })?;
        Ok((page, more))
    }

    /// For each page entry, how many other entries share its depth.
    fn count_siblings(&mut self, page: &Page) -> Result<[u32; READ_PAGE], RlogError<S::Error>> {
        let mut counts = [0u32; READ_PAGE];
        self.each_entry(|key, _| {
            for (count, &(chosen, _)) in counts.iter_mut().zip(page.iter()) {
                if chosen.depth == key.depth && chosen != key {
                    *count = count.saturating_add(1);
                }
            }
        })?;
        Ok(counts)
    }

    /// Answers a client's read with as many entries as fit the datagram.
    pub(super) fn read_reply(
        &mut self,
        to: SocketAddr,
        request_id: u64,
        from: ReadKey,
        max: u16,
        buffer: &mut [u8],
    ) -> Option<Transmit> {
        let Some(tail) = buffer.get_mut(REPLY_PREFIX..) else {
            self.stats.dropped += 1;
            return None;
        };
        let mut writer = Writer::new(tail);
        let page = self.read(from, usize::from(max), |entry| writer.put(&entry).is_some());
        let Ok(page) = page else {
            self.stats.dropped += 1;
            return None;
        };
        let entries_len = writer.at;
        let mut prefix = [0u8; REPLY_PREFIX];
        let mut head = Writer::new(&mut prefix);
        head.put(&REPLY_VARIANT)?;
        head.put(&request_id)?;
        head.put(&page.next)?;
        head.put(&page.done)?;
        head.put(&(entries_len as u64))?;
        let prefix_len = head.at;
        buffer.copy_within(REPLY_PREFIX..REPLY_PREFIX + entries_len, prefix_len);
        buffer[..prefix_len].copy_from_slice(&prefix[..prefix_len]);
        debug_assert!(Message::decode(&buffer[..prefix_len + entries_len]).is_some());
        Some(Transmit {
            to,
            len: prefix_len + entries_len,
        })
    }
}
