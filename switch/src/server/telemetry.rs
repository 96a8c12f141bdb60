//! Every metric family the switch exports, in one place: its description (`# HELP`, with its
//! unit) and a first value at start, so that every family is there from the first scrape and a
//! rate over a counter sees its first increment. Also what a scrape refreshes (the process's
//! figures, the log's size on disk), the reasons a TLS handshake failed, and the logs that must
//! not flood: at most one line per period, with a count of what was held back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::Unit;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;

use crate::tls::Fingerprint;
use crate::wire;

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The series a family is registered with at start.
enum Series {
    /// One, without labels.
    One,
    /// One for each value of one label.
    Each(&'static str, &'static [&'static str]),
    /// `switch_requests_total` (every operation the ledger stage answers, by every response
    /// code) and `switch_build_info`: see `register`.
    Custom,
}

struct Family {
    name: &'static str,
    kind: Kind,
    unit: Unit,
    help: &'static str,
    series: Series,
}

const fn family(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    help: &'static str,
    series: Series,
) -> Family {
    Family {
        name,
        kind,
        unit,
        help,
        series,
    }
}

/// `switch_storage_failures_total{cause}`.
pub const STORAGE_FAILURE_CAUSES: [&str; 2] = ["out_of_space", "io_error"];

/// `switch_tls_handshake_failures_total{reason}`: a fixed set, whatever a peer sends.
pub const HANDSHAKE_FAILURE_REASONS: [&str; 8] = [
    "unknown_ca",
    "no_certificate",
    "certificate_expired",
    "bad_certificate",
    "no_application_protocol",
    "refused_by_client",
    "timeout",
    "other",
];

use Kind::{Counter, Gauge, Histogram};

const FAMILIES: &[Family] = &[
    family(
        "switch_build_info",
        Gauge,
        Unit::Count,
        "1, labelled with the version and the commit the switch was built from",
        Series::Custom,
    ),
    family(
        "switch_requests_total",
        Counter,
        Unit::Count,
        "Requests answered by the ledger stage, by operation and response code",
        Series::Custom,
    ),
    family(
        "switch_raft_term",
        Gauge,
        Unit::Count,
        "The Raft term this replica is in",
        Series::One,
    ),
    family(
        "switch_raft_leader",
        Gauge,
        Unit::Count,
        "1 while this replica leads its cluster",
        Series::One,
    ),
    family(
        "switch_stage_wakeups_total",
        Counter,
        Unit::Count,
        "Times the ledger stage woke from waiting (for work, a message, a durable write or a tick)",
        Series::One,
    ),
    family(
        "switch_raft_elections_total",
        Counter,
        Unit::Count,
        "Terms this replica has seen begin (each begins with an election)",
        Series::One,
    ),
    family(
        "switch_raft_commit_index",
        Gauge,
        Unit::Count,
        "Every entry of the replicated log up to this index is committed",
        Series::One,
    ),
    family(
        "switch_raft_applied_index",
        Gauge,
        Unit::Count,
        "The last entry applied to this replica's state",
        Series::One,
    ),
    family(
        "switch_raft_follower_lag_entries",
        Gauge,
        Unit::Count,
        "On the leader: the most entries any member lacks of the leader's log (0 elsewhere)",
        Series::One,
    ),
    family(
        "switch_not_leader_frames_total",
        Counter,
        Unit::Count,
        "Request frames answered with error 9 (not leader): sent to a replica that does not lead",
        Series::One,
    ),
    family(
        "switch_replica_messages_dropped_total",
        Counter,
        Unit::Count,
        "Messages to another replica dropped (Raft sends again what matters), by reason",
        Series::Each("reason", &["queue_full", "unreachable"]),
    ),
    family(
        "switch_replica_inbox_dropped_total",
        Counter,
        Unit::Count,
        "Messages from other replicas dropped because the ledger stage's inbox was full",
        Series::One,
    ),
    family(
        "switch_http_refused_total",
        Counter,
        Unit::Count,
        "Connections to this HTTP endpoint closed at once: every slot was taken",
        Series::One,
    ),
    family(
        "switch_http_accept_failed_total",
        Counter,
        Unit::Count,
        "Failed accepts on this HTTP endpoint (out of file descriptors, say)",
        Series::One,
    ),
    family(
        "switch_replica_refused_total",
        Counter,
        Unit::Count,
        "Connections to the replica address refused: the certificate is not a member's",
        Series::One,
    ),
    family(
        "switch_replica_snapshot_bytes_sent_total",
        Counter,
        Unit::Bytes,
        "Snapshot bytes sent to replicas that were too far behind for the log",
        Series::One,
    ),
    family(
        "switch_request_seconds",
        Histogram,
        Unit::Seconds,
        "Time from a frame's arrival to its answer, for frames the ledger stage answered",
        Series::One,
    ),
    family(
        "switch_batch_requests",
        Histogram,
        Unit::Count,
        "Requests per ledger-stage batch",
        Series::One,
    ),
    family(
        "switch_stage_apply_seconds",
        Histogram,
        Unit::Seconds,
        "The ledger stage applying one batch (routing, ledger, remembering; the log excluded)",
        Series::One,
    ),
    family(
        "switch_wal_append_seconds",
        Histogram,
        Unit::Seconds,
        "From handing a batch's record to the write-ahead log until it is durable",
        Series::One,
    ),
    family(
        "switch_queue_depth_requests",
        Gauge,
        Unit::Count,
        "Requests the ledger stage holds and has not answered: queued, or waiting for the log",
        Series::One,
    ),
    family(
        "switch_queue_full_total",
        Counter,
        Unit::Count,
        "Frames answered 91 because the ledger stage's queue was full",
        Series::One,
    ),
    family(
        "switch_requests_shed_total",
        Counter,
        Unit::Count,
        "Requests answered 91 and not executed, by operation and reason: shed for overload \
         (reason 34), deadline passed (reason 33), queue_full (the stage's queue full, or closed \
         at shutdown: reason 22)",
        Series::Custom,
    ),
    family(
        "switch_queue_delay_seconds",
        Histogram,
        Unit::Seconds,
        "Per ledger-stage batch, the queueing delay of its oldest request: from its frame being \
         read to the stage taking it",
        Series::One,
    ),
    family(
        "switch_shedding",
        Gauge,
        Unit::Count,
        "1 while new Authorize and Sale are shed because the queueing delay stayed over its target",
        Series::One,
    ),
    family(
        "switch_in_flight_limit_total",
        Counter,
        Unit::Count,
        "Frames answered 91 because the connection had its limit of requests in flight",
        Series::One,
    ),
    family(
        "switch_connections",
        Gauge,
        Unit::Count,
        "Open client connections (handshake done)",
        Series::One,
    ),
    family(
        "switch_connections_refused_total",
        Counter,
        Unit::Count,
        "Connections refused before the handshake: at the connection limit, or shutting down",
        Series::One,
    ),
    family(
        "switch_tls_handshake_failures_total",
        Counter,
        Unit::Count,
        "Connections whose TLS handshake failed, by reason",
        Series::Each("reason", &HANDSHAKE_FAILURE_REASONS),
    ),
    family(
        "switch_malformed_frames_total",
        Counter,
        Unit::Count,
        "Frames rejected by the decoder, and frames of the wrong kind",
        Series::One,
    ),
    family(
        "switch_unfinished_frame_bytes",
        Gauge,
        Unit::Bytes,
        "Bytes of the room for unfinished frames held by frames being received",
        Series::One,
    ),
    family(
        "switch_frames_busy_total",
        Counter,
        Unit::Count,
        "Frames that found the room for unfinished frames full: answered with error 8",
        Series::One,
    ),
    family(
        "switch_responses_too_large_total",
        Counter,
        Unit::Count,
        "Results answered 91 because they would not fit in their response frame",
        Series::One,
    ),
    family(
        "switch_holds_expired_total",
        Counter,
        Unit::Count,
        "Authorization holds expired by the clock's tick",
        Series::One,
    ),
    family(
        "switch_expiry_passes_total",
        Counter,
        Unit::Count,
        "Expiry passes that found holds due, each one log entry of at most [authorization] expiry_pass_max holds: one per expiry_tick_ms, and one between batches while more are due",
        Series::One,
    ),
    family(
        "switch_holds_live",
        Gauge,
        Unit::Count,
        "Authorization holds neither captured, reversed nor expired (updated about every second)",
        Series::One,
    ),
    family(
        "switch_accounts",
        Gauge,
        Unit::Count,
        "Accounts in the ledger (updated about every second)",
        Series::One,
    ),
    family(
        "switch_wal_bytes",
        Gauge,
        Unit::Bytes,
        "Bytes of the write-ahead log's files on disk, segments prepared ahead included",
        Series::One,
    ),
    family(
        "switch_storage_failed",
        Gauge,
        Unit::Count,
        "1 once the write-ahead log has failed and nothing more is acknowledged",
        Series::One,
    ),
    family(
        "switch_storage_failures_total",
        Counter,
        Unit::Count,
        "Write-ahead log failures, by cause",
        Series::Each("cause", &STORAGE_FAILURE_CAUSES),
    ),
    family(
        "switch_snapshot_last_written_timestamp_seconds",
        Gauge,
        Unit::Seconds,
        "When the newest snapshot was written (Unix time); 0 while there is none",
        Series::One,
    ),
    family(
        "switch_snapshot_bytes",
        Gauge,
        Unit::Bytes,
        "Size of the last snapshot written by this process",
        Series::One,
    ),
    family(
        "switch_snapshot_pause_seconds",
        Histogram,
        Unit::Seconds,
        "The ledger stage's pause to start a snapshot",
        Series::One,
    ),
    family(
        "switch_snapshot_build_seconds",
        Histogram,
        Unit::Seconds,
        "Building a snapshot by replaying the log, off the ledger stage",
        Series::One,
    ),
    family(
        "switch_snapshot_write_seconds",
        Histogram,
        Unit::Seconds,
        "Encoding and writing a snapshot durably",
        Series::One,
    ),
    family(
        "switch_snapshots_deferred_total",
        Counter,
        Unit::Count,
        "Due snapshots that waited because the switch was busy",
        Series::One,
    ),
    family(
        "switch_snapshot_failures_total",
        Counter,
        Unit::Count,
        "Snapshots that could not be made (the log is kept whole)",
        Series::One,
    ),
    family(
        "switch_clearing_report_failures_total",
        Counter,
        Unit::Count,
        "Settlement reports of a closed window that could not be written",
        Series::One,
    ),
    family(
        "switch_clearing_reconciliation_failures_total",
        Counter,
        Unit::Count,
        "Closed windows whose reconciliation found a difference",
        Series::One,
    ),
];

/// Operations `switch_requests_total` counts: those the ledger stage answers (a reload, a
/// report file and a membership change are answered by the connection).
fn stage_ops() -> impl Iterator<Item = wire::Op> {
    wire::Op::ALL.into_iter().filter(|op| {
        !matches!(
            op,
            wire::Op::ReloadRoutes | wire::Op::ReportFile | wire::Op::ChangeMembership
        )
    })
}

/// Describes every family and registers each series known up front, at zero (gauges keep the
/// value they have: servers in one process share the recorder). Call once the recorder is
/// installed, at every start.
pub fn register() {
    for f in FAMILIES {
        match f.kind {
            Counter => metrics::describe_counter!(f.name, f.unit, f.help),
            Gauge => metrics::describe_gauge!(f.name, f.unit, f.help),
            Histogram => metrics::describe_histogram!(f.name, f.unit, f.help),
        }
        let register = |labels: Vec<metrics::Label>| match f.kind {
            Counter => metrics::counter!(f.name, labels).increment(0),
            Gauge => metrics::gauge!(f.name, labels).increment(0.0),
            Histogram => drop(metrics::histogram!(f.name, labels)),
        };
        match f.series {
            Series::One => register(Vec::new()),
            Series::Each(label, values) => {
                for value in values {
                    register(vec![metrics::Label::new(label, *value)]);
                }
            }
            Series::Custom => {}
        }
    }
    for op in stage_ops() {
        for code in wire::ResponseCode::ALL {
            requests_answered(op, code).increment(0);
        }
        for reason in ShedReason::ALL {
            shed(op, reason).increment(0);
        }
    }
    // What is running: the package version, and the commit when the build environment says.
    metrics::gauge!("switch_build_info", "version" => crate::VERSION, "commit" => crate::COMMIT)
        .set(1.0);
    let process = metrics_process::Collector::default();
    process.describe();
    process.collect();
}

/// The counter of requests answered with `code` for `op`.
pub fn requests_answered(op: wire::Op, code: wire::ResponseCode) -> metrics::Counter {
    metrics::counter!(
        "switch_requests_total",
        "op" => op_name(op),
        "code" => code.as_u8().to_string()
    )
}

/// Why a request was answered 91 and not executed, as `switch_requests_shed_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// Reason 34: a new payment under overload.
    Shed,
    /// Reason 33: its deadline passed.
    Deadline,
    /// Reason 22: the stage's queue was full (or closed for shutdown).
    QueueFull,
}

impl ShedReason {
    const ALL: [ShedReason; 3] = [
        ShedReason::Shed,
        ShedReason::Deadline,
        ShedReason::QueueFull,
    ];

