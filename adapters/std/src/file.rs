//! [`FileStorage`]: a [`Storage`] kept in one preallocated file inside a locked data directory.
//!
//! Layout of a data directory:
//!
//! - `LOCK` ([`LOCK_FILE_NAME`]): held with an exclusive `flock` while a [`FileStorage`] is open,
//!   and holding the owner's process id for the error message another opener gets;
//! - `log.bedrock` ([`DATA_FILE_NAME`]): the storage itself, `capacity` bytes, in the default
//!   [`FileMode::Filled`];
//! - or `sparse.bedrock` ([`SPARSE_DATA_FILE_NAME`]) in [`FileMode::Sparse`] (opened with
//!   [`FileStorage::open_mode`]): a sparse file whose erased value is 0x00.
//!
//! # The two modes
//!
//! - **Filled** (the default, what [`FileStorage::open`] opens): the erased value is 0xFF, as on
//!   NOR flash. The data file is created by writing 0xFF over all of it, and an erase writes
//!   0xFF: every byte erased is a byte written.
//! - **Sparse**: the erased value is 0x00. The data file is created with `set_len` (a hole: no
//!   block allocated), and an erase punches a hole (`fallocate(FALLOC_FL_PUNCH_HOLE |
//!   FALLOC_FL_KEEP_SIZE)`), freeing the blocks instead of writing them; where the file system
//!   does not support holes (`EOPNOTSUPP`) the erase writes zeros instead. A large store costs
//!   nothing to create and erasing costs no writes.
//!
//! The mode is recorded by the data file's name: a directory holding one kind of store is never
//! opened in the other mode (its erased bytes would read as written data), but refused with
//! [`FileError::ModeMismatch`].
//!
//! # What is guaranteed
//!
//! - A new data file appears complete or not at all: it is filled with the erased value (sparse:
//!   given its size), synced, renamed into place, and the directory is synced (as is the parent of every directory this
//!   creates). A file half-filled by a crash is never mistaken for a store.
//! - Two processes (or two opens in one process) never use one directory at the same time.
//! - Every request is checked with [`check_range`]: reads aligned to the read size, writes to the
//!   write size, erases to the erase size, all inside the capacity. A rejected request does
//!   nothing.
//! - [`Storage::sync`] is `fdatasync`. Any error from a write, an erase or a sync **poisons** the
//!   store: every later write, erase and sync fails with [`FileError::Poisoned`] and the sync is
//!   never retried (Linux may already have dropped the dirty pages: PostgreSQL's "fsyncgate").
//!   Reads keep working.
//!
//! # What is not guaranteed
//!
//! - Write-once words are not checked: that would cost a read per write. The simulator and
//!   `RamStorage` check them; code that passes their tests does not rely on overwriting.
//! - After a crash, unsynced writes may be lost or torn at the file system's granularity, as the
//!   [storage contract](bedrock::storage) allows.
//! - The lock is advisory: a program that ignores `LOCK` can still damage the store.
//! - Reopening a poisoned store does not make it healthy: the page cache may hold data that never
//!   reached the disk. Recovery must re-read and re-check everything.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bedrock::storage::{check_range, ContractError, Geometry, GeometryError, Storage};

/// Reads at least this large are followed by a read-ahead hint for what comes next.
const READ_AHEAD_AFTER: usize = 256 * 1024;
/// How far ahead the hint reaches.
const READ_AHEAD: u64 = 8 * 1024 * 1024;

/// Name of the data file inside the data directory.
pub const DATA_FILE_NAME: &str = "log.bedrock";
/// Name of the data file of a [`FileMode::Sparse`] store.
pub const SPARSE_DATA_FILE_NAME: &str = "sparse.bedrock";
/// Name of the lock file inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// Bytes written per system call when filling or erasing.
const FILL_CHUNK_BYTES: u64 = 1 << 20;

