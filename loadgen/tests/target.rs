//! `--target`: runs against a switch that has seen other things. Two runs one after the other
//! both verify; a switch without the route for loadgen's cards is refused before any money
//! moves, with the route to add; a setup refusal is said in words; a host name is a target;
//! and a switch killed in the middle of a run stops the run (exit 2) instead of verifying what
//! cannot be read.

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use loadgen::config::{Cli, Options};
use switch::client::Client;
use switch::config::{Config, RouteConfig};
use switch::server::Running;
use switch::tls::Trust;
use switch::wire::{
    AccountId, BalanceTarget, Operation, ParticipantId, ParticipantName, Request, RequestId,
    ResponseCode, Roles,
};

// The child processes' helper is the switch tests' own: loadgen's tests cannot name the
// switch's binary, so the switch here is this test binary, serving in a process of its own.
#[path = "../../switch/tests/common/process.rs"]
mod process;
use process::Process;

/// A bound on each whole test, far above what it needs.
const LIMIT: Duration = Duration::from_secs(120);

/// A switch on loopback in this process, on its own runtime, with a temporary data directory.
struct Switch {
    runtime: tokio::runtime::Runtime,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, route: bool) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("literal");
    config.metrics.listen = "127.0.0.1:0".parse().expect("literal");
    config.server.data_dir = dir.to_path_buf();
    if route {
        config.routes = vec![RouteConfig {
            prefix: "62".into(),
            issuer: 2,
            pooled_account: None,
        }];
    }
    config
}

impl Switch {
    fn start(route: bool) -> Switch {
        let dir = tempfile::tempdir().expect("a directory");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let running = runtime
            .block_on(switch::server::start(config(dir.path(), route), None))
            .expect("the switch starts");
        Switch {
            runtime,
            running: Some(running),
            _dir: dir,
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    fn fingerprint(&self) -> String {
        self.running().fingerprint.expect("self-signed").to_string()
    }

    /// Sends one request as the anonymous admin and returns its code.
    fn ask(&self, operation: Operation) -> ResponseCode {
        let running = self.running();
        let trust = Trust::Fingerprint(running.fingerprint.expect("self-signed"));
        let addr = running.quic_addr;
        self.runtime.block_on(async {
            let client = Client::connect(addr, &trust, None).await.expect("connects");
            let stream = client.stream().await.expect("a stream");
            let request = Request {
                id: RequestId(u128::from(std::process::id()) << 64 | 0x5eed),
                operation,
            };
            let code = stream.call(&[request]).await.expect("answered")[0].code;
            client.close().await;
            code
        })
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime
                .block_on(running.shutdown())
                .expect("the switch stops cleanly");
        }
    }
}

/// A short constant run against `target`, with `extra` common flags.
fn options(target: &str, fingerprint: &str, extra: &[&str]) -> Options {
    let mut args = vec![
        "loadgen",
        "--target",
        target,
        "--fingerprint",
        fingerprint,
        "--customers",
        "20",
        "--merchants",
        "2",
        "--connections",
        "2",
        "--streams",
        "2",
        "--expire-secs",
        "1",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    args.extend(["constant", "--rate", "100", "--duration", "0.5"]);
    let mut o = Options::from_cli(Cli::parse_from(args)).expect("valid");
    o.out = None;
    o
}

/// The issuer's funding account is shared by every run: each run verifies its own change to
/// it. The second run reaches the switch by host name.
#[test]
fn runs_one_after_the_other_against_one_switch_each_verify() {
    let switch = Switch::start(true);
    let fingerprint = switch.fingerprint();
    let port = switch.running().quic_addr.port();
    for target in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let started = Instant::now();
        let outcome = loadgen::run::run(options(&target, &fingerprint, &[])).expect("runs");
        let report = &outcome.report;
        assert!(report.passed(), "{target}: {}", report.table());
        assert_eq!(report.exit_code(), 0, "{}", report.table());
        let v = report.verification.as_ref().expect("verified");
        assert!(v.authorizations_checked + v.sales_checked > 0, "{v:?}");
        assert!(started.elapsed() < LIMIT);
    }
}

/// The switch's default configuration has no route: loadgen says which one to add, before any
/// money moves. A refusal during setup is said in words, not as a dump of the request.
#[test]
fn a_switch_without_the_route_or_with_a_clashing_participant_is_refused_in_words() {
    let switch = Switch::start(false);
    let fingerprint = switch.fingerprint();
    let target = switch.running().quic_addr.to_string();
    let error = loadgen::run::run(options(&target, &fingerprint, &[]))
        .err()
        .expect("refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("does not route this run's cards (prefix 62) to --issuer 2")
            && message.contains("declined 92 (cannot route)")
            && message.contains("[[routes]]\nprefix = \"62\"\nissuer = 2\n"),
        "{message}"
    );
    // No customer was funded: the issuer's funding account was never made.
    let funding = switch::core::funding_account(ledger::ParticipantId(2), ledger::Currency::CNY);
    let code = switch.ask(Operation::BalanceInquiry {
        target: BalanceTarget::Account(AccountId(funding.0)),
    });
    assert_eq!(code, ResponseCode::InvalidCardOrAccount);

    let code = switch.ask(Operation::CreateParticipant {
        participant: ParticipantId(5),
        roles: Roles::ISSUER,
        name: ParticipantName::new("another bank").expect("short"),
    });
    assert_eq!(code, ResponseCode::Approved);
    let error = loadgen::run::run(options(&target, &fingerprint, &["--issuer", "5"]))
        .err()
        .expect("refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("creating participant 5 (\"loadgen issuer\") was declined 94")
            && message.contains("participant 5 exists with another name or roles"),
        "{message}"
    );
    assert!(!message.contains("ParticipantId("), "{message}");
}

const CHILD_DIR: &str = "LOADGEN_TEST_SWITCH_CHILD_DIR";
const CHILD_TEST: &str = "a_switch_killed_mid_run_stops_the_run_without_verifying";
/// The child switch stops by itself after this long, should nobody kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(90);

/// The child: a switch in its own process, which the parent kills with SIGKILL. It prints
/// the ready line `switch serve` prints.
fn child_switch(dir: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let running = switch::server::start(config(std::path::Path::new(dir), true), None)
            .await
            .expect("the switch starts");
        println!("{}", running.ready_line());
        tokio::time::sleep(CHILD_LIFETIME).await;
    });
}

