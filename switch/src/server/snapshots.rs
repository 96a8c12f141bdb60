//! Snapshots of the switch on disk: loading the newest usable one at start, taking one when
//! enough log has grown since the last, writing it off the ledger stage, and retiring the log
//! segments the oldest kept snapshot covers.
//!
//! Files live in `data_dir/snapshots` (`ledger::snapshot_file`: written to a temporary name,
//! fdatasync, rename, directory fsync, CRC32C, the newest `keep` kept). One snapshot is made at
//! a time, on a background thread, which deletes covered log segments only once it is durable.
//! How the state gets there is `[snapshot] method`:
//!
//! - `replay`: the background thread builds the state itself, the way a restart would: it
//!   loads the newest snapshot (or the state the log starts from) and replays the log after
//!   it, up to the last record durable when the snapshot was due (`wal::read_through`, which
//!   reads while the writer appends). The ledger stage does not pause at all.
//! - `capture`: the stage thread copies its state (`core::snapshot::Image::take`), a pause
//!   that grows with what is remembered, and the background thread encodes and writes it.
//!
//! The snapshot at a clean shutdown is always captured: nothing is waiting then.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use ledger::snapshot_file;

use ledger::storage::FileStorage;
use ledger::wal;

use crate::config::SnapshotMethod;
use crate::config::settings::{CadenceSettings, SnapshotSettings};
use crate::core::Core;
use crate::core::snapshot::{Image, RestoreConfig};
use crate::journal;

/// Bytes a log record takes on disk besides its payload (the record header).
pub const RECORD_OVERHEAD_BYTES: u64 = wal::RECORD_HEADER_LEN as u64;

/// The snapshot a restart starts from.
pub struct Loaded {
    pub core: Core,
    /// The last log sequence it covers: replay continues after it.
    pub sequence: u64,
    pub file: String,
}

/// What one snapshot write did, for the log.
struct Written {
    sequence: u64,
    file: String,
    bytes: usize,
    encode_ms: u64,
    write_ms: u64,
    segments_removed: usize,
    /// Made by replay: how.
    built: Option<Built>,
}

/// How a snapshot made by replay was built.
struct Built {
    /// The snapshot file it started from, or the state the log starts from.
    base: String,
    records_replayed: u64,
    load_ms: u64,
    replay_ms: u64,
}

/// Removes the log segments wholly covered by a sequence; returns how many.
type Prune = Arc<dyn Fn(u64) -> Result<usize, ledger::storage::StorageError> + Send + Sync>;

/// Replays the log records after the first sequence up to and including the second into a
/// core; returns how many. Stops with `Cancelled` once the flag is set.
type Replay = Arc<dyn Fn(&mut Core, u64, u64, &AtomicBool) -> anyhow::Result<u64> + Send + Sync>;

/// A build by replay was stopped (at shutdown): not a failure.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot build was cancelled")]
struct Cancelled;

/// What a build by replay needs besides the files.
#[derive(Clone)]
struct Builds {
    /// The encoded state the log starts from (before any record), for a log no snapshot covers.
    initial: Arc<Vec<u8>>,
    restore: RestoreConfig,
    replay: Replay,
}

/// When a snapshot is due: counts of log appended since the last, and how busy the switch
/// is. A due snapshot waits while the switch is busy (over the last whole second it took at
/// least `defer_above_requests_per_second`), so that a peak does not pay the pause of capturing
/// the state, which grows with what is remembered; it waits no longer than `defer_at_most`
/// times the counts, so the log to replay after a crash stays bounded.
#[derive(Clone, Debug)]
pub(crate) struct Cadence {
    every_records: u64,
    every_wal_bytes: u64,
    defer_above: u64,
    defer_at_most: u64,
    records_since: u64,
    bytes_since: u64,
    /// The window being counted: when it started, and the requests taken since.
    window: Option<(Instant, u64)>,
    /// Requests a second over the last whole window (a second or a little more).
    rate: u64,
}

/// What `Cadence::due` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    No,
    /// Due, but waiting for the switch to be less busy.
    Deferred,
    Yes,
}

impl Cadence {
    pub(crate) fn new(settings: &CadenceSettings) -> Self {
        Cadence {
            every_records: settings.every_records,
            every_wal_bytes: settings.every_wal_bytes,
            defer_above: settings.defer_above_requests_per_second,
            defer_at_most: settings.defer_at_most.max(1),
            records_since: 0,
            bytes_since: 0,
            window: None,
            rate: 0,
        }
    }

