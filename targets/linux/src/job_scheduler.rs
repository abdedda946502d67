//! `bedrock jobs submit|work|complete|fail|heartbeat|list|retry --node ADDR`: the client side
//! of a node's job scheduler (`bedrock::jobs`, SPEC.md section 11).
//!
//! # Output
//!
//! - `submit` prints the job id once the job is durable, followed by ` duplicate` when its
//!   `--key` matched an earlier job (nothing new was stored).
//! - `work` without `--exec` prints `ID TOKEN PAYLOAD` for the one job it claimed (the payload
//!   byte for byte, then a newline); the caller finishes it with `complete ID TOKEN` or `fail ID
//!   TOKEN`, and extends its lease with `heartbeat ID TOKEN` (which prints the lease left in
//!   milliseconds).
//! - `work --exec CMD` prints nothing itself on stdout (the command's output is its own); it
//!   reports every job on stderr, one line each: `job ID (attempt N): completed`, `… failed:
//!   the command ended with exit status: 3`, `… lease lost: …`.
//! - `list` prints dead job ids, one per line, increasing; `retry`, `complete`, `fail` print
//!   nothing.
//!
//! # The worker
//!
//! `work --exec CMD` claims the best runnable job, runs `sh -c CMD` in its own process group
//! with the payload on stdin and `BEDROCK_JOB_ID`, `BEDROCK_JOB_TOKEN`, `BEDROCK_JOB_ATTEMPT`
//! (1 for a first attempt) in its environment, and heartbeats every third of the lease the node
//! granted while the command runs. Exit status 0 completes the job, anything else fails the
//! attempt. When the node refuses a heartbeat (the lease was lost: the token is stale, and the
//! job may run elsewhere), the worker kills the command's process group at once and leaves the
//! job alone. A heartbeat without an answer (the node is restarting) is retried at the next
//! interval and the command keeps running: a node re-grants running jobs a full lease when it
//! restarts. SIGINT or SIGTERM kill the running command and fail its attempt, then the worker
//! exits 0.
//!
//! # Not guaranteed
//!
//! Exactly-once execution: a command may run again after its worker lost the lease (a pause,
//! a partition), or when the worker crashed after the command's effect and before the
//! completion. `BEDROCK_JOB_TOKEN` grows with every claim: an effect that records it can refuse
//! a stale worker. (A retried `Claim` whose first answer was lost gets the same claim again:
//! the node remembers its last 32 claims by client and request.)

use std::ffi::OsStr;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bedrock::jobs::{self, Message, Refusal, PAYLOAD_LEN_MAX};
use bedrock::service::kind;
use bedrock_std::client::{self, Client};

use crate::cluster::{client_error, client_for, Access};
use crate::error::{fail, Error};
use crate::output::{self, stdout_error};

/// Most attempts at delivering a completion or failure whose answer did not come.
const FINISH_ATTEMPTS: u32 = 5;
/// How often the worker looks at its command and at the stop flag; also the shortest poll.
const TICK: Duration = Duration::from_millis(20);

/// What `jobs submit` stores.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    /// The job's bytes.
    pub payload: &'a OsStr,
    /// Deduplication key.
    pub key: Option<u64>,
    /// Higher runs first.
    pub priority: u8,
    /// Run-after delay.
    pub delay: Duration,
    /// Attempts before the job goes dead.
    pub max_attempts: u32,
}

/// A claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claimed {
    job: u64,
    token: u64,
    lease_ms: u64,
    /// Earlier failed attempts.
    attempts: u32,
    payload: Vec<u8>,
}

/// An answer, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Submitted { job: u64, duplicate: bool },
    Claimed(Claimed),
    NoJob,
    Done { lease_ms: u64 },
    Listed { jobs: Vec<u64>, more: bool },
    Refused(Refusal),
}

fn request_of(message: &Message<'_>) -> u64 {
    match *message {
        Message::Submit { request, .. }
        | Message::Submitted { request, .. }
        | Message::Claim { request }
        | Message::Claimed { request, .. }
        | Message::NoJob { request }
        | Message::Heartbeat { request, .. }
        | Message::Complete { request, .. }
        | Message::Fail { request, .. }
        | Message::Done { request, .. }
        | Message::List { request, .. }
        | Message::Listed { request, .. }
        | Message::Retry { request, .. }
        | Message::Refused { request, .. } => request,
    }
}

