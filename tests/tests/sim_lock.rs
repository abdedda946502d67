//! Seeded simulation of the distributed lock (issue 6, SPEC.md §13): one lock server node
//! ([`LockServer`] over a [`SimStorage`], in a services [`Driver`]), 3 to 6 contenders written
//! here as sans-IO state machines, and a fenced resource, all over the simulated network.
//!
//! Per seed (`SEED=n` runs one seed, `SIM_LOCK_SEEDS=n` changes the count of 1000; the
//! negative control runs `SIM_LOCK_CONTROL_SEEDS` seeds, 40 by default, `CONTROL_SEED=n` one):
//!
//! - **parameters**: a drift bound ε from 0.1 % to 5 % (`drift_ppm`), a `ttl_max` of 100 ms to
//!   2 s of virtual time, one or two lock names, each contender asking for a lease between
//!   `ttl_max / 2` and `ttl_max`, a checkpoint every 3 to 40 records, a write size of 1, 8 or 32
//!   bytes, a log of 8 segments of 4 KiB (4 in one seed of five);
//! - **clocks**: the server and every contender have their own monotonic clock, with a random
//!   offset and a rate fixed per seed in `[1 − ε, 1 + ε]` of true (simulated) time. The server's
//!   `now` is its clock; contenders count their leases on theirs. Half the server's reboots give
//!   it a fresh clock (same rate, new offset, often reading less than before). One main seed in
//!   four is **tight**: the server's clock at `1 + ε`, every contender's at `1 − ε` (the edge
//!   of the bound that favours overlap) and latencies of 0.1 to 0.3 ms, so only the rounding of
//!   leases, deadlines and guards separates two believers;
//! - **contenders** acquire (one request id re-sent until answered; on `Refused Held` they wait
//!   `retry_ms` by their clock, then ask again with a new request), believe they hold the lock
//!   from the receipt of `Granted` until [`holder_deadline`] (from the first send of the
//!   request it answers, by their own clock), renew at a third of the lease (a new request id
//!   per renewal, its first send remembered; a `Renewed` moves the deadline), write to the
//!   resource every sixth of their lease while they believe (each write carries the token),
//!   release sometimes, and check their deadline before acting on anything;
//! - **chaos phase** (40 `ttl_max`): loss (2 % to 20 %), duplication, delay jitter (reordering),
//!   bit flips; contenders **paused** (no processing at all, mostly longer than their ttl; half
//!   the pauses of a holder hit between its deadline check and its write, which goes out when
//!   it resumes), **partitioned** from the server (0.3 to 3 `ttl_max`), or **crashed for good**
//!   (a dead holder; each lock keeps two live contenders); the server's storage gets power cuts
//!   armed at one of its next operations (torn at a random byte), immediate power cuts and
//!   injected sync failures, and the node restarts after a downtime of up to 1.5 `ttl_max` with
//!   [`LockServer::open`] at its clock (recovery must succeed); a noise node sends the server
//!   lock messages with flipped bits, truncated or random bytes inside valid envelopes;
//! - **fenced resource**: a party of its own on the network (its datagrams delayed, lost,
//!   duplicated like the others), one [`Fence`] per lock name, recording every write it accepts
//!   and refuses;
//! - **calm phase**: no loss, no crashes, partitions healed, every live contender wants the
//!   lock; after a settling time the believing holder of each lock is crashed for good and the
//!   fail-over is measured; the lock must then be granted and believed again.
//!
//! Asserted per seed (a failure prints the seed):
//!
//! 1. **no two believers**: at no true instant do two contenders believe they hold the same
//!    lock (belief intervals in true time, ended at the deadline, a release, a refused renewal
//!    or a crash); the closest margin between one belief's end and another's start is reported;
//!    and, from the server's side, after every simulation step while the server is up: a
//!    contender that believes has the server's current token for that lock, whose guard has
//!    not passed (`free_at` after the server's now);
//! 2. **no stale write accepted**: every write the fenced resource ([`Fence`]) accepts carries
//!    a token at least every token accepted before (the test's own ledger), was granted by the
//!    server to that writer, and the fence refuses exactly the writes the ledger says are
//!    stale;
//! 3. **tokens never decrease**: every new token the server sends in a `Granted` is above every
//!    token sent before (grants of one commit taken together), across restarts (the next token
//!    after a recovery is above every token sent); a token goes to one party only. A grant made
//!    durable but never answered before a crash comes back from the log held by its holder:
//!    it joins the ledger at the recovery (its holder must match), and its later answer (a
//!    re-grant to that holder) is not a new token;
//! 4. **liveness of a dead holder's lock** (calm phase only: no server crash, no loss, no
//!    partition): the lock is granted to another contender no earlier than `ttl · (1 + ε)`
//!    after the dead holder's last grant or renewal (server clock: that would be unsafe) and
//!    within that plus one retry interval (`ttl_max / 8` plus two maximum latencies); the
//!    fail-over times are reported in ttl units;
//!
//! plus: bad input never panics, the server's counters agree with what it was seen to send,
//! and the noise was counted as malformed.
//!
//! **Negative control** (not counted in the seeds above): the server's clock runs at `1 + 3ε`
//! and each contender's at `1 ± 3ε`, outside the bound. The same run must then show overlapping
//! believers in some seeds (the test asserts at least one), which proves invariant 1 can fail.
//! Tokens and the fence are still asserted there.

mod lock_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::driver::Driver;
use bedrock::lock::{self, guarded, holder_deadline, Message, Refusal};
use bedrock::service::kind;
use bedrock::storage::Geometry;
use bedrock::time::Instant;
use bedrock::wire::{self, Wire};
use bedrock_sim::{NetFaults, SimFaults, SimNetwork, SimRng};
use lock_common::{
    after, key, margins, min_opt, open_server, quantile, recover_grants, seal_write, seeds, sweep,
    us, Add, Answer, Clock, Observed, Resource, Sent, Shared, CLUSTER, CONTROL_BASE, RESOURCE,
};

const SEEDS: u64 = 1000;
const CONTROL_SEEDS: u64 = 40;
/// Chaos lasts this many `ttl_max`.
const CHAOS_TTLS: u64 = 40;
const LOCK_NAMES: [&str; 2] = ["alpha", "beta"];
const NOISE_NAME: &[u8] = b"noise";
const TURNS_MAX: u64 = 2_000_000;
/// The noise node's party number in the ledger.
const NOISE_PARTY: usize = 99;

type ClientWire = Wire<1, 4>;

const SERVER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 0, 0, 1),
    7000,
));
const NOISE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 0, 2, 1),
    9000,
));

fn contender_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, index as u8 + 1], 9000))
}

struct Server {
    clock: Clock,
    config: lock::Config,
    incarnation: u32,
    running: Option<(Observed, Driver<1, 16>)>,
    storage: Shared,
    down_until: Option<Instant>,
    rng: SimRng,
    /// New tokens and renewals seen sent in this incarnation (for the stats check).
    seen_grants: u64,
    seen_renewals: u64,
    seen_releases: u64,
    seen_held: u64,
}

