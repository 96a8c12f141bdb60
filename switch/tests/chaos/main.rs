//! Crash under load: the real `switch` binary, driven by a pipelining client, killed with
//! SIGKILL at random moments and restarted on the same data directory, cycle after cycle.
//! Every request sent and every answer received is kept in a journal; after each restart the
//! switch's state is checked against it.
//!
//! Usage (`scripts/chaos.sh` runs the long version in release mode and prints the summary):
//!
//! ```text
//! cargo test -p switch --test chaos                       # CI: 3 cycles
//! CHAOS_CYCLES=100 CHAOS_REPORT=chaos.json \
//!     cargo test --release -p switch --test chaos -- --nocapture
//! ```
//!
//! Environment (all optional):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `CHAOS_CYCLES` | 3 | kill-and-restart cycles |
//! | `CHAOS_SECONDS` | 900 | wall-clock bound: no cycle starts after it |
//! | `CHAOS_KILL_MS` | 1000 | the kill comes 1/10 to all of this many ms after load starts |
//! | `CHAOS_WORKERS` | 24 | concurrent flows, pipelined over 4 streams of one connection |
//! | `CHAOS_SAMPLE` | 2000 | older operations re-checked per cycle (all are checked at the end) |
//! | `CHAOS_START_KILL` | 0.25 | probability that a restart is killed again while it starts |
//! | `CHAOS_SEED` | random | seeds the choices of the load (timing still varies); printed |
//! | `CHAOS_REPORT` | none | where to write the JSON report |
//!
//! A cycle: load runs (authorize, full and partial capture, reverse, sale, refund, top-ups,
//! batches of several operations in one frame, a capture racing a reverse, holds of a second
//! or two that the switch expires by itself, declines of every kind), the switch is killed with
//! requests in flight, restarted (a quarter of the restarts are themselves killed at a random
//! moment of the start, mostly while the log is replayed, and started again), and then, in
//! this order, checked. The switch makes a snapshot every 300 log records (built off the
//! ledger stage by replaying the log) in 1 MiB log segments, so kills also land while one is
//! being built or written, and restarts load one and replay the log after it:
//!
//! 1. Read-only, before anything is re-sent: the TransferStatus of every operation that makes
//!    a transfer and was acknowledged this cycle (and a sample of older ones) must match the
//!    journal; what became of each request that was in flight at the kill is read the same
//!    way; and every account's balance must equal the model computed from the acknowledged
//!    answers plus the in-flight requests found applied. A missing acknowledged operation is
//!    *lost*; anything else that does not match (a hold nobody asked for, half of an
//!    operation, money made or destroyed, a hold expired early or live again after it was
//!    seen expired) is a *mismatch*. An expiring hold counts as held while its status says
//!    pending; the statuses of those holds are read again after the balances, and the pass is
//!    repeated if one expired meanwhile.
//! 2. Every in-flight request is sent again; its answer is its definitive outcome, and must
//!    agree with step 1 (a request found applied must be answered as approved).
//! 3. Every acknowledged request of this cycle (and a sample of older ones) is sent again and
//!    must get exactly the original answer: same code, reason and body.
//! 4. Step 1's checks again, now with every outcome definitive; money is conserved (the
//!    balances of all accounts, funding accounts included, sum to zero).
//!
//! At the end every operation ever sent is checked (steps 3 and 4 in full). The report gives
//! cycles, operations acknowledged, lost (must be 0), mismatches (must be 0) and the recovery
//! time of every restart (spawn to the first answered request).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use switch::client::{Client, Stream};
use switch::tls::{Fingerprint, Trust};
use switch::wire::{
    AccountFlags, AccountId, Amount, BalanceTarget, CardNumber, Currency, EchoPayload, Movement,
    Operation, ParticipantId, ParticipantName, Request, RequestId, Response, ResponseBody,
    ResponseCode as Code, Roles, Status, TransferState,
};

const CNY: Currency = Currency(156);
const ISSUER: u64 = 2;
const ACQUIRER: u64 = 3;
const CARDS: u128 = 16;
/// The first cards are funded with little, so that authorizations and sales on them are often
/// declined (51): a declined authorization must leave no hold.
const POOR_CARDS: u128 = 3;
const MERCHANTS: u128 = 4;
const RICH_FUNDING: u64 = 1_000_000_000_000;
const POOR_FUNDING: u64 = 40_000;
const AMOUNT_MAX: u64 = 20_000;
const STREAMS: usize = 4;
/// Operations per frame when checking.
const CHECK_CHUNK: usize = 512;

/// Every wait has a bound.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const WORKERS_STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn card_account(i: u128) -> AccountId {
    AccountId(0x1000 + i)
}

fn card_number(i: u128) -> CardNumber {
    CardNumber::new(&format!("62{i:014}")).expect("16 digits")
}

fn merchant_account(i: u128) -> AccountId {
    AccountId(0x3000 + i)
}

fn funding(participant: u64) -> AccountId {
    AccountId(
        switch::core::funding_account(ledger::ParticipantId(participant), ledger::Currency::CNY).0,
    )
}

/// Every account the load touches, funding accounts included.
fn all_accounts() -> Vec<AccountId> {
    let mut accounts: Vec<AccountId> = (0..CARDS).map(card_account).collect();
    accounts.extend((0..MERCHANTS).map(merchant_account));
    accounts.push(funding(ISSUER));
    accounts
}

struct Settings {
    cycles: u32,
    seconds: u64,
    kill_ms_max: u64,
    workers: usize,
    sample: usize,
    /// Probability that a restart is itself killed at a random moment of its start.
    start_kill: f64,
    seed: u64,
    report: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            cycles: env_or("CHAOS_CYCLES", 3),
            seconds: env_or("CHAOS_SECONDS", 900),
            kill_ms_max: env_or::<u64>("CHAOS_KILL_MS", 1000).max(10),
            workers: env_or::<usize>("CHAOS_WORKERS", 24).max(1),
            sample: env_or("CHAOS_SAMPLE", 2000),
            start_kill: env_or::<f64>("CHAOS_START_KILL", 0.25).clamp(0.0, 1.0),
            seed: env_or("CHAOS_SEED", rand::thread_rng().r#gen()),
            report: std::env::var_os("CHAOS_REPORT").map(PathBuf::from),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The switch as a child process.

/// A running `switch serve`; killed (SIGKILL) and reaped when dropped, so that no process
/// outlives the test, whatever happens to it.
struct SwitchProcess {
    child: Child,
    quic: SocketAddr,
    fingerprint: Fingerprint,
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SwitchProcess {
    /// Starts the binary and waits for its `ready` line (recovery done, addresses bound).
    fn spawn(config: &Path, log: &Path) -> Result<SwitchProcess, String> {
        let (mut process, ready) = SwitchProcess::start(config, log)?;
        let line = match ready.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let exit = process.child.try_wait().ok().flatten();
                return Err(format!(
                    "the switch printed no ready line within {START_TIMEOUT:?} (exit: {exit:?}); \
                     log:\n{}",
                    log_tail(log, 30)
                ));
            }
        };
        let (quic, fingerprint) =
            parse_ready(&line).ok_or_else(|| format!("unreadable ready line {line:?}"))?;
        process.quic = quic;
        process.fingerprint = fingerprint;
        Ok(process)
    }

    /// Starts the binary and kills it `after` that long, whether or not it is ready by then.
    /// True if it was killed before it was ready: while it recovered.
    fn spawn_and_kill(config: &Path, log: &Path, after: Duration) -> Result<bool, String> {
        let (mut process, ready) = SwitchProcess::start(config, log)?;
        let early = ready.recv_timeout(after).is_err();
        process.kill()?;
        Ok(early)
    }

    /// Starts the binary; the receiver gets its `ready` line.
    fn start(
        config: &Path,
        log: &Path,
    ) -> Result<(SwitchProcess, std::sync::mpsc::Receiver<String>), String> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_switch"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("spawning the switch: {e}"))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no stdout pipe".to_string());
        };
        // The guard exists from here on: an early return kills the child.
        let process = SwitchProcess {
            child,
            quic: SocketAddr::from(([127, 0, 0, 1], 0)),
            fingerprint: Fingerprint([0; 32]),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        Ok((process, rx))
    }

    fn kill(&mut self) -> Result<(), String> {
        self.child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
        self.child.wait().map_err(|e| format!("reaping: {e}"))?;
        Ok(())
    }

    /// Whether the process ended by itself (it never should).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// `ready quic=ADDR http=ADDR fingerprint=HEX`, as `switch serve` prints it.
