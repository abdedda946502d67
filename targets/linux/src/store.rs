//! The counter's data directory: its geometry, opening it, and what recovery found, in words.
//!
//! # Geometry of a counter store
//!
//! One preallocated file of [`CAPACITY`] = 1 MiB, erase blocks (and log segments) of
//! [`ERASE_SIZE`] = 64 KiB, so 16 segments, and a write size of [`WRITE_SIZE`] = 8 bytes.
//!
//! - An increment is one frame: 28 bytes of header and checksum plus a 1–10 byte varint, padded
//!   to the write size: 32 bytes for amounts below 2^28, 40 at most. A segment holds about
//!   2000 of them.
//! - Core's counter writes a checkpoint (the whole value) every 1024 records and then releases
//!   the segments before it, so at most about two segments are live: the ring of 16 never
//!   fills, and a restart replays at most ~130 KiB, which takes well under a millisecond.
//! - Small writes keep the cost of an increment at one 32-byte `pwrite` plus one `fdatasync`,
//!   which is what `bedrock bench` compares against the raw limit.
//! - 64 KiB matches `FileOptions`' default erase size, and 1 MiB is small enough that creating
//!   a store (the file is filled and synced before it is used) is instantaneous.

use std::path::Path;
use std::process::ExitCode;

use bedrock::counter::{Counter, CounterConfig, CounterError};
use bedrock::log::{Damage, Recovery};
use bedrock_std::{FileError, FileOptions, FileStorage, DATA_FILE_NAME};

use crate::error::{fail, Error};
use crate::output;

/// Bytes of a counter store's data file.
pub const CAPACITY: u64 = 1 << 20;
/// Erase block and segment size of a counter store.
pub const ERASE_SIZE: u32 = 64 << 10;
/// Write size (the word) of a counter store.
pub const WRITE_SIZE: u32 = 8;
/// Lent buffer: one segment, so recovery reads a segment in one system call.
const BUFFER_BYTES: usize = ERASE_SIZE as usize;

const _: () = assert!(CAPACITY / ERASE_SIZE as u64 == 16);

/// A counter kept in a [`FileStorage`].
pub type FileCounter = Counter<FileStorage, Vec<u8>>;

/// The file options of a counter store.
pub fn options() -> FileOptions {
    FileOptions {
        capacity: Some(CAPACITY),
        read_size: 1,
        write_size: WRITE_SIZE,
        erase_size: ERASE_SIZE,
    }
}

/// Opens (creating if needed) the counter in `dir`, warning on stderr about what recovery found.
pub fn open(dir: &Path) -> Result<FileCounter, Error> {
    if dir.exists() && !dir.is_dir() {
        return Err(fail(format!("{} is not a directory", dir.display())));
    }
    let storage = FileStorage::open(dir, options()).map_err(|error| storage_error(dir, error))?;
    let buffer = vec![0u8; BUFFER_BYTES];
    let (counter, recovery) =
        Counter::open(storage, buffer, CounterConfig::default()).map_err(|error| {
            fail(format!(
                "could not open the counter in {}: {error}",
                dir.display()
            ))
        })?;
    for warning in warnings(&recovery) {
        eprintln!("{warning}");
    }
    Ok(counter)
}

/// A storage error as a sentence; a data file of another size is most likely not a counter's.
pub fn storage_error(dir: &Path, error: FileError) -> Error {
    match error {
        FileError::CapacityMismatch { path, existing, .. } => fail(format!(
            "{} holds {existing} bytes, not the {CAPACITY} of a counter store: {} is not a \
             counter's data directory",
            path.display(),
            dir.display()
        )),
        error => fail(error.to_string()),
    }
}

/// The warning lines for what recovery found, if anything.
pub fn warnings(recovery: &Recovery) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(torn) = &recovery.torn_tail {
        lines.push(format!(
            "warning: recovery skipped a torn tail at epoch {} offset {}: {} unsynced frames \
             discarded ({} bytes scanned after it)",
            torn.position.epoch, torn.position.offset, torn.frames_skipped, torn.bytes_skipped
        ));
    }
    if let Some(corruption) = &recovery.corruption {
        lines.push(format!(
            "warning: MID-LOG CORRUPTION at {}: the counter was rolled back to the consistent \
             prefix; {} frames skipped ({} bytes scanned)",
            where_and_why(corruption),
            corruption.frames_skipped,
            corruption.bytes_skipped
        ));
    }
    lines
}

