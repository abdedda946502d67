//! A node's incarnation: a number that grows at every start, persisted in its data directory.
//!
//! The wire envelope's nonce is (sender, incarnation, counter): a node must never send under an
//! incarnation it used before, or two datagrams would share a nonce under one key. Peers also use
//! a new incarnation to learn that a node restarted and may have lost what it had not synced.
//!
//! Guaranteed: [`bump`] returns a number larger than any it returned before for the same
//! directory, and than any value [`raise_to`] stored there, even across crashes: the new value
//! is written to a temporary file, synced, renamed over the old one, and the directory is synced
//! before either returns. A damaged file is an error, never silently reset (a reset would reuse
//! nonces).
//!
//! Not guaranteed: protection against two processes bumping the same directory at once; callers
//! hold the data directory's lock (a [`crate::FileStorage`] open in it) first.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Name of the file inside the data directory.
pub const INCARNATION_FILE_NAME: &str = "incarnation";

/// Reads the incarnation stored in `dir` (0 when there is none), stores the next one durably and
/// returns it.
pub fn bump(dir: &Path) -> io::Result<u32> {
    let current = read(dir)?;
    let next = current.checked_add(1).ok_or_else(|| {
        io::Error::other("incarnations exhausted: this node id cannot start again")
    })?;
    store(dir, next)?;
    Ok(next)
}

/// Raises the incarnation stored in `dir` to `value` durably (crash-safe like [`bump`]), so the
/// next [`bump`] returns more than `value`; returns what is stored afterwards. Nothing is
/// written when the stored value is `value` or more: the stored number never goes down.
///
/// Used when a service raised the node's incarnation while it runs (membership refuting a
/// suspicion, or leaving).
pub fn raise_to(dir: &Path, value: u32) -> io::Result<u32> {
    let current = read(dir)?;
    if current >= value {
        return Ok(current);
    }
    store(dir, value)?;
    Ok(value)
}

/// The stored incarnation, 0 when there is none; a damaged file is an error.
fn read(dir: &Path) -> io::Result<u32> {
    let path = dir.join(INCARNATION_FILE_NAME);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u32>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not hold a number; refusing to guess an incarnation",
                    path.display()
                ),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

/// Writes `value` to a temporary file, syncs it, renames it over the incarnation file and syncs
/// the directory.
fn store(dir: &Path, value: u32) -> io::Result<()> {
    let path = dir.join(INCARNATION_FILE_NAME);
    let temporary = dir.join(format!("{INCARNATION_FILE_NAME}.tmp"));
    {
        let mut file = File::create(&temporary)?;
        writeln!(file, "{value}")?;
        file.sync_all()?;
    }
    fs::rename(&temporary, &path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bump_is_larger_than_the_last() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(bump(dir.path()).unwrap(), 1);
        assert_eq!(bump(dir.path()).unwrap(), 2);
        assert_eq!(bump(dir.path()).unwrap(), 3);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(INCARNATION_FILE_NAME), "garbage").unwrap();
        let error = bump(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        fs::write(
            dir.path().join(INCARNATION_FILE_NAME),
            format!("{}", u32::MAX),
        )
        .unwrap();
        assert!(bump(dir.path()).is_err());
        assert!(raise_to(dir.path(), 3).is_ok());
        fs::write(dir.path().join(INCARNATION_FILE_NAME), "garbage").unwrap();
        let error = raise_to(dir.path(), 3).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn raise_to_only_raises_and_the_next_bump_goes_above() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(raise_to(dir.path(), 5).unwrap(), 5);
        assert_eq!(raise_to(dir.path(), 3).unwrap(), 5);
        assert_eq!(bump(dir.path()).unwrap(), 6);
        assert_eq!(raise_to(dir.path(), 6).unwrap(), 6);
        assert_eq!(raise_to(dir.path(), 9).unwrap(), 9);
        assert_eq!(bump(dir.path()).unwrap(), 10);
    }
}
