//! The `bedrock` binary as a user runs it: outputs, exit statuses and error sentences.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use bedrock_std::{FileOptions, FileStorage, DATA_FILE_NAME};
use common::{assert_one_error_line, BIN};

fn scratch() -> tempfile::TempDir {
    common::scratch("cli-")
}

/// Runs `bedrock` with `args` and `--data dir`.
fn bedrock(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(dir)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    common::text(&output.stdout)
}

fn stderr(output: &Output) -> String {
    common::text(&output.stderr)
}

#[test]
fn incr_twice_prints_one_then_two_and_get_prints_two() {
    let temporary = scratch();
    let dir = temporary.path().join("counter");
    for expected in ["1\n", "2\n"] {
        let output = bedrock(&["counter", "incr"], &dir);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stdout(&output), expected);
        assert_eq!(stderr(&output), "", "a clean store gives no warning");
    }
    let output = bedrock(&["counter", "get"], &dir);
    assert!(output.status.success());
    assert_eq!(stdout(&output), "2\n");
    let output = bedrock(&["counter", "incr", "--by", "40"], &dir);
    assert_eq!(stdout(&output), "42\n");
}

#[test]
fn inspect_lists_every_record_and_says_the_log_is_clean() {
    let temporary = scratch();
    let dir = temporary.path();
    for by in ["1", "300"] {
        assert!(bedrock(&["counter", "incr", "--by", by], dir)
            .status
            .success());
    }
    let output = bedrock(&["inspect"], dir);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let records: Vec<&str> = text.lines().filter(|line| line.ends_with("  ok")).collect();
    assert_eq!(records.len(), 2, "{text}");
    assert!(records[0].trim_start().starts_with("0  add 1 "), "{text}");
    assert!(records[1].trim_start().starts_with("1  add 300 "), "{text}");
    assert!(records[0].contains("epoch 1 offset "), "{text}");
    assert!(records[0].contains("crc 0x"), "{text}");
    assert!(text.contains("records yielded   2"), "{text}");
    assert!(text.contains("next sequence     2"), "{text}");
    assert!(text.contains("torn tail         none"), "{text}");
    assert!(text.contains("corruption        none"), "{text}");
    assert!(text.contains("counter value     301"), "{text}");
    assert!(text.contains("verdict: the log is clean"), "{text}");
}

#[test]
fn a_non_numeric_amount_is_a_one_line_error() {
    let temporary = scratch();
    let output = bedrock(&["counter", "incr", "--by", "abc"], temporary.path());
    let line = assert_one_error_line(&output, 2);
    assert_eq!(
        line,
        "error: invalid value 'abc' for '--by <N>': expected a whole number from 0 to \
         18446744073709551615"
    );
    assert!(!temporary.path().join(DATA_FILE_NAME).exists());
}

#[test]
fn a_missing_data_option_is_a_one_line_error() {
    let output = Command::new(BIN).args(["counter", "get"]).output().unwrap();
    let line = assert_one_error_line(&output, 2);
    assert!(line.contains("--data <DIR>"), "{line}");
}

#[test]
fn a_locked_directory_gives_the_lock_error_and_changes_nothing() {
    let temporary = scratch();
    let dir = temporary.path();
    assert!(bedrock(&["counter", "incr"], dir).status.success());
    let options = FileOptions {
        capacity: Some(1 << 20),
        ..FileOptions::default()
    };
    let held = FileStorage::open(dir, options).unwrap();
    for command in [&["counter", "incr"][..], &["counter", "get"], &["inspect"]] {
        let output = bedrock(command, dir);
        let line = assert_one_error_line(&output, 1);
        let expected = format!(
            "error: data directory {} is locked by another process (pid {})",
            dir.display(),
            std::process::id()
        );
        assert_eq!(line, expected);
        assert_eq!(stdout(&output), "");
    }
    drop(held);
    assert_eq!(stdout(&bedrock(&["counter", "incr"], dir)), "2\n");
}

#[test]
fn get_of_a_missing_directory_fails_and_creates_nothing() {
    let temporary = scratch();
    let dir = temporary.path().join("typo");
    let line = assert_one_error_line(&bedrock(&["counter", "get"], &dir), 1);
    assert!(line.contains("does not exist"), "{line}");
    assert!(!dir.exists());
}

#[test]
fn get_of_an_empty_directory_prints_zero_and_creates_nothing() {
    let temporary = scratch();
    let output = bedrock(&["counter", "get"], temporary.path());
    assert!(output.status.success());
    assert_eq!(stdout(&output), "0\n");
    assert_eq!(std::fs::read_dir(temporary.path()).unwrap().count(), 0);
}

