//! The member table's merge rules: records, suspicions, refutations and application entries.

use super::{
    suspicion_timeout, DigestItem, Entry, Event, Group, Member, Membership, Pull, Request, State,
    Update, CONFIRMATIONS_MAX, PULL_ATTEMPTS,
};
use crate::crdt::NodeId;
use crate::net::SocketAddr;
use crate::time::Instant;

use heapless::Vec;

impl<const N: usize, const KEYS: usize, const VALUE_MAX: usize> Membership<N, KEYS, VALUE_MAX> {
    /// A message from `node` at `incarnation` arrived: direct evidence that it is alive there.
    pub(super) fn heard_from(
        &mut self,
        now: Instant,
        node: NodeId,
        addr: SocketAddr,
        incarnation: u32,
    ) {
        let update = Update {
            node,
            incarnation,
            state: State::Alive,
            address: addr.into(),
            version: 0,
        };
        self.apply_update(now, node, update);
        let floor_ms = (self.config.probe_interval.as_millis() as u64 / 8).max(1);
        let retransmits = self.retransmits();
        let Some(index) = self.index_of(node) else {
            return;
        };
        let member = &mut self.members[index];
        member.arrivals.record(now.as_micros() / 1000, floor_ms);
        // The sender does not know what we hold against it (it would have refuted): spread our
        // record again, so the next datagram it gets from us tells it.
        if member.precedence() > (incarnation, State::Alive) && member.transmits == 0 {
            member.transmits = retransmits;
        }
    }

    /// Merges one disseminated record, received from `sender`.
    pub(super) fn apply_update(&mut self, now: Instant, sender: NodeId, update: Update) {
        if update.node == self.own.node {
            self.about_self(update.incarnation, update.state);
            return;
        }
        let Some(index) = self.index_of(update.node) else {
            self.insert(now, update);
            return;
        };
        let current = self.members[index].precedence();
        let incoming = (update.incarnation, update.state);
        if incoming > current {
            self.transition(now, index, update, sender);
        } else if incoming == current && update.state == State::Suspect {
            self.confirm(index, sender);
        }
    }

    /// Someone says this node is suspect, dead or left: refute with a higher incarnation.
    fn about_self(&mut self, incarnation: u32, state: State) {
        let accused = state != State::Alive && incarnation >= self.own.incarnation;
        if !accused || self.own.state == State::Left {
            return;
        }
        self.own.incarnation = incarnation.saturating_add(1);
        self.own.transmits = self.retransmits();
        self.health = self.health.saturating_add(1).min(self.config.health_max);
        self.stats.refutations += 1;
        self.emit(Event::IncarnationBumped {
            incarnation: self.own.incarnation,
        });
    }

    fn insert(&mut self, now: Instant, update: Update) {
        // A tombstone of a node never seen is not worth a slot.
        if matches!(update.state, State::Dead | State::Left) || update.incarnation == 0 {
            return;
        }
        if self.members.is_full() && !self.evict_tombstone() {
            self.stats.capacity_refusals += 1;
            return;
        }
        let mut member = Member::new(
            update.node,
            update.address.into(),
            update.incarnation,
            update.state,
            now,
        );
        member.transmits = self.retransmits();
        // Room was checked or made above.
        let _ = self.members.push(member);
        self.emit(Event::Joined {
            node: update.node,
            incarnation: update.incarnation,
        });
        if update.state == State::Suspect {
            self.emit(Event::Suspected {
                node: update.node,
                incarnation: update.incarnation,
            });
        }
    }

    /// Removes the oldest tombstone; false when there is none.
    fn evict_tombstone(&mut self) -> bool {
        let oldest = (self.members.iter().enumerate())
            .filter(|(_, member)| member.is_tombstone())
            .min_by_key(|(_, member)| member.since)
            .map(|(index, _)| index);
        match oldest {
            Some(index) => {
                self.remove(index);
                true
            }
            None => false,
        }
    }

    pub(super) fn remove(&mut self, index: usize) {
        let node = self.members.remove(index).node;
        self.emit(Event::Removed { node });
    }

    /// Takes a record of higher precedence.
    fn transition(&mut self, now: Instant, index: usize, update: Update, sender: NodeId) {
        let retransmits = self.retransmits();
        let member = &mut self.members[index];
        let before = member.state;
        member.incarnation = update.incarnation;
        member.state = update.state;
        member.addr = update.address.into();
        member.transmits = retransmits;
        if before != update.state {
            member.since = now;
        }
        member.confirmations.clear();
        if update.state == State::Suspect && sender != self.own.node {
            // Capacity is at least one.
            let _ = member.confirmations.push(sender);
        }
        self.report(before, update);
    }

