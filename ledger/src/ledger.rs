//! The sharded ledger: where batches of events are applied.
//!
//! Accounts live in account shards and transfers in transfer shards, each shard behind its own
//! `parking_lot::Mutex`, placed by a fixed hash of the id. `apply` works in two phases:
//!
//! 1. Lock, in ascending order, the transfer shards of every transfer id and pending id in the
//!    batch; then, knowing the accounts of any pending transfer being posted or voided, lock the
//!    account shards of every account the batch touches, again in ascending order. Every caller
//!    takes transfer shards before account shards and each kind in ascending order, so two
//!    batches can never wait on each other in a cycle.
//! 2. Apply the events in order, then release everything.
//!
//! That is strict two-phase locking, so concurrent batches behave as if they ran one after the
//! other, each at some instant between its call and its return: batches on disjoint shards run
//! in parallel, conflicting ones in the order they took their first common lock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::account::{Account, AccountFlags, Balances, NewAccount};
use crate::currency::Currency;
use crate::digest::{Digest, EntryHasher, shard_of};
use crate::event::{Event, Op};
use crate::outcome::Outcome;
use crate::store::{ShardCopy, TransferShard};
use crate::transfer::{Expired, Transfer, TransferKind, TransferRecord, TransferState};
use crate::types::{AccountId, Amount, Timestamp, TransferId};

type Hasher = foldhash::fast::RandomState;

/// The most shards a ledger can have (the lock set of a batch is a bitset of this size).
pub const SHARDS_MAX: usize = 1024;

/// Sizes and bounds. Every collection the ledger keeps is bounded by one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of account shards and of transfer shards: a power of two, at most `SHARDS_MAX`.
    pub shards: usize,
    /// Accounts the ledger will hold. Each shard holds at most `ceil(accounts_max / shards)`;
    /// past that, creation is refused with `AccountLimitReached`.
    pub accounts_max: u64,
    /// Transfers (applied or declined) remembered for idempotency. Each transfer shard keeps at
    /// most `ceil(transfers_remembered_max / shards)` records; past that, the oldest resolved
    /// ones are forgotten (see `docs/ARCHITECTURE.md`, "Idempotency horizon").
    pub transfers_remembered_max: u64,
    /// Live holds. Each transfer shard keeps at most `ceil(pending_max / shards)`; past that, a
    /// new hold is refused with `PendingLimitReached`.
    pub pending_max: u64,
    /// Events in one batch.
    pub batch_len_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shards: 64,
            accounts_max: 10_000_000,
            transfers_remembered_max: 10_000_000,
            pending_max: 1_000_000,
            batch_len_max: 8_190,
        }
    }
}

/// A configuration the ledger cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("shards must be a power of two between 1 and {SHARDS_MAX}, not {0}")]
    Shards(usize),
    #[error("{name} must be at least 1")]
    Zero { name: &'static str },
    #[error("{name} must be at most {REMEMBERED_LIMIT}")]
    TooLarge { name: &'static str },
}

/// The most `transfers_remembered_max` and `pending_max` may be: a remembered queue, which
/// holds up to the one plus the live holds of the other (and a few waiting to be forgotten),
/// then holds fewer than 2^32 records, which `PositionIndex` needs (it keeps 32 bits of a
/// position). Far beyond any machine's memory at over 100 bytes a record.
pub const REMEMBERED_LIMIT: u64 = 1 << 30;

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.shards.is_power_of_two() || self.shards > SHARDS_MAX {
            return Err(ConfigError::Shards(self.shards));
        }
        for (name, value) in [
            ("accounts_max", self.accounts_max),
            ("transfers_remembered_max", self.transfers_remembered_max),
            ("pending_max", self.pending_max),
            ("batch_len_max", self.batch_len_max as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        for (name, value) in [
            ("transfers_remembered_max", self.transfers_remembered_max),
            ("pending_max", self.pending_max),
        ] {
            if value > REMEMBERED_LIMIT {
                return Err(ConfigError::TooLarge { name });
            }
        }
        Ok(())
    }

    fn per_shard(&self, total: u64) -> u64 {
        total.div_ceil(self.shards as u64)
    }
}

/// How many events the ledger reads the index entries of at a time, each time it reaches the
/// end of those read, before applying them: reads issued together overlap instead of each
/// waiting for its cache miss, and what they bring in is still in cache when its turn comes
/// (a whole batch's worth read first would be pushed out again by the time the last of
/// thousands is applied).
const TOUCH_AHEAD: usize = 64;

/// A batch the ledger refused as a whole; nothing in it was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {len} events is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Per-currency sums over all accounts. Double entry means, at every instant a reader can see,
/// `debits_posted == credits_posted` and `debits_pending == credits_pending`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub accounts: u64,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

impl Totals {
    pub fn is_balanced(&self) -> bool {
        self.debits_pending == self.credits_pending && self.debits_posted == self.credits_posted
    }
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub accounts: u64,
    pub transfers_remembered: u64,
    pub pending_live: u64,
    /// Resolved transfers forgotten because the idempotency bound was reached.
    pub transfers_forgotten: u64,
    /// Batches and expiry passes applied (the ledger's logical clock).
    pub sequence: u64,
}

#[derive(Default)]
struct AccountShard {
    accounts: HashMap<AccountId, Account, Hasher>,
}

/// The ledger. `Sync`: share it between threads behind an `Arc`.
pub struct Ledger {
    config: Config,
    mask: usize,
    accounts_per_shard: u64,
    remembered_per_shard: u64,
    pending_per_shard: u64,
    account_shards: Box<[Mutex<AccountShard>]>,
    transfer_shards: Box<[Mutex<TransferShard>]>,
    sequence: AtomicU64,
}

/// A set of shard indexes, iterated in ascending order.
struct ShardSet([u64; SHARDS_MAX / 64]);

impl ShardSet {
    fn new() -> Self {
        ShardSet([0; SHARDS_MAX / 64])
    }

    fn insert(&mut self, shard: usize) {
        self.0[shard / 64] |= 1 << (shard % 64);
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + bit)
            })
        })
    }
}

