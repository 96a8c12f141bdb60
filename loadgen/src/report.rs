//! The report: a terminal table per operation, a JSON file, and the data the chart draws.
//!
//! Money in the report is decimal strings in the currency's major unit; rates and latencies
//! are floats (requests per second, milliseconds).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::backoff::Refusal;
use crate::config::{Options, Profile, Target};
use crate::cpu;
use crate::mix::OpKind;
use crate::run::ProfileResult;
use crate::stats::{Second, Stats};
use crate::verify::{Verification, money};

/// One operation's line.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub op: &'static str,
    pub count: u64,
    pub approved: u64,
    /// Declines by two-digit ISO code.
    pub declined: BTreeMap<String, u64>,
    /// No usable answer (time-out, connection lost, unexpected answer).
    pub errors: u64,
    /// Answers per second over the measured time.
    pub rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Approved operations per second over the measured time.
    pub goodput: f64,
    /// Refusals (counted in `declined` under 91 too): nothing was done.
    pub refused: RefusedCounts,
    /// Refused requests sent again, and those given up.
    pub retries: u64,
    pub abandoned: u64,
    /// New payments loadgen refused itself (`--throttle-k`), never sent: not in `count`.
    pub throttled: u64,
    /// Latency of the requests the switch executed (approved or declined), and of its
    /// refusals.
    pub admitted_latency: Percentiles,
    pub refused_latency: Percentiles,
}

/// Refusals by why.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RefusedCounts {
    /// 91, reason 34.
    pub shed: u64,
    /// 91, reason 33.
    pub deadline_passed: u64,
    /// 91, reason 22, or a frame refused with error 8.
    pub overloaded: u64,
}

impl RefusedCounts {
    fn of(counts: [u64; 3]) -> RefusedCounts {
        RefusedCounts {
            shed: counts[Refusal::Shed.index()],
            deadline_passed: counts[Refusal::DeadlinePassed.index()],
            overloaded: counts[Refusal::Overloaded.index()],
        }
    }

    pub fn total(&self) -> u64 {
        self.shed + self.deadline_passed + self.overloaded
    }
}

/// Latency percentiles, milliseconds; null with no sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let q = |q: f64| (!h.is_empty()).then(|| ms(h.value_at_quantile(q)));
        Percentiles {
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
        }
    }
}

/// A festival's peak (its plateau): how the switch held it, and how soon it was back.
#[derive(Clone, Debug, Serialize)]
pub struct PeakReport {
    /// The phase judged, and the whole seconds of it measured.
    pub phase: String,
    pub start_secs: f64,
    pub end_secs: f64,
    /// The rate offered at the peak, and the saturation the calibration measured (null with
    /// `--peak R`).
    pub offered_rate: f64,
    pub saturation_rate: Option<f64>,
    /// Approvals per second during the peak, and as a share of the saturation.
    pub goodput_rate: f64,
    pub goodput_of_saturation: Option<f64>,
    /// p99 of the admitted requests intended during the peak.
    pub admitted_p99_ms: Option<f64>,
    /// Refusals read during the peak, and new payments loadgen refused itself then.
    pub refused: u64,
    pub throttled: u64,
    /// Captures and reversals refused in the peak's seconds in which any authorization was
    /// admitted: 0 when the switch sheds new payments before the money already held.
    pub captures_reversals_refused_while_authorizing: u64,
    /// p99 of the admitted requests of the baseline phase (the quiet figure).
    pub quiet_p99_ms: Option<f64>,
    pub slo_p99_ms: f64,
    /// The larger of the SLO and the quiet figure: a second is recovered when its admitted
    /// p99 is at most this.
    pub recovery_threshold_ms: f64,
    /// From the end of the peak to the start of the first second after which every second
    /// is recovered; 0 if none after the peak went over; null if the run ended before.
    pub recovery_secs: Option<f64>,
    /// When the offered rate fell back to the saturation, on the time series' clock: part way
    /// down the decay at `--overload`; the end of the plateau without a calibration, or when
    /// the peak is not above it.
    pub overload_end_secs: f64,
    /// As `recovery_secs`, from `overload_end_secs`: how long the overload's after-effects
    /// lasted once the load was one the switch can take.
    pub recovery_after_overload_secs: Option<f64>,
}

/// One second of the time series.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SecondReport {
    pub second: u64,
    /// Open loop: the schedule's rate in this second; closed loop: null.
    pub target_rate: Option<f64>,
    /// Answers read in this second.
    pub achieved_rate: f64,
    /// How much of this second the run lasted: 1, or less for the last one (the chart leaves
    /// a partial second's rates out, since its count covers only that part).
    pub covered_secs: f64,
    pub errors: u64,
    /// Latency of the requests intended in this second.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Approvals read in this second (goodput), refusals read, refused requests sent again,
    /// new payments refused by loadgen itself.
    pub approved: u64,
    pub refused: u64,
    pub retries: u64,
    pub throttled: u64,
    /// Authorizations admitted, and captures and reversals refused, read in this second.
    pub authorizations_admitted: u64,
    pub captures_reversals_refused: u64,
    /// Latency of the admitted and of the refused requests intended in this second.
    pub admitted_p50_ms: Option<f64>,
    pub admitted_p99_ms: Option<f64>,
    pub admitted_p999_ms: Option<f64>,
    pub refused_p50_ms: Option<f64>,
    pub refused_p99_ms: Option<f64>,
    pub refused_p999_ms: Option<f64>,
}

/// How much CPU loadgen itself spent per request, against the switch it spawned.
#[derive(Clone, Debug, Serialize)]
pub struct SelfCost {
    pub requests: u64,
    pub loadgen_cpu_secs: f64,
    pub loadgen_cpu_us_per_request: f64,
    /// Only with `--spawn` (the switch's threads are then in this process).
    pub switch_cpu_secs: Option<f64>,
    pub switch_cpu_us_per_request: Option<f64>,
    /// Only with `--spawn`: the switch's threads by name (a runtime's workers summed), most
    /// CPU first. Empty otherwise.
    pub switch_threads: Vec<ThreadCost>,
}

