//! The switch: configuration, routing, the wire protocol, and the server around the ledger.

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
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("SWITCH_COMMIT");
