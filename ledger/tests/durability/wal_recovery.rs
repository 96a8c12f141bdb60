//! Recovery: torn tails at every byte, bit flips, gaps, snapshots, segment deletion.

use std::convert::Infallible;

use ledger::storage::{AppendFile, SimStorage, Storage};
use ledger::wal::{
    self, Corruption, OnCorruption, RecoverOptions, RecoveryError, TruncationCause, WalOptions,
    segment_file_name,
};
use proptest::prelude::*;

use crate::support::{
    copy, numbered, payload, record_offsets, recover_all, recover_with, write_log,
};

fn payloads(lens: &[usize]) -> Vec<Vec<u8>> {
    lens.iter()
        .enumerate()
        .map(|(i, &len)| payload(i as u64, len))
        .collect()
}

fn options(segment_size_max_bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_max_bytes,
        ..WalOptions::default()
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("wal_truncate_every_offset.txt", 64))]

    /// Cutting the last segment anywhere recovers exactly the records wholly before the cut,
    /// never an error, and leaves a log that recovers the same way again without cutting.
    #[test]
    fn truncating_the_last_segment_at_every_offset_recovers_the_whole_records_before_it(
        lens in prop::collection::vec(0usize..60, 1..10),
        segment_size in prop_oneof![Just(1u64 << 20), 100u64..400],
    ) {
        let payloads = payloads(&lens);
        let written = SimStorage::new();
        write_log(&written, options(segment_size), &payloads);
        let names = written.list().expect("list");
        let last = names.last().expect("a segment").clone();
        let last_number = wal::parse_segment_file_name(&last).expect("segment name");
        let bytes = written.read(&last).expect("read");
        let first_in_last = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
        let offsets = record_offsets(&bytes, &payloads);

        for cut in 0..=bytes.len() as u64 {
            let storage = copy(&written);
            storage.truncate(&last, cut).expect("truncate");
            let (recovered, records) = recover_all(&storage);
            let whole_in_last = offsets.iter().filter(|&&end| end <= cut).count().saturating_sub(1);
            let count = (first_in_last - 1) as usize + whole_in_last;
            prop_assert_eq!(&records, &numbered(&payloads[..count]), "cut at {}", cut);
            prop_assert_eq!(recovered.resume.next_sequence(), count as u64 + 1);
            let at_boundary = offsets.contains(&cut);
            match &recovered.truncation {
                None => {
                    prop_assert!(at_boundary, "cut at {} not reported", cut);
                    prop_assert_eq!(recovered.resume.next_segment(), last_number + 1);
                }
                Some(t) => {
                    prop_assert!(!at_boundary);
                    prop_assert_eq!(t.cause, TruncationCause::TornTail);
                    prop_assert_eq!(&t.file, &last);
                    if cut < wal::SEGMENT_HEADER_LEN as u64 {
                        prop_assert_eq!(t.offset, 0);
                        prop_assert_eq!(&t.removed_files, &vec![last.clone()]);
                        prop_assert_eq!(recovered.resume.next_segment(), last_number);
                    } else {
                        prop_assert_eq!(t.offset, offsets[whole_in_last]);
                        prop_assert!(t.removed_files.is_empty());
                        prop_assert_eq!(storage.len_bytes(&last).expect("len"), t.offset);
                        prop_assert_eq!(recovered.resume.next_segment(), last_number + 1);
                    }
                }
            }
            let (again, records_again) = recover_all(&storage);
            prop_assert_eq!(again.truncation, None);
            prop_assert_eq!(records_again, records);
        }
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("wal_bit_flips.txt", 128))]

    /// A flipped bit in the last record is a torn tail; anywhere else in the segment it is
    /// corruption, reported with the segment and the record's offset, and only the explicit
    /// operator choice cuts the log there.
    #[test]
    fn a_bit_flip_is_trimmed_in_the_last_record_and_refused_before_it(
        lens in prop::collection::vec(0usize..60, 2..8),
        record_pick in any::<prop::sample::Index>(),
        bit_pick in any::<prop::sample::Index>(),
    ) {
        let payloads = payloads(&lens);
        let storage = SimStorage::new();
        write_log(&storage, options(1 << 20), &payloads);
        let name = segment_file_name(1);
        let bytes = storage.read(&name).expect("read");
        let offsets = record_offsets(&bytes, &payloads);
        let k = record_pick.index(payloads.len());
        let record_bits = (offsets[k + 1] - offsets[k]) * 8;
        let bit = bit_pick.index(record_bits as usize) as u64;
        storage.flip_bit(&name, offsets[k] + bit / 8, (bit % 8) as u8).expect("flip");

        let result = recover_with(&storage, &RecoverOptions::default());
        if k + 1 == payloads.len() {
            let (recovered, records) = result.expect("a torn tail is trimmed");
            prop_assert_eq!(records, numbered(&payloads[..k]));
            let t = recovered.truncation.expect("reported");
            prop_assert_eq!(t.offset, offsets[k]);
            prop_assert_eq!(t.cause, TruncationCause::TornTail);
            return Ok(());
        }
        let err = result.expect_err("corruption before valid records is refused");
        let message = err.to_string();
        let expected_prefix = format!("WAL segment 00000000000000000001.wal offset {}: ", offsets[k]);
        prop_assert!(message.starts_with(&expected_prefix), "{}", message);
        match err {
            RecoveryError::Corrupt { offset, valid_record_at, .. } => {
                prop_assert_eq!(offset, offsets[k]);
                prop_assert_eq!(valid_record_at, Some(offsets[k + 1]));
            }
            other => prop_assert!(false, "unexpected error {}", other),
        }

        let choice = RecoverOptions {
            on_corruption: OnCorruption::TruncateAt { segment: 1, offset: offsets[k] },
            ..RecoverOptions::default()
        };
        let (recovered, records) = recover_with(&storage, &choice).expect("operator choice");
        prop_assert_eq!(records, numbered(&payloads[..k]));
        let t = recovered.truncation.expect("reported");
        prop_assert_eq!(t.cause, TruncationCause::OperatorChoice);
        let (again, records) = recover_all(&storage);
        prop_assert_eq!(again.truncation, None);
        prop_assert_eq!(records.len(), k);
    }
}

