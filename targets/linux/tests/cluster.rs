//! Real processes: three `bedrock node`s on 127.0.0.1, .2 and .3 under a key made by
//! `bedrock keygen`, driven by the `bedrock` client commands.
//!
//! Three traffic threads each send increments and log appends to their own node; one node is
//! killed with SIGKILL while its client is sending, and restarted on the same data directory and
//! address. Then every node must report the same counter value, the sum of the acknowledged
//! increments, and the same log, holding every acknowledged append once. A request whose client
//! timed out may or may not have been applied (the client's contract): the value may then also
//! include any subset of those increments, and the log those entries, once each.
//!
//! Convergence is polled up to [`DEADLINE`]; nothing else depends on timing. Child processes
//! are killed when the test ends, however it ends ([`Cluster`]'s `Drop`); every file lives in a
//! temporary directory under `CARGO_TARGET_TMPDIR`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_one_error_line, bedrock, free_address, scratch, text, NodeProcess, BIN, BIND_ATTEMPTS,
};

/// The longest wait for the cluster to converge, or for a process to start or stop.
const DEADLINE: Duration = Duration::from_secs(20);

/// One node: where it lives and its process.
struct Node {
    id: u32,
    addr: SocketAddr,
    data: PathBuf,
    process: NodeProcess,
}

impl Node {
    /// Starts the node with `peers` and waits for its start line; false when its address was
    /// taken.
    fn start(&mut self, peers: &[SocketAddr], key: &Path) -> bool {
        let mut command = Command::new(BIN);
        command
            .args(["node", "--id", &self.id.to_string()])
            .args(["--listen", &self.addr.to_string()])
            .arg("--data")
            .arg(&self.data)
            .arg("--key-file")
            .arg(key);
        for peer in peers {
            command.args(["--peer", &peer.to_string()]);
        }
        self.process.start(command)
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    /// `signal` (SIGTERM or SIGINT), then wait for a clean exit.
    fn stop(&mut self, signal: libc::c_int) {
        self.process.stop(signal);
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.process.lines()
    }
}

/// The running nodes; every process still running is killed when this is dropped (by its
/// [`NodeProcess`]).
struct Cluster {
    key: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Three nodes with ids 1, 2, 3 on 127.0.0.1, .2, .3, on ports that were free; a start
    /// that finds its port taken starts the whole cluster again on new ports.
    fn start(dir: &Path, key: &Path) -> Self {
        let mut cluster = Self {
            key: key.to_path_buf(),
            nodes: Vec::new(),
        };
        for _ in 0..BIND_ATTEMPTS {
            cluster.nodes = (1..=3u8)
                .map(|id| Node {
                    id: u32::from(id),
                    addr: free_address(Ipv4Addr::new(127, 0, 0, id)),
                    data: dir.join(format!("node{id}")),
                    process: NodeProcess::new(format!("node {id}"), DEADLINE),
                })
                .collect();
            if (0..3).all(|index| cluster.start_node(index)) {
                return cluster;
            }
            for node in &mut cluster.nodes {
                if node.process.running() {
                    node.kill();
                }
            }
        }
        panic!("no free ports after {BIND_ATTEMPTS} attempts");
    }

    fn peers_of(&self, index: usize) -> Vec<SocketAddr> {
        let others = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(other, _)| other != index);
        others.map(|(_, node)| node.addr).collect()
    }

    fn start_node(&mut self, index: usize) -> bool {
        let peers = self.peers_of(index);
        let key = self.key.clone();
        self.nodes[index].start(&peers, &key)
    }

