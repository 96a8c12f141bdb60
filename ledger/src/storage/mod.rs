//! One directory of files, behind a trait, so that the log and the snapshots can run on a real
//! disk (`FileStorage`) or in memory (`SimStorage`), where tests crash, tear, corrupt and fill
//! the disk at will.
//!
//! The trait is deliberately small and speaks only of what the log needs: whole files that
//! grow by appending (or fill space written with zeros ahead), are read back, truncated,
//! renamed and removed. Durability is explicit:
//! nothing is durable until `sync`/`AppendFile::sync_data` (file contents) or `sync_dir`
//! (creations, renames and removals) has returned `Ok`.
//!
//! `file` holds the real directory, `sim` the simulated one; both are re-exported here.

use std::io;
use std::sync::atomic::AtomicBool;

mod file;
mod sim;

pub use file::{FileAppend, FileStorage, ZEROED_PIECE_BYTES};
pub use sim::{SIM_SECTOR_BYTES, SimAppend, SimStorage, Tear};

/// A directory of files.
///
/// Names are plain file names (no separators, not `.` or `..`). Methods that name a missing file
/// fail with `io::ErrorKind::NotFound`.
pub trait Storage: Send + Sync + 'static {
    /// A file open for appending.
    type Append: AppendFile;

    /// Names of the regular files in the directory, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates `name`, empty, truncating it if it exists. The new name is durable only after
    /// `sync_dir`.
    fn create(&self, name: &str) -> io::Result<Self::Append>;
    /// Creates `name` (truncating it if it exists) holding `len_bytes` zero bytes, written
    /// out rather than left as a hole, and makes them durable; appends to the returned file
    /// overwrite the zeros from the start. Overwriting space already written costs a later
    /// fdatasync less than growing the file does: no block allocation or size change to log.
    /// `FileStorage` writes and syncs the zeros a piece of `ZEROED_PIECE_BYTES` at a time, at
    /// most `bytes_per_second` (0: as fast as it can), so that another file's fdatasync on the
    /// same disk never queues behind many of them, and gives up with `ErrorKind::Interrupted`
    /// at the next piece once `stop` is set. The name is durable only after `sync_dir`; on
    /// error a partial file may be left.
    fn create_zeroed(
        &self,
        name: &str,
        len_bytes: u64,
        bytes_per_second: u64,
        stop: &AtomicBool,
    ) -> io::Result<Self::Append>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, name: &str) -> io::Result<Self::Append>;
    /// The file's length in bytes.
    fn len_bytes(&self, name: &str) -> io::Result<u64>;
    /// The whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Reads into `buf` from `offset`; returns how many bytes were read, fewer than `buf.len()`
    /// only at the end of the file.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Cuts (or extends with zeros) the file to `len_bytes`; durable after `sync`.
    fn truncate(&self, name: &str, len_bytes: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists; durable after `sync_dir`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes the file; durable after `sync_dir`.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the file's contents durable (fdatasync).
    fn sync(&self, name: &str) -> io::Result<()>;
    /// Bytes that files here can still grow by, as far as the file system tells.
    fn available_bytes(&self) -> io::Result<u64>;
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
}

/// A file open for appending, at a position of its own: the end of the file when opened, the
/// start when created (by `create_zeroed` too, so that appends overwrite the zeros).
pub trait AppendFile: Send + 'static {
    /// Writes all of `bytes` at the append position and moves it past them (the write may be
    /// torn by a crash until `sync_data` returns).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// An I/O error, with the file and what was being done to it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {action} failed: {source}")]
pub struct StorageError {
    /// The file name, or "directory" for the directory itself.
    pub file: String,
    pub action: &'static str,
    #[source]
    pub source: io::Error,
}

