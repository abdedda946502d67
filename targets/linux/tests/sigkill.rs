//! Real processes killed with SIGKILL under load: every acknowledged increment survives.
//!
//! `bedrock counter hammer` commits batches of increments and prints each acknowledged
//! (synced) value. The test kills it at a random moment, restarts with `bedrock counter get`
//! and checks the value: at least the last one acknowledged, and at most one batch more (the
//! batch in flight may or may not have reached the file). Twenty cycles on one directory,
//! then an ordinary `incr` must succeed.
//!
//! The seed is printed; `BEDROCK_SEED=<n>` replays the same kill delays and batch sizes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

mod common;

use common::{seed, Random, BIN};

const CYCLES: u32 = 20;
const BATCHES: [u32; 3] = [1, 7, 64];

/// `bedrock counter get`: the recovered value, and stderr (recovery warnings).
fn get(dir: &Path) -> (u64, String) {
    let output = Command::new(BIN)
        .args(["counter", "get", "--data"])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "get failed: {stderr}");
    let value = String::from_utf8(output.stdout).unwrap().trim().parse();
    (value.unwrap(), stderr)
}

/// Runs `hammer` for `delay`, kills it with SIGKILL, and returns every value it acknowledged
/// and its stderr.
fn hammer_then_kill(dir: &Path, batch: u32, delay: Duration) -> (Vec<u64>, String) {
    let mut child = Command::new(BIN)
        .args(["counter", "hammer", "--count", "1000000000", "--batch"])
        .arg(batch.to_string())
        .arg("--data")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs, so that a full pipe never slows the writer down.
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|line| line.unwrap().parse::<u64>().unwrap())
            .collect::<Vec<u64>>()
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL on unix
    let status = child.wait().unwrap();
    let stderr = errors.join().unwrap();
    assert!(
        !status.success(),
        "hammer ended by itself ({status}) before the kill: {stderr}"
    );
    (reader.join().unwrap(), stderr)
}

#[test]
fn acknowledged_increments_survive_sigkill_under_load() {
    let seed = seed();
    println!("seed {seed} (BEDROCK_SEED={seed} replays the delays and batch sizes)");
    let mut random = Random(seed);
    let temporary = tempfile::Builder::new()
        .prefix("sigkill-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = temporary.path().join("counter");
    let mut durable = 0u64;
    let mut acknowledged_total = 0usize;
    for cycle in 0..CYCLES {
        let batch = BATCHES[random.below(BATCHES.len() as u64) as usize];
        let delay = Duration::from_millis(50 + random.below(251));
        let (acknowledged, hammer_stderr) = hammer_then_kill(&dir, batch, delay);
        assert!(
            !hammer_stderr.contains("CORRUPTION") && !hammer_stderr.contains("error"),
            "cycle {cycle}: {hammer_stderr}"
        );
        for pair in acknowledged.windows(2) {
            assert_eq!(pair[1], pair[0] + u64::from(batch), "cycle {cycle}: a gap");
        }
        let floor = acknowledged.last().copied().unwrap_or(durable).max(durable);
        let (recovered, warnings) = get(&dir);
        assert!(
            !warnings.contains("CORRUPTION"),
            "cycle {cycle}: {warnings}"
        );
        println!(
            "cycle {cycle:2}: batch {batch:2}, killed after {:3} ms, {} acknowledged, last {floor}, \
             recovered {recovered}",
            delay.as_millis(),
            acknowledged.len()
        );
        assert!(
            recovered >= floor,
            "cycle {cycle}: lost acknowledged increments: recovered {recovered} < {floor}"
        );
        assert!(
            recovered <= floor + u64::from(batch),
            "cycle {cycle}: more than one batch in flight: recovered {recovered} > {floor} + {batch}"
        );
        durable = recovered;
        acknowledged_total += acknowledged.len();
    }
    assert!(acknowledged_total > 0, "no cycle acknowledged anything");

    let output = Command::new(BIN)
        .args(["counter", "incr", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: u64 = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(value, durable + 1);
}
