//! Real processes: one `bedrock node` on 127.0.0.1 under a key made by `bedrock keygen`, its
//! lock server driven by `bedrock lock acquire|renew|release|status|run`, and `bedrock fenced`
//! as the resource the locks protect. The second test freezes a lock holder (its runner and its
//! command) with SIGSTOP past its lease, lets a second holder take the lock, resumes the first
//! and shows that the fenced file refuses it. The last test holds a quorum lock on three nodes
//! (127.0.0.1 to 127.0.0.3, ids 1 to 3, one key): it keeps working with one node killed, under
//! higher tokens, fences a frozen holder, and refuses without a majority.
//!
//! Waits poll for an outcome up to [`DEADLINE`]; no assertion depends on how long anything
//! took. Child processes are killed when a test ends, however it ends; every file lives in a
//! temporary directory under `CARGO_TARGET_TMPDIR`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_one_error_line, free_address, keygen, scratch, send_signal, text, NodeProcess,
    SingleNode, BIN, BIND_ATTEMPTS,
};

/// The longest wait for a process to start or stop, or for an outcome polled for.
const DEADLINE: Duration = Duration::from_secs(30);
/// `bedrock lock run`'s exit status when it lost its lease.
const LEASE_LOST: i32 = 75;

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

    /// `bedrock lock COMMAND --node ADDR --key-file KEY ARGS…`, not started.
    fn lock(&self, command: &str, args: &[&str]) -> Command {
        let mut process = Command::new(BIN);
        process
            .args(["lock", command, "--node", &self.addr.to_string()])
            .arg("--key-file")
            .arg(&self.key)
            .args(args);
        process
    }

    /// `bedrock lock COMMAND … ARGS…`, run to completion.
    fn run(&self, command: &str, args: &[&str]) -> Output {
        self.lock(command, args).output().unwrap()
    }

    /// Runs a lock command that must succeed; returns its stdout.
    fn ok(&self, command: &str, args: &[&str]) -> String {
        let output = self.run(command, args);
        assert!(
            output.status.success(),
            "lock {command} {args:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// A token printed by `lock acquire ARGS…`.
    fn acquire(&self, args: &[&str]) -> u64 {
        let output = self.ok("acquire", args);
        assert!(
            output.ends_with('\n') && output.lines().count() == 1,
            "{output:?}"
        );
        output.trim_end().parse().unwrap()
    }

    /// The token in `lock status NAME`'s line.
    fn status(&self, name: &str) -> (String, u64) {
        let line = self.ok("status", &[name]).trim_end().to_string();
        let words: Vec<&str> = line.split(' ').collect();
        let at = words.iter().position(|word| *word == "token").unwrap();
        let token = words[at + 1].parse().unwrap();
        (line, token)
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
        thread::sleep(Duration::from_millis(20));
    }
}

/// `bedrock fenced ARGS…`, run to completion.
fn fenced(args: &[&str]) -> Output {
    Command::new(BIN).arg("fenced").args(args).output().unwrap()
}

/// The `TOKEN TEXT` lines of a fenced file (empty when it does not exist yet).
fn fenced_lines(path: &Path) -> Vec<(u64, String)> {
    let Ok(content) = fs::read_to_string(path) else {
        return Vec::new();
    };
    content
        .lines()
        .map(|line| {
            let (token, label) = line.split_once(' ').unwrap();
            (token.parse().unwrap(), label.to_string())
        })
        .collect()
}

#[test]
fn lock_commands_acquire_renew_release_status_wait_and_run() {
    let temporary = scratch("lock-");
    let mut node = Node::start(temporary.path(), &["--lock-ttl-max", "20s"]);

    // Acquire prints a token; a second acquire of the same name is one error line.
    let first = node.acquire(&["backup", "--ttl", "10s"]);
    let line = assert_one_error_line(&node.run("acquire", &["backup", "--ttl", "10s"]), 1);
    assert!(
        line.starts_with("error: lock backup is held by client ")
            && line.contains(&format!("under token {first}"))
            && line.contains("--wait"),
        "{line}"
    );
    let holder = line
        .strip_prefix("error: lock backup is held by client ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    let (status, token) = node.status("backup");
    assert!(
        status.starts_with(&format!("held holder {holder} token {first} lease_ms ")),
        "{status}"
    );
    assert_eq!(token, first);
    assert!(status.contains(" lease_ms ") && status.contains(" free_ms "));

    // Renewal prints the lease left; a wrong token is refused.
    let lease: u64 = node
        .ok("renew", &["backup", &first.to_string(), "--ttl", "10s"])
        .trim_end()
        .parse()
        .unwrap();
    assert!(lease > 0 && lease <= 10_000, "{lease}");
    let wrong = (first + 100).to_string();
    let line = assert_one_error_line(&node.run("renew", &["backup", &wrong]), 1);
    assert!(line.starts_with("error: renewal refused: lock backup is not held under token"));
    let line = assert_one_error_line(&node.run("release", &["backup", &wrong]), 1);
    assert!(line.starts_with("error: release refused: "), "{line}");

    // Release prints nothing and frees the lock; releasing again (a retry whose answer was
    // lost looks the same) is answered the same while the node remembers it.
    assert_eq!(node.ok("release", &["backup", &first.to_string()]), "");
    assert_eq!(node.ok("release", &["backup", &first.to_string()]), "");
    let (status, _) = node.status("backup");
    assert!(status.starts_with("free token "), "{status}");

    // The next grant has a higher token; --wait gets the lock once the short lease ends.
    let second = node.acquire(&["backup", "--ttl", "1s"]);
    assert!(second > first, "{first} {second}");
    let line = assert_one_error_line(
        &node.run(
            "acquire",
            &["backup", "--ttl", "5s", "--wait", "--wait-max", "1ms"],
        ),
        1,
    );
    assert!(line.starts_with("error: gave up after waiting "), "{line}");
    let third = node.acquire(&["backup", "--ttl", "5s", "--wait"]);
    assert!(third > second, "{second} {third}");
    let (status, token) = node.status("backup");
    assert!(status.starts_with("held "), "{status}");
    assert_eq!(token, third);

    // Bad input: one line each, never a panic.
    let line = assert_one_error_line(&node.run("acquire", &["other", "--ttl", "30s"]), 1);
    assert!(line.contains("--lock-ttl-max"), "{line}");
    let long = "n".repeat(33);
    assert_one_error_line(&node.run("acquire", &[&long]), 2);
    assert_one_error_line(&node.run("acquire", &["x", "--ttl", "0s"]), 2);
    assert_one_error_line(&node.run("renew", &["x", "not-a-token"]), 2);
    assert_one_error_line(&node.run("run", &["x"]), 2);

    // The fenced file: a token below the highest is refused, naming both.
    let file = temporary.path().join("fenced.txt");
    let path = file.to_str().unwrap();
    assert!(fenced(&["append", path, &third.to_string(), "from third"])
        .status
        .success());
    let line = assert_one_error_line(&fenced(&["append", path, &first.to_string(), "late"]), 1);
    assert!(
        line.starts_with(&format!(
            "error: stale fencing token {first}: the resource has seen token {third}"
        )),
        "{line}"
    );
    let shown = fenced(&["show", path]);
    assert_eq!(text(&shown.stdout), format!("{third} from third\n"));

    // `run` hands the command its token, returns its status and releases the lock.
    let output = node.run(
        "run",
        &[
            "job",
            "--ttl",
            "5s",
            "--",
            "sh",
            "-c",
            "echo \"$BEDROCK_LOCK_NAME $BEDROCK_LOCK_TOKEN\"; exit 3",
        ],
    );
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    let (name, token) = printed.trim_end().split_once(' ').unwrap();
    assert_eq!(name, "job");
    assert!(token.parse::<u64>().unwrap() > third, "{printed}");
    let (status, _) = node.status("job");
    assert!(status.starts_with("free "), "released: {status}");
    let line = assert_one_error_line(&node.run("run", &["job", "--", "/nonexistent/program"]), 1);
    assert!(
        line.starts_with("error: cannot run /nonexistent/program"),
        "{line}"
    );

    // SIGTERM stops the command, releases the lock and exits 128 + 15.
    let mut runner = node.lock("run", &["job", "--ttl", "5s", "--", "sleep", "60"]);
    let mut runner = Runner {
        child: runner.stderr(Stdio::piped()).spawn().unwrap(),
        group: None,
    };
    poll("run to hold the lock", || {
        node.status("job").0.starts_with("held ").then_some(())
    });
    send_signal(runner.child.id(), libc::SIGTERM);
    let (status, stderr) = runner.finish("the interrupted run to exit");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        stderr.starts_with("lock job: interrupted by signal 15"),
        "{stderr}"
    );
    let (status, _) = node.status("job");
    assert!(status.starts_with("free "), "released: {status}");

    let stop = node.stop();
    assert!(stop.contains("; locks "), "{stop}");
}

#[test]
fn a_restarted_node_keeps_its_locks_held_and_never_repeats_a_token() {
    let temporary = scratch("lock-restart-");
    let mut node = Node::start(temporary.path(), &["--lock-ttl-max", "1s"]);
    let first = node.acquire(&["db", "--ttl", "1s"]);
    node.kill();
    node.restart();
    // Held by its holder, under its token, for the lock-delay after the start.
    let (status, token) = node.status("db");
    assert_eq!(token, first, "{status}");
    let next = node.acquire(&["db", "--ttl", "1s", "--wait"]);
    assert!(next > first, "{first} {next}");
    node.stop();
}

/// A `bedrock lock run` process and its command's process group, killed when dropped.
struct Runner {
    child: Child,
    /// The command's process group, once known.
    group: Option<u32>,
}

impl Drop for Runner {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Some(group) = self.group {
            // SAFETY: kill(2) takes plain integers and touches no memory of this process.
            unsafe {
                libc::kill(-libc::pid_t::try_from(group).unwrap(), libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runner {
    /// Waits for the runner's exit; returns its status and stderr.
    fn finish(&mut self, what: &str) -> (ExitStatus, String) {
        let status = poll(what, || self.child.try_wait().unwrap());
        let mut stderr = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }
}

/// A contender's command: records its process id (its process group's), then appends `LABEL`
/// with `$BEDROCK_LOCK_TOKEN` to the fenced file first thing in every iteration, every 50 ms,
/// `COUNT` times (0: forever), recording every refusal in its log.
const CONTENDER: &str = r#"
bin=$1 file=$2 log=$3 label=$4 count=$5
echo $$ > "$log.pid"
i=0
while [ "$count" = 0 ] || [ "$i" -lt "$count" ]; do
    if ! "$bin" fenced append "$file" "$BEDROCK_LOCK_TOKEN" "$label" 2>>"$log"; then
        echo "refused $BEDROCK_LOCK_TOKEN" >>"$log"
    fi
    i=$((i + 1))
    sleep 0.05
done
"#;

fn contender(node: &Node, dir: &Path, label: &str, count: u32, wait: bool) -> Runner {
    let mut args = vec!["fenced-demo", "--ttl", "2s"];
    if wait {
        args.push("--wait");
    }
    let file = dir.join("fenced.txt");
    let log = dir.join(format!("{label}.log"));
    let mut command = node.lock("run", &args);
    command
        .args(["--", "sh", "-c", CONTENDER, "sh", BIN])
        .arg(&file)
        .arg(&log)
        .args([label, &count.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Runner {
        child: command.spawn().unwrap(),
        group: None,
    }
}

/// The process group a contender's command recorded.
fn group_of(dir: &Path, label: &str) -> u32 {
    let path = dir.join(format!("{label}.log.pid"));
    poll("the command's pid", || {
        fs::read_to_string(&path).ok()?.trim().parse().ok()
    })
}

#[allow(unsafe_code)]
fn signal_group(group: u32, signal: libc::c_int) {
    let group = libc::pid_t::try_from(group).unwrap();
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    let result = unsafe { libc::kill(-group, signal) };
    assert_eq!(result, 0, "kill(-{group}, {signal})");
}

#[test]
fn a_paused_holder_loses_its_lease_and_the_fenced_resource_refuses_its_token() {
    let temporary = scratch("lock-pause-");
    let dir = temporary.path();
    let mut node = Node::start(dir, &[]);
    let file = dir.join("fenced.txt");

    // A takes the lock and writes under its token.
    let mut a = contender(&node, dir, "A", 0, false);
    a.group = Some(group_of(dir, "A"));
    let a_token = poll("A's first write", || {
        fenced_lines(&file)
            .iter()
            .find(|(_, label)| label == "A")
            .map(|(token, _)| *token)
    });

    // B waits for the lock. A freezes, runner and command, past its lease.
    let mut b = contender(&node, dir, "B", 20, true);
    send_signal(a.child.id(), libc::SIGSTOP);
    signal_group(a.group.unwrap(), libc::SIGSTOP);
    let b_token = poll("B's grant", || {
        let (line, token) = node.status("fenced-demo");
        (line.starts_with("held ") && token != a_token).then_some(token)
    });
    assert!(b_token > a_token, "{a_token} {b_token}");
    b.group = Some(group_of(dir, "B"));

    // A's command resumes first: its writes are refused once B has written.
    signal_group(a.group.unwrap(), libc::SIGCONT);
    let a_log = dir.join("A.log");
    poll("A's refused write", || {
        let log = fs::read_to_string(&a_log).ok()?;
        log.contains(&format!("refused {a_token}")).then_some(())
    });
    let log = fs::read_to_string(&a_log).unwrap();
    assert!(
        log.contains(&format!(
            "error: stale fencing token {a_token}: the resource has seen token {b_token}"
        )),
        "{log}"
    );

    // Then A's runner: it sees its deadline passed, kills the command and says so.
    send_signal(a.child.id(), libc::SIGCONT);
    let (status, stderr) = a.finish("A's runner to exit");
    assert_eq!(status.code(), Some(LEASE_LOST), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: lease on fenced-demo lost: "),
        "{stderr}"
    );

    // A late write under A's token is refused, naming both tokens.
    let path = file.to_str().unwrap();
    let line = assert_one_error_line(&fenced(&["append", path, &a_token.to_string(), "late"]), 1);
    assert!(
        line.starts_with(&format!(
            "error: stale fencing token {a_token}: the resource has seen token {b_token}"
        )),
        "{line}"
    );

    // B finishes its writes, releases the lock and exits 0.
    let (status, stderr) = b.finish("B's runner to exit");
    assert!(status.success(), "{status}: {stderr}");
    let (line, _) = node.status("fenced-demo");
    assert!(line.starts_with("free "), "released: {line}");

    // The file: A's lines, then B's, tokens never decreasing, nothing of A after B.
    let lines = fenced_lines(&file);
    let first_b = lines.iter().position(|(_, label)| label == "B").unwrap();
    assert!(lines[..first_b]
        .iter()
        .all(|(token, label)| label == "A" && *token == a_token));
    assert!(lines[first_b..]
        .iter()
        .all(|(token, label)| label == "B" && *token == b_token));
    assert_eq!(lines.len() - first_b, 20, "{lines:?}");
    assert!(lines.windows(2).all(|pair| pair[0].0 <= pair[1].0));

    let stop = node.stop();
    assert!(stop.contains("; locks "), "{stop}");
}

/// One of three independent nodes of a quorum lock: its own id, address (127.0.0.N), data
/// and process; one key shared by all.
struct QuorumNode {
    id: u32,
    addr: SocketAddr,
    data: PathBuf,
    key: PathBuf,
    process: NodeProcess,
}

impl QuorumNode {
    fn start(dir: &Path, key: &Path, id: u32) -> Self {
        let ip = Ipv4Addr::new(127, 0, 0, u8::try_from(id).unwrap());
        let mut node = Self {
            id,
            addr: free_address(ip),
            data: dir.join(format!("node{id}")),
            key: key.to_path_buf(),
            process: NodeProcess::new(format!("node {id}"), DEADLINE),
        };
        for _ in 0..BIND_ATTEMPTS {
            let mut command = Command::new(BIN);
            command
                .args(["node", "--id", &id.to_string()])
                .args(["--listen", &node.addr.to_string()])
                .arg("--data")
                .arg(&node.data)
                .arg("--key-file")
                .arg(&node.key);
            if node.process.start(command) {
                return node;
            }
            node.addr = free_address(ip);
        }
        panic!("node {id}: no free port after {BIND_ATTEMPTS} attempts");
    }
}

/// `bedrock lock COMMAND --node A --node B … --key-file KEY ARGS…` over `nodes`, not started.
fn quorum_lock(nodes: &[QuorumNode], command: &str, args: &[&str]) -> Command {
    let mut process = Command::new(BIN);
    process.args(["lock", command]);
    for node in nodes {
        process.args(["--node", &node.addr.to_string()]);
    }
    process.arg("--key-file").arg(&nodes[0].key).args(args);
    process
}

/// A contender's runner over all of `nodes` (see [`CONTENDER`]).
fn quorum_contender(nodes: &[QuorumNode], dir: &Path, label: &str, count: u32) -> Runner {
    let file = dir.join("fenced.txt");
    let log = dir.join(format!("{label}.log"));
    let mut command = quorum_lock(nodes, "run", &["fenced-demo", "--ttl", "2s", "--wait"]);
    command
        .args(["--", "sh", "-c", CONTENDER, "sh", BIN])
        .arg(&file)
        .arg(&log)
        .args([label, &count.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Runner {
        child: command.spawn().unwrap(),
        group: None,
    }
}

/// `lock run db --wait` over `nodes` with a command that appends `LABEL` to the fenced file
/// under its token.
fn quorum_append(nodes: &[QuorumNode], path: &str, label: &str) -> Output {
    let script = format!("\"$0\" fenced append \"$1\" \"$BEDROCK_LOCK_TOKEN\" {label}");
    quorum_lock(
        nodes,
        "run",
        &[
            "db", "--ttl", "5s", "--wait", "--", "sh", "-c", &script, BIN, path,
        ],
    )
    .output()
    .unwrap()
}

#[test]
fn a_quorum_lock_survives_one_of_three_nodes_and_refuses_without_a_majority() {
    let temporary = scratch("lock-quorum-");
    let dir = temporary.path();
    let key = dir.join("cluster.key");
    keygen(&key);
    let mut nodes: Vec<QuorumNode> = (1..=3).map(|id| QuorumNode::start(dir, &key, id)).collect();
    let file = dir.join("fenced.txt");
    let path = file.to_str().unwrap();

    // Status asks every node, one line each, prefixed by its address.
    let status = quorum_lock(&nodes, "status", &["db"]).output().unwrap();
    assert!(status.status.success(), "{}", text(&status.stderr));
    let shown = text(&status.stdout);
    assert_eq!(shown.lines().count(), 3, "{shown}");
    for (line, node) in shown.lines().zip(&nodes) {
        assert!(
            line.starts_with(&format!("{} free token ", node.addr)),
            "{shown}"
        );
    }
    // acquire, renew and release take one node: a quorum grant has one token per node.
    let line = assert_one_error_line(
        &quorum_lock(&nodes, "acquire", &["db"]).output().unwrap(),
        2,
    );
    assert!(line.contains("held by `lock run` only"), "{line}");

    // (a) All three nodes: the command appends under the quorum token.
    let output = quorum_append(&nodes, path, "first");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = fenced_lines(&file);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let first = lines[0].0;

    // (b) One node killed: the lock is still granted by the two left, under a higher token.
    nodes[1].process.kill();
    let output = quorum_append(&nodes, path, "second");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = fenced_lines(&file);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1].1, "second");
    assert!(lines[1].0 > first, "{lines:?}");
    let second = lines[1].0;

    // (d) A holder frozen past its leases loses the lock to a second contender; resumed, its
    // writes are refused by the fenced file and its runner exits 75.
    let mut a = quorum_contender(&nodes, dir, "A", 0);
    a.group = Some(group_of(dir, "A"));
    let a_token = poll("A's first write", || {
        fenced_lines(&file)
            .iter()
            .find(|(_, label)| label == "A")
            .map(|(token, _)| *token)
    });
    assert!(a_token > second, "{second} {a_token}");
    let mut b = quorum_contender(&nodes, dir, "B", 5);
    send_signal(a.child.id(), libc::SIGSTOP);
    signal_group(a.group.unwrap(), libc::SIGSTOP);
    let b_token = poll("B's first write", || {
        fenced_lines(&file)
            .iter()
            .find(|(_, label)| label == "B")
            .map(|(token, _)| *token)
    });
    assert!(b_token > a_token, "{a_token} {b_token}");
    b.group = Some(group_of(dir, "B"));
    signal_group(a.group.unwrap(), libc::SIGCONT);
    let a_log = dir.join("A.log");
    poll("A's refused write", || {
        let log = fs::read_to_string(&a_log).ok()?;
        log.contains(&format!("refused {a_token}")).then_some(())
    });
    send_signal(a.child.id(), libc::SIGCONT);
    let (status, stderr) = a.finish("A's runner to exit");
    assert_eq!(status.code(), Some(LEASE_LOST), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: lease on fenced-demo lost: "),
        "{stderr}"
    );
    let (status, stderr) = b.finish("B's runner to exit");
    assert!(status.success(), "{status}: {stderr}");
    let lines = fenced_lines(&file);
    let first_b = lines.iter().position(|(_, label)| label == "B").unwrap();
    assert!(
        lines[first_b..].iter().all(|(_, label)| label == "B"),
        "{lines:?}"
    );
    assert!(
        lines.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "{lines:?}"
    );

    // (c) Two of three nodes killed: no majority; without --wait, one line and exit 1.
    nodes[2].process.kill();
    let output = quorum_lock(&nodes, "run", &["db", "--ttl", "5s", "--", "true"])
        .output()
        .unwrap();
    let line = assert_one_error_line(&output, 1);
    assert!(
        line.starts_with("error: lock db not acquired on a majority (2 of 3 nodes needed): "),
        "{line}"
    );
    assert!(line.contains(" had not answered"), "{line}");
    assert_eq!(nodes[0].id, 1);
    nodes[0].process.stop(libc::SIGTERM);
}
