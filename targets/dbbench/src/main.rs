//! `bedrock-dbbench`: db_bench-style workloads run side by side against embedded key-value
//! engines, with equal durability settings, each figure next to the raw limit measured in the
//! same run. Nothing here asserts on time: it prints figures.
//!
//! Workloads (16-byte keys, 100-byte values, `--entries N`, batches of `--batch` entries with
//! one sync per batch for every engine):
//!
//! - `fillseq`: keys in order into a new database.
//! - `fillrandom`: uniformly random keys (with repeats) into a new database; the bytes the
//!   process wrote to storage meanwhile (/proc/self/io) over the user bytes is its write
//!   amplification.
//! - `overwrite`: random keys over the database that `fillseq` made (completed untimed to all
//!   N entries when the time budget cut it short).
//! - `readrandom`: random gets of existing keys, 1,000 per read snapshot.
//! - `readseq`: one ordered scan from the first key.
//! - `syncwrite`: one entry per synced write, one writer, taking turns with the raw limit:
//!   `pwrite` of 116 bytes at successive offsets of a preallocated file, then `fdatasync`.
//! - `syncwrite64`: the same from `--writers` (64) threads at once.
//! - `recovery`: a child process loads `--recovery-mib` MiB of entries (unsynced batches, one
//!   sync at the end), then exits without closing the database (`_exit`, as a crash of the
//!   process); the time to reopen and read the last key, beside a sequential read of the
//!   files it left.
//!
//! Every workload stops after `--seconds` (checked after each batch) and reports the
//! operations per second over what ran. Engines take turns within each workload, in an
//! order rotated every round; the table shows medians over `--rounds` rounds.

mod engine;
mod engines;
mod system;
mod workload;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::engine::{Engine, Kind, Result};
use crate::system::{median, Context, RawSync};
use crate::workload::{Order, Rate, ENTRY_LEN};

/// How long an engine may take to finish background work between measurements.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// Keys per read snapshot in readrandom.
const READ_GROUP: usize = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "bedrock-dbbench",
    about = "db_bench-style workloads against embedded key-value engines, side by side"
)]
struct Cli {
    /// Directory for the scratch databases (a temporary directory is made inside it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Entries per database.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Time budget of one workload on one engine in one round, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds; the table shows medians.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Entries per batch (and per sync) in the fill and overwrite workloads.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent writers in syncwrite64.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// MiB of user data loaded before the crash in the recovery workload.
    #[arg(long, default_value_t = 256)]
    recovery_mib: u64,
    /// Workloads to run, comma-separated (default: all).
    #[arg(long)]
    only: Option<String>,
    /// Engines to run, comma-separated (default: all).
    #[arg(long)]
    engines: Option<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: the recovery workload's child. Loads, syncs, and exits without closing.
    #[command(hide = true)]
    CrashLoad {
        #[arg(long)]
        engine: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        mib: u64,
        #[arg(long)]
        batch: usize,
    },
}

/// The workloads, in the order they run and appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    FillSeq,
    FillRandom,
    Overwrite,
    ReadRandom,
    ReadSeq,
    SyncWrite,
    SyncWriteMany,
    Recovery,
}

impl Workload {
    const ALL: [Workload; 8] = [
        Workload::FillSeq,
        Workload::FillRandom,
        Workload::Overwrite,
        Workload::ReadRandom,
        Workload::ReadSeq,
        Workload::SyncWrite,
        Workload::SyncWriteMany,
        Workload::Recovery,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::FillSeq => "fillseq",
            Workload::FillRandom => "fillrandom",
            Workload::Overwrite => "overwrite",
            Workload::ReadRandom => "readrandom",
            Workload::ReadSeq => "readseq",
            Workload::SyncWrite => "syncwrite",
            Workload::SyncWriteMany => "syncwrite64",
            Workload::Recovery => "recovery",
        }
    }
}

