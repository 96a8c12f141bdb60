//! `/metrics` of a switch started in this process: every family described and there from the
//! start, as docs/OPERATIONS.md lists them, at zero while nothing has happened; gauges back at
//! their idle value once traffic stops; the ledger's gauges following it; TLS handshake
//! failures counted by reason. A process has one metrics recorder, shared by every server in
//! it, so this file holds one test, which takes its steps in order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::{CNY, loopback_config, req, setup_requests};
use switch::client::{Client, Stream};
use switch::config::{Config, Identity as IdentityConfig, TlsMode};
use switch::server::{self, Running};
use switch::tls::{Fingerprint, ServerIdentity, Trust};
use switch::wire::{
    self, AccountFlags, AccountId, Amount, CardNumber, Operation, ParticipantId, RequestId,
    ResponseCode as Code,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Families whose value says something about the process or its files, not about traffic:
/// not zero on an idle switch.
const NOT_TRAFFIC: &[&str] = &[
    "switch_build_info",
    "switch_wal_bytes",
    // The replica's own state: a cluster of one elects itself and commits an entry at start.
    "switch_raft_term",
    "switch_raft_leader",
    "switch_raft_elections_total",
    "switch_raft_commit_index",
    "switch_raft_applied_index",
    // The entry a new leader writes at the start of its term.
    "switch_wal_append_seconds",
    // The ledger stage wakes for its Raft ticks, traffic or none.
    "switch_stage_wakeups_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_described_from_the_start_and_idle_gauges_return_to_zero() {
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = loopback_config(dir.path());
    config.authorization.expiry_tick_ms = 100;
    // A snapshot after every record: one is written soon after the first request.
    config.snapshot.every_records = 1;
    let running = start(config).await;

    // Right after start, before any request.
    let text = http_get(running.http_addr, "/metrics").await;
    let idle = Scrape::parse(&text);
    idle.assert_described();
    let documented = documented_families();
    let scraped: BTreeSet<String> = idle.families.keys().cloned().collect();
    assert_eq!(
        scraped.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "exported but not in docs/OPERATIONS.md"
    );
    assert_eq!(
        documented.difference(&scraped).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in docs/OPERATIONS.md but not exported from the start"
    );
    for (name, family) in &idle.families {
        if name.starts_with("process_") || NOT_TRAFFIC.contains(&name.as_str()) {
            continue;
        }
        for (series, value) in &family.samples {
            assert_eq!(*value, 0.0, "{series} on an idle switch");
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let build = idle.family("switch_build_info");
    assert_eq!(build.samples.len(), 1, "{:?}", build.samples);
    let (series, value) = &build.samples[0];
    assert!(
        series.contains(&format!("version=\"{version}\"")) && series.contains("commit=\""),
        "{series}"
    );
    assert_eq!(*value, 1.0);
    for positive in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "switch_wal_bytes",
    ] {
        assert!(idle.value(positive) > 0.0, "{positive}: {text}");
    }
    // Every known label value is there from the start.
    for series in [
        "switch_requests_total{op=\"authorize\",code=\"0\"}",
        "switch_requests_total{op=\"capture\",code=\"51\"}",
        "switch_storage_failures_total{cause=\"out_of_space\"}",
        "switch_tls_handshake_failures_total{reason=\"unknown_ca\"}",
        "switch_replica_messages_dropped_total{reason=\"unreachable\"}",
    ] {
        assert!(idle.series(series).is_some(), "{series} missing: {text}");
    }
    promtool_check(&text);

    // A burst: streams in parallel, each pipelining frames of authorizations, all sent
    // before any answer is awaited.
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    for r in call(&stream, &setup_requests(1_000_000)).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    const STREAMS: u128 = 8;
    const FRAMES: u128 = 10;
    const PER_FRAME: u128 = 20;
    let mut frames = tokio::task::JoinSet::new();
    for s in 0..STREAMS {
        let stream = client.stream().await.expect("stream");
        for f in 0..FRAMES {
            let requests: Vec<wire::Request> = (0..PER_FRAME)
                .map(|i| authorize(1_000 + (s * FRAMES + f) * PER_FRAME + i, 1))
                .collect();
            let stream = stream.clone();
            frames.spawn(async move { call(&stream, &requests).await });
        }
    }
    let mut approved = 0u128;
    while let Some(answers) = frames.join_next().await {
        for r in answers.expect("frame task") {
            assert_eq!(r.code, Code::Approved, "{r:?}");
            approved += 1;
        }
    }
    let holds = STREAMS * FRAMES * PER_FRAME;
    assert_eq!(approved, holds);
    // Every answer is in: nothing is queued, and the gauge says so.
    let busy = Scrape::parse(&http_get(running.http_addr, "/metrics").await);
    busy.assert_described();
    assert_eq!(
        busy.value("switch_queue_depth_requests"),
        0.0,
        "queue depth with every request answered"
    );
    assert_eq!(
        busy.series("switch_requests_total{op=\"authorize\",code=\"0\"}"),
        Some(holds as f64)
    );

    // The ledger's gauges, updated by the ledger stage about once a second: the holds just
    // made; the two accounts of the setup and the issuer's funding account (a deposit is
    // drawn from it), then five more accounts.
    wait_for(&running, "switch_holds_live", holds as f64).await;
    wait_for(&running, "switch_accounts", 3.0).await;
    let accounts: Vec<wire::Request> = (0..5u128)
        .map(|i| {
            req(
                10 + i,
                Operation::CreateAccount {
                    account: AccountId(400 + i),
                    owner: ParticipantId(3),
                    currency: CNY,
                    flags: AccountFlags(0),
                    number: CardNumber::EMPTY,
                },
            )
        })
        .collect();
    for r in call(&stream, &accounts).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    let capture = req(
        20,
        Operation::Capture {
            authorization: RequestId(1_000),
            amount: Amount(1),
        },
    );
    assert_eq!(call(&stream, &[capture]).await[0].code, Code::Approved);
    wait_for(&running, "switch_accounts", 8.0).await;
    wait_for(&running, "switch_holds_live", (holds - 1) as f64).await;
    // A snapshot has been written since the start.
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = Scrape::parse(&http_get(running.http_addr, "/metrics").await);
        if now.value("switch_snapshot_last_written_timestamp_seconds") >= started_at.floor() {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot timestamp");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A client that does not trust the server's certificate gives up on the handshake.
    let wrong_pin = Trust::Fingerprint(Fingerprint([7; 32]));
    assert!(
        tokio::time::timeout(LIMIT, Client::connect(running.quic_addr, &wrong_pin, None))
            .await
            .expect("refused in time")
            .is_err()
    );
    wait_for_series(
        running.http_addr,
        "switch_tls_handshake_failures_total{reason=\"refused_by_client\"}",
        1.0,
    )
    .await;
    client.close().await;
    let after = Scrape::parse(&http_get(running.http_addr, "/metrics").await);
    after.assert_described();
    assert_eq!(after.value("switch_connections"), 0.0);
    assert_eq!(after.value("switch_queue_depth_requests"), 0.0);
    // A cluster of one leads, in a term of its own election, and has committed what it answered.
    assert_eq!(after.value("switch_raft_leader"), 1.0);
    assert!(after.value("switch_raft_term") >= 1.0);
    assert!(after.value("switch_raft_elections_total") >= 1.0);
    // The replica's gauges are set every tenth of a second: past the election's entry, at least
    // one batch of the burst.
    let deadline = Instant::now() + LIMIT;
    while Scrape::parse(&http_get(running.http_addr, "/metrics").await)
        .value("switch_raft_commit_index")
        < 2.0
    {
        assert!(
            Instant::now() < deadline,
            "the commit index gauge never passed the burst"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after.value("switch_raft_follower_lag_entries"), 0.0);
    promtool_check(&http_get(running.http_addr, "/metrics").await);
    running.shutdown().await.expect("clean shutdown");

    mutual_tls_refusals_are_counted_by_reason(dir.path()).await;
}

/// Under mutual TLS, a client without a certificate and one whose certificate comes from
/// another CA are refused in the handshake: each counted under its own reason.
async fn mutual_tls_refusals_are_counted_by_reason(dir: &Path) {
    let pki = Pki::new("switch clients");
    let stranger = Pki::new("someone else's clients");
    let (server_cert, server_key) = pki.leaf("localhost", false);
    let (client_cert, client_key) = pki.leaf("client", true);
    let (wrong_cert, wrong_key) = stranger.leaf("client", true);
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    };
    let mut config = loopback_config(&dir.join("mutual"));
    config.tls.mode = TlsMode::Files;
    config.tls.cert_file = Some(write("server.pem", server_cert.pem()));
    config.tls.key_file = Some(write("server.key", server_key.serialize_pem()));
    config.tls.client_ca_file = Some(write("ca.pem", pki.ca_pem.clone()));
    config.identities = vec![IdentityConfig {
        fingerprint_sha256: Fingerprint::of(client_cert.der()).to_string(),
        participant: 3,
        admin: false,
    }];
    let running = start(config).await;
    let before = Scrape::parse(&http_get(running.http_addr, "/metrics").await);
    for (client_identity, reason) in [
        (None, "no_certificate"),
        (Some(identity(&wrong_cert, &wrong_key)), "unknown_ca"),
    ] {
        let series = format!("switch_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(before.series(&series), Some(0.0), "{series} before");
        // The client may finish its side before the server refuses it: then its first request
        // fails instead.
        if let Ok(client) = connect(&running, client_identity).await
            && let Ok(stream) = client.stream().await
        {
            let sent =
                tokio::time::timeout(Duration::from_secs(5), stream.call(&[authorize(1, 1)])).await;
            assert!(!matches!(sent, Ok(Ok(_))), "{reason}: served");
        }
        wait_for_series(running.http_addr, &series, 1.0).await;
    }
    let connected = connect(&running, Some(identity(&client_cert, &client_key)))
        .await
        .expect("a known client connects");
    connected.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// A scrape, by family: `# HELP` and `# TYPE` seen, and each sample line's series and value.
struct Scrape {
    families: BTreeMap<String, Family>,
}

#[derive(Default, Debug)]
struct Family {
    help: bool,
    kind: Option<String>,
    samples: Vec<(String, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let body = text.split_once("\r\n\r\n").map_or(text, |(_, body)| body);
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.splitn(4, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("#"), Some("HELP"), Some(name)) => {
                    families.entry(name.to_string()).or_default().help = true;
                }
                (Some("#"), Some("TYPE"), Some(name)) => {
                    families.entry(name.to_string()).or_default().kind =
                        words.next().map(str::to_string);
                }
                (Some("#"), _, _) => {}
                _ => {
                    let (series, value) = line.rsplit_once(' ').expect("series and value");
                    let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
                    samples.push((series.to_string(), value));
                }
            }
        }
        for (series, value) in samples {
            let name = series.split('{').next().unwrap_or_default();
            let family = if families.contains_key(name) {
                name
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| families.contains_key(*b)))
                    .unwrap_or_else(|| panic!("{series} belongs to no declared family"))
            };
            families
                .get_mut(family)
                .expect("declared")
                .samples
                .push((series, value));
        }
        Scrape { families }
    }

    fn assert_described(&self) {
        assert!(!self.families.is_empty());
        for (name, family) in &self.families {
            assert!(family.help, "{name} has no # HELP");
            assert!(family.kind.is_some(), "{name} has no # TYPE");
            assert!(!family.samples.is_empty(), "{name} has no sample");
        }
    }

    fn family(&self, name: &str) -> &Family {
        self.families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name}"))
    }

    /// The value of an unlabelled family.
    fn value(&self, name: &str) -> f64 {
        self.series(name)
            .unwrap_or_else(|| panic!("no series {name}: {:?}", self.families.get(name)))
    }

    fn series(&self, series: &str) -> Option<f64> {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
    }
}

