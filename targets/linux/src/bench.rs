//! `bedrock bench`: throughput figures, each next to the raw limit measured in the same run.
//!
//! Nothing here asserts on time: the command prints figures and whether each goal was met.
//!
//! - (a) raw: one 32-byte `pwrite` (the bytes of one counter frame) at successive offsets of a
//!   preallocated, synced file, plus `fdatasync` each — the cost floor of a durable increment.
//! - (b) the durable counter on `FileStorage`, `incr(1)`: one frame and one sync per increment.
//! - (c) the counter with 64 increments staged per commit (group commit).
//!
//!   (a), (b) and (c) take turns, one operation (for (c) one commit) at a time, so that drift
//!   in the device affects all three alike; ratios are medians over rounds.
//! - (d) `Log::open` over a 256 MiB log of 4 KiB frames, the visitor touching every payload,
//!   against a plain sequential read of the same bytes with a 4 MiB buffer, both with the page
//!   cache dropped when possible, and both warm.
//! - (e) CRC-32C over 64 MiB against the memory read bandwidth of one core.
//! - (f) durable increments per second through one node (event loop, UDP on 127.0.0.1,
//!   encrypted envelopes, the distributed counter on `FileStorage`) from 1, 16 and 64
//!   concurrent clients, against (a) run in turns with each level; see
//!   [`node_load`].
//! - (g) durable queue sends per second from 1, 16 and 64 concurrent producers, and receives
//!   and acks per second from 1, 16 and 64 concurrent consumers, through one node running
//!   `bedrock::queue::Queue`, against (a) run in turns; see [`queue_load`].
//! - (h) jobs claimed and completed per second by 16 concurrent workers through one node
//!   running `bedrock::jobs::Scheduler`, against (a) run in turns; see [`jobs_load`].
//! - (i) `Queue::open` after a crash, against the backlog of live messages and the log behind
//!   it, beside a raw sequential read of the same file; see [`queue_recovery`].
//! - (j) uncontended lock acquire+release cycles per second from 1 and 16 clients through one
//!   node running `bedrock::lock::LockServer`, against (a) run in turns; (k) the fail-over time
//!   of a lock whose holder died, beside its ttl and `ttl · (1 + ε)`; (l) quorum lock
//!   acquire+release cycles per second through three lock nodes from one `QuorumLock` client,
//!   with the p50 and p99 latency of an acquire, against (a) run in turns; see [`lock_load`].
//!
//! `--only LETTERS` selects figures by letter (`--only ghi` runs g, h and i; a, b and c go
//! together).

mod jobs_load;
mod lock_load;
mod node_load;
mod queue_load;
mod queue_recovery;
mod service_load;

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bedrock::checksum::{crc32c, implementation};
use bedrock::counter::{CounterConfig, KIND_ADD};
use bedrock::frame::{self, Header};
use bedrock::log::{Config, Log, Policy};
use bedrock::storage::{Geometry, Storage};
use bedrock_std::{FileError, FileOptions, FileStorage, DATA_FILE_NAME};

use crate::error::{fail, Error};
use crate::output;
use crate::store::{self, FileCounter};

/// Rounds the figures measured side by side ((a) to (c); (e)) are cut into.
const ROUNDS: u32 = 6;
/// Increments staged per commit in (c).
const GROUP: u32 = 64;
/// Segment (and erase block) of the replay log.
const REPLAY_SEGMENT: u32 = 1 << 20;
/// Capacity of the replay log: room for the frames plus spare segments.
const REPLAY_CAPACITY: u64 = 288 << 20;
/// Payload per replay frame: 24 header + 4064 + 4 CRC = 4092 bytes, padded to 4 KiB.
const REPLAY_PAYLOAD: usize = 4064;
/// Frames in the replay log.
const REPLAY_FRAMES: u64 = 65536;
/// Fewest replay runs per cache state: the disk's speed varies from run to run.
const REPLAY_RUNS_MIN: usize = 5;
/// Bytes per storage read during replay, and per `read` of the raw sequential read.
const READ_BUFFER: usize = 4 << 20;
/// Buffer CRC-32C and the memory read run over.
const CRC_BUFFER: usize = 64 << 20;

const _: () = assert!(frame::padded_len(REPLAY_PAYLOAD, 8) == 4096);
const _: () = assert!(REPLAY_FRAMES * 4096 >= 256 << 20);
/// One segment holds 255 frames after its header; every segment opened must fit in the ring.
const _: () = assert!(REPLAY_FRAMES.div_ceil(255) < REPLAY_CAPACITY / REPLAY_SEGMENT as u64);