fn parse_ready(line: &str) -> Option<(SocketAddr, Fingerprint)> {
    let mut quic = None;
    let mut fingerprint = None;
    for word in line.split_whitespace().skip(1) {
        match word.split_once('=')? {
            ("quic", addr) => quic = addr.parse().ok(),
            ("fingerprint", hex) => {
                fingerprint = switch::config::parse_fingerprint(hex).map(Fingerprint);
            }
            _ => {}
        }
    }
    Some((quic?, fingerprint?))
}

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Clients act as the admin identity of the acquirer: the admin sends payments only for its
/// own participant's merchants.
fn write_config(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [log]\nlevel = \"info\"\n\n\
         [authorization]\nexpiry_tick_ms = 100\n\n\
         [snapshot]\nevery_records = 300\n\n\
         [clearing]\nclose_every_seconds = 2\n\n\
         [wal]\nsegment_bytes_max = 1048576\nprepare_segments = true\n\n\
         [tls]\nanonymous_participant = {ACQUIRER}\n\n\
         [[routes]]\nprefix = \"62\"\nissuer = {ISSUER}\n",
        data = data.display().to_string(),
    );
    let path = dir.join("switch.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// Connects and waits until the switch answers an Echo: the end of a restart.
async fn connect(process: &SwitchProcess) -> Result<(Client, Vec<Stream>), String> {
    let trust = Trust::Fingerprint(process.fingerprint);
    let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(process.quic, &trust, None))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let stream = tokio::time::timeout(CALL_TIMEOUT, client.stream())
            .await
            .map_err(|_| "opening a stream timed out".to_string())?
            .map_err(|e| format!("opening a stream: {e}"))?;
        streams.push(stream);
    }
    let echo = Request {
        id: RequestId(1),
        operation: Operation::Echo {
            payload: EchoPayload::new(b"up?".to_vec()).expect("short"),
        },
    };
    match tokio::time::timeout(CALL_TIMEOUT, streams[0].call(&[echo])).await {
        Ok(Ok(r)) if r.first().is_some_and(|r| r.code == Code::Approved) => Ok((client, streams)),
        other => Err(format!("echo after start: {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// The journal.

#[derive(Clone, Debug)]
struct Entry {
    request: Request,
    /// The definitive answer: received while the switch ran, or learnt by sending the
    /// request again after a restart. `None` while unknown (in flight at a kill).
    response: Option<Response>,
    /// The cycle in which it was first sent (0: before the first kill).
    cycle: u32,
    sent_at: Instant,
}

#[derive(Default)]
struct Journal {
    entries: HashMap<u128, Entry>,
    /// Request ids in the order they were first sent.
    order: Vec<u128>,
    acknowledged_live: u64,
}

impl Journal {
    fn sent(&mut self, request: &Request, cycle: u32) {
        let id = request.id.0;
        if self.entries.contains_key(&id) {
            return;
        }
        self.entries.insert(
            id,
            Entry {
                request: request.clone(),
                response: None,
                cycle,
                sent_at: Instant::now(),
            },
        );
        self.order.push(id);
    }

    fn get(&self, id: u128) -> Option<&Entry> {
        self.entries.get(&id)
    }

    fn unknown(&self) -> Vec<u128> {
        self.order
            .iter()
            .copied()
            .filter(|id| self.entries.get(id).is_some_and(|e| e.response.is_none()))
            .collect()
    }
}

/// 91 and 96 say nothing was done: not an outcome.
fn is_definitive(response: &Response) -> bool {
    !matches!(response.code, Code::SystemBusy | Code::SystemMalfunction)
}

struct Shared {
    journal: Mutex<Journal>,
    /// Answers that break the protocol itself (wrong count or id); each is a mismatch.
    protocol: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// Sends one frame and journals it: the requests before they leave, the answers when they
/// arrive. `None` if the frame got no complete, definitive answer.
async fn send(
    shared: &Shared,
    stream: &Stream,
    cycle: u32,
    requests: Vec<Request>,
) -> Option<Vec<Response>> {
    {
        let mut journal = shared.journal.lock();
        for r in &requests {
            journal.sent(r, cycle);
        }
    }
    let responses = match tokio::time::timeout(CALL_TIMEOUT, stream.call(&requests)).await {
        Ok(Ok(responses)) => responses,
        _ => return None,
    };
    if responses.len() != requests.len()
        || responses
            .iter()
            .zip(&requests)
            .any(|(a, q)| a.request_id != q.id)
    {
        shared.protocol.lock().push(format!(
            "a frame of {} requests was answered by {} results: {responses:?}",
            requests.len(),
            responses.len()
        ));
        return None;
    }
    let mut complete = true;
    let mut journal = shared.journal.lock();
    for response in &responses {
        if !is_definitive(response) {
            complete = false;
            continue;
        }
        if let Some(entry) = journal.entries.get_mut(&response.request_id.0)
            && entry.response.is_none()
        {
            entry.response = Some(response.clone());
            journal.acknowledged_live += 1;
        }
    }
    complete.then_some(responses)
}

// ---------------------------------------------------------------------------------------
// The load.

fn fresh_id(rng: &mut StdRng) -> RequestId {
    loop {
        let id: u128 = rng.r#gen();
        if id != 0 && id != u128::MAX {
            return RequestId(id);
        }
    }
}

fn authorize(rng: &mut StdRng, number: CardNumber, merchant: AccountId) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Authorize {
            number,
            merchant,
            amount: Amount(rng.gen_range(1..=AMOUNT_MAX)),
            currency: CNY,
            expiry_secs: 0,
        },
    }
}

fn sale(rng: &mut StdRng, number: CardNumber, merchant: AccountId) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Sale {
            number,
            merchant,
            amount: Amount(rng.gen_range(1..=AMOUNT_MAX)),
            currency: CNY,
        },
    }
}

fn capture(rng: &mut StdRng, authorization: RequestId, amount: u64) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Capture {
            authorization,
            amount: Amount(amount),
        },
    }
}

fn reverse(rng: &mut StdRng, authorization: RequestId) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Reverse { authorization },
    }
}

fn refund(rng: &mut StdRng, original: RequestId, amount: u64) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Refund {
            original,
            amount: Amount(amount),
            currency: CNY,
        },
    }
}

fn amount_of(request: &Request) -> u64 {
    match &request.operation {
        Operation::Authorize { amount, .. }
        | Operation::Sale { amount, .. }
        | Operation::Capture { amount, .. }
        | Operation::Refund { amount, .. }
        | Operation::Fund { amount, .. } => amount.0,
        _ => 0,
    }
}

struct Worker {
    shared: Arc<Shared>,
    streams: Vec<Stream>,
    rng: StdRng,
    cycle: u32,
}

impl Worker {
    fn stream(&mut self) -> Stream {
        let i = self.rng.gen_range(0..self.streams.len());
        self.streams[i].clone()
    }

    async fn one(&mut self, request: Request) -> Option<Response> {
        let stream = self.stream();
        send(&self.shared, &stream, self.cycle, vec![request])
            .await?
            .into_iter()
            .next()
    }

    fn card(&mut self) -> CardNumber {
        card_number(self.rng.gen_range(0..CARDS))
    }

    fn merchant(&mut self) -> AccountId {
        merchant_account(self.rng.gen_range(0..MERCHANTS))
    }