/// The answer to request `id` in `payload`, if it is one.
fn decode_reply(payload: &[u8], id: u64) -> Option<Reply> {
    let message = jobs::decode(payload).ok()?;
    if request_of(&message) != id {
        return None;
    }
    Some(match message {
        Message::Submitted { job, duplicate, .. } => Reply::Submitted { job, duplicate },
        Message::Claimed {
            job,
            token,
            lease_ms,
            attempts,
            payload,
            ..
        } => Reply::Claimed(Claimed {
            job,
            token,
            lease_ms,
            attempts,
            payload: payload.to_vec(),
        }),
        Message::NoJob { .. } => Reply::NoJob,
        Message::Done { lease_ms, .. } => Reply::Done { lease_ms },
        Message::Listed { jobs, more, .. } => Reply::Listed {
            jobs: jobs.to_vec(),
            more,
        },
        Message::Refused { reason, .. } => Reply::Refused(reason),
        _ => return None,
    })
}

fn request_id() -> Result<u64, Error> {
    client::random_u64().map_err(|error| fail(format!("no randomness: {error}")))
}

/// Sends `message` and waits for its answer.
fn request(client: &mut Client, message: &Message<'_>) -> Result<Reply, Error> {
    let id = request_of(message);
    client
        .request(
            kind::JOBS,
            |area| jobs::encode(message, area),
            |payload| decode_reply(payload, id),
        )
        .map_err(client_error)
}

/// What a refusal means, in words.
fn refusal_sentence(reason: Refusal) -> &'static str {
    match reason {
        Refusal::Full => "the node's job table is full (1024 unfinished jobs); try again later",
        Refusal::TooLarge => "the payload is too large (at most 1024 bytes)",
        Refusal::Invalid => "the job is invalid (--max-attempts must be at least 1)",
        Refusal::UnknownJob => "no such job: never submitted, or finished and forgotten",
        Refusal::StaleToken => {
            "the token is stale: the job's lease ran out and the job was offered again, or it \
             finished"
        }
        Refusal::NotDead => "the job is not dead: only a dead job can be re-queued",
        Refusal::Busy => "the node is busy (too many answers waiting); try again",
        Refusal::Unavailable => "the node's jobs storage failed or is full; the outcome is unknown",
        _ => "the node refused the request",
    }
}

fn refused(what: &str, reason: Refusal) -> Error {
    fail(format!("{what} refused: {}", refusal_sentence(reason)))
}

fn unexpected(reply: &Reply) -> Error {
    fail(format!("the node gave an unexpected answer: {reply:?}"))
}

/// `bedrock jobs submit`: prints the job id once durable (` duplicate` when deduplicated).
pub fn submit(node: SocketAddr, access: &Access, job: &NewJob<'_>) -> Result<ExitCode, Error> {
    let payload = job.payload.as_bytes();
    if payload.len() > PAYLOAD_LEN_MAX {
        return Err(fail(format!(
            "the payload of {} bytes is too large (at most {PAYLOAD_LEN_MAX}); nothing was sent",
            payload.len()
        )));
    }
    let mut client = client_for(node, access)?;
    let message = Message::Submit {
        request: request_id()?,
        key: job.key,
        priority: job.priority,
        delay_ms: u64::try_from(job.delay.as_millis()).unwrap_or(u64::MAX),
        max_attempts: job.max_attempts,
        payload,
    };
    match request(&mut client, &message)? {
        Reply::Submitted { job, duplicate } => {
            if duplicate {
                output::line(format_args!("{job} duplicate"))?;
            } else {
                output::line(job)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Reply::Refused(reason) => Err(refused("submit", reason)),
        reply => Err(unexpected(&reply)),
    }
}

/// One claim: `Ok(None)` when no job is runnable.
fn claim(client: &mut Client) -> Result<Option<Claimed>, Error> {
    let message = Message::Claim {
        request: request_id()?,
    };
    match request(client, &message)? {
        Reply::Claimed(claimed) => Ok(Some(claimed)),
        Reply::NoJob => Ok(None),
        Reply::Refused(reason) => Err(refused("claim", reason)),
        reply => Err(unexpected(&reply)),
    }
}

/// A request answered by `Done` or a refusal; `Err` when there was no answer.
fn done_request(client: &mut Client, message: &Message<'_>) -> Result<Result<u64, Refusal>, Error> {
    match request(client, message)? {
        Reply::Done { lease_ms } => Ok(Ok(lease_ms)),
        Reply::Refused(reason) => Ok(Err(reason)),
        reply => Err(unexpected(&reply)),
    }
}

fn heartbeat_request(
    client: &mut Client,
    job: u64,
    token: u64,
) -> Result<Result<u64, Refusal>, Error> {
    let message = Message::Heartbeat {
        request: request_id()?,
        job,
        token,
    };
    done_request(client, &message)
}

/// Completes (`complete`) or fails job `job`, retrying a request that got no answer.
fn finish(
    client: &mut Client,
    job: u64,
    token: u64,
    complete: bool,
) -> Result<Result<(), Refusal>, Error> {
    let request = request_id()?;
    let message = if complete {
        Message::Complete {
            request,
            job,
            token,
        }
    } else {
        Message::Fail {
            request,
            job,
            token,
        }
    };
    let mut attempt = 1;
    loop {
        match done_request(client, &message) {
            Ok(answer) => return Ok(answer.map(|_| ())),
            Err(error) if attempt >= FINISH_ATTEMPTS => return Err(error),
            Err(_) => attempt += 1,
        }
    }
}

/// Prints `ID TOKEN PAYLOAD` for a job claimed without `--exec`.
fn print_claimed(claimed: &Claimed) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    write!(stdout, "{} {} ", claimed.job, claimed.token)
        .and_then(|()| stdout.write_all(&claimed.payload))
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}

/// How a job worked with `--exec` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed,
    LeaseLost,
    Interrupted,
}

