//! The writer: group commit, back-pressure, fatal errors, crashes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::storage::{FileStorage, SimStorage, Storage, Tear};
use ledger::wal::{
    self, Corruption, Durability, SPARE_SEGMENT_NAME, TruncationCause, WalError, WalOptions,
    segment_file_name,
};
use parking_lot::Mutex;
use proptest::prelude::*;

use crate::support::{open, payload, recover_all};

type Outcomes = Arc<Mutex<BTreeMap<u64, Result<u64, WalError>>>>;

/// Submits one record and files its outcome under `key`.
fn submit(wal: &ledger::wal::Wal, key: u64, bytes: Vec<u8>, outcomes: &Outcomes) -> u64 {
    let permit = wal.reserve().expect("a slot");
    let outcomes = Arc::clone(outcomes);
    permit.submit(
        bytes,
        Box::new(move |result| {
            outcomes.lock().insert(key, result);
        }),
    )
}

/// Takes a slot for every record first, then submits them: a record's failure can then not
/// refuse the slot of a later one before it was taken, which would be a race in the test, not
/// a property of the log.
fn submit_all(wal: &ledger::wal::Wal, records: Vec<(u64, Vec<u8>)>, outcomes: &Outcomes) {
    let permits: Vec<_> = records
        .iter()
        .map(|_| wal.reserve().expect("a slot"))
        .collect();
    for (permit, (key, bytes)) in permits.into_iter().zip(records) {
        let outcomes = Arc::clone(outcomes);
        permit.submit(
            bytes,
            Box::new(move |result| {
                outcomes.lock().insert(key, result);
            }),
        );
    }
}

fn wait_for(outcomes: &Outcomes, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while outcomes.lock().len() < count {
        assert!(Instant::now() < deadline, "outcomes did not arrive in time");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn group_commit_syncs_less_than_once_per_record_and_keeps_submission_order() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 150;
    let storage = SimStorage::new();
    storage.set_sync_latency(Duration::from_micros(500));
    let wal = open(
        &storage,
        WalOptions {
            queue_depth_max: 64,
            segment_size_max_bytes: 4 << 10,
            ..WalOptions::default()
        },
    );
    let syncs_before = storage.sync_count();
    // (thread, counter) -> sequence given at submission
    let given = Mutex::new(BTreeMap::new());
    let acked: Outcomes = Arc::default();
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let (wal, given, acked) = (&wal, &given, &acked);
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                for counter in 0..PER_THREAD {
                    let key = thread * 1000 + counter;
                    let permit = loop {
                        match wal.reserve() {
                            Ok(permit) => break permit,
                            Err(WalError::QueueFull) => {
                                assert!(Instant::now() < deadline, "queue never drained");
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    };
                    let acked = Arc::clone(acked);
                    let sequence = permit.submit(
                        payload(key, (key % 50) as usize),
                        Box::new(move |result| {
                            acked.lock().insert(key, result);
                        }),
                    );
                    given.lock().insert(key, sequence);
                }
            });
        }
    });
    let total = THREADS * PER_THREAD;
    wait_for(&acked, total as usize);
    wal.close().expect("clean");
    let given = given.into_inner();
    for (key, result) in acked.lock().iter() {
        assert_eq!(
            result,
            &Ok(given[key]),
            "acknowledged with its own sequence"
        );
    }
    let syncs = storage.sync_count() - syncs_before;
    assert!(
        syncs < total / 2,
        "{syncs} syncs for {total} records: no grouping"
    );

    let (_, records) = recover_all(&storage);
    assert_eq!(records.len() as u64, total);
    assert!(storage.list().expect("list").len() > 2, "segments rotated");
    let mut last_counter = BTreeMap::new();
    let by_sequence: BTreeMap<u64, u64> = given.iter().map(|(&k, &s)| (s, k)).collect();
    for (i, (sequence, bytes)) in records.iter().enumerate() {
        assert_eq!(*sequence, i as u64 + 1);
        let key = by_sequence[sequence];
        assert_eq!(bytes, &payload(key, (key % 50) as usize));
        // Each thread's records are in the log in the order it submitted them.
        let thread = key / 1000;
        if let Some(previous) = last_counter.insert(thread, key % 1000) {
            assert!(previous < key % 1000);
        }
    }
}

