//! Where a transfer shard keeps its remembered transfers, compactly.
//!
//! Records sit in a ring in the order they were remembered (which is also the order they are
//! forgotten in), packed into 104 bytes with no 16-byte alignment padding; a `PositionIndex`
//! takes an id to its place in the ring. Appending is a sequential write, and the index's
//! entries are 8 bytes, so remembering ten million transfers costs well under 150 bytes each.

use std::collections::{BTreeSet, VecDeque};

use crate::position_index::{PositionIndex, grows_ahead};

use crate::currency::Currency;
use crate::outcome::Outcome;
use crate::transfer::{Transfer, TransferKind, TransferRecord, TransferState};
use crate::types::{AccountId, Amount, Timestamp, TransferId};

/// A u128 id as two words: 8-byte alignment keeps map entries and slots free of padding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key([u64; 2]);

impl Key {
    fn of(id: u128) -> Self {
        Key([id as u64, (id >> 64) as u64])
    }

    fn get(self) -> u128 {
        u128::from(self.0[0]) | (u128::from(self.0[1]) << 64)
    }
}

const KIND_SINGLE: u8 = 0;
const KIND_PENDING: u8 = 1;
const KIND_POST: u8 = 2;
const KIND_VOID: u8 = 3;

const STATE_POSTED: u8 = 0;
const STATE_PENDING: u8 = 1;
const STATE_PENDING_POSTED: u8 = 2;
const STATE_PENDING_VOIDED: u8 = 3;
const STATE_PENDING_EXPIRED: u8 = 4;
const STATE_VOIDED: u8 = 5;
const STATE_DECLINED: u8 = 6;

/// The event named no debit (credit) account: the stored one was resolved from the hold.
const BIT_DEBIT_INHERITED: u8 = 1;
const BIT_CREDIT_INHERITED: u8 = 2;

/// One remembered transfer, packed.
#[derive(Clone, Copy)]
struct Slot {
    id: Key,
    /// Resolved accounts (for posts and voids that named none, those of the hold).
    debit: Key,
    credit: Key,
    /// Post/void: the hold. A resolved hold: the post or void that resolved it.
    link: Key,
    amount: u64,
    /// Pending: its expiry. A hold resolved by a post: the amount posted.
    expires_at: u64,
    posted: u64,
    created_at: u64,
    currency: u16,
    code: u16,
    kind: u8,
    state: u8,
    outcome: u8,
    bits: u8,
}

impl Slot {
    /// Filler for memory reserved ahead of use; never read as a record. Not all zeros: the
    /// compiler turns a fresh allocation filled with zeros into `calloc`, which leaves the
    /// pages untouched, and every record remembered later would take a page fault.
    const FILLER: Slot = Slot {
        id: Key([0, 0]),
        debit: Key([0, 0]),
        credit: Key([0, 0]),
        link: Key([0, 0]),
        amount: 0,
        expires_at: 0,
        posted: 0,
        created_at: 0,
        currency: 0,
        code: 0,
        kind: 0,
        state: 0,
        outcome: 0,
        bits: u8::MAX,
    };

    fn pack(r: &TransferRecord) -> Slot {
        let e = &r.event;
        let (kind, link, expires_at) = match e.kind {
            TransferKind::Single => (KIND_SINGLE, 0, 0),
            TransferKind::Pending { expires_at } => (KIND_PENDING, 0, expires_at.0),
            TransferKind::Post { pending_id } => (KIND_POST, pending_id.0, 0),
            TransferKind::Void { pending_id } => (KIND_VOID, pending_id.0, 0),
        };
        let mut slot = Slot {
            id: Key::of(e.id.0),
            debit: Key::of(r.debit_account_id.0),
            credit: Key::of(r.credit_account_id.0),
            link: Key::of(link),
            amount: e.amount.0,
            expires_at,
            posted: 0,
            created_at: r.created_at.0,
            currency: e.currency.numeric(),
            code: e.code,
            kind,
            state: STATE_POSTED,
            outcome: 0,
            bits: 0,
        };
        if e.debit_account_id.0 == 0 && r.debit_account_id.0 != 0 {
            slot.bits |= BIT_DEBIT_INHERITED;
        }
        if e.credit_account_id.0 == 0 && r.credit_account_id.0 != 0 {
            slot.bits |= BIT_CREDIT_INHERITED;
        }
        slot.set_state(r.state);
        slot
    }

