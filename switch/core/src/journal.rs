//! The switch's log records: the commands it executed, with who sent them and `now`.
//!
//! Replaying them through `Core::replay` rebuilds the ledger and the switch's own state (the
//! number directory, participants, authorizations, remembered responses). Layouts are in
//! `docs/WAL-FORMAT.md` ("Switch payloads"); integers are little-endian.

use std::sync::Arc;

use ledger::clearing::{FeeRate, FeeSchedule};
use ledger::codec::{self, CodecError, Reader};
use ledger::{AccountFlags, AccountId, Amount, Currency, ParticipantId, Timestamp};
use rust_decimal::Decimal;

use crate::core::{
    Capture, Command, CreateAccount, CreateParticipant, Fund, Logged, Refund, Request, RequestId,
    Reverse, SetLimits, Target,
};
use crate::identity::Identity;

/// One switch log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchRecord {
    Batch {
        now: Timestamp,
        commands: Vec<Logged>,
    },
    /// An expiry pass: every hold due at `now`, or with `at_most`, the first that many of
    /// them in (expiry, id) order.
    Expire {
        now: Timestamp,
        at_most: Option<u32>,
    },
}

const RECORD_BATCH: u8 = 0x81;
const RECORD_EXPIRE: u8 = 0x82;
const RECORD_EXPIRE_AT_MOST: u8 = 0x83;

const C_CREATE_PARTICIPANT: u8 = 1;
const C_CREATE_ACCOUNT: u8 = 2;
const C_FUND: u8 = 3;
const C_SET_LIMITS: u8 = 4;
const C_AUTHORIZE: u8 = 5;
const C_CAPTURE: u8 = 6;
const C_REVERSE: u8 = 7;
const C_SALE: u8 = 8;
const C_REFUND: u8 = 9;
const C_CLOSE_WINDOW: u8 = 10;

/// Fee-schedule entries a close carries at most (one per issuer).
pub const FEE_ENTRIES_MAX: usize = 65_536;

/// Longest participant name and card number carried.
pub const NAME_LEN_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("switch record offset {offset}: ends inside {what}")]
    Truncated { offset: usize, what: &'static str },
    #[error("switch record offset {offset}: bad {what} ({value})")]
    Bad {
        offset: usize,
        what: &'static str,
        value: u128,
    },
    #[error("switch record offset {offset}: {extra} bytes after the record")]
    Trailing { offset: usize, extra: usize },
}

impl From<CodecError> for JournalError {
    fn from(e: CodecError) -> Self {
        let offset = e.at();
        match e {
            CodecError::Truncated { what, .. } => JournalError::Truncated { offset, what },
            CodecError::Trailing { extra, .. } => JournalError::Trailing { offset, extra },
            CodecError::Invalid { what, value, .. } => JournalError::Bad {
                offset,
                what,
                value,
            },
            CodecError::TooLong { what, len, .. } => JournalError::Bad {
                offset,
                what,
                value: len as u128,
            },
            CodecError::TooMany { what, count, .. } => JournalError::Bad {
                offset,
                what,
                value: u128::from(count),
            },
            CodecError::NotUtf8 { what, .. } => JournalError::Bad {
                offset,
                what,
                value: 0,
            },
        }
    }
}

/// A command's string in the log: a u8 length, at most `NAME_LEN_MAX` (`Core::resolve`
/// refuses longer strings, so nothing is ever cut here).
fn put_str(s: &str, out: &mut Vec<u8>) {
    codec::put_str(out, s, NAME_LEN_MAX);
}

/// How a layout writes a string: a command's in the log with a u8 length (`put_str`), a
/// request's canonical encoding with a u32 one.
type PutStr = fn(&str, &mut Vec<u8>);

/// A payload commands and requests share (`core::Fund` and the like), written after the tag in
/// the log and in a request's canonical encoding alike, but for how strings are written. Each
/// writer is an exhaustive destructuring: a field added to a payload must be considered here.
trait Payload {
    fn put(&self, put_str: PutStr, out: &mut Vec<u8>);

