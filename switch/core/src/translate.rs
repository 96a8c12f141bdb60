//! Between the wire and the core: the one place where protocol messages become requests the
//! switch understands, and responses become protocol messages.

use ledger::{AccountFlags, AccountId, Amount, Currency, ParticipantId, TransferId};

use crate::codes::{Code, Reason};
use crate::core::{
    self, Body, Capture, CreateAccount, CreateParticipant, Fund, PaymentState, Refund, Request,
    RequestId, Reverse, SetLimits, Target,
};
use crate::wire;

/// A wire request that needs no trip to the ledger stage is answered here.
pub enum Translated {
    Core(Request),
    ReloadRoutes,
    /// Made by the replica (the leader), not the core: `remove` and `add` are 0 for none.
    ChangeMembership {
        remove: u64,
        add: u64,
    },
    /// Served from the report files by the connection, not the core.
    ReportFile {
        window: u64,
        file: u8,
        offset: u64,
    },
    Answer(wire::Response),
}

fn currency(
    id: wire::RequestId,
    op: wire::Op,
    c: wire::Currency,
) -> Result<Currency, wire::Response> {
    Currency::from_numeric(c.0).ok_or_else(|| {
        wire::Response::declined(id, op, Code::InvalidTransaction, Reason::UNKNOWN_CURRENCY)
    })
}

/// A wire request as a core request (or an immediate answer).
pub fn request(r: &wire::Request) -> Translated {
    let id = r.id;
    let op = r.operation.op();
    let decline = |code, reason| Translated::Answer(wire::Response::declined(id, op, code, reason));
    macro_rules! currency {
        ($c:expr) => {
            match currency(id, op, $c) {
                Ok(c) => c,
                Err(answer) => return Translated::Answer(answer),
            }
        };
    }
    let number = |n: &wire::CardNumber| n.as_str().to_string();
    Translated::Core(match &r.operation {
        wire::Operation::CreateParticipant {
            participant,
            roles,
            name,
        } => Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(participant.0),
            name: name.as_str().to_string(),
            roles: roles.0,
        }),
        wire::Operation::CreateAccount {
            account,
            owner,
            currency,
            flags,
            number: n,
        } => {
            let Some(flags) = AccountFlags::from_bits(flags.0) else {
                return decline(Code::InvalidTransaction, Reason::RESERVED_BITS);
            };
            Request::CreateAccount(CreateAccount {
                account: AccountId(account.0),
                owner: ParticipantId(owner.0),
                currency: currency!(*currency),
                flags,
                number: (!n.is_empty()).then(|| number(n)),
            })
        }
        wire::Operation::Fund {
            account,
            amount,
            currency,
        } => Request::Fund(Fund {
            account: AccountId(account.0),
            amount: Amount(amount.0),
            currency: currency!(*currency),
        }),
        wire::Operation::SetLimits {
            participant,
            currency,
            net_debit_cap,
        } => Request::SetLimits(SetLimits {
            participant: ParticipantId(participant.0),
            currency: currency!(*currency),
            net_debit_cap: Amount(net_debit_cap.0),
        }),
        wire::Operation::ReloadRoutes => return Translated::ReloadRoutes,
        wire::Operation::ChangeMembership { remove, add } => {
            return Translated::ChangeMembership {
                remove: *remove,
                add: *add,
            };
        }
        wire::Operation::Authorize {
            number: n,
            merchant,
            amount,
            currency,
            expiry_secs,
        } => Request::Authorize {
            number: number(n),
            merchant: AccountId(merchant.0),
            amount: Amount(amount.0),
            currency: currency!(*currency),
            expiry_seconds: *expiry_secs,
        },
        wire::Operation::Capture {
            authorization,
            amount,
        } => Request::Capture(Capture {
            authorization: RequestId(authorization.0),
            amount: Amount(amount.0),
        }),
        wire::Operation::Reverse { authorization } => Request::Reverse(Reverse {
            authorization: RequestId(authorization.0),
        }),
        wire::Operation::Sale {
            number: n,
            merchant,
            amount,
            currency,
        } => Request::Sale {
            number: number(n),
            merchant: AccountId(merchant.0),
            amount: Amount(amount.0),
            currency: currency!(*currency),
        },
        wire::Operation::Refund {
            original,
            amount,
            currency,
        } => Request::Refund(Refund {
            original: RequestId(original.0),
            amount: Amount(amount.0),
            currency: currency!(*currency),
        }),
        wire::Operation::BalanceInquiry { target } => Request::BalanceInquiry {
            target: match target {
                wire::BalanceTarget::Account(a) => Target::Account(AccountId(a.0)),
                wire::BalanceTarget::Number(n) => Target::Number(number(n)),
            },
        },
        wire::Operation::TransferStatus { lookup } => Request::TransferStatus {
            of: RequestId(lookup.0),
        },
        wire::Operation::Echo { payload } => Request::Echo {
            payload: payload.as_bytes().to_vec(),
        },
        wire::Operation::CloseWindow { window } => Request::CloseWindow { window: window.0 },
        wire::Operation::ListWindows => Request::ListWindows,
        wire::Operation::WindowReport { window } => Request::WindowReport { window: window.0 },
        wire::Operation::ReportFile {
            window,
            file,
            offset,
        } => {
            return Translated::ReportFile {
                window: window.0,
                file: *file,
                offset: *offset,
            };
        }
    })
}