/// A request re-sent (same id) until answered.
#[derive(Debug, Clone, Copy)]
struct Out {
    request: u64,
    /// The contender's clock at the first send.
    first_sent: Option<Instant>,
    next_send: Instant,
    sends: u32,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    token: u64,
    /// The holder's deadline, by its clock.
    deadline: Instant,
    renew: Option<Out>,
    next_renew: Instant,
    next_write: Instant,
    release_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle { until: Instant },
    Acquiring(Out),
    Waiting { until: Instant },
    Holding(Hold),
    Releasing { out: Out, token: u64 },
}

struct Contender {
    addr: SocketAddr,
    lock: usize,
    ttl_ms: u64,
    clock: Clock,
    wire: ClientWire,
    next_request: u64,
    phase: Phase,
    dead: bool,
    paused_until: Option<Instant>,
    /// A write checked before a pause, sent when it resumes.
    held_write: Option<u64>,
    /// True time the current belief started.
    belief_start: Option<Instant>,
    /// True time of the next step.
    wake: Instant,
    write_seq: u64,
    eager: bool,
}

impl Contender {
    fn new_out(&mut self, local: Instant) -> Out {
        let request = self.next_request;
        self.next_request += 1;
        Out {
            request,
            first_sent: None,
            next_send: local,
            sends: 0,
        }
    }
}

struct Failover {
    lock: usize,
    dead: usize,
    killed_at: Instant,
    last_answer: Instant,
    expected_free: Instant,
    lease: Duration,
    regranted: Option<Instant>,
}

#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    grants: u64,
    regrants: u64,
    renewals: u64,
    releases: u64,
    /// Retried releases the server answered again.
    releases_repeated: u64,
    beliefs: u64,
    useless_grants: u64,
    leases_lapsed: u64,
    renewals_refused_stale: u64,
    pauses: u64,
    pauses_past_ttl: u64,
    delayed_writes: u64,
    partitions: u64,
    partitions_past_ttl: u64,
    server_crashes: u64,
    power_cuts_armed: u64,
    sync_failures: u64,
    recovery_retries: u64,
    contender_crashes: u64,
    writes_sent: u64,
    writes_accepted: u64,
    stale_writes_refused: u64,
    recovered_unanswered: u64,
    server_view_checks: u64,
    clock_resets: u64,
    overlaps: u64,
    overlap_seeds: u64,
    closest_margin_us: Option<i64>,
    tight_seeds: u64,
    tight_margin_us: Option<i64>,
    closest_margin_ttl: Option<f64>,
    failovers: Vec<f64>,
    noise_sent: u64,
    malformed: u64,
    checkpoints: u64,
    refusals: BTreeMap<String, u64>,
}

impl Add for Totals {
    fn add(&mut self, other: Totals) {
        self.seeds += other.seeds;
        self.grants += other.grants;
        self.regrants += other.regrants;
        self.renewals += other.renewals;
        self.releases += other.releases;
        self.releases_repeated += other.releases_repeated;
        self.beliefs += other.beliefs;
        self.useless_grants += other.useless_grants;
        self.leases_lapsed += other.leases_lapsed;
        self.renewals_refused_stale += other.renewals_refused_stale;
        self.pauses += other.pauses;
        self.pauses_past_ttl += other.pauses_past_ttl;
        self.delayed_writes += other.delayed_writes;
        self.partitions += other.partitions;
        self.partitions_past_ttl += other.partitions_past_ttl;
        self.server_crashes += other.server_crashes;
        self.power_cuts_armed += other.power_cuts_armed;
        self.sync_failures += other.sync_failures;
        self.recovery_retries += other.recovery_retries;
        self.contender_crashes += other.contender_crashes;
        self.writes_sent += other.writes_sent;
        self.writes_accepted += other.writes_accepted;
        self.stale_writes_refused += other.stale_writes_refused;
        self.recovered_unanswered += other.recovered_unanswered;
        self.server_view_checks += other.server_view_checks;
        self.clock_resets += other.clock_resets;
        self.overlaps += other.overlaps;
        self.overlap_seeds += other.overlap_seeds;
        self.closest_margin_us = min_opt(self.closest_margin_us, other.closest_margin_us);
        self.tight_seeds += other.tight_seeds;
        self.tight_margin_us = min_opt(self.tight_margin_us, other.tight_margin_us);
        self.closest_margin_ttl = match (self.closest_margin_ttl, other.closest_margin_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.failovers.extend(other.failovers);
        self.noise_sent += other.noise_sent;
        self.malformed += other.malformed;
        self.checkpoints += other.checkpoints;
        for (reason, count) in other.refusals {
            *self.refusals.entry(reason).or_default() += count;
        }
    }
}

struct Sim {
    seed: u64,
    control: bool,
    eps: u32,
    ttl_max: Duration,
    retry: Duration,
    backoff: Duration,
    chaos_faults: NetFaults,
    network: SimNetwork,
    rng: SimRng,
    server: Server,
    contenders: Vec<Contender>,
    locks: usize,
    resource: Resource,
    noise_wire: ClientWire,
    noise_request: u64,
    /// Token → the party it was granted to.
    holder_of: BTreeMap<u64, usize>,
    max_token: u64,
    /// Party → the server's clock at its last Granted or Renewed.
    last_answer: BTreeMap<usize, Instant>,
    beliefs: Vec<Vec<(usize, Instant, Instant)>>,
    partitions: Vec<(usize, Instant)>,
    failovers: Vec<Failover>,
    chaos: bool,
    violations: Vec<String>,
    totals: Totals,
}

impl Sim {
    fn new(seed: u64, control: bool) -> Self {
        let mut rng = SimRng::new(seed ^ 0x10C4_5EED);
        let eps = rng.between(1_000, 50_000) as u32;
        let ttl_max = Duration::from_millis(rng.between(100, 2_000));
        let count = rng.between(3, 6) as usize;
        let locks = if count >= 4 && rng.chance(0.5) { 2 } else { 1 };
        // One main seed in four is tight: every clock at the edge of the bound that favours
        // overlap (the server's fast, the contenders' slow) and latencies of 0.1 to 0.3 ms, so
        // only the rounding of leases, deadlines and guards stands between two believers.
        let tight = !control && seed % 4 == 3;
        let latency_max_us = if tight {
            300
        } else {
            rng.between(1_000, (us(ttl_max) / 20).max(1_000))
        };
        let retry = ttl_max / 8 + Duration::from_micros(2 * latency_max_us);
        let chaos_faults = NetFaults {
            drop: 0.02 + rng.below(19) as f64 / 100.0,
            duplicate: 0.05,
            corrupt: 0.01,
            latency_min_micros: 100,
            latency_max_micros: latency_max_us,
        };
        let mut network = SimNetwork::new(seed).with_faults(chaos_faults);
        for addr in [SERVER, RESOURCE, NOISE] {
            network.add_endpoint(addr);
        }
        let eps_i = i64::from(eps);
        let rate = |rng: &mut SimRng, contender: bool| -> i64 {
            if control {
                if contender && rng.chance(0.5) {
                    -3 * eps_i
                } else {
                    3 * eps_i
                }
            } else if tight {
                if contender {
                    -eps_i
                } else {
                    eps_i
                }
            } else {
                rng.between(0, 2 * eps as u64) as i64 - eps_i
            }
        };
        let server_clock = Clock {
            offset: rng.below(1_000_000_000),
            ppm: rate(&mut rng, false),
        };
        let contenders = (0..count)
            .map(|index| {
                let addr = contender_addr(index);
                network.add_endpoint(addr);
                let ttl_ms = rng.between(us(ttl_max) / 2_000, us(ttl_max) / 1_000);
                Contender {
                    addr,
                    lock: index % locks,
                    ttl_ms,
                    clock: Clock {
                        offset: rng.below(1_000_000_000),
                        ppm: rate(&mut rng, true),
                    },
                    wire: Wire::encrypted(CLUSTER, NodeId(100 + index as u32), 1, key()),
                    next_request: 1,
                    phase: Phase::Idle {
                        until: Instant::ZERO,
                    },
                    dead: false,
                    paused_until: None,
                    held_write: None,
                    belief_start: None,
                    wake: Instant::ZERO,
                    write_seq: 0,
                    eager: false,
                }
            })
            .collect();
        let geometry = Geometry {
            read_size: 1,
            write_size: [1, 8, 32][rng.below(3) as usize],
            erase_size: 4096,
            // One seed in five has a log of 4 segments, to hunt for reclamation wedges.
            capacity: if seed % 5 == 1 { 4 } else { 8 } * 4096,
            erased_value: 0xFF,
        };
        let storage = Shared::new(geometry, seed ^ 0x5703);
        storage.set_faults(SimFaults {
            sync_error_rate: 0.002,
            ..SimFaults::default()
        });
        let mut config = lock::Config {
            ttl_max,
            drift_ppm: eps,
            checkpoint_every: rng.between(3, 40) as u32,
            ..lock::Config::default()
        };
        config.log.segment_size = 4096;
        let server = Server {
            clock: server_clock,
            config,
            incarnation: 0,
            running: None,
            storage,
            down_until: Some(Instant::ZERO),
            rng: SimRng::new(seed ^ 0x5E4E),
            seen_grants: 0,
            seen_renewals: 0,
            seen_releases: 0,
            seen_held: 0,
        };
        Self {
            seed,
            control,
            eps,
            ttl_max,
            retry,
            backoff: ttl_max / 4,
            chaos_faults,
            network,
            rng,
            server,
            contenders,
            locks,
            resource: Resource::new(locks),
            noise_wire: Wire::encrypted(CLUSTER, NodeId(99), 1, key()),
            noise_request: 1,
            holder_of: BTreeMap::new(),
            max_token: 0,
            last_answer: BTreeMap::new(),
            beliefs: vec![Vec::new(); locks],
            partitions: Vec::new(),
            failovers: Vec::new(),
            chaos: true,
            violations: Vec::new(),
            totals: Totals {
                seeds: 1,
                tight_seeds: u64::from(tight),
                ..Totals::default()
            },
        }
    }

