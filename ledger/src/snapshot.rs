//! The whole ledger state as bytes, and back.
//!
//! `Ledger::capture` copies the state under every lock (a memcpy of each shard's packed
//! records: the only pause), and `Capture::encode` serialises it afterwards, off the locks.
//! `Ledger::restore` rebuilds a ledger whose digest equals the captured one's. The layout is in
//! `docs/WAL-FORMAT.md` ("Snapshot payload"); the file around it carries the checksum.

use crate::account::{Account, AccountFlags, Balances};
use crate::codec::{self, CodecError, Reader};
use crate::event::{Event, Op};
use crate::ledger::{Config, ConfigError, Ledger};
use crate::outcome::Outcome;
use crate::record::{RecordError, currency, decode_event, encode_event};
use crate::store::ShardCopy;
use crate::transfer::{Transfer, TransferRecord, TransferState as S};
use crate::types::{AccountId, Amount, ParticipantId, Timestamp, TransferId};

const SNAPSHOT_VERSION: u32 = 1;

/// A consistent copy of the ledger's state at one sequence number.
pub struct Capture {
    pub(crate) sequence: u64,
    pub(crate) shards: u32,
    pub(crate) accounts: Vec<Vec<Account>>,
    /// Per transfer shard: its packed records, oldest first, and the forgotten counter.
    pub(crate) transfers: Vec<ShardCopy>,
}

/// Why snapshot bytes could not become a ledger.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {0}")]
    Malformed(#[from] RecordError),
    #[error("snapshot format version {0} is not supported (this build reads {SNAPSHOT_VERSION})")]
    Version(u32),
    #[error(
        "snapshot was taken with {snapshot} shards but the configuration has {configured}; \
         shard placement is part of the state, so they must match"
    )]
    Shards { snapshot: u32, configured: usize },
    #[error("snapshot: invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("snapshot: {0}")]
    Inconsistent(String),
}

impl From<CodecError> for SnapshotError {
    fn from(error: CodecError) -> Self {
        SnapshotError::Malformed(error.into())
    }
}

impl Capture {
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Serialises the capture.
    pub fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u32(out, SNAPSHOT_VERSION);
        codec::put_u64(out, self.sequence);
        codec::put_u32(out, self.shards);
        let accounts: usize = self.accounts.iter().map(Vec::len).sum();
        codec::put_u64(out, accounts as u64);
        for a in self.accounts.iter().flatten() {
            codec::put_u128(out, a.id.0);
            codec::put_u16(out, a.currency.numeric());
            codec::put_u64(out, a.owner.0);
            codec::put_u16(out, a.flags.bits());
            a.balances.put(out);
        }
        for shard in &self.transfers {
            codec::put_u64(out, shard.forgotten);
            codec::put_u64(out, shard.len() as u64);
            for r in shard.records() {
                encode_record(&r, out);
            }
        }
    }
}

// A remembered transfer: its event (as logged), the resolved accounts, state and time.
fn encode_record(r: &TransferRecord, out: &mut Vec<u8>) {
    encode_event(&Event::new(Op::Transfer(r.event)), out);
    codec::put_u128(out, r.debit_account_id.0);
    codec::put_u128(out, r.credit_account_id.0);
    let (tag, link, amount) = match r.state {
        S::Posted => (0u8, 0u128, 0u64),
        S::Pending => (1, 0, 0),
        S::PendingPosted { by, amount } => (2, by.0, amount.0),
        S::PendingVoided { by } => (3, by.0, 0),
        S::PendingExpired => (4, 0, 0),
        S::Voided => (5, 0, 0),
        S::Declined(outcome) => (6, 0, u64::from(outcome.code())),
    };
    codec::put_u8(out, tag);
    codec::put_u128(out, link);
    codec::put_u64(out, amount);
    codec::put_u64(out, r.created_at.0);
}

