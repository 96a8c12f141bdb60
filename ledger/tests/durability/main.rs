//! The log, the snapshot files and the storage they run on, tested together: every test here
//! crashes, tears, corrupts or fills a disk (simulated, or a real directory and a real process)
//! and checks that recovery gives back exactly what it must.

/// Property-test settings: failures persist in the top-level `proptest-regressions/`, and
/// `PROPTEST_CASES` overrides the default case count (kept small to fit CI on two cores).
macro_rules! proptest_config {
    ($file:literal, $default_cases:expr) => {
        proptest::prelude::ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or($default_cases),
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

mod fixtures;
mod kill;
mod snapshots;
mod support;
mod wal_recovery;
mod wal_writer;