    fn set_state(&mut self, state: TransferState) {
        self.state = match state {
            TransferState::Posted => STATE_POSTED,
            TransferState::Pending => STATE_PENDING,
            TransferState::PendingPosted { by, amount } => {
                self.link = Key::of(by.0);
                self.posted = amount.0;
                STATE_PENDING_POSTED
            }
            TransferState::PendingVoided { by } => {
                self.link = Key::of(by.0);
                STATE_PENDING_VOIDED
            }
            TransferState::PendingExpired => STATE_PENDING_EXPIRED,
            TransferState::Voided => STATE_VOIDED,
            TransferState::Declined(outcome) => {
                self.outcome = outcome.code();
                STATE_DECLINED
            }
        };
        if self.kind == KIND_PENDING
            && !matches!(
                state,
                TransferState::PendingPosted { .. } | TransferState::PendingVoided { .. }
            )
        {
            self.link = Key::of(0);
            self.posted = 0;
        }
    }

    fn unpack(&self) -> TransferRecord {
        let link = TransferId(self.link.get());
        let kind = match self.kind {
            KIND_SINGLE => TransferKind::Single,
            KIND_PENDING => TransferKind::Pending {
                expires_at: Timestamp(self.expires_at),
            },
            KIND_POST => TransferKind::Post { pending_id: link },
            _ => TransferKind::Void { pending_id: link },
        };
        let state = match self.state {
            STATE_POSTED => TransferState::Posted,
            STATE_PENDING => TransferState::Pending,
            STATE_PENDING_POSTED => TransferState::PendingPosted {
                by: link,
                amount: Amount(self.posted),
            },
            STATE_PENDING_VOIDED => TransferState::PendingVoided { by: link },
            STATE_PENDING_EXPIRED => TransferState::PendingExpired,
            STATE_VOIDED => TransferState::Voided,
            _ => TransferState::Declined(
                Outcome::from_code(self.outcome).expect("packed from an Outcome"),
            ),
        };
        let debit = AccountId(self.debit.get());
        let credit = AccountId(self.credit.get());
        TransferRecord {
            event: Transfer {
                id: TransferId(self.id.get()),
                debit_account_id: if self.bits & BIT_DEBIT_INHERITED != 0 {
                    AccountId(0)
                } else {
                    debit
                },
                credit_account_id: if self.bits & BIT_CREDIT_INHERITED != 0 {
                    AccountId(0)
                } else {
                    credit
                },
                amount: Amount(self.amount),
                currency: Currency::from_numeric(self.currency).expect("packed from a Currency"),
                kind,
                code: self.code,
            },
            debit_account_id: debit,
            credit_account_id: credit,
            state,
            created_at: Timestamp(self.created_at),
        }
    }
}

/// Records a shard looks at to forget per batch, beyond one per event of the batch.
pub(crate) const FORGET_LOOKS_SPARE: usize = 64;

/// One transfer shard's state.
#[derive(Default)]
pub(crate) struct TransferShard {
    /// Id to position; a position is `base` plus the index in `slots`.
    index: PositionIndex,
    slots: VecDeque<Slot>,
    base: u64,
    /// Live holds with an expiry, by expiry.
    pub(crate) expiries: BTreeSet<(Timestamp, TransferId)>,
    pub(crate) pending_live: u64,
    pub(crate) forgotten: u64,
}

impl TransferShard {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot at `position`, if the ring holds it.
    fn at(&self, position: u64) -> Option<&Slot> {
        self.slots
            .get(usize::try_from(position.checked_sub(self.base)?).ok()?)
    }

    fn position(&self, id: TransferId) -> Option<u64> {
        self.index
            .find(id.0, self.base, |p| self.at(p).map(|s| s.id.get()))
    }

    fn slot(&self, id: TransferId) -> Option<&Slot> {
        self.at(self.position(id)?)
    }

