//! The replica's files: the journal (Raft entries in the write-ahead log) read back at start,
//! the hard state (term and vote) in a file of its own, snapshots with their Raft metadata, and
//! where each entry's record sits in the log, so that the log before a snapshot can go.
//!
//! The log is append-only: an entry written again by a new leader replaces the one before it
//! only when read back (`replica::record::Rebuilt`). The hard state is small and rare (it
//! changes at elections), so it is a file replaced whole: written to a temporary name, synced,
//! renamed, and the directory synced, before any vote it records is sent.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ledger::snapshot_file;
use ledger::storage::{AppendFile, FileStorage, Storage};
use ledger::wal::{self, RecoverOptions, WalOptions};
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use crate::core::Core;
use crate::core::snapshot::RestoreConfig;
use crate::replica::record::{Rebuilt, Record};
use crate::replica::{self, Disk};

/// The hard state's file, in the data directory.
pub const HARD_STATE_FILE: &str = "raft-state";
const HARD_STATE_LEN: usize = 24;
const HARD_STATE_MAGIC: [u8; 8] = *b"SWRAFTHS";

/// Left in a founding replica's data directory by `switch cluster init`, and removed once the
/// founding snapshot is written: an empty data directory without it belongs to a replica that
/// lost its data, which must not found (or vote) again under its old id.
pub const FOUNDING_FILE: &str = "FOUNDING";

/// A received snapshot waits under this suffix until Raft installs it.
pub const RECEIVED_SUFFIX: &str = ".received";

fn encode_hard_state(hs: &HardState) -> [u8; HARD_STATE_LEN] {
    let mut out = [0u8; HARD_STATE_LEN];
    out[..8].copy_from_slice(&HARD_STATE_MAGIC);
    out[8..16].copy_from_slice(&hs.term.to_le_bytes());
    out[16..24].copy_from_slice(&hs.vote.to_le_bytes());
    out
}

/// The term and vote recorded in `dir`, or none if there is no file yet.
pub fn read_hard_state(dir: &Path) -> anyhow::Result<HardState> {
    let path = dir.join(HARD_STATE_FILE);
    let mut hs = HardState::default();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(hs),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    anyhow::ensure!(
        bytes.len() == HARD_STATE_LEN && bytes[..8] == HARD_STATE_MAGIC,
        "{}: not a replica's hard state ({} bytes)",
        path.display(),
        bytes.len()
    );
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    hs.term = u64_at(8);
    hs.vote = u64_at(16);
    Ok(hs)
}

/// What a replica's node asks of the disk (see `replica::Disk`).
pub struct FileDisk {
    state: FileStorage,
    snapshots: FileStorage,
    restore: RestoreConfig,
    /// The encoded state the log starts from, for a log no snapshot covers.
    initial: Arc<Vec<u8>>,
}

impl FileDisk {
    pub fn new(
        data_dir: &Path,
        snapshots: FileStorage,
        restore: RestoreConfig,
        initial: Arc<Vec<u8>>,
    ) -> anyhow::Result<FileDisk> {
        Ok(FileDisk {
            state: FileStorage::open(data_dir)
                .with_context(|| format!("opening {}", data_dir.display()))?,
            snapshots,
            restore,
            initial,
        })
    }
}

