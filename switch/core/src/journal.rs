//! The switch's log records: the commands it executed, with who sent them and `now`.
//!
//! Replaying them through `Core::replay` rebuilds the ledger and the switch's own state (the
//! number directory, participants, authorizations, remembered responses). Layouts are in
//! `docs/WAL-FORMAT.md` ("Switch payloads"); integers are little-endian.

use std::sync::Arc;

use ledger::clearing::{FeeRate, FeeSchedule};
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
    Expire {
        now: Timestamp,
    },
}

const RECORD_BATCH: u8 = 0x81;
const RECORD_EXPIRE: u8 = 0x82;

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

fn put_str(s: &str, out: &mut Vec<u8>) {
    // `Core::resolve` refuses longer strings, so nothing is ever cut here.
    assert!(
        s.len() <= NAME_LEN_MAX,
        "string of {} bytes in a command",
        s.len()
    );
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
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
        out.push(tag);
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
        out.extend_from_slice(&participant.0.to_le_bytes());
        put_str(name, out);
        out.push(*roles);
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
        out.extend_from_slice(&account.0.to_le_bytes());
        out.extend_from_slice(&owner.0.to_le_bytes());
        out.extend_from_slice(&currency.numeric().to_le_bytes());
        out.extend_from_slice(&flags.bits().to_le_bytes());
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
        out.extend_from_slice(&account.0.to_le_bytes());
        out.extend_from_slice(&amount.0.to_le_bytes());
        out.extend_from_slice(&currency.numeric().to_le_bytes());
    }
}

impl Payload for SetLimits {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let SetLimits {
            participant,
            currency,
            net_debit_cap,
        } = self;
        out.extend_from_slice(&participant.0.to_le_bytes());
        out.extend_from_slice(&currency.numeric().to_le_bytes());
        out.extend_from_slice(&net_debit_cap.0.to_le_bytes());
    }
}

impl Payload for Capture {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let Capture {
            authorization,
            amount,
        } = self;
        out.extend_from_slice(&authorization.0.to_le_bytes());
        out.extend_from_slice(&amount.0.to_le_bytes());
    }
}

impl Payload for Reverse {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let Reverse { authorization } = self;
        out.extend_from_slice(&authorization.0.to_le_bytes());
    }
}

