//! End to end over QUIC on loopback: an in-process switch (fsync on, on a temporary directory)
//! and a pipelining client in the same process, sharing this machine's cores.
//!
//! `--mode max`: each of `--streams` streams keeps `--depth` frames of `--frame` authorizations
//! (or sales, with `--operation sale`; the figures keep the name "authorizations")
//! in flight for `--seconds`; reports authorizations/s and frame round-trip percentiles.
//! `--mode rate --rate R`: open loop at R authorizations/s (frames sent on schedule whatever the
//! latency, latency measured from the intended send time), for the latency at a given load.
//! `--pacing` says how the schedule is kept: `tokio-timer` (the default, as in every figure
//! before 2026-12-01 14:00 UTC) wakes each stream's task on tokio's millisecond timer, so the
//! streams' frames leave together, in bunches a millisecond apart; `thread` spaces the frames
//! evenly, each sent by a thread of its own that sleeps until it is due, as arrivals from many
//! independent clients would be.
//!
//! The load starts `--warmup-seconds` before the measured `--seconds`: frames sent before then
//! (a new connection's first frames, the first touches of memory) are reported apart, on a
//! line of their own, and count in none of the other figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use switch::client::{Client, Stream};
use switch::config::{Config, RouteConfig};
use switch::tls::Trust;
use switch::wire::{
    AccountFlags, AccountId, Amount, CardNumber, Currency, Operation, ParticipantId,
    ParticipantName, Request, RequestId, ResponseCode, Roles,
};

const CNY: Currency = Currency(156);
const CARDS: u64 = 1_000;
const MERCHANTS: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    Replay,
    Capture,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Holds that stay live for the whole run: nothing can be forgotten.
    Authorize,
    /// Single-phase payments, resolved at once: past `--remembered` requests, each new one
    /// forgets the oldest (the steady state of a switch that has run long enough).
    Sale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pacing {
    Thread,
    TokioTimer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Max,
    Rate,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "max")]
    mode: Mode,
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Frames in flight per stream (max mode).
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// What each request is.
    #[arg(long, value_enum, default_value = "authorize")]
    operation: Kind,
    /// Authorizations per frame.
    #[arg(long, default_value_t = 64)]
    frame: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Load sent before the measured seconds start, reported apart (0: none).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Authorizations per second (rate mode).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Log without fdatasync (not durable; report separately).
    #[arg(long)]
    no_fsync: bool,
    /// Log segments are filled with zeros ahead instead of growing as records are appended
    /// (`[wal] prepare_segments = true`).
    #[arg(long)]
    prepare_segments: bool,
    /// Requests (and ledger transfers) remembered.
    #[arg(long, default_value_t = 50_000_000)]
    remembered: u64,
    /// Reserve the memory for `--remembered` at start (`[ledger] preallocate`).
    #[arg(long)]
    preallocate: bool,
    /// Batches applied and waiting for the log (`[wal] queue_depth_max`).
    #[arg(long, default_value_t = switch::config::Config::default().wal.queue_depth_max)]
    wal_queue_depth: u32,
    /// How frames are sent on schedule in rate mode: `thread`, a thread of its own that
    /// sleeps until each frame is due; `tokio-timer`, each stream's task sleeps on tokio's
    /// timer, which wakes on whole milliseconds, so frames leave in bunches a millisecond apart.
    #[arg(long, value_enum, default_value_t = Pacing::TokioTimer)]
    pacing: Pacing,
    /// Requests the ledger stage takes into one batch, at most (`[limits]
    /// stage_batch_len_max`; frames are never split).
    #[arg(long, default_value_t = switch::config::Config::default().limits.stage_batch_len_max)]
    batch: u16,
    /// A snapshot is due after this many MiB of log (`[snapshot] every_wal_bytes`).
    #[arg(long, default_value_t = switch::config::Config::default().snapshot.every_wal_bytes >> 20)]
    snapshot_every_mib: u64,
    /// A due snapshot waits while the switch takes at least this many requests a second
    /// (`[snapshot] defer_above_requests_per_second`; 0: never waits).
    #[arg(long, default_value_t = switch::config::Config::default().snapshot.defer_above_requests_per_second)]
    snapshot_defer_above: u64,
    /// Tokio worker threads, shared by the client and the switch's network side (the ledger
    /// stage and the log writer have threads of their own).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// How a snapshot is made (`[snapshot] method`).
    #[arg(long, value_enum, default_value_t = Method::Replay)]
    snapshot_method: Method,
}

