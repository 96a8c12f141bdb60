//! Snapshot files: opaque payloads (the ledger's encoded state) stored whole and checksummed.
//!
//! A snapshot is written to a temporary name, made durable, renamed into place and the
//! directory synced, so a crash leaves either the old set of snapshots or the new one, never a
//! half-written file under a snapshot name. Loading takes the newest snapshot that is valid and
//! reports every newer one it had to reject. Layout: `docs/WAL-FORMAT.md`, "Snapshot files".

use std::fmt;

use crate::storage::{AppendFile, Storage, StorageError};

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"LEDGSNAP";
/// The snapshot file format this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Bytes of the snapshot file header.
pub const SNAPSHOT_HEADER_LEN: usize = 32;
/// How many snapshots to keep unless configured otherwise: the newest, and one to fall back on.
pub const SNAPSHOT_KEEP_DEFAULT: usize = 2;

const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";
const DIGITS: usize = 20;

/// The file name of the snapshot at `sequence`: `{sequence:020}.snap`.
pub fn snapshot_file_name(sequence: u64) -> String {
    format!("{sequence:020}{SUFFIX}")
}

fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence number of a snapshot file name, or `None` if `name` is not one.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    parse_name(name, SUFFIX)
}

/// A snapshot read back whole and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub file: String,
    /// The last log sequence the snapshot covers.
    pub sequence: u64,
    pub payload: Vec<u8>,
}

/// Why a snapshot file was not believed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotCorruption {
    #[error("file is {len_bytes} bytes, shorter than the {SNAPSHOT_HEADER_LEN}-byte header")]
    HeaderTruncated { len_bytes: u64 },
    #[error("not a snapshot file (bad magic)")]
    BadMagic,
    #[error(
        "snapshot format version {version} is not supported (this build reads {SNAPSHOT_FORMAT_VERSION})"
    )]
    UnsupportedVersion { version: u32 },
    #[error("header says sequence {in_header}, not the file's number")]
    Sequence { in_header: u64 },
    #[error("header says {payload_len_bytes} payload bytes but the file holds {actual_bytes}")]
    Length {
        payload_len_bytes: u64,
        actual_bytes: u64,
    },
    #[error("checksum mismatch")]
    Checksum,
}

/// A snapshot file passed over while loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub file: String,
    pub reason: SnapshotCorruption,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot {}: {}", self.file, self.reason)
    }
}

/// What `load_newest` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The newest valid snapshot, if there is one.
    pub snapshot: Option<Snapshot>,
    /// Newer snapshot files that were not valid, newest first. Log them.
    pub rejected: Vec<Rejected>,
}

/// What `write` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub file: String,
    /// Older snapshot files (and leftover temporary files) removed.
    pub removed: Vec<String>,
    /// The oldest snapshot still kept: log segments it needs must stay (see
    /// `wal::delete_covered`).
    pub oldest_kept_sequence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshots to keep must be at least 1")]
    KeepZero,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn encode_header(sequence: u64, payload: &[u8]) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut header = [0u8; SNAPSHOT_HEADER_LEN];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&sequence.to_le_bytes());
    header[20..28].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..28]), payload);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A snapshot file header's fields, read from the offsets `encode_header` writes them at.
#[derive(Clone, Copy, Debug)]
struct Header {
    magic: [u8; 8],
    version: u32,
    sequence: u64,
    payload_len: u64,
    crc: u32,
    /// The checksum of the header's first 28 bytes, which the payload's continues.
    crc_of_fields: u32,
}

impl Header {
    fn parse(h: &[u8; SNAPSHOT_HEADER_LEN]) -> Header {
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        Header {
            magic: h[0..8].try_into().expect("8 bytes"),
            version: u32_at(8),
            sequence: u64_at(12),
            payload_len: u64_at(20),
            crc: u32_at(28),
            crc_of_fields: crc32c::crc32c(&h[0..28]),
        }
    }

    fn check_magic(&self) -> Result<(), SnapshotCorruption> {
        match self.magic == SNAPSHOT_MAGIC {
            true => Ok(()),
            false => Err(SnapshotCorruption::BadMagic),
        }
    }

    /// Whether this build reads it, and it is the file of snapshot `sequence`.
    fn check_version_and_sequence(&self, sequence: u64) -> Result<(), SnapshotCorruption> {
        if self.version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotCorruption::UnsupportedVersion {
                version: self.version,
            });
        }
        if self.sequence != sequence {
            return Err(SnapshotCorruption::Sequence {
                in_header: self.sequence,
            });
        }
        Ok(())
    }
}

