//! What the lock simulations share (`sim_lock.rs`, one server; `sim_lock_quorum.rs`, quorum
//! locks): skewed clocks, a lock server's storage the harness keeps a handle on, the server
//! wrapped to record what it sends, the fenced resource and its ledger, belief-interval overlap
//! checking, and the seed loop.
//!
//! Each simulation uses part of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bedrock::crdt::NodeId;
use bedrock::lock::{self, Fence, LockServer, Message, Refusal};
use bedrock::log;
use bedrock::rng::Rng;
use bedrock::service::{kind, CommitFailed, Peer, Service, Services, Transmit};
use bedrock::storage::{Geometry, Storage};
use bedrock::time::Instant;
use bedrock::wire::{self, Key, Keyring, Wire};
use bedrock_sim::{SimFaults, SimNetwork, SimRng, SimStorage, TornSpec};

pub const CLUSTER: u32 = 0x0006_10C4;
/// The write envelope kind (not a service's).
pub const WRITE_KIND: u8 = 0xF0;
/// Control seeds start here, apart from the main ones.
pub const CONTROL_BASE: u64 = 1 << 32;

pub type LockService = LockServer<Shared, Vec<u8>, 16, 8>;

pub const RESOURCE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 0, 3, 1),
    8000,
));

pub fn key() -> Keyring<1> {
    Keyring::new(Key::new(1, [0x6C; 32]))
}

pub fn us(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

pub fn after(at: Instant, micros: u64) -> Instant {
    Instant::from_micros(at.as_micros().saturating_add(micros))
}

pub fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub fn min_f64(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `q`-quantile of `values` (sorted here), NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

// ----- storage -----

/// A simulated storage the harness keeps a handle on while the server owns it.
#[derive(Clone)]
pub struct Shared(pub Rc<RefCell<SimStorage>>);

impl Shared {
    pub fn new(geometry: Geometry, seed: u64) -> Self {
        Self(Rc::new(RefCell::new(
            SimStorage::new(geometry, seed).expect("geometry"),
        )))
    }

    pub fn arm_power_cut(&self, rng: &mut SimRng, within: u64) {
        let mut storage = self.0.borrow_mut();
        let at = storage.ops_done() + 1 + rng.below(within);
        storage.set_power_cut_at(at, TornSpec::Random);
    }

    pub fn crash(&self) {
        let mut storage = self.0.borrow_mut();
        storage.clear_power_cut();
        storage.crash();
    }

    pub fn failed(&self) -> bool {
        let storage = self.0.borrow();
        storage.is_power_cut() || storage.is_poisoned()
    }

    pub fn poisoned(&self) -> bool {
        self.0.borrow().is_poisoned()
    }

    pub fn set_faults(&self, faults: SimFaults) {
        let mut storage = self.0.borrow_mut();
        storage.set_faults(faults);
        storage.clear_power_cut();
    }
}

impl Storage for Shared {
    type Error = <SimStorage as Storage>::Error;

    fn geometry(&self) -> Geometry {
        self.0.borrow().geometry()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.0.borrow_mut().read(offset, buf)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        self.0.borrow_mut().write(offset, data)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), Self::Error> {
        self.0.borrow_mut().erase(offset, len)
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.0.borrow_mut().sync()
    }
}

// ----- clocks -----

/// A monotonic clock: `offset + t · (1 + ppm / 10⁶)` for true time `t`, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub offset: u64,
    pub ppm: i64,
}

impl Clock {
    fn at(&self, t: i128) -> i128 {
        i128::from(self.offset) + t + (t * i128::from(self.ppm)).div_euclid(1_000_000)
    }

    /// This clock's reading at true time `t`.
    pub fn local(&self, t: Instant) -> Instant {
        Instant::from_micros(self.at(i128::from(t.as_micros())) as u64)
    }

    /// The earliest true time at which this clock reads `local` or more.
    pub fn true_of(&self, local: Instant) -> Instant {
        let target = i128::from(local.as_micros());
        if target <= i128::from(self.offset) {
            return Instant::ZERO;
        }
        let mut t =
            (target - i128::from(self.offset)) * 1_000_000 / (1_000_000 + i128::from(self.ppm));
        while self.at(t) < target {
            t += 1;
        }
        while t > 0 && self.at(t - 1) >= target {
            t -= 1;
        }
        Instant::from_micros(t as u64)
    }
}

// ----- the server, observed -----

/// What a server was seen to send (decoded from its own transmits).
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Granted { token: u64 },
    Renewed,
    Released,
    Refused(Refusal),
}