    fn now(&self) -> Instant {
        self.network.now()
    }

    fn violation(&mut self, text: String) {
        if self.violations.len() < 20 {
            self.violations.push(text);
        }
    }

    fn ttl_us(&self) -> u64 {
        us(self.ttl_max)
    }

    /// A random span of `low..high` hundredths of `ttl_max`.
    fn span(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_micros(self.ttl_us() * self.rng.between(low, high) / 100)
    }

    // ----- the server -----

    fn restart_server(&mut self) -> Result<(), String> {
        let now = self.now();
        if self.server.down_until.is_none_or(|at| at > now) {
            return Ok(());
        }
        if self.rng.chance(0.5) {
            // A reboot: a fresh monotonic clock (same rate), maybe reading less than before.
            self.server.clock.offset = self.rng.below(1_000_000_000);
            self.totals.clock_resets += 1;
        }
        let local = self.server.clock.local(now);
        self.server.incarnation += 1;
        let opened = open_server(&self.server.storage, self.server.config, local);
        let server = match opened {
            Ok(Some(server)) => server,
            Ok(None) => {
                // A sync failed during recovery: power-cycled, try again.
                self.totals.recovery_retries += 1;
                self.server.down_until = Some(after(now, 1_000));
                return Ok(());
            }
            Err(error) => {
                return Err(format!(
                    "seed {}: the lock server failed to recover: {error}",
                    self.seed
                ))
            }
        };
        if server.next_token() <= self.max_token {
            let (next, max) = (server.next_token(), self.max_token);
            self.violation(format!(
                "after restart {} the next token is {next}, but token {max} was granted",
                self.server.incarnation
            ));
        }
        // Grants recovered from the log were made before the crash, maybe never answered:
        // they join the ledger as granted (to the holder the log names), outside the order
        // check, which the next token above covers.
        let (new, wrong) = recover_grants(&server, &mut self.holder_of, Self::party_of_node);
        self.totals.recovered_unanswered += new;
        for text in wrong {
            self.violation(text);
        }
        let wire = Wire::encrypted(CLUSTER, NodeId(1), self.server.incarnation, key());
        self.server.running = Some((
            Observed {
                server,
                sent: Vec::new(),
            },
            Driver::new(wire),
        ));
        self.server.down_until = None;
        self.server.seen_grants = 0;
        self.server.seen_renewals = 0;
        self.server.seen_releases = 0;
        self.server.seen_held = 0;
        self.network.set_down(SERVER, false);
        Ok(())
    }

    /// The server's counters must agree with what it was seen to send.
    fn check_server_stats(&mut self) {
        let Some((services, driver)) = self.server.running.as_ref() else {
            return;
        };
        let stats = services.server.stats();
        let driven = driver.stats();
        let mut wrong = Vec::new();
        if stats.grants < self.server.seen_grants {
            wrong.push(format!(
                "{} grants counted, {} new tokens sent",
                stats.grants, self.server.seen_grants
            ));
        }
        if stats.renewals < self.server.seen_renewals {
            wrong.push(format!(
                "{} renewals counted, {} renewals and re-grants sent",
                stats.renewals, self.server.seen_renewals
            ));
        }
        // A retried release answered again counts as repeated, not as a second release.
        let releases = stats.releases + stats.releases_repeated;
        if releases < self.server.seen_releases || stats.held < self.server.seen_held {
            wrong.push(format!(
                "{} releases (and repeats) and {} held refusals counted, {} and {} sent",
                releases, stats.held, self.server.seen_releases, self.server.seen_held
            ));
        }
        self.totals.releases_repeated += stats.releases_repeated;
        if stats.malformed > driven.received || stats.syncs > driven.steps {
            wrong.push(format!("stats {stats:?} against driver {driven:?}"));
        }
        self.totals.malformed += stats.malformed;
        self.totals.checkpoints += stats.checkpoints;
        for text in wrong {
            self.violation(format!("server stats: {text}"));
        }
    }