/// A real switch process killed with SIGKILL while loadgen sends: loadgen notices within its
/// timeout, stops, says so and exits 2, without reading back or verifying anything.
#[test]
fn a_switch_killed_mid_run_stops_the_run_without_verifying() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child_switch(&dir);
        return;
    }
    let dir = tempfile::tempdir().expect("a directory");
    let mut child = Process::spawn(
        Command::new(std::env::current_exe().expect("test binary"))
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path().join("data")),
        &dir.path().join("switch.log"),
    )
    .expect("the switch process starts");
    let ready = child
        .ready(Duration::from_secs(30))
        .expect("the switch process says where it listens");
    let (addr, fingerprint) = (ready.quic.to_string(), ready.fingerprint.to_string());
    let out = tempfile::tempdir().expect("a directory");
    let stderr = out.path().join("stderr.log");
    let mut loadgen = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--target", &addr, "--fingerprint", &fingerprint])
            .args([
                "--timeout-secs",
                "2",
                "--customers",
                "20",
                "--merchants",
                "2",
            ])
            .args(["--connections", "1", "--streams", "2", "--quiet"])
            .arg("--out")
            .arg(out.path())
            .args(["constant", "--rate", "200", "--duration", "30"]),
        &stderr,
    )
    .expect("loadgen starts");
    // Setup of 20 customers takes a moment; then the load runs for 30 s, unless stopped.
    std::thread::sleep(Duration::from_secs(2));
    // SIGKILL: the switch sends nothing more, not even a close.
    child.kill().expect("SIGKILL");
    let status = loadgen
        .wait(Duration::from_secs(20))
        .expect("loadgen stops within 20 s of the switch's death");
    let stdout = loadgen.stdout(Duration::from_secs(5));
    let stderr = std::fs::read_to_string(&stderr).expect("loadgen's standard error");
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("lost the connection to the switch during the load")
            && stderr.contains("nothing was verified"),
        "{stderr}"
    );
    assert!(!stdout.contains("could not be read"), "{stdout}");
    assert!(!stdout.contains("verification"), "{stdout}");
}