    /// The layout's tag, then the payload.
    fn put_tagged(&self, tag: u8, put_str: PutStr, out: &mut Vec<u8>) {
        codec::put_u8(out, tag);
        self.put(put_str, out);
    }
}

impl Payload for CreateParticipant {
    fn put(&self, put_str: PutStr, out: &mut Vec<u8>) {
        let CreateParticipant {
            participant,
            name,
            roles,
        } = self;
        codec::put_u64(out, participant.0);
        put_str(name, out);
        codec::put_u8(out, *roles);
    }
}

impl Payload for CreateAccount {
    fn put(&self, put_str: PutStr, out: &mut Vec<u8>) {
        let CreateAccount {
            account,
            owner,
            currency,
            flags,
            number,
        } = self;
        codec::put_u128(out, account.0);
        codec::put_u64(out, owner.0);
        codec::put_u16(out, currency.numeric());
        codec::put_u16(out, flags.bits());
        put_str(number.as_deref().unwrap_or(""), out);
    }
}

impl Payload for Fund {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let Fund {
            account,
            amount,
            currency,
        } = self;
        codec::put_u128(out, account.0);
        codec::put_u64(out, amount.0);
        codec::put_u16(out, currency.numeric());
    }
}

impl Payload for SetLimits {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let SetLimits {
            participant,
            currency,
            net_debit_cap,
        } = self;
        codec::put_u64(out, participant.0);
        codec::put_u16(out, currency.numeric());
        codec::put_u64(out, net_debit_cap.0);
    }
}

impl Payload for Capture {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let Capture {
            authorization,
            amount,
        } = self;
        codec::put_u128(out, authorization.0);
        codec::put_u64(out, amount.0);
    }
}

impl Payload for Reverse {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let Reverse { authorization } = self;
        codec::put_u128(out, authorization.0);
    }
}

impl Payload for Refund {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let Refund {
            original,
            amount,
            currency,
        } = self;
        codec::put_u128(out, original.0);
        codec::put_u64(out, amount.0);
        codec::put_u16(out, currency.numeric());
    }
}

pub fn encode_command(command: &Command, out: &mut Vec<u8>) {
    match command {
        Command::CreateParticipant(p) => p.put_tagged(C_CREATE_PARTICIPANT, put_str, out),
        Command::CreateAccount(a) => a.put_tagged(C_CREATE_ACCOUNT, put_str, out),
        Command::Fund(f) => f.put_tagged(C_FUND, put_str, out),
        Command::SetLimits(l) => l.put_tagged(C_SET_LIMITS, put_str, out),
        Command::Authorize {
            card,
            merchant,
            amount,
            currency,
            expires_at,
        } => {
            codec::put_u8(out, C_AUTHORIZE);
            codec::put_u128(out, card.0);
            codec::put_u128(out, merchant.0);
            codec::put_u64(out, amount.0);
            codec::put_u16(out, currency.numeric());
            codec::put_u64(out, expires_at.0);
        }
        Command::Capture(c) => c.put_tagged(C_CAPTURE, put_str, out),
        Command::Reverse(r) => r.put_tagged(C_REVERSE, put_str, out),
        Command::Sale {
            card,
            merchant,
            amount,
            currency,
        } => {
            codec::put_u8(out, C_SALE);
            codec::put_u128(out, card.0);
            codec::put_u128(out, merchant.0);
            codec::put_u64(out, amount.0);
            codec::put_u16(out, currency.numeric());
        }
        Command::Refund(r) => r.put_tagged(C_REFUND, put_str, out),
        Command::CloseWindow { window, fees } => {
            codec::put_u8(out, C_CLOSE_WINDOW);
            codec::put_u64(out, *window);
            let rate = |r: &FeeRate, out: &mut Vec<u8>| {
                out.extend_from_slice(&r.percent.serialize());
                out.extend_from_slice(&r.fixed.serialize());
            };
            rate(&fees.purchase, out);
            rate(&fees.refund, out);
            codec::put_u32(out, fees.by_issuer.len() as u32);
            for (issuer, (purchase, refund)) in &fees.by_issuer {
                codec::put_u64(out, issuer.0);
                rate(purchase, out);
                rate(refund, out);
            }
        }
    }
}