    async fn run(mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            if self.flow().await.is_none() {
                return;
            }
        }
    }

    /// One business flow; `None` when the switch stopped answering.
    async fn flow(&mut self) -> Option<()> {
        let (card, merchant) = (self.card(), self.merchant());
        match self.rng.gen_range(0..100) {
            0..=31 => self.authorization(card, merchant).await,
            32..=55 => self.sale(card, merchant).await,
            56..=69 => self.burst().await,
            70..=83 => self.race(card, merchant).await,
            84..=89 => self.expiring(card, merchant).await,
            90..=91 => {
                // An admin operation among the payments: a top-up from the issuer's funds.
                let account = card_account(self.rng.gen_range(0..CARDS));
                let request = Request {
                    id: fresh_id(&mut self.rng),
                    operation: Operation::Fund {
                        account,
                        amount: Amount(self.rng.gen_range(1..=AMOUNT_MAX)),
                        currency: CNY,
                    },
                };
                self.one(request).await.map(|_| ())
            }
            92..=96 => {
                // Declined before the ledger: no route (92), no account (14).
                let number = if self.rng.gen_bool(0.5) {
                    "4111111111111111"
                } else {
                    "6299999999999999"
                };
                let request = authorize(
                    &mut self.rng,
                    CardNumber::new(number).expect("digits"),
                    merchant,
                );
                self.one(request).await.map(|_| ())
            }
            _ => {
                // A reversal of an authorization that never comes.
                let id = fresh_id(&mut self.rng);
                let request = reverse(&mut self.rng, id);
                self.one(request).await.map(|_| ())
            }
        }
    }

    async fn authorization(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let auth = authorize(&mut self.rng, card, merchant);
        let (id, held) = (auth.id, amount_of(&auth));
        if self.one(auth).await?.code != Code::Approved {
            return Some(());
        }
        match self.rng.gen_range(0..6) {
            0 => {
                let c = capture(&mut self.rng, id, held);
                self.one(c).await?;
            }
            1 => {
                let partial = self.rng.gen_range(1..=held);
                let c = capture(&mut self.rng, id, partial);
                self.one(c).await?;
            }
            2 => {
                let r = reverse(&mut self.rng, id);
                self.one(r).await?;
            }
            3 => {} // left held
            4 => {
                let captured = self.rng.gen_range(1..=held);
                let c = capture(&mut self.rng, id, captured);
                if self.one(c).await?.code == Code::Approved {
                    self.refunds(id, captured).await?;
                }
            }
            _ => {
                // More than held: declined (13), and the hold stays until reversed.
                let c = capture(&mut self.rng, id, held + 1);
                self.one(c).await?;
                let r = reverse(&mut self.rng, id);
                self.one(r).await?;
            }
        }
        Some(())
    }

    /// A hold of a second or two, left to expire, or captured or reversed around the time it
    /// expires (either may win; the answer says which).
    async fn expiring(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let mut auth = authorize(&mut self.rng, card, merchant);
        if let Operation::Authorize { expiry_secs, .. } = &mut auth.operation {
            *expiry_secs = self.rng.gen_range(1..=2);
        }
        let (id, held) = (auth.id, amount_of(&auth));
        if self.one(auth).await?.code != Code::Approved || self.rng.gen_bool(0.5) {
            return Some(());
        }
        let wait = Duration::from_millis(self.rng.gen_range(500..2500));
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until {
            if self.shared.stop.load(Ordering::Acquire) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let then = if self.rng.gen_bool(0.5) {
            capture(&mut self.rng, id, held)
        } else {
            reverse(&mut self.rng, id)
        };
        self.one(then).await.map(|_| ())
    }

    /// One or two refunds of `original`, sometimes one too many (declined 13).
    async fn refunds(&mut self, original: RequestId, moved: u64) -> Option<()> {
        let first = self.rng.gen_range(1..=moved);
        let r = refund(&mut self.rng, original, first);
        self.one(r).await?;
        if self.rng.gen_bool(0.3) {
            let extra = if self.rng.gen_bool(0.5) {
                moved - first + 1
            } else {
                (moved - first).max(1)
            };
            let r = refund(&mut self.rng, original, extra);
            self.one(r).await?;
        }
        Some(())
    }

    async fn sale(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let s = sale(&mut self.rng, card, merchant);
        let (id, moved) = (s.id, amount_of(&s));
        if self.one(s).await?.code == Code::Approved && self.rng.gen_bool(0.5) {
            self.refunds(id, moved).await?;
        }
        Some(())
    }

    /// Several independent operations in one frame, then the follow-ups in another.
    async fn burst(&mut self) -> Option<()> {
        let n = self.rng.gen_range(2..=8);
        let mut frame = Vec::with_capacity(n);
        for _ in 0..n {
            let (card, merchant) = (self.card(), self.merchant());
            frame.push(if self.rng.gen_bool(0.5) {
                authorize(&mut self.rng, card, merchant)
            } else {
                sale(&mut self.rng, card, merchant)
            });
        }
        let stream = self.stream();
        let answers = send(&self.shared, &stream, self.cycle, frame.clone()).await?;
        let mut follow = Vec::new();
        for (request, answer) in frame.iter().zip(&answers) {
            if answer.code != Code::Approved
                || !matches!(request.operation, Operation::Authorize { .. })
            {
                continue;
            }
            follow.push(if self.rng.gen_bool(0.5) {
                capture(&mut self.rng, request.id, amount_of(request))
            } else {
                reverse(&mut self.rng, request.id)
            });
        }
        if !follow.is_empty() {
            let stream = self.stream();
            send(&self.shared, &stream, self.cycle, follow).await?;
        }
        Some(())
    }

    /// A capture and a reverse of the same authorization, in flight at once on two
    /// streams: exactly one of them may take effect.
    async fn race(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let auth = authorize(&mut self.rng, card, merchant);
        let (id, held) = (auth.id, amount_of(&auth));
        if self.one(auth).await?.code != Code::Approved {
            return Some(());
        }
        let amount = self.rng.gen_range(1..=held);
        let c = capture(&mut self.rng, id, amount);
        let r = reverse(&mut self.rng, id);
        let i = self.rng.gen_range(0..self.streams.len());
        let j = (i + 1) % self.streams.len();
        let (a, b) = (self.streams[i].clone(), self.streams[j].clone());
        let (x, y) = tokio::join!(
            send(&self.shared, &a, self.cycle, vec![c]),
            send(&self.shared, &b, self.cycle, vec![r])
        );
        x.and(y).map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------
// Checking.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An acknowledged operation is missing or answers differently.
    Lost,
    /// Anything else that does not add up.
    Mismatch,
}

#[derive(Clone, Debug)]
struct Problem {
    kind: Kind,
    id: Option<u128>,
    what: String,
}

fn lost(id: u128, what: String) -> Problem {
    Problem {
        kind: Kind::Lost,
        id: Some(id),
        what,
    }
}

fn mismatch(id: Option<u128>, what: String) -> Problem {
    Problem {
        kind: Kind::Mismatch,
        id,
        what,
    }
}

/// What the switch showed in a read-only pass.
#[derive(Default)]
struct Observed {
    status: HashMap<u128, Status>,
    balances: HashMap<AccountId, (i128, i128)>,
    /// Holds seen expired by an earlier pass: expiry is for good, also across a restart.
    known_expired: HashSet<u128>,
    /// Every expiring hold was due well before this pass: none may still be pending.
    all_due: bool,
}

fn expiry_secs_of(request: &Request) -> u32 {
    match request.operation {
        Operation::Authorize { expiry_secs, .. } => expiry_secs,
        _ => 0,
    }
}

/// Whether the hold of authorization `id` may be gone by expiry: in that case, whether it
/// is live is read from its status, never assumed.
fn expires(journal: &Journal, id: u128) -> bool {
    journal
        .get(id)
        .is_some_and(|e| expiry_secs_of(&e.request) > 0)
}

/// An authorization or sale and what happened to it, as the journal says.
#[derive(Clone, Copy, Debug, Default)]
struct Original {
    is_sale: bool,
    card: u128,
    merchant: AccountId,
    amount: u64,
    /// Took effect (approved, or found applied).
    applied: bool,
    /// Whether the answer to it was received (else its effect was inferred).
    acknowledged: bool,
    captured: Option<(u128, u64)>,
    reversed: Option<u128>,
    refunded: u64,
    /// A hold that expires by itself (0: the server's default of days, never in a run).
    expiry_secs: u32,
    sent_at: Option<Instant>,
}

/// Did a request take effect, and with what amount? From its answer if it has one; else
/// (in flight at a kill) from what the read-only pass saw.
fn effect(entry: &Entry, journal: &Journal, observed: &Observed) -> Result<Option<u64>, String> {
    let request = &entry.request;
    if let Some(response) = &entry.response {
        if response.code != Code::Approved {
            return Ok(None);
        }
        let movement = match (&request.operation, &response.body) {
            (Operation::Authorize { .. }, ResponseBody::Authorize(m))
            | (Operation::Sale { .. }, ResponseBody::Sale(m))
            | (Operation::Capture { .. }, ResponseBody::Capture(m))
            | (Operation::Reverse { .. }, ResponseBody::Reverse(m))
            | (Operation::Refund { .. }, ResponseBody::Refund(m))
            | (Operation::Fund { .. }, ResponseBody::Fund(m)) => *m,
            (Operation::Echo { .. }, _)
            | (Operation::CreateParticipant { .. }, _)
            | (Operation::CreateAccount { .. }, _) => return Ok(None),
            _ => return Err(format!("answer of the wrong shape {response:?}")),
        };
        let expected_amount = match &request.operation {
            Operation::Reverse { authorization } => {
                if movement == Movement::default() {
                    // Nothing was held any more (or yet): approved, and nothing released.
                    return Ok(None);
                }
                journal
                    .get(authorization.0)
                    .map_or(0, |a| amount_of(&a.request))
            }
            _ => amount_of(request),
        };
        let expected = Movement {
            transfer: switch::wire::TransferId(request.id.0),
            amount: Amount(expected_amount),
            currency: CNY,
        };
        if movement != expected {
            return Err(format!("approved with {movement:?}, expected {expected:?}"));
        }
        return Ok(Some(expected_amount));
    }
    let status_of = |id: RequestId| {
        observed
            .status
            .get(&id.0)
            .ok_or_else(|| format!("no status read for {:#x}", id.0))
    };
    Ok(match &request.operation {
        Operation::Authorize { .. }
        | Operation::Sale { .. }
        | Operation::Refund { .. }
        | Operation::Fund { .. } => {
            (status_of(request.id)?.state != TransferState::NotFound).then(|| amount_of(request))
        }
        Operation::Capture {
            authorization,
            amount,
        } => {
            let held = journal
                .get(authorization.0)
                .map_or(0, |a| amount_of(&a.request));
            let s = status_of(*authorization)?;
            (s.state == TransferState::Captured && s.captured == *amount && amount.0 <= held)
                .then_some(amount.0)
        }
        Operation::Reverse { authorization } => {
            let held = journal
                .get(authorization.0)
                .map_or(0, |a| amount_of(&a.request));
            let s = status_of(*authorization)?;
            (s.state == TransferState::Reversed && held > 0).then_some(held)
        }
        _ => None,
    })
}

/// The status ids a read-only pass needs to decide what the unknown requests did.
fn status_ids_for(journal: &Journal, ids: &[u128]) -> Vec<u128> {
    let mut out = Vec::new();
    for id in ids {
        let Some(entry) = journal.get(*id) else {
            continue;
        };
        match &entry.request.operation {
            Operation::Authorize { .. } | Operation::Sale { .. } | Operation::Fund { .. } => {
                out.push(*id)
            }
            Operation::Refund { original, .. } => {
                out.push(*id);
                out.push(original.0);
            }
            Operation::Capture { authorization, .. } | Operation::Reverse { authorization } => {
                out.push(authorization.0)
            }
            _ => {}
        }
    }
    out
}

/// Checks the switch's state as observed against the journal: statuses of the ids that were
/// read, every balance, conservation. Returns, for each request without an answer, whether
/// it was found to have taken effect.
fn check(journal: &Journal, observed: &Observed, problems: &mut Vec<Problem>) -> HashSet<u128> {
    let mut originals: HashMap<u128, Original> = HashMap::new();
    let mut ledger: HashMap<AccountId, i128> = HashMap::new();
    let mut applied_unknown = HashSet::new();
    let card_of =
        |number: &CardNumber| -> Option<u128> { (0..CARDS).find(|i| card_number(*i) == *number) };
    // First the authorizations and sales, then what acts on them.
    for pass in 0..2 {
        for id in &journal.order {
            let Some(entry) = journal.get(*id) else {
                continue;
            };
            let first = matches!(
                entry.request.operation,
                Operation::Authorize { .. } | Operation::Sale { .. } | Operation::Fund { .. }
            );
            if first != (pass == 0) {
                continue;
            }
            let amount = match effect(entry, journal, observed) {
                Ok(amount) => amount,
                Err(what) => {
                    problems.push(mismatch(Some(*id), format!("{:#x}: {what}", id)));
                    continue;
                }
            };
            if entry.response.is_none() && amount.is_some() {
                applied_unknown.insert(*id);
            }
            let acknowledged = entry.response.is_some();
            match &entry.request.operation {
                Operation::Fund {
                    account, amount: a, ..
                } if amount.is_some() => {
                    *ledger.entry(*account).or_default() += i128::from(a.0);
                    *ledger.entry(funding(ISSUER)).or_default() -= i128::from(a.0);
                }
                Operation::Authorize {
                    number,
                    merchant,
                    amount: a,
                    ..
                }
                | Operation::Sale {
                    number,
                    merchant,
                    amount: a,
                    ..
                } => {
                    let is_sale = matches!(entry.request.operation, Operation::Sale { .. });
                    let Some(card) = card_of(number) else {
                        if amount.is_some() {
                            problems.push(mismatch(
                                Some(*id),
                                format!("{id:#x}: approved for a number that has no account"),
                            ));
                        }
                        continue;
                    };
                    originals.insert(
                        *id,
                        Original {
                            is_sale,
                            card,
                            merchant: *merchant,
                            amount: a.0,
                            applied: amount.is_some(),
                            acknowledged,
                            expiry_secs: expiry_secs_of(&entry.request),
                            sent_at: Some(entry.sent_at),
                            ..Original::default()
                        },
                    );
                    if is_sale && amount.is_some() {
                        *ledger.entry(card_account(card)).or_default() -= i128::from(a.0);
                        *ledger.entry(*merchant).or_default() += i128::from(a.0);
                    }
                }
                Operation::Capture { authorization, .. } | Operation::Reverse { authorization } => {
                    let Some(moved) = amount else { continue };
                    let is_capture = matches!(entry.request.operation, Operation::Capture { .. });
                    let Some(o) = originals
                        .get_mut(&authorization.0)
                        .filter(|o| o.applied && !o.is_sale)
                    else {
                        problems.push(mismatch(
                            Some(*id),
                            format!(
                                "{id:#x}: took effect on {:#x}, which holds nothing",
                                authorization.0
                            ),
                        ));
                        continue;
                    };
                    if let Some(other) = o.captured.map(|c| c.0).or(o.reversed) {
                        problems.push(mismatch(
                            Some(*id),
                            format!(
                                "authorization {:#x} resolved twice: by {other:#x} and by {id:#x}",
                                authorization.0
                            ),
                        ));
                        continue;
                    }
                    if is_capture {
                        o.captured = Some((*id, moved));
                        *ledger.entry(card_account(o.card)).or_default() -= i128::from(moved);
                        *ledger.entry(o.merchant).or_default() += i128::from(moved);
                    } else {
                        o.reversed = Some(*id);
                    }
                }
                Operation::Refund { original, .. } => {
                    let Some(moved) = amount else { continue };
                    let Some(o) = originals.get_mut(&original.0) else {
                        problems.push(mismatch(
                            Some(*id),
                            format!("refund {id:#x} took effect on unknown {:#x}", original.0),
                        ));
                        continue;
                    };
                    let refundable = if o.is_sale {
                        o.amount
                    } else {
                        o.captured.map_or(0, |c| c.1)
                    };
                    o.refunded += moved;
                    if o.refunded > refundable {
                        problems.push(mismatch(
                            Some(*id),
                            format!(
                                "{:#x} refunded {} of {refundable} (refund {id:#x})",
                                original.0, o.refunded
                            ),
                        ));
                    }
                    *ledger.entry(o.merchant).or_default() -= i128::from(moved);
                    *ledger.entry(card_account(o.card)).or_default() += i128::from(moved);
                }
                _ => {}
            }
        }
    }

    // Holds: approved authorizations neither captured nor reversed.
    // Holds that expire by themselves are live as long as their status says so.
    let mut held: HashMap<AccountId, i128> = HashMap::new();
    for (id, o) in &originals {
        if !o.applied || o.is_sale || o.captured.is_some() || o.reversed.is_some() {
            continue;
        }
        let live = if o.expiry_secs == 0 {
            true
        } else {
            let known_expired = observed.known_expired.contains(id);
            match observed.status.get(id).map(|s| s.state) {
                Some(TransferState::Expired) => {
                    let due = Duration::from_secs(u64::from(o.expiry_secs));
                    if o.sent_at.is_some_and(|t| t.elapsed() < due) {
                        problems.push(mismatch(
                            Some(*id),
                            format!("{id:#x} expired before its {}s were up", o.expiry_secs),
                        ));
                    }
                    false
                }
                Some(TransferState::Pending) if known_expired => {
                    problems.push(mismatch(
                        Some(*id),
                        format!("{id:#x} was seen expired, and is held again"),
                    ));
                    true
                }
                Some(TransferState::Pending) if observed.all_due => {
                    problems.push(mismatch(
                        Some(*id),
                        format!("{id:#x} is still held, long after its {}s", o.expiry_secs),
                    ));
                    true
                }
                Some(_) => true,
                None if known_expired => false,
                None => {
                    problems.push(mismatch(
                        Some(*id),
                        format!("no status read for the expiring hold {id:#x}"),
                    ));
                    true
                }
            }
        };
        if live {
            *held.entry(card_account(o.card)).or_default() += i128::from(o.amount);
        }
    }

    // Statuses of the ids that were read.
    for (id, seen) in &observed.status {
        let Some(entry) = journal.get(*id) else {
            continue;
        };
        let expected = expected_status(*id, entry, originals.get(id), journal, observed);
        let Some(expected) = expected else { continue };
        let comparable = |s: &Status| (s.state, s.amount, s.captured, s.refunded);
        if comparable(seen) != comparable(&expected) {
            let what = format!(
                "{id:#x} ({:?}): the switch says (state, amount, captured, refunded) = {:?}, \
                 the journal {:?}",
                entry.request.operation.op(),
                comparable(seen),
                comparable(&expected)
            );
            let acknowledged =
                originals.get(id).is_none_or(|o| o.acknowledged) && entry.response.is_some();
            problems.push(
                if acknowledged && expected.state != TransferState::NotFound {
                    lost(*id, what)
                } else {
                    mismatch(Some(*id), what)
                },
            );
        }
    }

    // Balances and conservation.
    let mut ledger_sum: i128 = 0;
    let mut held_sum: i128 = 0;
    for account in all_accounts() {
        let Some(&(available, seen_ledger)) = observed.balances.get(&account) else {
            problems.push(mismatch(None, format!("no balance read for {account:?}")));
            continue;
        };
        let want_ledger = ledger.get(&account).copied().unwrap_or(0);
        let want_held = held.get(&account).copied().unwrap_or(0);
        ledger_sum += seen_ledger;
        held_sum += seen_ledger - available;
        if (seen_ledger, seen_ledger - available) != (want_ledger, want_held) {
            problems.push(mismatch(
                None,
                format!(
                    "{account:?}: ledger {seen_ledger} held {}, journal says ledger \
                     {want_ledger} held {want_held}",
                    seen_ledger - available
                ),
            ));
        }
        if account.0 >= 0x1000 && account.0 < 0x1000 + CARDS && available < 0 {
            problems.push(mismatch(
                None,
                format!("{account:?} is overdrawn: available {available}"),
            ));
        }
    }
    if ledger_sum != 0 {
        problems.push(mismatch(
            None,
            format!("money is not conserved: balances sum to {ledger_sum}"),
        ));
    }
    let holds: i128 = held.values().sum();
    if held_sum != holds {
        problems.push(mismatch(
            None,
            format!("holds sum to {held_sum}, journal says {holds}"),
        ));
    }
    applied_unknown
}

fn expected_status(
    id: u128,
    entry: &Entry,
    original: Option<&Original>,
    journal: &Journal,
    observed: &Observed,
) -> Option<Status> {
    let status = |state, amount: u64, captured: u64, refunded: u64| Status {
        state,
        currency: CNY,
        transfer: switch::wire::TransferId(id),
        amount: Amount(amount),
        captured: Amount(captured),
        refunded: Amount(refunded),
    };
    let not_found = Status {
        state: TransferState::NotFound,
        currency: Currency(0),
        transfer: switch::wire::TransferId(0),
        amount: Amount(0),
        captured: Amount(0),
        refunded: Amount(0),
    };
    Some(match &entry.request.operation {
        Operation::Authorize { .. } | Operation::Sale { .. } => {
            let o = original?;
            if !o.applied {
                not_found
            } else if o.is_sale {
                status(TransferState::Posted, o.amount, 0, o.refunded)
            } else if let Some((_, c)) = o.captured {
                status(TransferState::Captured, o.amount, c, o.refunded)
            } else if o.reversed.is_some() {
                status(TransferState::Reversed, o.amount, 0, 0)
            } else if o.expiry_secs > 0
                && observed
                    .status
                    .get(&id)
                    .is_some_and(|s| s.state == TransferState::Expired)
            {
                // Whether it was due is checked with the balances.
                status(TransferState::Expired, o.amount, 0, 0)
            } else {
                status(TransferState::Pending, o.amount, 0, 0)
            }
        }
        Operation::Refund { .. } | Operation::Fund { .. } => {
            match effect(entry, journal, observed).ok()? {
                Some(amount) => status(TransferState::Posted, amount, 0, 0),
                None => not_found,
            }
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Talking to the restarted switch.

/// Sends `requests` in chunks, a few chunks in flight at once; the answers in order.
async fn call_all(streams: &[Stream], requests: &[Request]) -> Result<Vec<Response>, String> {
    let mut out = Vec::with_capacity(requests.len());
    for group in requests.chunks(CHECK_CHUNK * streams.len()) {
        let calls: Vec<_> = group
            .chunks(CHECK_CHUNK)
            .zip(streams.iter().cycle())
            .map(|(chunk, stream)| {
                let (stream, chunk) = (stream.clone(), chunk.to_vec());
                tokio::spawn(async move {
                    tokio::time::timeout(CALL_TIMEOUT, stream.call(&chunk)).await
                })
            })
            .collect();
        for (call, chunk) in calls.into_iter().zip(group.chunks(CHECK_CHUNK)) {
            let answers = match call.await {
                Ok(Ok(Ok(answers))) => answers,
                other => return Err(format!("a check call failed: {other:?}")),
            };
            if answers.len() != chunk.len()
                || answers.iter().zip(chunk).any(|(a, q)| a.request_id != q.id)
            {
                return Err(format!(
                    "{} requests answered by {} results",
                    chunk.len(),
                    answers.len()
                ));
            }
            out.extend(answers);
        }
    }
    Ok(out)
}

/// Reads the status of `ids`; changes nothing.
async fn observe_statuses(
    streams: &[Stream],
    rng: &mut StdRng,
    ids: &[u128],
) -> Result<HashMap<u128, Status>, String> {
    let mut out = HashMap::with_capacity(ids.len());
    let queries: Vec<Request> = ids
        .iter()
        .map(|id| Request {
            id: fresh_id(rng),
            operation: Operation::TransferStatus {
                lookup: RequestId(*id),
            },
        })
        .collect();
    for (id, answer) in ids.iter().zip(call_all(streams, &queries).await?) {
        match answer.body {
            ResponseBody::TransferStatus(s) if answer.code == Code::Approved => {
                out.insert(*id, s);
            }
            _ => return Err(format!("status of {id:#x}: {answer:?}")),
        }
    }
    Ok(out)
}

/// Reads the status of `ids` and the balance of every account; changes nothing.
async fn observe(streams: &[Stream], rng: &mut StdRng, ids: &[u128]) -> Result<Observed, String> {
    let mut observed = Observed {
        status: observe_statuses(streams, rng, ids).await?,
        ..Observed::default()
    };
    let accounts = all_accounts();
    let queries: Vec<Request> = accounts
        .iter()
        .map(|account| Request {
            id: fresh_id(rng),
            operation: Operation::BalanceInquiry {
                target: BalanceTarget::Account(*account),
            },
        })
        .collect();
    for (account, answer) in accounts.iter().zip(call_all(streams, &queries).await?) {
        match answer.body {
            ResponseBody::BalanceInquiry(b) if answer.code == Code::Approved => {
                observed.balances.insert(*account, (b.available, b.ledger));
            }
            _ => return Err(format!("balance of {account:?}: {answer:?}")),
        }
    }
    Ok(observed)
}

// ---------------------------------------------------------------------------------------
// The run.

#[derive(Default)]
struct Report {
    seed: u64,
    cycles: u32,
    seconds: f64,
    sent: u64,
    acknowledged_live: u64,
    in_flight_at_kill: Vec<u64>,
    in_flight_found_applied: u64,
    repeats_checked: u64,
    statuses_checked: u64,
    lost: u64,
    mismatches: u64,
    /// Spawn to the `ready` line, and spawn to the first answered request, per restart.
    ready_ms: Vec<f64>,
    recovery_ms: Vec<f64>,
    /// From the switch's log: the time each start spent replaying the log (those killed while
    /// starting included, if they got that far), and how many found a torn record at its end.
    replay_ms: Vec<f64>,
    torn_tails_trimmed: u64,
    /// From the switch's log: snapshots written while it ran (built by replaying the log), and
    /// starts that loaded one.
    snapshots_written: u64,
    starts_from_snapshot: u64,
    /// Clearing checks made (one a cycle), and skipped because more windows were closed than
    /// ListWindows lists; windows at the last check.
    clearing_checks: u64,
    clearing_checks_skipped: u64,
    windows_seen: u64,
    /// Extra kills during a start, and how many of them came before the switch was ready.
    start_kills: u64,
    start_kills_before_ready: u64,
    /// Authorizations seen expired by the switch itself.
    holds_expired: u64,
    wal_bytes: u64,
    problems: Vec<String>,
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// (min, median, max).
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (0.0, 0.0, 0.0),
        n => (v[0], v[n / 2], v[n - 1]),
    }
}

fn json_times(values: &[f64]) -> String {
    let (min, median, max) = stats(values);
    let all: Vec<String> = values.iter().map(|x| format!("{x:.1}")).collect();
    format!(
        "{{\"min\": {min:.1}, \"median\": {median:.1}, \"max\": {max:.1}, \"all\": [{}]}}",
        all.join(", ")
    )
}

impl Report {
    fn json(&self) -> String {
        let in_flight: Vec<String> = self.in_flight_at_kill.iter().map(u64::to_string).collect();
        let problems: Vec<String> = self.problems.iter().map(|p| json_string(p)).collect();
        let fields = [
            ("seed", self.seed.to_string()),
            ("cycles", self.cycles.to_string()),
            ("seconds", format!("{:.1}", self.seconds)),
            ("operations_sent", self.sent.to_string()),
            ("acknowledged", self.acknowledged_live.to_string()),
            ("lost", self.lost.to_string()),
            ("mismatches", self.mismatches.to_string()),
            ("in_flight_at_kill", format!("[{}]", in_flight.join(", "))),
            (
                "in_flight_found_applied",
                self.in_flight_found_applied.to_string(),
            ),
            ("repeats_checked", self.repeats_checked.to_string()),
            ("statuses_checked", self.statuses_checked.to_string()),
            ("recovery_ms", json_times(&self.recovery_ms)),
            ("ready_ms", json_times(&self.ready_ms)),
            ("replay_ms", json_times(&self.replay_ms)),
            ("torn_tails_trimmed", self.torn_tails_trimmed.to_string()),
            ("snapshots_written", self.snapshots_written.to_string()),
            (
                "starts_from_snapshot",
                self.starts_from_snapshot.to_string(),
            ),
            ("clearing_checks", self.clearing_checks.to_string()),
            (
                "clearing_checks_skipped",
                self.clearing_checks_skipped.to_string(),
            ),
            ("windows_seen", self.windows_seen.to_string()),
            ("start_kills", self.start_kills.to_string()),
            (
                "start_kills_before_ready",
                self.start_kills_before_ready.to_string(),
            ),
            ("holds_expired", self.holds_expired.to_string()),
            ("wal_bytes", self.wal_bytes.to_string()),
            ("problems", format!("[{}]", problems.join(", "))),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("  \"{key}\": {value}"))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }

    fn summary(&self) -> String {
        let (rmin, rmed, rmax) = stats(&self.recovery_ms);
        let (_, pmed, pmax) = stats(&self.replay_ms);
        let mut s = String::new();
        let _ = writeln!(s, "chaos: seed {}", self.seed);
        let _ = writeln!(
            s,
            "chaos: {} kill -9 cycles in {:.1} s; {} operations sent, {} acknowledged while \
             running",
            self.cycles, self.seconds, self.sent, self.acknowledged_live
        );
        let _ = writeln!(
            s,
            "chaos: in flight at the kills: {} (found applied: {}); re-sent and compared: {}; \
             statuses compared: {}",
            self.in_flight_at_kill.iter().sum::<u64>(),
            self.in_flight_found_applied,
            self.repeats_checked,
            self.statuses_checked
        );
        let _ = writeln!(
            s,
            "chaos: restarts also killed while starting: {} ({} before ready)",
            self.start_kills, self.start_kills_before_ready
        );
        let _ = writeln!(
            s,
            "chaos: lost {}, mismatches {}",
            self.lost, self.mismatches
        );
        let _ = writeln!(
            s,
            "chaos: recovery (spawn to first answer) ms: min {rmin:.1}, median {rmed:.1}, max \
             {rmax:.1}; of which loading the snapshot and replaying the log: median {pmed:.1}, \
             max {pmax:.1}"
        );
        let _ = writeln!(
            s,
            "chaos: snapshots written while serving: {}; starts from a snapshot: {}",
            self.snapshots_written, self.starts_from_snapshot
        );
        let _ = writeln!(
            s,
            "chaos: clearing checked {} times (skipped {}: more windows than listed), {} windows \
             at the last",
            self.clearing_checks, self.clearing_checks_skipped, self.windows_seen
        );
        let _ = writeln!(
            s,
            "chaos: torn log tails trimmed at restarts: {}; holds expired: {}; write-ahead log {} \
             bytes at the end",
            self.torn_tails_trimmed, self.holds_expired, self.wal_bytes
        );
        s
    }
}

/// The line the switch logs once it has recovered (its `elapsed_ms` is the recovery).
const RECOVERED_LINE: &str = "recovered from the snapshot and the write-ahead log after it";

/// What the switch logged, counted after the run.
struct Logged {
    /// Starts that trimmed a torn tail.
    torn_tails_trimmed: u64,
    /// The time each start spent recovering (`elapsed_ms` of `RECOVERED_LINE`: loading the
    /// snapshot and replaying the log; the first start, on an empty directory, is left out).
    recovery_ms: Vec<f64>,
    snapshots_written: u64,
    /// Starts that recovered from a snapshot.
    starts_from_snapshot: u64,
}

fn logged(log: &Path) -> Logged {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let count = |keep: &dyn Fn(&str) -> bool| text.lines().filter(|l| keep(l)).count() as u64;
    let recovery_ms = text
        .lines()
        .filter(|l| l.contains(RECOVERED_LINE))
        .filter_map(|l| {
            let rest = l.split("elapsed_ms=").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .skip(1)
        .collect();
    Logged {
        torn_tails_trimmed: count(&|l| l.contains("torn tail trimmed")),
        recovery_ms,
        snapshots_written: count(&|l| l.contains("snapshot written")),
        starts_from_snapshot: count(&|l| {
            l.contains(RECOVERED_LINE)
                && !l.contains("snapshot=\"none\"")
                && !l.contains("snapshot=none")
        }),
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

struct Run {
    settings: Settings,
    rng: StdRng,
    shared: Arc<Shared>,
    report: Report,
    problems: Vec<Problem>,
    config: PathBuf,
    log: PathBuf,
    /// Authorizations seen expired.
    expired: HashSet<u128>,
}

impl Run {
    async fn spawn(&mut self) -> Result<(SwitchProcess, Client, Vec<Stream>), String> {
        let started = Instant::now();
        let (config, log) = (self.config.clone(), self.log.clone());
        let process = tokio::task::spawn_blocking(move || SwitchProcess::spawn(&config, &log))
            .await
            .map_err(|e| format!("{e}"))??;
        let ready = started.elapsed();
        let (client, streams) = connect(&process).await?;
        self.report.ready_ms.push(ready.as_secs_f64() * 1e3);
        self.report
            .recovery_ms
            .push(started.elapsed().as_secs_f64() * 1e3);
        Ok((process, client, streams))
    }

    /// Starts the switch and kills it again at a random moment up to its last recovery time:
    /// mostly while it replays its log and opens a new segment.
    async fn kill_while_starting(&mut self) -> Result<(), String> {
        let last_ms = self
            .report
            .ready_ms
            .last()
            .copied()
            .unwrap_or(100.0)
            .max(10.0);
        let after = Duration::from_secs_f64(self.rng.gen_range(0.0..last_ms) / 1e3);
        let (config, log) = (self.config.clone(), self.log.clone());
        let early = tokio::task::spawn_blocking(move || {
            SwitchProcess::spawn_and_kill(&config, &log, after)
        })
        .await
        .map_err(|e| format!("{e}"))??;
        self.report.start_kills += 1;
        self.report.start_kills_before_ready += u64::from(early);
        Ok(())
    }

    async fn setup(&mut self, streams: &[Stream]) -> Result<(), String> {
        let mut requests = vec![
            Operation::CreateParticipant {
                participant: ParticipantId(ISSUER),
                roles: Roles::ISSUER,
                name: ParticipantName::new("issuer").expect("short"),
            },
            Operation::CreateParticipant {
                participant: ParticipantId(ACQUIRER),
                roles: Roles::ACQUIRER,
                name: ParticipantName::new("acquirer").expect("short"),
            },
        ];
        for i in 0..CARDS {
            requests.push(Operation::CreateAccount {
                account: card_account(i),
                owner: ParticipantId(ISSUER),
                currency: CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: card_number(i),
            });
        }
        for i in 0..MERCHANTS {
            requests.push(Operation::CreateAccount {
                account: merchant_account(i),
                owner: ParticipantId(ACQUIRER),
                currency: CNY,
                flags: AccountFlags(0),
                number: CardNumber::EMPTY,
            });
        }
        for i in 0..CARDS {
            requests.push(Operation::Fund {
                account: card_account(i),
                amount: Amount(if i < POOR_CARDS {
                    POOR_FUNDING
                } else {
                    RICH_FUNDING
                }),
                currency: CNY,
            });
        }
        let requests: Vec<Request> = requests
            .into_iter()
            .map(|operation| Request {
                id: fresh_id(&mut self.rng),
                operation,
            })
            .collect();
        // One at a time, in order: accounts before their funding.
        for request in requests {
            let answer = send(&self.shared, &streams[0], 0, vec![request.clone()]).await;
            match answer.as_deref() {
                Some([a]) if a.code == Code::Approved => {}
                other => return Err(format!("setup {request:?}: {other:?}")),
            }
        }
        Ok(())
    }

    /// Load until a random moment, then SIGKILL. Returns how many requests were in flight.
    async fn load_and_kill(
        &mut self,
        process: &mut SwitchProcess,
        client: Client,
        streams: Vec<Stream>,
        cycle: u32,
    ) -> Result<u64, String> {
        self.shared.stop.store(false, Ordering::Release);
        let workers: Vec<_> = (0..self.settings.workers)
            .map(|_| {
                let worker = Worker {
                    shared: self.shared.clone(),
                    streams: streams.clone(),
                    rng: StdRng::seed_from_u64(self.rng.r#gen()),
                    cycle,
                };
                tokio::spawn(worker.run())
            })
            .collect();
        let max = self.settings.kill_ms_max;
        let delay = Duration::from_millis(self.rng.gen_range(max / 10..=max));
        tokio::time::sleep(delay).await;
        if let Some(status) = process.exited() {
            return Err(format!(
                "the switch exited by itself under load ({status}); log:\n{}",
                log_tail(&self.log, 30)
            ));
        }
        process.kill()?;
        // The process is gone; end the connection here rather than wait for its idle timeout.
        client
            .connection()
            .close(0u32.into(), b"the switch was killed");
        self.shared.stop.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + WORKERS_STOP_TIMEOUT;
        for w in workers {
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                return Err("a load task did not stop after the kill".to_string());
            }
        }
        drop(client);
        let journal = self.shared.journal.lock();
        Ok(journal
            .unknown()
            .iter()
            .filter(|id| journal.get(**id).is_some_and(|e| e.cycle == cycle))
            .count() as u64)
    }

    /// Ids to check this time: everything sent in `cycle`, and a sample of the rest (or
    /// everything, at the end).
    fn check_set(&mut self, cycle: u32, all: bool) -> Vec<u128> {
        let journal = self.shared.journal.lock();
        let (mut recent, older): (Vec<u128>, Vec<u128>) = journal
            .order
            .iter()
            .copied()
            .partition(|id| all || journal.get(*id).is_some_and(|e| e.cycle >= cycle));
        let n = self.settings.sample.min(older.len());
        recent.extend(older.choose_multiple(&mut self.rng, n));
        recent
    }

    /// The ids to read for a check of `of`: what they act on, and every hold that may have
    /// expired since it was last read.
    fn status_ids(&self, of: &[u128], also: &[u128]) -> Vec<u128> {
        let journal = self.shared.journal.lock();
        let mut ids = status_ids_for(&journal, of);
        ids.extend(status_ids_for(&journal, also));
        ids.extend(
            journal
                .order
                .iter()
                .copied()
                .filter(|id| expires(&journal, *id) && !self.expired.contains(id)),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// A read-only pass. Holds may expire while it runs, so the statuses of the expiring ones
    /// are read again after the balances; the pass is repeated until they stood still.
    async fn observe(&mut self, streams: &[Stream], ids: &[u128]) -> Result<Observed, String> {
        let volatile: Vec<u128> = {
            let journal = self.shared.journal.lock();
            ids.iter()
                .copied()
                .filter(|id| expires(&journal, *id))
                .collect()
        };
        for _ in 0..10 {
            self.report.statuses_checked += ids.len() as u64;
            let mut observed = observe(streams, &mut self.rng, ids).await?;
            let again = observe_statuses(streams, &mut self.rng, &volatile).await?;
            let still = volatile.iter().all(|id| {
                observed.status.get(id).map(|s| s.state) == again.get(id).map(|s| s.state)
            });
            if still {
                observed.known_expired = self.expired.clone();
                return Ok(observed);
            }
        }
        Err("holds kept expiring during ten read-only passes".to_string())
    }

    /// Remembers the holds a pass saw expired.
    fn note_expired(&mut self, observed: &Observed) {
        self.expired.extend(
            observed
                .status
                .iter()
                .filter(|(_, s)| s.state == TransferState::Expired)
                .map(|(id, _)| *id),
        );
    }

    /// Steps 1 to 4 of the module comment, after a restart.
    async fn verify(&mut self, streams: &[Stream], cycle: u32, all: bool) -> Result<(), String> {
        let check = self.check_set(cycle, all);
        // 1. Read-only.
        let unknown = self.shared.journal.lock().unknown();
        let ids = self.status_ids(&unknown, &check);
        let observed = self.observe(streams, &ids).await?;
        let applied = {
            let journal = self.shared.journal.lock();
            check_into(
                &journal,
                &observed,
                &mut self.problems,
                cycle,
                "before re-sending",
            )
        };
        self.report.in_flight_found_applied += applied.len() as u64;
        self.note_expired(&observed);

        // 2. The unknown, sent again: their definitive outcomes.
        let requests: Vec<Request> = {
            let journal = self.shared.journal.lock();
            unknown
                .iter()
                .filter_map(|id| journal.get(*id).map(|e| e.request.clone()))
                .collect()
        };
        let mut pending = requests;
        for attempt in 0.. {
            if pending.is_empty() {
                break;
            }
            if attempt == 20 {
                return Err(format!("{} requests answered only 91/96", pending.len()));
            }
            let answers = call_all(streams, &pending).await?;
            let mut again = Vec::new();
            {
                let mut journal = self.shared.journal.lock();
                for (request, answer) in pending.iter().zip(answers) {
                    if !is_definitive(&answer) {
                        again.push(request.clone());
                        continue;
                    }
                    let id = request.id.0;
                    if applied.contains(&id) && answer.code != Code::Approved {
                        self.problems.push(mismatch(
                            Some(id),
                            format!(
                                "cycle {cycle}: {id:#x} took effect, yet is answered {:?}",
                                answer.code
                            ),
                        ));
                    }
                    if let Some(entry) = journal.entries.get_mut(&id) {
                        entry.response = Some(answer);
                    }
                }
            }
            pending = again;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        // 3. Acknowledged requests again: the original answer, exactly.
        let repeats: Vec<(Request, Response)> = {
            let journal = self.shared.journal.lock();
            check
                .iter()
                .filter_map(|id| {
                    let e = journal.get(*id)?;
                    Some((e.request.clone(), e.response.clone()?))
                })
                .collect()
        };
        let requests: Vec<Request> = repeats.iter().map(|(q, _)| q.clone()).collect();
        let answers = call_all(streams, &requests).await?;
        self.report.repeats_checked += answers.len() as u64;
        for ((request, original), answer) in repeats.iter().zip(answers) {
            if answer != *original {
                self.problems.push(lost(
                    request.id.0,
                    format!(
                        "cycle {cycle}: {:#x} ({:?}) was answered {original:?}, and after the \
                         restart {answer:?}",
                        request.id.0,
                        request.operation.op()
                    ),
                ));
            }
        }

        // 4. Everything definitive now: statuses and balances again. At the end, first let
        // every expiring hold fall due, with time to spare for the switch's expiry pass.
        if all {
            let due = {
                let journal = self.shared.journal.lock();
                journal
                    .order
                    .iter()
                    .filter_map(|id| journal.get(*id))
                    .filter(|e| expiry_secs_of(&e.request) > 0)
                    .map(|e| {
                        let secs = Duration::from_secs(u64::from(expiry_secs_of(&e.request)));
                        secs.saturating_sub(e.sent_at.elapsed())
                    })
                    .max()
                    .unwrap_or_default()
            };
            tokio::time::sleep(due + Duration::from_millis(1000)).await;
        }
        let ids = self.status_ids(&unknown, &check);
        let mut observed = self.observe(streams, &ids).await?;
        observed.all_due = all;
        let still = {
            let journal = self.shared.journal.lock();
            check_into(&journal, &observed, &mut self.problems, cycle, "after")
        };
        self.note_expired(&observed);
        if !still.is_empty() {
            self.problems.push(mismatch(
                None,
                format!("{} requests still without an outcome", still.len()),
            ));
            return Ok(());
        }
        self.check_clearing(streams, cycle).await
    }

    /// Every approved capture, sale and refund is cleared in exactly one window, kills and
    /// closes (every 2 s, on the switch's own schedule) notwithstanding: the windows' counts
    /// add up to the approvals in the journal, every outcome being definitive by now.
    async fn check_clearing(&mut self, streams: &[Stream], cycle: u32) -> Result<(), String> {
        let list = Request {
            id: fresh_id(&mut self.rng),
            operation: Operation::ListWindows,
        };
        let answer = call_all(streams, &[list]).await?.remove(0);
        let ResponseBody::ListWindows(windows) = &answer.body else {
            return Err(format!("ListWindows answered {answer:?}"));
        };
        // The open window comes first and has the highest id; ids start at 1.
        let open = windows.first().map_or(0, |w| w.window.0);
        if windows.len() as u64 != open {
            self.report.clearing_checks_skipped += 1;
            return Ok(());
        }
        let cleared: u64 = windows.iter().map(|w| w.transfer_count).sum();
        let approved = {
            let journal = self.shared.journal.lock();
            journal
                .entries
                .values()
                .filter(|e| {
                    matches!(
                        e.request.operation,
                        Operation::Capture { .. }
                            | Operation::Sale { .. }
                            | Operation::Refund { .. }
                    )
                })
                .filter(|e| {
                    e.response
                        .as_ref()
                        .is_some_and(|r| r.code == Code::Approved)
                })
                .count() as u64
        };
        self.report.clearing_checks += 1;
        self.report.windows_seen = open;
        if cleared != approved {
            self.problems.push(mismatch(
                None,
                format!(
                    "cycle {cycle}: {open} clearing windows hold {cleared} captures, sales and \
                     refunds; {approved} were approved"
                ),
            ));
        }
        Ok(())
    }
}

fn check_into(
    journal: &Journal,
    observed: &Observed,
    problems: &mut Vec<Problem>,
    cycle: u32,
    when: &str,
) -> HashSet<u128> {
    let mut found = Vec::new();
    let applied = check(journal, observed, &mut found);
    problems.extend(found.into_iter().map(|mut p| {
        p.what = format!("cycle {cycle}, {when}: {}", p.what);
        p
    }));
    applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_kill_9_under_load() {
    let settings = Settings::from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let seed = settings.seed;
    eprintln!(
        "chaos: seed {seed}, {} cycles, kill within {} ms, {} workers; data in {}",
        settings.cycles,
        settings.kill_ms_max,
        settings.workers,
        dir.path().display()
    );
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed),
        settings,
        shared: Arc::new(Shared {
            journal: Mutex::new(Journal::default()),
            protocol: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }),
        report: Report {
            seed,
            ..Report::default()
        },
        problems: Vec::new(),
        config,
        log: dir.path().join("switch.log"),
        expired: HashSet::new(),
    };
    let started = Instant::now();
    let result = drive(&mut run, started).await;
    run.report.seconds = started.elapsed().as_secs_f64();
    run.report.wal_bytes = dir_bytes(&dir.path().join("data").join("wal"));
    let logged = logged(&run.log);
    run.report.torn_tails_trimmed = logged.torn_tails_trimmed;
    run.report.replay_ms = logged.recovery_ms;
    run.report.snapshots_written = logged.snapshots_written;
    run.report.starts_from_snapshot = logged.starts_from_snapshot;
    run.report.holds_expired = run.expired.len() as u64;
    {
        let journal = run.shared.journal.lock();
        run.report.sent = journal.order.len() as u64;
        run.report.acknowledged_live = journal.acknowledged_live;
    }
    for p in run.shared.protocol.lock().iter() {
        run.problems.push(mismatch(None, p.clone()));
    }
    let lost_ids: HashSet<u128> = run
        .problems
        .iter()
        .filter(|p| p.kind == Kind::Lost)
        .filter_map(|p| p.id)
        .collect();
    run.report.lost = lost_ids.len() as u64;
    run.report.mismatches = run
        .problems
        .iter()
        .filter(|p| p.kind == Kind::Mismatch)
        .count() as u64;
    run.report.problems = run
        .problems
        .iter()
        .take(200)
        .map(|p| p.what.clone())
        .collect();
    if let Err(e) = &result {
        run.report.problems.push(format!("the run stopped: {e}"));
    }
    eprint!("{}", run.report.summary());
    for p in run.problems.iter().take(50) {
        eprintln!("chaos: {:?}: {}", p.kind, p.what);
    }
    if let Some(path) = &run.settings.report {
        std::fs::write(path, run.report.json()).expect("write the report");
        eprintln!("chaos: report written to {}", path.display());
    }
    if let Err(e) = result {
        panic!("the chaos run stopped: {e}");
    }
    assert_eq!(run.report.lost, 0, "acknowledged operations were lost");
    assert_eq!(
        run.report.mismatches, 0,
        "the state did not match the journal"
    );
    assert!(
        run.report.cycles >= run.settings.cycles.min(1),
        "no cycle ran"
    );
}

async fn drive(run: &mut Run, started: Instant) -> Result<(), String> {
    let (mut process, client, streams) = run.spawn().await?;
    // The first start is not a recovery.
    run.report.ready_ms.clear();
    run.report.recovery_ms.clear();
    run.setup(&streams).await?;
    run.verify(&streams, 0, false).await?;
    let (mut client, mut streams) = (client, streams);
    for cycle in 1..=run.settings.cycles {
        let in_flight = run
            .load_and_kill(&mut process, client, streams, cycle)
            .await?;
        run.report.in_flight_at_kill.push(in_flight);
        drop(process);
        if run.rng.gen_bool(run.settings.start_kill) {
            run.kill_while_starting().await?;
        }
        let (p, c, s) = run.spawn().await?;
        (process, client, streams) = (p, c, s);
        run.report.cycles = cycle;
        let last = cycle == run.settings.cycles
            || started.elapsed() >= Duration::from_secs(run.settings.seconds);
        run.verify(&streams, cycle, last).await?;
        let acknowledged = run.shared.journal.lock().acknowledged_live;
        eprintln!(
            "chaos: cycle {cycle}: {in_flight} in flight at the kill, recovered in {:.1} ms, \
             {acknowledged} acknowledged so far, {} problems",
            run.report.recovery_ms.last().copied().unwrap_or_default(),
            run.problems.len()
        );
        if !run.problems.is_empty() || last {
            break;
        }
    }
    drop(client);
    drop(process);
    Ok(())
}