/// One thread name's share of a run, per answered request.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadCost {
    pub name: String,
    /// Time on a CPU.
    pub cpu_us_per_request: f64,
    /// Time runnable but waiting for a CPU: what the machine's other threads cost this one.
    pub waiting_us_per_request: f64,
    /// Times put on a CPU (wake-ups and preemptions).
    pub scheduled_per_request: f64,
}

/// Against a cluster (several targets): its leaders and the failovers the run rode through.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    pub targets: Vec<String>,
    /// The replica loadgen found leading at the start, and the one it ended with.
    pub leader_at_start: String,
    pub leader_at_end: String,
    /// Reconnections to another replica than the one lost (a new leader).
    pub failovers: u64,
    /// Every reconnection, to the same replica included (after an answer timed out, say).
    pub reconnections_total: u64,
    /// The longest `failover_ms` of `reconnections`.
    pub failover_max_ms: Option<f64>,
    /// Frames, and the requests in them, sent again after a reconnection.
    pub frames_resent: u64,
    pub requests_resent: u64,
    /// The first 1000 reconnections, in order.
    pub reconnections: Vec<ReconnectionReport>,
}

/// One reconnection.
#[derive(Clone, Debug, Serialize)]
pub struct ReconnectionReport {
    /// When it was made, in seconds from the start of the load (negative: during setup).
    pub at_secs: f64,
    /// The replica lost and the one reached (its client address).
    pub from: String,
    pub to: String,
    pub new_leader: bool,
    /// From the send of the first request the lost connection left unanswered to the first
    /// answer on the new one; null if none came before the next reconnection or the end.
    pub failover_ms: Option<f64>,
}

/// Everything a run reports (the JSON file's schema).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub profile: ProfileResult,
    pub target: String,
    pub connections: usize,
    pub streams_per_connection: usize,
    /// Frames in flight per lane: the closed loop's for `max`, the open loop's otherwise.
    pub depth: usize,
    pub batch_max: usize,
    pub customers: u64,
    pub merchants: u64,
    pub currency: String,
    pub fund_per_customer: String,
    pub mix: String,
    pub zipf_theta: f64,
    pub hot_merchant_share: f64,
    pub seed: u64,
    pub totals: OpReport,
    pub ops: Vec<OpReport>,
    pub series: Vec<SecondReport>,
    pub self_cost: Option<SelfCost>,
    /// Follow-ups that found the bounded queue full (should be 0).
    pub follow_ups_dropped: u64,
    /// Against a cluster; `null` against one switch.
    pub cluster: Option<ClusterReport>,
    /// Festival: how the peak was held; `null` otherwise.
    pub peak: Option<PeakReport>,
    /// `null` when verification was skipped.
    pub verification: Option<Verification>,
    /// Set when most answered requests were declined for a reason that means the switch is
    /// not set up for this load (92, 57, 14): the run is not a valid measurement, whatever
    /// the verification says.
    pub misconfiguration: Option<String>,
}

/// Exit code of a run whose verification failed.
pub const EXIT_VERIFICATION_FAILED: u8 = 1;
/// Exit code of a run that could not be made as asked (including a misconfigured switch).
pub const EXIT_NOT_MADE: u8 = 2;
/// Exit code of a `step` run in which no rate held the SLO.
pub const EXIT_NO_RATE_HELD: u8 = 3;

/// Response codes that say the switch is not set up for loadgen's requests, not that it is
/// loaded: no route for the cards (92), not permitted (57), no such card or account (14).
const MISCONFIGURATION_CODES: [&str; 3] = ["92", "57", "14"];

/// A response code in words.
pub fn code_name(code: u8) -> &'static str {
    match code {
        0 => "approved",
        5 => "do not honour",
        12 => "invalid transaction",
        13 => "invalid amount",
        14 => "no such card or account",
        51 => "insufficient funds",
        57 => "not permitted",
        61 => "exceeds the net debit cap",
        91 => "busy",
        92 => "cannot route",
        94 => "request id reused with other fields",
        96 => "system malfunction",
        _ => "not listed",
    }
}

/// Per answered request, most CPU first.
fn thread_costs(others: &BTreeMap<String, cpu::Sched>, requests: u64) -> Vec<ThreadCost> {
    let per = |n: u64| n as f64 / requests.max(1) as f64;
    let mut costs: Vec<ThreadCost> = others
        .iter()
        .filter(|(_, s)| s.run_ns > 0)
        .map(|(name, s)| ThreadCost {
            name: name.clone(),
            cpu_us_per_request: per(s.run_ns) / 1000.0,
            waiting_us_per_request: per(s.wait_ns) / 1000.0,
            scheduled_per_request: per(s.slices),
        })
        .collect();
    costs.sort_by(|a, b| b.cpu_us_per_request.total_cmp(&a.cpu_us_per_request));
    costs
}