/// `bedrock bench [--dir DIR] [--seconds S]`.
pub fn run(dir: Option<&Path>, seconds: f64, only: Option<&str>) -> Result<ExitCode, Error> {
    let base = dir.unwrap_or(Path::new("."));
    if !base.is_dir() {
        return Err(fail(format!("{} is not a directory", base.display())));
    }
    let scratch = tempfile::Builder::new()
        .prefix(".bedrock-bench-")
        .tempdir_in(base)
        .map_err(|error| {
            fail(format!(
                "could not create a scratch directory in {}: {error}",
                base.display()
            ))
        })?;
    let budget = Duration::from_secs_f64(seconds);
    let context = Context::probe(scratch.path());
    for line in context.lines() {
        output::line(line)?;
    }
    let selection = match only {
        Some(text) => Selection::parse(text)?,
        None => Selection { letters: None },
    };
    if let Some(letters) = &selection.letters {
        output::line(format!("  selection    {letters} (--only)"))?;
    }
    output::line("")?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if selection.has('a') {
        progress(format_args!(
            "a-c: raw sync, counter incr, counter {GROUP} per commit: {ROUNDS} rounds"
        ));
        let syncs = sync_figures(scratch.path(), budget)?;
        rows.extend(sync_rows(&syncs));
        notes.extend(syncs.notes());
    }
    if selection.has('f') {
        progress(format_args!(
            "f: one node, {:?} concurrent UDP clients",
            node_load::LEVELS
        ));
        let node = node_load::figures(scratch.path(), budget)?;
        rows.extend(node_load::rows(&node));
        notes.extend(node_load::notes(&node));
    }
    if selection.has('g') || selection.has('h') {
        let mut raw = RawSync::new(scratch.path())?;
        if selection.has('g') {
            progress(format_args!(
                "g: one queue node, {:?} concurrent producers, then consumers",
                queue_load::LEVELS
            ));
            let queue = queue_load::figures(scratch.path(), budget, &mut raw)?;
            rows.extend(queue.rows());
            notes.extend(queue.notes());
        }
        if selection.has('h') {
            progress(format_args!(
                "h: one job scheduler node, {} concurrent workers",
                jobs_load::WORKERS
            ));
            let jobs = jobs_load::figures(scratch.path(), budget, &mut raw)?;
            rows.extend(jobs.rows());
            notes.extend(jobs.notes());
        }
    }
    if selection.has('j') || selection.has('k') || selection.has('l') {
        let mut raw = RawSync::new(scratch.path())?;
        progress(format_args!(
            "j-l: one lock node, {:?} clients acquiring and releasing, then fail-over of a dead \
             holder's lock at ttls {:?}, then a quorum lock on {} nodes",
            lock_load::LEVELS,
            lock_load::FAILOVER_TTLS,
            lock_load::QUORUM_NODES
        ));
        let locks = lock_load::figures(
            scratch.path(),
            budget,
            &mut raw,
            (selection.has('j'), selection.has('k'), selection.has('l')),
        )?;
        rows.extend(locks.rows());
        notes.extend(locks.notes());
    }
    if selection.has('i') {
        progress(format_args!("i: queue recovery against its backlog"));
        let recovery = queue_recovery::figures(scratch.path(), budget)?;
        rows.extend(recovery.rows());
        notes.extend(recovery.notes());
    }
    if selection.has('d') {
        progress(format_args!(
            "d: writing a {} MiB log",
            (REPLAY_FRAMES * 4096) >> 20
        ));
        let replay = replay_figures(scratch.path(), budget)?;
        rows.extend(replay_rows(&replay));
        notes.extend(replay.notes());
    }
    if selection.has('e') {
        progress(format_args!("e: CRC-32C and memory read"));
        rows.push(crc_row(crc_figure(budget)));
    }
    // The table and the notes in letter order, whatever order the figures ran in.
    rows.sort_by_key(|row| row.figure.chars().next());
    notes.sort_by_key(|note| note.chars().next());

    for line in render(&rows) {
        output::line(line)?;
    }
    output::line("")?;
    for line in notes {
        output::line(line)?;
    }
    output::line(format!("load average {} at the end", load_average()))?;
    let removed = scratch.path().to_path_buf();
    scratch.close().map_err(|error| {
        fail(format!(
            "could not remove the scratch directory {}: {error}",
            removed.display()
        ))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The figures to run: every one, or the letters given to `--only`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selection {
    letters: Option<String>,
}

impl Selection {
    /// Every figure's letter; a, b and c run together.
    const LETTERS: &'static str = "abcdefghijkl";

    fn parse(text: &str) -> Result<Self, Error> {
        let mut letters = String::new();
        for letter in text.chars().filter(|c| !c.is_whitespace() && *c != ',') {
            let letter = letter.to_ascii_lowercase();
            if !Self::LETTERS.contains(letter) {
                return Err(fail(format!(
                    "--only: no figure {letter:?} (the figures are a to l)"
                )));
            }
            // a, b and c are measured in turns: any of them runs all three.
            let group = if "abc".contains(letter) { "abc" } else { "" };
            for letter in group.chars().chain(std::iter::once(letter)) {
                if !letters.contains(letter) {
                    letters.push(letter);
                }
            }
        }
        let mut sorted: Vec<char> = letters.chars().collect();
        sorted.sort_unstable();
        Ok(Self {
            letters: Some(sorted.into_iter().collect()),
        })
    }

    fn has(&self, letter: char) -> bool {
        self.letters
            .as_ref()
            .is_none_or(|letters| letters.contains(letter))
    }
}

fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("bench: {what}");
}

fn io_fail<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |error| fail(format!("could not {action} {}: {error}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Machine context

/// What the figures depend on.
#[derive(Debug)]
struct Context {
    dir: PathBuf,
    mount: String,
    cpu: String,
    cpus: usize,
    kernel: String,
    memory: String,
    load: String,
}

impl Context {
    fn probe(dir: &Path) -> Self {
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mount = fs::read_to_string("/proc/mounts")
            .ok()
            .and_then(|mounts| mount_of(&mounts, &dir))
            .unwrap_or_else(|| "unknown".to_string());
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".to_string());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = field(&meminfo, "MemTotal").unwrap_or_else(|| "unknown".to_string());
        Self {
            dir,
            mount,
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |count| count.get()),
            kernel,
            memory,
            load: load_average(),
        }
    }

    fn lines(&self) -> Vec<String> {
        let build = match cfg!(debug_assertions) {
            true => "debug (figures are meaningless: use --release)",
            false => "release",
        };
        vec![
            "bedrock bench".to_string(),
            format!("  scratch dir  {}", self.dir.display()),
            format!("  file system  {}", self.mount),
            format!("  cpu          {} ({} logical CPUs)", self.cpu, self.cpus),
            format!("  memory       {}", self.memory),
            format!("  kernel       Linux {}", self.kernel),
            format!("  load average {} (1, 5, 15 min) at the start", self.load),
            format!("  crc32c       {}", implementation()),
            format!("  build        {build}"),
        ]
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews every figure.
fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    match fields.is_empty() {
        true => "unknown".to_string(),
        false => fields.join(" "),
    }
}

/// The mount holding `dir` (longest mount point that is a prefix of it), from /proc/mounts.
fn mount_of(mounts: &str, dir: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [device, point, kind, options, ..] => Some((*device, *point, *kind, *options)),
                _ => None,
            }
        })
        .filter(|(_, point, _, _)| dir.starts_with(point))
        .max_by_key(|(_, point, _, _)| point.len())
        .map(|(device, point, kind, options)| {
            format!("{kind} on {device}, mounted at {point} ({options})")
        })
}

/// The value of the first `name: value` line.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// (a), (b), (c): syncs

/// Operations done in some time.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    operations: u64,
    elapsed: Duration,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn add(&mut self, other: Rate) {
        self.operations += other.operations;
        self.elapsed += other.elapsed;
    }
}

