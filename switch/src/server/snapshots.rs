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
//!   loads the newest snapshot (or the state the log starts from) and applies the committed
//!   entries after it, up to the newest one this replica has applied (the stage hands it
//!   those entries: the replica holds every entry since its newest snapshot). The ledger stage
//!   does not pause at all.
//! - `capture`: the stage thread copies its state (`core::snapshot::Image::take`), a pause
//!   that grows with what is remembered, and the background thread encodes and writes it.
//!   Only a state that holds nothing uncommitted is captured: a leader's may hold entries not
//!   yet committed, and then the snapshot is built by replay instead.
//!
//! A snapshot covers a Raft entry: its payload is the core's snapshot behind that entry's
//! index, term and the membership (`replica::snapshot`), and the file is named by the index.
//! Once it is durable the stage drops the entries it covers from memory, and the log segments
//! the oldest kept snapshot covers go. The snapshot at a clean shutdown is captured, when the
//! state holds nothing uncommitted.

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
use raft::eraftpb::{Entry, SnapshotMetadata};

/// Bytes a log record takes on disk besides its payload (the record header).
pub const RECORD_OVERHEAD_BYTES: u64 = wal::RECORD_HEADER_LEN as u64;

/// What one snapshot write did, for the log.
struct Written {
    covered: Covered,
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

/// A build by replay was stopped (at shutdown): not a failure.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot build was cancelled")]
struct Cancelled;

/// What a build by replay needs besides the files.
#[derive(Clone)]
struct Builds {
    /// The encoded state the log starts from (before any entry), for a log no snapshot covers.
    initial: Arc<Vec<u8>>,
    restore: RestoreConfig,
}

/// A snapshot to build: the entries after the base snapshot, up to the one it covers.
pub struct Target {
    /// The newest snapshot kept (the log's compaction point; 0: none).
    pub base: u64,
    /// Entries `base + 1 ..= meta.index`.
    pub entries: Vec<Entry>,
    /// The entry covered, its term, and the membership.
    pub meta: SnapshotMetadata,
    /// Log records up to this sequence go once it is kept (what only the entries the oldest
    /// snapshot kept then covers need).
    pub prune_through: u64,
}

/// A snapshot written: the entry it covers and that entry's term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Covered {
    pub index: u64,
    pub term: u64,
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
    in_flight: Option<JoinHandle<anyhow::Result<Written>>>,
    method: SnapshotMethod,
    builds: Builds,
    /// Stops a build in flight (at shutdown).
    cancel: Arc<AtomicBool>,
}