/// A figure of the table, per engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Figure {
    FillSeq,
    FillRandom,
    Overwrite,
    ReadRandom,
    ReadSeq,
    SyncWrite,
    SyncWriteMany,
    WriteAmp,
    SpaceAmp,
    /// Seconds to reopen after the crash.
    Recovery,
    /// Seconds to read the files left by the crash sequentially.
    RecoveryRead,
    /// MiB read by the sequential read (file lengths).
    RecoveryReadBytes,
    /// MiB on disk at the reopen.
    RecoveryDisk,
    /// Per turn: syncwrite (1 writer) / the raw rate measured right before it.
    SyncWriteVsRaw,
    /// Per turn: syncwrite (many writers) / the raw rate measured right before it.
    SyncWriteManyVsRaw,
    /// MiB of write-ahead log on disk at the reopen.
    RecoveryLog,
    /// The crash-load's own rate (unsynced batches).
    RecoveryLoad,
}

/// Everything measured: per figure and engine (by index into the selected engines), one value
/// per round.
#[derive(Debug, Default)]
struct Results {
    values: BTreeMap<(Figure, usize), Vec<f64>>,
    /// Raw pwrite+fdatasync rates, one per turn.
    raw: Vec<f64>,
    /// readrandom gets of existing keys that found nothing (should be 0).
    missing: u64,
}

impl Results {
    fn add(&mut self, figure: Figure, engine: usize, value: f64) {
        self.values.entry((figure, engine)).or_default().push(value);
    }

    fn median(&self, figure: Figure, engine: usize) -> Option<f64> {
        self.values
            .get(&(figure, engine))
            .map(|values| median(values))
    }
}

/// Stack of the thread that runs everything: the bedrock engine keeps its table list and its
/// merge sources inline, and runs flushes and compactions inside writes.
pub const STACK_BYTES: usize = 64 << 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let worker = std::thread::Builder::new()
        .stack_size(STACK_BYTES)
        .spawn(move || run_cli(&cli));
    match worker.map(std::thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bedrock-dbbench: cannot start the benchmark thread: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: &Cli) -> ExitCode {
    let outcome = match &cli.command {
        Some(Sub::CrashLoad {
            engine,
            dir,
            mib,
            batch,
        }) => crash_load(engine, dir, *mib, *batch),
        None => run(cli),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bedrock-dbbench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("dbbench: {what}");
}

fn select<T: Copy>(
    list: Option<&str>,
    all: &[T],
    name: impl Fn(T) -> &'static str,
    what: &str,
) -> Result<Vec<T>> {
    let Some(list) = list else {
        return Ok(all.to_vec());
    };
    let mut chosen = Vec::new();
    for wanted in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let Some(item) = all.iter().copied().find(|item| name(*item) == wanted) else {
            let names: Vec<&str> = all.iter().map(|item| name(*item)).collect();
            return Err(format!("no {what} {wanted:?} (there are: {})", names.join(", ")).into());
        };
        chosen.push(item);
    }
    Ok(chosen)
}