impl Ledger {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let shards = config.shards;
        Ok(Ledger {
            mask: shards - 1,
            accounts_per_shard: config.per_shard(config.accounts_max),
            remembered_per_shard: config.per_shard(config.transfers_remembered_max),
            pending_per_shard: config.per_shard(config.pending_max),
            account_shards: (0..shards).map(|_| Mutex::default()).collect(),
            transfer_shards: (0..shards).map(|_| Mutex::default()).collect(),
            sequence: AtomicU64::new(0),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reserves, and writes once, the memory for every transfer the ledger will remember
    /// (`transfers_remembered_max`), so that applying never grows a table or takes a page
    /// fault for it; returns the bytes reserved. Slow (it writes all of it) and idempotent;
    /// what the ledger holds is unchanged. Holds kept past the bound still grow on demand.
    pub fn preallocate(&self) -> usize {
        // A batch remembers its transfers before the shard forgets past its bound.
        let records = usize::try_from(self.remembered_per_shard)
            .unwrap_or(usize::MAX)
            .saturating_add(self.config.batch_len_max);
        self.transfer_shards
            .iter()
            .map(|shard| shard.lock().preallocate(records))
            .sum()
    }

    fn account_shard(&self, id: AccountId) -> usize {
        shard_of(id.0, self.mask)
    }

    fn transfer_shard(&self, id: TransferId) -> usize {
        shard_of(id.0, self.mask)
    }

    /// Applies a batch at time `now` and returns one outcome per event, in order.
    pub fn apply(&self, events: &[Event], now: Timestamp) -> Result<Vec<Outcome>, BatchError> {
        self.apply_with(events, now, |_, _| ())
            .map(|(outcomes, ())| outcomes)
    }

    /// Like `apply`, and calls `applied(sequence, outcomes)` while the batch's locks are still
    /// held. Batches that conflict get increasing sequence numbers in the order they took
    /// effect, so a log appended to from `applied` replays to the same state.
    pub fn apply_with<R>(
        &self,
        events: &[Event],
        now: Timestamp,
        applied: impl FnOnce(u64, &[Outcome]) -> R,
    ) -> Result<(Vec<Outcome>, R), BatchError> {
        if events.len() > self.config.batch_len_max {
            return Err(BatchError::TooLarge {
                len: events.len(),
                max: self.config.batch_len_max,
            });
        }
        let mut locked = self.lock_for(events);
        let outcomes = locked.apply_events(events, now);
        locked.forget_beyond_bound(events.len());
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        // One shard a batch grows ahead of need (see `TransferShard::grow_ahead`).
        let n = sequence as usize & self.mask;
        if let Some(shard) = locked.transfers[n].as_deref_mut() {
            let bound = self.remembered_per_shard as usize + self.config.batch_len_max;
            shard.grow_ahead(bound, n, self.mask + 1);
        }
        let r = applied(sequence, &outcomes);
        drop(locked);
        Ok((outcomes, r))
    }

    /// Voids every hold whose expiry is at or before `now` and returns them in (expiry, id)
    /// order, for the caller to log.
    pub fn expire(&self, now: Timestamp) -> Vec<Expired> {
        self.expire_at_most(now, usize::MAX)
    }

    /// Like `expire`, but voids at most `limit` holds: the first of the due ones in (expiry,
    /// id) order, so that passes of `limit` until one returns fewer void the same holds in
    /// the same order as one pass without a limit. A pass is bounded work, and a replay of
    /// `(now, limit)` voids the same holds.
    pub fn expire_at_most(&self, now: Timestamp, limit: usize) -> Vec<Expired> {
        self.expire_at_most_with(now, limit, |_, _| ()).0
    }

    /// Like `expire`, and calls `applied(sequence, expired)` while every lock is held.
    pub fn expire_with<R>(
        &self,
        now: Timestamp,
        applied: impl FnOnce(u64, &[Expired]) -> R,
    ) -> (Vec<Expired>, R) {
        self.expire_at_most_with(now, usize::MAX, applied)
    }

    fn expire_at_most_with<R>(
        &self,
        now: Timestamp,
        limit: usize,
        applied: impl FnOnce(u64, &[Expired]) -> R,
    ) -> (Vec<Expired>, R) {
        let mut locked = self.lock_all();
        let expired = locked.expire(now, limit);
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let r = applied(sequence, &expired);
        drop(locked);
        (expired, r)
    }

    /// The earliest expiry of any live hold, if there is one.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.transfer_shards
            .iter()
            .filter_map(|s| s.lock().expiries.first().map(|&(at, _)| at))
            .min()
    }

    pub fn account(&self, id: AccountId) -> Option<Account> {
        self.account_shards[self.account_shard(id)]
            .lock()
            .accounts
            .get(&id)
            .copied()
    }

    pub fn transfer(&self, id: TransferId) -> Option<TransferRecord> {
        self.transfer_shards[self.transfer_shard(id)].lock().get(id)
    }

    /// Per-currency totals, read under all account locks (a consistent cut).
    pub fn totals(&self) -> BTreeMap<Currency, Totals> {
        let guards: Vec<_> = self.account_shards.iter().map(|s| s.lock()).collect();
        let mut totals: BTreeMap<Currency, Totals> = BTreeMap::new();
        for account in guards.iter().flat_map(|g| g.accounts.values()) {
            let t = totals.entry(account.currency).or_default();
            let b = &account.balances;
            // Every unit in a balance came from a u64 transfer amount, so no sum of them can
            // reach 2^128 before 2^64 transfers have been applied.
            t.accounts += 1;
            t.debits_pending = t.debits_pending.wrapping_add(b.debits_pending);
            t.debits_posted = t.debits_posted.wrapping_add(b.debits_posted);
            t.credits_pending = t.credits_pending.wrapping_add(b.credits_pending);
            t.credits_posted = t.credits_posted.wrapping_add(b.credits_posted);
        }
        totals
    }

    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for shard in self.account_shards.iter() {
            stats.accounts += shard.lock().accounts.len() as u64;
        }
        for shard in self.transfer_shards.iter() {
            let shard = shard.lock();
            stats.transfers_remembered += shard.len() as u64;
            stats.pending_live += shard.pending_live;
            stats.transfers_forgotten += shard.forgotten;
        }
        stats.sequence = self.sequence.load(Ordering::Relaxed);
        stats
    }

