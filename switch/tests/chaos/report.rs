//! The run's report: the summary printed at the end and the JSON file (`CHAOS_REPORT`) that
//! `scripts/chaos.sh` points at, with what the switch's own log says about its restarts.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};

use crate::Run;
use crate::check::Kind;

/// What the run found. The JSON report has these fields in this order; each list of times
/// becomes its minimum, median, maximum and all of them, in milliseconds to a tenth.
#[derive(Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub cycles: u32,
    #[serde(serialize_with = "tenths")]
    pub seconds: f64,
    #[serde(rename = "operations_sent")]
    pub sent: u64,
    #[serde(rename = "acknowledged")]
    pub acknowledged_live: u64,
    pub lost: u64,
    pub mismatches: u64,
    pub in_flight_at_kill: Vec<u64>,
    pub in_flight_found_applied: u64,
    pub repeats_checked: u64,
    pub statuses_checked: u64,
    /// Spawn to the `ready` line, and spawn to the first answered request, per restart.
    #[serde(serialize_with = "times")]
    pub recovery_ms: Vec<f64>,
    #[serde(serialize_with = "times")]
    pub ready_ms: Vec<f64>,
    /// From the switch's log: the time each start spent replaying the log (those killed while
    /// starting included, if they got that far), and how many found a torn record at its end.
    #[serde(serialize_with = "times")]
    pub replay_ms: Vec<f64>,
    pub torn_tails_trimmed: u64,
    /// From the switch's log: snapshots written while it ran (built by replaying the log), and
    /// starts that loaded one.
    pub snapshots_written: u64,
    pub starts_from_snapshot: u64,
    /// Clearing checks made (one a cycle), and skipped because more windows were closed than
    /// ListWindows lists; windows at the last check.
    pub clearing_checks: u64,
    pub clearing_checks_skipped: u64,
    pub windows_seen: u64,
    /// Extra kills during a start, and how many of them came before the switch was ready.
    pub start_kills: u64,
    pub start_kills_before_ready: u64,
    /// Authorizations seen expired by the switch itself.
    pub holds_expired: u64,
    pub wal_bytes: u64,
    pub problems: Vec<String>,
}

fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn tenths<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(tenth(*value))
}

#[derive(Serialize)]
struct Times {
    min: f64,
    median: f64,
    max: f64,
    all: Vec<f64>,
}

fn times<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    let (min, median, max) = stats(values);
    Times {
        min: tenth(min),
        median: tenth(median),
        max: tenth(max),
        all: values.iter().copied().map(tenth).collect(),
    }
    .serialize(serializer)
}

/// (min, median, max).
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (0.0, 0.0, 0.0),
        n => (v[0], v[n / 2], v[n - 1]),
    }
}

impl Report {
    pub fn json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a report is plain data");
        text.push('\n');
        text
    }

    pub fn summary(&self) -> String {
        let (rmin, rmed, rmax) = stats(&self.recovery_ms);
        let (_, pmed, pmax) = stats(&self.replay_ms);
        let mut s = String::new();
        let _ = writeln!(s, "chaos: seed {}", self.seed);
        let _ = writeln!(
            s,
            "chaos: {} kill -9 cycles in {:.1} s; {} operations sent, {} acknowledged while \
             running",
            self.cycles, self.seconds, self.sent, self.acknowledged_live
        );
        let _ = writeln!(
            s,
            "chaos: in flight at the kills: {} (found applied: {}); re-sent and compared: {}; \
             statuses compared: {}",
            self.in_flight_at_kill.iter().sum::<u64>(),
            self.in_flight_found_applied,
            self.repeats_checked,
            self.statuses_checked
        );
        let _ = writeln!(
            s,
            "chaos: restarts also killed while starting: {} ({} before ready)",
            self.start_kills, self.start_kills_before_ready
        );
        let _ = writeln!(
            s,
            "chaos: lost {}, mismatches {}",
            self.lost, self.mismatches
        );
        let _ = writeln!(
            s,
            "chaos: recovery (spawn to first answer) ms: min {rmin:.1}, median {rmed:.1}, max \
             {rmax:.1}; of which loading the snapshot and replaying the log: median {pmed:.1}, \
             max {pmax:.1}"
        );
        let _ = writeln!(
            s,
            "chaos: snapshots written while serving: {}; starts from a snapshot: {}",
            self.snapshots_written, self.starts_from_snapshot
        );
        let _ = writeln!(
            s,
            "chaos: clearing checked {} times (skipped {}: more windows than listed), {} windows \
             at the last",
            self.clearing_checks, self.clearing_checks_skipped, self.windows_seen
        );
        let _ = writeln!(
            s,
            "chaos: torn log tails trimmed at restarts: {}; holds expired: {}; write-ahead log {} \
             bytes at the end",
            self.torn_tails_trimmed, self.holds_expired, self.wal_bytes
        );
        s
    }
}

