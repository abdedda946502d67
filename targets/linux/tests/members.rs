//! Real processes: five `bedrock node`s on 127.0.0.1 to .5 form a cluster through one seed, and
//! `bedrock members` shows what each one knows.
//!
//! All five must see five alive members; a node killed with SIGKILL must be declared dead by
//! the four others within a bound derived from the membership configuration; restarted on the
//! same data directory it must be alive again everywhere, at a higher incarnation than before;
//! a node stopped with SIGTERM must be seen as `left` by the others.
//!
//! Every wait polls `bedrock members` up to a deadline; nothing depends on a fixed sleep. Child
//! processes are killed when the test ends, however it ends; every file lives in a temporary
//! directory under `CARGO_TARGET_TMPDIR`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_address, keygen, scratch, text, NodeProcess, BIN, BIND_ATTEMPTS};

/// Nodes in the cluster.
const NODES: usize = 5;
/// The membership probe period the nodes run with.
const PROBE: Duration = Duration::from_millis(200);
/// The longest wait for a process to start or stop.
const DEADLINE: Duration = Duration::from_secs(20);

/// How long the four survivors may take to declare a killed node dead, from the node defaults
/// (`bedrock::membership::Config`: suspicion 4 periods at this size, up to 6 times that without
/// confirmations): a probe cycle over the others to reach it (n periods), the period of that
/// probe, the longest suspicion (4 · 6 periods), and n periods to spread the verdict; doubled
/// for Lifeguard, which stretches the periods of a node whose probes fail.
fn dead_bound() -> Duration {
    let periods = NODES as u32 + 1 + 4 * 6 + NODES as u32;
    PROBE * periods * 2
}

/// How long joining and leaving may take to reach everyone: a few push-pull rounds (one per
/// period), doubled as above, and the seeds' retry.
fn spread_bound() -> Duration {
    PROBE * 25 * 2
}

/// One node: where it lives and its process.
struct Node {
    id: u32,
    addr: SocketAddr,
    data: PathBuf,
    process: NodeProcess,
}

