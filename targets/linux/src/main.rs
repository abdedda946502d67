//! `bedrock`: the command-line tool of a bedrock node.
//!
//! - `bedrock counter incr|get` — the durable counter (core's `Counter`) in a data directory;
//! - `bedrock inspect` — lists every record of a data directory's log and what recovery found;
//! - `bedrock bench` — throughput figures next to the raw limits measured in the same run;
//! - `bedrock node` — a cluster node: the distributed counter and the replicated log over UDP;
//! - `bedrock keygen` — a cluster key file;
//! - `bedrock counter incr|get --node ADDR`, `bedrock log append|read --node ADDR` — clients of
//!   a node.
//!
//! User errors (bad arguments, a locked or missing directory, an overflowing counter) are one
//! `error: …` sentence on stderr and a non-zero exit status, never a panic.

mod bench;
mod cluster;
mod error;
mod inspect;
mod node;
mod output;
mod replicated_log;
mod store;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;

const AFTER_HELP: &str = "\
Exit status: 0 on success; 1 when the command failed (the message says why); 2 for a command \
line that could not be parsed.";

/// bedrock: durable building blocks of distributed systems, on this machine's disk.
#[derive(Debug, Parser)]
#[command(name = "bedrock", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The durable counter stored in a data directory.
    ///
    /// A counter's store is one 1 MiB file of 16 segments of 64 KiB, write size 8: an increment
    /// is one 32-byte record made durable with fdatasync, and a checkpoint every 1024 records
    /// lets old segments be erased, so the file never grows and a restart replays at most about
    /// two segments.
    #[command(subcommand)]
    Counter(CounterCommand),
    /// Lists every record of a data directory's log, then what recovery found.
    ///
    /// Opens the store like a restart would (it takes the directory's lock; recovery writes
    /// nothing, it only syncs what it read) with the stop-at-corruption policy, and prints one
    /// line per record recovery yields: sequence number, kind and decoded payload (counter
    /// records as `add N` / `checkpoint V`, other kinds as hex), position, CRC-32C and status.
    /// A summary follows: segments walked, records, next sequence number, torn tail and
    /// mid-log corruption (position, expected sequence, cause, bytes and frames skipped),
    /// earlier cuts, and whether appends continue in place.
    ///
    /// Logs written with another segment size, write size or payload limit than a counter's
    /// are opened with the layout their segment headers record.
    ///
    /// Exit status 1 when recovery found mid-log corruption (the listing is still printed).
    Inspect(DataArgs),
    /// Measures throughput next to the raw limits of this machine, in one run.
    ///
    /// Figures, in a scratch directory on the chosen file system: (a) pwrite of one 32-byte
    /// counter frame plus fdatasync; (b) the durable counter with one sync per increment;
    /// (c) the counter with 64 increments per sync; (d) replay of a 256 MiB log against a
    /// plain sequential read of the same bytes; (e) CRC-32C against memory read bandwidth;
    /// (f) durable increments per second through one node (the distributed counter over
    /// authenticated UDP on loopback) from 1, 16 and 64 concurrent clients, with syncs per
    /// second, increments per sync and latency, in turns with (a). Writes about 0.8 GiB in
    /// total; the scratch directory is removed afterwards.
    Bench(BenchArgs),
    /// Runs a cluster node: the distributed counter and the replicated log over authenticated
    /// UDP.
    ///
    /// The node gossips counter entries with its peers every 200 ms and exchanges log entries
    /// every 100 ms, answers clients (`bedrock counter incr --node ADDR`, `bedrock log append
    /// --node ADDR`), and makes every increment and entry durable (fdatasync, one per service
    /// shared by all requests that arrived together) before it answers. Logs one line on stderr
    /// at start and one at stop. Stops cleanly on SIGINT or SIGTERM. The data directory holds
    /// `counter/` and `log/` (the stores, 8 MiB each) and `incarnation` (bumped at every start).
    /// Every node of a cluster must use the same --mtu and key file.
    Node(NodeArgs),
    /// The replicated log of a running node: append entries, read them in the cluster's order.
    ///
    /// Every node accepts appends; nodes exchange entries until every node holds the same ones,
    /// and reads return them in the same order on every node. Entries written concurrently (on
    /// different nodes, without seeing each other) are kept side by side as siblings.
    #[command(subcommand)]
    Log(LogCommand),
    /// Writes a new random cluster key to a new file (mode 0600).
    ///
    /// The file holds one line `bedrock-key-v1 ID HEX`. To rotate keys without downtime, list
    /// the new key after the old one on every node, restart them one by one, then move it to the
    /// first line (the key used to send), then remove the old one.
    Keygen {
        /// The file to create; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
struct AccessArgs {
    /// The cluster key file (from `bedrock keygen`).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Send and accept unauthenticated (checksummed only) datagrams instead of using a key.
    #[arg(long)]
    plaintext: bool,
    /// The cluster label: nodes and clients with different labels ignore each other.
    #[arg(long, value_name = "LABEL", default_value = "bedrock")]
    cluster: String,
}

impl AccessArgs {
    fn access(&self) -> cluster::Access {
        cluster::Access {
            cluster: self.cluster.clone(),
            key_file: self.key_file.clone(),
            plaintext: self.plaintext,
        }
    }
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// This node's id, from 1 to 2147483647, unique in the cluster.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=0x7FFF_FFFF))]
    id: u32,
    /// The UDP address to listen on, e.g. 127.0.0.1:7001.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// A peer's address; repeat for each peer.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<SocketAddr>,
    /// The data directory.
    #[arg(long = "data", value_name = "DIR")]
    data: PathBuf,
    #[command(flatten)]
    access: AccessArgs,
    /// Largest datagram sent or accepted, from 508 to 65507.
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u16).range(508..=65507))]
    mtu: u16,
}

