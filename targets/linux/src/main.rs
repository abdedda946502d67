//! `bedrock`: the command-line tool of a bedrock node.
//!
//! - `bedrock counter incr|get` — the durable counter (core's `Counter`) in a data directory;
//! - `bedrock db put|get|del|scan|compact|stats|load` — the embedded database (core's LSM
//!   engine) in a data directory;
//! - `bedrock inspect` — lists every record of a data directory's log and what recovery found,
//!   or a database's live tables, each checked block by block;
//! - `bedrock bench` — throughput figures next to the raw limits measured in the same run;
//! - `bedrock node` — a cluster node: the distributed counter, the replicated log, the message
//!   queue, the job scheduler, the lock server and membership (failure detection) over UDP;
//! - `bedrock members --node ADDR` — a node's member table;
//! - `bedrock keygen` — a cluster key file;
//! - `bedrock counter incr|get --node ADDR`, `bedrock log append|read --node ADDR`,
//!   `bedrock queue …`, `bedrock jobs …`, `bedrock lock …` — clients of a node;
//! - `bedrock fenced append|show` — an example resource protected by fencing tokens.
//!
//! User errors (bad arguments, a locked or missing directory, an overflowing counter) are one
//! `error: …` sentence on stderr and a non-zero exit status, never a panic.

