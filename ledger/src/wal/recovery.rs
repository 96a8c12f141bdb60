//! Reading the log back at start-up.
//!
//! Segments are streamed in order, one bounded window at a time, and every record is checked:
//! framing, checksum (salted with the segment number), and that its sequence number is the
//! next one. What is found invalid is judged by where it is:
//!
//! - in the last segment, with no valid later record after it: a write that a crash cut short
//!   (a torn tail). The file is truncated there and `Recovered::truncation` says so.
//! - anywhere else: corruption. Recovery refuses, naming the file and byte offset, unless the
//!   operator chose to cut the log at exactly that point (`OnCorruption::TruncateAt`), which
//!   discards every record from there on.

use std::fmt;

use super::format::{
    Corruption, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, SegmentHeader,
    parse_segment_file_name, segment_file_name,
};
use super::{OptionsError, RECORD_SIZE_MAX_DEFAULT, StorageError, check_record_size};
use crate::storage::Storage;

/// Reads are done in windows of at least this many bytes.
const READ_WINDOW_BYTES: usize = 1 << 20;

/// What to do about invalid data that is not a torn tail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnCorruption {
    /// Stop with `RecoveryError::Corrupt`.
    #[default]
    Refuse,
    /// The operator's explicit choice, after reading a `RecoveryError::Corrupt`: cut the log at
    /// this segment and byte offset if that is where the first invalid data is. Every record
    /// from there on, later segments included, is discarded. Any other corruption still refuses.
    TruncateAt { segment: u64, offset: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoverOptions {
    /// Records longer than this are invalid (checked before anything is allocated for them).
    pub record_size_max_bytes: u32,
    /// Records up to and including this sequence are checked but not applied: a snapshot
    /// covers them. 0 applies everything.
    pub after_sequence: u64,
    pub on_corruption: OnCorruption,
    /// The oldest segment may start at any sequence: the records before it were retired
    /// behind a snapshot that the caller found and checks itself (the records a replica needs
    /// after its snapshot are not known by sequence). Gaps between segments are still refused.
    pub missing_prefix_allowed: bool,
    /// The most bytes one write of the log's writer spanned (`WalOptions::write_max_bytes`).
    /// In a last segment that ends in zeros (filled ahead), a power loss may have kept any
    /// pages of the write in flight and lost others, so valid records may follow the first
    /// invalid data; they are taken for that write, and the tail for torn, only while each
    /// ends within this many bytes of the invalid data.
    pub write_max_bytes: u64,
}

impl Default for RecoverOptions {
    fn default() -> Self {
        RecoverOptions {
            record_size_max_bytes: RECORD_SIZE_MAX_DEFAULT,
            after_sequence: 0,
            on_corruption: OnCorruption::Refuse,
            missing_prefix_allowed: false,
            write_max_bytes: super::WalOptions::default().write_max_bytes(),
        }
    }
}

/// Where the writer continues: always a new segment, after every existing one.
/// Only `recover` makes one, so a log cannot be opened for writing without being read first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    next_segment: u64,
    next_sequence: u64,
}

impl Resume {
    pub fn next_segment(&self) -> u64 {
        self.next_segment
    }

    /// The sequence number the next record gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
}

/// Why the log was cut during recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncationCause {
    /// An interrupted write at the end of the log; nothing acknowledged was lost.
    TornTail,
    /// `OnCorruption::TruncateAt`: records from the cut on were discarded.
    OperatorChoice,
}

/// Where and why recovery cut the log. Log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file cut (or removed, when its header was invalid).
    pub file: String,
    pub offset: u64,
    pub reason: Corruption,
    pub cause: TruncationCause,
    /// Segment files removed: the cut one if its header was invalid, and every later one.
    pub removed_files: Vec<String>,
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WAL segment {} offset {}: {}; ",
            self.file, self.offset, self.reason
        )?;
        match self.cause {
            TruncationCause::TornTail => f.write_str("torn tail trimmed")?,
            TruncationCause::OperatorChoice => {
                f.write_str("log cut here by operator choice, later records discarded")?
            }
        }
        if !self.removed_files.is_empty() {
            write!(f, " (removed {})", self.removed_files.join(", "))?;
        }
        Ok(())
    }
}

