//! `loadgen`: a festival-peak load generator for the switch that verifies every cent.
//!
//! - `backoff`: which answers are refusals (busy: nothing done) and when to send them again;
//! - `config`: the command line and the resolved options;
//! - `schedule`: when each open-loop request is due (constant, festival curve);
//! - `mix`: what is sent (payment flows, Zipf skew, hot merchant, amounts);
//! - `model` and `verify`: the expected effect of every acknowledged operation, and its
//!   comparison with what the switch reports at the end;
//! - `stats`, `report`, `chart`: measurements, the terminal table and JSON, the PNG/SVG chart;
//! - `run`: the engine (spawn or connect, setup, profiles, verification);
//! - `zipf`: YCSB's zipfian generator, shared with the benchmarks.

pub mod backoff;
pub mod chart;
pub mod config;
pub mod cpu;
pub mod mix;
pub mod model;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod throttle;
pub mod verify;
pub mod zipf;
