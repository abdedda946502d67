//! Seeded simulation of quorum locks (issue 6, SPEC.md §13.5): 3 or 5 independent lock servers
//! (each a [`LockServer`] over its own [`SimStorage`], in its own services [`Driver`], with its
//! own skewed clock), 2 to 5 contenders each driving the core [`QuorumLock`] client in a
//! [`Driver`] of its own, and a fenced resource, all over the simulated network.
//!
//! Per seed (`SEED=n` runs one seed, `SIM_LOCK_QUORUM_SEEDS=n` changes the count of 1000; the
//! negative control runs `SIM_LOCK_QUORUM_CONTROL_SEEDS` seeds, 40 by default,
//! `CONTROL_SEED=n` one):
//!
//! - **parameters**: a drift bound ε from 0.1 % to 5 %, a `ttl_max` of 100 ms to 2 s, each
//!   contender asking for a lease between `ttl_max / 2` and `ttl_max`, retries every
//!   `ttl_max / 8` plus two maximum latencies, attempts of three retry intervals;
//! - **clocks**: every server and contender has its own monotonic clock, with a random offset
//!   and a rate in `[1 − ε, 1 + ε]`; half the server reboots give a fresh clock. One main seed
//!   in four is **tight**: servers at `1 + ε`, contenders at `1 − ε`, latencies of 0.1 to
//!   0.3 ms;
//! - **counters that diverge**: in one seed of three, one server's token counter starts far
//!   ahead (a lock granted and released under a floor of 50 to 5000 before the run); crashes,
//!   partitions and attempts that reach some servers only make them diverge further. The
//!   totals count the server grants that step 2's floor lifted above the server's own counter
//!   (each one a server whose lower counter a "max of step 1 without step 2" client would have
//!   left behind, for a later holder's step 1 to read) and the acquisitions where a server held
//!   the holder's grant under a token above `T` (its counter ahead); a naive client is not run
//!   side by side, so how many token decreases it would have caused is not measured;
//! - **contenders** call [`QuorumLock::acquire`]; on [`Event::Failed`] they try again at
//!   `retry_at` plus a random delay (up to `ttl_max / 4`); while they hold the lock they write
//!   to the resource every sixth of their lease, each write checked against
//!   [`QuorumLock::held_until`] just before it is sent; they release sometimes;
//! - **chaos phase** (30 `ttl_max`): loss (2 % to 20 %), duplication, jitter, bit flips, sync
//!   failures; contenders **paused** (mostly past their ttl; half the pauses of a holder hit
//!   between its check and its write, which goes out when it resumes) or **crashed for good**
//!   (two stay alive); **partitions** (0.3 to 3 `ttl_max`) cutting a contender from a minority
//!   of the servers, from a majority, or splitting the servers (with some contenders) in two;
//!   **server power cuts** (immediate, or armed at one of the next storage operations) and
//!   restarts with [`LockServer::open`] after up to 1.5 `ttl_max`, usually leaving a majority
//!   up, in one cut of five with no such care (the lock may then be unavailable, never unsafe:
//!   each restarted server keeps its lock-delay);
//! - **calm phase**: no loss, every server up, partitions healed, every live contender wants
//!   the lock; after a settling time the believing holder is crashed for good and the
//!   fail-over is measured.
//!
//! Asserted per seed (a failure prints the seed):
//!
//! 1. **no two believers**: at no true instant do two contenders have `held_until` in the
//!    future (belief intervals in true time: from the `Acquired` event to the last
//!    `held_until` seen, a release or a crash); the closest margin is reported. From the
//!    servers' side, after every step: a believer has, on a majority of servers, either the
//!    server down or the lock held in its name with `free_at` ahead of the server's clock;
//! 2. **no stale write accepted**: the resource's [`Fence`] accepts only tokens at least every
//!    token it accepted before (the test's own ledger), each one a token its writer got in an
//!    `Event::Acquired`, and refuses exactly the writes the ledger says are stale;
//! 3. **tokens strictly increase across holders**: ordered by the true time of the `Acquired`
//!    events, each token is above the one before (the same holder getting the same token back
//!    is counted apart); no token is acquired by two contenders; and each server's new grants
//!    carry tokens above all it sent before, across restarts;
//! 4. **liveness of a dead holder's lock** (calm phase): after the holder is crashed at `K`,
//!    another contender acquires by `K + L + lease · (1 + ε)² / (1 − ε) + 2 · (J + A) + 4 · L`,
//!    `L` the maximum latency, `J` the maximum retry delay and `A` the attempt timeout: its
//!    leases end on every server by the first two terms (a renewal in flight lands at most
//!    `L` after the crash; a server's `ttl · (1 + ε)` is at most that long in true time), a
//!    waiting contender was told when to retry by a server (the `(1 + ε)` of the clocks
//!    between them), and may lose one attempt to another waiting contender before it wins
//!    (each: a retry delay, then an attempt); the fail-overs are reported in units of the
//!    dead holder's ttl.
//!
//! `TRACE=1` prints every client event (with `SEED=n`).
//!
//! **Negative control** (not counted): the servers' clocks at `1 + 3ε`, each contender's at
//! `1 ± 3ε`, outside the bound: invariant 1 must fail in some seed (the test asserts at least
//! one overlap). Tokens and the fence are still asserted there.

mod lock_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::driver::Driver;
use bedrock::lock::quorum::{Event, QuorumConfig, QuorumLock};
use bedrock::lock::{self, guarded};
use bedrock::service::Service;
use bedrock::storage::Geometry;
use bedrock::time::Instant;
use bedrock::wire::Wire;
use bedrock_sim::{NetFaults, SimFaults, SimNetwork, SimRng};
use lock_common::{
    after, key, margins, min_f64, min_opt, open_server, quantile, recover_grants, seal_write,
    seeds, sweep, us, Add, Answer, Clock, Observed, Resource, Sent, Shared, CLUSTER, CONTROL_BASE,
    RESOURCE,
};