impl Run {
    /// Completes the report once the run is over: what the journal and the problems say,
    /// the switch's log and its data directory `data`.
    pub fn conclude(&mut self, data: &Path, seconds: f64, stopped: Option<&String>) {
        let report = &mut self.report;
        report.seconds = seconds;
        report.wal_bytes = dir_bytes(&data.join("wal"));
        let logged = logged(&self.log);
        report.torn_tails_trimmed = logged.torn_tails_trimmed;
        report.replay_ms = logged.recovery_ms;
        report.snapshots_written = logged.snapshots_written;
        report.starts_from_snapshot = logged.starts_from_snapshot;
        report.holds_expired = self.expired.len() as u64;
        {
            let journal = self.shared.journal.lock();
            report.sent = journal.order.len() as u64;
            report.acknowledged_live = journal.acknowledged_live;
        }
        for p in self.shared.protocol.lock().iter() {
            self.problems.push(crate::check::mismatch(None, p.clone()));
        }
        let lost_ids: HashSet<u128> = self
            .problems
            .iter()
            .filter(|p| p.kind == Kind::Lost)
            .filter_map(|p| p.id)
            .collect();
        report.lost = lost_ids.len() as u64;
        report.mismatches = self
            .problems
            .iter()
            .filter(|p| p.kind == Kind::Mismatch)
            .count() as u64;
        report.problems = self
            .problems
            .iter()
            .take(200)
            .map(|p| p.what.clone())
            .collect();
        if let Some(e) = stopped {
            report.problems.push(format!("the run stopped: {e}"));
        }
    }
}

/// The message the switch logs once it has recovered (its `elapsed_ms` is the recovery).
const RECOVERED: &str = "recovered from the snapshot and the write-ahead log after it";

/// What the switch logged, counted after the run.
struct Logged {
    /// Starts that trimmed a torn tail.
    torn_tails_trimmed: u64,
    /// The time each start spent recovering (`elapsed_ms` of `RECOVERED`: loading the
    /// snapshot and replaying the log; the first start, on an empty directory, is left out).
    recovery_ms: Vec<f64>,
    snapshots_written: u64,
    /// Starts that recovered from a snapshot.
    starts_from_snapshot: u64,
}

/// One event of the switch's JSON log, the fields read here.
#[derive(Deserialize)]
struct Event {
    fields: Fields,
}

#[derive(Deserialize)]
struct Fields {
    #[serde(default)]
    message: String,
    elapsed_ms: Option<f64>,
    snapshot: Option<String>,
}

/// Reads the switch's log, one JSON event a line; a line that is not one (the end of a line
/// cut by a kill) is passed over.
fn logged(log: &Path) -> Logged {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let events: Vec<Fields> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Event>(line).ok())
        .map(|e| e.fields)
        .collect();
    let count = |keep: &dyn Fn(&Fields) -> bool| events.iter().filter(|e| keep(e)).count() as u64;
    let recovered = |e: &Fields| e.message == RECOVERED;
    Logged {
        torn_tails_trimmed: count(&|e| e.message.contains("torn tail trimmed")),
        recovery_ms: events
            .iter()
            .filter(|e| recovered(e))
            .filter_map(|e| e.elapsed_ms)
            .skip(1)
            .collect(),
        snapshots_written: count(&|e| e.message == "snapshot written"),
        starts_from_snapshot: count(&|e| recovered(e) && e.snapshot.as_deref() != Some("none")),
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
