//! Crash-point enumeration for the message queue and the idempotent consumer.
//!
//! A fixed queue workload (two producers, two queues, sends, receives and acks with group commits
//! in between, enough records for checkpoints and segment releases) runs on the simulated
//! storage; power is cut at every write, erase and sync it performs, a write in flight torn at
//! each of its bytes and an erase at a sample of them. After each cut the queue is recovered, and
//! its live messages are drained and checked against what the workload was told:
//!
//! - every send whose commit returned `Ok` is live, unless an ack of it was attempted (an ack in
//!   flight may land even though its commit reported the cut);
//! - a message whose ack commit returned `Ok` is never live again;
//! - every live message was sent (or was the send in flight), with its producer, sequence,
//!   queue and payload; ids are unique; per producer, ids and sequences grow together;
//! - recovery never reports a crash as mid-log corruption; a second power cut during recovery,
//!   then a reopen, gives the same live set; the queue then keeps working and closes cleanly.
//!
//! The idempotent consumer gets the same treatment on its own storage: each effect is applied at
//! most once after recovery, and every `process` that returned is applied exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bedrock::queue::{
    Config, ConsumerConfig, IdempotentConsumer, MessageId, Processed, Queue, Replay,
};
use bedrock::service::Service;
use bedrock::storage::Geometry;
use bedrock::time::Instant;
use bedrock_sim::{sum_in_parallel, CrashMode, SimRng, SimStorage, TornSpec};

/// (write size, erase size) pairs: byte-, word- and page-programmed flash.
const GEOMETRIES: [(u32, u32); 4] = [(1, 256), (4, 256), (8, 512), (32, 512)];
/// Every geometry gets the same log: eight segments of 512 bytes.
const CAPACITY: u64 = 4096;
const SEGMENT_SIZE: u32 = 512;
/// Steps are a second apart: a lease left unacknowledged expires and is redelivered.
const LEASE: Duration = Duration::from_secs(5);
const QUEUE_NAMES: [&str; 2] = ["alpha", "beta"];

type Q<'a> = Queue<&'a mut SimStorage, Vec<u8>, 16, 4, 4, 8>;

fn geometry(write_size: u32, erase_size: u32) -> Geometry {
    Geometry {
        read_size: 1,
        write_size,
        erase_size,
        capacity: CAPACITY,
        erased_value: 0xFF,
    }
}

fn config(incarnation: u32) -> Config {
    let mut config = Config::new(incarnation);
    config.message_max = 48;
    config.checkpoint_every = 4;
    config.log.segment_size = SEGMENT_SIZE;
    config
}

fn at(seconds: u64) -> Instant {
    Instant::from_millis(seconds * 1000)
}

fn payload(producer: u64, sequence: u64) -> Vec<u8> {
    // Lengths vary so frames straddle write units differently.
    let mut bytes = format!("p{producer}-s{sequence}:").into_bytes();
    bytes.resize(
        bytes.len() + (sequence as usize * 5) % 23,
        b'0' + producer as u8,
    );
    bytes
}

fn queue_of(producer: u64, sequence: u64) -> &'static str {
    QUEUE_NAMES[usize::from((producer + sequence).is_multiple_of(3))]
}

/// One step of the fixed workload.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A send from `producer` of its `sequence` (a retry when the sequence was sent already).
    Send {
        producer: u64,
        sequence: u64,
    },
    /// Receive the oldest pending message of a queue and (if `ack`) acknowledge it.
    Receive {
        queue: &'static str,
        ack: bool,
    },
    Commit,
}

