//! The core's vocabulary: requests as sent, commands as logged, responses and their bodies,
//! the items a batch holds, the configuration, and what the core remembers of a participant
//! and of a payment.

use std::sync::Arc;

use ledger::clearing::FeeSchedule;
use ledger::{
    AccountFlags, AccountId, Amount, Balances, Currency, Outcome, ParticipantId, Timestamp,
    TransferId,
};

use crate::clearing::Window;
use crate::codes::{Code, Reason, code_for};
use crate::identity::Identity;
use crate::journal::fingerprint;

/// A client-chosen request id; also the ledger id of the transfer the request makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u128);

/// Accounts the switch makes for itself have ids with these top 32 bits; clients may not.
pub const SYSTEM_ACCOUNT_PREFIX: u32 = crate::clearing::SYSTEM_PREFIX;

/// Windows a ListWindows result holds at most (the protocol's limit).
pub const WINDOWS_LISTED_MAX: usize = 1024;
/// The participant roles version 1 knows: issuer (bit 0) and acquirer (bit 1).
pub(super) const ROLES_KNOWN: u8 = ROLE_ISSUER | ROLE_ACQUIRER;
/// A participant whose cards a route may name.
pub(super) const ROLE_ISSUER: u8 = 0b01;
/// A participant that may own the merchant side of an authorization or sale.
pub(super) const ROLE_ACQUIRER: u8 = 0b10;

/// Who the switch itself acts as (scheduled closes); no client can be participant 0.
pub const SYSTEM: Identity = Identity {
    participant: ParticipantId(0),
    admin: true,
};

/// The account a participant's deposits in `currency` are drawn from.
pub fn funding_account(participant: ParticipantId, currency: Currency) -> AccountId {
    AccountId(
        (u128::from(SYSTEM_ACCOUNT_PREFIX) << 96)
            | (u128::from(participant.0) << 16)
            | u128::from(currency.numeric()),
    )
}

pub(super) fn is_system_account(id: AccountId) -> bool {
    (id.0 >> 96) as u32 == SYSTEM_ACCOUNT_PREFIX
}

/// What a balance inquiry is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Number(String),
    Account(AccountId),
}

/// Creates a participant; repeating it with the same name and roles changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreateParticipant {
    pub participant: ParticipantId,
    pub name: String,
    pub roles: u8,
}

/// Creates an account; its card or wallet number, if any, goes into the number directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreateAccount {
    pub account: AccountId,
    pub owner: ParticipantId,
    pub currency: Currency,
    pub flags: AccountFlags,
    pub number: Option<String>,
}

/// Moves money into an account from its owner's funding account in `currency`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fund {
    pub account: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

/// Sets a participant's net debit cap in a currency (0: none).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetLimits {
    pub participant: ParticipantId,
    pub currency: Currency,
    pub net_debit_cap: Amount,
}

/// Captures an authorization's hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Capture {
    pub authorization: RequestId,
    /// 1 up to the held amount; the rest of the hold is released.
    pub amount: Amount,
}

/// Reverses an authorization, releasing its hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reverse {
    pub authorization: RequestId,
}

/// Gives back part or all of what a capture or sale moved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refund {
    pub original: RequestId,
    pub amount: Amount,
    pub currency: Currency,
}

/// A request as the switch understands it, before routing. The payloads routing leaves as they
/// are (`CreateParticipant`, `Fund` and the others) are `Command`'s too: a field added to one is
/// in both.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    CreateParticipant(CreateParticipant),
    CreateAccount(CreateAccount),
    Fund(Fund),
    SetLimits(SetLimits),
    Authorize {
        number: String,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
        expiry_seconds: u32,
    },
    Capture(Capture),
    Reverse(Reverse),
    Sale {
        number: String,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    },
    Refund(Refund),
    BalanceInquiry {
        target: Target,
    },
    TransferStatus {
        of: RequestId,
    },
    /// 0 closes whichever window is open.
    CloseWindow {
        window: u64,
    },
    ListWindows,
    WindowReport {
        window: u64,
    },
    Echo {
        payload: Vec<u8>,
    },
}

/// A state-changing request after routing: what the core executes and what the log holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    CreateParticipant(CreateParticipant),
    CreateAccount(CreateAccount),
    Fund(Fund),
    SetLimits(SetLimits),
    Authorize {
        card: AccountId,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
        expires_at: Timestamp,
    },
    Capture(Capture),
    Reverse(Reverse),
    Sale {
        card: AccountId,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    },
    Refund(Refund),
    /// Closes `window` (resolved: never 0) with the fee schedule in force when it was asked.
    CloseWindow {
        window: u64,
        fees: Arc<FeeSchedule>,
    },
}

impl Command {
    pub(super) fn is_admin(&self) -> bool {
        matches!(
            self,
            Command::CreateParticipant(_)
                | Command::CreateAccount(_)
                | Command::Fund(_)
                | Command::SetLimits(_)
                | Command::CloseWindow { .. }
        )
    }

    /// The earlier request this one acts on, if any.
    pub(super) fn original(&self) -> Option<RequestId> {
        match self {
            Command::Capture(Capture { authorization, .. })
            | Command::Reverse(Reverse { authorization }) => Some(*authorization),
            Command::Refund(Refund { original, .. }) => Some(*original),
            _ => None,
        }
    }
}

/// Where an authorization or sale stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentState {
    Held,
    Captured,
    Reversed,
    Expired,
    Sold,
}

/// What a transfer-status response says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    /// The ledger transfer of the authorization or sale (its request id).
    pub transfer: TransferId,
    pub state: PaymentState,
    pub currency: Currency,
    pub amount: Amount,
    pub captured: Amount,
    pub refunded: Amount,
}