    /// The state digest, read under every lock. Covers accounts, remembered transfers with
    /// their place in the eviction order, and the counters recovery must reproduce.
    pub fn digest(&self) -> Digest {
        let locked = self.lock_all();
        let mut sum = 0u128;
        for shard in locked.accounts.iter().flatten() {
            for a in shard.accounts.values() {
                sum = sum.wrapping_add(hash_account(a));
            }
        }
        for (index, shard) in locked.transfers.iter().flatten().enumerate() {
            for (position, record) in shard.iter().enumerate() {
                sum = sum.wrapping_add(hash_record(&record, position as u64));
            }
            let mut h = EntryHasher::new(3);
            h.word(index as u64)
                .word(shard.pending_live)
                .word(shard.forgotten);
            sum = sum.wrapping_add(h.finish());
        }
        Digest(sum)
    }

    /// The state, copied under every lock, for a snapshot; `also` runs under the locks too.
    #[allow(clippy::type_complexity)]
    pub(crate) fn copy_state<R>(
        &self,
        also: impl FnOnce() -> R,
    ) -> (u64, Vec<Vec<Account>>, Vec<ShardCopy>, R) {
        let locked = self.lock_all();
        let r = also();
        let sequence = self.sequence.load(Ordering::Relaxed);
        let accounts = locked
            .accounts
            .iter()
            .flatten()
            .map(|shard| shard.accounts.values().copied().collect())
            .collect();
        let transfers = locked
            .transfers
            .iter()
            .flatten()
            .map(|s| s.copy())
            .collect();
        (sequence, accounts, transfers, r)
    }

    /// Restoring a snapshot: puts accounts back.
    pub(crate) fn load_accounts(&self, accounts: &[Account]) -> Result<(), String> {
        for account in accounts {
            let mut shard = self.account_shards[self.account_shard(account.id)].lock();
            if shard.accounts.len() as u64 >= self.accounts_per_shard {
                return Err(format!(
                    "account {} is over the configured accounts_max of {}",
                    account.id, self.config.accounts_max
                ));
            }
            if shard.accounts.insert(account.id, *account).is_some() {
                return Err(format!("account {} appears twice", account.id));
            }
        }
        Ok(())
    }

    /// Restoring a snapshot: appends one shard's records, oldest first.
    pub(crate) fn load_transfers(
        &self,
        shard_index: usize,
        records: &[TransferRecord],
        forgotten: u64,
    ) -> Result<(), String> {
        let mut shard = self
            .transfer_shards
            .get(shard_index)
            .ok_or_else(|| format!("transfer shard {shard_index} does not exist"))?
            .lock();
        for record in records {
            let id = record.event.id;
            if self.transfer_shard(id) != shard_index {
                return Err(format!("transfer {id} is not in shard {shard_index}"));
            }
            if shard.contains(id) {
                return Err(format!("transfer {id} appears twice"));
            }
            if let (TransferState::Pending, TransferKind::Pending { expires_at }) =
                (record.state, record.event.kind)
            {
                shard.pending_live += 1;
                if expires_at != Timestamp::NEVER {
                    shard.expiries.insert((expires_at, id));
                }
            }
            shard.push(record);
        }
        shard.forgotten += forgotten;
        Ok(())
    }

    pub(crate) fn set_sequence(&self, sequence: u64) {
        self.sequence.store(sequence, Ordering::Relaxed);
    }