/// Bytes a batch record takes before its commands: type, `now` and the count.
pub const BATCH_HEADER_LEN: usize = 1 + 8 + 4;

/// The most bytes one command other than a close can take in a batch record (with its id,
/// sender and fingerprint): measured by encoding the largest of every kind. A close carries
/// the fee schedule, so its size is the configuration's: `logged_len`.
pub fn logged_len_max() -> usize {
    let id = RequestId(u128::MAX);
    let name = "n".repeat(NAME_LEN_MAX);
    let number = "9".repeat(crate::routing::NUMBER_LEN_MAX);
    let (account, amount, currency) = (AccountId(u128::MAX), Amount(u64::MAX), Currency::CNY);
    let largest = [
        Command::CreateParticipant(CreateParticipant {
            participant: ParticipantId(u64::MAX),
            name,
            roles: u8::MAX,
        }),
        Command::CreateAccount(CreateAccount {
            account,
            owner: ParticipantId(u64::MAX),
            currency,
            flags: AccountFlags::empty(),
            number: Some(number),
        }),
        Command::Fund(Fund {
            account,
            amount,
            currency,
        }),
        Command::SetLimits(SetLimits {
            participant: ParticipantId(u64::MAX),
            currency,
            net_debit_cap: amount,
        }),
        Command::Authorize {
            card: account,
            merchant: account,
            amount,
            currency,
            expires_at: Timestamp(u64::MAX),
        },
        Command::Capture(Capture {
            authorization: id,
            amount,
        }),
        Command::Reverse(Reverse { authorization: id }),
        Command::Sale {
            card: account,
            merchant: account,
            amount,
            currency,
        },
        Command::Refund(Refund {
            original: id,
            amount,
            currency,
        }),
    ];
    largest.iter().map(logged_len).max().unwrap_or(0)
}

/// The bytes `command` takes in a batch record, with its id, sender and fingerprint.
pub fn logged_len(command: &Command) -> usize {
    let mut out = Vec::new();
    encode_command(command, &mut out);
    LOGGED_PREFIX_LEN + out.len()
}

/// A logged command's id, sender (participant and admin flag) and fingerprint.
const LOGGED_PREFIX_LEN: usize = 16 + 8 + 1 + 8;

/// The fewest bytes a logged command takes: a participant with an empty name (tag,
/// participant, name length, roles). A record of `n` commands is at least `n` times this.
const LOGGED_LEN_MIN: usize = LOGGED_PREFIX_LEN + 1 + 8 + 1 + 1;

/// With a u32 length, as a request's canonical encoding writes strings and bytes.
fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    codec::put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

/// A canonical encoding of a request as the client sent it (before routing), for the
/// fingerprint that tells a repeat from a different request with the same id.
pub fn encode_request(request: &Request, out: &mut Vec<u8>) {
    let put_string: PutStr = |s, out| put_bytes(s.as_bytes(), out);
    match request {
        Request::CreateParticipant(p) => p.put_tagged(1, put_string, out),
        Request::CreateAccount(a) => a.put_tagged(2, put_string, out),
        Request::Fund(f) => f.put_tagged(3, put_string, out),
        Request::SetLimits(l) => l.put_tagged(4, put_string, out),
        Request::Authorize {
            number,
            merchant,
            amount,
            currency,
            expiry_seconds,
        } => {
            codec::put_u8(out, 5);
            put_bytes(number.as_bytes(), out);
            codec::put_u128(out, merchant.0);
            codec::put_u64(out, amount.0);
            codec::put_u16(out, currency.numeric());
            codec::put_u32(out, *expiry_seconds);
        }
        Request::Capture(c) => c.put_tagged(6, put_string, out),
        Request::Reverse(r) => r.put_tagged(7, put_string, out),
        Request::Sale {
            number,
            merchant,
            amount,
            currency,
        } => {
            codec::put_u8(out, 8);
            put_bytes(number.as_bytes(), out);
            codec::put_u128(out, merchant.0);
            codec::put_u64(out, amount.0);
            codec::put_u16(out, currency.numeric());
        }
        Request::Refund(r) => r.put_tagged(9, put_string, out),
        Request::BalanceInquiry { target } => {
            codec::put_u8(out, 10);
            match target {
                Target::Number(n) => {
                    codec::put_u8(out, 0);
                    put_bytes(n.as_bytes(), out);
                }
                Target::Account(a) => {
                    codec::put_u8(out, 1);
                    codec::put_u128(out, a.0);
                }
            }
        }
        Request::TransferStatus { of } => {
            codec::put_u8(out, 11);
            codec::put_u128(out, of.0);
        }
        Request::Echo { payload } => {
            codec::put_u8(out, 12);
            put_bytes(payload, out);
        }
        Request::CloseWindow { window } => {
            codec::put_u8(out, 13);
            codec::put_u64(out, *window);
        }
        Request::ListWindows => codec::put_u8(out, 14),
        Request::WindowReport { window } => {
            codec::put_u8(out, 15);
            codec::put_u64(out, *window);
        }
    }
}