/// What recovery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Records passed to the callback.
    pub records_applied: u64,
    /// Valid records at or before `after_sequence`.
    pub records_skipped: u64,
    /// Segment files read.
    pub segments_read: u64,
    /// Sequence of the last valid record in the log, if any.
    pub last_sequence: Option<u64>,
    pub truncation: Option<Truncation>,
    pub resume: Resume,
}

/// Why recovery stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError<E> {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Invalid data that is not a torn tail.
    #[error("WAL segment {file} offset {offset}: {reason}{}", later_note(.valid_record_at))]
    Corrupt {
        file: String,
        offset: u64,
        reason: Corruption,
        /// In the last segment: the offset of a valid record after the invalid data, which is
        /// why it is not a torn tail.
        valid_record_at: Option<u64>,
    },
    #[error("WAL segment {missing} is missing (the next one present is {found})")]
    MissingSegment { missing: String, found: String },
    /// The oldest segment starts after the first record the snapshot does not cover.
    #[error(
        "WAL segment {file} starts at sequence {first_sequence}, but records from {} on are \
         needed (snapshot sequence {after_sequence}); records are missing",
        .after_sequence + 1
    )]
    Gap {
        file: String,
        first_sequence: u64,
        after_sequence: u64,
    },
    /// The callback refused a record.
    #[error("applying WAL record {sequence}: {source}")]
    Apply { sequence: u64, source: E },
    /// `read_through`: the log ends before the record asked for.
    #[error("the log ends at sequence {last}, before sequence {through}")]
    Short { through: u64, last: u64 },
}

fn later_note(valid_record_at: &Option<u64>) -> String {
    match valid_record_at {
        Some(at) => format!(" (a valid record follows at offset {at}, so this is not a torn tail)"),
        None => String::new(),
    }
}

/// Streams every valid record after `options.after_sequence` to `apply`, in sequence order,
/// and reports what it found and where the writer resumes. A torn tail is trimmed (the
/// storage is changed); corruption elsewhere is an error that names file and offset.
pub fn recover<S, E>(
    storage: &S,
    options: &RecoverOptions,
    mut apply: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<Recovered, RecoveryError<E>>
where
    S: Storage,
{
    check_record_size(options.record_size_max_bytes)?;
    let segments = contiguous_segments(storage)?;
    let mut scan = Scan {
        options,
        expected: None,
        last_sequence: None,
        applied: 0,
        skipped: 0,
    };
    let mut segments_read = 0;
    let mut truncation = None;
    let mut next_segment = segments.last().map_or(1, |&last| last + 1);
    for (i, &segment) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let name = segment_file_name(segment);
        segments_read += 1;
        let Some(invalid) = scan.segment(storage, segment, &name, is_last, &mut apply)? else {
            continue;
        };
        let torn =
            is_last && invalid.reason.can_be_torn_write() && invalid.valid_record_at.is_none();
        let chosen = options.on_corruption
            == OnCorruption::TruncateAt {
                segment,
                offset: invalid.offset,
            };
        if !torn && !chosen {
            return Err(RecoveryError::Corrupt {
                file: name,
                offset: invalid.offset,
                reason: invalid.reason,
                valid_record_at: invalid.valid_record_at,
            });
        }
        // Later segments go first, newest first, so that a crash part-way leaves a log that
        // the same choice cuts at the same point again.
        let mut removed_files = Vec::new();
        for &later in segments[i + 1..].iter().rev() {
            let later = segment_file_name(later);
            storage
                .remove(&later)
                .map_err(|e| StorageError::new(&later, "remove", e))?;
            removed_files.push(later);
        }
        removed_files.reverse();
        if invalid.offset < SEGMENT_HEADER_LEN as u64 {
            // No valid header: the segment holds nothing; the writer recreates it.
            storage
                .remove(&name)
                .map_err(|e| StorageError::new(&name, "remove", e))?;
            removed_files.insert(0, name.clone());
            next_segment = segment;
        } else {
            storage
                .truncate(&name, invalid.offset)
                .map_err(|e| StorageError::new(&name, "truncate", e))?;
            storage
                .sync(&name)
                .map_err(|e| StorageError::new(&name, "fdatasync", e))?;
            next_segment = segment + 1;
        }
        if !removed_files.is_empty() {
            storage
                .sync_dir()
                .map_err(|e| StorageError::new("directory", "fsync", e))?;
        }
        truncation = Some(Truncation {
            file: name,
            offset: invalid.offset,
            reason: invalid.reason,
            cause: if torn {
                TruncationCause::TornTail
            } else {
                TruncationCause::OperatorChoice
            },
            removed_files,
        });
        break;
    }
    let after_snapshot = options.after_sequence.saturating_add(1);
    Ok(Recovered {
        records_applied: scan.applied,
        records_skipped: scan.skipped,
        segments_read,
        last_sequence: scan.last_sequence,
        truncation,
        resume: Resume {
            next_segment,
            // Past the snapshot too: it may cover records that never reached the log, and
            // their sequence numbers must not be given out again.
            next_sequence: scan.expected.unwrap_or(1).max(after_snapshot),
        },
    })
}