/// Rewrites `name` durably as `bytes`.
fn rewrite(storage: &SimStorage, name: &str, bytes: &[u8]) {
    let mut file = storage.create(name).expect("create");
    file.append(bytes).expect("append");
    file.sync_data().expect("sync");
}

proptest! {
    #![proptest_config(ledger::proptest_config!("wal_zeroed_records.txt", 128))]

    /// Zeros over whole records, with or without zeros after the last record (a segment
    /// filled ahead and not filled up). Zeros at the end of the last segment are its
    /// unwritten end, trimmed. Zeros with valid records after them are corruption, except in
    /// a segment that ends in zeros when every record after them ends within one write
    /// (`write_max_bytes`) of them: the pages of the write a power loss interrupted, trimmed
    /// too. Recovery names the first valid record it cannot take for that write, however many
    /// zeros it passes over (records of an empty payload start with four zero bytes).
    #[test]
    fn zeros_end_the_log_only_when_no_record_follows_them(
        lens in prop::collection::vec(prop_oneof![Just(0usize), 1usize..60], 1..10),
        from_pick in any::<prop::sample::Index>(),
        to_pick in any::<prop::sample::Index>(),
        zero_tail in prop_oneof![Just(0usize), 16usize..5000],
        write_max_bytes in prop_oneof![Just(0u64), 1u64..800],
    ) {
        let payloads = payloads(&lens);
        let storage = SimStorage::new();
        write_log(&storage, options(1 << 20), &payloads);
        let name = segment_file_name(1);
        let mut bytes = storage.read(&name).expect("read");
        let offsets = record_offsets(&bytes, &payloads);
        let n = payloads.len();
        // Zero records from..to (to exclusive), possibly none.
        let from = from_pick.index(n + 1);
        let to = from + to_pick.index(n + 1 - from);
        let (start, end) = (offsets[from] as usize, offsets[to] as usize);
        bytes[start..end].fill(0);
        bytes.resize(bytes.len() + zero_tail, 0);
        rewrite(&storage, &name, &bytes);

        let options = RecoverOptions { write_max_bytes, ..RecoverOptions::default() };
        let result = recover_with(&storage, &options);
        // The first record after the zeros that ends past one write from them.
        let window_end = offsets[from] + write_max_bytes;
        let past_window = (to..n).find(|&k| offsets[k + 1] > window_end);
        let torn_write = zero_tail > 0 && past_window.is_none();
        if from == to && zero_tail == 0 {
            let (recovered, records) = result.expect("nothing zeroed");
            prop_assert_eq!(recovered.truncation, None);
            prop_assert_eq!(records, numbered(&payloads));
        } else if from == to || to == n || torn_write {
            let (recovered, records) = result.expect("zeros at the end are its unwritten end");
            let kept = if from == to { n } else { from };
            prop_assert_eq!(records, numbered(&payloads[..kept]));
            let t = recovered.truncation.expect("reported");
            prop_assert_eq!(
                (t.offset, t.reason, t.cause),
                (offsets[kept], Corruption::Unwritten, TruncationCause::TornTail)
            );
            prop_assert_eq!(storage.len_bytes(&name).expect("len"), offsets[kept]);
        } else {
            let named = if zero_tail > 0 { past_window.expect("not torn") } else { to };
            match result {
                Err(RecoveryError::Corrupt { offset, reason, valid_record_at, .. }) => {
                    prop_assert_eq!(
                        (offset, reason, valid_record_at),
                        (offsets[from], Corruption::Unwritten, Some(offsets[named]))
                    );
                }
                other => prop_assert!(false, "zeros before a record were not refused: {:?}",
                    other.map(|(r, _)| r)),
            }
        }
    }
}