pub struct Sent {
    pub to: SocketAddr,
    /// The server's clock when it sent this.
    pub at: Instant,
    pub answer: Answer,
}

/// A lock server, with every answer it sends recorded for the ledger.
pub struct Observed {
    pub server: LockService,
    pub sent: Vec<Sent>,
}

impl Services for Observed {
    fn handle_message(&mut self, now: Instant, kind: u8, from: Peer, payload: &[u8]) -> bool {
        if kind != kind::LOCK {
            return false;
        }
        Service::handle_message(&mut self.server, now, from, payload);
        true
    }

    fn handle_timeout<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        Service::handle_timeout(&mut self.server, now, rng);
    }

    fn poll_transmit(&mut self, now: Instant, buffer: &mut [u8]) -> Option<(u8, Transmit)> {
        let transmit = Service::poll_transmit(&mut self.server, now, buffer)?;
        let answer = match lock::decode(&buffer[..transmit.len]) {
            Ok(Message::Granted { token, .. }) => Some(Answer::Granted { token }),
            Ok(Message::Renewed { .. }) => Some(Answer::Renewed),
            Ok(Message::Released { .. }) => Some(Answer::Released),
            Ok(Message::Refused { reason, .. }) => Some(Answer::Refused(reason)),
            _ => None,
        };
        if let Some(answer) = answer {
            self.sent.push(Sent {
                to: transmit.to,
                at: now,
                answer,
            });
        }
        Some((kind::LOCK, transmit))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Service::poll_timeout(&self.server)
    }

    fn commit(&mut self) -> Result<(), CommitFailed> {
        Service::commit(&mut self.server).map_err(|_| CommitFailed { kind: kind::LOCK })
    }
}

/// Opens a lock server on `storage` at `local` (its clock). `Ok(None)` when a sync failed
/// during recovery: the storage was power-cycled, try again later. `Err` when recovery failed.
pub fn open_server(
    storage: &Shared,
    config: lock::Config,
    local: Instant,
) -> Result<Option<LockService>, String> {
    match LockService::open(storage.clone(), vec![0; 4096], config, local) {
        Ok((server, _)) => Ok(Some(server)),
        Err(log::OpenError::Storage(_)) => {
            storage.crash();
            Ok(None)
        }
        Err(error) => Err(format!("{error:?}")),
    }
}

/// Grants a server recovered from its log (made before the crash, maybe never answered) join
/// `known` (token → party) under the holder the log names. Returns how many were not known,
/// and a complaint for each known as another party's.
pub fn recover_grants(
    server: &LockService,
    known: &mut BTreeMap<u64, usize>,
    party_of_node: impl Fn(NodeId) -> usize,
) -> (u64, Vec<String>) {
    let mut new = 0;
    let mut wrong = Vec::new();
    for lock in server.locks() {
        let (token, party) = (lock.token, party_of_node(lock.holder));
        match known.get(&token) {
            Some(&holder) if holder != party => wrong.push(format!(
                "token {token} was granted to party {holder}, but the log recovered it as party \
                 {party}'s"
            )),
            Some(_) => {}
            None => {
                known.insert(token, party);
                new += 1;
            }
        }
    }
    (new, wrong)
}

// ----- the fenced resource -----

