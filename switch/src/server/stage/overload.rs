//! When the ledger stage sheds new payments (PROTOCOL.md 8.2), decided from queueing delays in
//! the manner of CoDel: the smallest delay over an interval is the queue's standing delay, the
//! part that does not drain. Sans-IO: time is an argument, so the rule is tested without a
//! clock; the stage feeds it each batch's delay (`head_delay`: the wait of its oldest job) and
//! publishes the verdict in a `Signal` the connections read.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The most a retry-after hint says (it fits the frame header's u16 with room to spare).
pub const RETRY_AFTER_MAX: Duration = Duration::from_millis(1000);

/// `[overload]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverloadSettings {
    /// Off: nothing is ever shed.
    pub enabled: bool,
    /// A queueing delay at or above this is "above the target".
    pub target: Duration,
    /// How long the batches' delays must stay above the target before shedding starts; also
    /// the smallest retry-after hint. At most `RETRY_AFTER_MAX` (validated).
    pub interval: Duration,
}

/// The shedding state machine.
#[derive(Clone, Debug)]
pub struct Shedder {
    settings: OverloadSettings,
    /// Since when every batch's delay has been above the target (none: the last one
    /// was under it, or the stage was idle).
    above_since: Option<Instant>,
    shedding: bool,
    /// When shedding last stopped: for `RECENT_INTERVALS` intervals after, a delay above the
    /// target starts it again at once.
    stopped_at: Option<Instant>,
    retry_after: Duration,
}

/// How long, in intervals, the shedder remembers that it was shedding (as CoDel remembers a
/// recent dropping state): a queue that comes back above the target that soon is the same
/// overload coming back as soon as shedding stopped, not a burst to wait out. Without it, each
/// stop would let the queue grow for a whole interval before shedding again, and the payments
/// admitted meanwhile would wait that long.
pub const RECENT_INTERVALS: u32 = 16;

impl Shedder {
    pub fn new(settings: OverloadSettings) -> Self {
        Shedder {
            settings,
            above_since: None,
            shedding: false,
            stopped_at: None,
            retry_after: settings.interval.min(RETRY_AFTER_MAX),
        }
    }

    /// A batch taken at `now`, whose oldest item waited `delay` in the queue (the
    /// smallest such delay over an interval is the standing delay). Returns whether shedding
    /// changed.
    pub fn observe(&mut self, now: Instant, delay: Duration) -> bool {
        if !self.settings.enabled {
            return false;
        }
        let was = self.shedding;
        if delay < self.settings.target {
            self.above_since = None;
            if self.shedding {
                self.stopped_at = Some(now);
            }
            self.shedding = false;
        } else {
            let since = *self.above_since.get_or_insert(now);
            let recent = self.settings.interval.saturating_mul(RECENT_INTERVALS);
            let recently_shedding = self
                .stopped_at
                .is_some_and(|at| now.saturating_duration_since(at) < recent);
            if recently_shedding || now.saturating_duration_since(since) >= self.settings.interval {
                self.shedding = true;
            }
            // Twice the standing delay: about when a queue kept from growing has drained it.
            self.retry_after = delay.saturating_mul(2).clamp(
                self.settings.interval,
                RETRY_AFTER_MAX.max(self.settings.interval),
            );
        }
        was != self.shedding
    }

    pub fn shedding(&self) -> bool {
        self.shedding
    }

    /// Whether a new payment that waited `waited` in the queue is shed in the stage.
    pub fn sheds(&self, waited: Duration) -> bool {
        self.shedding && waited > self.settings.target
    }

