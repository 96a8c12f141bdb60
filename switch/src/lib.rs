//! The switch: the I/O shell (configuration, TLS, the QUIC server, the ledger stage and its
//! log, the clients) around `switch_core`, which decides everything and does no I/O.
//!
//! The core's modules are re-exported here under their own names, so that `switch::core`,
//! `switch::wire` and the rest read the same from the binary, the tests and loadgen.

pub use switch_core::{
    clearing, codes, core, fuzz_check, identity, journal, replica, routing, translate, wire,
};

pub mod admin;
pub mod client;
pub mod cluster;
pub mod config;
pub mod report;
pub mod server;
pub mod tls;

/// This build's version, and the commit it was built from (`unknown` outside a git checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("SWITCH_COMMIT");