    pub(crate) fn get(&self, id: TransferId) -> Option<TransferRecord> {
        self.slot(id).map(Slot::unpack)
    }

    /// Reads what looking `id` up and inserting it will (see `PositionIndex::touch`).
    pub(crate) fn touch(&self, id: TransferId) -> usize {
        self.index.touch(id.0)
    }

    pub(crate) fn contains(&self, id: TransferId) -> bool {
        self.position(id).is_some()
    }

    /// The outcome a resubmission of `t` gets, if `t.id` is remembered: its original outcome
    /// if the fields are the same, `ExistsWithDifferentFields` if not.
    pub(crate) fn resubmission(&self, t: &Transfer) -> Option<Outcome> {
        let slot = self.slot(t.id)?;
        let record = slot.unpack();
        Some(if record.event == *t {
            record.original_outcome()
        } else {
            Outcome::ExistsWithDifferentFields
        })
    }

    pub(crate) fn push(&mut self, record: &TransferRecord) {
        let position = self.base + self.slots.len() as u64;
        let (slots, base) = (&self.slots, self.base);
        let key_at = |p: u64| {
            let i = usize::try_from(p.checked_sub(base)?).ok()?;
            slots.get(i).map(|s| s.id.get())
        };
        let inserted = self.index.insert(record.event.id.0, position, base, key_at);
        assert!(
            inserted.is_ok(),
            "a remembered id is never remembered twice"
        );
        self.slots.push_back(Slot::pack(record));
    }

    pub(crate) fn set_state(&mut self, id: TransferId, state: TransferState) {
        let position = self.position(id).expect("state of a remembered id");
        let slot = self
            .slots
            .get_mut((position - self.base) as usize)
            .expect("index and ring agree");
        slot.set_state(state);
    }

    /// Takes back the newest record, which must be `id` (undo runs in reverse order).
    pub(crate) fn pop_newest(&mut self, id: TransferId) -> TransferRecord {
        let slot = self.slots.pop_back().expect("undone in reverse order");
        assert!(slot.id == Key::of(id.0), "undone in reverse order");
        let position = self.base + self.slots.len() as u64;
        assert!(self.index.remove(id.0, position), "index and ring agree");
        slot.unpack()
    }

    /// Forgets the oldest records that are not live holds until at most `bound` remain,
    /// looking at no more than `looks_max` of them. A live hold met on the way moves to the
    /// newest end. Returns how many it looked at.
    ///
    /// The caller passes the records its batch may have added plus `FORGET_LOOKS_SPARE`, so a
    /// batch's cost stays in proportion to the batch when the oldest records are all live
    /// holds (`pending_max` near `transfers_remembered_max`): the shard then holds more than
    /// `bound`: its holds, and resolved records waiting for the looking to pass the holds,
    /// about one for every `FORGET_LOOKS_SPARE` holds.
    pub(crate) fn forget_beyond(&mut self, bound: usize, looks_max: usize) -> usize {
        let mut budget = looks_max.min(self.slots.len());
        let mut looked = 0;
        while self.slots.len() > bound && budget > 0 {
            budget -= 1;
            looked += 1;
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            let was = self.base;
            self.base += 1;
            if slot.state == STATE_PENDING {
                let position = self.base + self.slots.len() as u64;
                let moved = self.index.relocate(slot.id.get(), was, position);
                debug_assert!(moved, "index and ring agree");
                self.slots.push_back(slot);
            } else {
                let removed = self.index.remove(slot.id.get(), was);
                debug_assert!(removed, "index and ring agree");
                self.forgotten += 1;
            }
        }
        looked
    }

    /// Grows the index and the ring ahead of need, shard `shard` of `shards` at its own point
    /// between half and three quarters full (`position_index::grows_ahead`), but not past room
    /// for `bound` records (the shard forgets beyond it).
    ///
    /// Left alone, every shard's index and ring would double at about the same moment
    /// (uniform ids fill the shards evenly), copying the whole ledger's worth of records inside
    /// one batch: a stall of hundreds of milliseconds at a few million transfers. The caller
    /// visits one shard per batch, and each grows at its own fill, so the same copying is
    /// spread out.
    pub(crate) fn grow_ahead(&mut self, bound: usize, shard: usize, shards: usize) {
        let (len, capacity) = (self.index.len(), self.index.capacity());
        if capacity < bound && grows_ahead(len, capacity, shard, shards) {
            self.index.reserve(capacity);
        }
        let (len, capacity) = (self.slots.len(), self.slots.capacity());
        if capacity < bound && grows_ahead(len, capacity, shard, shards) {
            self.slots.reserve(capacity);
        }
    }

