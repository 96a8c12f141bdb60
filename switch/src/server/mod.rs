//! The server: QUIC endpoint, connection tasks, the ledger stage, metrics and shutdown.
//!
//! ```text
//! connection tasks ──(bounded queue; full → 91)──▶ ledger stage ──▶ journal (fsync)
//!        ▲                                                                 │
//!        └──────────── core responses, once what they depend on is durable ┘
//! ```
//!
//! Connection tasks decode frames, translate them to core requests and queue them. The ledger
//! stage is one thread: it takes everything queued (up to a batch), executes it in the core,
//! hands the commands to the journal and goes on to the next batch while the log writer syncs
//! (at most `[wal] queue_depth_max` records waiting). A batch's responses leave once its record
//! and every earlier one are durable (`stage/pipeline.rs`); the connection translates them to
//! the wire. While the log syncs, requests pile up, so the next batch is larger: the batch
//! grows with the load, and there is no timer to add latency when load is low.

pub mod connection;
pub mod files;
pub mod http;
pub mod lock;
pub mod replication;
pub mod snapshots;
pub mod stage;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;

use ledger::storage::{FileStorage, Storage};

use crate::config::settings::{ConnectionSettings, Settings};
use crate::config::{Config, LogFormat, TlsMode};
use crate::core::Core;
use crate::routing::RouteTable;
use crate::tls::{self, Fingerprint, Identities, ServerIdentity, ServerTls};

/// Sets up `tracing` as the configuration says; `RUST_LOG` overrides the level.
pub fn init_logging(log: &crate::config::Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    use std::io::IsTerminal;
    // Logs go to standard error; colour only when a person is watching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// An error as one line: its message, then each cause that the messages before it do not
/// already say, joined by ": ". Many errors print their cause in their own message and also
/// return it as their source, so `{:#}` would say it twice; and a message of several lines
/// (a TOML error's excerpt) would break a text log's one line per event.
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    if line.contains('\n') {
        line = line
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
    }
    line
}

/// The process's metrics recorder, installed once. Servers in one process (tests) share it.
fn metrics_recorder() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("switch_batch_requests".into()),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                            2048.0, 4096.0, 8192.0,
                        ],
                    )
                })
                .expect("the bucket lists above are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if something else installed a recorder first; then /metrics is empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// A running switch.
pub struct Running {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The server certificate's fingerprint, for clients that pin it.
    pub fingerprint: Option<Fingerprint>,
    shutdown: Arc<tokio::sync::Notify>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// `ready quic=ADDR http=ADDR fingerprint=HEX` (`fingerprint=none` without a certificate
    /// fingerprint), as `switch serve` prints it once it is serving.
    pub fn ready_line(&self) -> String {
        let fingerprint = self
            .fingerprint
            .map_or_else(|| "none".to_string(), |f| f.to_string());
        format!(
            "ready quic={} http={} fingerprint={fingerprint}",
            self.quic_addr, self.http_addr
        )
    }

    /// Stops accepting, drains what is in flight, syncs the journal and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.notify_one();
        self.done.await.context("server task")?
    }
}

/// Runs the switch until SIGTERM or SIGINT, then shuts down cleanly.
pub fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.io_threads())
        .enable_all()
        .thread_name("switch-io")
        .build()
        .context("starting the runtime")?;
    let source = match &config_path {
        Some(path) => path.display().to_string(),
        None => "embedded default".to_string(),
    };
    runtime.block_on(async {
        let running = start_on(config, config_path, source, None::<FileStorage>).await?;
        // Before the ready line: a supervisor may stop the switch the moment it reads it, and
        // a signal with no handler yet would kill the process without draining.
        let stop = stop_signals();
        // The one line on standard output (logs go to standard error), for supervisors and
        // tests: recovery is done, and these are the addresses actually bound (port 0 in the
        // configuration lets the system choose).
        println!("{}", running.ready_line());
        stop.await;
        tracing::info!("shutting down: no new connections, draining requests in flight");
        running.shutdown().await
    })
}

/// Installs the handlers of SIGTERM and SIGINT now; the future ends at the first of them.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            let (Ok(mut term), Ok(mut int)) = signals else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Recovers state, binds the endpoints and starts serving. Returns once traffic is accepted.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Running> {
    let source = source_of(config_path.as_deref());
    start_on(config, config_path, source, None::<FileStorage>).await
}

