//! The journal under replication: each write-ahead-log record holds a run of Raft entries (their
//! terms, indexes, types and data, with the commit index known when they were written), or
//! marks that a snapshot from the leader replaced the log. Layouts in `docs/WAL-FORMAT.md`.
//!
//! The log is append-only, so a tail that a new leader overrides is not erased: the entry
//! written later for an index replaces the one written before, and drops every entry after
//! it, exactly as `LogStore::append` does in memory. Reading the records back in order
//! therefore rebuilds the log as it stood. An entry at or below a commit index written after
//! it is final: no later record can replace it.

use raft::eraftpb::{Entry, EntryType, SnapshotMetadata};

/// A record holding a run of entries.
const RECORD_ENTRIES: u8 = 0x22;
/// A record saying that the log now starts after a snapshot installed from the leader.
const RECORD_RESET: u8 = 0x21;

/// Bytes of an entries record besides its entries: type, commit index, count.
pub const ENTRIES_HEADER_LEN: usize = 1 + 8 + 4;
/// Bytes of one entry in it besides its data: term, index, type, data length.
pub const ENTRY_HEADER_LEN: usize = 8 + 8 + 1 + 4;
/// What the replica adds to the largest entry's data, at most (one entry alone in a record).
pub const FRAMING_BYTES_MAX: usize = ENTRIES_HEADER_LEN + ENTRY_HEADER_LEN;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("replicated log record at offset {offset}: {what} is {value}")]
    Bad {
        offset: usize,
        what: &'static str,
        value: u64,
    },
    #[error("replicated log record ends at {len} bytes, inside its {what}")]
    Truncated { len: usize, what: &'static str },
    #[error("replicated log record: {extra} bytes after its end at offset {offset}")]
    Trailing { offset: usize, extra: usize },
}

/// One record of the replicated journal.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Consecutive entries, ascending.
    Entries {
        entries: Vec<Entry>,
        commit: u64,
    },
    Reset {
        index: u64,
        term: u64,
    },
}

fn entry_type_code(t: EntryType) -> u8 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// The encoded size of `entry` in an entries record.
pub fn entry_len(entry: &Entry) -> usize {
    ENTRY_HEADER_LEN + entry.data.len()
}

/// Encodes consecutive `entries` with the commit index known now.
pub fn encode_entries(entries: &[Entry], commit: u64, out: &mut Vec<u8>) {
    out.reserve(ENTRIES_HEADER_LEN + entries.iter().map(entry_len).sum::<usize>());
    out.push(RECORD_ENTRIES);
    out.extend_from_slice(&commit.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.term.to_le_bytes());
        out.extend_from_slice(&e.index.to_le_bytes());
        out.push(entry_type_code(e.get_entry_type()));
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.data);
    }
}

pub fn encode_reset(index: u64, term: u64, out: &mut Vec<u8>) {
    out.push(RECORD_RESET);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
}

/// Splits `entries` into runs whose records hold at most `record_bytes_max` bytes (an entry
/// too large for that goes alone).
pub fn runs(entries: &[Entry], record_bytes_max: usize) -> Vec<&[Entry]> {
    let mut runs = Vec::new();
    let (mut start, mut len) = (0, ENTRIES_HEADER_LEN);
    for (i, e) in entries.iter().enumerate() {
        let n = entry_len(e);
        if i > start && len + n > record_bytes_max {
            runs.push(&entries[start..i]);
            (start, len) = (i, ENTRIES_HEADER_LEN);
        }
        len += n;
    }
    if start < entries.len() {
        runs.push(&entries[start..]);
    }
    runs
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(RecordError::Truncated {
                len: self.bytes.len(),
                what,
            })?;
        self.at += n;
        Ok(slice)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(1, what)?[0])
    }
}