    /// Makes room for `records` now, so that remembering up to that many never allocates or
    /// touches fresh memory later, and returns the bytes the index and the ring now hold.
    /// Every page is written once here: a table reserved but untouched would take a page
    /// fault on nearly every insert instead. The records already held are kept, in order.
    pub(crate) fn preallocate(&mut self, records: usize) -> usize {
        let records = records.max(self.slots.len());
        // One more than the bound: a batch remembers before it forgets.
        let index_bytes = self.index.preallocate(records.saturating_add(1));
        if self.slots.capacity() < records {
            let mut slots = VecDeque::with_capacity(records);
            slots.resize(slots.capacity(), Slot::FILLER);
            slots.clear();
            slots.extend(self.slots.drain(..));
            self.slots = slots;
        }
        index_bytes + self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    #[cfg(test)]
    pub(crate) fn capacities(&self) -> (usize, usize) {
        (self.index.capacity(), self.slots.capacity())
    }

    /// Every record, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = TransferRecord> + '_ {
        self.slots.iter().map(Slot::unpack)
    }
}

/// A copy of one shard's records, taken under its lock for a snapshot.
pub(crate) struct ShardCopy {
    slots: Vec<Slot>,
    pub(crate) forgotten: u64,
}

impl ShardCopy {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = TransferRecord> + '_ {
        self.slots.iter().map(Slot::unpack)
    }
}