impl Disk for FileDisk {
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), String> {
        let tmp = format!("{HARD_STATE_FILE}.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = self.state.create(&tmp)?;
            f.append(&encode_hard_state(hs))?;
            f.sync_data()?;
            drop(f);
            self.state.rename(&tmp, HARD_STATE_FILE)?;
            self.state.sync_dir()
        };
        write().map_err(|e| format!("saving the term and vote ({HARD_STATE_FILE}): {e}"))
    }

    fn install_snapshot(&mut self, index: u64) -> Result<Core, String> {
        let name = snapshot_file::snapshot_file_name(index);
        let received = format!("{name}{RECEIVED_SUFFIX}");
        self.snapshots
            .rename(&received, &name)
            .and_then(|()| self.snapshots.sync_dir())
            .map_err(|e| format!("keeping the leader's snapshot {name}: {e}"))?;
        load_snapshot(&self.snapshots, index, &self.restore).map(|(core, _)| core)
    }

    fn load_base(&mut self) -> Result<(Core, u64), String> {
        match snapshot_file::list(&self.snapshots)
            .map_err(|e| e.to_string())?
            .first()
        {
            Some(&index) => load_snapshot(&self.snapshots, index, &self.restore)
                .map(|(core, meta)| (core, meta.index)),
            None => Core::restore(&self.initial, 0, self.restore.clone())
                .map(|(core, _)| (core, 0))
                .map_err(|e| format!("the initial state: {e}")),
        }
    }
}

/// The snapshot at `index`: its state and its Raft metadata.
pub fn load_snapshot(
    storage: &FileStorage,
    index: u64,
    restore: &RestoreConfig,
) -> Result<(Core, SnapshotMetadata), String> {
    let file = snapshot_file::read(storage, index)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (meta, payload) = replica::snapshot::decode(&file.payload, index)
        .map_err(|e| format!("{}: {e}", file.file))?;
    let (core, _) = Core::restore(payload, index, restore.clone())
        .map_err(|e| format!("{}: {e}", file.file))?;
    Ok((core, meta))
}

/// Where each entry's record is in the log: (index, sequence), for the entries since the
/// oldest snapshot kept, as the log holds them now (an entry written again replaces the
/// earlier record). The log before the first entry a kept snapshot does not cover can go.
#[derive(Debug, Default)]
pub struct Mirror {
    entries: VecDeque<(u64, u64)>,
    last_sequence: u64,
}

impl Mirror {
    /// Record `sequence` holds entry `index` (entries after it are no longer the log's).
    pub fn wrote(&mut self, index: u64, sequence: u64) {
        while self.entries.back().is_some_and(|&(i, _)| i >= index) {
            self.entries.pop_back();
        }
        self.entries.push_back((index, sequence));
        self.last_sequence = self.last_sequence.max(sequence);
    }

    /// Record `sequence` is not an entry (a reset after an installed snapshot).
    pub fn wrote_other(&mut self, sequence: u64) {
        self.last_sequence = self.last_sequence.max(sequence);
    }

    /// A snapshot installed at `index`: the log is its state now, whatever came before.
    pub fn reset(&mut self) {
        self.entries.clear();
    }

    /// The last log sequence that only entries at or below `index` need (and records older
    /// than them): everything up to it may be deleted once a snapshot at `index` is kept.
    pub fn covered_by(&self, index: u64) -> u64 {
        match self.entries.iter().find(|&&(i, _)| i > index) {
            Some(&(_, sequence)) => sequence.saturating_sub(1),
            None => self.last_sequence,
        }
    }

    /// Forgets entries at or below `index` (the oldest snapshot kept covers them).
    pub fn forget_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|&(i, _)| i <= index) {
            self.entries.pop_front();
        }
    }
}

/// The replica as its files left it.
pub struct Recovered {
    pub core: Core,
    pub base: SnapshotMetadata,
    pub entries: Vec<Entry>,
    pub commit: u64,
    pub applied: u64,
    pub hard_state: HardState,
    pub wal: wal::Recovered,
    pub mirror: Mirror,
    pub snapshot_file: Option<String>,
}

