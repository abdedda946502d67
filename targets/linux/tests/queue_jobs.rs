//! Real processes: one `bedrock node` on 127.0.0.1 under a key made by `bedrock keygen`, its
//! message queue and job scheduler driven by the `bedrock queue` and `bedrock jobs` commands,
//! then by client threads (bedrock_std's `Client`) while the node is killed with SIGKILL and
//! restarted on the same data directory.
//!
//! Waits poll for an outcome up to [`DEADLINE`]; no assertion depends on how long anything
//! took. Child processes are killed when a test ends, however it ends; every file lives in a
//! temporary directory under `CARGO_TARGET_TMPDIR`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bedrock::checksum::crc32c;
use bedrock::service::kind;
use bedrock::wire::Keyring;
use bedrock::{jobs, queue};
use bedrock_std::client::{Client, ClientError, CLIENT_KEYS};

mod common;
use common::{assert_one_error_line, scratch, send_signal, text, SingleNode, BIN};

/// The longest wait for a process to start or stop, or for an outcome polled for.
const DEADLINE: Duration = Duration::from_secs(30);

/// The node under test (see `common::SingleNode`) and what these tests ask of it.
struct Node(SingleNode);

impl std::ops::Deref for Node {
    type Target = SingleNode;

    fn deref(&self) -> &SingleNode {
        &self.0
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut SingleNode {
        &mut self.0
    }
}

impl Node {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        Self(SingleNode::start(dir, extra, DEADLINE))
    }

    /// `bedrock GROUP COMMAND --node ADDR --key-file KEY ARGS…`, run to completion.
    fn run(&self, group: &str, command: &str, args: &[&str]) -> Output {
        self.command(group, command, args).output().unwrap()
    }

