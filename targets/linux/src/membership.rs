//! Membership in `bedrock node`, and `bedrock members --node ADDR`.
//!
//! A node runs core's SWIM + Lifeguard [`Membership`] (envelope kind 5) beside its other
//! services, wrapped in [`NodeMembership`], which after every loop iteration (in
//! [`Service::commit`], which the driver calls once per iteration after feeding every input)
//! drains the membership's events:
//!
//! - each change is logged on stderr, one line each, starting `membership: `: a member joined
//!   (or rejoined), was suspected, declared dead, left, was alive again (it refuted a
//!   suspicion), was forgotten (its tombstone expired), with its node id, address and
//!   incarnation; and `own incarnation bumped to N` when this node raised its own;
//! - when this node raised its own incarnation (to refute a suspicion, or to leave), the value
//!   is persisted in the data directory's `incarnation` file ([`incarnation::raise_to`]), so the
//!   next start begins above it. A failure to persist is a warning: the next start would then
//!   only be refuted once more.
//!
//! The membership's start incarnation is the node's (bumped at every start). Seeds are the
//! `--join` addresses, then the `--peer` ones (at most [`SEEDS_MAX`]); a node that knows no
//! live member pings and pulls from its seeds every probe period.
//!
//! `bedrock members` asks a node for its member table with the `Members` query (SPEC.md 12),
//! page by page, and prints one line per member, the node itself included.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::membership::{
    members_request, walk, Config, Event, Item, MemberRecord, Membership, Message, State, SEEDS_MAX,
};
use bedrock::rng::Rng;
use bedrock::service::{kind, Peer, Service, Transmit};
use bedrock::time::Instant;
use bedrock_std::{client, incarnation};

use crate::cluster::{client_error, client_for, Access};
use crate::error::{fail, Error};
use crate::output;

/// Other members a node's table holds (tombstones included).
pub const MEMBERS_MAX: usize = 256;

/// The membership a node runs: no application state.
pub type NodeMembershipCore = Membership<MEMBERS_MAX, 0, 0>;

/// The membership configuration of a node probing every `probe_interval`: the probe timeout is
/// half of it, a push-pull round runs every period, the rest are core's defaults (3 indirect
/// probes, suspicion 4 · max(1, log10 n) periods, up to 6 times that before confirmations,
/// 60 s tombstones).
pub fn config(probe_interval: Duration) -> Config {
    Config {
        probe_interval,
        probe_timeout: probe_interval / 2,
        gossip_interval: probe_interval,
        ..Config::default()
    }
}

/// The seeds of a node: `joins` then `peers`, without repeats or `listen`, at most
/// [`SEEDS_MAX`].
pub fn seeds(joins: &[SocketAddr], peers: &[SocketAddr], listen: SocketAddr) -> Vec<SocketAddr> {
    let mut seeds: Vec<SocketAddr> = Vec::new();
    for &seed in joins.iter().chain(peers) {
        if seed != listen && !seeds.contains(&seed) && seeds.len() < SEEDS_MAX {
            seeds.push(seed);
        }
    }
    seeds
}

/// A node's membership service: core's [`Membership`], whose events are logged and whose own
/// incarnation is persisted at each commit. See the [module docs](self).
#[derive(Debug)]
pub struct NodeMembership {
    inner: Box<NodeMembershipCore>,
    data: PathBuf,
}

impl NodeMembership {
    /// Node `id` at `listen`, started at `incarnation`, joining through `seeds`; bumps of its
    /// incarnation are persisted in `data`.
    pub fn new(
        config: Config,
        id: u32,
        listen: SocketAddr,
        incarnation: u32,
        seeds: &[SocketAddr],
        data: PathBuf,
    ) -> Self {
        let inner = NodeMembershipCore::new(config, NodeId(id), listen, incarnation, seeds);
        Self {
            inner: Box::new(inner),
            data,
        }
    }

    /// The membership itself.
    pub fn get(&self) -> &NodeMembershipCore {
        &self.inner
    }

    /// Announces that this node leaves (see [`Membership::leave`]).
    pub fn leave(&mut self) {
        self.inner.leave();
        self.drain();
    }

    /// Whether leaving is done: the announcement went out its share of times, or nobody is
    /// left to tell.
    pub fn left(&self) -> bool {
        self.inner.has_left() || self.inner.live_count() == 0
    }

