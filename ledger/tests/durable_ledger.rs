//! The durable ledger under crashes: random batches (holds, posts, voids, expiry, declines),
//! snapshots at random points, and a crash of the simulated disk at a random moment, with
//! unsynced writes lost or torn. After recovery the state must be exactly the state after some
//! prefix of the batches, that prefix must hold every acknowledged batch, and recovering again
//! must change nothing.

use std::time::Duration;

use ledger::storage::{SimStorage, Tear};
use ledger::wal::WalOptions;
use ledger::{
    AccountFlags, AccountId, Amount, Config, Currency, DurableLedger, DurableOptions, Event,
    Ledger, NewAccount, ParticipantId, Timestamp, Transfer, TransferId, TransferKind,
};
use proptest::prelude::*;

const ACCOUNTS: u128 = 6;

#[derive(Clone, Debug)]
enum Step {
    /// Transfers (debit, credit, amount, kind choice, linked).
    Batch(Vec<(u128, u128, u64, u8, bool)>),
    Expire,
    Snapshot,
}

fn step() -> impl Strategy<Value = Step> {
    let transfer = (
        1..=ACCOUNTS,
        1..=ACCOUNTS,
        1u64..500,
        0u8..6,
        prop::bool::weighted(0.2),
    );
    prop_oneof![
        10 => prop::collection::vec(transfer, 1..12).prop_map(Step::Batch),
        1 => Just(Step::Expire),
        1 => Just(Step::Snapshot),
    ]
}

fn setup() -> Vec<Event> {
    let mut events: Vec<Event> = (1..=ACCOUNTS)
        .map(|id| {
            Event::from(NewAccount {
                id: AccountId(id),
                currency: Currency::CNY,
                owner: ParticipantId(1),
                flags: if id == 1 {
                    AccountFlags::empty()
                } else {
                    AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                },
            })
        })
        .collect();
    for id in 2..=ACCOUNTS {
        events.push(Event::from(Transfer {
            id: TransferId(id),
            debit_account_id: AccountId(1),
            credit_account_id: AccountId(id),
            amount: Amount(2_000),
            currency: Currency::CNY,
            kind: TransferKind::Single,
            code: 0,
        }));
    }
    events
}

/// Turns a generated batch into events; holds are posted or voided by later transfers.
fn events(batch: &[(u128, u128, u64, u8, bool)], next_id: &mut u128, now: Timestamp) -> Vec<Event> {
    let mut out = Vec::new();
    for &(debit, credit, amount, kind, linked) in batch {
        *next_id += 1;
        let id = *next_id;
        let credit = if credit == debit {
            debit % ACCOUNTS + 1
        } else {
            credit
        };
        let (kind, debit, credit) = match kind {
            0 | 1 => (TransferKind::Single, debit, credit),
            2 | 3 => (
                TransferKind::Pending {
                    expires_at: Timestamp(now.0 + 5 + amount % 20),
                },
                debit,
                credit,
            ),
            // Resolve a recent hold (ids are dense, so some of these miss: declines).
            4 => (
                TransferKind::Post {
                    pending_id: TransferId(id - 1 - amount as u128 % 4),
                },
                0,
                0,
            ),
            _ => (
                TransferKind::Void {
                    pending_id: TransferId(id - 1 - amount as u128 % 4),
                },
                0,
                0,
            ),
        };
        let amount = if matches!(kind, TransferKind::Void { .. }) {
            0
        } else {
            amount
        };
        out.push(Event {
            op: ledger::Op::Transfer(Transfer {
                id: TransferId(id),
                debit_account_id: AccountId(debit),
                credit_account_id: AccountId(credit),
                amount: Amount(amount),
                currency: Currency::CNY,
                kind,
                code: 0,
            }),
            linked,
        });
    }
    out
}

fn options() -> DurableOptions {
    prepared(false)
}

