//! Ids to their positions in a queue of remembered records, for maps of millions.
//!
//! The ledger's transfers and the switch's remembered requests are each a queue, oldest
//! first, and an index from id to position in it. Every new request looks its id up (is it a
//! repeat?) and then inserts it: at millions of ids, each of those touches memory no cache
//! holds. A `std` hash map keeps an entry's control byte and its key-and-position (24 bytes)
//! apart, so an insert misses the cache twice, and a lookup ahead of time (which the stage
//! does for a whole batch, so that the misses overlap) warms only the first.
//!
//! This index is open addressing with linear probing over 8-byte entries: a 32-bit tag of the
//! id's hash and the low 32 bits of the position. The id is not stored: the queue has it, and
//! `find` asks the caller for it when a tag matches. A lookup of an id not held (every new
//! request) reads one cache line of eight entries, and the insert that follows writes that
//! same line. An entry is also a third of the size, and there are no tombstones: a removal
//! moves the entries after it back (Knuth's algorithm R).
//!
//! Positions held must lie within 2^32 of each other (the queue holds fewer than 2^32
//! records), so that the low 32 bits and the queue's oldest position give the whole one back.
//! The configuration sees to it: `REMEMBERED_LIMIT` bounds the bounds that size each queue.

use std::hash::BuildHasher;

const EMPTY: u64 = 0;
const SLOTS_MIN: usize = 16;

/// Whether part `part` of `parts` that fill evenly (the shards of a ledger, the parts of a
/// remembered map), holding `len` of room for `capacity` before it must grow, grows ahead of
/// need now. Each part has its own point, spread from half to three quarters of its capacity:
/// parts that fill evenly reach one point together, and if they all doubled then, the whole
/// structure's worth of copying would fall within a few batches, a stall at a peak. Spread
/// this way it is drawn out over a quarter of the fill, seconds at a peak instead of a
/// fraction of one. Below half full the margin left before the insert that would grow the
/// part anyway is a quarter of its capacity or more.
pub fn grows_ahead(len: usize, capacity: usize, part: usize, parts: usize) -> bool {
    let parts = parts.max(1);
    let part = part % parts;
    // len / capacity > (2 + part / parts) / 4, in integers.
    (len as u128) * 4 * (parts as u128) > (capacity as u128) * (2 * parts as u128 + part as u128)
}

/// See the module documentation.
pub struct PositionIndex<S = foldhash::fast::RandomState> {
    /// A power of two in length (or empty); at most three quarters full, so that a probe
    /// always ends at an empty entry, and a lookup of an id not held reads about two.
    table: Vec<u64>,
    len: usize,
    hasher: S,
}

impl Default for PositionIndex {
    fn default() -> Self {
        Self::with_hasher(foldhash::fast::RandomState::default())
    }
}

