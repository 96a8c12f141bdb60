//! The engine: connect (or spawn a switch), set up accounts, drive a profile, verify.
//!
//! ```text
//! lanes (one per stream) ──frames of due requests──▶ switch
//!      ▲                                                │
//!      └── follow-ups (capture, reverse, refund) ◀── answers ──▶ model + stats
//! ```
//!
//! Open loop: each lane owns every `lanes`-th request of the schedule and sends, at each
//! wake-up, everything due by then (at most `batch_max`) as one frame; a frame needs one of the
//! lane's `depth` permits, so requests in flight are bounded, and a request delayed by a full
//! pipeline is still timed from its intended send time. A due slot carries a waiting follow-up
//! if there is one, otherwise a new flow: the schedule is in requests, whatever they are.
//!
//! Layout: `spawning` (the in-process switch, and the endpoint to reach one), `leader` (the
//! connections and their lanes, every call on them, and against a cluster following its
//! leader: reconnect, send again, count the failovers), `sessions` (a run's link, calls
//! outside the schedule, a lost connection), `shared` (what every lane shares: ids,
//! accounts, model, measurements), `flows` (what a flow sends and how its answers update the
//! model), `retries` (refused requests waiting to go again), `setup`, `drivers` (the profiles:
//! open loop, closed loop, step; the drain and the progress line), `pacer` (the open loop's
//! pacing thread) and `verifying` (the end of the run).

mod drivers;
mod flows;
mod leader;
mod pacer;
mod retries;
mod sessions;
mod setup;
mod shared;
mod spawning;
mod verifying;

use anyhow::Context;

pub use drivers::{Phase, ProfileResult, StepResult};
pub use sessions::Session;
pub use spawning::{Endpoint, Spawned};

use crate::config::{Options, Target};

impl Options {
    pub fn lanes(&self) -> usize {
        self.connections * self.streams
    }

    /// Requests one connection may have in flight.
    pub fn connections_in_flight_max(&self) -> u32 {
        let n =
            self.streams * self.depth.max(self.open_depth) * self.batch_max.max(self.setup_batch);
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// What a whole run produced.
pub struct Outcome {
    pub report: crate::report::Report,
}

/// The whole run, as the binary does it: spawn or connect, set up, drive the profile, verify,
/// report. Call outside any async context.
pub fn run(options: Options) -> anyhow::Result<Outcome> {
    let spawned = match options.target {
        Target::Spawn { .. } => Some(Spawned::start(&options)?),
        Target::Remote { .. } => None,
    };
    let endpoint = match &spawned {
        Some(s) => s.endpoint(),
        None => Endpoint::remote(&options)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .context("starting loadgen's runtime")?;
    let spawned_flag = spawned.is_some();
    let result = runtime.block_on(async {
        let mut session = Session::connect(options.clone(), &endpoint).await?;
        session.setup().await?;
        let profile = session.run_profile().await?;
        let cpu = session.cpu_since_start();
        let stats = session.stats();
        let verification = if options.verify {
            Some(session.verify().await?)
        } else {
            None
        };
        let dropped = session.follow_ups_dropped();
        let cluster = session.cluster_report();
        session.close().await;
        let mut report = crate::report::Report::new(
            &options,
            profile,
            &stats,
            verification,
            cpu,
            spawned_flag,
            dropped,
        );
        report.cluster = cluster;
        anyhow::Ok(report)
    });
    drop(runtime);
    if let Some(s) = spawned {
        s.stop()?;
    }
    Ok(Outcome { report: result? })
}
