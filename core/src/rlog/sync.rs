//! Anti-entropy: digests in, entries out; entries in, staged in the log.

use super::wire::{self, Dot, Message, Writer, KIND_ENTRY};
use super::{Job, Rlog};
use crate::crdt::NodeId;
use crate::log::{AppendError, Appended};
use crate::net::SocketAddr;
use crate::service::Transmit;
use crate::storage::Storage;

/// Bytes reserved before a digest's pairs for the message's fixed part: variant, flag, two node
/// ids and the pairs' length.
const DIGEST_PREFIX: usize = 1 + 1 + 5 + 5 + 3;
/// The variant index of [`Message::Digest`].
const DIGEST_VARIANT: u32 = 0;

impl<S: Storage, B: AsMut<[u8]>, const N: usize, const P: usize, const SEG: usize>
    Rlog<S, B, N, P, SEG>
{
    /// Queues the entries of `[low, high]` the sender of a digest lacks and, unless the digest
    /// is itself a reply, this replica's digest of the same range.
    pub(super) fn on_digest(
        &mut self,
        to: SocketAddr,
        reply: bool,
        low: NodeId,
        high: NodeId,
        pairs: &[u8],
    ) {
        if low > high || wire::check_pairs(pairs, low, high).is_none() {
            self.stats.malformed += 1;
            return;
        }
        self.note_peer(to, pairs);
        let mut theirs = wire::pairs(pairs).peekable();
        let mut budget = u64::from(self.config.entries_per_digest);
        let live = self.log.first_live_epoch()..=self.log.newest_epoch();
        for (origin, mine) in self.durable.iter() {
            if origin < low || origin > high || budget == 0 {
                continue;
            }
            while theirs.next_if(|&(node, _)| node < origin).is_some() {}
            let known = theirs
                .peek()
                .filter(|&&(node, _)| node == origin)
                .map_or(0, |&(_, count)| count);
            if mine <= known {
                continue;
            }
            let count = (mine - known).min(budget);
            budget -= count;
            let next = known + 1;
            let dot = Dot {
                origin,
                counter: next,
            };
            let Some(epoch) = self.summaries.locate(live.clone(), dot) else {
                self.stats.unsent += count;
                continue;
            };
            let Ok(cursor) = self.log.segment_cursor(epoch) else {
                self.stats.unsent += count;
                continue;
            };
            let job = Job::Entries {
                to,
                origin,
                next,
                last: known + count,
                cursor,
            };
            if self.jobs.push_back(job).is_err() {
                self.stats.dropped += 1;
            }
        }
        if !reply {
            self.push_job(Job::Digest {
                to,
                reply: true,
                next: low,
                high,
            });
        }
    }

    /// Stages a received entry if it is the next one of its origin.
    pub(super) fn on_entry(&mut self, record: &[u8]) {
        let Some(checked) = wire::check_record(record, usize::MAX) else {
            self.stats.malformed += 1;
            return;
        };
        let dot = checked.dot();
        let known = self.held.get(dot.origin);
        if dot.counter <= known {
            self.stats.duplicates += 1;
            return;
        }
        if dot.counter != known + 1 {
            self.stats.gaps += 1;
            return;
        }
        if known == 0 && self.held.len() >= N {
            self.stats.refused += 1;
            return;
        }
        let appended = match self.append_received(record) {
            Err(AppendError::Full) if self.reclaim() => self.append_received(record),
            other => other,
        };
        let Ok(appended) = appended else {
            self.stats.refused += 1;
            return;
        };
        if self.held.add(dot.origin, 1).is_err() {
            // Checked above; unreachable, but never a panic.
            self.stats.refused += 1;
            return;
        }
        self.summaries.note(appended.position.epoch, dot);
        self.write_floor(appended.position.epoch);
        self.staged = true;
        self.stats.accepted += 1;
    }

    /// Appends a received record as it is.
    fn append_received(&mut self, record: &[u8]) -> Result<Appended, AppendError<S::Error>> {
        self.log.append(KIND_ENTRY, |area| {
            let target = area
                .get_mut(..record.len())
                .ok_or(crate::frame::EmitError::BufferTooSmall)?;
            target.copy_from_slice(record);
            Ok(record.len())
        })
    }

    /// Runs one step of a job: the datagram it produced, if any, and the job's remainder.
    pub(super) fn run_job(
        &mut self,
        job: Job,
        buffer: &mut [u8],
    ) -> (Option<Transmit>, Option<Job>) {
        match job {
            Job::Digest {
                to,
                reply,
                next,
                high,
            } => {
                let Some((len, rest)) = self.digest_chunk(buffer, reply, next, high) else {
                    self.stats.dropped += 1;
                    return (None, None);
                };
                self.stats.digests_sent += 1;
                let rest = rest.map(|next| Job::Digest {
                    to,
                    reply,
                    next,
                    high,
                });
                (Some(Transmit { to, len }), rest)
            }
            Job::Entries { .. } => self.entries_step(job, buffer),
            Job::Read {
                to,
                request_id,
                from,
                max,
            } => (self.read_reply(to, request_id, from, max, buffer), None),
        }
    }

    /// Writes the digest chunk of durable counts from `next` on, as many as fit; returns its
    /// length and where the next chunk starts, if one is needed.
    fn digest_chunk(
        &self,
        buffer: &mut [u8],
        reply: bool,
        next: NodeId,
        high: NodeId,
    ) -> Option<(usize, Option<NodeId>)> {
        let tail = buffer.get_mut(DIGEST_PREFIX..)?;
        let mut writer = Writer::new(tail);
        let mut rest = None;
        for (node, count) in self.durable.iter() {
            if node < next || node > high {
                continue;
            }
            if writer.put(&(node, count)).is_none() {
                rest = Some(node);
                break;
            }
        }
        let pairs_len = writer.at;
        // A chunk cut short covers up to just before the first node it could not hold.
        let chunk_high = match rest {
            Some(node) if pairs_len == 0 || node.0 == 0 => return None,
            Some(node) => NodeId(node.0 - 1),
            None => high,
        };
        let mut prefix = [0u8; DIGEST_PREFIX];
        let mut head = Writer::new(&mut prefix);
        head.put(&DIGEST_VARIANT)?;
        head.put(&reply)?;
        head.put(&next)?;
        head.put(&chunk_high)?;
        head.put(&(pairs_len as u64))?;
        let prefix_len = head.at;
        buffer.copy_within(DIGEST_PREFIX..DIGEST_PREFIX + pairs_len, prefix_len);
        buffer[..prefix_len].copy_from_slice(&prefix[..prefix_len]);
        Some((prefix_len + pairs_len, rest))
    }

    /// Sends the next entry of an entries job.
    fn entries_step(&mut self, job: Job, buffer: &mut [u8]) -> (Option<Transmit>, Option<Job>) {
        let Job::Entries {
            to,
            origin,
            next,
            last,
            mut cursor,
        } = job
        else {
            return (None, None);
        };
        let bound = self.frames_bound();
        for _ in 0..bound {
            let (frame, payload) = match self.log.read_next(&mut cursor) {
                Ok(Some(found)) => found,
                Ok(None) | Err(_) => break,
            };
            if frame.kind != KIND_ENTRY {
                continue;
            }
            let Ok(record) = postcard::from_bytes::<wire::Record<'_>>(payload) else {
                continue;
            };
            if record.origin != origin || record.counter < next {
                continue;
            }
            if record.counter > next {
                break;
            }
            let Some(len) = (Message::Entry { record: payload }).encode(buffer) else {
                break;
            };
            self.stats.entries_sent += 1;
            let rest = (next < last).then_some(Job::Entries {
                to,
                origin,
                next: next + 1,
                last,
                cursor,
            });
            return (Some(Transmit { to, len }), rest);
        }
        self.stats.unsent += last.saturating_sub(next) + 1;
        (None, None)
    }

    /// An upper bound of the frames the log can hold, to bound walks.
    pub(super) fn frames_bound(&self) -> u64 {
        let smallest = crate::frame::OVERHEAD as u64;
        u64::from(self.log.segments())
            .saturating_mul(self.log.segment_size() / smallest)
            .saturating_add(1)
    }
}
