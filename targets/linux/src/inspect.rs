//! `bedrock inspect`: every record recovery yields, then what recovery found.
//!
//! Opening is a real recovery (through core's `Log::open`, stop-at-corruption policy): what is
//! listed is exactly what a restart would replay. Recovery writes nothing; it takes the data
//! directory's lock and syncs the file before returning.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use bedrock::counter::{KIND_ADD, KIND_CHECKPOINT, PAYLOAD_MAX};
use bedrock::log::{Config, Damage, Entry, Log, OpenError, Policy, Recovery};
use bedrock_std::{FileOptions, FileStorage, DATA_FILE_NAME};

use crate::error::{fail, Error};
use crate::output::stdout_error;
use crate::store;

/// Bytes the lent buffer holds beyond one largest frame: recovery reads this much at a time.
const READ_BYTES: usize = 4 << 20;
/// Payload bytes shown in hex for records that are not counter records.
const HEX_SHOWN: usize = 16;

/// The layout a log is opened with: the counter's, or the one its headers record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    segment_size: u32,
    write_size: u32,
    payload_max: u32,
}

impl Layout {
    fn erase_size(&self, capacity: u64) -> u32 {
        // Any power of two dividing both the segment size and the file works for reading.
        let bits = self
            .segment_size
            .trailing_zeros()
            .min(capacity.trailing_zeros());
        (1u32 << bits.min(31)).max(self.write_size)
    }

    fn file_options(&self, capacity: u64) -> FileOptions {
        FileOptions {
            capacity: None,
            read_size: 1,
            write_size: self.write_size,
            erase_size: self.erase_size(capacity),
        }
    }
}

/// `bedrock inspect --data DIR`.
pub fn run(dir: &Path) -> Result<ExitCode, Error> {
    let data = dir.join(DATA_FILE_NAME);
    let capacity = match std::fs::metadata(&data) {
        Ok(metadata) if metadata.is_file() => metadata.len(),
        _ => {
            return Err(fail(format!(
                "no bedrock store in {}: {} does not exist",
                dir.display(),
                data.display()
            )))
        }
    };
    let mut layout = Layout {
        segment_size: store::ERASE_SIZE,
        write_size: store::WRITE_SIZE,
        payload_max: PAYLOAD_MAX,
    };
    let mut out = BufWriter::new(io::stdout().lock());
    // At most twice: with the counter's layout, then with the layout the headers record.
    for _attempt in 0..2 {
        match inspect(dir, capacity, layout, &mut out)? {
            Ok(code) => return Ok(code),
            Err(recorded) if recorded != layout => layout = recorded,
            Err(_) => break,
        }
    }
    Err(fail(format!(
        "could not open the log in {}: its segment headers disagree on its layout",
        dir.display()
    )))
}

/// One attempt; `Ok(Err(layout))` when the log records another layout (nothing was printed).
fn inspect(
    dir: &Path,
    capacity: u64,
    layout: Layout,
    out: &mut impl Write,
) -> Result<Result<ExitCode, Layout>, Error> {
    let options = layout.file_options(capacity);
    let mut storage =
        FileStorage::open(dir, options).map_err(|error| store::storage_error(dir, error))?;
    let config = Config {
        segment_size: layout.segment_size,
        payload_max: layout.payload_max,
        policy: Policy::StopAtCorruption,
    };
    let frame_max = layout.payload_max as usize + 64;
    let buffer = vec![0u8; READ_BYTES + frame_max];
    let mut replay = Replay::default();
    let opened = Log::open(&mut storage, buffer, config, |entry| {
        replay.visit(out, entry, capacity, layout)
    });
    let (log, recovery) = match opened {
        Ok(opened) => opened,
        Err(OpenError::LayoutMismatch {
            segment_size,
            write_size,
            payload_max,
        }) => {
            return Ok(Err(Layout {
                segment_size,
                write_size,
                payload_max,
            }))
        }
        Err(OpenError::Visitor(error)) => return Err(stdout_error(error)),
        Err(error) => {
            return Err(fail(format!(
                "could not recover the log in {}: {error}",
                dir.display()
            )))
        }
    };
    let free = log.free_segments();
    drop(log);
    if replay.records == 0 {
        writeln!(out, "{}", heading(capacity, layout)).map_err(stdout_error)?;
    }
    for line in summary(&recovery, replay.counter_value(), free) {
        writeln!(out, "{line}").map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)?;
    Ok(Ok(if recovery.corruption.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }))
}

fn heading(capacity: u64, layout: Layout) -> String {
    let segments = capacity / u64::from(layout.segment_size);
    format!(
        "store: {capacity} bytes, {segments} segments of {} bytes, write size {}, payload limit \
         {}\n{:>6}  {:<18}  {:<28}  {:<14}  status",
        layout.segment_size,
        layout.write_size,
        layout.payload_max,
        "seq",
        "kind",
        "position",
        "crc"
    )
}

/// What the listing has seen so far.
#[derive(Debug, Default)]
struct Replay {
    records: u64,
    /// The counter's value replayed so far; `None` once a record is not a counter record.
    value: Option<u64>,
    foreign: bool,
}

impl Replay {
    fn visit(
        &mut self,
        out: &mut impl Write,
        entry: Entry<'_>,
        capacity: u64,
        layout: Layout,
    ) -> io::Result<()> {
        if self.records == 0 {
            writeln!(out, "{}", heading(capacity, layout))?;
        }
        self.records += 1;
        let decoded = decode(entry.kind, entry.payload);
        self.apply(decoded);
        let position = format!(
            "epoch {} offset {}",
            entry.position.epoch, entry.position.offset
        );
        writeln!(
            out,
            "{:>6}  {:<18}  {position:<28}  crc 0x{:08x}  ok",
            entry.sequence,
            describe(entry.kind, entry.payload, decoded),
            entry.crc
        )
    }