/// Streams the records after `after_sequence` up to and including `through_sequence` to
/// `apply`, in order, and returns how many it passed. Read only: nothing in the storage is
/// changed, and nothing after `through_sequence` is needed, so the log can be read while its
/// writer appends (to build a snapshot off the writer's thread from records already durable).
/// Every record up to `through_sequence` must be present and valid; invalid data before it is
/// `Corrupt` (never trimmed here), and a log that ends before it is `Short`.
pub fn read_through<S, E>(
    storage: &S,
    record_size_max_bytes: u32,
    after_sequence: u64,
    through_sequence: u64,
    mut apply: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, RecoveryError<E>>
where
    S: Storage,
{
    check_record_size(record_size_max_bytes)?;
    if through_sequence <= after_sequence {
        return Ok(0);
    }
    let options = RecoverOptions {
        record_size_max_bytes,
        after_sequence,
        ..RecoverOptions::default()
    };
    let segments = contiguous_segments(storage)?;
    let mut scan = Scan {
        options: &options,
        expected: None,
        last_sequence: None,
        applied: 0,
        skipped: 0,
    };
    // Records after `through_sequence` in its segment are checked and passed over; the
    // segments after it are not read.
    let mut passed = 0;
    let mut step = |sequence: u64, payload: &[u8]| {
        if sequence > through_sequence {
            return Ok(());
        }
        passed += 1;
        apply(sequence, payload)
    };
    for (i, &segment) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let name = segment_file_name(segment);
        let found = scan.segment(storage, segment, &name, is_last, &mut step)?;
        let reached = scan
            .last_sequence
            .is_some_and(|last| last >= through_sequence);
        if reached {
            break;
        }
        if let Some(invalid) = found {
            // A write still under way (or cut short) at the end: the log ends before it.
            let torn =
                is_last && invalid.reason.can_be_torn_write() && invalid.valid_record_at.is_none();
            if torn {
                break;
            }
            return Err(RecoveryError::Corrupt {
                file: name,
                offset: invalid.offset,
                reason: invalid.reason,
                valid_record_at: invalid.valid_record_at,
            });
        }
    }
    match scan.last_sequence {
        Some(last) if last >= through_sequence => Ok(passed),
        last => Err(RecoveryError::Short {
            through: through_sequence,
            last: last.unwrap_or(0),
        }),
    }
}

