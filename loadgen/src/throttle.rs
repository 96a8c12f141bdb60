//! Adaptive throttling on the client's side: new payments that a shedding switch would refuse
//! are refused here instead, before they cost the switch anything.
//!
//! A switch past its capacity refuses new payments (91, reason 34), but each refusal still
//! costs it the packet, the decryption, the decoding and an answer: on the switch's cores, a
//! sizeable part of what serving the payment would have cost. Offered half as much again as it
//! can serve, a switch can spend on refusals the capacity it needs to drain its queue, and the
//! payments it admits wait behind the ones it refuses. So the client keeps, over the last
//! `WINDOW`, the new payments whose outcome it learnt (`requests`: answered by the switch, or
//! refused here) and those the switch admitted (`accepts`: executed, approved or declined), and
//! refuses a new payment itself with probability
//!
//! ```text
//! max(0, (requests - k * accepts) / (requests + 1))
//! ```
//!
//! (adaptive throttling as described in Google's *Site Reliability Engineering*, "Handling
//! Overload"). While the switch admits everything, `requests` equals `accepts` and nothing is
//! refused here. (Counted when it is sent instead, a payment still in flight would count as a
//! request not admitted: at the start of a run, with few counts, or at a high rate, the
//! throttle would then refuse payments the switch was taking.) Once it sheds, the switch keeps seeing about `k` times what
//! it admits: enough above its capacity for its own shedding to stay in charge, and no
//! more. Captures, reversals, refunds and inquiries are never throttled: the switch never
//! sheds them either (PROTOCOL.md 8.2). A payment refused here is given up at once: it did
//! nothing, and sending it again later would only add to the load being cut.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;

/// How far back the counts go.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The counts are kept in slices of this length: a slice leaves the window whole.
const SLICE: Duration = Duration::from_millis(50);

/// The slices in `WINDOW`.
const SLICES: usize = (WINDOW.as_millis() / SLICE.as_millis()) as usize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    accepts: u64,
}

/// The counts of the last `WINDOW` and the resulting refusal probability.
#[derive(Debug)]
pub struct Throttle {
    /// The multiple of the admitted new payments sent on to the switch; 0: never throttle.
    k: f64,
    origin: Instant,
    /// (slice number since `origin`, counts) for the slices of the window, oldest first.
    slices: VecDeque<(u64, Counts)>,
    total: Counts,
}

impl Throttle {
    /// `k` (`--throttle-k`): 0 turns throttling off; otherwise at least 1.
    pub fn new(k: f64, origin: Instant) -> Throttle {
        Throttle {
            k,
            origin,
            slices: VecDeque::with_capacity(SLICES + 1),
            total: Counts::default(),
        }
    }

    /// Forgets every count: an open-loop run starts from none, not from what a closed loop
    /// (a festival's calibration, which drives the switch to saturation and often to
    /// shedding, and is never throttled) left in the window.
    pub fn reset(&mut self) {
        self.slices.clear();
        self.total = Counts::default();
    }

    pub fn enabled(&self) -> bool {
        self.k > 0.0
    }

    /// The slice `now` is in, with the slices that left the window dropped.
    fn slice(&mut self, now: Instant) -> &mut Counts {
        let n = (now.saturating_duration_since(self.origin).as_millis() / SLICE.as_millis()) as u64;
        while let Some(&(first, c)) = self.slices.front() {
            if first + SLICES as u64 > n {
                break;
            }
            self.total.requests -= c.requests;
            self.total.accepts -= c.accepts;
            self.slices.pop_front();
        }
        if self.slices.back().is_none_or(|&(last, _)| last < n) {
            self.slices.push_back((n, Counts::default()));
        }
        // A `now` earlier than the newest slice (clocks read on several threads) counts in
        // the newest one.
        &mut self.slices.back_mut().expect("a slice was just pushed").1
    }

    /// The probability that a new payment asked for at `now` is refused here.
    pub fn refusal_probability(&mut self, now: Instant) -> f64 {
        if !self.enabled() {
            return 0.0;
        }
        self.slice(now);
        let Counts { requests, accepts } = self.total;
        ((requests as f64 - self.k * accepts as f64) / (requests as f64 + 1.0)).max(0.0)
    }

