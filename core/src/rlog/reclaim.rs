//! Space reclamation: the oldest segments of the storage log are released once every configured
//! peer's digests show that it holds every entry in them.
//!
//! # How
//!
//! - Each peer's digests are remembered as a version vector (`peer_have`, the per-node maximum
//!   of every digest chunk received from its address). A digest lists durable counts, which never
//!   go down, so the maximum is what the peer holds.
//! - When the storage log has at most one free segment left (checked after each commit: one
//!   ahead, since a log resumed in place after a crash may lack the room a release frame needs
//!   when it opens a segment) or an append is refused as full, the live segments are walked oldest first with their summaries
//!   ([`super::index`]); the first one holding an entry some peer lacks is the *boundary*, and
//!   every segment before it is released ([`Log::release_before`] its first frame). A replica
//!   without peers never releases: nothing else holds its entries.
//! - A released segment takes the counts of its entries with it, and recovery rebuilds `have`
//!   from the frames it replays. So the first time a replica writes into a segment, it writes a
//!   *floor* frame (kind [`KIND_FLOOR`]) right after that entry: the pairs of `held` at that
//!   moment, which covers every entry of the older segments. A boundary segment must hold a
//!   floor frame among its first two frames (written in the same batch as its first entry, so
//!   durable with it), else nothing is released before it. Recovery raises `have` to each floor
//!   it replays, so a released origin never restarts from 0 and a dot is never reused.
//!
//! # What it does not do
//!
//! - A configured peer that never sends a digest (down, partitioned, misconfigured) blocks every
//!   release: once the log is full, appends fail with [`RlogError::Full`] and received entries
//!   are refused ([`Stats::refused`]), and nothing stored is lost. Removing the peer from the
//!   configuration is the operator's way out.
//! - Released entries are no longer read or served here: a peer that loses its storage cannot be
//!   refilled with them from this replica. Reads return the retained entries; replicas that
//!   released different amounts return different prefixes of the order (and the sibling flags of
//!   the oldest retained entries are computed without the released ones).
//! - Client requests whose entries were released are forgotten by the deduplication table.
//! - A segment holding entries of more than [`super::index::ORIGINS_PER_SEGMENT`] origins
//!   (an overflowed summary) cannot be shown covered: neither it nor any later segment is
//!   released. Size `ORIGINS_PER_SEGMENT` for the cluster's writing origins.
//! - Capacity: the entries not yet held by every replica must fit one replica's log. When every
//!   replica is full and each one's oldest segment holds entries some peer lacks, those peers
//!   refuse the entries (they are full too) and nothing converges: a cluster-wide stall, found
//!   by the simulation with logs of 3–5 segments. Size the logs for the backlog a partition may
//!   build up; there is no backlog limit on local appends yet.
//! - A peer's counts are kept at the highest it ever reported: a peer that lost entries
//!   (mid-log corruption, a wiped directory) is still believed to hold them, and entries may be
//!   released that it then never gets from this replica. Such a peer must rejoin under a new
//!   node id.
//!
//! [`Log::release_before`]: crate::log::Log::release_before
//! [`RlogError::Full`]: super::RlogError::Full
//! [`Stats::refused`]: super::Stats::refused

use super::wire::{self, Writer};
use super::Rlog;
use crate::frame::EmitError;
use crate::log::Appended;
use crate::net::SocketAddr;
use crate::storage::Storage;

/// Kind of the storage frame holding a floor: the pairs of the version vector of entries held
/// when it was written (SPEC.md section 9).
pub const KIND_FLOOR: u8 = 33;

impl<S: Storage, B: AsMut<[u8]>, const N: usize, const P: usize, const SEG: usize>
    Rlog<S, B, N, P, SEG>
{
    /// Remembers what a digest chunk from `from` says the peer holds (already checked pairs).
    pub(super) fn note_peer(&mut self, from: SocketAddr, pairs: &[u8]) {
        let Some(index) = self.peers.iter().position(|&peer| peer == from) else {
            return;
        };
        let Some(have) = self.peer_have.get_mut(index) else {
            return;
        };
        for (node, count) in wire::pairs(pairs) {
            let known = have.get(node);
            // Past the capacity, the node stays at its old count: it only delays releases.
            if count > known {
                let _ = have.add(node, count - known);
            }
        }
    }

    /// Writes a floor frame after an entry that went into the segment of `epoch`, if that
    /// segment has none yet. A floor that does not fit is skipped: its segment then cannot be a
    /// release boundary, which only delays releases.
    pub(super) fn write_floor(&mut self, epoch: u32) {
        if epoch == self.floor_epoch {
            return;
        }
        let held = &self.held;
        let written = self.log.append(KIND_FLOOR, |area| {
            let mut writer = Writer::new(area);
            for pair in held.iter() {
                writer.put(&pair).ok_or(EmitError::BufferTooSmall)?;
            }
            Ok(writer.at)
        });
        if let Ok(appended) = written {
            self.floor_epoch = appended.position.epoch;
        }
    }

    /// Releases the live segments before the first one holding an entry some configured peer
    /// lacks. True when a release was made (it applies now, or with the next sync if its frame
    /// is not durable yet).
    pub(super) fn reclaim(&mut self) -> bool {
        let peer_count = self.peers.len();
        if peer_count == 0 {
            return false;
        }
        let first = self.log.first_live_epoch();
        let newest = self.log.newest_epoch();
        let peers = &self.peer_have[..peer_count.min(P)];
        let held_by_all = |origin, last| peers.iter().all(|have| have.get(origin) >= last);
        let boundary = (first..=newest)
            .find(|&epoch| !self.summaries.covered(epoch, held_by_all))
            .unwrap_or(newest);
        // The newest segment at or before the boundary whose first frames hold a floor: a
        // segment whose floor was lost to a crash (or spilled over) cannot start the live log,
        // but an earlier one can still free what lies before it.
        let Some((epoch, frame)) = ((first + 1)..=boundary)
            .rev()
            .find_map(|epoch| self.floored_start(epoch).map(|frame| (epoch, frame)))
        else {
            return false;
        };
        if self.log.release_before(frame).is_err() {
            return false;
        }
        self.stats.reclaimed += u64::from(epoch - first);
        true
    }

    /// The first frame of the segment of `epoch`, if a floor frame is among its first two.
    fn floored_start(&mut self, epoch: u32) -> Option<Appended> {
        let mut cursor = self.log.segment_cursor(epoch).ok()?;
        let (first, _) = self.log.read_next(&mut cursor).ok()??;
        if first.position.epoch != epoch {
            return None;
        }
        let floored = first.kind == KIND_FLOOR
            || matches!(
                self.log.read_next(&mut cursor),
                Ok(Some((second, _))) if second.kind == KIND_FLOOR && second.position.epoch == epoch
            );
        floored.then_some(Appended {
            sequence: first.sequence,
            position: first.position,
        })
    }
}