/// The part of a response that depends on the request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    None,
    /// The ledger transfer made (its id is the request id) and the amount held or moved.
    Transfer {
        transfer: TransferId,
        amount: Amount,
        currency: Currency,
    },
    Balance {
        account: AccountId,
        currency: Currency,
        balances: Balances,
    },
    Status(Status),
    Echo(Vec<u8>),
    /// The window a CloseWindow closed.
    WindowClosed(u64),
    /// Newest first, the open window included.
    Windows(Vec<Window>),
    WindowReport(Window),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    pub id: RequestId,
    pub code: Code,
    pub reason: Reason,
    pub body: Body,
}

impl Response {
    pub fn new(id: RequestId, code: Code, reason: Reason) -> Self {
        Response {
            id,
            code,
            reason,
            body: Body::None,
        }
    }

    pub(super) fn approved(id: RequestId, body: Body) -> Self {
        Response {
            id,
            code: Code::Approved,
            reason: Reason::NONE,
            body,
        }
    }

    /// Approved, with a transfer of the request's own id that held or moved `amount`.
    pub(super) fn moved(id: RequestId, amount: Amount, currency: Currency) -> Self {
        let transfer = TransferId(id.0);
        Response::approved(
            id,
            Body::Transfer {
                transfer,
                amount,
                currency,
            },
        )
    }

    pub(super) fn from_outcome(id: RequestId, outcome: Outcome) -> Self {
        let (code, reason) = code_for(outcome);
        Response::new(id, code, reason)
    }
}

/// One request in a batch, with who sent it.
#[derive(Clone, Debug)]
pub struct Item {
    pub id: RequestId,
    pub who: Identity,
    pub request: Request,
}

/// An item with the fingerprint of its request (see `journal::fingerprint`) computed, which a
/// server does where the request is decoded rather than on the ledger stage.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub item: Item,
    pub fingerprint: u64,
}

impl Prepared {
    pub fn new(item: Item) -> Self {
        let fingerprint = fingerprint(item.who, &item.request);
        Prepared { item, fingerprint }
    }
}

/// One logged command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub id: RequestId,
    pub who: Identity,
    /// Of the request as sent (see `journal::fingerprint`): a repeat must match it.
    pub fingerprint: u64,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    pub default_expiry_seconds: u32,
    pub expiry_seconds_max: u32,
    /// Requests whose responses (and authorizations and sales) are remembered; past this,
    /// the oldest resolved ones are forgotten.
    pub requests_remembered_max: usize,
    /// The fee schedule closes use (logged with each close).
    pub fees: Arc<FeeSchedule>,
    /// Closed windows kept for ListWindows and WindowReport.
    pub windows_kept: usize,
    /// Bytes the closes of one batch may add to its log record (each carries the fee
    /// schedule): the record limit less what the batch's other commands can take
    /// (`closes_logged_bytes_max`). A close past it is answered 91 and not executed.
    pub closes_logged_bytes_max: usize,
    /// Participants the switch holds; a CreateParticipant past it is answered 91 and not
    /// executed. Bounds what participants take with them: their limits (one per currency)
    /// and their clearing positions.
    pub participants_max: usize,
}

/// What the closes of a batch may log, for frames of at most `bound` requests that the ledger
/// stage takes until it holds at least `bound` (it never splits a frame): a batch holds fewer
/// than twice `bound` requests, each taking at most `journal::logged_len_max` bytes besides.
pub fn closes_logged_bytes_max(bound: u16) -> usize {
    (ledger::wal::RECORD_SIZE_MAX_DEFAULT as usize)
        .saturating_sub(crate::journal::BATCH_HEADER_LEN)
        .saturating_sub(2 * usize::from(bound) * crate::journal::logged_len_max())
}

/// `participants_max` unless configured.
pub const PARTICIPANTS_MAX_DEFAULT: usize = 65_536;

/// `default_expiry_seconds` unless configured: an authorization's hold lasts a week.
pub const DEFAULT_EXPIRY_SECONDS: u32 = 7 * 24 * 3600;

/// `expiry_seconds_max` unless configured: thirty days.
pub const EXPIRY_SECONDS_MAX_DEFAULT: u32 = 30 * 24 * 3600;

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            default_expiry_seconds: DEFAULT_EXPIRY_SECONDS,
            expiry_seconds_max: EXPIRY_SECONDS_MAX_DEFAULT,
            requests_remembered_max: 10_000_000,
            fees: Arc::default(),
            windows_kept: 1024,
            closes_logged_bytes_max: closes_logged_bytes_max(crate::wire::BATCH_LEN_MAX_DEFAULT),
            participants_max: PARTICIPANTS_MAX_DEFAULT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Participant {
    pub(super) name: String,
    pub(super) roles: u8,
}

/// An authorization or sale, remembered for capture, reversal, refund and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Original {
    /// Of the request as sent (see `journal::fingerprint`). The original is also the request's
    /// remembered answer (approved, a transfer of its own id, `amount` in `currency`): a repeat
    /// is answered from here, with no entry in the remembered responses, which saves the stage
    /// one map of millions per payment. 0: the answer is in the remembered responses instead
    /// (originals restored from a version 1 snapshot, or a fingerprint that happens to be 0).
    pub(super) fingerprint: u64,
    pub(super) acquirer: ParticipantId,
    pub(super) issuer: ParticipantId,
    pub(super) card: AccountId,
    pub(super) merchant: AccountId,
    pub(super) currency: Currency,
    pub(super) amount: Amount,
    pub(super) captured: Amount,
    pub(super) refunded: Amount,
    pub(super) state: PaymentState,
}