    /// A record of `bytes` (header included) was appended.
    pub(crate) fn appended(&mut self, bytes: u64) {
        self.records_since += 1;
        self.bytes_since = self.bytes_since.saturating_add(bytes);
    }

    /// The stage took a batch of `requests` at `now` (0 for an idle tick; the stage ticks
    /// when idle, so windows close then too).
    pub(crate) fn batch(&mut self, requests: usize, now: Instant) {
        let requests = u64::try_from(requests).unwrap_or(u64::MAX);
        // A window counts what was taken after its start, up to and including its end.
        let Some((started, taken)) = &mut self.window else {
            self.window = Some((now, 0));
            return;
        };
        *taken = taken.saturating_add(requests);
        let elapsed = now.saturating_duration_since(*started);
        if elapsed >= Duration::from_secs(1) {
            let per_second = u128::from(*taken) * 1_000_000_000 / elapsed.as_nanos().max(1);
            self.rate = u64::try_from(per_second).unwrap_or(u64::MAX);
            self.window = Some((now, 0));
        }
    }

    pub(crate) fn busy(&self) -> bool {
        self.defer_above > 0 && self.rate >= self.defer_above
    }

    fn reached(&self, factor: u64) -> bool {
        (self.every_records > 0 && self.records_since >= self.every_records.saturating_mul(factor))
            || (self.every_wal_bytes > 0
                && self.bytes_since >= self.every_wal_bytes.saturating_mul(factor))
    }

    pub(crate) fn due(&self) -> Due {
        if !self.reached(1) {
            Due::No
        } else if self.busy() && !self.reached(self.defer_at_most) {
            Due::Deferred
        } else {
            Due::Yes
        }
    }

    /// A snapshot was started: count afresh.
    pub(crate) fn taken(&mut self) {
        self.records_since = 0;
        self.bytes_since = 0;
    }
}

pub struct Snapshots {
    storage: FileStorage,
    prune: Prune,
    cadence: Cadence,
    /// A due snapshot is waiting for the stage to be less busy (said once in the log).
    deferring: bool,
    keep: usize,
    on_shutdown: bool,
    /// The sequence the newest snapshot (written, being written, or loaded) covers.
    covered: u64,
    /// The last log sequence appended.
    appended: u64,
    in_flight: Option<JoinHandle<anyhow::Result<Written>>>,
    method: SnapshotMethod,
    replay: Replay,
    /// Set by `starting_from`; without it snapshots are captured.
    builds: Option<Builds>,
    /// Stops a build in flight (at shutdown).
    cancel: Arc<AtomicBool>,
}

