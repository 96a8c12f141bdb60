//! Disk faults under a running switch: a failed fdatasync and a full disk, on the simulated
//! disk and on a real (tmpfs) file system that fills up.
//!
//! What must hold: nothing that is not durable is acknowledged; a failure is answered 96 (I/O
//! error) or 91 (disk full) from then on and reported in `/readyz` and `/metrics`; the log on
//! disk stays recoverable; and a restart on the same log (with space back) recovers every
//! acknowledged request, so that a client's retry of a refused one then succeeds.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ledger::storage::SimStorage;
mod common;
use common::{CNY, loopback_config, req, setup_requests};
use switch::client::{Client, Stream};
use switch::config::Config;
use switch::server::{self, Running};
use switch::tls::Trust;
use switch::wire::{
    self, AccountId, Amount, BalanceTarget, CardNumber, Operation, Reason, Request, ResponseBody,
    ResponseCode as Code,
};

const LIMIT: Duration = Duration::from_secs(30);
const FUNDED: u64 = 1_000_000;

fn config(dir: &Path) -> Config {
    loopback_config(dir)
}

async fn start_sim(dir: &Path, storage: &SimStorage) -> Running {
    start_sim_with(config(dir), storage).await
}

async fn start_sim_with(config: Config, storage: &SimStorage) -> Running {
    tokio::time::timeout(
        LIMIT,
        server::start_with_storage(config, None, storage.clone()),
    )
    .await
    .expect("start in time")
    .expect("the switch starts and recovers its log")
}

async fn start_files(dir: &Path) -> Running {
    tokio::time::timeout(LIMIT, server::start(config(dir), None))
        .await
        .expect("start in time")
        .expect("the switch starts and recovers its log")
}

async fn connect(running: &Running) -> (Client, Stream) {
    let trust = Trust::Fingerprint(running.fingerprint.expect("a certificate"));
    let client = tokio::time::timeout(LIMIT, Client::connect(running.quic_addr, &trust, None))
        .await
        .expect("connect in time")
        .expect("connects");
    let stream = client.stream().await.expect("a stream");
    (client, stream)
}

async fn one(stream: &Stream, request: Request) -> wire::Response {
    tokio::time::timeout(LIMIT, stream.call(&[request]))
        .await
        .expect("answered in time")
        .expect("answered")
        .remove(0)
}

async fn setup(stream: &Stream) {
    for r in setup_requests(FUNDED) {
        let answer = one(stream, r).await;
        assert_eq!(answer.code, Code::Approved, "{answer:?}");
    }
}

/// A one-unit sale from card account 100 to merchant 300: each approved one moves exactly 1.
fn sale(id: u128) -> Request {
    req(
        id,
        Operation::Sale {
            number: CardNumber::new("6200000000000001").expect("digits"),
            merchant: AccountId(300),
            amount: Amount(1),
            currency: CNY,
        },
    )
}

async fn card_balance(stream: &Stream) -> i128 {
    let answer = one(
        stream,
        req(
            u128::MAX - 1,
            Operation::BalanceInquiry {
                target: BalanceTarget::Account(AccountId(100)),
            },
        ),
    )
    .await;
    let ResponseBody::BalanceInquiry(balance) = answer.body else {
        panic!("{answer:?}")
    };
    balance.ledger
}

/// A plain HTTP GET against the metrics endpoint: (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("a read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// Sends one-unit sales from id `first` until one is refused (or `max` were approved); returns
/// the ids approved and the refusal.
async fn sell_until_refused(
    stream: &Stream,
    first: u128,
    max: u128,
) -> (Vec<u128>, Option<wire::Response>) {
    let mut approved = Vec::new();
    for id in first..first + max {
        let answer = one(stream, sale(id)).await;
        if answer.code != Code::Approved {
            return (approved, Some(answer));
        }
        approved.push(id);
    }
    (approved, None)
}

