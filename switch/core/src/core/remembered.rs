//! What the core remembers of requests: their answers (`Kept`), in bounded maps that forget
//! the oldest first (`Remembered`, over a chunked queue), and the read-ahead that keeps
//! looking them up from stalling a batch (`TouchAhead`).

use std::collections::VecDeque;

use ledger::position_index::{PositionIndex, grows_ahead};
use ledger::{AccountId, Amount, Currency, ParticipantId, TransferId};

use super::{Body, Core, Original, PaymentState, RequestId, Response};
use crate::codes::{Code, Reason};

/// A remembered response, kept small: the stage remembers one per request, millions of them,
/// and most are a code and a transfer of the request's own id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Kept {
    /// Of the request as sent (see `journal::fingerprint`).
    pub(super) fingerprint: u64,
    pub(super) code: Code,
    pub(super) reason: Reason,
    pub(super) body: KeptBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum KeptBody {
    None,
    /// `Body::Transfer` of the request's own id.
    OwnTransfer {
        amount: Amount,
        currency: Currency,
    },
    Other(Box<Body>),
}

impl Kept {
    pub(super) fn new(fingerprint: u64, response: &Response) -> Self {
        let body = match &response.body {
            Body::None => KeptBody::None,
            Body::Transfer {
                transfer,
                amount,
                currency,
            } if transfer.0 == response.id.0 => KeptBody::OwnTransfer {
                amount: *amount,
                currency: *currency,
            },
            other => KeptBody::Other(Box::new(other.clone())),
        };
        Kept {
            fingerprint,
            code: response.code,
            reason: response.reason,
            body,
        }
    }

    /// The response as it was given to request `id`.
    pub(super) fn response(&self, id: RequestId) -> Response {
        Response {
            id,
            code: self.code,
            reason: self.reason,
            body: match &self.body {
                KeptBody::None => Body::None,
                KeptBody::OwnTransfer { amount, currency } => Body::Transfer {
                    transfer: TransferId(id.0),
                    amount: *amount,
                    currency: *currency,
                },
                KeptBody::Other(body) => (**body).clone(),
            },
        }
    }
}

/// A queue, oldest first, held in chunks of a fixed size: it never grows by copying itself, as
/// one deque of millions would when it doubles, stalling the stage. A chunk emptied at the
/// front is kept for the back (up to `spare_max` of them), so a queue that forgets as fast as
/// it remembers allocates nothing.
pub(crate) struct Chunked<T> {
    /// Every chunk holds at least one entry; all but the first and the last are full.
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
    spare: Vec<VecDeque<T>>,
    spare_max: usize,
}

/// A queue of keys.
pub(crate) type Order = Chunked<u128>;

pub(super) const ORDER_CHUNK: usize = 4096;

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: VecDeque::new(),
            len: 0,
            spare: Vec::new(),
            spare_max: 1,
        }
    }
}

