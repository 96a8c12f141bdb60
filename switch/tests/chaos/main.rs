//! Crash under load: the real `switch` binary, driven by a pipelining client, killed with
//! SIGKILL at random moments and restarted on the same data directory, cycle after cycle.
//! Every request sent and every answer received is kept in a journal; after each restart the
//! switch's state is checked against it.
//!
//! Usage (`scripts/chaos.sh` runs the long version in release mode and prints the summary):
//!
//! ```text
//! cargo test -p switch --test chaos                       # CI: 3 cycles
//! CHAOS_CYCLES=100 CHAOS_REPORT=chaos.json \
//!     cargo test --release -p switch --test chaos -- --nocapture
//! ```
//!
//! Environment (all optional):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `CHAOS_CYCLES` | 3 | kill-and-restart cycles |
//! | `CHAOS_SECONDS` | 900 | wall-clock bound: no cycle starts after it |
//! | `CHAOS_KILL_MS` | 1000 | the kill comes 1/10 to all of this many ms after load starts |
//! | `CHAOS_WORKERS` | 24 | concurrent flows, pipelined over 4 streams of one connection |
//! | `CHAOS_SAMPLE` | 2000 | older operations re-checked per cycle (all are checked at the end) |
//! | `CHAOS_START_KILL` | 0.25 | probability that a restart is killed again while it starts |
//! | `CHAOS_SEED` | random | seeds the choices of the load (timing still varies); printed |
//! | `CHAOS_REPORT` | none | where to write the JSON report |
//!
//! A cycle: load runs (authorize, full and partial capture, reverse, sale, refund, top-ups,
//! batches of several operations in one frame, a capture racing a reverse, holds of a second
//! or two that the switch expires by itself, declines of every kind), the switch is killed with
//! requests in flight, restarted (a quarter of the restarts are themselves killed at a random
//! moment of the start, mostly while the log is replayed, and started again), and then, in
//! this order, checked. The switch makes a snapshot every 300 log records (built off the
//! ledger stage by replaying the log) in 1 MiB log segments, so kills also land while one is
//! being built or written, and restarts load one and replay the log after it:
//!
//! 1. Read-only, before anything is re-sent: the TransferStatus of every operation that makes
//!    a transfer and was acknowledged this cycle (and a sample of older ones) must match the
//!    journal; what became of each request that was in flight at the kill is read the same
//!    way; and every account's balance must equal the model computed from the acknowledged
//!    answers plus the in-flight requests found applied. A missing acknowledged operation is
//!    *lost*; anything else that does not match (a hold nobody asked for, half of an
//!    operation, money made or destroyed, a hold expired early or live again after it was
//!    seen expired) is a *mismatch*. An expiring hold counts as held while its status says
//!    pending; the statuses of those holds are read again after the balances, and the pass is
//!    repeated if one expired meanwhile.
//! 2. Every in-flight request is sent again; its answer is its definitive outcome, and must
//!    agree with step 1 (a request found applied must be answered as approved).
//! 3. Every acknowledged request of this cycle (and a sample of older ones) is sent again and
//!    must get exactly the original answer: same code, reason and body.
//! 4. Step 1's checks again, now with every outcome definitive; money is conserved (the
//!    balances of all accounts, funding accounts included, sum to zero).
//!
//! At the end every operation ever sent is checked (steps 3 and 4 in full). The report gives
//! cycles, operations acknowledged, lost (must be 0), mismatches (must be 0) and the recovery
//! time of every restart (spawn to the first answered request).
//!
//! Layout: `settings` (the environment), `world` (participants and accounts), `process` (the
//! switch as a child process), `journal` (every request and answer), `load` (the flows and
//! the kill), `verify` (the checks after a restart, talking to the switch), `check` (the
//! journal against what was read: pure), `report` (the summary and the JSON report).

#[path = "../common/mod.rs"]
#[allow(dead_code)] // only `serve` and its process helper
mod common;

mod check;
mod journal;
mod load;
mod process;
mod report;
mod settings;
mod verify;
mod world;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use check::Problem;
use journal::{Journal, Shared};
use report::Report;
use settings::Settings;

/// A chaos run: its settings, its journal (shared with the load tasks), what it found.
struct Run {
    settings: Settings,
    rng: StdRng,
    shared: Arc<Shared>,
    report: Report,
    problems: Vec<Problem>,
    config: PathBuf,
    log: PathBuf,
    /// Authorizations seen expired.
    expired: HashSet<u128>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_kill_9_under_load() {
    let settings = Settings::from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = process::write_config(dir.path());
    let seed = settings.seed;
    eprintln!(
        "chaos: seed {seed}, {} cycles, kill within {} ms, {} workers; data in {}",
        settings.cycles,
        settings.kill_ms_max,
        settings.workers,
        dir.path().display()
    );
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed),
        settings,
        shared: Arc::new(Shared {
            journal: Mutex::new(Journal::default()),
            protocol: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }),
        report: Report {
            seed,
            ..Report::default()
        },
        problems: Vec::new(),
        config,
        log: dir.path().join("switch.log"),
        expired: HashSet::new(),
    };
    let started = Instant::now();
    let result = drive(&mut run, started).await;
    let seconds = started.elapsed().as_secs_f64();
    run.conclude(&dir.path().join("data"), seconds, result.as_ref().err());
    eprint!("{}", run.report.summary());
    for p in run.problems.iter().take(50) {
        eprintln!("chaos: {:?}: {}", p.kind, p.what);
    }
    if let Some(path) = &run.settings.report {
        std::fs::write(path, run.report.json()).expect("write the report");
        eprintln!("chaos: report written to {}", path.display());
    }
    if let Err(e) = result {
        panic!("the chaos run stopped: {e}");
    }
    assert_eq!(run.report.lost, 0, "acknowledged operations were lost");
    assert_eq!(
        run.report.mismatches, 0,
        "the state did not match the journal"
    );
    assert!(
        run.report.cycles >= run.settings.cycles.min(1),
        "no cycle ran"
    );
}

/// Setup, then kill-and-restart cycles until the count, the time bound or a problem.
async fn drive(run: &mut Run, started: Instant) -> Result<(), String> {
    let (mut process, client, streams) = run.spawn().await?;
    // The first start is not a recovery.
    run.report.ready_ms.clear();
    run.report.recovery_ms.clear();
    run.setup(&streams).await?;
    run.verify(&streams, 0, false).await?;
    let (mut client, mut streams) = (client, streams);
    for cycle in 1..=run.settings.cycles {
        let in_flight = run
            .load_and_kill(&mut process, client, streams, cycle)
            .await?;
        run.report.in_flight_at_kill.push(in_flight);
        drop(process);
        if run.rng.gen_bool(run.settings.start_kill) {
            run.kill_while_starting().await?;
        }
        let (p, c, s) = run.spawn().await?;
        (process, client, streams) = (p, c, s);
        run.report.cycles = cycle;
        let last = cycle == run.settings.cycles
            || started.elapsed() >= Duration::from_secs(run.settings.seconds);
        run.verify(&streams, cycle, last).await?;
        let acknowledged = run.shared.journal.lock().acknowledged_live;
        eprintln!(
            "chaos: cycle {cycle}: {in_flight} in flight at the kill, recovered in {:.1} ms, \
             {acknowledged} acknowledged so far, {} problems",
            run.report.recovery_ms.last().copied().unwrap_or_default(),
            run.problems.len()
        );
        if !run.problems.is_empty() || last {
            break;
        }
    }
    drop(client);
    drop(process);
    Ok(())
}
