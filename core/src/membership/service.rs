//! The membership node as a [`Service`]: timers (probes, push-pull rounds, relays, suspicion
//! and tombstone expiry), message handling, and encoding within the caller's buffer.

use heapless::Vec;

use super::{
    message::{entry_len, finish, put, put_entry, walk, GROUP_LEN_MAX},
    Cycle, DigestItem, Group, Head, Item, Member, MemberRecord, Membership, Message, Outgoing,
    Probe, Relay, Request, State, CLIENT_ID_BIT, DIGEST_ITEMS_MAX, GROUPS_MAX, HEAD_LEN_MAX,
    RECORDS_MAX, UPDATES_MAX,
};
use crate::crdt::NodeId;
use crate::net::SocketAddr;
use crate::rng::{Rng, SplitMix64};
use crate::service::{self, Peer, Service, Transmit};
use crate::time::Instant;

/// Most members picked at once (fan-out, indirect probes).
const PICK_MAX: usize = 8;

impl<const N: usize, const KEYS: usize, const VALUE_MAX: usize> Membership<N, KEYS, VALUE_MAX> {
    /// A stall (the timers not run for three stretched periods) means this node, not its
    /// peers, was slow: assume the worst about its own health and give suspects a fresh
    /// timeout instead of declaring dead everyone it could not hear while it slept.
    fn check_stall(&mut self, now: Instant) {
        let Some(last) = self.last_tick else {
            return;
        };
        if now.saturating_duration_since(last) <= self.period().saturating_mul(3) {
            return;
        }
        self.stats.stalls += 1;
        self.health = self.config.health_max;
        self.probe = None;
        for member in self.members.iter_mut() {
            if member.state == State::Suspect {
                member.since = now;
            }
        }
        self.next_probe = now;
    }

    /// Asks others to probe, then judges the probe in flight when its time is up.
    fn run_probe(&mut self, now: Instant) {
        let Some(mut probe) = self.probe else {
            return;
        };
        if !probe.indirect_sent && now >= probe.indirect_at {
            probe.indirect_sent = true;
            probe.nacks_expected = self.send_indirect(probe.node, probe.seq);
        }
        self.probe = Some(probe);
        if now < probe.end {
            return;
        }
        self.probe = None;
        // Lifeguard: a failed probe, and relays that did not even nack, hint that this node is
        // the slow one.
        let missing_nacks = probe.nacks < probe.nacks_expected;
        let penalty = 1 + u8::from(missing_nacks);
        self.health = self
            .health
            .saturating_add(penalty)
            .min(self.config.health_max);
        if let Some(index) = self.index_of(probe.node) {
            self.suspect(now, index);
        }
    }

    fn send_indirect(&mut self, target: NodeId, seq: u32) -> u8 {
        let Some(addr) = self.member(target).map(Member::addr) else {
            return 0;
        };
        let count = usize::from(self.config.indirect_probes);
        let helpers = self.pick(count, target, |member| member.state == State::Alive);
        for &index in &helpers {
            let to = self.members[index].addr;
            self.send(Outgoing::PingReq {
                to,
                seq,
                target,
                addr,
            });
        }
        self.stats.indirect_probes += helpers.len() as u64;
        helpers.len() as u8
    }

    fn start_probe(&mut self, now: Instant) {
        let period = self.period();
        self.next_probe = now + period;
        if self.live_count() == 0 {
            self.contact_seeds();
            return;
        }
        let Some(index) = self.next_target() else {
            return;
        };
        let seq = self.next_seq();
        let (node, to) = (self.members[index].node, self.members[index].addr);
        let timeout = (self.config.probe_timeout)
            .saturating_mul(u32::from(self.health) + 1)
            .min(period);
        self.probe = Some(Probe {
            node,
            seq,
            indirect_at: now + timeout,
            indirect_sent: false,
            end: now + period,
            nacks_expected: 0,
            nacks: 0,
        });
        self.stats.probes += 1;
        self.send(Outgoing::Ping { to, seq });
    }

