//! What each part of the server takes from the configuration, derived in this one place: the
//! ledger's `Config`, the core's `CoreConfig`, the ledger stage's settings (with the log's
//! `WalOptions` and the snapshots' settings), and the connections' limits. A component takes
//! its own struct, never the whole `Config`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ledger::snapshot_file::SNAPSHOT_KEEP_DEFAULT;
use ledger::wal::{self, WalOptions};

use super::{Config, ConfigError, SnapshotMethod};
use crate::core::CoreConfig;
pub use crate::server::stage::overload::OverloadSettings;
use crate::wire;

/// Everything the server derives from a configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ledger: ledger::Config,
    pub core: CoreConfig,
    pub stage: StageSettings,
    pub connection: ConnectionSettings,
    pub link: Option<LinkPlan>,
}

/// The ledger stage: its queue and batches, its clock's work, its log and its snapshots.
#[derive(Clone, Debug)]
pub struct StageSettings {
    /// Requests the stage holds at most, queued or waiting for the log (`[limits]
    /// queue_depth_max`).
    pub queue_depth_max: usize,
    /// Requests a batch takes, at most, but for the last frame, which is never split
    /// (`[limits] stage_batch_len_max`, at least 1).
    pub stage_batch_len_max: usize,
    /// How often due holds are expired, busy or idle (`[authorization] expiry_tick_ms`).
    pub expiry_tick: Duration,
    /// Holds a pass expires at most (`[authorization] expiry_pass_max`).
    pub expiry_pass_max: u32,
    /// The open window closes every this many nanoseconds; 0: only on request (`[clearing]
    /// close_every_seconds`).
    pub close_every_ns: u64,
    /// Where settlement reports are written.
    pub report_dir: PathBuf,
    /// Where the log lives (`data_dir/wal`), unless the server is given a storage.
    pub wal_dir: PathBuf,
    pub wal: WalOptions,
    pub snapshots: SnapshotSettings,
    /// Reserve the memory for this many remembered requests at start (`[ledger] preallocate`,
    /// `transfers_remembered_max`); `None`: grow into it while serving.
    pub preallocate_requests: Option<u64>,
    /// The data directory (the replica's hard state lives there).
    pub data_dir: PathBuf,
    pub replica: ReplicaSettings,
    /// When new payments are shed (`[overload]`).
    pub overload: OverloadSettings,
}

/// The replica: its Raft node, its clock, and who the members are (`[cluster]`; without it, a
/// cluster of one).
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    pub node: crate::replica::NodeConfig,
    /// One Raft tick.
    pub tick: Duration,
    /// Every member: (id, client address, http address).
    pub members: Vec<(u64, std::net::SocketAddr, Option<std::net::SocketAddr>)>,
    /// Messages from the link waiting for the stage, at most (past it they are dropped).
    pub inbox_max: usize,
}

/// The link to the other replicas, if there are any.
#[derive(Clone, Debug)]
pub struct LinkPlan {
    pub settings: crate::cluster::transport::LinkSettings,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Snapshots: where, when, how, and how many are kept (`[snapshot]`).
#[derive(Clone, Debug)]
pub struct SnapshotSettings {
    /// `data_dir/snapshots`.
    pub dir: PathBuf,
    pub cadence: CadenceSettings,
    /// Snapshot files kept, at least 1.
    pub keep: usize,
    pub on_shutdown: bool,
    pub method: SnapshotMethod,
    /// The log's largest record, for the builds that read it (`WalOptions`).
    pub record_size_max_bytes: u32,
}

/// When a snapshot is due (`snapshots::Cadence`).
#[derive(Clone, Debug)]
pub struct CadenceSettings {
    /// Log records appended since the last snapshot that make one due; 0: never on this count.
    pub every_records: u64,
    /// Log bytes appended since the last snapshot that make one due; 0: never on this count.
    pub every_wal_bytes: u64,
    /// A due snapshot waits while the switch takes at least this many requests a second; 0:
    /// never waits.
    pub defer_above_requests_per_second: u64,
    /// ... until the log since the last reaches this many times the counts (at least 1).
    pub defer_at_most: u64,
}

/// The connections: how many, what each may send, and what may wait on the server.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// What the decoder accepts, and the largest response frame.
    pub wire: wire::Limits,
    pub connections_max: usize,
    /// Bidirectional streams a connection may have open (QUIC flow control).
    pub streams_per_connection_max: u32,
    /// Requests a connection may have received and not had answered.
    pub in_flight_per_connection_max: usize,
    /// Protocol errors a connection is allowed; the next closes it.
    pub malformed_frames_max: u32,
    /// Bytes of frames being received and not yet whole, all connections together.
    pub unfinished_frame_bytes_max: usize,
    /// Bytes a connection may have sent that the server has not read, all its streams
    /// together (QUIC's connection receive window).
    pub receive_window_bytes: u32,
    /// Each operation's deadline when a frame gives no budget (`[deadlines]`).
    pub deadlines: DeadlineDefaults,
}

