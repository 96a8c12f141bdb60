//! `SimStorage`: the `Storage` trait in memory, over a model of a disk that loses or tears
//! unsynced writes at a crash, flips bits, fails a sync and runs out of space, for tests.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use parking_lot::Mutex;

use super::{AppendFile, Storage, check_name};

/// How a crash tears the last write that partly reached the disk (see `SimStorage::crash_torn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// A prefix of the write survives, cut at any byte.
    Byte,
    /// A prefix of the write survives, cut at a 4 KiB boundary of the file.
    Sector,
    /// What a power loss in the middle of writing back leaves on a file system that orders
    /// data before metadata (ext4 `data=ordered`, XFS): each 4 KiB page of the file changed
    /// since its last sync holds either its durable or its latest bytes, decided page by page
    /// in no order, while growth past the durable length survives whole or not at all (the
    /// new size is recorded only after the data it covers). A file truncated since its last
    /// sync tears as `Sector` does.
    Pages,
}

/// Sector size used by `Tear::Sector`.
pub const SIM_SECTOR_BYTES: u64 = 4096;

/// An in-memory directory that fails the way disks do, for tests.
///
/// Every clone shares one state. The model:
/// - File contents become durable at `sync`/`sync_data`; directory entries (create, rename,
///   remove) at `sync_dir`. `crash` reverts everything that was not made durable, and
///   `crash_torn` lets a random prefix of the unsynced appends survive, the last of them torn.
/// - `flip_bit` corrupts a byte both in memory and "on disk".
/// - `fail_next_sync` makes the next sync (file or directory) fail with an I/O error, like EIO.
/// - `set_capacity_bytes` bounds the total size of the files: an append that would pass it fails
///   with `io::ErrorKind::StorageFull` and writes nothing.
/// - A crash ends the process that used the storage: the storage handle and open files it had
///   fail every call from then on, and `crash` returns the handle the restarted process uses.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    /// The life of the process this handle belongs to; a crash ends it.
    epoch: u64,
}

#[derive(Default)]
struct SimState {
    /// Bumped by every crash; storage handles and files of an older epoch are dead.
    epoch: u64,
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    /// The directory as the running program sees it.
    names: BTreeMap<String, u64>,
    /// The directory as of the last successful `sync_dir`.
    durable_names: BTreeMap<String, u64>,
    capacity_bytes: Option<u64>,
    fail_next_sync: bool,
    sync_latency: Duration,
    syncs: u64,
    dir_syncs: u64,
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Changes since the last sync, in order: applying them to `durable` gives `data`.
    unsynced: Vec<Change>,
}

enum Change {
    /// Bytes written at an offset (at the end, for an append that grows the file).
    Write {
        offset: u64,
        bytes: Vec<u8>,
    },
    SetLen(u64),
}

impl Change {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            Change::Write { offset, bytes } => write_at(data, *offset, bytes),
            Change::SetLen(len) => data.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
        }
    }
}

/// Writes `bytes` into `data` at `offset`, growing it (with zeros before, if need be).
fn write_at(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

/// splitmix64: enough randomness for deterministic tearing, without a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for tests; `n > 0`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no such file: {name}"))
}

fn stale() -> io::Error {
    io::Error::other("storage handle from before a simulated crash: its process is dead")
}

impl SimState {
    fn inode_of(&self, name: &str) -> io::Result<u64> {
        check_name(name)?;
        self.names.get(name).copied().ok_or_else(|| not_found(name))
    }

    fn inode(&mut self, id: u64) -> &mut Inode {
        self.inodes
            .get_mut(&id)
            .expect("every inode named or held open is in the table until a crash")
    }

    fn used_bytes(&self) -> u64 {
        self.names
            .values()
            .filter_map(|id| self.inodes.get(id))
            .map(|inode| inode.data.len() as u64)
            .sum()
    }