/// How to open a [`FileStorage`]: its geometry and, optionally, the capacity it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    /// The data file's size. `None`: adopt the size of an existing file, or create one of
    /// [`FileOptions::DEFAULT_CAPACITY`]. `Some`: create one of this size, or refuse an existing
    /// file of another size.
    pub capacity: Option<u64>,
    /// Read alignment in bytes. Default 1.
    pub read_size: u32,
    /// Write alignment (the word) in bytes. Default 8.
    pub write_size: u32,
    /// Erase alignment (the block) in bytes. Default 65536.
    pub erase_size: u32,
}

impl FileOptions {
    /// Capacity of a store created without an explicit one: 64 MiB.
    pub const DEFAULT_CAPACITY: u64 = 64 << 20;

    fn geometry(&self, capacity: u64, mode: FileMode) -> Result<Geometry, FileError> {
        let geometry = Geometry {
            read_size: self.read_size,
            write_size: self.write_size,
            erase_size: self.erase_size,
            capacity,
            erased_value: mode.erased_value(),
        };
        geometry.validate().map_err(FileError::BadGeometry)?;
        Ok(geometry)
    }
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            capacity: None,
            read_size: 1,
            write_size: 8,
            erase_size: 65536,
        }
    }
}

/// How a store's data file is kept; see the [module docs](self#the-two-modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileMode {
    /// Erased value 0xFF; the file is filled at creation and an erase writes 0xFF.
    #[default]
    Filled,
    /// Erased value 0x00; the file is sparse and an erase punches a hole.
    Sparse,
}

impl FileMode {
    /// The value erased bytes read as.
    pub fn erased_value(self) -> u8 {
        match self {
            Self::Filled => 0xFF,
            Self::Sparse => 0x00,
        }
    }

    /// The data file's name in this mode.
    pub fn data_file_name(self) -> &'static str {
        match self {
            Self::Filled => DATA_FILE_NAME,
            Self::Sparse => SPARSE_DATA_FILE_NAME,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Filled => Self::Sparse,
            Self::Sparse => Self::Filled,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Filled => "filled",
            Self::Sparse => "sparse",
        }
    }
}

/// Why a [`FileStorage`] call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileError {
    /// A system call failed. For a write, an erase or a sync the store is now poisoned.
    Io {
        /// What was being done, as a verb phrase ("sync", "write to").
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another open [`FileStorage`] holds the directory's lock; nothing changed.
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The holder's process id, if it could be read.
        holder_pid: Option<u32>,
    },
    /// The options describe an unusable geometry; nothing was created.
    BadGeometry(GeometryError),
    /// The existing data file's size differs from the requested capacity; nothing changed.
    CapacityMismatch {
        /// The data file.
        path: PathBuf,
        /// Its size in bytes.
        existing: u64,
        /// The capacity the options asked for.
        requested: u64,
    },
    /// The directory holds a store of the other [`FileMode`]; nothing changed.
    ModeMismatch {
        /// The data directory.
        dir: PathBuf,
        /// The mode of the store it holds.
        found: FileMode,
        /// The mode it was opened in.
        requested: FileMode,
    },
    /// A misaligned or out-of-range request; nothing changed.
    Contract(ContractError),
    /// An earlier write, erase or sync failed; nothing changed and nothing will.
    Poisoned {
        /// The operation that failed first ("write", "erase" or "sync").
        failed_operation: &'static str,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io {
                action,
                path,
                source,
            } => write!(f, "could not {action} {}: {source}", path.display()),
            Self::Locked { dir, holder_pid } => {
                write!(
                    f,
                    "data directory {} is locked by another process",
                    dir.display()
                )?;
                match holder_pid {
                    Some(pid) => write!(f, " (pid {pid})"),
                    None => write!(f, " (pid unknown)"),
                }
            }
            Self::BadGeometry(error) => write!(f, "{}", geometry_sentence(error)),
            Self::CapacityMismatch {
                path,
                existing,
                requested,
            } => write!(
                f,
                "data file {} holds {existing} bytes but {requested} were requested; \
                 open it without a capacity to adopt its size",
                path.display()
            ),
            Self::ModeMismatch {
                dir,
                found,
                requested,
            } => write!(
                f,
                "data directory {} holds a {} store ({}), not a {} one ({}): it is not a \
                 store of this kind",
                dir.display(),
                found.name(),
                found.data_file_name(),
                requested.name(),
                requested.data_file_name()
            ),
            Self::Contract(error) => write!(f, "{}", contract_sentence(error)),
            Self::Poisoned { failed_operation } => write!(
                f,
                "store is poisoned: an earlier {failed_operation} failed, \
                 so nothing more is written to it"
            ),
        }
    }
}

