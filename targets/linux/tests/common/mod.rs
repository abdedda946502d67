//! What the real-process tests share: scratch directories, free ports, signals, keys, and a
//! `bedrock node` process whose stderr is kept and whose start is awaited.
//!
//! Each test file is its own crate and uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_bedrock");
/// Attempts at binding a node's port (a free port may be taken by another process meanwhile).
pub const BIND_ATTEMPTS: u32 = 20;

/// A temporary directory under `CARGO_TARGET_TMPDIR`, named after the test.
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `bedrock` with `args` to completion.
pub fn bedrock(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `bedrock keygen --out PATH`, which must succeed.
pub fn keygen(path: &Path) {
    let output = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// Asserts a failure with exactly one `error:` line on stderr and nothing on stdout.
pub fn assert_one_error_line(output: &Output, status: i32) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(text(&output.stdout), "");
    stderr.trim_end().to_string()
}

/// A port on `ip` that was free a moment ago: bound with port 0, then released.
pub fn free_address(ip: Ipv4Addr) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket.local_addr().unwrap()
}

/// Sends `signal` to the process `pid`.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal})");
}

/// A `bedrock node` process across its runs: every stderr line of every run is kept, in
/// order. A process still running when this is dropped is killed.
pub struct NodeProcess {
    /// How failures name it.
    name: String,
    /// The longest wait for a start or a stop.
    deadline: Duration,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl NodeProcess {
    pub fn new(name: impl Into<String>, deadline: Duration) -> Self {
        Self {
            name: name.into(),
            deadline,
            child: None,
            stderr: Arc::new(Mutex::new(Vec::new())),
            reader: None,
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Spawns `command` (a `bedrock node …`) and waits for its start line (it listens then):
    /// true; false when it exited first because its address was in use (anything else fails).
    pub fn start(&mut self, mut command: Command) -> bool {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, started) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = Arc::clone(&self.stderr);
        self.reader = Some(thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line.clone());
                let _ = lines.send(line);
            }
        }));
        self.child = Some(child);
        self.wait_for_start(&started)
    }

    fn wait_for_start(&mut self, lines: &Receiver<String>) -> bool {
        let until = Instant::now() + self.deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(" listening on ") => return true,
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("{} did not start", self.name),
            }
        }
        // Stderr closed before the start line: the process ended.
        let status = self.child.take().unwrap().wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let stderr = self.stderr.lock().unwrap().join("\n");
        assert!(
            stderr.contains("cannot listen on") && stderr.contains("in use"),
            "{} exited ({status}) before starting: {stderr}",
            self.name
        );
        false
    }

    /// SIGKILL, then reap the process so its port and locks are free.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
    }

    /// `signal` (SIGTERM or SIGINT), then wait for the exit, which must be clean.
    pub fn stop(&mut self, signal: libc::c_int) {
        let mut child = self.child.take().unwrap();
        send_signal(child.id(), signal);
        let until = Instant::now() + self.deadline;
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop on signal {signal}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.reader.take().unwrap().join().unwrap();
        assert!(
            status.success(),
            "{} stopped with {status}: {:?}",
            self.name,
            self.lines()
        );
    }

    /// Every stderr line so far, of every run.
    pub fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

/// xorshift64: enough randomness for kill delays and batch sizes, replayable from its seed.
pub struct Random(pub u64);

impl Random {
    /// A number below `bound` (at least 1).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// `BEDROCK_SEED` when set (to replay a run), else one from the clock; print it.
pub fn seed() -> u64 {
    match std::env::var("BEDROCK_SEED") {
        Ok(text) => text.parse().expect("BEDROCK_SEED is a number"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (nanos as u64) | 1
        }
    }
}

/// One `bedrock node --id 1` with a fresh key, on a free port of 127.0.0.1, with `extra`
/// options: what the single-node process tests run against.
pub struct SingleNode {
    pub addr: SocketAddr,
    pub data: std::path::PathBuf,
    pub key: std::path::PathBuf,
    extra: Vec<String>,
    pub process: NodeProcess,
}

impl SingleNode {
    /// Generates `dir/cluster.key` and starts the node (data in `dir/node`), waiting up to
    /// `deadline` for its start line.
    pub fn start(dir: &Path, extra: &[&str], deadline: Duration) -> Self {
        let key = dir.join("cluster.key");
        keygen(&key);
        let mut node = Self {
            addr: free_address(Ipv4Addr::LOCALHOST),
            data: dir.join("node"),
            key,
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            process: NodeProcess::new("the node", deadline),
        };
        for _ in 0..BIND_ATTEMPTS {
            if node.try_start() {
                return node;
            }
            node.addr = free_address(Ipv4Addr::LOCALHOST);
        }
        panic!("no free port after {BIND_ATTEMPTS} attempts");
    }

    /// Starts the node and waits for its start line; false when its address was taken.
    pub fn try_start(&mut self) -> bool {
        let mut command = Command::new(BIN);
        command
            .args(["node", "--id", "1", "--listen", &self.addr.to_string()])
            .arg("--data")
            .arg(&self.data)
            .arg("--key-file")
            .arg(&self.key)
            .args(&self.extra);
        self.process.start(command)
    }

    /// Starts a stopped node again on the same address, retrying while the port is taken.
    pub fn restart(&mut self) {
        for _ in 0..BIND_ATTEMPTS {
            if self.try_start() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("the node could not bind its address again");
    }

    /// SIGKILL, then reap the process so its port and locks are free.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then wait for a clean exit; returns the stop line.
    pub fn stop(&mut self) -> String {
        self.process.stop(libc::SIGTERM);
        let lines = self.process.lines();
        let stop = lines.last().cloned().unwrap_or_default();
        assert!(stop.starts_with("node 1 stopping: "), "{lines:?}");
        stop
    }
}
