//! Results the server sends back, one per operation, and their byte layouts.

use crate::wire::cursor::{Reader, Writer};
use crate::wire::error::{EncodeError, WireError, WireErrorKind};
use crate::wire::request::Op;
use crate::wire::types::{
    AccountId, Amount, Currency, EchoPayload, FieldError, ParticipantId, Reason, ReportChunk,
    RequestId, ResponseCode, Timestamp, TransferId, TransferState, WindowId, WindowState,
};

/// The result of one operation.
///
/// Every result has the same fields whatever its code; the op-specific ones are meaningful
/// only when `code` is `Approved` and are zero otherwise (a window's state included:
/// `WindowState::None`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    pub request_id: RequestId,
    pub code: ResponseCode,
    pub reason: Reason,
    pub body: ResponseBody,
}

/// The op-specific part of a result; its variant names the operation it answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ResponseBody {
    CreateParticipant,
    CreateAccount,
    Fund(Movement),
    SetLimits,
    ReloadRoutes {
        route_count: u32,
    },
    ChangeMembership {
        /// The log index of the change, committed.
        index: u64,
    },
    Authorize(Movement),
    Capture(Movement),
    Reverse(Movement),
    Sale(Movement),
    Refund(Movement),
    BalanceInquiry(Balance),
    TransferStatus(Status),
    CloseWindow {
        window: WindowId,
    },
    ListWindows(Vec<WindowRecord>),
    WindowReport(WindowReport),
    ReportFile {
        /// The whole file's length in bytes.
        total_len: u64,
        chunk: ReportChunk,
    },
    Echo(EchoPayload),
}

/// The ledger transfer an operation made, and how much it held, moved or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Movement {
    pub transfer: TransferId,
    /// Held (authorize), moved (fund, sale, capture, refund) or released (reverse).
    pub amount: Amount,
    pub currency: Currency,
}

/// An account's balances in minor units, seen from its owner: positive means the account
/// holds money for its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Balance {
    pub account: AccountId,
    pub currency: Currency,
    /// `ledger` less the holds on the account (pending debits).
    pub available: i128,
    /// Posted credits less posted debits.
    pub ledger: i128,
}

/// What became of an earlier request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub state: TransferState,
    pub currency: Currency,
    pub transfer: TransferId,
    /// Authorized (for an authorization) or moved (for a single-phase transfer).
    pub amount: Amount,
    /// Captured so far (authorizations only).
    pub captured: Amount,
    /// Refunded so far (sales and captured authorizations).
    pub refunded: Amount,
}

/// One clearing window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowRecord {
    pub window: WindowId,
    pub state: WindowState,
    pub opened_at: Timestamp,
    /// 0 while the window is open.
    pub closed_at: Timestamp,
    /// Captures and refunds cleared in the window.
    pub transfer_count: u64,
}

/// A closed window's multilateral net positions; they sum to zero per currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowReport {
    pub window: WindowRecord,
    pub positions: Vec<NetPosition>,
}

/// What a participant receives (positive) or pays (negative) in one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetPosition {
    pub participant: ParticipantId,
    pub currency: Currency,
    pub net: i128,
}

/// op u8 + request_id u128 + code u8 + reason u8.
pub(crate) const RESPONSE_PREFIX_LEN: usize = 1 + 16 + 1 + 1;
const MOVEMENT_LEN: usize = 16 + 8 + 2;
const WINDOW_RECORD_LEN: usize = 8 + 1 + 8 + 8 + 8;
const NET_POSITION_LEN: usize = 8 + 2 + 16;

impl WindowRecord {
    /// Bytes a window record takes in a result.
    pub const LEN: usize = WINDOW_RECORD_LEN;
}

impl ResponseBody {
    pub fn op(&self) -> Op {
        match self {
            ResponseBody::CreateParticipant => Op::CreateParticipant,
            ResponseBody::CreateAccount => Op::CreateAccount,
            ResponseBody::Fund(_) => Op::Fund,
            ResponseBody::SetLimits => Op::SetLimits,
            ResponseBody::ReloadRoutes { .. } => Op::ReloadRoutes,
            ResponseBody::ChangeMembership { .. } => Op::ChangeMembership,
            ResponseBody::Authorize(_) => Op::Authorize,
            ResponseBody::Capture(_) => Op::Capture,
            ResponseBody::Reverse(_) => Op::Reverse,
            ResponseBody::Sale(_) => Op::Sale,
            ResponseBody::Refund(_) => Op::Refund,
            ResponseBody::BalanceInquiry(_) => Op::BalanceInquiry,
            ResponseBody::TransferStatus(_) => Op::TransferStatus,
            ResponseBody::CloseWindow { .. } => Op::CloseWindow,
            ResponseBody::ListWindows(_) => Op::ListWindows,
            ResponseBody::WindowReport(_) => Op::WindowReport,
            ResponseBody::ReportFile { .. } => Op::ReportFile,
            ResponseBody::Echo(_) => Op::Echo,
        }
    }

