//! Refused requests waiting to go again, earliest due first (of equal times, the lowest id).
//!
//! A switch shedding at a festival peak refuses millions of requests, and each waits here for
//! its retry-after. A binary heap of them moved about twenty 100-byte entries at every pop, one
//! a request, on loadgen's busiest path. Here they wait in one bucket per millisecond of due
//! time, each bucket in order: a push lands at or near its bucket's end (due times grow with
//! the clock), and a pop takes the first bucket's front.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::flows::Retry;

pub(super) struct Retries {
    /// Bucket keys count milliseconds from here.
    base: Instant,
    buckets: BTreeMap<u64, VecDeque<Retry>>,
    len: usize,
}

impl Retries {
    pub(super) fn new(base: Instant) -> Retries {
        Retries {
            base,
            buckets: BTreeMap::new(),
            len: 0,
        }
    }

    fn key(&self, due: Instant) -> u64 {
        u64::try_from(due.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn push(&mut self, retry: Retry) {
        let key = self.key(retry.due);
        let bucket = self.buckets.entry(key).or_default();
        // Ordered by (due, id): from the back, where a new one almost always belongs.
        let at = bucket
            .iter()
            .rposition(|r| r.order() <= retry.order())
            .map_or(0, |i| i + 1);
        bucket.insert(at, retry);
        self.len += 1;
    }

    /// When the earliest waiting request is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.buckets
            .first_key_value()
            .and_then(|(_, bucket)| bucket.front())
            .map(|r| r.due)
    }

    /// The earliest waiting request, if it is due by `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Retry> {
        let mut first = self.buckets.first_entry()?;
        if first.get().front().is_none_or(|r| r.due > now) {
            return None;
        }
        let retry = first.get_mut().pop_front()?;
        if first.get().is_empty() {
            first.remove();
        }
        self.len -= 1;
        Some(retry)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Retry> {
        self.buckets.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::run::flows::{FollowUp, Step};

    fn retry(base: Instant, due_us: u64, id: u128) -> Retry {
        Retry {
            due: base + Duration::from_micros(due_us),
            request: FollowUp {
                id,
                step: Step::Balance { customer: 0 },
                tries: 0,
                retries: 1,
                refused_since: None,
            },
        }
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("loadgen_retries.txt"))]

        /// Against a binary heap of (due, id), earliest first: the same requests come out in
        /// the same order, none before it is due, and the length and the next due time agree
        /// after every step.
        #[test]
        fn pops_what_a_heap_pops(
            steps in prop::collection::vec((any::<bool>(), 0u64..20_000, 0u128..50), 1..400),
        ) {
            let base = Instant::now();
            let mut queue = Retries::new(base);
            let mut heap: BinaryHeap<Reverse<(Instant, u128)>> = BinaryHeap::new();
            let mut now_us = 0u64;
            for (push, value, id) in steps {
                if push {
                    // Due from a little before the clock (late) to 20 ms after it.
                    let due_us = (now_us + value).saturating_sub(1_000);
                    let r = retry(base, due_us, id);
                    queue.push(r);
                    heap.push(Reverse(r.order()));
                } else {
                    now_us += value / 4;
                    let now = base + Duration::from_micros(now_us);
                    let expected = heap
                        .peek()
                        .is_some_and(|Reverse((due, _))| *due <= now)
                        .then(|| heap.pop())
                        .flatten()
                        .map(|Reverse(key)| key);
                    prop_assert_eq!(queue.pop_due(now).map(|r| r.order()), expected);
                }
                prop_assert_eq!(queue.len(), heap.len());
                prop_assert_eq!(queue.is_empty(), heap.is_empty());
                prop_assert_eq!(queue.next_due(), heap.peek().map(|Reverse((due, _))| *due));
                prop_assert_eq!(queue.iter().count(), heap.len());
            }
        }
    }
}