/// Checks a whole snapshot file named for `sequence`; returns its payload. The checksum is
/// checked before the version and sequence, so that a damaged header reads as damage.
fn decode(bytes: &[u8], sequence: u64) -> Result<&[u8], SnapshotCorruption> {
    let Some((header, payload)) = bytes.split_first_chunk::<SNAPSHOT_HEADER_LEN>() else {
        return Err(SnapshotCorruption::HeaderTruncated {
            len_bytes: bytes.len() as u64,
        });
    };
    let header = Header::parse(header);
    header.check_magic()?;
    if header.payload_len != payload.len() as u64 {
        return Err(SnapshotCorruption::Length {
            payload_len_bytes: header.payload_len,
            actual_bytes: payload.len() as u64,
        });
    }
    if crc32c::crc32c_append(header.crc_of_fields, payload) != header.crc {
        return Err(SnapshotCorruption::Checksum);
    }
    header.check_version_and_sequence(sequence)?;
    Ok(payload)
}

/// A snapshot is written in pieces of this many bytes, each made durable before the next.
/// Written at once, the kernel would flush all of it in one burst, and the log's fdatasync
/// (which answers wait for) would queue behind hundreds of megabytes on the same disk: at
/// 112,602 requests a second with a snapshot due every 64 MiB of log, p99 went from 14 ms to
/// 34–70 ms that way, and stays at 13–15 ms in 1 MiB pieces (BENCHMARKS.md).
pub const WRITE_PIECE_BYTES: usize = 1 << 20;

/// Writes the snapshot covering the log up to `sequence`, durably, then keeps only the newest
/// `keep` snapshots (`SNAPSHOT_KEEP_DEFAULT` is a good choice).
pub fn write<S: Storage>(
    storage: &S,
    sequence: u64,
    payload: &[u8],
    keep: usize,
) -> Result<Written, SnapshotFileError> {
    if keep == 0 {
        return Err(SnapshotFileError::KeepZero);
    }
    let file = snapshot_file_name(sequence);
    let temp = format!("{sequence:020}{TEMP_SUFFIX}");
    let err = |name: &str, action: &'static str| {
        let name = name.to_owned();
        move |e| StorageError::new(&name, action, e)
    };
    let mut out = storage.create(&temp).map_err(err(&temp, "create"))?;
    out.append(&encode_header(sequence, payload))
        .map_err(err(&temp, "write"))?;
    // Piece by piece, each durable before the next: the disk never has more than a piece of
    // the snapshot queued ahead of the log's own fdatasync.
    for piece in payload.chunks(WRITE_PIECE_BYTES) {
        out.append(piece).map_err(err(&temp, "write"))?;
        out.sync_data().map_err(err(&temp, "fdatasync"))?;
    }
    out.sync_data().map_err(err(&temp, "fdatasync"))?;
    drop(out);
    storage.rename(&temp, &file).map_err(err(&temp, "rename"))?;
    storage.sync_dir().map_err(err("directory", "fsync"))?;
    let (removed, oldest_kept_sequence) = prune(storage, keep)?;
    Ok(Written {
        file,
        removed,
        oldest_kept_sequence: oldest_kept_sequence.unwrap_or(sequence),
    })
}

/// Removes all but the newest `keep` snapshot files, and leftover temporary files. Returns
/// what it removed and the oldest sequence kept.
fn prune<S: Storage>(storage: &S, keep: usize) -> Result<(Vec<String>, Option<u64>), StorageError> {
    let names = storage
        .list()
        .map_err(|e| StorageError::new("directory", "list", e))?;
    let mut snapshots: Vec<u64> = names
        .iter()
        .filter_map(|name| parse_snapshot_file_name(name))
        .collect();
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    let mut doomed: Vec<String> = names
        .iter()
        .filter(|name| parse_name(name, TEMP_SUFFIX).is_some())
        .cloned()
        .collect();
    doomed.extend(snapshots.iter().skip(keep).map(|&s| snapshot_file_name(s)));
    for name in &doomed {
        storage
            .remove(name)
            .map_err(|e| StorageError::new(name, "remove", e))?;
    }
    if !doomed.is_empty() {
        storage
            .sync_dir()
            .map_err(|e| StorageError::new("directory", "fsync", e))?;
    }
    Ok((doomed, snapshots.iter().take(keep).min().copied()))
}