fn decode_record(r: &mut Reader<'_>) -> Result<TransferRecord, SnapshotError> {
    let event = decode_transfer_event(r)?;
    let debit_account_id = AccountId(r.u128("record debit account")?);
    let credit_account_id = AccountId(r.u128("record credit account")?);
    let tag_at = r.offset();
    let tag = r.u8("record state")?;
    let link = TransferId(r.u128("record link")?);
    let amount = r.u64("record amount")?;
    let created_at = Timestamp(r.u64("record time")?);
    let state = match tag {
        0 => S::Posted,
        1 => S::Pending,
        2 => S::PendingPosted {
            by: link,
            amount: Amount(amount),
        },
        3 => S::PendingVoided { by: link },
        4 => S::PendingExpired,
        5 => S::Voided,
        6 => S::Declined(
            u8::try_from(amount)
                .ok()
                .and_then(Outcome::from_code)
                .ok_or_else(|| {
                    SnapshotError::Inconsistent(format!(
                        "offset {tag_at}: unknown outcome {amount}"
                    ))
                })?,
        ),
        other => {
            return Err(SnapshotError::Inconsistent(format!(
                "offset {tag_at}: unknown transfer state {other}"
            )));
        }
    };
    Ok(TransferRecord {
        event,
        debit_account_id,
        credit_account_id,
        state,
        created_at,
    })
}

fn decode_transfer_event(r: &mut Reader<'_>) -> Result<Transfer, SnapshotError> {
    let at = r.offset();
    match decode_event(r)?.op {
        Op::Transfer(t) => Ok(t),
        _ => Err(SnapshotError::Inconsistent(format!(
            "offset {at}: a remembered transfer that is not a transfer"
        ))),
    }
}

impl Ledger {
    /// Copies the state under every lock. The pause is a copy of each shard's memory; the
    /// encoding happens later, in `Capture::encode`, without any lock.
    pub fn capture(&self) -> Capture {
        self.capture_then(|| ()).0
    }

    /// `capture`, also running `also` under the locks (to read what the state corresponds to,
    /// such as the last log sequence submitted).
    pub fn capture_then<R>(&self, also: impl FnOnce() -> R) -> (Capture, R) {
        let (sequence, accounts, transfers, r) = self.copy_state(also);
        (
            Capture {
                sequence,
                shards: self.config().shards as u32,
                accounts,
                transfers,
            },
            r,
        )
    }

    /// Rebuilds a ledger from an encoded capture.
    pub fn restore(config: Config, bytes: &[u8]) -> Result<Ledger, SnapshotError> {
        let mut r = Reader::new(bytes);
        let version = r.u32("snapshot version")?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let sequence = r.u64("sequence")?;
        let shards = r.u32("shard count")?;
        if shards as usize != config.shards {
            return Err(SnapshotError::Shards {
                snapshot: shards,
                configured: config.shards,
            });
        }
        let ledger = Ledger::new(config)?;
        let accounts = r.u64("account count")?;
        let mut loaded = Vec::new();
        for _ in 0..accounts {
            let id = AccountId(r.u128("account id")?);
            let currency = currency(&mut r)?;
            let owner = ParticipantId(r.u64("owner")?);
            let at = r.offset();
            let bits = r.u16("account flags")?;
            let flags = AccountFlags::from_bits(bits)
                .ok_or(RecordError::UnknownFlags { offset: at, bits })?;
            let balances = Balances::read(&mut r)?;
            loaded.push(Account {
                id,
                currency,
                owner,
                flags,
                balances,
            });
            if loaded.len() >= 65_536 {
                ledger
                    .load_accounts(&loaded)
                    .map_err(SnapshotError::Inconsistent)?;
                loaded.clear();
            }
        }
        ledger
            .load_accounts(&loaded)
            .map_err(SnapshotError::Inconsistent)?;
        for shard in 0..shards as usize {
            let forgotten = r.u64("forgotten count")?;
            let count = r.u64("record count")?;
            let mut records = Vec::new();
            for _ in 0..count {
                records.push(decode_record(&mut r)?);
                if records.len() >= 65_536 {
                    ledger
                        .load_transfers(shard, &records, 0)
                        .map_err(SnapshotError::Inconsistent)?;
                    records.clear();
                }
            }
            ledger
                .load_transfers(shard, &records, forgotten)
                .map_err(SnapshotError::Inconsistent)?;
        }
        r.finish()?;
        ledger.set_sequence(sequence);
        Ok(ledger)
    }
}