/// Runs `step` (which does `per_step` operations) until `budget` has elapsed.
fn for_duration<E>(
    budget: Duration,
    per_step: u64,
    mut step: impl FnMut() -> Result<(), E>,
) -> Result<Rate, E> {
    let start = Instant::now();
    let mut operations = 0;
    loop {
        step()?;
        operations += per_step;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return Ok(Rate {
                operations,
                elapsed,
            });
        }
    }
}

/// The bytes of one counter increment frame (`add 1`): 32 bytes at write size 8.
fn counter_frame() -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    let header = Header {
        kind: KIND_ADD,
        sequence: 1,
        epoch: 1,
        unsynced: 0,
    };
    let len = frame::emit(
        &mut bytes,
        header,
        store::WRITE_SIZE as usize,
        0xFF,
        |area| {
            area[0] = 1;
            Ok(1)
        },
    )
    .unwrap_or(0);
    bytes.truncate(len);
    bytes
}

/// A preallocated file of `len` bytes of 0xFF, synced.
fn preallocated(path: &Path, len: u64) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_fail("create", path))?;
    let chunk = vec![0xFFu8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        let step = (len - offset).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..step], offset)
            .map_err(io_fail("fill", path))?;
        offset += step as u64;
    }
    file.sync_all().map_err(io_fail("sync", path))?;
    Ok(file)
}

/// (a), (b) and (c), measured taking turns so that drift in the device (other processes
/// syncing, the host's cache) affects all three alike.
#[derive(Debug, Default)]
struct SyncFigures {
    raw: Rate,
    single: Rate,
    grouped: Rate,
    /// Per round: (b) / (a).
    single_ratios: Vec<f64>,
    /// Per round: (c) / (b).
    grouped_ratios: Vec<f64>,
}

