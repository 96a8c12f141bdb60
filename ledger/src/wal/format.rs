//! Bytes on disk: segment names, the segment header and record framing.
//! `docs/WAL-FORMAT.md` is the normative description; keep the two in step.

use std::fmt;

/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LEDGRWAL";
/// The segment format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header: magic, version, segment number, first sequence, CRC32C.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes of a record header: payload length, sequence number, CRC32C.
pub const RECORD_HEADER_LEN: usize = 16;
/// Default bound on one record's payload.
pub const RECORD_SIZE_MAX_DEFAULT: u32 = 8 << 20;
/// No configuration may allow records larger than this (keeps `len` and offsets far from
/// overflow and allocations sane).
pub const RECORD_SIZE_MAX_LIMIT: u32 = 1 << 30;

const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_DIGITS: usize = 20;

/// The file name of segment `segment`: `{segment:020}.wal`.
pub fn segment_file_name(segment: u64) -> String {
    format!("{segment:020}{SEGMENT_SUFFIX}")
}

/// The segment number of a segment file name, or `None` if `name` is not one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The largest number is no segment: the one after it could not be named.
    digits.parse().ok().filter(|&n| n < u64::MAX)
}

/// Why bytes on disk are not a valid segment header or record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The file is shorter than a segment header.
    HeaderTruncated {
        len_bytes: u64,
    },
    BadMagic,
    UnsupportedVersion {
        version: u32,
    },
    HeaderChecksum,
    /// The header names another segment than the file name.
    SegmentNumber {
        in_header: u64,
    },
    /// The segment does not start where the previous one ended.
    FirstSequence {
        expected: u64,
        found: u64,
    },
    /// Fewer bytes remain than a record header.
    RecordHeaderTruncated {
        remaining_bytes: u64,
    },
    /// The length field is over the configured maximum, and what follows it does not check
    /// out as a record of that length.
    RecordTooLarge {
        len_bytes: u32,
        max_bytes: u32,
    },
    /// A record whose checksum is valid but whose payload is over the configured maximum: the
    /// log was written with a larger `record_size_max_bytes`.
    RecordOverMaximum {
        len_bytes: u32,
        max_bytes: u32,
    },
    /// The record runs past the end of the file.
    RecordTruncated {
        len_bytes: u32,
        remaining_bytes: u64,
    },
    Checksum,
    /// A record header of zeros only: space the writer filled with zeros ahead and had not
    /// reached yet (no record has sequence 0).
    Unwritten,
    /// A record with a valid checksum but not the next sequence number.
    Sequence {
        expected: u64,
        found: u64,
    },
    /// A record with the largest sequence number, which no writer reaches: nothing could
    /// follow it.
    SequenceExhausted,
}

impl Corruption {
    /// Whether an interrupted write can leave this behind (as opposed to a record that was
    /// written whole and is wrong).
    pub(crate) fn can_be_torn_write(&self) -> bool {
        !matches!(
            self,
            Corruption::Sequence { .. }
                | Corruption::SequenceExhausted
                | Corruption::RecordOverMaximum { .. }
                | Corruption::SegmentNumber { .. }
                | Corruption::FirstSequence { .. }
                | Corruption::UnsupportedVersion { .. }
        )
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::HeaderTruncated { len_bytes } => write!(
                f,
                "segment header truncated (file is {len_bytes} bytes, header is {SEGMENT_HEADER_LEN})"
            ),
            Corruption::BadMagic => f.write_str("not a WAL segment (bad magic)"),
            Corruption::UnsupportedVersion { version } => write!(
                f,
                "segment format version {version} is not supported (this build reads {FORMAT_VERSION})"
            ),
            Corruption::HeaderChecksum => f.write_str("segment header checksum mismatch"),
            Corruption::SegmentNumber { in_header } => {
                write!(f, "header says segment {in_header}, not the file's number")
            }
            Corruption::FirstSequence { expected, found } => {
                write!(f, "segment starts at sequence {found}, expected {expected}")
            }
            Corruption::RecordHeaderTruncated { remaining_bytes } => write!(
                f,
                "record header truncated ({remaining_bytes} bytes left, header is {RECORD_HEADER_LEN})"
            ),
            Corruption::RecordTooLarge {
                len_bytes,
                max_bytes,
            } => write!(
                f,
                "record length {len_bytes} is over the maximum of {max_bytes} bytes"
            ),
            Corruption::RecordOverMaximum {
                len_bytes,
                max_bytes,
            } => write!(
                f,
                "valid record of {len_bytes} bytes is over the configured maximum of {max_bytes}; \
                 raise record_size_max_bytes to read this log"
            ),
            Corruption::RecordTruncated {
                len_bytes,
                remaining_bytes,
            } => write!(
                f,
                "record of {len_bytes} payload bytes truncated ({remaining_bytes} bytes left after its header)"
            ),
            Corruption::Checksum => f.write_str("checksum mismatch"),
            Corruption::Unwritten => f.write_str("zeros where a record would start (unwritten)"),
            Corruption::Sequence { expected, found } => {
                write!(f, "record has sequence {found}, expected {expected}")
            }
            Corruption::SequenceExhausted => {
                write!(
                    f,
                    "record has sequence {}, which no writer reaches",
                    u64::MAX
                )
            }
        }
    }
}

