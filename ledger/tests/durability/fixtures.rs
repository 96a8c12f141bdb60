//! Damaged logs and snapshots checked in under `ledger/tests/fixtures/`, recovered from a real
//! directory. `generate` made them; `fixtures_are_what_the_generator_makes` keeps them honest,
//! and a format change must regenerate them on purpose:
//! `cargo test -p ledger --test durability -- --ignored regenerate_fixtures`.

use std::path::{Path, PathBuf};

use ledger::snapshot_file::{self, SnapshotCorruption};
use ledger::storage::{FileStorage, SimStorage, Storage};
use ledger::wal::{
    Corruption, OnCorruption, RecoverOptions, RecoveryError, TruncationCause, WalOptions,
    segment_file_name,
};

use crate::support::{numbered, recover_all, recover_with, write_log};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn payloads(count: u64) -> Vec<Vec<u8>> {
    (1..=count)
        .map(|i| format!("payment batch {i}").into_bytes())
        .collect()
}

/// Room for three records of 15 payload bytes ("payment batch 1") per segment, not four.
fn small_segments() -> WalOptions {
    WalOptions {
        segment_size_max_bytes: 32 + 3 * 33,
        ..WalOptions::default()
    }
}

/// Every fixture, by directory name, as files.
fn generate() -> Vec<(&'static str, SimStorage)> {
    let mut cases = Vec::new();

    // Five records; the last one's write cut short by a crash.
    let torn = SimStorage::new();
    write_log(&torn, WalOptions::default(), &payloads(5));
    let name = segment_file_name(1);
    let len = torn.len_bytes(&name).expect("len");
    torn.truncate(&name, len - 7).expect("truncate");
    cases.push(("wal-torn-tail", torn));

    // Segments 1 (records 1-3), 2 (4-6), 3 (7); a bit of record 2 flipped.
    let flipped = SimStorage::new();
    write_log(&flipped, small_segments(), &payloads(7));
    flipped
        .flip_bit(&segment_file_name(1), 32 + 31 + 16 + 3, 4)
        .expect("flip");
    cases.push(("wal-bit-flip-earlier-segment", flipped));

    // One segment of four records; a bit of record 2 flipped, records 3 and 4 intact after it.
    let mid = SimStorage::new();
    write_log(&mid, WalOptions::default(), &payloads(4));
    mid.flip_bit(&segment_file_name(1), 32 + 31 + 16 + 3, 4)
        .expect("flip");
    cases.push(("wal-bit-flip-mid-last-segment", mid));

    // Segment 1 whole; segment 2 created, but only 10 bytes of its header reached the disk.
    let header = SimStorage::new();
    write_log(&header, small_segments(), &payloads(4));
    header
        .truncate(&segment_file_name(2), 10)
        .expect("truncate");
    cases.push(("wal-torn-header", header));

    // Snapshots at 3 and 6; the newer one has a flipped bit.
    let snapshots = SimStorage::new();
    snapshot_file::write(&snapshots, 3, b"state after 3", 2).expect("write");
    snapshot_file::write(&snapshots, 6, b"state after 6", 2).expect("write");
    snapshots
        .flip_bit(&snapshot_file_name_of(6), 40, 0)
        .expect("flip");
    cases.push(("snapshot-corrupt", snapshots));

    cases
}

fn snapshot_file_name_of(sequence: u64) -> String {
    snapshot_file::snapshot_file_name(sequence)
}

fn write_out(dir: &Path, storage: &SimStorage) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for name in storage.list().expect("list") {
        std::fs::write(dir.join(&name), storage.read(&name).expect("read")).expect("write");
    }
}

#[test]
#[ignore = "rewrites the checked-in fixtures; run by hand after a deliberate format change"]
fn regenerate_fixtures() {
    for (case, storage) in generate() {
        let dir = fixtures_dir().join(case);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("clear");
        }
        write_out(&dir, &storage);
    }
}

#[test]
fn fixtures_are_what_the_generator_makes() {
    for (case, storage) in generate() {
        let dir = fixtures_dir().join(case);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, storage.list().expect("list"), "{case}");
        for name in on_disk {
            let bytes = std::fs::read(dir.join(&name)).expect("read");
            assert!(
                bytes == storage.read(&name).expect("read"),
                "{case}/{name} differs"
            );
        }
    }
}