/// Each operation's default deadline, looked up by its code without a branch per operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadlineDefaults {
    /// Milliseconds by `Op::as_u8`; 0: none.
    by_code_ms: [u16; Self::CODES],
}

impl DeadlineDefaults {
    /// One past the highest operation code.
    const CODES: usize = 0x31;

    /// No operation has a deadline of its own.
    pub const NONE: DeadlineDefaults = DeadlineDefaults {
        by_code_ms: [0; Self::CODES],
    };

    fn from_config(deadlines: &super::Deadlines) -> Self {
        let mut out = Self::NONE;
        for (_, op, ms) in deadlines.by_op() {
            if let Some(slot) = out.by_code_ms.get_mut(usize::from(op.as_u8())) {
                // Validated to fit.
                *slot = u16::try_from(ms).unwrap_or(0);
            }
        }
        out
    }

    /// `op`'s deadline after its frame was read, if it has one.
    pub fn of(&self, op: wire::Op) -> Option<Duration> {
        match self.by_code_ms.get(usize::from(op.as_u8())) {
            Some(&ms) if ms > 0 => Some(Duration::from_millis(u64::from(ms))),
            _ => None,
        }
    }
}

impl Settings {
    /// Derives every component's settings from `config`, which `Config::parse` validated;
    /// `origin` names it in an error (only the fee schedule's parse can fail, and validation
    /// has parsed it once already).
    pub fn derive(config: &Config, origin: &str) -> Result<Settings, ConfigError> {
        let wal = wal_options(config);
        Ok(Settings {
            ledger: ledger_config(config),
            core: core_config(config, origin)?,
            stage: stage_settings(config, wal),
            connection: connection_settings(config),
            link: link_plan(config),
        })
    }
}

/// The ledger's own configuration. Its batches are a stage batch's waves, which the core cuts
/// at the ledger's bound: at least the ledger's default, and `[limits] batch_len_max` if
/// larger.
pub fn ledger_config(config: &Config) -> ledger::Config {
    let l = &config.ledger;
    ledger::Config {
        shards: l.shards,
        accounts_max: l.accounts_max,
        transfers_remembered_max: l.transfers_remembered_max,
        pending_max: l.pending_max,
        batch_len_max: ledger::Config::default()
            .batch_len_max
            .max(usize::from(config.limits.batch_len_max)),
    }
}

fn core_config(config: &Config, origin: &str) -> Result<CoreConfig, ConfigError> {
    let a = &config.authorization;
    Ok(CoreConfig {
        default_expiry_seconds: a.default_expiry_seconds,
        expiry_seconds_max: a.expiry_seconds_max,
        requests_remembered_max: usize_from(config.ledger.transfers_remembered_max),
        fees: Arc::new(config.fee_schedule(origin)?),
        windows_kept: usize_from(u64::from(config.clearing.windows_kept)),
        closes_logged_bytes_max: config.limits.closes_logged_bytes_max(),
        participants_max: usize_from(config.ledger.participants_max),
    })
}

/// The log's options: `[wal]`, the rest at the log's defaults.
fn wal_options(config: &Config) -> WalOptions {
    let w = &config.wal;
    WalOptions {
        segment_size_max_bytes: w.segment_bytes_max,
        group_size_max_bytes: usize_from(w.group_bytes_max),
        queue_depth_max: usize_from(u64::from(w.queue_depth_max)),
        durability: match w.durability {
            super::Durability::Fsync => wal::Durability::Fsync,
            super::Durability::None => wal::Durability::None,
        },
        prepare_segments: w.prepare_segments,
        // A record holds a batch's entry behind the replica's framing of it.
        record_size_max_bytes: wal::RECORD_SIZE_MAX_DEFAULT
            + crate::replica::record::FRAMING_BYTES_MAX as u32,
        ..WalOptions::default()
    }
}