fn card(i: u64) -> String {
    format!("62{:014}", i)
}

/// The cards' numbers, formatted once: the client's own work is not what is measured.
fn numbers() -> &'static [CardNumber] {
    static NUMBERS: std::sync::OnceLock<Vec<CardNumber>> = std::sync::OnceLock::new();
    NUMBERS.get_or_init(|| {
        (0..CARDS)
            .map(|i| CardNumber::new(&card(i)).expect("digits"))
            .collect()
    })
}

/// Frame round trips and outcomes, shared by every task that sends.
#[derive(Clone)]
struct Recorder {
    measured_from: Instant,
    /// From when each frame was due (in max mode, when it was sent).
    latency: Arc<Mutex<Histogram<u64>>>,
    /// From the moment each frame actually left: the schedule-based figure minus the
    /// client's own lateness.
    service: Arc<Mutex<Histogram<u64>>>,
    /// Frames due before `measured_from`, apart.
    warmup: Arc<Mutex<Histogram<u64>>>,
    approved: Arc<AtomicU64>,
    declined: Arc<AtomicU64>,
}

impl Recorder {
    fn new(measured_from: Instant) -> anyhow::Result<Self> {
        let histogram = || -> anyhow::Result<_> {
            Ok(Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
                1, 60_000_000, 3,
            )?)))
        };
        Ok(Recorder {
            measured_from,
            latency: histogram()?,
            service: histogram()?,
            warmup: histogram()?,
            approved: Arc::default(),
            declined: Arc::default(),
        })
    }

    fn record(&self, due: Instant, left: Instant, responses: &[switch::wire::Response]) {
        if due < self.measured_from {
            self.warmup
                .lock()
                .saturating_record(due.elapsed().as_micros() as u64);
            return;
        }
        self.latency
            .lock()
            .saturating_record(due.elapsed().as_micros() as u64);
        self.service
            .lock()
            .saturating_record(left.elapsed().as_micros() as u64);
        let ok = responses
            .iter()
            .filter(|r| r.code == ResponseCode::Approved)
            .count();
        self.approved.fetch_add(ok as u64, Ordering::Relaxed);
        self.declined
            .fetch_add((responses.len() - ok) as u64, Ordering::Relaxed);
    }
}

/// Sends one frame of rate mode, due at `due`, and records its round trip.
async fn send_due(stream: Stream, requests: Vec<Request>, recorder: Recorder, due: Instant) {
    let left = Instant::now();
    if let Ok(responses) = stream.call(&requests).await {
        recorder.record(due, left, &responses);
    }
}

fn request(kind: Kind, id: u128) -> Request {
    let number = numbers()[((id as u64) % CARDS) as usize];
    let merchant = AccountId(1_000_000 + u128::from((id as u64) % MERCHANTS));
    let operation = match kind {
        Kind::Authorize => Operation::Authorize {
            number,
            merchant,
            amount: Amount(1),
            currency: CNY,
            expiry_secs: 3600,
        },
        Kind::Sale => Operation::Sale {
            number,
            merchant,
            amount: Amount(1),
            currency: CNY,
        },
    };
    Request {
        id: RequestId(id),
        operation,
    }
}