    /// How long a client refused for overload should wait: at least the interval, at most
    /// `RETRY_AFTER_MAX`.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

/// The delay a batch taken at `at` shows the shedder: the wait of its oldest job (the head of
/// the queue), given when each job was `received`; `None` for an empty batch. Not the
/// freshest job's: when the stage takes all that is queued, however far behind it is, the
/// last job in was queued a moment ago, and a rule fed that would never see the queue.
pub fn head_delay(at: Instant, received: impl IntoIterator<Item = Instant>) -> Option<Duration> {
    received
        .into_iter()
        .min()
        .map(|oldest| at.saturating_duration_since(oldest))
}

/// What the connections read of the shedder: whether new payments are shed, and the hint a
/// response frame with a shed result carries.
#[derive(Debug)]
pub struct Signal {
    shedding: AtomicBool,
    retry_after_ms: AtomicU16,
}

impl Signal {
    pub fn new(shedder: &Shedder) -> Self {
        let signal = Signal {
            shedding: AtomicBool::new(false),
            retry_after_ms: AtomicU16::new(1),
        };
        signal.publish(shedder);
        signal
    }

    pub fn publish(&self, shedder: &Shedder) {
        self.retry_after_ms
            .store(duration_ms(shedder.retry_after()), Ordering::Relaxed);
        self.shedding.store(shedder.shedding(), Ordering::Relaxed);
    }

    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Never 0: a frame with a shed result always carries a hint.
    pub fn retry_after_ms(&self) -> u16 {
        self.retry_after_ms.load(Ordering::Relaxed).max(1)
    }
}

/// Whole milliseconds, rounded up (a hint never says sooner than meant), at least 1.
fn duration_ms(d: Duration) -> u16 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u16::try_from(ms).unwrap_or(u16::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn settings(target_ms: u64, interval_ms: u64) -> OverloadSettings {
        OverloadSettings {
            enabled: true,
            target: Duration::from_millis(target_ms),
            interval: Duration::from_millis(interval_ms),
        }
    }

    /// The rule stated over the whole history of (time in ms, oldest delay), run by run: a
    /// run is a stretch of observations at or above the target, ended by one under it. A run
    /// sheds from its first observation that is a whole interval after the run's first, or at
    /// once if it began within `RECENT_INTERVALS` intervals of the end of a run that was
    /// shedding when it ended. Returns whether the last observation leaves it shedding.
    fn model(history: &[(u64, Duration)], target: Duration, interval_ms: u64) -> bool {
        let recent_ms = interval_ms * u64::from(RECENT_INTERVALS);
        let mut stopped_at: Option<u64> = None;
        let mut i = 0;
        let mut shedding = false;
        while i < history.len() {
            if history[i].1 < target {
                i += 1;
                continue;
            }
            let first = history[i].0;
            let end = history[i..]
                .iter()
                .position(|(_, d)| *d < target)
                .map_or(history.len(), |n| i + n);
            let recently = stopped_at.is_some_and(|at| first - at < recent_ms);
            let run = &history[i..end];
            shedding = recently || run.iter().any(|&(t, _)| t - first >= interval_ms);
            if end < history.len() {
                if shedding {
                    stopped_at = Some(history[end].0);
                }
                shedding = false;
            }
            i = end;
        }
        shedding
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_overload_shedder.txt", 256))]

        /// Enter after a whole interval above the target (or at once, soon after shedding
        /// stopped), leave at the first batch under it; the hint is twice the delay seen above
        /// the target, within [interval, 1 s].
        #[test]
        fn sheds_exactly_when_the_head_of_the_queue_stayed_above_the_target_an_interval(
            target_ms in 1u64..20,
            interval_ms in 1u64..300,
            steps in prop::collection::vec(
                (0u64..60, prop_oneof![3 => 0u64..40_000, 1 => 0u64..800_000]),
                1..60,
            ),
        ) {
            let start = Instant::now();
            let target = Duration::from_millis(target_ms);
            let interval = Duration::from_millis(interval_ms);
            let mut shedder = Shedder::new(settings(target_ms, interval_ms));
            let mut history = Vec::new();
            let mut now_ms = 0u64;
            let mut want_hint = interval;
            for (gap_ms, delay_us) in steps {
                now_ms += gap_ms;
                let delay = Duration::from_micros(delay_us);
                let was = shedder.shedding();
                let changed = shedder.observe(start + Duration::from_millis(now_ms), delay);
                history.push((now_ms, delay));
                let want = model(&history, target, interval_ms);
                prop_assert_eq!(shedder.shedding(), want, "history {:?}", history);
                prop_assert_eq!(changed, was != want);
                if delay >= target {
                    want_hint = (delay * 2).clamp(interval, RETRY_AFTER_MAX.max(interval));
                }
                prop_assert_eq!(shedder.retry_after(), want_hint);
                // In the stage, only what waited over the target is shed, and only while
                // shedding.
                prop_assert_eq!(shedder.sheds(target + Duration::from_nanos(1)), want);
                prop_assert!(!shedder.sheds(target));
            }
        }

        /// Disabled, nothing is ever shed, whatever the delays.
        #[test]
        fn a_disabled_shedder_never_sheds(
            steps in prop::collection::vec((0u64..500, 0u64..10_000), 1..40),
        ) {
            let start = Instant::now();
            let mut shedder = Shedder::new(OverloadSettings { enabled: false, ..settings(5, 100) });
            let mut now_ms = 0;
            for (gap_ms, delay_ms) in steps {
                now_ms += gap_ms;
                prop_assert!(!shedder.observe(start + Duration::from_millis(now_ms), Duration::from_millis(delay_ms)));
                prop_assert!(!shedder.shedding());
                prop_assert!(!shedder.sheds(Duration::from_secs(10)));
            }
        }
    }

    #[test]
    fn an_idle_stage_forgets_the_delay_it_saw_before_but_not_that_it_was_shedding() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut shedder = Shedder::new(settings(5, 100));
        shedder.observe(at(0), Duration::from_millis(50));
        assert!(!shedder.shedding(), "not a whole interval yet");
        shedder.observe(at(50), Duration::ZERO);
        shedder.observe(at(150), Duration::from_millis(50));
        assert!(!shedder.shedding(), "the idle moment broke the run");
        shedder.observe(at(250), Duration::from_millis(50));
        assert!(
            shedder.shedding(),
            "a whole interval above the target since 150"
        );
        assert_eq!(shedder.retry_after(), Duration::from_millis(100));
        shedder.observe(at(260), Duration::from_millis(700));
        assert_eq!(shedder.retry_after(), RETRY_AFTER_MAX);
        assert!(
            shedder.observe(at(261), Duration::ZERO),
            "an empty queue ends shedding"
        );
        assert!(!shedder.shedding());
        // The overload is back as soon as shedding stopped: no new interval to wait out.
        assert!(shedder.observe(at(300), Duration::from_millis(6)));
        assert!(shedder.observe(at(301), Duration::ZERO));
        // Sixteen intervals after it stopped, a queue above the target is a new one.
        let later = 301 + 100 * u64::from(RECENT_INTERVALS);
        assert!(!shedder.observe(at(later), Duration::from_millis(6)));
        assert!(!shedder.observe(at(later + 99), Duration::from_millis(6)));
        assert!(shedder.observe(at(later + 100), Duration::from_millis(6)));
    }

    #[test]
    fn a_batch_shows_the_wait_of_its_oldest_job_however_fresh_the_others() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_millis(30);
        let received = [t0 + Duration::from_millis(29), t0, at];
        assert_eq!(head_delay(at, received), Some(Duration::from_millis(30)));
        assert_eq!(head_delay(at, []), None);
        // A job stamped after `at` (clocks of two threads) waited nothing, not a negative time.
        assert_eq!(
            head_delay(t0, [t0 + Duration::from_millis(1)]),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_signal_says_what_the_shedder_decided_in_whole_milliseconds() {
        let start = Instant::now();
        let mut shedder = Shedder::new(settings(1, 10));
        let signal = Signal::new(&shedder);
        assert!(!signal.shedding());
        assert_eq!(signal.retry_after_ms(), 10);
        shedder.observe(start, Duration::from_micros(40_100));
        shedder.observe(
            start + Duration::from_millis(10),
            Duration::from_micros(40_100),
        );
        signal.publish(&shedder);
        assert!(signal.shedding());
        assert_eq!(signal.retry_after_ms(), 81, "80.2 ms rounded up");
    }
}