    /// A node that knows no live member pings and pulls from its seeds.
    fn contact_seeds(&mut self) {
        for index in 0..self.seeds.len() {
            let to = self.seeds[index];
            let seq = self.next_seq();
            self.send(Outgoing::Ping { to, seq });
            self.send(Outgoing::Digest { to });
        }
    }

    /// The next member to probe in the shuffled round-robin order.
    fn next_target(&mut self) -> Option<usize> {
        let len = self.members.len();
        for _ in 0..len {
            if self.cycle.len != len || self.cycle.step >= len {
                self.cycle = self.shuffle(len);
            }
            let index = (self.cycle.offset + self.cycle.step * self.cycle.stride) % len;
            self.cycle.step += 1;
            if matches!(self.members[index].state, State::Alive | State::Suspect) {
                return Some(index);
            }
        }
        None
    }

    /// A random affine permutation of `0..len`: a random offset and a stride coprime to `len`.
    fn shuffle(&mut self, len: usize) -> Cycle {
        let offset = self.rng.below(len as u64) as usize;
        let mut stride = 1;
        for _ in 0..8 {
            let candidate = 1 + self.rng.below(len.max(2) as u64 - 1) as usize;
            if gcd(candidate, len) == 1 {
                stride = candidate;
                break;
            }
        }
        Cycle {
            offset,
            stride,
            step: 0,
            len,
        }
    }

    /// Up to `count` distinct members that `accept` takes, other than `exclude`, in a random
    /// order.
    fn pick(
        &mut self,
        count: usize,
        exclude: NodeId,
        accept: impl Fn(&Member<KEYS, VALUE_MAX>) -> bool,
    ) -> Vec<usize, PICK_MAX> {
        let len = self.members.len();
        let mut chosen = Vec::new();
        if len == 0 {
            return chosen;
        }
        let order = self.shuffle(len);
        for step in 0..len {
            let index = (order.offset + step * order.stride) % len;
            let member = &self.members[index];
            if chosen.len() >= count.min(PICK_MAX) {
                break;
            }
            if member.node != exclude && accept(member) {
                // Room was checked.
                let _ = chosen.push(index);
            }
        }
        chosen
    }

    /// A push-pull round: digests to `fanout` live members, and one to a random tombstone of a
    /// dead member, which heals a partition (the "dead" node learns it and refutes).
    fn gossip(&mut self) {
        let own = self.own.node;
        let fanout = usize::from(self.config.fanout);
        let targets = self.pick(fanout, own, |member| !member.is_tombstone());
        for &index in &targets {
            let to = self.members[index].addr;
            self.send(Outgoing::Digest { to });
        }
        let dead = self.pick(1, own, |member| member.state == State::Dead);
        if let Some(&index) = dead.first() {
            let to = self.members[index].addr;
            self.send(Outgoing::Digest { to });
        }
    }

    /// Relays whose target stayed silent answer their requester with a nack.
    fn expire_relays(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.relays.len() {
            let relay = self.relays[index];
            if relay.deadline <= now {
                self.relays.swap_remove(index);
                self.send(Outgoing::Nack {
                    to: relay.requester,
                    seq: relay.their_seq,
                });
            } else {
                index += 1;
            }
        }
    }

    fn on_ack(&mut self, seq: u32) {
        if self.probe.is_some_and(|probe| probe.seq == seq) {
            // The probe succeeded: it is over, and this node's health improves.
            self.stats.acks += 1;
            self.health = self.health.saturating_sub(1);
            self.probe = None;
        }
        if let Some(index) = self.relays.iter().position(|relay| relay.our_seq == seq) {
            let relay = self.relays.swap_remove(index);
            self.send(Outgoing::Ack {
                to: relay.requester,
                seq: relay.their_seq,
            });
        }
    }

    fn on_ping_req(&mut self, now: Instant, requester: SocketAddr, seq: u32, target: SocketAddr) {
        let our_seq = self.next_seq();
        let relay = Relay {
            requester,
            their_seq: seq,
            our_seq,
            deadline: now + self.config.probe_timeout,
        };
        if self.relays.push(relay).is_err() {
            self.stats.queue_full += 1;
            return;
        }
        self.send(Outgoing::Ping {
            to: target,
            seq: our_seq,
        });
    }