/// Loads the newest usable snapshot (or starts from `initial`), reads the journal after it
/// and applies what it knows is committed.
pub fn recover<S: Storage>(
    initial: Core,
    data_dir: &Path,
    snapshots: &FileStorage,
    storage: &S,
    options: &WalOptions,
    voters: &[u64],
) -> anyhow::Result<Recovered> {
    let started = Instant::now();
    let restore = RestoreConfig::like(&initial);
    found(&initial, data_dir, snapshots, storage, voters)?;
    let mut passed_over = Vec::new();
    let mut loaded = None;
    for index in snapshot_file::list(snapshots)? {
        match load_snapshot(snapshots, index, &restore) {
            Ok(l) => {
                loaded = Some((l, snapshot_file::snapshot_file_name(index)));
                break;
            }
            Err(e) => {
                tracing::warn!("{e}; trying an older snapshot");
                passed_over.push(e);
            }
        }
    }
    let (mut core, mut base, snapshot_file) = match loaded {
        Some(((core, meta), file)) => (core, meta, Some(file)),
        None => (initial, SnapshotMetadata::default(), None),
    };
    if base.get_conf_state().voters.is_empty() {
        base.mut_conf_state().voters = voters.to_vec();
    }
    let mut rebuilt = Rebuilt::new(base);
    let mut mirror = Mirror::default();
    let recovered = wal::recover(
        storage,
        &RecoverOptions {
            record_size_max_bytes: options.record_size_max_bytes,
            write_max_bytes: options.write_max_bytes(),
            // Behind a snapshot the oldest segments went; `Rebuilt` refuses a journal whose
            // entries do not follow the snapshot.
            missing_prefix_allowed: snapshot_file.is_some(),
            ..RecoverOptions::default()
        },
        |sequence, payload| -> Result<(), String> {
            let record = Record::decode(payload).map_err(|e| {
                format!("{e} (a journal written before replication cannot be read: start from a clean data directory, or from a snapshot a clean shutdown of the earlier build wrote)")
            })?;
            match &record {
                Record::Entries { entries, .. } => {
                    for e in entries {
                        mirror.wrote(e.index, sequence);
                    }
                }
                Record::Reset { .. } => {
                    mirror.reset();
                    mirror.wrote_other(sequence);
                }
            }
            rebuilt.push(record, &mut |e| {
                crate::replica::node::apply_entry(&mut core, e).map_err(|e| e.to_string())
            })
        },
    )
    .map_err(|e| {
        if passed_over.is_empty() {
            anyhow::anyhow!("{e}")
        } else {
            anyhow::anyhow!("{e} (snapshots passed over: {})", passed_over.join("; "))
        }
    })?;
    if let Some(truncation) = &recovered.truncation {
        tracing::warn!("{truncation}");
    }
    rebuilt.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
    let hard_state = read_hard_state(data_dir)?;
    tracing::info!(
        snapshot = snapshot_file.as_deref().unwrap_or("none"),
        snapshot_index = rebuilt.base.index,
        records = recovered.records_applied,
        segments = recovered.segments_read,
        entries = rebuilt.entries.len(),
        applied = rebuilt.applied,
        term = hard_state.term,
        elapsed_ms = started.elapsed().as_millis() as u64,
        digest = %core.ledger().digest(),
        "recovered from the snapshot and the write-ahead log after it"
    );
    Ok(Recovered {
        core,
        base: rebuilt.base,
        entries: rebuilt.entries,
        commit: rebuilt.commit,
        applied: rebuilt.applied,
        hard_state,
        wal: recovered,
        mirror,
        snapshot_file,
    })
}

