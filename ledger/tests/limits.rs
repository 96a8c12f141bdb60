//! Every collection the ledger keeps is bounded by its configuration.

use ledger::{
    AccountFlags, AccountId, Amount, BatchError, Config, ConfigError, Currency, Event, Ledger,
    NewAccount, Outcome, ParticipantId, Timestamp, Transfer, TransferId, TransferKind,
    TransferState,
};

fn account(id: u128) -> Event {
    Event::from(NewAccount {
        id: AccountId(id),
        currency: Currency::USD,
        owner: ParticipantId(7),
        flags: AccountFlags::empty(),
    })
}

fn transfer(id: u128, kind: TransferKind) -> Event {
    Event::from(Transfer {
        id: TransferId(id),
        debit_account_id: AccountId(1),
        credit_account_id: AccountId(2),
        amount: Amount(10),
        currency: Currency::USD,
        kind,
        code: 0,
    })
}

const NOW: Timestamp = Timestamp(100);

#[test]
fn config_is_validated() {
    for shards in [0, 3, 2048] {
        let config = Config {
            shards,
            ..Config::default()
        };
        assert_eq!(Ledger::new(config).err(), Some(ConfigError::Shards(shards)));
    }
    let config = Config {
        pending_max: 0,
        ..Config::default()
    };
    assert_eq!(
        Ledger::new(config).err(),
        Some(ConfigError::Zero {
            name: "pending_max"
        })
    );
}

#[test]
fn oversized_batches_are_refused_whole() {
    let ledger = Ledger::new(Config {
        batch_len_max: 2,
        ..Config::default()
    })
    .expect("valid");
    let batch = [account(1), account(2), account(3)];
    assert_eq!(
        ledger.apply(&batch, NOW),
        Err(BatchError::TooLarge { len: 3, max: 2 })
    );
    assert_eq!(ledger.account(AccountId(1)), None);
}

#[test]
fn account_limit_is_transient_and_exact() {
    let ledger = Ledger::new(Config {
        shards: 1,
        accounts_max: 2,
        ..Config::default()
    })
    .expect("valid");
    let outcomes = ledger
        .apply(&[account(1), account(2), account(3)], NOW)
        .expect("ok");
    assert_eq!(
        outcomes,
        [Outcome::Ok, Outcome::Ok, Outcome::AccountLimitReached]
    );
    // Creating an existing account is still answered as such at the limit.
    assert_eq!(
        ledger.apply(&[account(2)], NOW).expect("ok"),
        [Outcome::Exists]
    );
    assert_eq!(ledger.stats().accounts, 2);
}

#[test]
fn pending_limit_refuses_new_holds_but_not_their_resolution() {
    let ledger = Ledger::new(Config {
        shards: 1,
        pending_max: 2,
        ..Config::default()
    })
    .expect("valid");
    ledger.apply(&[account(1), account(2)], NOW).expect("ok");
    let hold = TransferKind::Pending {
        expires_at: Timestamp(1_000),
    };
    let outcomes = ledger
        .apply(
            &[transfer(10, hold), transfer(11, hold), transfer(12, hold)],
            NOW,
        )
        .expect("ok");
    assert_eq!(
        outcomes,
        [Outcome::Ok, Outcome::Ok, Outcome::PendingLimitReached]
    );
    // Transient: not remembered, so the same id succeeds once there is room.
    assert_eq!(ledger.transfer(TransferId(12)), None);
    let void = transfer(
        13,
        TransferKind::Void {
            pending_id: TransferId(10),
        },
    );
    assert_eq!(
        ledger.apply(&[void, transfer(12, hold)], NOW).expect("ok"),
        [Outcome::Ok, Outcome::Ok]
    );
    assert_eq!(ledger.stats().pending_live, 2);
}

#[test]
fn remembered_transfers_are_bounded_and_the_oldest_resolved_go_first() {
    let ledger = Ledger::new(Config {
        shards: 1,
        transfers_remembered_max: 100,
        ..Config::default()
    })
    .expect("valid");
    ledger.apply(&[account(1), account(2)], NOW).expect("ok");
    // A live hold first: it must survive however many transfers follow.
    let hold = transfer(
        1,
        TransferKind::Pending {
            expires_at: Timestamp::NEVER,
        },
    );
    assert_eq!(ledger.apply(&[hold], NOW).expect("ok"), [Outcome::Ok]);
    for chunk in (2..1_000u128).collect::<Vec<_>>().chunks(64) {
        let batch: Vec<Event> = chunk
            .iter()
            .map(|&id| transfer(id, TransferKind::Single))
            .collect();
        let outcomes = ledger.apply(&batch, NOW).expect("ok");
        assert!(outcomes.iter().all(|o| *o == Outcome::Ok));
        let stats = ledger.stats();
        assert!(stats.transfers_remembered <= 100, "{stats:?}");
    }
    let stats = ledger.stats();
    assert_eq!(stats.transfers_remembered, 100);
    assert_eq!(stats.transfers_forgotten, 999 - 100);
    assert_eq!(
        ledger.transfer(TransferId(1)).map(|r| r.state),
        Some(TransferState::Pending)
    );
    assert_eq!(
        ledger.transfer(TransferId(2)),
        None,
        "oldest resolved forgotten"
    );
    assert!(
        ledger.transfer(TransferId(999)).is_some(),
        "newest remembered"
    );
    // Past the horizon a retry is indistinguishable from a new transfer: documented behaviour.
    assert_eq!(
        ledger
            .apply(&[transfer(2, TransferKind::Single)], NOW)
            .expect("ok"),
        [Outcome::Ok]
    );
    // The hold can still be posted.
    let post = transfer(
        5_000,
        TransferKind::Post {
            pending_id: TransferId(1),
        },
    );
    assert_eq!(ledger.apply(&[post], NOW).expect("ok"), [Outcome::Ok]);
}

