//! Setup: the participants, the accounts and their funding, through the protocol, after a
//! check that the switch routes this run's cards to the issuer.

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use switch::wire::{
    AccountFlags, Amount, BalanceTarget, CardNumber, Operation, ParticipantId, ParticipantName,
    Request, RequestId, Response, ResponseBody, ResponseCode, Roles,
};

use super::Session;
use crate::verify::{self, Seen};

impl Session {
    /// Creates the participants, customer and merchant accounts, and funds the customers.
    pub async fn setup(&mut self) -> anyhow::Result<()> {
        let o = self.options.clone();
        let s = self.shared.clone();
        let (requests, funds_from) = self.setup_requests()?;
        let bar = progress_bar(o.progress, requests.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("setup {bar:40} {pos}/{len} requests {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        // Participants and accounts must exist before what refers to them: one batch at a
        // time, in order; the two participants go alone.
        let mut at = 0;
        while at < requests.len() {
            if at == funds_from {
                self.check_route_and_funding().await?;
            }
            let end = if at < 2 {
                2
            } else if at < funds_from {
                (at + o.setup_batch).min(funds_from)
            } else {
                (at + o.setup_batch).min(requests.len())
            };
            let chunk = &requests[at..end];
            let answers = self
                .call(chunk)
                .await
                .with_context(|| format!("setup: requests {at}..{end}"))?;
            if answers.len() != chunk.len() {
                bail!(
                    "setup: {} answers to {} requests",
                    answers.len(),
                    chunk.len()
                );
            }
            for (request, answer) in chunk.iter().zip(&answers) {
                if answer.code != ResponseCode::Approved {
                    return Err(refused(request, answer, o.currency));
                }
                if let Operation::Fund {
                    account, amount, ..
                } = &request.operation
                {
                    let i = (account.0 & 0xffff_ffff) as u32;
                    s.state.lock().model.funded(i, amount.0);
                }
            }
            bar.inc(chunk.len() as u64);
            at = end;
        }
        bar.finish_and_clear();
        self.setup_done = true;
        Ok(())
    }

    /// Setup's requests in the order they must run, and where the fundings begin.
    fn setup_requests(&self) -> anyhow::Result<(Vec<Request>, usize)> {
        let (o, s) = (&self.options, &self.shared);
        let wire_currency = s.wire_currency;
        let mut requests = Vec::new();
        for (participant, roles, name) in [
            (o.issuer, Roles::ISSUER, "loadgen issuer"),
            (o.acquirer, Roles::ACQUIRER, "loadgen acquirer"),
        ] {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::CreateParticipant {
                    participant: ParticipantId(participant),
                    roles,
                    name: ParticipantName::new(name).context("participant name")?,
                },
            });
        }
        for i in 0..o.customers as u32 {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::CreateAccount {
                    account: s.customer_account(i),
                    owner: ParticipantId(o.issuer),
                    currency: wire_currency,
                    flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    number: s.card(i),
                },
            });
        }
        for i in 0..o.merchants as u32 {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::CreateAccount {
                    account: s.merchant_account(i),
                    owner: ParticipantId(o.acquirer),
                    currency: wire_currency,
                    flags: AccountFlags(0),
                    number: CardNumber::EMPTY,
                },
            });
        }
        let funds_from = requests.len();
        for i in 0..o.customers as u32 {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::Fund {
                    account: s.customer_account(i),
                    amount: Amount(o.fund.0),
                    currency: wire_currency,
                },
            });
        }
        Ok((requests, funds_from))
    }

    /// Before any money moves: checks that the switch routes this run's cards to `--issuer`
    /// (one balance inquiry by card number), and reads the issuer's funding account, which
    /// other runs and clients share, so that the run verifies only its own change to it.
    async fn check_route_and_funding(&self) -> anyhow::Result<()> {
        let (o, s) = (&self.options, &self.shared);
        let funding = s.funding_account();
        let requests = [
            Request {
                id: RequestId(s.next_id()),
                operation: Operation::BalanceInquiry {
                    target: BalanceTarget::Number(s.card(0)),
                },
            },
            Request {
                id: RequestId(s.next_id()),
                operation: Operation::BalanceInquiry {
                    target: BalanceTarget::Account(funding),
                },
            },
        ];
        let answers = self
            .call(&requests)
            .await
            .context("setup: checking the route of this run's cards")?;
        let [route, before] = answers.as_slice() else {
            bail!("setup: {} answers to 2 requests", answers.len());
        };
        let seen = match (route.code, &route.body) {
            (ResponseCode::Approved, ResponseBody::BalanceInquiry(b))
                if b.account == s.customer_account(0) =>
            {
                None
            }
            (ResponseCode::Approved, ResponseBody::BalanceInquiry(b)) => Some(format!(
                "resolved to account {:#x}, a route's pooled account",
                b.account.0
            )),
            _ => Some(format!("declined {}", answered(route))),
        };
        if let Some(seen) = seen {
            bail!(
                "the switch does not route this run's cards (prefix {prefix}) to --issuer \
                 {issuer}: a balance inquiry of card {card} was {seen}. Add this route to the \
                 switch's configuration and reload it (SIGHUP) or restart it, or give \
                 --card-prefix and --issuer of a route it has:\n\n[[routes]]\nprefix = \
                 \"{prefix}\"\nissuer = {issuer}\n",
                prefix = o.card_prefix,
                issuer = o.issuer,
                card = s.card(0).as_str(),
            );
        }
        let before = match (before.code, &before.body) {
            (ResponseCode::Approved, ResponseBody::BalanceInquiry(b)) if b.account == funding => {
                Seen {
                    ledger: b.ledger,
                    available: b.available,
                }
            }
            // Not made yet: the switch makes it at the issuer's first Fund.
            (ResponseCode::InvalidCardOrAccount, _) => Seen::default(),
            _ => bail!(
                "setup: the balance of issuer {}'s funding account could not be read: declined {}",
                o.issuer,
                answered(before)
            ),
        };
        s.state.lock().funding_before = before;
        Ok(())
    }
}

