//! The payload of every log record: what the ledger applied, exactly enough to apply it again.
//!
//! The log holds commands, not effects: a batch with the `now` it was applied at, or an expiry
//! pass. The ledger is deterministic, so replaying the commands in log order rebuilds the exact
//! state, remembered declines and eviction order included, and the digest proves it. Layouts
//! are in `docs/WAL-FORMAT.md` ("Payloads"); all integers are little-endian.

use crate::account::{AccountFlags, NewAccount};
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
    #[error("payload offset {offset}: ends inside {what}")]
    Truncated { offset: usize, what: &'static str },
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
    #[error("payload offset {offset}: {what} must be 0 or 1, not {value}")]
    NotABool {
        offset: usize,
        what: &'static str,
        value: u8,
    },
    #[error(
        "payload offset {offset}: {count} events do not fit in the remaining {remaining} bytes"
    )]
    BadCount {
        offset: usize,
        count: u32,
        remaining: usize,
    },
    #[error("payload offset {offset}: {extra} bytes after the record")]
    Trailing { offset: usize, extra: usize },
}

impl LogRecord {
    /// Appends the encoding of `Batch { now, events }` without copying the events.
    pub fn encode_batch(now: Timestamp, events: &[Event], out: &mut Vec<u8>) {
        out.reserve(1 + 8 + 4 + events.len() * TRANSFER_LEN);
        out.push(RECORD_BATCH);
        out.extend_from_slice(&now.0.to_le_bytes());
        let count = u32::try_from(events.len()).expect("batches are bounded far below 2^32");
        out.extend_from_slice(&count.to_le_bytes());
        for event in events {
            encode_event(event, out);
        }
    }

    pub fn encode_expire(now: Timestamp, out: &mut Vec<u8>) {
        out.push(RECORD_EXPIRE);
        out.extend_from_slice(&now.0.to_le_bytes());
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LogRecord::Batch { now, events } => LogRecord::encode_batch(*now, events, out),
            LogRecord::Expire { now } => LogRecord::encode_expire(*now, out),
        }
    }

    /// Decodes a whole payload; never panics, allocates at most in proportion to its length.
    pub fn decode(payload: &[u8]) -> Result<LogRecord, RecordError> {
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        let tag_at = r.at;
        let record = match r.u8("record type")? {
            RECORD_BATCH => {
                let now = Timestamp(r.u64("now")?);
                let count_at = r.at;
                let count = r.u32("event count")?;
                let remaining = payload.len() - r.at;
                // Every event takes at least the smallest encoding: bound the allocation.
                if (count as usize).saturating_mul(SET_ACCOUNT_CLOSED_LEN) > remaining {
                    return Err(RecordError::BadCount {
                        offset: count_at,
                        count,
                        remaining,
                    });
                }
                let mut events = Vec::with_capacity(count as usize);
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
        if r.at != payload.len() {
            return Err(RecordError::Trailing {
                offset: r.at,
                extra: payload.len() - r.at,
            });
        }
        Ok(record)
    }
}

pub(crate) fn encode_event(event: &Event, out: &mut Vec<u8>) {
    let linked = u8::from(event.linked);
    match &event.op {
        Op::CreateAccount(a) => {
            out.extend_from_slice(&[OP_CREATE_ACCOUNT, linked]);
            out.extend_from_slice(&a.id.0.to_le_bytes());
            out.extend_from_slice(&a.currency.numeric().to_le_bytes());
            out.extend_from_slice(&a.owner.0.to_le_bytes());
            out.extend_from_slice(&a.flags.bits().to_le_bytes());
        }
        Op::Transfer(t) => {
            out.extend_from_slice(&[OP_TRANSFER, linked]);
            out.extend_from_slice(&t.id.0.to_le_bytes());
            out.extend_from_slice(&t.debit_account_id.0.to_le_bytes());
            out.extend_from_slice(&t.credit_account_id.0.to_le_bytes());
            out.extend_from_slice(&t.amount.0.to_le_bytes());
            out.extend_from_slice(&t.currency.numeric().to_le_bytes());
            let (kind, arg) = match t.kind {
                TransferKind::Single => (KIND_SINGLE, 0),
                TransferKind::Pending { expires_at } => (KIND_PENDING, u128::from(expires_at.0)),
                TransferKind::Post { pending_id } => (KIND_POST, pending_id.0),
                TransferKind::Void { pending_id } => (KIND_VOID, pending_id.0),
            };
            out.push(kind);
            out.extend_from_slice(&arg.to_le_bytes());
            out.extend_from_slice(&t.code.to_le_bytes());
        }
        Op::SetAccountClosed { id, closed } => {
            out.extend_from_slice(&[OP_SET_ACCOUNT_CLOSED, linked]);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.push(u8::from(*closed));
        }
    }
}

pub(crate) fn decode_event(r: &mut Reader<'_>) -> Result<Event, RecordError> {
    let tag_at = r.at;
    let tag = r.u8("operation")?;
    let linked = r.bool("linked")?;
    let op = match tag {
        OP_CREATE_ACCOUNT => {
            let id = AccountId(r.u128("account id")?);
            let currency = r.currency()?;
            let owner = ParticipantId(r.u64("owner")?);
            let flags_at = r.at;
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
            let currency = r.currency()?;
            let kind_at = r.at;
            let kind = r.u8("transfer kind")?;
            let arg_at = r.at;
            let arg = r.u128("transfer kind argument")?;
            let kind = match kind {
                KIND_SINGLE => TransferKind::Single,
                KIND_PENDING => TransferKind::Pending {
                    expires_at: Timestamp(u64::try_from(arg).map_err(|_| {
                        RecordError::Truncated {
                            offset: arg_at,
                            what: "an expiry (over 64 bits)",
                        }
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

/// A bounds-checked little-endian reader.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) at: usize,
}

impl Reader<'_> {
    pub(crate) fn bytes<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], RecordError> {
        let truncated = RecordError::Truncated {
            offset: self.at,
            what,
        };
        let end = self.at.checked_add(N).ok_or(truncated.clone())?;
        let slice = self.buf.get(self.at..end).ok_or(truncated)?;
        self.at = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.bytes::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.bytes(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    pub(crate) fn u128(&mut self, what: &'static str) -> Result<u128, RecordError> {
        Ok(u128::from_le_bytes(self.bytes(what)?))
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, RecordError> {
        let offset = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(RecordError::NotABool {
                offset,
                what,
                value,
            }),
        }
    }

    pub(crate) fn currency(&mut self) -> Result<Currency, RecordError> {
        let offset = self.at;
        let numeric = self.u16("currency")?;
        Currency::from_numeric(numeric).ok_or(RecordError::UnknownCurrency { offset, numeric })
    }
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