    /// A new payment asked for at `now`: whether it goes to the switch (true: it counts once
    /// answered) or is refused here (false: it counts as a request now).
    pub fn admit(&mut self, now: Instant, rng: &mut impl Rng) -> bool {
        if !self.enabled() {
            return true;
        }
        let p = self.refusal_probability(now);
        if p == 0.0 || rng.gen_range(0.0..1.0) >= p {
            return true;
        }
        self.count(now, false);
        false
    }

    /// A new payment the switch answered at `now`: `admitted` (executed, approved or
    /// declined), or refused as busy.
    pub fn answered(&mut self, now: Instant, admitted: bool) {
        if self.enabled() {
            self.count(now, admitted);
        }
    }

    fn count(&mut self, now: Instant, accepted: bool) {
        let slice = self.slice(now);
        slice.requests += 1;
        slice.accepts += u64::from(accepted);
        self.total.requests += 1;
        self.total.accepts += u64::from(accepted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A switch that admits at most `capacity` new payments a millisecond and refuses the
    /// rest, offered `offered` a millisecond through a throttle of `k`, for `ms`
    /// milliseconds. Returns (sent to the switch, admitted) over the last second.
    fn run(k: f64, offered: u32, capacity: u32, ms: u64, seed: u64) -> (u64, u64) {
        let origin = Instant::now();
        let mut t = Throttle::new(k, origin);
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut sent, mut admitted) = (0, 0);
        for m in 0..ms {
            let now = origin + Duration::from_millis(m);
            let mut served = 0;
            for _ in 0..offered {
                if !t.admit(now, &mut rng) {
                    continue;
                }
                let last_second = m + 1000 >= ms;
                sent += u64::from(last_second);
                let admit = served < capacity;
                served += u32::from(admit);
                admitted += u64::from(last_second && admit);
                t.answered(now, admit);
            }
        }
        (sent, admitted)
    }

    #[test]
    fn a_switch_that_admits_everything_is_never_throttled() {
        let (sent, admitted) = run(1.1, 100, 100, 3_000, 1);
        assert_eq!(sent, 100_000);
        assert_eq!(admitted, 100_000);
    }

    #[test]
    fn off_it_sends_everything_whatever_the_switch_does() {
        let (sent, admitted) = run(0.0, 150, 100, 3_000, 1);
        assert_eq!(sent, 150_000);
        assert_eq!(admitted, 100_000);
    }

    #[test]
    fn counts_leave_the_window() {
        let origin = Instant::now();
        let mut t = Throttle::new(1.0, origin);
        let mut rng = StdRng::seed_from_u64(7);
        // A second of refusals only: everything after it is refused here...
        for _ in 0..1_000 {
            if t.admit(origin, &mut rng) {
                t.answered(origin, false);
            }
        }
        assert!(t.refusal_probability(origin) > 0.99);
        // ... until those counts are a whole window old.
        assert!(t.refusal_probability(origin + WINDOW - SLICE) > 0.99);
        assert_eq!(t.refusal_probability(origin + WINDOW), 0.0);
        for _ in 0..10 {
            t.answered(origin + WINDOW, false);
        }
        assert!(t.refusal_probability(origin + WINDOW) > 0.9);
        t.reset();
        assert_eq!(t.refusal_probability(origin + WINDOW), 0.0);
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("loadgen_throttle.txt", 64))]

        /// Past its capacity, the switch is sent about `k` times what it admits: never much
        /// less (the throttle would be costing payments the switch could have taken), never
        /// much more (the refusals it would spend its capacity on).
        #[test]
        fn past_capacity_the_switch_sees_about_k_times_what_it_admits(
            k in 1.1f64..2.0,
            overload in 1.2f64..4.0,
            seed in any::<u64>(),
        ) {
            let capacity = 100u32;
            let offered = (f64::from(capacity) * overload) as u32;
            let (sent, admitted) = run(k, offered, capacity, 4_000, seed);
            // The switch stays busy: it admits all it can, but for the chance of a millisecond
            // sent less than it could take.
            prop_assert!(admitted >= 98_000, "admitted {admitted}");
            let want = (k * admitted as f64).min(f64::from(offered) * 1000.0);
            let ratio = sent as f64 / want;
            prop_assert!((0.97..=1.03).contains(&ratio), "sent {sent}, k x admitted {want}");
        }
    }
}
