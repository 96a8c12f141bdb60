//! The report: a terminal table per operation, a JSON file, and the data the chart draws.
//!
//! Money in the report is decimal strings in the currency's major unit; rates and latencies
//! are floats (requests per second, milliseconds).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::config::{Options, Target};
use crate::cpu;
use crate::mix::OpKind;
use crate::run::ProfileResult;
use crate::stats::Stats;
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
}

/// One second of the time series.
#[derive(Clone, Debug, Serialize)]
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
    let (mut count, mut approved, mut errors) = (0, 0, 0);
    let mut declined = BTreeMap::new();
    for o in ops {
        h.add(&o.latency_us).ok();
        count += o.count;
        approved += o.approved;
        errors += o.errors;
        for (code, n) in &o.declined {
            *declined.entry(format!("{code:02}")).or_default() += n;
        }
    }
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
    }
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
                switch_cpu_secs: spawned.then(|| c.other_ns as f64 / 1e9),
                switch_cpu_us_per_request: spawned.then(|| per(c.other_ns)),
            }
        });
        Report {
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
            depth: options.depth,
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
