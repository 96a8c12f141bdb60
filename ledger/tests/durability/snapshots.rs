//! Snapshot files: atomic replacement, pruning, fallback past corrupt ones.

use ledger::snapshot_file::{
    self, SNAPSHOT_KEEP_DEFAULT, SnapshotCorruption, SnapshotFileError, snapshot_file_name,
};
use ledger::storage::{AppendFile, SimStorage, Storage};

#[test]
fn keeps_the_newest_and_removes_older_ones() {
    let storage = SimStorage::new();
    let written = snapshot_file::write(&storage, 10, b"ten", SNAPSHOT_KEEP_DEFAULT).expect("write");
    assert_eq!(written.file, snapshot_file_name(10));
    assert_eq!(written.oldest_kept_sequence, 10);
    snapshot_file::write(&storage, 20, b"twenty", SNAPSHOT_KEEP_DEFAULT).expect("write");
    let written =
        snapshot_file::write(&storage, 30, b"thirty", SNAPSHOT_KEEP_DEFAULT).expect("write");
    assert_eq!(written.removed, [snapshot_file_name(10)]);
    assert_eq!(written.oldest_kept_sequence, 20);
    assert_eq!(
        storage.list().expect("list"),
        [snapshot_file_name(20), snapshot_file_name(30)]
    );
    let loaded = snapshot_file::load_newest(&storage).expect("load");
    let snapshot = loaded.snapshot.expect("one");
    assert_eq!(
        (snapshot.sequence, snapshot.payload.as_slice()),
        (30, &b"thirty"[..])
    );
    assert!(loaded.rejected.is_empty());
    // Durable: a crash changes nothing.
    let storage = storage.crash();
    let snapshot = snapshot_file::load_newest(&storage)
        .expect("load")
        .snapshot
        .expect("one");
    assert_eq!(snapshot.sequence, 30);
    assert!(matches!(
        snapshot_file::write(&storage, 40, b"", 0),
        Err(SnapshotFileError::KeepZero)
    ));
}

#[test]
fn falls_back_past_corrupt_snapshots_and_says_which_and_why() {
    let storage = SimStorage::new();
    for sequence in [10, 20, 30] {
        snapshot_file::write(&storage, sequence, &[sequence as u8; 100], 3).expect("write");
    }
    storage
        .flip_bit(&snapshot_file_name(30), 60, 2)
        .expect("flip");
    storage
        .truncate(&snapshot_file_name(20), 50)
        .expect("truncate");
    let loaded = snapshot_file::load_newest(&storage).expect("load");
    let snapshot = loaded.snapshot.expect("the oldest is intact");
    assert_eq!(snapshot.sequence, 10);
    assert_eq!(snapshot.payload, [10u8; 100]);
    let rejected: Vec<String> = loaded.rejected.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        rejected,
        [
            "snapshot 00000000000000000030.snap: checksum mismatch",
            "snapshot 00000000000000000020.snap: header says 100 payload bytes but the file \
             holds 18",
        ]
    );

    storage
        .flip_bit(&snapshot_file_name(10), 0, 0)
        .expect("flip");
    let loaded = snapshot_file::load_newest(&storage).expect("load");
    assert_eq!(loaded.snapshot, None);
    assert_eq!(loaded.rejected.len(), 3);
    assert_eq!(loaded.rejected[2].reason, SnapshotCorruption::BadMagic);
}

#[test]
fn a_snapshot_interrupted_before_its_rename_leaves_the_old_one() {
    let storage = SimStorage::new();
    snapshot_file::write(&storage, 10, b"ten", SNAPSHOT_KEEP_DEFAULT).expect("write");
    storage.fail_next_sync();
    assert!(snapshot_file::write(&storage, 20, b"twenty", SNAPSHOT_KEEP_DEFAULT).is_err());
    // Without a crash the temporary file is still there; loading ignores it.
    assert!(
        storage
            .list()
            .expect("list")
            .iter()
            .any(|n| n.ends_with(".snap.tmp"))
    );
    let snapshot = snapshot_file::load_newest(&storage)
        .expect("load")
        .snapshot
        .expect("one");
    assert_eq!(snapshot.sequence, 10);
    // The next snapshot clears it away.
    let written =
        snapshot_file::write(&storage, 30, b"thirty", SNAPSHOT_KEEP_DEFAULT).expect("write");
    assert_eq!(written.removed, ["00000000000000000020.snap.tmp"]);

    // A crash after the temporary file was synced but before the rename was: the old set.
    let mut temp = storage
        .create("00000000000000000040.snap.tmp")
        .expect("create");
    temp.append(b"partial").expect("append");
    temp.sync_data().expect("sync");
    let storage = storage.crash();
    let snapshot = snapshot_file::load_newest(&storage)
        .expect("load")
        .snapshot
        .expect("one");
    assert_eq!(snapshot.sequence, 30);
}
