//! What the figures depend on (machine, file system), the raw sync limit, and the kernel's
//! I/O counters.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::workload::{Rate, ENTRY_LEN};

/// The machine and the file system of the scratch directory.
#[derive(Debug)]
pub struct Context {
    pub dir: PathBuf,
    pub mount: String,
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory: String,
    pub load: String,
}

impl Context {
    pub fn probe(dir: &Path) -> Self {
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mount = fs::read_to_string("/proc/mounts")
            .ok()
            .and_then(|mounts| mount_of(&mounts, &dir))
            .unwrap_or_else(|| "unknown".to_string());
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".to_string());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = field(&meminfo, "MemTotal").unwrap_or_else(|| "unknown".to_string());
        Self {
            dir,
            mount,
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |count| count.get()),
            kernel,
            memory,
            load: load_average(),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let build = match cfg!(debug_assertions) {
            true => "debug (figures are meaningless: use --release)",
            false => "release",
        };
        vec![
            "bedrock-dbbench".to_string(),
            format!("  scratch dir  {}", self.dir.display()),
            format!("  file system  {}", self.mount),
            format!("  cpu          {} ({} logical CPUs)", self.cpu, self.cpus),
            format!("  memory       {}", self.memory),
            format!("  kernel       Linux {}", self.kernel),
            format!("  load average {} (1, 5, 15 min) at the start", self.load),
            format!("  build        {build}"),
        ]
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews every figure.
pub fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    match fields.is_empty() {
        true => "unknown".to_string(),
        false => fields.join(" "),
    }
}

/// The mount holding `dir` (longest mount point that is a prefix of it), from /proc/mounts.
fn mount_of(mounts: &str, dir: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [device, point, kind, options, ..] => Some((*device, *point, *kind, *options)),
                _ => None,
            }
        })
        .filter(|(_, point, _, _)| dir.starts_with(point))
        .max_by_key(|(_, point, _, _)| point.len())
        .map(|(device, point, kind, options)| {
            format!("{kind} on {device}, mounted at {point} ({options})")
        })
}

/// The value of the first `name: value` line.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_string())
    })
}

/// Size of the raw sync file; writes wrap around in it.
const RAW_CAPACITY: u64 = 16 << 20;

/// The raw limit of a synced write: one entry's bytes (116) written with `pwrite` at
/// successive offsets of a preallocated, synced file, then `fdatasync`.
#[derive(Debug)]
pub struct RawSync {
    path: PathBuf,
    file: File,
    offset: u64,
}

impl RawSync {
    pub fn new(dir: &Path) -> io::Result<Self> {
        let path = dir.join("raw.dat");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let chunk = vec![0xFFu8; 1 << 20];
        let mut offset = 0;
        while offset < RAW_CAPACITY {
            file.write_all_at(&chunk, offset)?;
            offset += chunk.len() as u64;
        }
        file.sync_all()?;
        Ok(Self {
            path,
            file,
            offset: 0,
        })
    }

    /// Writes and syncs until `budget` has passed.
    pub fn run_for(&mut self, budget: Duration) -> io::Result<Rate> {
        let frame = [0x5Au8; ENTRY_LEN as usize];
        let start = Instant::now();
        let mut operations = 0;
        loop {
            self.file.write_all_at(&frame, self.offset)?;
            self.file.sync_data()?;
            self.offset = (self.offset + ENTRY_LEN) % (RAW_CAPACITY - ENTRY_LEN);
            operations += 1;
            let elapsed = start.elapsed();
            if elapsed >= budget {
                return Ok(Rate {
                    operations,
                    elapsed,
                });
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Bytes this process has caused to be written to storage so far (`write_bytes` less
/// `cancelled_write_bytes` of /proc/self/io, all threads); `None` where the kernel does not
/// keep I/O accounting.
pub fn written_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/io").ok()?;
    let number = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    Some(number("write_bytes:")?.saturating_sub(number("cancelled_write_bytes:")?))
}

/// Bytes allocated on disk (`st_blocks` x 512: preallocated but unwritten space does not
/// count) to the regular files under `dir` whose names end with `suffix` (all: "").
pub fn disk_usage(dir: &Path, suffix: &str) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += disk_usage(&entry.path(), suffix)?;
        } else if kind.is_file() && entry.file_name().to_string_lossy().ends_with(suffix) {
            total += entry.metadata()?.blocks() * 512;
        }
    }
    Ok(total)
}

/// Reads every regular file under `dir` sequentially with a 4 MiB buffer; returns the bytes
/// read. The raw limit beside a recovery: reading what is on disk once.
pub fn read_all(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut buffer = vec![0u8; 4 << 20];
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += read_all(&entry.path())?;
        } else if kind.is_file() {
            let mut file = File::open(entry.path())?;
            loop {
                let read = file.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                total += read as u64;
            }
        }
    }
    Ok(total)
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn the_mount_of_a_directory_is_the_longest_matching_mount_point() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\ntmpfs /tmp tmpfs rw 0 0\n";
        assert_eq!(
            mount_of(mounts, Path::new("/tmp/x")).unwrap(),
            "tmpfs on tmpfs, mounted at /tmp (rw)"
        );
    }
}