#[test]
fn a_full_queue_is_refused_at_once_and_a_dropped_permit_frees_its_slot() {
    let storage = SimStorage::new();
    let wal = open(
        &storage,
        WalOptions {
            queue_depth_max: 2,
            ..WalOptions::default()
        },
    );
    let a = wal.reserve().expect("first");
    let b = wal.reserve().expect("second");
    let started = Instant::now();
    assert_eq!(wal.reserve().err(), Some(WalError::QueueFull));
    assert!(started.elapsed() < Duration::from_secs(1), "never blocks");
    drop(a);
    let c = wal.reserve().expect("a slot was freed");
    let outcomes: Outcomes = Arc::default();
    for (key, permit) in [(1, b), (2, c)] {
        let outcomes = Arc::clone(&outcomes);
        permit.submit(
            vec![key as u8],
            Box::new(move |r| {
                outcomes.lock().insert(key, r);
            }),
        );
    }
    wait_for(&outcomes, 2);
    // Answered records give their slots back.
    let _d = wal.reserve().expect("free again");
    let _e = wal.reserve().expect("free again");
    assert_eq!(*outcomes.lock(), BTreeMap::from([(1, Ok(1)), (2, Ok(2))]));
}

#[test]
fn a_failed_fsync_is_fatal_and_nothing_after_it_is_acknowledged() {
    let storage = SimStorage::new();
    let wal = open(&storage, WalOptions::default());
    for i in 1..=3 {
        assert_eq!(wal.append(payload(i, 10)), Ok(i));
    }
    storage.fail_next_sync();
    let outcomes: Outcomes = Arc::default();
    submit_all(
        &wal,
        (0..5).map(|key| (key, payload(10 + key, 10))).collect(),
        &outcomes,
    );
    wait_for(&outcomes, 5);
    for (key, result) in outcomes.lock().iter() {
        match result {
            Err(error @ WalError::Failed { reason }) => {
                assert!(reason.contains("fdatasync failed"), "{key}: {reason}");
                assert!(!error.is_out_of_space(), "an I/O error is not a full disk");
            }
            other => panic!("record {key} answered {other:?}"),
        }
    }
    assert!(matches!(wal.reserve().err(), Some(WalError::Failed { .. })));
    assert!(matches!(wal.append(vec![1]), Err(WalError::Failed { .. })));
    assert!(wal.close().is_err(), "close reports the failure");
    let storage = storage.crash();
    let (_, records) = recover_all(&storage);
    assert_eq!(
        records.len(),
        3,
        "acknowledged records survive; the failed group does not"
    );
}

#[test]
fn running_out_of_space_fails_the_group_with_a_clear_error() {
    let storage = SimStorage::new();
    let wal = open(&storage, WalOptions::default());
    assert_eq!(wal.append(payload(1, 100)), Ok(1));
    storage.set_capacity_bytes(Some(storage.used_bytes() + 150));
    let outcomes: Outcomes = Arc::default();
    submit_all(
        &wal,
        (0..3).map(|key| (key, payload(key, 100))).collect(),
        &outcomes,
    );
    wait_for(&outcomes, 3);
    let acknowledged = outcomes.lock().values().filter(|r| r.is_ok()).count();
    let first_error = outcomes
        .lock()
        .values()
        .find_map(|r| r.clone().err())
        .expect("some record failed");
    assert!(first_error.is_out_of_space(), "{first_error:?}");
    let WalError::Failed { reason } = first_error else {
        panic!("not a failure: {first_error:?}");
    };
    assert!(
        reason.starts_with("WAL segment 00000000000000000001.wal: out of space: "),
        "{reason}"
    );
    assert!(matches!(wal.append(vec![1]), Err(WalError::Failed { .. })));
    drop(wal);
    // Nothing was written past the space, so the log is clean; whatever was acknowledged is in it.
    let storage = storage.crash();
    storage.set_capacity_bytes(None);
    let (recovered, records) = recover_all(&storage);
    assert_eq!(recovered.truncation, None);
    assert_eq!(records.len(), 1 + acknowledged);
    assert_eq!(records[0].1, payload(1, 100));
}