/// The segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub segment: u64,
    pub first_sequence: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.segment.to_le_bytes());
        out[20..28].copy_from_slice(&self.first_sequence.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header read from the file of segment `segment`. `bytes` is whatever the file
    /// had, at most `SEGMENT_HEADER_LEN` of it.
    pub fn decode(bytes: &[u8], segment: u64) -> Result<SegmentHeader, Corruption> {
        let Ok(bytes) = <&[u8; SEGMENT_HEADER_LEN]>::try_from(bytes) else {
            return Err(Corruption::HeaderTruncated {
                len_bytes: bytes.len() as u64,
            });
        };
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(Corruption::BadMagic);
        }
        if crc32c::crc32c(&bytes[0..28]) != le_u32(bytes, 28) {
            return Err(Corruption::HeaderChecksum);
        }
        let version = le_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(Corruption::UnsupportedVersion { version });
        }
        let header = SegmentHeader {
            segment: le_u64(bytes, 12),
            first_sequence: le_u64(bytes, 20),
        };
        if header.segment != segment {
            return Err(Corruption::SegmentNumber {
                in_header: header.segment,
            });
        }
        Ok(header)
    }
}

/// A record header as read, not yet checked against its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len_bytes: u32,
    pub sequence: u64,
    pub crc: u32,
}

impl RecordHeader {
    pub fn decode(bytes: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
        RecordHeader {
            len_bytes: le_u32(bytes, 0),
            sequence: le_u64(bytes, 4),
            crc: le_u32(bytes, 12),
        }
    }

    /// Whether `payload` (of `len_bytes` bytes) belongs to this header in segment `segment`.
    pub fn matches(&self, segment: u64, payload: &[u8]) -> bool {
        debug_assert_eq!(payload.len(), self.len_bytes as usize);
        crc32c::crc32c_append(self.crc_start(segment), payload) == self.crc
    }

    /// The checksum over everything but the payload; continue it with `crc32c_append` over
    /// the payload, in pieces if need be.
    pub fn crc_start(&self, segment: u64) -> u32 {
        let mut fields = [0u8; 12];
        fields[0..4].copy_from_slice(&self.len_bytes.to_le_bytes());
        fields[4..12].copy_from_slice(&self.sequence.to_le_bytes());
        crc32c::crc32c_append(crc32c::crc32c(&segment.to_le_bytes()), &fields)
    }
}

/// CRC32C over the segment number (the salt), the record's length and sequence, and the payload.
fn record_crc(segment: u64, len_bytes: u32, sequence: u64, payload: &[u8]) -> u32 {
    let header = RecordHeader {
        len_bytes,
        sequence,
        crc: 0,
    };
    crc32c::crc32c_append(header.crc_start(segment), payload)
}

/// Appends one framed record to `out`. The caller has checked the payload against the maximum.
pub(crate) fn encode_record(out: &mut Vec<u8>, segment: u64, sequence: u64, payload: &[u8]) {
    let len_bytes =
        u32::try_from(payload.len()).expect("payload length was checked against the maximum");
    out.extend_from_slice(&len_bytes.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&record_crc(segment, len_bytes, sequence, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The example in `docs/WAL-FORMAT.md`: segment 1, one record (sequence 1, payload "abc").
    #[test]
    fn encoding_matches_the_documented_example() {
        let header = SegmentHeader {
            segment: 1,
            first_sequence: 1,
        };
        assert_eq!(
            hex(&header.encode()),
            "4c4544475257414c0100000001000000000000000100000000000000bc7f1a64"
        );
        let mut record = Vec::new();
        encode_record(&mut record, 1, 1, b"abc");
        assert_eq!(hex(&record), "030000000100000000000000d2251d5b616263");
    }

    #[test]
    fn segment_names_round_trip_and_reject_lookalikes() {
        assert_eq!(segment_file_name(42), "00000000000000000042.wal");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.wal"),
            Some(42)
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX - 1)),
            Some(u64::MAX - 1)
        );
        // Recovery names the segment after the last one: the largest number has none.
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), None);
        for bad in [
            "42.wal",
            "0000000000000000042.wal",
            "99999999999999999999.wal",
            "0000000000000000004x.wal",
            "00000000000000000042.snap",
            "00000000000000000042.wal.tmp",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_round_trips_and_every_bit_flip_is_caught() {
        let header = SegmentHeader {
            segment: 7,
            first_sequence: 1234,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes, 7), Ok(header));
        assert_eq!(
            SegmentHeader::decode(&bytes, 8),
            Err(Corruption::SegmentNumber { in_header: 7 })
        );
        assert_eq!(
            SegmentHeader::decode(&bytes[..31], 7),
            Err(Corruption::HeaderTruncated { len_bytes: 31 })
        );
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&flipped, 7).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn record_checksum_is_salted_with_the_segment_number() {
        let mut out = Vec::new();
        encode_record(&mut out, 3, 99, b"payload");
        assert_eq!(out.len(), RECORD_HEADER_LEN + 7);
        let header = RecordHeader::decode(out[..RECORD_HEADER_LEN].try_into().expect("16 bytes"));
        assert_eq!(header.len_bytes, 7);
        assert_eq!(header.sequence, 99);
        assert!(header.matches(3, &out[RECORD_HEADER_LEN..]));
        assert!(!header.matches(4, &out[RECORD_HEADER_LEN..]));
        for bit in 0..out.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let h =
                RecordHeader::decode(flipped[..RECORD_HEADER_LEN].try_into().expect("16 bytes"));
            let payload = &flipped[RECORD_HEADER_LEN..];
            let valid = h.len_bytes as usize == payload.len() && h.matches(3, payload);
            assert!(!valid, "bit {bit}");
        }
    }
}