    /// Starts a killed node again on the same address, retrying while the port is taken.
    fn restart(&mut self, index: usize) {
        for _ in 0..BIND_ATTEMPTS {
            if self.start_node(index) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("node {} could not bind its address again", index + 1);
    }

    fn addr(&self, index: usize) -> String {
        self.nodes[index].addr.to_string()
    }

    fn key(&self) -> String {
        self.key.display().to_string()
    }
}

/// A client process running beside the test, killed if the test ends before it does.
struct Reaped(Option<Child>);

impl Reaped {
    fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one request was, and whether its client got an answer.
#[derive(Debug, Clone)]
enum Request {
    Incr { by: u64, acked: bool },
    Append { data: String, acked: bool },
}

/// Runs one client command; `true` when acknowledged, `false` when its client timed out (the
/// request may or may not have been applied). Anything else fails the test.
fn client(args: &[&str]) -> bool {
    let output = bedrock(args);
    if output.status.success() {
        return true;
    }
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("error: no reply from ") && stderr.lines().count() == 1,
        "{args:?} failed otherwise: {stderr}"
    );
    false
}

/// One thread per node sending it increments and appends until `stop`.
struct Traffic {
    stop: Arc<AtomicBool>,
    acked: Arc<[AtomicUsize; 3]>,
    /// Each thread's requests and its slowest one.
    threads: Vec<JoinHandle<(Vec<Request>, Duration)>>,
}

impl Traffic {
    fn start(cluster: &Cluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new([0, 0, 0].map(AtomicUsize::new));
        let threads = (0..3)
            .map(|index| {
                let (addr, key) = (cluster.addr(index), cluster.key());
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
                thread::spawn(move || {
                    let (mut requests, mut slowest) = (Vec::new(), Duration::ZERO);
                    for sequence in 1u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let sent = Instant::now();
                        let request = send(index, sequence, &addr, &key);
                        slowest = slowest.max(sent.elapsed());
                        if matches!(request, Request::Incr { acked: true, .. })
                            || matches!(request, Request::Append { acked: true, .. })
                        {
                            acked[index].fetch_add(1, Ordering::Relaxed);
                        }
                        requests.push(request);
                        thread::sleep(Duration::from_millis(10));
                    }
                    (requests, slowest)
                })
            })
            .collect();
        Self {
            stop,
            acked,
            threads,
        }
    }

    fn acked(&self, index: usize) -> usize {
        self.acked[index].load(Ordering::Relaxed)
    }

