//! What a run measures: an HdrHistogram per operation, answers by code, and a per-second
//! time series. Latency is from the intended send time (open loop) or the actual one (closed
//! loop), to the moment the answer is read.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::backoff::Refusal;
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
    /// Refusals (also counted in `declined` as 91), by `Refusal::index`.
    pub refused: [u64; 3],
    /// Latency of the refusals (a subset of `latency_us`: the rest is the admitted requests').
    pub refused_latency_us: Histogram<u64>,
    /// Refused requests sent again.
    pub retries: u64,
    /// Refused requests given up (not sent again: they did nothing).
    pub abandoned: u64,
    /// New payments refused by loadgen itself (`--throttle-k`), never sent: not in `count`.
    pub throttled: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency_us: histogram(3),
            count: 0,
            approved: 0,
            declined: BTreeMap::new(),
            errors: 0,
            refused: [0; 3],
            refused_latency_us: histogram(3),
            retries: 0,
            abandoned: 0,
            throttled: 0,
        }
    }
}

impl OpStats {
    /// Latency of the requests the switch admitted (executed, approved or declined).
    pub fn admitted_latency_us(&self) -> Histogram<u64> {
        admitted(&self.latency_us, Some(&self.refused_latency_us))
    }
}

/// `all` without `refused` (recorded in both).
pub fn admitted(all: &Histogram<u64>, refused: Option<&Histogram<u64>>) -> Histogram<u64> {
    let mut h = all.clone();
    if let Some(r) = refused {
        // Every refused value was recorded in `all` too, so the subtraction cannot go below 0.
        let _ = h.subtract(r);
    }
    h
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
    /// Approvals read in this second (goodput).
    pub approved: u64,
    /// Refusals read in this second.
    pub refused: u64,
    /// Refused requests sent again in this second.
    pub retries: u64,
    /// New payments refused by loadgen itself in this second.
    pub throttled: u64,
    /// Latency of the refusals among the requests scheduled in this second (made at the
    /// first refusal: a run without any keeps none).
    pub refused_latency_us: Option<Histogram<u64>>,
    /// Authorizations admitted (executed), and captures and reversals refused, read in this
    /// second: a switch that sheds new payments first refuses none of the second while it
    /// admits any of the first.
    pub authorizations_admitted: u64,
    pub captures_reversals_refused: u64,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            scheduled: 0,
            answered: 0,
            errors: 0,
            // Two digits keep an hour of seconds small.
            latency_us: histogram(2),
            approved: 0,
            refused: 0,
            retries: 0,
            throttled: 0,
            refused_latency_us: None,
            authorizations_admitted: 0,
            captures_reversals_refused: 0,
        }
    }
}

impl Second {
    /// Latency of the admitted requests scheduled in this second.
    pub fn admitted_latency_us(&self) -> Histogram<u64> {
        admitted(&self.latency_us, self.refused_latency_us.as_ref())
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
        self.record(op, declined, intended, now);
        if op == OpKind::Authorize {
            self.second(now).authorizations_admitted += 1;
        }
    }

    /// A refusal (91 for overload, deadline or shedding; a busy frame): nothing was done.
    pub fn refused(&mut self, op: OpKind, why: Refusal, intended: Duration, now: Duration) {
        let code = switch::wire::ResponseCode::SystemBusy.as_u8();
        let latency_us = self.record(op, Some(code), intended, now);
        let o = &mut self.ops[op.index()];
        o.refused[why.index()] += 1;
        o.refused_latency_us.saturating_record(latency_us);
        self.second(intended)
            .refused_latency_us
            .get_or_insert_with(|| histogram(2))
            .saturating_record(latency_us);
        let second = self.second(now);
        second.refused += 1;
        if matches!(op, OpKind::Capture | OpKind::Reverse) {
            second.captures_reversals_refused += 1;
        }
    }

    /// Counts an answer; returns its latency in microseconds.
    fn record(
        &mut self,
        op: OpKind,
        declined: Option<u8>,
        intended: Duration,
        now: Duration,
    ) -> u64 {
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
        let second = self.second(now);
        second.answered += 1;
        if declined.is_none() {
            second.approved += 1;
        }
        latency_us
    }

    /// A refused request sent again at `now`.
    pub fn retried(&mut self, op: OpKind, now: Duration) {
        self.ops[op.index()].retries += 1;
        self.second(now).retries += 1;
    }

    /// A new payment refused by loadgen itself at `now` (never sent).
    pub fn throttled(&mut self, op: OpKind, now: Duration) {
        self.ops[op.index()].throttled += 1;
        self.second(now).throttled += 1;
    }

    /// A refused request given up.
    pub fn abandoned(&mut self, op: OpKind) {
        self.ops[op.index()].abandoned += 1;
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

    /// Answers the switch executed (approved or declined), refusals left out.
    pub fn admitted_total(&self) -> u64 {
        let refused: u64 = self.ops.iter().flat_map(|o| o.refused).sum();
        self.answered_total() - refused
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