impl Record {
    /// Decodes a whole payload; never panics.
    pub fn decode(payload: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader {
            bytes: payload,
            at: 0,
        };
        let record = match r.u8("record type")? {
            RECORD_ENTRIES => {
                let commit = r.u64("commit")?;
                let count_at = r.at;
                let count = r.u32("entry count")? as usize;
                if count == 0 || count.saturating_mul(ENTRY_HEADER_LEN) > payload.len() {
                    return Err(RecordError::Bad {
                        offset: count_at,
                        what: "entry count",
                        value: count as u64,
                    });
                }
                let mut entries: Vec<Entry> = Vec::with_capacity(count);
                for _ in 0..count {
                    let term = r.u64("term")?;
                    let index_at = r.at;
                    let mut e = Entry {
                        term,
                        index: r.u64("index")?,
                        ..Entry::default()
                    };
                    let expected = match entries.last() {
                        None => Some(e.index.max(1)),
                        Some(p) => p.index.checked_add(1),
                    };
                    if Some(e.index) != expected {
                        return Err(RecordError::Bad {
                            offset: index_at,
                            what: "index",
                            value: e.index,
                        });
                    }
                    let type_at = r.at;
                    e.set_entry_type(match r.u8("entry type")? {
                        0 => EntryType::EntryNormal,
                        1 => EntryType::EntryConfChange,
                        2 => EntryType::EntryConfChangeV2,
                        other => {
                            return Err(RecordError::Bad {
                                offset: type_at,
                                what: "entry type",
                                value: u64::from(other),
                            });
                        }
                    });
                    let len = r.u32("data length")? as usize;
                    e.data = r.take(len, "data")?.to_vec().into();
                    entries.push(e);
                }
                Record::Entries { entries, commit }
            }
            RECORD_RESET => Record::Reset {
                index: r.u64("index")?,
                term: r.u64("term")?,
            },
            tag => {
                return Err(RecordError::Bad {
                    offset: 0,
                    what: "record type",
                    value: u64::from(tag),
                });
            }
        };
        if r.at != payload.len() {
            return Err(RecordError::Trailing {
                offset: r.at,
                extra: payload.len() - r.at,
            });
        }
        Ok(record)
    }
}

/// The log as the journal's records rebuild it, read in order after a snapshot at `base`.
/// Entries that a later commit index makes final are handed to `apply` as soon as they are
/// known final, so that what is held stays the uncommitted tail plus the entries kept for
/// followers (everything since `base`).
#[derive(Debug)]
pub struct Rebuilt {
    pub base: SnapshotMetadata,
    pub entries: Vec<Entry>,
    /// The highest commit index any record carried, at least `base.index`.
    pub commit: u64,
    /// Entries up to here were handed to `apply`.
    pub applied: u64,
}

impl Rebuilt {
    pub fn new(base: SnapshotMetadata) -> Self {
        Rebuilt {
            commit: base.index,
            applied: base.index,
            base,
            entries: Vec::new(),
        }
    }

    fn last(&self) -> u64 {
        self.base.index + self.entries.len() as u64
    }

    /// Takes the next record. An entry that does not follow the log (a gap) is an error: the
    /// journal lost a record in the middle.
    pub fn push(
        &mut self,
        record: Record,
        apply: &mut impl FnMut(&Entry) -> Result<(), String>,
    ) -> Result<(), String> {
        match record {
            Record::Reset { index, .. } => {
                // A snapshot from the leader replaced the log: what came before is not the
                // log any more. The state to start from must be that snapshot or a later one.
                if index > self.base.index {
                    return Err(format!(
                        "the journal says the leader's snapshot at entry {index} was installed, \
                         but the newest snapshot that loads covers entry {} only",
                        self.base.index
                    ));
                }
                self.entries.clear();
                Ok(())
            }
            Record::Entries { entries, commit } => {
                for entry in entries {
                    self.push_entry(entry)?;
                }
                self.commit = self.commit.max(commit.min(self.last()));
                self.apply_to(self.commit, apply)
            }
        }
    }

