//! The switch's configuration: TOML, every key optional, unknown keys refused by name.
//!
//! `DEFAULT_CONFIG` is the documented default; `switch config default` prints it, and a test
//! checks that it parses to exactly `Config::default()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger::clearing::{FeeRate, FeeSchedule};
use ledger::{AccountId, ParticipantId};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::routing::{Route, RouteError, RouteTable};

pub mod settings;

/// The default configuration, with a comment on every key.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub tls: Tls,
    pub limits: Limits,
    pub ledger: LedgerConfig,
    pub wal: Wal,
    pub snapshot: Snapshot,
    pub authorization: Authorization,
    pub metrics: Metrics,
    pub log: Log,
    pub clearing: Clearing,
    pub deadlines: Deadlines,
    pub overload: Overload,
    pub identities: Vec<Identity>,
    pub routes: Vec<RouteConfig>,
    /// Replicas of this switch; none: a cluster of one.
    pub cluster: Option<crate::cluster::config::Cluster>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Threads of the network runtime (QUIC, TLS, the codec); 0: one per core. The ledger
    /// stage and the log writer have threads of their own besides these.
    pub io_threads: u16,
}

/// At most this many network threads.
pub const IO_THREADS_MAX: u16 = 256;
/// The deepest ledger-stage queue a config may ask for, in requests: a slot for each is
/// allocated at start (about 80 bytes).
pub const QUEUE_DEPTH_MAX_LIMIT: u32 = 1 << 20;
/// `limits.stage_batch_len_max` unless configured: a batch of 2,048 requests is about 5 ms of
/// the stage's work at its peak, so that shedding (`[overload]`) sees a growing queue within
/// that, and each request waits for fewer others in its batch (BENCHMARKS.md).
pub const STAGE_BATCH_LEN_MAX_DEFAULT: u16 = 2048;
/// The most `limits.unfinished_frame_bytes_max` may be.
pub const UNFINISHED_FRAME_BYTES_MAX_LIMIT: u64 = 1 << 40;