    fn take_sync_failure(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(io::Error::other(
                "input/output error (simulated sync failure)",
            ));
        }
        Ok(())
    }

    fn sync_inode(&mut self, id: u64) -> io::Result<()> {
        self.take_sync_failure()?;
        let inode = self.inode(id);
        for change in std::mem::take(&mut inode.unsynced) {
            change.apply(&mut inode.durable);
        }
        debug_assert_eq!(inode.durable, inode.data);
        self.syncs += 1;
        Ok(())
    }

    /// Creates `name` empty (truncating it if it exists) and returns its inode.
    fn create(&mut self, name: &str) -> u64 {
        match self.names.get(name) {
            Some(&id) => {
                let inode = self.inode(id);
                inode.data.clear();
                inode.unsynced.push(Change::SetLen(0));
                id
            }
            None => {
                let id = self.next_inode;
                self.next_inode += 1;
                self.inodes.insert(id, Inode::default());
                self.names.insert(name.to_owned(), id);
                id
            }
        }
    }

    /// Writes `bytes` at `offset` of inode `id`.
    fn write(&mut self, id: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let len = self.inode(id).data.len() as u64;
        self.check_capacity(
            offset
                .saturating_add(bytes.len() as u64)
                .saturating_sub(len),
        )?;
        let inode = self.inode(id);
        write_at(&mut inode.data, offset, bytes);
        inode.unsynced.push(Change::Write {
            offset,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    /// Fails with `StorageFull` if the files cannot grow by `more` bytes.
    fn check_capacity(&self, more: u64) -> io::Result<()> {
        if let Some(capacity) = self.capacity_bytes {
            let used = self.used_bytes();
            if more > 0 && used.saturating_add(more) > capacity {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "no space left on device (simulated: {used} of {capacity} bytes used, \
                         {more} more asked)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reverts to the durable state; `rng` (if any) lets part of the unsynced changes survive.
    fn crash(&mut self, mut tear: Option<(SplitMix, Tear)>) {
        self.epoch += 1;
        self.names = self.durable_names.clone();
        let live: Vec<u64> = self.names.values().copied().collect();
        self.inodes.retain(|id, _| live.contains(id));
        // Walk files in name order so that the same seed always tears the same way.
        for id in live {
            let inode = self.inodes.get_mut(&id).expect("live inodes were kept");
            let mut data = std::mem::take(&mut inode.durable);
            let unsynced = std::mem::take(&mut inode.unsynced);
            if let Some((rng, Tear::Pages)) = tear.as_mut()
                && !unsynced.iter().any(|c| matches!(c, Change::SetLen(_)))
            {
                data = pages_torn(rng, data, &inode.data);
                inode.durable = data.clone();
                inode.data = data;
                continue;
            }
            if let Some((rng, how)) = tear.as_mut() {
                let kept = rng.below(unsynced.len() as u64 + 1) as usize;
                for change in &unsynced[..kept] {
                    change.apply(&mut data);
                }
                if let Some(Change::Write { offset, bytes }) = unsynced.get(kept) {
                    let start = *offset;
                    let end = start + bytes.len() as u64;
                    let cut = match how {
                        Tear::Byte => start + rng.below(bytes.len() as u64),
                        Tear::Sector | Tear::Pages => {
                            // Sector boundaries strictly inside the write, or its start.
                            let first = start.div_ceil(SIM_SECTOR_BYTES).max(1) * SIM_SECTOR_BYTES;
                            let boundaries = if first < end {
                                (end - 1 - first) / SIM_SECTOR_BYTES + 1
                            } else {
                                0
                            };
                            match rng.below(boundaries + 1) {
                                0 => start,
                                i => first + (i - 1) * SIM_SECTOR_BYTES,
                            }
                        }
                    };
                    let kept_bytes = usize::try_from(cut - start).expect("cut is inside the write");
                    write_at(&mut data, start, &bytes[..kept_bytes]);
                }
            }
            inode.data = data.clone();
            inode.durable = data;
        }
    }
}

/// `Tear::Pages`: from `durable`, the file as last synced, and `latest`, which only grew from
/// it, the file a power loss leaves.
fn pages_torn(rng: &mut SplitMix, durable: Vec<u8>, latest: &[u8]) -> Vec<u8> {
    let mut data = durable;
    let durable_len = data.len();
    let page = SIM_SECTOR_BYTES as usize;
    for start in (0..durable_len.min(latest.len())).step_by(page) {
        let end = (start + page).min(durable_len);
        if data[start..end] != latest[start..end] && rng.below(2) == 1 {
            data[start..end].copy_from_slice(&latest[start..end]);
        }
    }
    if latest.len() > durable_len && rng.below(2) == 1 {
        data.extend_from_slice(&latest[durable_len..]);
    }
    data
}

impl SimStorage {
    pub fn new() -> Self {
        SimStorage::default()
    }

    /// Loses every change not made durable: unsynced appends and truncations, and directory
    /// changes since the last `sync_dir`. Every handle from before (this one, its clones, open
    /// files) is dead afterwards, as if its process had died; use the returned one.
    #[must_use = "the old handle is dead; use the returned one"]
    pub fn crash(&self) -> SimStorage {
        self.restart(None)
    }

    /// Like `crash`, but for each file a random prefix of its unsynced appends (decided by
    /// `seed`) survives, the last surviving one possibly torn as `tear` says.
    #[must_use = "the old handle is dead; use the returned one"]
    pub fn crash_torn(&self, seed: u64, tear: Tear) -> SimStorage {
        self.restart(Some((SplitMix(seed), tear)))
    }

    fn restart(&self, tear: Option<(SplitMix, Tear)>) -> SimStorage {
        let mut state = self.state.lock();
        state.crash(tear);
        SimStorage {
            state: Arc::clone(&self.state),
            epoch: state.epoch,
        }
    }

    /// The state, if this handle's process is still alive.
    fn live(&self) -> io::Result<parking_lot::MutexGuard<'_, SimState>> {
        let state = self.state.lock();
        if state.epoch != self.epoch {
            return Err(stale());
        }
        Ok(state)
    }

    /// Flips bit `bit` (0..8) of the byte at `offset`, in memory and on disk alike.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> io::Result<()> {
        if bit >= 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bit {bit} is not in 0..8"),
            ));
        }
        let mut state = self.state.lock();
        let id = state.inode_of(name)?;
        let inode = state.inode(id);
        let mask = 1u8 << bit;
        let at = usize::try_from(offset).ok();
        let byte = at.and_then(|at| inode.data.get_mut(at)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end of {name}"),
            )
        })?;
        *byte ^= mask;
        if let Some(byte) = at.and_then(|at| inode.durable.get_mut(at)) {
            *byte ^= mask;
        }
        // The byte may also sit in a write that is not durable yet: flip it there too, so
        // that a later sync or torn crash still yields the corrupted byte.
        for change in &mut inode.unsynced {
            if let Change::Write { offset: at, bytes } = change {
                let end = *at + bytes.len() as u64;
                if (*at..end).contains(&offset) {
                    let i = usize::try_from(offset - *at).expect("inside this write");
                    bytes[i] ^= mask;
                }
            }
        }
        let mut replayed = inode.durable.clone();
        for change in &inode.unsynced {
            change.apply(&mut replayed);
        }
        if replayed != inode.data {
            // Only when the byte came from zero-filling: describe the pending state plainly.
            inode.unsynced = vec![
                Change::SetLen(0),
                Change::Write {
                    offset: 0,
                    bytes: inode.data.clone(),
                },
            ];
        }
        Ok(())
    }

    /// The next sync (of a file or of the directory) fails with an I/O error and makes nothing
    /// durable.
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
    }

    /// Bounds the total size of the files; `None` removes the bound.
    pub fn set_capacity_bytes(&self, capacity_bytes: Option<u64>) {
        self.state.lock().capacity_bytes = capacity_bytes;
    }

    /// Every file sync takes this long, like a disk would (the lock is not held meanwhile).
    pub fn set_sync_latency(&self, latency: Duration) {
        self.state.lock().sync_latency = latency;
    }

    /// Total size of the files in the directory.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used_bytes()
    }

    /// Successful file syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Successful directory syncs so far.
    pub fn dir_sync_count(&self) -> u64 {
        self.state.lock().dir_syncs
    }

    fn sleep_sync_latency(&self) {
        let latency = self.state.lock().sync_latency;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
    }

    fn handle(&self, id: u64, position: u64) -> SimAppend {
        SimAppend {
            storage: self.clone(),
            inode: id,
            position,
        }
    }
}