#[test]
fn an_oversized_record_fails_the_log_before_it_is_written() {
    let storage = SimStorage::new();
    let wal = open(
        &storage,
        WalOptions {
            record_size_max_bytes: 64,
            ..WalOptions::default()
        },
    );
    assert_eq!(wal.record_size_max_bytes(), 64);
    assert_eq!(wal.append(vec![0; 64]), Ok(1));
    let err = wal.append(vec![0; 65]).expect_err("too large");
    assert_eq!(
        err.to_string(),
        "WAL failed, nothing more will be made durable: a record of 65 bytes was submitted, over \
         the maximum of 64 bytes"
    );
    assert!(wal.append(vec![0; 1]).is_err());
    drop(wal);
    let (_, records) = recover_all(&storage);
    assert_eq!(records.len(), 1);
}

#[test]
fn close_answers_everything_queued_and_durability_none_syncs_no_group() {
    let storage = SimStorage::new();
    let wal = open(
        &storage,
        WalOptions {
            durability: Durability::None,
            ..WalOptions::default()
        },
    );
    assert_eq!(wal.durability(), Durability::None);
    assert!(
        wal.durability()
            .warning()
            .is_some_and(|w| w.contains("benchmarks"))
    );
    assert_eq!(Durability::Fsync.warning(), None);
    // Starting the segment synced it and the directory; nothing after that does.
    assert_eq!((storage.sync_count(), storage.dir_sync_count()), (1, 1));
    let outcomes: Outcomes = Arc::default();
    for key in 0..50 {
        submit(&wal, key, payload(key, 20), &outcomes);
    }
    wal.close().expect("clean");
    assert_eq!(outcomes.lock().len(), 50, "close waited for every answer");
    assert_eq!((storage.sync_count(), storage.dir_sync_count()), (1, 1));
    assert_eq!(recover_all(&storage).1.len(), 50);
}

/// Segments of `segment_size_max_bytes`, prepared ahead.
fn prepared(segment_size_max_bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_max_bytes,
        prepare_segments: true,
        ..WalOptions::default()
    }
}

