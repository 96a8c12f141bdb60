//! The ledger with its write-ahead log and snapshots: durable before acknowledged.
//!
//! Every batch is encoded before it takes any lock, a log slot is reserved (a full log queue
//! refuses the batch whole, before anything is applied), and the batch is applied and submitted
//! to the log under the same locks, so the log order is an order that replays to the same
//! state. The caller hears of the outcomes only once the group commit that holds them is on
//! disk. Recovery loads the newest valid snapshot and replays the log after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::event::Event;
use crate::ledger::{BatchError, Config, Ledger};
use crate::outcome::Outcome;
use crate::record::LogRecord;
use crate::snapshot::SnapshotError;
use crate::snapshot_file::{self, Rejected, SNAPSHOT_KEEP_DEFAULT};
use crate::storage::{Storage, StorageError};
use crate::transfer::Expired;
use crate::types::Timestamp;
use crate::wal::{self, OnCorruption, RecoverOptions, Truncation, Wal, WalError, WalOptions};

/// How the durable ledger runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableOptions {
    pub wal: WalOptions,
    /// Snapshot files kept (at least 1).
    pub snapshots_keep: usize,
    /// What to do about corruption that is not a torn tail (see `wal::OnCorruption`).
    pub on_corruption: OnCorruption,
    /// `maybe_snapshot` writes a snapshot once this many log records were submitted since the
    /// last one; 0 leaves snapshots to explicit `snapshot` calls.
    pub snapshot_every_records: u64,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            wal: WalOptions::default(),
            snapshots_keep: SNAPSHOT_KEEP_DEFAULT,
            on_corruption: OnCorruption::Refuse,
            snapshot_every_records: 0,
        }
    }
}

