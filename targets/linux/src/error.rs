//! Errors as the user sees them: one sentence on stderr, a non-zero exit status.

use std::fmt;
use std::process::ExitCode;

use clap::error::ErrorKind;

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    /// A sentence for the user (without the `error: ` prefix).
    Message(String),
    /// Standard output was closed by its reader (`bedrock inspect | head`): stop quietly.
    StdoutClosed,
}

impl Error {
    /// Prints the error, if it has anything to say, and gives the exit status.
    pub fn report(self) -> ExitCode {
        match self {
            Self::Message(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
            Self::StdoutClosed => ExitCode::SUCCESS,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message(message) => f.write_str(message),
            Self::StdoutClosed => f.write_str("standard output was closed"),
        }
    }
}

/// An error carrying `message`.
pub fn fail(message: impl Into<String>) -> Error {
    Error::Message(message.into())
}

/// Help and version go to stdout as clap renders them; a command line that could not be parsed
/// becomes one line (clap's usage block and tips are left out) and exit status 2.
pub fn usage(error: clap::Error) -> ExitCode {
    let status = u8::try_from(error.exit_code()).unwrap_or(2);
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational {
        // Nothing useful is left to do if printing help fails.
        let _ = error.print();
        return ExitCode::from(status);
    }
    eprintln!("{}", one_line(&error.render().to_string()));
    ExitCode::from(status.max(1))
}

/// The first paragraph of a clap message, its lines joined with spaces.
fn one_line(rendered: &str) -> String {
    let first_paragraph = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty());
    let mut line = first_paragraph.collect::<Vec<_>>().join(" ");
    if !line.starts_with("error:") {
        line.insert_str(0, "error: ");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_clap_message_becomes_one_sentence() {
        let rendered = "error: the following required arguments were not provided:\n  \
                        --data <DIR>\n\nUsage: bedrock counter get --data <DIR>\n";
        assert_eq!(
            one_line(rendered),
            "error: the following required arguments were not provided: --data <DIR>"
        );
    }
}