    /// The all-zero body for `op`: what goes with a code other than `Approved`.
    pub fn empty(op: Op) -> Self {
        let status = Status {
            state: TransferState::NotFound,
            currency: Currency(0),
            transfer: TransferId(0),
            amount: Amount(0),
            captured: Amount(0),
            refunded: Amount(0),
        };
        match op {
            Op::CreateParticipant => ResponseBody::CreateParticipant,
            Op::CreateAccount => ResponseBody::CreateAccount,
            Op::Fund => ResponseBody::Fund(Movement::default()),
            Op::SetLimits => ResponseBody::SetLimits,
            Op::ReloadRoutes => ResponseBody::ReloadRoutes { route_count: 0 },
            Op::ChangeMembership => ResponseBody::ChangeMembership { index: 0 },
            Op::Authorize => ResponseBody::Authorize(Movement::default()),
            Op::Capture => ResponseBody::Capture(Movement::default()),
            Op::Reverse => ResponseBody::Reverse(Movement::default()),
            Op::Sale => ResponseBody::Sale(Movement::default()),
            Op::Refund => ResponseBody::Refund(Movement::default()),
            Op::BalanceInquiry => ResponseBody::BalanceInquiry(Balance::default()),
            Op::TransferStatus => ResponseBody::TransferStatus(status),
            Op::CloseWindow => ResponseBody::CloseWindow {
                window: WindowId(0),
            },
            Op::ListWindows => ResponseBody::ListWindows(Vec::new()),
            Op::WindowReport => ResponseBody::WindowReport(WindowReport {
                window: WindowRecord {
                    window: WindowId(0),
                    state: WindowState::None,
                    opened_at: Timestamp(0),
                    closed_at: Timestamp(0),
                    transfer_count: 0,
                },
                positions: Vec::new(),
            }),
            Op::ReportFile => ResponseBody::ReportFile {
                total_len: 0,
                chunk: ReportChunk::default(),
            },
            Op::Echo => ResponseBody::Echo(EchoPayload::default()),
        }
    }
}

impl Op {
    /// Operations that change nothing: their results are not remembered, and one that would
    /// push its response frame over the frame limit is answered 91, reason 27 instead.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Op::BalanceInquiry
                | Op::TransferStatus
                | Op::ListWindows
                | Op::WindowReport
                | Op::ReportFile
                | Op::Echo
        )
    }

    /// The fewest bytes a result of this op takes: its declined form. For every op whose
    /// result has a fixed size (all but ListWindows, WindowReport, ReportFile and Echo) it is
    /// also the most.
    pub fn result_len_min(self) -> usize {
        Response::declined(RequestId(0), self, ResponseCode::SystemBusy, Reason::NONE).encoded_len()
    }
}

/// The largest `Op::result_len_min`: 69 bytes, a BalanceInquiry's.
pub fn result_len_min_max() -> usize {
    Op::ALL
        .into_iter()
        .map(Op::result_len_min)
        .max()
        .unwrap_or(0)
}

/// The largest response frame that a batch of `batch_len` results, each in its smallest
/// form, can need: a switch's frame limit must be at least this for its batch limit.
pub fn response_frame_len_floor(batch_len: u16) -> usize {
    super::frame::HEADER_LEN + 2 + usize::from(batch_len) * result_len_min_max()
}

/// Makes a response frame fit in `frame_len_max` bytes: read-only results that would push it
/// over, in order, are replaced by 91 with reason 27 (response too large). Results of
/// operations that change state, and results already in their smallest form, are never
/// replaced; so the frame fits whenever those fit. Returns how many were replaced.
pub fn fit_responses(responses: &mut [Response], frame_len_max: usize) -> usize {
    let least = |r: &Response| {
        let op = r.body.op();
        if op.is_read_only() {
            op.result_len_min().min(r.encoded_len())
        } else {
            r.encoded_len()
        }
    };
    let mut rest: usize = responses.iter().map(least).sum();
    let mut used = super::frame::HEADER_LEN + 2;
    let mut replaced = 0;
    for r in responses.iter_mut() {
        let len = r.encoded_len();
        rest -= least(r);
        let op = r.body.op();
        if op.is_read_only() && len > op.result_len_min() && used + len + rest > frame_len_max {
            *r = Response::declined(
                r.request_id,
                op,
                ResponseCode::SystemBusy,
                Reason::RESPONSE_TOO_LARGE,
            );
            replaced += 1;
        }
        used += r.encoded_len();
    }
    replaced
}