fn progress_bar(enabled: bool, len: u64) -> ProgressBar {
    if enabled {
        ProgressBar::new(len)
    } else {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
    }
}

/// Why setup stops at a declined request, in words, with what to do about the usual causes.
fn refused(request: &Request, answer: &Response, currency: ledger::Currency) -> anyhow::Error {
    let hint = match (answer.code, &request.operation) {
        (ResponseCode::NotPermitted, _) => {
            "; loadgen must act as an admin identity (--client-cert of one)".to_string()
        }
        (
            ResponseCode::DuplicateWithOtherFields,
            Operation::CreateParticipant { participant, .. },
        ) => format!(
            "; participant {} exists with another name or roles: give --issuer or --acquirer \
             another participant id",
            participant.0
        ),
        _ => String::new(),
    };
    anyhow::anyhow!(
        "setup: {} was declined {}{hint}",
        describe(&request.operation, currency),
        answered(answer)
    )
}

/// An operation of setup, in words.
fn describe(operation: &Operation, currency: ledger::Currency) -> String {
    match operation {
        Operation::CreateParticipant {
            participant, name, ..
        } => format!(
            "creating participant {} (\"{}\")",
            participant.0,
            name.as_str()
        ),
        Operation::CreateAccount {
            account,
            owner,
            number,
            ..
        } if number.is_empty() => {
            format!(
                "creating account {:#x} of participant {}",
                account.0, owner.0
            )
        }
        Operation::CreateAccount {
            account,
            owner,
            number,
            ..
        } => format!(
            "creating account {:#x} of participant {} for card {}",
            account.0,
            owner.0,
            number.as_str()
        ),
        Operation::Fund {
            account, amount, ..
        } => format!(
            "funding account {:#x} with {}",
            account.0,
            verify::money(i128::from(amount.0), currency)
        ),
        other => format!("{:?}", other.op()),
    }
}

/// A declined answer's code and reason, in words.
fn answered(r: &Response) -> String {
    format!(
        "{:02} ({}), reason {} ({})",
        r.code.as_u8(),
        crate::report::code_name(r.code.as_u8()),
        r.reason.0,
        r.reason.name().unwrap_or("not listed")
    )
}