fn plan() -> Vec<Step> {
    use Step::*;
    let send = |producer, sequence| Send { producer, sequence };
    let take = |queue, ack| Receive { queue, ack };
    let (a, b) = (QUEUE_NAMES[0], QUEUE_NAMES[1]);
    let mut steps = vec![send(1, 1), send(2, 1), send(1, 2), Commit];
    steps.extend([send(2, 2), send(1, 3), send(2, 3), Commit]);
    steps.extend([take(a, true), take(a, true), take(b, true), Commit]);
    steps.extend([send(1, 4), send(2, 4), send(2, 4), Commit]);
    steps.extend([take(a, true), take(a, false), take(b, true), Commit]);
    steps.extend([send(1, 5), send(2, 5), send(1, 6), send(2, 7), Commit]);
    steps.extend([take(a, true), take(b, true), take(a, true), Commit]);
    steps.extend([send(1, 8), send(2, 9), Commit]);
    steps.extend([
        take(b, true),
        take(a, true),
        take(a, true),
        take(b, true),
        Commit,
    ]);
    steps.extend([send(1, 9), Commit, take(a, true), take(b, true), Commit]);
    // The delivery left unacknowledged above expired: acknowledge its redelivery.
    steps.extend([take(a, true), Commit]);
    steps
}

/// What the workload attempted and was told.
#[derive(Debug, Default)]
struct Model {
    /// Every send attempted, by (producer, sequence): its queue and payload.
    attempted: BTreeMap<(u64, u64), (&'static str, Vec<u8>)>,
    /// Ids returned by `send`, with their (producer, sequence).
    ids: BTreeMap<u64, (u64, u64)>,
    staged_sends: Vec<u64>,
    /// Sends made durable by a commit that returned `Ok`.
    durable: BTreeSet<u64>,
    /// Every id an ack was attempted for.
    ack_attempted: BTreeSet<u64>,
    staged_acks: Vec<u64>,
    /// Acks made durable by a commit that returned `Ok`.
    acked: BTreeSet<u64>,
    checkpoints: u64,
    released: bool,
}

/// Opens the queue and runs the steps; stops at the first error (a power cut).
fn workload(storage: &mut SimStorage, steps: &[Step], model: &mut Model) {
    let Ok((mut queue, _)) = Q::open(storage, vec![0u8; 1024], config(1)) else {
        return;
    };
    let mut out = [0u8; 64];
    for (index, step) in steps.iter().enumerate() {
        let now = at(index as u64);
        match *step {
            Step::Send { producer, sequence } => {
                let name = queue_of(producer, sequence);
                let bytes = payload(producer, sequence);
                model
                    .attempted
                    .insert((producer, sequence), (name, bytes.clone()));
                match queue.send(now, name, producer, sequence, &bytes) {
                    Ok(id) => {
                        let known = *model.ids.entry(id.0).or_insert((producer, sequence));
                        assert_eq!(known, (producer, sequence), "send returned a reused id");
                        model.staged_sends.push(id.0);
                    }
                    Err(_) => return,
                }
            }
            Step::Receive { queue: name, ack } => {
                let delivery = match queue.receive(now, name, LEASE, &mut out) {
                    Ok(Some(delivery)) => delivery,
                    Ok(None) => panic!("the workload expects a message in {name} at step {index}"),
                    Err(_) => return,
                };
                if ack {
                    model.ack_attempted.insert(delivery.id.0);
                    if queue.ack(now, delivery.id, delivery.token).is_err() {
                        return;
                    }
                    model.staged_acks.push(delivery.id.0);
                }
            }
            Step::Commit => {
                let free = queue.log().free_segments();
                if queue.commit().is_err() {
                    return;
                }
                model.released |= queue.log().free_segments() > free;
                model.durable.extend(model.staged_sends.drain(..));
                model.acked.extend(model.staged_acks.drain(..));
            }
        }
    }
    model.checkpoints = queue.stats().checkpoints;
}

/// A live message as drained after recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveMessage {
    id: u64,
    queue: &'static str,
    producer: u64,
    sequence: u64,
    payload: Vec<u8>,
}

/// Receives every live message of every queue (all PENDING after a restart), oldest first.
fn drain(queue: &mut Q<'_>, context: &str) -> Vec<LiveMessage> {
    let mut drained = Vec::new();
    let mut out = [0u8; 64];
    for name in QUEUE_NAMES {
        while let Some(delivery) = queue
            .receive(at(1000), name, LEASE, &mut out)
            .unwrap_or_else(|error| panic!("{context}: receive failed: {error:?}"))
        {
            drained.push(LiveMessage {
                id: delivery.id.0,
                queue: name,
                producer: delivery.producer,
                sequence: delivery.sequence,
                payload: out[..delivery.len].to_vec(),
            });
        }
    }
    assert_eq!(
        queue.stats().live as usize,
        drained.len(),
        "{context}: live messages outside the known queues"
    );
    drained
}