    fn crash_server(&mut self) {
        self.check_server_stats();
        let now = self.now();
        self.server.running = None;
        self.server.storage.crash();
        self.network.clear_inbox(SERVER);
        self.network.set_down(SERVER, true);
        let downtime = self.span(0, 150);
        self.server.down_until = Some(now + downtime);
        self.totals.server_crashes += 1;
    }

    fn step_server(&mut self) {
        let now = self.now();
        if self.network.inbox_len(SERVER) == 0 {
            return;
        }
        let local = self.server.clock.local(now);
        let Some((services, driver)) = self.server.running.as_mut() else {
            return;
        };
        let mut buffer = [0u8; 1500];
        let mut endpoint = self.network.endpoint(SERVER);
        let stepped = driver.step(
            local,
            &mut endpoint,
            services,
            &mut self.server.rng,
            &mut buffer,
        );
        let sent = std::mem::take(&mut services.sent);
        self.observe(sent);
        if stepped.is_err() || self.server.storage.failed() {
            self.totals.sync_failures += u64::from(self.server.storage.poisoned());
            self.crash_server();
        }
    }

    fn party_of_node(node: NodeId) -> usize {
        match node.0 {
            100..=105 => node.0 as usize - 100,
            _ => NOISE_PARTY,
        }
    }

    fn party_of(addr: SocketAddr) -> usize {
        match addr {
            SocketAddr::V4(v4) if v4.ip().octets()[2] == 1 => usize::from(v4.ip().octets()[3]) - 1,
            _ => NOISE_PARTY,
        }
    }

    /// Checks the answers of one server step against the token ledger.
    fn observe(&mut self, sent: Vec<Sent>) {
        let mut new_tokens = Vec::new();
        for Sent { to, at, answer } in sent {
            let party = Self::party_of(to);
            match answer {
                Answer::Granted { token } => {
                    self.answered(party, at);
                    match self.holder_of.get(&token) {
                        Some(&holder) if holder != party => self.violation(format!(
                            "token {token} granted to party {holder}, then to party {party}"
                        )),
                        Some(_) => {
                            self.totals.regrants += 1;
                            self.server.seen_renewals += 1;
                        }
                        None => {
                            self.holder_of.insert(token, party);
                            new_tokens.push(token);
                            self.server.seen_grants += 1;
                            self.totals.grants += 1;
                            self.regranted(party, at);
                        }
                    }
                }
                Answer::Renewed => {
                    self.answered(party, at);
                    self.server.seen_renewals += 1;
                    self.totals.renewals += 1;
                }
                Answer::Released => {
                    self.totals.releases += 1;
                    self.server.seen_releases += 1;
                }
                Answer::Refused(reason) => {
                    self.server.seen_held += u64::from(reason == Refusal::Held);
                    *self
                        .totals
                        .refusals
                        .entry(format!("{reason:?}"))
                        .or_default() += 1;
                }
            }
        }
        if let Some(&lowest) = new_tokens.iter().min() {
            if lowest <= self.max_token {
                let max = self.max_token;
                self.violation(format!(
                    "token {lowest} granted after token {max}: tokens went down"
                ));
            }
            self.max_token = self
                .max_token
                .max(new_tokens.into_iter().max().unwrap_or(0));
        }
    }

    /// A grant or renewal answered to `party` at server time `at`: a holder killed with its
    /// renewal in flight is answered after its death, which moves its fail-over's start.
    fn answered(&mut self, party: usize, at: Instant) {
        self.last_answer.insert(party, at);
        let eps = self.eps;
        for failover in &mut self.failovers {
            if failover.dead == party && failover.regranted.is_none() {
                failover.last_answer = at;
                failover.expected_free = at + guarded(failover.lease, eps);
            }
        }
    }

    /// A new grant to `party`: the end of a fail-over being measured, if it is one.
    fn regranted(&mut self, party: usize, at: Instant) {
        let Some(lock) = self.contenders.get(party).map(|c| c.lock) else {
            return;
        };
        let Some(index) = self
            .failovers
            .iter()
            .position(|f| f.lock == lock && f.regranted.is_none() && f.dead != party)
        else {
            return;
        };
        let failover = &mut self.failovers[index];
        failover.regranted = Some(at);
        let (expected, last, lease) =
            (failover.expected_free, failover.last_answer, failover.lease);
        if at < expected {
            self.violation(format!(
                "lock {lock} re-granted at server time {at:?}, before the dead holder's lease \
                 and guard ended at {expected:?}"
            ));
        }
        if self.control {
            return;
        }
        let bound = expected + self.retry;
        if at > bound {
            self.violation(format!(
                "lock {lock}: fail-over took {:?} from the dead holder's last answer, more than \
                 ttl·(1+ε) plus a retry interval ({:?})",
                at.saturating_duration_since(last),
                bound.saturating_duration_since(last)
            ));
        }
        let ttls = at.saturating_duration_since(last).as_secs_f64() / lease.as_secs_f64();
        self.totals.failovers.push(ttls);
    }

    // ----- the resource -----

    fn step_resource(&mut self) {
        let writes = self.resource.receive(&mut self.network, &self.holder_of);
        self.totals.writes_accepted += writes.accepted;
        self.totals.stale_writes_refused += writes.refused;
        for text in writes.violations {
            self.violation(text);
        }
    }

    // ----- contenders -----

    fn send_lock(&mut self, index: usize, message: &Message<'_>) {
        let mut buffer = [0u8; 256];
        let len = lock::encode(message, &mut buffer[wire::HEADER_LEN..]).expect("encodes");
        let contender = &mut self.contenders[index];
        let sealed = contender
            .wire
            .seal(kind::LOCK, &mut buffer, len)
            .expect("seal");
        let _ = self.network.send(contender.addr, SERVER, &buffer[..sealed]);
    }

    fn send_write(&mut self, index: usize, token: u64) {
        let contender = &mut self.contenders[index];
        contender.write_seq += 1;
        let mut buffer = [0u8; 256];
        let write = (token, index, contender.lock, contender.write_seq);
        let sealed = seal_write(&mut contender.wire, &mut buffer, write);
        let _ = self
            .network
            .send(contender.addr, RESOURCE, &buffer[..sealed]);
        self.totals.writes_sent += 1;
    }

    /// The contender stops believing at true time `end`.
    fn end_belief(&mut self, index: usize, end: Instant) {
        let contender = &mut self.contenders[index];
        if let Some(start) = contender.belief_start.take() {
            if end > start {
                self.beliefs[contender.lock].push((index, start, end));
                self.totals.beliefs += 1;
            }
        }
    }

    fn idle_until(&mut self, index: usize, local: Instant) -> Instant {
        if self.contenders[index].eager {
            return local;
        }
        local + self.span(0, 100)
    }