impl SyncFigures {
    fn notes(&self) -> Vec<String> {
        let spread = |ratios: &[f64]| {
            let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let high = ratios.iter().copied().fold(0.0, f64::max);
            format!("{low:.2} to {high:.2}")
        };
        vec![
            format!(
                "a-c: {ROUNDS} rounds in which a, b and c take turns one operation (c: one commit) \
                 at a time; ratios are medians of the per-round ratios (b/a from {}, c/b from {})",
                spread(&self.single_ratios),
                spread(&self.grouped_ratios)
            ),
            format!(
                "a-c: counter store of {} KiB, {} KiB segments, write size {}; an increment frame \
                 is 32 bytes; c stages {GROUP} increments, then commits with one fdatasync",
                store::CAPACITY >> 10,
                store::ERASE_SIZE >> 10,
                store::WRITE_SIZE
            ),
        ]
    }
}

/// (a): 32-byte frames written at successive offsets of a preallocated file, each synced.
struct RawSync {
    path: PathBuf,
    file: File,
    frame: Vec<u8>,
    offset: u64,
}

impl RawSync {
    fn new(scratch: &Path) -> Result<Self, Error> {
        let path = scratch.join("raw.dat");
        let file = preallocated(&path, store::CAPACITY)?;
        Ok(Self {
            path,
            file,
            frame: counter_frame(),
            offset: 0,
        })
    }

    /// Steps for `budget`.
    fn run_for(&mut self, budget: Duration) -> Result<Rate, Error> {
        for_duration(budget, 1, || self.step())
    }

    fn step(&mut self) -> Result<(), Error> {
        self.file
            .write_all_at(&self.frame, self.offset)
            .and_then(|()| self.file.sync_data())
            .map_err(io_fail("write and sync", &self.path))?;
        self.offset = (self.offset + self.frame.len() as u64) % store::CAPACITY;
        Ok(())
    }
}

fn sync_figures(scratch: &Path, budget: Duration) -> Result<SyncFigures, Error> {
    let mut raw = RawSync::new(scratch)?;
    let mut single = open_counter(&scratch.join("counter-single"))?;
    let mut grouped = open_counter(&scratch.join("counter-grouped"))?;
    // Three figures of `budget` each, cut into rounds; inside a round the three operations take
    // turns one at a time, so a slow moment of the device hits all three alike.
    let round = budget * 3 / ROUNDS;
    let mut figures = SyncFigures::default();
    for _ in 0..ROUNDS {
        let mut rates = [Rate::default(); 3];
        let start = Instant::now();
        while start.elapsed() < round {
            rates[0].add(timed(1, || raw.step())?);
            rates[1].add(timed(1, || single.incr(1).map(drop).map_err(counter_fail))?);
            rates[2].add(timed(u64::from(GROUP), || {
                for _ in 0..GROUP {
                    grouped.stage(1).map_err(counter_fail)?;
                }
                grouped.commit().map(drop).map_err(counter_fail)
            })?);
        }
        figures.raw.add(rates[0]);
        figures.single.add(rates[1]);
        figures.grouped.add(rates[2]);
        figures
            .single_ratios
            .push(rates[1].per_second() / rates[0].per_second());
        figures
            .grouped_ratios
            .push(rates[2].per_second() / rates[1].per_second());
    }
    Ok(figures)
}

/// Times one call of `operation`, which does `operations` operations.
fn timed(operations: u64, operation: impl FnOnce() -> Result<(), Error>) -> Result<Rate, Error> {
    let start = Instant::now();
    operation()?;
    Ok(Rate {
        operations,
        elapsed: start.elapsed(),
    })
}

fn open_counter(dir: &Path) -> Result<FileCounter, Error> {
    let storage =
        FileStorage::open(dir, store::options()).map_err(|error| fail(error.to_string()))?;
    let buffer = vec![0u8; store::ERASE_SIZE as usize];
    let (counter, _) =
        bedrock::counter::Counter::open(storage, buffer, CounterConfig::default())
            .map_err(|error| fail(format!("could not open the benchmark counter: {error}")))?;
    Ok(counter)
}

fn counter_fail(error: impl std::fmt::Display) -> Error {
    fail(format!("the benchmark counter failed: {error}"))
}

// ---------------------------------------------------------------------------------------------
// (d): replay

/// How the page cache was emptied before a cold measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// `echo 3 > /proc/sys/vm/drop_caches` worked.
    Dropped,
    /// drop_caches was not writable; `posix_fadvise(DONTNEED)` evicted the file's pages.
    Evicted,
    /// Neither worked.
    Warm,
}