#[test]
fn expire_voids_due_holds_in_expiry_order_and_only_those() {
    let ledger = Ledger::new(Config::default()).expect("valid");
    ledger.apply(&[account(1), account(2)], NOW).expect("ok");
    let holds = [(10, 300), (11, 200), (12, 0), (13, 250), (14, 400)];
    let batch: Vec<Event> = holds
        .iter()
        .map(|&(id, at)| {
            transfer(
                id,
                TransferKind::Pending {
                    expires_at: Timestamp(at),
                },
            )
        })
        .collect();
    assert!(
        ledger
            .apply(&batch, NOW)
            .expect("ok")
            .iter()
            .all(|o| *o == Outcome::Ok)
    );
    assert_eq!(ledger.next_expiry(), Some(Timestamp(200)));
    let expired: Vec<u128> = ledger
        .expire(Timestamp(300))
        .iter()
        .map(|e| e.id.0)
        .collect();
    assert_eq!(expired, [11, 13, 10]);
    assert!(
        ledger.expire(Timestamp(300)).is_empty(),
        "an expired hold never expires twice"
    );
    let b = ledger.account(AccountId(1)).expect("exists").balances;
    assert_eq!(b.debits_pending, 20, "holds 12 (no expiry) and 14 remain");
    let post = transfer(
        20,
        TransferKind::Post {
            pending_id: TransferId(10),
        },
    );
    assert_eq!(
        ledger.apply(&[post], Timestamp(301)).expect("ok"),
        [Outcome::PendingTransferExpired]
    );
    assert_eq!(ledger.next_expiry(), Some(Timestamp(400)));
}

proptest::proptest! {
    #![proptest_config(ledger::proptest_config!("ledger_expiry_passes.txt"))]

    /// An expiry pass is bounded work: passes of at most `limit` holds, run until one voids
    /// fewer, void exactly the holds one unbounded pass does, in the same (expiry, id) order,
    /// and leave the same state. Replicas replay bounded passes, so the order must not depend
    /// on how holds fall into shards.
    #[test]
    fn passes_of_at_most_a_limit_void_what_one_pass_does_in_the_same_order(
        expiries in proptest::collection::vec(0u64..6, 1..200),
        limit in 1usize..24,
        shards in proptest::sample::select(vec![1usize, 4, 64]),
    ) {
        let config = Config { shards, ..Config::default() };
        let (whole, passes) = (
            Ledger::new(config.clone()).expect("valid"),
            Ledger::new(config).expect("valid"),
        );
        // Expiry 0 is a hold without one; the others fall due at 250..=450, in steps of 50
        // (so several share an instant, and the id decides their order).
        let batch: Vec<Event> = expiries
            .iter()
            .enumerate()
            .map(|(i, &e)| {
                let expires_at = Timestamp(if e == 0 { 0 } else { 200 + 50 * e });
                transfer(1000 - i as u128, TransferKind::Pending { expires_at })
            })
            .collect();
        for ledger in [&whole, &passes] {
            ledger.apply(&[account(1), account(2)], NOW).expect("ok");
            let outcomes = ledger.apply(&batch, NOW).expect("ok");
            proptest::prop_assert!(outcomes.iter().all(|o| *o == Outcome::Ok));
        }
        let now = Timestamp(400);
        let all: Vec<(u64, u128)> =
            whole.expire(now).iter().map(|e| (e.expires_at.0, e.id.0)).collect();
        let mut due: Vec<(u64, u128)> = batch
            .iter()
            .filter_map(|event| match event.op {
                ledger::Op::Transfer(Transfer {
                    id,
                    kind: TransferKind::Pending { expires_at },
                    ..
                }) if expires_at.0 != 0 && expires_at <= now => Some((expires_at.0, id.0)),
                _ => None,
            })
            .collect();
        due.sort_unstable();
        proptest::prop_assert_eq!(&all, &due);
        let mut bounded = Vec::new();
        loop {
            let got = passes.expire_at_most(now, limit);
            proptest::prop_assert!(got.len() <= limit);
            bounded.extend(got.iter().map(|e| (e.expires_at.0, e.id.0)));
            if got.len() < limit {
                break;
            }
        }
        proptest::prop_assert_eq!(&bounded, &all);
        proptest::prop_assert_eq!(passes.digest(), whole.digest());
        proptest::prop_assert_eq!(passes.next_expiry(), whole.next_expiry());
    }
}