/// What recovery found and did. Log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The snapshot loaded (file, sequence), if any.
    pub snapshot: Option<(String, u64)>,
    /// Newer snapshots that were corrupt and skipped.
    pub rejected_snapshots: Vec<Rejected>,
    pub records_replayed: u64,
    /// A torn tail trimmed (or a cut the operator asked for).
    pub truncation: Option<Truncation>,
    /// The state digest after recovery.
    pub digest: crate::digest::Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The log's queue is full: nothing was applied; retry later.
    #[error("busy: the write-ahead log queue is full")]
    Busy,
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("batch encodes to {len} bytes, over the log's record limit of {max}")]
    RecordTooLarge { len: usize, max: u32 },
    /// The log failed; nothing after the failure is acknowledged. Restart to recover.
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot file: {0}")]
    SnapshotFile(#[from] snapshot_file::SnapshotFileError),
    #[error("opening the write-ahead log: {0}")]
    Open(#[from] wal::OpenError),
    #[error("recovery: {0}")]
    Recovery(String),
}

/// Called once a batch is durable (or the log failed).
pub type OnApplied = Box<dyn FnOnce(Result<Vec<Outcome>, WalError>) + Send>;

/// A ledger whose every change is in the write-ahead log before it is acknowledged.
pub struct DurableLedger<S: Storage + Clone> {
    ledger: Arc<Ledger>,
    wal: Wal,
    storage: S,
    options: DurableOptions,
    /// The sequence of the last record submitted; read under all ledger locks by `snapshot`.
    last_submitted: Arc<AtomicU64>,
    /// The sequence the newest snapshot covers.
    last_snapshot: AtomicU64,
    /// One snapshot at a time: writing one prunes older files, another's temporary included.
    snapshotting: parking_lot::Mutex<()>,
}

impl<S: Storage + Clone> DurableLedger<S> {
    /// Recovers the state kept in `storage` (a new directory gives an empty ledger) and opens
    /// the log for appending.
    pub fn open(
        storage: S,
        config: Config,
        options: DurableOptions,
    ) -> Result<(DurableLedger<S>, Recovery), DurableError> {
        let loaded = snapshot_file::load_newest(&storage)?;
        let (ledger, snapshot) = match &loaded.snapshot {
            Some(s) => (
                Ledger::restore(config, &s.payload)?,
                Some((s.file.clone(), s.sequence)),
            ),
            None => (Ledger::new(config).map_err(SnapshotError::from)?, None),
        };
        let recover_options = RecoverOptions {
            record_size_max_bytes: options.wal.record_size_max_bytes,
            after_sequence: snapshot.as_ref().map_or(0, |s| s.1),
            on_corruption: options.on_corruption,
            write_max_bytes: options.wal.write_max_bytes(),
            missing_prefix_allowed: false,
        };
        let recovered = wal::recover(&storage, &recover_options, |_sequence, payload| {
            replay(&ledger, payload)
        })
        .map_err(|e| DurableError::Recovery(e.to_string()))?;
        let last = recovered
            .last_sequence
            .unwrap_or(0)
            .max(snapshot.as_ref().map_or(0, |s| s.1));
        let wal = Wal::open(storage.clone(), options.wal.clone(), recovered.resume)?;
        let snapshot_sequence = snapshot.as_ref().map_or(0, |s| s.1);
        let recovery = Recovery {
            snapshot,
            rejected_snapshots: loaded.rejected,
            records_replayed: recovered.records_applied,
            truncation: recovered.truncation,
            digest: ledger.digest(),
        };
        Ok((
            DurableLedger {
                ledger: Arc::new(ledger),
                wal,
                storage,
                options,
                last_submitted: Arc::new(AtomicU64::new(last)),
                last_snapshot: AtomicU64::new(snapshot_sequence),
                snapshotting: parking_lot::Mutex::new(()),
            },
            recovery,
        ))
    }

    /// The ledger, for queries. Changing it directly would bypass the log: use `apply`.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Applies a batch and calls `on_applied` with its outcomes once they are durable. Refused
    /// whole, with nothing applied, when the log's queue is full (`Busy`) or the batch is too
    /// large.
    pub fn apply(
        &self,
        events: &[Event],
        now: Timestamp,
        on_applied: OnApplied,
    ) -> Result<(), DurableError> {
        let mut payload = Vec::new();
        LogRecord::encode_batch(now, events, &mut payload);
        self.check_size(&payload)?;
        let permit = self.wal.reserve().map_err(|e| match e {
            WalError::QueueFull => DurableError::Busy,
            e => DurableError::Wal(e),
        })?;
        let last = &self.last_submitted;
        self.ledger.apply_with(events, now, move |_, outcomes| {
            let outcomes = outcomes.to_vec();
            let sequence = permit.submit(
                payload,
                Box::new(move |result| on_applied(result.map(|_| outcomes))),
            );
            last.store(sequence, Ordering::Release);
        })?;
        Ok(())
    }

    /// `apply`, waiting until the batch is durable.
    pub fn apply_blocking(
        &self,
        events: &[Event],
        now: Timestamp,
    ) -> Result<Vec<Outcome>, DurableError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.apply(
            events,
            now,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )?;
        rx.recv()
            .map_err(|_| WalError::Failed {
                reason: "the log writer stopped".into(),
            })?
            .map_err(DurableError::from)
    }

    /// Expires due holds, logged like any other change; returns once durable.
    pub fn expire_blocking(&self, now: Timestamp) -> Result<Vec<Expired>, DurableError> {
        let mut payload = Vec::with_capacity(9);
        LogRecord::encode_expire(now, &mut payload);
        let permit = self.wal.reserve().map_err(|e| match e {
            WalError::QueueFull => DurableError::Busy,
            e => DurableError::Wal(e),
        })?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let last = &self.last_submitted;
        let (expired, ()) = self.ledger.expire_with(now, move |_, _| {
            let sequence = permit.submit(
                payload,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            last.store(sequence, Ordering::Release);
        });
        rx.recv().map_err(|_| WalError::Failed {
            reason: "the log writer stopped".into(),
        })??;
        Ok(expired)
    }

    fn check_size(&self, payload: &[u8]) -> Result<(), DurableError> {
        let max = self.wal.record_size_max_bytes();
        if payload.len() > max as usize {
            return Err(DurableError::RecordTooLarge {
                len: payload.len(),
                max,
            });
        }
        Ok(())
    }

    /// Writes a snapshot of the current state and deletes the log segments no kept snapshot
    /// needs. The ledger is locked only while its state is copied (see `Ledger::capture`).
    /// Returns the snapshot's sequence.
    pub fn snapshot(&self) -> Result<u64, DurableError> {
        let _writing = self.snapshotting.lock();
        self.write_snapshot()
    }

    fn write_snapshot(&self) -> Result<u64, DurableError> {
        let capture = self
            .ledger
            .capture_then(|| self.last_submitted.load(Ordering::Acquire));
        let (capture, sequence) = capture;
        let mut payload = Vec::new();
        capture.encode(&mut payload);
        let written = snapshot_file::write(
            &self.storage,
            sequence,
            &payload,
            self.options.snapshots_keep,
        )?;
        wal::delete_covered(&self.storage, written.oldest_kept_sequence)?;
        self.last_snapshot.fetch_max(sequence, Ordering::AcqRel);
        Ok(sequence)
    }

    /// Writes a snapshot if `snapshot_every_records` records were submitted since the last
    /// one (and no other caller is writing one). Call it from wherever pausing is acceptable;
    /// the pause is `Ledger::capture`'s (see BENCHMARKS.md). Returns the snapshot's sequence.
    pub fn maybe_snapshot(&self) -> Result<Option<u64>, DurableError> {
        let every = self.options.snapshot_every_records;
        let due = every > 0
            && self.last_submitted.load(Ordering::Acquire)
                >= self.last_snapshot.load(Ordering::Acquire) + every;
        if !due {
            return Ok(None);
        }
        let Some(_writing) = self.snapshotting.try_lock() else {
            return Ok(None);
        };
        self.write_snapshot().map(Some)
    }

    /// Drains the log and syncs it.
    pub fn close(self) -> Result<(), DurableError> {
        self.wal.close()?;
        Ok(())
    }
}

/// Applies one logged record to `ledger` (recovery).
pub fn replay(ledger: &Ledger, payload: &[u8]) -> Result<(), String> {
    match LogRecord::decode(payload).map_err(|e| e.to_string())? {
        LogRecord::Batch { now, events } => {
            ledger.apply(&events, now).map_err(|e| e.to_string())?;
        }
        LogRecord::Expire { now } => {
            ledger.expire(now);
        }
    }
    Ok(())
}