impl Payload for Refund {
    fn put(&self, _: PutStr, out: &mut Vec<u8>) {
        let Refund {
            original,
            amount,
            currency,
        } = self;
        out.extend_from_slice(&original.0.to_le_bytes());
        out.extend_from_slice(&amount.0.to_le_bytes());
        out.extend_from_slice(&currency.numeric().to_le_bytes());
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
            out.push(C_AUTHORIZE);
            out.extend_from_slice(&card.0.to_le_bytes());
            out.extend_from_slice(&merchant.0.to_le_bytes());
            out.extend_from_slice(&amount.0.to_le_bytes());
            out.extend_from_slice(&currency.numeric().to_le_bytes());
            out.extend_from_slice(&expires_at.0.to_le_bytes());
        }
        Command::Capture(c) => c.put_tagged(C_CAPTURE, put_str, out),
        Command::Reverse(r) => r.put_tagged(C_REVERSE, put_str, out),
        Command::Sale {
            card,
            merchant,
            amount,
            currency,
        } => {
            out.push(C_SALE);
            out.extend_from_slice(&card.0.to_le_bytes());
            out.extend_from_slice(&merchant.0.to_le_bytes());
            out.extend_from_slice(&amount.0.to_le_bytes());
            out.extend_from_slice(&currency.numeric().to_le_bytes());
        }
        Command::Refund(r) => r.put_tagged(C_REFUND, put_str, out),
        Command::CloseWindow { window, fees } => {
            out.push(C_CLOSE_WINDOW);
            out.extend_from_slice(&window.to_le_bytes());
            let rate = |r: &FeeRate, out: &mut Vec<u8>| {
                out.extend_from_slice(&r.percent.serialize());
                out.extend_from_slice(&r.fixed.serialize());
            };
            rate(&fees.purchase, out);
            rate(&fees.refund, out);
            out.extend_from_slice(&(fees.by_issuer.len() as u32).to_le_bytes());
            for (issuer, (purchase, refund)) in &fees.by_issuer {
                out.extend_from_slice(&issuer.0.to_le_bytes());
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

/// With a u32 length, as a request's canonical encoding writes strings and bytes.
fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A canonical encoding of a request as the client sent it (before routing), for the
/// fingerprint that tells a repeat from a different request with the same id.
pub fn encode_request(request: &Request, out: &mut Vec<u8>) {
    let put_u128 = |v: u128, out: &mut Vec<u8>| out.extend_from_slice(&v.to_le_bytes());
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
            out.push(5);
            put_bytes(number.as_bytes(), out);
            put_u128(merchant.0, out);
            out.extend_from_slice(&amount.0.to_le_bytes());
            out.extend_from_slice(&currency.numeric().to_le_bytes());
            out.extend_from_slice(&expiry_seconds.to_le_bytes());
        }
        Request::Capture(c) => c.put_tagged(6, put_string, out),
        Request::Reverse(r) => r.put_tagged(7, put_string, out),
        Request::Sale {
            number,
            merchant,
            amount,
            currency,
        } => {
            out.push(8);
            put_bytes(number.as_bytes(), out);
            put_u128(merchant.0, out);
            out.extend_from_slice(&amount.0.to_le_bytes());
            out.extend_from_slice(&currency.numeric().to_le_bytes());
        }
        Request::Refund(r) => r.put_tagged(9, put_string, out),
        Request::BalanceInquiry { target } => {
            out.push(10);
            match target {
                Target::Number(n) => {
                    out.push(0);
                    put_bytes(n.as_bytes(), out);
                }
                Target::Account(a) => {
                    out.push(1);
                    put_u128(a.0, out);
                }
            }
        }
        Request::TransferStatus { of } => {
            out.push(11);
            put_u128(of.0, out);
        }
        Request::Echo { payload } => {
            out.push(12);
            put_bytes(payload, out);
        }
        Request::CloseWindow { window } => {
            out.push(13);
            out.extend_from_slice(&window.to_le_bytes());
        }
        Request::ListWindows => out.push(14),
        Request::WindowReport { window } => {
            out.push(15);
            out.extend_from_slice(&window.to_le_bytes());
        }
    }
}

/// A 64-bit FNV-1a hash of who sent a request and its canonical encoding.
pub fn fingerprint(who: Identity, request: &Request) -> u64 {
    let mut bytes = Vec::with_capacity(96);
    bytes.extend_from_slice(&who.participant.0.to_le_bytes());
    bytes.push(u8::from(who.admin));
    encode_request(request, &mut bytes);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl SwitchRecord {
    pub fn encode_batch(now: Timestamp, commands: &[Logged], out: &mut Vec<u8>) {
        out.push(RECORD_BATCH);
        out.extend_from_slice(&now.0.to_le_bytes());
        out.extend_from_slice(&(commands.len() as u32).to_le_bytes());
        for c in commands {
            out.extend_from_slice(&c.id.0.to_le_bytes());
            out.extend_from_slice(&c.who.participant.0.to_le_bytes());
            out.push(u8::from(c.who.admin));
            out.extend_from_slice(&c.fingerprint.to_le_bytes());
            encode_command(&c.command, out);
        }
    }

    pub fn encode_expire(now: Timestamp, out: &mut Vec<u8>) {
        out.push(RECORD_EXPIRE);
        out.extend_from_slice(&now.0.to_le_bytes());
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SwitchRecord::Batch { now, commands } => Self::encode_batch(*now, commands, out),
            SwitchRecord::Expire { now } => Self::encode_expire(*now, out),
        }
    }

    /// Decodes a whole payload; never panics.
    pub fn decode(payload: &[u8]) -> Result<SwitchRecord, JournalError> {
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        let at = r.at;
        let record = match r.u8("record type")? {
            RECORD_BATCH => {
                let now = Timestamp(r.u64("now")?);
                let count_at = r.at;
                let count = r.u32("command count")?;
                // The smallest command (a reversal) takes 50 bytes: bound the allocation.
                if (count as usize).saturating_mul(50) > payload.len() {
                    return Err(JournalError::Bad {
                        offset: count_at,
                        what: "command count",
                        value: u128::from(count),
                    });
                }
                let mut commands = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let id = RequestId(r.u128("request id")?);
                    let participant = ParticipantId(r.u64("participant")?);
                    let admin = r.bool("admin")?;
                    let fingerprint = r.u64("fingerprint")?;
                    let command = decode_command(&mut r)?;
                    commands.push(Logged {
                        id,
                        who: Identity { participant, admin },
                        fingerprint,
                        command,
                    });
                }
                SwitchRecord::Batch { now, commands }
            }
            RECORD_EXPIRE => SwitchRecord::Expire {
                now: Timestamp(r.u64("now")?),
            },
            tag => {
                return Err(JournalError::Bad {
                    offset: at,
                    what: "record type",
                    value: u128::from(tag),
                });
            }
        };
        if r.at != payload.len() {
            return Err(JournalError::Trailing {
                offset: r.at,
                extra: payload.len() - r.at,
            });
        }
        Ok(record)
    }
}

