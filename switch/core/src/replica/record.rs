//! The journal under replication: each write-ahead-log record holds one Raft entry (its term,
//! index, the commit index known when it was written, its type and data), or marks that a
//! snapshot from the leader replaced the log. Layouts in `docs/WAL-FORMAT.md`.
//!
//! The log is append-only, so a tail that a new leader overrides is not erased: the entry
//! written later for an index replaces the one written before, and drops every entry after
//! it, exactly as `LogStore::append` does in memory. Reading the records back in order
//! therefore rebuilds the log as it stood. An entry at or below a commit index written after
//! it is final: no later record can replace it.

use raft::eraftpb::{Entry, EntryType, SnapshotMetadata};

/// A record holding one entry.
const RECORD_ENTRY: u8 = 0x20;
/// A record saying that the log now starts after a snapshot installed from the leader.
const RECORD_RESET: u8 = 0x21;

/// Bytes of an entry record besides its data.
pub const ENTRY_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 1;

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
    #[error("replicated log record: {extra} bytes after the reset at offset {offset}")]
    Trailing { offset: usize, extra: usize },
}

/// One record of the replicated journal.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Entry { entry: Entry, commit: u64 },
    Reset { index: u64, term: u64 },
}

fn entry_type_code(t: EntryType) -> u8 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// Encodes `entry` with the commit index known now.
pub fn encode_entry(entry: &Entry, commit: u64, out: &mut Vec<u8>) {
    out.reserve(ENTRY_HEADER_LEN + entry.data.len());
    out.push(RECORD_ENTRY);
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&commit.to_le_bytes());
    out.push(entry_type_code(entry.get_entry_type()));
    out.extend_from_slice(&entry.data);
}

pub fn encode_reset(index: u64, term: u64, out: &mut Vec<u8>) {
    out.push(RECORD_RESET);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
}

fn u64_at(payload: &[u8], at: usize, what: &'static str) -> Result<u64, RecordError> {
    payload
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(RecordError::Truncated {
            len: payload.len(),
            what,
        })
}

impl Record {
    /// Decodes a whole payload; never panics.
    pub fn decode(payload: &[u8]) -> Result<Record, RecordError> {
        let Some(&tag) = payload.first() else {
            return Err(RecordError::Truncated {
                len: 0,
                what: "record type",
            });
        };
        match tag {
            RECORD_ENTRY => {
                let term = u64_at(payload, 1, "term")?;
                let index = u64_at(payload, 9, "index")?;
                let commit = u64_at(payload, 17, "commit")?;
                let kind = *payload.get(25).ok_or(RecordError::Truncated {
                    len: payload.len(),
                    what: "entry type",
                })?;
                let entry_type = match kind {
                    0 => EntryType::EntryNormal,
                    1 => EntryType::EntryConfChange,
                    2 => EntryType::EntryConfChangeV2,
                    _ => {
                        return Err(RecordError::Bad {
                            offset: 25,
                            what: "entry type",
                            value: u64::from(kind),
                        });
                    }
                };
                if index == 0 {
                    return Err(RecordError::Bad {
                        offset: 9,
                        what: "index",
                        value: 0,
                    });
                }
                let mut entry = Entry::default();
                entry.term = term;
                entry.index = index;
                entry.set_entry_type(entry_type);
                entry.data = payload[ENTRY_HEADER_LEN..].to_vec().into();
                Ok(Record::Entry { entry, commit })
            }
            RECORD_RESET => {
                let index = u64_at(payload, 1, "index")?;
                let term = u64_at(payload, 9, "term")?;
                if payload.len() != 17 {
                    return Err(RecordError::Trailing {
                        offset: 17,
                        extra: payload.len().saturating_sub(17),
                    });
                }
                Ok(Record::Reset { index, term })
            }
            tag => Err(RecordError::Bad {
                offset: 0,
                what: "record type",
                value: u64::from(tag),
            }),
        }
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
            Record::Reset { index, term } => {
                if index > self.base.index {
                    // A later snapshot replaced everything before; what the caller loaded
                    // covers at most this much (it is the newest snapshot), so the state to
                    // start from is the installed one, which a caller must have loaded.
                    self.entries.clear();
                    self.base.index = index;
                    self.base.term = term;
                    self.commit = self.commit.max(index);
                    self.applied = self.applied.max(index);
                }
                Ok(())
            }
            Record::Entry { entry, commit } => {
                let index = entry.index;
                if index <= self.base.index {
                    // Covered by the snapshot (written before it was taken).
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
                self.commit = self.commit.max(commit.min(self.last()));
                self.apply_to(self.commit, apply)
            }
        }
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
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8, term as u8].into();
        e
    }

    #[test]
    fn records_round_trip() {
        let e = entry(7, 3);
        let mut bytes = Vec::new();
        encode_entry(&e, 5, &mut bytes);
        assert_eq!(bytes.len(), ENTRY_HEADER_LEN + 2);
        assert_eq!(
            Record::decode(&bytes),
            Ok(Record::Entry {
                entry: e,
                commit: 5
            })
        );
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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Record::decode(&bytes);
        }

        /// A log written the way Raft writes it (appends that override a tail from some index
        /// on, commit indexes only rising and never past what is held) reads back as the log
        /// that was held in memory, and every entry handed to `apply` is one of the final log.
        #[test]
        fn the_journal_rebuilds_the_log(
            steps in prop::collection::vec((0u64..4, 1usize..4, 0u64..3), 1..60),
        ) {
            let mut held: Vec<Entry> = Vec::new();
            let mut records = Vec::new();
            let (mut term, mut commit) = (1u64, 0u64);
            for (back, n, commit_step) in steps {
                // Overwrite from an index above the commit index, never below.
                let from = (held.len() as u64).saturating_sub(back).max(commit) + 1;
                held.truncate((from - 1) as usize);
                term += u64::from(back > 0);
                for k in 0..n as u64 {
                    let e = entry(from + k, term);
                    held.push(e.clone());
                    records.push(Record::Entry { entry: e, commit });
                }
                commit = (commit + commit_step).min(held.len() as u64);
            }
            let mut rebuilt = Rebuilt::new(SnapshotMetadata::default());
            let mut applied = Vec::new();
            for r in records {
                rebuilt
                    .push(r, &mut |e| {
                        applied.push(e.clone());
                        Ok(())
                    })
                    .map_err(TestCaseError::fail)?;
            }
            prop_assert_eq!(&rebuilt.entries, &held);
            prop_assert_eq!(&applied[..], &held[..applied.len()]);
            prop_assert_eq!(rebuilt.applied, applied.len() as u64);
        }
    }
}