    fn step_contender(&mut self, index: usize) {
        let now = self.now();
        let contender = &mut self.contenders[index];
        if contender.dead {
            return;
        }
        if let Some(until) = contender.paused_until {
            if until > now {
                return;
            }
            contender.paused_until = None;
            if let Some(token) = contender.held_write.take() {
                // Checked before the pause, sent after it: a stale write the fence must stop.
                self.send_write(index, token);
                self.totals.delayed_writes += 1;
            }
        }
        let contender = &mut self.contenders[index];
        let local = contender.clock.local(now);
        // A correct client checks its deadline before acting on anything.
        if let Phase::Holding(hold) = contender.phase {
            if local >= hold.deadline {
                let end = contender.clock.true_of(hold.deadline);
                contender.phase = Phase::Acquiring(contender.new_out(local));
                self.end_belief(index, end);
                self.totals.leases_lapsed += 1;
            }
        }
        let mut buffer = [0u8; 1500];
        let addr = self.contenders[index].addr;
        while let Ok(Some(received)) = self.network.recv(addr, &mut buffer) {
            let Ok(opened) = self.contenders[index]
                .wire
                .open(&mut buffer[..received.len])
            else {
                continue;
            };
            if opened.kind != kind::LOCK {
                continue;
            }
            match lock::decode(opened.payload) {
                Ok(message) => self.reply(index, now, local, message),
                Err(_) => self.violation("the server sent an undecodable answer".into()),
            }
        }
        self.act(index, now, local);
        let contender = &self.contenders[index];
        let wake = match contender.phase {
            Phase::Idle { until } | Phase::Waiting { until } => until,
            Phase::Acquiring(out) | Phase::Releasing { out, .. } => out.next_send,
            Phase::Holding(hold) => hold
                .deadline
                .min(hold.renew.map_or(hold.next_renew, |renew| renew.next_send))
                .min(hold.next_write)
                .min(match hold.renew {
                    // A release waits for the renewal in flight.
                    Some(_) => Instant::MAX,
                    None => hold.release_at.unwrap_or(Instant::MAX),
                }),
        };
        self.contenders[index].wake = self.contenders[index].clock.true_of(wake);
    }

    fn reply(&mut self, index: usize, now: Instant, local: Instant, message: Message<'_>) {
        let eps = self.eps;
        let phase = self.contenders[index].phase;
        match (phase, message) {
            (
                Phase::Acquiring(out),
                Message::Granted {
                    request,
                    token,
                    lease_ms,
                },
            ) if out.request == request => {
                let first = out.first_sent.expect("an answered request was sent");
                let deadline = holder_deadline(first, Duration::from_millis(lease_ms), eps);
                if self.holder_of.get(&token) != Some(&index) {
                    let holder = self.holder_of.get(&token).copied();
                    self.violation(format!(
                        "contender {index} received token {token}, granted to {holder:?}"
                    ));
                }
                let contender = &mut self.contenders[index];
                if local >= deadline {
                    // The answer came too late to act on: ask again.
                    contender.phase = Phase::Acquiring(contender.new_out(local));
                    self.totals.useless_grants += 1;
                    return;
                }
                let lease = Duration::from_millis(lease_ms);
                let (eager, ttl) = (contender.eager, contender.ttl_ms * 1_000);
                let release_at = (!eager && self.rng.chance(0.6))
                    .then(|| local + Duration::from_micros(ttl * self.rng.between(30, 300) / 100));
                let contender = &mut self.contenders[index];
                contender.phase = Phase::Holding(Hold {
                    token,
                    deadline,
                    renew: None,
                    next_renew: local + lease / 3,
                    next_write: local,
                    release_at,
                });
                contender.belief_start = Some(now);
            }
            (Phase::Holding(mut hold), Message::Renewed { request, lease_ms })
                if hold.renew.is_some_and(|renew| renew.request == request) =>
            {
                let renew = hold.renew.take().expect("checked");
                let first = renew.first_sent.expect("an answered request was sent");
                let lease = Duration::from_millis(lease_ms);
                hold.deadline = hold.deadline.max(holder_deadline(first, lease, eps));
                hold.next_renew = local + lease / 3;
                self.contenders[index].phase = Phase::Holding(hold);
            }
            (
                Phase::Acquiring(out),
                Message::Refused {
                    request,
                    reason,
                    retry_ms,
                },
            ) if out.request == request => {
                let wait = match reason {
                    Refusal::Held => Duration::from_millis(retry_ms.max(1)),
                    _ => self.backoff,
                };
                self.contenders[index].phase = Phase::Waiting {
                    until: local + wait,
                };
            }
            (
                Phase::Holding(mut hold),
                Message::Refused {
                    request, reason, ..
                },
            ) if hold.renew.is_some_and(|renew| renew.request == request) => {
                if reason == Refusal::StaleToken {
                    // The lease is gone: stop believing now.
                    self.end_belief(index, now);
                    let contender = &mut self.contenders[index];
                    contender.phase = Phase::Acquiring(contender.new_out(local));
                    self.totals.renewals_refused_stale += 1;
                } else {
                    hold.renew = None;
                    hold.next_renew = local + self.backoff;
                    self.contenders[index].phase = Phase::Holding(hold);
                }
            }
            (Phase::Releasing { out, .. }, Message::Released { request })
            | (Phase::Releasing { out, .. }, Message::Refused { request, .. })
                if out.request == request =>
            {
                let until = self.idle_until(index, local);
                self.contenders[index].phase = Phase::Idle { until };
            }
            _ => {}
        }
    }

    fn act(&mut self, index: usize, now: Instant, local: Instant) {
        let retry = self.retry;
        let contender = &mut self.contenders[index];
        let name = LOCK_NAMES[contender.lock].as_bytes();
        let ttl_ms = contender.ttl_ms;
        if let Phase::Idle { until } | Phase::Waiting { until } = contender.phase {
            if until <= local {
                contender.phase = Phase::Acquiring(contender.new_out(local));
            }
        }
        match self.contenders[index].phase {
            Phase::Acquiring(mut out) => {
                if out.next_send <= local {
                    let message = Message::Acquire {
                        request: out.request,
                        name,
                        ttl_ms,
                    };
                    self.send_lock(index, &message);
                    out.first_sent.get_or_insert(local);
                    out.next_send = local + retry;
                    out.sends += 1;
                }
                self.contenders[index].phase = Phase::Acquiring(out);
            }
            Phase::Holding(mut hold) => {
                if hold.release_at.is_some_and(|at| at <= local) && hold.renew.is_none() {
                    self.end_belief(index, now);
                    let contender = &mut self.contenders[index];
                    let mut out = contender.new_out(local);
                    out.first_sent = Some(local);
                    out.next_send = local + retry;
                    out.sends = 1;
                    contender.phase = Phase::Releasing {
                        out,
                        token: hold.token,
                    };
                    let message = Message::Release {
                        request: out.request,
                        name,
                        token: hold.token,
                    };
                    self.send_lock(index, &message);
                    return;
                }
                if hold.renew.is_none() && hold.next_renew <= local {
                    hold.renew = Some(self.contenders[index].new_out(local));
                }
                if let Some(renew) = hold.renew.as_mut() {
                    if renew.next_send <= local {
                        let message = Message::Renew {
                            request: renew.request,
                            name,
                            token: hold.token,
                            ttl_ms,
                        };
                        renew.first_sent.get_or_insert(local);
                        renew.next_send = local + retry;
                        renew.sends += 1;
                        self.send_lock(index, &message);
                    }
                }
                if hold.next_write <= local {
                    self.send_write(index, hold.token);
                    hold.next_write = local + Duration::from_millis(ttl_ms) / 6;
                }
                self.contenders[index].phase = Phase::Holding(hold);
            }
            Phase::Releasing { mut out, token } => {
                if out.next_send <= local {
                    if out.sends >= 3 {
                        let until = self.idle_until(index, local);
                        self.contenders[index].phase = Phase::Idle { until };
                        return;
                    }
                    let message = Message::Release {
                        request: out.request,
                        name,
                        token,
                    };
                    self.send_lock(index, &message);
                    out.next_send = local + retry;
                    out.sends += 1;
                    self.contenders[index].phase = Phase::Releasing { out, token };
                }
            }
            Phase::Idle { .. } | Phase::Waiting { .. } => {}
        }
    }

