//! `bedrock db` as a user runs it: real processes on a real directory.
//!
//! - put, get, del and scan, their output formats and exit statuses, clear errors;
//! - a load large enough to flush and compact: tables in levels ≥ 1, every value right;
//! - a flipped byte in the table store: `get` reports the corrupt table (never a wrong value)
//!   and `inspect` reports it with its position;
//! - SIGKILL during `db load`: every acknowledged put is there after the restart.
//!
//! Databases here are created with a 16 MiB write-ahead log (`--wal-capacity`), so that the
//! log fills and flushes happen after a few MiB, and a 1 GiB sparse table store.
//! The seed of the kill delays is printed; `BEDROCK_SEED=<n>` replays them.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

mod common;

use common::{assert_one_error_line, scratch, seed, text, Random, BIN};

const SMALL: [&str; 4] = ["--wal-capacity", "16M", "--table-capacity", "1G"];

/// `bedrock db SUBCOMMAND --data DIR ARGS…`.
fn db(subcommand: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["db", subcommand, "--data"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// As [`db`], which must succeed: its stdout.
fn ok(subcommand: &str, dir: &Path, args: &[&str]) -> String {
    let output = db(subcommand, dir, args);
    assert!(
        output.status.success(),
        "db {subcommand} {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn key_of(index: u64) -> String {
    format!("key{index:012}")
}

fn value_of(index: u64, len: usize) -> String {
    let unit = format!("v{index}-");
    unit.chars().cycle().take(len).collect()
}

#[test]
fn put_get_del_scan_and_their_exit_statuses() {
    let temporary = scratch("db-basic-");
    let dir = temporary.path().join("db");

    // Reading never creates a database.
    let output = db("get", &dir, &["a"]);
    let error = assert_one_error_line(&output, 1);
    assert!(error.contains("no database in"), "{error}");
    assert!(!dir.exists());

    let mut args = SMALL.to_vec();
    args.extend(["apple", "red"]);
    assert_eq!(ok("put", &dir, &args), "");
    assert_eq!(ok("put", &dir, &["banana", "yellow"]), "");
    assert_eq!(ok("put", &dir, &["cherry", "dark\tred\n"]), "");
    assert_eq!(ok("put", &dir, &["empty", ""]), "");
    assert_eq!(ok("get", &dir, &["apple"]), "red\n");
    assert_eq!(ok("get", &dir, &["cherry"]), "dark\\tred\\n\n");
    assert_eq!(ok("get", &dir, &["--raw", "cherry"]), "dark\tred\n");
    assert_eq!(ok("get", &dir, &["empty"]), "\n");

    let output = db("get", &dir, &["durian"]);
    let error = assert_one_error_line(&output, 1);
    assert_eq!(error, "error: key durian not found");

    assert_eq!(ok("put", &dir, &["apple", "green"]), "", "an overwrite");
    assert_eq!(ok("del", &dir, &["banana"]), "");
    assert_eq!(ok("del", &dir, &["banana"]), "", "deleting an absent key");
    assert_eq!(
        assert_one_error_line(&db("get", &dir, &["banana"]), 1),
        "error: key banana not found"
    );

    assert_eq!(
        ok("scan", &dir, &[]),
        "apple\tgreen\ncherry\tdark\\tred\\n\nempty\t\n"
    );
    assert_eq!(ok("scan", &dir, &["b"]), "cherry\tdark\\tred\\n\nempty\t\n");
    assert_eq!(ok("scan", &dir, &["apple", "cherry"]), "apple\tgreen\n");
    assert_eq!(
        ok("scan", &dir, &["--limit", "1", "b"]),
        "cherry\tdark\\tred\\n\n"
    );
    assert_eq!(ok("scan", &dir, &["x"]), "");

    // Too long keys and values, an empty key: one error line, nothing written.
    let long_key = "k".repeat(257);
    let error = assert_one_error_line(&db("put", &dir, &[&long_key, "v"]), 1);
    assert_eq!(
        error,
        "error: the key is 257 bytes long; keys are at most 256 bytes"
    );
    let long_value = "v".repeat(4097);
    let error = assert_one_error_line(&db("put", &dir, &["k", &long_value]), 1);
    assert_eq!(
        error,
        "error: the value is 4097 bytes long; values are at most 4096 bytes"
    );
    let error = assert_one_error_line(&db("put", &dir, &["", "v"]), 1);
    assert!(error.contains("the key is empty"), "{error}");
    let max_key = "k".repeat(256);
    let max_value = "v".repeat(4096);
    assert_eq!(ok("put", &dir, &[&max_key, &max_value]), "");
    assert_eq!(ok("get", &dir, &[&max_key]), format!("{max_value}\n"));

    // A usage error is exit status 2.
    let output = db("put", &dir, &["only-a-key"]);
    assert_eq!(output.status.code(), Some(2));

    // inspect recognises a database and the counter's inspect is not confused by it.
    let output = Command::new(BIN)
        .args(["inspect", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("0 live tables"),
        "{}",
        text(&output.stdout)
    );

    // A counter's directory is not a database, and is left alone.
    let counter = temporary.path().join("counter");
    let output = Command::new(BIN)
        .args(["counter", "incr", "--data"])
        .arg(&counter)
        .output()
        .unwrap();
    assert!(output.status.success());
    let error = assert_one_error_line(&db("put", &counter, &["k", "v"]), 1);
    assert!(error.contains("not a database"), "{error}");
    assert!(!counter.join("wal").exists());

    // Not a terminal: no progress bar, no escape codes on stderr.
    let output = db("load", &dir, &["10", "--start", "1000"]);
    assert!(output.status.success());
    assert_eq!(text(&output.stderr), "");
    assert!(text(&output.stdout).starts_with("loaded 10 entries in "));
    assert_eq!(ok("del", &dir, &[&key_of(1000)]), "");

    // Every value survived the processes above (each one a reopen); stats run on it.
    let stats = ok("stats", &dir, &[]);
    assert!(stats.contains("memtable: 19 entries"), "{stats}"); // versions, tombstones included
    assert!(stats.contains("write amplification"), "{stats}");
}

#[test]
fn a_load_flushes_and_compacts_and_every_value_stays_right() {
    let temporary = scratch("db-load-");
    let dir = temporary.path().join("db");
    const ENTRIES: u64 = 150_000;
    // Four rounds of a load and a compaction (which flushes first): at least four level-0
    // tables, the trigger of a compaction into level 1.
    for round in 0..4 {
        let mut args = SMALL.to_vec();
        let count = (ENTRIES / 4).to_string();
        let start = (round * ENTRIES / 4).to_string();
        args.extend([count.as_str(), "--start", &start, "--value-len", "120"]);
        let summary = ok("load", &dir, &args);
        assert!(summary.starts_with("loaded 37500 entries in "), "{summary}");
        let compacted = ok("compact", &dir, &[]);
        assert!(compacted.starts_with("compacted in "), "{compacted}");
    }
    // Overwrite a tenth of them and delete a few, so compactions merge versions.
    ok("load", &dir, &["15000", "--value-len", "30"]);
    for index in [3u64, 4, 99_999] {
        ok("del", &dir, &[&key_of(index)]);
    }
    let compacted = ok("compact", &dir, &[]);
    assert!(compacted.starts_with("compacted in "), "{compacted}");

    let stats = ok("stats", &dir, &[]);
    let deep_tables: usize = stats
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let level: usize = words.first()?.parse().ok()?;
            (level >= 1).then(|| words[1].parse::<usize>().unwrap())
        })
        .sum();
    assert!(deep_tables >= 1, "no table below level 0: {stats}");
    assert!(stats.contains("memtable: 0 entries"), "{stats}");

    for index in [0u64, 1, 14_999, 15_000, 77_777, 149_999] {
        let len = if index < 15_000 { 30 } else { 120 };
        assert_eq!(
            ok("get", &dir, &[&key_of(index)]),
            format!("{}\n", value_of(index, len)),
            "key {index}"
        );
    }
    for index in [3u64, 4, 99_999, ENTRIES] {
        let output = db("get", &dir, &[&key_of(index)]);
        assert_one_error_line(&output, 1);
    }
    let scanned = ok("scan", &dir, &[]);
    assert_eq!(scanned.lines().count() as u64, ENTRIES - 3);
    let first = scanned.lines().next().unwrap();
    assert_eq!(first, format!("{}\t{}", key_of(0), value_of(0, 30)));
}

/// The `inspect` line of the first table: its storage offset and its first key.
fn first_table(inspect: &str) -> (u64, String) {
    let line = inspect
        .lines()
        .find(|line| line.starts_with("table "))
        .unwrap_or_else(|| panic!("no table in {inspect}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |name: &str| {
        let at = words.iter().position(|word| *word == name).unwrap();
        words[at + 1]
    };
    (after("offset").parse().unwrap(), after("keys").to_string())
}

#[test]
fn a_flipped_byte_in_a_table_is_reported_never_returned() {
    let temporary = scratch("db-corrupt-");
    let dir = temporary.path().join("db");
    let mut args = SMALL.to_vec();
    args.extend(["20000"]);
    ok("load", &dir, &args);
    ok("compact", &dir, &[]);

    let inspect = || {
        Command::new(BIN)
            .args(["inspect", "--data"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let clean = inspect();
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let listing = text(&clean.stdout);
    assert!(listing.contains(": ok ("), "{listing}");
    assert!(listing.contains("0 damaged"), "{listing}");
    let (offset, first_key) = first_table(&listing);
    assert_eq!(ok("get", &dir, &[&first_key]).len(), 101);

    // Flip one byte inside the table's first data block.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("tables/sparse.bedrock"))
        .unwrap();
    let at = offset + 200;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let output = db("get", &dir, &[&first_key]);
    let error = assert_one_error_line(&output, 1);
    assert!(error.contains("corrupt table"), "{error}");
    assert!(
        error.contains(&format!("damaged data block at offset {offset}")),
        "{error}"
    );
    assert!(error.contains("no value was returned"), "{error}");

    let output = db("scan", &dir, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("corrupt table"),
        "{}",
        text(&output.stderr)
    );

    let damaged = inspect();
    assert_eq!(damaged.status.code(), Some(1), "{}", text(&damaged.stderr));
    let listing = text(&damaged.stdout);
    assert!(
        listing.contains(&format!(
            "CORRUPT data block at offset {offset} of the table storage"
        )),
        "{listing}"
    );
    assert!(listing.contains("1 damaged"), "{listing}");
}

#[test]
fn acknowledged_puts_survive_sigkill_during_a_load() {
    const CYCLES: u64 = 6;
    let seed = seed();
    println!("seed {seed} (BEDROCK_SEED={seed} replays the kill delays)");
    let mut random = Random(seed);
    let temporary = scratch("db-sigkill-");
    let dir = temporary.path().join("db");
    ok(
        "put",
        &dir,
        &["--wal-capacity", "16M", "--table-capacity", "1G", "k", "v"],
    );
    for cycle in 0..CYCLES {
        let start = cycle * 10_000_000;
        let batch = [1u64, 10, 500][random.below(3) as usize];
        let mut child = Command::new(BIN)
            .args(["db", "load", "--print-acks", "--value-len", "200", "--data"])
            .arg(&dir)
            .args(["--start", &start.to_string(), "--batch", &batch.to_string()])
            .arg("9000000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_ack, acked) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let count = line.strip_prefix("acked ").unwrap().parse::<u64>().unwrap();
                assert!(count > last, "acks go up: {count} after {last}");
                if last == 0 {
                    let _ = first_ack.send(());
                }
                last = count;
            }
            last
        });
        // Wait for the first acknowledgement, then let it run a while.
        acked.recv_timeout(Duration::from_secs(30)).expect("no ack");
        if cycle == 0 {
            // The database is in use: a second process is refused, changing nothing.
            let output = db("get", &dir, &["k"]);
            let error = assert_one_error_line(&output, 1);
            assert!(error.contains("is locked by another process"), "{error}");
        }
        let delay = Duration::from_millis(100 + random.below(1500));
        thread::sleep(delay);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "load ended by itself: {stderr}");
        assert!(!stderr.contains("error"), "cycle {cycle}: {stderr}");
        let acknowledged = reader.join().unwrap();

        // Every acknowledged key is there with its value; at most the batch in flight more.
        let from = key_of(start);
        let to = key_of(start + 10_000_000);
        let scanned = ok("scan", &dir, &[&from, &to]);
        let lines: Vec<&str> = scanned.lines().collect();
        println!(
            "cycle {cycle}: batch {batch}, killed after {} ms, {acknowledged} acknowledged, {} \
             recovered",
            delay.as_millis(),
            lines.len()
        );
        assert!(
            lines.len() as u64 >= acknowledged,
            "cycle {cycle}: lost acknowledged puts: {} < {acknowledged}",
            lines.len()
        );
        assert!(
            lines.len() as u64 <= acknowledged + batch,
            "cycle {cycle}: more than the batch in flight: {} > {acknowledged} + {batch}",
            lines.len()
        );
        for (offset, line) in lines.iter().enumerate() {
            let index = start + offset as u64;
            let expected = format!("{}\t{}", key_of(index), value_of(index, 200));
            assert_eq!(*line, expected, "cycle {cycle}");
        }
    }
    assert_eq!(ok("get", &dir, &["k"]), "v\n");
    let compacted = ok("compact", &dir, &[]);
    assert!(compacted.starts_with("compacted in "), "{compacted}");
}