mod bench;
mod cluster;
mod database;
mod error;
mod fenced;
mod inspect;
mod job_scheduler;
mod lease_lock;
mod lock_quorum;
mod membership;
mod message_queue;
mod node;
mod output;
mod replicated_log;
mod store;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// The embedded database (an LSM tree) in a data directory.
    ///
    /// The directory holds `wal/` (the write-ahead log and manifest: a 128 MiB store by
    /// default), `tables/` (a sparse 16 GiB store by default: only what tables use takes disk
    /// space) and `STATS`. Keys are 1 to 256 bytes, values at most 4096, as given on the
    /// command line. Writes are durable (fdatasync) when the command returns. Memory: about
    /// 50 MiB (a 32 MiB memtable, table buffers). A second process on the same directory is
    /// refused. Keys and values are printed escaped, one record per line: `\\`, `\t`, `\n`,
    /// `\r`, `\xHH` for bytes outside printable ASCII.
    #[command(subcommand)]
    Db(DbCommand),
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
    ///
    /// Given a database directory (`bedrock db`), recovers the database and lists its live
    /// tables, one line each (first block, level, run, offset, length, entries, key range,
    /// sequence range), reading every block of each (footer, index, data blocks, each checked
    /// by its CRC): a damaged one is reported with its position; exit status 1 then.
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
    /// Runs a cluster node: the distributed counter, the replicated log, the message queue,
    /// the job scheduler, the lock server and membership over authenticated UDP.
    ///
    /// The node gossips counter entries with its peers every 200 ms and exchanges log entries
    /// every 100 ms, answers clients (`bedrock counter incr --node ADDR`, `bedrock log append
    /// --node ADDR`, `bedrock queue …`, `bedrock jobs …`, `bedrock lock …`), and makes every write durable
    /// (fdatasync, one per service shared by all requests that arrived together) before it
    /// answers. The queue, the jobs and the locks are this node's own (not replicated). Logs one line on
    /// stderr at start, one per membership change and one at stop. Stops cleanly on SIGINT or
    /// SIGTERM. The data directory holds `counter/`, `log/`, `queue/` (8 MiB each), `jobs/`
    /// (16 MiB), `lock/` (1 MiB) and `incarnation` (bumped at every start, and raised to the membership
    /// incarnation when membership bumps it). Every node of a cluster must use the same --mtu and key file.
    ///
    /// Membership (SWIM with Lifeguard's refinements) learns the cluster from the seeds (--join
    /// and --peer addresses: one reachable member is enough), probes one member per
    /// --probe-interval, suspects a member whose probes fail (directly and through 3 others)
    /// and declares it dead when the suspicion is not refuted within 4 · max(1, log10 n)
    /// periods (up to 6 times that until 3 members confirm it). Every change is one stderr line
    /// starting `membership: ` (joined, suspected, dead, left, alive again, forgotten, own
    /// incarnation bumped). On SIGINT or SIGTERM the node announces that it leaves (at most 3
    /// probe periods) before it stops. `bedrock members --node ADDR` prints a node's view.
    Node(NodeArgs),
    /// Prints a running node's member table (membership), the node itself included.
    ///
    /// One line per member after a header: `ID ADDRESS STATE INCARNATION PHI LAST_HEARD`.
    /// STATE is alive, suspect, dead or left (dead and left members stay listed for 60 s).
    /// INCARNATION grows at every restart of the member and whenever it refutes a suspicion.
    /// PHI is the phi-accrual suspicion score (how unusual the silence is: 1 ≈ 10 % chance
    /// that a live member was this silent, 3 ≈ 0.1 %), `-` before two messages were heard.
    /// LAST_HEARD is the time since the node last heard from the member directly (`-`: never),
    /// and `self` on the node's own line. Pages through the whole table.
    ///
    /// Example:
    ///
    ///   $ bedrock members --node 127.0.0.1:7001 --key-file cluster.key
    ///           ID ADDRESS               STATE   INCARNATION      PHI LAST_HEARD
    ///            1 127.0.0.1:7001        alive             1        -       self
    ///            2 127.0.0.1:7002        alive             1    0.210      310ms
    #[command(
        verbatim_doc_comment,
        about = "Prints a running node's member table (membership), the node itself included"
    )]
    Members(RemoteArgs),
    /// The replicated log of a running node: append entries, read them in the cluster's order.
    ///
    /// Every node accepts appends; nodes exchange entries until every node holds the same ones,
    /// and reads return them in the same order on every node. Entries written concurrently (on
    /// different nodes, without seeing each other) are kept side by side as siblings.
    #[command(subcommand)]
    Log(LogCommand),
    /// The message queue of a running node: send, receive under a lease, acknowledge.
    ///
    /// Named queues (1 to 32 bytes) live on the node given with --node; a message is at most
    /// 1280 bytes at the default MTU. A message is stored durably before `send` prints its id.
    /// `recv` leases the oldest pending message of a queue and prints `RECEIPT MESSAGE`; the
    /// receipt `ID:TOKEN` names that one delivery. `ack QUEUE RECEIPT` removes the message for
    /// good; a message not acknowledged before its lease ends is delivered again, under a new
    /// receipt, and the old receipt is refused (stale). Delivery is at least once: a consumer
    /// that crashes after its work and before its ack sees the message again.
    ///
    /// Example:
    ///
    ///   $ bedrock queue send --node 127.0.0.1:7001 --key-file cluster.key emails 'hi bob'
    ///   1
    ///   $ bedrock queue recv --node 127.0.0.1:7001 --key-file cluster.key emails --lease 60s
    ///   1:4294967297 hi bob
    ///   $ bedrock queue ack --node 127.0.0.1:7001 --key-file cluster.key emails 1:4294967297
    #[command(
        subcommand,
        verbatim_doc_comment,
        about = "The message queue of a running node: send, receive under a lease, acknowledge"
    )]
    Queue(QueueCommand),
    /// The job scheduler of a running node: submit jobs, run them with workers.
    ///
    /// A job is a payload (at most 1024 bytes) with a priority, a delay and a number of
    /// attempts. A worker claims the best runnable job under a lease (the node's --job-lease)
    /// and a fencing token, heartbeats while it works, and completes or fails it with the
    /// token. A failed attempt is retried after a jittered, doubling backoff; a job whose lease
    /// runs out counts a failed attempt and is offered again; after its last attempt a job is
    /// dead until `jobs retry`. Every transition is durable before it is answered.
    ///
    /// Example:
    ///
    ///   $ bedrock jobs submit --node 127.0.0.1:7001 --key-file cluster.key 'resize 42.png'
    ///   1
    ///   $ bedrock jobs work --node 127.0.0.1:7001 --key-file cluster.key --once \
    ///       --exec 'read -r what; echo "doing $what"'
    ///   doing resize 42.png
    #[command(
        subcommand,
        verbatim_doc_comment,
        about = "The job scheduler of a running node: submit jobs, run them with workers"
    )]
    Jobs(JobsCommand),
    /// Named locks of a running node: leases with fencing tokens.
    ///
    /// A lock (a name of 1 to 32 bytes, on the node given with --node) is granted as a lease of
    /// --ttl (at most the node's --lock-ttl-max) with a fencing token that grows with every
    /// grant, across node restarts. The holder renews the lease before it ends; the node grants
    /// the lock to nobody else before the lease ended (stretched by the node's drift bound),
    /// and after a node restart not before --lock-ttl-max. A holder paused past its lease may
    /// still act: a resource that must not see two holders checks the token (see `bedrock
    /// fenced`).
    ///
    /// Example:
    ///
    ///   $ bedrock lock acquire --node 127.0.0.1:7001 --key-file cluster.key backup --ttl 30s
    ///   1
    ///   $ bedrock lock status --node 127.0.0.1:7001 --key-file cluster.key backup
    ///   held holder 2923150114 token 1 lease_ms 28466 free_ms 28751
    ///   $ bedrock lock release --node 127.0.0.1:7001 --key-file cluster.key backup 1
    ///   $ bedrock lock run --node 127.0.0.1:7001 --key-file cluster.key backup --ttl 10s \
    ///       --wait -- sh -c 'echo "token $BEDROCK_LOCK_TOKEN"'
    ///   token 2
    ///
    /// A quorum lock (`lock run` only), held on a majority of independent nodes, each with its
    /// own --id and data, so that it survives a minority of them going down:
    ///
    ///   $ bedrock lock run --node 127.0.0.1:7001 --node 127.0.0.2:7001 \
    ///       --node 127.0.0.3:7001 --key-file cluster.key backup -- ./backup.sh
    #[command(
        subcommand,
        verbatim_doc_comment,
        about = "Named locks of a running node: leases with fencing tokens"
    )]
    Lock(LockCommand),
    /// An example resource protected by fencing tokens: a file of `TOKEN TEXT` lines.
    ///
    /// `append FILE TOKEN TEXT` refuses a token below the highest one in the file (exit status
    /// 1: a holder whose lease ended has been succeeded), else appends the line and syncs it;
    /// the check and the append run under an exclusive flock(2). Every append reads the whole
    /// file: an example, not a database.
    #[command(subcommand)]
    Fenced(FencedCommand),
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
    /// A peer's address; repeat for each peer. Peers gossip the counter and the log, and are
    /// membership seeds too.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<SocketAddr>,
    /// A membership seed: the address of any node of the cluster to join through; repeat for
    /// more. --join seeds are tried before --peer ones; at most 8 seeds are used.
    #[arg(long = "join", value_name = "ADDR")]
    joins: Vec<SocketAddr>,
    /// The membership probe period (from 10ms to 60s): one member is probed per period, the
    /// probe timeout is half of it, and suspicion timeouts are counted in periods. Every node
    /// of a cluster should use the same.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    probe_interval: Duration,
    /// The data directory.
    #[arg(long = "data", value_name = "DIR")]
    data: PathBuf,
    #[command(flatten)]
    access: AccessArgs,
    /// Largest datagram sent or accepted, from 508 to 65507.
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u16).range(508..=65507))]
    mtu: u16,
    /// The lease a job claim or heartbeat grants a worker (e.g. 30s, 500ms, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    job_lease: Duration,
    /// The wait after a job's first failed attempt; it doubles with every further failure, up
    /// to 5 minutes, drawn from the upper half of that (jitter).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    job_backoff: Duration,
    /// The longest lease a lock grant or renewal may ask for (e.g. 60s). Also the lock-delay
    /// after a restart: a lock held when the node stopped goes to nobody else before this
    /// (stretched by the drift bound) has passed since the start.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    lock_ttl_max: Duration,
    /// The drift bound ε between clients' clocks and the node's, in parts per million (10000
    /// = 1 %): after a lease of `ttl` the lock goes to nobody else before `ttl · (1 + ε)`. At
    /// most 500000.
    #[arg(long, value_name = "PPM", default_value_t = node::LOCK_DRIFT_PPM)]
    lock_drift_ppm: u32,
}