impl Response {
    /// A result with code other than `Approved`: the op-specific fields are zero.
    pub fn declined(request_id: RequestId, op: Op, code: ResponseCode, reason: Reason) -> Self {
        Self {
            request_id,
            code,
            reason,
            body: ResponseBody::empty(op),
        }
    }

    /// Bytes this result takes in a frame.
    pub fn encoded_len(&self) -> usize {
        RESPONSE_PREFIX_LEN
            + match &self.body {
                ResponseBody::CreateParticipant
                | ResponseBody::CreateAccount
                | ResponseBody::SetLimits => 0,
                ResponseBody::ReloadRoutes { .. } => 4,
                ResponseBody::ChangeMembership { .. } => 8,
                ResponseBody::Fund(_)
                | ResponseBody::Authorize(_)
                | ResponseBody::Capture(_)
                | ResponseBody::Reverse(_)
                | ResponseBody::Sale(_)
                | ResponseBody::Refund(_) => MOVEMENT_LEN,
                ResponseBody::BalanceInquiry(_) => 16 + 2 + 16 + 16,
                ResponseBody::TransferStatus(_) => 1 + 2 + 16 + 8 + 8 + 8,
                ResponseBody::CloseWindow { .. } => 8,
                ResponseBody::ListWindows(windows) => 2 + windows.len() * WINDOW_RECORD_LEN,
                ResponseBody::WindowReport(report) => {
                    WINDOW_RECORD_LEN + 2 + report.positions.len() * NET_POSITION_LEN
                }
                ResponseBody::ReportFile { chunk, .. } => 8 + 2 + chunk.as_bytes().len(),
                ResponseBody::Echo(payload) => 2 + payload.as_bytes().len(),
            }
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u8("op", self.body.op().as_u8());
        w.u128("request_id", self.request_id.0);
        w.u8("code", self.code.as_u8());
        w.u8("reason", self.reason.0);
        match &self.body {
            ResponseBody::CreateParticipant
            | ResponseBody::CreateAccount
            | ResponseBody::SetLimits => {}
            ResponseBody::ReloadRoutes { route_count } => w.u32("route_count", *route_count),
            ResponseBody::ChangeMembership { index } => w.u64("index", *index),
            ResponseBody::Fund(movement)
            | ResponseBody::Authorize(movement)
            | ResponseBody::Capture(movement)
            | ResponseBody::Reverse(movement)
            | ResponseBody::Sale(movement)
            | ResponseBody::Refund(movement) => {
                w.u128("transfer_id", movement.transfer.0);
                w.u64("amount", movement.amount.0);
                w.u16("currency", movement.currency.0);
            }
            ResponseBody::BalanceInquiry(balance) => {
                w.u128("account_id", balance.account.0);
                w.u16("currency", balance.currency.0);
                w.i128("available", balance.available);
                w.i128("ledger", balance.ledger);
            }
            ResponseBody::TransferStatus(status) => {
                w.u8("state", status.state as u8);
                w.u16("currency", status.currency.0);
                w.u128("transfer_id", status.transfer.0);
                w.u64("amount", status.amount.0);
                w.u64("captured", status.captured.0);
                w.u64("refunded", status.refunded.0);
            }
            ResponseBody::CloseWindow { window } => w.u64("window_id", window.0),
            ResponseBody::ListWindows(windows) => {
                w.u16("window_count", list_len("window_count", windows.len())?);
                for window in windows {
                    encode_window(w, window);
                }
            }
            ResponseBody::WindowReport(report) => {
                encode_window(w, &report.window);
                w.u16(
                    "position_count",
                    list_len("position_count", report.positions.len())?,
                );
                for position in &report.positions {
                    w.u64("participant_id", position.participant.0);
                    w.u16("currency", position.currency.0);
                    w.i128("net", position.net);
                }
            }
            ResponseBody::ReportFile { total_len, chunk } => {
                w.u64("total_len", *total_len);
                w.bytes_u16("chunk_len", "chunk", chunk.as_bytes());
            }
            ResponseBody::Echo(payload) => {
                w.bytes_u16("payload_len", "payload", payload.as_bytes());
            }
        }
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let op_at = r.pos();
        let op = r.u8("op")?;
        let op = Op::from_u8(op)
            .ok_or_else(|| r.error_at(op_at, "op", WireErrorKind::UnknownOp { op }))?;
        let request_id = RequestId(r.u128("request_id")?);
        let code = r.enumerated("code", ResponseCode::from_u8)?;
        let reason = Reason(r.u8("reason")?);
        let approved = code == ResponseCode::Approved;
        let body = match op {
            Op::CreateParticipant => ResponseBody::CreateParticipant,
            Op::CreateAccount => ResponseBody::CreateAccount,
            Op::SetLimits => ResponseBody::SetLimits,
            Op::ReloadRoutes => ResponseBody::ReloadRoutes {
                route_count: r.u32("route_count")?,
            },
            Op::ChangeMembership => ResponseBody::ChangeMembership {
                index: r.u64("index")?,
            },
            Op::Fund => ResponseBody::Fund(decode_movement(r)?),
            Op::Authorize => ResponseBody::Authorize(decode_movement(r)?),
            Op::Capture => ResponseBody::Capture(decode_movement(r)?),
            Op::Reverse => ResponseBody::Reverse(decode_movement(r)?),
            Op::Sale => ResponseBody::Sale(decode_movement(r)?),
            Op::Refund => ResponseBody::Refund(decode_movement(r)?),
            Op::BalanceInquiry => ResponseBody::BalanceInquiry(Balance {
                account: AccountId(r.u128("account_id")?),
                currency: Currency(r.u16("currency")?),
                available: r.i128("available")?,
                ledger: r.i128("ledger")?,
            }),
            Op::TransferStatus => ResponseBody::TransferStatus(Status {
                state: r.enumerated("state", TransferState::from_u8)?,
                currency: Currency(r.u16("currency")?),
                transfer: TransferId(r.u128("transfer_id")?),
                amount: Amount(r.u64("amount")?),
                captured: Amount(r.u64("captured")?),
                refunded: Amount(r.u64("refunded")?),
            }),
            Op::CloseWindow => ResponseBody::CloseWindow {
                window: WindowId(r.u64("window_id")?),
            },
            Op::ListWindows => {
                let count = usize::from(r.u16("window_count")?);
                let mut windows = Vec::with_capacity(capacity(r, count, WINDOW_RECORD_LEN));
                for _ in 0..count {
                    windows.push(decode_window(r, approved)?);
                }
                ResponseBody::ListWindows(windows)
            }
            Op::WindowReport => {
                let window = decode_window(r, approved)?;
                let count = usize::from(r.u16("position_count")?);
                let mut positions = Vec::with_capacity(capacity(r, count, NET_POSITION_LEN));
                for _ in 0..count {
                    positions.push(NetPosition {
                        participant: ParticipantId(r.u64("participant_id")?),
                        currency: Currency(r.u16("currency")?),
                        net: r.i128("net")?,
                    });
                }
                ResponseBody::WindowReport(WindowReport { window, positions })
            }
            Op::ReportFile => ResponseBody::ReportFile {
                total_len: r.u64("total_len")?,
                chunk: r.bytes_u16("chunk_len", "chunk", ReportChunk::LEN_MAX, ReportChunk::new)?,
            },
            Op::Echo => ResponseBody::Echo(r.bytes_u16(
                "payload_len",
                "payload",
                EchoPayload::LEN_MAX,
                EchoPayload::new,
            )?),
        };
        Ok(Response {
            request_id,
            code,
            reason,
            body,
        })
    }
}