    fn on_nack(&mut self, seq: u32) {
        if let Some(probe) = self.probe.as_mut().filter(|probe| probe.seq == seq) {
            probe.nacks = probe.nacks.saturating_add(1);
            self.stats.nacks += 1;
        }
    }

    fn request(&mut self, request: Request) {
        if self.requests.push_back(request).is_err() {
            self.stats.queue_full += 1;
        }
    }

    /// Applies a checked body: digest items are compared (what the sender wants, what we lack),
    /// updates merged, groups applied.
    fn apply_body(
        &mut self,
        now: Instant,
        from: Peer,
        payload: &[u8],
    ) -> (
        Vec<DigestItem, DIGEST_ITEMS_MAX>,
        Vec<DigestItem, DIGEST_ITEMS_MAX>,
    ) {
        let mut wants = Vec::new();
        let mut lacks = Vec::new();
        let mut group = None;
        // Members the sender holds more application entries of than we do (by its updates).
        let mut ahead: Vec<(NodeId, u64), UPDATES_MAX> = Vec::new();
        // Checked by the caller: this walk cannot fail, and each list holds every digest item.
        let _ = walk(payload, VALUE_MAX, &mut |item| match item {
            Item::Digest(item) => {
                let (want, lack) = self.compare(item);
                if want {
                    let _ = wants.push(item);
                }
                if let Some(lack) = lack {
                    let _ = lacks.push(lack);
                }
            }
            Item::Update(update) => {
                self.apply_update(now, from.node, update);
                let _ = ahead.push((update.node, update.version));
            }
            Item::Group(head) => group = self.begin_group(head),
            Item::Entry {
                key,
                version,
                value,
            } => {
                if let Some(index) = group {
                    self.apply_entry(index, key, version, value);
                }
            }
            // Only in pages, which the caller drops before applying.
            Item::Record(_) => {}
        });
        // After the whole body: a delta's groups may have brought what its updates announce.
        for (node, version) in ahead {
            self.want_pull(now, node, from.node, version);
        }
        (wants, lacks)
    }

    fn dispatch(&mut self, now: Instant, from: Peer, message: Message, lists: Lists) {
        let (wants, lacks) = lists;
        match message {
            Message::Ping { seq } => self.send(Outgoing::Ack { to: from.addr, seq }),
            Message::Ack { seq } => self.on_ack(seq),
            Message::PingReq { seq, address, .. } => {
                self.on_ping_req(now, from.addr, seq, address.into());
            }
            Message::Nack { seq } => self.on_nack(seq),
            Message::Digest { reply, .. } => {
                if !wants.is_empty() {
                    self.request(Request {
                        to: from.addr,
                        delta: true,
                        window: false,
                        items: wants,
                    });
                }
                if reply || !lacks.is_empty() {
                    self.request(Request {
                        to: from.addr,
                        delta: false,
                        window: reply,
                        items: lacks,
                    });
                }
            }
            // Answered (or dropped) by the caller before anything is applied.
            Message::Delta { .. } | Message::Members { .. } | Message::MembersPage { .. } => {}
        }
    }
}