    fn label(self) -> &'static str {
        match self {
            ShedReason::Shed => "shed",
            ShedReason::Deadline => "deadline",
            ShedReason::QueueFull => "queue_full",
        }
    }
}

/// `switch_requests_shed_total{op, reason}`.
pub fn shed(op: wire::Op, reason: ShedReason) -> metrics::Counter {
    metrics::counter!(
        "switch_requests_shed_total",
        "op" => op_name(op),
        "reason" => reason.label()
    )
}

/// An operation as the `op` label names it.
fn op_name(op: wire::Op) -> &'static str {
    match op {
        wire::Op::CreateParticipant => "create_participant",
        wire::Op::CreateAccount => "create_account",
        wire::Op::Fund => "fund",
        wire::Op::SetLimits => "set_limits",
        wire::Op::ReloadRoutes => "reload_routes",
        wire::Op::ChangeMembership => "change_membership",
        wire::Op::Authorize => "authorize",
        wire::Op::Capture => "capture",
        wire::Op::Reverse => "reverse",
        wire::Op::Sale => "sale",
        wire::Op::Refund => "refund",
        wire::Op::BalanceInquiry => "balance_inquiry",
        wire::Op::TransferStatus => "transfer_status",
        wire::Op::CloseWindow => "close_window",
        wire::Op::ListWindows => "list_windows",
        wire::Op::WindowReport => "window_report",
        wire::Op::ReportFile => "report_file",
        wire::Op::Echo => "echo",
    }
}