/// Never reserve more entries than the rest of the frame could hold, whatever count it claims.
pub(crate) fn capacity(r: &Reader<'_>, count: usize, entry_len_min: usize) -> usize {
    count.min(r.remaining() / entry_len_min)
}

fn list_len(field: &'static str, len: usize) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::ListTooLong { field, len })
}

fn encode_window(w: &mut Writer<'_>, window: &WindowRecord) {
    w.u64("window_id", window.window.0);
    w.u8("state", window.state as u8);
    w.u64("opened_at", window.opened_at.0);
    w.u64("closed_at", window.closed_at.0);
    w.u64("transfer_count", window.transfer_count);
}

/// A window record; in an approved result its state is a window's (not `None`).
fn decode_window(r: &mut Reader<'_>, approved: bool) -> Result<WindowRecord, WireError> {
    let window = WindowId(r.u64("window_id")?);
    let state_at = r.pos();
    let state = r.enumerated("state", WindowState::from_u8)?;
    if approved && state == WindowState::None {
        return Err(r.error_at(
            state_at,
            "state",
            WireErrorKind::Field(FieldError::UnknownValue { value: 0 }),
        ));
    }
    Ok(WindowRecord {
        window,
        state,
        opened_at: Timestamp(r.u64("opened_at")?),
        closed_at: Timestamp(r.u64("closed_at")?),
        transfer_count: r.u64("transfer_count")?,
    })
}

fn decode_movement(r: &mut Reader<'_>) -> Result<Movement, WireError> {
    Ok(Movement {
        transfer: TransferId(r.u128("transfer_id")?),
        amount: Amount(r.u64("amount")?),
        currency: Currency(r.u16("currency")?),
    })
}