/// Says so when most of the answered requests were declined for a misconfiguration.
fn misconfiguration(totals: &OpReport) -> Option<String> {
    let answered = totals.count.saturating_sub(totals.errors);
    let declined: Vec<(&str, u64)> = MISCONFIGURATION_CODES
        .iter()
        .filter_map(|&c| totals.declined.get(c).map(|&n| (c, n)))
        .filter(|&(_, n)| n > 0)
        .collect();
    let n: u64 = declined.iter().map(|(_, n)| n).sum();
    if answered == 0 || n * 2 <= answered {
        return None;
    }
    let codes: Vec<String> = declined
        .iter()
        .map(|(c, k)| {
            let name = c.parse().map_or("not listed", code_name);
            format!("{k} declined {c} ({name})")
        })
        .collect();
    Some(format!(
        "{n} of the {answered} requests answered were declined for a reason that means the \
         switch is not set up for this load ({}): check its routes for --card-prefix and \
         that loadgen acts as an admin",
        codes.join(", ")
    ))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn op_report(name: &'static str, ops: &[&crate::stats::OpStats], elapsed_secs: f64) -> OpReport {
    let mut h = crate::stats::OpStats::default().latency_us;
    let mut refused_h = h.clone();
    let (mut count, mut approved, mut errors, mut retries, mut abandoned) = (0, 0, 0, 0, 0);
    let mut throttled = 0;
    let mut refused = [0u64; 3];
    let mut declined = BTreeMap::new();
    for o in ops {
        h.add(&o.latency_us).ok();
        refused_h.add(&o.refused_latency_us).ok();
        count += o.count;
        approved += o.approved;
        errors += o.errors;
        retries += o.retries;
        abandoned += o.abandoned;
        throttled += o.throttled;
        for (total, n) in refused.iter_mut().zip(o.refused) {
            *total += n;
        }
        for (code, n) in &o.declined {
            *declined.entry(format!("{code:02}")).or_default() += n;
        }
    }
    let admitted_h = crate::stats::admitted(&h, Some(&refused_h));
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            ms(h.value_at_quantile(q))
        }
    };
    OpReport {
        op: name,
        count,
        approved,
        declined,
        errors,
        rate: (count - errors) as f64 / elapsed_secs.max(1e-9),
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
        goodput: approved as f64 / elapsed_secs.max(1e-9),
        refused: RefusedCounts::of(refused),
        retries,
        abandoned,
        throttled,
        admitted_latency: Percentiles::of(&admitted_h),
        refused_latency: Percentiles::of(&refused_h),
    }
}

/// The whole seconds of `[start, end)` on the series' clock, or, if it holds none, the
/// seconds it overlaps.
fn seconds_of(start: f64, end: f64, len: usize) -> std::ops::Range<usize> {
    let whole = (start.max(0.0).ceil() as usize)..(end.max(0.0).floor() as usize);
    let range = if whole.is_empty() {
        (start.max(0.0).floor() as usize)..(end.max(0.0).ceil() as usize)
    } else {
        whole
    };
    range.start.min(len)..range.end.min(len)
}

/// p99 of the admitted requests intended in `seconds`.
fn admitted_p99(seconds: &[Second]) -> Option<f64> {
    let mut h: Option<Histogram<u64>> = None;
    for s in seconds {
        let a = s.admitted_latency_us();
        match &mut h {
            Some(h) => {
                h.add(&a).ok();
            }
            None => h = Some(a),
        }
    }
    h.filter(|h| !h.is_empty())
        .map(|h| ms(h.value_at_quantile(0.99)))
}

/// A festival's peak, judged from the per-second measurements (see `PeakReport`).
pub fn peak_report(profile: &ProfileResult, seconds: &[Second]) -> Option<PeakReport> {
    let festival = profile.festival.as_ref()?;
    let plateau = profile.phases.iter().find(|p| p.name == "plateau")?;
    let slo_p99_ms = profile.slo_p99_ms?;
    let during = seconds_of(plateau.start_secs, plateau.end_secs, seconds.len());
    let peak = &seconds[during.clone()];
    let n = peak.len().max(1) as f64;
    let goodput_rate = peak.iter().map(|s| s.approved).sum::<u64>() as f64 / n;
    let saturation_rate = profile.calibration_rate;
    let quiet_p99_ms = profile
        .phases
        .iter()
        .find(|p| p.name == "baseline")
        .and_then(|b| admitted_p99(&seconds[seconds_of(b.start_secs, b.end_secs, seconds.len())]));
    let recovery_threshold_ms = quiet_p99_ms.map_or(slo_p99_ms, |q| q.max(slo_p99_ms));
    let recovery_secs = recovery_from(plateau.end_secs, seconds, recovery_threshold_ms);
    let overload_end_secs = overload_end(profile, plateau.end_secs);
    let recovery_after_overload_secs =
        recovery_from(overload_end_secs, seconds, recovery_threshold_ms);
    Some(PeakReport {
        phase: plateau.name.clone(),
        start_secs: during.start as f64,
        end_secs: during.end as f64,
        offered_rate: festival.peak,
        saturation_rate,
        goodput_rate,
        goodput_of_saturation: saturation_rate
            .filter(|&r| r > 0.0)
            .map(|r| goodput_rate / r),
        admitted_p99_ms: admitted_p99(peak),
        refused: peak.iter().map(|s| s.refused).sum(),
        throttled: peak.iter().map(|s| s.throttled).sum(),
        captures_reversals_refused_while_authorizing: peak
            .iter()
            .filter(|s| s.authorizations_admitted > 0)
            .map(|s| s.captures_reversals_refused)
            .sum(),
        quiet_p99_ms,
        slo_p99_ms,
        recovery_threshold_ms,
        recovery_secs,
        overload_end_secs,
        recovery_after_overload_secs,
    })
}

/// From `from_secs` to the start of the first second after which every second's admitted
/// p99 is at most `threshold_ms`: 0 if none from the second holding `from_secs` on is over
/// it, none if the last second with answers still is.
fn recovery_from(from_secs: f64, seconds: &[Second], threshold_ms: f64) -> Option<f64> {
    let after = (from_secs.max(0.0).floor() as usize).min(seconds.len());
    let p99s: Vec<(usize, f64)> = seconds
        .iter()
        .enumerate()
        .skip(after)
        .filter_map(|(i, s)| admitted_p99(std::slice::from_ref(s)).map(|p| (i, p)))
        .collect();
    let last_over = p99s
        .iter()
        .rev()
        .find(|&&(_, p)| p > threshold_ms)
        .map(|&(i, _)| i);
    match last_over {
        None => Some(0.0),
        Some(i) if Some(i) == p99s.last().map(|&(i, _)| i) => None,
        Some(i) => Some((i as f64 + 1.0 - from_secs).max(0.0)),
    }
}