/// Opens the queue after a cut and checks it reports no corruption.
fn reopen<'a>(storage: &'a mut SimStorage, incarnation: u32, context: &str) -> Q<'a> {
    let (queue, recovery) = Q::open(storage, vec![0u8; 1024], config(incarnation))
        .unwrap_or_else(|error| panic!("{context}: recovery failed: {error:?}"));
    assert!(
        recovery.corruption.is_none(),
        "{context}: a crash was reported as corruption: {recovery:?}"
    );
    queue
}

/// Checks the drained live set against what the workload was told.
fn check_state(model: &Model, live: &[LiveMessage], context: &str) {
    let ids: BTreeSet<u64> = live.iter().map(|message| message.id).collect();
    assert_eq!(
        ids.len(),
        live.len(),
        "{context}: an id is live twice: {live:?}"
    );
    let newest_returned = model.ids.keys().next_back().copied();
    for message in live {
        let key = (message.producer, message.sequence);
        let Some((name, bytes)) = model.attempted.get(&key) else {
            panic!("{context}: live message was never sent: {message:?}");
        };
        assert_eq!(
            (message.queue, &message.payload),
            (*name, bytes),
            "{context}: wrong queue or payload"
        );
        match model.ids.get(&message.id) {
            Some(&sent) => assert_eq!(sent, key, "{context}: id {} changed owner", message.id),
            // The send in flight at the cut may have landed; it got the next id.
            None => assert!(
                newest_returned.is_none_or(|newest| message.id > newest),
                "{context}: unknown id {} below the ids returned: {message:?}",
                message.id
            ),
        }
        assert!(
            !model.acked.contains(&message.id),
            "{context}: message {} was acknowledged durably and came back",
            message.id
        );
    }
    for &id in &model.durable {
        if !model.ack_attempted.contains(&id) {
            assert!(
                ids.contains(&id),
                "{context}: committed message {id} lost (live: {ids:?})"
            );
        }
    }
    let mut by_id: Vec<&LiveMessage> = live.iter().collect();
    by_id.sort_by_key(|message| message.id);
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for message in by_id {
        if let Some(&previous) = last.get(&message.producer) {
            assert!(
                message.sequence > previous,
                "{context}: producer {} out of order: {live:?}",
                message.producer
            );
        }
        last.insert(message.producer, message.sequence);
    }
    for name in QUEUE_NAMES {
        let order: Vec<u64> = live
            .iter()
            .filter(|m| m.queue == name)
            .map(|m| m.id)
            .collect();
        assert!(
            order.windows(2).all(|pair| pair[0] < pair[1]),
            "{context}: {name} not delivered oldest first: {order:?}"
        );
    }
}