/// Sleeps `duration` unless `stop` is set meanwhile.
fn sleep_unless(stop: &AtomicBool, duration: Duration) {
    let until = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(TICK));
    }
}

/// Kills the command's whole process group (it runs in its own), then reaps it.
#[allow(unsafe_code)]
fn kill_group(child: &mut Child) {
    if let Ok(group) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers and touches no memory of this process; the
        // group is the child's own (it was spawned with process_group(0)) and is not reaped yet.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The interval between heartbeats for a lease of `lease_ms`: a third of it.
fn heartbeat_interval(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms / 3).max(TICK)
}

/// Runs the command for `claimed` while heartbeating; returns how it ended.
fn run_command(
    client: &mut Client,
    command: &str,
    claimed: &Claimed,
    stop: &AtomicBool,
) -> Result<Result<ExitStatus, Outcome>, Error> {
    let attempt = claimed.attempts.saturating_add(1);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BEDROCK_JOB_ID", claimed.job.to_string())
        .env("BEDROCK_JOB_TOKEN", claimed.token.to_string())
        .env("BEDROCK_JOB_ATTEMPT", attempt.to_string())
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| fail(format!("cannot run sh: {error}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // At most 1024 bytes: the pipe takes them at once. A command that does not read its
        // stdin closes the pipe; that is its business.
        let _ = stdin.write_all(&claimed.payload);
    }
    let job = claimed.job;
    let mut next_beat = Instant::now() + heartbeat_interval(claimed.lease_ms);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Ok(status)),
            Ok(None) => {}
            Err(error) => {
                kill_group(&mut child);
                return Err(fail(format!("cannot wait for the command: {error}")));
            }
        }
        if stop.load(Ordering::Relaxed) {
            kill_group(&mut child);
            return Ok(Err(Outcome::Interrupted));
        }
        if Instant::now() >= next_beat {
            match heartbeat_request(client, job, claimed.token) {
                Ok(Ok(lease_ms)) => next_beat = Instant::now() + heartbeat_interval(lease_ms),
                Ok(Err(reason)) => {
                    kill_group(&mut child);
                    eprintln!(
                        "job {job} (attempt {attempt}): lease lost: heartbeat refused: {}; \
                         killed the command",
                        refusal_sentence(reason)
                    );
                    return Ok(Err(Outcome::LeaseLost));
                }
                Err(error) => {
                    eprintln!(
                        "warning: job {job} (attempt {attempt}): heartbeat unanswered, the \
                         command keeps running: {error}"
                    );
                    next_beat = Instant::now() + heartbeat_interval(claimed.lease_ms);
                }
            }
        }
        let left = next_beat.saturating_duration_since(Instant::now());
        thread::sleep(left.min(TICK));
    }
}

/// Works one claimed job with `--exec`: runs the command, then completes or fails the job.
fn work_one(
    client: &mut Client,
    command: &str,
    claimed: &Claimed,
    stop: &AtomicBool,
) -> Result<Outcome, Error> {
    let (job, token) = (claimed.job, claimed.token);
    let attempt = claimed.attempts.saturating_add(1);
    let status = match run_command(client, command, claimed, stop) {
        Ok(Ok(status)) => status,
        Ok(Err(Outcome::Interrupted)) => {
            let failed = finish(client, job, token, false);
            eprintln!(
                "job {job} (attempt {attempt}): interrupted: killed the command; {}",
                match failed {
                    Ok(Ok(())) => "failed the attempt".to_string(),
                    Ok(Err(reason)) =>
                        format!("failing it was refused: {}", refusal_sentence(reason)),
                    Err(error) => format!("failing it got no answer: {error}"),
                }
            );
            return Ok(Outcome::Interrupted);
        }
        Ok(Err(outcome)) => return Ok(outcome),
        Err(error) => {
            // The command could not run: that is a failed attempt.
            let _ = finish(client, job, token, false);
            return Err(error);
        }
    };
    let complete = status.success();
    match finish(client, job, token, complete)? {
        Ok(()) if complete => {
            eprintln!("job {job} (attempt {attempt}): completed");
            Ok(Outcome::Completed)
        }
        Ok(()) => {
            eprintln!(
                "job {job} (attempt {attempt}): failed: the command ended with {status}; it runs \
                 again after a backoff unless that was its last attempt"
            );
            Ok(Outcome::Failed)
        }
        Err(reason) => {
            let what = if complete { "completion" } else { "failure" };
            eprintln!(
                "job {job} (attempt {attempt}): lease lost: the {what} was refused: {}; the \
                 command ended with {status} and its result was not recorded",
                refusal_sentence(reason)
            );
            Ok(Outcome::LeaseLost)
        }
    }
}