/// Where a queue or jobs command goes: a running node, and how to reach it.
#[derive(Debug, Args)]
struct RemoteArgs {
    /// The address of a running node (`bedrock node`).
    #[arg(long, value_name = "ADDR")]
    node: SocketAddr,
    #[command(flatten)]
    access: AccessArgs,
}

/// Where a lock command goes: one running node, or (for `run` and `status`) several.
#[derive(Debug, Args)]
struct LockRemoteArgs {
    /// The address of a running node (`bedrock node`). `run` and `status` take it 2 to 7 times:
    /// `run` then holds the lock on a majority of those nodes (a quorum lock), `status` asks
    /// each.
    #[arg(long, value_name = "ADDR", required = true)]
    node: Vec<SocketAddr>,
    #[command(flatten)]
    access: AccessArgs,
}

impl LockRemoteArgs {
    /// The one node of `acquire`, `renew` or `release`.
    fn single(&self) -> Result<SocketAddr, ExitCode> {
        match self.node.as_slice() {
            [node] => Ok(*node),
            _ => {
                eprintln!(
                    "error: quorum locks are held by `lock run` only: a quorum grant has one \
                     token per node (give one --node to acquire, renew or release)"
                );
                Err(ExitCode::from(2))
            }
        }
    }

    /// The nodes of `run` or `status`: 1 to 7, each once.
    fn nodes(&self) -> Result<&[SocketAddr], ExitCode> {
        let nodes = self.node.as_slice();
        let repeated = nodes
            .iter()
            .enumerate()
            .any(|(index, node)| nodes[..index].contains(node));
        if nodes.len() > lock_quorum::NODES_MAX || repeated {
            eprintln!(
                "error: give 1 to {} different --node addresses",
                lock_quorum::NODES_MAX
            );
            return Err(ExitCode::from(2));
        }
        Ok(nodes)
    }
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Stores MESSAGE in QUEUE and prints its id once it is durable on the node.
    ///
    /// Every send carries a producer id and a sequence number. By default the producer id is
    /// random and the sequence 1, so every invocation stores a new message. A script that must
    /// not store a message twice when it retries a send whose answer it did not get (a timeout,
    /// a crash) picks a producer id once and counts sequences: a send repeating the producer's
    /// highest sequence is answered with the first send's id and stores nothing; a lower
    /// sequence is refused. The node remembers the 1024 most recently active producers.
    ///
    /// Refused (exit status 1, nothing stored): a message over 1280 bytes, a bad queue name, a
    /// full queue node, an older sequence.
    Send {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The queue's name, 1 to 32 bytes.
        #[arg(value_name = "QUEUE", value_parser = message_queue::parse_name)]
        queue: String,
        /// The message's bytes (taken as given, UTF-8 or not; may start with '-').
        #[arg(value_name = "MESSAGE", allow_hyphen_values = true)]
        message: OsString,
        /// The producer id, for idempotent retries (default: random); needs --sequence.
        #[arg(long, value_name = "ID", requires = "sequence", value_parser = parse_amount)]
        producer: Option<u64>,
        /// The producer's sequence number, growing with each new message; needs --producer.
        #[arg(long, value_name = "N", requires = "producer", value_parser = parse_amount)]
        sequence: Option<u64>,
    },
    /// Leases the oldest pending message of QUEUE and prints `RECEIPT MESSAGE`.
    ///
    /// RECEIPT is `ID:TOKEN`: the message id and the token of this delivery. The message is
    /// printed as sent (its bytes, then a newline; a message holding newlines spans several
    /// lines). Until the lease ends, no other consumer receives the message; `ack` with the
    /// receipt removes it, `extend` lengthens the lease. Prints nothing and exits 0 when the
    /// queue has no pending message.
    Recv {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The queue's name, 1 to 32 bytes.
        #[arg(value_name = "QUEUE", value_parser = message_queue::parse_name)]
        queue: String,
        /// How long the message stays leased (e.g. 30s, 500ms, 5m; at most 10 minutes).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = message_queue::parse_lease)]
        lease: Duration,
    },
    /// Acknowledges the delivery RECEIPT (from `recv`): the message is removed for good.
    ///
    /// Prints nothing; once it returns with exit status 0 the acknowledgement is durable.
    /// Refused with exit status 1: a stale receipt (the lease ended, or the message was
    /// delivered again since: it is, or will be, processed under the newer receipt) and a
    /// message no longer in the queue (acknowledged already, or never sent). QUEUE is the
    /// message's queue, for symmetry with `send` and `recv`; message ids are unique on the
    /// node, so the node does not check it.
    Ack {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The queue's name, 1 to 32 bytes.
        #[arg(value_name = "QUEUE", value_parser = message_queue::parse_name)]
        queue: String,
        /// The receipt `ID:TOKEN` printed by `recv`.
        #[arg(value_name = "RECEIPT", value_parser = message_queue::parse_receipt)]
        receipt: message_queue::Receipt,
    },
    /// Extends the lease of the delivery RECEIPT to DURATION from now (nothing printed).
    ///
    /// Refused like `ack` when the receipt is stale. Leases live in the node's memory: after a
    /// node restart every unacknowledged message is pending again and old receipts are stale.
    Extend {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The queue's name, 1 to 32 bytes.
        #[arg(value_name = "QUEUE", value_parser = message_queue::parse_name)]
        queue: String,
        /// The receipt `ID:TOKEN` printed by `recv`.
        #[arg(value_name = "RECEIPT", value_parser = message_queue::parse_receipt)]
        receipt: message_queue::Receipt,
        /// The new lease, from now (e.g. 30s; at most 10 minutes).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = message_queue::parse_lease)]
        lease: Duration,
    },
    /// Prints the node's queue counts on one line: `live N leased N sent N acked N expired N`.
    ///
    /// live: messages stored and not yet acknowledged, in all queues; leased: of those, the
    /// ones under a lease now; sent, acked, expired: messages stored, acknowledgements and
    /// lease expiries since the node started.
    Stats {
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// How long to wait for a held lock.
#[derive(Debug, Args)]
struct WaitArgs {
    /// While the lock is held, wait for it (retrying when the node says it may be free, with
    /// jitter) instead of failing at once.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up (exit status 1) after this long.
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_duration)]
    wait_max: Option<Duration>,
}