    fn report(&mut self, before: State, update: Update) {
        let (node, incarnation) = (update.node, update.incarnation);
        let event = match (before, update.state) {
            (State::Suspect, State::Alive) => {
                self.stats.suspicions_refuted += 1;
                Event::Alive { node, incarnation }
            }
            (State::Dead | State::Left, State::Alive) => Event::Joined { node, incarnation },
            (State::Alive, State::Alive) => return,
            (State::Suspect, State::Suspect) => return,
            (_, State::Suspect) => Event::Suspected { node, incarnation },
            (State::Dead, State::Dead) => return,
            (_, State::Dead) => Event::Dead { node },
            (State::Left, State::Left) => return,
            (_, State::Left) => Event::Left { node },
        };
        self.emit(event);
    }

    fn confirm(&mut self, index: usize, sender: NodeId) {
        let member = &mut self.members[index];
        let known = member.confirmations.contains(&sender);
        if !known && sender != self.own.node && member.confirmations.len() < CONFIRMATIONS_MAX {
            // Room was checked.
            let _ = member.confirmations.push(sender);
        }
    }

    /// This node's probe of `index` failed: suspect it.
    pub(super) fn suspect(&mut self, now: Instant, index: usize) {
        let member = &self.members[index];
        if member.state != State::Alive {
            return;
        }
        let update = Update {
            state: State::Suspect,
            ..member.update()
        };
        self.stats.suspicions += 1;
        let own = self.own.node;
        self.transition(now, index, update, own);
    }

    /// When the suspicion of `member` runs out.
    pub(super) fn suspicion_deadline(&self, member: &Member<KEYS, VALUE_MAX>) -> Instant {
        let config = &self.config;
        let mut needed = usize::from(config.indirect_probes).min(CONFIRMATIONS_MAX);
        // Only the members other than this node and the suspect can confirm: when fewer than
        // `needed` exist, waiting for confirmations would always run to the maximum, so the
        // minimum applies at once (memberlist does the same).
        if self.cluster_size().saturating_sub(2) < needed {
            needed = 0;
        }
        member.since
            + suspicion_timeout(
                config.suspicion_mult,
                config.suspicion_max_mult,
                self.cluster_size(),
                config.probe_interval,
                member.confirmations.len(),
                needed,
            )
    }

    /// Declares dead the suspects whose time ran out, and forgets old tombstones.
    pub(super) fn expire(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.members.len() {
            let member = &self.members[index];
            if member.state == State::Suspect && self.suspicion_deadline(member) <= now {
                let update = Update {
                    state: State::Dead,
                    ..member.update()
                };
                self.stats.confirmed_dead += 1;
                let own = self.own.node;
                self.transition(now, index, update, own);
            } else if member.is_tombstone() && member.since + self.config.tombstone <= now {
                self.remove(index);
                continue;
            }
            index += 1;
        }
    }

    /// The earliest suspicion or tombstone deadline.
    pub(super) fn table_deadline(&self) -> Option<Instant> {
        let deadlines = self.members.iter().filter_map(|member| match member.state {
            State::Suspect => Some(self.suspicion_deadline(member)),
            State::Dead | State::Left => Some(member.since + self.config.tombstone),
            State::Alive => None,
        });
        deadlines.min()
    }

    /// A digest item from a peer: whether the peer wants something from us, and what we lack
    /// (our own view of the node, to ask with).
    pub(super) fn compare(&mut self, item: DigestItem) -> (bool, Option<DigestItem>) {
        if item.node == self.own.node {
            self.about_self(item.incarnation, item.state);
        }
        let Some(ours) = self.member(item.node).map(Member::digest_item) else {
            let unknown = DigestItem {
                incarnation: 0,
                state: State::Alive,
                version: 0,
                ..item
            };
            return (false, Some(unknown));
        };
        let theirs_precedence = (item.incarnation, item.state);
        let ours_precedence = (ours.incarnation, ours.state);
        let wants = ours_precedence > theirs_precedence || ours.version > item.version;
        let lacks = theirs_precedence > ours_precedence || item.version > ours.version;
        (wants, lacks.then_some(ours))
    }

    /// Starts applying a group: returns the member's index when its entries apply (the node is
    /// known, is not this node, and nothing between what we hold and `base` is missing). The
    /// member's version moves to the group's at once: the datagram was checked whole.
    pub(super) fn begin_group(&mut self, group: Group) -> Option<usize> {
        let index = self.index_of(group.node)?;
        let retransmits = self.retransmits();
        let member = &mut self.members[index];
        if group.base > member.version || group.version <= member.version {
            return None;
        }
        // The version rose: spread it like a state change, so others pull it from here.
        member.transmits = retransmits;
        let generation = group.version >> 32;
        if generation > member.version >> 32 {
            // A newer life of the node: the previous life's entries are gone.
            member
                .entries
                .retain(|entry| entry.version >> 32 >= generation);
        }
        member.version = group.version;
        let version = group.version;
        self.pulls
            .retain(|pull| pull.node != group.node || pull.version > version);
        Some(index)
    }

