//! When each request of an open-loop run is due.
//!
//! A schedule is a list of segments, each a straight line of rate over time (requests per
//! second). Its integral Λ(t) is the number of requests due by `t`; request `i` (0-based) is due
//! at Λ⁻¹(i), which is exact within each segment (Λ is quadratic there), so send times never
//! drift and never bunch: two consecutive ones are at least 1 / (highest rate) apart.
//!
//! The festival curve is five segments: a baseline, a ramp towards midnight, the spike to the
//! peak, a plateau at the peak, and the decay back to the baseline. Each ends where the next
//! begins, so the curve is continuous.

use serde::Serialize;

/// One straight piece of a schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Segment {
    pub name: String,
    pub duration_secs: f64,
    pub rate_start: f64,
    pub rate_end: f64,
}

impl Segment {
    pub fn new(name: &str, duration_secs: f64, rate_start: f64, rate_end: f64) -> Segment {
        Segment {
            name: name.to_string(),
            duration_secs,
            rate_start,
            rate_end,
        }
    }

    /// Requests due in the first `tau` seconds of the segment.
    fn integral(&self, tau: f64) -> f64 {
        let tau = tau.clamp(0.0, self.duration_secs);
        if self.duration_secs <= 0.0 {
            return 0.0;
        }
        let slope = (self.rate_end - self.rate_start) / self.duration_secs;
        self.rate_start * tau + 0.5 * slope * tau * tau
    }

    /// The time into the segment by which `m` requests are due (the inverse of `integral`).
    fn inverse(&self, m: f64) -> f64 {
        if m <= 0.0 || self.duration_secs <= 0.0 {
            return 0.0;
        }
        let half_slope = 0.5 * (self.rate_end - self.rate_start) / self.duration_secs;
        // a·τ² + r0·τ − m = 0, in the form that stays exact when a is zero or negative.
        let discriminant = (self.rate_start * self.rate_start + 4.0 * half_slope * m).max(0.0);
        let denominator = self.rate_start + discriminant.sqrt();
        if denominator <= 0.0 {
            return self.duration_secs;
        }
        (2.0 * m / denominator).clamp(0.0, self.duration_secs)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("segment {name}: {what} must be a finite number at least 0, not {value}")]
    Invalid {
        name: String,
        what: &'static str,
        value: f64,
    },
    #[error("a schedule needs at least one segment")]
    Empty,
    #[error("the schedule asks for {0:.0} requests; at most 2^40 are supported")]
    TooLarge(f64),
}

/// A piecewise-linear rate over time.
#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    segments: Vec<Segment>,
    /// For each segment, its start time and the requests due before it.
    #[serde(skip)]
    starts: Vec<(f64, f64)>,
}

impl Schedule {
    pub fn new(segments: Vec<Segment>) -> Result<Schedule, ScheduleError> {
        if segments.is_empty() {
            return Err(ScheduleError::Empty);
        }
        for s in &segments {
            for (what, value) in [
                ("duration", s.duration_secs),
                ("start rate", s.rate_start),
                ("end rate", s.rate_end),
            ] {
                if !value.is_finite() || value < 0.0 {
                    return Err(ScheduleError::Invalid {
                        name: s.name.clone(),
                        what,
                        value,
                    });
                }
            }
        }
        let mut starts = Vec::with_capacity(segments.len());
        let (mut t, mut n) = (0.0, 0.0);
        for s in &segments {
            starts.push((t, n));
            t += s.duration_secs;
            n += s.integral(s.duration_secs);
        }
        if n > (1u64 << 40) as f64 {
            return Err(ScheduleError::TooLarge(n));
        }
        Ok(Schedule { segments, starts })
    }

    /// `rate` requests per second for `duration_secs`.
    pub fn constant(rate: f64, duration_secs: f64) -> Result<Schedule, ScheduleError> {
        Schedule::new(vec![Segment::new("constant", duration_secs, rate, rate)])
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn duration_secs(&self) -> f64 {
        let last = self.segments.len() - 1;
        self.starts[last].0 + self.segments[last].duration_secs
    }

    /// The highest rate anywhere in the schedule.
    pub fn rate_max(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| s.rate_start.max(s.rate_end))
            .fold(0.0, f64::max)
    }

    /// The segment that holds `t` (the later one at a boundary).
    fn segment_at(&self, t: f64) -> usize {
        self.starts
            .partition_point(|&(start, _)| start <= t)
            .saturating_sub(1)
    }

    /// The target rate at `t` seconds (0 outside the schedule).
    pub fn rate_at(&self, t: f64) -> f64 {
        if t < 0.0 || t > self.duration_secs() {
            return 0.0;
        }
        let k = self.segment_at(t);
        let s = &self.segments[k];
        if s.duration_secs <= 0.0 {
            return s.rate_end;
        }
        let tau = (t - self.starts[k].0).min(s.duration_secs);
        s.rate_start + (s.rate_end - s.rate_start) * tau / s.duration_secs
    }

    /// Λ(t): requests due in `[0, t]` as a real number.
    pub fn integral(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        let k = self.segment_at(t);
        let (start, before) = self.starts[k];
        before + self.segments[k].integral(t - start)
    }

