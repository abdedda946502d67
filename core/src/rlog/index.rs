//! The bounded indexes a replica keeps in RAM: per live segment, which entries of which origins
//! it holds (to find entries for anti-entropy without a per-entry index), and the recent client
//! requests (to apply a retried request once).

use super::wire::Dot;
use crate::crdt::NodeId;
use heapless::Vec;

/// Origins a segment summary lists; a segment holding entries of more origins is marked
/// overflowed and searched in full when an entry is looked up.
pub const ORIGINS_PER_SEGMENT: usize = 16;
/// Client requests remembered for deduplication.
pub const DEDUP_CAPACITY: usize = 64;

/// The entries of one origin in one segment: counters `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    origin: NodeId,
    first: u64,
    last: u64,
}

/// What one segment holds.
#[derive(Debug, Clone, Default)]
struct Summary {
    /// The segment's epoch; 0 for an unused summary.
    epoch: u32,
    spans: Vec<Span, ORIGINS_PER_SEGMENT>,
    /// More origins than `spans` can list: look at the whole segment.
    overflowed: bool,
}

/// Summaries of the live segments, the one of epoch `e` at index `e % SEG`.
#[derive(Debug, Clone)]
pub(super) struct Summaries<const SEG: usize> {
    slots: [Summary; SEG],
}

impl<const SEG: usize> Summaries<SEG> {
    pub fn new() -> Self {
        Self {
            slots: core::array::from_fn(|_| Summary::default()),
        }
    }

    /// Notes that the entry `dot` was appended to the segment of `epoch`.
    pub fn note(&mut self, epoch: u32, dot: Dot) {
        let Some(slot) = self.slots.get_mut(epoch as usize % SEG.max(1)) else {
            return;
        };
        if slot.epoch != epoch {
            *slot = Summary {
                epoch,
                ..Summary::default()
            };
        }
        if let Some(span) = slot.spans.iter_mut().find(|span| span.origin == dot.origin) {
            span.first = span.first.min(dot.counter);
            span.last = span.last.max(dot.counter);
            return;
        }
        let span = Span {
            origin: dot.origin,
            first: dot.counter,
            last: dot.counter,
        };
        if slot.spans.push(span).is_err() {
            slot.overflowed = true;
        }
    }

    /// The first segment in `live` (epochs, oldest first) that may hold `dot`: the first one
    /// whose span of its origin reaches `dot.counter`, or that overflowed.
    pub fn locate(&self, live: core::ops::RangeInclusive<u32>, dot: Dot) -> Option<u32> {
        let (first, last) = (*live.start(), *live.end());
        let first = first.max(last.saturating_sub(SEG as u32).saturating_add(1));
        (first..=last).find(|&epoch| {
            let Some(slot) = self.slots.get(epoch as usize % SEG.max(1)) else {
                return false;
            };
            slot.epoch == epoch
                && (slot.overflowed
                    || slot
                        .spans
                        .iter()
                        .any(|span| span.origin == dot.origin && span.last >= dot.counter))
        })
    }
}

impl<const SEG: usize> Summaries<SEG> {
    /// True when every entry of the live segment of `epoch` is `held`: each origin's span is
    /// asked with its last counter. A segment no entry was noted in has none (its slot belongs
    /// to no live epoch but this one, since `SEG` is at least the segment count); an overflowed
    /// summary cannot tell, so it is never covered.
    pub fn covered(&self, epoch: u32, mut held: impl FnMut(NodeId, u64) -> bool) -> bool {
        let Some(slot) = self.slots.get(epoch as usize % SEG.max(1)) else {
            return false;
        };
        if slot.epoch != epoch {
            return true;
        }
        !slot.overflowed && slot.spans.iter().all(|span| held(span.origin, span.last))
    }
}

/// One remembered client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    client: NodeId,
    request_id: u64,
    dot: Dot,
}

/// The last [`DEDUP_CAPACITY`] client requests applied, oldest overwritten first.
#[derive(Debug, Clone)]
pub(super) struct Dedup {
    requests: Vec<Request, DEDUP_CAPACITY>,
    /// Where the next request goes once full.
    next: usize,
}

impl Dedup {
    pub const fn new() -> Self {
        Self {
            requests: Vec::new(),
            next: 0,
        }
    }

    /// The entry a request was applied as, if remembered.
    pub fn find(&self, client: NodeId, request_id: u64) -> Option<Dot> {
        self.requests
            .iter()
            .find(|request| request.client == client && request.request_id == request_id)
            .map(|request| request.dot)
    }

    /// Remembers a request, forgetting the oldest when full.
    pub fn remember(&mut self, client: NodeId, request_id: u64, dot: Dot) {
        let request = Request {
            client,
            request_id,
            dot,
        };
        if let Err(request) = self.requests.push(request) {
            if let Some(slot) = self.requests.get_mut(self.next) {
                *slot = request;
            }
            self.next = (self.next + 1) % DEDUP_CAPACITY;
        }
    }
}