impl Snapshots {
    /// Opens the snapshot directory beside the log's storage.
    pub fn open<S: ledger::storage::Storage + Clone>(
        settings: &SnapshotSettings,
        wal_storage: S,
    ) -> anyhow::Result<Snapshots> {
        let record_size_max = settings.record_size_max_bytes;
        let read_storage = wal_storage.clone();
        let replay: Replay = Arc::new(move |core, after, through, cancel| {
            let replayed = wal::read_through(
                &read_storage,
                record_size_max,
                after,
                through,
                |_, payload| {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(anyhow::Error::new(Cancelled));
                    }
                    journal::replay(core, payload).map_err(anyhow::Error::new)
                },
            );
            replayed.map_err(|e| match e {
                wal::RecoveryError::Apply { source, .. } if source.is::<Cancelled>() => source,
                e => anyhow::anyhow!("{e}"),
            })
        });
        let prune: Prune = Arc::new(move |sequence| {
            wal::delete_covered(&wal_storage, sequence).map(|removed| removed.len())
        });
        let dir = &settings.dir;
        let storage =
            FileStorage::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        Ok(Snapshots {
            storage,
            prune,
            cadence: Cadence::new(&settings.cadence),
            deferring: false,
            keep: settings.keep.max(1),
            on_shutdown: settings.on_shutdown,
            covered: 0,
            appended: 0,
            in_flight: None,
            method: settings.method,
            replay,
            builds: None,
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Keeps `initial`, the state the log starts from, for snapshots made by replay (which
    /// start there when no snapshot covers the log yet). Call before recovery.
    pub fn starting_from(&mut self, initial: &Core) {
        self.builds = Some(Builds {
            initial: Arc::new(Image::take(initial, 0).encode()),
            restore: RestoreConfig::like(initial),
            replay: self.replay.clone(),
        });
    }

    pub fn dir(&self) -> &Path {
        self.storage.dir()
    }

    /// The newest snapshot that reads back and restores, newest first; a file that fails its
    /// checks or does not restore is logged (file and reason) and the next older one tried.
    /// Returns the reasons for everything passed over, for an error if recovery then fails.
    pub fn load(
        &mut self,
        config: impl Fn() -> RestoreConfig,
    ) -> anyhow::Result<(Option<Loaded>, Vec<String>)> {
        let (loaded, passed_over) = load_newest(&self.storage, config)?;
        if let Some(l) = &loaded {
            self.covered = l.sequence;
            self.appended = l.sequence;
            if let Ok(modified) =
                std::fs::metadata(self.dir().join(&l.file)).and_then(|m| m.modified())
            {
                set_written_at(modified);
            }
        }
        Ok((loaded, passed_over))
    }

    /// Recovery found the log up to `sequence`.
    pub fn recovered(&mut self, sequence: u64) {
        self.appended = self.appended.max(sequence);
    }

    /// A record of `payload_bytes` was appended at `sequence`.
    pub fn appended(&mut self, sequence: u64, payload_bytes: usize) {
        self.appended = sequence;
        self.cadence
            .appended(payload_bytes as u64 + RECORD_OVERHEAD_BYTES);
    }

    /// The stage took a batch of `requests` (0: an idle tick), for `Cadence::busy`.
    pub fn batch(&mut self, requests: usize) {
        self.cadence.batch(requests, Instant::now());
    }

    fn due(&mut self) -> bool {
        match self.cadence.due() {
            Due::Yes => true,
            Due::No => false,
            Due::Deferred => {
                if !self.deferring {
                    self.deferring = true;
                    metrics::counter!("switch_snapshots_deferred_total").increment(1);
                    tracing::info!(
                        "a snapshot is due; it waits while the switch is busy (at most \
                         [snapshot] defer_at_most times the log it is due after)"
                    );
                }
                false
            }
        }
    }

    /// Whether a snapshot is due and none is being written (reports a finished write).
    pub fn wants_start(&mut self) -> bool {
        self.reap(false);
        self.in_flight.is_none() && self.due() && self.appended > self.covered
    }

    /// Between batches: reports a finished write, and starts a snapshot if one is due and
    /// none is being written.
    pub fn maybe_start(&mut self, core: &Core) {
        self.reap(false);
        if self.in_flight.is_none() && self.due() && self.appended > self.covered {
            self.start(core);
        }
    }

    /// Collects the background write if it finished (or, with `wait`, once it does).
    fn reap(&mut self, wait: bool) {
        let finished = self.in_flight.as_ref().is_some_and(|h| h.is_finished());
        if !(finished || wait) {
            return;
        }
        let Some(handle) = self.in_flight.take() else {
            return;
        };
        match handle.join() {
            Ok(Ok(w)) => report(&w),
            Ok(Err(e)) if e.is::<Cancelled>() => {
                tracing::info!("the snapshot being built was cancelled (the log is kept whole)");
            }
            Ok(Err(e)) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                // The log still holds everything: nothing acknowledged is at risk.
                tracing::error!(
                    "writing a snapshot failed (the log is kept whole): {}",
                    super::error_line(e.as_ref())
                );
            }
            Err(_) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                tracing::error!("the snapshot writer thread panicked");
            }
        }
    }

    /// Starts the snapshot of everything appended so far on another thread: built there by
    /// replay, or captured here (the pause) and written there.
    fn start(&mut self, core: &Core) {
        let sequence = self.appended;
        let started = Instant::now();
        let (storage, prune, keep) = (self.storage.clone(), self.prune.clone(), self.keep);
        let spawned = match (self.method, self.builds.clone()) {
            (SnapshotMethod::Replay, Some(builds)) => {
                let cancel = self.cancel.clone();
                tracing::info!(sequence, "snapshot due; building it off the ledger stage");
                std::thread::Builder::new()
                    .name("switch-snapshot".into())
                    .spawn(move || build(builds, sequence, &storage, &prune, keep, &cancel))
            }
            _ => {
                let capture = Image::take(core, sequence);
                tracing::info!(
                    sequence,
                    pause_ms = started.elapsed().as_secs_f64() * 1e3,
                    "snapshot captured; writing it in the background"
                );
                std::thread::Builder::new()
                    .name("switch-snapshot".into())
                    .spawn(move || write(capture, &storage, &prune, keep))
            }
        };
        metrics::histogram!("switch_snapshot_pause_seconds")
            .record(started.elapsed().as_secs_f64());
        self.cadence.taken();
        self.deferring = false;
        match spawned {
            Ok(handle) => {
                self.covered = sequence;
                self.in_flight = Some(handle);
            }
            Err(e) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                tracing::error!("starting the snapshot writer thread: {e}");
            }
        }
    }