impl Cache {
    fn label(self) -> &'static str {
        match self {
            Self::Dropped => "cold cache",
            Self::Evicted => "cold (fadvise)",
            Self::Warm => "warm cache",
        }
    }

    fn note(self) -> &'static str {
        match self {
            Self::Dropped => {
                "page cache dropped before each cold run (echo 3 > /proc/sys/vm/drop_caches)"
            }
            Self::Evicted => {
                "drop_caches not writable: the log file's pages were evicted with \
                 posix_fadvise(DONTNEED) before each cold run"
            }
            Self::Warm => "page cache could not be dropped: every replay figure is warm cache",
        }
    }
}

/// Empties the page cache of `file` (a synced file, so its pages are clean) as well as it can.
fn evict(file: &File) -> Cache {
    // drop_caches frees only clean pages: make sure none of the file's are dirty.
    if file.sync_all().is_err() {
        return Cache::Warm;
    }
    if fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
        return Cache::Dropped;
    }
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for the
    // whole call because `file` is borrowed.
    let advised = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if advised == 0 {
        Cache::Evicted
    } else {
        Cache::Warm
    }
}

/// A storage that times its reads: how much of a replay is spent waiting for the file.
#[derive(Debug)]
struct Timed {
    inner: FileStorage,
    reads: u64,
    bytes: u64,
    reading: Duration,
}

impl Storage for Timed {
    type Error = FileError;

    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FileError> {
        let start = Instant::now();
        let result = self.inner.read(offset, buf);
        self.reading += start.elapsed();
        self.reads += 1;
        self.bytes += buf.len() as u64;
        result
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FileError> {
        self.inner.write(offset, data)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), FileError> {
        self.inner.erase(offset, len)
    }

    fn sync(&mut self) -> Result<(), FileError> {
        self.inner.sync()
    }
}

/// One timed replay.
#[derive(Debug, Clone, Copy)]
struct ReplayRun {
    total: Duration,
    reading: Duration,
    reads: u64,
    bytes: u64,
}

/// The runs of one cache state.
#[derive(Debug, Default)]
struct Runs {
    replays: Vec<ReplayRun>,
    reads: Vec<Duration>,
    /// Sequential reads preceded by recovery's header pass (cold only).
    hopping_reads: Vec<Duration>,
}

impl Runs {
    /// Median replay rate and median raw read rate (bytes per second), and the median of the
    /// per-run ratios of the two (each run measures both back to back).
    fn rates(&self, frame_bytes: u64, read_bytes: u64) -> (f64, f64, f64) {
        let mut totals: Vec<Duration> = self.replays.iter().map(|run| run.total).collect();
        let mut reads = self.reads.clone();
        let ratios: Vec<f64> = self
            .replays
            .iter()
            .zip(&self.reads)
            .map(|(replay, read)| {
                let replayed = frame_bytes as f64 / replay.total.as_secs_f64();
                replayed / (read_bytes as f64 / read.as_secs_f64())
            })
            .collect();
        (
            frame_bytes as f64 / median(&mut totals),
            read_bytes as f64 / median(&mut reads),
            median_of(&ratios),
        )
    }

    /// Where a replay's time goes: reads per run, bytes per run, share of time in reads.
    fn breakdown(&self) -> (u64, u64, f64) {
        let count = self.replays.len().max(1) as u64;
        let total: Duration = self.replays.iter().map(|run| run.total).sum();
        let reading: Duration = self.replays.iter().map(|run| run.reading).sum();
        let reads: u64 = self.replays.iter().map(|run| run.reads).sum();
        let bytes: u64 = self.replays.iter().map(|run| run.bytes).sum();
        let share = reading.as_secs_f64() / total.as_secs_f64().max(f64::MIN_POSITIVE);
        (reads / count, bytes / count, share)
    }
}

/// Replay and raw read throughputs, in bytes per second, per cache state.
#[derive(Debug)]
struct ReplayFigures {
    /// Frame bytes (4 KiB each, padding included) one replay yields.
    frame_bytes: u64,
    /// Bytes the raw read covers: the live segments, headers and unused tails included.
    read_bytes: u64,
    write_rate: f64,
    cache: Cache,
    cold: Runs,
    warm: Runs,
}

impl ReplayFigures {
    fn cold_rates(&self) -> Option<(Cache, (f64, f64, f64))> {
        let rates = self.cold.rates(self.frame_bytes, self.read_bytes);
        (self.cache != Cache::Warm).then_some((self.cache, rates))
    }