/// A writable copy of a fixture in a temporary directory.
fn copy_of(case: &str) -> (tempfile::TempDir, FileStorage) {
    let temp = tempfile::tempdir().expect("tempdir");
    let storage = FileStorage::open(temp.path()).expect("open");
    for entry in std::fs::read_dir(fixtures_dir().join(case)).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), temp.path().join(entry.file_name())).expect("copy");
    }
    (temp, storage)
}

#[test]
fn torn_tail_fixture_is_trimmed() {
    let (_dir, storage) = copy_of("wal-torn-tail");
    let (recovered, records) = recover_all(&storage);
    assert_eq!(records, numbered(&payloads(4)));
    let t = recovered.truncation.expect("trimmed");
    // Four records of 16 + 15 bytes after the 32-byte header.
    assert_eq!(t.offset, 32 + 4 * 31);
    assert_eq!(t.cause, TruncationCause::TornTail);
    assert_eq!(
        t.reason,
        Corruption::RecordTruncated {
            len_bytes: 15,
            remaining_bytes: 8
        }
    );
    assert_eq!(
        t.to_string(),
        "WAL segment 00000000000000000001.wal offset 156: record of 15 payload bytes truncated \
         (8 bytes left after its header); torn tail trimmed"
    );
    assert_eq!(storage.len_bytes(&segment_file_name(1)).expect("len"), 156);
    assert_eq!(recovered.resume.next_segment(), 2);
    assert_eq!(recovered.resume.next_sequence(), 5);
}

#[test]
fn bit_flip_in_an_earlier_segment_fixture_is_refused_then_cut_by_choice() {
    let (_dir, storage) = copy_of("wal-bit-flip-earlier-segment");
    let err = recover_with(&storage, &RecoverOptions::default()).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "WAL segment 00000000000000000001.wal offset 63: checksum mismatch"
    );
    let choice = RecoverOptions {
        on_corruption: OnCorruption::TruncateAt {
            segment: 1,
            offset: 63,
        },
        ..RecoverOptions::default()
    };
    let (recovered, records) = recover_with(&storage, &choice).expect("cut");
    assert_eq!(records, numbered(&payloads(1)));
    let t = recovered.truncation.expect("cut");
    assert_eq!(t.cause, TruncationCause::OperatorChoice);
    assert_eq!(
        t.removed_files,
        [segment_file_name(2), segment_file_name(3)]
    );
    assert_eq!(storage.list().expect("list"), [segment_file_name(1)]);
}

#[test]
fn bit_flip_mid_last_segment_fixture_is_refused_naming_the_valid_record_after_it() {
    let (_dir, storage) = copy_of("wal-bit-flip-mid-last-segment");
    let err = recover_with(&storage, &RecoverOptions::default()).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "WAL segment 00000000000000000001.wal offset 63: checksum mismatch (a valid record \
         follows at offset 94, so this is not a torn tail)"
    );
    assert!(matches!(
        err,
        RecoveryError::Corrupt {
            valid_record_at: Some(94),
            ..
        }
    ));
    let before = storage.read(&segment_file_name(1)).expect("read");
    assert!(recover_with(&storage, &RecoverOptions::default()).is_err());
    assert_eq!(
        storage.read(&segment_file_name(1)).expect("read"),
        before,
        "refusing changes nothing"
    );
}

#[test]
fn torn_header_fixture_loses_the_empty_segment_only() {
    let (_dir, storage) = copy_of("wal-torn-header");
    let (recovered, records) = recover_all(&storage);
    assert_eq!(records, numbered(&payloads(3)));
    let t = recovered.truncation.expect("trimmed");
    assert_eq!(t.file, segment_file_name(2));
    assert_eq!(t.offset, 0);
    assert_eq!(t.reason, Corruption::HeaderTruncated { len_bytes: 10 });
    assert_eq!(t.removed_files, [segment_file_name(2)]);
    assert_eq!(recovered.resume.next_segment(), 2);
    assert_eq!(recovered.resume.next_sequence(), 4);
    assert_eq!(storage.list().expect("list"), [segment_file_name(1)]);
}

#[test]
fn corrupt_snapshot_fixture_falls_back_to_the_older_one() {
    let (_dir, storage) = copy_of("snapshot-corrupt");
    let loaded = snapshot_file::load_newest(&storage).expect("load");
    let snapshot = loaded.snapshot.expect("the older one");
    assert_eq!(snapshot.sequence, 3);
    assert_eq!(snapshot.payload, b"state after 3");
    assert_eq!(loaded.rejected.len(), 1);
    assert_eq!(loaded.rejected[0].file, snapshot_file_name_of(6));
    assert_eq!(loaded.rejected[0].reason, SnapshotCorruption::Checksum);
}
