//! `bedrock log append|read --node ADDR`: the client side of a node's replicated log.
//!
//! # Output
//!
//! `append` prints the new entry's dot, `ORIGIN:COUNTER` (the node that took it, and its
//! number there), once the entry is durable on that node. The request is retried with the same
//! request id until answered (3 s at most), and the node applies a retried request once.
//!
//! `read` prints one line per entry, in the cluster's read order (the same on every node once
//! they hold the same entries), five fields separated by single spaces:
//!
//! ```text
//! DEPTH ORIGIN:COUNTER GROUP ENCODING DATA
//! 1 1:1 alone utf8 hello world
//! 2 1:2 first utf8 written on node 1
//! 2 2:2 middle utf8 written on node 2 at the same time
//! 3 3:2 last hex 00ff10
//! 4 1:3 alone utf8 written after seeing all three
//! ```
//!
//! - `DEPTH`: the entry's causal depth (entries of a causal chain have growing depths);
//! - `GROUP`: the entry's place in its sibling group, the smallest run of lines that keeps
//!   every pair of concurrent entries (written without seeing each other) together: `alone`
//!   (concurrent with no entry), else `first`, `middle` or `last`. A group is what an
//!   application resolves as one conflict; it is the same on every node holding the same
//!   entries;
//! - `ENCODING DATA`: `utf8` then the data as is when it is valid UTF-8 without control
//!   characters (so a line is always one entry), else `hex` then lowercase hex; the data is the
//!   rest of the line and may contain spaces (`cut -d' ' -f5-`); empty data leaves the line
//!   ending in a space.
//!
//! `--from DEPTH:ORIGIN:COUNTER` starts after that entry (the first two fields of a printed
//! line), to resume a read. A read pages through the log with one request per 16 entries until
//! the node reports the end (or `--max` entries were printed); it is not a snapshot: an entry
//! that arrives during the read, ordered before the page being read, is not printed.
//!
//! Not provided: the client's datagrams are 1400 bytes, so a node started with a larger
//! `--mtu` may answer reads with datagrams the client drops (it then times out).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use bedrock::crdt::NodeId;
use bedrock::rlog::wire::read_entries;
use bedrock::rlog::{Dot, Message, ReadEntry, ReadKey, Refusal, READ_PAGE};
use bedrock::service::kind;
use bedrock_std::client::{self, Client};

use crate::cluster::{client_error, client_for, Access};
use crate::error::{fail, Error};
use crate::node::DATA_MAX;
use crate::output;

/// One entry of a read, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the read order.
    pub key: ReadKey,
    /// Its place in its sibling group: [`ReadEntry`]'s flags.
    pub siblings: u32,
    /// The application's bytes.
    pub data: Vec<u8>,
}

/// One page of a read.
#[derive(Debug)]
struct Page {
    next: ReadKey,
    done: bool,
    entries: Vec<Entry>,
}

fn request_id() -> Result<u64, Error> {
    client::random_u64().map_err(|error| fail(format!("no randomness: {error}")))
}

/// A dot as printed: `ORIGIN:COUNTER`.
pub fn format_dot(dot: Dot) -> String {
    format!("{}:{}", dot.origin.0, dot.counter)
}

/// Parses `DEPTH:ORIGIN:COUNTER`, the key of `--from`.
pub fn parse_key(text: &str) -> Result<ReadKey, String> {
    let usage =
        || "expected DEPTH:ORIGIN:COUNTER, e.g. 3:1:2 (the first two fields of a read line)";
    let mut fields = text.split(':');
    let (Some(depth), Some(origin), Some(counter), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(usage().to_string());
    };
    let depth = depth.parse::<u64>().map_err(|_| usage().to_string())?;
    let origin = origin.parse::<u32>().map_err(|_| usage().to_string())?;
    let counter = counter.parse::<u64>().map_err(|_| usage().to_string())?;
    Ok(ReadKey {
        depth,
        dot: Dot {
            origin: NodeId(origin),
            counter,
        },
    })
}

