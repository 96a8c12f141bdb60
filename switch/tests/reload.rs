//! The routing table reloads while traffic runs: on SIGHUP and by the admin message, from the
//! configuration file of a `switch serve` process. No request of the traffic is dropped or
//! misrouted, new routes take effect, and a broken file leaves the old table in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

// The switch runs as a child process here, from a file: the in-process config goes unused.
#[allow(dead_code)]
mod common;
use common::{CNY, req, setup_requests};
use switch::client::{Client, Stream};
use switch::tls::Trust;
use switch::wire::{
    AccountId, Amount, CardNumber, Operation, Reason, Request, ResponseBody, ResponseCode as Code,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Clients act as the admin identity of participant 3, the acquirer of `setup_requests`.
fn write_config(path: &Path, data: &Path, routes: &str) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [tls]\nanonymous_participant = 3\n\n{routes}",
        data = data.display().to_string(),
    );
    std::fs::write(path, text).expect("write the configuration");
}

const ROUTE_62: &str = "[[routes]]\nprefix = \"62\"\nissuer = 2\n";
/// Numbers starting 63 all pay from card account 100 (owned by participant 2).
const ROUTE_63: &str = "[[routes]]\nprefix = \"63\"\nissuer = 2\npooled_account = \"100\"\n";

async fn one(stream: &Stream, request: Request) -> switch::wire::Response {
    tokio::time::timeout(LIMIT, stream.call(&[request]))
        .await
        .expect("answered in time")
        .expect("answered")
        .remove(0)
}

fn sale(id: u128, number: &str) -> Request {
    req(
        id,
        Operation::Sale {
            number: CardNumber::new(number).expect("digits"),
            merchant: AccountId(300),
            amount: Amount(1),
            currency: CNY,
        },
    )
}

/// Sales under the route that never changes, one after another until `stop` (or 20,000):
/// every answer, which must all be approvals.
async fn traffic(stream: Stream, stop: Arc<AtomicBool>) -> Vec<(Code, Reason)> {
    let mut answers = Vec::new();
    for id in 0..20_000u128 {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let r = one(&stream, sale(1_000_000 + id, "6200000000000001")).await;
        answers.push((r.code, r.reason));
    }
    answers
}

/// Polls a sale under prefix 63 (new ids each time) until it is answered other than 92.
async fn routed_63(stream: &Stream, first_id: u128) -> Code {
    let deadline = Instant::now() + LIMIT;
    let mut id = first_id;
    loop {
        let code = one(stream, sale(id, "6300000000000005")).await.code;
        if code != Code::CannotRoute || Instant::now() > deadline {
            return code;
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reload_on_sighup_and_by_message_while_traffic_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, data): (PathBuf, PathBuf) =
        (dir.path().join("switch.toml"), dir.path().join("data"));
    write_config(&config, &data, ROUTE_62);
    let mut process = common::serve(&config, &dir.path().join("switch.log")).expect("spawns");
    let ready = process.ready(LIMIT).expect("the switch serves");
    let client = tokio::time::timeout(
        LIMIT,
        Client::connect(ready.quic, &Trust::Fingerprint(ready.fingerprint), None),
    )
    .await
    .expect("connect in time")
    .expect("connects");
    let stream = client.stream().await.expect("stream");
    for r in setup_requests(1_000_000) {
        assert_eq!(one(&stream, r).await.code, Code::Approved);
    }
    assert_eq!(
        one(&stream, sale(10, "6300000000000005")).await.code,
        Code::CannotRoute
    );

    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(traffic(
        client.stream().await.expect("stream"),
        stop.clone(),
    ));

    // SIGHUP after the file gains a route: the route takes effect.
    write_config(&config, &data, &format!("{ROUTE_62}{ROUTE_63}"));
    process.signal("HUP").expect("SIGHUP");
    assert_eq!(
        routed_63(&stream, 100).await,
        Code::Approved,
        "after SIGHUP"
    );

    // The admin message after the route is taken out again: 92 once more.
    write_config(&config, &data, ROUTE_62);
    let reload = one(&stream, req(20, Operation::ReloadRoutes)).await;
    assert_eq!(reload.body, ResponseBody::ReloadRoutes { route_count: 1 });
    assert_eq!(
        one(&stream, sale(21, "6300000000000005")).await.code,
        Code::CannotRoute
    );

    // A broken file: 96, and the table in force stays.
    std::fs::write(&config, "[[routes]]\nprefix = \"6x\"\n").expect("write");
    let broken = one(&stream, req(22, Operation::ReloadRoutes)).await;
    assert_eq!(
        (broken.code, broken.reason),
        (Code::SystemMalfunction, Reason::ROUTES_INVALID)
    );
    process.signal("HUP").expect("SIGHUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        one(&stream, sale(23, "6200000000000001")).await.code,
        Code::Approved
    );

    stop.store(true, Ordering::Release);
    let answers = running.await.expect("the traffic task");
    assert!(
        answers.len() >= 10,
        "{} sales ran across the reloads",
        answers.len()
    );
    let refused: Vec<_> = answers.iter().filter(|a| a.0 != Code::Approved).collect();
    assert!(
        refused.is_empty(),
        "traffic refused across reloads: {refused:?}"
    );

    // SIGTERM: drains and exits 0.
    client.close().await;
    process.signal("TERM").expect("SIGTERM");
    let status = process.wait(LIMIT).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