    /// At a clean stop: waits for a write in flight (cancelling a build by replay), then (if
    /// configured and anything was logged since) takes a last snapshot here, so the next start
    /// replays nothing.
    pub fn finish(&mut self, core: &Core) {
        // A build by replay would take as long as it takes; the capture below supersedes it,
        // and without one the log is kept whole.
        self.cancel.store(true, Ordering::Relaxed);
        self.reap(true);
        if !self.on_shutdown || self.appended <= self.covered {
            return;
        }
        let capture = Image::take(core, self.appended);
        match write(capture, &self.storage, &self.prune, self.keep) {
            Ok(w) => {
                self.covered = w.sequence;
                report(&w);
            }
            Err(e) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                tracing::error!(
                    "writing the shutdown snapshot failed (the log is kept whole): {}",
                    super::error_line(e.as_ref())
                );
            }
        }
    }
}

fn report(w: &Written) {
    metrics::histogram!("switch_snapshot_write_seconds")
        .record((w.encode_ms + w.write_ms) as f64 / 1e3);
    metrics::gauge!("switch_snapshot_bytes").set(w.bytes as f64);
    if let Some(b) = &w.built {
        metrics::histogram!("switch_snapshot_build_seconds")
            .record((b.load_ms + b.replay_ms) as f64 / 1e3);
        tracing::info!(
            base = %b.base,
            records_replayed = b.records_replayed,
            load_ms = b.load_ms,
            replay_ms = b.replay_ms,
            "snapshot built by replaying the log"
        );
    }
    tracing::info!(
        file = %w.file,
        sequence = w.sequence,
        bytes = w.bytes,
        encode_ms = w.encode_ms,
        write_ms = w.write_ms,
        wal_segments_removed = w.segments_removed,
        "snapshot written"
    );
}

/// `switch_snapshot_last_written_timestamp_seconds`: the newest snapshot is durable since `at`.
fn set_written_at(at: SystemTime) {
    metrics::gauge!("switch_snapshot_last_written_timestamp_seconds")
        .set(crate::server::telemetry::unix_seconds(at));
}

/// The newest snapshot in `storage` that reads back and restores (see `Snapshots::load`).
fn load_newest(
    storage: &FileStorage,
    config: impl Fn() -> RestoreConfig,
) -> anyhow::Result<(Option<Loaded>, Vec<String>)> {
    let mut passed_over = Vec::new();
    for sequence in snapshot_file::list(storage)? {
        let snapshot = match snapshot_file::read(storage, sequence)? {
            Ok(snapshot) => snapshot,
            Err(rejected) => {
                tracing::warn!("{rejected}; trying an older snapshot");
                passed_over.push(rejected.to_string());
                continue;
            }
        };
        let started = Instant::now();
        match Core::restore(&snapshot.payload, snapshot.sequence, config()) {
            Ok((core, sequence)) => {
                tracing::info!(
                    file = %snapshot.file,
                    sequence,
                    bytes = snapshot.payload.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "loaded snapshot"
                );
                return Ok((
                    Some(Loaded {
                        core,
                        sequence,
                        file: snapshot.file,
                    }),
                    passed_over,
                ));
            }
            Err(e) => {
                let reason = format!("snapshot {}: {e}", snapshot.file);
                tracing::warn!("{reason}; trying an older snapshot");
                passed_over.push(reason);
            }
        }
    }
    Ok((None, passed_over))
}