/// `start`, with the log on `storage` instead of `data_dir/wal` (tests use a simulated disk
/// that fails on demand). The TLS material still lives in `data_dir`.
pub async fn start_with_storage<S: Storage + Clone>(
    config: Config,
    config_path: Option<PathBuf>,
    storage: S,
) -> anyhow::Result<Running> {
    let source = source_of(config_path.as_deref());
    start_on(config, config_path, source, Some(storage)).await
}

/// Where the configuration of a switch started in a program came from, for the messages that
/// name it.
fn source_of(path: Option<&std::path::Path>) -> String {
    match path {
        Some(path) => path.display().to_string(),
        None => "given by the program (no file)".to_string(),
    }
}

/// `source` names where the configuration came from, in errors and the start-up log.
async fn start_on<S: Storage + Clone>(
    config: Config,
    config_path: Option<PathBuf>,
    source: String,
    storage: Option<S>,
) -> anyhow::Result<Running> {
    tracing::info!(
        version = crate::VERSION,
        commit = crate::COMMIT,
        config = %source,
        data_dir = %config.server.data_dir.display(),
        "switch starting"
    );
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let recovered = recover(Arc::new(config), config_path, &source, storage).await?;
    serve(recovered, &source)
}

/// A switch whose state is recovered, not yet serving.
struct Recovered {
    config: Arc<Config>,
    lock: lock::DataDirLock,
    server_tls: ServerTls,
    metrics_handle: PrometheusHandle,
    http_listener: tokio::net::TcpListener,
    connection_settings: ConnectionSettings,
    routes: Arc<RwLock<Arc<RouteTable>>>,
    files: Arc<files::Files>,
    stage: stage::Stage,
}

/// Takes the data directory, checks the TLS material, binds the metrics address, and
/// recovers the ledger stage (from `storage`, or the data directory's log).
async fn recover<S: Storage + Clone>(
    config: Arc<Config>,
    config_path: Option<PathBuf>,
    source: &str,
    storage: Option<S>,
) -> anyhow::Result<Recovered> {
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    // Before anything in the directory is read or written, and held until the switch stops.
    let lock = lock::DataDirLock::acquire(data_dir)?;
    // Before recovery, which can take minutes: a bad certificate or key fails the start now.
    let server_tls = server_tls(&config, source)?;
    let metrics_handle = metrics_recorder();
    telemetry::register();
    let http_listener = http::bind(config.metrics.listen)
        .await
        .with_context(|| format!("binding metrics address {}", config.metrics.listen))?;

    let settings = Settings::derive(&config, "configuration")?;
    let routes = Arc::new(RwLock::new(Arc::new(config.route_table("configuration")?)));
    let files = Arc::new(files::Files::new(
        config.clone(),
        config_path,
        routes.clone(),
        settings.stage.report_dir.clone(),
    ));
    let ledger = Arc::new(ledger::Ledger::new(settings.ledger)?);
    let core = Core::new(ledger, settings.core, routes.read().clone());
    let mut stage = match storage {
        Some(storage) => stage::Stage::recover_on(core, settings.stage, storage),
        None => stage::Stage::recover(core, settings.stage),
    }
    .context("recovering state")?;
    if let Some(plan) = settings.link {
        let identity = ServerIdentity::from_pem_files(&plan.cert_file, &plan.key_file)
            .context("the replica certificate ([cluster] cert_file, key_file)")?;
        let link = crate::cluster::transport::Link::start(plan.settings, identity, stage.inbox())
            .context("starting the link to the other replicas")?;
        tracing::info!(replica_addr = %link.local_addr(), "listening for the other replicas");
        files.attach_cluster(link.clone(), stage.replica());
        stage.attach(link);
    }
    Ok(Recovered {
        config,
        lock,
        server_tls,
        metrics_handle,
        http_listener,
        connection_settings: settings.connection,
        routes,
        files,
        stage,
    })
}