const SEEDS: u64 = 1000;
const CONTROL_SEEDS: u64 = 40;
/// Chaos lasts this many `ttl_max`.
const CHAOS_TTLS: u64 = 30;
const NAME: &[u8] = b"quorum";
const TURNS_MAX: u64 = 2_000_000;
/// The party of grants made by the harness (the pre-bump) in the servers' ledgers.
const HARNESS_PARTY: usize = 99;

fn server_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, index as u8 + 1], 7000))
}

fn contender_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, index as u8 + 1], 9000))
}

fn contender_node(index: usize) -> NodeId {
    NodeId(0x8000_0000 | (100 + index as u32))
}

fn party_of_node(node: NodeId) -> usize {
    match node.0 & 0x7FFF_FFFF {
        n @ 100..=104 => n as usize - 100,
        _ => HARNESS_PARTY,
    }
}

fn party_of(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(v4) if v4.ip().octets()[2] == 1 => usize::from(v4.ip().octets()[3]) - 1,
        _ => HARNESS_PARTY,
    }
}

struct Server {
    addr: SocketAddr,
    clock: Clock,
    config: lock::Config,
    incarnation: u32,
    running: Option<(Observed, Driver<1, 16>)>,
    storage: Shared,
    down_until: Option<Instant>,
    rng: SimRng,
    /// Pre-bump this server's counter to this floor at its first start.
    bump: Option<u64>,
    /// Token → party, as this server was seen to send them (or recovered them).
    known: BTreeMap<u64, usize>,
    max_token: u64,
    /// The highest token this server's own counter reached, as far as seen.
    counter: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Calls `acquire` at `until` (its clock).
    Idle { until: Instant },
    /// An acquire or a release under way: waiting for its event.
    Busy,
    Held {
        token: u64,
        next_write: Instant,
        release_at: Option<Instant>,
    },
}

struct Contender {
    addr: SocketAddr,
    lease: Duration,
    clock: Clock,
    lock: QuorumLock<5>,
    driver: Driver<1, 8>,
    rng: SimRng,
    state: State,
    dead: bool,
    paused_until: Option<Instant>,
    /// A write checked before a pause, sent when it resumes.
    held_write: Option<u64>,
    /// True time the current belief started.
    belief_start: Option<Instant>,
    /// The last `held_until` seen while believing (its clock).
    belief_deadline: Instant,
    /// True time of the next step.
    wake: Instant,
    write_seq: u64,
    eager: bool,
}

struct Partition {
    /// Links cut both ways.
    links: Vec<(SocketAddr, SocketAddr)>,
    end: Instant,
}

struct Failover {
    dead: usize,
    killed_at: Instant,
    lease: Duration,
    bound: Duration,
    acquired: Option<Instant>,
}

#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    five_server_seeds: u64,
    bumped_seeds: u64,
    tight_seeds: u64,
    contenders: u64,
    attempts: u64,
    acquisitions: u64,
    same_holder_repeats: u64,
    divergent_acquisitions: u64,
    failed: u64,
    losses: u64,
    releases: u64,
    beliefs: u64,
    requests_sent: u64,
    request_retries: u64,
    pauses: u64,
    pauses_past_ttl: u64,
    delayed_writes: u64,
    partitions_minority: u64,
    partitions_majority: u64,
    partitions_split: u64,
    server_crashes: u64,
    power_cuts_armed: u64,
    majority_down: u64,
    sync_failures: u64,
    recovery_retries: u64,
    clock_resets: u64,
    contender_crashes: u64,
    server_grants: u64,
    floor_lifted: u64,
    writes_sent: u64,
    writes_accepted: u64,
    stale_writes_refused: u64,
    server_view_checks: u64,
    overlaps: u64,
    overlap_seeds: u64,
    closest_margin_us: Option<i64>,
    closest_margin_ttl: Option<f64>,
    tight_margin_us: Option<i64>,
    token_decreases: u64,
    failovers: Vec<f64>,
    failover_bounds: Vec<f64>,
    refusals: BTreeMap<String, u64>,
}

impl Add for Totals {
    fn add(&mut self, o: Totals) {
        self.seeds += o.seeds;
        self.five_server_seeds += o.five_server_seeds;
        self.bumped_seeds += o.bumped_seeds;
        self.tight_seeds += o.tight_seeds;
        self.contenders += o.contenders;
        self.attempts += o.attempts;
        self.acquisitions += o.acquisitions;
        self.same_holder_repeats += o.same_holder_repeats;
        self.divergent_acquisitions += o.divergent_acquisitions;
        self.failed += o.failed;
        self.losses += o.losses;
        self.releases += o.releases;
        self.beliefs += o.beliefs;
        self.requests_sent += o.requests_sent;
        self.request_retries += o.request_retries;
        self.pauses += o.pauses;
        self.pauses_past_ttl += o.pauses_past_ttl;
        self.delayed_writes += o.delayed_writes;
        self.partitions_minority += o.partitions_minority;
        self.partitions_majority += o.partitions_majority;
        self.partitions_split += o.partitions_split;
        self.server_crashes += o.server_crashes;
        self.power_cuts_armed += o.power_cuts_armed;
        self.majority_down += o.majority_down;
        self.sync_failures += o.sync_failures;
        self.recovery_retries += o.recovery_retries;
        self.clock_resets += o.clock_resets;
        self.contender_crashes += o.contender_crashes;
        self.server_grants += o.server_grants;
        self.floor_lifted += o.floor_lifted;
        self.writes_sent += o.writes_sent;
        self.writes_accepted += o.writes_accepted;
        self.stale_writes_refused += o.stale_writes_refused;
        self.server_view_checks += o.server_view_checks;
        self.overlaps += o.overlaps;
        self.overlap_seeds += o.overlap_seeds;
        self.closest_margin_us = min_opt(self.closest_margin_us, o.closest_margin_us);
        self.closest_margin_ttl = min_f64(self.closest_margin_ttl, o.closest_margin_ttl);
        self.tight_margin_us = min_opt(self.tight_margin_us, o.tight_margin_us);
        self.token_decreases += o.token_decreases;
        self.failovers.extend(o.failovers);
        self.failover_bounds.extend(o.failover_bounds);
        for (reason, count) in o.refusals {
            *self.refusals.entry(reason).or_default() += count;
        }
    }
}