/// A founding replica's first start (no snapshot, no log, no vote): its data directory begins
/// with the founding snapshot (`replica::snapshot::founding`), the empty ledger and the
/// founding membership. A replica that joins (no `voters`) starts from nothing.
fn found<S: Storage>(
    initial: &Core,
    data_dir: &Path,
    snapshots: &FileStorage,
    storage: &S,
    voters: &[u64],
) -> anyhow::Result<()> {
    let fresh = snapshot_file::list(snapshots)?.is_empty()
        && storage.list()?.is_empty()
        && !data_dir.join(HARD_STATE_FILE).exists();
    if !fresh || voters.is_empty() {
        return Ok(());
    }
    let marker = data_dir.join(FOUNDING_FILE);
    // A cluster of one has nobody to disagree with; a member of a larger cluster that lost its
    // data has forgotten the votes it gave, and voting again could elect two leaders in one
    // term.
    anyhow::ensure!(
        voters.len() == 1 || marker.exists(),
        "{} is empty and has no {FOUNDING_FILE} file: this replica of a cluster of {} has \
         lost its data (or was never made by `switch cluster init`). A replica that lost its \
         data must not rejoin under its old id, having forgotten its votes: replace it with a \
         new member (`switch cluster add-member`, then `switch cluster change`; OPERATIONS.md, \
         Replacing a lost member)",
        data_dir.display(),
        voters.len()
    );
    let meta = replica::snapshot::founding(voters);
    let image = crate::core::snapshot::Image::take(initial, meta.index).encode();
    let payload = replica::snapshot::encode(&meta, &image);
    snapshot_file::write(snapshots, meta.index, &payload, 1)
        .map_err(|e| anyhow::anyhow!("writing the founding snapshot: {e}"))?;
    if marker.exists() {
        std::fs::remove_file(&marker)
            .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
            .with_context(|| format!("removing {}", marker.display()))?;
    }
    tracing::info!(
        ?voters,
        "a founding replica: the log starts from the founding snapshot"
    );
    Ok(())
}

/// Where received snapshots wait, and where the link reads snapshots to send.
pub fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// A snapshot arriving from the leader is written under this suffix, then renamed to
/// `RECEIVED_SUFFIX` once it is whole and checked.
pub const RECEIVING_SUFFIX: &str = ".receiving";

/// Removes the snapshots received (or half received) from a leader in `dir` whose index
/// `stale` says Raft will never install: at a start, all of them (the message announcing each
/// was in memory only); while running, those at or below the committed index (Raft installs
/// no snapshot there). Returns how many went. Other files are left alone.
pub fn discard_received(dir: &Path, stale: impl Fn(u64) -> bool) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let index = [RECEIVED_SUFFIX, RECEIVING_SUFFIX]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .and_then(snapshot_file::parse_snapshot_file_name);
        if let Some(index) = index
            && stale(index)
        {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only received and half-received snapshots that `stale` names go: never a snapshot
    /// under its own name, a temporary one, or anything else.
    #[test]
    fn discarding_received_snapshots_keeps_every_other_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = snapshot_file::snapshot_file_name;
        let files = [
            (format!("{}{RECEIVED_SUFFIX}", name(5)), true),
            (format!("{}{RECEIVING_SUFFIX}", name(6)), true),
            (format!("{}{RECEIVED_SUFFIX}", name(9)), false),
            (format!("{}{RECEIVING_SUFFIX}", name(12)), false),
            (name(5), false),
            (format!("{}.tmp", name(5)), false),
            ("5.snap.received".to_owned(), false),
            ("LOCK".to_owned(), false),
        ];
        for (file, _) in &files {
            std::fs::write(dir.path().join(file), b"x").expect("write");
        }
        let removed = discard_received(dir.path(), |i| i <= 8).expect("discard");
        assert_eq!(removed, 2);
        for (file, goes) in &files {
            assert_eq!(!dir.path().join(file).exists(), *goes, "{file}");
        }
        assert_eq!(discard_received(dir.path(), |_| true).expect("discard"), 2);
        assert_eq!(
            discard_received(&dir.path().join("absent"), |_| true).expect("no directory"),
            0
        );
    }

    /// The mirror keeps what the log holds: an entry written again replaces what followed it,
    /// and a snapshot's coverage stops at the first entry after it.
    #[test]
    fn the_mirror_follows_the_log() {
        let mut m = Mirror::default();
        for (i, s) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
            m.wrote(i, s);
        }
        m.wrote(3, 5); // a new leader's entry 3 replaces 3 and 4
        m.wrote(4, 6);
        assert_eq!(
            m.covered_by(2),
            4,
            "records 1-4 hold only entries up to 2 now"
        );
        assert_eq!(m.covered_by(3), 5);
        assert_eq!(m.covered_by(4), 6);
        assert_eq!(m.covered_by(0), 0);
        m.forget_through(2);
        assert_eq!(m.covered_by(2), 4);
        m.reset();
        m.wrote_other(7);
        assert_eq!(m.covered_by(9), 7);
    }

    #[test]
    fn the_hard_state_reads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            read_hard_state(dir.path()).expect("none yet"),
            HardState::default()
        );
        let mut disk = FileDisk {
            state: FileStorage::open(dir.path()).expect("open"),
            snapshots: FileStorage::open(dir.path()).expect("open"),
            restore: RestoreConfig::like(&Core::new(
                Arc::new(ledger::Ledger::new(ledger::Config::default()).expect("ledger")),
                crate::core::CoreConfig::default(),
                Arc::default(),
            )),
            initial: Arc::new(Vec::new()),
        };
        let hs = HardState {
            term: 7,
            vote: 3,
            ..HardState::default()
        };
        disk.save_hard_state(&hs).expect("saved");
        let back = read_hard_state(dir.path()).expect("read");
        assert_eq!((back.term, back.vote), (7, 3));
        std::fs::write(dir.path().join(HARD_STATE_FILE), b"short").expect("write");
        assert!(read_hard_state(dir.path()).is_err());
    }
}