/// When a festival's offered rate, going down the decay, reaches the calibrated saturation
/// (`plateau_end` when there is none, or the peak is not above it; the decay's end when even
/// the baseline is above it).
fn overload_end(profile: &ProfileResult, plateau_end: f64) -> f64 {
    let (Some(f), Some(saturation)) = (profile.festival.as_ref(), profile.calibration_rate) else {
        return plateau_end;
    };
    let Some(decay) = profile.phases.iter().find(|p| p.name == "decay") else {
        return plateau_end;
    };
    if f.peak <= saturation {
        return plateau_end;
    }
    if f.baseline >= saturation {
        return decay.end_secs;
    }
    // The decay is a straight line from the peak to the baseline.
    let share = (f.peak - saturation) / (f.peak - f.baseline);
    decay.start_secs + share * (decay.end_secs - decay.start_secs)
}

impl Report {
    pub fn new(
        options: &Options,
        profile: ProfileResult,
        stats: &Stats,
        verification: Option<Verification>,
        cpu: Option<cpu::Split>,
        spawned: bool,
        follow_ups_dropped: u64,
    ) -> Report {
        let elapsed = profile.elapsed_secs;
        let ops: Vec<OpReport> = OpKind::ALL
            .iter()
            .map(|&k| op_report(k.name(), &[&stats.ops[k.index()]], elapsed))
            .collect();
        let all: Vec<&crate::stats::OpStats> = stats.ops.iter().collect();
        let totals = op_report("all", &all, elapsed);
        let open_loop = !profile.target_per_second.is_empty();
        let series = stats
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let covered_secs = (elapsed - i as f64).clamp(0.0, 1.0);
                let h = &s.latency_us;
                let q = |q: f64| (!h.is_empty()).then(|| ms(h.value_at_quantile(q)));
                let admitted = Percentiles::of(&s.admitted_latency_us());
                let refused = s
                    .refused_latency_us
                    .as_ref()
                    .map(Percentiles::of)
                    .unwrap_or_default();
                SecondReport {
                    second: i as u64,
                    target_rate: open_loop
                        .then(|| profile.target_per_second.get(i).copied().unwrap_or(0.0)),
                    achieved_rate: s.answered as f64,
                    covered_secs,
                    errors: s.errors,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                    p999_ms: q(0.999),
                    max_ms: (!h.is_empty()).then(|| ms(h.max())),
                    approved: s.approved,
                    refused: s.refused,
                    retries: s.retries,
                    throttled: s.throttled,
                    authorizations_admitted: s.authorizations_admitted,
                    captures_reversals_refused: s.captures_reversals_refused,
                    admitted_p50_ms: admitted.p50_ms,
                    admitted_p99_ms: admitted.p99_ms,
                    admitted_p999_ms: admitted.p999_ms,
                    refused_p50_ms: refused.p50_ms,
                    refused_p99_ms: refused.p99_ms,
                    refused_p999_ms: refused.p999_ms,
                }
            })
            .collect();
        let requests = stats.answered_total();
        let self_cost = cpu.map(|c| {
            let per = |ns: u64| ns as f64 / 1000.0 / requests.max(1) as f64;
            SelfCost {
                requests,
                loadgen_cpu_secs: c.loadgen_ns as f64 / 1e9,
                loadgen_cpu_us_per_request: per(c.loadgen_ns),
                switch_cpu_secs: spawned.then(|| c.other_ns() as f64 / 1e9),
                switch_cpu_us_per_request: spawned.then(|| per(c.other_ns())),
                switch_threads: if spawned {
                    thread_costs(&c.others, requests)
                } else {
                    Vec::new()
                },
            }
        });
        let peak = peak_report(&profile, &stats.seconds);
        Report {
            peak,
            profile,
            target: match &options.target {
                Target::Spawn { no_fsync, .. } => format!(
                    "in-process switch ({})",
                    if *no_fsync { "no fsync" } else { "fsync" }
                ),
                Target::Remote { addrs, .. } => addrs.join(","),
            },
            connections: options.connections,
            streams_per_connection: options.streams,
            depth: match options.profile {
                Profile::Max { .. } => options.depth,
                _ => options.open_depth,
            },
            batch_max: options.batch_max,
            customers: options.customers,
            merchants: options.merchants,
            currency: options.currency.code().to_string(),
            fund_per_customer: money(i128::from(options.fund.0), options.currency),
            mix: options.mix.weights.to_string(),
            zipf_theta: options.mix.zipf_theta,
            hot_merchant_share: options.mix.hot_merchant_share,
            seed: options.seed,
            ops,
            series,
            self_cost,
            follow_ups_dropped,
            cluster: None,
            verification,
            misconfiguration: misconfiguration(&totals),
            totals,
        }
    }

    /// Passed verification, or skipped it.
    pub fn passed(&self) -> bool {
        self.verification.as_ref().is_none_or(|v| v.passed)
    }

    /// The process's exit code: verification failed (1) before a misconfigured switch (2)
    /// before a step search that found no rate holding the SLO (3); 0 otherwise.
    pub fn exit_code(&self) -> u8 {
        if !self.passed() {
            EXIT_VERIFICATION_FAILED
        } else if self.misconfiguration.is_some() {
            EXIT_NOT_MADE
        } else if self.profile.profile == "step" && self.profile.highest_rate_held.is_none() {
            EXIT_NO_RATE_HELD
        } else {
            0
        }
    }

    /// The terminal summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let p = &self.profile;
        let _ = writeln!(
            out,
            "profile {} against {}: {:.1} s, {} lanes x depth {} (frames of at most {})",
            p.profile,
            self.target,
            p.elapsed_secs,
            self.connections * self.streams_per_connection,
            self.depth,
            self.batch_max
        );
        let _ = writeln!(
            out,
            "\n{:<10} {:>9} {:>9} {:<22} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "operation",
            "count",
            "approved",
            "declined by code",
            "errors",
            "rate/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        for o in self.ops.iter().chain(std::iter::once(&self.totals)) {
            if o.count == 0 {
                continue;
            }
            let declined: Vec<String> =
                o.declined.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            let declined = if declined.is_empty() {
                "-".to_string()
            } else {
                declined.join(" ")
            };
            let _ = writeln!(
                out,
                "{:<10} {:>9} {:>9} {:<22} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                o.op,
                o.count,
                o.approved,
                declined,
                o.errors,
                o.rate,
                o.p50_ms,
                o.p90_ms,
                o.p99_ms,
                o.p999_ms,
                o.max_ms
            );
        }
        out.push_str(&self.refusal_lines());
        if let Some(r) = p.calibration_rate {
            let _ = writeln!(out, "\ncalibration (closed loop): {r:.0} requests/s");
        }
        if let Some(f) = &p.festival {
            let _ = writeln!(
                out,
                "festival: baseline {:.0}/s for {} s, ramp to {:.0}/s over {} s, spike to peak {:.0}/s in {} s, plateau {} s, decay {} s",
                f.baseline,
                f.baseline_secs,
                f.pre_spike,
                f.ramp_secs,
                f.peak,
                f.spike_secs,
                f.plateau_secs,
                f.decay_secs
            );
        }
        if let Some(peak) = &self.peak {
            out.push_str(&peak_lines(peak, p.overload));
        }
        if let Some(r) = p.saturation_rate {
            let _ = writeln!(out, "\nsaturation (closed loop): {r:.0} requests/s");
        }
        if !p.steps.is_empty() {
            let _ = writeln!(out, "\nstep      rate/s   p99 ms  errors  held");
            for (i, s) in p.steps.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{:<6} {:>9.0} {:>8.2} {:>7}  {}",
                    i + 1,
                    s.rate,
                    s.p99_ms,
                    s.errors,
                    if s.held { "yes" } else { "NO" }
                );
            }
            match p.highest_rate_held {
                Some(r) => {
                    let _ = writeln!(out, "highest rate that held the SLO: {r:.0} requests/s");
                }
                None => {
                    let _ = writeln!(out, "no rate held the SLO (exit code 3)");
                }
            }
        }
        if let Some(c) = &self.self_cost {
            let _ = write!(
                out,
                "\nloadgen CPU: {:.2} s, {:.2} us per request",
                c.loadgen_cpu_secs, c.loadgen_cpu_us_per_request
            );
            if let (Some(s), Some(per)) = (c.switch_cpu_secs, c.switch_cpu_us_per_request) {
                let _ = write!(out, "; switch CPU: {s:.2} s, {per:.2} us per request");
            }
            let _ = writeln!(out);
            if !c.switch_threads.is_empty() {
                let _ = writeln!(
                    out,
                    "switch threads, per request: us on a CPU / us waiting for one / times scheduled"
                );
                for t in &c.switch_threads {
                    let _ = writeln!(
                        out,
                        "  {:<16} {:>8.2} {:>8.2} {:>6.2}",
                        t.name,
                        t.cpu_us_per_request,
                        t.waiting_us_per_request,
                        t.scheduled_per_request
                    );
                }
            }
        }
        if let Some(c) = &self.cluster {
            out.push_str(&cluster_lines(c));
        }
        if let Some(m) = &self.misconfiguration {
            let _ = writeln!(out, "\nNOT A VALID RUN: {m}");
        }
        match &self.verification {
            None => {
                let _ = writeln!(out, "\nverification skipped");
            }
            Some(v) => {
                let _ = writeln!(
                    out,
                    "\nverification {}: {} accounts, {} authorizations, {} sales checked; funded {}; all balances sum to {}; {} unanswered; {} holds reversed at cleanup",
                    match (v.passed, self.misconfiguration.is_some()) {
                        (false, _) => "FAILED",
                        (true, false) => "PASSED",
                        (true, true) =>
                            "passed only for the few requests approved (see NOT A VALID RUN above)",
                    },
                    v.accounts_checked,
                    v.authorizations_checked,
                    v.sales_checked,
                    v.funded,
                    v.sum_of_balances,
                    v.unanswered,
                    v.cleanup_reversals
                );
                if let (Some(remembers), true) = (v.switch_remembers, v.statuses_forgotten > 0) {
                    let _ = writeln!(
                        out,
                        "  {} payments' statuses were forgotten by the switch, which remembers \
                         {remembers}; their money is checked in the balances",
                        v.statuses_forgotten
                    );
                }
                const SHOWN_MAX: usize = 50;
                for m in v.mismatches.iter().take(SHOWN_MAX) {
                    let _ = writeln!(out, "  mismatch: {m}");
                }
                if v.mismatches.len() > SHOWN_MAX {
                    let _ = writeln!(
                        out,
                        "  … and {} more (all in report.json)",
                        v.mismatches.len() - SHOWN_MAX
                    );
                }
            }
        }
        out
    }

    /// Goodput, and when the switch refused anything, the refusals, retries and the admitted
    /// and refused latencies per operation.
    fn refusal_lines(&self) -> String {
        let mut out = String::new();
        let t = &self.totals;
        let _ = writeln!(out, "\ngoodput: {:.0} approved operations/s", t.goodput);
        if t.refused.total() == 0 && t.retries == 0 && t.throttled == 0 {
            return out;
        }
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "refused",
            "shed",
            "deadline",
            "overload",
            "throttled",
            "retries",
            "given up",
            "adm p50",
            "adm p99",
            "adm p99.9",
            "ref p99",
            "ref p99.9"
        );
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        for o in self.ops.iter().chain(std::iter::once(&self.totals)) {
            if o.count == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
                o.op,
                o.refused.shed,
                o.refused.deadline_passed,
                o.refused.overloaded,
                o.throttled,
                o.retries,
                o.abandoned,
                ms(o.admitted_latency.p50_ms),
                ms(o.admitted_latency.p99_ms),
                ms(o.admitted_latency.p999_ms),
                ms(o.refused_latency.p99_ms),
                ms(o.refused_latency.p999_ms)
            );
        }
        out
    }

    /// Writes `report.json`, `chart.png` and `chart.svg` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;
        let mut paths = vec![json];
        paths.extend(crate::chart::draw(self, dir)?);
        Ok(paths)
    }
}