impl<T> Chunked<T> {
    pub(crate) fn push_back(&mut self, value: T) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < ORDER_CHUNK => chunk.push_back(value),
            _ => {
                let mut chunk = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| VecDeque::with_capacity(ORDER_CHUNK));
                chunk.push_back(value);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let front = self.chunks.front_mut()?;
        let value = front.pop_front()?;
        self.len -= 1;
        if front.is_empty()
            && let Some(chunk) = self.chunks.pop_front()
            && self.spare.len() < self.spare_max
        {
            self.spare.push(chunk);
        }
        Some(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The `i`th oldest.
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        let front = self.chunks.front()?;
        match i.checked_sub(front.len()) {
            None => front.get(i),
            Some(rest) => self
                .chunks
                .get(1 + rest / ORDER_CHUNK)?
                .get(rest % ORDER_CHUNK),
        }
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        let front = self.chunks.front()?.len();
        match i.checked_sub(front) {
            None => self.chunks.front_mut()?.get_mut(i),
            Some(rest) => self
                .chunks
                .get_mut(1 + rest / ORDER_CHUNK)?
                .get_mut(rest % ORDER_CHUNK),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// Writes once (with copies of `filler`, then empties) spare chunks for `entries`, so
    /// that pushing that many never allocates or touches a fresh page. Returns the bytes
    /// reserved.
    fn preallocate(&mut self, entries: usize, filler: &T) -> usize
    where
        T: Clone,
    {
        let chunks = entries.div_ceil(ORDER_CHUNK) + 1;
        self.spare_max = self.spare_max.max(chunks);
        while self.spare.len() + self.chunks.len() < chunks {
            let mut chunk = VecDeque::with_capacity(ORDER_CHUNK);
            chunk.resize(ORDER_CHUNK, filler.clone());
            chunk.clear();
            self.spare.push(chunk);
        }
        (self.spare.len() + self.chunks.len()) * ORDER_CHUNK * std::mem::size_of::<T>()
    }
}

/// The keys, oldest first (how they are chunked is not part of what the queue is).
impl<T: std::fmt::Debug> std::fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a, T> IntoIterator for &'a Chunked<T> {
    type Item = &'a T;
    type IntoIter = Box<dyn Iterator<Item = &'a T> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// A map with a bound, forgetting the oldest entries first (except those `keep` says not to).
///
/// The entries sit in a queue in the order they are forgotten in; a `PositionIndex` takes a
/// key to its place there. Remembering writes the entry at the queue's end, next to the one
/// before, and a small tag-and-place into the index: the one write to a random place in
/// memory is 8 bytes, where an entry of the map itself would be over a hundred.
pub(crate) struct Remembered<V> {
    /// Key to position: `base` plus the index in `entries`. Split into parts so that no
    /// single index grows huge: an index doubles by copying itself, and one of millions of
    /// entries would stall the ledger stage for that long.
    pub(super) parts: Vec<PositionIndex>,
    pub(super) entries: Chunked<(u128, V)>,
    /// The position of the oldest entry.
    pub(super) base: u64,
    pub(super) max: usize,
}

pub(super) const REMEMBERED_PARTS: usize = 64;

impl<V> Remembered<V> {
    pub(super) fn new(max: usize) -> Self {
        Remembered {
            parts: (0..REMEMBERED_PARTS)
                .map(|_| PositionIndex::default())
                .collect(),
            entries: Chunked::default(),
            base: 0,
            max,
        }
    }

    pub(super) fn part(&self, key: u128) -> usize {
        // Request ids are client-chosen; mix before picking a part.
        let folded = (key as u64) ^ ((key >> 64) as u64);
        (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    fn index(&self, key: u128) -> Option<usize> {
        let key_at = |p: u64| {
            let i = usize::try_from(p.checked_sub(self.base)?).ok()?;
            self.entries.get(i).map(|(k, _)| *k)
        };
        let position = self.parts[self.part(key)].find(key, self.base, key_at)?;
        usize::try_from(position - self.base).ok()
    }

    /// Brings what looking `key` up reads into cache (see `PositionIndex::touch`).
    pub(super) fn touch(&self, key: u128) -> usize {
        self.parts[self.part(key)].touch(key)
    }

    pub(super) fn get(&self, key: &u128) -> Option<&V> {
        let i = self.index(*key)?;
        self.entries.get(i).map(|(_, v)| v)
    }

    pub(super) fn get_mut(&mut self, key: &u128) -> Option<&mut V> {
        let i = self.index(*key)?;
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    #[cfg(test)]
    pub(super) fn contains_key(&self, key: &u128) -> bool {
        self.index(*key).is_some()
    }

    /// Entries, key and value, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u128, &V)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Entries a part is sized for: its share of `max`, and room for parts filling unevenly.
    fn part_bound(&self) -> usize {
        let share = self.max.div_ceil(REMEMBERED_PARTS);
        share.saturating_add(share / 8).saturating_add(64)
    }

    /// Grows part `n` ahead of need, each part at its own point between half and three
    /// quarters full (`ledger::position_index::grows_ahead`), so that the parts, which fill
    /// evenly, do not all double (copying everything) within a few batches; never past room
    /// for its share of `max`.
    pub(super) fn grow_ahead(&mut self, n: usize) {
        let bound = self.part_bound();
        let n = n % REMEMBERED_PARTS;
        let part = &mut self.parts[n];
        let (len, capacity) = (part.len(), part.capacity());
        if capacity < bound && grows_ahead(len, capacity, n, REMEMBERED_PARTS) {
            part.reserve(capacity);
        }
    }

    /// Makes room for `max` entries now and writes every page of it once (the queue's with
    /// copies of `filler`), so that remembering never grows a part or takes a page fault
    /// later; the entries held are kept. Returns the bytes now held.
    pub(super) fn preallocate(&mut self, filler: &V) -> usize
    where
        V: Clone,
    {
        let bound = self.part_bound();
        let mut bytes = self
            .entries
            .preallocate(self.max.saturating_add(1), &(0, filler.clone()));
        for part in &mut self.parts {
            bytes += part.preallocate(bound);
        }
        bytes
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.parts.iter().map(PositionIndex::capacity).sum()
    }

    /// Adds `value` as the newest entry (for a new key; for a key held, `value` replaces
    /// its value in place). Does not forget.
    fn push(&mut self, key: u128, value: V) -> Result<(), (u128, V)> {
        let position = self.base + self.entries.len() as u64;
        let part = self.part(key);
        let (entries, base) = (&self.entries, self.base);
        let key_at = |p: u64| {
            let i = usize::try_from(p.checked_sub(base)?).ok()?;
            entries.get(i).map(|(k, _)| *k)
        };
        if self.parts[part]
            .insert(key, position, base, key_at)
            .is_err()
        {
            return Err((key, value));
        }
        self.entries.push_back((key, value));
        Ok(())
    }

    /// Remembers `key`, then forgets the oldest entries `keep` lets go until at most `max`
    /// remain, looking at no more than `FORGET_LOOKS_MAX` of them: an entry kept goes to the
    /// newest end. Returns how many it looked at.
    ///
    /// The bound on the looking is what keeps a request's cost constant when the oldest
    /// entries are all kept (live holds, when `pending_max` is near this map's `max`): the map
    /// then holds more than `max`: the kept entries, and others waiting for the looking to
    /// pass them, about one for every `FORGET_LOOKS_MAX` kept.
    pub(super) fn insert(&mut self, key: u128, value: V, keep: impl Fn(&V) -> bool) -> usize {
        if let Err((key, value)) = self.push(key, value)
            && let Some(held) = self.get_mut(&key)
        {
            *held = value;
        }
        let mut budget = FORGET_LOOKS_MAX.min(self.len());
        let mut looked = 0;
        while self.len() > self.max && budget > 0 {
            budget -= 1;
            looked += 1;
            let Some((oldest, value)) = self.entries.pop_front() else {
                break;
            };
            let was = self.base;
            self.base += 1;
            let part = self.part(oldest);
            if keep(&value) {
                let position = self.base + self.entries.len() as u64;
                let moved = self.parts[part].relocate(oldest, was, position);
                debug_assert!(moved, "index and queue agree");
                self.entries.push_back((oldest, value));
            } else {
                let removed = self.parts[part].remove(oldest, was);
                debug_assert!(removed, "index and queue agree");
            }
        }
        looked
    }
}

/// Reads ahead, for a loop over a batch's requests, what the next `TOUCH_AHEAD` requests will
/// probe in the maps of millions, each time the loop reaches the end of what was read. Each
/// probe is a cache miss. One request at a time, each waits for the one before, and one read
/// a request ahead still stalls the loop behind it; reads issued together, with nothing
/// between them, overlap. A whole batch read first would be pushed out of cache again before
/// the last of thousands is reached.
#[derive(Default)]
pub(super) struct TouchAhead {
    /// Ids before this have been read ahead.
    next: usize,
    read: usize,
}

pub(super) const TOUCH_AHEAD: usize = 64;

impl TouchAhead {
    /// At request `at` of `requests` (each one's id by `id`): once every request read ahead
    /// is reached, reads the next.
    pub(super) fn to<T>(
        &mut self,
        at: usize,
        requests: &[T],
        id: impl Fn(&T) -> u128,
        mut touch: impl FnMut(u128) -> usize,
    ) {
        if at < self.next {
            return;
        }
        let end = (at + TOUCH_AHEAD).min(requests.len());
        for r in &requests[at.min(end)..end] {
            self.read += touch(id(r));
        }
        self.next = end;
    }
}

impl Drop for TouchAhead {
    fn drop(&mut self) {
        // The reads are for their effect on the cache: keep the compiler from dropping them.
        std::hint::black_box(self.read);
    }
}

/// Entries a remembered map looks at to forget, at most, per insert.
pub const FORGET_LOOKS_MAX: usize = 16;

impl Core {
    /// Reserves, and writes once, the memory for every request the core and the ledger will
    /// remember (`requests_remembered_max`, the ledger's `transfers_remembered_max`), so that
    /// no table grows and no fresh page is touched while serving: growing them as traffic
    /// arrives costs the stage about a quarter of its time and its longest batches. Returns
    /// the bytes reserved. Takes seconds for millions; the state is unchanged.
    pub fn preallocate(&mut self) -> usize {
        let zero = ParticipantId(0);
        let original = Original {
            fingerprint: u64::MAX,
            acquirer: zero,
            issuer: zero,
            card: AccountId(0),
            merchant: AccountId(0),
            currency: Currency::from_numeric(156).expect("CNY"),
            amount: Amount(0),
            captured: Amount(0),
            refunded: Amount(0),
            state: PaymentState::Held,
        };
        // Fillers not all zeros, or the compiler may turn filling a fresh allocation into
        // `calloc`, which leaves the pages untouched (`Chunked::preallocate`).
        let kept = Kept {
            fingerprint: u64::MAX,
            code: Code::Approved,
            reason: Reason::NONE,
            body: KeptBody::None,
        };
        self.originals.preallocate(&original)
            + self.responses.preallocate(&kept)
            + self.ledger.preallocate()
    }

    /// Reads the index entries of the remembered maps that looking `id` up and remembering it
    /// will probe and write (see `TouchAhead`).
    pub(super) fn touch_remembered(&self, id: u128) -> usize {
        self.responses.touch(id) + self.originals.touch(id)
    }

    pub(super) fn grow_ahead(&mut self) {
        self.batches = self.batches.wrapping_add(1);
        self.originals.grow_ahead(self.batches);
        self.responses.grow_ahead(self.batches);
    }

    /// What a repeat of request `id` with `fingerprint` hears, if `id` is remembered: the
    /// original answer, or 94 if the repeat is not the same request.
    pub(super) fn remembered(&self, id: RequestId, fingerprint: u64) -> Option<Response> {
        let (original_fingerprint, response) = match self.responses.get(&id.0) {
            Some(kept) => (kept.fingerprint, kept.response(id)),
            None => {
                let o = self.originals.get(&id.0).filter(|o| o.fingerprint != 0)?;
                (o.fingerprint, Response::moved(id, o.amount, o.currency))
            }
        };
        Some(if original_fingerprint == fingerprint {
            response
        } else {
            Response::new(id, Code::DuplicateWithOtherFields, Reason::ID_REUSED)
        })
    }

    pub(super) fn remember(&mut self, id: RequestId, fingerprint: u64, response: &Response) {
        // Nothing was done: a retry with the same id is executed normally.
        if matches!(response.code, Code::SystemBusy | Code::SystemMalfunction) {
            return;
        }
        self.responses
            .insert(id.0, Kept::new(fingerprint, response), |_| false);
    }
}

#[cfg(test)]
mod kept_tests {
    use super::*;
    use crate::core::Status;

    fn transfer(transfer: u128) -> Body {
        Body::Transfer {
            transfer: TransferId(transfer),
            amount: Amount(1234),
            currency: Currency::from_numeric(156).expect("CNY"),
        }
    }

    /// A remembered response is the response given, whatever its body: a repeat must hear
    /// exactly what the request heard.
    #[test]
    fn a_kept_response_is_the_response_given() {
        let id = RequestId(77);
        let bodies = [
            Body::None,
            transfer(77),
            // A transfer that is not the request's own is kept whole.
            transfer(78),
            Body::Echo(vec![1, 2, 3]),
            Body::WindowClosed(9),
            Body::Status(Status {
                transfer: TransferId(5),
                state: PaymentState::Captured,
                currency: Currency::from_numeric(392).expect("JPY"),
                amount: Amount(10),
                captured: Amount(7),
                refunded: Amount(2),
            }),
        ];
        for body in bodies {
            for (code, reason) in [
                (Code::Approved, Reason::NONE),
                (Code::InsufficientFunds, Reason(3)),
            ] {
                let given = Response {
                    id,
                    code,
                    reason,
                    body: body.clone(),
                };
                let kept = Kept::new(42, &given);
                assert_eq!(kept.fingerprint, 42);
                assert_eq!(kept.response(id), given);
            }
        }
        assert!(
            std::mem::size_of::<Kept>() <= 32,
            "a remembered response stays small: {} bytes",
            std::mem::size_of::<Kept>()
        );
    }
}

#[cfg(test)]
mod order_tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::{ORDER_CHUNK, Order};

    proptest! {
        /// The chunked queue is a queue: against a `VecDeque`, over runs of pushes and pops
        /// long enough to fill, empty and refill several chunks.
        #[test]
        fn order_is_a_queue(runs in prop::collection::vec((0..3 * ORDER_CHUNK, 0..3 * ORDER_CHUNK), 1..6)) {
            let (mut order, mut model) = (Order::default(), VecDeque::new());
            let mut next = 0u128;
            for (pushes, pops) in runs {
                for _ in 0..pushes {
                    order.push_back(next);
                    model.push_back(next);
                    next += 1;
                }
                for _ in 0..pops {
                    prop_assert_eq!(order.pop_front(), model.pop_front());
                }
                prop_assert_eq!(order.len(), model.len());
                prop_assert!(order.iter().eq(model.iter()));
                prop_assert!((&order).into_iter().eq(model.iter()));
                for i in 0..model.len() + 2 {
                    prop_assert_eq!(order.get(i), model.get(i), "at {}", i);
                }
                if let Some(i) = pops.checked_rem(model.len().max(1)) && i < model.len() {
                    *order.get_mut(i).expect("held") += 1_000_000;
                    model[i] += 1_000_000;
                    prop_assert!(order.iter().eq(model.iter()));
                }
            }
        }
    }
}

#[cfg(test)]
mod remembered_model {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::{FORGET_LOOKS_MAX, Remembered};

    /// What `Remembered` is: entries oldest first, a new key at the end, a held key's value
    /// replaced in place, and forgetting that looks at no more than `FORGET_LOOKS_MAX` of
    /// the oldest while more than `max` are held, moving those kept to the end.
    #[derive(Default)]
    struct Model {
        entries: VecDeque<(u128, u64)>,
    }

    impl Model {
        fn insert(
            &mut self,
            max: usize,
            key: u128,
            value: u64,
            keep: impl Fn(&u64) -> bool,
        ) -> usize {
            match self.entries.iter_mut().find(|(k, _)| *k == key) {
                Some((_, held)) => *held = value,
                None => self.entries.push_back((key, value)),
            }
            let mut looked = 0;
            let budget = FORGET_LOOKS_MAX.min(self.entries.len());
            while self.entries.len() > max && looked < budget {
                looked += 1;
                let Some(oldest) = self.entries.pop_front() else {
                    break;
                };
                if keep(&oldest.1) {
                    self.entries.push_back(oldest);
                }
            }
            looked
        }
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_remembered.txt", 64, "/../../"))]

        /// Against the model, over inserts of new and held keys, some kept (odd values),
        /// across bounds small enough to forget all the time; with memory reserved ahead or
        /// not.
        #[test]
        fn remembered_is_its_model(
            max in 0usize..40,
            inserts in prop::collection::vec((0u128..120, 0u64..1_000), 1..400),
            preallocate in any::<bool>(),
        ) {
            let mut m: Remembered<u64> = Remembered::new(max);
            if preallocate {
                prop_assert!(m.preallocate(&7) > 0);
            }
            let mut model = Model::default();
            let keep = |v: &u64| v % 2 == 1;
            for (key, value) in inserts {
                prop_assert_eq!(m.insert(key, value, keep), model.insert(max, key, value, keep));
                prop_assert_eq!(m.len(), model.entries.len());
                let held: Vec<_> = m.iter().map(|(k, v)| (k, *v)).collect();
                prop_assert!(held.iter().copied().eq(model.entries.iter().copied()));
                for key in 0..120u128 {
                    let want = model.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
                    prop_assert_eq!(m.get(&key), want, "key {}", key);
                    prop_assert_eq!(m.contains_key(&key), want.is_some());
                }
            }
        }
    }
}

#[cfg(test)]
mod remembered_tests {
    use super::{FORGET_LOOKS_MAX, REMEMBERED_PARTS, Remembered};

    /// When the oldest entries are all kept, an insert looks at a bounded number of them
    /// (not the whole map), keeps them all, and forgets what it may once that comes round.
    #[test]
    fn forgetting_past_kept_entries_does_bounded_work() {
        let max = 100;
        let mut m: Remembered<bool> = Remembered::new(max);
        let keep = |kept: &bool| *kept;
        for key in 0..5_000u128 {
            assert!(m.insert(key, true, keep) <= FORGET_LOOKS_MAX);
        }
        assert_eq!(m.len(), 5_000, "kept entries are never forgotten");
        let mut most = 0;
        for key in 5_000..40_000u128 {
            assert!(m.insert(key, false, keep) <= FORGET_LOOKS_MAX);
            most = most.max(m.len());
        }
        // Looking at 16 an insert and adding one, the others wait at most one pass over the
        // kept entries: about one for every 15 kept.
        assert!(most <= 5_000 + 5_000 / (FORGET_LOOKS_MAX - 1) + 1, "{most}");
        assert!((0..5_000).all(|key| m.contains_key(&key)));
        // The others reached are forgotten: all but the newest few hundred.
        assert!((5_000..39_000).all(|key| !m.contains_key(&key)));
        assert!(m.contains_key(&39_999));
    }

    /// Preallocating keeps the entries and their forgetting order, and remembering past the
    /// bound from then on (forgetting as it goes) never grows a part again.
    #[test]
    fn a_preallocated_map_keeps_its_entries_and_never_grows() {
        // 500 a part: sized once, a part would be more than half full, and grow.
        let max = 500 * REMEMBERED_PARTS;
        let mut m: Remembered<u64> = Remembered::new(max);
        for key in 0..3_000u128 {
            m.insert(key, key as u64 * 3, |_| false);
        }
        assert!(m.preallocate(&0) > 0);
        let reserved = m.capacity();
        assert!(reserved > max, "{reserved}");
        assert_eq!(
            m.iter().map(|(key, _)| key).collect::<Vec<_>>(),
            (0..3_000).collect::<Vec<_>>()
        );
        for key in 0..3_000u128 {
            assert_eq!(m.get(&key), Some(&(key as u64 * 3)));
        }
        for key in 3_000..10 * max as u128 {
            m.insert(key, key as u64 * 3, |_| false);
            if key % 64 == 0 {
                m.grow_ahead(key as usize);
            }
            assert_eq!(m.capacity(), reserved, "grew at {key}");
        }
        assert_eq!(m.len(), max);
        assert!(m.get(&0).is_none());
        assert_eq!(
            m.get(&(10 * max as u128 - 1)),
            Some(&((10 * max as u64 - 1) * 3))
        );
    }
}
