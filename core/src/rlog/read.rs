//! Reads in the total order: by causal depth, then dot, with each entry's place in its sibling
//! group.
//!
//! # Sibling groups
//!
//! Two entries are *concurrent* when neither context is at or below the other
//! ([`crate::crdt::Causality::Concurrent`]). The read order is a linear extension of the
//! contexts' order (a context strictly below another has a smaller sum), so it puts an entry
//! after everything causally before it; only concurrent entries could have been put the other
//! way round. A *cut* falls between two neighbours of the read order when every entry before it
//! is causally at or before every entry after it. The cuts split the read order into *sibling
//! groups*: the smallest runs of consecutive entries that keep every concurrent pair together.
//! An entry alone in its group is concurrent with no entry; each entry of a larger group is
//! concurrent with at least one other entry of it (an entry ordered with every other one has
//! cuts on both sides). Concurrent entries may have any depths: A writing twice while B writes
//! once gives one group of three.
//!
//! The groups depend only on the entries held, so replicas holding the same entries return the
//! same groups. Each [`ReadEntry`] says whether its group continues before it and after it
//! ([`ReadEntry::CONTINUES_BEFORE`], [`ReadEntry::CONTINUES_AFTER`]); `siblings == 0` means
//! alone. [`resolve`] picks one entry of a group by the application's rule.
//!
//! # Cost
//!
//! A cut before an entry depends on every entry before it and every entry after it, so a page
//! walks the whole live log once (every durable entry read once, none kept in RAM): it keeps the
//! page's smallest keys after `from`, the join of the contexts at or before `from` and the meet
//! of the contexts after the page, each a version vector of at most `N` nodes. The page's cuts
//! then take at most `k(k+3)/2` frame reads for a page of `k` entries (pairwise comparisons
//! within the page), plus one read per page candidate displaced during the walk. Cost grows with
//! the log: there is no per-entry index to start the walk near `from`.

use super::causal::Bound;
use super::wire::{self, Message, ReadEntry, ReadKey, Writer, KIND_ENTRY};
use super::{Rlog, RlogError, READ_PAGE};
use crate::log;
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

/// The entry of a sibling group (a run of read entries from one that does not continue before
/// to one that does not continue after, see the [module docs](self)) that `rule` ranks highest;
/// ties keep the earlier one. The rule is the application's: compare data, prefer an origin,
/// and so on. Any slice works; the result is the same on every replica when the slice is.
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

/// What one walk of the log found for a page.
struct Scan<const N: usize> {
    /// The smallest keys after `from`, with their positions.
    page: Page,
    /// Entries after `from` that did not fit the page.
    more: bool,
    /// The join of the contexts at or before `from`.
    before: Bound<N>,
    /// The meet of the contexts after the page.
    after: Bound<N>,
}

impl<const N: usize> Scan<N> {
    fn new() -> Self {
        Self {
            page: Page::new(),
            more: false,
            before: Bound::bottom(),
            after: Bound::Top,
        }
    }

    /// Takes one entry of the walk; returns the position of a page entry it displaced, whose
    /// context must then go into `after`.
    fn take(
        &mut self,
        key: ReadKey,
        position: Position,
        context: &[u8],
        from: ReadKey,
        max: usize,
    ) -> Option<Position> {
        if key <= from {
            self.before.join(context);
            return None;
        }
        let at = self.page.partition_point(|&(other, _)| other < key);
        if self.page.len() < max {
            // Room checked just above.
            let _ = self.page.insert(at, (key, position));
            return None;
        }
        self.more = true;
        if at >= self.page.len() {
            self.after.meet(context);
            return None;
        }
        let displaced = self.page.pop().map(|(_, position)| position);
        // Room was made just above.
        let _ = self.page.insert(at, (key, position));
        displaced
    }
}