/// Sequences of the snapshot files present, newest first.
pub fn list<S: Storage>(storage: &S) -> Result<Vec<u64>, StorageError> {
    let mut snapshots: Vec<u64> = storage
        .list()
        .map_err(|e| StorageError::new("directory", "list", e))?
        .iter()
        .filter_map(|name| parse_snapshot_file_name(name))
        .collect();
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    Ok(snapshots)
}

/// Reads and verifies the snapshot at `sequence`. I/O errors are errors; invalid contents are
/// a rejection naming the file.
pub fn read<S: Storage>(
    storage: &S,
    sequence: u64,
) -> Result<Result<Snapshot, Rejected>, StorageError> {
    let file = snapshot_file_name(sequence);
    let bytes = storage
        .read(&file)
        .map_err(|e| StorageError::new(&file, "read", e))?;
    Ok(match decode(&bytes, sequence) {
        Ok(payload) => {
            let payload = payload.to_vec();
            Ok(Snapshot {
                file,
                sequence,
                payload,
            })
        }
        Err(reason) => Err(Rejected { file, reason }),
    })
}

/// Checks the bytes of a whole snapshot file (as `read` would, without a storage): header,
/// sequence and checksum.
pub fn check(bytes: &[u8], sequence: u64) -> Result<(), SnapshotCorruption> {
    decode(bytes, sequence).map(|_| ())
}

/// Checks a snapshot file named for `sequence` as its bytes arrive, in order, without holding
/// them: what `check` finds in the whole file, `finish` finds once everything was given to
/// `update`. A header that is not this snapshot's (magic, version, sequence), and bytes past
/// the length it declares, are refused as soon as they arrive, so a receiver stops early.
#[derive(Clone, Debug)]
pub struct StreamCheck {
    sequence: u64,
    /// The header's bytes so far, until it is whole and parsed.
    header_bytes: [u8; SNAPSHOT_HEADER_LEN],
    header_len: usize,
    header: Option<Header>,
    /// Payload bytes so far, and their checksum continuing the header's.
    seen: u64,
    crc: u32,
    /// The first refusal: every later call gives it again.
    refused: Option<SnapshotCorruption>,
}

impl StreamCheck {
    pub fn new(sequence: u64) -> Self {
        StreamCheck {
            sequence,
            header_bytes: [0; SNAPSHOT_HEADER_LEN],
            header_len: 0,
            header: None,
            seen: 0,
            crc: 0,
            refused: None,
        }
    }

    /// The file's next bytes. Once it refused the file, it refuses it for good.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), SnapshotCorruption> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        let result = self.take(bytes);
        if let Err(e) = &result {
            self.refused = Some(e.clone());
        }
        result
    }

    fn take(&mut self, mut bytes: &[u8]) -> Result<(), SnapshotCorruption> {
        let header = match self.header {
            Some(header) => header,
            None => {
                let n = bytes.len().min(SNAPSHOT_HEADER_LEN - self.header_len);
                self.header_bytes[self.header_len..self.header_len + n]
                    .copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len < SNAPSHOT_HEADER_LEN {
                    return Ok(());
                }
                // Refused before the payload: a receiver stops at once.
                let header = Header::parse(&self.header_bytes);
                header.check_magic()?;
                header.check_version_and_sequence(self.sequence)?;
                self.header = Some(header);
                self.crc = header.crc_of_fields;
                header
            }
        };
        self.seen = self.seen.saturating_add(bytes.len() as u64);
        if self.seen > header.payload_len {
            return Err(SnapshotCorruption::Length {
                payload_len_bytes: header.payload_len,
                actual_bytes: self.seen,
            });
        }
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        Ok(())
    }

    /// Whether the bytes given make the whole snapshot file.
    pub fn finish(self) -> Result<(), SnapshotCorruption> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        let Some(header) = self.header else {
            return Err(SnapshotCorruption::HeaderTruncated {
                len_bytes: self.header_len as u64,
            });
        };
        if self.seen != header.payload_len {
            return Err(SnapshotCorruption::Length {
                payload_len_bytes: header.payload_len,
                actual_bytes: self.seen,
            });
        }
        if self.crc != header.crc {
            return Err(SnapshotCorruption::Checksum);
        }
        Ok(())
    }
}