/// "epoch E offset O (expected sequence S; cause)".
pub fn where_and_why(damage: &Damage) -> String {
    let expected = match damage.expected_sequence {
        Some(sequence) => format!("expected sequence {sequence}; "),
        None => String::new(),
    };
    format!(
        "epoch {} offset {} ({expected}found {})",
        damage.position.epoch, damage.position.offset, damage.cause
    )
}

/// `bedrock counter incr`.
pub fn incr(dir: &Path, by: u64) -> Result<ExitCode, Error> {
    let mut counter = open(dir)?;
    let before = counter.value();
    match counter.stage(by) {
        Ok(_) => {}
        Err(CounterError::Overflow) => {
            return Err(fail(format!(
                "the counter would overflow u64 (value {before}, by {by})"
            )))
        }
        Err(error) => return Err(increment_error(dir, error)),
    }
    // One sync makes the increment durable and marks the clean shutdown, so that the next run
    // appends in place rather than in a freshly erased segment.
    let value = counter
        .close()
        .map_err(|error| increment_error(dir, error))?;
    output::line(value)?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock counter get`: never creates a directory or a store.
pub fn get(dir: &Path) -> Result<ExitCode, Error> {
    if !dir.exists() {
        return Err(fail(format!(
            "no counter in {}: the directory does not exist (`bedrock counter incr` creates it)",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(fail(format!("{} is not a directory", dir.display())));
    }
    if !dir.join(DATA_FILE_NAME).exists() {
        output::line(0)?;
        return Ok(ExitCode::SUCCESS);
    }
    let counter = open(dir)?;
    output::line(counter.value())?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock counter hammer`: `count` commits of `batch` increments by 1, each acknowledged value
/// printed and flushed once durable.
pub fn hammer(dir: &Path, count: u64, batch: u32) -> Result<ExitCode, Error> {
    let mut counter = open(dir)?;
    for _ in 0..count {
        for _ in 0..batch {
            counter
                .stage(1)
                .map_err(|error| increment_error(dir, error))?;
        }
        let value = counter
            .commit()
            .map_err(|error| increment_error(dir, error))?;
        output::line(value)?;
    }
    counter
        .close()
        .map_err(|error| increment_error(dir, error))?;
    Ok(ExitCode::SUCCESS)
}

fn increment_error(dir: &Path, error: CounterError<FileError>) -> Error {
    fail(format!(
        "could not increment the counter in {}: {error}",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock::log::{DamageCause, Position};

    fn damage() -> Damage {
        Damage {
            position: Position {
                epoch: 3,
                offset: 131_136,
            },
            expected_sequence: Some(42),
            cause: DamageCause::GarbageAfterEnd,
            bytes_skipped: 512,
            frames_skipped: 2,
        }
    }

    #[test]
    fn a_clean_recovery_has_no_warning() {
        assert!(warnings(&Recovery::default()).is_empty());
    }

    #[test]
    fn a_torn_tail_and_corruption_each_get_a_warning_line() {
        let recovery = Recovery {
            torn_tail: Some(damage()),
            corruption: Some(damage()),
            ..Recovery::default()
        };
        let lines = warnings(&recovery);
        assert_eq!(
            lines[0],
            "warning: recovery skipped a torn tail at epoch 3 offset 131136: 2 unsynced frames \
             discarded (512 bytes scanned after it)"
        );
        assert!(lines[1].starts_with(
            "warning: MID-LOG CORRUPTION at epoch 3 offset 131136 (expected sequence 42; found \
             written bytes after the last frame): the counter was rolled back"
        ));
        assert!(lines[1].ends_with("2 frames skipped (512 bytes scanned)"));
    }
}