/// `bedrock jobs work`: see the [module docs](self).
pub fn work(
    node: SocketAddr,
    access: &Access,
    exec: Option<&str>,
    once: bool,
    poll: Duration,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let stop = Arc::new(AtomicBool::new(false));
    if exec.is_some() {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&stop))
                .map_err(|error| fail(format!("cannot handle signals: {error}")))?;
        }
    }
    // Ends on --once, on a job claimed without --exec, or on a signal.
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(ExitCode::SUCCESS);
        }
        let claimed = match claim(&mut client) {
            Ok(Some(claimed)) => claimed,
            Ok(None) if once => return Ok(ExitCode::SUCCESS),
            Ok(None) => {
                sleep_unless(&stop, poll.max(TICK));
                continue;
            }
            // A long-running worker rides out a node restart.
            Err(error) if exec.is_some() && !once => {
                eprintln!("warning: {error}");
                sleep_unless(&stop, poll.max(TICK));
                continue;
            }
            Err(error) => return Err(error),
        };
        let Some(command) = exec else {
            print_claimed(&claimed)?;
            return Ok(ExitCode::SUCCESS);
        };
        let outcome = match work_one(&mut client, command, &claimed, &stop) {
            Ok(outcome) => outcome,
            Err(error) if !once => {
                eprintln!("warning: job {}: {error}", claimed.job);
                continue;
            }
            Err(error) => return Err(error),
        };
        if once || outcome == Outcome::Interrupted {
            return Ok(match outcome {
                Outcome::Completed | Outcome::Interrupted => ExitCode::SUCCESS,
                Outcome::Failed | Outcome::LeaseLost => ExitCode::FAILURE,
            });
        }
    }
}

/// `bedrock jobs complete ID TOKEN`.
pub fn complete(
    node: SocketAddr,
    access: &Access,
    job: u64,
    token: u64,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    finish(&mut client, job, token, true)?.map_err(|reason| refused("completion", reason))?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock jobs fail ID TOKEN`.
pub fn fail_job(
    node: SocketAddr,
    access: &Access,
    job: u64,
    token: u64,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    finish(&mut client, job, token, false)?.map_err(|reason| refused("failure", reason))?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock jobs heartbeat ID TOKEN`: prints the lease left in milliseconds.
pub fn heartbeat(
    node: SocketAddr,
    access: &Access,
    job: u64,
    token: u64,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let lease_ms = heartbeat_request(&mut client, job, token)?
        .map_err(|reason| refused("heartbeat", reason))?;
    output::line(lease_ms)?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock jobs list`: every dead job id above `after`, paging.
pub fn list(node: SocketAddr, access: &Access, after: u64) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let mut after = after;
    // Every page with ids moves `after` up; the table is finite.
    loop {
        let message = Message::List {
            request: request_id()?,
            after,
        };
        match request(&mut client, &message)? {
            Reply::Listed { jobs, more } => {
                for &job in &jobs {
                    output::line(job)?;
                }
                match jobs.last() {
                    Some(&last) if more => after = last,
                    _ => return Ok(ExitCode::SUCCESS),
                }
            }
            Reply::Refused(reason) => return Err(refused("list", reason)),
            reply => return Err(unexpected(&reply)),
        }
    }
}

/// `bedrock jobs retry ID`: re-queues a dead job.
pub fn retry(node: SocketAddr, access: &Access, job: u64) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let message = Message::Retry {
        request: request_id()?,
        job,
    };
    done_request(&mut client, &message)?.map_err(|reason| refused("retry", reason))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_to_other_requests_are_ignored() {
        let mut buffer = [0u8; 64];
        let message = Message::Submitted {
            request: 5,
            job: 9,
            duplicate: true,
        };
        let len = jobs::encode(&message, &mut buffer).unwrap();
        let expected = Reply::Submitted {
            job: 9,
            duplicate: true,
        };
        assert_eq!(decode_reply(&buffer[..len], 5), Some(expected));
        assert_eq!(decode_reply(&buffer[..len], 6), None);
        assert_eq!(decode_reply(&[0xff], 5), None);
    }

    #[test]
    fn heartbeats_come_at_a_third_of_the_lease() {
        assert_eq!(heartbeat_interval(30_000), Duration::from_secs(10));
        assert_eq!(heartbeat_interval(0), TICK);
    }
}
