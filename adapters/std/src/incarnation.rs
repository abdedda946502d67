//! A node's incarnation: a number that grows at every start, persisted in its data directory.
//!
//! The wire envelope's nonce is (sender, incarnation, counter): a node must never send under an
//! incarnation it used before, or two datagrams would share a nonce under one key. Peers also use
//! a new incarnation to learn that a node restarted and may have lost what it had not synced.
//!
//! Guaranteed: [`bump`] returns a number larger than any it returned before for the same
//! directory, even across crashes: the new value is written to a temporary file, synced, renamed
//! over the old one, and the directory is synced before it is returned. A damaged file is an
//! error, never silently reset (a reset would reuse nonces).
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
    let path = dir.join(INCARNATION_FILE_NAME);
    let current = match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u32>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not hold a number; refusing to guess an incarnation",
                    path.display()
                ),
            )
        })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    let next = current.checked_add(1).ok_or_else(|| {
        io::Error::other("incarnations exhausted: this node id cannot start again")
    })?;
    let temporary = dir.join(format!("{INCARNATION_FILE_NAME}.tmp"));
    {
        let mut file = File::create(&temporary)?;
        writeln!(file, "{next}")?;
        file.sync_all()?;
    }
    fs::rename(&temporary, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(next)
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
    }
}
