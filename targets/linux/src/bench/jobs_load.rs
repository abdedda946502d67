//! (h) Jobs completed per second through one job-scheduler node from [`WORKERS`] concurrent
//! workers, beside the raw `pwrite` + `fdatasync` rate (a) measured in turns with them; see
//! [`super::service_load`] for the node, the clients and the rounds.
//!
//! The service is `bedrock::jobs::Scheduler` on its own `FileStorage`, with capacities that mirror
//! the node's (kept in step by hand): an 8 MiB store of 64 KiB erase blocks in [`SEGMENT`] segments
//! (a checkpoint holds the whole job table and must fit one), [`JOBS`] jobs, [`DONE`] finished jobs
//! remembered, [`PENDING`] answers waiting for a sync. Every round starts a fresh node whose table
//! is filled with [`JOBS`] jobs of [`PAYLOAD`] bytes (submitted in process, then committed); each
//! worker loops `Claim` → `Claimed` → `Complete` → `Done`, both writes answered after their sync,
//! and the window ends when fewer than `2 W` jobs are left or the time is up. A job costs two
//! durable writes (CLAIM, COMPLETE) and two round trips.

use std::path::Path;
use std::time::Duration;

use bedrock::jobs::{self, Config, Message, NewJob};
use bedrock::net::MTU_DEFAULT;
use bedrock::service::Service;
use bedrock::time::Instant;
use bedrock_std::{FileOptions, FileStorage};

use super::service_load::{
    self, clients, micros, rounds, row, Actor, Answered, Bench, Level, Snapshot,
};
use super::{RawSync, Row};
use crate::error::Error;
use crate::node;

/// Concurrent workers.
pub const WORKERS: usize = 16;
/// Bytes per job payload.
pub const PAYLOAD: usize = 100;

/// The node's capacities: the benchmark runs `bedrock node`'s own scheduler.
pub const JOBS: usize = node::JOBS_MAX;
pub const PENDING: usize = node::JOBS_PENDING;
/// Jobs submitted per commit when a store is filled in process.
const FILL_BATCH: usize = 256;

const _: () = assert!(WORKERS <= PENDING && 4 * WORKERS < JOBS);

pub use node::NodeJobs as NodeScheduler;

fn options() -> FileOptions {
    node::store_options(node::JOBS_CAPACITY)
}

fn config() -> Config {
    node::jobs_config(Duration::from_secs(30), Duration::from_secs(1), MTU_DEFAULT)
}

#[derive(Debug, Clone, Copy)]
struct JobsBench;

impl Bench for JobsBench {
    type Service = NodeScheduler;
    type Actor = Worker;

    fn open(&self, dir: &Path, _incarnation: u32) -> Result<NodeScheduler, String> {
        let storage = FileStorage::open(dir, options())
            .map_err(|error| format!("cannot open {}: {error}", dir.display()))?;
        let (mut scheduler, _) = node::open_node_jobs(storage, config(), Instant::ZERO)
            .map_err(|error| format!("cannot open the benchmark scheduler: {error}"))?;
        let fill = |error: &dyn std::fmt::Display| format!("cannot fill the scheduler: {error}");
        for index in 0..JOBS {
            let mut payload = [0xA5u8; PAYLOAD];
            payload[..8].copy_from_slice(&(index as u64).to_le_bytes());
            let job = NewJob {
                key: None,
                priority: 0,
                delay: Duration::ZERO,
                max_attempts: 3,
                payload: &payload,
            };
            scheduler
                .submit(Instant::ZERO, &job)
                .map_err(|error| fill(&error))?;
            if (index + 1) % FILL_BATCH == 0 {
                scheduler.commit().map_err(|error| fill(&error))?;
            }
        }
        scheduler.commit().map_err(|error| fill(&error))?;
        Ok(scheduler)
    }

    fn snapshot(scheduler: &NodeScheduler) -> Snapshot {
        let stats = scheduler.stats();
        Snapshot {
            syncs: stats.syncs,
            writes: stats.completed,
            live: scheduler.jobs().len() as u64,
        }
    }

    fn close(scheduler: NodeScheduler) -> Result<(), String> {
        scheduler.close().map_err(|error| error.to_string())
    }