#[test]
fn a_bit_flip_in_an_earlier_segment_is_refused_even_in_its_last_record() {
    let payloads = payloads(&[40; 6]);
    let storage = SimStorage::new();
    // Two records per segment.
    write_log(&storage, options(32 + 2 * 56), &payloads);
    assert_eq!(storage.list().expect("list").len(), 3);
    let first = segment_file_name(1);
    let offset = 32 + 56;
    storage.flip_bit(&first, offset + 20, 1).expect("flip");
    let err = recover_with(&storage, &RecoverOptions::default()).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "WAL segment 00000000000000000001.wal offset 88: checksum mismatch"
    );

    let choice = RecoverOptions {
        on_corruption: OnCorruption::TruncateAt {
            segment: 1,
            offset: 88,
        },
        ..RecoverOptions::default()
    };
    // A choice of another point is no licence to cut here.
    let elsewhere = RecoverOptions {
        on_corruption: OnCorruption::TruncateAt {
            segment: 1,
            offset: 32,
        },
        ..RecoverOptions::default()
    };
    assert!(recover_with(&storage, &elsewhere).is_err());
    let (recovered, records) = recover_with(&storage, &choice).expect("operator choice");
    assert_eq!(records, numbered(&payloads[..1]));
    let t = recovered.truncation.expect("reported");
    assert_eq!(
        t.removed_files,
        [segment_file_name(2), segment_file_name(3)]
    );
    assert_eq!(
        t.to_string(),
        "WAL segment 00000000000000000001.wal offset 88: checksum mismatch; log cut here by \
         operator choice, later records discarded (removed 00000000000000000002.wal, \
         00000000000000000003.wal)"
    );
    assert_eq!(recovered.resume.next_segment(), 2);
    assert_eq!(storage.list().expect("list"), [segment_file_name(1)]);
}

#[test]
fn a_bit_flip_in_any_segment_header_bit_is_refused_when_records_follow() {
    let payloads = payloads(&[10, 20]);
    let written = SimStorage::new();
    write_log(&written, options(1 << 20), &payloads);
    let name = segment_file_name(1);
    for bit in 0..wal::SEGMENT_HEADER_LEN as u64 * 8 {
        let storage = copy(&written);
        storage
            .flip_bit(&name, bit / 8, (bit % 8) as u8)
            .expect("flip");
        match recover_with(&storage, &RecoverOptions::default()) {
            Err(RecoveryError::Corrupt {
                offset: 0,
                valid_record_at,
                ..
            }) => assert_eq!(valid_record_at, Some(32), "bit {bit}"),
            other => panic!("bit {bit}: {other:?}"),
        }
    }
}

