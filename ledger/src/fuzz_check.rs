//! The properties the fuzz targets (`fuzz/`) check, one function per decoder, shared with the
//! stable-toolchain test that replays the committed corpora (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes and panics only when a property is broken: a decoder
//! panicked, accepted something it cannot re-encode, or re-encoded it to something that reads
//! back differently. Anything a file can hold must give a value or a typed error.

use crate::storage::{AppendFile, SimStorage, Storage};
use crate::wal::{self, RecoverOptions, SEGMENT_MAGIC};
use crate::{Config, Ledger, LogRecord, snapshot_file};

/// A ledger log payload: whatever decodes re-encodes to bytes that decode to the same record.
pub fn log_record(data: &[u8]) {
    let Ok(record) = LogRecord::decode(data) else {
        return;
    };
    let mut encoded = Vec::with_capacity(data.len());
    record.encode(&mut encoded);
    let again = LogRecord::decode(&encoded).expect("a re-encoded record decodes");
    assert_eq!(record, again, "a record changed through encode and decode");
}

/// The ledger configuration snapshots are restored into: small, so that a restore is cheap.
pub fn snapshot_config() -> Config {
    Config {
        shards: 4,
        accounts_max: 4_096,
        transfers_remembered_max: 4_096,
        pending_max: 1_024,
        batch_len_max: 64,
    }
}

/// A snapshot payload and a snapshot file: restoring gives a ledger or an error; a restored
/// ledger captures to a payload that restores to the same state (same digest). The same bytes
/// as a snapshot file are loaded or rejected, never believed half-way.
pub fn snapshot(data: &[u8]) {
    if let Ok(ledger) = Ledger::restore(snapshot_config(), data) {
        let mut encoded = Vec::with_capacity(data.len());
        ledger.capture().encode(&mut encoded);
        let again = Ledger::restore(snapshot_config(), &encoded).expect("a re-encoded snapshot");
        assert_eq!(ledger.digest(), again.digest(), "a snapshot changed state");
        assert_eq!(
            ledger.capture().sequence(),
            again.capture().sequence(),
            "a snapshot changed its sequence"
        );
    }

    let storage = SimStorage::new();
    let name = snapshot_file::snapshot_file_name(1);
    write_file(&storage, &name, data);
    let loaded = snapshot_file::load_newest(&storage).expect("the simulated disk does not fail");
    match loaded.snapshot {
        Some(snapshot) => {
            assert!(loaded.rejected.is_empty());
            assert_eq!(snapshot.sequence, 1);
            assert!(
                data.ends_with(&snapshot.payload),
                "a loaded payload is the file's tail"
            );
            let _ = Ledger::restore(snapshot_config(), &snapshot.payload);
        }
        None => assert_eq!(loaded.rejected.len(), 1, "an invalid file is reported"),
    }
}

/// The log's recovery reader over arbitrary segment files. The input is cut into segments
/// before each occurrence of the segment magic (so a concatenation of real segment files
/// becomes those files), numbered from 1.
///
/// Recovery gives records in strictly increasing sequence or a typed error; a refusal changes
/// nothing on disk; a trimmed log recovers again to the same records with nothing more to trim.
pub fn wal_recovery(data: &[u8]) {
    let storage = SimStorage::new();
    for (i, segment) in split_segments(data).into_iter().enumerate() {
        write_file(&storage, &wal::segment_file_name(i as u64 + 1), segment);
    }
    let before = files(&storage);
    let options = RecoverOptions::default();
    let mut first = Vec::new();
    let result = wal::recover(&storage, &options, |sequence, payload| {
        first.push((sequence, payload.to_vec()));
        Ok::<(), std::convert::Infallible>(())
    });
    match result {
        Err(_) => assert_eq!(before, files(&storage), "a refused log was changed"),
        Ok(recovered) => {
            assert!(
                first.windows(2).all(|w| w[0].0 < w[1].0),
                "records out of sequence"
            );
            assert_eq!(recovered.records_applied, first.len() as u64);
            assert_eq!(recovered.last_sequence, first.last().map(|r| r.0));
            if let Some(last) = recovered.last_sequence {
                assert!(recovered.resume.next_sequence() > last);
            }
            let mut second = Vec::new();
            let again = wal::recover(&storage, &options, |sequence, payload| {
                second.push((sequence, payload.to_vec()));
                Ok::<(), std::convert::Infallible>(())
            })
            .expect("a recovered log recovers again");
            assert!(
                again.truncation.is_none(),
                "a trimmed log was trimmed again"
            );
            assert_eq!(first, second, "a trimmed log gave other records");
            assert_eq!(recovered.resume, again.resume);
        }
    }
}

fn split_segments(data: &[u8]) -> Vec<&[u8]> {
    let mut starts: Vec<usize> = data
        .windows(SEGMENT_MAGIC.len())
        .enumerate()
        .filter(|(at, w)| *at > 0 && *w == SEGMENT_MAGIC)
        .map(|(at, _)| at)
        .collect();
    // A bound on files, so that an input of repeated magics stays cheap.
    starts.truncate(15);
    let mut segments = Vec::with_capacity(starts.len() + 1);
    let mut from = 0;
    for at in starts {
        segments.push(&data[from..at]);
        from = at;
    }
    segments.push(&data[from..]);
    segments
}

fn write_file(storage: &SimStorage, name: &str, bytes: &[u8]) {
    let mut file = storage.create(name).expect("simulated create");
    file.append(bytes).expect("simulated append");
    file.sync_data().expect("simulated sync");
    storage.sync_dir().expect("simulated directory sync");
}

fn files(storage: &SimStorage) -> Vec<(String, Vec<u8>)> {
    let names = storage.list().expect("simulated list");
    names
        .into_iter()
        .map(|name| {
            let bytes = storage.read(&name).expect("simulated read");
            (name, bytes)
        })
        .collect()
}