/// Removes the oldest segments while every record in them is at or before `sequence` (judged
/// by the first sequence of the segment after). The last segment is never removed. Pass the
/// sequence of the oldest snapshot you keep, so that falling back to it still finds the log
/// it needs. Returns the names removed.
pub fn delete_covered<S: Storage>(storage: &S, sequence: u64) -> Result<Vec<String>, StorageError> {
    let segments = list_segments(storage)?;
    let mut removed = Vec::new();
    for pair in segments.windows(2) {
        let next = segment_file_name(pair[1]);
        let mut bytes = [0u8; SEGMENT_HEADER_LEN];
        let n = storage
            .read_at(&next, 0, &mut bytes)
            .map_err(|e| StorageError::new(&next, "read", e))?;
        // A header not (yet) valid tells nothing; stop there.
        let Ok(header) = SegmentHeader::decode(&bytes[..n], pair[1]) else {
            break;
        };
        if header.first_sequence > sequence.saturating_add(1) {
            break;
        }
        let name = segment_file_name(pair[0]);
        storage
            .remove(&name)
            .map_err(|e| StorageError::new(&name, "remove", e))?;
        removed.push(name);
    }
    if !removed.is_empty() {
        storage
            .sync_dir()
            .map_err(|e| StorageError::new("directory", "fsync", e))?;
    }
    Ok(removed)
}

/// Segment numbers present, ascending, with none missing between the first and the last.
fn contiguous_segments<S: Storage, E>(storage: &S) -> Result<Vec<u64>, RecoveryError<E>> {
    let segments = list_segments(storage)?;
    for pair in segments.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(RecoveryError::MissingSegment {
                missing: segment_file_name(pair[0] + 1),
                found: segment_file_name(pair[1]),
            });
        }
    }
    Ok(segments)
}

/// Segment numbers present, ascending.
fn list_segments<S: Storage>(storage: &S) -> Result<Vec<u64>, StorageError> {
    let mut segments: Vec<u64> = storage
        .list()
        .map_err(|e| StorageError::new("directory", "list", e))?
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// The first invalid data in a segment.
struct Invalid {
    offset: u64,
    reason: Corruption,
    valid_record_at: Option<u64>,
}

struct Scan<'a> {
    options: &'a RecoverOptions,
    /// The sequence the next record must have, once a segment header said.
    expected: Option<u64>,
    last_sequence: Option<u64>,
    applied: u64,
    skipped: u64,
}