fn movement(transfer: TransferId, amount: Amount, currency: Currency) -> wire::Movement {
    wire::Movement {
        transfer: wire::TransferId(transfer.0),
        amount: wire::Amount(amount.0),
        currency: wire::Currency(currency.numeric()),
    }
}

fn window_record(w: &crate::clearing::Window) -> wire::WindowRecord {
    wire::WindowRecord {
        window: wire::WindowId(w.id),
        state: if w.open {
            wire::WindowState::Open
        } else {
            wire::WindowState::Closed
        },
        opened_at: wire::Timestamp(w.opened_at.0),
        closed_at: wire::Timestamp(w.closed_at.0),
        transfer_count: w.transfer_count,
    }
}

/// A core response as a wire response to operation `op`.
pub fn response(op: wire::Op, r: &core::Response) -> wire::Response {
    let id = wire::RequestId(r.id.0);
    if r.code != Code::Approved {
        return wire::Response::declined(id, op, r.code, r.reason);
    }
    let mut out = wire::Response {
        request_id: id,
        code: r.code,
        reason: r.reason,
        body: wire::ResponseBody::empty(op),
    };
    match (&r.body, &mut out.body) {
        (
            Body::Transfer {
                transfer,
                amount,
                currency,
            },
            wire::ResponseBody::Fund(m)
            | wire::ResponseBody::Authorize(m)
            | wire::ResponseBody::Capture(m)
            | wire::ResponseBody::Reverse(m)
            | wire::ResponseBody::Sale(m)
            | wire::ResponseBody::Refund(m),
        ) => *m = movement(*transfer, *amount, *currency),
        (
            Body::Balance {
                account,
                currency,
                balances,
            },
            wire::ResponseBody::BalanceInquiry(b),
        ) => {
            let signed = |v: u128| i128::try_from(v).unwrap_or(i128::MAX);
            let ledger =
                signed(balances.credits_posted).saturating_sub(signed(balances.debits_posted));
            *b = wire::Balance {
                account: wire::AccountId(account.0),
                currency: wire::Currency(currency.numeric()),
                available: ledger.saturating_sub(signed(balances.debits_pending)),
                ledger,
            };
        }
        (Body::Status(s), wire::ResponseBody::TransferStatus(w)) => {
            *w = wire::Status {
                state: match s.state {
                    PaymentState::Held => wire::TransferState::Pending,
                    PaymentState::Captured => wire::TransferState::Captured,
                    PaymentState::Reversed => wire::TransferState::Reversed,
                    PaymentState::Expired => wire::TransferState::Expired,
                    PaymentState::Sold => wire::TransferState::Posted,
                },
                currency: wire::Currency(s.currency.numeric()),
                transfer: wire::TransferId(s.transfer.0),
                amount: wire::Amount(s.amount.0),
                captured: wire::Amount(s.captured.0),
                refunded: wire::Amount(s.refunded.0),
            };
        }
        (Body::WindowClosed(window), wire::ResponseBody::CloseWindow { window: w }) => {
            *w = wire::WindowId(*window);
        }
        (Body::Windows(windows), wire::ResponseBody::ListWindows(list)) => {
            *list = windows.iter().map(window_record).collect();
        }
        (Body::WindowReport(window), wire::ResponseBody::WindowReport(report)) => {
            *report = wire::WindowReport {
                window: window_record(window),
                positions: window
                    .positions
                    .iter()
                    .map(|&(participant, currency, net)| wire::NetPosition {
                        participant: wire::ParticipantId(participant.0),
                        currency: wire::Currency(currency.numeric()),
                        net,
                    })
                    .collect(),
            };
        }
        (Body::Echo(payload), wire::ResponseBody::Echo(p)) => {
            if let Ok(e) = wire::EchoPayload::new(payload.clone()) {
                *p = e;
            }
        }
        _ => {}
    }
    out
}