fn geometry_sentence(error: &GeometryError) -> &'static str {
    match error {
        GeometryError::NotPowerOfTwo => {
            "the geometry is unusable: read, write and erase sizes must be powers of two"
        }
        GeometryError::Misnested => {
            "the geometry is unusable: the read size must divide the write size, \
             and the write size the erase size"
        }
        GeometryError::BadCapacity => {
            "the geometry is unusable: the capacity must be a whole, non-zero number of erase blocks"
        }
        _ => "the geometry is unusable",
    }
}

fn contract_sentence(error: &ContractError) -> &'static str {
    match error {
        ContractError::Misaligned => {
            "request rejected: its offset or length is not a multiple of the operation's unit"
        }
        ContractError::OutOfRange => "request rejected: it reaches past the end of the store",
        ContractError::WordWrittenTwice => "request rejected: it writes a word twice",
        _ => "request rejected: it breaks the storage contract",
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ContractError> for FileError {
    fn from(error: ContractError) -> Self {
        Self::Contract(error)
    }
}

/// Wraps an [`io::Error`] with what was being done and where.
fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Operations a test can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Write,
    Sync,
}

/// A [`Storage`] in a preallocated file, locked against other openers. See the
/// [module docs](self).
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Held for its `flock`, released when dropped.
    _lock: File,
    geometry: Geometry,
    mode: FileMode,
    poisoned_by: Option<&'static str>,
    #[cfg(test)]
    failing: Option<Fault>,
}

impl FileStorage {
    /// Asks the kernel to start reading `[offset, offset + READ_AHEAD)` now: a recovery that
    /// streams the log in large reads then overlaps its parsing with the disk. Only a hint; an
    /// error is ignored.
    #[allow(unsafe_code)]
    fn read_ahead(&self, offset: u64) {
        use std::os::fd::AsRawFd;
        let Ok(offset) = libc::off_t::try_from(offset) else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor belongs to
        // `self.file`, which is open for the duration of the call.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset,
                READ_AHEAD as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }

