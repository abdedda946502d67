//! `bedrock fenced append|show FILE`: a tiny example of a resource protected by fencing tokens
//! (`bedrock::lock::Fence`), to use with `bedrock lock`.
//!
//! The resource is a text file of lines `TOKEN TEXT`. `append FILE TOKEN TEXT` takes an
//! exclusive `flock(2)` on the file, reads the highest token in it, admits `TOKEN` through a
//! [`Fence`] restored to that token or refuses it, then appends `TOKEN TEXT` and a newline and
//! syncs the file (fdatasync) before it releases the file lock. A holder of a lock passes the
//! token of its grant (`BEDROCK_LOCK_TOKEN` under `bedrock lock run`); a holder that lost its
//! lease without knowing (paused, partitioned) carries a token below its successor's, and once
//! the successor has written, the stale holder's writes are refused.
//!
//! # Output
//!
//! - `append` prints nothing. A stale token is exit status 1 with one line `error: stale
//!   fencing token 5: the resource has seen token 7; nothing was written to FILE`.
//! - `show` prints the file's lines as they are, `TOKEN TEXT` each, under a shared file lock.
//!
//! # Guarantees
//!
//! - The tokens in the file, in file order, never decrease: the check and the append happen
//!   under one exclusive file lock, and the highest token is the file's own content, durable
//!   with the line that brought it.
//! - An appended line is durable (fdatasync) when `append` exits 0.
//! - The same token may write any number of times (one grant, many writes).
//!
//! # Not guaranteed
//!
//! - Speed: every append reads the whole file (O(size of the file)): this is an example, not
//!   a database.
//! - Protection from writers that do not go through `append`, or that lie about their token.
//! - A file whose last append was torn by a crash (a line without its newline) is refused as
//!   malformed until repaired by hand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use bedrock::lock::Fence;

use crate::error::{fail, Error};
use crate::output::stdout_error;

/// Takes `flock(2)` `operation` on `file`, retrying when a signal interrupts the wait.
#[allow(unsafe_code)]
fn flock(file: &File, operation: libc::c_int, path: &Path) -> Result<(), Error> {
    loop {
        // SAFETY: flock(2) takes a file descriptor this process owns (borrowed from `file`
        // for the call) and an integer, and touches no memory of this process.
        let result = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if result == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(fail(format!("cannot lock {}: {error}", path.display())));
        }
    }
}

/// The highest token of the lines in `text`, checking their form.
fn highest_token(text: &str, path: &Path) -> Result<u64, Error> {
    let mut highest = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bad = || {
            fail(format!(
                "{} line {} is not `TOKEN TEXT`: not a fenced file, or a torn append (repair it \
                 by hand)",
                path.display(),
                index + 1
            ))
        };
        let Some(line) = line.strip_suffix('\n') else {
            return Err(bad());
        };
        let (token, _) = line.split_once(' ').ok_or_else(bad)?;
        let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
        let token = digits
            .then(|| token.parse::<u64>().ok())
            .flatten()
            .ok_or_else(bad)?;
        highest = highest.max(token);
    }
    Ok(highest)
}

fn read_all(file: &mut File, path: &Path) -> Result<String, Error> {
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|error| fail(format!("cannot read {}: {error}", path.display())))?;
    Ok(text)
}

/// `bedrock fenced append FILE TOKEN TEXT`: see the [module docs](self).
pub fn append(path: &Path, token: u64, text: &str) -> Result<ExitCode, Error> {
    if text.contains('\n') {
        return Err(fail("TEXT must be one line (no newline)"));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(|error| fail(format!("cannot open {}: {error}", path.display())))?;
    // Held until the file is closed: the check and the append are one step for other appends.
    flock(&file, libc::LOCK_EX, path)?;
    let content = read_all(&mut file, path)?;
    let mut fence = Fence::restore(highest_token(&content, path)?);
    fence.admit(token).map_err(|stale| {
        fail(format!(
            "stale fencing token {}: the resource has seen token {}; nothing was written to {}",
            stale.token,
            stale.highest,
            path.display()
        ))
    })?;
    file.write_all(format!("{token} {text}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|error| fail(format!("cannot write {}: {error}", path.display())))?;
    Ok(ExitCode::SUCCESS)
}

/// `bedrock fenced show FILE`: prints the file's lines.
pub fn show(path: &Path) -> Result<ExitCode, Error> {
    let mut file = File::open(path)
        .map_err(|error| fail(format!("cannot open {}: {error}", path.display())))?;
    flock(&file, libc::LOCK_SH, path)?;
    let content = read_all(&mut file, path)?;
    highest_token(&content, path)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(content.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_token_is_read_and_the_form_checked() {
        let path = Path::new("f");
        assert_eq!(highest_token("", path).unwrap(), 0);
        assert_eq!(highest_token("3 a\n7 b c\n5 \n", path).unwrap(), 7);
        for bad in [
            "3 a",
            "x a\n",
            "3\n",
            " 3 a\n",
            "-1 a\n",
            "99999999999999999999 a\n",
        ] {
            assert!(highest_token(bad, path).is_err(), "{bad:?}");
        }
    }
}