/// Runs one geometry's queue enumeration; returns the number of crash points checked.
fn enumerate_queue(write_size: u32, erase_size: u32) -> u64 {
    let geometry = geometry(write_size, erase_size);
    let steps = plan();
    let mut dry = SimStorage::new(geometry, 1).unwrap();
    dry.record_ops(true);
    let mut full = Model::default();
    workload(&mut dry, &steps, &mut full);
    let sends = steps
        .iter()
        .filter(|s| matches!(s, Step::Send { .. }))
        .count();
    assert_eq!(
        full.ids.len(),
        sends - 1,
        "the workload completes (one retry)"
    );
    assert!(full.checkpoints >= 2, "the workload checkpoints: {full:?}");
    assert!(full.released, "the workload releases a segment");
    assert!(full.staged_sends.is_empty() && full.staged_acks.is_empty());
    let ops = dry.recorded_ops().to_vec();
    let mut rng = SimRng::new(u64::from(write_size) << 32 | u64::from(erase_size));
    let mut checked = 0;
    let mut second_cuts = 0;
    for op in &ops {
        for prefix in op.crash_points(u64::from(write_size)) {
            let context =
                format!("queue, geometry {write_size}/{erase_size}, op {op:?}, torn at {prefix}");
            let mut storage = SimStorage::new(geometry, 1).unwrap();
            storage.set_power_cut_at(op.index, TornSpec::Prefix(prefix));
            let mut model = Model::default();
            workload(&mut storage, &steps, &mut model);
            storage.reboot();

            let before = storage.ops_done();
            let mut queue = reopen(&mut storage, 2, &context);
            let recovered = drain(&mut queue, &context);
            check_state(&model, &recovered, &context);
            drop(queue.into_parts());
            let recovery_ops = storage.ops_done() - before;

            // A second cut during the next recovery, then a reopen: the same live set.
            let second_cut = storage.ops_done() + rng.below(recovery_ops + 2);
            storage.set_power_cut_at(second_cut, TornSpec::Random);
            if let Ok((queue, _)) = Q::open(&mut storage, vec![0u8; 1024], config(3)) {
                drop(queue.into_parts());
            }
            second_cuts += u64::from(storage.is_power_cut());
            storage.clear_power_cut();
            storage.reboot_with(CrashMode::Random);
            let context = format!("{context}, second cut at op {second_cut}");
            let mut queue = reopen(&mut storage, 4, &context);
            assert_eq!(
                drain(&mut queue, &context),
                recovered,
                "{context}: state changed"
            );

            // The queue keeps working, and a close then a reopen is clean.
            let id = queue
                .send(at(2000), QUEUE_NAMES[0], 9, 1, b"after")
                .unwrap_or_else(|error| panic!("{context}: send after recovery: {error:?}"));
            queue.commit().unwrap();
            queue.close().unwrap();
            let (mut queue, recovery) = Q::open(&mut storage, vec![0u8; 1024], config(5)).unwrap();
            assert!(recovery.is_clean(), "{context}: {recovery:?}");
            let mut after = drain(&mut queue, &context);
            let position = after
                .iter()
                .position(|message| message.id == id.0)
                .unwrap_or_else(|| panic!("{context}: the send after recovery is lost"));
            after.remove(position);
            assert_eq!(
                after, recovered,
                "{context}: state changed after a clean close"
            );
            checked += 1;
        }
    }
    println!(
        "queue crash points: geometry write {write_size:>2} / erase {erase_size:>4}: {checked:>5} points over {} operations, {} checkpoints, {second_cuts} second cuts during recovery",
        ops.len(),
        full.checkpoints
    );
    checked
}

// The idempotent consumer.

const MESSAGE_COUNT: u64 = 12;
type Consumer<'a> = IdempotentConsumer<&'a mut SimStorage, Vec<u8>, 16>;

fn consumer_config() -> ConsumerConfig {
    let mut config = ConsumerConfig {
        effect_max: 16,
        state_max: 16,
        ..ConsumerConfig::default()
    };
    config.log.segment_size = 512;
    config
}

/// Each message delivered twice, the redelivery a little later (a lost ack).
fn deliveries() -> Vec<u64> {
    let mut order = Vec::new();
    for id in 1..=MESSAGE_COUNT {
        order.push(id);
        if id > 2 {
            order.push(id - 2);
        }
    }
    order.extend([MESSAGE_COUNT - 1, MESSAGE_COUNT]);
    order
}

/// The application's state: how often each message's effect was applied.
type Applied = [u8; MESSAGE_COUNT as usize + 1];

/// Opens the consumer, rebuilding the applied counts from its replay.
fn open_consumer(
    storage: &mut SimStorage,
) -> Result<(Consumer<'_>, Applied, bedrock::log::Recovery), String> {
    let mut applied: Applied = [0; MESSAGE_COUNT as usize + 1];
    let mut bad = None;
    let opened = Consumer::open(
        storage,
        vec![0u8; 512],
        consumer_config(),
        |replay| match replay {
            Replay::State(state) => applied.copy_from_slice(state),
            Replay::Effect { id, effect } => {
                if effect != id.0.to_le_bytes() {
                    bad = Some(format!("effect {effect:?} of {id:?}"));
                }
                applied[id.0 as usize] += 1;
            }
        },
    );
    if let Some(bad) = bad {
        return Err(bad);
    }
    let (consumer, recovery) = opened.map_err(|error| format!("{error:?}"))?;
    Ok((consumer, applied, recovery))
}

