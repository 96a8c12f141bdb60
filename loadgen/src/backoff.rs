//! Requests the switch refused as busy: which answers those are, and when to send them again.
//!
//! A 91 for overload (reason 22), a deadline passed (33) or shedding (34), and a frame refused
//! with error frame 8, all say that nothing was done and nothing is remembered (PROTOCOL.md
//! 6.2, 8.1, 8.2): the request is sent again with the same request id, after the response
//! frame's `retry_after_ms` plus a random part of up to as long again, so that refused
//! clients do not all come back together. A bounded number of times, within a bounded time;
//! then loadgen gives it up, and it stays refused: it did nothing.

use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use switch::wire::{Reason, ResponseCode};

/// The wait when the switch gives no hint (reason 22 and 33, a busy frame: `retry_after_ms`
/// 0), and the least wait whatever the hint.
pub const HINT_MIN_MS: u16 = 10;

/// Why the switch refused a request it did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// 91, reason 34: new payments shed for overload.
    Shed,
    /// 91, reason 33: the deadline passed before the switch came to it.
    DeadlinePassed,
    /// 91, reason 22 (a limit of section 8 met), or error frame 8 (no room for the frame).
    Overloaded,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Shed, Refusal::DeadlinePassed, Refusal::Overloaded];

    /// The refusal an answer is, if it is one; any other answer (91 for another reason, 96
    /// among them) is not.
    pub fn of(code: ResponseCode, reason: Reason) -> Option<Refusal> {
        if code != ResponseCode::SystemBusy {
            return None;
        }
        match reason {
            Reason::SHED => Some(Refusal::Shed),
            Reason::DEADLINE_PASSED => Some(Refusal::DeadlinePassed),
            Reason::OVERLOADED => Some(Refusal::Overloaded),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Refusal::Shed => 0,
            Refusal::DeadlinePassed => 1,
            Refusal::Overloaded => 2,
        }
    }
}

/// How often, and for how long, a refused request is sent again (`--retries-max`,
/// `--retry-secs-max`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Sends after the first, at most.
    pub retries_max: u8,
    /// From the first refusal, the latest a request is sent again.
    pub give_up_after: Duration,
}

/// The wait before sending again, for a hint of `hint_ms` (at least `HINT_MIN_MS`): uniform
/// in [hint, 2 × hint], to the microsecond.
pub fn delay(hint_ms: u16, rng: &mut impl Rng) -> Duration {
    let hint_us = u64::from(hint_ms.max(HINT_MIN_MS)) * 1000;
    Duration::from_micros(hint_us + rng.gen_range(0..=hint_us))
}

impl RetryPolicy {
    /// When to send again a request refused at `now` with the hint `hint_ms`, after
    /// `retries` sends again already, first refused at `since`; `None`: give it up.
    pub fn next(
        &self,
        retries: u8,
        since: Instant,
        now: Instant,
        hint_ms: u16,
        rng: &mut impl Rng,
    ) -> Option<Instant> {
        if retries >= self.retries_max {
            return None;
        }
        let due = now + delay(hint_ms, rng);
        (due.saturating_duration_since(since) <= self.give_up_after).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn only_busy_answers_for_overload_deadline_or_shedding_are_refusals() {
        let busy = ResponseCode::SystemBusy;
        assert_eq!(Refusal::of(busy, Reason(34)), Some(Refusal::Shed));
        assert_eq!(Refusal::of(busy, Reason(33)), Some(Refusal::DeadlinePassed));
        assert_eq!(Refusal::of(busy, Reason(22)), Some(Refusal::Overloaded));
        // Busy for another reason (response too large, disk full), or any other code with
        // those reasons, is not.
        for reason in [0, 27, 28, 29, 32] {
            assert_eq!(Refusal::of(busy, Reason(reason)), None, "{reason}");
        }
        for code in [ResponseCode::SystemMalfunction, ResponseCode::Approved] {
            assert_eq!(Refusal::of(code, Reason(34)), None);
        }
    }

    proptest! {
        /// The wait is the hint (at least the minimum) plus up to as long again, and the
        /// random part is spread over that range rather than stuck at one end.
        #[test]
        fn the_wait_is_between_the_hint_and_twice_it(hint_ms in 0u16.., seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let hint = Duration::from_millis(u64::from(hint_ms.max(HINT_MIN_MS)));
            let waits: Vec<Duration> = (0..64).map(|_| delay(hint_ms, &mut rng)).collect();
            for &w in &waits {
                prop_assert!(w >= hint && w <= hint * 2, "{w:?} for {hint:?}");
            }
            let (low, high) = (hint + hint / 4, hint * 2 - hint / 4);
            prop_assert!(waits.iter().any(|&w| w < low), "none in the lower quarter");
            prop_assert!(waits.iter().any(|&w| w > high), "none in the upper quarter");
        }

        /// Refused every time, a request is sent again at most `retries_max` times, never
        /// later than `give_up_after` from its first refusal, each time after the hint.
        #[test]
        fn a_request_refused_every_time_is_given_up(
            retries_max in 0u8..20,
            give_up_ms in 1u64..5_000,
            hint_ms in 0u16..1_000,
            seed in any::<u64>(),
        ) {
            let policy = RetryPolicy {
                retries_max,
                give_up_after: Duration::from_millis(give_up_ms),
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let since = Instant::now();
            let mut now = since;
            let mut retries = 0u8;
            while let Some(due) = policy.next(retries, since, now, hint_ms, &mut rng) {
                prop_assert!(due - now >= Duration::from_millis(u64::from(hint_ms.max(HINT_MIN_MS))));
                prop_assert!(due - since <= policy.give_up_after);
                retries += 1;
                prop_assert!(retries <= retries_max);
                now = due;
            }
            // Given up: either every retry was spent, or the next wait would end past the bound.
            let hint = Duration::from_millis(u64::from(hint_ms.max(HINT_MIN_MS)));
            prop_assert!(retries == retries_max || now + hint * 2 > since + policy.give_up_after);
        }
    }
}
