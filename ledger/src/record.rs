//! The payload of every log record: what the ledger applied, exactly enough to apply it again.
//!
//! The log holds commands, not effects: a batch with the `now` it was applied at, or an expiry
//! pass. The ledger is deterministic, so replaying the commands in log order rebuilds the exact
//! state, remembered declines and eviction order included, and the digest proves it. Layouts
//! are in `docs/WAL-FORMAT.md` ("Payloads"); all integers are little-endian.

use crate::account::{AccountFlags, NewAccount};
use crate::codec::{self, CodecError, Reader};
use crate::currency::Currency;
use crate::event::{Event, Op};
use crate::transfer::{Transfer, TransferKind};
use crate::types::{AccountId, Amount, ParticipantId, Timestamp, TransferId};

/// One logged command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// `Ledger::apply(events, now)`.
    Batch { now: Timestamp, events: Vec<Event> },
    /// `Ledger::expire(now)`.
    Expire { now: Timestamp },
}

const RECORD_BATCH: u8 = 1;
const RECORD_EXPIRE: u8 = 2;

const OP_CREATE_ACCOUNT: u8 = 1;
const OP_TRANSFER: u8 = 2;
const OP_SET_ACCOUNT_CLOSED: u8 = 3;

const KIND_SINGLE: u8 = 0;
const KIND_PENDING: u8 = 1;
const KIND_POST: u8 = 2;
const KIND_VOID: u8 = 3;

/// Encoded sizes, tag and `linked` byte included.
pub(crate) const TRANSFER_LEN: usize = 2 + 16 + 16 + 16 + 8 + 2 + 1 + 16 + 2;
pub(crate) const SET_ACCOUNT_CLOSED_LEN: usize = 2 + 16 + 1;

/// A payload that is not a valid record. Offsets are from the start of the payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Truncated, a bool that is not 0 or 1, an event count that cannot fit, trailing bytes.
    #[error("payload offset {at}: {0}", at = .0.at())]
    Codec(#[from] CodecError),
    #[error("payload offset {offset}: unknown record type {tag}")]
    UnknownRecord { offset: usize, tag: u8 },
    #[error("payload offset {offset}: unknown operation {tag}")]
    UnknownOp { offset: usize, tag: u8 },
    #[error("payload offset {offset}: unknown transfer kind {tag}")]
    UnknownKind { offset: usize, tag: u8 },
    #[error("payload offset {offset}: unknown currency {numeric}")]
    UnknownCurrency { offset: usize, numeric: u16 },
    #[error("payload offset {offset}: unknown account flag bits {bits:#06x}")]
    UnknownFlags { offset: usize, bits: u16 },
}

impl LogRecord {
    /// Appends the encoding of `Batch { now, events }` without copying the events.
    pub fn encode_batch(now: Timestamp, events: &[Event], out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(1 + 8 + 4 + events.len() * TRANSFER_LEN);
        codec::put_u8(out, RECORD_BATCH);
        codec::put_u64(out, now.0);
        let count = u32::try_from(events.len()).expect("batches are bounded far below 2^32");
        codec::put_u32(out, count);
        for event in events {
            encode_event(event, out);
        }
        debug_assert!(
            matches!(
                LogRecord::decode(&out[start..]),
                Ok(LogRecord::Batch { now: n, events: e }) if n == now && e == events
            ),
            "a batch record decodes to what was encoded"
        );
    }