impl TransferShard {
    /// Two memcpys: the pause a snapshot costs this shard.
    pub(crate) fn copy(&self) -> ShardCopy {
        let (front, back) = self.slots.as_slices();
        let mut slots = Vec::with_capacity(self.slots.len());
        slots.extend_from_slice(front);
        slots.extend_from_slice(back);
        ShardCopy {
            slots,
            forgotten: self.forgotten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted(id: u128) -> TransferRecord {
        TransferRecord {
            event: Transfer {
                id: TransferId(id),
                debit_account_id: AccountId(1),
                credit_account_id: AccountId(2),
                amount: Amount(id as u64),
                currency: Currency::CNY,
                kind: TransferKind::Single,
                code: 7,
            },
            debit_account_id: AccountId(1),
            credit_account_id: AccountId(2),
            state: TransferState::Posted,
            created_at: Timestamp(id as u64),
        }
    }

    /// Preallocating keeps what the shard holds, in order, and then remembering up to the
    /// bound (and forgetting past it) never grows the index or the ring again.
    #[test]
    fn a_preallocated_shard_keeps_its_records_and_never_grows() {
        let bound = 5_000;
        let mut shard = TransferShard::default();
        for id in 1..=700 {
            shard.push(&posted(id));
        }
        shard.forget_beyond(500, usize::MAX);
        assert!(shard.preallocate(bound) > 0);
        let reserved = shard.capacities();
        assert!(reserved.0 > bound && reserved.1 >= bound, "{reserved:?}");
        let kept: Vec<u128> = shard.iter().map(|r| r.event.id.0).collect();
        assert_eq!(kept, (201..=700).collect::<Vec<_>>());
        for id in 201..=700 {
            assert_eq!(shard.get(TransferId(id)), Some(posted(id)));
        }
        for id in 701..=30_000 {
            shard.push(&posted(id));
            shard.forget_beyond(bound - 100, 1 + FORGET_LOOKS_SPARE);
            shard.grow_ahead(bound, 0, 1);
            assert_eq!(shard.capacities(), reserved, "grew at {id}");
        }
        assert_eq!(shard.len(), bound - 100);
        assert_eq!(shard.get(TransferId(30_000)), Some(posted(30_000)));
        assert!(shard.get(TransferId(1_000)).is_none());
    }

    /// Shards filled evenly, visited one a batch as the ledger does, double at moments spread
    /// over a quarter of their fill, not all within one round of visits: at a peak the copying
    /// of a whole ledger's worth of records would otherwise fall within a few batches. And
    /// every shard still grows ahead of need, never in the insert that finds it full.
    #[test]
    fn evenly_filled_shards_grow_ahead_at_spread_out_moments() {
        const SHARDS: usize = 64;
        let mut shards: Vec<TransferShard> =
            (0..SHARDS).map(|_| TransferShard::default()).collect();
        for shard in &mut shards {
            shard.slots.reserve(4096);
        }
        let start: Vec<usize> = shards.iter().map(|s| s.slots.capacity()).collect();
        // The record count (per shard) at which each shard's ring first grew past its start.
        let mut grew_at: Vec<Option<usize>> = vec![None; SHARDS];
        let mut id = 0u128;
        for round in 0..start[0] {
            for shard in &mut shards {
                id += 1;
                let before = shard.slots.capacity();
                shard.push(&posted(id));
                assert_eq!(shard.slots.capacity(), before, "a shard grew in an insert");
            }
            // One shard visited per batch of 8 inserts a shard, as a wave spreads them.
            if round % 8 == 0 {
                for k in 0..8 {
                    let n = (round + k) % SHARDS;
                    shards[n].grow_ahead(usize::MAX, n, SHARDS);
                }
            }
            for (n, shard) in shards.iter().enumerate() {
                if grew_at[n].is_none() && shard.slots.capacity() > start[n] {
                    grew_at[n] = Some(round + 1);
                }
            }
        }
        let moments: Vec<usize> = grew_at
            .iter()
            .map(|m| m.expect("every shard grew"))
            .collect();
        let (first, last) = (moments.iter().min().copied(), moments.iter().max().copied());
        let spread = last.unwrap_or(0) - first.unwrap_or(0);
        assert!(
            spread * 5 >= start[0],
            "growth spread over {spread} records a shard of {}: {moments:?}",
            start[0]
        );
    }

    fn held(id: u128) -> TransferRecord {
        TransferRecord {
            event: Transfer {
                kind: TransferKind::Pending {
                    expires_at: Timestamp(u64::MAX),
                },
                ..posted(id).event
            },
            state: TransferState::Pending,
            ..posted(id)
        }
    }

    /// When the oldest records are all live holds, forgetting looks at a bounded number of
    /// them per batch (not the whole shard), keeps every hold, and forgets the resolved
    /// records behind them as it reaches them.
    #[test]
    fn forgetting_past_live_holds_does_bounded_work() {
        let (bound, looks_max) = (100, 1 + FORGET_LOOKS_SPARE);
        let mut shard = TransferShard::default();
        for id in 1..=5_000 {
            shard.push(&held(id));
            assert!(shard.forget_beyond(bound, looks_max) <= looks_max);
        }
        assert_eq!(shard.len(), 5_000, "live holds are never forgotten");
        let mut most = 0;
        for id in 5_001..=20_000 {
            shard.push(&posted(id));
            assert!(shard.forget_beyond(bound, looks_max) <= looks_max);
            most = most.max(shard.len());
        }
        // Looking at 65 a batch and adding one, resolved records wait at most one pass over
        // the holds: about one for every 64 holds.
        let waiting_max = 5_000 / (FORGET_LOOKS_SPARE - 1) + 1;
        assert!(most <= 5_000 + waiting_max, "{most}");
        for id in 1..=5_000 {
            assert_eq!(
                shard.get(TransferId(id)).map(|r| r.state),
                Some(TransferState::Pending)
            );
        }
        // The resolved records reached are forgotten: all but the newest few.
        assert!((5_001..=19_000).all(|id| shard.get(TransferId(id)).is_none()));
        assert!(shard.get(TransferId(20_000)).is_some());
    }

    #[test]
    fn slots_are_compact() {
        assert_eq!(std::mem::size_of::<Slot>(), 104);
        assert_eq!(std::mem::align_of::<Slot>(), 8);
    }
}