    // ----- chaos -----

    /// A live contender, a holder with probability `holder_bias` when there is one.
    fn pick(&mut self, holder_bias: f64, allow: impl Fn(&Sim, usize) -> bool) -> Option<usize> {
        let now = self.now();
        let live: Vec<usize> = (0..self.contenders.len())
            .filter(|&i| {
                let c = &self.contenders[i];
                !c.dead && c.paused_until.is_none_or(|until| until <= now) && allow(self, i)
            })
            .collect();
        let holders: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| matches!(self.contenders[i].phase, Phase::Holding(_)))
            .collect();
        let pool = if !holders.is_empty() && self.rng.chance(holder_bias) {
            holders
        } else {
            live
        };
        if pool.is_empty() {
            return None;
        }
        Some(pool[self.rng.below(pool.len() as u64) as usize])
    }

    fn alive_for(&self, lock: usize) -> usize {
        self.contenders
            .iter()
            .filter(|c| c.lock == lock && !c.dead)
            .count()
    }

    fn kill(&mut self, index: usize) {
        let now = self.now();
        self.end_belief(index, now);
        let contender = &mut self.contenders[index];
        contender.dead = true;
        contender.held_write = None;
        let addr = contender.addr;
        self.network.clear_inbox(addr);
        self.network.set_down(addr, true);
        self.totals.contender_crashes += 1;
    }

    fn disturb(&mut self) {
        let now = self.now();
        let roll = self.rng.below(100);
        if roll < 10 {
            if self.server.running.is_some() {
                self.crash_server();
            }
        } else if roll < 22 {
            if self.server.running.is_some() {
                self.server.storage.arm_power_cut(&mut self.rng, 6);
                self.totals.power_cuts_armed += 1;
            }
        } else if roll < 42 {
            let Some(index) = self.pick(0.6, |_, _| true) else {
                return;
            };
            let long = self.rng.chance(0.75);
            let pause = if long {
                self.span(110, 300)
            } else {
                self.span(10, 90)
            };
            let mid_write = self.rng.chance(0.5);
            let contender = &mut self.contenders[index];
            let local = contender.clock.local(now);
            if let Phase::Holding(hold) = contender.phase {
                if local < hold.deadline && mid_write {
                    // Paused between the deadline check and the write.
                    contender.held_write = Some(hold.token);
                }
            }
            contender.paused_until = Some(now + pause);
            contender.wake = now + pause;
            self.totals.pauses += 1;
            self.totals.pauses_past_ttl +=
                u64::from(pause > Duration::from_millis(contender.ttl_ms));
        } else if roll < 60 {
            let Some(index) = self.pick(0.6, |sim, i| sim.partitions.iter().all(|p| p.0 != i))
            else {
                return;
            };
            let span = self.span(30, 300);
            let addr = self.contenders[index].addr;
            self.network.cut_link(addr, SERVER);
            self.network.cut_link(SERVER, addr);
            self.partitions.push((index, now + span));
            self.totals.partitions += 1;
            self.totals.partitions_past_ttl +=
                u64::from(span > Duration::from_millis(self.contenders[index].ttl_ms));
        } else if roll < 68 {
            let Some(index) = self.pick(0.7, |sim, i| sim.alive_for(sim.contenders[i].lock) > 2)
            else {
                return;
            };
            self.kill(index);
        }
    }