/// The `ENCODING DATA` fields of a read line.
pub fn format_data(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) if !text.chars().any(char::is_control) => format!("utf8 {text}"),
        _ => {
            let mut line = String::with_capacity(4 + 2 * data.len());
            line.push_str("hex ");
            for byte in data {
                // Writing to a String cannot fail.
                let _ = write!(line, "{byte:02x}");
            }
            line
        }
    }
}

/// The `GROUP` field: where an entry stands in its sibling group.
pub fn format_group(siblings: u32) -> &'static str {
    let before = siblings & ReadEntry::CONTINUES_BEFORE != 0;
    let after = siblings & ReadEntry::CONTINUES_AFTER != 0;
    match (before, after) {
        (false, false) => "alone",
        (false, true) => "first",
        (true, true) => "middle",
        (true, false) => "last",
    }
}

/// A whole read line.
pub fn format_entry(entry: &Entry) -> String {
    format!(
        "{} {} {} {}",
        entry.key.depth,
        format_dot(entry.key.dot),
        format_group(entry.siblings),
        format_data(&entry.data)
    )
}

fn refusal_sentence(reason: Refusal, len: usize) -> String {
    match reason {
        Refusal::TooLarge => format!(
            "the node refused the entry as too large: {len} bytes of data (at most {DATA_MAX} \
             at the default MTU) plus its version vector must fit one record; nothing was written"
        ),
        Refusal::Full => "the node's log is full; nothing was written".to_string(),
        Refusal::Busy => "the node is busy (too many requests waiting, or its log holds as many \
                          writing nodes as it can); nothing was written; try again"
            .to_string(),
        Refusal::Unavailable => "the node's log storage failed; nothing was written; the node \
                                 must be restarted"
            .to_string(),
        _ => "the node refused the entry; nothing was written".to_string(),
    }
}

/// Sends one append and waits for its answer: the dot, or why it was refused.
fn append_request(client: &mut Client, data: &[u8]) -> Result<Dot, Error> {
    let id = request_id()?;
    let request = Message::Append {
        request_id: id,
        data,
    };
    let answer = client
        .request(
            kind::REPLICATED_LOG,
            |area| request.encode(area),
            |payload| match Message::decode(payload) {
                Some(Message::Appended { request_id, dot }) if request_id == id => Some(Ok(dot)),
                Some(Message::Refused { request_id, reason }) if request_id == id => {
                    Some(Err(reason))
                }
                _ => None,
            },
        )
        .map_err(|error| match error {
            client::ClientError::TooLarge => fail(format!(
                "the entry of {} bytes does not fit one request datagram (at most {DATA_MAX} \
                 bytes of data are accepted)",
                data.len()
            )),
            error => client_error(error),
        })?;
    answer.map_err(|reason| fail(refusal_sentence(reason, data.len())))
}

/// `bedrock log append --node ADDR DATA`: prints the entry's dot once it is durable there.
pub fn append(node: SocketAddr, access: &Access, data: &OsStr) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let dot = append_request(&mut client, data.as_bytes())?;
    output::line(format_dot(dot))?;
    Ok(ExitCode::SUCCESS)
}

/// Decodes a read reply to request `id`; `None` for anything else or a reply whose entries do
/// not end at its `next` key (malformed).
fn decode_page(payload: &[u8], id: u64) -> Option<Page> {
    let Some(Message::ReadReply {
        request_id,
        next,
        done,
        entries,
    }) = Message::decode(payload)
    else {
        return None;
    };
    if request_id != id {
        return None;
    }
    let entries: Vec<Entry> = read_entries(entries)
        .map(|entry| Entry {
            key: ReadKey {
                depth: entry.depth,
                dot: entry.dot,
            },
            siblings: entry.siblings,
            data: entry.data.to_vec(),
        })
        .collect();
    let consistent = entries.last().is_none_or(|last| last.key == next);
    consistent.then_some(Page {
        next,
        done,
        entries,
    })
}

/// Sends one read of up to `max` entries after `from` and waits for the page.
fn read_request(client: &mut Client, from: ReadKey, max: u16) -> Result<Page, Error> {
    let id = request_id()?;
    let request = Message::Read {
        request_id: id,
        from,
        max,
    };
    client
        .request(
            kind::REPLICATED_LOG,
            |area| request.encode(area),
            |payload| decode_page(payload, id),
        )
        .map_err(client_error)
}