impl Server {
    /// The network runtime's thread count: `io_threads`, or one per core.
    pub fn io_threads(&self) -> usize {
        match self.io_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => usize::from(n),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// A certificate generated at first start and kept in the data directory; client
    /// certificates optional.
    SelfSigned,
    /// Certificate and key from files; client certificates required and verified (mutual TLS).
    Files,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub mode: TlsMode,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    /// In `self-signed` mode, who a client without a certificate acts as. Development only.
    pub anonymous_participant: Option<u64>,
    pub anonymous_is_admin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub frame_bytes_max: u32,
    pub batch_len_max: u16,
    /// Requests the ledger stage takes into one batch, at most (a frame is never split).
    pub stage_batch_len_max: u16,
    pub connections_max: u32,
    pub streams_per_connection_max: u32,
    pub in_flight_per_connection_max: u32,
    pub queue_depth_max: u32,
    pub malformed_frames_max: u32,
    pub unfinished_frame_bytes_max: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    pub shards: usize,
    pub accounts_max: u64,
    pub transfers_remembered_max: u64,
    pub pending_max: u64,
    /// Participants the switch holds; CreateParticipant past it is answered 91.
    pub participants_max: u64,
    /// Reserve and write the memory for `transfers_remembered_max` requests at start
    /// (`Core::preallocate`) instead of growing into it while serving.
    pub preallocate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// fdatasync before any answer leaves (the default and the only safe choice).
    Fsync,
    /// No fdatasync: acknowledged work can be lost on a crash. For benchmarks only.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Wal {
    pub durability: Durability,
    pub segment_bytes_max: u64,
    pub group_bytes_max: u64,
    pub queue_depth_max: u32,
    /// Fill the next segment with zeros ahead, so each fdatasync flushes data only (see
    /// `docs/WAL-FORMAT.md` for what it costs after a power loss).
    pub prepare_segments: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Snapshot {
    /// A snapshot is taken once this many log records were appended since the last; 0: never
    /// on this count.
    pub every_records: u64,
    /// A snapshot is taken once this many log bytes were appended since the last; 0: never on
    /// this count.
    pub every_wal_bytes: u64,
    /// Snapshot files kept (at least 1); log segments are kept back to the oldest.
    pub keep: u32,
    /// Take a snapshot at a clean shutdown, so that the next start replays nothing.
    pub on_shutdown: bool,
    /// A due snapshot waits while the switch takes at least this many requests a second (over
    /// the last whole second): a peak does not pay the pause of capturing the state. 0: never
    /// wait.
    pub defer_above_requests_per_second: u64,
    /// ... but only until the log since the last snapshot reaches this many times the counts
    /// above (at least 1), so the log a crash replays stays bounded.
    pub defer_at_most: u64,
    /// How a periodic snapshot is made.
    pub method: SnapshotMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMethod {
    /// Another thread loads the newest snapshot, replays the log after it up to the last
    /// durable record, and writes the result: the ledger stage never pauses. Costs that
    /// thread's CPU and, while it runs, a second copy of the state in memory.
    Replay,
    /// The ledger stage copies its state (a pause that grows with what is remembered) and
    /// another thread writes it.
    Capture,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    /// Expiry of a hold whose request does not say.
    pub default_expiry_seconds: u32,
    /// The longest expiry a request may ask for.
    pub expiry_seconds_max: u32,
    /// How often holds that are due are expired.
    pub expiry_tick_ms: u32,
    /// Holds one expiry pass expires at most; more due are left to passes between the next
    /// batches, so that the holds of a peak falling due never stop the stage for long.
    pub expiry_pass_max: u32,
}

/// Each operation's deadline when its frame's `budget_ms` is 0, in milliseconds from the frame
/// being read; 0: none (PROTOCOL.md 8.1). Signed so that a negative value is refused by name
/// rather than by the parser. Only the operations the ledger stage runs have one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deadlines {
    pub create_participant_ms: i64,
    pub create_account_ms: i64,
    pub fund_ms: i64,
    pub set_limits_ms: i64,
    pub authorize_ms: i64,
    pub capture_ms: i64,
    pub reverse_ms: i64,
    pub sale_ms: i64,
    pub refund_ms: i64,
    pub balance_inquiry_ms: i64,
    pub transfer_status_ms: i64,
    pub close_window_ms: i64,
    pub list_windows_ms: i64,
    pub window_report_ms: i64,
    pub echo_ms: i64,
}

/// The most a deadline may be: what a frame's `budget_ms` can say.
pub const DEADLINE_MS_MAX: i64 = u16::MAX as i64;

impl Deadlines {
    /// Each key with its operation and value.
    pub fn by_op(&self) -> [(&'static str, crate::wire::Op, i64); 15] {
        use crate::wire::Op;
        [
            (
                "deadlines.create_participant_ms",
                Op::CreateParticipant,
                self.create_participant_ms,
            ),
            (
                "deadlines.create_account_ms",
                Op::CreateAccount,
                self.create_account_ms,
            ),
            ("deadlines.fund_ms", Op::Fund, self.fund_ms),
            ("deadlines.set_limits_ms", Op::SetLimits, self.set_limits_ms),
            ("deadlines.authorize_ms", Op::Authorize, self.authorize_ms),
            ("deadlines.capture_ms", Op::Capture, self.capture_ms),
            ("deadlines.reverse_ms", Op::Reverse, self.reverse_ms),
            ("deadlines.sale_ms", Op::Sale, self.sale_ms),
            ("deadlines.refund_ms", Op::Refund, self.refund_ms),
            (
                "deadlines.balance_inquiry_ms",
                Op::BalanceInquiry,
                self.balance_inquiry_ms,
            ),
            (
                "deadlines.transfer_status_ms",
                Op::TransferStatus,
                self.transfer_status_ms,
            ),
            (
                "deadlines.close_window_ms",
                Op::CloseWindow,
                self.close_window_ms,
            ),
            (
                "deadlines.list_windows_ms",
                Op::ListWindows,
                self.list_windows_ms,
            ),
            (
                "deadlines.window_report_ms",
                Op::WindowReport,
                self.window_report_ms,
            ),
            ("deadlines.echo_ms", Op::Echo, self.echo_ms),
        ]
    }

    fn validate(&self) -> Result<(), Invalid> {
        for (key, _, value) in self.by_op() {
            if !(0..=DEADLINE_MS_MAX).contains(&value) {
                return Err(Invalid::new(
                    key,
                    format!(
                        "{value}: must be between 0 (no deadline) and {DEADLINE_MS_MAX} \
                         milliseconds (what a frame's budget can say)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            create_participant_ms: 0,
            create_account_ms: 0,
            fund_ms: 0,
            set_limits_ms: 0,
            authorize_ms: 2000,
            capture_ms: 0,
            reverse_ms: 0,
            sale_ms: 2000,
            refund_ms: 0,
            balance_inquiry_ms: 0,
            transfer_status_ms: 0,
            close_window_ms: 0,
            list_windows_ms: 0,
            window_report_ms: 0,
            echo_ms: 0,
        }
    }
}

/// Shedding new payments when the ledger stage's queueing delay stays over a target
/// (PROTOCOL.md 8.2).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overload {
    pub enabled: bool,
    /// The queueing delay the stage aims to stay under.
    pub target_ms: u32,
    /// How long the queueing delay at the head of the stage's queue must stay over the
    /// target before Authorize and Sale are shed; also the shortest retry-after hint.
    pub interval_ms: u32,
}

/// The longest `overload.interval_ms`: the retry-after hint, at least the interval, says at
/// most a second.
pub const OVERLOAD_INTERVAL_MS_MAX: u32 = 1000;

impl Overload {
    fn validate(&self) -> Result<(), Invalid> {
        if !(1..=OVERLOAD_INTERVAL_MS_MAX).contains(&self.interval_ms) {
            return Err(Invalid::new(
                "overload.interval_ms",
                format!(
                    "{}: must be between 1 and {OVERLOAD_INTERVAL_MS_MAX} milliseconds",
                    self.interval_ms
                ),
            ));
        }
        if !(1..=self.interval_ms).contains(&self.target_ms) {
            return Err(Invalid::new(
                "overload.target_ms",
                format!(
                    "{}: must be between 1 and overload.interval_ms ({}) milliseconds",
                    self.target_ms, self.interval_ms
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Overload {
    fn default() -> Self {
        Overload {
            enabled: true,
            target_ms: 5,
            interval_ms: 100,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Prometheus `/metrics`, `/healthz` and `/readyz`; keep it on loopback.
    pub listen: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `switch=debug,info`.
    pub level: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clearing {
    /// Close the open window every this many seconds; 0 closes only on request.
    pub close_every_seconds: u64,
    /// Settlement reports are written here; empty means `<data_dir>/reports`.
    pub report_dir: PathBuf,
    /// Closed windows kept in memory for ListWindows and WindowReport.
    pub windows_kept: u32,
    pub fees: Fees,
}

/// Fee rates as decimal strings ("0.55" percent, "0.10" in major units per transaction).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fees {
    pub purchase_percent: String,
    pub purchase_fixed: String,
    pub refund_percent: String,
    pub refund_fixed: String,
    pub issuer: Vec<IssuerFees>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFees {
    pub participant: u64,
    #[serde(default = "zero")]
    pub purchase_percent: String,
    #[serde(default = "zero")]
    pub purchase_fixed: String,
    #[serde(default = "zero")]
    pub refund_percent: String,
    #[serde(default = "zero")]
    pub refund_fixed: String,
}

fn zero() -> String {
    "0".to_string()
}

impl Default for Clearing {
    fn default() -> Self {
        Clearing {
            close_every_seconds: 0,
            report_dir: PathBuf::new(),
            windows_kept: 1024,
            fees: Fees::default(),
        }
    }
}

impl Default for Fees {
    fn default() -> Self {
        Fees {
            purchase_percent: zero(),
            purchase_fixed: zero(),
            refund_percent: zero(),
            refund_fixed: zero(),
            issuer: Vec::new(),
        }
    }
}

/// A client certificate and who it is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// SHA-256 of the certificate (DER), hex, colons optional.
    pub fingerprint_sha256: String,
    pub participant: u64,
    #[serde(default)]
    pub admin: bool,
}

/// One routing-table row as written in TOML (account ids are strings: TOML integers are 64-bit).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub issuer: u64,
    #[serde(default)]
    pub pooled_account: Option<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            data_dir: PathBuf::from("./data"),
            io_threads: 0,
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            mode: TlsMode::SelfSigned,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            anonymous_participant: Some(1),
            anonymous_is_admin: true,
        }
    }
}

/// The largest a batch's bound may be (the larger of `limits.batch_len_max` and
/// `limits.stage_batch_len_max`): a log record holds a batch's commands, fewer than twice the
/// bound, each at most `journal::logged_len_max` bytes, and beside them at least one window
/// close with the smallest fee schedule.
pub fn batch_bound_max() -> u16 {
    let room = (ledger::wal::RECORD_SIZE_MAX_DEFAULT as usize)
        .saturating_sub(crate::journal::BATCH_HEADER_LEN)
        .saturating_sub(smallest_close_len());
    u16::try_from(room / (2 * crate::journal::logged_len_max())).unwrap_or(u16::MAX)
}

/// What a window close logs with no fees configured: any close logs at least this.
fn smallest_close_len() -> usize {
    crate::journal::logged_len(&crate::core::Command::CloseWindow {
        window: 0,
        fees: Arc::new(FeeSchedule::default()),
    })
}

impl Limits {
    /// What a stage batch is filled to, for the size of its log record: the stage takes
    /// frames until it holds `stage_batch_len_max` requests and never splits one, so a batch
    /// holds fewer than `stage_batch_len_max + batch_len_max`, at most twice this.
    pub fn batch_bound(&self) -> u16 {
        self.batch_len_max.max(self.stage_batch_len_max)
    }

    /// What the window closes in one batch may log beside the batch's other commands.
    pub fn closes_logged_bytes_max(&self) -> usize {
        crate::core::closes_logged_bytes_max(self.batch_bound())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 1 << 20,
            batch_len_max: 8190,
            stage_batch_len_max: STAGE_BATCH_LEN_MAX_DEFAULT,
            connections_max: 1024,
            streams_per_connection_max: 64,
            in_flight_per_connection_max: 65_536,
            queue_depth_max: 262_144,
            malformed_frames_max: crate::wire::PROTOCOL_ERRORS_PER_CONNECTION_MAX_DEFAULT,
            unfinished_frame_bytes_max: 256 << 20,
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        let l = ledger::Config::default();
        LedgerConfig {
            shards: l.shards,
            accounts_max: l.accounts_max,
            transfers_remembered_max: l.transfers_remembered_max,
            pending_max: l.pending_max,
            participants_max: crate::core::PARTICIPANTS_MAX_DEFAULT as u64,
            preallocate: false,
        }
    }
}

impl Default for Wal {
    fn default() -> Self {
        Wal {
            durability: Durability::Fsync,
            segment_bytes_max: 256 << 20,
            group_bytes_max: 8 << 20,
            queue_depth_max: 8,
            prepare_segments: false,
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            every_records: 0,
            every_wal_bytes: 1 << 30,
            keep: 2,
            on_shutdown: true,
            defer_above_requests_per_second: 20_000,
            defer_at_most: 4,
            method: SnapshotMethod::Replay,
        }
    }
}

impl Default for Authorization {
    fn default() -> Self {
        Authorization {
            default_expiry_seconds: crate::core::DEFAULT_EXPIRY_SECONDS,
            expiry_seconds_max: crate::core::EXPIRY_SECONDS_MAX_DEFAULT,
            expiry_tick_ms: 100,
            expiry_pass_max: 512,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// A refused value, by key; `at` says where the configuration came from.
struct Invalid {
    key: &'static str,
    message: String,
}

impl Invalid {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            key,
            message: message.into(),
        }
    }

    fn at(self, origin: &str) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.to_string(),
            key: self.key,
            message: self.message,
        }
    }
}

impl Limits {
    /// The frame limit's range (a full batch's answers must fit in a frame), the pool for
    /// unfinished frames, the batch bound (a full batch's record must hold a close), and the
    /// queue's depth.
    fn validate(&self) -> Result<(), Invalid> {
        let frame_max = crate::wire::FRAME_LEN_MAX_LIMIT;
        if self.frame_bytes_max < 64 || self.frame_bytes_max > frame_max {
            return Err(Invalid::new(
                "limits.frame_bytes_max",
                format!("must be between 64 bytes and {frame_max} bytes (64 MiB)"),
            ));
        }
        let floor = crate::wire::response_frame_len_floor(self.batch_len_max);
        if (self.frame_bytes_max as usize) < floor {
            return Err(Invalid::new(
                "limits.frame_bytes_max",
                format!(
                    "must be at least {floor} bytes with limits.batch_len_max = {}: a response \
                     frame of that many results must fit ({} bytes a result at most, plus {} \
                     bytes of frame header)",
                    self.batch_len_max,
                    crate::wire::result_len_min_max(),
                    crate::wire::HEADER_LEN + 2
                ),
            ));
        }
        if self.unfinished_frame_bytes_max < u64::from(self.frame_bytes_max)
            || self.unfinished_frame_bytes_max > UNFINISHED_FRAME_BYTES_MAX_LIMIT
        {
            return Err(Invalid::new(
                "limits.unfinished_frame_bytes_max",
                format!(
                    "must be between limits.frame_bytes_max ({} bytes), so that a largest frame \
                     can be received, and {UNFINISHED_FRAME_BYTES_MAX_LIMIT} bytes (1 TiB)",
                    self.frame_bytes_max
                ),
            ));
        }
        let bound_max = batch_bound_max();
        if self.batch_bound() > bound_max {
            let key = if self.stage_batch_len_max > self.batch_len_max {
                "limits.stage_batch_len_max"
            } else {
                "limits.batch_len_max"
            };
            return Err(Invalid::new(
                key,
                format!(
                    "must be at most {bound_max} requests: a batch fills to the larger of \
                     limits.batch_len_max and limits.stage_batch_len_max, and its log record \
                     must hold up to twice that many commands and a window close"
                ),
            ));
        }
        if self.queue_depth_max > QUEUE_DEPTH_MAX_LIMIT {
            return Err(Invalid::new(
                "limits.queue_depth_max",
                format!(
                    "must be at most {QUEUE_DEPTH_MAX_LIMIT} requests (a slot for each is \
                     allocated at start)"
                ),
            ));
        }
        Ok(())
    }
}

impl Server {
    fn validate(&self) -> Result<(), Invalid> {
        if self.io_threads > IO_THREADS_MAX {
            return Err(Invalid::new(
                "server.io_threads",
                format!("must be at most {IO_THREADS_MAX} (0: one per core)"),
            ));
        }
        Ok(())
    }
}

impl Authorization {
    fn validate(&self) -> Result<(), Invalid> {
        if self.default_expiry_seconds > self.expiry_seconds_max {
            return Err(Invalid::new(
                "authorization.default_expiry_seconds",
                "must not exceed authorization.expiry_seconds_max",
            ));
        }
        Ok(())
    }
}

impl Tls {
    /// The files `files` mode needs, and an anonymous participant that is one.
    fn validate(&self) -> Result<(), Invalid> {
        if self.mode == TlsMode::Files {
            for (key, value) in [
                ("tls.cert_file", &self.cert_file),
                ("tls.key_file", &self.key_file),
                ("tls.client_ca_file", &self.client_ca_file),
            ] {
                if value.is_none() {
                    return Err(Invalid::new(key, "is required when tls.mode = \"files\""));
                }
            }
        }
        if matches!(self.anonymous_participant, Some(0)) {
            return Err(Invalid::new("tls.anonymous_participant", "must not be 0"));
        }
        Ok(())
    }
}

/// Each identity a SHA-256 fingerprint of a participant, and a certificate listed once: listed
/// twice, the later entry would silently decide who it is (and could make a participant's
/// certificate an admin's).
fn validate_identities(identities: &[Identity]) -> Result<(), Invalid> {
    let key = "identities.fingerprint_sha256";
    let mut seen = std::collections::HashMap::new();
    for (index, identity) in identities.iter().enumerate() {
        let Some(fingerprint) = parse_fingerprint(&identity.fingerprint_sha256) else {
            return Err(Invalid::new(
                key,
                format!(
                    "entry {index} (participant {}): {:?} is not a SHA-256 fingerprint, 32 \
                     bytes as 64 hex digits (colons between bytes optional)",
                    identity.participant, identity.fingerprint_sha256
                ),
            ));
        };
        if let Some(first) = seen.insert(fingerprint, index) {
            let describe = |i: usize| {
                identities.get(i).map_or_else(String::new, |e| {
                    let admin = if e.admin { ", admin" } else { "" };
                    format!("entry {i} (participant {}{admin})", e.participant)
                })
            };
            return Err(Invalid::new(
                key,
                format!(
                    "{} and {} list the same certificate ({}): a certificate may be listed once",
                    describe(first),
                    describe(index),
                    identity.fingerprint_sha256
                ),
            ));
        }
        if identity.participant == 0 {
            return Err(Invalid::new(
                "identities.participant",
                format!("entry {index}: must not be 0"),
            ));
        }
    }
    Ok(())
}

/// A configuration that cannot be used, saying where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: &'static str,
        message: String,
    },
    #[error("{origin}: routes: {source}")]
    Routes { origin: String, source: RouteError },
}

/// Parses an account id written as decimal or `0x` hex.
pub fn parse_u128(text: &str) -> Option<u128> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u128::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.replace('_', "").parse().ok(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            // toml's message names the key and shows the line.
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks every section, in the order of its keys' checks below; the first refused value
    /// is the error.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let at = |e: Invalid| e.at(origin);
        settings::ledger_config(self)
            .validate()
            .map_err(|e| at(Invalid::new("ledger", e.to_string())))?;
        self.counts_at_least_one().map_err(at)?;
        self.limits.validate().map_err(at)?;
        self.server.validate().map_err(at)?;
        self.authorization.validate().map_err(at)?;
        self.deadlines.validate().map_err(at)?;
        self.overload.validate().map_err(at)?;
        self.tls.validate().map_err(at)?;
        validate_identities(&self.identities).map_err(at)?;
        validate_log_level(&self.log.level).map_err(|m| at(Invalid::new("log.level", m)))?;
        self.validate_clearing(origin)?;
        self.route_table(origin)?;
        if let Some(cluster) = &self.cluster {
            cluster
                .check()
                .map_err(|(key, message)| at(Invalid::new(key, message)))?;
        }
        Ok(())
    }

    /// The counts and sizes that must be at least 1, all sections together.
    fn counts_at_least_one(&self) -> Result<(), Invalid> {
        let l = &self.limits;
        for (key, value) in [
            ("limits.frame_bytes_max", u64::from(l.frame_bytes_max)),
            ("limits.batch_len_max", u64::from(l.batch_len_max)),
            (
                "limits.stage_batch_len_max",
                u64::from(l.stage_batch_len_max),
            ),
            ("limits.connections_max", u64::from(l.connections_max)),
            (
                "limits.streams_per_connection_max",
                u64::from(l.streams_per_connection_max),
            ),
            (
                "limits.in_flight_per_connection_max",
                u64::from(l.in_flight_per_connection_max),
            ),
            ("limits.queue_depth_max", u64::from(l.queue_depth_max)),
            ("ledger.participants_max", self.ledger.participants_max),
            ("wal.segment_bytes_max", self.wal.segment_bytes_max),
            ("wal.group_bytes_max", self.wal.group_bytes_max),
            ("wal.queue_depth_max", u64::from(self.wal.queue_depth_max)),
            ("snapshot.keep", u64::from(self.snapshot.keep)),
            ("snapshot.defer_at_most", self.snapshot.defer_at_most),
            (
                "authorization.default_expiry_seconds",
                u64::from(self.authorization.default_expiry_seconds),
            ),
            (
                "authorization.expiry_tick_ms",
                u64::from(self.authorization.expiry_tick_ms),
            ),
            (
                "authorization.expiry_pass_max",
                u64::from(self.authorization.expiry_pass_max),
            ),
        ] {
            if value == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// `[clearing]`: windows kept, and a fee schedule a close can log.
    fn validate_clearing(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Invalid::new(key, message).at(origin);
        if self.clearing.windows_kept == 0 {
            return Err(invalid(
                "clearing.windows_kept",
                "must be at least 1".into(),
            ));
        }
        let fees = Arc::new(self.fee_schedule(origin)?);
        let entries = fees.by_issuer.len();
        if entries > crate::journal::FEE_ENTRIES_MAX {
            return Err(invalid(
                "clearing.fees.issuer",
                format!(
                    "{entries} entries: at most {}",
                    crate::journal::FEE_ENTRIES_MAX
                ),
            ));
        }
        // A close carries the fee schedule in the log: one must fit in a batch's record
        // beside a full batch of other commands.
        let bound = self.limits.batch_bound();
        let close =
            crate::journal::logged_len(&crate::core::Command::CloseWindow { window: 0, fees });
        let closes_bytes_max = self.limits.closes_logged_bytes_max();
        if close > closes_bytes_max {
            return Err(invalid(
                "clearing.fees.issuer",
                format!(
                    "a window close would log {close} bytes with these fees, and a batch \
                     filled to {bound} requests (the larger of limits.batch_len_max and \
                     limits.stage_batch_len_max) leaves room for {closes_bytes_max} in a log \
                     record: fewer issuer entries, or smaller limits"
                ),
            ));
        }
        Ok(())
    }

    /// What is valid but costly or unsafe, each naming its keys: `switch config check` prints
    /// these and the switch logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let (pending, remembered) = (
            self.ledger.pending_max,
            self.ledger.transfers_remembered_max,
        );
        if pending.saturating_mul(2) > remembered {
            warnings.push(format!(
                "ledger.pending_max ({pending}) is more than half of \
                 ledger.transfers_remembered_max ({remembered}): live holds are never \
                 forgotten, so as they fill what is remembered each new request looks past \
                 more of them to forget an old one (up to {FORGET_LOOKS} per request), and a \
                 request can cost the ledger stage several times as much (measured: 9 to 20 µs \
                 an authorization against 2 to 3 µs); keep pending_max at most half",
                FORGET_LOOKS = crate::core::FORGET_LOOKS_MAX,
            ));
        }
        if self.wal.durability == Durability::None {
            let durability = ledger::wal::Durability::None;
            warnings.extend(durability.warning().map(|w| format!("wal.durability: {w}")));
        }
        warnings
    }

    /// The sections of this configuration (`[tls]`, `[[identities]]`, ...) that differ from
    /// `other`'s, routes aside: what a reload of the routes leaves as it was.
    pub fn sections_differing_from(&self, other: &Config) -> Vec<&'static str> {
        // Destructured, so that a section added to `Config` cannot be forgotten here.
        let Config {
            server,
            tls,
            limits,
            ledger,
            wal,
            snapshot,
            authorization,
            metrics,
            log,
            clearing,
            deadlines,
            overload,
            identities,
            routes: _,
            cluster,
        } = self;
        [
            ("[server]", server == &other.server),
            ("[cluster]", cluster == &other.cluster),
            ("[tls]", tls == &other.tls),
            ("[limits]", limits == &other.limits),
            ("[ledger]", ledger == &other.ledger),
            ("[wal]", wal == &other.wal),
            ("[snapshot]", snapshot == &other.snapshot),
            ("[authorization]", authorization == &other.authorization),
            ("[metrics]", metrics == &other.metrics),
            ("[log]", log == &other.log),
            ("[clearing]", clearing == &other.clearing),
            ("[deadlines]", deadlines == &other.deadlines),
            ("[overload]", overload == &other.overload),
            ("[[identities]]", identities == &other.identities),
        ]
        .into_iter()
        .filter_map(|(name, same)| (!same).then_some(name))
        .collect()
    }

    /// Where settlement reports go.
    pub fn report_dir(&self) -> PathBuf {
        if self.clearing.report_dir.as_os_str().is_empty() {
            self.server.data_dir.join("reports")
        } else {
            self.clearing.report_dir.clone()
        }
    }

    /// The fee schedule, its decimals parsed exactly (at most 10 decimals, not negative,
    /// percentages at most 100).
    pub fn fee_schedule(&self, origin: &str) -> Result<FeeSchedule, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        let parse = |key: &'static str, text: &str, percent: bool| {
            parse_fee(text, percent).map_err(|message| invalid(key, message))
        };
        let f = &self.clearing.fees;
        let rate = |kp, p: &str, kf, x: &str| -> Result<FeeRate, ConfigError> {
            Ok(FeeRate {
                percent: parse(kp, p, true)?,
                fixed: parse(kf, x, false)?,
            })
        };
        let mut schedule = FeeSchedule {
            purchase: rate(
                "clearing.fees.purchase_percent",
                &f.purchase_percent,
                "clearing.fees.purchase_fixed",
                &f.purchase_fixed,
            )?,
            refund: rate(
                "clearing.fees.refund_percent",
                &f.refund_percent,
                "clearing.fees.refund_fixed",
                &f.refund_fixed,
            )?,
            by_issuer: Default::default(),
        };
        for i in &f.issuer {
            if i.participant == 0 {
                return Err(invalid(
                    "clearing.fees.issuer.participant",
                    "must not be 0".to_string(),
                ));
            }
            let purchase = rate(
                "clearing.fees.issuer.purchase_percent",
                &i.purchase_percent,
                "clearing.fees.issuer.purchase_fixed",
                &i.purchase_fixed,
            )?;
            let refund = rate(
                "clearing.fees.issuer.refund_percent",
                &i.refund_percent,
                "clearing.fees.issuer.refund_fixed",
                &i.refund_fixed,
            )?;
            if schedule
                .by_issuer
                .insert(ParticipantId(i.participant), (purchase, refund))
                .is_some()
            {
                return Err(invalid(
                    "clearing.fees.issuer.participant",
                    format!("participant {} is listed twice", i.participant),
                ));
            }
        }
        Ok(schedule)
    }

    /// The routing table this configuration describes.
    pub fn route_table(&self, origin: &str) -> Result<RouteTable, ConfigError> {
        let mut routes = Vec::with_capacity(self.routes.len());
        for (index, r) in self.routes.iter().enumerate() {
            let pooled_account = match &r.pooled_account {
                None => None,
                Some(text) => Some(AccountId(parse_u128(text).ok_or_else(|| {
                    ConfigError::Routes {
                        origin: origin.to_string(),
                        source: RouteError::BadAccount { index, account: 0 },
                    }
                })?)),
            };
            routes.push(Route {
                prefix: r.prefix.clone(),
                issuer: ParticipantId(r.issuer),
                pooled_account,
            });
        }
        RouteTable::new(routes).map_err(|source| ConfigError::Routes {
            origin: origin.to_string(),
            source,
        })
    }
}

/// A fee rate written as a decimal: exact, not negative, at most 10 decimals, and a percentage
/// at most 100.
fn parse_fee(text: &str, percent: bool) -> Result<Decimal, String> {
    let value = Decimal::from_str_exact(text.trim())
        .map_err(|e| format!("{text:?} is not a decimal: {e}"))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{text} must not be negative"));
    }
    if value.scale() > 10 {
        return Err(format!("{text} has more than 10 decimals"));
    }
    if percent && value > Decimal::ONE_HUNDRED {
        return Err(format!("{text} is over 100 percent"));
    }
    Ok(value)
}

/// Parses a SHA-256 fingerprint written as 64 hex digits (either case), with or without
/// colons: `3f:a2:...` and `3FA2...` are the same fingerprint.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    // `from_str_radix` alone would take a sign ("+a"), which is not hex.
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Checks a `[log] level`: what `tracing`'s `EnvFilter` accepts, and a level in every
/// directive. `EnvFilter` takes a bare word as a target with every level, so a misspelt level
/// (`infoo`, `warning`) would silently log nothing of the switch.
fn validate_log_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("is empty: name a level, e.g. \"info\"".to_string());
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("{level:?} is not a tracing filter: {e}"))?;
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=')
            && directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        {
            return Err(format!(
                "{directive:?} is not a level (off, error, warn, info, debug, trace); a target \
                 takes one after `=`, e.g. \"switch=debug,info\""
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_is_the_default() {
        let parsed = Config::parse(DEFAULT_CONFIG, "default.toml").expect("default parses");
        assert_eq!(parsed, Config::default());
        assert_eq!(
            Config::parse("", "empty").expect("empty parses"),
            Config::default()
        );
    }

    /// A remembered queue must hold fewer than 2^32 records (see `PositionIndex`): each bound
    /// that sizes one is refused past `REMEMBERED_LIMIT`, naming it.
    #[test]
    fn remembered_bounds_past_the_index_limit_are_refused() {
        let limit = ledger::REMEMBERED_LIMIT;
        for key in ["transfers_remembered_max", "pending_max"] {
            let at = format!("[ledger]\n{key} = {limit}\n");
            assert!(Config::parse(&at, "x.toml").is_ok(), "{key} = {limit}");
            let over = format!("[ledger]\n{key} = {}\n", limit + 1);
            let error = Config::parse(&over, "x.toml").expect_err("past the limit");
            assert!(
                error
                    .to_string()
                    .contains(&format!("{key} must be at most {limit}")),
                "{error}"
            );
        }
    }

    #[test]
    fn warnings_name_their_keys_and_the_default_has_none() {
        assert_eq!(Config::default().warnings(), Vec::<String>::new());
        let half = "[ledger]\ntransfers_remembered_max = 1000\npending_max = 500\n";
        let config = Config::parse(half, "x.toml").expect("valid");
        assert_eq!(config.warnings(), Vec::<String>::new());
        let over = "[ledger]\ntransfers_remembered_max = 1000\npending_max = 501\n";
        let warnings = Config::parse(over, "x.toml").expect("valid").warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("ledger.pending_max (501)"),
            "{warnings:?}"
        );
        assert!(
            warnings[0].contains("ledger.transfers_remembered_max (1000)"),
            "{warnings:?}"
        );
        let unsafe_log = Config::parse("[wal]\ndurability = \"none\"\n", "x.toml")
            .expect("valid")
            .warnings();
        assert_eq!(unsafe_log.len(), 1, "{unsafe_log:?}");
        assert!(
            unsafe_log[0].starts_with("wal.durability: "),
            "{unsafe_log:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::parse("[limits]\nframe_byte_max = 10\n", "x.toml")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("frame_byte_max"), "{err}");
        assert!(err.starts_with("x.toml"), "{err}");
        let err = Config::parse("[nonsense]\n", "x.toml")
            .expect_err("unknown section")
            .to_string();
        assert!(err.contains("nonsense"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[limits]\nqueue_depth_max = 0\n", "limits.queue_depth_max"),
            (
                "[limits]\nstage_batch_len_max = 0\n",
                "limits.stage_batch_len_max",
            ),
            (
                "[limits]\nqueue_depth_max = 1048577\n",
                "limits.queue_depth_max",
            ),
            (
                "[limits]\nframe_bytes_max = 65536\n",
                "limits.frame_bytes_max",
            ),
            (
                "[limits]\nframe_bytes_max = 67108865\n",
                "limits.frame_bytes_max",
            ),
            (
                "[limits]\nunfinished_frame_bytes_max = 1048575\n",
                "limits.unfinished_frame_bytes_max",
            ),
            (
                "[limits]\nunfinished_frame_bytes_max = 1099511627777\n",
                "limits.unfinished_frame_bytes_max",
            ),
            ("[ledger]\nshards = 3\n", "ledger"),
            ("[server]\nio_threads = 257\n", "server.io_threads"),
            (
                "[deadlines]\nauthorize_ms = 65536\n",
                "deadlines.authorize_ms",
            ),
            ("[deadlines]\ncapture_ms = -1\n", "deadlines.capture_ms"),
            ("[overload]\ninterval_ms = 0\n", "overload.interval_ms"),
            ("[overload]\ninterval_ms = 1001\n", "overload.interval_ms"),
            ("[overload]\ntarget_ms = 0\n", "overload.target_ms"),
            (
                "[overload]\ntarget_ms = 200\ninterval_ms = 100\n",
                "overload.target_ms",
            ),
            ("[tls]\nmode = \"files\"\n", "tls.cert_file"),
            (
                "[authorization]\ndefault_expiry_seconds = 99999999\n",
                "authorization.default_expiry_seconds",
            ),
            (
                "[[identities]]\nfingerprint_sha256 = \"abc\"\nparticipant = 1\n",
                "identities.fingerprint_sha256",
            ),
        ] {
            let err = Config::parse(text, "x.toml").expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        // The answers to a full batch fit in a frame: 18 + 949 x 69 = 65,499 bytes.
        Config::parse(
            "[limits]\nframe_bytes_max = 65536\nbatch_len_max = 949\n",
            "x.toml",
        )
        .expect("a full batch's answers fit");
        Config::parse(
            "[limits]\nframe_bytes_max = 65536\nbatch_len_max = 950\n",
            "x.toml",
        )
        .expect_err("a full batch's answers do not fit");
        // A close logs the fee schedule: it must fit in a record beside a full batch.
        let batch: u16 = 30_000;
        let limits_for = |frame: u16, stage: u16| {
            format!(
                "[limits]\nframe_bytes_max = 8388608\nbatch_len_max = {frame}\n\
                 stage_batch_len_max = {stage}\n"
            )
        };
        let with_fees = |limits: String, issuers: usize| {
            let mut text = limits;
            for p in 1..=issuers {
                text.push_str(&format!(
                    "[[clearing.fees.issuer]]\nparticipant = {p}\npurchase_percent = \"0.5\"\n"
                ));
            }
            Config::parse(&text, "x.toml")
        };
        let fees = |issuers| with_fees(limits_for(batch, 1), issuers);
        let close_len = |issuers| {
            let config = fees(issuers).expect("valid");
            let fees = Arc::new(config.fee_schedule("x.toml").expect("valid"));
            crate::journal::logged_len(&crate::core::Command::CloseWindow { window: 0, fees })
        };
        let (base, per) = (close_len(0), close_len(1) - close_len(0));
        let fitting = (crate::core::closes_logged_bytes_max(batch) - base) / per;
        assert!((1..crate::journal::FEE_ENTRIES_MAX).contains(&fitting));
        assert!(fees(fitting).is_ok(), "{fitting} issuer rates fit");
        match fees(fitting + 1) {
            Ok(_) => panic!("{} issuer rates do not fit", fitting + 1),
            Err(e) => assert!(e.to_string().contains("clearing.fees.issuer"), "{e}"),
        }
        // Past the largest bound, whichever key sets it is named, fees or none.
        let bound_max = batch_bound_max();
        assert!((8190..u16::MAX).contains(&bound_max), "{bound_max}");
        // The largest: a close fits beside a batch filled to it, and not to one more.
        let room = crate::core::closes_logged_bytes_max;
        assert!(room(bound_max) >= smallest_close_len());
        assert!(room(bound_max + 1) < smallest_close_len());
        let big_frames = |frame: u16, stage: u16| {
            format!(
                "[limits]\nframe_bytes_max = 67108864\nbatch_len_max = {frame}\n\
                 stage_batch_len_max = {stage}\n"
            )
        };
        Config::parse(&big_frames(bound_max, 1), "x.toml").expect("the largest frame bound");
        Config::parse(&big_frames(1, bound_max), "x.toml").expect("the largest stage bound");
        for (text, key) in [
            (big_frames(bound_max + 1, 1), "limits.batch_len_max"),
            (big_frames(1, bound_max + 1), "limits.stage_batch_len_max"),
        ] {
            let err = Config::parse(&text, "x.toml").expect_err(&text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        // The stage's batch bound counts as well when it is the larger: its batches fill to it.
        assert!(with_fees(limits_for(100, batch), fitting).is_ok());
        assert!(with_fees(limits_for(100, batch), fitting + 1).is_err());
        assert!(with_fees(limits_for(100, 100), fitting + 1).is_ok());
        let err = Config::parse("[wal]\ndurability = \"sometimes\"\n", "x.toml")
            .expect_err("bad enum")
            .to_string();
        assert!(err.contains("durability"), "{err}");
        let err = Config::parse(
            "[[routes]]\nprefix = \"62\"\nissuer = 1\n[[routes]]\nprefix = \"62\"\nissuer = 2\n",
            "x.toml",
        )
        .expect_err("duplicate route")
        .to_string();
        assert!(err.contains("route 1") && err.contains("62"), "{err}");
    }

    #[test]
    fn network_threads_are_as_configured_or_one_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(Config::default().server.io_threads(), cores);
        let one = Config::parse("[server]\nio_threads = 1\n", "x.toml").expect("valid");
        assert_eq!(one.server.io_threads(), 1);
        let most = format!("[server]\nio_threads = {IO_THREADS_MAX}\n");
        let most = Config::parse(&most, "x.toml").expect("valid");
        assert_eq!(most.server.io_threads(), usize::from(IO_THREADS_MAX));
    }

    /// A fingerprint as an operator might write it: hex in either case, colons or not.
    fn written(bytes: &[u8; 32], upper: bool, colons: bool) -> String {
        let hex: Vec<String> = bytes
            .iter()
            .map(|b| {
                if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect();
        hex.join(if colons { ":" } else { "" })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_config.txt", 64))]

        /// Identities drawn from a few certificates, each written in its own way: the list is
        /// refused exactly when one certificate is listed twice, naming its first and its
        /// second entry; otherwise every entry maps its certificate.
        #[test]
        fn a_certificate_listed_twice_is_refused_however_written(
            pool in proptest::collection::vec(any::<[u8; 32]>(), 3),
            entries in proptest::collection::vec((0usize..3, any::<bool>(), any::<bool>(), any::<bool>()), 1..6),
        ) {
            let mut text = String::new();
            for (i, (which, upper, colons, admin)) in entries.iter().enumerate() {
                text.push_str(&format!(
                    "[[identities]]\nfingerprint_sha256 = {:?}\nparticipant = {}\nadmin = {admin}\n",
                    written(&pool[*which], *upper, *colons),
                    i + 1,
                ));
            }
            // The model: the first entry whose certificate an earlier entry listed.
            let mut first_seen = std::collections::HashMap::new();
            let duplicate = entries.iter().enumerate().find_map(|(j, (which, ..))| {
                first_seen.insert(pool[*which], j).map(|i| (i, j))
            });
            match (Config::parse(&text, "x.toml"), duplicate) {
                (Ok(config), None) => {
                    // Accepted, each entry as written parses to its certificate's bytes.
                    prop_assert_eq!(config.identities.len(), entries.len());
                    for (entry, (which, ..)) in config.identities.iter().zip(&entries) {
                        prop_assert_eq!(parse_fingerprint(&entry.fingerprint_sha256), Some(pool[*which]));
                    }
                }
                (Err(e), Some((i, j))) => {
                    let e = e.to_string();
                    prop_assert!(e.contains("identities.fingerprint_sha256"), "{}", e);
                    let admin = |k: usize| if entries[k].3 { ", admin" } else { "" };
                    let first = format!("entry {i} (participant {}{})", i + 1, admin(i));
                    let second = format!("entry {j} (participant {}{})", j + 1, admin(j));
                    prop_assert!(e.contains(&format!("{first} and {second}")), "{}", e);
                }
                (result, duplicate) => {
                    prop_assert!(false, "{:?} for duplicate {:?}", result.map(|_| ()), duplicate);
                }
            }
        }
    }

    #[test]
    fn a_fingerprint_that_is_not_32_bytes_of_hex_is_refused() {
        let good = "ab".repeat(32);
        assert!(Config::parse(&identity(&good), "x.toml").is_ok());
        for bad in [
            "ab".repeat(31),
            "ab".repeat(33),
            format!("{}a", "ab".repeat(31)),
            format!("{}+a", "ab".repeat(31)),
            format!("{}gg", "ab".repeat(31)),
            format!("{}é", "ab".repeat(31)),
            String::new(),
        ] {
            let error = Config::parse(&identity(&bad), "x.toml")
                .expect_err(&bad)
                .to_string();
            assert!(
                error.contains("identities.fingerprint_sha256") && error.contains("entry 0"),
                "{bad}: {error}"
            );
        }
    }

    fn identity(fingerprint: &str) -> String {
        format!("[[identities]]\nfingerprint_sha256 = {fingerprint:?}\nparticipant = 2\n")
    }

    #[test]
    fn log_levels_that_would_hide_the_switch_are_refused() {
        for good in [
            "info",
            "WARN",
            "off",
            "3",
            "switch=debug,info",
            "info,quinn=warn",
        ] {
            let text = format!("[log]\nlevel = {good:?}\n");
            assert!(Config::parse(&text, "x.toml").is_ok(), "{good:?}");
        }
        for bad in [
            "infoo",
            "warning",
            "switch",
            "switch=loud",
            "info,switch=[",
            " info , quinn=warn ",
            "",
            " ",
        ] {
            let text = format!("[log]\nlevel = {bad:?}\n");
            let error = Config::parse(&text, "x.toml").expect_err(bad).to_string();
            assert!(error.contains("log.level"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn sections_that_differ_are_named_and_routes_are_not() {
        let base = Config::default();
        assert!(base.sections_differing_from(&base).is_empty());
        let mut other = base.clone();
        other.routes.push(RouteConfig {
            prefix: "62".into(),
            issuer: 2,
            pooled_account: None,
        });
        assert!(other.sections_differing_from(&base).is_empty());
        other.limits.connections_max += 1;
        other.identities.push(Identity {
            fingerprint_sha256: "ab".repeat(32),
            participant: 2,
            admin: false,
        });
        other.log.level = "debug".into();
        assert_eq!(
            other.sections_differing_from(&base),
            ["[limits]", "[log]", "[[identities]]"]
        );
    }

    #[test]
    fn ids_and_fingerprints_parse() {
        assert_eq!(parse_u128("0x10"), Some(16));
        assert_eq!(parse_u128("1_000"), Some(1000));
        assert_eq!(parse_u128("x"), None);
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex), Some([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(parse_fingerprint("ab"), None);
    }
}