/// A 64-bit FNV-1a hash of who sent a request and its canonical encoding.
pub fn fingerprint(who: Identity, request: &Request) -> u64 {
    let mut bytes = Vec::with_capacity(96);
    codec::put_u64(&mut bytes, who.participant.0);
    codec::put_bool(&mut bytes, who.admin);
    encode_request(request, &mut bytes);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl SwitchRecord {
    pub fn encode_batch(now: Timestamp, commands: &[Logged], out: &mut Vec<u8>) {
        let start = out.len();
        codec::put_u8(out, RECORD_BATCH);
        codec::put_u64(out, now.0);
        codec::put_u32(out, commands.len() as u32);
        for c in commands {
            codec::put_u128(out, c.id.0);
            codec::put_u64(out, c.who.participant.0);
            codec::put_bool(out, c.who.admin);
            codec::put_u64(out, c.fingerprint);
            encode_command(&c.command, out);
        }
        read_back(
            &out[start..],
            |record| matches!(record, SwitchRecord::Batch { now: n, commands: c } if *n == now && c == commands),
        );
    }

    /// An unbounded pass is written as it was before passes had a bound, so logs of either
    /// kind read the same.
    pub fn encode_expire(now: Timestamp, at_most: Option<u32>, out: &mut Vec<u8>) {
        let start = out.len();
        match at_most {
            None => {
                codec::put_u8(out, RECORD_EXPIRE);
                codec::put_u64(out, now.0);
            }
            Some(limit) => {
                codec::put_u8(out, RECORD_EXPIRE_AT_MOST);
                codec::put_u64(out, now.0);
                codec::put_u32(out, limit);
            }
        }
        read_back(&out[start..], |record| {
            *record == SwitchRecord::Expire { now, at_most }
        });
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SwitchRecord::Batch { now, commands } => Self::encode_batch(*now, commands, out),
            SwitchRecord::Expire { now, at_most } => Self::encode_expire(*now, *at_most, out),
        }
    }

    /// Decodes a whole payload; never panics.
    pub fn decode(payload: &[u8]) -> Result<SwitchRecord, JournalError> {
        let mut r = Reader::new(payload);
        let record = match r.u8("record type")? {
            RECORD_BATCH => {
                let now = Timestamp(r.u64("now")?);
                // Bounds the allocation by what the record holds.
                let count = r.count_u32("command count", LOGGED_LEN_MIN)?;
                let mut commands = Vec::with_capacity(count);
                for _ in 0..count {
                    commands.push(decode_logged(&mut r)?);
                }
                SwitchRecord::Batch { now, commands }
            }
            RECORD_EXPIRE => SwitchRecord::Expire {
                now: Timestamp(r.u64("now")?),
                at_most: None,
            },
            RECORD_EXPIRE_AT_MOST => SwitchRecord::Expire {
                now: Timestamp(r.u64("now")?),
                at_most: Some(r.u32("at most")?),
            },
            tag => {
                return Err(JournalError::Bad {
                    offset: 0,
                    what: "record type",
                    value: u128::from(tag),
                });
            }
        };
        r.finish()?;
        Ok(record)
    }
}