impl Scan<'_> {
    /// Reads one segment, applying its valid records; returns the first invalid data, if any.
    fn segment<S: Storage, E>(
        &mut self,
        storage: &S,
        segment: u64,
        name: &str,
        is_last: bool,
        apply: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<Option<Invalid>, RecoveryError<E>> {
        let len_bytes = storage
            .len_bytes(name)
            .map_err(|e| StorageError::new(name, "stat", e))?;
        let mut reader = Window {
            storage,
            name,
            len_bytes,
            offset: 0,
            bytes: Vec::new(),
        };
        let after = self.options.after_sequence;
        let max = self.options.record_size_max_bytes;
        let header_bytes = reader.get(0, len_bytes.min(SEGMENT_HEADER_LEN as u64) as usize)?;
        let header = match SegmentHeader::decode(header_bytes, segment) {
            Ok(header) => header,
            Err(reason) => {
                return Ok(Some(self.invalid(
                    &mut reader,
                    segment,
                    0,
                    reason,
                    is_last,
                )?));
            }
        };
        let first = header.first_sequence;
        let expected = match self.expected {
            _ if first == 0 => {
                let reason = Corruption::FirstSequence {
                    expected: self.expected.unwrap_or(1),
                    found: 0,
                };
                return Ok(Some(self.invalid(
                    &mut reader,
                    segment,
                    0,
                    reason,
                    false,
                )?));
            }
            None if first > after.saturating_add(1) && !self.options.missing_prefix_allowed => {
                return Err(RecoveryError::Gap {
                    file: name.to_owned(),
                    first_sequence: first,
                    after_sequence: after,
                });
            }
            None => first,
            Some(expected) if first == expected => first,
            // A gap that the snapshot covers: the writer resumed past the snapshot.
            Some(expected) if first > expected && first <= after.saturating_add(1) => first,
            Some(expected) => {
                let reason = Corruption::FirstSequence {
                    expected,
                    found: first,
                };
                return Ok(Some(self.invalid(
                    &mut reader,
                    segment,
                    0,
                    reason,
                    false,
                )?));
            }
        };
        self.expected = Some(expected);
        let mut offset = SEGMENT_HEADER_LEN as u64;
        while offset < len_bytes {
            let remaining_bytes = len_bytes - offset;
            let reason = match record_at(&mut reader, segment, offset, max)? {
                Err(reason) => reason,
                Ok(header) => {
                    let expected = self.expected.expect("set from the segment header");
                    if header.sequence != expected {
                        Corruption::Sequence {
                            expected,
                            found: header.sequence,
                        }
                    } else if expected == u64::MAX {
                        Corruption::SequenceExhausted
                    } else {
                        let len = header.len_bytes as usize;
                        let record = reader.get(offset, RECORD_HEADER_LEN + len)?;
                        if header.sequence > after {
                            apply(header.sequence, &record[RECORD_HEADER_LEN..]).map_err(
                                |source| RecoveryError::Apply {
                                    sequence: header.sequence,
                                    source,
                                },
                            )?;
                            self.applied += 1;
                        } else {
                            self.skipped += 1;
                        }
                        self.last_sequence = Some(header.sequence);
                        self.expected = Some(expected + 1);
                        offset += (RECORD_HEADER_LEN + len) as u64;
                        continue;
                    }
                }
            };
            debug_assert!(remaining_bytes > 0);
            return Ok(Some(self.invalid(
                &mut reader,
                segment,
                offset,
                reason,
                is_last,
            )?));
        }
        Ok(None)
    }

    /// Describes invalid data at `offset`; in the last segment, and only if a torn write could
    /// explain it, looks for a valid record after it.
    fn invalid<S: Storage>(
        &self,
        reader: &mut Window<'_, S>,
        segment: u64,
        offset: u64,
        reason: Corruption,
        is_last: bool,
    ) -> Result<Invalid, StorageError> {
        let valid_record_at = if is_last && reason.can_be_torn_write() {
            // Without a known next sequence (a bad header on the first segment), any sequence
            // up to the first one the snapshot does not cover could start the segment.
            let (lowest, base) = match self.expected {
                Some(expected) => (expected, expected),
                None => (1, self.options.after_sequence.saturating_add(1)),
            };
            let max = self.options.record_size_max_bytes;
            let first = find_valid_record(reader, segment, offset, lowest, base, max)?;
            match first {
                Some(at) if ends_in_zeros(reader)? => {
                    let window_end = offset.saturating_add(self.options.write_max_bytes);
                    records_past(reader, segment, at, window_end, max)?
                }
                other => other,
            }
        } else {
            None
        };
        Ok(Invalid {
            offset,
            reason,
            valid_record_at,
        })
    }
}

/// Checks the record at `offset` (framing, size bound, checksum) without applying it.
fn record_at<S: Storage>(
    reader: &mut Window<'_, S>,
    segment: u64,
    offset: u64,
    max_bytes: u32,
) -> Result<Result<RecordHeader, Corruption>, StorageError> {
    let remaining_bytes = reader.len_bytes - offset;
    if remaining_bytes < RECORD_HEADER_LEN as u64 {
        return Ok(Err(Corruption::RecordHeaderTruncated { remaining_bytes }));
    }
    let header_bytes = reader.get(offset, RECORD_HEADER_LEN)?;
    if header_bytes.iter().all(|&b| b == 0) {
        return Ok(Err(Corruption::Unwritten));
    }
    let header = RecordHeader::decode(
        header_bytes
            .try_into()
            .expect("the window returns exactly the length asked"),
    );
    let after_header = remaining_bytes - RECORD_HEADER_LEN as u64;
    let len_bytes = header.len_bytes;
    if len_bytes > max_bytes {
        // Believe the length only if the record checks out, read piece by piece so that
        // nothing of that size is allocated: then it is a whole record, not a torn one.
        if u64::from(len_bytes) <= after_header {
            let mut crc = header.crc_start(segment);
            let mut at = offset + RECORD_HEADER_LEN as u64;
            let end = at + u64::from(len_bytes);
            while at < end {
                let piece = (end - at).min(READ_WINDOW_BYTES as u64) as usize;
                crc = crc32c::crc32c_append(crc, reader.get(at, piece)?);
                at += piece as u64;
            }
            if crc == header.crc {
                return Ok(Err(Corruption::RecordOverMaximum {
                    len_bytes,
                    max_bytes,
                }));
            }
        }
        return Ok(Err(Corruption::RecordTooLarge {
            len_bytes,
            max_bytes,
        }));
    }
    if u64::from(header.len_bytes) > after_header {
        return Ok(Err(Corruption::RecordTruncated {
            len_bytes: header.len_bytes,
            remaining_bytes: after_header,
        }));
    }
    let record = reader.get(offset, RECORD_HEADER_LEN + header.len_bytes as usize)?;
    if !header.matches(segment, &record[RECORD_HEADER_LEN..]) {
        return Ok(Err(Corruption::Checksum));
    }
    Ok(Ok(header))
}

