//! Snapshots of the switch on disk: loading the newest usable one at start, taking one when
//! enough log has grown since the last, writing it off the ledger stage, and retiring the log
//! segments the oldest kept snapshot covers.
//!
//! Files live in `data_dir/snapshots` (`ledger::snapshot_file`: written to a temporary name,
//! fdatasync, rename, directory fsync, CRC32C, the newest `keep` kept). The stage thread only
//! captures (`core::snapshot::Capture::take`); a background thread encodes and writes, one
//! snapshot at a time, and deletes covered log segments only once the snapshot is durable.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use ledger::snapshot_file::{self, SNAPSHOT_KEEP_DEFAULT};
use std::sync::Arc;

use ledger::storage::FileStorage;
use ledger::wal;

use crate::config::Config;
use crate::core::Core;
use crate::core::snapshot::{Capture, RestoreConfig};

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
}

/// Removes the log segments wholly covered by a sequence; returns how many.
type Prune = Arc<dyn Fn(u64) -> Result<usize, ledger::storage::StorageError> + Send + Sync>;

pub struct Snapshots {
    storage: FileStorage,
    prune: Prune,
    every_records: u64,
    every_wal_bytes: u64,
    keep: usize,
    on_shutdown: bool,
    /// The sequence the newest snapshot (written, being written, or loaded) covers.
    covered: u64,
    /// The last log sequence appended.
    appended: u64,
    records_since: u64,
    bytes_since: u64,
    in_flight: Option<JoinHandle<anyhow::Result<Written>>>,
}

impl Snapshots {
    /// Opens `data_dir/snapshots` beside the log's storage.
    pub fn open<S: ledger::storage::Storage + Clone>(
        config: &Config,
        wal_storage: S,
    ) -> anyhow::Result<Snapshots> {
        let prune: Prune = Arc::new(move |sequence| {
            wal::delete_covered(&wal_storage, sequence).map(|removed| removed.len())
        });
        let dir = config.server.data_dir.join("snapshots");
        let storage =
            FileStorage::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        let s = &config.snapshot;
        Ok(Snapshots {
            storage,
            prune,
            every_records: s.every_records,
            every_wal_bytes: s.every_wal_bytes,
            keep: usize::try_from(s.keep)
                .unwrap_or(SNAPSHOT_KEEP_DEFAULT)
                .max(1),
            on_shutdown: s.on_shutdown,
            covered: 0,
            appended: 0,
            records_since: 0,
            bytes_since: 0,
            in_flight: None,
        })
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
        let mut passed_over = Vec::new();
        for sequence in snapshot_file::list(&self.storage)? {
            let snapshot = match snapshot_file::read(&self.storage, sequence)? {
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
                    self.covered = sequence;
                    self.appended = sequence;
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

    /// Recovery found the log up to `sequence`.
    pub fn recovered(&mut self, sequence: u64) {
        self.appended = self.appended.max(sequence);
    }

    /// A record of `payload_bytes` was appended at `sequence`.
    pub fn appended(&mut self, sequence: u64, payload_bytes: usize) {
        self.appended = sequence;
        self.records_since += 1;
        self.bytes_since += payload_bytes as u64 + RECORD_OVERHEAD_BYTES;
    }

    fn due(&self) -> bool {
        (self.every_records > 0 && self.records_since >= self.every_records)
            || (self.every_wal_bytes > 0 && self.bytes_since >= self.every_wal_bytes)
    }

    /// Between batches: reports a finished write, and starts a snapshot if one is due and
    /// none is being written.
    /// Whether a snapshot is due and none is being written (reports a finished write).
    pub fn wants_start(&mut self) -> bool {
        self.reap(false);
        self.in_flight.is_none() && self.due() && self.appended > self.covered
    }

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
            Ok(Err(e)) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                // The log still holds everything: nothing acknowledged is at risk.
                tracing::error!("writing a snapshot failed (the log is kept whole): {e:#}");
            }
            Err(_) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                tracing::error!("the snapshot writer thread panicked");
            }
        }
    }

    /// Captures on this thread (the pause) and hands encoding and writing to another.
    fn start(&mut self, core: &Core) {
        let sequence = self.appended;
        let started = Instant::now();
        let capture = Capture::take(core, sequence);
        let pause = started.elapsed();
        metrics::histogram!("switch_snapshot_pause_seconds").record(pause.as_secs_f64());
        tracing::info!(
            sequence,
            pause_ms = pause.as_secs_f64() * 1e3,
            "snapshot captured; writing it in the background"
        );
        self.records_since = 0;
        self.bytes_since = 0;
        let (storage, prune, keep) = (self.storage.clone(), self.prune.clone(), self.keep);
        let spawned = std::thread::Builder::new()
            .name("switch-snapshot".into())
            .spawn(move || write(capture, &storage, &prune, keep));
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

    /// At a clean stop: waits for a write in flight, then (if configured and anything was
    /// logged since) takes a last snapshot here, so the next start replays nothing.
    pub fn finish(&mut self, core: &Core) {
        self.reap(true);
        if !self.on_shutdown || self.appended <= self.covered {
            return;
        }
        let capture = Capture::take(core, self.appended);
        match write(capture, &self.storage, &self.prune, self.keep) {
            Ok(w) => {
                self.covered = w.sequence;
                report(&w);
            }
            Err(e) => {
                metrics::counter!("switch_snapshot_failures_total").increment(1);
                tracing::error!(
                    "writing the shutdown snapshot failed (the log is kept whole): {e:#}"
                );
            }
        }
    }
}

fn report(w: &Written) {
    metrics::histogram!("switch_snapshot_write_seconds")
        .record((w.encode_ms + w.write_ms) as f64 / 1e3);
    metrics::gauge!("switch_snapshot_bytes").set(w.bytes as f64);
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

/// Encodes and writes a snapshot durably, then removes the log segments that every kept
/// snapshot covers (only now: until the snapshot is durable, the log is the only copy).
fn write(
    capture: Capture,
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
    let removed =
        prune(written.oldest_kept_sequence).context("removing log segments the snapshots cover")?;
    Ok(Written {
        sequence,
        file: written.file,
        bytes: payload.len(),
        encode_ms,
        write_ms: started.elapsed().as_millis() as u64,
        segments_removed: removed,
    })
}