/// In debug builds, decodes a record just encoded and checks it is what was encoded: a writer
/// and a reader that disagree would lose the command at the next recovery, not now.
fn read_back(bytes: &[u8], is_encoded: impl FnOnce(&SwitchRecord) -> bool) {
    if !cfg!(debug_assertions) {
        return;
    }
    match SwitchRecord::decode(bytes) {
        Ok(record) => assert!(
            is_encoded(&record),
            "a switch record reads back as another: {record:?}"
        ),
        Err(e) => panic!("a switch record just encoded does not decode: {e}"),
    }
}

fn decode_logged(r: &mut Reader<'_>) -> Result<Logged, JournalError> {
    let id = RequestId(r.u128("request id")?);
    let participant = ParticipantId(r.u64("participant")?);
    let admin = r.bool("admin")?;
    let fingerprint = r.u64("fingerprint")?;
    Ok(Logged {
        id,
        who: Identity { participant, admin },
        fingerprint,
        command: decode_command(r)?,
    })
}

/// Applies one logged record to `core` again: recovery, and snapshots built by replay.
pub fn replay(core: &mut crate::core::Core, payload: &[u8]) -> Result<(), JournalError> {
    match SwitchRecord::decode(payload)? {
        SwitchRecord::Batch { now, commands } => core.replay(&commands, now),
        SwitchRecord::Expire { now, at_most } => {
            core.expire(now, at_most);
        }
    }
    Ok(())
}

fn decode_command(r: &mut Reader<'_>) -> Result<Command, JournalError> {
    let at = r.offset();
    Ok(match r.u8("command")? {
        C_CREATE_PARTICIPANT => Command::CreateParticipant(CreateParticipant {
            participant: ParticipantId(r.u64("participant")?),
            name: string(r, "name")?,
            roles: r.u8("roles")?,
        }),
        C_CREATE_ACCOUNT => {
            let account = AccountId(r.u128("account")?);
            let owner = ParticipantId(r.u64("owner")?);
            let currency = currency(r)?;
            let flags_at = r.offset();
            let bits = r.u16("flags")?;
            let flags = AccountFlags::from_bits(bits).ok_or(JournalError::Bad {
                offset: flags_at,
                what: "account flags",
                value: u128::from(bits),
            })?;
            let number = string(r, "number")?;
            Command::CreateAccount(CreateAccount {
                account,
                owner,
                currency,
                flags,
                number: (!number.is_empty()).then_some(number),
            })
        }
        C_FUND => Command::Fund(Fund {
            account: AccountId(r.u128("account")?),
            amount: Amount(r.u64("amount")?),
            currency: currency(r)?,
        }),
        C_SET_LIMITS => Command::SetLimits(SetLimits {
            participant: ParticipantId(r.u64("participant")?),
            currency: currency(r)?,
            net_debit_cap: Amount(r.u64("net debit cap")?),
        }),
        C_AUTHORIZE => Command::Authorize {
            card: AccountId(r.u128("card account")?),
            merchant: AccountId(r.u128("merchant account")?),
            amount: Amount(r.u64("amount")?),
            currency: currency(r)?,
            expires_at: Timestamp(r.u64("expiry")?),
        },
        C_CAPTURE => Command::Capture(Capture {
            authorization: RequestId(r.u128("authorization")?),
            amount: Amount(r.u64("amount")?),
        }),
        C_REVERSE => Command::Reverse(Reverse {
            authorization: RequestId(r.u128("authorization")?),
        }),
        C_SALE => Command::Sale {
            card: AccountId(r.u128("card account")?),
            merchant: AccountId(r.u128("merchant account")?),
            amount: Amount(r.u64("amount")?),
            currency: currency(r)?,
        },
        C_REFUND => Command::Refund(Refund {
            original: RequestId(r.u128("original")?),
            amount: Amount(r.u64("amount")?),
            currency: currency(r)?,
        }),
        C_CLOSE_WINDOW => Command::CloseWindow {
            window: r.u64("window")?,
            fees: Arc::new(fee_schedule(r)?),
        },
        tag => {
            return Err(JournalError::Bad {
                offset: at,
                what: "command",
                value: u128::from(tag),
            });
        }
    })
}