    fn actor(&self, _index: usize, _count: usize) -> Worker {
        Worker {
            request: 0,
            current: Request::Claim,
            next_complete: None,
        }
    }

    fn exhausted(&self, snapshot: &Snapshot, clients: usize) -> bool {
        snapshot.live < 2 * clients as u64
    }
}

#[derive(Debug, Clone, Copy)]
enum Request {
    Claim,
    Complete { job: u64, token: u64 },
}

/// A worker: claims a job, completes it at once, claims the next.
#[derive(Debug)]
pub struct Worker {
    request: u64,
    current: Request,
    /// The claim to complete with the next request.
    next_complete: Option<(u64, u64)>,
}

impl Actor for Worker {
    fn restart(&mut self) {
        // A claim on the previous node means nothing to the next one.
        self.next_complete = None;
    }

    fn begin(&mut self, request: u64) {
        self.request = request;
        self.current = match self.next_complete.take() {
            Some((job, token)) => Request::Complete { job, token },
            None => Request::Claim,
        };
    }

    fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let request = self.request;
        let message = match self.current {
            Request::Claim => Message::Claim { request },
            Request::Complete { job, token } => Message::Complete {
                request,
                job,
                token,
            },
        };
        jobs::encode(&message, out)
    }

    fn answer(&mut self, payload: &[u8]) -> Option<Answered> {
        let message = jobs::decode(payload).ok()?;
        let (request, answered) = match message {
            Message::Claimed {
                request,
                job,
                token,
                ..
            } => {
                if request == self.request {
                    self.next_complete = Some((job, token));
                }
                (request, Answered::Leased)
            }
            Message::NoJob { request } => (request, Answered::Nothing),
            Message::Done { request, .. } => (request, Answered::Done),
            Message::Refused { request, .. } => (request, Answered::Refused),
            _ => return None,
        };
        (request == self.request).then_some(answered)
    }
}

/// (h): one level of [`WORKERS`] workers for `budget`.
#[derive(Debug)]
pub struct Figures {
    pub level: Level,
}

pub fn figures(scratch: &Path, budget: Duration, raw: &mut RawSync) -> Result<Figures, Error> {
    let level = service_load::level(
        &JobsBench,
        "jobs",
        scratch,
        WORKERS,
        Answered::Done,
        budget,
        raw,
    )?;
    Ok(Figures { level })
}

impl Figures {
    pub fn rows(&self) -> Vec<Row> {
        let level = &self.level;
        vec![row(
            format!("h. jobs claim+complete, {}", clients(level.clients)),
            format!("{:.0} jobs/s", level.per_second(Answered::Done)),
            level,
        )]
    }

    pub fn notes(&self) -> Vec<String> {
        let level = &self.level;
        vec![
            format!(
                "h: one node on 127.0.0.1 (event loop thread, encrypted envelopes, \
                 bedrock::jobs::Scheduler as `bedrock node` runs it: an {} MiB FileStorage of \
                 {} KiB segments; {JOBS} jobs, {} finished remembered, {PENDING} answers \
                 waiting, a checkpoint of the whole table every 256 records); every round starts \
                 a fresh node with {JOBS} jobs of {PAYLOAD} bytes (submitted in process, \
                 {FILL_BATCH} per commit) and ends when fewer than 2W are left or the time is \
                 up; (a) after each window for a third of it",
                node::JOBS_CAPACITY >> 20,
                node::JOBS_SEGMENT >> 10,
                node::JOBS_DONE
            ),
            format!(
                "h: {} workers: {:.0} jobs completed/s and {:.0} claims/s in {:.0} syncs/s, \
                 {:.1} completions per sync (a job is 2 writes: CLAIM and COMPLETE); {} no-job, \
                 {} refused, {} sent again; latency (claim or complete) p50 {:.0} us, p99 {:.0} \
                 us; {}; (a) in its turns {:.0} ops/s; per-round ratios {}",
                level.clients,
                level.per_second(Answered::Done),
                level.per_second(Answered::Leased),
                level.syncs_per_second(),
                level.writes_per_sync(),
                level.count(Answered::Nothing),
                level.count(Answered::Refused),
                level.retries,
                micros(level.latency(50)),
                micros(level.latency(99)),
                rounds(level),
                level.raw.per_second(),
                level.ratio_list()
            ),
        ]
    }
}