/// The table's lines about a festival's peak.
fn peak_lines(p: &PeakReport, overload: Option<f64>) -> String {
    let mut out = String::new();
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
    let offered = match (overload, p.saturation_rate) {
        (Some(o), Some(s)) => format!("{:.0}/s ({o} x saturation {s:.0}/s)", p.offered_rate),
        _ => format!("{:.0}/s", p.offered_rate),
    };
    let share = p
        .goodput_of_saturation
        .map_or(String::new(), |g| format!(" = {g:.2} of saturation"));
    let after = |secs: Option<f64>| match secs {
        Some(s) => format!("{s:.1} s"),
        None => "not within the run".to_string(),
    };
    let recovery = format!(
        "{} after the peak, {} after the offered rate fell to the saturation (at {:.1} s)",
        after(p.recovery_secs),
        after(p.recovery_after_overload_secs),
        p.overload_end_secs
    );
    let _ = writeln!(
        out,
        "peak ({} {:.0}-{:.0} s): offered {offered}; goodput {:.0}/s{share}; admitted p99 {}; \
         {} refused, {} throttled; captures/reversals refused while authorizations were admitted: {}\n  \
         quiet p99 {}, SLO p99 {} ms: back under {:.2} ms {recovery}",
        p.phase,
        p.start_secs,
        p.end_secs,
        p.goodput_rate,
        ms(p.admitted_p99_ms),
        p.refused,
        p.throttled,
        p.captures_reversals_refused_while_authorizing,
        ms(p.quiet_p99_ms),
        p.slo_p99_ms,
        p.recovery_threshold_ms
    );
    out
}