    /// Λ over the whole schedule.
    pub fn total(&self) -> f64 {
        self.integral(self.duration_secs())
    }

    /// How many requests the schedule sends: those with Λ⁻¹(i) inside it, i.e. ⌈Λ(end)⌉.
    pub fn count(&self) -> u64 {
        self.total().ceil() as u64
    }

    /// When request `i` is due, in seconds from the start; `None` past the end.
    pub fn send_time(&self, i: u64) -> Option<f64> {
        let m = i as f64;
        if m >= self.total() {
            return None;
        }
        // The last segment whose first request is at or before `i`: since i < Λ(end), that
        // segment sends at least one request (empty ones before it share its count).
        let k = self
            .starts
            .partition_point(|&(_, before)| before <= m)
            .saturating_sub(1);
        let (start, before) = self.starts[k];
        Some(start + self.segments[k].inverse(m - before))
    }
}

/// The festival curve's parameters (rates in requests per second).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Festival {
    pub peak: f64,
    pub baseline: f64,
    /// The rate the ramp reaches just before the spike.
    pub pre_spike: f64,
    pub baseline_secs: f64,
    pub ramp_secs: f64,
    pub spike_secs: f64,
    pub plateau_secs: f64,
    pub decay_secs: f64,
    /// Seconds at the baseline after the decay: quiet seconds in which to see the peak's
    /// after-effects.
    pub tail_secs: f64,
}

impl Festival {
    /// Default shape around `peak`: a tenth of it as baseline, a third before the spike.
    pub fn around(peak: f64) -> Festival {
        Festival {
            peak,
            baseline: peak * 0.1,
            pre_spike: peak * 0.3,
            baseline_secs: 5.0,
            ramp_secs: 5.0,
            spike_secs: 1.0,
            plateau_secs: 10.0,
            decay_secs: 10.0,
            tail_secs: 0.0,
        }
    }

    pub fn schedule(&self) -> Result<Schedule, ScheduleError> {
        let mut segments = vec![
            Segment::new("baseline", self.baseline_secs, self.baseline, self.baseline),
            Segment::new("ramp", self.ramp_secs, self.baseline, self.pre_spike),
            Segment::new("spike", self.spike_secs, self.pre_spike, self.peak),
            Segment::new("plateau", self.plateau_secs, self.peak, self.peak),
            Segment::new("decay", self.decay_secs, self.peak, self.baseline),
        ];
        // A phase of its own only when asked for.
        if self.tail_secs > 0.0 {
            segments.push(Segment::new(
                "tail",
                self.tail_secs,
                self.baseline,
                self.baseline,
            ));
        }
        Schedule::new(segments)
    }
}

/// The send times of one of `lanes` lanes: lane `k` sends requests k, k + lanes, k + 2·lanes…
#[derive(Clone, Debug)]
pub struct LaneCursor {
    next: u64,
    step: u64,
}

impl LaneCursor {
    pub fn new(lane: u64, lanes: u64) -> LaneCursor {
        assert!(lanes > 0 && lane < lanes, "lane {lane} of {lanes}");
        LaneCursor {
            next: lane,
            step: lanes,
        }
    }

    /// The next request index of this lane and when it is due, without taking it.
    pub fn peek(&self, schedule: &Schedule) -> Option<(u64, f64)> {
        schedule.send_time(self.next).map(|t| (self.next, t))
    }

