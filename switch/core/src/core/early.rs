//! Reversals that came before (or without) their authorization.

use std::collections::{BTreeSet, VecDeque};

use ledger::ParticipantId;

use super::{HashMap, HashSet};

/// The early reversals the switch holds: for each, the authorization id and the participant
/// that sent it. A late authorization is declined if its own acquirer reversed its id first;
/// another participant's reversal of the same id does not touch it, and neither sender's
/// reversal replaces the other's. (Participant 0, which no client can be, held the admin's
/// reversals when the admin could reverse any authorization; one restored from an older
/// snapshot voids nothing.)
///
/// Bounded by `max`. Past it, the sender holding the most gives up its oldest (of equals, the
/// highest participant id): a participant that floods reversals of ids never used forgets its
/// own, while one holding fewer keeps all of them.
pub(crate) struct EarlyReversals {
    /// (authorization id, sender), split into parts by the id so that no single set grows
    /// huge (a set doubles by copying itself).
    held: Vec<HashSet<(u128, ParticipantId)>>,
    /// Each sender's authorization ids, oldest first.
    by_sender: HashMap<ParticipantId, VecDeque<u128>>,
    /// (how many it holds, sender) for every sender holding any: the largest is the last.
    sizes: BTreeSet<(usize, ParticipantId)>,
    len: usize,
    max: usize,
}

const PARTS: usize = 64;

impl EarlyReversals {
    pub(crate) fn new(max: usize) -> Self {
        EarlyReversals {
            held: (0..PARTS).map(|_| HashSet::default()).collect(),
            by_sender: HashMap::default(),
            sizes: BTreeSet::new(),
            len: 0,
            max: max.max(1),
        }
    }

    fn part(id: u128) -> usize {
        // Authorization ids are client-chosen; mix before picking a part.
        let folded = (id as u64) ^ ((id >> 64) as u64);
        (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `by` reversed `id` before its authorization came.
    pub(crate) fn contains(&self, id: u128, by: ParticipantId) -> bool {
        self.held[Self::part(id)].contains(&(id, by))
    }

    /// Whether an authorization `id` from acquirer `acquirer` was reversed before it came by
    /// that acquirer.
    pub(crate) fn voids(&self, id: u128, acquirer: ParticipantId) -> bool {
        self.contains(id, acquirer)
    }

    /// Remembers that `by` reversed `id` (a second reversal by the same sender changes
    /// nothing), then forgets until at most `max` remain.
    pub(crate) fn insert(&mut self, id: u128, by: ParticipantId) {
        if !self.held[Self::part(id)].insert((id, by)) {
            return;
        }
        let queue = self.by_sender.entry(by).or_default();
        queue.push_back(id);
        let now = queue.len();
        if now > 1 {
            self.sizes.remove(&(now - 1, by));
        }
        self.sizes.insert((now, by));
        self.len += 1;
        self.forget_past_max();
    }

    fn forget_past_max(&mut self) {
        while self.len > self.max {
            let Some((count, sender)) = self.sizes.pop_last() else {
                break;
            };
            let Some(queue) = self.by_sender.get_mut(&sender) else {
                break;
            };
            let Some(oldest) = queue.pop_front() else {
                break;
            };
            self.held[Self::part(oldest)].remove(&(oldest, sender));
            self.len -= 1;
            if count > 1 {
                self.sizes.insert((count - 1, sender));
            } else {
                self.by_sender.remove(&sender);
            }
        }
    }

    /// Every early reversal, by sender (ascending), each sender's oldest first: the order
    /// snapshots keep, from which `from_ordered` rebuilds the same state.
    pub(crate) fn ordered(&self) -> impl Iterator<Item = (ParticipantId, u128)> + '_ {
        let mut senders: Vec<ParticipantId> = self.by_sender.keys().copied().collect();
        senders.sort_unstable();
        senders
            .into_iter()
            .flat_map(move |sender| self.by_sender[&sender].iter().map(move |&id| (sender, id)))
    }

    /// The state whose `ordered` entries are `entries` (in any interleaving of senders; each
    /// sender's oldest first), forgetting past `max` as inserting them would. Refuses an
    /// entry given twice, returning its index.
    pub(crate) fn from_ordered(
        max: usize,
        entries: impl IntoIterator<Item = (ParticipantId, u128)>,
    ) -> Result<Self, usize> {
        let mut m = EarlyReversals::new(usize::MAX);
        for (i, (by, id)) in entries.into_iter().enumerate() {
            if m.contains(id, by) {
                return Err(i);
            }
            m.insert(id, by);
        }
        m.max = max.max(1);
        m.forget_past_max();
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// The model: per sender a list, oldest first; past the bound the longest (of equals, the
    /// highest sender) loses its oldest.
    #[derive(Default)]
    struct Model {
        lists: BTreeMap<u64, Vec<u128>>,
    }

    impl Model {
        fn insert(&mut self, id: u128, by: u64, max: usize) {
            let list = self.lists.entry(by).or_default();
            if !list.contains(&id) {
                list.push(id);
                self.forget(max);
            }
        }

        fn forget(&mut self, max: usize) {
            while self.lists.values().map(Vec::len).sum::<usize>() > max {
                let (&sender, _) = self
                    .lists
                    .iter()
                    .max_by_key(|(sender, list)| (list.len(), **sender))
                    .expect("not empty");
                let list = self.lists.get_mut(&sender).expect("present");
                list.remove(0);
                if list.is_empty() {
                    self.lists.remove(&sender);
                }
            }
        }

        fn ordered(&self) -> Vec<(ParticipantId, u128)> {
            self.lists
                .iter()
                .flat_map(|(by, list)| list.iter().map(|id| (ParticipantId(*by), *id)))
                .collect()
        }
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_early_reversals.txt", 256, "/../../"))]

        #[test]
        fn a_flooding_sender_forgets_its_own_first(
            inserts in prop::collection::vec((0u128..40, 0u64..4), 0..200),
            max in 1usize..24,
            restore_max in 1usize..30,
        ) {
            let mut m = EarlyReversals::new(max);
            let mut model = Model::default();
            for &(id, by) in &inserts {
                m.insert(id, ParticipantId(by));
                model.insert(id, by, max);
                prop_assert!(m.len() <= max);
            }
            let ordered: Vec<_> = m.ordered().collect();
            prop_assert_eq!(&ordered, &model.ordered());
            prop_assert_eq!(m.len(), ordered.len());
            for id in 0..40u128 {
                for by in 0..4u64 {
                    let held = ordered.contains(&(ParticipantId(by), id));
                    prop_assert_eq!(m.contains(id, ParticipantId(by)), held);
                    // Only the acquirer's own reversal voids its authorization.
                    prop_assert_eq!(m.voids(id, ParticipantId(by)), held);
                }
            }
            // Rebuilt from its order, under another bound: what inserting again would give.
            let restored = EarlyReversals::from_ordered(restore_max, ordered.iter().copied())
                .expect("no entry twice");
            let mut bounded = Model::default();
            for &(by, id) in &ordered {
                bounded.insert(id, by.0, usize::MAX);
            }
            bounded.forget(restore_max);
            prop_assert_eq!(restored.ordered().collect::<Vec<_>>(), bounded.ordered());
        }
    }

    #[test]
    fn an_entry_given_twice_is_refused() {
        let entries = [
            (ParticipantId(3), 7),
            (ParticipantId(4), 7),
            (ParticipantId(3), 7),
        ];
        assert_eq!(
            EarlyReversals::from_ordered(10, entries).err(),
            Some(2),
            "the same sender and id twice"
        );
    }
}
