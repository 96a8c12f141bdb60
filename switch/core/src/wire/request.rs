//! Operations a client sends, and their byte layouts.

use crate::wire::cursor::{Reader, Writer};
use crate::wire::error::{WireError, WireErrorKind};
use crate::wire::types::{
    AccountFlags, AccountId, Amount, BalanceTarget, CardNumber, Currency, EchoPayload, FieldError,
    ParticipantId, ParticipantName, RequestId, Roles, WindowId,
};

/// Operation codes. The numbering is part of protocol version 1 and never changes within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Op {
    CreateParticipant = 0x01,
    CreateAccount = 0x02,
    Fund = 0x03,
    SetLimits = 0x04,
    ReloadRoutes = 0x05,
    ChangeMembership = 0x06,
    Authorize = 0x10,
    Capture = 0x11,
    Reverse = 0x12,
    Sale = 0x13,
    Refund = 0x14,
    BalanceInquiry = 0x15,
    TransferStatus = 0x16,
    CloseWindow = 0x20,
    ListWindows = 0x21,
    WindowReport = 0x22,
    ReportFile = 0x23,
    Echo = 0x30,
}

impl Op {
    pub const ALL: [Op; 18] = [
        Op::CreateParticipant,
        Op::CreateAccount,
        Op::Fund,
        Op::SetLimits,
        Op::ReloadRoutes,
        Op::ChangeMembership,
        Op::Authorize,
        Op::Capture,
        Op::Reverse,
        Op::Sale,
        Op::Refund,
        Op::BalanceInquiry,
        Op::TransferStatus,
        Op::CloseWindow,
        Op::ListWindows,
        Op::WindowReport,
        Op::ReportFile,
        Op::Echo,
    ];

    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_u8() == value)
    }

    /// Operations only the admin identity may send (others get response code 57).
    pub const fn is_admin(self) -> bool {
        matches!(
            self,
            Op::CreateParticipant
                | Op::CreateAccount
                | Op::Fund
                | Op::SetLimits
                | Op::ReloadRoutes
                | Op::ChangeMembership
                | Op::CloseWindow
                | Op::ListWindows
                | Op::WindowReport
                | Op::ReportFile
        )
    }
}

/// One operation with the client-chosen id that makes it idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub id: RequestId,
    pub operation: Operation,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateParticipant {
        participant: ParticipantId,
        roles: Roles,
        name: ParticipantName,
    },
    CreateAccount {
        account: AccountId,
        owner: ParticipantId,
        currency: Currency,
        flags: AccountFlags,
        /// The card or wallet number that resolves to this account; may be empty.
        number: CardNumber,
    },
    /// Credits `account` from its owner's funding account.
    Fund {
        account: AccountId,
        amount: Amount,
        currency: Currency,
    },
    SetLimits {
        participant: ParticipantId,
        currency: Currency,
        /// 0 means no cap.
        net_debit_cap: Amount,
    },
    ReloadRoutes,
    /// Replaces a member of the cluster: removes `remove` and adds `add` in one change (joint
    /// consensus), either of them 0 for none. The added member must be in the leader's
    /// configuration already.
    ChangeMembership {
        remove: u64,
        add: u64,
    },
    /// Places a hold on the account `number` resolves to, in favour of `merchant`.
    Authorize {
        number: CardNumber,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
        /// Seconds until the hold expires; 0 means the server's default.
        expiry_secs: u32,
    },
    /// Captures an authorization, fully or partly (the rest of the hold is released).
    Capture {
        authorization: RequestId,
        amount: Amount,
    },
    /// Releases an authorization's whole hold.
    Reverse {
        authorization: RequestId,
    },
    /// A single-phase payment.
    Sale {
        number: CardNumber,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    },
    /// Pays back (part of) a sale or capture; never more than it moved.
    Refund {
        original: RequestId,
        amount: Amount,
        currency: Currency,
    },
    BalanceInquiry {
        target: BalanceTarget,
    },
    /// Looks up what became of an earlier request.
    TransferStatus {
        lookup: RequestId,
    },
    /// Closes `window` if it is the open one; 0 means whichever is open. Closing a window that
    /// is already closed changes nothing.
    CloseWindow {
        window: WindowId,
    },
    ListWindows,
    WindowReport {
        window: WindowId,
    },
    /// Up to `ReportChunk::LEN_MAX` bytes of a closed window's report file from `offset`.
    ReportFile {
        window: WindowId,
        /// 1 settlement CSV, 2 settlement JSON, 3 reconciliation CSV.
        file: u8,
        offset: u64,
    },
    Echo {
        payload: EchoPayload,
    },
}

/// op u8 + request_id u128.
pub(crate) const REQUEST_PREFIX_LEN: usize = 1 + 16;