    /// Logs every waiting event and persists a bumped incarnation.
    fn drain(&mut self) {
        while let Some(event) = self.inner.poll_event() {
            if let Event::IncarnationBumped { incarnation } = event {
                if let Err(error) = incarnation::raise_to(&self.data, incarnation) {
                    eprintln!(
                        "warning: cannot persist the membership incarnation {incarnation}: \
                         {error}; the next start will be refuted once more"
                    );
                }
            }
            if let Some(line) = describe(&self.inner, event) {
                eprintln!("membership: {line}");
            }
        }
    }
}

/// One line about `event`, as the membership knows the member now.
fn describe(membership: &NodeMembershipCore, event: Event) -> Option<String> {
    let about = |node: NodeId, what: &str, incarnation: Option<u32>| {
        let member = membership.member(node);
        let addr = member.map_or("?".to_string(), |member| member.addr().to_string());
        let incarnation = incarnation.or(member.map(|member| member.incarnation()));
        let incarnation = incarnation.map_or("?".to_string(), |value| value.to_string());
        format!(
            "node {} at {addr} {what} (incarnation {incarnation})",
            node.0
        )
    };
    Some(match event {
        Event::Joined { node, incarnation } => about(node, "joined", Some(incarnation)),
        Event::Suspected { node, incarnation } => about(node, "suspected", Some(incarnation)),
        Event::Alive { node, incarnation } => {
            about(node, "alive again (refuted)", Some(incarnation))
        }
        Event::Dead { node } => about(node, "dead", None),
        Event::Left { node } => about(node, "left", None),
        Event::Removed { node } => format!("node {} forgotten (tombstone expired)", node.0),
        Event::IncarnationBumped { incarnation } => {
            format!("own incarnation bumped to {incarnation}, persisted")
        }
        _ => return None,
    })
}

impl Service for NodeMembership {
    const KIND: u8 = kind::MEMBERSHIP;
    type Error = Infallible;

    fn handle_message(&mut self, now: Instant, from: Peer, payload: &[u8]) {
        self.inner.handle_message(now, from, payload);
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        self.inner.handle_timeout(now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<Transmit> {
        self.inner.poll_transmit(now, buffer)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn commit(&mut self) -> Result<(), Infallible> {
        self.drain();
        Ok(())
    }
}

/// One page of a node's member table.
struct Page {
    node: NodeId,
    records: Vec<MemberRecord>,
    more: bool,
}

fn decode_page(payload: &[u8], id: u64) -> Option<Page> {
    let mut records = Vec::new();
    let head = walk(payload, 0, &mut |item| {
        if let Item::Record(record) = item {
            records.push(record);
        }
    })
    .ok()?;
    match head.message {
        Message::MembersPage {
            request,
            node,
            more,
            ..
        } if request == id => Some(Page {
            node,
            records,
            more,
        }),
        _ => None,
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Alive => "alive",
        State::Suspect => "suspect",
        State::Dead => "dead",
        State::Left => "left",
    }
}

/// `bedrock members --node ADDR`: the node's member table, one line per member after a header:
/// `ID ADDRESS STATE INCARNATION PHI LAST_HEARD`, the node itself with `self` as LAST_HEARD.
pub fn members(node: SocketAddr, access: &Access) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let mut rows: Vec<(MemberRecord, bool)> = Vec::new();
    let mut after = NodeId(0);
    loop {
        let request = client::random_u64().map_err(|error| fail(error.to_string()))?;
        let page = client
            .request(
                kind::MEMBERSHIP,
                |area| members_request(request, after, area),
                |payload| decode_page(payload, request),
            )
            .map_err(client_error)?;
        // Pages rise strictly (checked by `walk`) and start above `after`.
        for record in page.records {
            if record.node <= after {
                return Err(fail(format!("{node} answered a page out of order")));
            }
            after = record.node;
            rows.push((record, record.node == page.node));
        }
        if !page.more {
            break;
        }
    }
    output::line(format_args!(
        "{:>10} {:<21} {:<7} {:>11} {:>8} {:>10}",
        "ID", "ADDRESS", "STATE", "INCARNATION", "PHI", "LAST_HEARD"
    ))?;
    for (record, own) in rows {
        let phi = record.phi_milli.map_or("-".to_string(), |milli| {
            format!("{}.{:03}", milli / 1000, milli % 1000)
        });
        let heard = match (own, record.heard_ms) {
            (true, _) => "self".to_string(),
            (false, Some(ms)) => format!("{ms}ms"),
            (false, None) => "-".to_string(),
        };
        let address = SocketAddr::from(record.address);
        output::line(format_args!(
            "{:>10} {:<21} {:<7} {:>11} {:>8} {:>10}",
            record.node.0,
            address.to_string(),
            state_name(record.state),
            record.incarnation,
            phi,
            heard
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