/// What the connections, `/cluster` and the metrics read of the replica, set by the ledger
/// stage: its role, the leader's client address, and its progress.
#[derive(Debug)]
pub struct ReplicaState {
    pub id: u64,
    /// Every member the configuration lists: (id, client address, http address). A reload of
    /// the configuration (SIGHUP) changes it.
    members: parking_lot::RwLock<Vec<MemberAddresses>>,
    /// The voters, and during a membership change the outgoing voters too.
    voters: parking_lot::Mutex<(Vec<u64>, Vec<u64>)>,
    is_leader: std::sync::atomic::AtomicBool,
    leader: std::sync::atomic::AtomicU64,
    term: std::sync::atomic::AtomicU64,
    committed: std::sync::atomic::AtomicU64,
    applied: std::sync::atomic::AtomicU64,
    last_index: std::sync::atomic::AtomicU64,
    /// The leader's view of each member: (id, entries it holds up to).
    progress: parking_lot::Mutex<Vec<(u64, u64)>>,
}

/// A member's id, client address and http address.
pub type MemberAddresses = (u64, std::net::SocketAddr, Option<std::net::SocketAddr>);

/// One replica's view, for `/cluster` and `switch cluster status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusView {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub committed: u64,
    pub applied: u64,
    pub last_index: u64,
    /// The voters as this replica applied them; during a membership change, the outgoing
    /// voters too (a majority of each decides until the change is done).
    #[serde(default)]
    pub voters: Vec<u64>,
    #[serde(default)]
    pub voters_outgoing: Vec<u64>,
    /// On the leader: each member's matched index and how far it lags.
    pub members: Vec<MemberView>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub matched: u64,
    pub lag: u64,
}

