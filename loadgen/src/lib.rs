//! `loadgen`: a festival-peak load generator for the switch that verifies every cent.
//!
//! - `config`: the command line and the resolved options;
//! - `schedule`: when each open-loop request is due (constant, festival curve);
//! - `mix`: what is sent (payment flows, Zipf skew, hot merchant, amounts);
//! - `model` and `verify`: the expected effect of every acknowledged operation, and its
//!   comparison with what the switch reports at the end;
//! - `stats`, `report`, `chart`: measurements, the terminal table and JSON, the PNG/SVG chart;
//! - `run`: the engine (spawn or connect, setup, profiles, verification);
//! - `zipf`: YCSB's zipfian generator, shared with the benchmarks.

/// Property-test settings: failures persist in the top-level `proptest-regressions/`, and
/// `PROPTEST_CASES` raises the case count from a default that fits CI on two cores.
#[cfg(test)]
macro_rules! proptest_config {
    ($file:literal) => {
        proptest::prelude::ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(256),
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../proptest-regressions/",
                    $file
                )),
            )),
            ..proptest::prelude::ProptestConfig::default()
        }
    };
}

pub mod chart;
pub mod config;
pub mod cpu;
pub mod mix;
pub mod model;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod verify;
pub mod zipf;