/// Waits until the spare segment has been filled, as a listing shows it.
fn wait_for_spare(storage: &SimStorage) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !storage
        .list()
        .expect("list")
        .iter()
        .any(|name| name == SPARE_SEGMENT_NAME)
    {
        assert!(Instant::now() < deadline, "the spare was never prepared");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Segment names in order.
fn segments(storage: &SimStorage) -> Vec<String> {
    storage
        .list()
        .expect("list")
        .into_iter()
        .filter(|name| wal::parse_segment_file_name(name).is_some())
        .collect()
}

/// With segments prepared: the first segment, and each one begun while the spare is ready,
/// is full length with zeros after its records; a closed segment is cut to its records; and at close the
/// last one is cut too and the spare removed, so a clean restart trims nothing. A crash
/// instead leaves the zeros, which recovery trims as the unwritten end of the log.
#[test]
fn prepared_segments_are_cut_to_their_records_when_closed() {
    const SEGMENT: u64 = 4096;
    let record = |key: u64| payload(key, 200);
    for crash in [false, true] {
        let storage = SimStorage::new();
        let wal = open(&storage, prepared(SEGMENT));
        let mut key = 0;
        // Opening prepared the first segment itself.
        let first = segment_file_name(1);
        assert_eq!(storage.len_bytes(&first).expect("len"), SEGMENT);
        wait_for_spare(&storage);
        for round in 0..3 {
            // Taking the spare starts filling the next one.
            let before = segments(&storage).len();
            while segments(&storage).len() == before {
                assert_eq!(wal.append(record(key)), Ok(key + 1));
                key += 1;
            }
            let last = segments(&storage).pop().expect("a segment");
            assert_eq!(
                storage.len_bytes(&last).expect("len"),
                SEGMENT,
                "round {round}: the new segment is the spare, renamed"
            );
            let names = segments(&storage);
            for closed in &names[..names.len() - 1] {
                let len = storage.len_bytes(closed).expect("len");
                let whole =
                    (len - wal::SEGMENT_HEADER_LEN as u64) % (wal::RECORD_HEADER_LEN as u64 + 200);
                assert_eq!(whole, 0, "{closed} ({len} bytes) ends with its last record");
            }
            wait_for_spare(&storage);
        }
        // A reader while the writer appends sees exactly what is durable.
        let mut read = Vec::new();
        wal::read_through(
            &storage,
            wal::RECORD_SIZE_MAX_DEFAULT,
            0,
            key,
            |sequence, p| {
                read.push((sequence, p.to_vec()));
                Ok::<(), std::convert::Infallible>(())
            },
        )
        .expect("read while appending");
        assert_eq!(read.len() as u64, key);

        let storage = if crash {
            let storage = storage.crash();
            drop(wal);
            storage
        } else {
            wal.close().expect("clean close");
            assert!(
                !storage
                    .list()
                    .expect("list")
                    .iter()
                    .any(|n| n == SPARE_SEGMENT_NAME),
                "close removes the spare"
            );
            storage
        };
        let (recovered, records) = recover_all(&storage);
        assert_eq!(records.len() as u64, key, "crash {crash}");
        for (sequence, bytes) in &records {
            assert_eq!(*bytes, record(sequence - 1));
        }
        match recovered.truncation {
            None => assert!(!crash, "a crash leaves the zeros of the last segment"),
            Some(t) => {
                assert!(crash, "a clean close left a tail: {t}");
                assert_eq!(
                    (t.reason, t.cause, t.file),
                    (
                        Corruption::Unwritten,
                        TruncationCause::TornTail,
                        segment_file_name(recovered.resume.next_segment() - 1)
                    )
                );
            }
        }
    }
}

/// Closing does not wait for a spare still being filled: the helper gives up at its next
/// piece (or pause), and its partial file is removed. (At the pace asked for here, one piece
/// of the fill takes a minute.)
#[test]
fn close_stops_a_spare_being_filled_and_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FileStorage::open(dir.path()).expect("open");
    let wal = open(
        &storage,
        WalOptions {
            prepare_bytes_per_second: 4 << 10,
            ..prepared(1 << 20)
        },
    );
    assert_eq!(wal.append(payload(0, 100)), Ok(1));
    // The helper has started on the spare.
    let deadline = Instant::now() + Duration::from_secs(20);
    while storage.len_bytes(SPARE_SEGMENT_NAME).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the spare was never begun");
        std::thread::sleep(Duration::from_millis(5));
    }
    let closing = Instant::now();
    wal.close().expect("clean close");
    assert!(
        closing.elapsed() < Duration::from_secs(20),
        "close waited {:?} for the fill",
        closing.elapsed()
    );
    let names = storage.list().expect("list");
    assert_eq!(names, [segment_file_name(1)], "the spare is gone");
    let (recovered, records) = recover_all(&storage);
    assert_eq!((records.len(), recovered.truncation), (1, None));
}

/// Without room on the disk for two segments no spare is prepared, so it never takes space
/// the segment being written needs: segments grow as they would without preparing.
#[test]
fn no_spare_is_prepared_without_room_for_two_segments() {
    const SEGMENT: u64 = 4096;
    let storage = SimStorage::new();
    storage.set_capacity_bytes(Some(2 * SEGMENT - 1));
    let wal = open(&storage, prepared(SEGMENT));
    for key in 0..30 {
        assert_eq!(wal.append(payload(key, 200)), Ok(key + 1));
        let names = storage.list().expect("list");
        assert!(
            !names.iter().any(|n| n == SPARE_SEGMENT_NAME),
            "a spare was prepared: {names:?}"
        );
    }
    // 18 records of 216 bytes fill a segment of 4096: two segments, as without preparing; a
    // failed preparation must not start a segment per group.
    assert_eq!(segments(&storage).len(), 2, "{:?}", segments(&storage));
    wal.close().expect("clean close");
    let (recovered, records) = recover_all(&storage);
    assert_eq!((records.len(), recovered.truncation), (30, None));
}

