//! The switch: configuration, routing, the wire protocol, and the server around the ledger.

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

pub mod admin;
pub mod clearing;
pub mod client;
pub mod codes;
pub mod config;
pub mod core;
#[doc(hidden)]
pub mod fuzz_check;
pub mod journal;
pub mod report;
pub mod routing;
pub mod server;
pub mod tls;
pub mod translate;
pub mod wire;