/// Applies one logged record to `core` again: recovery, and snapshots built by replay.
pub fn replay(core: &mut crate::core::Core, payload: &[u8]) -> Result<(), JournalError> {
    match SwitchRecord::decode(payload)? {
        SwitchRecord::Batch { now, commands } => core.replay(&commands, now),
        SwitchRecord::Expire { now } => {
            core.expire(now);
        }
    }
    Ok(())
}

fn decode_command(r: &mut Reader<'_>) -> Result<Command, JournalError> {
    let at = r.at;
    Ok(match r.u8("command")? {
        C_CREATE_PARTICIPANT => Command::CreateParticipant(CreateParticipant {
            participant: ParticipantId(r.u64("participant")?),
            name: r.string("name")?,
            roles: r.u8("roles")?,
        }),
        C_CREATE_ACCOUNT => {
            let account = AccountId(r.u128("account")?);
            let owner = ParticipantId(r.u64("owner")?);
            let currency = r.currency()?;
            let flags_at = r.at;
            let bits = r.u16("flags")?;
            let flags = AccountFlags::from_bits(bits).ok_or(JournalError::Bad {
                offset: flags_at,
                what: "account flags",
                value: u128::from(bits),
            })?;
            let number = r.string("number")?;
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
            currency: r.currency()?,
        }),
        C_SET_LIMITS => Command::SetLimits(SetLimits {
            participant: ParticipantId(r.u64("participant")?),
            currency: r.currency()?,
            net_debit_cap: Amount(r.u64("net debit cap")?),
        }),
        C_AUTHORIZE => Command::Authorize {
            card: AccountId(r.u128("card account")?),
            merchant: AccountId(r.u128("merchant account")?),
            amount: Amount(r.u64("amount")?),
            currency: r.currency()?,
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
            currency: r.currency()?,
        },
        C_REFUND => Command::Refund(Refund {
            original: RequestId(r.u128("original")?),
            amount: Amount(r.u64("amount")?),
            currency: r.currency()?,
        }),
        C_CLOSE_WINDOW => {
            let window = r.u64("window")?;
            let purchase = r.rate()?;
            let refund = r.rate()?;
            let count_at = r.at;
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
                let rates = (r.rate()?, r.rate()?);
                by_issuer.insert(issuer, rates);
            }
            Command::CloseWindow {
                window,
                fees: Arc::new(FeeSchedule {
                    purchase,
                    refund,
                    by_issuer,
                }),
            }
        }
        tag => {
            return Err(JournalError::Bad {
                offset: at,
                what: "command",
                value: u128::from(tag),
            });
        }
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], JournalError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(JournalError::Truncated {
                offset: self.at,
                what,
            })?;
        let slice = &self.buf[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], JournalError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, JournalError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, JournalError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, JournalError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, JournalError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn u128(&mut self, what: &'static str) -> Result<u128, JournalError> {
        Ok(u128::from_le_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, JournalError> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(JournalError::Bad {
                offset: at,
                what,
                value: u128::from(v),
            }),
        }
    }

    fn currency(&mut self) -> Result<Currency, JournalError> {
        let at = self.at;
        let numeric = self.u16("currency")?;
        Currency::from_numeric(numeric).ok_or(JournalError::Bad {
            offset: at,
            what: "currency",
            value: u128::from(numeric),
        })
    }

    fn decimal(&mut self, what: &'static str) -> Result<Decimal, JournalError> {
        let at = self.at;
        let bytes: [u8; 16] = self.array(what)?;
        // Only what `Decimal::serialize` writes: flags with a scale of at most 28 and no
        // other bits.
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

    fn rate(&mut self) -> Result<FeeRate, JournalError> {
        Ok(FeeRate {
            percent: self.decimal("fee percent")?,
            fixed: self.decimal("fee fixed part")?,
        })
    }

    fn string(&mut self, what: &'static str) -> Result<String, JournalError> {
        let len_at = self.at;
        let len = usize::from(self.u8(what)?);
        // The writer never writes longer (`put_str`): a longer one is not a record of ours.
        if len > NAME_LEN_MAX {
            return Err(JournalError::Bad {
                offset: len_at,
                what,
                value: len as u128,
            });
        }
        let at = self.at;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| JournalError::Bad {
            offset: at,
            what,
            value: len as u128,
        })
    }
}
