//! Writing to standard output without panicking when the reader goes away.

use std::io::{self, Write};

use crate::error::{fail, Error};

/// Maps a failed write to stdout: a closed pipe stops the command quietly.
pub fn stdout_error(error: io::Error) -> Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Error::StdoutClosed
    } else {
        fail(format!("could not write to standard output: {error}"))
    }
}

/// Prints one line on stdout and flushes it, so that a reader sees it at once.
pub fn line(text: impl std::fmt::Display) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}