impl WaitArgs {
    fn wait(&self) -> lease_lock::Wait {
        lease_lock::Wait {
            wait: self.wait,
            max: self.wait_max,
        }
    }
}

#[derive(Debug, Subcommand)]
enum LockCommand {
    /// Acquires lock NAME and prints its fencing token once the grant is durable.
    ///
    /// Exit status 1, with one line saying who holds it, under which token and when it frees,
    /// when the lock is held (unless --wait). Keep the lease with `lock renew` before --ttl
    /// passes; end it with `lock release`.
    Acquire {
        #[command(flatten)]
        remote: LockRemoteArgs,
        /// The lock's name, 1 to 32 bytes.
        #[arg(value_name = "NAME", value_parser = lease_lock::parse_name)]
        name: String,
        /// The lease (at most the node's --lock-ttl-max), in whole milliseconds.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = lease_lock::parse_ttl)]
        ttl: Duration,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Renews the lease of lock NAME held under TOKEN; prints the lease left in milliseconds.
    ///
    /// Refused (exit status 1) with a stale token: the lock was released, or its lease ended.
    Renew {
        #[command(flatten)]
        remote: LockRemoteArgs,
        /// The lock's name, 1 to 32 bytes.
        #[arg(value_name = "NAME", value_parser = lease_lock::parse_name)]
        name: String,
        /// The grant's fencing token (printed by `lock acquire`).
        #[arg(value_name = "TOKEN", value_parser = parse_amount)]
        token: u64,
        /// The lease from now (at most the node's --lock-ttl-max).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = lease_lock::parse_ttl)]
        ttl: Duration,
    },
    /// Releases lock NAME held under TOKEN; prints nothing.
    ///
    /// Refused (exit status 1) with a stale token. A release that had to be sent again and was
    /// then refused as stale (its first answer was lost) says so on stderr and exits 0.
    Release {
        #[command(flatten)]
        remote: LockRemoteArgs,
        /// The lock's name, 1 to 32 bytes.
        #[arg(value_name = "NAME", value_parser = lease_lock::parse_name)]
        name: String,
        /// The grant's fencing token.
        #[arg(value_name = "TOKEN", value_parser = parse_amount)]
        token: u64,
    },
    /// Prints lock NAME's state on one line.
    ///
    /// `held holder ID token T lease_ms L free_ms F` while a lease lasts, else `free token T
    /// free_ms F`: ID is the holder's client id, T the latest grant's token (0: none
    /// remembered), L the lease left and F the time until the lock can be granted to another
    /// client, in milliseconds. With several --node addresses, one such line per node,
    /// prefixed by its address.
    Status {
        #[command(flatten)]
        remote: LockRemoteArgs,
        /// The lock's name, 1 to 32 bytes.
        #[arg(value_name = "NAME", value_parser = lease_lock::parse_name)]
        name: String,
    },
    /// Runs CMD while holding lock NAME, renewing the lease; kills CMD if the lease is lost.
    ///
    /// Acquires the lock (waiting with --wait), runs CMD ARGS… directly (no shell) in its own
    /// process group with BEDROCK_LOCK_NAME and BEDROCK_LOCK_TOKEN in its environment, and
    /// renews every third of --ttl. The lease counts as lost at lease · (1 − ε) after the
    /// first send of the request that granted or last renewed it (ε = --drift-ppm). When a
    /// renewal is refused or that deadline passes (a pause, a partition, the node down), CMD's
    /// process group gets SIGKILL at once and the exit status is 75, with one line `error:
    /// lease on NAME lost: …`. When CMD exits, the lock is released and its exit status
    /// returned (128 + N for signal N). SIGINT or SIGTERM stop CMD (SIGTERM, SIGKILL after
    /// 1 s), release the lock and exit 128 + the signal. Exit status 1 when the lock was not
    /// acquired.
    ///
    /// With 2 to 7 --node addresses (independent nodes, each with its own --id, sharing the
    /// key): a quorum lock, held while a majority of the nodes' leases last; the token is the
    /// highest of a majority's grants, and survives a minority of the nodes going down.
    Run {
        #[command(flatten)]
        remote: LockRemoteArgs,
        /// The lock's name, 1 to 32 bytes.
        #[arg(value_name = "NAME", value_parser = lease_lock::parse_name)]
        name: String,
        /// The lease, renewed every third of it (at most the node's --lock-ttl-max).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = lease_lock::parse_ttl)]
        ttl: Duration,
        #[command(flatten)]
        wait: WaitArgs,
        /// The drift bound ε assumed between this machine's clock and the node's, in parts per
        /// million (the node's default is 10000 = 1 %). At most 500000.
        #[arg(long, value_name = "PPM", default_value_t = node::LOCK_DRIFT_PPM,
              value_parser = clap::value_parser!(u32).range(0..=500_000))]
        drift_ppm: u32,
        /// The command and its arguments, after `--`.
        #[arg(value_name = "CMD", last = true, required = true)]
        command: Vec<OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum FencedCommand {
    /// Appends `TOKEN TEXT` to FILE unless TOKEN is below the highest token in it.
    ///
    /// Creates FILE if needed. Refused (exit status 1, nothing written) with a stale token:
    /// `stale fencing token T: the resource has seen token H`. The line is synced before the
    /// command exits.
    Append {
        /// The fenced file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The writer's fencing token (e.g. $BEDROCK_LOCK_TOKEN).
        #[arg(value_name = "TOKEN", value_parser = parse_amount)]
        token: u64,
        /// The line's text (one line; may start with '-').
        #[arg(value_name = "TEXT", allow_hyphen_values = true)]
        text: String,
    },
    /// Prints FILE's `TOKEN TEXT` lines.
    Show {
        /// The fenced file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Submits a job and prints its id once it is durable.
    ///
    /// Prints `ID duplicate` when --key matched a job submitted before: nothing new was stored.
    /// With --key K a retried submit (after a timeout, a crash) gets the first job's id as long
    /// as that job is unfinished or among the node's last 1024 finished jobs.
    Submit {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The job's bytes, at most 1024 (taken as given; may start with '-').
        #[arg(value_name = "PAYLOAD", allow_hyphen_values = true)]
        payload: OsString,
        /// Deduplication key: a whole number naming this job for retries.
        #[arg(long, value_name = "K", value_parser = parse_amount)]
        key: Option<u64>,
        /// Priority, 0 to 255: higher runs first.
        #[arg(long, value_name = "P", default_value_t = 0)]
        priority: u8,
        /// Not run before this much time has passed (e.g. 5s, 10m).
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
        delay: Duration,
        /// Attempts before the job goes dead, at least 1.
        #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: u32,
    },
    /// Claims runnable jobs and works on them.
    ///
    /// Without --exec: waits for one runnable job (polling every --poll), claims it, prints
    /// `ID TOKEN PAYLOAD` and exits; finish it with `bedrock jobs complete ID TOKEN` or `jobs
    /// fail ID TOKEN` before the lease (the node's --job-lease) ends, and `jobs heartbeat ID
    /// TOKEN` to extend it. With --once, prints nothing and exits 0 when no job is runnable.
    ///
    /// With --exec CMD: for every claimed job runs `sh -c CMD` with the payload on its stdin
    /// and BEDROCK_JOB_ID, BEDROCK_JOB_TOKEN and BEDROCK_JOB_ATTEMPT (1 for the first attempt)
    /// in its environment, its stdout and stderr those of the worker. While it runs the worker
    /// heartbeats at a third of the lease. Exit status 0 completes the job; any other fails
    /// the attempt (retried after a backoff, or dead after the last attempt). If the node
    /// refuses a heartbeat (the lease was lost: the job may be running elsewhere), the command
    /// is killed and the job left alone. The worker reports each job on stderr and keeps
    /// claiming until SIGINT or SIGTERM (which kill the running command and fail its attempt);
    /// with --once it works one job and exits: 0 when it completed (or none was runnable), 1
    /// when it failed or the lease was lost.
    Work {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The shell command to run per job.
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// Work at most one job, then exit.
        #[arg(long)]
        once: bool,
        /// How long to wait between claims while no job is runnable (e.g. 1s, 200ms).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
        poll: Duration,
    },
    /// Completes job ID claimed under TOKEN (from `jobs work`); nothing printed.
    ///
    /// Refused (exit status 1) with a stale token: the lease ran out and the job was offered
    /// again (or finished). Repeating a completion that succeeded succeeds again.
    Complete {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The job id.
        #[arg(value_name = "ID", value_parser = parse_amount)]
        job: u64,
        /// The claim's fencing token.
        #[arg(value_name = "TOKEN", value_parser = parse_amount)]
        token: u64,
    },
    /// Fails the attempt of job ID claimed under TOKEN; nothing printed.
    ///
    /// The job runs again after a backoff, or goes dead after its last attempt.
    Fail {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The job id.
        #[arg(value_name = "ID", value_parser = parse_amount)]
        job: u64,
        /// The claim's fencing token.
        #[arg(value_name = "TOKEN", value_parser = parse_amount)]
        token: u64,
    },
    /// Extends the lease of job ID claimed under TOKEN; prints the lease left in milliseconds.
    ///
    /// The lease becomes a full one (the node's --job-lease) from now. Refused (exit status 1)
    /// with a stale token, like `complete`.
    Heartbeat {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The job id.
        #[arg(value_name = "ID", value_parser = parse_amount)]
        job: u64,
        /// The claim's fencing token.
        #[arg(value_name = "TOKEN", value_parser = parse_amount)]
        token: u64,
    },
    /// Lists the dead jobs (failed their last attempt), one id per line, increasing.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Only ids above this one.
        #[arg(long, value_name = "ID", default_value_t = 0, value_parser = parse_amount)]
        after: u64,
    },
    /// Re-queues dead job ID: it runs again at once, with all its attempts.
    ///
    /// Prints nothing. Refused (exit status 1) for a job that is not dead.
    Retry {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The job id.
        #[arg(value_name = "ID", value_parser = parse_amount)]
        job: u64,
    },
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

/// Where a database is, and its capacities when it is created.
#[derive(Debug, Args)]
struct DbArgs {
    /// The database directory (holds `wal/`, `tables/` and `STATS`).
    #[arg(long = "data", value_name = "DIR")]
    dir: PathBuf,
}

/// Capacities of a database created by this command (an existing one keeps its own).
#[derive(Debug, Args)]
struct CreateArgs {
    /// Bytes of the write-ahead log store `wal/` (a multiple of 4 MiB; default 128 MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    wal_capacity: Option<u64>,
    /// Bytes of the sparse table store `tables/` (a multiple of 256 KiB; default 16 GiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    table_capacity: Option<u64>,
}

impl CreateArgs {
    fn capacities(&self) -> database::Capacities {
        database::Capacities {
            wal: self.wal_capacity,
            tables: self.table_capacity,
        }
    }
}

/// A size: a whole number of bytes with an optional K, M, G or T suffix (binary units).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 10),
        Some((at, 'm' | 'M')) => (&text[..at], 20),
        Some((at, 'g' | 'G')) => (&text[..at], 30),
        Some((at, 't' | 'T')) => (&text[..at], 40),
        _ => (text, 0),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (a number with an optional K, M, G or T)"))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Writes VALUE under KEY; durable when it returns. Creates the database if missing.
    Put {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        create: CreateArgs,
        /// The key: 1 to 256 bytes.
        key: OsString,
        /// The value: at most 4096 bytes.
        value: OsString,
    },
    /// Prints the value of KEY (escaped, then a newline); exit status 1 when it is absent.
    Get {
        #[command(flatten)]
        db: DbArgs,
        /// Print the value's bytes as they are, without escaping or newline.
        #[arg(long)]
        raw: bool,
        /// The key.
        key: OsString,
    },
    /// Deletes KEY; durable when it returns (deleting an absent key succeeds).
    Del {
        #[command(flatten)]
        db: DbArgs,
        /// The key.
        key: OsString,
    },
    /// Prints `KEY<TAB>VALUE` (both escaped) per key from FROM (inclusive) to TO (exclusive),
    /// in key order.
    Scan {
        #[command(flatten)]
        db: DbArgs,
        /// Print at most this many keys.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// The first key (default: the first there is).
        from: Option<OsString>,
        /// The key to stop before (default: to the end).
        to: Option<OsString>,
    },
    /// Flushes the memtable, then compacts until no compaction is due.
    ///
    /// A progress line on stderr when it is a terminal. Prints one summary line.
    Compact {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Prints each level's tables, entries and bytes, the table storage in use, and the
    /// space and write amplification.
    ///
    /// Write amplification: bytes written to the log and the tables per byte of keys and
    /// values, summed over every command that finished (the `STATS` file).
    Stats {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Writes N generated entries: keys `key000000000000`… from --start, values
    /// `v<index>-` repeated to --value-len bytes, committed every --batch entries.
    ///
    /// A progress bar on stderr when it is a terminal; a summary line on stdout at the end.
    Load {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        create: CreateArgs,
        /// How many entries.
        count: u64,
        /// The index of the first key.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Entries per commit (one fdatasync each).
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        /// Bytes of each value (at most 4096).
        #[arg(long, default_value_t = 100)]
        value_len: usize,
        /// After each commit, print `acked C` on stdout: the first C keys are durable.
        #[arg(long)]
        print_acks: bool,
    },
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
    /// one (and at least 5 times), CRC-32C and memory read share one; the node figures (f, g,
    /// h) run their levels for about 3/4 of it each, the queue recoveries (i) at least 3 times.
    #[arg(long, value_name = "S", default_value_t = 2.0, value_parser = parse_seconds)]
    seconds: f64,
    /// Run only these figures, by letter (for example `--only ghi`; a, b and c run together).
    #[arg(long, value_name = "LETTERS")]
    only: Option<String>,
}

fn parse_amount(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| "expected a whole number from 0 to 18446744073709551615".to_string())
}

/// A duration: a number and a unit, `ms`, `s`, `m` or `h` (`1.5s`, `500ms`, `2m`); a bare
/// number is seconds. At most a day.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let usage = || "expected a duration such as 500ms, 30s, 2m or 1h (at most 24h)".to_string();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(usage()),
    };
    let value = number.parse::<f64>().map_err(|_| usage())?;
    let seconds = value * scale;
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return Err(usage());
    }
    Ok(Duration::from_secs_f64(seconds))
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
        Command::Db(command) => run_db(command),
        Command::Inspect(data) if database::is_database(&data.dir) => database::inspect(data.dir),
        Command::Inspect(data) => inspect::run(&data.dir),
        Command::Bench(args) => bench::run(args.dir.as_deref(), args.seconds, args.only.as_deref()),
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
            joins: args.joins,
            probe_interval: args.probe_interval,
            data: args.data,
            access: args.access.access(),
            mtu: usize::from(args.mtu),
            job_lease: args.job_lease,
            job_backoff: args.job_backoff,
            lock_ttl_max: args.lock_ttl_max,
            lock_drift_ppm: args.lock_drift_ppm,
        }),
        Command::Members(remote) => membership::members(remote.node, &remote.access.access()),
        Command::Queue(command) => run_queue(command),
        Command::Jobs(command) => run_jobs(command),
        Command::Lock(command) => run_lock(command),
        Command::Fenced(FencedCommand::Append { file, token, text }) => {
            fenced::append(&file, token, &text)
        }
        Command::Fenced(FencedCommand::Show { file }) => fenced::show(&file),
    }
}