/// Bytes of the write-ahead log's files, read at each scrape (`None` if they cannot be listed).
pub type WalBytes = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// What `/metrics` renders, with the figures that are read at each scrape brought up to date
/// first.
pub struct Scrape {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    wal_bytes: WalBytes,
}

impl Scrape {
    pub fn new(handle: PrometheusHandle, wal_bytes: WalBytes) -> Self {
        Scrape {
            handle,
            process: metrics_process::Collector::default(),
            wal_bytes,
        }
    }

    /// Reads the process's figures and the log's size (file system calls: run it off the
    /// network threads), then renders every family.
    pub fn render(&self) -> String {
        self.process.collect();
        if let Some(bytes) = (self.wal_bytes)() {
            metrics::gauge!("switch_wal_bytes").set(bytes as f64);
        }
        self.handle.render()
    }
}

/// `at` as Unix seconds, for timestamp gauges.
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A TLS handshake's failure as one of `HANDSHAKE_FAILURE_REASONS`.
pub fn handshake_failure_reason(error: &quinn::ConnectionError) -> &'static str {
    match error {
        // This side's TLS refused the client (an alert it sent).
        quinn::ConnectionError::TransportError(e) => {
            tls_alert(u64::from(e.code)).map_or("other", |alert| local_alert_reason(alert))
        }
        // The client gave up on the handshake with a TLS alert: most often it does not trust
        // the server's certificate (a wrong pinned fingerprint, or another CA).
        quinn::ConnectionError::ConnectionClosed(close)
            if tls_alert(u64::from(close.error_code)).is_some() =>
        {
            "refused_by_client"
        }
        quinn::ConnectionError::TimedOut => "timeout",
        _ => "other",
    }
}

