//! (i) How long a queue takes to open after a crash, against the backlog of live messages and
//! the log behind it, beside a raw sequential read of the same file in the same page-cache
//! state.
//!
//! Each case fills a fresh store in process (one producer, messages of [`PAYLOAD`] bytes in one
//! queue, a commit every [`FILL_BATCH`] operations), commits, and drops the queue without
//! closing it: a crash after the last sync (one case closes it instead, for comparison: after
//! a crash, recovery also probes every slot outside the live range for frames whose segment
//! header was lost). Then, in turns, a cold and a warm recovery
//! (`FileStorage::open` + `Queue::open`, the storage wrapped to count and time its reads) and
//! a cold and a warm raw sequential read of the whole data file with 4 MiB reads; cold means
//! the file's pages were evicted with `posix_fadvise(DONTNEED)` first (the machine's other
//! caches stay). Recovery replays the log from the oldest live message (or the last
//! checkpoint), so what it reads grows with the live backlog, not with the messages ever sent,
//! unless an old message stays unacknowledged and pins the log.
//!
//! The cases: a backlog of 1000 and of 4096 messages in a queue with the node's capacities
//! (4096 messages, 8 MiB of 64 KiB segments, as in (g)); a backlog of 10 000 and of 50 000 in a
//! queue with room for [`LARGE_MESSAGES`] messages in [`LARGE_CAPACITY`] bytes (more than the
//! node holds), the first of them also closed cleanly; 50 000 messages sent through a backlog
//! held at 1000 by receiving and acking the oldest (the log behind it reclaimed); the same with
//! the first message leased and never acknowledged, which pins every segment after it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use bedrock::log::Recovery;
use bedrock::queue::{Config, Queue};
use bedrock::service::Service;
use bedrock::time::Instant as QueueInstant;
use bedrock_std::{FileOptions, FileStorage, DATA_FILE_NAME};

use super::queue_load::{self, payload, PAYLOAD, PRODUCERS, QUEUES, REPLIES};
use super::{median, median_of, Row, Timed, READ_BUFFER};
use crate::error::{fail, Error};

/// Live messages of the larger queue.
pub const LARGE_MESSAGES: usize = 65536;
/// Store of the larger queue.
pub const LARGE_CAPACITY: u64 = 32 << 20;
/// Operations (sends, acks) per commit while filling.
const FILL_BATCH: u64 = 512;
/// Fewest recoveries per case and cache state.
const RUNS_MIN: usize = 3;
/// Most recoveries per case and cache state.
const RUNS_MAX: usize = 15;
/// Receive+ack pairs timed in process at a case's backlog.
const DRAIN: u64 = 1000;
/// The queue's name.
const QUEUE: &str = "bench";
/// Lent buffer of the queue's log, as in (g).
const LOG_BUFFER_BYTES: usize = 256 << 10;
/// Stack of the thread that runs the cases: the queues keep their tables inline.
const STACK: usize = 512 << 20;

/// One case.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// Messages sent.
    sent: u64,
    /// Live messages kept by receiving and acking the oldest (`sent` when none are acked).
    backlog: u64,
    /// Whether the first message is leased and never acknowledged.
    pinned: bool,
    /// Whether the queue has the node's capacities (else the larger ones).
    node: bool,
    /// Whether the queue was closed (else dropped after its last commit, as in a crash).
    closed: bool,
}

impl Case {
    fn label(&self) -> String {
        let store = match (self.node, self.closed) {
            (true, false) => "node queue",
            (false, false) => "large queue",
            (true, true) => "closed node queue",
            (false, true) => "closed large queue",
        };
        match (self.backlog == self.sent, self.pinned) {
            (true, _) => format!("{store}, {} live", self.backlog),
            (false, false) => format!("{store}, {} sent, {} live", self.sent, self.backlog),
            (false, true) => format!(
                "{store}, {} sent, {} live, 1st pins",
                self.sent, self.backlog
            ),
        }
    }