#[test]
fn an_overflowing_increment_is_refused_with_the_values() {
    let temporary = scratch();
    let dir = temporary.path();
    let max = u64::MAX.to_string();
    assert_eq!(
        stdout(&bedrock(&["counter", "incr", "--by", &max], dir)),
        format!("{max}\n")
    );
    let line = assert_one_error_line(&bedrock(&["counter", "incr", "--by", "2"], dir), 1);
    assert_eq!(
        line,
        format!("error: the counter would overflow u64 (value {max}, by 2)")
    );
    assert_eq!(
        stdout(&bedrock(&["counter", "get"], dir)),
        format!("{max}\n")
    );
}

#[test]
fn inspect_of_a_directory_without_a_store_is_an_error() {
    let temporary = scratch();
    let line = assert_one_error_line(&bedrock(&["inspect"], temporary.path()), 1);
    assert!(line.starts_with("error: no bedrock store in "), "{line}");
}

/// The offset inspect lists for the record with `sequence`.
fn offset_of(listing: &str, sequence: u64) -> u64 {
    let prefix = format!("{sequence}  ");
    let line = listing
        .lines()
        .find(|line| line.trim_start().starts_with(&prefix) && line.ends_with("  ok"))
        .unwrap();
    let after = line.split("offset ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_damaged_synced_record_is_reported_as_mid_log_corruption() {
    let temporary = scratch();
    let dir = temporary.path();
    for _ in 0..10 {
        assert!(bedrock(&["counter", "incr"], dir).status.success());
    }
    let third = offset_of(&stdout(&bedrock(&["inspect"], dir)), 2);
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(DATA_FILE_NAME))
        .unwrap();
    let mut byte = [0u8; 1];
    data.read_exact_at(&mut byte, third + 24).unwrap();
    data.write_all_at(&[byte[0] ^ 0x40], third + 24).unwrap();
    drop(data);

    let output = bedrock(&["inspect"], dir);
    assert_eq!(output.status.code(), Some(1), "corruption fails inspect");
    let text = stdout(&output);
    assert_eq!(
        text.lines().filter(|line| line.ends_with("  ok")).count(),
        2
    );
    assert!(
        text.contains(&format!(
            "corruption        at epoch 1 offset {third} (expected sequence 2; found "
        )),
        "{text}"
    );
    assert!(text.contains("7 valid frames after it skipped"), "{text}");
    assert!(text.contains("verdict: MID-LOG CORRUPTION"), "{text}");

    let output = bedrock(&["counter", "get"], dir);
    assert_eq!(stdout(&output), "2\n", "the consistent prefix");
    let warning = stderr(&output);
    assert!(
        warning.starts_with(&format!(
            "warning: MID-LOG CORRUPTION at epoch 1 offset {third} "
        )),
        "{warning}"
    );
    assert!(warning.contains("rolled back to the consistent prefix; 7 frames skipped"));
}

#[test]
fn inspect_opens_a_log_of_another_layout_with_the_layout_it_records() {
    use bedrock::log::{Config, Log, Policy};
    let temporary = scratch();
    let dir = temporary.path();
    let options = FileOptions {
        capacity: Some(4 << 20),
        read_size: 1,
        write_size: 16,
        erase_size: 1 << 20,
    };
    let config = Config {
        segment_size: 1 << 20,
        payload_max: 100,
        policy: Policy::StopAtCorruption,
    };
    let storage = FileStorage::open(dir, options).unwrap();
    let (mut log, _) = Log::open(storage, vec![0u8; 4096], config, |_| Ok::<(), ()>(())).unwrap();
    for byte in [0xAB_u8, 0xCD, 0xEF] {
        log.append(20, |area| {
            area[..40].fill(byte);
            Ok(40)
        })
        .unwrap();
    }
    log.sync().unwrap();
    drop(log);

    let output = bedrock(&["inspect"], dir);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with("store: 4194304 bytes, 4 segments of 1048576 bytes, write size 16"),
        "{text}"
    );
    let records: Vec<&str> = text.lines().filter(|line| line.ends_with("  ok")).collect();
    assert_eq!(records.len(), 3, "{text}");
    assert!(
        records[1].contains("kind 20 cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd… (40 bytes)"),
        "{text}"
    );
    assert!(text.contains("not a counter log"), "{text}");
    assert!(text.contains("verdict: the log is clean"), "{text}");
}