fn fee_schedule(r: &mut Reader<'_>) -> Result<FeeSchedule, JournalError> {
    let purchase = rate(r)?;
    let refund = rate(r)?;
    let count_at = r.offset();
    let count = r.u32("fee entries")? as usize;
    if count > FEE_ENTRIES_MAX {
        return Err(JournalError::Bad {
            offset: count_at,
            what: "fee entries",
            value: count as u128,
        });
    }
    let mut by_issuer = std::collections::BTreeMap::new();
    for _ in 0..count {
        let issuer = ParticipantId(r.u64("fee issuer")?);
        let rates = (rate(r)?, rate(r)?);
        by_issuer.insert(issuer, rates);
    }
    Ok(FeeSchedule {
        purchase,
        refund,
        by_issuer,
    })
}

fn currency(r: &mut Reader<'_>) -> Result<Currency, JournalError> {
    let at = r.offset();
    let numeric = r.u16("currency")?;
    Currency::from_numeric(numeric).ok_or(JournalError::Bad {
        offset: at,
        what: "currency",
        value: u128::from(numeric),
    })
}

fn decimal(r: &mut Reader<'_>, what: &'static str) -> Result<Decimal, JournalError> {
    let at = r.offset();
    let bytes: [u8; 16] = r.array(what)?;
    // Only what `Decimal::serialize` writes: flags with a scale of at most 28 and no other
    // bits.
    let flags = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let scale = (flags >> 16) & 0xff;
    if flags & !0x80ff_0000 != 0 || scale > 28 {
        return Err(JournalError::Bad {
            offset: at,
            what,
            value: u128::from(flags),
        });
    }
    Ok(Decimal::deserialize(bytes))
}

fn rate(r: &mut Reader<'_>) -> Result<FeeRate, JournalError> {
    Ok(FeeRate {
        percent: decimal(r, "fee percent")?,
        fixed: decimal(r, "fee fixed part")?,
    })
}

/// What `put_str` wrote. The writer never writes longer than `NAME_LEN_MAX`: a longer one is
/// not a record of ours.
fn string(r: &mut Reader<'_>, what: &'static str) -> Result<String, JournalError> {
    Ok(r.str(what, NAME_LEN_MAX)?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(n: u64, name: &str) -> Logged {
        Logged {
            id: RequestId(u128::from(n)),
            who: Identity {
                participant: ParticipantId(1),
                admin: true,
            },
            fingerprint: n,
            command: Command::CreateParticipant(CreateParticipant {
                participant: ParticipantId(n),
                name: name.to_string(),
                roles: 1,
            }),
        }
    }

    /// The smallest commands there are, as many as a record holds: every record written reads
    /// back, whatever its commands' sizes (a bound on the count that assumed larger commands
    /// refused batches of participants with short names).
    #[test]
    fn a_record_of_the_smallest_commands_reads_back() {
        for name in ["", "a", "ab"] {
            for count in 0..40 {
                let commands: Vec<Logged> = (1..=count).map(|n| participant(n, name)).collect();
                let mut bytes = Vec::new();
                SwitchRecord::encode_batch(Timestamp(7), &commands, &mut bytes);
                if name.is_empty() {
                    assert_eq!(
                        bytes.len(),
                        BATCH_HEADER_LEN + commands.len() * LOGGED_LEN_MIN
                    );
                }
                assert_eq!(
                    SwitchRecord::decode(&bytes),
                    Ok(SwitchRecord::Batch {
                        now: Timestamp(7),
                        commands,
                    }),
                    "{count} participants named {name:?}"
                );
                // One byte short of its commands, the count is refused before anything is
                // allocated for them.
                if count > 0 && name.is_empty() {
                    let cut = &bytes[..bytes.len() - 1];
                    assert!(matches!(
                        SwitchRecord::decode(cut),
                        Err(JournalError::Bad {
                            offset: 9,
                            what: "command count",
                            ..
                        })
                    ));
                }
            }
        }
    }
}