fn run_db(command: DbCommand) -> Result<ExitCode, Error> {
    match command {
        DbCommand::Put {
            db,
            create,
            key,
            value,
        } => database::put(db.dir, create.capacities(), key, value),
        DbCommand::Get { db, raw, key } => database::get(db.dir, key, raw),
        DbCommand::Del { db, key } => database::del(db.dir, key),
        DbCommand::Scan {
            db,
            limit,
            from,
            to,
        } => database::scan(db.dir, from, to, limit),
        DbCommand::Compact { db } => database::compact(db.dir),
        DbCommand::Stats { db } => database::stats(db.dir),
        DbCommand::Load {
            db,
            create,
            count,
            start,
            batch,
            value_len,
            print_acks,
        } => database::load(
            db.dir,
            create.capacities(),
            count,
            start,
            batch,
            value_len,
            print_acks,
        ),
    }
}

fn run_lock(command: LockCommand) -> Result<ExitCode, Error> {
    match command {
        LockCommand::Acquire {
            remote,
            name,
            ttl,
            wait,
        } => match remote.single() {
            Ok(node) => lease_lock::acquire(node, &remote.access.access(), &name, ttl, wait.wait()),
            Err(code) => Ok(code),
        },
        LockCommand::Renew {
            remote,
            name,
            token,
            ttl,
        } => match remote.single() {
            Ok(node) => lease_lock::renew(node, &remote.access.access(), &name, token, ttl),
            Err(code) => Ok(code),
        },
        LockCommand::Release {
            remote,
            name,
            token,
        } => match remote.single() {
            Ok(node) => lease_lock::release(node, &remote.access.access(), &name, token),
            Err(code) => Ok(code),
        },
        LockCommand::Status { remote, name } => match remote.nodes() {
            Ok(nodes) => lease_lock::status(nodes, &remote.access.access(), &name),
            Err(code) => Ok(code),
        },
        LockCommand::Run {
            remote,
            name,
            ttl,
            wait,
            drift_ppm,
            command,
        } => {
            let options = lease_lock::RunOptions {
                name: &name,
                ttl,
                wait: wait.wait(),
                drift_ppm,
                command: &command,
            };
            match remote.nodes() {
                Ok([node]) => lease_lock::run(*node, &remote.access.access(), &options),
                Ok(nodes) => lock_quorum::run(nodes, &remote.access.access(), &options),
                Err(code) => Ok(code),
            }
        }
    }
}