#[test]
fn a_later_snapshot_skips_records_and_resumes_after_itself() {
    let payloads = payloads(&[8; 10]);
    let storage = SimStorage::new();
    write_log(&storage, options(32 + 3 * 24), &payloads);
    let after = |after_sequence| RecoverOptions {
        after_sequence,
        ..RecoverOptions::default()
    };
    let (recovered, records) = recover_with(&storage, &after(4)).expect("recover");
    assert_eq!(records, numbered(&payloads)[4..]);
    assert_eq!(recovered.records_skipped, 4);
    assert_eq!(recovered.records_applied, 6);
    assert_eq!(recovered.last_sequence, Some(10));
    assert_eq!(recovered.segments_read, 4);

    // A snapshot past the end of the log: its sequences must not be handed out again.
    let (recovered, records) = recover_with(&storage, &after(100)).expect("recover");
    assert!(records.is_empty());
    assert_eq!(recovered.resume.next_sequence(), 101);
    let wal = ledger::wal::Wal::open(storage.clone(), WalOptions::default(), recovered.resume)
        .expect("open");
    assert_eq!(wal.append(b"next".to_vec()), Ok(101));
    wal.close().expect("close");
    let (_, records) = recover_with(&storage, &after(100)).expect("the gap is covered");
    assert_eq!(records, [(101, b"next".to_vec())]);
    // Without that snapshot the gap is corruption, and not a torn tail.
    let err = recover_with(&storage, &after(50)).expect_err("gap");
    assert_eq!(
        err.to_string(),
        "WAL segment 00000000000000000005.wal offset 0: segment starts at sequence 101, \
         expected 11"
    );
}

#[test]
fn covered_segments_are_deleted_and_the_rest_still_recovers() {
    let payloads = payloads(&[8; 10]);
    let storage = SimStorage::new();
    // Three records per segment: 1-3, 4-6, 7-9, 10.
    write_log(&storage, options(32 + 3 * 24), &payloads);
    assert_eq!(storage.list().expect("list").len(), 4);
    let removed = wal::delete_covered(&storage, 5).expect("delete");
    assert_eq!(
        removed,
        [segment_file_name(1)],
        "segment 2 still holds record 6"
    );
    assert_eq!(
        storage.list().expect("list"),
        (2..=4).map(segment_file_name).collect::<Vec<_>>()
    );
    let removed = wal::delete_covered(&storage, 100).expect("delete");
    assert_eq!(removed, [segment_file_name(2), segment_file_name(3)]);
    assert_eq!(
        storage.list().expect("list"),
        [segment_file_name(4)],
        "the last stays"
    );

    let err = recover_with(&storage, &RecoverOptions::default()).expect_err("records missing");
    assert!(matches!(
        err,
        RecoveryError::Gap {
            first_sequence: 10,
            after_sequence: 0,
            ..
        }
    ));
    let options = RecoverOptions {
        after_sequence: 9,
        ..RecoverOptions::default()
    };
    let (recovered, records) = recover_with(&storage, &options).expect("recover");
    assert_eq!(records, numbered(&payloads)[9..]);
    assert_eq!(recovered.resume.next_segment(), 5);
}

/// A caller that checks on its own what the records it needs are (a replica, after its
/// snapshot) may take a log whose oldest segments went; a gap between segments is still refused.
#[test]
fn a_missing_prefix_is_taken_when_allowed_and_a_missing_middle_still_refused() {
    let payloads = payloads(&[8; 10]);
    let storage = SimStorage::new();
    write_log(&storage, options(32 + 3 * 24), &payloads);
    // Segments 2 (records 4-6), 3 (7-9) and 4 (10) are left.
    wal::delete_covered(&storage, 3).expect("delete");
    let allowed = RecoverOptions {
        missing_prefix_allowed: true,
        ..RecoverOptions::default()
    };
    assert!(recover_with(&storage, &RecoverOptions::default()).is_err());
    let (recovered, records) = recover_with(&storage, &allowed).expect("recover");
    assert_eq!(records, numbered(&payloads)[3..]);
    assert_eq!(recovered.last_sequence, Some(10));
    storage.remove(&segment_file_name(3)).expect("remove");
    assert!(matches!(
        recover_with(&storage, &allowed),
        Err(RecoveryError::MissingSegment { .. })
    ));
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let payloads = payloads(&[8; 10]);
    let storage = SimStorage::new();
    write_log(&storage, options(32 + 3 * 24), &payloads);
    storage.remove(&segment_file_name(2)).expect("remove");
    let err = recover_with(&storage, &RecoverOptions::default()).expect_err("missing");
    assert_eq!(
        err.to_string(),
        "WAL segment 00000000000000000002.wal is missing (the next one present is \
         00000000000000000003.wal)"
    );
}