struct Sim {
    seed: u64,
    control: bool,
    tight: bool,
    eps: u32,
    ttl_max: Duration,
    latency_max: Duration,
    jitter_max: Duration,
    attempt_timeout: Duration,
    chaos_faults: NetFaults,
    network: SimNetwork,
    rng: SimRng,
    servers: Vec<Server>,
    contenders: Vec<Contender>,
    resource: Resource,
    /// Token → the contender that got it in `Event::Acquired`.
    holder_of: BTreeMap<u64, usize>,
    /// The last `Acquired`: contender, token.
    last_acquired: Option<(usize, u64)>,
    beliefs: Vec<(usize, Instant, Instant)>,
    partitions: Vec<Partition>,
    failover: Option<Failover>,
    violations: Vec<String>,
    totals: Totals,
}

impl Sim {
    fn new(seed: u64, control: bool) -> Self {
        let mut rng = SimRng::new(seed ^ 0x0C0A_5EED);
        let eps = rng.between(1_000, 50_000) as u32;
        let ttl_max = Duration::from_millis(rng.between(100, 2_000));
        let n = if rng.chance(0.5) { 3 } else { 5 };
        let count = rng.between(2, 5) as usize;
        let tight = !control && seed % 4 == 3;
        let latency_max_us = if tight {
            300
        } else {
            rng.between(1_000, (us(ttl_max) / 20).max(1_000))
        };
        let latency_max = Duration::from_micros(latency_max_us);
        let retry = ttl_max / 8 + latency_max * 2;
        let attempt_timeout = retry * 3;
        let chaos_faults = NetFaults {
            drop: 0.02 + rng.below(19) as f64 / 100.0,
            duplicate: 0.05,
            corrupt: 0.01,
            latency_min_micros: 100,
            latency_max_micros: latency_max_us,
        };
        let mut network = SimNetwork::new(seed).with_faults(chaos_faults);
        network.add_endpoint(RESOURCE);
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
        let bumped = rng.below(3) == 0;
        let bumped_server = rng.below(n as u64) as usize;
        let servers: Vec<Server> = (0..n)
            .map(|index| {
                let addr = server_addr(index);
                network.add_endpoint(addr);
                let geometry = Geometry {
                    read_size: 1,
                    write_size: [1, 8, 32][rng.below(3) as usize],
                    erase_size: 4096,
                    capacity: 8 * 4096,
                    erased_value: 0xFF,
                };
                let mut config = lock::Config {
                    ttl_max,
                    drift_ppm: eps,
                    checkpoint_every: rng.between(3, 40) as u32,
                    ..lock::Config::default()
                };
                config.log.segment_size = 4096;
                Server {
                    addr,
                    clock: Clock {
                        offset: rng.below(1_000_000_000),
                        ppm: rate(&mut rng, false),
                    },
                    config,
                    incarnation: 0,
                    running: None,
                    storage: Shared::new(geometry, seed ^ 0x5703 ^ (index as u64) << 20),
                    down_until: Some(Instant::ZERO),
                    rng: SimRng::new(seed ^ 0x5E4E ^ (index as u64) << 24),
                    bump: (bumped && index == bumped_server).then(|| rng.between(50, 5_000)),
                    known: BTreeMap::new(),
                    max_token: 0,
                    counter: 0,
                }
            })
            .collect();
        let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
        let contenders = (0..count)
            .map(|index| {
                let addr = contender_addr(index);
                network.add_endpoint(addr);
                let lease =
                    Duration::from_millis(rng.between(us(ttl_max) / 2_000, us(ttl_max) / 1_000));
                let config = QuorumConfig {
                    ttl: lease,
                    drift_ppm: eps,
                    retry_interval: retry,
                    attempt_timeout,
                };
                let lock = QuorumLock::new(NAME, &addrs, config, rng.next_u64() >> 8)
                    .expect("a valid quorum lock");
                let wire = Wire::encrypted(CLUSTER, contender_node(index), 1, key());
                Contender {
                    addr,
                    lease,
                    clock: Clock {
                        offset: rng.below(1_000_000_000),
                        ppm: rate(&mut rng, true),
                    },
                    lock,
                    driver: Driver::new(wire),
                    rng: rng.fork(),
                    state: State::Idle {
                        until: Instant::ZERO,
                    },
                    dead: false,
                    paused_until: None,
                    held_write: None,
                    belief_start: None,
                    belief_deadline: Instant::ZERO,
                    wake: Instant::ZERO,
                    write_seq: 0,
                    eager: false,
                }
            })
            .collect();
        Self {
            seed,
            control,
            tight,
            eps,
            ttl_max,
            latency_max,
            jitter_max: ttl_max / 4,
            attempt_timeout,
            chaos_faults,
            network,
            rng,
            servers,
            contenders,
            resource: Resource::new(1),
            holder_of: BTreeMap::new(),
            last_acquired: None,
            beliefs: Vec::new(),
            partitions: Vec::new(),
            failover: None,
            violations: Vec::new(),
            totals: Totals {
                seeds: 1,
                five_server_seeds: u64::from(n == 5),
                bumped_seeds: u64::from(bumped),
                tight_seeds: u64::from(tight),
                contenders: count as u64,
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

    fn majority(&self) -> usize {
        self.servers.len() / 2 + 1
    }

    fn servers_down(&self) -> usize {
        self.servers.iter().filter(|s| s.running.is_none()).count()
    }

    // ----- servers -----

    fn restart_server(&mut self, index: usize) -> Result<(), String> {
        let now = self.now();
        let server = &mut self.servers[index];
        if server.down_until.is_none_or(|at| at > now) {
            return Ok(());
        }
        if server.incarnation > 0 && self.rng.chance(0.5) {
            // A reboot: a fresh monotonic clock (same rate), maybe reading less than before.
            server.clock.offset = self.rng.below(1_000_000_000);
            self.totals.clock_resets += 1;
        }
        let local = server.clock.local(now);
        server.incarnation += 1;
        let opened = open_server(&server.storage, server.config, local);
        let mut lock_server = match opened {
            Ok(Some(lock_server)) => lock_server,
            Ok(None) => {
                // A sync failed during recovery: power-cycled, try again.
                self.totals.recovery_retries += 1;
                server.down_until = Some(after(now, 1_000));
                return Ok(());
            }
            Err(error) => {
                return Err(format!(
                    "seed {}: lock server {index} failed to recover: {error}",
                    self.seed
                ))
            }
        };
        if let Some(floor) = server.bump.take() {
            // This server's counter runs far ahead of the others'.
            let ttl = Duration::from_millis(1);
            let grant = lock_server
                .acquire_at_least(local, b"bump", NodeId(7), ttl, floor)
                .expect("a fresh server grants");
            lock_server
                .release(local, b"bump", grant.token)
                .expect("releases");
            Service::commit(&mut lock_server).expect("no storage faults yet");
            server.known.insert(grant.token, HARNESS_PARTY);
            server.max_token = grant.token;
        }
        if server.incarnation == 1 {
            server.storage.set_faults(SimFaults {
                sync_error_rate: 0.002,
                ..SimFaults::default()
            });
        }
        let mut wrong = Vec::new();
        if lock_server.next_token() <= server.max_token {
            wrong.push(format!(
                "server {index} after restart {}: next token {}, but token {} was granted",
                server.incarnation,
                lock_server.next_token(),
                server.max_token
            ));
        }
        // Grants recovered from the log were made before the crash, maybe never answered.
        let (_, recovered_wrong) = recover_grants(&lock_server, &mut server.known, party_of_node);
        wrong.extend(
            recovered_wrong
                .into_iter()
                .map(|text| format!("server {index}: {text}")),
        );
        server.counter = server.counter.max(lock_server.next_token() - 1);
        let wire = Wire::encrypted(CLUSTER, NodeId(1 + index as u32), server.incarnation, key());
        server.running = Some((
            Observed {
                server: lock_server,
                sent: Vec::new(),
            },
            Driver::new(wire),
        ));
        server.down_until = None;
        let addr = server.addr;
        self.network.set_down(addr, false);
        for text in wrong {
            self.violation(text);
        }
        Ok(())
    }

    fn crash_server(&mut self, index: usize) {
        let now = self.now();
        let downtime = self.span(0, 150);
        let server = &mut self.servers[index];
        server.running = None;
        server.storage.crash();
        self.network.clear_inbox(server.addr);
        self.network.set_down(server.addr, true);
        server.down_until = Some(now + downtime);
        self.totals.server_crashes += 1;
    }

    fn step_server(&mut self, index: usize) {
        let now = self.now();
        let server = &mut self.servers[index];
        if self.network.inbox_len(server.addr) == 0 {
            return;
        }
        let local = server.clock.local(now);
        let Some((services, driver)) = server.running.as_mut() else {
            return;
        };
        let mut buffer = [0u8; 1500];
        let mut endpoint = self.network.endpoint(server.addr);
        let stepped = driver.step(local, &mut endpoint, services, &mut server.rng, &mut buffer);
        let sent = std::mem::take(&mut services.sent);
        self.observe(index, sent);
        let server = &self.servers[index];
        if stepped.is_err() || server.storage.failed() {
            self.totals.sync_failures += u64::from(server.storage.poisoned());
            self.crash_server(index);
        }
    }

    /// Checks one server step's answers against that server's token ledger.
    fn observe(&mut self, index: usize, sent: Vec<Sent>) {
        let mut new_tokens = Vec::new();
        let mut wrong = Vec::new();
        let server = &mut self.servers[index];
        for Sent { to, answer, .. } in sent {
            let party = party_of(to);
            match answer {
                Answer::Granted { token } => match server.known.get(&token) {
                    Some(&holder) if holder != party => wrong.push(format!(
                        "server {index} granted token {token} to party {holder}, then to \
                         party {party}"
                    )),
                    Some(_) => {}
                    None => {
                        server.known.insert(token, party);
                        new_tokens.push(token);
                        self.totals.server_grants += 1;
                        // Above the server's own next token: a floor (step 2's `T`) lifted it.
                        self.totals.floor_lifted += u64::from(token > server.counter + 1);
                        server.counter = server.counter.max(token);
                    }
                },
                Answer::Refused(reason) => {
                    *self
                        .totals
                        .refusals
                        .entry(format!("{reason:?}"))
                        .or_default() += 1;
                }
                Answer::Renewed | Answer::Released => {}
            }
        }
        if let Some(&lowest) = new_tokens.iter().min() {
            if lowest <= server.max_token {
                wrong.push(format!(
                    "server {index} granted token {lowest} after token {}: its tokens went down",
                    server.max_token
                ));
            }
            server.max_token = server.max_token.max(*new_tokens.iter().max().expect("one"));
        }
        for text in wrong {
            self.violation(text);
        }
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

    fn send_write(&mut self, index: usize, token: u64) {
        let contender = &mut self.contenders[index];
        contender.write_seq += 1;
        let mut buffer = [0u8; 256];
        let write = (token, index, 0, contender.write_seq);
        let sealed = seal_write(contender.driver.wire_mut(), &mut buffer, write);
        let _ = self
            .network
            .send(contender.addr, RESOURCE, &buffer[..sealed]);
        self.totals.writes_sent += 1;
    }

    /// The contender stops believing at true time `end`.
    fn end_belief(&mut self, index: usize, end: Instant) {
        if let Some(start) = self.contenders[index].belief_start.take() {
            if end > start {
                self.beliefs.push((index, start, end));
                self.totals.beliefs += 1;
            }
        }
    }

    /// A random delay before trying again (in the calm phase too: it breaks ties between
    /// contenders that split the servers).
    fn jitter(&mut self) -> Duration {
        Duration::from_micros(self.rng.below(us(self.jitter_max) + 1))
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
        // The belief lapsed since the last step (`held_until` only changes in a step).
        if contender.belief_start.is_some() && contender.lock.held_until(local).is_none() {
            let end = contender.clock.true_of(contender.belief_deadline).min(now);
            self.end_belief(index, end);
        }
        let contender = &mut self.contenders[index];
        match contender.state {
            State::Held {
                release_at: Some(at),
                ..
            } if at <= local => {
                contender.lock.release(local);
                contender.state = State::Busy;
                self.end_belief(index, now);
            }
            State::Idle { until } if until <= local => {
                contender.lock.acquire(local);
                contender.state = State::Busy;
                self.totals.attempts += 1;
            }
            _ => {}
        }
        let contender = &mut self.contenders[index];
        let mut buffer = [0u8; 1500];
        let mut endpoint = self.network.endpoint(contender.addr);
        let _ = contender.driver.step(
            local,
            &mut endpoint,
            &mut contender.lock,
            &mut contender.rng,
            &mut buffer,
        );
        while let Some(event) = self.contenders[index].lock.poll_event() {
            self.on_event(index, now, local, event);
        }
        let contender = &mut self.contenders[index];
        if let State::Held {
            token,
            next_write,
            release_at,
        } = contender.state
        {
            // A correct client checks `held_until` before acting on the lock.
            if next_write <= local && contender.lock.held_until(local).is_some() {
                let next_write = local + contender.lease / 6;
                contender.state = State::Held {
                    token,
                    next_write,
                    release_at,
                };
                self.send_write(index, token);
            }
        }
        let contender = &mut self.contenders[index];
        if contender.belief_start.is_some() {
            match contender.lock.held_until(local) {
                Some(until) => contender.belief_deadline = until,
                None => self.end_belief(index, now),
            }
        }
        let contender = &mut self.contenders[index];
        let mut wake = contender.lock.poll_timeout().unwrap_or(Instant::MAX);
        match contender.state {
            State::Idle { until } => wake = wake.min(until),
            State::Held {
                next_write,
                release_at,
                ..
            } => wake = wake.min(next_write).min(release_at.unwrap_or(Instant::MAX)),
            State::Busy => {}
        }
        if contender.belief_start.is_some() {
            wake = wake.min(contender.belief_deadline);
        }
        contender.wake = if wake == Instant::MAX {
            Instant::MAX
        } else {
            contender.clock.true_of(wake).max(after(now, 1))
        };
    }

    fn on_event(&mut self, index: usize, now: Instant, local: Instant, event: Event) {
        if std::env::var("TRACE").is_ok() {
            eprintln!(
                "{now:?} c{index} local {local:?} {event:?} state {:?}",
                self.contenders[index].state
            );
        }
        match event {
            Event::Acquired { token } => {
                self.acquired(index, now, token);
                let contender = &mut self.contenders[index];
                let release_at = (!contender.eager && self.rng.chance(0.5)).then(|| {
                    local
                        + Duration::from_micros(
                            us(contender.lease) * self.rng.between(30, 300) / 100,
                        )
                });
                let contender = &mut self.contenders[index];
                contender.state = State::Held {
                    token,
                    next_write: local,
                    release_at,
                };
                match contender.lock.held_until(local) {
                    Some(until) => {
                        contender.belief_start = Some(now);
                        contender.belief_deadline = until;
                    }
                    None => self.violation(format!(
                        "contender {index} acquired token {token}, but held_until is not in \
                         the future"
                    )),
                }
            }
            Event::Failed { retry_at } => {
                self.totals.failed += 1;
                let jitter = self.jitter();
                self.contenders[index].state = State::Idle {
                    until: retry_at.max(local) + jitter,
                };
            }
            Event::Lost => {
                self.totals.losses += 1;
                self.end_belief(index, now);
                let jitter = self.jitter();
                self.contenders[index].state = State::Idle {
                    until: local + jitter,
                };
            }
            Event::Released => {
                self.totals.releases += 1;
                let until = if self.contenders[index].eager {
                    local
                } else {
                    local + self.span(0, 100)
                };
                self.contenders[index].state = State::Idle { until };
            }
        }
    }

    /// Invariant 3 at an `Acquired` event, and the ledger of who got which token.
    fn acquired(&mut self, index: usize, now: Instant, token: u64) {
        self.totals.acquisitions += 1;
        match self.holder_of.get(&token) {
            Some(&other) if other != index => self.violation(format!(
                "token {token} acquired by contender {index}, and before by contender {other}"
            )),
            _ => {
                self.holder_of.insert(token, index);
            }
        }
        if let Some((previous, last)) = self.last_acquired {
            if token < last || (token == last && previous != index) {
                self.totals.token_decreases += 1;
                self.violation(format!(
                    "contender {index} acquired token {token} at {now:?}, after contender \
                     {previous} acquired token {last}: tokens must strictly increase"
                ));
            } else if token == last {
                self.totals.same_holder_repeats += 1;
            }
        }
        self.last_acquired = Some((index, token));
        // Did the servers' counters disagree? A server holding this holder's grant under a
        // token above `T` (one whose counter was ahead of the majority's).
        let node = contender_node(index);
        let divergent = self.servers.iter().any(|server| {
            server.running.as_ref().is_some_and(|(services, _)| {
                services
                    .server
                    .locks()
                    .iter()
                    .any(|l| l.name.as_slice() == NAME && l.holder == node && l.token != token)
            })
        });
        self.totals.divergent_acquisitions += u64::from(divergent);
        let mut late = None;
        if let Some(failover) = self.failover.as_mut() {
            if failover.acquired.is_none() && failover.dead != index {
                failover.acquired = Some(now);
                let took = now.saturating_duration_since(failover.killed_at);
                let lease = failover.lease.as_secs_f64();
                self.totals.failovers.push(took.as_secs_f64() / lease);
                self.totals
                    .failover_bounds
                    .push(failover.bound.as_secs_f64() / lease);
                if took > failover.bound && !self.control {
                    late = Some(format!(
                        "fail-over took {took:?} after the holder (contender {}) died, more than \
                         the bound {:?}",
                        failover.dead, failover.bound
                    ));
                }
            }
        }
        if let Some(text) = late {
            self.violation(text);
        }
    }

    // ----- chaos -----

    fn live(&self, allow: impl Fn(&Contender) -> bool) -> Vec<usize> {
        let now = self.now();
        (0..self.contenders.len())
            .filter(|&i| {
                let c = &self.contenders[i];
                !c.dead && c.paused_until.is_none_or(|until| until <= now) && allow(c)
            })
            .collect()
    }

    /// A live contender, a holder with probability `holder_bias` when there is one.
    fn pick(&mut self, holder_bias: f64) -> Option<usize> {
        let live = self.live(|_| true);
        let holders: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| matches!(self.contenders[i].state, State::Held { .. }))
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

    fn kill(&mut self, index: usize) {
        let now = self.now();
        let contender = &self.contenders[index];
        if contender.belief_start.is_some() {
            let end = contender.clock.true_of(contender.belief_deadline).min(now);
            self.end_belief(index, end);
        }
        let contender = &mut self.contenders[index];
        contender.dead = true;
        contender.held_write = None;
        let addr = contender.addr;
        self.network.clear_inbox(addr);
        self.network.set_down(addr, true);
        self.totals.contender_crashes += 1;
    }

    /// `count` distinct random servers.
    fn some_servers(&mut self, count: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.servers.len()).collect();
        for k in 0..all.len() {
            let j = k + self.rng.below((all.len() - k) as u64) as usize;
            all.swap(k, j);
        }
        all.truncate(count);
        all
    }

    fn cut_partitions(&mut self) {
        self.network.heal();
        for partition in &self.partitions {
            for &(a, b) in &partition.links {
                self.network.cut_link(a, b);
                self.network.cut_link(b, a);
            }
        }
    }

    fn partition(&mut self) {
        let now = self.now();
        let n = self.servers.len();
        let minority = n - self.majority();
        let kind = self.rng.below(3);
        let mut links = Vec::new();
        if kind < 2 {
            let Some(index) = self.pick(0.6) else {
                return;
            };
            let count = if kind == 0 {
                self.totals.partitions_minority += 1;
                self.rng.between(1, minority as u64) as usize
            } else {
                self.totals.partitions_majority += 1;
                self.rng.between(self.majority() as u64, n as u64) as usize
            };
            for s in self.some_servers(count) {
                links.push((self.contenders[index].addr, self.servers[s].addr));
            }
        } else {
            // The servers split in two, each side with some contenders.
            self.totals.partitions_split += 1;
            let side = self.rng.between(1, minority as u64) as usize;
            let left = self.some_servers(side);
            let mut a: Vec<SocketAddr> = Vec::new();
            let mut b: Vec<SocketAddr> = Vec::new();
            for s in 0..n {
                if left.contains(&s) {
                    a.push(self.servers[s].addr);
                } else {
                    b.push(self.servers[s].addr);
                }
            }
            for c in 0..self.contenders.len() {
                if self.rng.chance(0.5) {
                    a.push(self.contenders[c].addr);
                } else {
                    b.push(self.contenders[c].addr);
                }
            }
            for &x in &a {
                for &y in &b {
                    links.push((x, y));
                }
            }
        }
        let end = now + self.span(30, 300);
        self.partitions.push(Partition { links, end });
        self.cut_partitions();
    }

    fn disturb(&mut self) {
        let now = self.now();
        let roll = self.rng.below(100);
        let n = self.servers.len();
        if roll < 20 {
            // A server loses power: usually only while a majority stays up.
            let reckless = self.rng.chance(0.2);
            let running: Vec<usize> = (0..n)
                .filter(|&s| self.servers[s].running.is_some())
                .collect();
            let down = self.servers_down();
            if running.is_empty() || (!reckless && down + 1 > n - self.majority()) {
                return;
            }
            let index = running[self.rng.below(running.len() as u64) as usize];
            if roll < 12 {
                self.crash_server(index);
                if self.servers_down() >= self.majority() {
                    self.totals.majority_down += 1;
                }
            } else {
                self.servers[index].storage.arm_power_cut(&mut self.rng, 6);
                self.totals.power_cuts_armed += 1;
            }
        } else if roll < 40 {
            let Some(index) = self.pick(0.6) else {
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
            if let State::Held { token, .. } = contender.state {
                if mid_write && contender.lock.held_until(local).is_some() {
                    // Paused between the check and the write.
                    contender.held_write = Some(token);
                }
            }
            contender.paused_until = Some(now + pause);
            contender.wake = now + pause;
            self.totals.pauses += 1;
            self.totals.pauses_past_ttl += u64::from(pause > contender.lease);
        } else if roll < 58 {
            self.partition();
        } else if roll < 64 {
            let alive = self.contenders.iter().filter(|c| !c.dead).count();
            if alive <= 2 {
                return;
            }
            if let Some(index) = self.pick(0.7) {
                self.kill(index);
            }
        }
    }

    /// The end of chaos: no loss, every server up, partitions healed, contenders eager.
    fn calm(&mut self) {
        self.network.set_faults(NetFaults {
            drop: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            ..self.chaos_faults
        });
        self.partitions.clear();
        self.network.heal();
        let now = self.now();
        for index in 0..self.servers.len() {
            let failed = self.servers[index].storage.failed();
            self.servers[index].storage.set_faults(SimFaults::default());
            if failed && self.servers[index].running.is_some() {
                self.crash_server(index);
            }
            if self.servers[index].running.is_none() {
                self.servers[index].down_until = Some(now);
            }
        }
        for contender in &mut self.contenders {
            contender.eager = true;
            let local = contender.clock.local(now);
            match &mut contender.state {
                State::Idle { until } => *until = (*until).min(local),
                State::Held { release_at, .. } => *release_at = None,
                State::Busy => {}
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
        for server in self.servers.iter().filter(|s| s.running.is_none()) {
            if let Some(at) = server.down_until {
                next = next.min(at);
            }
        }
        for contender in self.contenders.iter().filter(|c| !c.dead) {
            next = next.min(contender.wake);
        }
        for partition in &self.partitions {
            next = next.min(partition.end);
        }
        next.max(self.now())
    }

    fn step_all(&mut self) -> Result<(), String> {
        let now = self.now();
        for index in 0..self.servers.len() {
            if self.servers[index].running.is_none() {
                self.restart_server(index)?;
            }
        }
        if self.partitions.iter().any(|p| p.end <= now) {
            self.partitions.retain(|p| p.end > now);
            self.cut_partitions();
        }
        for index in 0..self.servers.len() {
            self.step_server(index);
        }
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

    /// The servers' side of invariant 1: a believer has a majority of servers that are down
    /// (they come back holding its lock for their lock-delay) or hold the lock in its name,
    /// not yet free by their clock. Not checked in the negative control.
    fn check_server_view(&mut self) {
        if self.control {
            return;
        }
        let now = self.now();
        let mut wrong = Vec::new();
        for (index, contender) in self.contenders.iter().enumerate() {
            if contender.dead || contender.belief_start.is_none() {
                continue;
            }
            if contender.clock.local(now) >= contender.belief_deadline {
                continue;
            }
            let node = contender_node(index);
            let backing = self
                .servers
                .iter()
                .filter(|server| match server.running.as_ref() {
                    None => true,
                    Some((services, _)) => {
                        let server_now = server.clock.local(now);
                        services.server.locks().iter().any(|l| {
                            l.name.as_slice() == NAME && l.holder == node && l.free_at > server_now
                        })
                    }
                })
                .count();
            if backing < self.majority() {
                wrong.push(format!(
                    "contender {index} believes it holds the lock until {:?} (its clock), but \
                     only {backing} servers back it",
                    contender.belief_deadline
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

    /// A live contender that believes it holds the lock now.
    fn believer(&self) -> Option<usize> {
        let now = self.now();
        (0..self.contenders.len()).find(|&i| {
            let c = &self.contenders[i];
            !c.dead && c.paused_until.is_none() && c.lock.held_until(c.clock.local(now)).is_some()
        })
    }

    /// Crashes the believing holder for good and starts measuring its fail-over.
    fn kill_holder(&mut self, index: usize) {
        let now = self.now();
        let lease = self.contenders[index].lease;
        let eps = f64::from(self.eps) / 1e6;
        let expiry = lease.as_secs_f64() * (1.0 + eps) * (1.0 + eps) / (1.0 - eps);
        let bound = self.latency_max * 5
            + Duration::from_secs_f64(expiry)
            + (self.jitter_max + self.attempt_timeout) * 2;
        self.kill(index);
        self.failover = Some(Failover {
            dead: index,
            killed_at: now,
            lease,
            bound,
            acquired: None,
        });
    }

    fn finish(&mut self) -> Result<(), String> {
        let now = self.now();
        for index in 0..self.contenders.len() {
            let contender = &self.contenders[index];
            if !contender.dead && contender.belief_start.is_some() {
                let end = contender.clock.true_of(contender.belief_deadline).min(now);
                self.end_belief(index, end);
            }
            let stats = self.contenders[index].lock.stats();
            self.totals.requests_sent += stats.sent;
            self.totals.request_retries += stats.retries;
        }
        if let Some(failover) = &self.failover {
            if failover.acquired.is_none() {
                self.violations.push(format!(
                    "the lock was not acquired again after its holder (contender {}) died",
                    failover.dead
                ));
            }
        }
        let mut overlaps = 0u64;
        for m in margins(&self.beliefs) {
            self.totals.closest_margin_us = min_opt(self.totals.closest_margin_us, Some(m.micros));
            if self.tight {
                self.totals.tight_margin_us = min_opt(self.totals.tight_margin_us, Some(m.micros));
            }
            let in_ttl = m.micros as f64 / self.ttl_us() as f64;
            self.totals.closest_margin_ttl = min_f64(self.totals.closest_margin_ttl, Some(in_ttl));
            if m.micros < 0 {
                overlaps += 1;
                if !self.control {
                    self.violations.push(format!(
                        "contender {} believed from {:?} while another believed until {:?} ({} \
                         µs of overlap)",
                        m.who, m.start, m.latest, -m.micros
                    ));
                }
            }
        }
        self.totals.overlaps += overlaps;
        self.totals.overlap_seeds += u64::from(overlaps > 0);
        let wrong = self.resource.replay(&self.holder_of);
        self.violations.extend(wrong);
        if self.violations.is_empty() {
            return Ok(());
        }
        Err(format!(
            "seed {} (ε {} ppm, ttl_max {:?}, {} servers, {} contenders, control {}): {}",
            self.seed,
            self.eps,
            self.ttl_max,
            self.servers.len(),
            self.contenders.len(),
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
    while sim.now() < chaos_end {
        let until = next_disturbance.min(chaos_end);
        sim.run_until(until, &mut turns)?;
        if sim.now() >= next_disturbance {
            sim.disturb();
            next_disturbance = sim.now() + sim.span(30, 120);
        }
        if sim.violations.len() >= 20 {
            break;
        }
    }
    sim.calm();
    // Settle: every pause and downtime over, every lock-delay passed.
    let guard = us(guarded(sim.ttl_max, sim.eps));
    let settled = sim.now() + Duration::from_micros(4 * guard) + sim.attempt_timeout * 2;
    sim.run_until(settled, &mut turns)?;
    let give_up = sim.now() + Duration::from_micros(4 * guard);
    loop {
        if let Some(index) = sim.believer() {
            sim.kill_holder(index);
            break;
        }
        if sim.now() >= give_up {
            return Err(format!(
                "seed {seed}: in the calm phase, no contender held the lock for 4 ttl_max after \
                 settling"
            ));
        }
        let step = sim.now() + sim.ttl_max / 32;
        sim.run_until(step, &mut turns)?;
    }
    let bound = sim.failover.as_ref().map_or(Duration::ZERO, |f| f.bound);
    let end = sim.now() + bound * 2;
    while sim.now() < end && sim.failover.as_ref().is_some_and(|f| f.acquired.is_none()) {
        let step = sim.now() + sim.ttl_max / 32;
        sim.run_until(step, &mut turns)?;
    }
    // The new holder writes.
    let end = sim.now() + sim.ttl_max;
    sim.run_until(end, &mut turns)?;
    sim.finish()?;
    Ok(sim.totals)
}

#[test]
fn quorum_locks_never_overlap_tokens_only_grow_and_a_dead_holder_fails_over() {
    let (t, mut failures) = sweep(seeds("SIM_LOCK_QUORUM_SEEDS", "SEED", SEEDS, 0), false, run);
    let (control, control_failures) = sweep(
        seeds(
            "SIM_LOCK_QUORUM_CONTROL_SEEDS",
            "CONTROL_SEED",
            CONTROL_SEEDS,
            CONTROL_BASE,
        ),
        true,
        run,
    );
    failures.extend(control_failures);
    let q = |values: &[f64], at: f64| quantile(values, at);
    println!(
        "sim_lock_quorum: {} seeds ({} with 5 servers, the rest 3; {} contenders in all; ε \
         0.1–5 %, ttl_max 100 ms–2 s, clock rates within 1 ± ε; {} with one server's counter \
         pre-bumped; {} tight); 2–20 % loss, 5 % duplication, jitter, 1 % bit flips, sync \
         failures",
        t.seeds, t.five_server_seeds, t.contenders, t.bumped_seeds, t.tight_seeds
    );
    println!(
        "sim_lock_quorum: attempts {}, acquisitions {} ({} with a server's counter ahead of the \
         token, {} the same holder getting its token back), failed attempts {}, losses {}, releases \
         {}, beliefs {}; client requests {} ({} retries); new server grants {} ({} \
         lifted by step 2's floor above the server's own counter)",
        t.attempts,
        t.acquisitions,
        t.divergent_acquisitions,
        t.same_holder_repeats,
        t.failed,
        t.losses,
        t.releases,
        t.beliefs,
        t.requests_sent,
        t.request_retries,
        t.server_grants,
        t.floor_lifted
    );
    println!(
        "sim_lock_quorum: pauses {} ({} past the ttl, {} writes held across one), partitions {} \
         from a minority, {} from a majority, {} server splits; server crashes {} ({} power \
         cuts armed, {} with a majority down, {} sync failures, {} recoveries retried, {} fresh \
         clocks), contender crashes {}",
        t.pauses,
        t.pauses_past_ttl,
        t.delayed_writes,
        t.partitions_minority,
        t.partitions_majority,
        t.partitions_split,
        t.server_crashes,
        t.power_cuts_armed,
        t.majority_down,
        t.sync_failures,
        t.recovery_retries,
        t.clock_resets,
        t.contender_crashes
    );
    println!(
        "sim_lock_quorum: writes sent {}, accepted {}, stale refused by the fence {}; \
         overlapping believers {} (must be 0); closest margin {:.3} ms ({:.4} ttl_max), in tight \
         seeds {:.3} ms; token decreases {} (must be 0); server-side belief checks {}",
        t.writes_sent,
        t.writes_accepted,
        t.stale_writes_refused,
        t.overlaps,
        t.closest_margin_us.unwrap_or(0) as f64 / 1000.0,
        t.closest_margin_ttl.unwrap_or(f64::NAN),
        t.tight_margin_us.unwrap_or(0) as f64 / 1000.0,
        t.token_decreases,
        t.server_view_checks
    );
    println!(
        "sim_lock_quorum: fail-over of a dead holder ({} measured), from its crash, in units of \
         its ttl: min {:.3}, median {:.3}, p99 {:.3}, max {:.3} (bound: median {:.3}, min {:.3}); \
         refusals {:?}",
        t.failovers.len(),
        q(&t.failovers, 0.0),
        q(&t.failovers, 0.5),
        q(&t.failovers, 0.99),
        q(&t.failovers, 1.0),
        q(&t.failover_bounds, 0.5),
        q(&t.failover_bounds, 0.0),
        t.refusals
    );
    println!(
        "sim_lock_quorum: NEGATIVE CONTROL (servers' clocks at 1 + 3ε, contenders' at 1 ± 3ε): \
         {} seeds, {} with overlapping believers ({} overlaps, worst margin {:.3} ms); token \
         decreases {}, stale writes refused {}",
        control.seeds,
        control.overlap_seeds,
        control.overlaps,
        control.closest_margin_us.unwrap_or(0) as f64 / 1000.0,
        control.token_decreases,
        control.stale_writes_refused
    );
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(t.overlaps, 0);
    assert_eq!(t.token_decreases, 0);
    if t.seeds >= 100 {
        assert!(t.stale_writes_refused > 0, "no stale write was ever tried");
        assert!(t.divergent_acquisitions > 0, "the counters never diverged");
        assert!(t.floor_lifted > 0, "step 2 never lifted a server's token");
        assert!(!t.failovers.is_empty(), "no fail-over was measured");
    }
    if control.seeds >= 20 {
        assert!(
            control.overlap_seeds > 0,
            "the negative control never showed overlapping believers: the check cannot fail?"
        );
    }
}