    fn lock_all(&self) -> Locked<'_> {
        Locked {
            ledger: self,
            transfers: self
                .transfer_shards
                .iter()
                .map(|s| Some(s.lock()))
                .collect(),
            accounts: self.account_shards.iter().map(|s| Some(s.lock())).collect(),
        }
    }

    fn lock_for(&self, events: &[Event]) -> Locked<'_> {
        let mut transfer_set = ShardSet::new();
        for event in events {
            if let Op::Transfer(t) = &event.op {
                transfer_set.insert(self.transfer_shard(t.id));
                if let Some(pending_id) = t.kind.pending_id() {
                    transfer_set.insert(self.transfer_shard(pending_id));
                }
            }
        }
        let mut transfers: Vec<Option<MutexGuard<'_, TransferShard>>> =
            (0..self.config.shards).map(|_| None).collect();
        for shard in transfer_set.iter() {
            transfers[shard] = Some(self.transfer_shards[shard].lock());
        }

        let mut account_set = ShardSet::new();
        // Pending transfers created by this batch, for posts and voids that inherit accounts.
        let mut batch_pending: Option<HashMap<TransferId, Vec<(AccountId, AccountId)>>> = None;
        for event in events {
            match &event.op {
                Op::CreateAccount(a) => account_set.insert(self.account_shard(a.id)),
                Op::SetAccountClosed { id, .. } => account_set.insert(self.account_shard(*id)),
                Op::Transfer(t) => {
                    account_set.insert(self.account_shard(t.debit_account_id));
                    account_set.insert(self.account_shard(t.credit_account_id));
                    let Some(pending_id) = t.kind.pending_id() else {
                        continue;
                    };
                    let stored = transfers[self.transfer_shard(pending_id)]
                        .as_ref()
                        .expect("pending shard locked above")
                        .get(pending_id)
                        .map(|r| (r.debit_account_id, r.credit_account_id));
                    if let Some((debit, credit)) = stored {
                        account_set.insert(self.account_shard(debit));
                        account_set.insert(self.account_shard(credit));
                        continue;
                    }
                    let in_batch = batch_pending.get_or_insert_with(|| {
                        let mut map: HashMap<TransferId, Vec<(AccountId, AccountId)>> =
                            HashMap::new();
                        for e in events {
                            if let Op::Transfer(p) = &e.op
                                && matches!(p.kind, TransferKind::Pending { .. })
                            {
                                map.entry(p.id)
                                    .or_default()
                                    .push((p.debit_account_id, p.credit_account_id));
                            }
                        }
                        map
                    });
                    for &(debit, credit) in in_batch.get(&pending_id).into_iter().flatten() {
                        account_set.insert(self.account_shard(debit));
                        account_set.insert(self.account_shard(credit));
                    }
                }
            }
        }
        let mut accounts: Vec<Option<MutexGuard<'_, AccountShard>>> =
            (0..self.config.shards).map(|_| None).collect();
        for shard in account_set.iter() {
            accounts[shard] = Some(self.account_shards[shard].lock());
        }
        Locked {
            ledger: self,
            transfers,
            accounts,
        }
    }
}

fn hash_account(a: &Account) -> u128 {
    let b = &a.balances;
    EntryHasher::new(1)
        .wide(a.id.0)
        .word(u64::from(a.currency.numeric()))
        .word(a.owner.0)
        .word(u64::from(a.flags.bits()))
        .wide(b.debits_pending)
        .wide(b.debits_posted)
        .wide(b.credits_pending)
        .wide(b.credits_posted)
        .finish()
}

fn hash_record(r: &TransferRecord, position: u64) -> u128 {
    let e = &r.event;
    let mut h = EntryHasher::new(2);
    h.word(position)
        .wide(e.id.0)
        .wide(e.debit_account_id.0)
        .wide(e.credit_account_id.0)
        .word(e.amount.0)
        .word(u64::from(e.currency.numeric()))
        .word(u64::from(e.code));
    match e.kind {
        TransferKind::Single => h.word(0),
        TransferKind::Pending { expires_at } => h.word(1).word(expires_at.0),
        TransferKind::Post { pending_id } => h.word(2).wide(pending_id.0),
        TransferKind::Void { pending_id } => h.word(3).wide(pending_id.0),
    };
    h.wide(r.debit_account_id.0)
        .wide(r.credit_account_id.0)
        .word(r.created_at.0);
    match r.state {
        TransferState::Posted => h.word(10),
        TransferState::Pending => h.word(11),
        TransferState::PendingPosted { by, amount } => h.word(12).wide(by.0).word(amount.0),
        TransferState::PendingVoided { by } => h.word(13).wide(by.0),
        TransferState::PendingExpired => h.word(14),
        TransferState::Voided => h.word(15),
        TransferState::Declined(outcome) => h.word(16).word(u64::from(outcome.code())),
    };
    h.finish()
}

/// How to take back one change of a linked chain that failed later on.
enum Undo {
    AccountCreated(AccountId),
    AccountChanged(Account),
    TransferInserted(TransferId),
    PendingChanged { id: TransferId, old: TransferState },
}

/// The shards a batch holds, and the application logic that runs under them.
struct Locked<'a> {
    ledger: &'a Ledger,
    transfers: Vec<Option<MutexGuard<'a, TransferShard>>>,
    accounts: Vec<Option<MutexGuard<'a, AccountShard>>>,
}

/// Validation that needs nothing but the event itself.
fn check_transfer_fields(t: &Transfer) -> Result<(), Outcome> {
    if t.id.0 == 0 {
        return Err(Outcome::IdMustNotBeZero);
    }
    if t.id.0 == u128::MAX {
        return Err(Outcome::IdMustNotBeIntMax);
    }
    let resolves = match t.kind {
        TransferKind::Post { pending_id } | TransferKind::Void { pending_id } => {
            if pending_id.0 == 0 {
                return Err(Outcome::PendingIdMustNotBeZero);
            }
            if pending_id.0 == u128::MAX {
                return Err(Outcome::PendingIdMustNotBeIntMax);
            }
            if pending_id == t.id {
                return Err(Outcome::PendingIdMustBeDifferent);
            }
            true
        }
        TransferKind::Pending { .. } | TransferKind::Single => false,
    };
    // Posts and voids may leave the accounts zero to mean "those of the pending transfer".
    let (debit, credit) = (t.debit_account_id.0, t.credit_account_id.0);
    if debit == 0 && !resolves {
        return Err(Outcome::DebitAccountIdMustNotBeZero);
    }
    if debit == u128::MAX {
        return Err(Outcome::DebitAccountIdMustNotBeIntMax);
    }
    if credit == 0 && !resolves {
        return Err(Outcome::CreditAccountIdMustNotBeZero);
    }
    if credit == u128::MAX {
        return Err(Outcome::CreditAccountIdMustNotBeIntMax);
    }
    if debit == credit && debit != 0 {
        return Err(Outcome::AccountsMustBeDifferent);
    }
    let zero_allowed = matches!(t.kind, TransferKind::Void { .. });
    if t.amount.0 == 0 && !zero_allowed {
        return Err(Outcome::AmountMustNotBeZero);
    }
    Ok(())
}