/// The offset of the first valid record after `invalid_at`, trying every byte offset. A record
/// there would follow at least zero records of at least `RECORD_HEADER_LEN` bytes each, so its
/// sequence lies in `lowest..=base + distance / RECORD_HEADER_LEN`; that bound keeps the
/// checksum work on random bytes negligible. Runs of zeros (a segment's space written ahead)
/// are passed over at once: no record header is all zeros.
fn find_valid_record<S: Storage>(
    reader: &mut Window<'_, S>,
    segment: u64,
    invalid_at: u64,
    lowest: u64,
    base: u64,
    max_bytes: u32,
) -> Result<Option<u64>, StorageError> {
    let len_bytes = reader.len_bytes;
    let mut offset = invalid_at + 1;
    while offset + RECORD_HEADER_LEN as u64 <= len_bytes {
        let header_bytes = reader.get(offset, RECORD_HEADER_LEN)?;
        if header_bytes.iter().all(|&b| b == 0) {
            // Any header with a byte that is not zero starts at most a header's length
            // before it.
            match reader.next_nonzero(offset)? {
                Some(at) => {
                    offset = (at + 1)
                        .saturating_sub(RECORD_HEADER_LEN as u64)
                        .max(offset + 1);
                    continue;
                }
                None => return Ok(None),
            }
        }
        let header = RecordHeader::decode(
            header_bytes
                .try_into()
                .expect("the window returns exactly the length asked"),
        );
        let highest = base.saturating_add((offset - invalid_at) / RECORD_HEADER_LEN as u64);
        let plausible = header.len_bytes <= max_bytes
            && u64::from(header.len_bytes) <= len_bytes - offset - RECORD_HEADER_LEN as u64
            && (lowest..=highest).contains(&header.sequence);
        if plausible && record_at(reader, segment, offset, max_bytes)?.is_ok() {
            return Ok(Some(offset));
        }
        offset += 1;
    }
    Ok(None)
}

/// Whether the file's last record header's worth of bytes are zeros: a segment filled ahead.
fn ends_in_zeros<S: Storage>(reader: &mut Window<'_, S>) -> Result<bool, StorageError> {
    let len = reader.len_bytes;
    if len < (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN) as u64 {
        return Ok(false);
    }
    let tail = reader.get(len - RECORD_HEADER_LEN as u64, RECORD_HEADER_LEN)?;
    Ok(tail.iter().all(|&b| b == 0))
}

/// Follows the valid records from the one at `at` (and those found after each) and returns
/// the first that ends past `window_end`, if any.
fn records_past<S: Storage>(
    reader: &mut Window<'_, S>,
    segment: u64,
    mut at: u64,
    window_end: u64,
    max_bytes: u32,
) -> Result<Option<u64>, StorageError> {
    loop {
        let header = RecordHeader::decode(
            reader
                .get(at, RECORD_HEADER_LEN)?
                .try_into()
                .expect("the window returns exactly the length asked"),
        );
        let end = at + (RECORD_HEADER_LEN as u64) + u64::from(header.len_bytes);
        if end > window_end {
            return Ok(Some(at));
        }
        let next = header.sequence.saturating_add(1);
        match find_valid_record(reader, segment, at, next, next, max_bytes)? {
            Some(later) => at = later,
            None => return Ok(None),
        }
    }
}

