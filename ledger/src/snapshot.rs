//! The whole ledger state as bytes, and back.
//!
//! `Ledger::capture` copies the state under every lock (a memcpy of each shard's packed
//! records: the only pause), and `Capture::encode` serialises it afterwards, off the locks.
//! `Ledger::restore` rebuilds a ledger whose digest equals the captured one's. The layout is in
//! `docs/WAL-FORMAT.md` ("Snapshot payload"); the file around it carries the checksum.

use crate::account::{Account, AccountFlags, Balances};
use crate::event::{Event, Op};
use crate::ledger::{Config, ConfigError, Ledger};
use crate::outcome::Outcome;
use crate::record::{Reader, RecordError, decode_event, encode_event};
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

impl Capture {
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Serialises the capture.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.shards.to_le_bytes());
        let accounts: usize = self.accounts.iter().map(Vec::len).sum();
        out.extend_from_slice(&(accounts as u64).to_le_bytes());
        for a in self.accounts.iter().flatten() {
            out.extend_from_slice(&a.id.0.to_le_bytes());
            out.extend_from_slice(&a.currency.numeric().to_le_bytes());
            out.extend_from_slice(&a.owner.0.to_le_bytes());
            out.extend_from_slice(&a.flags.bits().to_le_bytes());
            let b = &a.balances;
            for v in [
                b.debits_pending,
                b.debits_posted,
                b.credits_pending,
                b.credits_posted,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for shard in &self.transfers {
            out.extend_from_slice(&shard.forgotten.to_le_bytes());
            out.extend_from_slice(&(shard.len() as u64).to_le_bytes());
            for r in shard.records() {
                encode_record(&r, out);
            }
        }
    }
}

// A remembered transfer: its event (as logged), the resolved accounts, state and time.
fn encode_record(r: &TransferRecord, out: &mut Vec<u8>) {
    encode_event(&Event::new(Op::Transfer(r.event)), out);
    out.extend_from_slice(&r.debit_account_id.0.to_le_bytes());
    out.extend_from_slice(&r.credit_account_id.0.to_le_bytes());
    let (tag, link, amount) = match r.state {
        S::Posted => (0u8, 0u128, 0u64),
        S::Pending => (1, 0, 0),
        S::PendingPosted { by, amount } => (2, by.0, amount.0),
        S::PendingVoided { by } => (3, by.0, 0),
        S::PendingExpired => (4, 0, 0),
        S::Voided => (5, 0, 0),
        S::Declined(outcome) => (6, 0, u64::from(outcome.code())),
    };
    out.push(tag);
    out.extend_from_slice(&link.to_le_bytes());
    out.extend_from_slice(&amount.to_le_bytes());
    out.extend_from_slice(&r.created_at.0.to_le_bytes());
}

fn decode_record(r: &mut Reader<'_>) -> Result<TransferRecord, SnapshotError> {
    let event = decode_transfer_event(r)?;
    let debit_account_id = AccountId(r.u128("record debit account")?);
    let credit_account_id = AccountId(r.u128("record credit account")?);
    let tag_at = r.at;
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
    let at = r.at;
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
        let mut r = Reader { buf: bytes, at: 0 };
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
            let currency = r.currency()?;
            let owner = ParticipantId(r.u64("owner")?);
            let at = r.at;
            let bits = r.u16("account flags")?;
            let flags = AccountFlags::from_bits(bits)
                .ok_or(RecordError::UnknownFlags { offset: at, bits })?;
            let balances = Balances {
                debits_pending: r.u128("debits pending")?,
                debits_posted: r.u128("debits posted")?,
                credits_pending: r.u128("credits pending")?,
                credits_posted: r.u128("credits posted")?,
            };
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
        if r.at != bytes.len() {
            return Err(RecordError::Trailing {
                offset: r.at,
                extra: bytes.len() - r.at,
            }
            .into());
        }
        ledger.set_sequence(sequence);
        Ok(ledger)
    }
}