fn run(cli: &Cli) -> Result<()> {
    if cli.entries == 0 || cli.batch == 0 || cli.writers == 0 || cli.rounds == 0 {
        return Err("--entries, --batch, --writers and --rounds must be above 0".into());
    }
    let workloads = select(
        cli.only.as_deref(),
        &Workload::ALL,
        Workload::name,
        "workload",
    )?;
    let kinds = select(
        cli.engines.as_deref(),
        engines::ALL,
        |kind| kind.name,
        "engine",
    )?;
    let base = cli.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if !base.is_dir() {
        return Err(format!("{} is not a directory", base.display()).into());
    }
    let scratch = tempfile::Builder::new()
        .prefix(".bedrock-dbbench-")
        .tempdir_in(&base)
        .map_err(|error| format!("could not create a scratch directory: {error}"))?;
    let context = Context::probe(scratch.path());
    let mut out = std::io::stdout().lock();
    for line in context.lines() {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "  settings     --entries {} --seconds {} --rounds {} --batch {} --writers {} \
         --recovery-mib {}",
        cli.entries, cli.seconds, cli.rounds, cli.batch, cli.writers, cli.recovery_mib
    )?;
    writeln!(out)?;
    out.flush()?;

    let mut raw = RawSync::new(scratch.path())?;
    let mut results = Results::default();
    let started = Instant::now();
    for round in 0..cli.rounds {
        let order: Vec<usize> = (0..kinds.len())
            .map(|i| (i + round as usize) % kinds.len())
            .collect();
        run_round(
            cli,
            round,
            &workloads,
            &kinds,
            &order,
            scratch.path(),
            &mut raw,
            &mut results,
        )?;
    }
    fs::remove_file(raw.path())?;

    for line in render(&table(cli, &workloads, &kinds, &results)) {
        writeln!(out, "{line}")?;
    }
    writeln!(out)?;
    for line in notes(cli, &workloads, &kinds, &results) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "run took {:.0} s; load average {} at the end",
        started.elapsed().as_secs_f64(),
        system::load_average()
    )?;
    scratch
        .close()
        .map_err(|error| format!("could not remove the scratch directory: {error}"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_round(
    cli: &Cli,
    round: u32,
    workloads: &[Workload],
    kinds: &[Kind],
    order: &[usize],
    scratch: &Path,
    raw: &mut RawSync,
    results: &mut Results,
) -> Result<()> {
    let budget = Duration::from_secs_f64(cli.seconds);
    let has = |workload| workloads.contains(&workload);
    let seed = 0xDB_BE4C_u64 ^ u64::from(round) << 32;
    let rounds = cli.rounds;
    let step = |what: &str, engine: usize| {
        progress(format_args!(
            "round {}/{rounds}: {what} on {}",
            round + 1,
            kinds[engine].name
        ))
    };

    // The database of fillseq, which overwrite, the reads and the synced writes use.
    let needs_main = workloads
        .iter()
        .any(|w| !matches!(w, Workload::FillRandom | Workload::Recovery));
    let mut mains: Vec<Option<(Box<dyn Engine>, PathBuf)>> =
        (0..kinds.len()).map(|_| None).collect();
    if needs_main {
        for &e in order {
            step("fillseq", e);
            let dir = scratch.join(format!("r{round}-{}-main", kinds[e].name));
            fs::create_dir(&dir)?;
            let engine = (kinds[e].open)(&dir)?;
            let mut filled = 0;
            if has(Workload::FillSeq) {
                let rate = workload::fill(
                    engine.as_ref(),
                    Order::Sequential,
                    cli.entries,
                    cli.batch,
                    true,
                    budget,
                    seed,
                )?;
                results.add(Figure::FillSeq, e, rate.per_second());
                filled = rate.operations;
            }
            workload::complete_fill(engine.as_ref(), filled, cli.entries, cli.batch)?;
            engine.settle(SETTLE_LIMIT)?;
            let space = system::disk_usage(&dir, "")? as f64 / (cli.entries * ENTRY_LEN) as f64;
            results.add(Figure::SpaceAmp, e, space);
            mains[e] = Some((engine, dir));
        }
    }

    if has(Workload::FillRandom) {
        for &e in order {
            step("fillrandom", e);
            let dir = scratch.join(format!("r{round}-{}-random", kinds[e].name));
            fs::create_dir(&dir)?;
            let before = system::written_bytes();
            let engine = (kinds[e].open)(&dir)?;
            let rate = workload::fill(
                engine.as_ref(),
                Order::Random,
                cli.entries,
                cli.batch,
                true,
                budget,
                seed ^ 1,
            )?;
            engine.settle(SETTLE_LIMIT)?;
            engine.close()?;
            let after = system::written_bytes();
            results.add(Figure::FillRandom, e, rate.per_second());
            if let (Some(before), Some(after)) = (before, after) {
                let user = (rate.operations * ENTRY_LEN) as f64;
                results.add(
                    Figure::WriteAmp,
                    e,
                    after.saturating_sub(before) as f64 / user,
                );
            }
            fs::remove_dir_all(&dir)?;
        }
    }

    let main = |e: usize| -> &dyn Engine {
        match &mains[e] {
            Some((engine, _)) => engine.as_ref(),
            None => unreachable!("the main database is opened for every engine"),
        }
    };
    for workload in workloads {
        for &e in order {
            match workload {
                Workload::Overwrite => {
                    step("overwrite", e);
                    let rate = workload::fill(
                        main(e),
                        Order::Random,
                        cli.entries,
                        cli.batch,
                        true,
                        budget,
                        seed ^ 2,
                    )?;
                    main(e).settle(SETTLE_LIMIT)?;
                    results.add(Figure::Overwrite, e, rate.per_second());
                }
                Workload::ReadRandom => {
                    step("readrandom", e);
                    let (rate, missing) =
                        workload::read_random(main(e), cli.entries, READ_GROUP, budget, seed ^ 3)?;
                    results.add(Figure::ReadRandom, e, rate.per_second());
                    results.missing += missing;
                }
                Workload::ReadSeq => {
                    step("readseq", e);
                    let rate = workload::read_seq(main(e), budget)?;
                    results.add(Figure::ReadSeq, e, rate.per_second());
                }
                Workload::SyncWrite | Workload::SyncWriteMany => {
                    let (figure, writers) = match workload {
                        Workload::SyncWrite => (Figure::SyncWrite, 1),
                        _ => (Figure::SyncWriteMany, cli.writers),
                    };
                    step(workload.name(), e);
                    // The raw limit takes its turn right before each engine's.
                    let raw_rate = raw.run_for(budget)?.per_second();
                    results.raw.push(raw_rate);
                    let rate: Rate =
                        workload::synced_writes(main(e), cli.entries, writers, budget, seed ^ 4)?;
                    main(e).settle(SETTLE_LIMIT)?;
                    results.add(figure, e, rate.per_second());
                    let versus = match figure {
                        Figure::SyncWrite => Figure::SyncWriteVsRaw,
                        _ => Figure::SyncWriteManyVsRaw,
                    };
                    results.add(
                        versus,
                        e,
                        rate.per_second() / raw_rate.max(f64::MIN_POSITIVE),
                    );
                }
                _ => {}
            }
        }
    }
    for (engine, dir) in mains.into_iter().flatten() {
        engine.close()?;
        fs::remove_dir_all(&dir)?;
    }

    if has(Workload::Recovery) {
        for &e in order {
            step("recovery", e);
            recovery(cli, round, kinds[e], e, scratch, results)?;
        }
    }
    Ok(())
}

/// The recovery workload on one engine: a child loads and "crashes"; this process reopens.
fn recovery(
    cli: &Cli,
    round: u32,
    kind: Kind,
    e: usize,
    scratch: &Path,
    results: &mut Results,
) -> Result<()> {
    let dir = scratch.join(format!("r{round}-{}-recovery", kind.name));
    fs::create_dir(&dir)?;
    let output = Command::new(std::env::current_exe()?)
        .arg("crash-load")
        .args(["--engine", kind.name])
        .arg("--dir")
        .arg(&dir)
        .args(["--mib", &cli.recovery_mib.to_string()])
        .args(["--batch", &cli.batch.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the crash-load child for {} failed: {}",
            kind.name, output.status
        )
        .into());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    let entries: u64 = fields
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or("crash-load printed no count")?;
    let load_seconds: f64 = fields
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or("crash-load printed no time")?;
    let on_disk = system::disk_usage(&dir, "")?;
    let log = match kind.log_suffix {
        Some(suffix) => Some(system::disk_usage(&dir, suffix)?),
        None => None,
    };

    // The limit: reading the files as the crash left them (warm, as the child just wrote
    // them, like the reopen after it).
    let start = Instant::now();
    let read_bytes = system::read_all(&dir)?;
    let read = start.elapsed();

    let start = Instant::now();
    let engine = (kind.open)(&dir)?;
    let found = engine.get_many(&[workload::key(entries - 1)])?;
    let reopen = start.elapsed();
    if found != 1 {
        return Err(format!("{} lost the last synced entry in the crash", kind.name).into());
    }
    engine.settle(SETTLE_LIMIT)?;
    engine.close()?;
    results.add(Figure::Recovery, e, reopen.as_secs_f64());
    results.add(Figure::RecoveryRead, e, read.as_secs_f64());
    results.add(
        Figure::RecoveryReadBytes,
        e,
        read_bytes as f64 / f64::from(1u32 << 20),
    );
    results.add(
        Figure::RecoveryDisk,
        e,
        on_disk as f64 / f64::from(1u32 << 20),
    );
    if let Some(log) = log {
        results.add(Figure::RecoveryLog, e, log as f64 / f64::from(1u32 << 20));
    }
    results.add(
        Figure::RecoveryLoad,
        e,
        entries as f64 / load_seconds.max(f64::MIN_POSITIVE),
    );
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The recovery child: loads `mib` MiB of sequential entries in unsynced batches, syncs once,
/// prints "ENTRIES SECONDS" and exits at once, without closing the database.
fn crash_load(name: &str, dir: &Path, mib: u64, batch: usize) -> Result<()> {
    let kind = engines::ALL
        .iter()
        .find(|kind| kind.name == name)
        .ok_or_else(|| format!("no engine {name:?}"))?;
    let entries = ((mib << 20) / ENTRY_LEN).max(1);
    let engine = (kind.open)(dir)?;
    let start = Instant::now();
    workload::complete_fill(engine.as_ref(), 0, entries, batch)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{entries} {seconds}")?;
    out.flush()?;
    // As a crash of the process: no destructor, no close; the kernel keeps what was written.
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(0) }
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Debug)]
struct Row {
    cells: Vec<String>,
}

/// How a figure is shown.
struct Shown {
    figure: Figure,
    label: String,
    higher_is_better: bool,
    format: fn(f64) -> String,
}

fn ops(value: f64) -> String {
    format!("{value:.0}")
}

fn times(value: f64) -> String {
    format!("{value:.2}x")
}

fn millis(value: f64) -> String {
    format!("{:.0} ms", value * 1e3)
}

fn table(cli: &Cli, workloads: &[Workload], kinds: &[Kind], results: &Results) -> Vec<Row> {
    let raw = median(&results.raw);
    let batch = cli.batch;
    let mut shown = Vec::new();
    let mut add = |workload: Workload, figure, label: String, higher_is_better, format| {
        if workloads.contains(&workload) {
            shown.push(Shown {
                figure,
                label,
                higher_is_better,
                format,
            });
        }
    };
    add(
        Workload::FillSeq,
        Figure::FillSeq,
        format!("fillseq, {batch}/sync (ops/s)"),
        true,
        ops,
    );
    add(
        Workload::FillRandom,
        Figure::FillRandom,
        format!("fillrandom, {batch}/sync (ops/s)"),
        true,
        ops,
    );
    add(
        Workload::Overwrite,
        Figure::Overwrite,
        format!("overwrite, {batch}/sync (ops/s)"),
        true,
        ops,
    );
    add(
        Workload::ReadRandom,
        Figure::ReadRandom,
        "readrandom (ops/s)".to_string(),
        true,
        ops,
    );
    add(
        Workload::ReadSeq,
        Figure::ReadSeq,
        "readseq (ops/s)".to_string(),
        true,
        ops,
    );
    add(
        Workload::SyncWrite,
        Figure::SyncWrite,
        "syncwrite, 1 writer (ops/s)".to_string(),
        true,
        ops,
    );
    add(
        Workload::SyncWriteMany,
        Figure::SyncWriteMany,
        format!("syncwrite, {} writers (ops/s)", cli.writers),
        true,
        ops,
    );
    add(
        Workload::FillRandom,
        Figure::WriteAmp,
        "write amp. of fillrandom".to_string(),
        false,
        times,
    );
    add(
        Workload::FillSeq,
        Figure::SpaceAmp,
        "space amp. after fillseq".to_string(),
        false,
        times,
    );
    add(
        Workload::Recovery,
        Figure::Recovery,
        format!("recovery after {} MiB, crash", cli.recovery_mib),
        false,
        millis,
    );

    let mut header = vec!["workload".to_string()];
    header.extend(kinds.iter().map(|kind| kind.name.to_string()));
    if kinds.len() > 1 {
        header.extend(
            kinds
                .iter()
                .map(|kind| format!("{} vs best other", kind.name)),
        );
    }
    header.push("raw limit, same run".to_string());
    let mut rows = vec![Row { cells: header }];
    if workloads.contains(&Workload::SyncWrite) || workloads.contains(&Workload::SyncWriteMany) {
        let mut cells = vec!["raw: pwrite 116 B + fdatasync".to_string()];
        cells.extend(kinds.iter().map(|_| "-".to_string()));
        if kinds.len() > 1 {
            cells.extend(kinds.iter().map(|_| "-".to_string()));
        }
        cells.push(format!("{raw:.0} ops/s"));
        rows.push(Row { cells });
    }
    for show in shown {
        let values: Vec<Option<f64>> = (0..kinds.len())
            .map(|e| results.median(show.figure, e))
            .collect();
        let mut cells = vec![show.label.clone()];
        cells.extend(
            values
                .iter()
                .map(|value| value.map_or("-".to_string(), show.format)),
        );
        if kinds.len() > 1 {
            for (e, value) in values.iter().enumerate() {
                let others = values
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != e)
                    .filter_map(|(_, value)| *value);
                let best = match show.higher_is_better {
                    true => others.fold(None, |best: Option<f64>, v| {
                        Some(best.map_or(v, |b| b.max(v)))
                    }),
                    false => others.fold(None, |best: Option<f64>, v| {
                        Some(best.map_or(v, |b| b.min(v)))
                    }),
                };
                cells.push(match (value, best) {
                    (Some(value), Some(best)) if best > 0.0 => format!("{:.2}", value / best),
                    _ => "-".to_string(),
                });
            }
        }
        let limit = match show.figure {
            Figure::SyncWrite | Figure::SyncWriteMany => format!("{raw:.0} ops/s (raw)"),
            Figure::Recovery => {
                let reads: Vec<String> = (0..kinds.len())
                    .filter_map(|e| {
                        let read = results.median(Figure::RecoveryRead, e)?;
                        Some(format!("{} {}", kinds[e].name, millis(read)))
                    })
                    .collect();
                format!("seq. read: {}", reads.join(", "))
            }
            _ => "-".to_string(),
        };
        cells.push(limit);
        rows.push(Row { cells });
    }
    rows
}

