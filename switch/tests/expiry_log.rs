//! Expired holds are logged as a summary, at most one line every 10 seconds, however often the
//! expiry pass finds some; the lines together still count every hold, as the counter does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

// The switch runs as a child process here, from a file: the in-process config goes unused.
#[allow(dead_code)]
mod common;
use common::{CNY, req, setup_requests};
use switch::client::{Client, Stream};
use switch::tls::Trust;
use switch::wire::{self, AccountId, Amount, CardNumber, Operation, ResponseCode as Code};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_are_summed_up_in_at_most_one_line_per_period() {
    let Started {
        dir,
        mut process,
        http,
        client,
        stream,
    } = start(100, 4096).await;
    // Waves of one-second holds, 400 ms apart: they expire on different ticks (every 100 ms),
    // so the expiry pass finds some several times within a few seconds.
    const WAVES: u128 = 4;
    const PER_WAVE: u128 = 25;
    for wave in 0..WAVES {
        let holds: Vec<wire::Request> = (0..PER_WAVE)
            .map(|i| hold(1_000 + wave * PER_WAVE + i))
            .collect();
        for r in call(&stream, &holds).await {
            assert_eq!(r.code, Code::Approved, "{r:?}");
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let total = (WAVES * PER_WAVE) as u64;
    let deadline = Instant::now() + LIMIT;
    let expired_total = format!("switch_holds_expired_total {total}");
    while !http_get(http, "/metrics")
        .lines()
        .any(|l| l == expired_total)
    {
        assert!(Instant::now() < deadline, "holds not expired in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(client, &mut process).await;

    let text = std::fs::read_to_string(dir.path().join(LOG)).expect("read the log");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("authorization holds expired"))
        .collect();
    let logged: u64 = lines
        .iter()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("holds="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count in {l:?}"))
        })
        .sum();
    assert_eq!(logged, total, "{lines:#?}");
    // The first expiry is said at once; every later one within 10 seconds waits for the next
    // line, which here is the one at the stop.
    assert_eq!(lines.len(), 2, "{lines:#?}");
}

/// The expiry pass runs once a tick, however often the stage is idle: at a few hundred
/// requests a second the stage sleeps between any two, and a pass at each wake-up would log an
/// entry (and its fdatasync, which the next request waits behind) for every hold just due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_pass_runs_once_a_tick_however_often_the_stage_is_idle() {
    const TICK_MS: u64 = 400;
    let Started {
        dir: _dir,
        mut process,
        http,
        client,
        stream,
    } = start(TICK_MS, 4096).await;
    // One-second holds one at a time, 10 ms apart, for 2.4 s: from the first second on, every
    // wake-up of the stage finds a hold that fell due since the one before.
    const HOLDS: u128 = 240;
    let passes_before = metric(http, "switch_expiry_passes_total");
    let started = Instant::now();
    for i in 0..HOLDS {
        for r in call(&stream, &[hold(5_000 + i)]).await {
            assert_eq!(r.code, Code::Approved, "{r:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let passes = metric(http, "switch_expiry_passes_total") - passes_before;
    let ticks = started.elapsed().as_millis() as u64 / TICK_MS + 1;
    assert!(
        (1..=ticks).contains(&passes),
        "{passes} expiry passes logged in {:?} with a tick of {TICK_MS} ms",
        started.elapsed()
    );
    stop(client, &mut process).await;
}

/// A pass expires at most `expiry_pass_max` holds, and when more are due the next passes
/// follow between batches, not a tick apart: the holds of a peak falling due together are
/// expired in many short passes, none of which stops the stage for long, and all of them soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_due_together_expire_in_bounded_passes_that_do_not_wait_for_the_tick() {
    const TICK_MS: u64 = 3_000;
    const PASS_MAX: u64 = 8;
    const HOLDS: u128 = 100;
    let Started {
        dir: _dir,
        mut process,
        http,
        client,
        stream,
    } = start(TICK_MS, PASS_MAX as u32).await;
    let passes_before = metric(http, "switch_expiry_passes_total");
    // One frame: every hold falls due at the same instant, one second from now.
    let holds: Vec<wire::Request> = (0..HOLDS).map(|i| hold(9_000 + i)).collect();
    for r in call(&stream, &holds).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    let deadline = Instant::now() + LIMIT;
    let mut first_seen = None;
    while metric(http, "switch_holds_expired_total") < HOLDS as u64 {
        if first_seen.is_none() && metric(http, "switch_holds_expired_total") > 0 {
            first_seen = Some(Instant::now());
        }
        assert!(Instant::now() < deadline, "holds not expired in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = first_seen.map_or(Duration::ZERO, |at| at.elapsed());
    let passes = metric(http, "switch_expiry_passes_total") - passes_before;
    assert!(
        passes >= (HOLDS as u64).div_ceil(PASS_MAX),
        "{HOLDS} holds expired in {passes} passes of at most {PASS_MAX}"
    );
    // A pass a tick would take 13 ticks (39 s); following passes take milliseconds.
    assert!(
        took < Duration::from_millis(TICK_MS),
        "the passes after the first took {took:?}, a tick is {TICK_MS} ms"
    );
    // The switch's own view agrees: nothing is held on the card any more.
    let inquiry = req(
        9_999,
        Operation::BalanceInquiry {
            target: wire::BalanceTarget::Account(AccountId(100)),
        },
    );
    match &call(&stream, &[inquiry]).await[0].body {
        wire::ResponseBody::BalanceInquiry(b) => {
            assert_eq!(b.ledger, b.available, "holds left on the card: {b:?}")
        }
        other => panic!("{other:?}"),
    }
    stop(client, &mut process).await;
}

/// The switch's log file, in the test's directory.
const LOG: &str = "switch.log";

/// A `switch serve` process with holds expired every `tick_ms`, at most `pass_max` a pass, and a stream to it on which
/// the setup (participants, accounts, funding, the card's route) is done.
struct Started {
    dir: tempfile::TempDir,
    process: common::process::Process,
    http: SocketAddr,
    client: Client,
    stream: Stream,
}

async fn start(tick_ms: u64, pass_max: u32) -> Started {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("switch.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
             [tls]\nanonymous_participant = 3\n\n\
             [log]\nlevel = \"info\"\n\n\
             [authorization]\nexpiry_tick_ms = {tick_ms}\nexpiry_pass_max = {pass_max}\n\n\
             [[routes]]\nprefix = \"62\"\nissuer = 2\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write the configuration");
    let mut process = common::serve(&config, &dir.path().join(LOG)).expect("spawn the switch");
    let ready = process.ready(LIMIT).expect("the switch serves");
    let client = tokio::time::timeout(
        LIMIT,
        Client::connect(ready.quic, &Trust::Fingerprint(ready.fingerprint), None),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let stream = client.stream().await.expect("stream");
    for r in call(&stream, &setup_requests(1_000_000)).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    Started {
        dir,
        process,
        http: ready.http,
        client,
        stream,
    }
}

/// Closes the connection and stops the switch, which must exit cleanly.
async fn stop(client: Client, process: &mut common::process::Process) {
    client.close().await;
    process.signal("TERM").expect("SIGTERM");
    let status = process.wait(LIMIT).expect("the switch stops in time");
    assert!(status.success(), "the switch exited with {status}");
}

/// The value of a counter or gauge with no labels.
fn metric(http: SocketAddr, name: &str) -> u64 {
    http_get(http, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn hold(id: u128) -> wire::Request {
    req(
        id,
        Operation::Authorize {
            number: CardNumber::new("6200000000000001").expect("digits"),
            merchant: AccountId(300),
            amount: Amount(1),
            currency: CNY,
            expiry_secs: 1,
        },
    )
}

async fn call(stream: &Stream, requests: &[wire::Request]) -> Vec<wire::Response> {
    tokio::time::timeout(LIMIT, stream.call(requests))
        .await
        .expect("answered in time")
        .expect("answered")
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("http connect");
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").expect("http write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("http read");
    text
}