#[test]
fn a_callback_error_stops_recovery_with_its_sequence() {
    let payloads = payloads(&[8; 5]);
    let storage = SimStorage::new();
    write_log(&storage, options(1 << 20), &payloads);
    let err = wal::recover(&storage, &RecoverOptions::default(), |sequence, _| {
        if sequence == 3 {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    })
    .expect_err("refused");
    assert!(matches!(err, RecoveryError::Apply { sequence: 3, .. }));
}

#[test]
fn records_over_the_read_maximum_are_refused_whole_and_trimmed_torn() {
    let payloads = payloads(&[10, 300, 10]);
    let storage = SimStorage::new();
    write_log(&storage, options(1 << 20), &payloads);
    let small = RecoverOptions {
        record_size_max_bytes: 100,
        ..RecoverOptions::default()
    };
    let err = recover_with(&storage, &small).expect_err("too large");
    assert_eq!(
        err.to_string(),
        "WAL segment 00000000000000000001.wal offset 58: valid record of 300 bytes is over the \
         configured maximum of 100; raise record_size_max_bytes to read this log"
    );
    // Also at the very end of the log: a whole record is never mistaken for a torn one.
    let storage = SimStorage::new();
    write_log(&storage, options(1 << 20), &payloads[..2]);
    assert!(matches!(
        recover_with(&storage, &small),
        Err(RecoveryError::Corrupt {
            reason: Corruption::RecordOverMaximum {
                len_bytes: 300,
                max_bytes: 100
            },
            ..
        })
    ));
    // A length field over the maximum that does not check out is a torn tail.
    let name = segment_file_name(1);
    storage.flip_bit(&name, 58 + 3, 7).expect("flip");
    let (recovered, records) = recover_with(&storage, &small).expect("torn");
    assert_eq!(records, numbered(&payloads[..1]));
    assert!(matches!(
        recovered.truncation.expect("trimmed").reason,
        Corruption::RecordTooLarge { .. }
    ));
}

#[test]
fn an_empty_directory_starts_at_segment_one_sequence_one() {
    let storage = SimStorage::new();
    let (recovered, records) = recover_all(&storage);
    assert!(records.is_empty());
    assert_eq!(recovered.resume.next_segment(), 1);
    assert_eq!(recovered.resume.next_sequence(), 1);
    assert_eq!(recovered.last_sequence, None);
    let bad = RecoverOptions {
        record_size_max_bytes: 0,
        ..RecoverOptions::default()
    };
    assert!(matches!(
        wal::recover(&storage, &bad, |_, _| Ok::<(), Infallible>(())),
        Err(RecoveryError::Options(_))
    ));
}

/// Every file's bytes, by name.
fn contents(storage: &SimStorage) -> Vec<(String, Vec<u8>)> {
    let mut names = storage.list().expect("list");
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = storage.read(&name).expect("read");
            (name, bytes)
        })
        .collect()
}

fn read_range(
    storage: &SimStorage,
    after: u64,
    through: u64,
) -> Result<Vec<(u64, Vec<u8>)>, RecoveryError<Infallible>> {
    let mut records = Vec::new();
    let passed = wal::read_through(
        storage,
        wal::RECORD_SIZE_MAX_DEFAULT,
        after,
        through,
        |sequence, payload| {
            records.push((sequence, payload.to_vec()));
            Ok::<(), Infallible>(())
        },
    )?;
    assert_eq!(passed, records.len() as u64, "the count is what was passed");
    Ok(records)
}