    pub fn encode_expire(now: Timestamp, out: &mut Vec<u8>) {
        let start = out.len();
        codec::put_u8(out, RECORD_EXPIRE);
        codec::put_u64(out, now.0);
        debug_assert_eq!(
            LogRecord::decode(&out[start..]),
            Ok(LogRecord::Expire { now }),
            "an expiry record decodes to what was encoded"
        );
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LogRecord::Batch { now, events } => LogRecord::encode_batch(*now, events, out),
            LogRecord::Expire { now } => LogRecord::encode_expire(*now, out),
        }
    }

    /// Decodes a whole payload; never panics, allocates at most in proportion to its length.
    pub fn decode(payload: &[u8]) -> Result<LogRecord, RecordError> {
        let mut r = Reader::new(payload);
        let tag_at = r.offset();
        let record = match r.u8("record type")? {
            RECORD_BATCH => {
                let now = Timestamp(r.u64("now")?);
                // Every event takes at least the smallest encoding: bound the allocation.
                let count = r.count_u32("event count", SET_ACCOUNT_CLOSED_LEN)?;
                let mut events = Vec::with_capacity(count);
                for _ in 0..count {
                    events.push(decode_event(&mut r)?);
                }
                LogRecord::Batch { now, events }
            }
            RECORD_EXPIRE => LogRecord::Expire {
                now: Timestamp(r.u64("now")?),
            },
            tag => {
                return Err(RecordError::UnknownRecord {
                    offset: tag_at,
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(record)
    }
}

pub(crate) fn encode_event(event: &Event, out: &mut Vec<u8>) {
    let tag = match &event.op {
        Op::CreateAccount(_) => OP_CREATE_ACCOUNT,
        Op::Transfer(_) => OP_TRANSFER,
        Op::SetAccountClosed { .. } => OP_SET_ACCOUNT_CLOSED,
    };
    codec::put_u8(out, tag);
    codec::put_bool(out, event.linked);
    match &event.op {
        Op::CreateAccount(a) => {
            codec::put_u128(out, a.id.0);
            codec::put_u16(out, a.currency.numeric());
            codec::put_u64(out, a.owner.0);
            codec::put_u16(out, a.flags.bits());
        }
        Op::Transfer(t) => {
            codec::put_u128(out, t.id.0);
            codec::put_u128(out, t.debit_account_id.0);
            codec::put_u128(out, t.credit_account_id.0);
            codec::put_u64(out, t.amount.0);
            codec::put_u16(out, t.currency.numeric());
            let (kind, arg) = match t.kind {
                TransferKind::Single => (KIND_SINGLE, 0),
                TransferKind::Pending { expires_at } => (KIND_PENDING, u128::from(expires_at.0)),
                TransferKind::Post { pending_id } => (KIND_POST, pending_id.0),
                TransferKind::Void { pending_id } => (KIND_VOID, pending_id.0),
            };
            codec::put_u8(out, kind);
            codec::put_u128(out, arg);
            codec::put_u16(out, t.code);
        }
        Op::SetAccountClosed { id, closed } => {
            codec::put_u128(out, id.0);
            codec::put_bool(out, *closed);
        }
    }
}

pub(crate) fn decode_event(r: &mut Reader<'_>) -> Result<Event, RecordError> {
    let tag_at = r.offset();
    let tag = r.u8("operation")?;
    let linked = r.bool("linked")?;
    let op = match tag {
        OP_CREATE_ACCOUNT => {
            let id = AccountId(r.u128("account id")?);
            let currency = currency(r)?;
            let owner = ParticipantId(r.u64("owner")?);
            let flags_at = r.offset();
            let bits = r.u16("account flags")?;
            let flags = AccountFlags::from_bits(bits).ok_or(RecordError::UnknownFlags {
                offset: flags_at,
                bits,
            })?;
            Op::CreateAccount(NewAccount {
                id,
                currency,
                owner,
                flags,
            })
        }
        OP_TRANSFER => {
            let id = TransferId(r.u128("transfer id")?);
            let debit_account_id = AccountId(r.u128("debit account id")?);
            let credit_account_id = AccountId(r.u128("credit account id")?);
            let amount = Amount(r.u64("amount")?);
            let currency = currency(r)?;
            let kind_at = r.offset();
            let kind = r.u8("transfer kind")?;
            let arg_at = r.offset();
            let arg = r.u128("transfer kind argument")?;
            let kind = match kind {
                KIND_SINGLE => TransferKind::Single,
                KIND_PENDING => TransferKind::Pending {
                    expires_at: Timestamp(u64::try_from(arg).map_err(|_| CodecError::Invalid {
                        what: "an expiry (over 64 bits)",
                        at: arg_at,
                        value: arg,
                    })?),
                },
                KIND_POST => TransferKind::Post {
                    pending_id: TransferId(arg),
                },
                KIND_VOID => TransferKind::Void {
                    pending_id: TransferId(arg),
                },
                tag => {
                    return Err(RecordError::UnknownKind {
                        offset: kind_at,
                        tag,
                    });
                }
            };
            let code = r.u16("code")?;
            Op::Transfer(Transfer {
                id,
                debit_account_id,
                credit_account_id,
                amount,
                currency,
                kind,
                code,
            })
        }
        OP_SET_ACCOUNT_CLOSED => Op::SetAccountClosed {
            id: AccountId(r.u128("account id")?),
            closed: r.bool("closed")?,
        },
        tag => {
            return Err(RecordError::UnknownOp {
                offset: tag_at,
                tag,
            });
        }
    };
    Ok(Event { op, linked })
}

pub(crate) fn currency(r: &mut Reader<'_>) -> Result<Currency, RecordError> {
    let offset = r.offset();
    let numeric = r.u16("currency")?;
    Currency::from_numeric(numeric).ok_or(RecordError::UnknownCurrency { offset, numeric })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CREATE_ACCOUNT_LEN: usize = 2 + 16 + 2 + 8 + 2;

    fn currency() -> impl Strategy<Value = Currency> {
        prop::sample::select(Currency::all().collect::<Vec<_>>())
    }

    fn event() -> impl Strategy<Value = Event> {
        let create =
            (any::<u128>(), currency(), any::<u64>(), 0u16..8).prop_map(|(id, c, o, f)| {
                Op::CreateAccount(NewAccount {
                    id: AccountId(id),
                    currency: c,
                    owner: ParticipantId(o),
                    flags: AccountFlags::from_bits(f).expect("known bits"),
                })
            });
        let kind = prop_oneof![
            Just(TransferKind::Single),
            any::<u64>().prop_map(|e| TransferKind::Pending {
                expires_at: Timestamp(e)
            }),
            any::<u128>().prop_map(|p| TransferKind::Post {
                pending_id: TransferId(p)
            }),
            any::<u128>().prop_map(|p| TransferKind::Void {
                pending_id: TransferId(p)
            }),
        ];
        let transfer = (
            any::<[u128; 3]>(),
            any::<u64>(),
            currency(),
            kind,
            any::<u16>(),
        )
            .prop_map(|([id, d, c], amount, currency, kind, code)| {
                Op::Transfer(Transfer {
                    id: TransferId(id),
                    debit_account_id: AccountId(d),
                    credit_account_id: AccountId(c),
                    amount: Amount(amount),
                    currency,
                    kind,
                    code,
                })
            });
        let close = (any::<u128>(), any::<bool>()).prop_map(|(id, closed)| Op::SetAccountClosed {
            id: AccountId(id),
            closed,
        });
        (prop_oneof![create, transfer, close], any::<bool>())
            .prop_map(|(op, linked)| Event { op, linked })
    }

    fn record() -> impl Strategy<Value = LogRecord> {
        prop_oneof![
            (any::<u64>(), prop::collection::vec(event(), 0..20)).prop_map(|(now, events)| {
                LogRecord::Batch {
                    now: Timestamp(now),
                    events,
                }
            }),
            any::<u64>().prop_map(|now| LogRecord::Expire {
                now: Timestamp(now)
            }),
        ]
    }

    #[test]
    fn encoded_sizes_are_as_documented() {
        let account = Op::CreateAccount(NewAccount {
            id: AccountId(1),
            currency: Currency::CNY,
            owner: ParticipantId(1),
            flags: AccountFlags::empty(),
        });
        let transfer = Op::Transfer(Transfer {
            id: TransferId(1),
            debit_account_id: AccountId(1),
            credit_account_id: AccountId(2),
            amount: Amount(1),
            currency: Currency::CNY,
            kind: TransferKind::Single,
            code: 0,
        });
        let close = Op::SetAccountClosed {
            id: AccountId(1),
            closed: true,
        };
        for (op, len) in [
            (account, CREATE_ACCOUNT_LEN),
            (transfer, TRANSFER_LEN),
            (close, SET_ACCOUNT_CLOSED_LEN),
        ] {
            let mut out = Vec::new();
            LogRecord::encode_batch(Timestamp(1), &[Event::new(op)], &mut out);
            assert_eq!(out.len(), 13 + len, "{op:?}");
        }
    }

    /// Each kind of malformed payload is refused naming the field and its offset.
    #[test]
    fn errors_say_what_and_where() {
        let mut batch = vec![RECORD_BATCH];
        batch.extend_from_slice(&7u64.to_le_bytes());
        batch.extend_from_slice(&5u32.to_le_bytes());
        let err = LogRecord::decode(&batch).expect_err("5 events in no bytes");
        assert_eq!(
            err,
            RecordError::Codec(CodecError::TooMany {
                what: "event count",
                at: 9,
                count: 5,
                remaining: 0
            })
        );
        assert_eq!(
            err.to_string(),
            "payload offset 9: event count 5 does not fit in the remaining 0 bytes"
        );
        let err = LogRecord::decode(&[RECORD_EXPIRE, 1, 2, 3]).expect_err("short");
        assert_eq!(
            err,
            RecordError::Codec(CodecError::Truncated {
                what: "now",
                at: 1,
                needed: 8,
                available: 3
            })
        );
        assert_eq!(
            err.to_string(),
            "payload offset 1: ends inside now (8 bytes needed, 3 left)"
        );
        let mut expire = Vec::new();
        LogRecord::encode_expire(Timestamp(1), &mut expire);
        expire.push(0);
        assert_eq!(
            LogRecord::decode(&expire),
            Err(RecordError::Codec(CodecError::Trailing { at: 9, extra: 1 }))
        );
        let mut close = Vec::new();
        LogRecord::encode_batch(
            Timestamp(1),
            &[Event::new(Op::SetAccountClosed {
                id: AccountId(1),
                closed: true,
            })],
            &mut close,
        );
        let mut linked = close.clone();
        linked[14] = 2;
        assert_eq!(
            LogRecord::decode(&linked),
            Err(RecordError::Codec(CodecError::Invalid {
                what: "linked",
                at: 14,
                value: 2
            }))
        );
        let last = close.len() - 1;
        close[last] = 9;
        assert_eq!(
            LogRecord::decode(&close).map_err(|e| e.to_string()),
            Err(format!("payload offset {last}: closed cannot be 9"))
        );
    }

    proptest! {
        #![proptest_config(proptest_config!("ledger_record.txt"))]

        #[test]
        fn records_round_trip(record in record()) {
            let mut out = Vec::new();
            record.encode(&mut out);
            prop_assert_eq!(LogRecord::decode(&out), Ok(record));
            // Every strict prefix is refused, never misread.
            for cut in 0..out.len() {
                prop_assert!(LogRecord::decode(&out[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = LogRecord::decode(&bytes);
        }
    }
}