fn stage_settings(config: &Config, wal: WalOptions) -> StageSettings {
    let l = &config.limits;
    let record_bytes_max = wal.record_size_max_bytes as usize;
    StageSettings {
        queue_depth_max: usize_from(u64::from(l.queue_depth_max)),
        stage_batch_len_max: usize::from(l.stage_batch_len_max).max(1),
        expiry_tick: Duration::from_millis(u64::from(config.authorization.expiry_tick_ms)),
        expiry_pass_max: config.authorization.expiry_pass_max,
        close_every_ns: config
            .clearing
            .close_every_seconds
            .saturating_mul(1_000_000_000),
        report_dir: config.report_dir(),
        wal_dir: config.server.data_dir.join("wal"),
        snapshots: snapshot_settings(config, &wal),
        wal,
        preallocate_requests: config
            .ledger
            .preallocate
            .then_some(config.ledger.transfers_remembered_max),
        data_dir: config.server.data_dir.clone(),
        replica: replica_settings(config, record_bytes_max),
        overload: OverloadSettings {
            enabled: config.overload.enabled,
            target: Duration::from_millis(u64::from(config.overload.target_ms)),
            interval: Duration::from_millis(u64::from(config.overload.interval_ms)),
        },
    }
}

/// A cluster of one when there is no `[cluster]`: member 1, on this switch's own addresses.
fn replica_settings(config: &Config, record_bytes_max: usize) -> ReplicaSettings {
    use crate::cluster::config::defaults;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let joining = config.cluster.as_ref().is_some_and(|c| c.join);
    let (id, members, tick_ms, election, heartbeat, message_bytes, in_flight, queue) =
        match &config.cluster {
            Some(c) => (
                c.id,
                c.addresses(),
                c.tick_ms,
                c.election_ticks,
                c.heartbeat_ticks,
                c.message_bytes_max,
                c.messages_in_flight_max,
                c.queue_messages_max,
            ),
            None => (
                1,
                vec![(1, config.server.listen, Some(config.metrics.listen))],
                defaults::tick_ms(),
                defaults::election_ticks(),
                defaults::heartbeat_ticks(),
                defaults::message_bytes_max(),
                defaults::messages_in_flight_max(),
                defaults::queue_messages_max(),
            ),
        };
    ReplicaSettings {
        node: crate::replica::NodeConfig {
            id,
            voters: if joining {
                Vec::new()
            } else {
                members.iter().map(|m: &(u64, _, _)| m.0).collect()
            },
            election_ticks: election as usize,
            heartbeat_ticks: heartbeat as usize,
            message_bytes_max: message_bytes,
            messages_in_flight_max: in_flight as usize,
            seed,
            record_bytes_max,
        },
        tick: Duration::from_millis(u64::from(tick_ms)),
        members,
        inbox_max: queue as usize,
    }
}

fn link_plan(config: &Config) -> Option<LinkPlan> {
    let c = config.cluster.as_ref()?;
    let peers = c.peers();
    Some(LinkPlan {
        settings: crate::cluster::transport::LinkSettings {
            id: c.id,
            listen: c.replica_listen,
            peers,
            frame_bytes_max: u32::try_from(c.message_bytes_max.saturating_mul(2) + (1 << 20))
                .unwrap_or(u32::MAX),
            queue_messages_max: c.queue_messages_max as usize,
            snapshot_bytes_max: c.snapshot_bytes_max,
            snapshot_dir: config.server.data_dir.join("snapshots"),
            connect_timeout: Duration::from_millis(
                u64::from(c.tick_ms) * u64::from(c.election_ticks),
            ),
        },
        cert_file: c.cert_file.clone(),
        key_file: c.key_file.clone(),
    })
}

fn snapshot_settings(config: &Config, wal: &WalOptions) -> SnapshotSettings {
    let s = &config.snapshot;
    SnapshotSettings {
        dir: config.server.data_dir.join("snapshots"),
        cadence: CadenceSettings {
            every_records: s.every_records,
            every_wal_bytes: s.every_wal_bytes,
            defer_above_requests_per_second: s.defer_above_requests_per_second,
            defer_at_most: s.defer_at_most.max(1),
        },
        keep: usize::try_from(s.keep)
            .unwrap_or(SNAPSHOT_KEEP_DEFAULT)
            .max(1),
        on_shutdown: s.on_shutdown,
        method: s.method,
        record_size_max_bytes: wal.record_size_max_bytes,
    }
}