type Lists = (
    Vec<DigestItem, DIGEST_ITEMS_MAX>,
    Vec<DigestItem, DIGEST_ITEMS_MAX>,
);

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Encoding.
impl<const N: usize, const KEYS: usize, const VALUE_MAX: usize> Membership<N, KEYS, VALUE_MAX> {
    /// Piggybacks records waiting for dissemination, this node's first, then round-robin over
    /// the table, while they fit before `limit`. Returns the new end and update count.
    fn put_updates(
        &mut self,
        buffer: &mut [u8],
        at: usize,
        limit: usize,
        count: u8,
    ) -> (usize, u8) {
        let (mut at, mut count) = (at, count);
        if self.own.transmits > 0 && usize::from(count) < UPDATES_MAX {
            if let Some(end) = put(&self.own.update(), buffer, at, limit) {
                (at, count) = (end, count + 1);
                self.own.transmits -= 1;
            }
        }
        // Round-robin: the next datagram starts after the last record this one carried.
        let len = self.members.len();
        let start = self.update_cursor;
        for step in 0..len {
            if usize::from(count) >= UPDATES_MAX {
                break;
            }
            let index = (start + step) % len;
            let member = &mut self.members[index];
            if member.transmits == 0 {
                continue;
            }
            let Some(end) = put(&member.update(), buffer, at, limit) else {
                break;
            };
            member.transmits -= 1;
            (at, count) = (end, count + 1);
            self.update_cursor = (index + 1) % len;
        }
        (at, count)
    }

    /// A datagram whose body is only piggybacked updates.
    fn encode_plain(&mut self, message: Message, buffer: &mut [u8]) -> Option<usize> {
        let (end, updates) = self.put_updates(buffer, HEAD_LEN_MAX, buffer.len(), 0);
        self.seal(message, updates, buffer, end)
    }

    fn seal(
        &mut self,
        message: Message,
        updates: u8,
        buffer: &mut [u8],
        end: usize,
    ) -> Option<usize> {
        let head = Head {
            incarnation: self.own.incarnation,
            message,
            updates,
        };
        finish(&head, buffer, end)
    }

    /// A digest: `items`, then (with `window`) this node and the next window of the table.
    fn encode_digest(
        &mut self,
        items: &[DigestItem],
        window: bool,
        reply: bool,
        buffer: &mut [u8],
    ) -> Option<usize> {
        let mut list: Vec<DigestItem, DIGEST_ITEMS_MAX> = Vec::new();
        for item in items {
            let _ = list.push(*item);
        }
        if window {
            self.fill_window(&mut list);
        }
        let mut at = HEAD_LEN_MAX;
        for item in &list {
            at = put(item, buffer, at, buffer.len())?;
        }
        let (end, updates) = self.put_updates(buffer, at, buffer.len(), 0);
        let message = Message::Digest {
            reply,
            items: list.len() as u8,
        };
        self.seal(message, updates, buffer, end)
    }

    fn fill_window(&mut self, list: &mut Vec<DigestItem, DIGEST_ITEMS_MAX>) {
        if !list.iter().any(|item| item.node == self.own.node) {
            let _ = list.push(self.own.digest_item());
        }
        let len = self.members.len();
        let mut taken = 0;
        while taken < len && !list.is_full() {
            let index = (self.digest_cursor + taken) % len;
            let item = self.members[index].digest_item();
            taken += 1;
            if !list.iter().any(|listed| listed.node == item.node) {
                let _ = list.push(item);
            }
        }
        self.digest_cursor = (self.digest_cursor + taken) % len.max(1);
    }

    /// A delta answering `items` (the asker's view): records we know better, then groups of
    /// entries above the asker's versions. While groups wait, updates take at most half the
    /// room, so membership traffic never starves application state.
    fn encode_delta(&mut self, items: &[DigestItem], buffer: &mut [u8]) -> Option<usize> {
        let limit = buffer.len();
        let groups_wait = items.iter().any(|item| {
            self.member(item.node)
                .is_some_and(|m| m.version > item.version)
        });
        let update_limit = match groups_wait {
            true => HEAD_LEN_MAX + (limit.saturating_sub(HEAD_LEN_MAX)) / 2,
            false => limit,
        };
        let (mut at, mut updates) = (HEAD_LEN_MAX, 0u8);
        for item in items {
            let Some(member) = self.member(item.node) else {
                continue;
            };
            if member.precedence() > (item.incarnation, item.state) {
                if let Some(end) = put(&member.update(), buffer, at, update_limit) {
                    (at, updates) = (end, updates + 1);
                }
            }
        }
        (at, updates) = self.put_updates(buffer, at, update_limit, updates);
        let mut groups = 0u8;
        for item in items {
            if usize::from(groups) >= GROUPS_MAX {
                break;
            }
            if let Some(end) = self.put_group(item, buffer, at, limit) {
                (at, groups) = (end, groups + 1);
            }
        }
        self.seal(Message::Delta { groups }, updates, buffer, at)
    }