    /// Applies one entry of the group begun at `index`: the higher version of a key wins.
    pub(super) fn apply_entry(&mut self, index: usize, key: u8, version: u64, value: &[u8]) {
        let Ok(value) = Vec::from_slice(value) else {
            self.stats.malformed += 1;
            return;
        };
        let member = &mut self.members[index];
        match member.entries.iter_mut().find(|entry| entry.key == key) {
            Some(entry) => {
                if entry.version < version {
                    entry.version = version;
                    entry.value = value;
                }
            }
            None => {
                if member
                    .entries
                    .push(Entry {
                        key,
                        version,
                        value,
                    })
                    .is_err()
                {
                    self.stats.malformed += 1;
                }
            }
        }
    }
}

/// Pulls: an update said a peer holds more of a member's application entries than this node.
impl<const N: usize, const KEYS: usize, const VALUE_MAX: usize> Membership<N, KEYS, VALUE_MAX> {
    /// Member `from` holds `node`'s entries up to `version`: pull them unless they are held, or
    /// a pull of them is already waiting or in flight (sent less than a period ago). Duplicates
    /// merge into one pull (the latest teller is asked); when the queue is full of live pulls,
    /// the pull is left to a later update or to push-pull.
    pub(super) fn want_pull(&mut self, now: Instant, node: NodeId, from: NodeId, version: u64) {
        if node == self.own.node || self.member(node).is_none_or(|m| m.version >= version) {
            return;
        }
        // A version with no entry written in its life (`start_incarnation << 32` exactly): there
        // is nothing to pull, so it is held at once (the previous life's entries are gone).
        // Every member a joining node learns of announces one, and pulling for each of them
        // crowded out the membership traffic of a large join.
        if version & u64::from(u32::MAX) == 0 {
            if let Some(index) = self.index_of(node) {
                let member = &mut self.members[index];
                member
                    .entries
                    .retain(|entry| entry.version >> 32 >= version >> 32);
                member.version = version;
            }
            return;
        }
        let period = self.period();
        let overdue = |pull: &Pull| !pull.waiting && now >= pull.sent + period;
        if let Some(pull) = self.pulls.iter_mut().find(|pull| pull.node == node) {
            pull.version = pull.version.max(version);
            pull.from = from;
            if overdue(pull) {
                // Lost or not answered: news of the version again is worth another try.
                pull.waiting = true;
                pull.attempts = pull.attempts.min(PULL_ATTEMPTS - 1);
            }
            return;
        }
        if self.pulls.is_full() {
            if let Some(index) = self.pulls.iter().position(overdue) {
                self.pulls.swap_remove(index);
            }
        }
        let pull = Pull {
            node,
            from,
            version,
            sent: now,
            attempts: 0,
            waiting: true,
        };
        // Full of live pulls: this one waits for a later update.
        let _ = self.pulls.push(pull);
    }

    /// The waiting pulls from one peer (the first waiting pull's), as a digest request of this
    /// node's view of their members; they are in flight from `now`. A pull unanswered for a
    /// period waits again, until sent [`PULL_ATTEMPTS`] times. A pull whose teller left the
    /// table asks the member itself.
    pub(super) fn take_pulls(&mut self, now: Instant) -> Option<Request> {
        let period = self.period();
        let mut index = 0;
        while index < self.pulls.len() {
            let pull = &mut self.pulls[index];
            let overdue = !pull.waiting && now >= pull.sent + period;
            if overdue && pull.attempts < PULL_ATTEMPTS {
                pull.waiting = true;
            }
            let node = pull.node;
            if (overdue && !pull.waiting) || self.member(node).is_none() {
                self.pulls.swap_remove(index);
            } else {
                index += 1;
            }
        }
        // Every pull left is of a known member: the request has at least one item.
        let first = *self.pulls.iter().find(|pull| pull.waiting)?;
        let to = self.pull_addr(&first);
        let mut items = Vec::new();
        for index in 0..self.pulls.len() {
            let pull = self.pulls[index];
            if !pull.waiting || self.pull_addr(&pull) != to || items.is_full() {
                continue;
            }
            if let Some(member) = self.member(pull.node) {
                // Room was checked.
                let _ = items.push(member.digest_item());
            }
            let pull = &mut self.pulls[index];
            (pull.waiting, pull.sent) = (false, now);
            pull.attempts = pull.attempts.saturating_add(1);
        }
        let request = Request {
            to,
            delta: false,
            window: false,
            items,
        };
        Some(request)
    }

    /// Where a pull is sent: first to the member that told (it holds the version and is
    /// nearby in the epidemic), a retry to the member itself (the one node sure to hold its
    /// own entries), and to whichever is still known when the other is gone. Only called for
    /// pulls of known members.
    fn pull_addr(&self, pull: &Pull) -> SocketAddr {
        let (first, second) = if pull.attempts.is_multiple_of(2) {
            (pull.from, pull.node)
        } else {
            (pull.node, pull.from)
        };
        self.member(first)
            .or_else(|| self.member(second))
            .map_or(self.own.addr, Member::addr)
    }
}
