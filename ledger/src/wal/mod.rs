//! The write-ahead log: segments of checksummed, sequenced records of opaque payload bytes.
//!
//! - `format`: names, segment header, record framing (normative: `docs/WAL-FORMAT.md`).
//! - `writer`: `Wal`, one writer thread doing group commit: one fdatasync per group, and
//!   every record acknowledged only after the sync that covers it.
//! - `recovery`: `recover` streams the valid records back, trims a torn tail of the last
//!   segment, refuses corruption anywhere else (naming file and offset), and says where the
//!   writer resumes; `delete_covered` lets a snapshot retire old segments.
//!
//! The WAL knows nothing of what the payloads mean; the ledger's record encoding does.

mod format;
mod recovery;
mod writer;

use std::sync::Arc;

pub use format::{
    Corruption, FORMAT_VERSION, RECORD_HEADER_LEN, RECORD_SIZE_MAX_DEFAULT, RECORD_SIZE_MAX_LIMIT,
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC, parse_segment_file_name, segment_file_name,
};
pub use recovery::{
    OnCorruption, RecoverOptions, Recovered, RecoveryError, Resume, Truncation, TruncationCause,
    delete_covered, read_through, recover,
};
pub use writer::{OnDurable, Permit, SPARE_SEGMENT_NAME, Wal};

pub use crate::storage::StorageError;

/// Whether an acknowledgement means the record is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync before acknowledging: acknowledged records survive a crash or power loss.
    #[default]
    Fsync,
    /// No fdatasync per group: acknowledged records are lost by a crash. For benchmarks only;
    /// the caller should log `Durability::warning` loudly. (Starting a segment still syncs,
    /// once per segment, so that recovery after a crash finds a log it can trim, not refuse.)
    None,
}

impl Durability {
    /// What an operator must be told about this mode, if anything.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Durability::Fsync => None,
            Durability::None => Some(
                "WAL durability is None: records are acknowledged without fdatasync, so a crash \
                 or power loss loses acknowledged records; use this only for benchmarks",
            ),
        }
    }
}

/// How the writer behaves. Every field is a bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed and the next one started when the next record would take it past
    /// this size (a record larger than a whole segment gets a segment of its own).
    pub segment_size_max_bytes: u64,
    /// Largest payload accepted on write and believed on read.
    pub record_size_max_bytes: u32,
    /// Submissions reserved but not yet durable; `reserve` past it is `WalError::QueueFull`.
    pub queue_depth_max: usize,
    /// A group (one write, one fdatasync) takes at most this many payload bytes, except that a
    /// single record always makes a group.
    pub group_size_max_bytes: usize,
    /// A group takes at most this many records.
    pub group_records_max: usize,
    pub durability: Durability,
    /// Fill the next segment with zeros ahead, on a thread of its own, so that appends
    /// overwrite space already written: each group's fdatasync then flushes only data, not
    /// a growing file's block allocation and size. A segment is cut to its length when it is
    /// closed; the space costs one more segment on disk (the spare). Only with
    /// `Durability::Fsync`: without a sync per group, a power loss could leave pages of many
    /// groups missing, more than recovery can tell from corruption (`write_max_bytes`).
    pub prepare_segments: bool,
    /// The zeros are written at most this fast, so that the log's own fdatasyncs do not
    /// queue behind them; it must outpace the log, or segments start growing again until the
    /// spare is ready. 0: as fast as the disk takes them.
    pub prepare_bytes_per_second: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_max_bytes: 64 << 20,
            record_size_max_bytes: RECORD_SIZE_MAX_DEFAULT,
            queue_depth_max: 4096,
            group_size_max_bytes: 4 << 20,
            group_records_max: 4096,
            durability: Durability::Fsync,
            prepare_segments: false,
            prepare_bytes_per_second: 64 << 20,
        }
    }
}

impl WalOptions {
    /// The most bytes one write of the writer spans: a group's payloads (or one record over
    /// `group_size_max_bytes`) and its records' headers. With `Durability::Fsync` only the last
    /// write can be partly on disk after a crash; `RecoverOptions::write_max_bytes`.
    pub fn write_max_bytes(&self) -> u64 {
        let payloads =
            (self.group_size_max_bytes as u64).max(u64::from(self.record_size_max_bytes));
        let headers = (self.group_records_max as u64).saturating_mul(RECORD_HEADER_LEN as u64);
        payloads.saturating_add(headers)
    }

    pub fn validate(&self) -> Result<(), OptionsError> {
        check_range(
            "segment_size_max_bytes",
            self.segment_size_max_bytes,
            (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN) as u64,
            u64::MAX,
        )?;
        check_record_size(self.record_size_max_bytes)?;
        check_range("queue_depth_max", self.queue_depth_max as u64, 1, u64::MAX)?;
        check_range(
            "group_size_max_bytes",
            self.group_size_max_bytes as u64,
            1,
            u64::MAX,
        )?;
        check_range(
            "group_records_max",
            self.group_records_max as u64,
            1,
            u64::MAX,
        )
    }
}

fn check_range(name: &'static str, value: u64, min: u64, max: u64) -> Result<(), OptionsError> {
    if value < min || value > max {
        return Err(OptionsError::OutOfRange {
            name,
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn check_record_size(record_size_max_bytes: u32) -> Result<(), OptionsError> {
    check_range(
        "record_size_max_bytes",
        u64::from(record_size_max_bytes),
        1,
        u64::from(RECORD_SIZE_MAX_LIMIT),
    )
}

/// Why a submission was refused or never became durable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    /// `queue_depth_max` submissions are already waiting; nothing was reserved.
    #[error("WAL queue is full: too many submissions waiting to become durable")]
    QueueFull,
    /// The log hit an error it cannot recover from while running (a failed write or sync, a
    /// full disk, an oversized record). Nothing submitted since is or will be acknowledged;
    /// the process must stop and recover from the log on restart.
    #[error("WAL failed, nothing more will be made durable: {reason}")]
    Failed { reason: Arc<str> },
}

impl WalError {
    /// Whether the log failed because the disk was full (a write or a new segment got ENOSPC),
    /// as opposed to any other I/O error. Both are fatal to this writer; the difference is
    /// what an operator does next: free space and restart, or replace the disk.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            WalError::QueueFull => false,
            WalError::Failed { reason } => reason.contains(writer::OUT_OF_SPACE),
        }
    }
}

/// Options out of their allowed range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("WAL option {name} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

/// Why `Wal::open` failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}