/// Small segments, so that rotation and snapshot pruning happen; filled ahead or growing.
fn prepared(prepare_segments: bool) -> DurableOptions {
    DurableOptions {
        wal: WalOptions {
            segment_size_max_bytes: 4096,
            prepare_segments,
            ..WalOptions::default()
        },
        snapshot_every_records: 7,
        ..DurableOptions::default()
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("ledger_durable_crash.txt", 48))]

    #[test]
    fn recovery_gives_a_prefix_holding_every_acknowledged_batch(
        acknowledged in prop::collection::vec(step(), 0..25),
        in_flight in prop::collection::vec(step(), 0..6),
        seed in any::<u64>(),
        tear in prop_oneof![Just(Tear::Byte), Just(Tear::Sector), Just(Tear::Pages)],
        prepare in any::<bool>(),
    ) {
        let config = Config { shards: 4, ..Config::default() };
        let storage = SimStorage::new();
        let (durable, _) = DurableLedger::open(storage.clone(), config.clone(), prepared(prepare)).expect("opens");
        // The reference: the same commands on a plain ledger, with the digest after each.
        let reference = Ledger::new(config.clone()).expect("valid config");
        let mut digests = vec![reference.digest()];
        let mut now = Timestamp(1_000);
        let setup = setup();
        let got = durable.apply_blocking(&setup, now).expect("durable");
        prop_assert_eq!(got, reference.apply(&setup, now).expect("applies"));
        digests.push(reference.digest());
        let mut next_id = 1_000u128;

        for step in &acknowledged {
            now = Timestamp(now.0 + 3);
            match step {
                Step::Batch(batch) => {
                    let events = events(batch, &mut next_id, now);
                    let got = durable.apply_blocking(&events, now).expect("durable");
                    prop_assert_eq!(got, reference.apply(&events, now).expect("applies"));
                    // The configured cadence: a snapshot every 7 records.
                    durable.maybe_snapshot().expect("snapshot written when due");
                }
                Step::Expire => {
                    let got = durable.expire_blocking(now).expect("durable");
                    prop_assert_eq!(got, reference.expire(now));
                }
                Step::Snapshot => {
                    durable.snapshot().expect("snapshot written");
                    continue;
                }
            }
            digests.push(reference.digest());
        }
        let acknowledged_count = digests.len() - 1;

        // Not waited for: any of these may or may not reach the disk before the crash.
        storage.set_sync_latency(Duration::from_micros(200));
        for step in &in_flight {
            now = Timestamp(now.0 + 3);
            if let Step::Batch(batch) = step {
                let events = events(batch, &mut next_id, now);
                durable.apply(&events, now, Box::new(|_| {})).expect("queued");
                reference.apply(&events, now).expect("applies");
                digests.push(reference.digest());
            }
        }
        let crashed = storage.crash_torn(seed, tear);
        drop(durable);

        let (recovered, recovery) = DurableLedger::open(crashed.clone(), config.clone(), prepared(prepare)).expect("recovers");
        let digest = recovered.ledger().digest();
        prop_assert_eq!(digest, recovery.digest);
        let prefix = digests.iter().rposition(|d| *d == digest);
        prop_assert!(prefix.is_some(), "recovered state is no prefix of the batches: {:?}", recovery);
        prop_assert!(prefix.expect("checked") >= acknowledged_count, "acknowledged batches lost: {:?}", recovery);
        for (_, totals) in recovered.ledger().totals() {
            prop_assert!(totals.is_balanced());
        }
        // Recovery is stable: once more, same state; and the log goes on from there.
        recovered.close().expect("closes");
        let (again, _) = DurableLedger::open(crashed.crash(), config, prepared(prepare)).expect("recovers again");
        prop_assert_eq!(again.ledger().digest(), digest);
        let more = events(&[(1, 2, 7, 0, false)], &mut next_id, Timestamp(now.0 + 1));
        prop_assert_eq!(again.apply_blocking(&more, Timestamp(now.0 + 1)).expect("durable"), vec![ledger::Outcome::Ok]);
    }
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_older_one() {
    let config = Config {
        shards: 2,
        ..Config::default()
    };
    let storage = SimStorage::new();
    let (durable, _) =
        DurableLedger::open(storage.clone(), config.clone(), options()).expect("opens");
    let mut next_id = 1_000;
    durable
        .apply_blocking(&setup(), Timestamp(1))
        .expect("durable");
    durable.snapshot().expect("first snapshot");
    let batch = events(
        &[(1, 3, 10, 0, false), (1, 4, 20, 0, false)],
        &mut next_id,
        Timestamp(2),
    );
    durable
        .apply_blocking(&batch, Timestamp(2))
        .expect("durable");
    let newest = durable.snapshot().expect("second snapshot");
    let expected = durable.ledger().digest();
    durable.close().expect("closes");
    let name = ledger::snapshot_file::snapshot_file_name(newest);
    storage.flip_bit(&name, 40, 3).expect("flip");
    let (recovered, recovery) =
        DurableLedger::open(storage.crash(), config, options()).expect("recovers");
    assert_eq!(recovery.rejected_snapshots.len(), 1, "{recovery:?}");
    assert_ne!(
        recovery.snapshot.as_ref().map(|s| s.1),
        Some(newest),
        "{recovery:?}"
    );
    assert_eq!(recovered.ledger().digest(), expected);
}

#[test]
fn snapshots_follow_the_configured_cadence() {
    let config = Config {
        shards: 2,
        ..Config::default()
    };
    let storage = SimStorage::new();
    let (durable, _) =
        DurableLedger::open(storage.clone(), config.clone(), options()).expect("opens");
    durable
        .apply_blocking(&setup(), Timestamp(1))
        .expect("durable");
    let mut next_id = 1_000;
    let mut taken = Vec::new();
    for i in 0..20u64 {
        let batch = events(&[(1, 2, 5, 0, false)], &mut next_id, Timestamp(2 + i));
        durable
            .apply_blocking(&batch, Timestamp(2 + i))
            .expect("durable");
        if let Some(sequence) = durable.maybe_snapshot().expect("snapshot") {
            taken.push(sequence);
        }
    }
    // Records 1 (setup) and 2..=21: due at 7, 14, 21.
    assert_eq!(taken, [7, 14, 21]);
    let digest = durable.ledger().digest();
    durable.close().expect("closes");
    let (recovered, recovery) =
        DurableLedger::open(storage.crash(), config, options()).expect("recovers");
    assert_eq!(recovery.snapshot.map(|s| s.1), Some(21));
    assert_eq!(recovery.records_replayed, 0);
    assert_eq!(recovered.ledger().digest(), digest);
}