proptest! {
    #![proptest_config(ledger::proptest_config!("wal_read_through.txt", 64))]

    /// Reading a range gives exactly the records after `after` up to `through`, changes
    /// nothing, and does not mind what follows `through`: a torn or half-written tail is what
    /// a log being appended to looks like, and so are zeros after the last record (a segment
    /// prepared ahead). A log that ends before `through` is `Short`.
    #[test]
    fn reading_through_a_sequence_gives_exactly_the_range_and_changes_nothing(
        lens in prop::collection::vec(0usize..60, 1..12),
        segment_size in prop_oneof![Just(1u64 << 20), 100u64..400],
        after_pick in 0u64..20,
        through_pick in 0u64..20,
        tail in 0u8..4,
        tail_bytes in prop::collection::vec(any::<u8>(), 1..40),
    ) {
        let payloads = payloads(&lens);
        let n = payloads.len() as u64;
        let storage = SimStorage::new();
        write_log(&storage, options(segment_size), &payloads);
        let last = storage.list().expect("list").into_iter().max().expect("a segment");
        let last_bytes = storage.read(&last).expect("read");
        let offsets = record_offsets(&last_bytes, &payloads);
        let first_in_last = u64::from_le_bytes(last_bytes[20..28].try_into().expect("8 bytes"));
        let after = after_pick % (n + 1);
        let through = after + through_pick % (n + 2 - after);
        // What a writer part-way through its next records leaves after the last whole one.
        match tail {
            1 => {
                let mut file = storage.open_append(&last).expect("open");
                file.append(&tail_bytes).expect("append");
            }
            3 => {
                // A segment prepared ahead: zeros after the last record.
                let mut file = storage.open_append(&last).expect("open");
                file.append(&vec![0; 64 * usize::from(tail_bytes[0])]).expect("append");
            }
            2 if through < n && through + 1 >= first_in_last => {
                // Cut the last segment inside the records after `through`.
                let whole = (through + 1 - first_in_last) as usize;
                let (from, to) = (offsets[whole], *offsets.last().expect("end"));
                let cut = from + u64::from(tail_bytes[0]) % (to - from).max(1);
                storage.truncate(&last, cut).expect("truncate");
            }
            _ => {}
        }
        let before = contents(&storage);
        let found = read_range(&storage, after, through);
        prop_assert_eq!(contents(&storage), before, "the storage was changed");
        if through > n {
            prop_assert!(
                matches!(found, Err(RecoveryError::Short { through: t, last }) if t == through && last == n),
                "{:?}", found
            );
        } else {
            let expected: Vec<_> = numbered(&payloads)
                .into_iter()
                .filter(|(sequence, _)| *sequence > after && *sequence <= through)
                .collect();
            prop_assert_eq!(found.expect("reads"), expected);
        }
    }
}

/// Invalid data before the last record asked for is corruption, reported and left as it is
/// (recovery, not a reader, decides what to cut).
#[test]
fn reading_through_refuses_a_damaged_record_before_the_end_and_changes_nothing() {
    let payloads = payloads(&[20, 20, 20, 20]);
    let storage = SimStorage::new();
    write_log(&storage, options(1 << 20), &payloads);
    let name = segment_file_name(1);
    let mut bytes = storage.read(&name).expect("read");
    // A payload byte of the second record.
    let at = wal::SEGMENT_HEADER_LEN + (wal::RECORD_HEADER_LEN + 20) + wal::RECORD_HEADER_LEN + 3;
    bytes[at] ^= 0x40;
    storage.truncate(&name, 0).expect("truncate");
    let mut file = storage.open_append(&name).expect("open");
    file.append(&bytes).expect("append");
    file.sync_data().expect("sync");
    let before = contents(&storage);
    for (after, through) in [(0, 2), (1, 2), (0, 4), (2, 3)] {
        // Records the range skips are still checked: a damaged one is never passed over.
        let found = read_range(&storage, after, through);
        assert!(
            matches!(found, Err(RecoveryError::Corrupt { .. })),
            "after {after} through {through}: {found:?}"
        );
    }
    // Through the first record only: the damage comes after it and is not read as needed.
    assert_eq!(
        read_range(&storage, 0, 1).expect("reads"),
        numbered(&payloads[..1])
    );
    assert_eq!(contents(&storage), before, "the storage was changed");
}