fn run_queue(command: QueueCommand) -> Result<ExitCode, Error> {
    match command {
        QueueCommand::Send {
            remote,
            queue,
            message,
            producer,
            sequence,
        } => {
            let identity = producer.zip(sequence);
            message_queue::send(
                remote.node,
                &remote.access.access(),
                &queue,
                &message,
                identity,
            )
        }
        QueueCommand::Recv {
            remote,
            queue,
            lease,
        } => message_queue::recv(remote.node, &remote.access.access(), &queue, lease),
        QueueCommand::Ack {
            remote, receipt, ..
        } => message_queue::ack(remote.node, &remote.access.access(), receipt),
        QueueCommand::Extend {
            remote,
            receipt,
            lease,
            ..
        } => message_queue::extend(remote.node, &remote.access.access(), receipt, lease),
        QueueCommand::Stats { remote } => {
            message_queue::stats(remote.node, &remote.access.access())
        }
    }
}

fn run_jobs(command: JobsCommand) -> Result<ExitCode, Error> {
    match command {
        JobsCommand::Submit {
            remote,
            payload,
            key,
            priority,
            delay,
            max_attempts,
        } => {
            let job = job_scheduler::NewJob {
                payload: &payload,
                key,
                priority,
                delay,
                max_attempts,
            };
            job_scheduler::submit(remote.node, &remote.access.access(), &job)
        }
        JobsCommand::Work {
            remote,
            exec,
            once,
            poll,
        } => job_scheduler::work(
            remote.node,
            &remote.access.access(),
            exec.as_deref(),
            once,
            poll,
        ),
        JobsCommand::Complete { remote, job, token } => {
            job_scheduler::complete(remote.node, &remote.access.access(), job, token)
        }
        JobsCommand::Fail { remote, job, token } => {
            job_scheduler::fail_job(remote.node, &remote.access.access(), job, token)
        }
        JobsCommand::Heartbeat { remote, job, token } => {
            job_scheduler::heartbeat(remote.node, &remote.access.access(), job, token)
        }
        JobsCommand::List { remote, after } => {
            job_scheduler::list(remote.node, &remote.access.access(), after)
        }
        JobsCommand::Retry { remote, job } => {
            job_scheduler::retry(remote.node, &remote.access.access(), job)
        }
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

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "-1s", "1x", "1 s", "25h", "1e400", "1.2.3s", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