/// Processes the deliveries, applying effects and checkpointing every five; stops at the first
/// error. Returns the ids whose `process` returned.
fn consumer_workload(storage: &mut SimStorage, attempted: &mut BTreeSet<u64>) -> BTreeSet<u64> {
    let mut returned = BTreeSet::new();
    let Ok((mut consumer, mut applied, _)) = open_consumer(storage) else {
        return returned;
    };
    for (step, id) in deliveries().into_iter().enumerate() {
        attempted.insert(id);
        match consumer.process(MessageId(id), &id.to_le_bytes()) {
            Ok(Processed::Processed) => applied[id as usize] += 1,
            Ok(Processed::AlreadyDone) => {}
            Err(_) => return returned,
        }
        returned.insert(id);
        if step % 5 == 4 && consumer.checkpoint(&applied).is_err() {
            return returned;
        }
    }
    returned
}

fn enumerate_consumer(write_size: u32, erase_size: u32) -> u64 {
    let geometry = geometry(write_size, erase_size);
    let mut dry = SimStorage::new(geometry, 1).unwrap();
    dry.record_ops(true);
    let returned = consumer_workload(&mut dry, &mut BTreeSet::new());
    assert_eq!(
        returned.len() as u64,
        MESSAGE_COUNT,
        "the workload completes"
    );
    let ops = dry.recorded_ops().to_vec();
    let mut checked = 0;
    for op in &ops {
        for prefix in op.crash_points(u64::from(write_size)) {
            let context = format!(
                "consumer, geometry {write_size}/{erase_size}, op {op:?}, torn at {prefix}"
            );
            let mut storage = SimStorage::new(geometry, 1).unwrap();
            storage.set_power_cut_at(op.index, TornSpec::Prefix(prefix));
            let mut attempted = BTreeSet::new();
            let returned = consumer_workload(&mut storage, &mut attempted);
            storage.reboot();
            let (mut consumer, mut applied, recovery) = open_consumer(&mut storage)
                .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
            assert!(
                recovery.corruption.is_none(),
                "{context}: a crash was reported as corruption: {recovery:?}"
            );
            for id in 1..=MESSAGE_COUNT {
                let count = applied[id as usize];
                assert!(count <= 1, "{context}: effect {id} applied {count} times");
                if returned.contains(&id) {
                    assert_eq!(count, 1, "{context}: effect {id} returned but not applied");
                }
                if !attempted.contains(&id) {
                    assert_eq!(count, 0, "{context}: effect {id} applied, never processed");
                }
            }
            // Redelivering everything after recovery applies each effect exactly once in all.
            for id in deliveries() {
                if consumer
                    .process(MessageId(id), &id.to_le_bytes())
                    .unwrap_or_else(|error| panic!("{context}: process after recovery: {error:?}"))
                    == Processed::Processed
                {
                    applied[id as usize] += 1;
                }
            }
            assert!(
                applied[1..].iter().all(|&count| count == 1),
                "{context}: applied {applied:?}"
            );
            drop(consumer.into_parts());
            let (_, replayed, _) = open_consumer(&mut storage).unwrap();
            assert_eq!(replayed, applied, "{context}: replay after redelivery");
            checked += 1;
        }
    }
    println!(
        "consumer crash points: geometry write {write_size:>2} / erase {erase_size:>4}: {checked:>5} points over {} operations",
        ops.len()
    );
    checked
}

#[test]
fn every_crash_point_of_the_queue_and_the_consumer_recovers() {
    let jobs: Vec<Box<dyn FnOnce() -> u64 + Send>> = GEOMETRIES
        .iter()
        .flat_map(|&(write, erase)| {
            [
                Box::new(move || enumerate_queue(write, erase)) as Box<dyn FnOnce() -> u64 + Send>,
                Box::new(move || enumerate_consumer(write, erase)),
            ]
        })
        .collect();
    let total = sum_in_parallel(jobs);
    println!("crash points checked in all: {total}");
    assert!(total >= 1_000, "only {total} crash points");
}
