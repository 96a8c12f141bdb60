//! Helpers shared by the durability tests.

use std::convert::Infallible;

use ledger::storage::{AppendFile, SimStorage, Storage};
use ledger::wal::{self, RecoverOptions, Recovered, RecoveryError, Wal, WalOptions};

/// Deterministic payload bytes for a test record.
pub fn payload(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Records as recovered: (sequence, payload).
pub type Records = Vec<(u64, Vec<u8>)>;

/// Recovers everything with the given options, collecting the records.
pub fn recover_with<S: Storage>(
    storage: &S,
    options: &RecoverOptions,
) -> Result<(Recovered, Records), RecoveryError<Infallible>> {
    let mut records = Vec::new();
    let recovered = wal::recover(storage, options, |sequence, payload| {
        records.push((sequence, payload.to_vec()));
        Ok::<(), Infallible>(())
    })?;
    Ok((recovered, records))
}

pub fn recover_all<S: Storage>(storage: &S) -> (Recovered, Records) {
    recover_with(storage, &RecoverOptions::default()).expect("recovery succeeds")
}

/// Recovers (the directory is expected to be clean) and opens a writer after it.
pub fn open<S: Storage + Clone>(storage: &S, options: WalOptions) -> Wal {
    let (recovered, _) = recover_all(storage);
    Wal::open(storage.clone(), options, recovered.resume).expect("open")
}

/// Writes `payloads` one at a time (each waits for its sync) into a fresh log.
pub fn write_log(storage: &SimStorage, options: WalOptions, payloads: &[Vec<u8>]) {
    let wal = open(storage, options);
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(wal.append(p.clone()), Ok(i as u64 + 1));
    }
    wal.close().expect("clean close");
}

/// A new storage holding durable copies of every file of `storage`.
pub fn copy(storage: &SimStorage) -> SimStorage {
    let copy = SimStorage::new();
    for name in storage.list().expect("list") {
        let mut file = copy.create(&name).expect("create");
        file.append(&storage.read(&name).expect("read"))
            .expect("append");
        file.sync_data().expect("sync");
    }
    copy.sync_dir().expect("sync_dir");
    copy
}

/// Byte offsets of the records of a segment (and the end of the last one), read from its own
/// framing: the header's first sequence tells which payloads it holds.
pub fn record_offsets(segment_bytes: &[u8], payloads: &[Vec<u8>]) -> Vec<u64> {
    let first = u64::from_le_bytes(segment_bytes[20..28].try_into().expect("8 bytes"));
    let mut offsets = vec![wal::SEGMENT_HEADER_LEN as u64];
    let mut at = wal::SEGMENT_HEADER_LEN as u64;
    for p in &payloads[(first - 1) as usize..] {
        if at >= segment_bytes.len() as u64 {
            break;
        }
        at += (wal::RECORD_HEADER_LEN + p.len()) as u64;
        offsets.push(at);
    }
    assert_eq!(*offsets.last().expect("one"), segment_bytes.len() as u64);
    offsets
}

/// Payloads numbered from sequence 1.
pub fn numbered(payloads: &[Vec<u8>]) -> Records {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, p.clone()))
        .collect()
}