/// Seals a write of `token` by `writer` on lock `lock` (its `seq`-th) into `buffer`.
pub fn seal_write<const K: usize, const S: usize>(
    wire: &mut Wire<K, S>,
    buffer: &mut [u8; 256],
    (token, writer, lock, seq): (u64, usize, usize, u64),
) -> usize {
    let payload = &mut buffer[wire::HEADER_LEN..wire::HEADER_LEN + 24];
    payload[..8].copy_from_slice(&token.to_le_bytes());
    payload[8..12].copy_from_slice(&(writer as u32).to_le_bytes());
    payload[12..16].copy_from_slice(&(lock as u32).to_le_bytes());
    payload[16..].copy_from_slice(&seq.to_le_bytes());
    wire.seal(WRITE_KIND, buffer, 24).expect("seal")
}

/// What one round of writes did at the resource.
#[derive(Debug, Default)]
pub struct Writes {
    pub accepted: u64,
    pub refused: u64,
    pub violations: Vec<String>,
}

/// The fenced resource: one fence (and one ledger entry) per lock name.
pub struct Resource {
    pub wire: Wire<1, 16>,
    pub fences: Vec<Fence>,
    pub highest: Vec<u64>,
    /// Every write in arrival order: lock, token, writer, accepted.
    pub log: Vec<(usize, u64, usize, bool)>,
}

impl Resource {
    pub fn new(locks: usize) -> Self {
        Self {
            wire: Wire::encrypted(CLUSTER, NodeId(3), 1, key()),
            fences: vec![Fence::new(); locks],
            highest: vec![0; locks],
            log: Vec::new(),
        }
    }

    /// Takes in every write waiting at [`RESOURCE`]: each is checked by its lock's [`Fence`]
    /// and against the test's ledger (`holder_of`: token → the party it was granted to).
    pub fn receive(
        &mut self,
        network: &mut SimNetwork,
        holder_of: &BTreeMap<u64, usize>,
    ) -> Writes {
        let mut writes = Writes::default();
        let locks = self.fences.len();
        let mut buffer = [0u8; 1500];
        while let Ok(Some(received)) = network.recv(RESOURCE, &mut buffer) {
            let Ok(opened) = self.wire.open(&mut buffer[..received.len]) else {
                continue;
            };
            let payload = opened.payload;
            let lock = payload.get(12..16).map_or(usize::MAX, |b| {
                u32::from_le_bytes(b.try_into().expect("4")) as usize
            });
            if opened.kind != WRITE_KIND || payload.len() != 24 || lock >= locks {
                writes
                    .violations
                    .push("the resource got a write it cannot read".into());
                continue;
            }
            let token = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
            let writer = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")) as usize;
            let stale = token < self.highest[lock];
            match self.fences[lock].admit(token) {
                Ok(()) => {
                    if stale {
                        let highest = self.highest[lock];
                        writes.violations.push(format!(
                            "the fence accepted token {token} from contender {writer} after \
                             token {highest}: a stale write"
                        ));
                    }
                    if holder_of.get(&token) != Some(&writer) {
                        let holder = holder_of.get(&token).copied();
                        writes.violations.push(format!(
                            "the resource accepted token {token} from contender {writer}, but \
                             it was granted to {holder:?}"
                        ));
                    }
                    self.highest[lock] = self.highest[lock].max(token);
                    writes.accepted += 1;
                    self.log.push((lock, token, writer, true));
                }
                Err(_) => {
                    if !stale {
                        writes.violations.push(format!(
                            "the fence refused token {token}, the highest accepted being {}",
                            self.highest[lock]
                        ));
                    }
                    writes.refused += 1;
                    self.log.push((lock, token, writer, false));
                }
            }
        }
        writes
    }

