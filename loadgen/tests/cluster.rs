//! `--target a,b,c`: loadgen against a cluster of three replicas, each a process of its own,
//! whose leader is killed with SIGKILL in the middle of the run. Loadgen follows the leader to
//! its successor, sends again what the dead one left unanswered, and still verifies every cent.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

// The child processes' helper is the switch tests' own: loadgen's tests cannot name the
// switch's binary, so each replica here is this test binary, serving in a process of its own.
#[path = "../../switch/tests/common/process.rs"]
mod process;
use process::Process;

/// Set in a child: the configuration of the replica it serves.
const CHILD_CONFIG: &str = "LOADGEN_TEST_REPLICA_CONFIG";
const CHILD_TEST: &str = "a_leader_killed_mid_run_is_followed_and_every_cent_verified";
/// A child replica stops by itself after this long, should nobody kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);
/// The whole test's bound, far above what it needs.
const LIMIT: Duration = Duration::from_secs(90);
const REPLICAS: usize = 3;

/// The child: one replica, started from its configuration as `switch serve` starts it, which
/// prints the same ready line.
fn child_replica(config: &Path) {
    let parsed = switch::config::Config::load(config).expect("the replica's configuration");
    switch::server::init_logging(&parsed.log);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let running = switch::server::start(parsed, Some(config.to_path_buf()))
            .await
            .expect("the replica starts");
        println!("{}", running.ready_line());
        tokio::time::sleep(CHILD_LIFETIME).await;
    });
}

/// Whether `port` is free on loopback for both UDP (QUIC) and TCP (http).
fn free(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
}

/// Three first ports, each with the two after it free too: the clients', the replicas' and
/// the http listeners of the three replicas. A cluster's members must know each other's
/// addresses before any of them starts, so the ports cannot be left to the OS at bind time;
/// they are taken below the OS's range of ephemeral ports (32768 on), where no client's
/// socket lands between this check and the replicas' start.
fn free_port_bases() -> [u16; 3] {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut bases = Vec::new();
    let mut candidate = 20_000 + (seed % 12_000) as u16;
    while bases.len() < 3 {
        candidate = if candidate + 3 >= 32_000 {
            20_000
        } else {
            candidate + 3
        };
        if (candidate..candidate + REPLICAS as u16).all(free) {
            bases.push(candidate);
        }
    }
    [bases[0], bases[1], bases[2]]
}

/// A member's own view from its `/cluster` endpoint: its role, or `None` if it does not
/// answer.
fn role(http: SocketAddr) -> Option<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&http, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /cluster HTTP/1.1\r\nhost: switch\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.take(1 << 20).read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    let view: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    view.get("role")?.as_str().map(str::to_string)
}