impl StorageError {
    pub(crate) fn new(file: &str, action: &'static str, source: io::Error) -> Self {
        StorageError {
            file: file.to_owned(),
            action,
            source,
        }
    }
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a plain file name: {name:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates `name` holding `bytes`, synced.
    pub(super) fn append_via_create(storage: &impl Storage, name: &str, bytes: &[u8]) {
        let mut file = storage.create(name).expect("create");
        file.append(bytes).expect("append");
        file.sync_data().expect("sync");
    }

    /// Both storages: zeros of the asked length, appends overwriting them from the start,
    /// and (simulated) a crash keeping the zeros, losing the unsynced overwrite or tearing it.
    #[test]
    fn zeroed_files_are_overwritten_from_the_start() {
        fn check(storage: &impl Storage) {
            let mut file = storage
                .create_zeroed("z", 10_000, 0, &AtomicBool::new(false))
                .expect("create zeroed");
            assert_eq!(storage.read("z").expect("read"), vec![0u8; 10_000]);
            file.append(b"head").expect("append");
            file.append(b"er").expect("append");
            file.sync_data().expect("sync");
            let bytes = storage.read("z").expect("read");
            assert_eq!((&bytes[..6], bytes.len()), (&b"header"[..], 10_000));
            assert!(bytes[6..].iter().all(|&b| b == 0));
            let mut reopened = storage.open_append("z").expect("open");
            reopened.append(b"!").expect("append at the end");
            assert_eq!(storage.len_bytes("z").expect("len"), 10_001);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        check(&FileStorage::open(dir.path()).expect("open"));
        let sim = SimStorage::new();
        check(&sim);

        let sim = SimStorage::new();
        let mut file = sim
            .create_zeroed("z", 3 * SIM_SECTOR_BYTES, 0, &AtomicBool::new(false))
            .expect("zeroed");
        sim.sync_dir().expect("sync_dir");
        assert_eq!(
            sim.sync_count(),
            0,
            "preparing counts no sync of the caller's"
        );
        file.append(&[7u8; 100]).expect("append");
        file.sync_data().expect("sync");
        let long = vec![9u8; 2 * SIM_SECTOR_BYTES as usize];
        file.append(&long).expect("append");
        let lost = sim.crash();
        let bytes = lost.read("z").expect("read");
        assert_eq!(bytes.len() as u64, 3 * SIM_SECTOR_BYTES, "the zeros stay");
        assert!(bytes[..100].iter().all(|&b| b == 7));
        assert!(
            bytes[100..].iter().all(|&b| b == 0),
            "the unsynced write is lost"
        );

        let mut file = lost.open_append("z").expect("open");
        let mut cuts = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let storage = lost.crash();
            let mut again = storage
                .create_zeroed("y", 3 * SIM_SECTOR_BYTES, 0, &AtomicBool::new(false))
                .expect("zeroed");
            storage.sync_dir().expect("sync_dir");
            again.append(&[1u8; 100]).expect("append");
            again.append(&long).expect("append");
            let torn = storage
                .crash_torn(seed, Tear::Sector)
                .read("y")
                .expect("read");
            assert_eq!(
                torn.len() as u64,
                3 * SIM_SECTOR_BYTES,
                "overwrites keep the length"
            );
            let ones = torn.iter().take_while(|&&b| b == 1).count();
            let nines = torn[ones..].iter().take_while(|&&b| b == 9).count();
            assert!(
                torn[ones + nines..].iter().all(|&b| b == 0),
                "a prefix, then zeros"
            );
            if nines > 0 {
                assert_eq!(ones, 100, "the second write survives only after the first");
                assert!(
                    nines == long.len() || ((100 + nines) as u64).is_multiple_of(SIM_SECTOR_BYTES),
                    "whole, or cut at a sector: {nines}"
                );
            }
            cuts.insert((ones, nines));
        }
        assert!(cuts.len() >= 3, "tears vary with the seed: {cuts:?}");
        assert!(
            file.append(b"x").is_err(),
            "a handle from before a crash is dead"
        );
    }
}