    /// The entries of `item`'s node above `item.version`, in version order, as many as fit.
    fn put_group(
        &self,
        item: &DigestItem,
        buffer: &mut [u8],
        at: usize,
        limit: usize,
    ) -> Option<usize> {
        let member = self.member(item.node)?;
        if member.version <= item.version {
            return None;
        }
        let order = ascending(member, item.version);
        let mut room = limit.checked_sub(at + GROUP_LEN_MAX)?;
        let mut fitting = 0;
        for &index in &order {
            let entry = &member.entries[index];
            let len = entry_len(entry.version, entry.value.len());
            if len > room {
                break;
            }
            room -= len;
            fitting += 1;
        }
        let version = match fitting == order.len() {
            true => member.version,
            false if fitting == 0 => return None,
            false => member.entries[order[fitting - 1]].version,
        };
        let group = Group {
            node: item.node,
            base: item.version,
            version,
            entries: fitting as u8,
        };
        let mut at = put(&group, buffer, at, limit)?;
        for &index in &order[..fitting] {
            let entry = &member.entries[index];
            at = put_entry(entry.key, entry.version, &entry.value, buffer, at, limit)?;
        }
        Some(at)
    }

    /// The record of `member` for a page answered at `now`; `own` for this node's own record.
    fn record(member: &Member<KEYS, VALUE_MAX>, own: bool, now: Instant) -> MemberRecord {
        let saturate = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
        let phi = (!own).then(|| member.phi(now)).flatten();
        MemberRecord {
            node: member.node,
            address: member.addr.into(),
            state: member.state,
            incarnation: member.incarnation,
            // `as` saturates (and maps NaN to 0).
            phi_milli: phi.map(|phi| (phi * 1000.0) as u32),
            heard_ms: (!own).then(|| member.heard_ms(now)).flatten().map(saturate),
        }
    }

    /// The record (this node's own included) with the smallest node id above `after`.
    fn next_record(&self, after: NodeId) -> Option<(&Member<KEYS, VALUE_MAX>, bool)> {
        let own = core::iter::once((&self.own, true));
        let others = self.members.iter().map(|member| (member, false));
        own.chain(others)
            .filter(|(member, _)| member.node > after)
            .min_by_key(|(member, _)| member.node)
    }

    /// A page of the member table for a client: the records above `after` in node id order, as
    /// many as fit. `None` when not even one fits the buffer.
    fn encode_members(
        &mut self,
        now: Instant,
        request: u64,
        after: NodeId,
        buffer: &mut [u8],
    ) -> Option<usize> {
        let (mut at, mut records, mut cursor, mut more) = (HEAD_LEN_MAX, 0u8, after, false);
        while let Some((member, own)) = self.next_record(cursor) {
            let record = Self::record(member, own, now);
            let end = match usize::from(records) < RECORDS_MAX {
                true => put(&record, buffer, at, buffer.len()),
                false => None,
            };
            let Some(end) = end else {
                more = true;
                break;
            };
            (at, records, cursor) = (end, records + 1, record.node);
        }
        if more && records == 0 {
            return None;
        }
        let message = Message::MembersPage {
            request,
            node: self.own.node,
            records,
            more,
        };
        self.seal(message, 0, buffer, at)
    }

    fn encode_outgoing(
        &mut self,
        now: Instant,
        outgoing: Outgoing,
        buffer: &mut [u8],
    ) -> Option<Transmit> {
        let (to, len) = match outgoing {
            Outgoing::Ping { to, seq } => (to, self.encode_plain(Message::Ping { seq }, buffer)),
            Outgoing::Ack { to, seq } => (to, self.encode_plain(Message::Ack { seq }, buffer)),
            Outgoing::Nack { to, seq } => (to, self.encode_plain(Message::Nack { seq }, buffer)),
            Outgoing::PingReq {
                to,
                seq,
                target,
                addr,
            } => {
                let address = addr.into();
                let message = Message::PingReq {
                    seq,
                    target,
                    address,
                };
                (to, self.encode_plain(message, buffer))
            }
            Outgoing::Digest { to } => (to, self.encode_digest(&[], true, true, buffer)),
            Outgoing::Members { to, request, after } => {
                (to, self.encode_members(now, request, after, buffer))
            }
        };
        Some(Transmit { to, len: len? })
    }