    pub fn advance(&mut self) {
        self.next += self.step;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn constant_rate_sends_evenly() {
        let s = Schedule::constant(100.0, 10.0).expect("valid");
        assert_eq!(s.count(), 1000);
        for i in [0u64, 1, 50, 999] {
            let t = s.send_time(i).expect("inside");
            assert!((t - i as f64 / 100.0).abs() < 1e-9, "{i}: {t}");
        }
        assert_eq!(s.send_time(1000), None);
    }

    #[test]
    fn festival_has_its_shape() {
        let f = Festival::around(10_000.0);
        let s = f.schedule().expect("valid");
        assert_eq!(s.duration_secs(), 31.0);
        assert_eq!(s.rate_at(1.0), 1_000.0);
        assert_eq!(s.rate_at(7.5), 2_000.0);
        assert_eq!(s.rate_at(11.0), 10_000.0);
        assert_eq!(s.rate_at(15.0), 10_000.0);
        assert_eq!(s.rate_at(26.0), 5_500.0);
        assert_eq!(s.rate_max(), 10_000.0);
        // 5·1000 + 5·2000 + 1·6500 + 10·10000 + 10·5500
        assert!((s.total() - 176_500.0).abs() < 1e-6, "{}", s.total());
        assert_eq!(s.count(), 176_500);
    }

    #[test]
    fn a_ramp_from_zero_starts_at_zero_and_speeds_up() {
        let s = Schedule::new(vec![Segment::new("ramp", 10.0, 0.0, 100.0)]).expect("valid");
        // Λ(t) = 5t², so request i is due at √(i/5).
        assert_eq!(s.count(), 500);
        for i in [0u64, 5, 20, 499] {
            let t = s.send_time(i).expect("inside");
            assert!((t - (i as f64 / 5.0).sqrt()).abs() < 1e-9, "{i}: {t}");
        }
    }

    #[test]
    fn empty_and_zero_rate_segments_are_skipped() {
        let s = Schedule::new(vec![
            Segment::new("idle", 2.0, 0.0, 0.0),
            Segment::new("instant", 0.0, 50.0, 50.0),
            Segment::new("run", 1.0, 10.0, 10.0),
        ])
        .expect("valid");
        assert_eq!(s.count(), 10);
        assert!((s.send_time(0).expect("inside") - 2.0).abs() < 1e-9);
        assert!((s.send_time(9).expect("inside") - 2.9).abs() < 1e-9);
    }

    #[test]
    fn bad_segments_are_refused() {
        assert_eq!(
            Schedule::new(vec![]).expect_err("refused"),
            ScheduleError::Empty
        );
        assert!(Schedule::constant(-1.0, 1.0).is_err());
        assert!(Schedule::constant(f64::NAN, 1.0).is_err());
        assert!(Schedule::constant(1.0, f64::INFINITY).is_err());
        assert!(Schedule::constant(1e12, 1e6).is_err());
    }

    #[test]
    fn lanes_split_the_schedule_without_overlap() {
        let s = Schedule::constant(1000.0, 1.0).expect("valid");
        let mut seen = Vec::new();
        for lane in 0..3 {
            let mut c = LaneCursor::new(lane, 3);
            while let Some((i, _)) = c.peek(&s) {
                seen.push(i);
                c.advance();
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<u64>>());
    }

    fn segments() -> impl Strategy<Value = Vec<Segment>> {
        prop::collection::vec((0.0f64..20.0, 0.0f64..3000.0, 0.0f64..3000.0), 1..6).prop_map(|v| {
            v.into_iter()
                .map(|(d, a, b)| Segment::new("s", d, a, b))
                .collect()
        })
    }

    fn festival() -> impl Strategy<Value = Festival> {
        (
            (1.0f64..50_000.0, 0.0f64..1.0, 0.0f64..1.0),
            (
                0.0f64..10.0,
                0.0f64..10.0,
                0.0f64..3.0,
                0.0f64..10.0,
                0.0f64..10.0,
            ),
        )
            .prop_map(|((peak, b, p), (bs, rs, ss, ps, ds))| Festival {
                peak,
                baseline: peak * b,
                pre_spike: peak * p,
                baseline_secs: bs,
                ramp_secs: rs,
                spike_secs: ss,
                plateau_secs: ps,
                decay_secs: ds,
                tail_secs: ds / 2.0,
            })
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("loadgen_schedule.txt"))]

        /// The number of requests sent is the integral of the rate, within one.
        #[test]
        fn count_is_the_integral(segments in segments()) {
            let s = Schedule::new(segments).expect("valid");
            let n = s.count();
            prop_assert!((n as f64 - s.total()).abs() <= 1.0);
            if n > 0 {
                prop_assert!(s.send_time(n - 1).is_some());
            }
            prop_assert!(s.send_time(n).is_none());
        }

        /// Send times are inside the schedule, non-decreasing, never closer than the highest
        /// rate allows, and request i is due where Λ reaches i.
        #[test]
        fn send_times_are_ordered_and_never_bunch(segments in segments()) {
            let s = Schedule::new(segments).expect("valid");
            let gap_min = 1.0 / s.rate_max().max(f64::MIN_POSITIVE);
            let mut previous: Option<f64> = None;
            for i in 0..s.count().min(20_000) {
                let t = s.send_time(i).expect("inside");
                prop_assert!((0.0..=s.duration_secs() + 1e-9).contains(&t), "{i}: {t}");
                prop_assert!((s.integral(t) - i as f64).abs() < 1e-6 * (1.0 + i as f64), "{i}: Λ({t}) = {}", s.integral(t));
                if let Some(p) = previous {
                    prop_assert!(t >= p, "{i}: {t} < {p}");
                    prop_assert!(t - p >= gap_min * (1.0 - 1e-6) - 1e-9, "{i}: gap {} < {gap_min}", t - p);
                }
                previous = Some(t);
            }
        }

        /// The festival curve has no jumps: at every boundary both sides agree.
        #[test]
        fn festival_is_continuous(f in festival()) {
            let s = f.schedule().expect("valid");
            let mut t = 0.0;
            for segment in s.segments() {
                t += segment.duration_secs;
                let eps = 1e-9;
                if t - eps > 0.0 && t + eps < s.duration_secs() {
                    let (before, after) = (s.rate_at(t - eps), s.rate_at(t + eps));
                    prop_assert!((before - after).abs() <= 1e-3 * (1.0 + f.peak), "at {t}: {before} vs {after}");
                }
            }
            prop_assert!(s.rate_max() <= f.peak.max(f.baseline).max(f.pre_spike) + 1e-9);
            prop_assert!((s.count() as f64 - s.total()).abs() <= 1.0);
        }
    }
}
