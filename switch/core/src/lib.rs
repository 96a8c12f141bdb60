//! The switch's sans-IO part: everything that decides, and nothing that waits. No sockets, no
//! files, no clock, no threads; the crate does not depend on tokio, quinn or rustls, so none can
//! slip in. `switch` is the shell that feeds it (as `quinn` is to `quinn-proto`).
//!
//! - `wire`: the protocol codec (bytes in, typed messages out).
//! - `translate`: wire messages to core requests and core responses to wire messages.
//! - `core`: the state machine: payments, administration, windows, queries, remembered
//!   requests, and its snapshot encoding.
//! - `clearing`: the open window's totals, exposures for net debit caps, closed windows.
//! - `routing`, `codes`, `journal`, `identity`: the routing table, ISO 8583 codes, the log's
//!   records, who a request acts as.

pub mod clearing;
pub mod codes;
pub mod core;
#[doc(hidden)]
pub mod fuzz_check;
pub mod identity;
pub mod journal;
pub mod replica;
pub mod routing;
pub mod translate;
pub mod wire;