/// The TLS alert a QUIC transport error code carries (`CRYPTO_ERROR`, 0x0100 to 0x01ff).
fn tls_alert(code: u64) -> Option<u8> {
    code.checked_sub(0x100)
        .and_then(|alert| u8::try_from(alert).ok())
}

/// The reason for a handshake this side refused with TLS alert `alert` (RFC 8446, 6).
fn local_alert_reason(alert: u8) -> &'static str {
    match alert {
        48 => "unknown_ca",
        116 => "no_certificate",
        45 => "certificate_expired",
        // bad_certificate, unsupported_certificate, certificate_revoked, certificate_unknown,
        // decrypt_error (a signature that does not verify)
        42 | 43 | 44 | 46 | 51 => "bad_certificate",
        120 => "no_application_protocol",
        _ => "other",
    }
}

/// Counts a failed handshake by its reason.
pub fn handshake_failed(error: &quinn::ConnectionError) {
    metrics::counter!(
        "switch_tls_handshake_failures_total",
        "reason" => handshake_failure_reason(error)
    )
    .increment(1);
}

/// At most one line per `every`: counts are held back between lines, and a line says
/// everything since the previous one.
#[derive(Debug)]
pub struct Tally {
    every: Duration,
    last_line: Option<Instant>,
    held: u64,
}