/// After a restart: every acknowledged sale is there (its retry is a repeat, the balance
/// counts it), the refused one was not applied (its retry is applied now), and the log
/// takes new writes again.
async fn check_recovered(stream: &Stream, approved: &[u128], refused: u128) {
    assert_eq!(
        card_balance(stream).await,
        i128::from(FUNDED) - approved.len() as i128,
        "every acknowledged sale, and nothing else, survived"
    );
    for &id in approved {
        let answer = one(stream, sale(id)).await;
        assert_eq!(answer.code, Code::Approved, "repeat of {id}: {answer:?}");
    }
    assert_eq!(
        card_balance(stream).await,
        i128::from(FUNDED) - approved.len() as i128,
        "repeats of acknowledged sales moved nothing"
    );
    let retry = one(stream, sale(refused)).await;
    assert_eq!(
        retry.code,
        Code::Approved,
        "the refused sale, retried: {retry:?}"
    );
    assert_eq!(
        card_balance(stream).await,
        i128::from(FUNDED) - approved.len() as i128 - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_acknowledgements_and_a_restart_recovers_what_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SimStorage::new();
    let running = start_sim(dir.path(), &storage).await;
    let (client, stream) = connect(&running).await;
    setup(&stream).await;
    let (approved, refusal) = sell_until_refused(&stream, 1_000, 20).await;
    assert_eq!(
        approved.len(),
        20,
        "a healthy disk acknowledges: {refusal:?}"
    );

    storage.fail_next_sync();
    let failed = one(&stream, sale(2_000)).await;
    assert_eq!(failed.code, Code::SystemMalfunction, "{failed:?}");
    assert_eq!(failed.reason, Reason::STORAGE_FAILURE);
    // Fail-stop: the next sync would succeed, yet nothing more is acknowledged.
    for id in 2_001..2_005 {
        let answer = one(&stream, sale(id)).await;
        assert_eq!(answer.code, Code::SystemMalfunction, "{answer:?}");
        assert_eq!(answer.reason, Reason::STORAGE_FAILURE);
    }
    let (status, body) = http_get(running.http_addr, "/readyz");
    assert!(
        status.contains("503"),
        "/readyz after a failed fsync: {status} {body}"
    );
    assert!(body.contains("storage failed"), "{body}");
    let (_, metrics) = http_get(running.http_addr, "/metrics");
    assert!(
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix("switch_storage_failures_total{cause=\"io_error\"} "))
            .any(|v| v.parse::<f64>().is_ok_and(|v| v >= 1.0)),
        "the failure is counted in /metrics"
    );
    client.close().await;
    let stopped = running.shutdown().await;
    assert!(stopped.is_err(), "shutdown reports the log failure");

    // The process is gone; the disk keeps what was synced.
    let storage = storage.crash();
    let running = start_sim(dir.path(), &storage).await;
    let (client, stream) = connect(&running).await;
    check_recovered(&stream, &approved, 2_000).await;
    let (status, _) = http_get(running.http_addr, "/readyz");
    assert!(
        status.contains("200"),
        "ready again after the restart: {status}"
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// With segments prepared ahead, their space is taken before it is needed: the disk fills
/// when a segment must grow because no spare could be prepared. Without, at the next append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_simulated_disk_answers_91_and_space_back_with_a_restart_recovers() {
    for prepare in [false, true] {
        full_simulated_disk(prepare).await;
    }
}

async fn full_simulated_disk(prepare: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.wal.prepare_segments = prepare;
    config.wal.segment_bytes_max = 4096;
    let storage = SimStorage::new();
    let running = start_sim_with(config.clone(), &storage).await;
    let (client, stream) = connect(&running).await;
    setup(&stream).await;
    // Room for a few sale records (about 100 bytes each with their headers), not for 50.
    storage.set_capacity_bytes(Some(storage.used_bytes() + 1_000));
    let (approved, refusal) = sell_until_refused(&stream, 1_000, 500).await;
    let refusal = refusal.expect("the disk fills up");
    assert!(!approved.is_empty(), "some sales fit");
    if prepare {
        assert!(
            approved.len() > 20,
            "the segment and spare prepared before the disk filled hold more than 1,000 bytes \
             of sales: {}",
            approved.len()
        );
    } else {
        assert!(approved.len() < 20, "{}", approved.len());
    }
    assert_eq!(refusal.code, Code::SystemBusy, "{refusal:?}");
    assert_eq!(refusal.reason, Reason::STORAGE_FULL);
    let refused = approved.last().map_or(1_000, |last| last + 1);
    // Space back is not enough while this process runs: its memory is ahead of its log.
    storage.set_capacity_bytes(None);
    let answer = one(&stream, sale(5_000)).await;
    assert_eq!(answer.code, Code::SystemBusy, "{answer:?}");
    assert_eq!(answer.reason, Reason::STORAGE_FULL);
    let (status, _) = http_get(running.http_addr, "/readyz");
    assert!(status.contains("503"), "{status}");
    client.close().await;
    assert!(running.shutdown().await.is_err());

    let storage = storage.crash();
    let running = start_sim_with(config, &storage).await;
    let (client, stream) = connect(&running).await;
    check_recovered(&stream, &approved, refused).await;
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// A tmpfs of a few pages mounted for the test and unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| format!("mkdir: {e}"))?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily if a plain unmount is refused: a failed test may leave a server with files
        // open there, and the mount must not outlive the test either way.
        let unmounted = [&["umount"][..], &["umount", "-l"][..]].iter().any(|args| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !unmounted {
            eprintln!("could not unmount {}", self.path.display());
        }
    }
}

/// Fills the file system holding `path` until a write fails with ENOSPC.
fn fill(path: &Path) -> std::fs::File {
    let mut file = std::fs::File::create(path).expect("filler file");
    let block = vec![0xa5u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_file_system_answers_91_and_recovers_once_space_is_back() {
    let mount = match Tmpfs::mount(4 << 20) {
        Ok(mount) => mount,
        Err(reason) => {
            eprintln!("skipped: cannot mount a small tmpfs here ({reason})");
            return;
        }
    };
    let data = mount.path.join("data");
    let running = start_files(&data).await;
    let (client, stream) = connect(&running).await;
    setup(&stream).await;
    let filler_path = mount.path.join("filler");
    let filler = fill(&filler_path);
    // The segment's last page has room for a few records; then the disk is full.
    let (approved, refusal) = sell_until_refused(&stream, 1_000, 2_000).await;
    let refusal = refusal.expect("the file system fills up");
    assert_eq!(refusal.code, Code::SystemBusy, "{refusal:?}");
    assert_eq!(refusal.reason, Reason::STORAGE_FULL);
    let refused = approved.last().map_or(1_000, |last| last + 1);
    let (status, _) = http_get(running.http_addr, "/readyz");
    assert!(status.contains("503"), "{status}");
    client.close().await;
    assert!(
        running.shutdown().await.is_err(),
        "shutdown reports the full disk"
    );

    // Space back, restart on the same directory: the log recovers (a torn tail is trimmed,
    // nothing is refused as corrupt) with every acknowledged sale.
    drop(filler);
    std::fs::remove_file(&filler_path).expect("remove the filler");
    let running = start_files(&data).await;
    let (client, stream) = connect(&running).await;
    check_recovered(&stream, &approved, refused).await;
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// The stage applies the next batch while the log syncs the last. What a later batch read
/// from an earlier one (a balance, a repeat's remembered answer) must not leave before the
/// earlier batch is durable: if that sync fails, the reads are refused too, never answered
/// with a state the log does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_read_from_a_batch_leaves_before_the_batch_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SimStorage::new();
    let running = start_sim(dir.path(), &storage).await;
    let (client, stream) = connect(&running).await;
    setup(&stream).await;
    assert_eq!(card_balance(&stream).await, i128::from(FUNDED));

    storage.set_sync_latency(Duration::from_millis(600));
    let pending_sale = tokio::spawn({
        let stream = stream.clone();
        async move { one(&stream, sale(7)).await }
    });
    // The sale is applied and its record is syncing; these run in later stage batches.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reads = tokio::spawn({
        let stream = stream.clone();
        async move {
            let balance = one(
                &stream,
                req(
                    u128::MAX - 2,
                    Operation::BalanceInquiry {
                        target: BalanceTarget::Account(AccountId(100)),
                    },
                ),
            );
            let repeat = one(&stream, sale(7));
            tokio::join!(balance, repeat)
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    storage.fail_next_sync();

    let sold = pending_sale.await.expect("the sale task");
    assert_eq!(sold.code, Code::SystemMalfunction, "{sold:?}");
    let (balance, repeat) = reads.await.expect("the reads");
    for answer in [&balance, &repeat] {
        assert_eq!(
            answer.code,
            Code::SystemMalfunction,
            "a read of the undurable sale was answered: {answer:?}"
        );
        assert_eq!(answer.reason, Reason::STORAGE_FAILURE);
    }
    client.close().await;
    assert!(running.shutdown().await.is_err(), "the log failed");

    let storage = storage.crash();
    let running = start_sim(dir.path(), &storage).await;
    let (client, stream) = connect(&running).await;
    check_recovered(&stream, &[], 7).await;
    client.close().await;
    running.shutdown().await.expect("a clean shutdown");
}

/// While a record syncs slowly, requests that log nothing (here echoes) are applied in later
/// batches and wait for it. They still count against the stage's queue limit until answered,
/// so past it new frames are answered 91 at once instead of piling up behind the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_slow_sync_count_against_the_queue_limit() {
    const QUEUE: u32 = 40;
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = SimStorage::new();
    let mut config = config(dir.path());
    config.limits.queue_depth_max = QUEUE;
    let running = start_sim_with(config, &storage).await;
    let (client, stream) = connect(&running).await;
    setup(&stream).await;
    storage.set_sync_latency(Duration::from_millis(1500));
    let pending_sale = tokio::spawn({
        let stream = stream.clone();
        async move { one(&stream, sale(7)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let echo = |id: u128| {
        req(
            id,
            Operation::Echo {
                payload: wire::EchoPayload::new(vec![1]).expect("short"),
            },
        )
    };
    // Ten frames of ten echoes, one after another, each taken by the stage at once and left
    // waiting for the sale's record.
    let started = std::time::Instant::now();
    let mut frames = Vec::new();
    for f in 0..10u128 {
        let batch: Vec<Request> = (0..10).map(|i| echo(1_000 + f * 10 + i)).collect();
        let stream = stream.clone();
        frames.push(tokio::spawn(async move {
            let answers = tokio::time::timeout(LIMIT, stream.call(&batch))
                .await
                .expect("answered in time")
                .expect("answered");
            (answers, std::time::Instant::now())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut approved = 0;
    let mut busy_early = 0;
    for frame in frames {
        let (answers, at) = frame.await.expect("the frame's task");
        for a in answers {
            match a.code {
                Code::Approved => approved += 1,
                Code::SystemBusy => {
                    assert_eq!(a.reason, Reason::OVERLOADED);
                    if at.duration_since(started) < Duration::from_millis(1000) {
                        busy_early += 1;
                    }
                }
                other => panic!("{other:?}: {a:?}"),
            }
        }
    }
    assert!(
        approved <= QUEUE as usize,
        "{approved} echoes waited past the queue's limit"
    );
    assert!(
        busy_early > 0,
        "no frame was answered busy while the sync was slow"
    );
    assert_eq!(pending_sale.await.expect("the sale").code, Code::Approved);
    storage.set_sync_latency(Duration::ZERO);
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}