/// Binds the QUIC endpoint and starts the stage, `/metrics` and the connections.
fn serve(recovered: Recovered, source: &str) -> anyhow::Result<Running> {
    let Recovered {
        config,
        lock,
        server_tls,
        metrics_handle,
        http_listener,
        connection_settings,
        routes,
        files,
        stage,
    } = recovered;
    let fingerprint = server_tls.fingerprint();
    let identities = identities(&config);
    let endpoint = quic_endpoint(server_tls, &connection_settings, config.server.listen)?;
    let (quic_addr, http_addr) = (endpoint.local_addr()?, http_listener.local_addr()?);
    let scrape = telemetry::Scrape::new(metrics_handle, stage.wal_bytes());
    let replica = stage.replica();
    let membership = stage.membership();
    let overload = stage.overload();
    let (queue, stage_thread) = stage.spawn(routes);
    let ready = Arc::new(AtomicBool::new(true));
    let failed = queue.failed_flag();
    tokio::spawn(http::serve(
        http_listener,
        Arc::new(scrape),
        ready.clone(),
        failed,
        replica.clone(),
    ));
    tracing::info!(
        version = crate::VERSION,
        commit = crate::COMMIT,
        config = %source,
        data_dir = %config.server.data_dir.display(),
        %quic_addr,
        %http_addr,
        alpn = "pswitch/1",
        "switch is serving"
    );
    let shared = Arc::new(connection::Shared::new(
        connection_settings,
        identities,
        queue,
        files.clone(),
        replica,
        membership,
        overload,
    ));
    let accept = tokio::spawn(connection::accept_loop(endpoint.clone(), shared.clone()));
    reload_on_hangup(files);
    let serving = Serving {
        ready,
        endpoint,
        accept,
        shared,
        stage_thread,
        lock,
    };
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let stop = shutdown.clone();
    let done = tokio::spawn(async move {
        stop.notified().await;
        serving.stop().await
    });
    Ok(Running {
        quic_addr,
        http_addr,
        fingerprint,
        shutdown,
        done,
    })
}

/// Who clients are, by certificate; a warning if clients without one are accepted.
fn identities(config: &Config) -> Identities {
    let identities = Identities::new(config);
    if let Some(anonymous) = identities.anonymous() {
        tracing::warn!(
            participant = anonymous.participant.0,
            admin = anonymous.admin,
            "clients without a certificate are accepted as this participant: for development only"
        );
    }
    identities
}

/// The QUIC endpoint, bound to `listen`, with the connections' stream and window limits.
fn quic_endpoint(
    server_tls: ServerTls,
    connection: &ConnectionSettings,
    listen: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = tls::server_crypto(server_tls)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| anyhow::anyhow!("QUIC TLS configuration: {e}"))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(connection.streams_per_connection_max.into())
        .max_concurrent_uni_streams(0u8.into())
        .max_idle_timeout(Some(
            Duration::from_secs(60).try_into().context("idle timeout")?,
        ))
        .keep_alive_interval(Some(Duration::from_secs(15)))
        // What a connection's streams may have sent that is not yet read, all streams
        // together (quinn's default has no bound but the streams' own windows).
        .receive_window(quinn::VarInt::from_u32(connection.receive_window_bytes));
    server_config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server_config, listen)
        .with_context(|| format!("binding QUIC address {listen}"))
}

/// SIGHUP reloads the routing table from the configuration file, without a restart.
fn reload_on_hangup(files: Arc<files::Files>) {
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let _ = files.reload_routes_blocking().await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(files);
}

/// What a running switch stops at shutdown, in the order `stop` stops it.
struct Serving {
    /// `/readyz`.
    ready: Arc<AtomicBool>,
    endpoint: quinn::Endpoint,
    accept: tokio::task::JoinHandle<()>,
    shared: Arc<connection::Shared>,
    stage_thread: std::thread::JoinHandle<anyhow::Result<()>>,
    lock: lock::DataDirLock,
}

/// The longest a stopping switch waits for its connections to finish closing.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(2);