impl Snapshots {
    /// Opens the snapshot directory beside the log's storage; `initial` is the state the log
    /// starts from, for snapshots made by replay when no snapshot covers the log yet.
    pub fn open<S: ledger::storage::Storage + Clone>(
        settings: &SnapshotSettings,
        wal_storage: S,
        initial: &Core,
    ) -> anyhow::Result<Snapshots> {
        let prune: Prune = Arc::new(move |sequence| {
            wal::delete_covered(&wal_storage, sequence).map(|removed| removed.len())
        });
        let dir = &settings.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let storage =
            FileStorage::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        if let Some(&newest) = snapshot_file::list(&storage)?.first()
            && let Ok(modified) =
                std::fs::metadata(dir.join(snapshot_file::snapshot_file_name(newest)))
                    .and_then(|m| m.modified())
        {
            set_written_at(modified);
        }
        Ok(Snapshots {
            storage,
            prune,
            cadence: Cadence::new(&settings.cadence),
            deferring: false,
            keep: settings.keep.max(1),
            on_shutdown: settings.on_shutdown,
            in_flight: None,
            method: settings.method,
            builds: Builds {
                initial: Arc::new(Image::take(initial, 0).encode()),
                restore: RestoreConfig::like(initial),
            },
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn dir(&self) -> &Path {
        self.storage.dir()
    }

    pub fn storage(&self) -> &FileStorage {
        &self.storage
    }

    /// The encoded state the log starts from.
    pub fn initial(&self) -> Arc<Vec<u8>> {
        self.builds.initial.clone()
    }

    pub fn method(&self) -> SnapshotMethod {
        self.method
    }

    /// The oldest snapshot kept, once the newest `keep` are (`written` just now).
    pub fn oldest_kept(&self) -> u64 {
        snapshot_file::list(&self.storage)
            .ok()
            .and_then(|l| l.into_iter().take(self.keep).min())
            .unwrap_or(0)
    }

    /// The oldest snapshot that will be kept once one at `index` is written.
    pub fn oldest_kept_after(&self, index: u64) -> u64 {
        let mut kept = snapshot_file::list(&self.storage).unwrap_or_default();
        kept.push(index);
        kept.sort_unstable_by(|a, b| b.cmp(a));
        kept.into_iter().take(self.keep).min().unwrap_or(index)
    }

    /// A record of `payload_bytes` was appended.
    pub fn appended(&mut self, payload_bytes: usize) {
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

    /// Whether a snapshot is due (or wanted `now`, whatever the cadence: a follower waits for
    /// one) and none is being written. A finished write is collected
    /// first: what it covers is returned, for the stage to drop from memory.
    pub fn wants_start(&mut self, now: bool) -> (bool, Option<Covered>) {
        let covered = self.reap(false);
        (self.in_flight.is_none() && (now || self.due()), covered)
    }

    /// A finished write, if any (see `wants_start`).
    pub fn collect(&mut self) -> Option<Covered> {
        self.reap(false)
    }

    /// Collects the background write if it finished (or, with `wait`, once it does).
    fn reap(&mut self, wait: bool) -> Option<Covered> {
        let finished = self.in_flight.as_ref().is_some_and(|h| h.is_finished());
        if !(finished || wait) {
            return None;
        }
        let handle = self.in_flight.take()?;
        match handle.join() {
            Ok(Ok(w)) => {
                report(&w);
                Some(w.covered)
            }
            Ok(Err(e)) if e.is::<Cancelled>() => {
                tracing::info!("the snapshot being built was cancelled (the log is kept whole)");
                None
            }
            Ok(Err(e)) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                // The log still holds everything: nothing acknowledged is at risk.
                tracing::error!(
                    "writing a snapshot failed (the log is kept whole): {}",
                    super::error_line(e.as_ref())
                );
                None
            }
            Err(_) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                tracing::error!("the snapshot writer thread panicked");
                None
            }
        }
    }

    /// Starts the snapshot of `target` on another thread: built there by replay, or, if
    /// `capture` is the state at it (nothing uncommitted), captured here (the pause) and
    /// written there.
    pub fn start(&mut self, target: Target, capture: Option<&Core>) {
        let index = target.meta.index;
        let started = Instant::now();
        let (storage, prune, keep) = (self.storage.clone(), self.prune.clone(), self.keep);
        let spawned = match (self.method, capture) {
            (SnapshotMethod::Capture, Some(core)) => {
                let image = Image::take(core, index);
                tracing::info!(
                    index,
                    pause_ms = started.elapsed().as_secs_f64() * 1e3,
                    "snapshot captured; writing it in the background"
                );
                let (meta, prune_through) = (target.meta, target.prune_through);
                std::thread::Builder::new()
                    .name("switch-snapshot".into())
                    .spawn(move || {
                        yield_to_the_stage();
                        write(image, &meta, &storage, &prune, prune_through, keep)
                    })
            }
            _ => {
                let (builds, cancel) = (self.builds.clone(), self.cancel.clone());
                tracing::info!(index, "snapshot due; building it off the ledger stage");
                std::thread::Builder::new()
                    .name("switch-snapshot".into())
                    .spawn(move || {
                        yield_to_the_stage();
                        build(builds, target, &storage, &prune, keep, &cancel)
                    })
            }
        };
        metrics::histogram!("switch_snapshot_pause_seconds")
            .record(started.elapsed().as_secs_f64());
        self.cadence.taken();
        self.deferring = false;
        match spawned {
            Ok(handle) => self.in_flight = Some(handle),
            Err(e) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                tracing::error!("starting the snapshot writer thread: {e}");
            }
        }
    }

    /// At a clean stop: waits for a write in flight (cancelling a build by replay), then (if
    /// configured, and `core` holds nothing uncommitted past the newest snapshot) takes a last
    /// snapshot here, so the next start replays nothing. Returns what the last one covers.
    pub fn finish(
        &mut self,
        core: &Core,
        meta: Option<SnapshotMetadata>,
        prune_through: u64,
    ) -> Option<Covered> {
        // A build by replay would take as long as it takes; the capture below supersedes it,
        // and without one the log is kept whole.
        self.cancel.store(true, Ordering::Relaxed);
        let mut covered = self.reap(true);
        let Some(meta) = meta.filter(|_| self.on_shutdown) else {
            return covered;
        };
        let image = Image::take(core, meta.index);
        match write(
            image,
            &meta,
            &self.storage,
            &self.prune,
            prune_through,
            self.keep,
        ) {
            Ok(w) => {
                covered = Some(w.covered);
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
        covered
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
            entries_replayed = b.records_replayed,
            load_ms = b.load_ms,
            replay_ms = b.replay_ms,
            "snapshot built by replaying the committed log"
        );
    }
    tracing::info!(
        file = %w.file,
        index = w.covered.index,
        term = w.covered.term,
        bytes = w.bytes,
        encode_ms = w.encode_ms,
        write_ms = w.write_ms,
        wal_segments_removed = w.segments_removed,
        "snapshot written"
    );
}

/// The nice value of the snapshot thread: the lowest priority there is.
pub const SNAPSHOT_NICE: i32 = 19;

/// Puts the calling thread at `SNAPSHOT_NICE`, so that a snapshot built or written beside
/// traffic takes only the CPU the ledger stage, the log writer and the network threads leave
/// (at nice 19 a thread weighs about 1/70 of one at 0). A snapshot due in a festival's decay
/// would otherwise take one of two cores from a stage still working off its queue. On Linux a
/// thread's nice value is its own: `setpriority` on the thread's id changes no other thread.
/// Raising the value needs no privilege; if it fails anyway the snapshot runs as before.
fn yield_to_the_stage() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), SNAPSHOT_NICE) {
        tracing::warn!("the snapshot thread keeps its priority: setpriority: {e}");
    }
}

