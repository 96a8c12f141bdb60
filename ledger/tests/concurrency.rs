//! Several threads apply random cross-shard batches, with heavy traffic to one hot account,
//! holds posted and voided later, and balance-rule declines. The final state must equal what
//! the reported successes add up to, conserve money, and the run must finish in bounded time
//! (a deadlock fails the test instead of hanging it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ledger::{
    AccountFlags, AccountId, Amount, Config, Currency, Event, Ledger, NewAccount, Outcome,
    ParticipantId, Timestamp, Transfer, TransferId, TransferKind,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: u128 = 64;
const HOT: u128 = 1;
const THREADS: u64 = 4;
const BATCHES_PER_THREAD: u64 = 300;
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Effects {
    /// (debits_posted, credits_posted, debits_pending, credits_pending) per account.
    by_account: HashMap<u128, [u128; 4]>,
    ok: u64,
    declined: u64,
}

impl Effects {
    fn add(&mut self, account: u128, column: usize, amount: u64) {
        self.by_account.entry(account).or_default()[column] += u128::from(amount);
    }
    fn sub(&mut self, account: u128, column: usize, amount: u64) {
        self.by_account.entry(account).or_default()[column] -= u128::from(amount);
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u64, kind: TransferKind) -> Transfer {
    Transfer {
        id: TransferId(id),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(amount),
        currency: Currency::CNY,
        kind,
        code: 0,
    }
}

fn worker(ledger: &Ledger, thread: u64) -> Effects {
    let mut rng = StdRng::seed_from_u64(thread);
    let mut effects = Effects::default();
    let mut holds: Vec<(u128, u128, u128, u64)> = Vec::new();
    let mut next = u128::from(thread + 1) << 64;
    for _ in 0..BATCHES_PER_THREAD {
        let len = rng.gen_range(1..=48);
        let mut events = Vec::with_capacity(len);
        for _ in 0..len {
            next += 1;
            let debit = if rng.gen_bool(0.3) {
                HOT
            } else {
                rng.gen_range(2..=ACCOUNTS)
            };
            let mut credit = if rng.gen_bool(0.3) {
                HOT
            } else {
                rng.gen_range(2..=ACCOUNTS)
            };
            if credit == debit {
                credit = if debit == ACCOUNTS { 2 } else { debit + 1 };
            }
            let amount = rng.gen_range(1..=500);
            let t = match (rng.gen_range(0..10), holds.is_empty()) {
                (0..=5, _) | (_, true) if rng.gen_bool(0.7) => {
                    transfer(next, debit, credit, amount, TransferKind::Single)
                }
                (0..=5, _) | (_, true) => transfer(
                    next,
                    debit,
                    credit,
                    amount,
                    TransferKind::Pending {
                        expires_at: Timestamp::NEVER,
                    },
                ),
                (6..=8, false) => {
                    let (pending, d, c, held) = holds.swap_remove(rng.gen_range(0..holds.len()));
                    let post = rng.gen_range(1..=held);
                    let _ = (d, c);
                    transfer(
                        next,
                        0,
                        0,
                        post,
                        TransferKind::Post {
                            pending_id: TransferId(pending),
                        },
                    )
                }
                (_, false) => {
                    let (pending, _, _, _) = holds.swap_remove(rng.gen_range(0..holds.len()));
                    transfer(
                        next,
                        0,
                        0,
                        0,
                        TransferKind::Void {
                            pending_id: TransferId(pending),
                        },
                    )
                }
            };
            events.push(Event::from(t));
        }
        let outcomes = ledger
            .apply(&events, Timestamp(1))
            .expect("batch within limit");
        assert_eq!(outcomes.len(), events.len());
        for (event, outcome) in events.iter().zip(outcomes) {
            let ledger::Op::Transfer(t) = event.op else {
                unreachable!()
            };
            if outcome != Outcome::Ok {
                assert!(
                    matches!(
                        outcome,
                        Outcome::ExceedsCredits | Outcome::PendingTransferNotFound
                    ),
                    "unexpected {outcome:?} for {t:?}"
                );
                effects.declined += 1;
                continue;
            }
            effects.ok += 1;
            let (d, c, a) = (t.debit_account_id.0, t.credit_account_id.0, t.amount.0);
            match t.kind {
                TransferKind::Single => {
                    effects.add(d, 0, a);
                    effects.add(c, 1, a);
                }
                TransferKind::Pending { .. } => {
                    effects.add(d, 2, a);
                    effects.add(c, 3, a);
                    holds.push((t.id.0, d, c, a));
                }
                TransferKind::Post { pending_id } | TransferKind::Void { pending_id } => {
                    let record = ledger
                        .transfer(pending_id)
                        .expect("posted hold is remembered");
                    let (pd, pc, held) = (
                        record.debit_account_id.0,
                        record.credit_account_id.0,
                        record.event.amount.0,
                    );
                    effects.sub(pd, 2, held);
                    effects.sub(pc, 3, held);
                    if matches!(t.kind, TransferKind::Post { .. }) {
                        effects.add(pd, 0, a);
                        effects.add(pc, 1, a);
                    }
                }
            }
        }
    }
    effects
}

#[test]
fn concurrent_batches_conserve_money_and_match_reported_successes() {
    let ledger = Arc::new(
        Ledger::new(Config {
            shards: 8,
            ..Config::default()
        })
        .expect("valid config"),
    );
    // Account 1 is the hot merchant, free of rules; the rest may not be overdrawn, and are
    // funded from a treasury account so that some transfers are declined.
    let treasury = 1_000;
    let mut setup = vec![Event::from(NewAccount {
        id: AccountId(treasury),
        currency: Currency::CNY,
        owner: ParticipantId(1),
        flags: AccountFlags::empty(),
    })];
    for id in 1..=ACCOUNTS {
        setup.push(Event::from(NewAccount {
            id: AccountId(id),
            currency: Currency::CNY,
            owner: ParticipantId(1),
            flags: if id == HOT {
                AccountFlags::empty()
            } else {
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
            },
        }));
        setup.push(Event::from(transfer(
            id,
            treasury,
            id,
            5_000,
            TransferKind::Single,
        )));
    }
    let outcomes = ledger
        .apply(&setup, Timestamp(1))
        .expect("batch within limit");
    assert!(outcomes.iter().all(|o| *o == Outcome::Ok), "{outcomes:?}");
    let before: HashMap<u128, [u128; 4]> = (1..=ACCOUNTS)
        .chain([treasury])
        .map(|id| {
            let b = ledger.account(AccountId(id)).expect("created").balances;
            (
                id,
                [
                    b.debits_posted,
                    b.credits_posted,
                    b.debits_pending,
                    b.credits_pending,
                ],
            )
        })
        .collect();

    let started = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();
    for thread in 0..THREADS {
        let ledger = Arc::clone(&ledger);
        let done_tx = done_tx.clone();
        thread::spawn(move || {
            let effects = worker(&ledger, thread);
            let _ = done_tx.send(effects);
        });
    }
    drop(done_tx);
    let mut total = Effects::default();
    for _ in 0..THREADS {
        let remaining = DEADLINE.saturating_sub(started.elapsed());
        let effects = done_rx
            .recv_timeout(remaining)
            .expect("a worker did not finish in time: deadlock or panic");
        total.ok += effects.ok;
        total.declined += effects.declined;
        for (account, columns) in effects.by_account {
            let entry = total.by_account.entry(account).or_default();
            for (sum, x) in entry.iter_mut().zip(columns) {
                *sum = sum.wrapping_add(x);
            }
        }
    }
    assert!(
        total.ok > 1_000,
        "too little succeeded to mean anything: {}",
        total.ok
    );
    assert!(total.declined > 0, "the balance rule was never exercised");

    for (&id, start) in &before {
        let b = ledger.account(AccountId(id)).expect("exists").balances;
        let got = [
            b.debits_posted,
            b.credits_posted,
            b.debits_pending,
            b.credits_pending,
        ];
        let delta = total.by_account.get(&id).copied().unwrap_or_default();
        let want: Vec<u128> = start
            .iter()
            .zip(delta)
            .map(|(s, d)| s.wrapping_add(d))
            .collect();
        assert_eq!(got.to_vec(), want, "account {id}");
        if id != HOT && id != treasury {
            assert!(
                b.debits_posted + b.debits_pending <= b.credits_posted,
                "account {id} overdrawn"
            );
        }
    }
    let totals = ledger.totals();
    assert_eq!(totals.len(), 1);
    for (currency, t) in totals {
        assert!(t.is_balanced(), "{currency}: {t:?}");
    }
}