/// Loads the newest valid snapshot, passing over (and reporting) newer invalid ones.
/// I/O errors are errors; invalid contents are rejections.
pub fn load_newest<S: Storage>(storage: &S) -> Result<Loaded, StorageError> {
    let mut rejected = Vec::new();
    for sequence in list(storage)? {
        match read(storage, sequence)? {
            Ok(snapshot) => {
                return Ok(Loaded {
                    snapshot: Some(snapshot),
                    rejected,
                });
            }
            Err(r) => rejected.push(r),
        }
    }
    Ok(Loaded {
        snapshot: None,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;

    /// A large snapshot reaches the disk a piece at a time (each piece synced before the next
    /// is written) and reads back whole; a crash right after the write keeps all of it.
    #[test]
    fn a_large_snapshot_is_written_and_synced_piece_by_piece() {
        let storage = SimStorage::new();
        let payload: Vec<u8> = (0..5 * WRITE_PIECE_BYTES + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let before = storage.sync_count();
        write(&storage, 7, &payload, 2).expect("write");
        let pieces = payload.len().div_ceil(WRITE_PIECE_BYTES) as u64;
        assert!(
            storage.sync_count() - before >= pieces,
            "{} syncs for {pieces} pieces",
            storage.sync_count() - before
        );
        let crashed = storage.crash();
        let read = read(&crashed, 7)
            .expect("storage")
            .expect("a sound snapshot");
        assert_eq!(read.payload, payload);
    }

    #[test]
    fn round_trip_and_every_bit_flip_is_rejected() {
        let payload = b"state of the ledger".to_vec();
        let mut bytes = encode_header(9, &payload).to_vec();
        bytes.extend_from_slice(&payload);
        assert_eq!(decode(&bytes, 9), Ok(&payload[..]));
        assert_eq!(
            decode(&bytes, 10),
            Err(SnapshotCorruption::Sequence { in_header: 9 })
        );
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&flipped, 9).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], 9).is_err(), "length {len}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config!("ledger_snapshot_stream_check.txt"))]

        /// Checking a file as it arrives, in pieces cut anywhere, agrees with checking it
        /// whole: on sound files, on files with any bytes changed, cut short or run on, and
        /// on files named for another sequence.
        #[test]
        fn checking_as_it_arrives_agrees_with_checking_it_whole(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            changes in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255),
                0..3,
            ),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
            extra in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
            named in 8u64..11,
            pieces in proptest::collection::vec(1usize..64, 1..12),
        ) {
            let mut bytes = encode_header(9, &payload).to_vec();
            bytes.extend_from_slice(&payload);
            for (at, xor) in &changes {
                let i = at.index(bytes.len());
                bytes[i] ^= xor;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes.extend_from_slice(&extra);
            let whole = check(&bytes, named);
            let mut stream = StreamCheck::new(named);
            let mut rest = &bytes[..];
            let mut refused = Ok(());
            for len in pieces.iter().cycle() {
                if rest.is_empty() || refused.is_err() {
                    break;
                }
                let (piece, after) = rest.split_at((*len).min(rest.len()));
                refused = stream.update(piece);
                rest = after;
            }
            let streamed = refused.and_then(|()| stream.finish());
            // A header that is not this snapshot's is refused at its last byte, and for good.
            if changes.is_empty() && named != 9 && bytes.len() >= SNAPSHOT_HEADER_LEN {
                let mut early = StreamCheck::new(named);
                proptest::prop_assert_eq!(
                    early.update(&bytes[..SNAPSHOT_HEADER_LEN]),
                    Err(SnapshotCorruption::Sequence { in_header: 9 })
                );
                proptest::prop_assert!(early.update(&bytes[SNAPSHOT_HEADER_LEN..]).is_err());
                proptest::prop_assert!(early.finish().is_err());
            }
            proptest::prop_assert_eq!(whole.is_ok(), streamed.is_ok(), "{:?} {:?}", whole, streamed);
            if changes.is_empty() && cut.is_none() && extra.is_empty() && named == 9 {
                proptest::prop_assert!(streamed.is_ok());
            }
        }
    }

    /// The example in `docs/WAL-FORMAT.md`: sequence 7, payload "state".
    #[test]
    fn encoding_matches_the_documented_example() {
        let hex: String = encode_header(7, b"state")
            .iter()
            .chain(b"state")
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "4c454447534e4150010000000700000000000000050000000000000030f343ba7374617465"
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(snapshot_file_name(5), "00000000000000000005.snap");
        assert_eq!(
            parse_snapshot_file_name("00000000000000000005.snap"),
            Some(5)
        );
        assert_eq!(
            parse_snapshot_file_name("00000000000000000005.snap.tmp"),
            None
        );
        assert_eq!(parse_snapshot_file_name("5.snap"), None);
    }
}