    fn live(&self) -> u64 {
        self.backlog + u64::from(self.pinned && self.backlog < self.sent)
    }
}

const CASES: [Case; 7] = [
    Case {
        sent: 1000,
        backlog: 1000,
        pinned: false,
        node: true,
        closed: false,
    },
    Case {
        sent: 4096,
        backlog: 4096,
        pinned: false,
        node: true,
        closed: false,
    },
    Case {
        sent: 10_000,
        backlog: 10_000,
        pinned: false,
        node: false,
        closed: false,
    },
    Case {
        sent: 10_000,
        backlog: 10_000,
        pinned: false,
        node: false,
        closed: true,
    },
    Case {
        sent: 50_000,
        backlog: 50_000,
        pinned: false,
        node: false,
        closed: false,
    },
    Case {
        sent: 50_000,
        backlog: 1000,
        pinned: false,
        node: false,
        closed: false,
    },
    Case {
        sent: 50_000,
        backlog: 1000,
        pinned: true,
        node: false,
        closed: false,
    },
];

/// How the store was filled.
#[derive(Debug, Clone, Copy, Default)]
struct Fill {
    sends: Duration,
    acks: Duration,
    acked: u64,
    commits: Duration,
    committed: u64,
    /// The log's next sequence number after the fill: frames ever appended.
    frames: u64,
}

/// One timed recovery.
#[derive(Debug, Clone, Copy)]
struct Run {
    total: Duration,
    reading: Duration,
    reads: u64,
    bytes: u64,
    frames: u64,
    segments: u32,
    live: u64,
}

/// What one case measured.
#[derive(Debug, Clone)]
pub struct Measured {
    case: Case,
    fill: Fill,
    file_bytes: u64,
    cold: Vec<Run>,
    warm: Vec<Run>,
    cold_reads: Vec<Duration>,
    warm_reads: Vec<Duration>,
    /// In-process receive+ack pairs after the recoveries, and their time.
    drained: u64,
    drain: Duration,
    /// Whether the cold runs were cold (eviction worked).
    evicted: bool,
}

#[derive(Debug)]
pub struct Figures {
    cases: Vec<Measured>,
}

pub fn figures(scratch: &Path, budget: Duration) -> Result<Figures, Error> {
    let scratch = scratch.to_path_buf();
    // The large queue's table is megabytes, kept inline: a thread with room for it.
    let handle = thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let mut cases = Vec::new();
            for (index, case) in CASES.iter().enumerate() {
                let dir = scratch.join(format!("recovery-{index}"));
                let measured = if case.node {
                    measure::<{ queue_load::MESSAGES }>(&dir, *case, budget)
                } else {
                    measure::<LARGE_MESSAGES>(&dir, *case, budget)
                };
                let removed = std::fs::remove_dir_all(&dir);
                cases.push(measured?);
                removed.map_err(|error| {
                    fail(format!("could not remove {}: {error}", dir.display()))
                })?;
            }
            Ok(Figures { cases })
        })
        .map_err(|error| fail(format!("cannot start the recovery thread: {error}")))?;
    handle
        .join()
        .map_err(|_| fail("the recovery benchmark panicked"))?
}

fn options<const M: usize>(capacity: Option<u64>) -> FileOptions {
    let _ = M;
    FileOptions {
        capacity,
        ..queue_load::options()
    }
}

fn capacity<const M: usize>() -> u64 {
    if M == queue_load::MESSAGES {
        queue_load::STORE_CAPACITY
    } else {
        LARGE_CAPACITY
    }
}

/// The node's queue configuration (its message limit, checkpoint interval and segments).
fn config() -> Config {
    crate::node::queue_config(1, bedrock::net::MTU_DEFAULT)
}

