//! The replicated log as Raft reads it: every entry since the newest snapshot, in memory, with
//! the hard state and the membership. Durable copies are the journal's business (`record.rs`):
//! this store holds what has been written or is being written, which is what
//! `raft::RawNode::advance_append_async` asks of a storage.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Entries since the compaction point (the newest snapshot, or one installed from the leader).
#[derive(Debug, Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The membership changes applied since the base, with their indexes: a snapshot of an
    /// entry takes the membership as it stood at that entry.
    conf_history: Vec<(u64, ConfState)>,
    /// The compaction point: index and term of the last entry a snapshot covers.
    base: SnapshotMetadata,
    /// `entries[i]` has index `base.index + 1 + i`.
    entries: VecDeque<Entry>,
    /// The payload bytes of `entries`, for the memory bound.
    bytes: u64,
    /// A follower needs a snapshot this store cannot give: the base is too old for what it
    /// asked, or its membership leaves the follower out (a member added since, whom Raft will
    /// not send a snapshot it is not in). Set by Raft's reads, cleared once the base moves.
    snapshot_wanted: std::sync::atomic::AtomicBool,
}

impl LogStore {
    /// A store starting after `base` (index 0 for a log no snapshot covers).
    pub fn new(base: SnapshotMetadata, hard_state: HardState) -> Self {
        let conf_state = base.get_conf_state().clone();
        let mut hard_state = hard_state;
        hard_state.commit = hard_state.commit.max(base.index);
        hard_state.term = hard_state.term.max(base.term);
        LogStore {
            hard_state,
            conf_state,
            conf_history: Vec::new(),
            base,
            entries: VecDeque::new(),
            bytes: 0,
            snapshot_wanted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a follower waits for a snapshot newer than the base (see the field).
    pub fn snapshot_wanted(&self) -> bool {
        self.snapshot_wanted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn base(&self) -> &SnapshotMetadata {
        &self.base
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The membership after the change at entry `index`.
    pub fn set_conf_state(&mut self, index: u64, conf_state: ConfState) {
        self.conf_state = conf_state.clone();
        self.conf_history.push((index, conf_state));
    }

    /// The membership as it stood after entry `index` (at or after the base).
    pub fn conf_state_at(&self, index: u64) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or_else(|| self.base.get_conf_state().clone(), |(_, cs)| cs.clone())
    }

    /// Bytes of entry payloads held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn first(&self) -> u64 {
        self.base.index + 1
    }

    fn last(&self) -> u64 {
        self.base.index + self.entries.len() as u64
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.first())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Appends entries, replacing any held from the first one's index on (a leader's log
    /// overriding an uncommitted tail). The first must follow a held entry or the base.
    pub fn append(&mut self, new: &[Entry]) {
        let Some(first) = new.first() else {
            return;
        };
        assert!(
            first.index > self.base.index && first.index <= self.last() + 1,
            "appending entries from {} to a log of ({}, {}]",
            first.index,
            self.base.index,
            self.last()
        );
        self.truncate_from(first.index);
        for e in new {
            debug_assert_eq!(e.index, self.last() + 1, "entries are contiguous");
            self.bytes += e.data.len() as u64;
            self.entries.push_back(e.clone());
        }
    }

    /// Drops every entry from `index` on.
    fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first());
        while self.entries.len() as u64 > keep {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.data.len() as u64;
            }
        }
    }

    /// Forgets entries up to `index`, which a durable snapshot now covers (`term` is the
    /// term of that entry). Entries after it are kept.
    pub fn compact(&mut self, index: u64, term: u64) {
        if index <= self.base.index {
            return;
        }
        assert!(
            index <= self.last(),
            "compacting to {index} past the last entry {}",
            self.last()
        );
        while self.entries.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.entries.pop_front() {
                debug_assert!(
                    e.index < index || e.term == term,
                    "term of the compaction point"
                );
                self.bytes -= e.data.len() as u64;
            }
        }
        let conf = self.conf_state_at(index);
        self.conf_history.retain(|(at, _)| *at > index);
        self.snapshot_wanted
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.base.index = index;
        self.base.term = term;
        self.base.set_conf_state(conf);
    }

    /// Replaces the whole log by a snapshot's state (installed from the leader).
    pub fn reset(&mut self, base: SnapshotMetadata) {
        self.snapshot_wanted
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.entries.clear();
        self.bytes = 0;
        self.conf_history.clear();
        self.conf_state = base.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(base.index);
        self.hard_state.term = self.hard_state.term.max(base.term);
        self.base = base;
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(raft::NO_LIMIT);
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        for index in low..high {
            let Some(e) = self.entry(index) else {
                return Err(raft::Error::Store(StorageError::Unavailable));
            };
            size = size.saturating_add(u64::from(protobuf::Message::compute_size(e)));
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.base.index {
            return Ok(self.base.term);
        }
        if index < self.base.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entry(index) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The compaction point's snapshot: its metadata, and as data only its index (the file is
    /// sent apart from the message, see the transport).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let conf = self.base.get_conf_state();
        let member = [
            &conf.voters,
            &conf.learners,
            &conf.voters_outgoing,
            &conf.learners_next,
        ]
        .iter()
        .any(|ids| ids.contains(&to));
        if self.base.index < request_index || self.base.index == 0 || !member {
            self.snapshot_wanted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(self.base.clone());
        snapshot.data = self.base.index.to_le_bytes().to_vec().into();
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage;

    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    #[test]
    fn appends_overwrite_the_tail_and_compaction_keeps_the_rest() {
        let mut s = LogStore::new(SnapshotMetadata::default(), HardState::default());
        assert_eq!(
            (s.first_index().ok(), s.last_index().ok()),
            (Some(1), Some(0))
        );
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"bb"), entry(3, 1, b"ccc")]);
        assert_eq!(s.bytes(), 6);
        s.append(&[entry(2, 2, b"x")]);
        assert_eq!(s.last_index().ok(), Some(2));
        assert_eq!(s.term(2).ok(), Some(2));
        assert_eq!(s.bytes(), 2);
        s.append(&[entry(3, 2, b"yy"), entry(4, 2, b"z")]);
        s.compact(2, 2);
        assert_eq!(s.first_index().ok(), Some(3));
        assert_eq!(s.term(2).ok(), Some(2));
        assert!(s.term(1).is_err());
        assert_eq!(s.bytes(), 3);
        let got = s
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .unwrap_or_default();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), [3, 4]);
        assert!(
            s.entries(2, 4, None, GetEntriesContext::empty(false))
                .is_err()
        );
        let one = s
            .entries(3, 5, 0, GetEntriesContext::empty(false))
            .unwrap_or_default();
        assert_eq!(one.len(), 1, "at least one entry whatever the size limit");
    }

    /// Raft will not send a follower a snapshot whose membership leaves it out: a member added
    /// after the newest snapshot waits for one that covers the change.
    #[test]
    fn a_member_added_since_the_snapshot_waits_for_a_newer_one() {
        let voters = |ids: &[u64]| ConfState {
            voters: ids.to_vec(),
            ..ConfState::default()
        };
        let mut base = SnapshotMetadata {
            index: 1,
            term: 1,
            ..SnapshotMetadata::default()
        };
        base.set_conf_state(voters(&[1, 2, 3]));
        let mut s = LogStore::new(base, HardState::default());
        s.append(&[entry(2, 2, b"a"), entry(3, 2, b"b"), entry(4, 2, b"c")]);
        assert!(s.snapshot(0, 2).is_ok(), "a member gets the snapshot");
        assert!(!s.snapshot_wanted());
        s.set_conf_state(3, voters(&[1, 2, 4]));
        assert!(s.snapshot(0, 4).is_err(), "member 4 is not in it");
        assert!(s.snapshot_wanted(), "a newer snapshot is asked for");
        s.compact(2, 2);
        assert!(s.snapshot(0, 4).is_err(), "entry 2 is before the change");
        s.compact(3, 2);
        assert!(!s.snapshot_wanted());
        let got = s.snapshot(0, 4).map(|snap| snap.get_metadata().clone());
        assert_eq!(
            got.map(|m| (m.index, m.get_conf_state().voters.clone())),
            Ok((3, vec![1, 2, 4]))
        );
        assert!(s.snapshot(5, 4).is_err(), "a snapshot newer than any");
        assert!(s.snapshot_wanted());
    }
}