async fn setup(stream: &Stream) -> anyhow::Result<()> {
    let mut requests = vec![
        Request {
            id: RequestId(1),
            operation: Operation::CreateParticipant {
                participant: ParticipantId(2),
                roles: Roles::ISSUER,
                name: ParticipantName::new("issuer")?,
            },
        },
        Request {
            id: RequestId(2),
            operation: Operation::CreateParticipant {
                participant: ParticipantId(3),
                roles: Roles::ACQUIRER,
                name: ParticipantName::new("acquirer")?,
            },
        },
    ];
    let mut id = 10u128;
    for i in 0..CARDS {
        id += 1;
        requests.push(Request {
            id: RequestId(id),
            operation: Operation::CreateAccount {
                account: AccountId(10_000 + u128::from(i)),
                owner: ParticipantId(2),
                currency: CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: CardNumber::new(&card(i))?,
            },
        });
        id += 1;
        requests.push(Request {
            id: RequestId(id),
            operation: Operation::Fund {
                account: AccountId(10_000 + u128::from(i)),
                amount: Amount(1 << 40),
                currency: CNY,
            },
        });
    }
    for m in 0..MERCHANTS {
        id += 1;
        requests.push(Request {
            id: RequestId(id),
            operation: Operation::CreateAccount {
                account: AccountId(1_000_000 + u128::from(m)),
                owner: ParticipantId(3),
                currency: CNY,
                flags: AccountFlags(0),
                number: CardNumber::EMPTY,
            },
        });
    }
    for chunk in requests.chunks(1000) {
        for r in stream.call(chunk).await? {
            anyhow::ensure!(r.code == ResponseCode::Approved, "setup: {r:?}");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.metrics.listen = "127.0.0.1:0".parse()?;
    config.server.data_dir = dir.path().to_path_buf();
    config.ledger.pending_max = 50_000_000;
    config.ledger.transfers_remembered_max = args.remembered;
    config.ledger.preallocate = args.preallocate;
    config.limits.stage_batch_len_max = args.batch;
    config.snapshot.every_wal_bytes = args.snapshot_every_mib.saturating_mul(1 << 20);
    config.snapshot.defer_above_requests_per_second = args.snapshot_defer_above;
    config.snapshot.method = match args.snapshot_method {
        Method::Replay => switch::config::SnapshotMethod::Replay,
        Method::Capture => switch::config::SnapshotMethod::Capture,
    };
    config.limits.in_flight_per_connection_max = 1 << 20;
    if args.no_fsync {
        config.wal.durability = switch::config::Durability::None;
    }
    config.wal.prepare_segments = args.prepare_segments;
    config.wal.queue_depth_max = args.wal_queue_depth;
    config.routes = vec![RouteConfig {
        prefix: "62".into(),
        issuer: 2,
        pooled_account: None,
    }];
    // The client acts as the admin identity of the acquirer, 3: the admin sends payments only
    // for its own participant's merchants.
    config.tls.anonymous_participant = Some(3);
    config.tls.anonymous_is_admin = true;
    let running = switch::server::start(config, None).await?;
    let trust = Trust::Fingerprint(running.fingerprint.context("fingerprint")?);
    let client = Client::connect(running.quic_addr, &trust, None).await?;
    let first = client.stream().await?;
    setup(&first).await?;

    let measured_from = Instant::now() + Duration::from_secs(args.warmup_seconds);
    let deadline = measured_from + Duration::from_secs(args.seconds);
    let recorder = Recorder::new(measured_from)?;
    let next_id = Arc::new(AtomicU64::new(1 << 20));
    let mut streams = Vec::with_capacity(args.streams);
    for _ in 0..args.streams.max(1) {
        streams.push(client.stream().await?);
    }
    let frame = args.frame;
    let kind = args.operation;
    let requests = move |next_id: &AtomicU64| -> Vec<Request> {
        let base = next_id.fetch_add(frame as u64, Ordering::Relaxed);
        (0..frame as u64)
            .map(|i| request(kind, u128::from(base + i)))
            .collect()
    };
    let mut tasks = Vec::new();
    let mut pacer = None;
    match args.mode {
        Mode::Max => {
            // Each lane keeps one frame in flight; with `depth` lanes per stream, that many
            // frames are in flight on each stream at once (pipelining).
            for lane in 0..args.streams * args.depth {
                let stream = streams[lane % streams.len()].clone();
                let (recorder, next_id) = (recorder.clone(), next_id.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let requests = requests(&next_id);
                        let sent = Instant::now();
                        let Ok(responses) = stream.call(&requests).await else {
                            break;
                        };
                        recorder.record(sent, sent, &responses);
                    }
                }));
            }
        }
        Mode::Rate if args.pacing == Pacing::TokioTimer => {
            // Open loop, each stream on its own schedule, frame k of stream l due at
            // `(k × streams + l) × frame / rate` seconds, timed from then.
            let lanes = streams.len();
            let interval =
                Duration::from_secs_f64(frame as f64 * lanes as f64 / args.rate.max(1) as f64);
            let start = Instant::now();
            for (lane, stream) in streams.iter().enumerate() {
                let stream = stream.clone();
                let (recorder, next_id) = (recorder.clone(), next_id.clone());
                tasks.push(tokio::spawn(async move {
                    let mut intended = start + interval.mul_f64(lane as f64 / lanes as f64);
                    let mut calls = Vec::new();
                    while intended < deadline {
                        tokio::time::sleep_until(intended.into()).await;
                        let requests = requests(&next_id);
                        calls.push(tokio::spawn(send_due(
                            stream.clone(),
                            requests,
                            recorder.clone(),
                            intended,
                        )));
                        intended += interval;
                    }
                    for call in calls {
                        let _ = call.await;
                    }
                }));
            }
        }
        Mode::Rate => {
            // Open loop: frame k is due at `k × frame / rate` seconds, on stream k mod
            // streams, and is timed from then whatever the latency. A thread of its own keeps
            // the schedule: tokio's timer wakes up to a millisecond late, which would be
            // counted as the switch's latency; a sleeping thread wakes within tens of
            // microseconds. What lateness is left is still counted.
            let handle = tokio::runtime::Handle::current();
            let (recorder, next_id) = (recorder.clone(), next_id.clone());
            let per_frame = frame as f64 / args.rate.max(1) as f64;
            pacer = Some(std::thread::spawn(move || {
                let start = Instant::now();
                let mut calls = Vec::new();
                for k in 0u64.. {
                    let intended = start + Duration::from_secs_f64(k as f64 * per_frame);
                    if intended >= deadline {
                        break;
                    }
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    let requests = requests(&next_id);
                    let stream = streams[(k % streams.len() as u64) as usize].clone();
                    calls.push(handle.spawn(send_due(
                        stream,
                        requests,
                        recorder.clone(),
                        intended,
                    )));
                }
                calls
            }));
        }
    }
    tokio::time::sleep_until(measured_from.into()).await;
    let (started, cpu_before) = (Instant::now(), benches::cpu_seconds());
    if let Some(pacer) = pacer {
        let calls = tokio::task::spawn_blocking(move || pacer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
        tasks.extend(calls);
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = benches::cpu_seconds() - cpu_before;
    let h = recorder.latency.lock().clone();
    let service = recorder.service.lock().clone();
    let warmup = recorder.warmup.lock().clone();
    let (approved, declined) = (
        recorder.approved.load(Ordering::Relaxed),
        recorder.declined.load(Ordering::Relaxed),
    );
    println!(
        "mode={:?} operation={:?} streams={} depth={} frame={} fsync={} target_rate={} \
         pacing={} remembered={} preallocate={} prepare_segments={} wal_queue_depth={}",
        args.mode,
        args.operation,
        args.streams,
        args.depth,
        args.frame,
        !args.no_fsync,
        if args.mode == Mode::Rate {
            args.rate.to_string()
        } else {
            "-".into()
        },
        if args.mode == Mode::Rate {
            format!("{:?}", args.pacing)
        } else {
            "-".into()
        },
        args.remembered,
        args.preallocate,
        args.prepare_segments,
        args.wal_queue_depth
    );
    println!(
        "authorizations/s={:.0} approved={} declined={} frame_rtt_ms p50={:.2} p99={:.2} max={:.2}",
        approved as f64 / elapsed,
        approved,
        declined,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    // Client and server together: they share this process and the machine's cores.
    println!(
        "cpu_cores={:.2} cpu_us_per_authorization={:.2}",
        cpu / elapsed,
        cpu * 1e6 / (approved + declined).max(1) as f64
    );
    if args.mode == Mode::Rate {
        println!(
            "from_send_ms p50={:.2} p99={:.2} max={:.2}",
            service.value_at_quantile(0.5) as f64 / 1000.0,
            service.value_at_quantile(0.99) as f64 / 1000.0,
            service.max() as f64 / 1000.0
        );
    }
    if args.warmup_seconds > 0 {
        println!(
            "warmup_seconds={} frames={} frame_rtt_ms p50={:.2} p99={:.2} max={:.2} (not in the figures above)",
            args.warmup_seconds,
            warmup.len(),
            warmup.value_at_quantile(0.5) as f64 / 1000.0,
            warmup.value_at_quantile(0.99) as f64 / 1000.0,
            warmup.max() as f64 / 1000.0
        );
    }
    if std::env::var_os("SWITCH_RUN_METRICS").is_some() {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(running.http_addr)?;
        http.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")?;
        let mut text = String::new();
        http.read_to_string(&mut text)?;
        for line in text.lines().filter(|l| {
            l.starts_with("switch_request_seconds")
                || l.starts_with("switch_batch")
                || l.starts_with("switch_wal_append_seconds")
                || l.starts_with("switch_stage_apply_seconds")
                || l.starts_with("switch_snapshot")
        }) {
            println!("{line}");
        }
    }
    client.close().await;
    running.shutdown().await?;
    Ok(())
}
