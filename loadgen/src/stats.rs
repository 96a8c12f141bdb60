//! What a run measures: an HdrHistogram per operation, answers by code, and a per-second
//! time series. Latency is from the intended send time (open loop) or the actual one (closed
//! loop), to the moment the answer is read.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::mix::OpKind;

/// Latencies are recorded in microseconds, up to a minute.
const LATENCY_US_MAX: u64 = 60_000_000;

fn histogram(significant_digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, significant_digits)
        .expect("constant bounds are valid")
}

/// One operation's counts.
#[derive(Clone, Debug)]
pub struct OpStats {
    pub latency_us: Histogram<u64>,
    pub count: u64,
    pub approved: u64,
    /// Declines by ISO response code.
    pub declined: BTreeMap<u8, u64>,
    /// Requests with no usable answer (time-out, connection lost, malformed answer).
    pub errors: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency_us: histogram(3),
            count: 0,
            approved: 0,
            declined: BTreeMap::new(),
            errors: 0,
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug)]
pub struct Second {
    /// Requests whose intended send time falls in this second (open loop: the target).
    pub scheduled: u64,
    /// Answers read in this second.
    pub answered: u64,
    pub errors: u64,
    /// Latency of the requests scheduled in this second.
    pub latency_us: Histogram<u64>,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            scheduled: 0,
            answered: 0,
            errors: 0,
            // Two digits keep an hour of seconds small.
            latency_us: histogram(2),
        }
    }
}

/// A run's measurements. Seconds count from `Stats`'s origin (the start of measurement).
#[derive(Clone, Debug)]
pub struct Stats {
    pub ops: [OpStats; 6],
    pub seconds: Vec<Second>,
    /// Latency of everything since the last `begin_phase` (for the step profile's verdicts).
    pub phase_latency_us: Histogram<u64>,
    pub phase_answered: u64,
    pub phase_errors: u64,
    /// Longest run the time series may cover.
    seconds_max: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new(24 * 3600)
    }
}

impl Stats {
    pub fn new(seconds_max: usize) -> Stats {
        Stats {
            ops: Default::default(),
            seconds: Vec::new(),
            phase_latency_us: histogram(3),
            phase_answered: 0,
            phase_errors: 0,
            seconds_max: seconds_max.max(1),
        }
    }

    fn second(&mut self, at: Duration) -> &mut Second {
        let i = (at.as_secs() as usize).min(self.seconds_max - 1);
        if self.seconds.len() <= i {
            self.seconds.resize_with(i + 1, Second::default);
        }
        &mut self.seconds[i]
    }

    pub fn scheduled(&mut self, intended: Duration, n: u64) {
        self.second(intended).scheduled += n;
    }

    /// An answer: its operation, its code (`None` approved) and when it was intended and read.
    pub fn answered(
        &mut self,
        op: OpKind,
        declined: Option<u8>,
        intended: Duration,
        now: Duration,
    ) {
        let latency_us = now.saturating_sub(intended).as_micros().max(1) as u64;
        let o = &mut self.ops[op.index()];
        o.count += 1;
        o.latency_us.saturating_record(latency_us);
        match declined {
            None => o.approved += 1,
            Some(code) => *o.declined.entry(code).or_default() += 1,
        }
        self.phase_latency_us.saturating_record(latency_us);
        self.phase_answered += 1;
        self.second(intended)
            .latency_us
            .saturating_record(latency_us);
        self.second(now).answered += 1;
    }

    pub fn error(&mut self, op: OpKind, now: Duration) {
        let o = &mut self.ops[op.index()];
        o.count += 1;
        o.errors += 1;
        self.phase_errors += 1;
        self.second(now).errors += 1;
    }

    pub fn begin_phase(&mut self) {
        self.phase_latency_us.reset();
        self.phase_answered = 0;
        self.phase_errors = 0;
    }

    pub fn answered_total(&self) -> u64 {
        self.ops.iter().map(|o| o.count - o.errors).sum()
    }

    pub fn errors_total(&self) -> u64 {
        self.ops.iter().map(|o| o.errors).sum()
    }

    /// Declines and errors by code over all operations ("err" for no answer).
    pub fn by_code(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for o in &self.ops {
            for (code, n) in &o.declined {
                *out.entry(format!("{code:02}")).or_default() += n;
            }
            if o.errors > 0 {
                *out.entry("err".to_string()).or_default() += o.errors;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_from_the_intended_time() {
        let mut s = Stats::new(10);
        s.scheduled(Duration::from_millis(1500), 1);
        // Intended at 1.5 s, answered at 2.6 s: 1.1 s late, whatever the actual send time.
        s.answered(
            OpKind::Sale,
            None,
            Duration::from_millis(1500),
            Duration::from_millis(2600),
        );
        s.answered(
            OpKind::Sale,
            Some(51),
            Duration::from_millis(1600),
            Duration::from_millis(1601),
        );
        s.error(OpKind::Capture, Duration::from_secs(30));
        let sale = &s.ops[OpKind::Sale.index()];
        assert_eq!((sale.count, sale.approved), (2, 1));
        assert_eq!(sale.declined.get(&51), Some(&1));
        assert!(sale.latency_us.max() >= 1_099_000);
        assert_eq!(s.seconds[1].scheduled, 1);
        assert_eq!(s.seconds[1].latency_us.len(), 2);
        assert_eq!(s.seconds[2].answered, 1);
        // Past the bound, seconds pile into the last one instead of growing without limit.
        assert_eq!(s.seconds.len(), 10);
        assert_eq!(s.seconds[9].errors, 1);
        assert_eq!(s.answered_total(), 2);
        assert_eq!(s.by_code().get("51"), Some(&1));
        assert_eq!(s.by_code().get("err"), Some(&1));
    }
}
