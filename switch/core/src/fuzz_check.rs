//! The properties the fuzz targets (`fuzz/`) check, shared with the stable-toolchain test that
//! replays the committed corpora (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes and panics only when a property is broken: a decoder
//! panicked, accepted something it cannot re-encode, or re-encoded it to something that reads
//! back differently. Anything a peer or a file can send must give a value or a typed error.

use crate::journal::SwitchRecord;
use crate::replica::record::{self, Record};
use crate::translate;
use crate::wire::{self, Frame, Limits};

/// Limits small enough that the fuzzer reaches them.
const SMALL: Limits = Limits {
    frame_len_max: 512,
    batch_len_max: 4,
};

/// A stream of frames, read as the server reads a stream: frame after frame from the start,
/// under the default and under small limits. Every frame that decodes re-encodes to bytes that
/// decode to the same frame; every prefix of it is "not yet", and from its header on tells the
/// frame's length and correlation id; its requests translate without panicking.
pub fn wire_frames(data: &[u8]) {
    for limits in [Limits::DEFAULT, SMALL] {
        let mut rest = data;
        // A bound on frames per input: each is at least a header long anyway.
        for _ in 0..64 {
            let Ok(Some((frame, used))) = wire::decode_frame(rest, &limits) else {
                break;
            };
            assert!(
                (wire::HEADER_LEN..=rest.len()).contains(&used),
                "consumed {used} of {} bytes",
                rest.len()
            );
            assert!(
                used <= limits.frame_len_max as usize,
                "a frame over the limit"
            );
            check_frame(&frame, &rest[..used], &limits);
            rest = &rest[used..];
        }
    }
}

fn check_frame(frame: &Frame, bytes: &[u8], limits: &Limits) {
    let mut encoded = Vec::with_capacity(bytes.len());
    let len = wire::encode_frame(frame, &mut encoded).expect("a decoded frame encodes");
    assert_eq!(len, encoded.len());
    let again = wire::decode_frame(&encoded, limits).expect("a re-encoded frame decodes");
    assert_eq!(
        again,
        Some((frame.clone(), encoded.len())),
        "a frame changed through encode and decode"
    );
    // A reader that has only part of a valid frame must wait for the rest, not reject it.
    let prefixes = (0..bytes.len().min(wire::HEADER_LEN + 8)).chain([bytes.len() - 1]);
    for cut in prefixes {
        assert_eq!(
            wire::decode_frame(&bytes[..cut], limits),
            Ok(None),
            "a {cut}-byte prefix of a valid frame was not 'not yet'"
        );
        // What the server reads from such a prefix to hold room for the frame.
        let header = (cut >= wire::HEADER_LEN).then_some((bytes.len(), frame.correlation_id()));
        assert_eq!(
            wire::frame_header(&bytes[..cut]),
            header,
            "the header of a {cut}-byte prefix"
        );
    }
    if let Frame::Requests { requests, .. } = frame {
        for request in requests {
            let _ = translate::request(request);
        }
    }
}

/// A switch log payload: whatever decodes re-encodes to bytes that decode to the same record.
pub fn switch_record(data: &[u8]) {
    let Ok(record) = SwitchRecord::decode(data) else {
        return;
    };
    let mut encoded = Vec::with_capacity(data.len());
    record.encode(&mut encoded);
    let again = SwitchRecord::decode(&encoded).expect("a re-encoded record decodes");
    assert_eq!(record, again, "a record changed through encode and decode");
}

/// A replica's log payload (a run of Raft entries, or a reset after a snapshot): whatever
/// decodes re-encodes to exactly the bytes it came from (the layout has one spelling), and
/// the entries of a run follow one another.
pub fn replica_record(data: &[u8]) {
    let Ok(decoded) = Record::decode(data) else {
        return;
    };
    let mut encoded = Vec::with_capacity(data.len());
    match &decoded {
        Record::Entries { entries, commit } => {
            assert!(
                entries
                    .windows(2)
                    .all(|w| w[0].index.checked_add(1) == Some(w[1].index)),
                "entries that do not follow one another"
            );
            record::encode_entries(entries, *commit, &mut encoded);
        }
        Record::Reset { index, term } => record::encode_reset(*index, *term, &mut encoded),
    }
    assert_eq!(encoded, data, "a record re-encoded to other bytes");
}