    /// Punches a hole over `[offset, offset + len)` (the size unchanged): the range reads as
    /// zeros and its blocks are freed. `Unsupported` when the file system has no holes.
    #[allow(unsafe_code)]
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor belongs to
        // `self.file`, which is open for the duration of the call.
        let result = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match result {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Opens the store in `dir`, creating the directory and an erased data file if needed, in
    /// [`FileMode::Filled`] (see [`FileStorage::open_mode`]).
    ///
    /// Fails with [`FileError::Locked`] if another [`FileStorage`] has the directory open, with
    /// [`FileError::CapacityMismatch`] if an existing file has another size than
    /// `options.capacity`, with [`FileError::ModeMismatch`] if the directory holds a sparse
    /// store, and with [`FileError::BadGeometry`] for unusable sizes.
    pub fn open(dir: &Path, options: FileOptions) -> Result<Self, FileError> {
        Self::open_mode(dir, options, FileMode::Filled)
    }

    /// Opens the store of `mode` in `dir`, creating the directory and an erased data file if
    /// needed. As [`FileStorage::open`]; a directory holding a store of the other mode is
    /// refused with [`FileError::ModeMismatch`].
    pub fn open_mode(dir: &Path, options: FileOptions, mode: FileMode) -> Result<Self, FileError> {
        let requested = options.capacity.unwrap_or(FileOptions::DEFAULT_CAPACITY);
        let new_geometry = options.geometry(requested, mode)?;
        create_dir_durably(dir)?;
        let lock = lock_dir(dir)?;
        if dir.join(mode.other().data_file_name()).exists() {
            return Err(FileError::ModeMismatch {
                dir: dir.to_path_buf(),
                found: mode.other(),
                requested: mode,
            });
        }
        let path = dir.join(mode.data_file_name());
        let (file, geometry) = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => {
                let geometry = adopt_size(&file, &path, options, mode)?;
                (file, geometry)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let file = create_data_file(dir, &path, &new_geometry, mode)?;
                (file, new_geometry)
            }
            Err(error) => return Err(io_error("open data file", &path)(error)),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            file,
            _lock: lock,
            geometry,
            mode,
            poisoned_by: None,
            #[cfg(test)]
            failing: None,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data file.
    pub fn data_path(&self) -> &Path {
        &self.path
    }

    /// How the data file is kept.
    pub fn mode(&self) -> FileMode {
        self.mode
    }

    /// Whether an earlier write, erase or sync failed.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned_by.is_some()
    }

    fn check_not_poisoned(&self) -> Result<(), FileError> {
        match self.poisoned_by {
            Some(failed_operation) => Err(FileError::Poisoned { failed_operation }),
            None => Ok(()),
        }
    }

    /// Passes `result` on, poisoning the store if it is an error.
    fn poison_on_error(
        &mut self,
        result: io::Result<()>,
        operation: &'static str,
        action: &'static str,
    ) -> Result<(), FileError> {
        result.map_err(|source| {
            self.poisoned_by = Some(operation);
            io_error(action, &self.path)(source)
        })
    }

    #[cfg(test)]
    fn injected(&self, fault: Fault) -> io::Result<()> {
        match self.failing == Some(fault) {
            true => Err(io::Error::other("injected fault")),
            false => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn injected(&self, _fault: Fault) -> io::Result<()> {
        Ok(())
    }
}

/// Creates `dir` and any missing parents, syncing the parent of each one created so that the new
/// entries survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), FileError> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(path) = cursor.filter(|path| !path.as_os_str().is_empty() && !path.exists()) {
        missing.push(path);
        cursor = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_error("create data directory", dir))?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("sync directory", dir))
}

/// Takes the directory's exclusive lock and writes this process's id into it.
fn lock_dir(dir: &Path) -> Result<File, FileError> {
    let path = dir.join(LOCK_FILE_NAME);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error("open lock file", &path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder_pid = read_pid(&mut lock);
            let dir = dir.to_path_buf();
            return Err(FileError::Locked { dir, holder_pid });
        }
        Err(TryLockError::Error(error)) => return Err(io_error("lock", &path)(error)),
    }
    let pid = format!("{}\n", std::process::id());
    lock.set_len(0)
        .and_then(|()| lock.write_all_at(pid.as_bytes(), 0))
        .map_err(io_error("write the process id into", &path))?;
    Ok(lock)
}