/// The metric families docs/OPERATIONS.md lists: the first column of the table under
/// "Metrics and health".
fn documented_families() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md");
    let text = std::fs::read_to_string(&path).expect("docs/OPERATIONS.md");
    let section = text
        .split("\n## Metrics and health\n")
        .nth(1)
        .expect("a Metrics and health section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let families: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|cell| cell.split('`').next())
        .map(|name| name.split('{').next().unwrap_or_default().to_string())
        .collect();
    assert!(families.len() > 10, "{families:?}");
    families
}

/// `promtool check metrics` over a scrape, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, body)| body);
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("promtool is not installed: `promtool check metrics` skipped");
            return;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_for(running: &Running, name: &str, want: f64) {
    wait_for_series(running.http_addr, name, want).await;
}

async fn wait_for_series(addr: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let scrape = Scrape::parse(&http_get(addr, "/metrics").await);
        let value = scrape.series(series);
        if value == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value:?}, not {want}: {:?}",
            scrape
                .families
                .get(series.split('{').next().unwrap_or_default())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(config: Config) -> Running {
    tokio::time::timeout(LIMIT, server::start(config, None))
        .await
        .expect("start in time")
        .expect("server starts")
}

async fn connect(
    running: &Running,
    identity: Option<ServerIdentity>,
) -> Result<Client, switch::client::ClientError> {
    let trust = Trust::Fingerprint(running.fingerprint.expect("a certificate"));
    tokio::time::timeout(LIMIT, Client::connect(running.quic_addr, &trust, identity))
        .await
        .expect("connect in time")
}

async fn call(stream: &Stream, requests: &[wire::Request]) -> Vec<wire::Response> {
    tokio::time::timeout(LIMIT, stream.call(requests))
        .await
        .expect("answered in time")
        .expect("answered")
}

fn authorize(id: u128, amount: u64) -> wire::Request {
    req(
        id,
        Operation::Authorize {
            number: CardNumber::new("6200000000000001").expect("digits"),
            merchant: AccountId(300),
            amount: Amount(amount),
            currency: CNY,
            expiry_secs: 0,
        },
    )
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("http write");
    let mut text = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut text))
        .await
        .expect("http answer in time")
        .expect("http read");
    assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
    text
}

struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl Pki {
    /// A CA named `name`: a CA of the same name would be found as the issuer, and its
    /// certificates refused for their signature instead.
    fn new(name: &str) -> Pki {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Pki {
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(&self, name: &str, client: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        (params.signed_by(&key, &self.ca).expect("signed"), key)
    }
}

fn identity(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> ServerIdentity {
    ServerIdentity {
        chain: vec![cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    }
}