fn check_account_fields(a: &NewAccount) -> Result<(), Outcome> {
    if a.id.0 == 0 {
        return Err(Outcome::IdMustNotBeZero);
    }
    if a.id.0 == u128::MAX {
        return Err(Outcome::IdMustNotBeIntMax);
    }
    if a.flags
        .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
        && a.flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
    {
        return Err(Outcome::FlagsAreMutuallyExclusive);
    }
    if !a.owner.is_valid() {
        return Err(Outcome::OwnerMustNotBeZero);
    }
    Ok(())
}

impl Locked<'_> {
    fn transfer_shard(&mut self, id: TransferId) -> &mut TransferShard {
        let index = self.ledger.transfer_shard(id);
        self.transfers[index]
            .as_deref_mut()
            .expect("the batch locked every transfer shard it touches")
    }

    fn account_shard(&mut self, id: AccountId) -> &mut AccountShard {
        let index = self.ledger.account_shard(id);
        self.accounts[index]
            .as_deref_mut()
            .expect("the batch locked every account shard it touches")
    }

    fn account(&mut self, id: AccountId) -> Option<Account> {
        self.account_shard(id).accounts.get(&id).copied()
    }

    /// Both accounts of a transfer, mutable at once: one lookup each, wherever they live.
    fn account_pair(
        &mut self,
        a: AccountId,
        b: AccountId,
    ) -> (Option<&mut Account>, Option<&mut Account>) {
        assert_ne!(a, b, "a transfer's accounts are different (validated)");
        let (ia, ib) = (self.ledger.account_shard(a), self.ledger.account_shard(b));
        let locked = "the batch locked every account shard it touches";
        if ia == ib {
            let shard = self.accounts[ia].as_deref_mut().expect(locked);
            let [x, y] = shard.accounts.get_disjoint_mut([&a, &b]);
            return (x, y);
        }
        let (left, right) = self.accounts.split_at_mut(ia.max(ib));
        let low = left[ia.min(ib)].as_deref_mut().expect(locked);
        let high = right[0].as_deref_mut().expect(locked);
        if ia < ib {
            (low.accounts.get_mut(&a), high.accounts.get_mut(&b))
        } else {
            (high.accounts.get_mut(&a), low.accounts.get_mut(&b))
        }
    }

    fn store_account(&mut self, account: Account, undo: Option<&mut Vec<Undo>>) {
        let slot = self
            .account_shard(account.id)
            .accounts
            .get_mut(&account.id)
            .expect("only existing accounts are updated");
        if let Some(undo) = undo {
            undo.push(Undo::AccountChanged(*slot));
        }
        *slot = account;
    }

    fn apply_events(&mut self, events: &[Event], now: Timestamp) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Ok; events.len()];
        let mut undo = Vec::new();
        let mut start = 0;
        let (mut touched, mut read) = (0, 0);
        while start < events.len() {
            if start >= touched {
                touched = (start + TOUCH_AHEAD).min(events.len());
                read += events[start..touched]
                    .iter()
                    .map(|e| self.touch(e))
                    .sum::<usize>();
            }
            let end = events[start..]
                .iter()
                .position(|e| !e.linked)
                .map_or(events.len(), |offset| start + offset + 1);
            let chain = &events[start..end];
            let results = &mut outcomes[start..end];
            if chain.last().is_some_and(|e| e.linked) {
                results.fill(Outcome::LinkedEventFailed);
                if let Some(last) = results.last_mut() {
                    *last = Outcome::LinkedEventChainOpen;
                }
            } else if chain.len() == 1 {
                results[0] = self.apply_event(&chain[0], now, None);
                self.remember_declined(&chain[0], results[0], now);
            } else {
                self.apply_chain(chain, results, now, &mut undo);
            }
            start = end;
        }
        std::hint::black_box(read);
        outcomes
    }

    /// Reads the index entries applying `event` will probe and write (see
    /// `PositionIndex::touch`); returns how many.
    fn touch(&self, event: &Event) -> usize {
        let Op::Transfer(t) = &event.op else {
            return 0;
        };
        let touch = |id: TransferId| {
            self.transfers[self.ledger.transfer_shard(id)]
                .as_deref()
                .map_or(0, |shard| shard.touch(id))
        };
        touch(t.id) + t.kind.pending_id().map_or(0, touch)
    }

    fn apply_chain(
        &mut self,
        chain: &[Event],
        results: &mut [Outcome],
        now: Timestamp,
        undo: &mut Vec<Undo>,
    ) {
        undo.clear();
        let mut failed = None;
        for (i, event) in chain.iter().enumerate() {
            let outcome = self.apply_event(event, now, Some(undo));
            results[i] = outcome;
            if !outcome.is_success() {
                failed = Some(i);
                break;
            }
        }
        let Some(failed) = failed else {
            return;
        };
        while let Some(change) = undo.pop() {
            self.undo(change);
        }
        for (i, event) in chain.iter().enumerate() {
            if i != failed {
                // A member remembered from an earlier submission keeps its original outcome, so
                // a resubmitted chain gets exactly the answers it got the first time.
                results[i] = match self.remembered_outcome(event) {
                    Some(original) => original,
                    None => Outcome::LinkedEventFailed,
                };
            }
        }
        // Only once every answer is settled: a member must not see another one's decline.
        if !results[failed].is_transient() {
            for (event, &outcome) in chain.iter().zip(results.iter()) {
                self.remember_declined(event, outcome, now);
            }
        }
    }

    /// The outcome an earlier, identical submission of `event` got, if it is remembered.
    fn remembered_outcome(&mut self, event: &Event) -> Option<Outcome> {
        let Op::Transfer(t) = &event.op else {
            return None;
        };
        match self.transfer_shard(t.id).get(t.id) {
            Some(record) if record.event == *t => Some(record.original_outcome()),
            _ => None,
        }
    }

    /// Remembers a declined transfer so that a resubmission gets the same answer.
    fn remember_declined(&mut self, event: &Event, outcome: Outcome, now: Timestamp) {
        let Op::Transfer(t) = &event.op else {
            return;
        };
        if outcome.is_success()
            || outcome.is_transient()
            || !t.id.is_valid()
            || matches!(
                outcome,
                Outcome::ExistsWithDifferentFields | Outcome::LinkedEventChainOpen
            )
        {
            return;
        }
        let shard = self.transfer_shard(t.id);
        if shard.contains(t.id) {
            return;
        }
        shard.push(&TransferRecord {
            event: *t,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            state: TransferState::Declined(outcome),
            created_at: now,
        });
    }

    fn apply_event(
        &mut self,
        event: &Event,
        now: Timestamp,
        undo: Option<&mut Vec<Undo>>,
    ) -> Outcome {
        let result = match &event.op {
            Op::CreateAccount(a) => self.create_account(a, undo),
            Op::SetAccountClosed { id, closed } => self.set_closed(*id, *closed, undo),
            Op::Transfer(t) => self.transfer(t, now, undo),
        };
        match result {
            Ok(()) => Outcome::Ok,
            Err(outcome) => outcome,
        }
    }

    fn create_account(
        &mut self,
        new: &NewAccount,
        undo: Option<&mut Vec<Undo>>,
    ) -> Result<(), Outcome> {
        check_account_fields(new)?;
        let limit = self.ledger.accounts_per_shard;
        let shard = self.account_shard(new.id);
        if let Some(existing) = shard.accounts.get(&new.id) {
            let same = existing.currency == new.currency
                && existing.owner == new.owner
                && existing.flags == new.flags;
            return Err(if same {
                Outcome::Exists
            } else {
                Outcome::ExistsWithDifferentFields
            });
        }
        if shard.accounts.len() as u64 >= limit {
            return Err(Outcome::AccountLimitReached);
        }
        shard.accounts.insert(new.id, Account::open(new));
        if let Some(undo) = undo {
            undo.push(Undo::AccountCreated(new.id));
        }
        Ok(())
    }

    fn set_closed(
        &mut self,
        id: AccountId,
        closed: bool,
        undo: Option<&mut Vec<Undo>>,
    ) -> Result<(), Outcome> {
        if id.0 == 0 {
            return Err(Outcome::IdMustNotBeZero);
        }
        if id.0 == u128::MAX {
            return Err(Outcome::IdMustNotBeIntMax);
        }
        let mut account = self.account(id).ok_or(Outcome::AccountNotFound)?;
        account.flags = if closed {
            account.flags.union(AccountFlags::CLOSED)
        } else {
            account.flags.without(AccountFlags::CLOSED)
        };
        self.store_account(account, undo);
        Ok(())
    }

    fn transfer(
        &mut self,
        t: &Transfer,
        now: Timestamp,
        undo: Option<&mut Vec<Undo>>,
    ) -> Result<(), Outcome> {
        check_transfer_fields(t)?;
        if let Some(outcome) = self.transfer_shard(t.id).resubmission(t) {
            return Err(outcome);
        }
        // After the idempotency check, so that a retry of a hold gets its original answer
        // even once the hold's expiry has passed.
        if let TransferKind::Pending { expires_at } = t.kind
            && expires_at != Timestamp::NEVER
            && expires_at <= now
        {
            return Err(Outcome::ExpiryMustBeInTheFuture);
        }
        match t.kind {
            TransferKind::Single | TransferKind::Pending { .. } => {
                self.create_transfer(t, now, undo)
            }
            TransferKind::Post { pending_id } | TransferKind::Void { pending_id } => {
                self.resolve_pending(t, pending_id, now, undo)
            }
        }
    }

    fn create_transfer(
        &mut self,
        t: &Transfer,
        now: Timestamp,
        mut undo: Option<&mut Vec<Undo>>,
    ) -> Result<(), Outcome> {
        let pending = matches!(t.kind, TransferKind::Pending { .. });
        let pending_full =
            pending && self.transfer_shard(t.id).pending_live >= self.ledger.pending_per_shard;
        let (debit, credit) = self.account_pair(t.debit_account_id, t.credit_account_id);
        let debit = debit.ok_or(Outcome::DebitAccountNotFound)?;
        let credit = credit.ok_or(Outcome::CreditAccountNotFound)?;
        if debit.currency != credit.currency {
            return Err(Outcome::AccountsMustHaveTheSameCurrency);
        }
        if t.currency != debit.currency {
            return Err(Outcome::CurrencyMustMatchAccounts);
        }
        if debit.is_closed() {
            return Err(Outcome::DebitAccountClosed);
        }
        if credit.is_closed() {
            return Err(Outcome::CreditAccountClosed);
        }
        let amount = u128::from(t.amount.0);
        let (d, c) = (&debit.balances, &credit.balances);
        let new_debit = if pending {
            d.debits_pending
                .checked_add(amount)
                .ok_or(Outcome::OverflowsDebitsPending)?
        } else {
            d.debits_posted
                .checked_add(amount)
                .ok_or(Outcome::OverflowsDebitsPosted)?
        };
        let new_credit = if pending {
            c.credits_pending
                .checked_add(amount)
                .ok_or(Outcome::OverflowsCreditsPending)?
        } else {
            c.credits_posted
                .checked_add(amount)
                .ok_or(Outcome::OverflowsCreditsPosted)?
        };
        let debits = d
            .debits_pending
            .checked_add(d.debits_posted)
            .and_then(|x| x.checked_add(amount))
            .ok_or(Outcome::OverflowsDebits)?;
        let credits = c
            .credits_pending
            .checked_add(c.credits_posted)
            .and_then(|x| x.checked_add(amount))
            .ok_or(Outcome::OverflowsCredits)?;
        if debit
            .flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && debits > d.credits_posted
        {
            return Err(Outcome::ExceedsCredits);
        }
        if credit
            .flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && credits > c.debits_posted
        {
            return Err(Outcome::ExceedsDebits);
        }
        if pending_full {
            return Err(Outcome::PendingLimitReached);
        }

        if let Some(undo) = undo.as_deref_mut() {
            undo.push(Undo::AccountChanged(*debit));
            undo.push(Undo::AccountChanged(*credit));
        }
        if pending {
            debit.balances.debits_pending = new_debit;
            credit.balances.credits_pending = new_credit;
        } else {
            debit.balances.debits_posted = new_debit;
            credit.balances.credits_posted = new_credit;
        }
        let shard = self.transfer_shard(t.id);
        let state = if let TransferKind::Pending { expires_at } = t.kind {
            shard.pending_live += 1;
            if expires_at != Timestamp::NEVER {
                shard.expiries.insert((expires_at, t.id));
            }
            TransferState::Pending
        } else {
            TransferState::Posted
        };
        shard.push(&TransferRecord {
            event: *t,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            state,
            created_at: now,
        });
        if let Some(undo) = undo {
            undo.push(Undo::TransferInserted(t.id));
        }
        Ok(())
    }

    fn resolve_pending(
        &mut self,
        t: &Transfer,
        pending_id: TransferId,
        now: Timestamp,
        mut undo: Option<&mut Vec<Undo>>,
    ) -> Result<(), Outcome> {
        let post = matches!(t.kind, TransferKind::Post { .. });
        let pending = match self.transfer_shard(pending_id).get(pending_id) {
            None => return Err(Outcome::PendingTransferNotFound),
            Some(r) if matches!(r.state, TransferState::Declined(_)) => {
                return Err(Outcome::PendingTransferNotFound);
            }
            Some(r) => r,
        };
        let TransferKind::Pending { expires_at } = pending.event.kind else {
            return Err(Outcome::PendingTransferNotPending);
        };
        if t.debit_account_id.0 != 0 && t.debit_account_id != pending.debit_account_id {
            return Err(Outcome::PendingTransferHasDifferentDebitAccount);
        }
        if t.credit_account_id.0 != 0 && t.credit_account_id != pending.credit_account_id {
            return Err(Outcome::PendingTransferHasDifferentCreditAccount);
        }
        if t.currency != pending.event.currency {
            return Err(Outcome::PendingTransferHasDifferentCurrency);
        }
        match pending.state {
            TransferState::Pending => {}
            TransferState::PendingPosted { .. } => {
                return Err(Outcome::PendingTransferAlreadyPosted);
            }
            TransferState::PendingVoided { .. } => {
                return Err(Outcome::PendingTransferAlreadyVoided);
            }
            TransferState::PendingExpired => return Err(Outcome::PendingTransferExpired),
            TransferState::Posted | TransferState::Voided | TransferState::Declined(_) => {
                unreachable!("a pending transfer is never in state {:?}", pending.state)
            }
        }
        if expires_at != Timestamp::NEVER && expires_at <= now {
            return Err(Outcome::PendingTransferExpired);
        }
        let held = pending.event.amount;
        if post && t.amount > held {
            return Err(Outcome::ExceedsPendingTransferAmount);
        }
        if !post && t.amount != Amount::ZERO && t.amount != held {
            return Err(Outcome::PendingTransferHasDifferentAmount);
        }
        let mut debit = self
            .account(pending.debit_account_id)
            .expect("accounts of a live hold exist");
        let mut credit = self
            .account(pending.credit_account_id)
            .expect("accounts of a live hold exist");
        if post && debit.is_closed() {
            return Err(Outcome::DebitAccountClosed);
        }
        if post && credit.is_closed() {
            return Err(Outcome::CreditAccountClosed);
        }
        let moved = if post { u128::from(t.amount.0) } else { 0 };
        let new_debits_posted = debit
            .balances
            .debits_posted
            .checked_add(moved)
            .ok_or(Outcome::OverflowsDebitsPosted)?;
        let new_credits_posted = credit
            .balances
            .credits_posted
            .checked_add(moved)
            .ok_or(Outcome::OverflowsCreditsPosted)?;

        release_hold(&mut debit.balances, &mut credit.balances, held);
        debit.balances.debits_posted = new_debits_posted;
        credit.balances.credits_posted = new_credits_posted;
        self.store_account(debit, undo.as_deref_mut());
        self.store_account(credit, undo.as_deref_mut());

        let new_state = if post {
            TransferState::PendingPosted {
                by: t.id,
                amount: t.amount,
            }
        } else {
            TransferState::PendingVoided { by: t.id }
        };
        let shard = self.transfer_shard(pending_id);
        shard.pending_live -= 1;
        if expires_at != Timestamp::NEVER {
            shard.expiries.remove(&(expires_at, pending_id));
        }
        shard.set_state(pending_id, new_state);
        if let Some(undo) = undo.as_deref_mut() {
            undo.push(Undo::PendingChanged {
                id: pending_id,
                old: TransferState::Pending,
            });
        }

        let shard = self.transfer_shard(t.id);
        shard.push(&TransferRecord {
            event: *t,
            debit_account_id: pending.debit_account_id,
            credit_account_id: pending.credit_account_id,
            state: if post {
                TransferState::Posted
            } else {
                TransferState::Voided
            },
            created_at: now,
        });
        if let Some(undo) = undo {
            undo.push(Undo::TransferInserted(t.id));
        }
        Ok(())
    }

    fn undo(&mut self, change: Undo) {
        match change {
            Undo::AccountCreated(id) => {
                self.account_shard(id).accounts.remove(&id);
            }
            Undo::AccountChanged(old) => {
                *self
                    .account_shard(old.id)
                    .accounts
                    .get_mut(&old.id)
                    .expect("undone in reverse order") = old;
            }
            Undo::TransferInserted(id) => {
                let shard = self.transfer_shard(id);
                let record = shard.pop_newest(id);
                if let (TransferState::Pending, TransferKind::Pending { expires_at }) =
                    (record.state, record.event.kind)
                {
                    shard.pending_live -= 1;
                    shard.expiries.remove(&(expires_at, id));
                }
            }
            Undo::PendingChanged { id, old } => {
                let shard = self.transfer_shard(id);
                let record = shard.get(id).expect("undone in reverse order");
                assert_eq!(old, TransferState::Pending);
                shard.set_state(id, old);
                if let TransferKind::Pending { expires_at } = record.event.kind {
                    shard.pending_live += 1;
                    if expires_at != Timestamp::NEVER {
                        shard.expiries.insert((expires_at, id));
                    }
                }
            }
        }
    }

    fn expire(&mut self, now: Timestamp, limit: usize) -> Vec<Expired> {
        let due = self.due(now, limit);
        let mut expired = Vec::with_capacity(due.len());
        for (expires_at, id) in due {
            let shard = self.transfer_shard(id);
            shard.expiries.remove(&(expires_at, id));
            shard.pending_live -= 1;
            let record = shard.get(id).expect("every expiry has its hold");
            assert_eq!(record.state, TransferState::Pending);
            shard.set_state(id, TransferState::PendingExpired);
            let mut debit = self
                .account(record.debit_account_id)
                .expect("accounts of a live hold exist");
            let mut credit = self
                .account(record.credit_account_id)
                .expect("accounts of a live hold exist");
            release_hold(
                &mut debit.balances,
                &mut credit.balances,
                record.event.amount,
            );
            self.store_account(debit, None);
            self.store_account(credit, None);
            expired.push(Expired {
                id,
                debit_account_id: record.debit_account_id,
                credit_account_id: record.credit_account_id,
                amount: record.event.amount,
                currency: record.event.currency,
                expires_at,
            });
        }
        expired
    }

    /// The first `limit` holds due at `now`, in (expiry, id) order: a merge of the shards'
    /// ordered expiries that reads no more of them than it returns (and one head a shard).
    fn due(&self, now: Timestamp, limit: usize) -> Vec<(Timestamp, TransferId)> {
        let last = (now, TransferId(u128::MAX));
        let mut heads: Vec<_> = self
            .transfers
            .iter()
            .flatten()
            .map(|shard| shard.expiries.range(..=last).peekable())
            .collect();
        let mut next: BinaryHeap<Reverse<((Timestamp, TransferId), usize)>> = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(k, head)| head.peek().map(|&&due| Reverse((due, k))))
            .collect();
        let mut due = Vec::new();
        while due.len() < limit
            && let Some(Reverse((first, k))) = next.pop()
        {
            due.push(first);
            let head = &mut heads[k];
            head.next();
            if let Some(&&following) = head.peek() {
                next.push(Reverse((following, k)));
            }
        }
        due
    }

    /// Forgets the oldest resolved transfers of every shard over its bound. Live holds are
    /// never forgotten; they are bounded by `pending_max` instead.
    fn forget_beyond_bound(&mut self, events: usize) {
        let bound = self.ledger.remembered_per_shard as usize;
        // A batch adds at most one record per event to a shard.
        let looks_max = events.saturating_add(crate::store::FORGET_LOOKS_SPARE);
        for shard in self.transfers.iter_mut().flatten() {
            shard.forget_beyond(bound, looks_max);
        }
    }
}

/// Releases a hold of `held` from both sides. A live hold is always covered by the pending
/// balances it added to, so this cannot underflow.
fn release_hold(debit: &mut Balances, credit: &mut Balances, held: Amount) {
    let held = u128::from(held.0);
    debit.debits_pending = debit
        .debits_pending
        .checked_sub(held)
        .expect("a live hold is covered by debits_pending");
    credit.credits_pending = credit
        .credits_pending
        .checked_sub(held)
        .expect("a live hold is covered by credits_pending");
}
