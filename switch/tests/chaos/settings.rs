//! The run's settings, from the environment.

use std::path::PathBuf;

use rand::Rng;

/// The run's knobs, from the environment (the table in the test's comment).
pub struct Settings {
    pub cycles: u32,
    pub seconds: u64,
    pub kill_ms_max: u64,
    pub workers: usize,
    pub sample: usize,
    /// Probability that a restart is itself killed at a random moment of its start.
    pub start_kill: f64,
    pub seed: u64,
    pub report: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            cycles: env_or("CHAOS_CYCLES", 3),
            seconds: env_or("CHAOS_SECONDS", 900),
            kill_ms_max: env_or::<u64>("CHAOS_KILL_MS", 1000).max(10),
            workers: env_or::<usize>("CHAOS_WORKERS", 24).max(1),
            sample: env_or("CHAOS_SAMPLE", 2000),
            start_kill: env_or::<f64>("CHAOS_START_KILL", 0.25).clamp(0.0, 1.0),
            seed: env_or("CHAOS_SEED", rand::thread_rng().r#gen()),
            report: std::env::var_os("CHAOS_REPORT").map(PathBuf::from),
        }
    }
}
