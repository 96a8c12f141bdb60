//! The durable ledger in a real process on a real directory, killed with SIGKILL at random
//! moments, several cycles. The test re-runs its own binary as the child: it recovers, applies
//! batches of transfers from two threads, takes a snapshot now and then, and prints the ids of
//! each batch once it is durable. After every kill the parent recovers and checks that every
//! announced transfer is there with the right accounts and amount, that money is conserved,
//! and that recovering the same directory twice gives the same digest.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger::storage::FileStorage;
use ledger::{
    AccountFlags, AccountId, Amount, Config, Currency, DurableLedger, DurableOptions, Event,
    NewAccount, ParticipantId, Timestamp, Transfer, TransferId, TransferKind,
};
use rand::Rng;

const CHILD_DIR: &str = "LEDGER_DURABLE_KILL_CHILD_DIR";
const CHILD_CYCLE: &str = "LEDGER_DURABLE_KILL_CHILD_CYCLE";
const TEST_NAME: &str = "acknowledged_transfers_survive_sigkill";
const CYCLES: u64 = 4;
const ACCOUNTS: u128 = 16;
/// The child stops by itself after this long, should nobody kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(5);

fn config() -> Config {
    Config {
        shards: 8,
        ..Config::default()
    }
}

/// The transfer a given id always describes, so the parent can check what it finds.
fn transfer(id: u128) -> Transfer {
    let debit = 1 + id % ACCOUNTS;
    let credit = 1 + (id / ACCOUNTS + debit) % ACCOUNTS;
    let credit = if credit == debit {
        debit % ACCOUNTS + 1
    } else {
        credit
    };
    Transfer {
        id: TransferId(id),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(1 + (id * 7919 % 1000) as u64),
        currency: Currency::CNY,
        kind: TransferKind::Single,
        code: 0,
    }
}

fn child(dir: &str, cycle: u64) {
    let storage = FileStorage::open(dir).expect("data dir");
    let (durable, _) =
        DurableLedger::open(storage, config(), DurableOptions::default()).expect("recovers");
    let accounts: Vec<Event> = (1..=ACCOUNTS)
        .map(|id| {
            Event::from(NewAccount {
                id: AccountId(id),
                currency: Currency::CNY,
                owner: ParticipantId(1),
                flags: AccountFlags::empty(),
            })
        })
        .collect();
    durable
        .apply_blocking(&accounts, Timestamp(1))
        .expect("accounts");
    let durable = std::sync::Arc::new(durable);
    let started = Instant::now();
    let threads: Vec<_> = (0..2u128)
        .map(|thread| {
            let durable = durable.clone();
            std::thread::spawn(move || {
                let mut next = (u128::from(cycle) << 40) | (thread << 32) | 1;
                let mut batch_no = 0u64;
                while started.elapsed() < CHILD_LIFETIME {
                    let ids: Vec<u128> = (0..50).map(|i| next + i).collect();
                    next += 50;
                    let events: Vec<Event> =
                        ids.iter().map(|&id| Event::from(transfer(id))).collect();
                    let (first, last) = (ids[0], ids[ids.len() - 1]);
                    durable
                        .apply(
                            &events,
                            Timestamp(2),
                            Box::new(move |result| {
                                if result.is_ok() {
                                    println!("ACK {first} {last}");
                                }
                            }),
                        )
                        .ok();
                    batch_no += 1;
                    if thread == 0 && batch_no.is_multiple_of(200) {
                        durable.snapshot().expect("snapshot");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("child thread");
    }
}

#[test]
fn acknowledged_transfers_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let cycle = std::env::var(CHILD_CYCLE)
            .ok()
            .and_then(|c| c.parse().ok())
            .expect("the parent sets the cycle");
        child(&dir, cycle);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::thread_rng();
    let mut acknowledged: Vec<(u128, u128)> = Vec::new();
    for cycle in 0..CYCLES {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_CYCLE, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    let mut words = line.strip_prefix("ACK ")?.split(' ');
                    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
                })
                .collect::<Vec<(u128, u128)>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..900)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let acked = reader.join().expect("reader");
        assert!(
            !acked.is_empty() || cycle > 0,
            "the child acknowledged nothing in cycle {cycle}"
        );
        acknowledged.extend(acked);

        let open = || {
            DurableLedger::open(
                FileStorage::open(dir.path()).expect("dir"),
                config(),
                DurableOptions::default(),
            )
            .expect("recovers after SIGKILL")
        };
        let (recovered, recovery) = open();
        for &(first, last) in &acknowledged {
            for id in first..=last {
                let record = recovered
                    .ledger()
                    .transfer(TransferId(id))
                    .unwrap_or_else(|| panic!("acknowledged transfer {id} lost ({recovery:?})"));
                assert_eq!(record.event, transfer(id), "transfer {id} changed");
            }
        }
        for (_, totals) in recovered.ledger().totals() {
            assert!(totals.is_balanced(), "{totals:?}");
        }
        let digest = recovered.ledger().digest();
        assert_eq!(digest, recovery.digest);
        recovered.close().expect("closes");
        let (again, _) = open();
        assert_eq!(again.ledger().digest(), digest, "recovery is deterministic");
        again.close().expect("closes");
    }
}