    fn warm_rates(&self) -> (f64, f64, f64) {
        self.warm.rates(self.frame_bytes, self.read_bytes)
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = vec![
            format!(
                "d: {} frames of 4096 bytes ({} MiB) in a {} MiB store of 1 MiB segments; the raw \
                 read covers the {} MiB of live segments; medians of {} runs (ratio: median of the \
                 per-run ratios); the log was written at {:.0} MB/s (append, then one fdatasync)",
                REPLAY_FRAMES,
                self.frame_bytes >> 20,
                REPLAY_CAPACITY >> 20,
                self.read_bytes >> 20,
                self.warm.replays.len(),
                self.write_rate / 1e6
            ),
            "d: replay = FileStorage::open + Log::open, the visitor reading every payload's first \
             byte; raw = read_exact_at of 4 MiB chunks"
                .to_string(),
            format!("d: {}", self.cache.note()),
        ];
        for (label, runs) in [("cold", &self.cold), ("warm", &self.warm)] {
            if runs.replays.is_empty() {
                continue;
            }
            let (reads, bytes, share) = runs.breakdown();
            notes.push(format!(
                "d: {label} replay: {reads} storage reads of {} MiB in all per run, {:.0}% of the \
                 time inside them; the rest is parsing, CRC-32C and the visitor",
                bytes >> 20,
                share * 100.0
            ));
        }
        if !self.cold.hopping_reads.is_empty() {
            let mut hopping = self.cold.hopping_reads.clone();
            let (_, plain, _) = self.cold.rates(self.frame_bytes, self.read_bytes);
            notes.push(format!(
                "d: cold raw read preceded by recovery's header pass (64 bytes at each of the {} \
                 slot starts): {:.0} MB/s, against {:.0} MB/s without it",
                REPLAY_CAPACITY / u64::from(REPLAY_SEGMENT),
                self.read_bytes as f64 / median(&mut hopping) / 1e6,
                plain / 1e6
            ));
        }
        notes
    }
}

fn replay_options() -> (FileOptions, Config) {
    let options = FileOptions {
        capacity: Some(REPLAY_CAPACITY),
        read_size: 1,
        write_size: 8,
        erase_size: REPLAY_SEGMENT,
    };
    let config = Config {
        segment_size: REPLAY_SEGMENT,
        payload_max: REPLAY_PAYLOAD as u32,
        policy: Policy::StopAtCorruption,
    };
    (options, config)
}

fn replay_figures(scratch: &Path, budget: Duration) -> Result<ReplayFigures, Error> {
    let dir = scratch.join("replay");
    let (write_rate, newest_epoch) = write_replay_log(&dir)?;
    let data = dir.join(DATA_FILE_NAME);
    let file = File::open(&data).map_err(io_fail("open", &data))?;
    // The live segments are slots 1..=newest (epoch e lives in slot e, the ring never wrapped).
    let segment = u64::from(REPLAY_SEGMENT);
    let live = segment..u64::from(newest_epoch + 1) * segment;
    let mut buffer = vec![0u8; READ_BUFFER + 8192];
    let (mut cold, mut warm) = (Runs::default(), Runs::default());
    let mut cache = Cache::Warm;
    let start = Instant::now();
    while warm.replays.len() < REPLAY_RUNS_MIN
        || (start.elapsed() < budget && warm.replays.len() < 25)
    {
        cache = evict(&file);
        if cache != Cache::Warm {
            cold.replays.push(replay_once(&dir, &mut buffer)?);
            evict(&file);
            cold.reads
                .push(read_once(&file, &data, live.clone(), false, &mut buffer)?);
            evict(&file);
            cold.hopping_reads
                .push(read_once(&file, &data, live.clone(), true, &mut buffer)?);
        }
        warm.replays.push(replay_once(&dir, &mut buffer)?);
        warm.reads
            .push(read_once(&file, &data, live.clone(), false, &mut buffer)?);
    }
    Ok(ReplayFigures {
        frame_bytes: REPLAY_FRAMES * 4096,
        read_bytes: live.end - live.start,
        write_rate,
        cache,
        cold,
        warm,
    })
}

fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn median(times: &mut [Duration]) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(f64::INFINITY, Duration::as_secs_f64)
        .max(f64::MIN_POSITIVE)
}

/// Writes the replay log; returns the write rate (bytes per second) and the newest epoch.
fn write_replay_log(dir: &Path) -> Result<(f64, u32), Error> {
    let (options, config) = replay_options();
    let start = Instant::now();
    let storage = FileStorage::open(dir, options).map_err(|error| fail(error.to_string()))?;
    let buffer = vec![0u8; READ_BUFFER + 8192];
    let (mut log, _) = Log::open(storage, buffer, config, |_| Ok::<(), Error>(()))
        .map_err(|error| fail(format!("could not open the replay log: {error}")))?;
    let mut newest_epoch = 0;
    for sequence in 0..REPLAY_FRAMES {
        let appended = log
            .append(KIND_ADD, |area| {
                let payload = &mut area[..REPLAY_PAYLOAD];
                payload.fill(sequence as u8);
                payload[..8].copy_from_slice(&sequence.to_le_bytes());
                Ok(REPLAY_PAYLOAD)
            })
            .map_err(|error| fail(format!("could not write the replay log: {error}")))?;
        newest_epoch = appended.position.epoch;
    }
    log.sync()
        .map_err(|error| fail(format!("could not sync the replay log: {error}")))?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(((REPLAY_FRAMES * 4096) as f64 / elapsed, newest_epoch))
}

