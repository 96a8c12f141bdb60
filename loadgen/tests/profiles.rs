//! Whole runs as the binary makes them (spawn, setup, profile, verify, report), kept to a few
//! seconds each: the festival curve and the step search end to end, and the report's files.

use loadgen::config::{Options, Profile};
use loadgen::schedule::Festival;

fn options(profile: Profile) -> Options {
    let mut o = Options::spawn_defaults(profile);
    o.customers = 30;
    o.merchants = 3;
    o.connections = 1;
    o.streams = 2;
    o.depth = 4;
    o.open_depth = 4;
    o.batch_max = 16;
    o.expire_secs = 1;
    o.progress = false;
    o.out = None;
    o.seed = 11;
    o
}

#[test]
fn a_short_festival_follows_its_curve_and_writes_its_report() {
    let shape = Festival {
        peak: 1.0,
        baseline: 0.2,
        pre_spike: 0.4,
        baseline_secs: 0.5,
        ramp_secs: 0.5,
        spike_secs: 0.2,
        plateau_secs: 1.0,
        decay_secs: 0.8,
        tail_secs: 0.0,
    };
    let outcome = loadgen::run::run(options(Profile::Festival {
        peak: Some(400.0),
        peak_fraction: 0.8,
        calibrate_secs: 1.0,
        overload: None,
        slo_p99_ms: 10.0,
        shape,
    }))
    .expect("the run completes");
    let r = &outcome.report;
    assert!(r.passed(), "{}", r.table());
    let f = r.profile.festival.as_ref().expect("a festival");
    assert_eq!((f.peak, f.baseline, f.pre_spike), (400.0, 80.0, 160.0));
    // 0.5·80 + 0.5·120 + 0.2·280 + 1·400 + 0.8·240 = 748 requests scheduled, all answered.
    let scheduled: f64 = r.profile.target_per_second.iter().sum();
    assert!((scheduled - 748.0).abs() < 1e-6, "{scheduled}");
    assert!(r.totals.count >= 748, "{}", r.totals.count);
    assert_eq!(r.totals.errors, 0);
    assert!(r.series.iter().all(|s| s.target_rate.is_some()));
    let table = r.table();
    assert!(table.contains("verification PASSED"), "{table}");
    assert!(table.contains("authorize"), "{table}");

    let dir = tempfile::tempdir().expect("a directory");
    let paths = r.write(dir.path()).expect("written");
    assert_eq!(paths.len(), 3);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&paths[0]).expect("json")).expect("valid JSON");
    assert_eq!(json["verification"]["passed"], true);
    assert_eq!(json["profile"]["profile"], "festival");
    assert!(json["ops"].as_array().is_some_and(|ops| ops.len() == 6));
    let png = std::fs::read(&paths[1]).expect("png");
    assert!(png.starts_with(b"\x89PNG"));
    let svg = std::fs::read_to_string(&paths[2]).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("throughput"));
    // The curve's phases are shaded and named, in the order they ran.
    let names: Vec<&str> = r.profile.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["baseline", "ramp", "spike", "plateau", "decay"]);
    let ends: Vec<f64> = r.profile.phases.iter().map(|p| p.end_secs).collect();
    let starts: Vec<f64> = r
        .profile
        .phases
        .iter()
        .skip(1)
        .map(|p| p.start_secs)
        .collect();
    assert_eq!(&ends[..4], &starts[..]);
    for name in names {
        assert!(
            svg.contains(&format!("\n{name}\n</text>")),
            "no {name} band"
        );
    }
    // The SLO line is drawn, and the peak judged (no calibration: no share of saturation).
    assert!(svg.contains("SLO p99 10 ms"), "no SLO line");
    assert_eq!(json["profile"]["slo_p99_ms"], 10.0);
    assert_eq!(json["peak"]["phase"], "plateau");
    assert!(json["peak"]["goodput_of_saturation"].is_null());
    assert!(
        json["peak"]["goodput_rate"]
            .as_f64()
            .is_some_and(|g| g > 0.0)
    );
    assert!(table.contains("peak (plateau"), "{table}");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn step_stops_where_the_slo_breaks() {
    // An SLO no run can meet: the first step breaks it, and no rate held.
    let outcome = loadgen::run::run(options(Profile::Step {
        start: 100.0,
        increment: 100.0,
        step_secs: 0.5,
        slo_p99_ms: 0.000_1,
        steps_max: 5,
    }))
    .expect("the run completes");
    let p = &outcome.report.profile;
    assert_eq!(p.steps.len(), 1, "{:?}", p.steps);
    assert!(!p.steps[0].held);
    assert_eq!(p.highest_rate_held, None);
    assert!(outcome.report.passed());
    // No rate held: an exit code of its own, not success.
    assert_eq!(outcome.report.exit_code(), 3);
    // The SLO is a line on the chart.
    let dir = tempfile::tempdir().expect("a directory");
    let paths = outcome.report.write(dir.path()).expect("written");
    let svg = std::fs::read_to_string(&paths[2]).expect("svg");
    assert!(svg.contains("SLO p99 0.0001 ms"), "no SLO line");

    // A generous SLO holds at every step, up to the limit on steps.
    let outcome = loadgen::run::run(options(Profile::Step {
        start: 50.0,
        increment: 50.0,
        step_secs: 0.5,
        slo_p99_ms: 60_000.0,
        steps_max: 2,
    }))
    .expect("the run completes");
    let p = &outcome.report.profile;
    assert_eq!(p.steps.len(), 2, "{:?}", p.steps);
    assert_eq!(p.highest_rate_held, Some(100.0));
    assert_eq!(outcome.report.exit_code(), 0);
}

#[test]
fn max_finds_a_saturation_rate() {
    let outcome =
        loadgen::run::run(options(Profile::Max { duration_secs: 1.0 })).expect("the run completes");
    let r = &outcome.report;
    assert!(r.passed(), "{}", r.table());
    assert!(r.profile.saturation_rate.is_some_and(|x| x > 0.0));
    assert!(r.series.iter().all(|s| s.target_rate.is_none()));
    let cost = r.self_cost.as_ref().expect("measured on Linux");
    assert!(cost.loadgen_cpu_us_per_request > 0.0);
    // The spawned switch's threads, by name: the network, the stage and the log writer all
    // did work, and loadgen's own threads are not among them.
    let threads: Vec<&str> = cost
        .switch_threads
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    for name in ["ledger-stage", "wal-writer", "switch-io"] {
        assert!(threads.contains(&name), "{name} missing from {threads:?}");
    }
    assert!(!threads.iter().any(|t| t.starts_with("loadgen")));
    // A thread busy across both readings may not have been put on a CPU again in between,
    // but the switch as a whole was woken by the requests.
    assert!(
        cost.switch_threads
            .iter()
            .any(|t| t.scheduled_per_request > 0.0)
    );
    assert!(
        cost.switch_threads
            .iter()
            .all(|t| t.cpu_us_per_request > 0.0)
    );
    assert!(r.table().contains("switch threads, per request"));
}