    /// The resource's record, replayed: accepted tokens never go down per lock, each was
    /// granted to its writer, and every refused write was below one accepted before it. At
    /// most 5 complaints.
    pub fn replay(&self, holder_of: &BTreeMap<u64, usize>) -> Vec<String> {
        let mut highest = vec![0u64; self.fences.len()];
        let mut wrong = Vec::new();
        for &(lock, token, writer, accepted) in &self.log {
            if accepted {
                if token < highest[lock] || holder_of.get(&token) != Some(&writer) {
                    wrong.push(format!(
                        "the resource's record shows token {token} from contender {writer} \
                         accepted after token {} (granted to {:?})",
                        highest[lock],
                        holder_of.get(&token)
                    ));
                }
                highest[lock] = highest[lock].max(token);
            } else if token >= highest[lock] {
                wrong.push(format!(
                    "the resource's record shows token {token} refused, none above it accepted"
                ));
            }
        }
        wrong.truncate(5);
        wrong
    }
}

// ----- beliefs -----

/// One belief's start against the latest end of every other party's earlier-starting beliefs.
#[derive(Debug, Clone, Copy)]
pub struct Margin {
    pub who: usize,
    pub start: Instant,
    pub latest: Instant,
    /// `start − latest` in µs: negative is an overlap.
    pub micros: i64,
}

/// The margins between belief intervals `(party, start, end)` of one lock, in true time: for
/// each belief, how long after the latest end of another party's belief that started no later
/// it started.
pub fn margins(beliefs: &[(usize, Instant, Instant)]) -> Vec<Margin> {
    let mut beliefs = beliefs.to_vec();
    beliefs.sort_by_key(|b| b.1);
    let mut out = Vec::new();
    for k in 0..beliefs.len() {
        let (who, start, _) = beliefs[k];
        let latest = beliefs[..k]
            .iter()
            .filter(|b| b.0 != who)
            .map(|b| b.2)
            .max();
        let Some(latest) = latest else { continue };
        out.push(Margin {
            who,
            start,
            latest,
            micros: start.as_micros() as i64 - latest.as_micros() as i64,
        });
    }
    out
}

// ----- the seed loop -----

/// Totals of seeds, added up across seeds and threads.
pub trait Add: Default + Send {
    fn add(&mut self, other: Self);
}

/// The seeds to run: `one` names a single seed; else `var` the count (`default` unless `SEED`
/// or `CONTROL_SEED` asks for one seed elsewhere), from `base`.
pub fn seeds(var: &str, one: &str, default: u64, base: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var(one) {
        return vec![seed.parse().expect("a seed is a number")];
    }
    let default = if std::env::var("SEED").is_ok() || std::env::var("CONTROL_SEED").is_ok() {
        0
    } else {
        default
    };
    let count = std::env::var(var)
        .ok()
        .map_or(default, |count| count.parse().expect("a count is a number"));
    (base..base + count).collect()
}

/// Runs `seeds` on two threads; returns the totals and the failures.
pub fn sweep<T: Add>(
    seeds: Vec<u64>,
    control: bool,
    run: fn(u64, bool) -> Result<T, String>,
) -> (T, Vec<String>) {
    let halves: Vec<Vec<u64>> = vec![
        seeds.iter().copied().step_by(2).collect(),
        seeds.iter().copied().skip(1).step_by(2).collect(),
    ];
    std::thread::scope(|scope| {
        let handles: Vec<_> = halves
            .into_iter()
            .map(|half| {
                scope.spawn(move || {
                    let mut totals = T::default();
                    let mut failures = Vec::new();
                    for seed in half {
                        match run(seed, control) {
                            Ok(outcome) => totals.add(outcome),
                            Err(failure) => failures.push(failure),
                        }
                    }
                    (totals, failures)
                })
            })
            .collect();
        let mut totals = T::default();
        let mut failures = Vec::new();
        for handle in handles {
            let (part, failed) = handle.join().expect("a sweep thread panicked");
            totals.add(part);
            failures.extend(failed);
        }
        (totals, failures)
    })
}