    /// Waits until `index` has had `count` requests acknowledged in all.
    fn wait_for(&self, index: usize, count: usize) {
        let until = Instant::now() + DEADLINE;
        while self.acked(index) < count {
            assert!(
                Instant::now() < until,
                "node {} answers no requests",
                index + 1
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every request sent, and each thread's slowest.
    fn stop(self) -> (Vec<Request>, Vec<Duration>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut requests, mut slowest) = (Vec::new(), Vec::new());
        for thread in self.threads {
            let (sent, slowest_one) = thread.join().unwrap();
            requests.extend(sent);
            slowest.push(slowest_one);
        }
        (requests, slowest)
    }
}

/// Request `sequence` of the thread of node `index + 1`: increments and appends in turn, the
/// amounts varied, every entry's data unique.
fn send(index: usize, sequence: u64, addr: &str, key: &str) -> Request {
    if sequence % 2 == 1 {
        let by = 1 + (sequence + index as u64) % 5;
        let by_text = by.to_string();
        let args = [
            "counter",
            "incr",
            "--node",
            addr,
            "--key-file",
            key,
            "--by",
            &by_text,
        ];
        Request::Incr {
            by,
            acked: client(&args),
        }
    } else {
        let data = format!("node{} entry {sequence}", index + 1);
        let args = ["log", "append", "--node", addr, "--key-file", key, &data];
        Request::Append {
            acked: client(&args),
            data,
        }
    }
}

/// Every sum of a subset of `amounts` (few: only timed-out requests).
fn subset_sums(amounts: &[u64]) -> BTreeSet<u64> {
    let mut sums = BTreeSet::from([0]);
    for &amount in amounts {
        let more: Vec<u64> = sums.iter().map(|sum| sum + amount).collect();
        sums.extend(more);
    }
    sums
}

/// What the requests must have produced.
struct Expected {
    acked_sum: u64,
    /// Possible extra amounts of timed-out increments.
    extra: BTreeSet<u64>,
    acked_entries: BTreeSet<String>,
    maybe_entries: BTreeSet<String>,
}

impl Expected {
    fn new(requests: &[Request]) -> Self {
        let mut in_doubt = Vec::new();
        let mut expected = Self {
            acked_sum: 0,
            extra: BTreeSet::new(),
            acked_entries: BTreeSet::new(),
            maybe_entries: BTreeSet::new(),
        };
        for request in requests {
            match request {
                Request::Incr { by, acked: true } => expected.acked_sum += by,
                Request::Incr { by, acked: false } => in_doubt.push(*by),
                Request::Append { data, acked: true } => {
                    expected.acked_entries.insert(data.clone());
                }
                Request::Append { data, acked: false } => {
                    expected.maybe_entries.insert(data.clone());
                }
            }
        }
        assert!(in_doubt.len() <= 12, "too many timeouts: {in_doubt:?}");
        expected.extra = subset_sums(&in_doubt);
        expected
    }

    /// Whether `value` is the acknowledged sum plus some of the timed-out increments.
    fn value_ok(&self, value: u64) -> bool {
        value
            .checked_sub(self.acked_sum)
            .is_some_and(|extra| self.extra.contains(&extra))
    }

    /// Whether a read listing holds every acknowledged append once, and nothing never sent,
    /// in well-formed sibling groups.
    fn log_ok(&self, listing: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut in_group = false;
        for line in listing.lines() {
            in_group = match (in_group, line.split(' ').nth(2)) {
                (false, Some("alone")) | (true, Some("last")) => false,
                (false, Some("first")) | (true, Some("middle")) => true,
                _ => return false,
            };
            let Some(data) = line.splitn(5, ' ').nth(4) else {
                return false;
            };
            let known = self.acked_entries.contains(data) || self.maybe_entries.contains(data);
            if !known || !seen.insert(data.to_string()) {
                return false;
            }
        }
        !in_group && self.acked_entries.is_subset(&seen)
    }
}

/// Every node's counter value and log listing, `None` for a node that did not answer.
fn observe(cluster: &Cluster) -> Vec<(Option<u64>, Option<String>)> {
    let key = cluster.key();
    (0..3)
        .map(|index| {
            let addr = cluster.addr(index);
            let get = bedrock(&["counter", "get", "--node", &addr, "--key-file", &key]);
            let value = get
                .status
                .success()
                .then(|| text(&get.stdout).trim().parse().unwrap());
            let read = bedrock(&["log", "read", "--node", &addr, "--key-file", &key]);
            let listing = read.status.success().then(|| text(&read.stdout));
            (value, listing)
        })
        .collect()
}

/// Polls until every node agrees with `expected`; returns the listing they agree on.
fn converge(cluster: &Cluster, expected: &Expected) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let seen = observe(cluster);
        let (value, listing) = seen[0].clone();
        let agreed = seen.iter().all(|node| node == &seen[0]);
        if let (true, Some(value), Some(listing)) = (agreed, value, listing) {
            if expected.value_ok(value) && expected.log_ok(&listing) {
                return listing;
            }
        }
        assert!(
            Instant::now() < until,
            "no convergence within {DEADLINE:?}: acknowledged sum {}, seen {seen:?}",
            expected.acked_sum
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn keygen(path: &Path) -> Output {
    bedrock(&["keygen", "--out", &path.display().to_string()])
}

/// The number before `what` in a node's stop line.
fn stop_count(line: &str, what: &str) -> u64 {
    let before = line.split(what).next().unwrap();
    before.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn three_nodes_converge_after_one_is_killed_mid_traffic() {
    let temporary = scratch("cluster-");
    let dir = temporary.path();
    let key = dir.join("cluster.key");
    assert!(keygen(&key).status.success());
    let started = Instant::now();
    let mut cluster = Cluster::start(dir, &key);

    // A second node on a running node's data directory changes nothing and says why.
    let intruder = free_address(Ipv4Addr::LOCALHOST).to_string();
    let data = cluster.nodes[0].data.display().to_string();
    let args = ["node", "--id", "9", "--listen", &intruder, "--data", &data];
    let output = bedrock(&[&args[..], &["--key-file", &cluster.key()]].concat());
    let line = assert_one_error_line(&output, 1);
    let pid = cluster.nodes[0].pid();
    assert!(line.contains("is locked by another process"), "{line}");
    assert!(line.ends_with(&format!("(pid {pid})")), "{line}");

    // An entry larger than a node takes is refused, and nothing is written.
    let large = "x".repeat(600);
    let args = [
        "log",
        "append",
        "--node",
        &cluster.addr(0),
        "--key-file",
        &cluster.key(),
        &large,
    ];
    let line = assert_one_error_line(&bedrock(&args), 1);
    assert!(
        line.starts_with("error: the node refused the entry as too large: 600 bytes"),
        "{line}"
    );
    assert!(line.ends_with("nothing was written"), "{line}");

    let traffic = Traffic::start(&cluster);
    for index in 0..3 {
        traffic.wait_for(index, 6);
    }
    // Node 3's client is sending: the kill lands before, during or after one of its requests.
    cluster.nodes[2].kill();
    let before_kill = traffic.acked(2);
    thread::sleep(Duration::from_millis(300));
    cluster.restart(2);
    traffic.wait_for(2, before_kill + 6);
    let (requests, slowest) = traffic.stop();
    let traffic_done = started.elapsed();

    // A client with another key is told clearly; it runs while the cluster converges.
    let wrong_key = dir.join("wrong.key");
    assert!(keygen(&wrong_key).status.success());
    let wrong = Reaped(Some(
        Command::new(BIN)
            .args(["counter", "get", "--node", &cluster.addr(0), "--key-file"])
            .arg(&wrong_key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));

    let expected = Expected::new(&requests);
    let listing = converge(&cluster, &expected);
    let converged = started.elapsed();

    let line = assert_one_error_line(&wrong.wait(), 1);
    let prefix = format!("error: no reply from {} within 3.0 s: ", cluster.addr(0));
    assert!(line.starts_with(&prefix), "{line}");

    for (node, signal) in cluster
        .nodes
        .iter_mut()
        .zip([libc::SIGTERM, libc::SIGINT, libc::SIGTERM])
    {
        node.stop(signal);
    }
    check_stderr(&cluster);
    let timeouts = requests
        .iter()
        .filter(|request| {
            matches!(
                request,
                Request::Incr { acked: false, .. } | Request::Append { acked: false, .. }
            )
        })
        .count();
    println!(
        "{} requests ({} timed out; slowest per node {slowest:?}: a request in flight at the \
         kill waits for the restart), counter {} acknowledged, {} log entries; traffic and kill \
         {traffic_done:?}, converged at {converged:?}, stopped at {:?}",
        requests.len(),
        timeouts,
        expected.acked_sum,
        listing.lines().count(),
        started.elapsed()
    );
}

/// Each node logged one start line per run and one stop line per clean stop, and nothing else
/// but recovery warnings after the kill and membership changes; node 1 counted the wrong key's
/// datagrams.
fn check_stderr(cluster: &Cluster) {
    for node in &cluster.nodes {
        let lines = node.stderr_lines();
        let starts = lines
            .iter()
            .filter(|line| line.contains(" listening on "))
            .count();
        let stops: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains(" stopping: "))
            .collect();
        let warnings = lines
            .iter()
            .filter(|line| line.starts_with("warning: "))
            .count();
        // Membership changes (tests/members.rs checks them).
        let membership = lines
            .iter()
            .filter(|line| line.starts_with("membership: "))
            .count();
        let runs = if node.id == 3 { 2 } else { 1 };
        assert_eq!(
            (starts, stops.len()),
            (runs, 1),
            "node {}: {lines:?}",
            node.id
        );
        assert_eq!(
            starts + stops.len() + warnings + membership,
            lines.len(),
            "node {}: {lines:?}",
            node.id
        );
        if node.id != 3 {
            assert_eq!(warnings, 0, "node {}: {lines:?}", node.id);
        }
        let stop = stops[0];
        assert!(
            stop.starts_with(&format!("node {} stopping: ", node.id)),
            "{stop}"
        );
        if node.id == 1 {
            assert!(stop_count(stop, " rejected") >= 1, "{stop}");
        }
    }
}

#[test]
fn keygen_never_overwrites_a_file() {
    let temporary = scratch("cluster-");
    let key = temporary.path().join("cluster.key");
    let output = keygen(&key);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let first = std::fs::read(&key).unwrap();
    let line = assert_one_error_line(&keygen(&key), 1);
    assert!(
        line.starts_with(&format!("error: cannot create {}: ", key.display())),
        "{line}"
    );
    assert!(line.contains("exists"), "{line}");
    assert_eq!(std::fs::read(&key).unwrap(), first);
}

#[test]
fn client_commands_without_a_target_or_with_bad_values_are_usage_errors() {
    let cases: [&[&str]; 5] = [
        &["counter", "incr"],
        &["counter", "incr", "--data", "x", "--node", "127.0.0.1:1"],
        &["log", "append", "--plaintext", "data"],
        &[
            "log",
            "read",
            "--node",
            "127.0.0.1:1",
            "--plaintext",
            "--from",
            "1:2",
        ],
        &[
            "log",
            "read",
            "--node",
            "127.0.0.1:1",
            "--plaintext",
            "--max",
            "0",
        ],
    ];
    for args in cases {
        let line = assert_one_error_line(&bedrock(args), 2);
        assert!(!line.contains("Usage"), "{args:?}: {line}");
    }
}