impl ReplicaState {
    /// The committed index as the ledger stage last published it (every 100 ms, between its
    /// rounds, so after installing any snapshot it was handed): never ahead of the replica's.
    pub fn committed(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn new(id: u64, members: Vec<MemberAddresses>) -> ReplicaState {
        // A sole replica leads from its start (it elects itself at once): its clients' first
        // requests wait for it rather than hear "not leader".
        let sole = members.len() == 1 && members.first().is_some_and(|m| m.0 == id);
        ReplicaState {
            id,
            members: parking_lot::RwLock::new(members),
            voters: Default::default(),
            is_leader: std::sync::atomic::AtomicBool::new(sole),
            leader: Default::default(),
            term: Default::default(),
            committed: Default::default(),
            applied: Default::default(),
            last_index: Default::default(),
            progress: Default::default(),
        }
    }

    /// `None` while this replica leads (or is becoming the leader); otherwise the leader's
    /// client address, if one is known.
    pub fn not_leader(&self) -> Option<Option<std::net::SocketAddr>> {
        use std::sync::atomic::Ordering;
        if self.is_leader.load(Ordering::Acquire) {
            return None;
        }
        let leader = self.leader.load(Ordering::Acquire);
        Some(
            self.members
                .read()
                .iter()
                .find(|(id, _, _)| *id == leader && leader != 0)
                .map(|(_, client, _)| *client),
        )
    }

    /// The leader's client address, unless this replica is the leader.
    pub fn leader_address(&self) -> Option<std::net::SocketAddr> {
        self.not_leader().flatten()
    }

    pub fn set_role(&self, role: replica::Role) {
        use std::sync::atomic::Ordering;
        if self.term.swap(role.term, Ordering::AcqRel) < role.term {
            metrics::counter!("switch_raft_elections_total").increment(1);
        }
        self.leader
            .store(role.leader.unwrap_or(0), Ordering::Release);
        self.is_leader.store(role.is_leader, Ordering::Release);
        metrics::gauge!("switch_raft_term").set(role.term as f64);
        metrics::gauge!("switch_raft_leader").set(if role.is_leader { 1.0 } else { 0.0 });
    }

    /// The members the configuration lists now.
    pub fn members(&self) -> Vec<MemberAddresses> {
        self.members.read().clone()
    }

    /// The configuration was reloaded.
    pub fn set_members(&self, members: Vec<MemberAddresses>) {
        *self.members.write() = members;
    }

    /// The voters and outgoing voters, as the stage last set them.
    pub fn voters(&self) -> (Vec<u64>, Vec<u64>) {
        self.voters.lock().clone()
    }

    pub fn set_voters(&self, voters: (Vec<u64>, Vec<u64>)) {
        *self.voters.lock() = voters;
    }

    pub fn set_progress(
        &self,
        committed: u64,
        applied: u64,
        last_index: u64,
        progress: Vec<(u64, u64)>,
    ) {
        use std::sync::atomic::Ordering;
        self.committed.store(committed, Ordering::Release);
        self.applied.store(applied, Ordering::Release);
        self.last_index.store(last_index, Ordering::Release);
        metrics::gauge!("switch_raft_commit_index").set(committed as f64);
        metrics::gauge!("switch_raft_applied_index").set(applied as f64);
        let lag = progress
            .iter()
            .filter(|&&(id, _)| id != self.id)
            .map(|&(_, matched)| last_index.saturating_sub(matched))
            .max()
            .unwrap_or(0);
        metrics::gauge!("switch_raft_follower_lag_entries").set(lag as f64);
        *self.progress.lock() = progress;
    }

    pub fn view(&self) -> StatusView {
        use std::sync::atomic::Ordering;
        let is_leader = self.is_leader.load(Ordering::Acquire);
        let leader = self.leader.load(Ordering::Acquire);
        let last_index = self.last_index.load(Ordering::Acquire);
        let (mut voters, mut voters_outgoing) = self.voters();
        voters.sort_unstable();
        voters_outgoing.sort_unstable();
        let votes = voters.contains(&self.id) || voters_outgoing.contains(&self.id);
        StatusView {
            id: self.id,
            role: if is_leader {
                "leader"
            } else if voters.is_empty() && voters_outgoing.is_empty() {
                // A replica that joins, before the leader has added it.
                "joining"
            } else if !votes {
                "not a voter"
            } else if leader != 0 {
                "follower"
            } else {
                "candidate"
            }
            .to_string(),
            term: self.term.load(Ordering::Acquire),
            leader: (leader != 0).then_some(leader),
            committed: self.committed.load(Ordering::Acquire),
            applied: self.applied.load(Ordering::Acquire),
            last_index,
            voters,
            voters_outgoing,
            members: if is_leader {
                self.progress
                    .lock()
                    .iter()
                    .map(|&(id, matched)| MemberView {
                        id,
                        matched,
                        lag: last_index.saturating_sub(matched),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}