impl Tally {
    pub const fn new(every: Duration) -> Self {
        Tally {
            every,
            last_line: None,
            held: 0,
        }
    }

    /// Counts `n` more at `now` (0 only asks). Returns the count for a line if one is due: all
    /// that was counted since the previous line, which was at least `every` ago.
    pub fn count(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.held = self.held.saturating_add(n);
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if self.held == 0 || !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.held))
    }

    /// What is held back, for a last line (at a stop); counting starts afresh.
    pub fn flush(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.held)).filter(|&n| n > 0)
    }
}

/// Refused client certificates: one line a second at most.
static REFUSED_CERTIFICATES: Mutex<Tally> = Mutex::new(Tally::new(Duration::from_secs(1)));

/// Logs a client certificate the switch refused (with its fingerprint, so that an operator
/// can tell whose it is, or pin it in `[[identities]]`), at most once a second; the lines held
/// back are counted in the next one.
pub fn certificate_refused(fingerprint: &Fingerprint, remote: Option<SocketAddr>, why: &str) {
    let Some(refused) = REFUSED_CERTIFICATES.lock().count(1, Instant::now()) else {
        return;
    };
    let also_refused = refused.saturating_sub(1);
    match remote {
        Some(remote) => tracing::warn!(
            %remote,
            fingerprint = %fingerprint,
            also_refused,
            "client certificate refused: {why}"
        ),
        None => tracing::warn!(
            fingerprint = %fingerprint,
            also_refused,
            "client certificate refused: {why}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn handshake_reasons_follow_the_alert_and_who_sent_it() {
        assert_eq!(tls_alert(0x100 + 48), Some(48));
        assert_eq!(tls_alert(0x1ff), Some(0xff));
        assert_eq!(tls_alert(0x0a), None, "PROTOCOL_VIOLATION is no alert");
        assert_eq!(tls_alert(0x200), None);
        for (alert, reason) in [
            (48, "unknown_ca"),
            (116, "no_certificate"),
            (45, "certificate_expired"),
            (42, "bad_certificate"),
            (51, "bad_certificate"),
            (120, "no_application_protocol"),
            (40, "other"),
        ] {
            assert_eq!(local_alert_reason(alert), reason, "alert {alert}");
        }
        let close = |code: u64| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto(
                    u8::try_from(code - 0x100).expect("an alert"),
                ),
                frame_type: None,
                reason: Default::default(),
            })
        };
        assert_eq!(
            handshake_failure_reason(&close(0x100 + 49)),
            "refused_by_client"
        );
        assert_eq!(
            handshake_failure_reason(&quinn::ConnectionError::TimedOut),
            "timeout"
        );
        assert_eq!(
            handshake_failure_reason(&quinn::ConnectionError::Reset),
            "other"
        );
        // Every reason any error can map to is registered at start.
        for alert in 0..=u8::MAX {
            assert!(HANDSHAKE_FAILURE_REASONS.contains(&local_alert_reason(alert)));
        }
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_telemetry_tally.txt"))]

        /// Against a model: lines are at least `every` apart, nothing counted is lost or said
        /// twice, and a count is never held once a line is due.
        #[test]
        fn a_tally_says_everything_at_most_once_per_period(
            every_ms in 1u64..5_000,
            steps in prop::collection::vec((0u64..3_000, 0u64..5), 0..300),
        ) {
            let every = Duration::from_millis(every_ms);
            let start = Instant::now();
            let mut tally = Tally::new(every);
            let (mut counted, mut said) = (0u64, 0u64);
            let mut at = Duration::ZERO;
            let mut last_line: Option<Duration> = None;
            for (step_ms, n) in steps {
                at += Duration::from_millis(step_ms);
                counted += n;
                let due = last_line.is_none_or(|l| at - l >= every);
                match tally.count(n, start + at) {
                    Some(line) => {
                        prop_assert!(line > 0);
                        prop_assert!(due, "a line {:?} after the last", last_line.map(|l| at - l));
                        said += line;
                        last_line = Some(at);
                    }
                    None => prop_assert!(!due || counted == said, "held back although due"),
                }
                prop_assert_eq!(said + tally.held, counted);
            }
            said += tally.flush().unwrap_or(0);
            prop_assert_eq!(said, counted);
            prop_assert_eq!(tally.flush(), None);
        }
    }
}