    fn command(&self, group: &str, command: &str, args: &[&str]) -> Command {
        let mut process = Command::new(BIN);
        process
            .args([group, command, "--node", &self.addr.to_string()])
            .arg("--key-file")
            .arg(&self.key)
            .args(args);
        process
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, group: &str, command: &str, args: &[&str]) -> String {
        let output = self.run(group, command, args);
        assert!(
            output.status.success(),
            "{group} {command} {args:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// A client of this node, as the test's threads use it.
    fn client(&self) -> Client {
        let keys: Keyring<CLIENT_KEYS> =
            Keyring::parse(&std::fs::read_to_string(&self.key).unwrap()).unwrap();
        let mut client = Client::new(self.addr, crc32c(b"bedrock"), Some(keys)).unwrap();
        client.timeout = Duration::from_secs(1);
        client
    }
}

/// Polls `f` until it returns `Some`, up to [`DEADLINE`].
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < until, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `RECEIPT MESSAGE` of a `recv` line.
fn split_delivery(line: &str) -> (String, String) {
    let line = line.strip_suffix('\n').unwrap();
    let (receipt, message) = line.split_once(' ').unwrap();
    (receipt.to_string(), message.to_string())
}

#[test]
fn queue_commands_send_receive_acknowledge_and_refuse_stale_receipts() {
    let temporary = scratch("queue-jobs-");
    let mut node = Node::start(temporary.path(), &[]);

    // An empty (never used) queue: nothing printed, exit status 0.
    let output = node.run("queue", "recv", &["empty"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");
    assert_eq!(text(&output.stderr), "");

    // Round trip: send prints the id, recv the receipt and the message as sent, ack nothing.
    let id = node.ok("queue", "send", &["greetings", "hello queue é"]);
    assert_eq!(id, "1\n");
    let (receipt, message) = split_delivery(&node.ok("queue", "recv", &["greetings"]));
    assert_eq!(message, "hello queue é");
    assert!(receipt.starts_with("1:"), "{receipt}");
    assert_eq!(node.ok("queue", "ack", &["greetings", &receipt]), "");
    assert_eq!(
        node.ok("queue", "recv", &["greetings"]),
        "",
        "acked for good"
    );
    // Acknowledging again: the message is gone.
    let line = assert_one_error_line(&node.run("queue", "ack", &["greetings", &receipt]), 1);
    assert!(line.contains("not in the queue"), "{line}");

    // A lease that ends: the message comes back under a new receipt, the old one is stale.
    assert_eq!(
        node.ok("queue", "send", &["slow", "-starts with a dash"]),
        "2\n"
    );
    let (stale, message) = split_delivery(&node.ok("queue", "recv", &["slow", "--lease", "200ms"]));
    assert_eq!(message, "-starts with a dash");
    let (fresh, message) = poll("the lease to end", || {
        let output = node.ok("queue", "recv", &["slow", "--lease", "30s"]);
        (!output.is_empty()).then(|| split_delivery(&output))
    });
    assert_eq!(message, "-starts with a dash");
    assert!(fresh.starts_with("2:") && fresh != stale, "{stale} {fresh}");
    let line = assert_one_error_line(&node.run("queue", "ack", &["slow", &stale]), 1);
    assert!(
        line.starts_with(&format!(
            "error: ack of {stale} refused: the receipt is stale"
        )),
        "{line}"
    );
    let line = assert_one_error_line(&node.run("queue", "extend", &["slow", &stale]), 1);
    assert!(line.contains("the receipt is stale"), "{line}");
    assert_eq!(
        node.ok("queue", "extend", &["slow", &fresh, "--lease", "1m"]),
        ""
    );
    assert_eq!(node.ok("queue", "ack", &["slow", &fresh]), "");

    // Idempotent producer: a retried (producer, sequence) is stored once; an older one refused.
    let args = ["retried", "once", "--producer", "77", "--sequence", "5"];
    let first = node.ok("queue", "send", &args);
    assert_eq!(first, "3\n");
    assert_eq!(
        node.ok("queue", "send", &args),
        first,
        "the retry gets the same id"
    );
    let older = ["retried", "older", "--producer", "77", "--sequence", "4"];
    let line = assert_one_error_line(&node.run("queue", "send", &older), 1);
    assert!(line.contains("higher sequence number"), "{line}");
    let (receipt, message) = split_delivery(&node.ok("queue", "recv", &["retried"]));
    assert_eq!(message, "once");
    assert_eq!(node.ok("queue", "recv", &["retried"]), "", "stored once");
    node.ok("queue", "ack", &["retried", &receipt]);

    // Stats: three messages stored and acknowledged, one lease expired.
    let stats = node.ok("queue", "stats", &[]);
    let fields: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(fields.len(), 10, "{stats}");
    assert_eq!(
        &fields[..8],
        ["live", "0", "leased", "0", "sent", "3", "acked", "3"],
        "{stats}"
    );
    assert_eq!(fields[8], "expired");
    let expired: u64 = fields[9].parse().unwrap();
    assert!(expired >= 1, "{stats}");
    node.ok("queue", "send", &["left", "over"]);
    let stats = node.ok("queue", "stats", &[]);
    assert!(
        stats.starts_with("live 1 leased 0 sent 4 acked 3 "),
        "{stats}"
    );

    // Bad input: one line, never a panic.
    let too_large = "x".repeat(1281);
    let line = assert_one_error_line(&node.run("queue", "send", &["q", &too_large]), 1);
    assert!(line.contains("too large"), "{line}");
    let long_name = "n".repeat(33);
    for (args, status) in [
        (vec!["send", long_name.as_str(), "m"], 2),
        (vec!["send", "q", "m", "--producer", "1"], 2),
        (vec!["ack", "q", "12"], 2),
        (vec!["ack", "q", "1:x"], 2),
        (vec!["recv", "q", "--lease", "0s"], 2),
        (vec!["recv", "q", "--lease", "forever"], 2),
        (vec!["ack", "q", "999:1"], 1),
    ] {
        let output = node.run("queue", args[0], &args[1..]);
        let line = assert_one_error_line(&output, status);
        assert!(!line.contains("Usage"), "{args:?}: {line}");
    }

    // A leased message survives a clean stop and a restart, pending again; the receipt from
    // before the restart is stale (tokens carry the node's incarnation).
    let (before, message) = split_delivery(&node.ok("queue", "recv", &["left", "--lease", "10m"]));
    assert_eq!(message, "over");
    let stop = node.stop();
    assert!(
        stop.contains("; queue 1 live messages, 4 sent, 3 acked, "),
        "{stop}"
    );
    node.restart();
    let (after, message) = split_delivery(&node.ok("queue", "recv", &["left"]));
    assert_eq!(message, "over");
    assert!(before.starts_with("4:") && after.starts_with("4:") && before != after);
    let line = assert_one_error_line(&node.run("queue", "ack", &["left", &before]), 1);
    assert!(line.contains("the receipt is stale"), "{line}");
    node.ok("queue", "ack", &["left", &after]);
    let stop = node.stop();
    assert!(
        stop.contains("; queue 0 live messages, 0 sent, 1 acked, "),
        "{stop}"
    );
    let starts = node
        .process
        .lines()
        .iter()
        .filter(|line| line.contains(" listening on "))
        .count();
    assert_eq!(starts, 2);
}

#[test]
fn jobs_complete_fail_go_dead_are_listed_retried_and_lose_their_lease() {
    let temporary = scratch("queue-jobs-");
    let dir = temporary.path();
    let mut node = Node::start(dir, &["--job-lease", "1s", "--job-backoff", "50ms"]);
    let path = |name: &str| dir.join(name).display().to_string();

    // Nothing to do: --once exits 0 and prints nothing.
    let output = node.run("jobs", "work", &["--once", "--exec", "true"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");

    // Submit with a key twice: one job.
    assert_eq!(
        node.ok("jobs", "submit", &["first job", "--key", "42"]),
        "1\n"
    );
    assert_eq!(
        node.ok("jobs", "submit", &["first job", "--key", "42"]),
        "1 duplicate\n"
    );
    // The command gets the payload on stdin and the job in its environment; exit 0 completes.
    let exec = format!(
        "cat > {}; echo \"$BEDROCK_JOB_ID $BEDROCK_JOB_ATTEMPT $BEDROCK_JOB_TOKEN\" > {}",
        path("payload"),
        path("env")
    );
    let output = node.run("jobs", "work", &["--once", "--exec", &exec]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stderr), "job 1 (attempt 1): completed\n");
    assert_eq!(
        std::fs::read_to_string(path("payload")).unwrap(),
        "first job"
    );
    let env = std::fs::read_to_string(path("env")).unwrap();
    let env: Vec<&str> = env.split_whitespace().collect();
    assert_eq!(&env[..2], ["1", "1"]);
    let token: u64 = env[2].parse().unwrap();
    // A repeated completion with the claim's token is fine; another token is refused.
    node.ok("jobs", "complete", &["1", &token.to_string()]);
    let wrong = (token + 1000).to_string();
    let line = assert_one_error_line(&node.run("jobs", "complete", &["1", &wrong]), 1);
    assert!(line.starts_with("error: completion refused: "), "{line}");
    assert_eq!(node.ok("jobs", "work", &["--once", "--exec", "true"]), "");

    // A failing command: retried after the backoff, dead after its last attempt.
    assert_eq!(
        node.ok("jobs", "submit", &["doomed", "--max-attempts", "2"]),
        "2\n"
    );
    let exec = format!("echo $BEDROCK_JOB_ATTEMPT >> {}; exit 3", path("attempts"));
    for attempt in 1..=2 {
        let output = poll("the retry's backoff", || {
            let output = node.run("jobs", "work", &["--once", "--exec", &exec]);
            (!output.stderr.is_empty()).then_some(output)
        });
        assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
        let expected = format!(
            "job 2 (attempt {attempt}): failed: the command ended with exit status: 3; it runs \
             again after a backoff unless that was its last attempt\n"
        );
        assert_eq!(text(&output.stderr), expected);
    }
    assert_eq!(std::fs::read_to_string(path("attempts")).unwrap(), "1\n2\n");
    assert_eq!(node.ok("jobs", "list", &[]), "2\n");
    assert_eq!(node.ok("jobs", "list", &["--after", "2"]), "");
    assert_eq!(
        node.ok("jobs", "work", &["--once", "--exec", "true"]),
        "",
        "dead: not run"
    );
    // Re-queued: it runs again at once, from its first attempt.
    assert_eq!(node.ok("jobs", "retry", &["2"]), "");
    assert_eq!(node.ok("jobs", "list", &[]), "");
    let line = assert_one_error_line(&node.run("jobs", "retry", &["2"]), 1);
    assert!(line.contains("only a dead job can be re-queued"), "{line}");
    let line = assert_one_error_line(&node.run("jobs", "retry", &["99"]), 1);
    assert!(line.contains("no such job"), "{line}");
    let output = node.run("jobs", "work", &["--once", "--exec", "exit 0"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stderr), "job 2 (attempt 1): completed\n");

    // Without --exec: `ID TOKEN PAYLOAD`, finished by hand.
    assert_eq!(node.ok("jobs", "submit", &["by hand"]), "3\n");
    let claimed = node.ok("jobs", "work", &["--once"]);
    let fields: Vec<&str> = claimed.trim_end().splitn(3, ' ').collect();
    assert_eq!((fields[0], fields[2]), ("3", "by hand"), "{claimed}");
    let lease: u64 = node
        .ok("jobs", "heartbeat", &["3", fields[1]])
        .trim()
        .parse()
        .unwrap();
    assert!(lease > 0 && lease <= 1000, "{lease}");
    node.ok("jobs", "complete", &["3", fields[1]]);

    // A worker that loses its lease (stopped longer than the lease while another worker takes
    // the job) has its heartbeat refused: its command's whole process group is killed.
    assert_eq!(node.ok("jobs", "submit", &["slow"]), "4\n");
    let exec = format!("sleep 60 & echo $! > {}; wait", path("sleep.pid"));
    let mut worker = node
        .command("jobs", "work", &["--once", "--exec", &exec])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sleeper: i32 = poll("the command to start", || {
        let pid = std::fs::read_to_string(path("sleep.pid")).ok()?;
        pid.trim().parse().ok()
    });
    send_signal(worker.id(), libc::SIGSTOP);
    // Once the lease ran out the job is offered again (as attempt 2), to another worker.
    let again = poll("the lease to run out", || {
        let claimed = node.ok("jobs", "work", &["--once"]);
        (!claimed.is_empty()).then_some(claimed)
    });
    let fields: Vec<&str> = again.trim_end().splitn(3, ' ').collect();
    assert_eq!((fields[0], fields[2]), ("4", "slow"), "{again}");
    send_signal(worker.id(), libc::SIGCONT);
    let status = worker.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("job 4 (attempt 1): lease lost: heartbeat refused: the token is stale"),
        "{stderr}"
    );
    assert!(stderr.ends_with("killed the command\n"), "{stderr}");
    poll("the killed command to be gone", || {
        let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).ok();
        // Gone, or a zombie waiting for init to reap it.
        state
            .is_none_or(|state| state.contains(") Z "))
            .then_some(())
    });
    node.ok("jobs", "complete", &["4", fields[1]]);

    // Bad input: one line, never a panic.
    let too_large = "x".repeat(1025);
    let line = assert_one_error_line(&node.run("jobs", "submit", &[&too_large]), 1);
    assert!(line.contains("too large"), "{line}");
    for args in [
        vec!["submit", "x", "--max-attempts", "0"],
        vec!["submit", "x", "--priority", "256"],
        vec!["submit", "x", "--delay", "soon"],
        vec!["complete", "1"],
        vec!["fail", "x", "1"],
        vec!["work", "--poll", "-1s"],
    ] {
        let line = assert_one_error_line(&node.run("jobs", args[0], &args[1..]), 2);
        assert!(!line.contains("Usage"), "{args:?}: {line}");
    }
    let stop = node.stop();
    assert!(
        stop.contains("; jobs 0 unfinished (0 dead), 4 submitted, 4 completed, 2 failed, "),
        "{stop}"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGKILL under load.

/// Queue client threads' records.
#[derive(Debug, Default)]
struct QueueLedger {
    /// Producer sends acknowledged: payload → id.
    sent: BTreeMap<String, u64>,
    /// Every delivery received by a consumer: (id, token, payload).
    deliveries: Vec<(u64, u64, String)>,
    /// Acks acknowledged: (id, token).
    acked: Vec<(u64, u64)>,
    /// Acks refused as stale or not live, and acks without an answer.
    refused_acks: usize,
    unanswered_acks: usize,
    /// Requests without an answer (the node was down).
    timeouts: usize,
}

/// Scheduler client threads' records.
#[derive(Debug, Default)]
struct JobsLedger {
    /// Submits acknowledged: key → (job, duplicate).
    submitted: BTreeMap<u64, (u64, bool)>,
    /// Claims received: (job, token).
    claims: Vec<(u64, u64)>,
    /// Completions accepted: (job, token).
    completed: Vec<(u64, u64)>,
    stale: usize,
    timeouts: usize,
}

fn queue_request(
    client: &mut Client,
    message: &queue::Message<'_>,
    request: u64,
) -> Result<QueueReply, ClientError> {
    client.request(
        kind::QUEUE,
        |area| queue::encode(message, area),
        |payload| {
            let reply = queue::decode(payload).ok()?;
            let (answer, to) = match reply {
                queue::Message::Sent { request, id } => (QueueReply::Sent(id), request),
                queue::Message::Delivery {
                    request,
                    id,
                    token,
                    payload,
                    ..
                } => (QueueReply::Delivery(id, token, text(payload)), request),
                queue::Message::Empty { request } => (QueueReply::Empty, request),
                queue::Message::Acked { request, .. } => (QueueReply::Acked, request),
                queue::Message::Refused { request, reason } => {
                    (QueueReply::Refused(reason), request)
                }
                queue::Message::StatsReply { request, live, .. } => {
                    (QueueReply::Live(live), request)
                }
                _ => return None,
            };
            (to == request).then_some(answer)
        },
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum QueueReply {
    Sent(u64),
    Delivery(u64, u64, String),
    Empty,
    Acked,
    Refused(queue::Refusal),
    Live(u32),
}

fn jobs_request(
    client: &mut Client,
    message: &jobs::Message<'_>,
    request: u64,
) -> Result<JobsReply, ClientError> {
    client.request(
        kind::JOBS,
        |area| jobs::encode(message, area),
        |payload| {
            let reply = jobs::decode(payload).ok()?;
            let (answer, to) = match reply {
                jobs::Message::Submitted {
                    request,
                    job,
                    duplicate,
                } => (JobsReply::Submitted(job, duplicate), request),
                jobs::Message::Claimed {
                    request,
                    job,
                    token,
                    ..
                } => (JobsReply::Claimed(job, token), request),
                jobs::Message::NoJob { request } => (JobsReply::NoJob, request),
                jobs::Message::Done { request, .. } => (JobsReply::Done, request),
                jobs::Message::Refused { request, reason } => (JobsReply::Refused(reason), request),
                _ => return None,
            };
            (to == request).then_some(answer)
        },
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobsReply {
    Submitted(u64, bool),
    Claimed(u64, u64),
    NoJob,
    Done,
    Refused(jobs::Refusal),
}

/// Request ids: unique per thread and request.
struct Requests(u64);

impl Requests {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The flags the load threads watch.
#[derive(Default)]
struct Flags {
    /// Producers and submitters stop (after their message or job in flight is acknowledged).
    stop_producing: AtomicBool,
    /// Consumers and workers stop.
    stop_consuming: AtomicBool,
    sends: AtomicUsize,
    completions: AtomicUsize,
}

/// Sends `payload` as (producer, sequence) until acknowledged, retrying the same pair.
fn produce(
    client: &mut Client,
    requests: &mut Requests,
    ledger: &Mutex<QueueLedger>,
    (producer, sequence): (u64, u64),
    payload: &str,
) -> u64 {
    let until = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < until,
            "send {producer}/{sequence} never acknowledged"
        );
        let request = requests.next();
        let message = queue::Message::Send {
            request,
            queue: "load",
            producer,
            sequence,
            payload: payload.as_bytes(),
        };
        match queue_request(client, &message, request) {
            Ok(QueueReply::Sent(id)) => return id,
            Ok(QueueReply::Refused(queue::Refusal::Full | queue::Refusal::Busy)) => {
                thread::sleep(Duration::from_millis(20));
            }
            Ok(other) => panic!("send {producer}/{sequence}: {other:?}"),
            Err(ClientError::Timeout { .. }) => ledger.lock().unwrap().timeouts += 1,
            Err(error) => panic!("send: {error}"),
        }
    }
}

fn producer_thread(
    node: &Node,
    index: u64,
    flags: Arc<Flags>,
    ledger: Arc<Mutex<QueueLedger>>,
) -> JoinHandle<()> {
    let mut client = node.client();
    thread::spawn(move || {
        let mut requests = Requests(index << 48);
        let producer = 1000 + index;
        for sequence in 1u64.. {
            if flags.stop_producing.load(Ordering::Relaxed) {
                return;
            }
            let payload = format!("p{index}-{sequence}");
            let id = produce(
                &mut client,
                &mut requests,
                &ledger,
                (producer, sequence),
                &payload,
            );
            let previous = ledger.lock().unwrap().sent.insert(payload.clone(), id);
            assert_eq!(previous, None, "{payload} acknowledged twice");
            flags.sends.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Every this-many deliveries or claims, a consumer or worker "stalls": it leaves the delivery
/// unacknowledged (the job uncompleted) and acknowledges it only after [`STALL`], by which time
/// its lease has normally run out and the message or job went to someone else.
const STALL_EVERY: usize = 40;
/// How long a stalled delivery or claim waits: longer than the queue lease (1 s) and the job
/// lease (2 s).
const STALL: Duration = Duration::from_millis(2500);

/// Acknowledges delivery (id, token) and records the answer.
fn ack(
    client: &mut Client,
    requests: &mut Requests,
    ledger: &Mutex<QueueLedger>,
    (id, token): (u64, u64),
) {
    let request = requests.next();
    let ack = queue::Message::Ack { request, id, token };
    let answer = queue_request(client, &ack, request);
    let mut ledger = ledger.lock().unwrap();
    match answer {
        Ok(QueueReply::Acked) => ledger.acked.push((id, token)),
        Ok(QueueReply::Refused(queue::Refusal::StaleDelivery | queue::Refusal::NotLive)) => {
            ledger.refused_acks += 1;
        }
        Ok(other) => panic!("ack: {other:?}"),
        Err(ClientError::Timeout { .. }) => ledger.unanswered_acks += 1,
        Err(error) => panic!("ack: {error}"),
    }
}

fn consumer_thread(
    node: &Node,
    index: u64,
    flags: Arc<Flags>,
    ledger: Arc<Mutex<QueueLedger>>,
) -> JoinHandle<()> {
    let mut client = node.client();
    thread::spawn(move || {
        let mut requests = Requests((100 + index) << 48);
        let mut stalled: Vec<(Instant, u64, u64)> = Vec::new();
        let mut received = 0usize;
        while !flags.stop_consuming.load(Ordering::Relaxed) {
            // Late acks of stalled deliveries: normally refused as stale.
            while stalled
                .first()
                .is_some_and(|(at, _, _)| at.elapsed() >= STALL)
            {
                let (_, id, token) = stalled.remove(0);
                ack(&mut client, &mut requests, &ledger, (id, token));
            }
            let request = requests.next();
            let receive = queue::Message::Receive {
                request,
                queue: "load",
                lease_ms: 1000,
            };
            let (id, token) = match queue_request(&mut client, &receive, request) {
                Ok(QueueReply::Delivery(id, token, payload)) => {
                    ledger.lock().unwrap().deliveries.push((id, token, payload));
                    (id, token)
                }
                Ok(QueueReply::Empty | QueueReply::Refused(queue::Refusal::Busy)) => {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Ok(other) => panic!("receive: {other:?}"),
                Err(ClientError::Timeout { .. }) => {
                    ledger.lock().unwrap().timeouts += 1;
                    continue;
                }
                Err(error) => panic!("receive: {error}"),
            };
            // "Processing" is the delivery recorded above, and a moment of work; then the ack
            // by its receipt.
            received += 1;
            if received.is_multiple_of(STALL_EVERY) {
                stalled.push((Instant::now(), id, token));
                continue;
            }
            thread::sleep(Duration::from_millis(1));
            ack(&mut client, &mut requests, &ledger, (id, token));
        }
    })
}

/// Completes job `job` under `token`, retried (same token) until answered; records the answer.
fn complete(
    client: &mut Client,
    requests: &mut Requests,
    flags: &Flags,
    ledger: &Mutex<JobsLedger>,
    (job, token): (u64, u64),
) {
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        let request = requests.next();
        let complete = jobs::Message::Complete {
            request,
            job,
            token,
        };
        let answer = jobs_request(client, &complete, request);
        let mut ledger = ledger.lock().unwrap();
        match answer {
            Ok(JobsReply::Done) => {
                ledger.completed.push((job, token));
                flags.completions.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(JobsReply::Refused(jobs::Refusal::StaleToken | jobs::Refusal::UnknownJob)) => {
                ledger.stale += 1;
                return;
            }
            Ok(other) => panic!("complete: {other:?}"),
            Err(ClientError::Timeout { .. }) => ledger.timeouts += 1,
            Err(error) => panic!("complete: {error}"),
        }
    }
}

fn submitter_thread(
    node: &Node,
    index: u64,
    flags: Arc<Flags>,
    ledger: Arc<Mutex<JobsLedger>>,
) -> JoinHandle<()> {
    let mut client = node.client();
    thread::spawn(move || {
        let mut requests = Requests((200 + index) << 48);
        for n in 1u64.. {
            if flags.stop_producing.load(Ordering::Relaxed) {
                return;
            }
            let key = (index << 32) | n;
            let payload = format!("job {index}-{n}");
            let until = Instant::now() + DEADLINE;
            // Retried with the same key until acknowledged: stored once.
            let answer = loop {
                assert!(Instant::now() < until, "submit {key} never acknowledged");
                let request = requests.next();
                let submit = jobs::Message::Submit {
                    request,
                    key: Some(key),
                    priority: (n % 3) as u8,
                    delay_ms: 0,
                    max_attempts: 50,
                    payload: payload.as_bytes(),
                };
                match jobs_request(&mut client, &submit, request) {
                    Ok(JobsReply::Submitted(job, duplicate)) => break (job, duplicate),
                    Ok(JobsReply::Refused(jobs::Refusal::Full | jobs::Refusal::Busy)) => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Ok(other) => panic!("submit: {other:?}"),
                    Err(ClientError::Timeout { .. }) => ledger.lock().unwrap().timeouts += 1,
                    Err(error) => panic!("submit: {error}"),
                }
            };
            ledger.lock().unwrap().submitted.insert(key, answer);
            thread::sleep(Duration::from_millis(2));
        }
    })
}

fn worker_thread(
    node: &Node,
    index: u64,
    flags: Arc<Flags>,
    ledger: Arc<Mutex<JobsLedger>>,
) -> JoinHandle<()> {
    let mut client = node.client();
    thread::spawn(move || {
        let mut requests = Requests((300 + index) << 48);
        let mut stalled: Vec<(Instant, u64, u64)> = Vec::new();
        let mut claimed = 0usize;
        while !flags.stop_consuming.load(Ordering::Relaxed) {
            // Late completions of stalled claims: normally refused as stale.
            while stalled
                .first()
                .is_some_and(|(at, _, _)| at.elapsed() >= STALL)
            {
                let (_, job, token) = stalled.remove(0);
                complete(&mut client, &mut requests, &flags, &ledger, (job, token));
            }
            let request = requests.next();
            let claim = jobs::Message::Claim { request };
            let (job, token) = match jobs_request(&mut client, &claim, request) {
                Ok(JobsReply::Claimed(job, token)) => (job, token),
                Ok(JobsReply::NoJob | JobsReply::Refused(jobs::Refusal::Busy)) => {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Ok(other) => panic!("claim: {other:?}"),
                Err(ClientError::Timeout { .. }) => {
                    ledger.lock().unwrap().timeouts += 1;
                    continue;
                }
                Err(error) => panic!("claim: {error}"),
            };
            ledger.lock().unwrap().claims.push((job, token));
            claimed += 1;
            if claimed.is_multiple_of(STALL_EVERY) {
                stalled.push((Instant::now(), job, token));
                continue;
            }
            thread::sleep(Duration::from_millis(1));
            complete(&mut client, &mut requests, &flags, &ledger, (job, token));
        }
    })
}

/// The node's live message count.
fn live_messages(client: &mut Client, requests: &mut Requests) -> Option<u32> {
    let request = requests.next();
    let stats = queue::Message::Stats { request };
    match queue_request(client, &stats, request) {
        Ok(QueueReply::Live(live)) => Some(live),
        _ => None,
    }
}

/// Waits until `counter` passes `floor + more`.
fn wait_for(counter: &AtomicUsize, more: usize, what: &str) {
    let floor = counter.load(Ordering::Relaxed) + more;
    poll(what, || {
        (counter.load(Ordering::Relaxed) >= floor).then_some(())
    });
}

#[test]
fn nothing_acknowledged_is_lost_or_redone_when_the_node_is_killed_under_load() {
    const KILLS: usize = 3;
    let temporary = scratch("queue-jobs-");
    let mut node = Node::start(
        temporary.path(),
        &["--job-lease", "2s", "--job-backoff", "50ms"],
    );
    let flags = Arc::new(Flags::default());
    let queue_ledger = Arc::new(Mutex::new(QueueLedger::default()));
    let jobs_ledger = Arc::new(Mutex::new(JobsLedger::default()));
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    for index in 0..3 {
        producers.push(producer_thread(
            &node,
            index,
            Arc::clone(&flags),
            Arc::clone(&queue_ledger),
        ));
        consumers.push(consumer_thread(
            &node,
            index,
            Arc::clone(&flags),
            Arc::clone(&queue_ledger),
        ));
    }
    for index in 0..2 {
        producers.push(submitter_thread(
            &node,
            index,
            Arc::clone(&flags),
            Arc::clone(&jobs_ledger),
        ));
        consumers.push(worker_thread(
            &node,
            index,
            Arc::clone(&flags),
            Arc::clone(&jobs_ledger),
        ));
    }

    for _ in 0..KILLS {
        wait_for(&flags.sends, 150, "acknowledged sends");
        wait_for(&flags.completions, 40, "completed jobs");
        node.kill();
        thread::sleep(Duration::from_millis(200));
        node.restart();
    }
    wait_for(
        &flags.sends,
        150,
        "acknowledged sends after the last restart",
    );
    wait_for(
        &flags.completions,
        40,
        "completed jobs after the last restart",
    );
    flags.stop_producing.store(true, Ordering::Relaxed);

    // Drain: every message acknowledged, every submitted job completed.
    let mut client = node.client();
    let mut requests = Requests(1000 << 48);
    poll("every job to complete", || {
        let ledger = jobs_ledger.lock().unwrap();
        let done: BTreeSet<u64> = ledger.completed.iter().map(|&(job, _)| job).collect();
        let all = ledger.submitted.values().all(|(job, _)| done.contains(job));
        // Producers stopped: the set of submitted jobs no longer grows.
        (all && producers.iter().all(JoinHandle::is_finished)).then_some(())
    });
    // The producers finished their last sends (acknowledged): every message is acknowledged
    // once the node holds no live message.
    poll("the queue to drain", || {
        (live_messages(&mut client, &mut requests) == Some(0)).then_some(())
    });
    flags.stop_consuming.store(true, Ordering::Relaxed);
    for thread in producers.into_iter().chain(consumers) {
        thread.join().unwrap();
    }
    let stop = node.stop();

    let queue = queue_ledger.lock().unwrap();
    let ids: BTreeMap<u64, &String> = queue
        .sent
        .iter()
        .map(|(payload, &id)| (id, payload))
        .collect();
    assert_eq!(
        ids.len(),
        queue.sent.len(),
        "two acknowledged sends share an id"
    );
    // Every delivery is of an acknowledged send, with its payload: a retried send was stored
    // once (a second copy would be delivered under an id no producer was told).
    for (id, _, payload) in &queue.deliveries {
        assert_eq!(
            ids.get(id).map(|p| p.as_str()),
            Some(payload.as_str()),
            "delivery of id {id}"
        );
    }
    // 0 lost: every acknowledged send was received by a consumer (and the node holds no live
    // message at the end: each was acknowledged durably).
    let received: BTreeSet<u64> = queue.deliveries.iter().map(|&(id, _, _)| id).collect();
    let lost: Vec<u64> = ids
        .keys()
        .filter(|id| !received.contains(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged messages never received: {lost:?}"
    );
    // Once an ack was acknowledged under token T, the message is never delivered again:
    // no delivery of that id carries a token above T (tokens grow with every delivery, and
    // with the incarnation across restarts). And no message is acknowledged twice.
    let mut acked_at: BTreeMap<u64, u64> = BTreeMap::new();
    for &(id, token) in &queue.acked {
        assert_eq!(
            acked_at.insert(id, token),
            None,
            "message {id} acknowledged twice"
        );
    }
    let redone: Vec<&(u64, u64, String)> = queue
        .deliveries
        .iter()
        .filter(|(id, token, _)| acked_at.get(id).is_some_and(|&acked| *token > acked))
        .collect();
    assert!(
        redone.is_empty(),
        "delivered again after an acknowledged ack: {redone:?}"
    );
    let redeliveries = queue.deliveries.len() - received.len();

    let jobs = jobs_ledger.lock().unwrap();
    let mut job_ids = BTreeSet::new();
    for (key, (job, _)) in &jobs.submitted {
        assert!(
            job_ids.insert(*job),
            "job {job} answered for two keys (key {key})"
        );
    }
    // No job completes twice: every accepted completion of a job carries the same token.
    let mut completed_with: BTreeMap<u64, u64> = BTreeMap::new();
    for &(job, token) in &jobs.completed {
        assert!(
            job_ids.contains(&job),
            "job {job} completed but never submitted"
        );
        let first = *completed_with.entry(job).or_insert(token);
        assert_eq!(
            first, token,
            "job {job} completed under tokens {first} and {token}"
        );
    }
    let unfinished: Vec<&u64> = job_ids
        .iter()
        .filter(|job| !completed_with.contains_key(job))
        .collect();
    assert!(
        unfinished.is_empty(),
        "acknowledged jobs never completed: {unfinished:?}"
    );
    let duplicates = jobs
        .submitted
        .values()
        .filter(|(_, duplicate)| *duplicate)
        .count();
    assert!(stop.contains("; queue 0 live messages, "), "{stop}");
    assert!(stop.contains("; jobs 0 unfinished (0 dead), "), "{stop}");

    println!(
        "{KILLS} SIGKILLs. queue: {} sends acknowledged, {} deliveries ({redeliveries} \
         redeliveries), {} acks acknowledged, {} refused, {} unanswered, 0 lost, 0 delivered after \
         an acknowledged ack; jobs: {} submitted ({duplicates} answered as duplicates of a retried \
         submit), {} claims, {} completions accepted ({} jobs), {} stale, 0 completed twice; \
         {} + {} requests timed out",
        queue.sent.len(),
        queue.deliveries.len(),
        queue.acked.len(),
        queue.refused_acks,
        queue.unanswered_acks,
        jobs.submitted.len(),
        jobs.claims.len(),
        jobs.completed.len(),
        completed_with.len(),
        jobs.stale,
        queue.timeouts,
        jobs.timeouts,
    );
}