/// Makes the snapshot at `through` off the ledger stage: the newest snapshot (or the initial
/// state), the log after it replayed up to `through`, then encoded and written like a capture.
fn build(
    builds: Builds,
    through: u64,
    storage: &FileStorage,
    prune: &Prune,
    keep: usize,
    cancel: &AtomicBool,
) -> anyhow::Result<Written> {
    let started = Instant::now();
    let (loaded, passed_over) = load_newest(storage, || builds.restore.clone())?;
    let (mut core, after, base) = match loaded {
        Some(l) => (l.core, l.sequence, l.file),
        None => {
            let (core, sequence) = Core::restore(&builds.initial, 0, builds.restore.clone())
                .context("restoring the initial state")?;
            let base = if passed_over.is_empty() {
                "the initial state".to_owned()
            } else {
                format!(
                    "the initial state (snapshots passed over: {})",
                    passed_over.join("; ")
                )
            };
            (core, sequence, base)
        }
    };
    anyhow::ensure!(
        after < through,
        "the newest snapshot ({base}) already covers sequence {after}, not before {through}"
    );
    let load_ms = started.elapsed().as_millis() as u64;
    let go_on = || {
        if cancel.load(Ordering::Relaxed) {
            Err(anyhow::Error::new(Cancelled))
        } else {
            Ok(())
        }
    };
    go_on()?;
    let started = Instant::now();
    let records_replayed = (builds.replay)(&mut core, after, through, cancel)
        .with_context(|| format!("replaying the log after {base} up to sequence {through}"))?;
    let replay_ms = started.elapsed().as_millis() as u64;
    go_on()?;
    let capture = Image::take(&core, through);
    drop(core);
    go_on()?;
    let mut written = write(capture, storage, prune, keep)?;
    written.built = Some(Built {
        base,
        records_replayed,
        load_ms,
        replay_ms,
    });
    Ok(written)
}

