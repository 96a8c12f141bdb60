//! The participants and accounts the load uses, and their setup.

use switch::client::Stream;
use switch::wire::{
    AccountFlags, AccountId, Amount, CardNumber, Currency, Operation, ParticipantId,
    ParticipantName, Request, ResponseCode as Code, Roles,
};

use crate::Run;
use crate::journal::send;
use crate::load::fresh_id;

pub const CNY: Currency = Currency(156);
pub const ISSUER: u64 = 2;
pub const ACQUIRER: u64 = 3;
pub const CARDS: u128 = 16;
/// The first cards are funded with little, so that authorizations and sales on them are often
/// declined (51): a declined authorization must leave no hold.
pub const POOR_CARDS: u128 = 3;
pub const MERCHANTS: u128 = 4;
pub const RICH_FUNDING: u64 = 1_000_000_000_000;
pub const POOR_FUNDING: u64 = 40_000;
pub const AMOUNT_MAX: u64 = 20_000;

pub fn card_account(i: u128) -> AccountId {
    AccountId(0x1000 + i)
}

pub fn card_number(i: u128) -> CardNumber {
    CardNumber::new(&format!("62{i:014}")).expect("16 digits")
}

pub fn merchant_account(i: u128) -> AccountId {
    AccountId(0x3000 + i)
}

pub fn funding(participant: u64) -> AccountId {
    AccountId(
        switch::core::funding_account(ledger::ParticipantId(participant), ledger::Currency::CNY).0,
    )
}

/// Every account the load touches, funding accounts included.
pub fn all_accounts() -> Vec<AccountId> {
    let mut accounts: Vec<AccountId> = (0..CARDS).map(card_account).collect();
    accounts.extend((0..MERCHANTS).map(merchant_account));
    accounts.push(funding(ISSUER));
    accounts
}

impl Run {
    /// The participants and the accounts, the cards funded (a few of them poorly), one
    /// request at a time, in order.
    pub async fn setup(&mut self, streams: &[Stream]) -> Result<(), String> {
        let mut requests = vec![
            Operation::CreateParticipant {
                participant: ParticipantId(ISSUER),
                roles: Roles::ISSUER,
                name: ParticipantName::new("issuer").expect("short"),
            },
            Operation::CreateParticipant {
                participant: ParticipantId(ACQUIRER),
                roles: Roles::ACQUIRER,
                name: ParticipantName::new("acquirer").expect("short"),
            },
        ];
        for i in 0..CARDS {
            requests.push(Operation::CreateAccount {
                account: card_account(i),
                owner: ParticipantId(ISSUER),
                currency: CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: card_number(i),
            });
        }
        for i in 0..MERCHANTS {
            requests.push(Operation::CreateAccount {
                account: merchant_account(i),
                owner: ParticipantId(ACQUIRER),
                currency: CNY,
                flags: AccountFlags(0),
                number: CardNumber::EMPTY,
            });
        }
        for i in 0..CARDS {
            requests.push(Operation::Fund {
                account: card_account(i),
                amount: Amount(if i < POOR_CARDS {
                    POOR_FUNDING
                } else {
                    RICH_FUNDING
                }),
                currency: CNY,
            });
        }
        let requests: Vec<Request> = requests
            .into_iter()
            .map(|operation| Request {
                id: fresh_id(&mut self.rng),
                operation,
            })
            .collect();
        // One at a time, in order: accounts before their funding.
        for request in requests {
            let answer = send(&self.shared, &streams[0], 0, vec![request.clone()]).await;
            match answer.as_deref() {
                Some([a]) if a.code == Code::Approved => {}
                other => return Err(format!("setup {request:?}: {other:?}")),
            }
        }
        Ok(())
    }
}