fn render(rows: &[Row]) -> Vec<String> {
    let columns = rows.iter().map(|row| row.cells.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.cells.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.cells.iter().enumerate() {
                if c == 0 {
                    line.push_str(&format!("{cell:<w$}", w = widths[c]));
                } else {
                    line.push_str(&format!("  {cell:>w$}", w = widths[c]));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

fn notes(cli: &Cli, workloads: &[Workload], kinds: &[Kind], results: &Results) -> Vec<String> {
    let has = |workload| workloads.contains(&workload);
    let mut notes = vec![
        format!(
            "figures are medians over {} rounds; within a workload the engines take turns, in an \
             order rotated every round",
            cli.rounds
        ),
        format!(
            "keys: 16 bytes (%016d of the entry number), values: 100 bytes (50 random bytes \
             twice, compressible to about half), seeded generator; {} entries; each workload \
             stops after {} s (checked after each batch) and reports ops/s over what ran",
            cli.entries, cli.seconds
        ),
        format!(
            "equal durability: fillseq, fillrandom and overwrite write batches of {} entries, \
             every engine syncing once per batch; syncwrite syncs every entry",
            cli.batch
        ),
        "'vs best other' = this engine's figure / the best other engine's figure (above 1 is \
         better for ops/s; below 1 is better for amplification and recovery time)"
            .to_string(),
    ];
    for kind in kinds {
        notes.push(format!("{}: {}", kind.version, kind.durability));
    }
    if has(Workload::FillSeq)
        || has(Workload::Overwrite)
        || has(Workload::ReadRandom)
        || has(Workload::ReadSeq)
    {
        notes.push(
            "overwrite, readrandom, readseq and syncwrite run on the database fillseq made, \
             completed untimed (unsynced batches, one sync) to all entries when fillseq's budget \
             ran out; space amp. = bytes of its files after that (and background work settled) \
             / 116 B x entries"
                .to_string(),
        );
    }
    if has(Workload::ReadRandom) {
        notes.push(format!(
            "readrandom: {READ_GROUP} gets per read snapshot (redb: one read transaction per \
             {READ_GROUP}); {} of the keys read were missing (should be 0)",
            results.missing
        ));
    }
    if has(Workload::FillRandom) {
        let measured = match system::written_bytes() {
            Some(_) => "",
            None => " (not measured: /proc/self/io is not readable here)",
        };
        notes.push(format!(
            "write amp. of fillrandom = bytes the process sent to storage (write_bytes less \
             cancelled_write_bytes of /proc/self/io) from open to close of a new database, \
             background work settled, / 116 B x entries written{measured}"
        ));
    }
    if has(Workload::SyncWrite) || has(Workload::SyncWriteMany) {
        notes.push(format!(
            "syncwrite: one random entry per synced write; raw: 116 B pwrite at successive \
             offsets of a preallocated file + fdatasync, run for {} s right before each engine's \
             turn ({} turns, median; from {:.0} to {:.0} ops/s)",
            cli.seconds,
            results.raw.len(),
            results.raw.iter().copied().fold(f64::INFINITY, f64::min),
            results.raw.iter().copied().fold(0.0, f64::max),
        ));
    }
    for (workload, figure) in [
        (Workload::SyncWrite, Figure::SyncWriteVsRaw),
        (Workload::SyncWriteMany, Figure::SyncWriteManyVsRaw),
    ] {
        if has(workload) {
            let ratios: Vec<String> = (0..kinds.len())
                .filter_map(|e| {
                    Some(format!(
                        "{} {:.2}",
                        kinds[e].name,
                        results.median(figure, e)?
                    ))
                })
                .collect();
            notes.push(format!(
                "{}: median of the per-turn ratios to the raw rate measured right before it: {}",
                workload.name(),
                ratios.join(", ")
            ));
        }
    }
    if has(Workload::Recovery) {
        let per_engine: Vec<String> = (0..kinds.len())
            .filter_map(|e| {
                let log = match results.median(Figure::RecoveryLog, e) {
                    Some(log) => format!(", {log:.0} MiB of it write-ahead log"),
                    None => String::new(),
                };
                Some(format!(
                    "{} left {:.0} MiB of files, {:.0} MiB on disk{log} (loaded at {:.0} \
                     entries/s)",
                    kinds[e].name,
                    results.median(Figure::RecoveryReadBytes, e)?,
                    results.median(Figure::RecoveryDisk, e)?,
                    results.median(Figure::RecoveryLoad, e)?
                ))
            })
            .collect();
        notes.push(format!(
            "recovery: a child process writes {} MiB of user data (sequential keys, unsynced \
             batches of {}, one sync at the end) with each engine's defaults and exits without \
             closing (_exit); the figure is opening the database and reading the last key; the \
             limit is reading every file it left once (their lengths; on disk = allocated blocks, \
             which count preallocated space) before the reopen, warm cache; {}",
            cli.recovery_mib,
            cli.batch,
            per_engine.join("; ")
        ));
    }
    if !cfg!(feature = "rocksdb") {
        notes.push(
            "rocksdb: not in this build (cargo feature rocksdb: its C++ compiles for about 30 \
             minutes here)"
                .to_string(),
        );
    }
    notes
}