    /// Finishes the log rebuilt from the whole journal (once every record is read: a stale
    /// tail may be held until a later record overwrites it). A snapshot installed from the
    /// leader replaces the whole log, and is kept before the journal records it (the reset
    /// record): after a crash between the two, the newest snapshot is the leader's and the
    /// journal still holds the replaced log after it, whose first entry is of an older term
    /// than the snapshot's. Those entries are dropped, as the install dropped them. Any other
    /// log that runs back in term is refused rather than served: such a replica could vote
    /// for a candidate that lacks a committed entry. Nothing dropped was applied (entries are
    /// applied only once a record says they are committed, and the replaced log's were not),
    /// so the commit index, which every record applies up to, is the snapshot's too.
    pub fn finish(&mut self) -> Result<(), String> {
        if self
            .entries
            .first()
            .is_some_and(|e| e.term < self.base.term && self.applied == self.base.index)
        {
            self.entries.clear();
        }
        let mut term = self.base.term;
        for e in &self.entries {
            if e.term < term {
                return Err(format!(
                    "the journal rebuilds a log that runs back in term: entry {} of term {} \
                     follows term {term} (snapshot at entry {}, term {})",
                    e.index, e.term, self.base.index, self.base.term
                ));
            }
            term = e.term;
        }
        Ok(())
    }

    fn push_entry(&mut self, entry: Entry) -> Result<(), String> {
        let index = entry.index;
        if index <= self.base.index {
            // Covered by the snapshot (written before it was taken). Written, it overrode
            // every entry after it: whatever is held after the snapshot came before it in the
            // journal and is not the log any more (a follower's stale tail, overwritten by a
            // leader and then covered by a snapshot, must not come back).
            if !self.entries.is_empty() && self.applied > self.base.index {
                return Err(format!(
                    "entry {index} replaces entries already known final (applied up to {})",
                    self.applied
                ));
            }
            self.entries.clear();
            return Ok(());
        }
        if index > self.last() + 1 {
            return Err(format!(
                "entry {index} follows entry {} in the journal: entries are missing",
                self.last()
            ));
        }
        if index <= self.applied {
            return Err(format!(
                "entry {index} replaces an entry already known final (applied up to {})",
                self.applied
            ));
        }
        let keep = (index - self.base.index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.push(entry);
        Ok(())
    }

    fn apply_to(
        &mut self,
        to: u64,
        apply: &mut impl FnMut(&Entry) -> Result<(), String>,
    ) -> Result<(), String> {
        while self.applied < to {
            let i = (self.applied - self.base.index) as usize;
            let Some(e) = self.entries.get(i) else {
                break;
            };
            apply(e)?;
            self.applied += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8, term as u8].into(),
            ..Entry::default()
        }
    }