impl Node {
    /// Starts the node joining through `seed` and waits for its start line; false when the
    /// address was taken.
    fn start(&mut self, seed: Option<SocketAddr>, key: &Path) -> bool {
        let mut command = Command::new(BIN);
        command
            .args(["node", "--id", &self.id.to_string()])
            .args(["--listen", &self.addr.to_string()])
            .arg("--data")
            .arg(&self.data)
            .arg("--key-file")
            .arg(key)
            .args(["--probe-interval", &format!("{}ms", PROBE.as_millis())]);
        if let Some(seed) = seed {
            command.args(["--join", &seed.to_string()]);
        }
        self.process.start(command)
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) {
        self.process.stop(libc::SIGTERM);
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
    /// Nodes 1 to 5 on 127.0.0.1 to .5, on ports that were free; node 1 is the seed of the
    /// others. A start that finds its port taken starts the whole cluster again on new ports.
    fn start(dir: &Path, key: &Path) -> Self {
        let mut cluster = Self {
            key: key.to_path_buf(),
            nodes: Vec::new(),
        };
        for _ in 0..BIND_ATTEMPTS {
            cluster.nodes = (1..=NODES as u8)
                .map(|id| Node {
                    id: u32::from(id),
                    addr: free_address(Ipv4Addr::new(127, 0, 0, id)),
                    data: dir.join(format!("node{id}")),
                    process: NodeProcess::new(format!("node {id}"), DEADLINE),
                })
                .collect();
            if (0..NODES).all(|index| cluster.start_node(index)) {
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

    fn start_node(&mut self, index: usize) -> bool {
        let seed = (index != 0).then(|| self.nodes[0].addr);
        let key = self.key.clone();
        self.nodes[index].start(seed, &key)
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

    /// `bedrock members` on node `index`: its table, or why it failed.
    fn members(&self, index: usize) -> Result<Vec<Row>, String> {
        let output = Command::new(BIN)
            .args(["members", "--node", &self.nodes[index].addr.to_string()])
            .arg("--key-file")
            .arg(&self.key)
            .output()
            .unwrap();
        if !output.status.success() {
            return Err(text(&output.stderr));
        }
        Ok(parse(&text(&output.stdout), self.nodes[index].id))
    }

    /// Polls `bedrock members` on the running nodes in `observers` until `done` holds for
    /// every table, or `bound` passes; returns the time it took, or the last tables.
    fn poll(
        &self,
        observers: &[usize],
        bound: Duration,
        done: impl Fn(usize, &[Row]) -> bool,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let mut last = String::new();
            let mut all = true;
            for &index in observers {
                match self.members(index) {
                    Ok(rows) if done(index, &rows) => {}
                    Ok(rows) => {
                        all = false;
                        last += &format!("node {}: {rows:?}\n", index + 1);
                    }
                    Err(error) => {
                        all = false;
                        last += &format!("node {}: {error}\n", index + 1);
                    }
                }
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > bound {
                return Err(last);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One line of `bedrock members`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: u32,
    addr: SocketAddr,
    state: String,
    incarnation: u32,
    phi: Option<f64>,
    heard: String,
}

/// Parses a listing, checking its header and that the asked node `own` is there, marked `self`
/// with no phi, and marked only there.
fn parse(listing: &str, own: u32) -> Vec<Row> {
    let mut lines = listing.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "ADDRESS", "STATE", "INCARNATION", "PHI", "LAST_HEARD"]
    );
    let rows: Vec<Row> = lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 6, "{line}");
            Row {
                id: fields[0].parse().unwrap(),
                addr: fields[1].parse().unwrap(),
                state: fields[2].to_string(),
                incarnation: fields[3].parse().unwrap(),
                phi: (fields[4] != "-").then(|| fields[4].parse().unwrap()),
                heard: fields[5].to_string(),
            }
        })
        .collect();
    assert!(
        rows.windows(2).all(|pair| pair[0].id < pair[1].id),
        "{rows:?}"
    );
    for row in &rows {
        assert_eq!(row.heard == "self", row.id == own, "{rows:?}");
        if row.id == own {
            assert_eq!((row.state.as_str(), row.phi), ("alive", None), "{rows:?}");
        } else if row.heard != "-" {
            assert!(row.heard.ends_with("ms"), "{rows:?}");
        }
    }
    rows
}

fn row(rows: &[Row], id: u32) -> Option<&Row> {
    rows.iter().find(|row| row.id == id)
}

/// Whether `rows` lists exactly the nodes 1 to 5, all alive, at their addresses.
fn all_alive(cluster: &Cluster, rows: &[Row]) -> bool {
    rows.len() == NODES
        && cluster.nodes.iter().all(|node| {
            row(rows, node.id).is_some_and(|row| row.state == "alive" && row.addr == node.addr)
        })
}

#[test]
fn five_nodes_detect_a_kill_see_the_restart_and_hear_a_leave() {
    let started = Instant::now();
    let temporary = scratch("members-");
    let key = temporary.path().join("cluster.key");
    keygen(&key);
    let mut cluster = Cluster::start(temporary.path(), &key);
    let everyone: Vec<usize> = (0..NODES).collect();

    // Every node learns every other through node 1.
    let formed = cluster
        .poll(&everyone, spread_bound(), |_, rows| {
            all_alive(&cluster, rows)
        })
        .unwrap_or_else(|tables| panic!("no cluster of 5 alive:\n{tables}"));
    let victim = 4; // node 5, not the seed
    let victim_id = cluster.nodes[victim].id;
    let before = cluster.members(0).unwrap();
    let incarnation_before = row(&before, victim_id).unwrap().incarnation;
    // The seed heard every other node directly.
    assert!(before[1..].iter().all(|row| row.heard != "-"), "{before:?}");

    // SIGKILL: the four others declare it dead within the bound.
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (0..NODES).filter(|&index| index != victim).collect();
    let detected = cluster
        .poll(&survivors, dead_bound(), |_, rows| {
            row(rows, victim_id).is_some_and(|row| row.state == "dead")
        })
        .unwrap_or_else(|tables| {
            panic!(
                "node 5 not declared dead by all within {:?}:\n{tables}",
                dead_bound()
            )
        });
    // Nobody else was declared dead meanwhile, and the silence shows in the victim's phi.
    for &index in &survivors {
        let rows = cluster.members(index).unwrap();
        let silent = row(&rows, victim_id).unwrap();
        assert!(silent.phi.is_none_or(|phi| phi > 1.0), "{rows:?}");
        let others_alive = survivors
            .iter()
            .all(|&other| row(&rows, cluster.nodes[other].id).unwrap().state == "alive");
        assert!(others_alive, "node {}: {rows:?}", index + 1);
    }

    // Restarted on the same data directory: alive again everywhere, at a higher incarnation.
    cluster.restart(victim);
    let rejoined = cluster
        .poll(&everyone, spread_bound(), |_, rows| {
            all_alive(&cluster, rows)
                && row(rows, victim_id).unwrap().incarnation > incarnation_before
        })
        .unwrap_or_else(|tables| panic!("node 5 not alive again everywhere:\n{tables}"));

    let after = cluster.members(0).unwrap();
    let incarnation_after = row(&after, victim_id).unwrap().incarnation;

    // SIGTERM: the node announces that it leaves, and persists the incarnation it left at.
    let leaver = 3; // node 4
    let leaver_id = cluster.nodes[leaver].id;
    cluster.nodes[leaver].stop();
    let remaining: Vec<usize> = (0..NODES).filter(|&index| index != leaver).collect();
    let left = cluster
        .poll(&remaining, spread_bound(), |_, rows| {
            row(rows, leaver_id).is_some_and(|row| row.state == "left")
        })
        .unwrap_or_else(|tables| panic!("node 4's leave not seen by all:\n{tables}"));
    let rows = cluster.members(0).unwrap();
    let left_at = row(&rows, leaver_id).unwrap().incarnation;
    let stored = std::fs::read_to_string(cluster.nodes[leaver].data.join("incarnation")).unwrap();
    assert_eq!(stored.trim().parse::<u32>().unwrap(), left_at);

    check_stderr(&cluster, victim_id, leaver_id);
    println!(
        "formed in {formed:?}; node 5 dead everywhere {detected:?} after SIGKILL (bound \
         {:?}); alive again in {rejoined:?} (incarnation {incarnation_before} -> \
         {incarnation_after}); node 4's \
         leave seen in {left:?}; whole test {:?}",
        dead_bound(),
        started.elapsed()
    );
}

/// The seed logged every change, one line each, naming node, address and incarnation.
fn check_stderr(cluster: &Cluster, victim: u32, leaver: u32) {
    let lines = cluster.nodes[0].stderr_lines();
    let membership: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("membership: "))
        .collect();
    let about = |id: u32, what: &str| {
        let addr = cluster.nodes[id as usize - 1].addr;
        let prefix = format!("membership: node {id} at {addr} {what} (incarnation ");
        membership
            .iter()
            .filter(|line| line.starts_with(&prefix))
            .count()
    };
    for node in &cluster.nodes[1..] {
        assert!(about(node.id, "joined") >= 1, "{membership:#?}");
    }
    // Joined, then rejoined after its restart.
    assert!(about(victim, "joined") >= 2, "{membership:#?}");
    assert_eq!(about(victim, "dead"), 1, "{membership:#?}");
    assert_eq!(about(leaver, "left"), 1, "{membership:#?}");
    // The leaver logged its own bump, and nothing but start, membership and stop lines.
    let leaver_lines = cluster.nodes[leaver as usize - 1].stderr_lines();
    assert!(
        leaver_lines
            .iter()
            .any(|line| line.starts_with("membership: own incarnation bumped to ")),
        "{leaver_lines:#?}"
    );
    assert!(
        leaver_lines
            .last()
            .unwrap()
            .starts_with("node 4 stopping: "),
        "{leaver_lines:#?}"
    );
}