impl Serving {
    /// No new connections; what is in flight drains (ten seconds at most), the stage answers
    /// what it holds and syncs its log, the connections close (`CLOSE_WAIT_MAX` at most), and
    /// the data directory is released.
    async fn stop(self) -> anyhow::Result<()> {
        let Serving {
            ready,
            endpoint,
            accept,
            shared,
            stage_thread,
            lock,
        } = self;
        ready.store(false, Ordering::Release);
        // No new connections; connections already open may finish what they sent.
        endpoint.set_server_config(None);
        accept.abort();
        shared.begin_drain();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while shared.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shared.close_queue();
        let result = tokio::task::spawn_blocking(move || stage_thread.join())
            .await
            .context("joining the ledger stage")?
            .map_err(|_| anyhow::anyhow!("the ledger stage panicked"))?;
        endpoint.close(
            quinn::VarInt::from_u32(crate::wire::AppErrorCode::ShuttingDown.as_u32()),
            b"shutting down",
        );
        // The closes reach the clients that are there at once. A connection whose client has
        // vanished keeps backing off its probe timeout, and quinn counts it closed only after
        // three of them: after seconds of silence, minutes. The wait is bounded.
        if tokio::time::timeout(CLOSE_WAIT_MAX, endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::info!(
                "connections still closing after {} s; stopping without them",
                CLOSE_WAIT_MAX.as_secs()
            );
        }
        // Only now may another switch take the directory: the stage and its log are done.
        drop(lock);
        result
    }
}

/// The server's certificate, key and client verification: read and checked (files), or
/// generated at first start (self-signed). Logs the certificate's fingerprint with how a
/// client pins it.
fn server_tls(config: &Config, source: &str) -> anyhow::Result<ServerTls> {
    let (tls, cert_file, generated) = match config.tls.mode {
        TlsMode::SelfSigned => {
            let dir = config.server.data_dir.join("tls");
            let (identity, generated) = ServerIdentity::self_signed(&dir)?;
            let cert_file = dir.join(tls::SELF_SIGNED_CERT_FILE);
            (
                ServerTls::without_client_auth(identity),
                cert_file,
                generated,
            )
        }
        TlsMode::Files => {
            let tls = ServerTls::from_files(&config.tls, source)?;
            let cert_file = config.tls.cert_file.clone().unwrap_or_default();
            (tls, cert_file, false)
        }
    };
    if let Some(fingerprint) = tls.fingerprint() {
        tracing::info!(
            generated,
            "server certificate SHA-256 fingerprint {fingerprint}; clients pin it with \
             `--fingerprint {fingerprint}` (loadgen, switch clearing); openssl shows it with \
             `{}`",
            openssl_fingerprint_command(&cert_file, config.tls.mode)
        );
    }
    Ok(tls)
}

/// The openssl command that prints the SHA-256 fingerprint of the certificate in `file` (DER
/// for the generated certificate, PEM for `tls.cert_file`).
fn openssl_fingerprint_command(file: &std::path::Path, mode: TlsMode) -> String {
    let inform = match mode {
        TlsMode::SelfSigned => "-inform DER ",
        TlsMode::Files => "",
    };
    format!(
        "openssl x509 {inform}-in {} -noout -fingerprint -sha256",
        file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that says its cause in its message and also returns it as its source, as
    /// `ConfigError::Read` and many others do.
    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("absent.toml");
        let error = anyhow::Error::from(Config::load(&missing).expect_err("no file"));
        let cause = error.chain().nth(1).expect("a source").to_string();
        assert!(!cause.is_empty());
        // `{:#}` says the cause twice: what `error_line` is for.
        assert_eq!(format!("{error:#}").matches(&cause).count(), 2, "{error:#}");
        let line = error_line(error.as_ref());
        assert_eq!(line.matches(&cause).count(), 1, "{line}");
        assert!(line.starts_with(&missing.display().to_string()), "{line}");
        // Context that does not say its cause is followed by it, once.
        let error = error.context("reloading routes");
        let line = error_line(error.as_ref());
        assert!(line.starts_with("reloading routes: "), "{line}");
        assert_eq!(line.matches(&cause).count(), 1, "{line}");
    }

    #[test]
    fn an_error_of_several_lines_is_one_line() {
        let error = Config::parse("[[routes]]\nprefix = 62\n", "x.toml").expect_err("not a string");
        assert!(error.to_string().contains('\n'), "{error}");
        let line = error_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("x.toml: ") && line.contains("prefix"),
            "{line}"
        );
    }
}
