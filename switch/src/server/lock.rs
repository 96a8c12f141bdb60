//! One switch per data directory: an exclusive `flock` on `data_dir/LOCK`, held for as long as
//! the switch runs.
//!
//! Two switches on one directory would each recover the same log and then write over each
//! other: snapshots, pruned segments, reports. The lock is taken before anything in the
//! directory is read or written. The kernel releases it when the file is closed, which happens
//! at a clean stop, at a crash and at kill -9 alike, so a stale lock never blocks a restart.
//! The file itself stays (deleting it would let two processes lock two different files of
//! the same name); what it holds, the holder's pid, is only for the message of a refused
//! start. A `flock` belongs to an open file description, so a second switch in the same
//! process is refused as well.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// A held lock on a data directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another switch (pid {holder}, which holds {lock}): \
         stop it first, or give this one another [server] data_dir"
    )]
    Held {
        dir: PathBuf,
        lock: PathBuf,
        /// The pid the holder wrote, or "unknown" if it has not written one yet.
        holder: String,
    },
    #[error("locking the data directory: {path}: {action}: {message}")]
    Io {
        path: PathBuf,
        action: &'static str,
        message: String,
    },
}

impl DataDirLock {
    /// Takes the lock on `data_dir` (which must exist) without waiting, and writes this
    /// process's pid into the lock file.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |action: &'static str| {
            let path = path.clone();
            move |e: std::io::Error| LockError::Io {
                path,
                action,
                message: e.to_string(),
            }
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open"))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                // The holder may not have written its pid yet: then it is unknown.
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => pid.to_string(),
                    Err(_) => "unknown".to_string(),
                };
                return Err(LockError::Held {
                    dir: data_dir.to_path_buf(),
                    lock: path,
                    holder,
                });
            }
            Err(e) => return Err(io("flock")(e.into())),
        }
        file.set_len(0).map_err(io("truncate"))?;
        file.rewind().map_err(io("seek"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("write"))?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In one process: the second lock on a directory is refused naming this pid, another
    /// directory locks independently, and a released lock can be taken again.
    #[test]
    fn a_directory_is_locked_once_per_open_lock() {
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let first = DataDirLock::acquire(a.path()).expect("first lock");
        match DataDirLock::acquire(a.path()) {
            Err(LockError::Held { dir, lock, holder }) => {
                assert_eq!(dir, a.path());
                assert_eq!(lock, a.path().join(LOCK_FILE));
                assert_eq!(holder, std::process::id().to_string());
            }
            other => panic!("a second lock on the same directory: {other:?}"),
        }
        let other = DataDirLock::acquire(b.path()).expect("another directory");
        drop(first);
        let again = DataDirLock::acquire(a.path()).expect("released, so it locks again");
        drop((again, other));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("absent");
        let error = DataDirLock::acquire(&missing).expect_err("no directory");
        assert!(
            error
                .to_string()
                .contains(&missing.join(LOCK_FILE).display().to_string()),
            "{error}"
        );
    }
}
