//! Memory per account and per remembered transfer: resident set growth over a million of
//! each, measured from /proc/self/status.

use benches::rss_bytes;
use ledger::{
    AccountFlags, AccountId, Amount, Config, Currency, Event, Ledger, NewAccount, ParticipantId,
    Timestamp, Transfer, TransferId, TransferKind,
};

const N: u64 = 1_000_000;

fn main() -> anyhow::Result<()> {
    let ledger = Ledger::new(Config {
        accounts_max: 2 * N,
        transfers_remembered_max: 2 * N,
        ..Config::default()
    })?;
    let before = rss_bytes().1;
    for chunk in (1..=u128::from(N)).collect::<Vec<_>>().chunks(8189) {
        let batch: Vec<Event> = chunk
            .iter()
            .map(|&id| {
                Event::from(NewAccount {
                    id: AccountId(id),
                    currency: Currency::USD,
                    owner: ParticipantId(1),
                    flags: AccountFlags::empty(),
                })
            })
            .collect();
        ledger.apply(&batch, Timestamp(1))?;
    }
    let accounts = rss_bytes().1;
    let per_account = (accounts - before) as f64 / N as f64;
    let mut next = 10_000_000u128;
    for _ in 0..N.div_ceil(8189) {
        let batch: Vec<Event> = (0..8189)
            .map(|i: u128| {
                next += 1;
                Event::from(Transfer {
                    id: TransferId(next),
                    debit_account_id: AccountId(1 + (next * 7919) % u128::from(N)),
                    credit_account_id: AccountId(1 + (next * 104_729 + 1) % u128::from(N)),
                    amount: Amount(1 + (i as u64 % 1000)),
                    currency: Currency::USD,
                    kind: TransferKind::Single,
                    code: 0,
                })
            })
            .collect();
        ledger.apply(&batch, Timestamp(2))?;
    }
    let remembered = ledger.stats().transfers_remembered;
    let transfers = rss_bytes().1;
    let per_transfer = (transfers - accounts) as f64 / remembered as f64;
    println!("accounts={N} bytes_per_account={per_account:.1}");
    println!("transfers_remembered={remembered} bytes_per_remembered_transfer={per_transfer:.1}");
    Ok(())
}