/// A `SimStorage` file open for appending.
pub struct SimAppend {
    storage: SimStorage,
    inode: u64,
    position: u64,
}

impl AppendFile for SimAppend {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.storage
            .live()?
            .write(self.inode, self.position, bytes)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.storage.sleep_sync_latency();
        self.storage.live()?.sync_inode(self.inode)
    }
}

impl Storage for SimStorage {
    type Append = SimAppend;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.live()?.names.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<SimAppend> {
        check_name(name)?;
        let mut state = self.live()?;
        let id = state.create(name);
        Ok(self.handle(id, 0))
    }

    /// The zeros are durable at once, and count as no sync: a test's `fail_next_sync` and
    /// `sync_count` stay about the syncs it makes itself.
    fn create_zeroed(
        &self,
        name: &str,
        len_bytes: u64,
        _bytes_per_second: u64,
        _stop: &AtomicBool,
    ) -> io::Result<SimAppend> {
        check_name(name)?;
        let mut state = self.live()?;
        let held = state
            .names
            .get(name)
            .map_or(0, |&id| state.inodes[&id].data.len() as u64);
        state.check_capacity(len_bytes.saturating_sub(held))?;
        let len = usize::try_from(len_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length over usize"))?;
        let id = state.create(name);
        let inode = state.inode(id);
        inode.data = vec![0; len];
        inode.durable = vec![0; len];
        inode.unsynced.clear();
        Ok(self.handle(id, 0))
    }

    fn open_append(&self, name: &str) -> io::Result<SimAppend> {
        let mut state = self.live()?;
        let id = state.inode_of(name)?;
        let len = state.inode(id).data.len() as u64;
        Ok(self.handle(id, len))
    }

    fn len_bytes(&self, name: &str) -> io::Result<u64> {
        let mut state = self.live()?;
        let id = state.inode_of(name)?;
        Ok(state.inode(id).data.len() as u64)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut state = self.live()?;
        let id = state.inode_of(name)?;
        Ok(state.inode(id).data.clone())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.live()?;
        let id = state.inode_of(name)?;
        let data = &state.inode(id).data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn truncate(&self, name: &str, len_bytes: u64) -> io::Result<()> {
        let mut state = self.live()?;
        let id = state.inode_of(name)?;
        let inode = state.inode(id);
        let change = Change::SetLen(len_bytes);
        change.apply(&mut inode.data);
        inode.unsynced.push(change);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_name(to)?;
        let mut state = self.live()?;
        let id = state.inode_of(from)?;
        state.names.remove(from);
        state.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.live()?;
        state.inode_of(name)?;
        state.names.remove(name);
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.sleep_sync_latency();
        let mut state = self.live()?;
        let id = state.inode_of(name)?;
        state.sync_inode(id)
    }

    fn available_bytes(&self) -> io::Result<u64> {
        let state = self.live()?;
        Ok(state.capacity_bytes.map_or(u64::MAX, |capacity| {
            capacity.saturating_sub(state.used_bytes())
        }))
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.live()?;
        state.take_sync_failure()?;
        state.durable_names = state.names.clone();
        state.dir_syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::append_via_create;

    fn append(storage: &SimStorage, name: &str, writes: &[&[u8]]) -> SimAppend {
        let mut file = storage.open_append(name).expect("file exists");
        for bytes in writes {
            file.append(bytes).expect("append");
        }
        file
    }

    #[test]
    fn crash_loses_unsynced_writes_and_keeps_synced_ones() {
        let storage = SimStorage::new();
        let mut file = storage.create("a").expect("create");
        storage.sync_dir().expect("sync_dir");
        file.append(b"durable").expect("append");
        file.sync_data().expect("sync");
        file.append(b" lost").expect("append");
        assert_eq!(storage.read("a").expect("read"), b"durable lost");
        storage.truncate("a", 3).expect("truncate");
        let storage = storage.crash();
        assert_eq!(storage.read("a").expect("read"), b"durable");
        assert!(
            file.append(b"x").is_err(),
            "a handle from before the crash is dead"
        );
        assert!(file.sync_data().is_err());
        assert_eq!(storage.sync_count(), 1);
    }

    #[test]
    fn crash_reverts_directory_changes_since_the_last_sync_dir() {
        let storage = SimStorage::new();
        let mut kept = storage.create("kept").expect("create");
        kept.append(b"k").expect("append");
        kept.sync_data().expect("sync");
        let mut gone = storage.create("removed").expect("create");
        gone.append(b"r").expect("append");
        gone.sync_data().expect("sync");
        storage.sync_dir().expect("sync_dir");

        // Made durable as data, but never as a name.
        let mut new = storage.create("new").expect("create");
        new.append(b"n").expect("append");
        new.sync_data().expect("sync");
        storage.rename("kept", "renamed").expect("rename");
        storage.remove("removed").expect("remove");
        assert_eq!(storage.list().expect("list"), ["new", "renamed"]);
        let storage = storage.crash();
        assert_eq!(storage.list().expect("list"), ["kept", "removed"]);
        assert_eq!(storage.read("kept").expect("read"), b"k");
        assert_eq!(storage.read("removed").expect("read"), b"r");

        storage.rename("kept", "renamed").expect("rename");
        storage.sync_dir().expect("sync_dir");
        let storage = storage.crash();
        assert_eq!(storage.list().expect("list"), ["removed", "renamed"]);
        assert_eq!(storage.read("renamed").expect("read"), b"k");
    }

    fn torn_outcomes(tear: Tear, writes: &[&[u8]]) -> Vec<Vec<u8>> {
        (0..200)
            .map(|seed| {
                let storage = SimStorage::new();
                let mut file = storage.create("f").expect("create");
                file.append(b"synced").expect("append");
                file.sync_data().expect("sync");
                storage.sync_dir().expect("sync_dir");
                append(&storage, "f", writes);
                let storage = storage.crash_torn(seed, tear);
                storage.read("f").expect("read")
            })
            .collect()
    }

    #[test]
    fn byte_tear_keeps_a_prefix_cut_anywhere_and_is_deterministic() {
        let first = [b'a'; 10];
        let second = [b'b'; 10];
        let outcomes = torn_outcomes(Tear::Byte, &[&first, &second]);
        assert_eq!(outcomes, torn_outcomes(Tear::Byte, &[&first, &second]));
        let mut full: Vec<u8> = b"synced".to_vec();
        full.extend_from_slice(&first);
        full.extend_from_slice(&second);
        let mut lengths = std::collections::BTreeSet::new();
        for data in &outcomes {
            assert!(full.starts_with(data), "a prefix of what was written");
            assert!(data.len() >= 6, "synced bytes survive");
            lengths.insert(data.len());
        }
        // Every length from "nothing unsynced survived" to "everything did" shows up.
        assert_eq!(lengths, (6..=26).collect());
    }

    #[test]
    fn sector_tear_cuts_only_at_sector_boundaries() {
        let big = vec![7u8; 3 * SIM_SECTOR_BYTES as usize];
        let outcomes = torn_outcomes(Tear::Sector, &[&big]);
        let mut lengths = std::collections::BTreeSet::new();
        for data in &outcomes {
            assert!(
                data.len() == 6
                    || (data.len() as u64).is_multiple_of(SIM_SECTOR_BYTES)
                    || data.len() == 6 + big.len()
            );
            lengths.insert(data.len());
        }
        let sector = SIM_SECTOR_BYTES as usize;
        assert_eq!(
            lengths,
            [6, sector, 2 * sector, 3 * sector, 6 + big.len()]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn flip_bit_corrupts_durable_and_pending_bytes() {
        let storage = SimStorage::new();
        let mut file = storage.create("f").expect("create");
        storage.sync_dir().expect("sync_dir");
        file.append(&[0u8; 4]).expect("append");
        file.sync_data().expect("sync");
        file.append(&[0u8; 4]).expect("append");
        storage.flip_bit("f", 1, 3).expect("flip durable byte");
        storage.flip_bit("f", 6, 0).expect("flip pending byte");
        assert!(storage.flip_bit("f", 8, 0).is_err(), "past the end");
        assert!(storage.flip_bit("f", 0, 8).is_err(), "no bit 8");
        assert_eq!(storage.read("f").expect("read"), [0, 8, 0, 0, 0, 0, 1, 0]);
        file.sync_data().expect("sync");
        let storage = storage.crash();
        assert_eq!(storage.read("f").expect("read"), [0, 8, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn failed_sync_makes_nothing_durable_and_fails_once() {
        let storage = SimStorage::new();
        let mut file = storage.create("f").expect("create");
        storage.sync_dir().expect("sync_dir");
        file.append(b"data").expect("append");
        storage.fail_next_sync();
        assert!(file.sync_data().is_err());
        let storage = storage.crash();
        assert_eq!(storage.read("f").expect("read"), b"");
        let mut file = storage.open_append("f").expect("reopen");
        file.append(b"again").expect("append");
        file.sync_data().expect("the failure was for one sync only");
        storage.fail_next_sync();
        assert!(storage.sync_dir().is_err(), "directory syncs fail too");
        let storage = storage.crash();
        assert_eq!(storage.read("f").expect("read"), b"again");
    }

    #[test]
    fn out_of_space_writes_nothing() {
        let storage = SimStorage::new();
        storage.set_capacity_bytes(Some(10));
        let mut file = storage.create("f").expect("create");
        file.append(b"12345678").expect("fits");
        let err = file.append(b"abc").expect_err("over capacity");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(storage.read("f").expect("read"), b"12345678");
        assert_eq!(storage.used_bytes(), 8);
        file.append(b"ab").expect("exactly full");
        storage.remove("f").expect("remove");
        let mut other = storage.create("g").expect("create");
        other.append(b"0123456789").expect("space was freed");
        storage.set_capacity_bytes(None);
        other.append(&[0; 100]).expect("unbounded");
    }

    #[test]
    fn reads_and_names() {
        let storage = SimStorage::new();
        append_via_create(&storage, "f", b"0123456789");
        let mut buf = [0u8; 4];
        assert_eq!(storage.read_at("f", 8, &mut buf).expect("read"), 2);
        assert_eq!(&buf[..2], b"89");
        assert_eq!(storage.read_at("f", 20, &mut buf).expect("read"), 0);
        assert_eq!(storage.len_bytes("f").expect("len"), 10);
        assert_eq!(
            storage.read("missing").expect_err("missing").kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            storage.create("a/b").err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
        storage.create("f").expect("create truncates");
        assert_eq!(storage.read("f").expect("read"), b"");
    }

    /// `Tear::Pages`: each changed page of the durable length is old or new as a whole, pages
    /// independently of their order; growth survives whole or not at all.
    #[test]
    fn page_tear_keeps_any_pages_and_growth_whole_or_not() {
        let page = SIM_SECTOR_BYTES as usize;
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let storage = SimStorage::new();
            let mut file = storage
                .create_zeroed("z", 4 * SIM_SECTOR_BYTES, 0, &AtomicBool::new(false))
                .expect("zeroed");
            storage.sync_dir().expect("sync_dir");
            file.append(&vec![5u8; 4 * page + 100]).expect("append");
            let torn = storage
                .crash_torn(seed, Tear::Pages)
                .read("z")
                .expect("read");
            let pages: Vec<u8> = (0..4).map(|p| torn[p * page]).collect();
            for (p, &first) in pages.iter().enumerate() {
                let whole = &torn[p * page..(p + 1) * page];
                assert!(whole.iter().all(|&b| b == first), "page {p} is one version");
                assert!(first == 0 || first == 5);
            }
            match torn.len() {
                n if n == 4 * page => {}
                n if n == 4 * page + 100 => assert!(torn[4 * page..].iter().all(|&b| b == 5)),
                n => panic!("growth torn: {n} bytes"),
            }
            outcomes.insert((pages, torn.len()));
        }
        assert!(
            outcomes
                .iter()
                .any(|(pages, _)| pages[0] == 0 && pages[3] == 5),
            "a later page kept while an earlier one was lost: {outcomes:?}"
        );
        assert!(outcomes.len() > 8, "tears vary with the seed");
    }
}