impl PositionIndex {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S: BuildHasher> PositionIndex<S> {
    pub fn with_hasher(hasher: S) -> Self {
        PositionIndex {
            table: Vec::new(),
            len: 0,
            hasher,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries held before the next insert grows the table.
    pub fn capacity(&self) -> usize {
        self.table.len() / 4 * 3
    }

    /// The memory the table holds.
    pub fn bytes(&self) -> usize {
        self.table.len() * std::mem::size_of::<u64>()
    }

    fn tag(&self, id: u128) -> u32 {
        // Never 0, which marks an empty entry.
        ((self.hasher.hash_one(id) >> 32) as u32).max(1)
    }

    fn entry(tag: u32, position: u64) -> u64 {
        (u64::from(tag) << 32) | (position & u64::from(u32::MAX))
    }

    fn entry_tag(entry: u64) -> u32 {
        (entry >> 32) as u32
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    /// Where entries with `tag` start probing, in a table of `mask + 1` entries.
    fn home(tag: u32, mask: usize) -> usize {
        tag as usize & mask
    }

    /// The position of `id`, if held. `base` is the oldest position the queue holds, and
    /// `key_at(position)` the id the queue holds there; it is asked only when a tag matches.
    pub fn find(&self, id: u128, base: u64, key_at: impl Fn(u64) -> Option<u128>) -> Option<u64> {
        if self.table.is_empty() {
            return None;
        }
        self.probe(self.tag(id), id, base, key_at).err()
    }

    /// Probes for `id` (whose tag is `tag`) in a table that is not empty: the position it is
    /// held at, or else the index of the empty entry where it would go.
    fn probe(
        &self,
        tag: u32,
        id: u128,
        base: u64,
        key_at: impl Fn(u64) -> Option<u128>,
    ) -> Result<usize, u64> {
        let mask = self.mask();
        let mut i = Self::home(tag, mask);
        loop {
            let entry = self.table[i];
            if entry == EMPTY {
                return Ok(i);
            }
            if Self::entry_tag(entry) == tag {
                let position = base + u64::from((entry as u32).wrapping_sub(base as u32));
                if key_at(position) == Some(id) {
                    return Err(position);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Reads the entries a lookup or an insert of `id` would, so that they are in cache when
    /// it comes (the reads of several ids overlap; one at a time, each waits for the last).
    /// Returns how many entries it read.
    pub fn touch(&self, id: u128) -> usize {
        if self.table.is_empty() {
            return 0;
        }
        let mask = self.mask();
        let mut i = Self::home(self.tag(id), mask);
        let mut read = 1;
        while self.table[i] != EMPTY {
            i = (i + 1) & mask;
            read += 1;
        }
        read
    }

    /// Adds `id` at `position`, or, if `id` is held already, returns where (`base` and
    /// `key_at` as for `find`): the one probe both looks and inserts.
    pub fn insert(
        &mut self,
        id: u128,
        position: u64,
        base: u64,
        key_at: impl Fn(u64) -> Option<u128>,
    ) -> Result<(), u64> {
        self.reserve(1);
        let tag = self.tag(id);
        let i = self.probe(tag, id, base, key_at)?;
        self.table[i] = Self::entry(tag, position);
        self.len += 1;
        Ok(())
    }

    /// The table index of the entry for `id` at `position`.
    fn slot_of(&self, id: u128, position: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let tag = self.tag(id);
        let wanted = Self::entry(tag, position);
        let mask = self.mask();
        let mut i = Self::home(tag, mask);
        loop {
            match self.table[i] {
                EMPTY => return None,
                entry if entry == wanted => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Removes `id`, held at `position`; false if it was not held there.
    pub fn remove(&mut self, id: u128, position: u64) -> bool {
        let Some(mut hole) = self.slot_of(id, position) else {
            return false;
        };
        // Every entry after the hole, up to the next empty one, that may move back to it
        // (its home is not between the hole and where it is) moves back, leaving a new hole.
        let mask = self.mask();
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let entry = self.table[i];
            if entry == EMPTY {
                break;
            }
            let home = Self::home(Self::entry_tag(entry), mask);
            if i.wrapping_sub(home) & mask >= i.wrapping_sub(hole) & mask {
                self.table[hole] = entry;
                hole = i;
            }
        }
        self.table[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Moves `id` from position `from` to `to`; false if it was not held at `from`.
    pub fn relocate(&mut self, id: u128, from: u64, to: u64) -> bool {
        match self.slot_of(id, from) {
            Some(i) => {
                self.table[i] = Self::entry(Self::entry_tag(self.table[i]), to);
                true
            }
            None => false,
        }
    }

    /// Makes room for `additional` more entries. A larger table is allocated but not
    /// written beyond what moving the entries over writes (see `preallocate`).
    pub fn reserve(&mut self, additional: usize) {
        let wanted = self.len.saturating_add(additional);
        if wanted > self.capacity() {
            self.resize(
                Self::slots_for(wanted),
                vec![EMPTY; Self::slots_for(wanted)],
            );
        }
    }

    /// Makes room for `entries` and writes every page of the table once, so that inserting
    /// up to that many never allocates or takes a page fault. Returns the bytes held.
    pub fn preallocate(&mut self, entries: usize) -> usize {
        let slots = Self::slots_for(entries.max(self.len));
        if slots > self.table.len() {
            // Written, not `vec![0; n]`: the compiler turns that into `calloc`, which hands back
            // pages that fault on first use.
            let mut table = Vec::with_capacity(slots);
            table.resize(slots, std::hint::black_box(EMPTY));
            self.resize(slots, table);
        }
        self.bytes()
    }

    /// Table entries for `entries` held at most three quarters full.
    fn slots_for(entries: usize) -> usize {
        entries
            .saturating_add(entries / 3)
            .saturating_add(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1))
            .max(SLOTS_MIN)
    }

    /// Moves every entry into `table`, empty and `slots` long.
    fn resize(&mut self, slots: usize, mut table: Vec<u64>) {
        debug_assert_eq!(table.len(), slots);
        let mask = slots - 1;
        for &entry in self.table.iter().filter(|&&e| e != EMPTY) {
            let mut i = Self::home(Self::entry_tag(entry), mask);
            while table[i] != EMPTY {
                i = (i + 1) & mask;
            }
            table[i] = entry;
        }
        self.table = table;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::hash::{BuildHasher, Hasher};

    use proptest::prelude::*;

    use super::*;

    /// Hashes every id to one of a few values, so that tags collide and probes run long.
    #[derive(Clone, Copy)]
    struct Few(u64);

    struct FewHasher(u64, u64);

    impl Hasher for FewHasher {
        fn finish(&self) -> u64 {
            // Tags (the high half) from a handful of values.
            (self.0 % self.1) << 32
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = self.0.wrapping_mul(31).wrapping_add(u64::from(*b));
            }
        }
    }

    impl BuildHasher for Few {
        type Hasher = FewHasher;
        fn build_hasher(&self) -> FewHasher {
            FewHasher(0, self.0)
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Remember a new id at the newest end.
        Push(u16),
        /// Forget the oldest.
        Forget,
        /// Move the oldest to the newest end (a live hold the forgetting passes).
        Keep,
        Reserve(u16),
        Preallocate(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u16>().prop_map(Op::Push),
            3 => Just(Op::Forget),
            2 => Just(Op::Keep),
            1 => (0u16..300).prop_map(Op::Reserve),
            1 => (0u16..300).prop_map(Op::Preallocate),
        ]
    }

    /// Runs `ops` against the index and a queue that is the model: every few operations and
    /// at the end, every id ever pushed is found exactly where the queue holds it, or not at
    /// all.
    fn check<S: BuildHasher>(mut index: PositionIndex<S>, base: u64, ops: &[Op]) {
        let mut queue: VecDeque<u128> = VecDeque::new();
        let mut base = base;
        let mut seen = std::collections::BTreeSet::new();
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::Push(id) => {
                    let id = u128::from(id) + 1;
                    let key_at = |p: u64| {
                        p.checked_sub(base)
                            .and_then(|i| queue.get(usize::try_from(i).ok()?).copied())
                    };
                    let held = queue.iter().position(|&q| q == id).map(|i| base + i as u64);
                    let inserted = index.insert(id, base + queue.len() as u64, base, key_at);
                    assert_eq!(inserted.err(), held, "id {id}");
                    if held.is_none() {
                        queue.push_back(id);
                        seen.insert(id);
                    }
                }
                Op::Forget => {
                    if let Some(id) = queue.pop_front() {
                        assert!(index.remove(id, base));
                        assert!(!index.remove(id, base), "removed twice");
                        base += 1;
                    }
                }
                Op::Keep => {
                    if let Some(id) = queue.pop_front() {
                        let to = base + queue.len() as u64 + 1;
                        assert!(index.relocate(id, base, to));
                        base += 1;
                        queue.push_back(id);
                    }
                }
                Op::Reserve(n) => {
                    index.reserve(n.into());
                    assert!(index.capacity() >= queue.len() + usize::from(n));
                }
                Op::Preallocate(n) => {
                    index.preallocate(n.into());
                    assert!(index.capacity() >= usize::from(n).max(queue.len()));
                }
            }
            assert_eq!(index.len(), queue.len());
            assert!(index.len() <= index.capacity());
            if n % 8 != 7 && n + 1 != ops.len() {
                continue;
            }
            let key_at = |p: u64| {
                p.checked_sub(base)
                    .and_then(|i| queue.get(usize::try_from(i).ok()?).copied())
            };
            for &id in &seen {
                let held = queue.iter().position(|&q| q == id).map(|i| base + i as u64);
                assert_eq!(index.find(id, base, key_at), held, "id {id}");
            }
        }
    }

    proptest! {
        #![proptest_config(crate::proptest_config!("position_index.txt"))]

        #[test]
        fn finds_what_the_queue_holds(ops in prop::collection::vec(op(), 0..400)) {
            check(PositionIndex::new(), 7, &ops);
        }

        /// Tags that collide, probes that wrap around the table, and positions whose low
        /// 32 bits wrap while the queue holds them.
        #[test]
        fn finds_what_the_queue_holds_when_hashes_collide(
            ops in prop::collection::vec(op(), 0..400),
            distinct in 1u64..6,
        ) {
            check(
                PositionIndex::with_hasher(Few(distinct)),
                u64::from(u32::MAX) - 40,
                &ops,
            );
        }
    }

    #[test]
    fn an_id_not_held_is_not_found_and_not_removed() {
        let mut index = PositionIndex::new();
        assert_eq!(index.find(5, 0, |_| Some(5)), None);
        assert!(!index.remove(5, 0));
        assert_eq!(index.insert(5, 0, 0, |_| None), Ok(()));
        assert_eq!(index.insert(5, 1, 0, |_| Some(5)), Err(0));
        // A tag match is not enough: the queue must hold the id there.
        assert_eq!(index.find(5, 0, |_| Some(6)), None);
        assert_eq!(index.find(5, 0, |_| Some(5)), Some(0));
        assert!(!index.remove(5, 1));
        assert!(!index.relocate(5, 1, 2));
        assert!(index.touch(5) >= 1);
    }

    #[test]
    fn preallocating_writes_the_table_and_keeps_what_is_held() {
        let mut index = PositionIndex::new();
        let key_at = |p: u64| Some(u128::from(p) + 1);
        for id in 1..=100u128 {
            assert!(index.insert(id, id as u64 - 1, 0, key_at).is_ok());
        }
        let bytes = index.preallocate(10_000);
        assert!(index.capacity() >= 10_000);
        assert_eq!(bytes, index.bytes());
        let table = index.table.len();
        for id in 101..=10_000u128 {
            assert!(index.insert(id, id as u64 - 1, 0, key_at).is_ok());
        }
        assert_eq!(
            index.table.len(),
            table,
            "no growth up to what was reserved"
        );
        for id in [1u128, 50, 100, 5_000, 10_000] {
            assert_eq!(
                index.find(id, 0, |p| Some(u128::from(p) + 1)),
                Some(id as u64 - 1)
            );
        }
    }
}
