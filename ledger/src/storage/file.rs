//! `FileStorage`: the `Storage` trait over a real directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{AppendFile, Storage, check_name};

/// `FileStorage::create_zeroed` writes and syncs its zeros this many at a time.
pub const ZEROED_PIECE_BYTES: usize = 256 << 10;

/// A real directory.
#[derive(Clone, Debug)]
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    /// Uses `dir`, creating it (and its parents) if it does not exist; a directory it creates
    /// is made durable in its parent.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(FileStorage { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }
}

/// A real file open for appending.
#[derive(Debug)]
pub struct FileAppend {
    file: File,
    position: u64,
}

impl AppendFile for FileAppend {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.position)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Storage for FileStorage {
    type Append = FileAppend;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // A name that is not UTF-8 is nothing this crate wrote.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<FileAppend> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(name)?)?;
        Ok(FileAppend { file, position: 0 })
    }

    fn create_zeroed(
        &self,
        name: &str,
        len_bytes: u64,
        bytes_per_second: u64,
        stop: &AtomicBool,
    ) -> io::Result<FileAppend> {
        let mut file = self.create(name)?;
        let zeros = vec![0u8; ZEROED_PIECE_BYTES];
        let piece_time = match bytes_per_second {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(ZEROED_PIECE_BYTES as f64 / rate as f64),
        };
        let mut left = len_bytes;
        while left > 0 {
            if stop.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "filling with zeros was stopped",
                ));
            }
            let started = Instant::now();
            let n = left.min(ZEROED_PIECE_BYTES as u64);
            file.file.write_all(&zeros[..n as usize])?;
            file.file.sync_data()?;
            left -= n;
            // The pause, in short naps so that `stop` is seen soon.
            while left > 0 && !stop.load(Ordering::Relaxed) {
                let rest = piece_time.saturating_sub(started.elapsed());
                if rest.is_zero() {
                    break;
                }
                std::thread::sleep(rest.min(Duration::from_millis(10)));
            }
        }
        Ok(file)
    }

    fn open_append(&self, name: &str) -> io::Result<FileAppend> {
        // Not O_APPEND: on Linux that would make the positional writes go to the end.
        let file = OpenOptions::new().write(true).open(self.path(name)?)?;
        let position = file.metadata()?.len();
        Ok(FileAppend { file, position })
    }

    fn len_bytes(&self, name: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(name)?)?.len())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name)?)
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut file = File::open(self.path(name)?)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn truncate(&self, name: &str, len_bytes: u64) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.path(name)?)?
            .set_len(len_bytes)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from)?, self.path(to)?)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name)?)
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.path(name)?)?
            .sync_data()
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn available_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::append_via_create;

    #[test]
    fn file_storage_does_what_the_trait_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FileStorage::open(dir.path().join("wal")).expect("open");
        append_via_create(&storage, "b", b"0123456789");
        append_via_create(&storage, "a", b"x");
        std::fs::create_dir(storage.dir().join("subdir")).expect("mkdir");
        assert_eq!(storage.list().expect("list"), ["a", "b"]);
        let mut file = storage.open_append("b").expect("open");
        file.append(b"ab").expect("append");
        file.sync_data().expect("sync");
        assert_eq!(storage.read("b").expect("read"), b"0123456789ab");
        let mut buf = [0u8; 4];
        assert_eq!(storage.read_at("b", 10, &mut buf).expect("read"), 2);
        assert_eq!(&buf[..2], b"ab");
        storage.truncate("b", 3).expect("truncate");
        storage.sync("b").expect("sync");
        assert_eq!(storage.len_bytes("b").expect("len"), 3);
        storage.rename("b", "c").expect("rename");
        storage.remove("a").expect("remove");
        storage.sync_dir().expect("sync_dir");
        assert_eq!(storage.list().expect("list"), ["c"]);
        assert_eq!(storage.read("c").expect("read"), b"012");
        assert_eq!(
            storage.read("../c").expect_err("not a plain name").kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