impl<S: Storage, B: AsMut<[u8]>, const N: usize, const P: usize, const SEG: usize>
    Rlog<S, B, N, P, SEG>
{
    /// Visits up to `max` (at most [`READ_PAGE`]) durable entries after `from` in the read
    /// order; `visit` returns false to stop early (the page then ends before that entry).
    /// Each entry's `siblings` says where it stands in its sibling group (module docs of
    /// [`ReadEntry`]). Cost: one walk of the live log (see the [module docs](self)).
    pub fn read(
        &mut self,
        from: ReadKey,
        max: usize,
        mut visit: impl FnMut(ReadEntry<'_>) -> bool,
    ) -> Result<ReadPage, RlogError<S::Error>> {
        let max = max.clamp(1, READ_PAGE);
        let scan = self.scan(from, max)?;
        let groups = self.groups(&scan)?;
        let mut next = from;
        for (index, &(key, position)) in scan.page.iter().enumerate() {
            let (_, payload) = self.log.read_ref(position).map_err(RlogError::Read)?;
            let Some(checked) = wire::check_record(payload, usize::MAX) else {
                continue;
            };
            let entry = ReadEntry {
                dot: checked.dot(),
                depth: checked.depth,
                siblings: groups[index],
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
            done: !scan.more,
            count: scan.page.len(),
        })
    }

    /// One walk of every durable entry: the page after `from`, and the bounds around it.
    fn scan(&mut self, from: ReadKey, max: usize) -> Result<Scan<N>, RlogError<S::Error>> {
        let mut scan = Scan::new();
        let mut cursor = self.log.cursor();
        for _ in 0..self.frames_bound() {
            let Some((frame, payload)) =
                self.log.read_next(&mut cursor).map_err(RlogError::Read)?
            else {
                break;
            };
            if frame.kind != KIND_ENTRY {
                continue;
            }
            let Some(checked) = wire::check_record(payload, usize::MAX) else {
                continue;
            };
            if checked.record.counter > self.durable.get(checked.record.origin) {
                continue;
            }
            let context = checked.record.context;
            let displaced = scan.take(checked.key(), frame.position, context, from, max);
            if let Some(position) = displaced {
                let context = self.context_at(position)?;
                scan.after.meet(context);
            }
        }
        Ok(scan)
    }

    /// The context of the entry at `position`, borrowed from the log's buffer.
    fn context_at(&mut self, position: Position) -> Result<&[u8], RlogError<S::Error>> {
        let (_, payload) = self.log.read_ref(position).map_err(RlogError::Read)?;
        let checked = wire::check_record(payload, usize::MAX)
            .ok_or(RlogError::Read(log::ReadError::NoFrame))?;
        Ok(checked.record.context)
    }

    /// Each page entry's group flags: whether a cut falls before it and after it.
    ///
    /// A cut before page entry `i` holds when the join `J` of every context before it is at or
    /// below every context from it on: `J <= scan.after` and `J <= c[l]` for each page entry
    /// `l >= i`. `J` only grows with `i`, so each test, once false, stays false; `dominated[l]`
    /// tracks `J <= c[l]` as the page entries before `l` join `J`.
    fn groups(&mut self, scan: &Scan<N>) -> Result<[u32; READ_PAGE], RlogError<S::Error>> {
        let count = scan.page.len();
        let mut dominated = [false; READ_PAGE];
        for (flag, &(_, position)) in dominated.iter_mut().zip(scan.page.iter()) {
            *flag = scan.before.below_context(self.context_at(position)?);
        }
        let mut below_after = scan.before.below(&scan.after);
        let mut cuts = [false; READ_PAGE + 1];
        for index in 0..=count {
            cuts[index] = below_after && dominated[index..count].iter().all(|&flag| flag);
            let Some(&(_, position)) = scan.page.get(index) else {
                break;
            };
            let context = self.context_at(position)?;
            below_after &= scan.after.above_context(context);
            if !below_after {
                // Every later cut needs it: all false.
                break;
            }
            let joined = Bound::<N>::of(context);
            let later = dominated.iter_mut().zip(scan.page.iter()).skip(index + 1);
            for (flag, &(_, later_position)) in later {
                if *flag {
                    *flag = joined.below_context(self.context_at(later_position)?);
                }
            }
        }
        let mut groups = [0u32; READ_PAGE];
        for (index, group) in groups.iter_mut().enumerate().take(count) {
            if !cuts[index] {
                *group |= ReadEntry::CONTINUES_BEFORE;
            }
            if !cuts[index + 1] {
                *group |= ReadEntry::CONTINUES_AFTER;
            }
        }
        Ok(groups)
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