    fn apply(&mut self, decoded: Option<CounterRecord>) {
        let value = self.value.unwrap_or(0);
        self.value = match decoded {
            Some(CounterRecord::Add(amount)) => value.checked_add(amount),
            Some(CounterRecord::Checkpoint(value)) => Some(value),
            None => None,
        };
        self.foreign |= self.value.is_none();
    }

    fn counter_value(&self) -> Option<u64> {
        match self.foreign {
            true => None,
            false => Some(self.value.unwrap_or(0)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterRecord {
    Add(u64),
    Checkpoint(u64),
}

/// A counter record, if the kind is one and the payload is exactly one u64 varint.
fn decode(kind: u8, payload: &[u8]) -> Option<CounterRecord> {
    let amount = match postcard::take_from_bytes::<u64>(payload) {
        Ok((amount, [])) => amount,
        _ => return None,
    };
    match kind {
        KIND_ADD => Some(CounterRecord::Add(amount)),
        KIND_CHECKPOINT => Some(CounterRecord::Checkpoint(amount)),
        _ => None,
    }
}

fn describe(kind: u8, payload: &[u8], decoded: Option<CounterRecord>) -> String {
    match decoded {
        Some(CounterRecord::Add(amount)) => format!("add {amount}"),
        Some(CounterRecord::Checkpoint(value)) => format!("checkpoint {value}"),
        None => {
            let mut text = format!("kind {kind} ");
            for byte in payload.iter().take(HEX_SHOWN) {
                let _ = write!(text, "{byte:02x}");
            }
            if payload.len() > HEX_SHOWN {
                let _ = write!(text, "… ({} bytes)", payload.len());
            }
            text
        }
    }
}

/// The summary after the listing.
fn summary(recovery: &Recovery, counter_value: Option<u64>, free_segments: u32) -> Vec<String> {
    let mut lines = vec![
        String::new(),
        "recovery:".to_string(),
        format!("  segments walked   {}", recovery.segments),
        format!("  records yielded   {}", recovery.frames),
        format!("  next sequence     {}", recovery.next_sequence),
        format!("  torn tail         {}", damage_line(&recovery.torn_tail)),
        format!("  corruption        {}", damage_line(&recovery.corruption)),
        format!(
            "  earlier cuts      {} (breaks an earlier recovery had already reported and cut off)",
            recovery.earlier_cuts
        ),
        format!(
            "  appends           {}; {free_segments} segments free",
            match recovery.appends_in_place {
                true => "continue in place, in the newest segment",
                false => "open a fresh segment",
            }
        ),
    ];
    lines.push(match counter_value {
        Some(value) => format!("  counter value     {value}"),
        None => "  counter value     - (not a counter log: some records are not counter records)"
            .to_string(),
    });
    lines.push(verdict(recovery));
    lines
}

fn damage_line(damage: &Option<Damage>) -> String {
    match damage {
        None => "none".to_string(),
        Some(damage) => format!(
            "at {}; {} bytes and {} valid frames after it skipped",
            store::where_and_why(damage),
            damage.bytes_skipped,
            damage.frames_skipped
        ),
    }
}

fn verdict(recovery: &Recovery) -> String {
    if recovery.corruption.is_some() {
        "verdict: MID-LOG CORRUPTION: records that had been synced are damaged; only the \
         consistent prefix before them was yielded"
            .to_string()
    } else if recovery.torn_tail.is_some() {
        "verdict: the log ends in a torn tail (writes never synced, lost to a crash) and was \
         truncated there; nothing acknowledged was lost"
            .to_string()
    } else {
        "verdict: the log is clean".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_records_decode_and_others_show_as_hex() {
        assert_eq!(
            decode(KIND_ADD, &[0x80, 0x01]),
            Some(CounterRecord::Add(128))
        );
        assert_eq!(
            decode(KIND_CHECKPOINT, &[0x07]),
            Some(CounterRecord::Checkpoint(7))
        );
        assert_eq!(decode(KIND_ADD, &[0x01, 0x02]), None, "trailing bytes");
        assert_eq!(decode(18, &[0x01]), None);
        assert_eq!(describe(18, &[0xab, 0x01], None), "kind 18 ab01");
        let long = [0u8; 20];
        assert!(describe(16, &long, None).ends_with("… (20 bytes)"));
    }

    #[test]
    fn the_replayed_counter_value_follows_adds_and_checkpoints() {
        let mut replay = Replay::default();
        assert_eq!(replay.counter_value(), Some(0));
        replay.apply(Some(CounterRecord::Add(5)));
        replay.apply(Some(CounterRecord::Checkpoint(100)));
        replay.apply(Some(CounterRecord::Add(1)));
        assert_eq!(replay.counter_value(), Some(101));
        replay.apply(None);
        replay.apply(Some(CounterRecord::Add(1)));
        assert_eq!(replay.counter_value(), None);
    }

    #[test]
    fn a_layout_from_headers_gets_an_erase_size_that_divides_everything() {
        let layout = Layout {
            segment_size: 1 << 20,
            write_size: 8,
            payload_max: 4064,
        };
        assert_eq!(layout.erase_size(288 << 20), 1 << 20);
        assert_eq!(layout.erase_size(3 << 16), 1 << 16);
    }

    #[test]
    fn a_clean_summary_says_so() {
        let lines = summary(&Recovery::default(), Some(0), 15);
        assert_eq!(lines.last().unwrap(), "verdict: the log is clean");
    }
}