/// Where a counter command goes: a local data directory, or a running node.
#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "target")]
struct TargetArgs {
    /// The data directory of a local counter (holds `log.bedrock` and its `LOCK`).
    #[arg(long = "data", value_name = "DIR", group = "target")]
    dir: Option<PathBuf>,
    /// The address of a running node (`bedrock node`) whose distributed counter to use.
    #[arg(long, value_name = "ADDR", group = "target")]
    node: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum CounterCommand {
    /// Adds N to the counter and prints the new value once it is durable (synced).
    ///
    /// Creates the data directory and its store if missing. Prints a warning on stderr when
    /// recovery found a torn tail or mid-log corruption. Safe to run concurrently: a second
    /// process finds the directory locked and fails with exit status 1, changing nothing.
    ///
    /// With `--node ADDR`, adds through a running node instead: the node makes the increment
    /// durable, then this prints the node's view of the cluster-wide total. The request is
    /// retried until answered (3 s at most); a retried request is applied once.
    Incr {
        /// How much to add: a whole number from 0 to 2^64 - 1.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_amount)]
        by: u64,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Prints the counter's durable value.
    ///
    /// Prints 0 for an existing directory that holds no store yet, without creating one.
    /// Fails (exit status 1) when the directory does not exist: reading never creates it, so
    /// a mistyped path is an error rather than a silent 0. With `--node ADDR`, prints the
    /// node's view of the cluster-wide total.
    Get {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Test helper: COUNT commits of BATCH increments by 1 each, printing every acknowledged
    /// value on its own line, flushed, once it is durable.
    #[command(hide = true)]
    Hammer {
        #[command(flatten)]
        data: DataArgs,
        /// Number of commits (syncs).
        #[arg(long, value_parser = parse_amount)]
        count: u64,
        /// Increments staged per commit.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Appends DATA to the node's log and prints the entry's dot `ORIGIN:COUNTER` once it is
    /// durable on that node.
    ///
    /// The request is retried with the same request id until answered (3 s at most); the node
    /// applies a retried request once. Fails (exit status 1, nothing written) when the node
    /// refuses: data too large (512 bytes at most at the default MTU), log full, node busy.
    Append {
        /// The address of a running node (`bedrock node`).
        #[arg(long, value_name = "ADDR")]
        node: SocketAddr,
        #[command(flatten)]
        access: AccessArgs,
        /// The entry's bytes (taken as given, UTF-8 or not; may start with '-').
        #[arg(value_name = "DATA", allow_hyphen_values = true)]
        data: OsString,
    },
    /// Prints the node's entries in the read order, one line each:
    /// `DEPTH ORIGIN:COUNTER GROUP ENCODING DATA`.
    ///
    /// DEPTH is the entry's causal depth. GROUP is its place in its sibling group (the smallest
    /// run of lines keeping every pair of concurrent entries together): `alone`, or `first`,
    /// `middle`, `last`. ENCODING is `utf8` when the data is valid UTF-8 without control
    /// characters, printed as is, else `hex` with the data in lowercase hex; the data is the
    /// rest of the line. Pages through the log (16 entries per request) until its end; the
    /// order and groups are the same on every node holding the same entries.
    Read {
        /// The address of a running node (`bedrock node`).
        #[arg(long, value_name = "ADDR")]
        node: SocketAddr,
        #[command(flatten)]
        access: AccessArgs,
        /// Start after this entry: `DEPTH:ORIGIN:COUNTER`, the first two fields of a printed
        /// line joined by a colon (default: the beginning).
        #[arg(long, value_name = "KEY", value_parser = replicated_log::parse_key)]
        from: Option<bedrock::rlog::ReadKey>,
        /// Print at most N entries.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct DataArgs {
    /// The data directory (holds the store file `log.bedrock` and its `LOCK`).
    #[arg(long = "data", value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Where to create the scratch directory (default: the current directory). Pick a
    /// directory on the file system to measure.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds per figure: a, b and c take turns for 3 of these, the replays run for at least
    /// one (and at least 5 times), CRC-32C and memory read share one.
    #[arg(long, value_name = "S", default_value_t = 2.0, value_parser = parse_seconds)]
    seconds: f64,
}

fn parse_amount(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| "expected a whole number from 0 to 18446744073709551615".to_string())
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.05..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err("expected a number of seconds from 0.05 to 3600".to_string()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return error::usage(error),
    };
    match run(cli) {
        Ok(code) => code,
        Err(error) => error.report(),
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Counter(CounterCommand::Incr { by, target, access }) => match target {
            TargetArgs { dir: Some(dir), .. } => store::incr(&dir, by),
            TargetArgs {
                node: Some(node), ..
            } => cluster::remote_incr(node, &access.access(), by),
            _ => unreachable!("clap requires one target"),
        },
        Command::Counter(CounterCommand::Get { target, access }) => match target {
            TargetArgs { dir: Some(dir), .. } => store::get(&dir),
            TargetArgs {
                node: Some(node), ..
            } => cluster::remote_get(node, &access.access()),
            _ => unreachable!("clap requires one target"),
        },
        Command::Counter(CounterCommand::Hammer { data, count, batch }) => {
            store::hammer(&data.dir, count, batch)
        }
        Command::Inspect(data) => inspect::run(&data.dir),
        Command::Bench(args) => bench::run(args.dir.as_deref(), args.seconds),
        Command::Keygen { out } => cluster::keygen(&out),
        Command::Log(LogCommand::Append { node, access, data }) => {
            replicated_log::append(node, &access.access(), &data)
        }
        Command::Log(LogCommand::Read {
            node,
            access,
            from,
            max,
        }) => replicated_log::read(
            node,
            &access.access(),
            from.unwrap_or(bedrock::rlog::ReadKey::START),
            max,
        ),
        Command::Node(args) => node::node(node::NodeOptions {
            id: args.id,
            listen: args.listen,
            peers: args.peers,
            data: args.data,
            access: args.access.access(),
            mtu: usize::from(args.mtu),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn amounts_and_seconds_are_checked() {
        assert_eq!(parse_amount("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_amount("18446744073709551616").is_err());
        assert!(parse_amount("abc").is_err());
        assert!(parse_amount("-1").is_err());
        assert_eq!(parse_seconds("2"), Ok(2.0));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("nan").is_err());
    }
}