/// The index of the replica that says it leads, waiting at most `limit` for one to.
fn leader(https: &[SocketAddr], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(i) = https
            .iter()
            .position(|&h| role(h).as_deref() == Some("leader"))
        {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no replica leads after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three replicas, loadgen at a modest constant rate against all three; once the load runs,
/// the leader is killed with SIGKILL. Loadgen must ride through it: exit 0, verification
/// passed (every balance, hold and status against the model, across the failover), at least
/// one failover to another replica counted, with the time it took.
#[test]
fn a_leader_killed_mid_run_is_followed_and_every_cent_verified() {
    if let Ok(config) = std::env::var(CHILD_CONFIG) {
        child_replica(Path::new(&config));
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("a directory");
    let [client_port, replica_port, http_port] = free_port_bases();
    let made = switch::cluster::init::init(&switch::cluster::init::Plan {
        dir: dir.path().join("cluster"),
        hosts: vec![Ipv4Addr::LOCALHOST.into(); REPLICAS],
        client_port,
        replica_port,
        http_port,
    })
    .expect("the cluster's files");
    let mut replicas: Vec<Process> = made
        .configs
        .iter()
        .enumerate()
        .map(|(i, config)| {
            Process::spawn(
                Command::new(std::env::current_exe().expect("test binary"))
                    .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
                    .env(CHILD_CONFIG, config)
                    .env("RUST_LOG", "info"),
                &dir.path().join(format!("replica{}.log", i + 1)),
            )
            .expect("a replica process starts")
        })
        .collect();
    let mut https = Vec::new();
    for r in &mut replicas {
        let ready = r
            .ready(Duration::from_secs(30))
            .expect("the replica says where it listens");
        https.push(ready.http);
    }
    leader(&https, Duration::from_secs(20));

    let targets: Vec<String> = made
        .client_addresses
        .iter()
        .map(SocketAddr::to_string)
        .collect();
    let out = dir.path().join("report");
    let stderr = dir.path().join("loadgen.log");
    let mut loadgen = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--target", &targets.join(",")])
            .args(["--fingerprint", &made.client_fingerprint.to_string()])
            .args(["--timeout-secs", "2", "--failover-secs", "20"])
            .args([
                "--customers",
                "20",
                "--merchants",
                "2",
                "--expire-secs",
                "1",
            ])
            .args(["--connections", "2", "--streams", "2", "--quiet"])
            .arg("--out")
            .arg(&out)
            .args(["constant", "--rate", "150", "--duration", "8"]),
        &stderr,
    )
    .expect("loadgen starts");
    // Setup of 20 customers takes well under the 3 s; then the load runs for 8 s.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        loadgen.exited().is_none(),
        "loadgen ended before the leader was killed: {}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    // The leader now, which may have changed since the start.
    let killed = leader(&https, Duration::from_secs(10));
    replicas[killed].kill().expect("SIGKILL");
    let others: Vec<SocketAddr> = (0..REPLICAS)
        .filter(|&i| i != killed)
        .map(|i| https[i])
        .collect();
    leader(&others, Duration::from_secs(20));

    let status = loadgen
        .wait(LIMIT.saturating_sub(started.elapsed()))
        .expect("loadgen ends");
    let stdout = loadgen.stdout(Duration::from_secs(5));
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{stdout}{log}");
    assert!(stdout.contains("verification PASSED"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    let v = &report["verification"];
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(v["unanswered"], 0, "{v}");
    let checked = v["authorizations_checked"].as_u64().unwrap_or(0)
        + v["sales_checked"].as_u64().unwrap_or(0);
    assert!(checked > 100, "{v}");
    let cluster = &report["cluster"];
    assert_eq!(cluster["targets"].as_array().map(Vec::len), Some(3));
    // Replicas may also hand the lead over on their own under load: what is asserted holds
    // whatever happened besides the kill.
    let killed_addr = made.client_addresses[killed].to_string();
    let is_target = |v: &serde_json::Value| targets.iter().any(|t| v == t.as_str());
    assert!(is_target(&cluster["leader_at_start"]), "{cluster}");
    assert!(is_target(&cluster["leader_at_end"]), "{cluster}");
    assert_ne!(cluster["leader_at_end"], killed_addr.as_str(), "{cluster}");
    assert!(cluster["failovers"].as_u64() >= Some(1), "{cluster}");
    assert!(cluster["requests_resent"].as_u64() >= Some(1), "{cluster}");
    let failover = cluster["reconnections"]
        .as_array()
        .and_then(|all| all.iter().rev().find(|r| r["from"] == killed_addr.as_str()))
        .unwrap_or_else(|| panic!("no reconnection away from {killed_addr}: {cluster}"));
    assert!(is_target(&failover["to"]), "{cluster}");
    assert_ne!(failover["to"], killed_addr.as_str(), "{cluster}");
    assert_eq!(failover["new_leader"], true, "{cluster}");
    // Measured, and within what the timeouts allow: the answer timeout (2 s) to notice, the
    // election, and the search for the leader.
    let took_ms = failover["failover_ms"].as_f64().expect("a failover time");
    assert!(took_ms > 0.0 && took_ms < 20_000.0, "{cluster}");
    assert!(stdout.contains("to a new leader"), "{stdout}");
    assert!(started.elapsed() < LIMIT, "took {:?}", started.elapsed());
}