/// One recovery of the replay log, timed; checks it yielded every frame.
fn replay_once(dir: &Path, buffer: &mut Vec<u8>) -> Result<ReplayRun, Error> {
    let (options, config) = replay_options();
    let options = FileOptions {
        capacity: None,
        ..options
    };
    let mut touched = 0u8;
    let mut bytes = 0u64;
    let start = Instant::now();
    let inner = FileStorage::open(dir, options).map_err(|error| fail(error.to_string()))?;
    let storage = Timed {
        inner,
        reads: 0,
        bytes: 0,
        reading: Duration::ZERO,
    };
    let lent = std::mem::take(buffer);
    let (log, recovery) = Log::open(storage, lent, config, |entry| {
        touched ^= entry.payload[0];
        bytes += entry.payload.len() as u64;
        Ok::<(), Error>(())
    })
    .map_err(|error| fail(format!("could not replay the log: {error}")))?;
    let total = start.elapsed();
    black_box(touched);
    let (storage, lent) = log.into_parts();
    *buffer = lent;
    if recovery.frames != REPLAY_FRAMES || !recovery.is_clean() {
        return Err(fail(format!(
            "the replay log did not recover cleanly: {recovery:?}"
        )));
    }
    debug_assert_eq!(bytes, REPLAY_FRAMES * REPLAY_PAYLOAD as u64);
    Ok(ReplayRun {
        total,
        reading: storage.reading,
        reads: storage.reads,
        bytes: storage.bytes,
    })
}

/// One sequential read of `range` with 4 MiB reads, timed. With `hop_first`, first reads 64
/// bytes at every segment start of the store, as recovery's first pass does.
fn read_once(
    file: &File,
    path: &Path,
    range: std::ops::Range<u64>,
    hop_first: bool,
    buffer: &mut [u8],
) -> Result<Duration, Error> {
    let start = Instant::now();
    if hop_first {
        for slot in 0..REPLAY_CAPACITY / u64::from(REPLAY_SEGMENT) {
            file.read_exact_at(&mut buffer[..64], slot * u64::from(REPLAY_SEGMENT))
                .map_err(io_fail("read", path))?;
        }
    }
    let mut offset = range.start;
    while offset < range.end {
        let len = (range.end - offset).min(READ_BUFFER as u64) as usize;
        file.read_exact_at(&mut buffer[..len], offset)
            .map_err(io_fail("read", path))?;
        black_box(&buffer[..len]);
        offset += len as u64;
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------------------------
// (e): CRC-32C

/// CRC-32C and memory-read throughputs, bytes per second.
#[derive(Debug, Clone, Copy)]
struct CrcFigures {
    crc: f64,
    memory: f64,
}

fn crc_figure(budget: Duration) -> CrcFigures {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..CRC_BUFFER)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let (mut crc, mut memory) = (Rate::default(), Rate::default());
    let round = budget / ROUNDS;
    for _ in 0..ROUNDS {
        let measured: Result<Rate, ()> = for_duration(round, CRC_BUFFER as u64, || {
            black_box(crc32c(black_box(&bytes)));
            Ok(())
        });
        crc.add(measured.unwrap_or_default());
        let measured: Result<Rate, ()> = for_duration(round, CRC_BUFFER as u64, || {
            black_box(sum_words(black_box(&bytes)));
            Ok(())
        });
        memory.add(measured.unwrap_or_default());
    }
    CrcFigures {
        crc: crc.per_second(),
        memory: memory.per_second(),
    }
}

/// Sums `bytes` as little-endian u64 words: a pure read of memory, vectorized by the compiler.
fn sum_words(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0u64, |sum, word| {
        let mut array = [0u8; 8];
        array.copy_from_slice(word);
        sum.wrapping_add(u64::from_le_bytes(array))
    })
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Debug)]
struct Row {
    figure: String,
    measured: String,
    limit: String,
    ratio: String,
    goal: &'static str,
    result: String,
}