/// `switch_snapshot_last_written_timestamp_seconds`: the newest snapshot is durable since `at`.
fn set_written_at(at: SystemTime) {
    metrics::gauge!("switch_snapshot_last_written_timestamp_seconds")
        .set(crate::server::telemetry::unix_seconds(at));
}

/// Makes the snapshot of `target` off the ledger stage: the base snapshot (or the initial
/// state), the entries after it applied, then encoded and written like a capture.
fn build(
    builds: Builds,
    target: Target,
    storage: &FileStorage,
    prune: &Prune,
    keep: usize,
    cancel: &AtomicBool,
) -> anyhow::Result<Written> {
    let started = Instant::now();
    let (mut core, base) = if target.base == 0 {
        let (core, _) = Core::restore(&builds.initial, 0, builds.restore.clone())
            .context("restoring the initial state")?;
        (core, "the initial state".to_owned())
    } else {
        let (core, _) = super::replication::load_snapshot(storage, target.base, &builds.restore)
            .map_err(|e| anyhow::anyhow!("the base snapshot: {e}"))?;
        (core, snapshot_file::snapshot_file_name(target.base))
    };
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
    anyhow::ensure!(
        target
            .entries
            .first()
            .is_none_or(|e| e.index == target.base + 1)
            && target.entries.last().map_or(target.base, |e| e.index) == target.meta.index,
        "the entries after snapshot {} do not reach entry {}",
        target.base,
        target.meta.index
    );
    for (k, e) in target.entries.iter().enumerate() {
        if k % 64 == 0 {
            go_on()?;
        }
        crate::replica::node::apply_entry(&mut core, e).map_err(|e| anyhow::anyhow!(e))?;
    }
    let replay_ms = started.elapsed().as_millis() as u64;
    go_on()?;
    let image = Image::take(&core, target.meta.index);
    drop(core);
    go_on()?;
    let mut written = write(
        image,
        &target.meta,
        storage,
        prune,
        target.prune_through,
        keep,
    )?;
    written.built = Some(Built {
        base,
        records_replayed: target.entries.len() as u64,
        load_ms,
        replay_ms,
    });
    Ok(written)
}

/// Encodes and writes a snapshot durably, then removes the log segments whose records are all
/// at or before `prune_through` (only now: until the snapshot is durable, the log is the only
/// copy).
fn write(
    image: Image,
    meta: &SnapshotMetadata,
    storage: &FileStorage,
    prune: &Prune,
    prune_through: u64,
    keep: usize,
) -> anyhow::Result<Written> {
    let index = meta.index;
    let started = Instant::now();
    let payload = crate::replica::snapshot::encode(meta, &image.encode());
    let encode_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    let written = snapshot_file::write(storage, index, &payload, keep)
        .with_context(|| format!("snapshot of entry {index}"))?;
    set_written_at(SystemTime::now());
    let removed = prune(prune_through).context("removing log segments the snapshots cover")?;
    Ok(Written {
        covered: Covered {
            index,
            term: meta.term,
        },
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

    /// The snapshot thread lowers its own priority and no other thread's: the stage and the
    /// log writer, in the same process, keep theirs.
    #[test]
    fn only_the_snapshot_thread_yields() {
        let this = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("getpriority");
        let snapshot = std::thread::spawn(|| {
            yield_to_the_stage();
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("getpriority")
        })
        .join()
        .expect("the thread ran");
        assert_eq!(snapshot, SNAPSHOT_NICE);
        let after = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("getpriority");
        assert_eq!(after, this, "another thread's priority changed");
        assert_ne!(
            this, SNAPSHOT_NICE,
            "the test thread starts at a higher priority"
        );
    }

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