    #[test]
    fn records_round_trip_and_every_prefix_is_refused() {
        let entries = vec![entry(7, 3), entry(8, 3), entry(9, 4)];
        let mut bytes = Vec::new();
        encode_entries(&entries, 5, &mut bytes);
        assert_eq!(bytes.len(), ENTRIES_HEADER_LEN + 3 * (ENTRY_HEADER_LEN + 2));
        assert_eq!(
            Record::decode(&bytes),
            Ok(Record::Entries {
                entries: entries.clone(),
                commit: 5
            })
        );
        for n in 0..bytes.len() {
            assert!(Record::decode(&bytes[..n]).is_err(), "{n} bytes");
        }
        let mut gap = Vec::new();
        encode_entries(&[entry(7, 3), entry(9, 3)], 5, &mut gap);
        assert!(
            Record::decode(&gap).is_err(),
            "entries of a record follow one another"
        );
        // Nothing follows the largest index: refused, not wrapped to 0 (or a panic).
        let mut past_the_end = Vec::new();
        encode_entries(&[entry(u64::MAX, 3), entry(0, 3)], 5, &mut past_the_end);
        assert!(matches!(
            Record::decode(&past_the_end),
            Err(RecordError::Bad { what: "index", .. })
        ));
        bytes.clear();
        encode_reset(9, 4, &mut bytes);
        assert_eq!(
            Record::decode(&bytes),
            Ok(Record::Reset { index: 9, term: 4 })
        );
        for n in 0..bytes.len() {
            assert!(Record::decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn runs_fit_their_records() {
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        let one = ENTRIES_HEADER_LEN + entry_len(&entries[0]);
        for max in [0, one, one + entry_len(&entries[0]), 3 * one, 1 << 20] {
            let runs = runs(&entries, max);
            let flat: Vec<&Entry> = runs.iter().flat_map(|r| r.iter()).collect();
            assert_eq!(flat.len(), 10);
            for r in &runs {
                let len = ENTRIES_HEADER_LEN + r.iter().map(entry_len).sum::<usize>();
                assert!(r.len() == 1 || len <= max, "{max}: {len}");
            }
        }
    }

    #[test]
    fn a_replaced_log_after_the_snapshot_is_dropped_and_any_other_running_back_in_term_refused() {
        let base = SnapshotMetadata {
            index: 2,
            term: 3,
            ..SnapshotMetadata::default()
        };
        let rebuild = |records: Vec<Vec<Entry>>| {
            let mut rebuilt = Rebuilt::new(base.clone());
            for entries in records {
                rebuilt.push(Record::Entries { entries, commit: 0 }, &mut |_| Ok(()))?;
            }
            rebuilt.finish().map(|()| rebuilt.entries)
        };
        // The log a snapshot from the leader replaced, the crash before the journal said so:
        // dropped.
        assert_eq!(rebuild(vec![vec![entry(3, 2), entry(4, 2)]]), Ok(vec![]));
        // Anything else that runs back in term: refused.
        assert!(rebuild(vec![vec![entry(3, 3), entry(4, 5), entry(5, 4)]]).is_err());
        // The same tail, overwritten from behind the snapshot: nothing of it is left.
        assert_eq!(
            rebuild(vec![vec![entry(2, 2), entry(3, 2)], vec![entry(2, 3)]]),
            Ok(vec![])
        );
        assert_eq!(
            rebuild(vec![vec![entry(3, 3), entry(4, 4)], vec![entry(4, 5)]]),
            Ok(vec![entry(3, 3), entry(4, 5)])
        );
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_replica_record.txt", 256, "/../../"))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Record::decode(&bytes);
        }

        /// A log written the way Raft writes it (appends that override a tail from some index
        /// on, commit indexes only rising and never past what is held) reads back as the log
        /// that was held in memory, and every entry handed to `apply` is one of the final log;
        /// so does it after a snapshot at any committed entry (`snapshot_at`, a share of the
        /// final commit index), with or without the records wholly behind it.
        #[test]
        fn the_journal_rebuilds_the_log(
            steps in prop::collection::vec((0u64..4, 1usize..4, 0u64..3), 1..60),
            snapshot_at in 0u64..=4,
            pruned in any::<bool>(),
        ) {
            let mut held: Vec<Entry> = Vec::new();
            let mut records = Vec::new();
            let (mut term, mut commit) = (1u64, 0u64);
            for (back, n, commit_step) in steps {
                // Overwrite from an index above the commit index, never below.
                let from = (held.len() as u64).saturating_sub(back).max(commit) + 1;
                held.truncate((from - 1) as usize);
                term += u64::from(back > 0);
                let mut run = Vec::new();
                for k in 0..n as u64 {
                    let e = entry(from + k, term);
                    held.push(e.clone());
                    run.push(e);
                }
                records.push(Record::Entries { entries: run, commit });
                commit = (commit + commit_step).min(held.len() as u64);
            }
            let base = commit * snapshot_at / 4;
            if pruned {
                // Pruning drops only the oldest records, and only those wholly behind the
                // snapshot.
                let behind = records
                    .iter()
                    .take_while(|r| matches!(r, Record::Entries { entries, .. }
                        if entries.iter().all(|e| e.index <= base)))
                    .count();
                records.drain(..behind);
            }
            let mut rebuilt = Rebuilt::new(SnapshotMetadata {
                index: base,
                term: base.checked_sub(1).map_or(0, |i| held[i as usize].term),
                ..SnapshotMetadata::default()
            });
            let held = held.split_off(base as usize);
            let mut applied = Vec::new();
            for r in records {
                rebuilt
                    .push(r, &mut |e| {
                        applied.push(e.clone());
                        Ok(())
                    })
                    .map_err(TestCaseError::fail)?;
            }
            prop_assert_eq!(rebuilt.finish(), Ok(()));
            prop_assert_eq!(&rebuilt.entries, &held);
            prop_assert_eq!(&applied[..], &held[..applied.len()]);
            prop_assert_eq!(rebuilt.applied, base + applied.len() as u64);
        }
    }
}