/// `bedrock log read --node ADDR`: prints the entries after `from`, at most `max`, paging
/// until the node reports the end.
pub fn read(
    node: SocketAddr,
    access: &Access,
    from: ReadKey,
    max: Option<u64>,
) -> Result<ExitCode, Error> {
    let mut client = client_for(node, access)?;
    let mut from = from;
    let mut remaining = max.unwrap_or(u64::MAX);
    // Every page with entries moves `from` forward, and the log is finite at any moment.
    while remaining > 0 {
        let want = remaining.min(READ_PAGE as u64) as u16;
        let page = read_request(&mut client, from, want)?;
        for entry in page.entries.iter().take(remaining as usize) {
            output::line(format_entry(entry))?;
        }
        remaining = remaining.saturating_sub(page.entries.len() as u64);
        if page.done {
            break;
        }
        if page.entries.is_empty() {
            return Err(fail(format!(
                "the entry after {}:{} does not fit one reply datagram (is the node's --mtu \
                 larger than 1400?)",
                from.depth,
                format_dot(from.dot)
            )));
        }
        from = page.next;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8], siblings: u32) -> Entry {
        Entry {
            key: ReadKey {
                depth: 3,
                dot: Dot {
                    origin: NodeId(2),
                    counter: 7,
                },
            },
            siblings,
            data: data.to_vec(),
        }
    }

    #[test]
    fn text_is_printed_as_is_and_anything_else_as_hex() {
        let line = |data: &[u8]| format_entry(&entry(data, 0));
        assert_eq!(line(b"hello world"), "3 2:7 alone utf8 hello world");
        assert_eq!(line("é ü".as_bytes()), "3 2:7 alone utf8 é ü");
        assert_eq!(line(b""), "3 2:7 alone utf8 ");
        assert_eq!(line(b"two\nlines"), "3 2:7 alone hex 74776f0a6c696e6573");
        assert_eq!(line(b"tab\t"), "3 2:7 alone hex 74616209");
        assert_eq!(line(&[0xff, 0x00]), "3 2:7 alone hex ff00");
    }

    #[test]
    fn the_group_field_names_the_place_in_the_sibling_group() {
        let before = ReadEntry::CONTINUES_BEFORE;
        let after = ReadEntry::CONTINUES_AFTER;
        assert_eq!(format_group(0), "alone");
        assert_eq!(format_group(after), "first");
        assert_eq!(format_group(before | after), "middle");
        assert_eq!(format_group(before), "last");
        assert_eq!(format_entry(&entry(b"x", after)), "3 2:7 first utf8 x");
    }

    #[test]
    fn a_key_parses_from_depth_origin_and_counter_only() {
        let key = parse_key("3:2:7").unwrap();
        assert_eq!(key, entry(b"", 0).key);
        assert_eq!(parse_key("0:0:0").unwrap(), ReadKey::START);
        for bad in [
            "",
            "3",
            "3:2",
            "3:2:7:1",
            "a:2:7",
            "3:-2:7",
            "3:4294967296:1",
            "3:2:x",
        ] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_page_whose_entries_do_not_end_at_its_next_key_is_refused() {
        let record = entry(b"hi", 0);
        let read_entry = bedrock::rlog::ReadEntry {
            dot: record.key.dot,
            depth: record.key.depth,
            siblings: 0,
            data: b"hi",
        };
        let mut entries = [0u8; 64];
        let len = postcard::to_slice(&read_entry, &mut entries).unwrap().len();
        let reply = |next: ReadKey| {
            let message = Message::ReadReply {
                request_id: 9,
                next,
                done: true,
                entries: &entries[..len],
            };
            let mut buffer = [0u8; 128];
            let used = message.encode(&mut buffer).unwrap();
            buffer[..used].to_vec()
        };
        let page = decode_page(&reply(record.key), 9).unwrap();
        assert_eq!(page.entries, vec![record.clone()]);
        assert!(page.done);
        assert!(
            decode_page(&reply(record.key), 8).is_none(),
            "another request"
        );
        assert!(
            decode_page(&reply(ReadKey::START), 9).is_none(),
            "inconsistent"
        );
    }
}