fn sync_rows(syncs: &SyncFigures) -> Vec<Row> {
    let raw = syncs.raw.per_second();
    let single = syncs.single.per_second();
    let grouped = syncs.grouped.per_second();
    let single_ratio = median_of(&syncs.single_ratios);
    let grouped_ratio = median_of(&syncs.grouped_ratios);
    vec![
        Row {
            figure: "a. raw: pwrite 32 B + fdatasync".to_string(),
            measured: format!("{raw:.0} ops/s"),
            limit: "(this is the limit)".to_string(),
            ratio: "-".to_string(),
            goal: "-",
            result: "-".to_string(),
        },
        Row {
            figure: "b. counter incr(1), 1 sync each".to_string(),
            measured: format!("{single:.0} incr/s"),
            limit: format!("{raw:.0} ops/s (a)"),
            ratio: format!("{single_ratio:.3}"),
            goal: ">= 0.95 x a",
            result: verdict(single_ratio, 0.95),
        },
        Row {
            figure: format!("c. counter, {GROUP} incr per sync"),
            measured: format!("{grouped:.0} incr/s"),
            limit: format!("{single:.0} incr/s (b)"),
            ratio: format!("{grouped_ratio:.1}x"),
            goal: ">= 25 x b",
            result: verdict(grouped_ratio, 25.0),
        },
    ]
}

fn replay_rows(replay: &ReplayFigures) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some((cache, rates)) = replay.cold_rates() {
        rows.push(replay_row(cache.label(), rates));
    }
    rows.push(replay_row("warm cache", replay.warm_rates()));
    rows
}

fn crc_row(crc: CrcFigures) -> Row {
    Row {
        figure: "e. CRC-32C over 64 MiB".to_string(),
        measured: format!("{:.2} GB/s", crc.crc / 1e9),
        limit: format!("{:.2} GB/s memory read", crc.memory / 1e9),
        ratio: format!("{:.2}", crc.crc / crc.memory),
        goal: "-",
        result: "-".to_string(),
    }
}

fn replay_row(cache: &str, (replayed, read, ratio): (f64, f64, f64)) -> Row {
    Row {
        figure: format!("d. replay 256 MiB log, {cache}"),
        measured: format!("{:.0} MB/s", replayed / 1e6),
        limit: format!("{:.0} MB/s seq. read", read / 1e6),
        ratio: format!("{ratio:.2}"),
        goal: ">= 1 GB/s",
        result: verdict(replayed / 1e9, 1.0),
    }
}

fn verdict(value: f64, goal: f64) -> String {
    if value >= goal {
        "met".to_string()
    } else {
        format!("MISSED by {:.0}%", (1.0 - value / goal) * 100.0)
    }
}

fn render(rows: &[Row]) -> Vec<String> {
    let header = Row {
        figure: "figure".to_string(),
        measured: "measured".to_string(),
        limit: "raw limit, same run".to_string(),
        ratio: "ratio".to_string(),
        goal: "goal",
        result: "result".to_string(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |cell: fn(&Row) -> &str| all.iter().map(|row| cell(row).chars().count()).max();
    let widths = [
        width(|row| &row.figure).unwrap_or(0),
        width(|row| &row.measured).unwrap_or(0),
        width(|row| &row.limit).unwrap_or(0),
        width(|row| &row.ratio).unwrap_or(0),
        width(|row| row.goal).unwrap_or(0),
    ];
    all.iter()
        .map(|row| {
            format!(
                "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {}",
                row.figure,
                row.measured,
                row.limit,
                row.ratio,
                row.goal,
                row.result,
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4],
            )
            .trim_end()
            .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_frame_is_32_bytes_and_decodes() {
        let bytes = counter_frame();
        assert_eq!(bytes.len(), 32);
        let frame = frame::Frame::new_checked(&bytes, 10).unwrap();
        assert_eq!(frame.payload(), [1]);
    }

    #[test]
    fn the_mount_of_a_directory_is_the_longest_matching_mount_point() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\ntmpfs /tmp tmpfs rw 0 0\n";
        assert_eq!(
            mount_of(mounts, Path::new("/tmp/x")).unwrap(),
            "tmpfs on tmpfs, mounted at /tmp (rw)"
        );
        assert!(mount_of(mounts, Path::new("/work/x"))
            .unwrap()
            .starts_with("ext4 on /dev/vda"));
    }

    #[test]
    fn verdicts_say_by_how_much_a_goal_was_missed() {
        assert_eq!(verdict(0.96, 0.95), "met");
        assert_eq!(verdict(0.5, 1.0), "MISSED by 50%");
    }

    #[test]
    fn a_selection_names_figures_by_letter_and_keeps_a_to_c_together() {
        let selection = Selection::parse("G, i b").unwrap();
        assert_eq!(selection.letters.as_deref(), Some("abcgi"));
        assert!(selection.has('g') && selection.has('a') && !selection.has('f'));
        assert!(Selection { letters: None }.has('f'));
        assert!(Selection::parse("gx").is_err());
    }

    #[test]
    fn summing_words_reads_every_byte() {
        let bytes = [1u8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sum_words(&bytes), 3);
    }
}