impl Operation {
    pub fn op(&self) -> Op {
        match self {
            Operation::CreateParticipant { .. } => Op::CreateParticipant,
            Operation::CreateAccount { .. } => Op::CreateAccount,
            Operation::Fund { .. } => Op::Fund,
            Operation::SetLimits { .. } => Op::SetLimits,
            Operation::ReloadRoutes => Op::ReloadRoutes,
            Operation::ChangeMembership { .. } => Op::ChangeMembership,
            Operation::Authorize { .. } => Op::Authorize,
            Operation::Capture { .. } => Op::Capture,
            Operation::Reverse { .. } => Op::Reverse,
            Operation::Sale { .. } => Op::Sale,
            Operation::Refund { .. } => Op::Refund,
            Operation::BalanceInquiry { .. } => Op::BalanceInquiry,
            Operation::TransferStatus { .. } => Op::TransferStatus,
            Operation::CloseWindow { .. } => Op::CloseWindow,
            Operation::ListWindows => Op::ListWindows,
            Operation::WindowReport { .. } => Op::WindowReport,
            Operation::ReportFile { .. } => Op::ReportFile,
            Operation::Echo { .. } => Op::Echo,
        }
    }
}

impl Request {
    /// Bytes this request takes in a frame.
    pub fn encoded_len(&self) -> usize {
        REQUEST_PREFIX_LEN
            + match &self.operation {
                Operation::CreateParticipant { name, .. } => 8 + 1 + 1 + name.as_str().len(),
                Operation::CreateAccount { number, .. } => 16 + 8 + 2 + 2 + 1 + number.len(),
                Operation::Fund { .. } => 16 + 8 + 2,
                Operation::SetLimits { .. } => 8 + 2 + 8,
                Operation::ReloadRoutes | Operation::ListWindows => 0,
                Operation::CloseWindow { .. } => 8,
                Operation::ChangeMembership { .. } => 8 + 8,
                Operation::Authorize { number, .. } => 16 + 8 + 2 + 4 + 1 + number.len(),
                Operation::Capture { .. } => 16 + 8,
                Operation::Reverse { .. } | Operation::TransferStatus { .. } => 16,
                Operation::Sale { number, .. } => 16 + 8 + 2 + 1 + number.len(),
                Operation::Refund { .. } => 16 + 8 + 2,
                Operation::BalanceInquiry { target } => match target {
                    BalanceTarget::Account(_) => 1 + 16,
                    BalanceTarget::Number(number) => 1 + 1 + number.len(),
                },
                Operation::WindowReport { .. } => 8,
                Operation::ReportFile { .. } => 8 + 1 + 8,
                Operation::Echo { payload } => 2 + payload.as_bytes().len(),
            }
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        w.u8("op", self.operation.op().as_u8());
        w.u128("request_id", self.id.0);
        match &self.operation {
            Operation::CreateParticipant {
                participant,
                roles,
                name,
            } => {
                w.u64("participant_id", participant.0);
                w.u8("roles", roles.0);
                w.bytes_u8("name_len", "name", name.as_str().as_bytes());
            }
            Operation::CreateAccount {
                account,
                owner,
                currency,
                flags,
                number,
            } => {
                w.u128("account_id", account.0);
                w.u64("owner_id", owner.0);
                w.u16("currency", currency.0);
                w.u16("flags", flags.0);
                w.bytes_u8("number_len", "number", number.as_bytes());
            }
            Operation::Fund {
                account,
                amount,
                currency,
            } => {
                w.u128("account_id", account.0);
                w.u64("amount", amount.0);
                w.u16("currency", currency.0);
            }
            Operation::SetLimits {
                participant,
                currency,
                net_debit_cap,
            } => {
                w.u64("participant_id", participant.0);
                w.u16("currency", currency.0);
                w.u64("net_debit_cap", net_debit_cap.0);
            }
            Operation::ReloadRoutes | Operation::ListWindows => {}
            Operation::ChangeMembership { remove, add } => {
                w.u64("remove_id", *remove);
                w.u64("add_id", *add);
            }
            Operation::Authorize {
                number,
                merchant,
                amount,
                currency,
                expiry_secs,
            } => {
                w.u128("merchant_account_id", merchant.0);
                w.u64("amount", amount.0);
                w.u16("currency", currency.0);
                w.u32("expiry_secs", *expiry_secs);
                w.bytes_u8("number_len", "number", number.as_bytes());
            }
            Operation::Capture {
                authorization,
                amount,
            } => {
                w.u128("authorization_id", authorization.0);
                w.u64("amount", amount.0);
            }
            Operation::Reverse { authorization } => {
                w.u128("authorization_id", authorization.0);
            }
            Operation::Sale {
                number,
                merchant,
                amount,
                currency,
            } => {
                w.u128("merchant_account_id", merchant.0);
                w.u64("amount", amount.0);
                w.u16("currency", currency.0);
                w.bytes_u8("number_len", "number", number.as_bytes());
            }
            Operation::Refund {
                original,
                amount,
                currency,
            } => {
                w.u128("original_id", original.0);
                w.u64("amount", amount.0);
                w.u16("currency", currency.0);
            }
            Operation::BalanceInquiry { target } => match target {
                BalanceTarget::Account(account) => {
                    w.u8("target", BalanceTarget::ACCOUNT_TAG);
                    w.u128("account_id", account.0);
                }
                BalanceTarget::Number(number) => {
                    w.u8("target", BalanceTarget::NUMBER_TAG);
                    w.bytes_u8("number_len", "number", number.as_bytes());
                }
            },
            Operation::TransferStatus { lookup } => {
                w.u128("lookup_id", lookup.0);
            }
            Operation::WindowReport { window } | Operation::CloseWindow { window } => {
                w.u64("window_id", window.0);
            }
            Operation::ReportFile {
                window,
                file,
                offset,
            } => {
                w.u64("window_id", window.0);
                w.u8("file", *file);
                w.u64("offset", *offset);
            }
            Operation::Echo { payload } => {
                w.bytes_u16("payload_len", "payload", payload.as_bytes());
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let op_at = r.pos();
        let op = r.u8("op")?;
        let op = Op::from_u8(op)
            .ok_or_else(|| r.error_at(op_at, "op", WireErrorKind::UnknownOp { op }))?;
        let id = RequestId(r.u128("request_id")?);
        let operation = match op {
            Op::CreateParticipant => Operation::CreateParticipant {
                participant: ParticipantId(r.u64("participant_id")?),
                roles: Roles(r.u8("roles")?),
                name: r.bytes_u8("name_len", "name", ParticipantName::LEN_MAX, |bytes| {
                    let name = std::str::from_utf8(bytes).map_err(|_| FieldError::InvalidUtf8)?;
                    ParticipantName::new(name)
                })?,
            },
            Op::CreateAccount => Operation::CreateAccount {
                account: AccountId(r.u128("account_id")?),
                owner: ParticipantId(r.u64("owner_id")?),
                currency: Currency(r.u16("currency")?),
                flags: AccountFlags(r.u16("flags")?),
                number: read_number(r)?,
            },
            Op::Fund => Operation::Fund {
                account: AccountId(r.u128("account_id")?),
                amount: Amount(r.u64("amount")?),
                currency: Currency(r.u16("currency")?),
            },
            Op::SetLimits => Operation::SetLimits {
                participant: ParticipantId(r.u64("participant_id")?),
                currency: Currency(r.u16("currency")?),
                net_debit_cap: Amount(r.u64("net_debit_cap")?),
            },
            Op::ReloadRoutes => Operation::ReloadRoutes,
            Op::ChangeMembership => Operation::ChangeMembership {
                remove: r.u64("remove_id")?,
                add: r.u64("add_id")?,
            },
            Op::Authorize => Operation::Authorize {
                merchant: AccountId(r.u128("merchant_account_id")?),
                amount: Amount(r.u64("amount")?),
                currency: Currency(r.u16("currency")?),
                expiry_secs: r.u32("expiry_secs")?,
                number: read_number(r)?,
            },
            Op::Capture => Operation::Capture {
                authorization: RequestId(r.u128("authorization_id")?),
                amount: Amount(r.u64("amount")?),
            },
            Op::Reverse => Operation::Reverse {
                authorization: RequestId(r.u128("authorization_id")?),
            },
            Op::Sale => Operation::Sale {
                merchant: AccountId(r.u128("merchant_account_id")?),
                amount: Amount(r.u64("amount")?),
                currency: Currency(r.u16("currency")?),
                number: read_number(r)?,
            },
            Op::Refund => Operation::Refund {
                original: RequestId(r.u128("original_id")?),
                amount: Amount(r.u64("amount")?),
                currency: Currency(r.u16("currency")?),
            },
            Op::BalanceInquiry => {
                let target = r.enumerated("target", |tag| match tag {
                    BalanceTarget::ACCOUNT_TAG | BalanceTarget::NUMBER_TAG => Some(tag),
                    _ => None,
                })?;
                let target = if target == BalanceTarget::ACCOUNT_TAG {
                    BalanceTarget::Account(AccountId(r.u128("account_id")?))
                } else {
                    BalanceTarget::Number(read_number(r)?)
                };
                Operation::BalanceInquiry { target }
            }
            Op::TransferStatus => Operation::TransferStatus {
                lookup: RequestId(r.u128("lookup_id")?),
            },
            Op::CloseWindow => Operation::CloseWindow {
                window: WindowId(r.u64("window_id")?),
            },
            Op::ListWindows => Operation::ListWindows,
            Op::WindowReport => Operation::WindowReport {
                window: WindowId(r.u64("window_id")?),
            },
            Op::ReportFile => Operation::ReportFile {
                window: WindowId(r.u64("window_id")?),
                file: r.u8("file")?,
                offset: r.u64("offset")?,
            },
            Op::Echo => Operation::Echo {
                payload: r.bytes_u16("payload_len", "payload", EchoPayload::LEN_MAX, |bytes| {
                    EchoPayload::new(bytes)
                })?,
            },
        };
        Ok(Request { id, operation })
    }
}

fn read_number(r: &mut Reader<'_>) -> Result<CardNumber, WireError> {
    r.bytes_u8(
        "number_len",
        "number",
        CardNumber::LEN_MAX,
        CardNumber::from_bytes,
    )
}