    /// A lock message on the noise lock, garbled, in a valid envelope.
    fn send_noise(&mut self) {
        let request = self.noise_request;
        self.noise_request += 1;
        let ttl_ms = self.rng.between(1, (self.ttl_us() / 4_000).max(1));
        let token = self.rng.below(self.max_token + 2);
        let message = match self.rng.below(4) {
            0 => Message::Acquire {
                request,
                name: NOISE_NAME,
                ttl_ms,
            },
            1 => Message::Renew {
                request,
                name: NOISE_NAME,
                token,
                ttl_ms,
            },
            2 => Message::Release {
                request,
                name: NOISE_NAME,
                token,
            },
            _ => Message::Status {
                request,
                name: NOISE_NAME,
            },
        };
        let mut buffer = [0u8; 256];
        let body = &mut buffer[wire::HEADER_LEN..wire::HEADER_LEN + 64];
        let mut len = lock::encode(&message, body).expect("encodes");
        match self.rng.below(4) {
            0 | 1 => {
                for _ in 0..self.rng.between(1, 3) {
                    let bit = self.rng.below(len as u64 * 8);
                    body[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
            }
            2 => len = self.rng.below(len as u64) as usize,
            _ => {
                len = self.rng.between(1, 40) as usize;
                self.rng.fill_bytes(&mut body[..len]);
            }
        }
        let sealed = self
            .noise_wire
            .seal(kind::LOCK, &mut buffer, len)
            .expect("seal");
        let _ = self.network.send(NOISE, SERVER, &buffer[..sealed]);
        self.network.clear_inbox(NOISE);
        self.totals.noise_sent += 1;
    }

    /// The end of chaos: no loss, no crashes, partitions healed, every contender eager.
    fn calm(&mut self) {
        self.chaos = false;
        self.network.set_faults(NetFaults {
            drop: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            ..self.chaos_faults
        });
        self.network.heal();
        self.partitions.clear();
        let failed = self.server.storage.failed();
        self.server.storage.set_faults(SimFaults::default());
        if failed && self.server.running.is_some() {
            self.crash_server();
        }
        let now = self.now();
        for contender in &mut self.contenders {
            contender.eager = true;
            let local = contender.clock.local(now);
            match &mut contender.phase {
                Phase::Idle { until } => *until = local,
                Phase::Holding(hold) => hold.release_at = None,
                _ => {}
            }
            if contender.paused_until.is_none() {
                contender.wake = now;
            }
        }
    }

    fn next_event(&self, limit: Instant) -> Instant {
        let mut next = limit;
        if let Some(at) = self.network.next_delivery() {
            next = next.min(at);
        }
        if self.server.running.is_none() {
            if let Some(at) = self.server.down_until {
                next = next.min(at);
            }
        }
        for contender in self.contenders.iter().filter(|c| !c.dead) {
            next = next.min(contender.wake);
        }
        for &(_, end) in &self.partitions {
            next = next.min(end);
        }
        next.max(self.now())
    }

    fn step_all(&mut self) -> Result<(), String> {
        let now = self.now();
        if self.server.running.is_none() {
            self.restart_server()?;
        }
        let ended: Vec<usize> = self
            .partitions
            .iter()
            .filter(|p| p.1 <= now)
            .map(|p| p.0)
            .collect();
        self.partitions.retain(|p| p.1 > now);
        for index in ended {
            let addr = self.contenders[index].addr;
            self.network.restore_link(addr, SERVER);
            self.network.restore_link(SERVER, addr);
        }
        self.step_server();
        if self.network.inbox_len(RESOURCE) > 0 {
            self.step_resource();
        }
        for index in 0..self.contenders.len() {
            let contender = &self.contenders[index];
            if !contender.dead
                && (contender.wake <= now || self.network.inbox_len(contender.addr) > 0)
            {
                self.step_contender(index);
            }
        }
        self.check_server_view();
        Ok(())
    }

    /// The server's side of invariant 1: while a contender believes it holds a lock, the
    /// server (when up) has that lock under the believer's token and would not grant it to
    /// anyone else yet. Not checked in the negative control, whose clocks break the bound.
    fn check_server_view(&mut self) {
        if self.control {
            return;
        }
        let now = self.now();
        let Some((services, _)) = self.server.running.as_ref() else {
            return;
        };
        let server_now = self.server.clock.local(now);
        let mut wrong = Vec::new();
        for (index, contender) in self.contenders.iter().enumerate() {
            let Phase::Holding(hold) = contender.phase else {
                continue;
            };
            if contender.dead || contender.clock.local(now) >= hold.deadline {
                continue;
            }
            let name = LOCK_NAMES[contender.lock].as_bytes();
            let status = services.server.status(server_now, name);
            if status.token != hold.token || status.free_at <= server_now {
                wrong.push(format!(
                    "contender {index} believes it holds lock {} under token {}, but the \
                     server has {status:?} at {server_now:?}",
                    contender.lock, hold.token
                ));
            }
        }
        self.totals.server_view_checks += 1;
        for text in wrong {
            self.violation(text);
        }
    }

    /// Runs the simulation until `end` (true time).
    fn run_until(&mut self, end: Instant, turns: &mut u64) -> Result<(), String> {
        while self.now() < end {
            *turns += 1;
            if *turns > TURNS_MAX {
                return Err(format!(
                    "seed {}: the harness stopped advancing at {:?}",
                    self.seed,
                    self.now()
                ));
            }
            let next = self.next_event(end);
            self.network.advance_to(next);
            self.step_all()?;
        }
        Ok(())
    }

    /// A contender of `lock` that believes it holds it now.
    fn believer(&self, lock: usize) -> Option<usize> {
        let now = self.now();
        (0..self.contenders.len()).find(|&i| {
            let c = &self.contenders[i];
            !c.dead
                && c.lock == lock
                && c.paused_until.is_none()
                && matches!(c.phase, Phase::Holding(hold) if c.clock.local(now) < hold.deadline)
        })
    }

    /// Crashes the believing holder of `lock` for good and starts measuring its fail-over.
    fn kill_holder(&mut self, index: usize) {
        let now = self.now();
        let lock = self.contenders[index].lock;
        let lease = Duration::from_millis(self.contenders[index].ttl_ms);
        let last_answer = self
            .last_answer
            .get(&index)
            .copied()
            .unwrap_or(Instant::ZERO);
        self.kill(index);
        self.failovers.push(Failover {
            lock,
            dead: index,
            killed_at: now,
            last_answer,
            expected_free: last_answer + guarded(lease, self.eps),
            lease,
            regranted: None,
        });
    }

    /// The end-of-seed checks: beliefs, fail-overs, server stats.
    fn finish(&mut self) -> Result<(), String> {
        let now = self.now();
        for index in 0..self.contenders.len() {
            let contender = &self.contenders[index];
            if let (Phase::Holding(hold), false) = (contender.phase, contender.dead) {
                let end = contender.clock.true_of(hold.deadline).min(now);
                self.end_belief(index, end);
            }
        }
        for failover in &self.failovers {
            let lock = failover.lock;
            let believed_again = self.beliefs[lock]
                .iter()
                .any(|&(i, start, _)| i != failover.dead && start >= failover.killed_at);
            if failover.regranted.is_none() || !believed_again {
                self.violations.push(format!(
                    "lock {lock} was not granted again after its holder (contender {}) died",
                    failover.dead
                ));
            }
        }
        let mut overlaps = 0u64;
        for lock in 0..self.locks {
            for m in margins(&self.beliefs[lock]) {
                let (who, start, latest, margin) = (m.who, m.start, m.latest, m.micros);
                self.totals.closest_margin_us =
                    min_opt(self.totals.closest_margin_us, Some(margin));
                if self.totals.tight_seeds > 0 {
                    self.totals.tight_margin_us =
                        min_opt(self.totals.tight_margin_us, Some(margin));
                }
                let in_ttl = margin as f64 / self.ttl_us() as f64;
                self.totals.closest_margin_ttl = Some(
                    self.totals
                        .closest_margin_ttl
                        .map_or(in_ttl, |m| m.min(in_ttl)),
                );
                if margin < 0 {
                    overlaps += 1;
                    if !self.control {
                        self.violations.push(format!(
                            "lock {lock}: contender {who} believed from {start:?} while another \
                             believed until {latest:?} ({} µs of overlap)",
                            -margin
                        ));
                    }
                }
            }
        }
        self.totals.overlaps += overlaps;
        self.totals.overlap_seeds += u64::from(overlaps > 0);
        // The resource's record, replayed: accepted tokens never go down per lock, each was
        // granted to its writer, and every refused write was below one accepted before it.
        let wrong = self.resource.replay(&self.holder_of);
        self.violations.extend(wrong);
        self.check_server_stats();
        if self.violations.is_empty() {
            return Ok(());
        }
        Err(format!(
            "seed {} (ε {} ppm, ttl_max {:?}, {} contenders, {} locks, control {}): {}",
            self.seed,
            self.eps,
            self.ttl_max,
            self.contenders.len(),
            self.locks,
            self.control,
            self.violations.join("; ")
        ))
    }
}

fn run(seed: u64, control: bool) -> Result<Totals, String> {
    let mut sim = Sim::new(seed, control);
    let mut turns = 0u64;
    let ttl = sim.ttl_us();
    let chaos_end = Instant::from_micros(ttl * CHAOS_TTLS);
    let mut next_disturbance = Instant::from_micros(ttl / 2);
    let mut next_noise = Instant::from_micros(ttl / 4);
    while sim.now() < chaos_end {
        let until = next_disturbance.min(next_noise).min(chaos_end);
        sim.run_until(until, &mut turns)?;
        if sim.now() >= next_disturbance {
            sim.disturb();
            next_disturbance = sim.now() + sim.span(30, 120);
        }
        if sim.now() >= next_noise {
            sim.send_noise();
            next_noise = sim.now() + sim.span(10, 50);
        }
        if sim.violations.len() >= 20 {
            break;
        }
    }
    sim.calm();
    // Settle: every pause and downtime is over, every lock-delay passed, holders renewed.
    let guard = us(guarded(sim.ttl_max, sim.eps));
    let settled = sim.now() + Duration::from_micros(3 * guard) + sim.retry * 4;
    sim.run_until(settled, &mut turns)?;
    let mut waiting: Vec<usize> = (0..sim.locks).filter(|&l| sim.alive_for(l) >= 2).collect();
    let give_up = sim.now() + Duration::from_micros(4 * guard);
    while !waiting.is_empty() {
        if sim.now() >= give_up {
            return Err(format!(
                "seed {seed}: in the calm phase, locks {waiting:?} had no believing holder for \
                 4 ttl_max after settling"
            ));
        }
        waiting.retain(|&lock| match sim.believer(lock) {
            Some(index) => {
                sim.kill_holder(index);
                false
            }
            None => true,
        });
        let step = sim.now() + sim.retry / 4;
        sim.run_until(step, &mut turns)?;
    }
    let end = sim.now() + Duration::from_micros(3 * guard) + sim.retry * 2;
    while sim.now() < end && sim.failovers.iter().any(|f| f.regranted.is_none()) {
        let step = sim.now() + sim.retry / 4;
        sim.run_until(step, &mut turns)?;
    }
    // The new holders get their grants and write.
    let end = sim.now() + sim.ttl_max;
    sim.run_until(end, &mut turns)?;
    sim.finish()?;
    Ok(sim.totals)
}

#[test]
fn lock_leases_never_overlap_fence_stale_writes_and_fail_over_a_dead_holder() {
    let (t, mut failures) = sweep(seeds("SIM_LOCK_SEEDS", "SEED", SEEDS, 0), false, run);
    let (control, control_failures) = sweep(
        seeds(
            "SIM_LOCK_CONTROL_SEEDS",
            "CONTROL_SEED",
            CONTROL_SEEDS,
            CONTROL_BASE,
        ),
        true,
        run,
    );
    failures.extend(control_failures);
    let failovers = &t.failovers;
    let quantile = |q: f64| quantile(failovers, q);
    println!(
        "sim_lock: {} seeds (ε 0.1–5 %, ttl_max 100 ms–2 s, 3–6 contenders, 1–2 locks, clock \
         rates within 1 ± ε); 2–20 % loss, 5 % duplication, jitter, 1 % bit flips, sync failures",
        t.seeds
    );
    println!(
        "sim_lock: grants {} (+{} re-grants to the holder), renewals {}, releases {} ({} retries \
         answered again), beliefs {} ({} grants arrived too late to believe), leases lapsed {}, \
         renewals refused stale {}",
        t.grants,
        t.regrants,
        t.renewals,
        t.releases,
        t.releases_repeated,
        t.beliefs,
        t.useless_grants,
        t.leases_lapsed,
        t.renewals_refused_stale
    );
    println!(
        "sim_lock: pauses {} ({} past the ttl, {} writes held across one), partitions {} ({} \
         past the ttl), server crashes {} ({} power cuts armed, {} sync failures, {} recoveries \
         retried, {} with a fresh server clock), contender crashes {}",
        t.pauses,
        t.pauses_past_ttl,
        t.delayed_writes,
        t.partitions,
        t.partitions_past_ttl,
        t.server_crashes,
        t.power_cuts_armed,
        t.sync_failures,
        t.recovery_retries,
        t.clock_resets,
        t.contender_crashes
    );
    println!(
        "sim_lock: writes sent {}, accepted {}, stale refused by the fence {}; overlapping \
         believers {} (must be 0); closest margin {:.3} ms ({:.4} ttl_max); {} tight seeds (clocks \
         at the bound's worst edge, 0.1–0.3 ms latency): closest margin {:.3} ms",
        t.writes_sent,
        t.writes_accepted,
        t.stale_writes_refused,
        t.overlaps,
        t.closest_margin_us.unwrap_or(0) as f64 / 1000.0,
        t.closest_margin_ttl.unwrap_or(f64::NAN),
        t.tight_seeds,
        t.tight_margin_us.unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "sim_lock: fail-over of a dead holder ({} measured), from its last grant or renewal, in \
         units of its ttl: min {:.3}, median {:.3}, p99 {:.3}, max {:.3}",
        failovers.len(),
        quantile(0.0),
        quantile(0.5),
        quantile(0.99),
        quantile(1.0)
    );
    println!(
        "sim_lock: noise datagrams {}, counted malformed by the server {}, checkpoints {}; \
         grants recovered from the log never seen answered {}; server-side belief checks {}; \
         refusals {:?}",
        t.noise_sent,
        t.malformed,
        t.checkpoints,
        t.recovered_unanswered,
        t.server_view_checks,
        t.refusals
    );
    println!(
        "sim_lock: NEGATIVE CONTROL (clocks at 1 ± 3ε, server fast): {} seeds, {} with \
         overlapping believers ({} overlaps, worst margin {:.3} ms); stale writes refused {}",
        control.seeds,
        control.overlap_seeds,
        control.overlaps,
        control.closest_margin_us.unwrap_or(0) as f64 / 1000.0,
        control.stale_writes_refused
    );
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(t.overlaps, 0);
    if t.seeds >= 100 {
        assert!(t.malformed > 0, "the noise never reached the server");
        assert!(t.stale_writes_refused > 0, "no stale write was ever tried");
        assert!(!failovers.is_empty(), "no fail-over was measured");
    }
    if control.seeds >= 20 {
        assert!(
            control.overlap_seeds > 0,
            "the negative control never showed overlapping believers: the check cannot fail?"
        );
    }
}

#[test]
fn skewed_clock_converts_both_ways() {
    for ppm in [-150_000i64, -50_000, -1, 0, 1, 49_999, 150_000] {
        let clock = Clock {
            offset: 123_456_789,
            ppm,
        };
        for t in [0u64, 1, 999_999, 1_000_000, 37_000_123, 5_000_000_000] {
            let local = clock.local(Instant::from_micros(t));
            let back = clock.true_of(local);
            assert!(back.as_micros() <= t, "{ppm} {t}");
            assert!(clock.local(back) >= local, "{ppm} {t}");
            if back.as_micros() > 0 {
                let before = Instant::from_micros(back.as_micros() - 1);
                assert!(clock.local(before) < local, "{ppm} {t}");
            }
        }
    }
}
