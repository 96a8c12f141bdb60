//! Replays every committed fuzz corpus file of the ledger's targets through the same checks the
//! fuzz targets run (`ledger::fuzz_check`), so a regression fails `cargo test` on the stable
//! toolchain without a fuzzer.
//!
//! The seeds are built here too, from real encodings: `WRITE_FUZZ_SEEDS=1 cargo test -p ledger
//! --test fuzz_corpus` (re)writes them into `fuzz/corpus/<target>/seed-*`; without it they are only checked.

use std::path::{Path, PathBuf};

use ledger::fuzz_check;
use ledger::storage::{SimStorage, Storage};
use ledger::wal::{self, RecoverOptions, Wal, WalOptions};
use ledger::{
    AccountFlags, AccountId, Amount, Currency, Event, Ledger, LogRecord, NewAccount, Op,
    ParticipantId, Timestamp, Transfer, TransferId, TransferKind,
};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of a target's corpus through `check`; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in &entries {
        let bytes = std::fs::read(path).expect("corpus file");
        let result = std::panic::catch_unwind(|| check(&bytes));
        assert!(
            result.is_ok(),
            "corpus file {} fails its check",
            path.display()
        );
    }
    entries.len()
}

fn account(id: u128, owner: u64, flags: AccountFlags) -> Event {
    Event::new(Op::CreateAccount(NewAccount {
        id: AccountId(id),
        currency: Currency::CNY,
        owner: ParticipantId(owner),
        flags,
    }))
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u64, kind: TransferKind) -> Event {
    Event::new(Op::Transfer(Transfer {
        id: TransferId(id),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(amount),
        currency: Currency::CNY,
        kind,
        code: 7,
    }))
}

/// Batches that touch every operation and transfer kind, with their `now`.
fn sample_batches() -> Vec<(Timestamp, Vec<Event>)> {
    let now = Timestamp(1_794_355_200_000_000_000);
    let mut linked = transfer(13, 1, 2, 5, TransferKind::Single);
    linked.linked = true;
    vec![
        (
            now,
            vec![
                account(1, 7, AccountFlags::empty()),
                account(2, 8, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
                account(3, 9, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
            ],
        ),
        (
            Timestamp(now.0 + 1),
            vec![
                transfer(10, 1, 2, 1_000, TransferKind::Single),
                transfer(
                    11,
                    1,
                    3,
                    500,
                    TransferKind::Pending {
                        expires_at: Timestamp(now.0 + 1_000_000_000),
                    },
                ),
                transfer(
                    12,
                    1,
                    3,
                    300,
                    TransferKind::Post {
                        pending_id: TransferId(11),
                    },
                ),
            ],
        ),
        (
            Timestamp(now.0 + 2),
            vec![
                linked,
                transfer(
                    14,
                    1,
                    2,
                    0,
                    TransferKind::Void {
                        pending_id: TransferId(11),
                    },
                ),
                Event::new(Op::SetAccountClosed {
                    id: AccountId(3),
                    closed: true,
                }),
            ],
        ),
    ]
}

fn log_records() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, (now, events)) in sample_batches().into_iter().enumerate() {
        let mut bytes = Vec::new();
        LogRecord::encode_batch(now, &events, &mut bytes);
        out.push((
            ["batch-accounts", "batch-transfers", "batch-linked"][i],
            bytes,
        ));
    }
    let mut expire = Vec::new();
    LogRecord::encode_expire(Timestamp(1_794_355_201_000_000_000), &mut expire);
    out.push(("expire", expire));
    out
}

fn snapshots() -> Vec<(&'static str, Vec<u8>)> {
    let ledger = Ledger::new(fuzz_check::snapshot_config()).expect("valid config");
    let mut empty = Vec::new();
    ledger.capture().encode(&mut empty);
    for (now, events) in sample_batches() {
        ledger.apply(&events, now).expect("a valid batch");
    }
    let mut full = Vec::new();
    ledger.capture().encode(&mut full);
    vec![("empty", empty), ("accounts-and-transfers", full)]
}

/// A real log written by the writer: three small segments of the sample records.
fn written_log() -> Vec<u8> {
    let storage = SimStorage::new();
    let recovered = wal::recover(&storage, &RecoverOptions::default(), |_, _| {
        Ok::<(), std::convert::Infallible>(())
    })
    .expect("an empty log");
    let options = WalOptions {
        segment_size_max_bytes: 256,
        ..WalOptions::default()
    };
    let wal = Wal::open(storage.clone(), options, recovered.resume).expect("open");
    for (_, payload) in log_records() {
        wal.append(payload).expect("append");
    }
    wal.close().expect("close");
    concatenated(&storage)
}

fn concatenated(storage: &impl Storage) -> Vec<u8> {
    let mut out = Vec::new();
    for name in storage.list().expect("list") {
        out.extend(storage.read(&name).expect("read"));
    }
    out
}

/// The committed fixtures whose name starts with `prefix`, each directory as one input (its
/// files concatenated).
fn fixtures(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("fixture dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        let mut bytes = Vec::new();
        for file in files {
            bytes.extend(std::fs::read(file).expect("fixture file"));
        }
        out.push((name, bytes));
    }
    out
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let named = |v: Vec<(&'static str, Vec<u8>)>| {
        v.into_iter()
            .map(|(n, b)| (n.to_string(), b))
            .collect::<Vec<_>>()
    };
    match target {
        "log_record" => named(log_records()),
        "snapshot" => {
            let mut seeds = named(snapshots());
            seeds.extend(fixtures("snapshot-"));
            seeds
        }
        "wal_recovery" => {
            let mut seeds = vec![("written-log".to_string(), written_log())];
            seeds.extend(fixtures("wal-"));
            seeds
        }
        _ => unreachable!("no such target {target}"),
    }
}

/// A fuzz target's name and its check.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 3] = [
    ("log_record", fuzz_check::log_record),
    ("snapshot", fuzz_check::snapshot),
    ("wal_recovery", fuzz_check::wal_recovery),
];

#[test]
fn seeds_pass_their_checks() {
    let write = std::env::var_os("WRITE_FUZZ_SEEDS").is_some();
    for (target, check) in TARGETS {
        for (name, bytes) in seeds(target) {
            check(&bytes);
            if write {
                std::fs::create_dir_all(corpus_dir(target)).expect("corpus dir");
                let path = corpus_dir(target).join(format!("seed-{name}"));
                std::fs::write(&path, &bytes).expect("writing a seed");
            }
        }
    }
}

#[test]
fn snapshot_seed_restores_what_was_captured() {
    // Guards the seed itself: a snapshot corpus that restores nothing fuzzes nothing.
    let (_, full) = snapshots().pop().expect("a snapshot");
    let ledger = Ledger::restore(fuzz_check::snapshot_config(), &full).expect("restores");
    assert!(ledger.account(AccountId(1)).is_some());
}

#[test]
fn committed_corpora_pass_their_checks() {
    for (target, check) in TARGETS {
        let n = replay(target, check);
        assert!(n > 0, "the {target} corpus is empty");
    }
}