    fn encode_request(&mut self, request: &Request, buffer: &mut [u8]) -> Option<Transmit> {
        let len = match request.delta {
            true => self.encode_delta(&request.items, buffer),
            false => self.encode_digest(&request.items, request.window, false, buffer),
        };
        Some(Transmit {
            to: request.to,
            len: len?,
        })
    }
}

/// Indices of `member`'s entries above `base`, in version order.
fn ascending<const KEYS: usize, const VALUE_MAX: usize>(
    member: &Member<KEYS, VALUE_MAX>,
    base: u64,
) -> Vec<usize, KEYS> {
    let mut order: Vec<usize, KEYS> = (0..member.entries.len())
        .filter(|&index| member.entries[index].version > base)
        .collect();
    order.sort_unstable_by_key(|&index| member.entries[index].version);
    order
}

impl<const N: usize, const KEYS: usize, const VALUE_MAX: usize> Service
    for Membership<N, KEYS, VALUE_MAX>
{
    const KIND: u8 = service::kind::MEMBERSHIP;
    type Error = core::convert::Infallible;

    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]) {
        let Ok(head) = walk(payload, VALUE_MAX, &mut |_| {}) else {
            self.stats.malformed += 1;
            return;
        };
        match head.message {
            // A client's query: answered to its address only; the client is no member.
            Message::Members { request, after } => {
                let to = from.addr;
                self.send(Outgoing::Members { to, request, after });
                return;
            }
            // Pages go to clients, never to nodes; and a client takes part in nothing else.
            Message::MembersPage { .. } => {
                self.stats.malformed += 1;
                return;
            }
            _ if from.node.0 & CLIENT_ID_BIT != 0 => {
                self.stats.malformed += 1;
                return;
            }
            _ => {}
        }
        self.heard_from(now, from.node, from.addr, head.incarnation);
        let lists = self.apply_body(now, from, payload);
        self.dispatch(now, from, head.message, lists);
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        self.rng = SplitMix64::new(rng.next_u64());
        self.check_stall(now);
        self.last_tick = Some(now);
        self.expire_relays(now);
        if self.has_left() {
            return;
        }
        self.run_probe(now);
        if now >= self.next_probe {
            self.start_probe(now);
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.gossip();
        }
        self.expire(now);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        // Bounded by the queues: each pop either yields a datagram or drops one that cannot be
        // encoded into this buffer.
        for _ in 0..(super::OUTBOX + super::PULLS + super::REQUESTS) {
            let transmit = if let Some(outgoing) = self.outbox.pop_front() {
                self.encode_outgoing(now, outgoing, buffer)
            } else if let Some(pull) = self.take_pulls(now) {
                self.encode_request(&pull, buffer)
            } else {
                let request = self.requests.pop_front()?;
                self.encode_request(&request, buffer)
            };
            if let Some(transmit) = transmit {
                self.stats.datagrams_sent += 1;
                self.stats.bytes_sent += transmit.len as u64;
                return Some(transmit);
            }
            self.stats.unencodable += 1;
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let relays = self.relays.iter().map(|relay| relay.deadline).min();
        if self.has_left() {
            return relays;
        }
        let probe = self.probe.map(|probe| match probe.indirect_sent {
            true => probe.end,
            false => probe.indirect_at.min(probe.end),
        });
        [relays, probe, self.table_deadline()]
            .into_iter()
            .flatten()
            .fold(self.next_probe.min(self.next_gossip), Instant::min)
            .into()
    }

    fn commit(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