/// The table's lines about a cluster's leaders and failovers.
fn cluster_lines(c: &ClusterReport) -> String {
    let mut out = String::new();
    let worst = c.failover_max_ms.map_or(String::new(), |ms| {
        format!("; the longest wait for the first answer after one: {ms:.0} ms")
    });
    let _ = writeln!(
        out,
        "\ncluster {}: leader {} at the start, {} at the end\n  failovers to a new leader: {} \
         of {} reconnections{worst}; {} requests in {} frames sent again",
        c.targets.join(","),
        c.leader_at_start,
        c.leader_at_end,
        c.failovers,
        c.reconnections_total,
        c.requests_resent,
        c.frames_resent
    );
    for r in &c.reconnections {
        let took = r
            .failover_ms
            .map_or("no answer after it".to_string(), |ms| {
                format!("first answer {ms:.0} ms after the first request left unanswered")
            });
        let _ = writeln!(
            out,
            "  {:>8.2} s  {} -> {}{}: {took}",
            r.at_secs,
            r.from,
            r.to,
            if r.new_leader { "" } else { " (the same)" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Profile;
    use std::time::Duration;

    /// A constant run of 200 sales, `declined` of them answered `code`, verified clean.
    fn report(declined: u64, code: u8) -> Report {
        let options = Options::spawn_defaults(Profile::Constant {
            rate: 200.0,
            duration_secs: 1.0,
        });
        let mut stats = Stats::default();
        let at = Duration::from_millis(10);
        for i in 0..200 {
            let answer = (i < declined).then_some(code);
            stats.answered(OpKind::Sale, answer, at, at);
        }
        let profile = ProfileResult {
            profile: "constant".into(),
            elapsed_secs: 1.0,
            ..ProfileResult::default()
        };
        let verification = Verification {
            passed: true,
            ..Verification::default()
        };
        Report::new(&options, profile, &stats, Some(verification), None, true, 0)
    }

    /// Most requests declined 92 (no route), 57 or 14: the money checks out, but the run
    /// measured nothing it was meant to, and says so instead of a plain PASSED.
    #[test]
    fn a_run_mostly_declined_for_a_misconfiguration_is_not_passed() {
        for code in [92, 57, 14] {
            let r = report(171, code);
            let table = r.table();
            assert!(!table.contains("verification PASSED"), "{table}");
            assert!(table.contains("NOT A VALID RUN: 171 of the 200"), "{table}");
            assert!(table.contains(&format!("171 declined {code}")), "{table}");
            assert_eq!(r.exit_code(), EXIT_NOT_MADE);
        }
        // Declines that say the switch is loaded or the customer is short are results.
        let r = report(171, 51);
        assert!(r.misconfiguration.is_none());
        assert!(r.table().contains("verification PASSED"));
        assert_eq!(r.exit_code(), 0);
        // A few are not most.
        let r = report(100, 92);
        assert!(r.misconfiguration.is_none());
        assert_eq!(r.exit_code(), 0);
    }

    /// Records an answer of `op` intended at `second` + 0.1 s, read `latency_ms` later.
    fn answer(
        stats: &mut Stats,
        op: OpKind,
        refused: Option<Refusal>,
        second: u64,
        latency_ms: u64,
    ) {
        let intended = Duration::from_millis(second * 1000 + 100);
        let now = intended + Duration::from_millis(latency_ms);
        match refused {
            Some(why) => stats.refused(op, why, intended, now),
            None => stats.answered(op, None, intended, now),
        }
    }

    /// Refusals are counted by why and apart from the admitted requests' latency: slow
    /// approvals and quick refusals each keep their own percentiles, in the table, the JSON
    /// and each second; goodput counts approvals only.
    #[test]
    fn admitted_and_refused_requests_are_reported_apart() {
        let mut stats = Stats::default();
        for i in 0..100 {
            answer(&mut stats, OpKind::Sale, None, i % 2, 40);
            answer(&mut stats, OpKind::Authorize, Some(Refusal::Shed), i % 2, 1);
        }
        for _ in 0..7 {
            answer(&mut stats, OpKind::Capture, Some(Refusal::Overloaded), 1, 2);
        }
        answer(
            &mut stats,
            OpKind::Authorize,
            Some(Refusal::DeadlinePassed),
            1,
            3,
        );
        stats.retried(OpKind::Authorize, Duration::from_millis(1500));
        stats.abandoned(OpKind::Authorize);
        // Three refused by loadgen itself (and given up): counted apart, never answered.
        for _ in 0..3 {
            stats.throttled(OpKind::Authorize, Duration::from_millis(1200));
            stats.abandoned(OpKind::Authorize);
        }
        let options = Options::spawn_defaults(Profile::Constant {
            rate: 100.0,
            duration_secs: 2.0,
        });
        let profile = ProfileResult {
            profile: "constant".into(),
            elapsed_secs: 2.0,
            ..ProfileResult::default()
        };
        let r = Report::new(&options, profile, &stats, None, None, true, 0);
        let t = &r.totals;
        assert_eq!((t.count, t.approved), (208, 100));
        assert_eq!(t.goodput, 50.0);
        assert_eq!(t.declined.get("91"), Some(&108));
        assert_eq!(
            (
                t.refused.shed,
                t.refused.deadline_passed,
                t.refused.overloaded
            ),
            (100, 1, 7)
        );
        assert_eq!((t.retries, t.abandoned, t.throttled), (1, 4, 3));
        let near = |v: Option<f64>, ms: f64| v.is_some_and(|v| (v - ms).abs() < ms * 0.01);
        assert!(
            near(t.admitted_latency.p50_ms, 40.0),
            "{:?}",
            t.admitted_latency
        );
        assert!(
            near(t.admitted_latency.p99_ms, 40.0),
            "{:?}",
            t.admitted_latency
        );
        assert!(
            near(t.refused_latency.p50_ms, 1.0),
            "{:?}",
            t.refused_latency
        );
        assert!(
            near(t.refused_latency.p999_ms, 3.0),
            "{:?}",
            t.refused_latency
        );
        let sale = &r.ops[OpKind::Sale.index()];
        assert_eq!(sale.refused.total(), 0);
        assert_eq!(sale.refused_latency, Percentiles::default());
        let authorize = &r.ops[OpKind::Authorize.index()];
        assert_eq!(authorize.admitted_latency, Percentiles::default());
        assert_eq!(authorize.goodput, 0.0);
        // Each second: 50 approvals; the second also 54 refusals, 7 of them captures.
        let s1 = &r.series[1];
        assert_eq!((s1.approved, s1.refused, s1.retries), (50, 58, 1));
        assert_eq!((r.series[0].throttled, s1.throttled), (0, 3));
        assert_eq!(s1.captures_reversals_refused, 7);
        assert!(near(s1.admitted_p99_ms, 40.0), "{s1:?}");
        assert!(near(s1.refused_p50_ms, 1.0), "{s1:?}");
        assert_eq!(r.series[0].refused_p999_ms.map(|v| v < 1.1), Some(true));
        let table = r.table();
        assert!(
            table.contains("goodput: 50 approved operations/s"),
            "{table}"
        );
        assert!(
            table.contains("authorize       100        1        0         3        1        4"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("JSON")).expect("JSON");
        assert_eq!(json["totals"]["refused"]["shed"], 100);
        assert_eq!(json["totals"]["throttled"], 3);
        assert_eq!(json["series"][1]["approved"], 50);
        assert!(json["peak"].is_null());
    }

    /// A festival's peak: goodput as a share of the calibration, admitted p99, captures and
    /// reversals refused only in the seconds that admitted authorizations, and the time from
    /// the end of the peak until every later second is back under the SLO (or the quiet
    /// figure, if higher).
    #[test]
    fn a_festival_peak_is_judged_from_its_seconds() {
        let festival = |phases: &[(&str, f64, f64)]| ProfileResult {
            profile: "festival".into(),
            festival: Some(crate::schedule::Festival::around(300.0)),
            calibration_rate: Some(200.0),
            slo_p99_ms: Some(10.0),
            phases: phases
                .iter()
                .map(|&(name, start_secs, end_secs)| crate::run::Phase {
                    name: name.into(),
                    start_secs,
                    end_secs,
                })
                .collect(),
            ..ProfileResult::default()
        };
        let phases = [
            ("baseline", 0.0, 2.0),
            ("plateau", 2.0, 5.0),
            ("decay", 5.0, 9.0),
        ];
        // Admitted p99 of each second: quiet, slow at the peak and just after, then quiet.
        let p99_ms = [1, 1, 30, 30, 30, 20, 20, 2, 2];
        let mut stats = Stats::default();
        for (second, &ms) in p99_ms.iter().enumerate() {
            for _ in 0..100 {
                answer(&mut stats, OpKind::Sale, None, second as u64, ms);
            }
        }
        for second in 2..5 {
            for _ in 0..40 {
                answer(&mut stats, OpKind::Sale, Some(Refusal::Shed), second, 1);
            }
        }
        // Second 3 admits an authorization and refuses 2 captures; second 4 refuses 5
        // reversals but admits no authorization.
        answer(&mut stats, OpKind::Authorize, None, 3, 30);
        for (second, op, n) in [(3, OpKind::Capture, 2), (4, OpKind::Reverse, 5)] {
            for _ in 0..n {
                answer(&mut stats, op, Some(Refusal::Overloaded), second, 1);
            }
        }
        let peak = peak_report(&festival(&phases), &stats.seconds).expect("a festival");
        assert_eq!((peak.start_secs, peak.end_secs), (2.0, 5.0));
        assert!(
            (peak.goodput_rate - 301.0 / 3.0).abs() < 1e-9,
            "{}",
            peak.goodput_rate
        );
        assert_eq!(peak.goodput_of_saturation, Some(peak.goodput_rate / 200.0));
        assert_eq!(peak.refused, 127);
        assert_eq!(peak.captures_reversals_refused_while_authorizing, 2);
        assert!(
            peak.admitted_p99_ms.is_some_and(|p| (p - 30.0).abs() < 0.5),
            "{peak:?}"
        );
        assert!(
            peak.quiet_p99_ms.is_some_and(|p| (p - 1.0).abs() < 0.05),
            "{peak:?}"
        );
        assert_eq!(peak.recovery_threshold_ms, 10.0);
        assert_eq!(peak.recovery_secs, Some(2.0));
        // The decay (5 to 9 s, 300/s down to 30/s) reaches the saturation, 200/s, at
        // 5 + 4 * 100/270 s; second 6 is the last over the line.
        let overload_end = 5.0 + 4.0 * 100.0 / 270.0;
        assert!(
            (peak.overload_end_secs - overload_end).abs() < 1e-9,
            "{peak:?}"
        );
        let after = peak.recovery_after_overload_secs.expect("recovered");
        assert!((after - (7.0 - overload_end)).abs() < 1e-9, "{peak:?}");
        // Without a calibration, the overload ends with the plateau.
        let mut uncalibrated = festival(&phases);
        uncalibrated.calibration_rate = None;
        let peak = peak_report(&uncalibrated, &stats.seconds).expect("a festival");
        assert_eq!(peak.overload_end_secs, 5.0);
        assert_eq!(peak.recovery_after_overload_secs, Some(2.0));
        // A peak at or under the saturation ends no overload after the plateau; a baseline
        // still above it, only at the decay's end.
        for (saturation, end) in [(300.0, 5.0), (400.0, 5.0), (30.0, 9.0), (20.0, 9.0)] {
            let mut calibrated = festival(&phases);
            calibrated.calibration_rate = Some(saturation);
            let peak = peak_report(&calibrated, &stats.seconds).expect("a festival");
            assert_eq!(peak.overload_end_secs, end, "saturation {saturation}");
        }
        // A run that ends still over the line has not recovered; one never over it, at once.
        let mut late = stats.clone();
        answer(&mut late, OpKind::Sale, None, 8, 50);
        answer(&mut late, OpKind::Sale, None, 8, 50);
        let peak = peak_report(&festival(&phases), &late.seconds).expect("a festival");
        assert_eq!(peak.recovery_secs, None);
        let mut calm = Stats::default();
        for second in 0..9 {
            answer(&mut calm, OpKind::Sale, None, second, 3);
        }
        let peak = peak_report(&festival(&phases), &calm.seconds).expect("a festival");
        assert_eq!(peak.recovery_secs, Some(0.0));
        assert_eq!(peak.captures_reversals_refused_while_authorizing, 0);
        // A quiet figure above the SLO is the line instead.
        let mut noisy = stats.clone();
        for _ in 0..50 {
            answer(&mut noisy, OpKind::Sale, None, 0, 25);
        }
        let peak = peak_report(&festival(&phases), &noisy.seconds).expect("a festival");
        assert!(peak.recovery_threshold_ms > 24.0, "{peak:?}");
        assert_eq!(peak.recovery_secs, Some(0.0));
        // Not a festival: no peak.
        let constant = ProfileResult::default();
        assert!(peak_report(&constant, &stats.seconds).is_none());
    }

    /// Against one switch the report has no cluster part (`null` in the JSON); against a
    /// cluster the table says which replica led, and each reconnection with its time.
    #[test]
    fn a_cluster_s_failovers_are_reported() {
        let mut r = report(0, 0);
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("JSON")).expect("JSON");
        assert!(json["cluster"].is_null(), "{json}");
        assert!(!r.table().contains("failover"));
        let reconnection = |from: &str, to: &str, failover_ms| ReconnectionReport {
            at_secs: 3.5,
            from: from.into(),
            to: to.into(),
            new_leader: from != to,
            failover_ms,
        };
        r.cluster = Some(ClusterReport {
            targets: vec!["a:1".into(), "b:2".into(), "c:3".into()],
            leader_at_start: "a:1".into(),
            leader_at_end: "b:2".into(),
            failovers: 1,
            reconnections_total: 2,
            failover_max_ms: Some(1234.0),
            frames_resent: 7,
            requests_resent: 90,
            reconnections: vec![
                reconnection("a:1", "b:2", Some(1234.0)),
                reconnection("b:2", "b:2", None),
            ],
        });
        let table = r.table();
        for line in [
            "cluster a:1,b:2,c:3: leader a:1 at the start, b:2 at the end",
            "failovers to a new leader: 1 of 2 reconnections; the longest wait for the first \
             answer after one: 1234 ms; 90 requests in 7 frames sent again",
            "3.50 s  a:1 -> b:2: first answer 1234 ms after the first request left unanswered",
            "3.50 s  b:2 -> b:2 (the same): no answer after it",
        ] {
            assert!(table.contains(line), "{line}\n{table}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("JSON")).expect("JSON");
        assert_eq!(json["cluster"]["failovers"], 1);
        assert_eq!(json["cluster"]["reconnections"][0]["failover_ms"], 1234.0);
        assert!(json["cluster"]["reconnections"][1]["failover_ms"].is_null());
    }
}