proptest! {
    #![proptest_config(ledger::proptest_config!("wal_power_loss_pages.txt", 64))]

    /// A power loss while one group of several pages is being synced: on a segment filled
    /// ahead any of its pages may have reached the disk and others not, so zeros may come
    /// before valid records of that group; on a growing one the group is whole or absent.
    /// Either way recovery trims it (nothing of it was acknowledged) and keeps every record
    /// before it.
    #[test]
    fn a_power_loss_mid_group_keeps_everything_before_the_group(
        seed in any::<u64>(),
        before in 0u64..10,
        group in 20u64..80,
        prepare in any::<bool>(),
    ) {
        let storage = SimStorage::new();
        let options = WalOptions { prepare_segments: prepare, ..prepared(256 << 10) };
        let wal = open(&storage, options);
        for key in 0..before {
            prop_assert_eq!(wal.append(payload(key, 300)), Ok(key + 1));
        }
        storage.set_sync_latency(Duration::from_millis(100));
        let outcomes: Outcomes = Arc::default();
        submit_all(&wal, (before..before + group).map(|key| (key, payload(key, 300))).collect(),
            &outcomes);
        // The group is written and its sync under way.
        std::thread::sleep(Duration::from_millis(30));
        let storage = storage.crash_torn(seed, Tear::Pages);
        drop(wal);
        prop_assert!(outcomes.lock().values().all(|r| r.is_err()), "nothing of it acknowledged");
        let (_, records) = recover_all(&storage);
        prop_assert!(records.len() as u64 >= before);
        for (sequence, bytes) in &records {
            prop_assert_eq!(bytes, &payload(sequence - 1, 300));
        }
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("wal_crash_acknowledged.txt", 64))]

    /// Crash while records are being written and synced (unsynced bytes lost or torn at a
    /// random point): every record whose `on_durable` said Ok is recovered, with its payload,
    /// and recovery never errs.
    #[test]
    fn every_acknowledged_record_survives_a_crash(
        seed in any::<u64>(),
        tear in prop_oneof![Just(Tear::Byte), Just(Tear::Sector), Just(Tear::Pages)],
        before in 0u64..20,
        during in 1u64..60,
        crash_after in 0u64..60,
        crash_delay_us in 0u64..1500,
        submit_gap_us in prop_oneof![Just(0u64), 1u64..300],
        fsync in prop::bool::weighted(0.8),
        segment_size in prop_oneof![Just(1u64 << 20), 300u64..2000],
        prepare in any::<bool>(),
    ) {
        let storage = SimStorage::new();
        storage.set_sync_latency(Duration::from_micros(200));
        let wal = open(&storage, WalOptions {
            segment_size_max_bytes: segment_size,
            prepare_segments: prepare,
            durability: if fsync { Durability::Fsync } else { Durability::None },
            ..WalOptions::default()
        });
        let len = |key: u64| (key * 37 % 300) as usize;
        for key in 0..before {
            prop_assert_eq!(wal.append(payload(key, len(key))), Ok(key + 1));
        }
        let outcomes: Outcomes = Arc::default();
        let mut given = BTreeMap::new();
        let crash = |storage: &SimStorage| {
            storage.crash_torn(seed, tear)
        };
        let mut restarted = None;
        for key in before..before + during {
            if key - before == crash_after {
                std::thread::sleep(Duration::from_micros(crash_delay_us));
                restarted = Some(crash(&storage));
            }
            let outcomes = Arc::clone(&outcomes);
            let Ok(permit) = wal.reserve() else { break };
            let sequence = permit.submit(payload(key, len(key)), Box::new(move |r| {
                outcomes.lock().insert(key, r);
            }));
            given.insert(key, sequence);
            if submit_gap_us > 0 {
                std::thread::sleep(Duration::from_micros(submit_gap_us));
            }
        }
        let storage = restarted.unwrap_or_else(|| crash(&storage));
        drop(wal);
        let (_, records) = recover_all(&storage);
        for (i, (sequence, bytes)) in records.iter().enumerate() {
            prop_assert_eq!(*sequence, i as u64 + 1);
            let key = sequence - 1;
            prop_assert_eq!(bytes, &payload(key, len(key)));
        }
        if fsync {
            prop_assert!(records.len() as u64 >= before);
            for (key, result) in outcomes.lock().iter() {
                if let Ok(sequence) = result {
                    prop_assert_eq!(*sequence, given[key]);
                    prop_assert!(records.len() as u64 >= *sequence,
                        "record {} acknowledged but lost ({} recovered)", sequence, records.len());
                }
            }
        }
    }
}