fn connection_settings(config: &Config) -> ConnectionSettings {
    let l = &config.limits;
    ConnectionSettings {
        wire: wire::Limits {
            frame_len_max: l.frame_bytes_max,
            batch_len_max: l.batch_len_max,
        },
        connections_max: usize_from(u64::from(l.connections_max)),
        streams_per_connection_max: l.streams_per_connection_max,
        in_flight_per_connection_max: usize_from(u64::from(l.in_flight_per_connection_max)),
        malformed_frames_max: l.malformed_frames_max,
        unfinished_frame_bytes_max: usize_from(l.unfinished_frame_bytes_max),
        receive_window_bytes: connection_receive_window(l.frame_bytes_max),
        deadlines: DeadlineDefaults::from_config(&config.deadlines),
    }
}

/// Bytes a connection may have in flight to the server, unread, over all its streams: two
/// largest frames, and at least 8 MiB so that pipelining never waits on it.
fn connection_receive_window(frame_bytes_max: u32) -> u32 {
    frame_bytes_max.saturating_mul(2).max(8 << 20)
}

/// A count from the configuration as a `usize`; past the platform's, as many as it holds.
fn usize_from(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each key lands in its component's settings, converted without loss: a key wired to
    /// the wrong field, or left at a default, shows here.
    #[test]
    fn every_key_reaches_its_component() {
        let text = "\
            [server]\ndata_dir = \"/d\"\n\
            [limits]\nframe_bytes_max = 2000000\nbatch_len_max = 100\nconnections_max = 7\n\
            streams_per_connection_max = 9\nin_flight_per_connection_max = 11\n\
            queue_depth_max = 13\nmalformed_frames_max = 3\nstage_batch_len_max = 37\n\
            unfinished_frame_bytes_max = 5000000\n\
            [ledger]\nshards = 4\naccounts_max = 17\ntransfers_remembered_max = 19\n\
            pending_max = 5\nparticipants_max = 23\npreallocate = true\n\
            [wal]\ndurability = \"none\"\nsegment_bytes_max = 29\ngroup_bytes_max = 31\n\
            queue_depth_max = 37\nprepare_segments = true\n\
            [snapshot]\nevery_records = 41\nevery_wal_bytes = 43\nkeep = 3\n\
            on_shutdown = false\ndefer_above_requests_per_second = 47\ndefer_at_most = 2\n\
            method = \"capture\"\n\
            [authorization]\ndefault_expiry_seconds = 53\nexpiry_seconds_max = 59\n\
            expiry_tick_ms = 61\nexpiry_pass_max = 62\n\
            [clearing]\nclose_every_seconds = 67\nwindows_kept = 71\n\
            report_dir = \"/r\"\n\
            [clearing.fees]\npurchase_percent = \"0.5\"\n\
            [deadlines]\nauthorize_ms = 73\nsale_ms = 0\ncapture_ms = 65535\necho_ms = 79\n\
            [overload]\nenabled = false\ntarget_ms = 83\ninterval_ms = 89\n";
        let config = Config::parse(text, "x.toml").expect("valid");
        let s = Settings::derive(&config, "x.toml").expect("derives");

        assert_eq!(
            (s.ledger.shards, s.ledger.accounts_max, s.ledger.pending_max),
            (4, 17, 5)
        );
        assert_eq!(s.ledger.transfers_remembered_max, 19);
        assert_eq!(
            s.ledger.batch_len_max,
            ledger::Config::default().batch_len_max
        );

        assert_eq!(
            (s.core.default_expiry_seconds, s.core.expiry_seconds_max),
            (53, 59)
        );
        assert_eq!(
            (s.core.requests_remembered_max, s.core.participants_max),
            (19, 23)
        );
        assert_eq!(s.core.windows_kept, 71);
        assert_eq!(s.core.fees.purchase.percent.to_string(), "0.5");
        assert_eq!(
            s.core.closes_logged_bytes_max,
            crate::core::closes_logged_bytes_max(100)
        );

        let stage = &s.stage;
        assert_eq!((stage.queue_depth_max, stage.stage_batch_len_max), (13, 37));
        assert_eq!(stage.expiry_tick, Duration::from_millis(61));
        assert_eq!(stage.expiry_pass_max, 62);
        assert_eq!(stage.close_every_ns, 67_000_000_000);
        assert_eq!(stage.report_dir, PathBuf::from("/r"));
        assert_eq!(stage.wal_dir, PathBuf::from("/d/wal"));
        assert_eq!(stage.preallocate_requests, Some(19));
        assert_eq!(
            stage.overload,
            OverloadSettings {
                enabled: false,
                target: Duration::from_millis(83),
                interval: Duration::from_millis(89),
            }
        );
        let w = &stage.wal;
        assert_eq!((w.segment_size_max_bytes, w.group_size_max_bytes), (29, 31));
        assert_eq!(w.queue_depth_max, 37);
        assert_eq!(w.durability, wal::Durability::None);
        assert!(w.prepare_segments);
        assert_eq!(
            w.record_size_max_bytes as usize,
            WalOptions::default().record_size_max_bytes as usize
                + crate::replica::record::FRAMING_BYTES_MAX
        );

        let snap = &stage.snapshots;
        assert_eq!(snap.dir, PathBuf::from("/d/snapshots"));
        assert_eq!((snap.keep, snap.on_shutdown), (3, false));
        assert_eq!(snap.method, SnapshotMethod::Capture);
        assert_eq!(snap.record_size_max_bytes, w.record_size_max_bytes);
        let c = &snap.cadence;
        assert_eq!((c.every_records, c.every_wal_bytes), (41, 43));
        assert_eq!(
            (c.defer_above_requests_per_second, c.defer_at_most),
            (47, 2)
        );

        let n = &s.connection;
        assert_eq!(
            (n.wire.frame_len_max, n.wire.batch_len_max),
            (2_000_000, 100)
        );
        assert_eq!((n.connections_max, n.streams_per_connection_max), (7, 9));
        assert_eq!(n.in_flight_per_connection_max, 11);
        assert_eq!(n.malformed_frames_max, 3);
        assert_eq!(n.unfinished_frame_bytes_max, 5_000_000);
        // Two largest frames are under the 8 MiB floor.
        assert_eq!(n.receive_window_bytes, 8 << 20);
        let ms = |ms| Some(Duration::from_millis(ms));
        assert_eq!(n.deadlines.of(wire::Op::Authorize), ms(73));
        assert_eq!(n.deadlines.of(wire::Op::Sale), None);
        assert_eq!(n.deadlines.of(wire::Op::Capture), ms(65_535));
        assert_eq!(n.deadlines.of(wire::Op::Echo), ms(79));
        assert_eq!(n.deadlines.of(wire::Op::Refund), None);
    }

    #[test]
    fn defaults_and_derived_floors() {
        let s = Settings::derive(&Config::default(), "default").expect("derives");
        assert_eq!(s.stage.wal_dir, PathBuf::from("./data/wal"));
        assert_eq!(s.stage.report_dir, PathBuf::from("./data/reports"));
        assert_eq!(s.stage.preallocate_requests, None);
        assert_eq!(s.stage.close_every_ns, 0);
        assert_eq!(s.stage.wal.durability, wal::Durability::Fsync);
        // Payments have a deadline of their own, nothing else does; shedding is on.
        for op in wire::Op::ALL {
            let want = matches!(op, wire::Op::Authorize | wire::Op::Sale)
                .then_some(Duration::from_millis(2000));
            assert_eq!(s.connection.deadlines.of(op), want, "{op:?}");
        }
        assert!(s.stage.overload.enabled);
        assert_eq!(s.stage.overload.target, Duration::from_millis(5));
        assert_eq!(s.stage.overload.interval, Duration::from_millis(100));
        // A batch limit past the ledger's default makes the ledger's batches as large.
        let mut config = Config::default();
        config.limits.batch_len_max = u16::MAX;
        assert_eq!(ledger_config(&config).batch_len_max, usize::from(u16::MAX));
        // The receive window: two largest frames, at least 8 MiB.
        assert_eq!(connection_receive_window(1 << 20), 8 << 20);
        assert_eq!(connection_receive_window(64 << 20), 128 << 20);
        assert_eq!(connection_receive_window(u32::MAX), u32::MAX);
    }
}