fn read_pid(lock: &mut File) -> Option<u32> {
    let mut text = String::new();
    lock.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Checks an existing data file's size against the options and returns its geometry.
fn adopt_size(
    file: &File,
    path: &Path,
    options: FileOptions,
    mode: FileMode,
) -> Result<Geometry, FileError> {
    let existing = file
        .metadata()
        .map_err(io_error("read the size of", path))?
        .len();
    match options.capacity {
        Some(requested) if requested != existing => Err(FileError::CapacityMismatch {
            path: path.to_path_buf(),
            existing,
            requested,
        }),
        _ => options.geometry(existing, mode),
    }
}

/// Creates the erased data file under a temporary name and renames it into place once it is
/// complete and synced, so a crash never leaves a partly filled store behind. A sparse file is
/// only given its size: its holes read as zeros.
fn create_data_file(
    dir: &Path,
    path: &Path,
    geometry: &Geometry,
    mode: FileMode,
) -> Result<File, FileError> {
    let temporary = dir.join(format!("{}.creating", mode.data_file_name()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(io_error("create data file", &temporary))?;
    let filled = match mode {
        FileMode::Filled => fill(&file, 0, geometry.capacity, geometry.erased_value),
        FileMode::Sparse => file.set_len(geometry.capacity),
    };
    filled
        .and_then(|()| file.sync_all())
        .map_err(io_error("fill data file", &temporary))?;
    fs::rename(&temporary, path).map_err(io_error("rename into place", &temporary))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes `len` copies of `value` at `offset`.
fn fill(file: &File, offset: u64, len: u64, value: u8) -> io::Result<()> {
    let chunk = vec![value; len.min(FILL_CHUNK_BYTES) as usize];
    let mut done = 0;
    while done < len {
        let step = (len - done).min(chunk.len() as u64);
        file.write_all_at(&chunk[..step as usize], offset + done)?;
        done += step;
    }
    Ok(())
}

impl Storage for FileStorage {
    type Error = FileError;

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FileError> {
        let geometry = self.geometry;
        check_range(
            offset,
            buf.len() as u64,
            geometry.read_size,
            geometry.capacity,
        )?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(io_error("read from", &self.path))?;
        if buf.len() >= READ_AHEAD_AFTER {
            self.read_ahead(offset + buf.len() as u64);
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FileError> {
        self.check_not_poisoned()?;
        let geometry = self.geometry;
        check_range(
            offset,
            data.len() as u64,
            geometry.write_size,
            geometry.capacity,
        )?;
        let result = self
            .injected(Fault::Write)
            .and_then(|()| self.file.write_all_at(data, offset));
        self.poison_on_error(result, "write", "write to")
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<(), FileError> {
        self.check_not_poisoned()?;
        let geometry = self.geometry;
        check_range(offset, len, geometry.erase_size, geometry.capacity)?;
        let result = match self.mode {
            FileMode::Filled => fill(&self.file, offset, len, geometry.erased_value),
            FileMode::Sparse => match self.punch_hole(offset, len) {
                Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    fill(&self.file, offset, len, 0)
                }
                result => result,
            },
        };
        self.poison_on_error(result, "erase", "erase part of")
    }

    fn sync(&mut self) -> Result<(), FileError> {
        self.check_not_poisoned()?;
        let result = self
            .injected(Fault::Sync)
            .and_then(|()| self.file.sync_data());
        self.poison_on_error(result, "sync", "sync")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: FileOptions = FileOptions {
        capacity: Some(2 * 4096),
        read_size: 1,
        write_size: 8,
        erase_size: 4096,
    };

    fn read(storage: &mut FileStorage, offset: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        storage.read(offset, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_new_store_is_erased_and_round_trips_across_reopening() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("a/b/store");
        let mut storage = FileStorage::open(&dir, SMALL).unwrap();
        assert_eq!(storage.geometry().capacity, 8192);
        assert_eq!(
            fs::read(dir.join(DATA_FILE_NAME)).unwrap(),
            vec![0xFF; 8192]
        );
        storage.write(4096, b"bedrock!").unwrap();
        storage.sync().unwrap();
        drop(storage);

        let adopt = FileOptions {
            capacity: None,
            ..SMALL
        };
        let mut storage = FileStorage::open(&dir, adopt).unwrap();
        assert_eq!(storage.geometry().capacity, 8192);
        assert_eq!(read(&mut storage, 4096, 8), b"bedrock!");
        storage.erase(4096, 4096).unwrap();
        assert_eq!(read(&mut storage, 4096, 8), [0xFF; 8]);
        assert!(!dir.join(format!("{DATA_FILE_NAME}.creating")).exists());
    }

    #[test]
    fn misaligned_and_out_of_range_requests_are_rejected() {
        let temporary = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(temporary.path(), SMALL).unwrap();
        let misaligned = FileError::Contract(ContractError::Misaligned);
        let out_of_range = FileError::Contract(ContractError::OutOfRange);
        for (result, expected) in [
            (storage.write(3, &[0; 8]), &misaligned),
            (storage.write(0, &[0; 5]), &misaligned),
            (storage.write(8192, &[0; 8]), &out_of_range),
            (storage.write(u64::MAX - 7, &[0; 8]), &out_of_range),
            (storage.erase(8, 4096), &misaligned),
            (storage.erase(4096, 8192), &out_of_range),
            (storage.read(8190, &mut [0; 4]), &out_of_range),
        ] {
            assert_eq!(result.unwrap_err().to_string(), expected.to_string());
        }
        assert_eq!(read(&mut storage, 0, 8192), vec![0xFF; 8192]);
        assert!(!storage.is_poisoned());
    }

    #[test]
    fn a_second_open_fails_while_the_first_is_alive() {
        let temporary = tempfile::tempdir().unwrap();
        let first = FileStorage::open(temporary.path(), SMALL).unwrap();
        let error = FileStorage::open(temporary.path(), SMALL).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(error, FileError::Locked { holder_pid: Some(holder), .. } if holder == pid),
            "{error:?}"
        );
        let expected = format!(
            "data directory {} is locked by another process (pid {pid})",
            temporary.path().display()
        );
        assert_eq!(error.to_string(), expected);
        drop(first);
        FileStorage::open(temporary.path(), SMALL).unwrap();
    }

    #[test]
    fn an_existing_file_of_another_size_is_refused() {
        let temporary = tempfile::tempdir().unwrap();
        drop(FileStorage::open(temporary.path(), SMALL).unwrap());
        let bigger = FileOptions {
            capacity: Some(4 * 4096),
            ..SMALL
        };
        let error = FileStorage::open(temporary.path(), bigger).unwrap_err();
        assert!(
            matches!(
                error,
                FileError::CapacityMismatch {
                    existing: 8192,
                    requested: 16384,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error
            .to_string()
            .contains("holds 8192 bytes but 16384 were requested"));
    }

    #[test]
    fn an_unusable_geometry_creates_nothing() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("store");
        let odd = FileOptions {
            write_size: 6,
            ..SMALL
        };
        let error = FileStorage::open(&dir, odd).unwrap_err();
        assert!(matches!(
            error,
            FileError::BadGeometry(GeometryError::NotPowerOfTwo)
        ));
        assert!(error.to_string().contains("powers of two"));
        assert!(!dir.exists());
    }

    #[test]
    fn a_failed_sync_poisons_the_store_and_is_never_retried() {
        let temporary = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(temporary.path(), SMALL).unwrap();
        storage.write(0, &[1; 8]).unwrap();
        storage.failing = Some(Fault::Sync);
        let error = storage.sync().unwrap_err();
        assert!(
            matches!(error, FileError::Io { action: "sync", .. }),
            "{error:?}"
        );
        assert!(storage.is_poisoned());

        // The fault is gone, yet nothing gets through: a retried sync would succeed here.
        storage.failing = None;
        assert!(matches!(storage.sync(), Err(FileError::Poisoned { .. })));
        assert!(matches!(
            storage.write(8, &[2; 8]),
            Err(FileError::Poisoned { .. })
        ));
        assert!(matches!(
            storage.erase(0, 4096),
            Err(FileError::Poisoned { .. })
        ));
        let error = storage.write(8, &[2; 8]).unwrap_err();
        let expected =
            "store is poisoned: an earlier sync failed, so nothing more is written to it";
        assert_eq!(error.to_string(), expected);

        let on_disk = fs::read(storage.data_path()).unwrap();
        assert_eq!(on_disk[..16], [[1; 8], [0xFF; 8]].concat());
        assert_eq!(read(&mut storage, 0, 8), [1; 8], "reads keep working");
    }

    #[test]
    fn a_failed_write_poisons_the_store() {
        let temporary = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(temporary.path(), SMALL).unwrap();
        storage.failing = Some(Fault::Write);
        let error = storage.write(0, &[1; 8]).unwrap_err();
        assert!(
            error.to_string().starts_with("could not write to "),
            "{error}"
        );
        storage.failing = None;
        assert!(matches!(
            storage.sync(),
            Err(FileError::Poisoned {
                failed_operation: "write"
            })
        ));
    }

    #[test]
    fn a_sparse_store_is_created_empty_and_reads_zeros_where_erased() {
        use std::os::unix::fs::MetadataExt;
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("sparse");
        let big = FileOptions {
            capacity: Some(64 << 20),
            ..SMALL
        };
        let mut storage = FileStorage::open_mode(&dir, big, FileMode::Sparse).unwrap();
        assert_eq!(storage.mode(), FileMode::Sparse);
        assert_eq!(storage.geometry().erased_value, 0);
        let path = dir.join(SPARSE_DATA_FILE_NAME);
        assert_eq!(storage.data_path(), path);
        assert!(!dir.join(DATA_FILE_NAME).exists());
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!(metadata.len(), 64 << 20);
        // Created as a hole: (almost) nothing allocated.
        assert!(
            metadata.blocks() * 512 < 1 << 20,
            "{} blocks",
            metadata.blocks()
        );
        assert_eq!(read(&mut storage, 0, 4096), vec![0; 4096]);

        let data = vec![0xA5; 1 << 20];
        storage.write(1 << 20, &data).unwrap();
        storage.sync().unwrap();
        let written = fs::metadata(&path).unwrap().blocks();
        assert!(
            written * 512 >= 1 << 20,
            "{written} blocks after writing 1 MiB"
        );
        drop(storage);

        let adopt = FileOptions {
            capacity: None,
            ..SMALL
        };
        let mut storage = FileStorage::open_mode(&dir, adopt, FileMode::Sparse).unwrap();
        assert_eq!(storage.geometry().capacity, 64 << 20);
        assert_eq!(read(&mut storage, 1 << 20, 8), [0xA5; 8]);
        storage.erase(1 << 20, 1 << 20).unwrap();
        storage.sync().unwrap();
        assert_eq!(read(&mut storage, 1 << 20, 1 << 20), vec![0; 1 << 20]);
        let punched = fs::metadata(&path).unwrap().blocks();
        // Where the file system supports holes, the erase freed the blocks; elsewhere it
        // wrote zeros (the blocks stay).
        if punched < written {
            assert!(punched * 512 < 1 << 20, "{punched} blocks after the erase");
        }
        // The erased range takes new writes.
        storage.write(1 << 20, &[7; 8]).unwrap();
        assert_eq!(read(&mut storage, 1 << 20, 16), [[7; 8], [0; 8]].concat());
        assert!(!dir
            .join(format!("{SPARSE_DATA_FILE_NAME}.creating"))
            .exists());
    }

    #[test]
    fn a_store_is_never_opened_in_the_other_mode() {
        let temporary = tempfile::tempdir().unwrap();
        let filled = temporary.path().join("filled");
        drop(FileStorage::open(&filled, SMALL).unwrap());
        let error = FileStorage::open_mode(&filled, SMALL, FileMode::Sparse).unwrap_err();
        assert!(
            matches!(
                error,
                FileError::ModeMismatch {
                    found: FileMode::Filled,
                    requested: FileMode::Sparse,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("holds a filled store (log.bedrock), not a sparse one"),
            "{error}"
        );
        assert!(!filled.join(SPARSE_DATA_FILE_NAME).exists());

        let sparse = temporary.path().join("sparse");
        drop(FileStorage::open_mode(&sparse, SMALL, FileMode::Sparse).unwrap());
        let error = FileStorage::open(&sparse, SMALL).unwrap_err();
        assert!(
            matches!(
                error,
                FileError::ModeMismatch {
                    found: FileMode::Sparse,
                    requested: FileMode::Filled,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!sparse.join(DATA_FILE_NAME).exists());
        // Each still opens in its own mode.
        FileStorage::open(&filled, SMALL).unwrap();
        FileStorage::open_mode(&sparse, SMALL, FileMode::Sparse).unwrap();
    }
}