fn queue_fail(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Error {
    move |error| fail(format!("{what}: {error}"))
}

/// Fills a fresh store with `case`, then crashes (drops the queue without closing it).
fn fill<const M: usize>(dir: &Path, case: Case) -> Result<Fill, Error> {
    let failed = queue_fail("could not fill the recovery queue");
    let storage = FileStorage::open(dir, options::<M>(Some(capacity::<M>())))
        .map_err(|error| failed(&error))?;
    let (mut queue, _) = Queue::<FileStorage, Vec<u8>, M, QUEUES, PRODUCERS, REPLIES>::open(
        storage,
        vec![0; LOG_BUFFER_BYTES],
        config(),
    )
    .map_err(|error| failed(&error))?;
    let now = QueueInstant::ZERO;
    let lease = Duration::from_secs(600);
    let mut out = [0u8; PAYLOAD];
    let mut fill = Fill::default();
    let mut operations = 0u64;
    let mut pinned = false;
    for sequence in 1..=case.sent {
        let start = Instant::now();
        queue
            .send(now, QUEUE, 1, sequence, &payload(1, sequence))
            .map_err(|error| failed(&error))?;
        fill.sends += start.elapsed();
        operations += 1;
        if case.pinned && !pinned {
            // Leased for the lease maximum and never acknowledged: it stays live.
            queue
                .receive(now, QUEUE, lease, &mut out)
                .map_err(|error| failed(&error))?;
            pinned = true;
        }
        // Counted here: `Queue::stats` walks the table to count leases.
        while sequence - fill.acked > case.live() {
            let start = Instant::now();
            let delivery = queue
                .receive(now, QUEUE, lease, &mut out)
                .map_err(|error| failed(&error))?
                .ok_or_else(|| fail("the recovery queue had nothing to deliver"))?;
            queue
                .ack(now, delivery.id, delivery.token)
                .map_err(|error| failed(&error))?;
            fill.acks += start.elapsed();
            fill.acked += 1;
            operations += 1;
        }
        if operations >= FILL_BATCH {
            operations = 0;
            let start = Instant::now();
            queue.commit().map_err(|error| failed(&error))?;
            fill.commits += start.elapsed();
            fill.committed += 1;
        }
    }
    let start = Instant::now();
    queue.commit().map_err(|error| failed(&error))?;
    fill.commits += start.elapsed();
    fill.committed += 1;
    fill.frames = queue.log().next_sequence();
    if case.closed {
        queue.close().map_err(|error| failed(&error))?;
    } else {
        // A crash after the last sync: no close marker.
        drop(queue.into_parts());
    }
    Ok(fill)
}

/// One recovery, timed, with the data file's pages evicted first when `cold`.
fn recover<const M: usize>(dir: &Path, file: &File, cold: bool) -> Result<(Run, bool), Error> {
    let evicted = cold && evict(file);
    let failed = queue_fail("could not recover the queue");
    let start = Instant::now();
    let inner = FileStorage::open(dir, options::<M>(None)).map_err(|error| failed(&error))?;
    let storage = Timed {
        inner,
        reads: 0,
        bytes: 0,
        reading: Duration::ZERO,
    };
    let (queue, recovery): (
        Queue<Timed, Vec<u8>, M, QUEUES, PRODUCERS, REPLIES>,
        Recovery,
    ) = Queue::open(storage, vec![0; LOG_BUFFER_BYTES], config())
        .map_err(|error| failed(&error))?;
    let total = start.elapsed();
    if !recovery.is_clean() {
        return Err(fail(format!(
            "the queue did not recover cleanly: {recovery:?}"
        )));
    }
    let live = u64::from(queue.stats().live);
    let (storage, _) = queue.into_parts();
    Ok((
        Run {
            total,
            reading: storage.reading,
            reads: storage.reads,
            bytes: storage.bytes,
            frames: recovery.frames,
            segments: recovery.segments,
            live,
        },
        evicted,
    ))
}

/// Receives and acks up to [`DRAIN`] messages in process at the case's backlog, timed; drops
/// the queue without a commit, so the store is left as it was.
fn drain<const M: usize>(dir: &Path) -> Result<(u64, Duration), Error> {
    let failed = queue_fail("could not drain the queue");
    let storage = FileStorage::open(dir, options::<M>(None)).map_err(|error| failed(&error))?;
    let (mut queue, _) = Queue::<FileStorage, Vec<u8>, M, QUEUES, PRODUCERS, REPLIES>::open(
        storage,
        vec![0; LOG_BUFFER_BYTES],
        config(),
    )
    .map_err(|error| failed(&error))?;
    let now = QueueInstant::ZERO;
    let mut out = [0u8; PAYLOAD];
    let mut drained = 0;
    let start = Instant::now();
    while drained < DRAIN {
        let Some(delivery) = queue
            .receive(now, QUEUE, Duration::from_secs(600), &mut out)
            .map_err(|error| failed(&error))?
        else {
            break;
        };
        queue
            .ack(now, delivery.id, delivery.token)
            .map_err(|error| failed(&error))?;
        drained += 1;
    }
    let elapsed = start.elapsed();
    drop(queue.into_parts());
    Ok((drained, elapsed))
}

fn measure<const M: usize>(dir: &Path, case: Case, budget: Duration) -> Result<Measured, Error> {
    let fill = fill::<M>(dir, case)?;
    let data: PathBuf = dir.join(DATA_FILE_NAME);
    let file = File::open(&data)
        .map_err(|error| fail(format!("could not open {}: {error}", data.display())))?;
    let file_bytes = file
        .metadata()
        .map_err(|error| fail(format!("could not stat {}: {error}", data.display())))?
        .len();
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut measured = Measured {
        case,
        fill,
        file_bytes,
        cold: Vec::new(),
        warm: Vec::new(),
        cold_reads: Vec::new(),
        warm_reads: Vec::new(),
        drained: 0,
        drain: Duration::ZERO,
        evicted: true,
    };
    let share = budget / CASES.len() as u32;
    let start = Instant::now();
    while measured.warm.len() < RUNS_MIN
        || (start.elapsed() < share && measured.warm.len() < RUNS_MAX)
    {
        let (run, evicted) = recover::<M>(dir, &file, true)?;
        measured.evicted &= evicted;
        measured.cold.push(run);
        measured.evicted &= evict(&file);
        measured
            .cold_reads
            .push(read_all(&file, file_bytes, &mut buffer).map_err(read_fail(&data))?);
        let (run, _) = recover::<M>(dir, &file, false)?;
        measured.warm.push(run);
        measured
            .warm_reads
            .push(read_all(&file, file_bytes, &mut buffer).map_err(read_fail(&data))?);
    }
    if let Some(run) = measured.warm.iter().find(|run| run.live != case.live()) {
        return Err(fail(format!(
            "recovery found {} live messages, {} were left",
            run.live,
            case.live()
        )));
    }
    (measured.drained, measured.drain) = drain::<M>(dir)?;
    Ok(measured)
}

fn read_fail(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |error| fail(format!("could not read {}: {error}", path.display()))
}

/// Reads `len` bytes of `file` from the start with 4 MiB reads, timed.
fn read_all(file: &File, len: u64, buffer: &mut [u8]) -> io::Result<Duration> {
    let start = Instant::now();
    let mut offset = 0;
    while offset < len {
        let step = (len - offset).min(buffer.len() as u64) as usize;
        file.read_exact_at(&mut buffer[..step], offset)?;
        std::hint::black_box(&buffer[..step]);
        offset += step as u64;
    }
    Ok(start.elapsed())
}

/// Evicts the pages of `file` (synced, so clean) from the page cache; false when it could not.
fn evict(file: &File) -> bool {
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for the
    // whole call because `file` is borrowed.
    let advised = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    advised == 0
}

impl Measured {
    /// Median recovery time, bytes read, and the median raw read rate (bytes per second).
    fn medians(runs: &[Run], reads: &[Duration], file_bytes: u64) -> (f64, u64, f64) {
        let mut totals: Vec<Duration> = runs.iter().map(|run| run.total).collect();
        let mut reads = reads.to_vec();
        let bytes = runs.first().map_or(0, |run| run.bytes);
        (
            median(&mut totals),
            bytes,
            file_bytes as f64 / median(&mut reads),
        )
    }

    fn row(&self, cold: bool) -> Row {
        let (runs, reads, cache) = match cold {
            true => (&self.cold, &self.cold_reads, "cold"),
            false => (&self.warm, &self.warm_reads, "warm"),
        };
        let (seconds, bytes, raw) = Self::medians(runs, reads, self.file_bytes);
        let rate = bytes as f64 / seconds;
        Row {
            figure: format!("i. reopen {}, {cache}", self.case.label()),
            measured: format!("{:.1} ms {:.0} MB/s", seconds * 1e3, rate / 1e6),
            limit: format!("{:.0} MB/s seq. read", raw / 1e6),
            ratio: format!("{:.2}", rate / raw),
            goal: "-",
            result: "-".to_string(),
        }
    }

    fn note(&self) -> String {
        let run = self.warm.first().copied().unwrap_or(Run {
            total: Duration::ZERO,
            reading: Duration::ZERO,
            reads: 0,
            bytes: 0,
            frames: 0,
            segments: 0,
            live: 0,
        });
        let share = |runs: &[Run]| {
            let ratios: Vec<f64> = runs
                .iter()
                .map(|run| run.reading.as_secs_f64() / run.total.as_secs_f64())
                .collect();
            median_of(&ratios) * 100.0
        };
        let per = |time: Duration, count: u64| time.as_secs_f64() * 1e6 / count.max(1) as f64;
        format!(
            "i: {}: filled with {} sends ({:.1} us each) and {} receive+acks ({:.1} us each), \
             {} commits ({:.0} us each), {} frames appended in all; recovery read {} KiB in {} \
             reads ({:.0}% of the time inside them cold, {:.0}% warm), replayed {} frames of \
             {} segments, found {} live messages; {} runs per cache state; then {} in-process \
             receive+acks at this backlog took {:.1} us each (no sync)",
            self.case.label(),
            self.case.sent,
            per(self.fill.sends, self.case.sent),
            self.fill.acked,
            per(self.fill.acks, self.fill.acked),
            self.fill.committed,
            per(self.fill.commits, self.fill.committed),
            self.fill.frames,
            run.bytes >> 10,
            run.reads,
            share(&self.cold),
            share(&self.warm),
            run.frames,
            run.segments,
            run.live,
            self.warm.len(),
            self.drained,
            per(self.drain, self.drained),
        )
    }
}

impl Figures {
    pub fn rows(&self) -> Vec<Row> {
        self.cases
            .iter()
            .flat_map(|measured| [measured.row(true), measured.row(false)])
            .collect()
    }

    pub fn notes(&self) -> Vec<String> {
        let evicted = self.cases.iter().all(|measured| measured.evicted);
        let mut notes = vec![
            format!(
                "i: reopen = FileStorage::open + Queue::open after a crash (dropped without \
                 close after the last commit; \"closed\": after Queue::close), medians; \
                 MB/s = bytes recovery read / its time; raw = read_exact_at of the whole data \
                 file ({} MiB node store, {} MiB large store) with 4 MiB reads; node queue: \
                 {} messages, large queue: {LARGE_MESSAGES}; {PAYLOAD}-byte messages, one \
                 producer, a commit every {FILL_BATCH} operations",
                queue_load::STORE_CAPACITY >> 20,
                LARGE_CAPACITY >> 20,
                queue_load::MESSAGES,
            ),
            match evicted {
                true => "i: cold = the data file's pages evicted with posix_fadvise(DONTNEED) \
                         before the run"
                    .to_string(),
                false => "i: posix_fadvise(DONTNEED) failed: the cold figures are warm".to_string(),
            },
        ];
        notes.extend(self.cases.iter().map(Measured::note));
        notes
    }
}