/// Encodes and writes a snapshot durably, then removes the log segments that every kept
/// snapshot covers (only now: until the snapshot is durable, the log is the only copy).
fn write(
    capture: Image,
    storage: &FileStorage,
    prune: &Prune,
    keep: usize,
) -> anyhow::Result<Written> {
    let sequence = capture.sequence();
    let started = Instant::now();
    let payload = capture.encode();
    let encode_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    let written = snapshot_file::write(storage, sequence, &payload, keep)
        .with_context(|| format!("snapshot at sequence {sequence}"))?;
    set_written_at(SystemTime::now());
    let removed =
        prune(written.oldest_kept_sequence).context("removing log segments the snapshots cover")?;
    Ok(Written {
        sequence,
        file: written.file,
        bytes: payload.len(),
        encode_ms,
        write_ms: started.elapsed().as_millis() as u64,
        segments_removed: removed,
        built: None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cadence(every_records: u64, every_wal_bytes: u64, defer: u64, at_most: u64) -> Cadence {
        Cadence::new(&CadenceSettings {
            every_records,
            every_wal_bytes,
            defer_above_requests_per_second: defer,
            defer_at_most: at_most,
        })
    }

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn a_peak_defers_a_due_snapshot_until_the_load_falls_or_the_bound() {
        let mut now = Instant::now();
        // 1,000 requests a tenth of a second: 10,000 a second, over the 5,000 threshold.
        let mut c = cadence(10, 0, 5_000, 4);
        let busy_batch = |c: &mut Cadence, now: &mut Instant| {
            *now += TICK;
            c.batch(1_000, *now);
            c.appended(50);
        };
        // A second of the peak before anything is appended (the first batch opens the window):
        // the rate is known from then on.
        for _ in 0..11 {
            now += TICK;
            c.batch(1_000, now);
        }
        assert!(c.busy());
        for _ in 0..9 {
            busy_batch(&mut c, &mut now);
        }
        assert_eq!(c.due(), Due::No);
        busy_batch(&mut c, &mut now);
        assert_eq!(c.due(), Due::Deferred, "busy at 10 records");
        for _ in 10..39 {
            busy_batch(&mut c, &mut now);
        }
        assert_eq!(c.due(), Due::Deferred, "busy at 39 records");
        busy_batch(&mut c, &mut now);
        assert_eq!(c.due(), Due::Yes, "40 records: 4 times the count");
        c.taken();
        assert_eq!(c.due(), Due::No);
        for _ in 0..10 {
            busy_batch(&mut c, &mut now);
        }
        assert_eq!(c.due(), Due::Deferred);
        // The peak ends: 100 requests a tenth of a second is 1,000 a second.
        for _ in 0..11 {
            now += TICK;
            c.batch(100, now);
        }
        assert_eq!(c.due(), Due::Yes, "a quiet second");
        // A rate just under the threshold is not busy; at it, it is.
        let mut edge = cadence(1, 0, 5_000, 4);
        edge.appended(1);
        for (per_tick, want) in [(499, Due::Yes), (500, Due::Deferred), (0, Due::Yes)] {
            // Two seconds: at least one whole window at this rate alone.
            for _ in 0..20 {
                now += TICK;
                edge.batch(per_tick, now);
            }
            assert_eq!(edge.due(), want, "{per_tick} requests every 100 ms");
        }
    }

    #[test]
    fn without_deferral_a_snapshot_is_due_at_the_count_in_bytes_or_records() {
        let now = Instant::now();
        let mut c = cadence(0, 1000, 0, 4);
        c.batch(1_000_000, now);
        c.batch(1_000_000, now + Duration::from_secs(1));
        c.appended(999);
        assert_eq!(c.due(), Due::No);
        c.appended(1);
        assert_eq!(c.due(), Due::Yes);
        let mut never = cadence(0, 0, 100, 4);
        for _ in 0..1000 {
            never.appended(u64::MAX / 2);
        }
        assert_eq!(never.due(), Due::No, "both counts 0: no periodic snapshots");
    }

    #[derive(Clone, Debug)]
    enum Step {
        Append(u64),
        /// Requests, then milliseconds since the last batch or tick (the stage ticks at least
        /// every 100 ms by default).
        Batch(usize, u64),
        Take,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..200).prop_map(Step::Append),
            (
                prop_oneof![Just(0usize), 0usize..50, 0usize..5000],
                0u64..=100
            )
                .prop_map(|(n, ms)| Step::Batch(n, ms)),
            Just(Step::Take),
        ]
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_snapshot_cadence.txt"))]

        #[test]
        fn deferral_never_skips_the_bound_nor_defers_a_quiet_switch(
            every_records in 0u64..20,
            every_bytes in 0u64..2000,
            defer in prop_oneof![Just(0u64), 1u64..100_000],
            at_most in 1u64..6,
            steps in prop::collection::vec(step(), 0..400),
        ) {
            let started = Instant::now();
            let mut c = cadence(every_records, every_bytes, defer, at_most);
            let (mut records, mut bytes) = (0u64, 0u64);
            let mut at = 0u64;
            // (milliseconds since the start, requests) of every batch and tick.
            let mut batches: Vec<(u64, u64)> = Vec::new();
            for s in steps {
                match s {
                    Step::Append(b) => {
                        c.appended(b);
                        records += 1;
                        bytes += b;
                    }
                    Step::Batch(n, ms) => {
                        at += ms;
                        c.batch(n, started + Duration::from_millis(at));
                        batches.push((at, n as u64));
                    }
                    Step::Take => {
                        c.taken();
                        records = 0;
                        bytes = 0;
                    }
                }
                let reached = |f: u64| {
                    (every_records > 0 && records >= every_records * f)
                        || (every_bytes > 0 && bytes >= every_bytes * f)
                };
                let due = c.due();
                prop_assert_eq!(due == Due::No, !reached(1));
                if reached(at_most) || defer == 0 {
                    prop_assert_ne!(due, Due::Deferred);
                }
                // Over the last 2.5 s (when the switch has run that long), the requests in
                // every 100 ms: the window last closed lies within that span.
                if at >= 2_500 {
                    let recent: Vec<u64> = batches
                        .iter()
                        .filter(|(t, _)| *t > at - 2_500)
                        .map(|(_, n)| *n)
                        .collect();
                    let total: u64 = recent.iter().sum();
                    if total == 0 {
                        prop_assert!(!c.busy(), "busy after 2.5 s without a request");
                    }
                    // At least twice the threshold a second in every 100 ms: busy. Ticks come
                    // at most 100 ms apart, so each carries its 100 ms share.
                    if defer > 0 && recent.iter().all(|&n| n * 10 >= 2 * defer) {
                        prop_assert!(c.busy(), "not busy at twice the threshold");
                    }
                }
            }
        }
    }
}