/// The index of the first byte that is not zero, looking eight at a time.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        if u64::from_ne_bytes(word.try_into().expect("eight bytes")) != 0 {
            return word.iter().position(|&b| b != 0).map(|i| at + i);
        }
        at += 8;
    }
    let rest = words.remainder();
    rest.iter().position(|&b| b != 0).map(|i| at + i)
}

/// A bounded window over one file, refilled on demand.
struct Window<'a, S> {
    storage: &'a S,
    name: &'a str,
    len_bytes: u64,
    /// File offset of `bytes[0]`.
    offset: u64,
    bytes: Vec<u8>,
}

impl<S: Storage> Window<'_, S> {
    /// The offset of the first byte at or after `from` that is not zero, if any.
    fn next_nonzero(&mut self, mut from: u64) -> Result<Option<u64>, StorageError> {
        while from < self.len_bytes {
            let len = (self.len_bytes - from).min(READ_WINDOW_BYTES as u64) as usize;
            if let Some(i) = first_nonzero(self.get(from, len)?) {
                return Ok(Some(from + i as u64));
            }
            from += len as u64;
        }
        Ok(None)
    }

    /// `len` bytes at `offset`; the caller has checked that they lie inside the file.
    fn get(&mut self, offset: u64, len: usize) -> Result<&[u8], StorageError> {
        let end = offset + len as u64;
        assert!(end <= self.len_bytes, "reads stay inside the file");
        if offset < self.offset || end > self.offset + self.bytes.len() as u64 {
            let want = (len.max(READ_WINDOW_BYTES) as u64).min(self.len_bytes - offset);
            self.bytes.resize(want as usize, 0);
            let n = self
                .storage
                .read_at(self.name, offset, &mut self.bytes)
                .map_err(|e| StorageError::new(self.name, "read", e))?;
            if n < len {
                return Err(StorageError::new(
                    self.name,
                    "read",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file shrank while being read (offset {offset})"),
                    ),
                ));
            }
            self.bytes.truncate(n);
            self.offset = offset;
        }
        let start = (offset - self.offset) as usize;
        Ok(&self.bytes[start..start + len])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::storage::{AppendFile, SimStorage};
    use crate::wal::format::{SegmentHeader, encode_record, segment_file_name};

    /// A segment whose checksums hold but whose record has the largest sequence number (only a
    /// forged file has one): refused as corruption, never wrapped around to sequence 0.
    #[test]
    fn a_record_with_the_largest_sequence_is_corruption() {
        let storage = SimStorage::new();
        let mut file = storage.create(&segment_file_name(1)).expect("create");
        let header = SegmentHeader {
            segment: 1,
            first_sequence: u64::MAX - 1,
        };
        let mut bytes = header.encode().to_vec();
        encode_record(&mut bytes, 1, u64::MAX - 1, b"last but one");
        encode_record(&mut bytes, 1, u64::MAX, b"last");
        encode_record(&mut bytes, 1, 0, b"after the last");
        file.append(&bytes).expect("append");
        file.sync_data().expect("sync");
        let mut applied = Vec::new();
        let options = RecoverOptions {
            missing_prefix_allowed: true,
            ..RecoverOptions::default()
        };
        let err = recover(&storage, &options, |sequence, _| {
            applied.push(sequence);
            Ok::<(), std::convert::Infallible>(())
        })
        .expect_err("the record after the largest sequence is refused");
        assert_eq!(applied, vec![u64::MAX - 1], "{err}");
        assert!(
            matches!(
                err,
                RecoveryError::Corrupt {
                    reason: Corruption::SequenceExhausted,
                    ..
                }
            ),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(crate::proptest_config!("wal_first_nonzero.txt"))]

        /// Eight bytes at a time finds what one at a time finds, at any alignment.
        #[test]
        fn first_nonzero_is_the_plain_search(
            len in 0usize..100,
            marks in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..3),
            skip in 0usize..8,
        ) {
            let mut bytes = vec![0u8; len + skip];
            for (at, value) in marks {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
            }
            let bytes = &bytes[skip.min(bytes.len())..];
            prop_assert_eq!(first_nonzero(bytes), bytes.iter().position(|&b| b != 0));
        }
    }
}
