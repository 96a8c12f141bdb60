//! The engine: connect (or spawn a switch), set up accounts, drive a profile, verify.
//!
//! ```text
//! lanes (one per stream) ──frames of due requests──▶ switch
//!      ▲                                                │
//!      └── follow-ups (capture, reverse, refund) ◀── answers ──▶ model + stats
//! ```
//!
//! Open loop: each lane owns every `lanes`-th request of the schedule and sends, at each
//! wake-up, everything due by then (at most `batch_max`) as one frame; a frame needs one of the
//! lane's `depth` permits, so requests in flight are bounded, and a request delayed by a full
//! pipeline is still timed from its intended send time. A due slot carries a waiting follow-up
//! if there is one, otherwise a new flow: the schedule is in requests, whatever they are.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use switch::client::{Client, ClientError, Stream};
use switch::config::{Config, Durability, RouteConfig, TlsMode};
use switch::tls::{ServerIdentity, Trust};
use switch::wire::{
    AccountFlags, AccountId, Amount, BalanceTarget, CardNumber, Currency, ErrorCode, Operation,
    ParticipantId, ParticipantName, Request, RequestId, Response, ResponseBody, ResponseCode,
    Roles, TransferState,
};
use tokio::sync::Semaphore;

use crate::config::{Options, Profile, Target, TrustSource};
use crate::cpu;
use crate::mix::{Flow, Mix, OpKind};
use crate::model::Model;
use crate::schedule::{Festival, LaneCursor, Schedule};
use crate::stats::Stats;
use crate::verify::{self, Observed, Seen, SeenStatus, Verification};

/// How many times a follow-up answered "busy" (91/96) is sent again before it is left to
/// the end-of-run cleanup.
const FOLLOW_UP_TRIES_MAX: u8 = 5;
/// Rounds of asking again for requests that got no answer.
const RESOLVE_ROUNDS_MAX: u32 = 3;
/// Requests with no answer kept for resolution; past this the run stops, since the switch is
/// clearly not answering.
const UNKNOWN_MAX: usize = 1_000_000;

/// A switch started in this process on a temporary data directory.
pub struct Spawned {
    runtime: tokio::runtime::Runtime,
    running: Option<switch::server::Running>,
    pub addr: SocketAddr,
    pub fingerprint: [u8; 32],
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts the switch on its own runtime (its threads are named `switch-io`, loadgen's
    /// `loadgen`, so each side's CPU time can be told apart). Call outside any async context.
    pub fn start(options: &Options) -> anyhow::Result<Spawned> {
        let (config_path, no_fsync) = match &options.target {
            Target::Spawn { config, no_fsync } => (config.clone(), *no_fsync),
            Target::Remote { .. } => bail!("not a spawn target"),
        };
        let mut config = match &config_path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let dir = tempfile::Builder::new()
            .prefix("loadgen-switch-")
            .tempdir()
            .context("creating a temporary data directory")?;
        config.server.listen = "127.0.0.1:0".parse().context("literal")?;
        config.metrics.listen = "127.0.0.1:0".parse().context("literal")?;
        config.server.data_dir = dir.path().to_path_buf();
        config.tls.mode = TlsMode::SelfSigned;
        // Loadgen acts as the admin identity of the acquirer: the admin sends payments only for
        // its own participant's merchants.
        config.tls.anonymous_participant = Some(options.acquirer);
        config.tls.anonymous_is_admin = true;
        let in_flight = options.connections_in_flight_max();
        config.limits.in_flight_per_connection_max =
            config.limits.in_flight_per_connection_max.max(in_flight);
        if no_fsync {
            config.wal.durability = Durability::None;
        }
        config.routes.push(RouteConfig {
            prefix: options.card_prefix.clone(),
            issuer: options.issuer,
            pooled_account: None,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.server.io_threads())
            .enable_all()
            .thread_name("switch-io")
            .build()
            .context("starting the switch's runtime")?;
        let running = runtime.block_on(switch::server::start(config, None))?;
        let fingerprint = running
            .fingerprint
            .context("the spawned switch has no certificate fingerprint")?;
        Ok(Spawned {
            addr: running.quic_addr,
            fingerprint: fingerprint.0,
            running: Some(running),
            runtime,
            _dir: dir,
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            target: self.addr.to_string(),
            trust: Trust::Fingerprint(switch::tls::Fingerprint(self.fingerprint)),
            client: None,
        }
    }

    /// Shuts the switch down cleanly. Call outside any async context.
    pub fn stop(mut self) -> anyhow::Result<()> {
        match self.running.take() {
            Some(running) => self.runtime.block_on(running.shutdown()),
            None => Ok(()),
        }
    }
}

/// How to reach a switch.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// An address, or a host name and port.
    pub target: String,
    pub trust: Trust,
    /// Client certificate and key (PEM files).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Endpoint {
    pub fn remote(options: &Options) -> anyhow::Result<Endpoint> {
        let Target::Remote {
            addr,
            trust,
            client,
        } = &options.target
        else {
            bail!("not a remote target");
        };
        let trust = match trust {
            TrustSource::Fingerprint(f) => Trust::Fingerprint(switch::tls::Fingerprint(*f)),
            TrustSource::CaFile(path) => Trust::Roots(switch::tls::read_certs(path)?),
        };
        Ok(Endpoint {
            target: addr.clone(),
            trust,
            client: client.clone(),
        })
    }

    fn identity(&self) -> anyhow::Result<Option<ServerIdentity>> {
        self.client
            .as_ref()
            .map(|(cert, key)| ServerIdentity::from_pem_files(cert, key))
            .transpose()
            .context("client certificate")
    }
}

impl Options {
    pub fn lanes(&self) -> usize {
        self.connections * self.streams
    }

    /// Requests one connection may have in flight.
    pub fn connections_in_flight_max(&self) -> u32 {
        let n = self.streams * self.depth * self.batch_max.max(self.setup_batch);
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// One step of a flow, with what the model needs to apply its answer.
#[derive(Clone, Copy, Debug)]
enum Step {
    Authorize {
        flow: Flow,
        customer: u32,
        merchant: u32,
        amount: u64,
    },
    Capture {
        auth: u128,
        amount: u64,
    },
    Reverse {
        auth: u128,
    },
    Sale {
        flow: Flow,
        customer: u32,
        merchant: u32,
        amount: u64,
    },
    Refund {
        sale: u128,
        amount: u64,
    },
    Balance {
        customer: u32,
    },
}

impl Step {
    fn op(&self) -> OpKind {
        match self {
            Step::Authorize { .. } => OpKind::Authorize,
            Step::Capture { .. } => OpKind::Capture,
            Step::Reverse { .. } => OpKind::Reverse,
            Step::Sale { .. } => OpKind::Sale,
            Step::Refund { .. } => OpKind::Refund,
            Step::Balance { .. } => OpKind::Balance,
        }
    }
}

/// A request on its way, and when it was meant to leave.
#[derive(Clone, Copy, Debug)]
struct Sent {
    id: u128,
    step: Step,
    intended: Instant,
    tries: u8,
}

/// A follow-up waiting for a slot.
#[derive(Clone, Copy, Debug)]
struct FollowUp {
    id: u128,
    step: Step,
    tries: u8,
}

struct State {
    model: Model,
    follow_ups: VecDeque<FollowUp>,
    /// Requests with no definitive answer yet.
    unknown: Vec<Sent>,
    rng: StdRng,
    /// The issuer's funding account before this run funded anything.
    funding_before: Seen,
    sales_approved: u64,
    follow_ups_dropped: u64,
}

struct Measure {
    stats: Stats,
    origin: Instant,
}

struct Shared {
    options: Arc<Options>,
    mix: Mix,
    wire_currency: Currency,
    /// High 64 bits of every request id of this run.
    run_tag: u64,
    /// Bits 40.. of every account id of this run.
    account_tag: u128,
    /// Every customer's card number, made once (setup and every payment use them).
    cards: Vec<CardNumber>,
    next_id: AtomicU64,
    /// Frames answered so far (for `Faults::lose_frame`).
    frames: AtomicU64,
    follow_ups_max: usize,
    /// Set when a connection or stream to the switch is lost: why, and when.
    lost: OnceLock<(String, Instant)>,
    state: Mutex<State>,
    measure: Mutex<Measure>,
}

impl Shared {
    fn next_id(&self) -> u128 {
        (u128::from(self.run_tag) << 64) | u128::from(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn customer_account(&self, i: u32) -> AccountId {
        AccountId(self.account_tag | (1 << 32) | u128::from(i))
    }

    fn merchant_account(&self, i: u32) -> AccountId {
        AccountId(self.account_tag | (2 << 32) | u128::from(i))
    }

    fn card(&self, i: u32) -> CardNumber {
        self.cards[i as usize]
    }

    fn funding_account(&self) -> AccountId {
        let ledger_id = switch::core::funding_account(
            ledger::ParticipantId(self.options.issuer),
            self.options.currency,
        );
        AccountId(ledger_id.0)
    }

    fn request(&self, id: u128, step: &Step) -> Request {
        let currency = self.wire_currency;
        let operation = match *step {
            Step::Authorize {
                flow,
                customer,
                merchant,
                amount,
            } => Operation::Authorize {
                number: self.card(customer),
                merchant: self.merchant_account(merchant),
                amount: Amount(amount),
                currency,
                expiry_secs: if flow == Flow::AuthExpire {
                    self.options.expire_secs
                } else {
                    self.options.hold_secs
                },
            },
            Step::Capture { auth, amount } => Operation::Capture {
                authorization: RequestId(auth),
                amount: Amount(amount),
            },
            Step::Reverse { auth } => Operation::Reverse {
                authorization: RequestId(auth),
            },
            Step::Sale {
                customer,
                merchant,
                amount,
                ..
            } => Operation::Sale {
                number: self.card(customer),
                merchant: self.merchant_account(merchant),
                amount: Amount(amount),
                currency,
            },
            Step::Refund { sale, amount } => Operation::Refund {
                original: RequestId(sale),
                amount: Amount(amount),
                currency,
            },
            Step::Balance { customer } => Operation::BalanceInquiry {
                target: BalanceTarget::Account(self.customer_account(customer)),
            },
        };
        Request {
            id: RequestId(id),
            operation,
        }
    }

    /// A new flow's first step.
    fn new_flow(&self, rng: &mut StdRng) -> Step {
        let d = self.mix.draw(rng);
        let (customer, merchant) = (d.customer as u32, d.merchant as u32);
        match d.flow {
            Flow::AuthCapture | Flow::AuthReverse | Flow::AuthExpire => Step::Authorize {
                flow: d.flow,
                customer,
                merchant,
                amount: d.amount,
            },
            Flow::Sale | Flow::Refund => Step::Sale {
                flow: d.flow,
                customer,
                merchant,
                amount: d.amount,
            },
            Flow::Balance => Step::Balance { customer },
        }
    }

    /// One frame for the slots intended at `intended`: waiting follow-ups first, then new flows.
    fn build(&self, intended: &[Instant], rng: &mut StdRng) -> (Vec<Sent>, Vec<Request>) {
        let mut sent = Vec::with_capacity(intended.len());
        {
            let mut state = self.state.lock();
            for &at in intended {
                let Some(f) = state.follow_ups.pop_front() else {
                    break;
                };
                sent.push(Sent {
                    id: f.id,
                    step: f.step,
                    intended: at,
                    tries: f.tries,
                });
            }
        }
        for &at in &intended[sent.len()..] {
            sent.push(Sent {
                id: self.next_id(),
                step: self.new_flow(rng),
                intended: at,
                tries: 0,
            });
        }
        let requests = sent.iter().map(|s| self.request(s.id, &s.step)).collect();
        (sent, requests)
    }

    fn scheduled(&self, intended: &[Instant]) {
        let mut m = self.measure.lock();
        let origin = m.origin;
        for &at in intended {
            m.stats.scheduled(at.saturating_duration_since(origin), 1);
        }
    }

    /// Applies a frame's answers (or its failure) to the model and the measurements.
    /// `resent`: the frame asks again for requests whose outcome is unknown. A 91 (or a frame
    /// refused as busy) then says only that this attempt did not run, not that the first one
    /// did not: they stay unknown, to be asked again.
    fn process(
        &self,
        sent: Vec<Sent>,
        result: Result<Vec<Response>, Failure>,
        measured: bool,
        resent: bool,
    ) {
        let now = Instant::now();
        let frame = self.frames.fetch_add(1, Ordering::Relaxed);
        let result = if self.options.faults.lose_frame == Some(frame) {
            // The answer is lost (fault injected).
            Err(Failure::Other)
        } else {
            result
        };
        let mut state = self.state.lock();
        let mut measure = self.measure.lock();
        let origin = measure.origin;
        let at = |i: Instant| i.saturating_duration_since(origin);
        let responses = match result {
            Ok(r) if r.len() == sent.len() => r,
            Err(Failure::Busy) if !resent => {
                for s in sent {
                    let code = self.busy(&mut state, &s);
                    if measured {
                        measure
                            .stats
                            .answered(s.step.op(), Some(code), at(s.intended), at(now));
                    }
                }
                return;
            }
            failed => {
                if let Err(Failure::Lost(reason)) = failed {
                    self.lose(reason);
                }
                for s in sent {
                    if measured {
                        measure.stats.error(s.step.op(), at(now));
                    }
                    self.unknown(&mut state, s);
                }
                return;
            }
        };
        for (s, r) in sent.into_iter().zip(responses) {
            let not_run = matches!(
                r.code,
                ResponseCode::SystemBusy | ResponseCode::SystemMalfunction
            );
            if resent && not_run && r.request_id.0 == s.id {
                self.unknown(&mut state, s);
                continue;
            }
            let verdict = if r.request_id.0 == s.id {
                self.answer(&mut state, &s, &r)
            } else {
                Err(())
            };
            match verdict {
                Ok(declined) if measured => {
                    measure
                        .stats
                        .answered(s.step.op(), declined, at(s.intended), at(now))
                }
                Ok(_) => {}
                Err(()) => {
                    if measured {
                        measure.stats.error(s.step.op(), at(now));
                    }
                    self.unknown(&mut state, s);
                }
            }
        }
    }

    /// The connection to the switch is gone: the run stops sending (the first reason is kept).
    fn lose(&self, reason: String) {
        let _ = self.lost.set((reason, Instant::now()));
    }

    fn is_lost(&self) -> bool {
        self.lost.get().is_some()
    }

    fn unknown(&self, state: &mut State, s: Sent) {
        // Balance inquiries change nothing: no need to learn their outcome.
        if !matches!(s.step, Step::Balance { .. }) {
            state.unknown.push(s);
        }
    }

    fn follow_up(&self, state: &mut State, step: Step, id: u128, tries: u8) {
        if state.follow_ups.len() >= self.follow_ups_max {
            // Cannot happen while slots prefer follow-ups (at most one per request in flight);
            // if it does, the hold is reversed at the end and the report says so.
            state.follow_ups_dropped += 1;
            return;
        }
        state.follow_ups.push_back(FollowUp { id, step, tries });
    }

    /// A request not executed and not remembered (answered 91, or its frame refused as
    /// busy): a follow-up may simply go again. Returns the code to count it under, 91.
    fn busy(&self, state: &mut State, s: &Sent) -> u8 {
        if matches!(
            s.step,
            Step::Capture { .. } | Step::Reverse { .. } | Step::Refund { .. }
        ) && s.tries < FOLLOW_UP_TRIES_MAX
        {
            self.follow_up(state, s.step, s.id, s.tries + 1);
        }
        ResponseCode::SystemBusy.as_u8()
    }

    /// A definitive answer: `Ok(None)` approved, `Ok(Some(code))` declined, `Err` unusable.
    fn answer(&self, state: &mut State, s: &Sent, r: &Response) -> Result<Option<u8>, ()> {
        match r.code {
            ResponseCode::Approved => {}
            ResponseCode::SystemBusy | ResponseCode::SystemMalfunction => {
                self.busy(state, s);
                return Ok(Some(r.code.as_u8()));
            }
            code => return Ok(Some(code.as_u8())),
        }
        let moved = |body: &ResponseBody| match body {
            ResponseBody::Authorize(m)
            | ResponseBody::Capture(m)
            | ResponseBody::Reverse(m)
            | ResponseBody::Sale(m)
            | ResponseBody::Refund(m) => Some(m.amount.0),
            _ => None,
        };
        let amount = moved(&r.body);
        let model = &mut state.model;
        match (s.step, &r.body) {
            (
                Step::Authorize {
                    flow,
                    customer,
                    merchant,
                    amount: asked,
                },
                ResponseBody::Authorize(_),
            ) => {
                if amount != Some(asked) {
                    model.violations.push(format!(
                        "authorization {:#x}: asked to hold {asked}, approved holding {amount:?}",
                        s.id
                    ));
                }
                model.authorized(s.id, customer, merchant, asked, flow);
                let next = match flow {
                    Flow::AuthCapture => Some(Step::Capture {
                        auth: s.id,
                        amount: self.mix.capture_amount(asked, &mut state.rng),
                    }),
                    Flow::AuthReverse => Some(Step::Reverse { auth: s.id }),
                    _ => None,
                };
                if let Some(step) = next {
                    let id = self.next_id();
                    self.follow_up(state, step, id, 0);
                }
            }
            (
                Step::Capture {
                    auth,
                    amount: asked,
                },
                ResponseBody::Capture(_),
            ) => {
                model.check_amount("capture", s.id, asked, amount);
                model.captured(auth, asked);
            }
            (Step::Reverse { auth }, ResponseBody::Reverse(_)) => {
                if amount == Some(0) {
                    // Approved with nothing released: the hold had already gone (expired).
                    model.expired(auth);
                } else {
                    model.reversed(auth);
                }
            }
            (
                Step::Sale {
                    flow,
                    customer,
                    merchant,
                    amount: asked,
                },
                ResponseBody::Sale(_),
            ) => {
                let n = state.sales_approved;
                state.sales_approved += 1;
                if self.options.faults.drop_sale_effect == Some(n) {
                    return Ok(None);
                }
                let model = &mut state.model;
                model.check_amount("sale", s.id, asked, amount);
                model.sold(s.id, customer, merchant, asked);
                if flow == Flow::Refund {
                    let step = Step::Refund {
                        sale: s.id,
                        amount: self.mix.refund_amount(asked, &mut state.rng),
                    };
                    let id = self.next_id();
                    self.follow_up(state, step, id, 0);
                }
            }
            (
                Step::Refund {
                    sale,
                    amount: asked,
                },
                ResponseBody::Refund(_),
            ) => {
                model.check_amount("refund", s.id, asked, amount);
                model.refunded(sale, asked);
            }
            (Step::Balance { .. }, ResponseBody::BalanceInquiry(_)) => {}
            _ => return Err(()),
        }
        Ok(None)
    }
}

/// What a profile found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProfileResult {
    pub profile: String,
    /// Seconds of load (excluding setup and verification).
    pub elapsed_secs: f64,
    /// Closed loop (`max`, festival calibration): answers per second.
    pub saturation_rate: Option<f64>,
    /// Festival: the peak the curve was drawn to, and the calibration it came from.
    pub festival: Option<Festival>,
    pub calibration_rate: Option<f64>,
    /// Step: each rate tried, and the highest that held the SLO.
    pub steps: Vec<StepResult>,
    pub highest_rate_held: Option<f64>,
    /// Step: the p99 latency objective, milliseconds.
    pub slo_p99_ms: Option<f64>,
    /// Target rate per second (open loop), from the schedule(s) run.
    pub target_per_second: Vec<f64>,
    /// Festival: when each part of the curve ran, in seconds of the time series.
    pub phases: Vec<Phase>,
}

/// A named stretch of the run, in seconds from the start of measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub start_secs: f64,
    pub end_secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub rate: f64,
    pub p99_ms: f64,
    pub answered: u64,
    pub errors: u64,
    pub held: bool,
}

/// A connected run: setup, profile, verification, each callable on its own (tests tamper in
/// between).
pub struct Session {
    options: Arc<Options>,
    clients: Vec<Client>,
    lanes: Vec<Stream>,
    shared: Arc<Shared>,
    setup_done: bool,
    cpu_at_start: Option<cpu::Split>,
}

/// Why a frame brought no answers.
#[derive(Debug)]
enum Failure {
    /// The switch had no room to take the frame in (error frame 8): nothing in it ran, as if
    /// every request had been answered 91.
    Busy,
    /// The connection or the stream is gone (the switch stopped, closed it, or broke its
    /// framing): what the requests did is unknown, and nothing more can be sent on it.
    Lost(String),
    /// Anything else (a timeout, another error frame): what the requests did is unknown until
    /// they are sent again.
    Other,
}

fn call_error<E: 'static>(e: E) -> Failure {
    let any: &dyn std::any::Any = &e;
    let client = any.downcast_ref::<ClientError>().or_else(|| {
        any.downcast_ref::<anyhow::Error>()
            .and_then(|e| e.downcast_ref::<ClientError>())
    });
    client_failure(client)
}

fn client_failure(client: Option<&ClientError>) -> Failure {
    match client {
        Some(ClientError::ErrorFrame {
            code: ErrorCode::ServerBusy,
            ..
        }) => Failure::Busy,
        Some(
            e @ (ClientError::Connection(_)
            | ClientError::Closed
            | ClientError::Write(_)
            | ClientError::Undecodable(_)),
        ) => Failure::Lost(e.to_string()),
        _ => Failure::Other,
    }
}

impl Shared {
    /// The run's tags, cards and empty model, all drawn from `options.seed`.
    fn new(options: Arc<Options>) -> Shared {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let mix = Mix::new(&options.mix, options.customers, options.merchants, &mut rng);
        let run_tag = rng.gen_range(1..u64::MAX);
        let account_tag_bits: u32 = rng.gen_range(1..u32::MAX);
        let follow_ups_max = options.lanes() * options.depth * options.batch_max
            + options.setup_batch * RESOLVE_ROUNDS_MAX as usize;
        Shared {
            mix,
            wire_currency: Currency(options.currency.numeric()),
            run_tag,
            account_tag: u128::from(account_tag_bits) << 40,
            cards: (0..options.customers)
                .map(|i| {
                    // Prefix, the run's number, the customer: at most 4 + 6 + 9 digits.
                    let run = u64::from(account_tag_bits) % 1_000_000;
                    let digits = format!("{}{run:06}{i:09}", options.card_prefix);
                    CardNumber::new(&digits).expect("digits only, at most 19, checked in options")
                })
                .collect(),
            next_id: AtomicU64::new(1),
            frames: AtomicU64::new(0),
            follow_ups_max,
            lost: OnceLock::new(),
            state: Mutex::new(State {
                model: Model::new(options.customers as usize, options.merchants as usize),
                follow_ups: VecDeque::new(),
                unknown: Vec::new(),
                rng: StdRng::seed_from_u64(rng.r#gen()),
                funding_before: Seen::default(),
                sales_approved: 0,
                follow_ups_dropped: 0,
            }),
            measure: Mutex::new(Measure {
                stats: Stats::default(),
                origin: Instant::now(),
            }),
            options,
        }
    }
}

impl Session {
    pub async fn connect(options: Options, endpoint: &Endpoint) -> anyhow::Result<Session> {
        let options = Arc::new(options);
        let mut clients: Vec<Client> = Vec::with_capacity(options.connections);
        let mut lanes = Vec::with_capacity(options.lanes());
        for _ in 0..options.connections {
            let identity = endpoint.identity()?;
            // The first connection finds the address that answers; the others go there.
            let target = match clients.first() {
                Some(first) => first.connection().remote_address().to_string(),
                None => endpoint.target.clone(),
            };
            let client = Client::connect_to(&target, &endpoint.trust, identity, options.timeout)
                .await
                .with_context(|| {
                    format!(
                        "connecting to {} (--timeout-secs {})",
                        endpoint.target,
                        options.timeout.as_secs_f64()
                    )
                })?;
            for _ in 0..options.streams {
                lanes.push(client.stream().await.context("opening a stream")?);
            }
            clients.push(client);
        }
        let shared = Arc::new(Shared::new(options.clone()));
        Ok(Session {
            options,
            clients,
            lanes,
            shared,
            setup_done: false,
            cpu_at_start: None,
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn customer_account(&self, i: u32) -> AccountId {
        self.shared.customer_account(i)
    }

    pub fn merchant_account(&self, i: u32) -> AccountId {
        self.shared.merchant_account(i)
    }

    pub fn card(&self, i: u32) -> CardNumber {
        self.shared.card(i)
    }

    /// A fresh request id of this run.
    pub fn next_request_id(&self) -> RequestId {
        RequestId(self.shared.next_id())
    }

    /// Sends requests outside the model (tests use it to tamper with balances).
    pub async fn call_unmodelled(&self, requests: &[Request]) -> anyhow::Result<Vec<Response>> {
        self.call(requests).await
    }

    async fn call(&self, requests: &[Request]) -> anyhow::Result<Vec<Response>> {
        let stream = &self.lanes[0];
        let Ok(answered) = tokio::time::timeout(self.options.timeout, stream.call(requests)).await
        else {
            bail!(
                "no answer within {} s (--timeout-secs)",
                self.options.timeout.as_secs_f64()
            );
        };
        answered.map_err(|e| {
            if let Failure::Lost(reason) = client_failure(Some(&e)) {
                self.shared.lose(reason);
            }
            anyhow::Error::from(e)
        })
    }

    /// Fails if the connection to the switch was lost: the run stopped sending, and what it
    /// cannot read back it does not verify.
    fn check_lost(&self, during: &str) -> anyhow::Result<()> {
        let Some((reason, at)) = self.shared.lost.get() else {
            return Ok(());
        };
        let into = at
            .saturating_duration_since(self.shared.measure.lock().origin)
            .as_secs_f64();
        let unknown = self.shared.state.lock().unknown.len();
        bail!(
            "lost the connection to the switch {during}, {into:.1} s after the load began: \
             {reason}. loadgen stopped; {unknown} requests had no answer, so their outcome is \
             unknown, and nothing was verified"
        )
    }

    /// Creates the participants, customer and merchant accounts, and funds the customers.
    pub async fn setup(&mut self) -> anyhow::Result<()> {
        let o = self.options.clone();
        let s = self.shared.clone();
        let wire_currency = s.wire_currency;
        let mut requests = Vec::new();
        for (participant, roles, name) in [
            (o.issuer, Roles::ISSUER, "loadgen issuer"),
            (o.acquirer, Roles::ACQUIRER, "loadgen acquirer"),
        ] {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::CreateParticipant {
                    participant: ParticipantId(participant),
                    roles,
                    name: ParticipantName::new(name).context("participant name")?,
                },
            });
        }
        for i in 0..o.customers as u32 {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::CreateAccount {
                    account: s.customer_account(i),
                    owner: ParticipantId(o.issuer),
                    currency: wire_currency,
                    flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    number: s.card(i),
                },
            });
        }
        for i in 0..o.merchants as u32 {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::CreateAccount {
                    account: s.merchant_account(i),
                    owner: ParticipantId(o.acquirer),
                    currency: wire_currency,
                    flags: AccountFlags(0),
                    number: CardNumber::EMPTY,
                },
            });
        }
        let funds_from = requests.len();
        for i in 0..o.customers as u32 {
            requests.push(Request {
                id: RequestId(s.next_id()),
                operation: Operation::Fund {
                    account: s.customer_account(i),
                    amount: Amount(o.fund.0),
                    currency: wire_currency,
                },
            });
        }
        let bar = progress_bar(o.progress, requests.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("setup {bar:40} {pos}/{len} requests {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        // Participants and accounts must exist before what refers to them: one batch at a
        // time, in order; the two participants go alone.
        let mut at = 0;
        while at < requests.len() {
            if at == funds_from {
                self.check_route_and_funding().await?;
            }
            let end = if at < 2 {
                2
            } else if at < funds_from {
                (at + o.setup_batch).min(funds_from)
            } else {
                (at + o.setup_batch).min(requests.len())
            };
            let chunk = &requests[at..end];
            let answers = self
                .call(chunk)
                .await
                .with_context(|| format!("setup: requests {at}..{end}"))?;
            if answers.len() != chunk.len() {
                bail!(
                    "setup: {} answers to {} requests",
                    answers.len(),
                    chunk.len()
                );
            }
            for (request, answer) in chunk.iter().zip(&answers) {
                if answer.code != ResponseCode::Approved {
                    let hint = match (answer.code, &request.operation) {
                        (ResponseCode::NotPermitted, _) => {
                            "; loadgen must act as an admin identity (--client-cert of one)"
                                .to_string()
                        }
                        (
                            ResponseCode::DuplicateWithOtherFields,
                            Operation::CreateParticipant { participant, .. },
                        ) => format!(
                            "; participant {} exists with another name or roles: give \
                             --issuer or --acquirer another participant id",
                            participant.0
                        ),
                        _ => String::new(),
                    };
                    bail!(
                        "setup: {} was declined {}{hint}",
                        describe(&request.operation, o.currency),
                        answered(answer)
                    );
                }
                if let Operation::Fund {
                    account, amount, ..
                } = &request.operation
                {
                    let i = (account.0 & 0xffff_ffff) as u32;
                    s.state.lock().model.funded(i, amount.0);
                }
            }
            bar.inc(chunk.len() as u64);
            at = end;
        }
        bar.finish_and_clear();
        self.setup_done = true;
        Ok(())
    }

    /// Before any money moves: checks that the switch routes this run's cards to `--issuer`
    /// (one balance inquiry by card number), and reads the issuer's funding account, which
    /// other runs and clients share, so that the run verifies only its own change to it.
    async fn check_route_and_funding(&self) -> anyhow::Result<()> {
        let (o, s) = (&self.options, &self.shared);
        let funding = s.funding_account();
        let requests = [
            Request {
                id: RequestId(s.next_id()),
                operation: Operation::BalanceInquiry {
                    target: BalanceTarget::Number(s.card(0)),
                },
            },
            Request {
                id: RequestId(s.next_id()),
                operation: Operation::BalanceInquiry {
                    target: BalanceTarget::Account(funding),
                },
            },
        ];
        let answers = self
            .call(&requests)
            .await
            .context("setup: checking the route of this run's cards")?;
        let [route, before] = answers.as_slice() else {
            bail!("setup: {} answers to 2 requests", answers.len());
        };
        let seen = match (route.code, &route.body) {
            (ResponseCode::Approved, ResponseBody::BalanceInquiry(b))
                if b.account == s.customer_account(0) =>
            {
                None
            }
            (ResponseCode::Approved, ResponseBody::BalanceInquiry(b)) => Some(format!(
                "resolved to account {:#x}, a route's pooled account",
                b.account.0
            )),
            _ => Some(format!("declined {}", answered(route))),
        };
        if let Some(seen) = seen {
            bail!(
                "the switch does not route this run's cards (prefix {prefix}) to --issuer \
                 {issuer}: a balance inquiry of card {card} was {seen}. Add this route to the \
                 switch's configuration and reload it (SIGHUP) or restart it, or give \
                 --card-prefix and --issuer of a route it has:\n\n[[routes]]\nprefix = \
                 \"{prefix}\"\nissuer = {issuer}\n",
                prefix = o.card_prefix,
                issuer = o.issuer,
                card = s.card(0).as_str(),
            );
        }
        let before = match (before.code, &before.body) {
            (ResponseCode::Approved, ResponseBody::BalanceInquiry(b)) if b.account == funding => {
                Seen {
                    ledger: b.ledger,
                    available: b.available,
                }
            }
            // Not made yet: the switch makes it at the issuer's first Fund.
            (ResponseCode::InvalidCardOrAccount, _) => Seen::default(),
            _ => bail!(
                "setup: the balance of issuer {}'s funding account could not be read: declined {}",
                o.issuer,
                answered(before)
            ),
        };
        s.state.lock().funding_before = before;
        Ok(())
    }

    /// Starts measuring from now (drops whatever was measured before).
    fn reset_measure(&self) {
        let mut m = self.shared.measure.lock();
        m.stats = Stats::default();
        m.origin = Instant::now();
    }

    /// Runs the configured profile.
    pub async fn run_profile(&mut self) -> anyhow::Result<ProfileResult> {
        if !self.setup_done {
            self.setup().await?;
        }
        let mut result = ProfileResult {
            profile: self.options.profile.name().to_string(),
            ..ProfileResult::default()
        };
        let profile = self.options.profile.clone();
        match profile {
            Profile::Constant {
                rate,
                duration_secs,
            } => {
                let schedule = Schedule::constant(rate, duration_secs)?;
                self.reset_measure();
                self.cpu_at_start = cpu::split();
                let started = Instant::now();
                self.open_loop(&schedule, 0.0).await?;
                self.check_lost("during the load")?;
                result.elapsed_secs = started.elapsed().as_secs_f64();
                result.target_per_second = per_second(&schedule);
            }
            Profile::Max { duration_secs } => {
                self.reset_measure();
                self.cpu_at_start = cpu::split();
                let (rate, elapsed) = self.closed_loop(duration_secs).await?;
                self.check_lost("during the load")?;
                result.saturation_rate = Some(rate);
                result.elapsed_secs = elapsed;
            }
            Profile::Festival {
                peak,
                peak_fraction,
                calibrate_secs,
                shape,
            } => {
                let peak = match peak {
                    Some(p) => p,
                    None => {
                        self.reset_measure();
                        let (rate, _) = self.closed_loop(calibrate_secs).await?;
                        self.check_lost("during the calibration")?;
                        result.calibration_rate = Some(rate);
                        (rate * peak_fraction).max(1.0)
                    }
                };
                let festival = Festival {
                    peak,
                    baseline: peak * shape.baseline,
                    pre_spike: peak * shape.pre_spike,
                    ..shape
                };
                let schedule = festival.schedule()?;
                self.reset_measure();
                self.cpu_at_start = cpu::split();
                let started = Instant::now();
                let mut at = self.open_loop(&schedule, 0.0).await?;
                self.check_lost("during the load")?;
                result.elapsed_secs = started.elapsed().as_secs_f64();
                result.target_per_second = per_second(&schedule);
                result.festival = Some(festival);
                for segment in schedule.segments() {
                    result.phases.push(Phase {
                        name: segment.name.clone(),
                        start_secs: at,
                        end_secs: at + segment.duration_secs,
                    });
                    at += segment.duration_secs;
                }
            }
            Profile::Step {
                start,
                increment,
                step_secs,
                slo_p99_ms,
                steps_max,
            } => {
                result.slo_p99_ms = Some(slo_p99_ms);
                self.reset_measure();
                self.cpu_at_start = cpu::split();
                let started = Instant::now();
                for k in 0..steps_max {
                    let rate = start + increment * f64::from(k);
                    let schedule = Schedule::constant(rate, step_secs)?;
                    self.shared.measure.lock().stats.begin_phase();
                    let offset = started.elapsed().as_secs_f64();
                    self.open_loop(&schedule, offset).await?;
                    self.check_lost("during the load")?;
                    let (p99_ms, answered, errors) = {
                        let m = self.shared.measure.lock();
                        (
                            m.stats.phase_latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                            m.stats.phase_answered,
                            m.stats.phase_errors,
                        )
                    };
                    let held = p99_ms <= slo_p99_ms && errors == 0;
                    let gap = (started.elapsed().as_secs_f64() - offset - step_secs).max(0.0);
                    result.target_per_second.extend(per_second(&schedule));
                    // The drain after a step sends nothing on schedule.
                    result
                        .target_per_second
                        .extend(std::iter::repeat_n(0.0, gap as usize));
                    result.steps.push(StepResult {
                        rate,
                        p99_ms,
                        answered,
                        errors,
                        held,
                    });
                    if !held {
                        break;
                    }
                    result.highest_rate_held = Some(rate);
                }
                result.elapsed_secs = started.elapsed().as_secs_f64();
            }
        }
        Ok(result)
    }

    /// Sends `schedule` open loop; returns when every request of it (and every follow-up) has
    /// been answered or given up on, with the time its first request was due, in seconds from
    /// the start of measurement. `offset_secs`: where the schedule starts on the progress line.
    async fn open_loop(&self, schedule: &Schedule, offset_secs: f64) -> anyhow::Result<f64> {
        let schedule = Arc::new(schedule.clone());
        let lanes = self.lanes.len();
        let start = Instant::now() + Duration::from_millis(20);
        let start_secs = start
            .saturating_duration_since(self.shared.measure.lock().origin)
            .as_secs_f64();
        let done = Arc::new(AtomicBool::new(false));
        let ticker = self.progress(Some((schedule.clone(), start, offset_secs)), done.clone());
        let mut tasks = Vec::with_capacity(lanes);
        for (lane, stream) in self.lanes.iter().enumerate() {
            let shared = self.shared.clone();
            let stream = stream.clone();
            let schedule = schedule.clone();
            let seed = self.options.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(lane as u64 + 1));
            tasks.push(tokio::spawn(open_lane(
                shared,
                stream,
                schedule,
                LaneCursor::new(lane as u64, lanes as u64),
                start,
                seed,
            )));
        }
        for t in tasks {
            t.await.context("a lane failed")?;
        }
        self.drain().await;
        done.store(true, Ordering::Release);
        let _ = ticker.await;
        Ok(start_secs)
    }

    /// Closed loop for `secs`: every lane keeps `depth` frames of `batch_max` in flight.
    /// Returns answers per second and the elapsed time.
    async fn closed_loop(&self, secs: f64) -> anyhow::Result<(f64, f64)> {
        let done = Arc::new(AtomicBool::new(false));
        let ticker = self.progress(None, done.clone());
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let before = self.shared.measure.lock().stats.answered_total();
        let mut tasks = Vec::new();
        for (lane, stream) in self.lanes.iter().enumerate() {
            for d in 0..self.options.depth {
                let shared = self.shared.clone();
                let stream = stream.clone();
                let seed = self.options.seed
                    ^ (0x9e37_79b9_7f4a_7c15u64
                        .wrapping_mul((lane * self.options.depth + d) as u64 + 1));
                tasks.push(tokio::spawn(closed_worker(shared, stream, deadline, seed)));
            }
        }
        for t in tasks {
            t.await.context("a closed-loop worker failed")?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let answered = self.shared.measure.lock().stats.answered_total() - before;
        self.drain().await;
        done.store(true, Ordering::Release);
        let _ = ticker.await;
        Ok((answered as f64 / elapsed.max(1e-9), elapsed))
    }

    /// Sends waiting follow-ups until none is left, as fast as the pipelines allow.
    async fn drain(&self) {
        while !self.shared.is_lost() {
            let mut tasks = Vec::new();
            for stream in &self.lanes {
                for _ in 0..self.options.depth {
                    let n = {
                        let state = self.shared.state.lock();
                        state.follow_ups.len().min(self.options.batch_max)
                    };
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    let intended = vec![now; n];
                    let mut rng = StdRng::seed_from_u64(0);
                    let (sent, requests) = self.shared.build(&intended, &mut rng);
                    // Only follow-ups: `build` takes them first and there were `n`.
                    self.shared.scheduled(&intended);
                    let shared = self.shared.clone();
                    let stream = stream.clone();
                    let timeout = self.options.timeout;
                    tasks.push(tokio::spawn(async move {
                        let result = tokio::time::timeout(timeout, stream.call(&requests))
                            .await
                            .map_err(call_error)
                            .and_then(|r| r.map_err(call_error));
                        shared.process(sent, result, true, false);
                    }));
                }
            }
            if tasks.is_empty() {
                return;
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    /// Live progress until `done`; the target rate comes from the schedule, if any.
    fn progress(
        &self,
        schedule: Option<(Arc<Schedule>, Instant, f64)>,
        done: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let shared = self.shared.clone();
        let enabled = self.options.progress;
        tokio::spawn(async move {
            let bar = progress_spinner(enabled);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !done.load(Ordering::Acquire) {
                tick.tick().await;
                let line = {
                    let m = shared.measure.lock();
                    let elapsed = m.origin.elapsed().as_secs_f64();
                    let last = (elapsed as usize).checked_sub(1);
                    let second = last.and_then(|i| m.stats.seconds.get(i));
                    let achieved = second.map_or(0, |s| s.answered);
                    let (p50, p99) = second.map_or((0.0, 0.0), |s| {
                        (
                            s.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                            s.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                        )
                    });
                    let target = match &schedule {
                        Some((s, start, _)) => {
                            let t = start.elapsed().as_secs_f64();
                            format!("{:.0}/s", s.rate_at(t))
                        }
                        None => "max".to_string(),
                    };
                    let codes: Vec<String> = m
                        .stats
                        .by_code()
                        .into_iter()
                        .map(|(c, n)| format!("{c}:{n}"))
                        .collect();
                    format!(
                        "{elapsed:6.1}s  target {target}  achieved {achieved}/s  p50 {p50:.2} ms  \
                         p99 {p99:.2} ms  answered {}  declined/errors [{}]",
                        m.stats.answered_total(),
                        codes.join(" ")
                    )
                };
                bar.set_message(line);
                bar.tick();
            }
            bar.finish_and_clear();
        })
    }

    /// Learns the outcome of every unanswered request, ends holds that their flow left live,
    /// waits for the holds meant to expire, reads every account and status back, and compares.
    pub async fn verify(&self) -> anyhow::Result<Verification> {
        self.check_lost("during the load")?;
        let unanswered = self.resolve_unknown().await;
        let cleanup_reversals = self.cleanup().await;
        self.await_expiry().await;
        let observed = self.observe().await;
        self.check_lost("while verifying")?;
        let state = self.shared.state.lock();
        let mut v = verify::compare(
            &state.model,
            &observed,
            self.options.currency,
            &unanswered,
            self.options.switch_remembers,
        );
        v.cleanup_reversals = cleanup_reversals;
        Ok(v)
    }

    /// Asks again, with the same request ids, for every request that got no answer: a repeat
    /// returns the original answer, or executes the request now if it never arrived.
    async fn resolve_unknown(&self) -> Vec<String> {
        for _ in 0..RESOLVE_ROUNDS_MAX {
            if self.shared.is_lost() {
                break;
            }
            self.drain().await;
            let unknown = std::mem::take(&mut self.shared.state.lock().unknown);
            if unknown.is_empty() {
                break;
            }
            for chunk in unknown.chunks(self.options.setup_batch) {
                let requests: Vec<Request> = chunk
                    .iter()
                    .map(|s| self.shared.request(s.id, &s.step))
                    .collect();
                let result = self.call(&requests).await.map_err(call_error);
                self.shared.process(chunk.to_vec(), result, false, true);
            }
        }
        self.drain().await;
        let state = self.shared.state.lock();
        state
            .unknown
            .iter()
            .map(|s| format!("{:?} request {:#x}", s.step.op(), s.id))
            .collect()
    }

    /// Reverses holds that should have been captured or reversed but are still live (their
    /// follow-up was declined or never answered). Returns how many.
    async fn cleanup(&self) -> u64 {
        let live: Vec<u128> = {
            let state = self.shared.state.lock();
            state
                .model
                .live_holds()
                .filter(|(_, a)| a.flow != Flow::AuthExpire)
                .map(|(id, _)| id)
                .collect()
        };
        for chunk in live.chunks(self.options.setup_batch) {
            let sent: Vec<Sent> = chunk
                .iter()
                .map(|&auth| Sent {
                    id: self.shared.next_id(),
                    step: Step::Reverse { auth },
                    intended: Instant::now(),
                    tries: FOLLOW_UP_TRIES_MAX,
                })
                .collect();
            let requests: Vec<Request> = sent
                .iter()
                .map(|s| self.shared.request(s.id, &s.step))
                .collect();
            let result = self.call(&requests).await.map_err(call_error);
            self.shared.process(sent, result, false, false);
        }
        live.len() as u64
    }

    /// Polls the status of holds left to expire until the switch has expired them all, for at
    /// most their expiry plus a margin for the switch's expiry tick.
    async fn await_expiry(&self) {
        let deadline = Instant::now()
            + Duration::from_secs(u64::from(self.options.expire_secs))
            + Duration::from_secs(10);
        loop {
            let pending: Vec<u128> = {
                let state = self.shared.state.lock();
                state
                    .model
                    .live_holds()
                    .filter(|(_, a)| a.flow == Flow::AuthExpire)
                    .map(|(id, _)| id)
                    .collect()
            };
            if pending.is_empty() || Instant::now() > deadline || self.shared.is_lost() {
                return;
            }
            let statuses = self.statuses(&pending).await;
            {
                let mut state = self.shared.state.lock();
                // Past its bound, the switch forgets finished payments: a hold left to expire
                // that it no longer knows has expired (the balances check that it is no
                // longer held).
                let forgetting =
                    verify::forgettable(&state.model, self.options.switch_remembers) > 0;
                for (id, status) in statuses {
                    let forgotten = forgetting && status == Some(SeenStatus::NotFound);
                    if status == Some(SeenStatus::Expired) || forgotten {
                        state.model.expired(id);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn statuses(&self, ids: &[u128]) -> HashMap<u128, Option<SeenStatus>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(self.options.setup_batch) {
            if self.shared.is_lost() {
                break;
            }
            let requests: Vec<Request> = chunk
                .iter()
                .map(|&id| Request {
                    id: RequestId(self.shared.next_id()),
                    operation: Operation::TransferStatus {
                        lookup: RequestId(id),
                    },
                })
                .collect();
            let answers = self.call(&requests).await.ok();
            for (i, &id) in chunk.iter().enumerate() {
                let seen = answers.as_ref().and_then(|a| a.get(i)).and_then(|r| {
                    match (&r.code, &r.body) {
                        (ResponseCode::Approved, ResponseBody::TransferStatus(s)) => {
                            Some(match s.state {
                                TransferState::NotFound => SeenStatus::NotFound,
                                TransferState::Pending => SeenStatus::Pending,
                                TransferState::Captured => SeenStatus::Captured {
                                    captured: s.captured.0,
                                    refunded: s.refunded.0,
                                },
                                TransferState::Reversed => SeenStatus::Reversed,
                                TransferState::Expired => SeenStatus::Expired,
                                TransferState::Posted => SeenStatus::Posted {
                                    amount: s.amount.0,
                                    refunded: s.refunded.0,
                                },
                                TransferState::Declined => SeenStatus::Declined,
                            })
                        }
                        _ => None,
                    }
                });
                out.insert(id, seen);
            }
        }
        out
    }

    async fn balances(&self, accounts: &[AccountId]) -> Vec<Option<Seen>> {
        let mut out = Vec::with_capacity(accounts.len());
        for chunk in accounts.chunks(self.options.setup_batch) {
            if self.shared.is_lost() {
                break;
            }
            let requests: Vec<Request> = chunk
                .iter()
                .map(|&a| Request {
                    id: RequestId(self.shared.next_id()),
                    operation: Operation::BalanceInquiry {
                        target: BalanceTarget::Account(a),
                    },
                })
                .collect();
            let answers = self.call(&requests).await.ok();
            for (i, account) in chunk.iter().enumerate() {
                out.push(answers.as_ref().and_then(|a| a.get(i)).and_then(|r| {
                    match (&r.code, &r.body) {
                        (ResponseCode::Approved, ResponseBody::BalanceInquiry(b))
                            if b.account == *account =>
                        {
                            Some(Seen {
                                ledger: b.ledger,
                                available: b.available,
                            })
                        }
                        _ => None,
                    }
                }));
            }
        }
        out
    }

    /// Reads back every account and the status of every authorization and sale.
    pub async fn observe(&self) -> Observed {
        let customers: Vec<AccountId> = (0..self.options.customers as u32)
            .map(|i| self.shared.customer_account(i))
            .collect();
        let merchants: Vec<AccountId> = (0..self.options.merchants as u32)
            .map(|i| self.shared.merchant_account(i))
            .collect();
        let ids: Vec<u128> = {
            let state = self.shared.state.lock();
            state
                .model
                .auths
                .keys()
                .chain(state.model.sales.keys())
                .copied()
                .collect()
        };
        let before = self.shared.state.lock().funding_before;
        Observed {
            customers: self.balances(&customers).await,
            merchants: self.balances(&merchants).await,
            funding: self
                .balances(&[self.shared.funding_account()])
                .await
                .pop()
                .flatten()
                .map(|now| Seen {
                    ledger: now.ledger - before.ledger,
                    available: now.available - before.available,
                }),
            statuses: self.statuses(&ids).await,
        }
    }

    /// The model as it stands (tests compare tampered observations with it).
    pub fn model(&self) -> Model {
        self.shared.state.lock().model.clone()
    }

    /// The measurements so far.
    pub fn stats(&self) -> Stats {
        self.shared.measure.lock().stats.clone()
    }

    /// Follow-ups that could not be queued (should be 0).
    pub fn follow_ups_dropped(&self) -> u64 {
        self.shared.state.lock().follow_ups_dropped
    }

    /// CPU time of loadgen's threads and of the others since the profile began.
    pub fn cpu_since_start(&self) -> Option<cpu::Split> {
        let (a, b) = (self.cpu_at_start?, cpu::split()?);
        Some(b.since(a))
    }

    pub async fn close(self) {
        drop(self.lanes);
        for c in self.clients {
            c.close().await;
        }
    }
}

/// The target rate in each whole second of a schedule.
fn per_second(schedule: &Schedule) -> Vec<f64> {
    let seconds = schedule.duration_secs().ceil() as usize;
    (0..seconds)
        .map(|s| schedule.integral(s as f64 + 1.0) - schedule.integral(s as f64))
        .collect()
}

async fn open_lane(
    shared: Arc<Shared>,
    stream: Stream,
    schedule: Arc<Schedule>,
    mut cursor: LaneCursor,
    start: Instant,
    seed: u64,
) {
    let depth = shared.options.depth;
    let batch_max = shared.options.batch_max;
    let timeout = shared.options.timeout;
    let permits = Arc::new(Semaphore::new(depth));
    let mut rng = StdRng::seed_from_u64(seed);
    let at = |t: f64| start + Duration::from_secs_f64(t);
    let mut intended = Vec::with_capacity(batch_max);
    while let Some((_, t)) = cursor.peek(&schedule) {
        if shared.state.lock().unknown.len() > UNKNOWN_MAX {
            // The switch has stopped answering; what was sent is resolved at the end.
            break;
        }
        tokio::time::sleep_until(at(t).into()).await;
        if shared.is_lost() {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Everything due by now goes in this frame (intended times are kept, so the wait for
        // a permit shows in the latency instead of hiding it).
        let now = Instant::now();
        intended.clear();
        while let Some((_, t)) = cursor.peek(&schedule) {
            let due = at(t);
            if due > now || intended.len() == batch_max {
                break;
            }
            intended.push(due);
            cursor.advance();
        }
        let (sent, requests) = shared.build(&intended, &mut rng);
        shared.scheduled(&intended);
        let shared = shared.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(timeout, stream.call(&requests))
                .await
                .map_err(call_error)
                .and_then(|r| r.map_err(call_error));
            shared.process(sent, result, true, false);
            drop(permit);
        });
    }
    // Every frame of this lane is answered once all permits are back.
    let _ = permits.acquire_many(depth as u32).await;
}

async fn closed_worker(shared: Arc<Shared>, stream: Stream, deadline: Instant, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shared.options.batch_max;
    let timeout = shared.options.timeout;
    while Instant::now() < deadline && !shared.is_lost() {
        let intended = vec![Instant::now(); n];
        let (sent, requests) = shared.build(&intended, &mut rng);
        shared.scheduled(&intended);
        let result = tokio::time::timeout(timeout, stream.call(&requests))
            .await
            .map_err(call_error)
            .and_then(|r| r.map_err(call_error));
        let failed = result.is_err();
        shared.process(sent, result, true, false);
        if failed && shared.state.lock().unknown.len() > UNKNOWN_MAX {
            return;
        }
    }
}

fn progress_bar(enabled: bool, len: u64) -> ProgressBar {
    if enabled {
        ProgressBar::new(len)
    } else {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
    }
}

fn progress_spinner(enabled: bool) -> ProgressBar {
    let bar = if enabled {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// An operation of setup, in words.
fn describe(operation: &Operation, currency: ledger::Currency) -> String {
    match operation {
        Operation::CreateParticipant {
            participant, name, ..
        } => format!(
            "creating participant {} (\"{}\")",
            participant.0,
            name.as_str()
        ),
        Operation::CreateAccount {
            account,
            owner,
            number,
            ..
        } if number.is_empty() => {
            format!(
                "creating account {:#x} of participant {}",
                account.0, owner.0
            )
        }
        Operation::CreateAccount {
            account,
            owner,
            number,
            ..
        } => format!(
            "creating account {:#x} of participant {} for card {}",
            account.0,
            owner.0,
            number.as_str()
        ),
        Operation::Fund {
            account, amount, ..
        } => format!(
            "funding account {:#x} with {}",
            account.0,
            verify::money(i128::from(amount.0), currency)
        ),
        other => format!("{:?}", other.op()),
    }
}

/// A declined answer's code and reason, in words.
fn answered(r: &Response) -> String {
    format!(
        "{:02} ({}), reason {} ({})",
        r.code.as_u8(),
        crate::report::code_name(r.code.as_u8()),
        r.reason.0,
        r.reason.name().unwrap_or("not listed")
    )
}

/// What a whole run produced.
pub struct Outcome {
    pub report: crate::report::Report,
}

/// The whole run, as the binary does it: spawn or connect, set up, drive the profile, verify,
/// report. Call outside any async context.
pub fn run(options: Options) -> anyhow::Result<Outcome> {
    let spawned = match options.target {
        Target::Spawn { .. } => Some(Spawned::start(&options)?),
        Target::Remote { .. } => None,
    };
    let endpoint = match &spawned {
        Some(s) => s.endpoint(),
        None => Endpoint::remote(&options)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .context("starting loadgen's runtime")?;
    let spawned_flag = spawned.is_some();
    let result = runtime.block_on(async {
        let mut session = Session::connect(options.clone(), &endpoint).await?;
        session.setup().await?;
        let profile = session.run_profile().await?;
        let cpu = session.cpu_since_start();
        let stats = session.stats();
        let verification = if options.verify {
            Some(session.verify().await?)
        } else {
            None
        };
        let dropped = session.follow_ups_dropped();
        session.close().await;
        anyhow::Ok(crate::report::Report::new(
            &options,
            profile,
            &stats,
            verification,
            cpu,
            spawned_flag,
            dropped,
        ))
    });
    drop(runtime);
    if let Some(s) = spawned {
        s.stop()?;
    }
    Ok(Outcome { report: result? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Profile;
    use switch::wire::{Op, Reason};

    fn error_frame(code: ErrorCode) -> ClientError {
        ClientError::ErrorFrame {
            code,
            message: "m".into(),
        }
    }

    fn shared() -> Shared {
        Shared::new(Arc::new(Options::spawn_defaults(Profile::Constant {
            rate: 1.0,
            duration_secs: 1.0,
        })))
    }

    fn capture(id: u128, tries: u8) -> Sent {
        Sent {
            id,
            step: Step::Capture {
                auth: 1,
                amount: 100,
            },
            intended: Instant::now(),
            tries,
        }
    }

    fn busy_answer(id: u128) -> Response {
        Response::declined(
            RequestId(id),
            Op::Capture,
            ResponseCode::SystemBusy,
            Reason(22),
        )
    }

    /// A frame refused as busy ran none of its requests: each counts as 91, and a capture
    /// goes again as a follow-up, as after a 91 answer.
    #[test]
    fn a_busy_frame_counts_as_91_for_each_request() {
        let shared = shared();
        shared.process(
            vec![capture(7, 0), capture(8, 0)],
            Err(Failure::Busy),
            true,
            false,
        );
        let state = shared.state.lock();
        assert!(state.unknown.is_empty());
        let again: Vec<u128> = state.follow_ups.iter().map(|f| f.id).collect();
        assert_eq!(again, vec![7, 8]);
        let stats = &shared.measure.lock().stats;
        assert_eq!(stats.by_code().get("91"), Some(&2));
        assert_eq!(stats.errors_total(), 0);
    }

    /// Asking again for a request whose outcome is unknown, a 91 or a busy frame says only
    /// that this attempt did not run: the first may have, so the request stays unknown.
    #[test]
    fn a_request_asked_again_stays_unknown_after_a_91_or_a_busy_frame() {
        let shared = shared();
        shared.process(vec![capture(7, 0)], Err(Failure::Busy), false, true);
        shared.process(vec![capture(8, 0)], Ok(vec![busy_answer(8)]), false, true);
        // Sent for the first time, the same answer is a decline.
        shared.process(vec![capture(9, 0)], Ok(vec![busy_answer(9)]), false, false);
        let state = shared.state.lock();
        let unknown: Vec<u128> = state.unknown.iter().map(|s| s.id).collect();
        assert_eq!(unknown, vec![7, 8]);
        let again: Vec<u128> = state.follow_ups.iter().map(|f| f.id).collect();
        assert_eq!(again, vec![9]);
    }

    /// A frame refused as busy ran nothing, however the error reached the caller; any other
    /// failure leaves the outcome unknown.
    #[test]
    fn only_a_busy_error_frame_is_busy() {
        assert!(matches!(
            call_error(error_frame(ErrorCode::ServerBusy)),
            Failure::Busy
        ));
        assert!(matches!(
            call_error(anyhow::Error::new(error_frame(ErrorCode::ServerBusy))),
            Failure::Busy
        ));
        for code in ErrorCode::ALL {
            if code != ErrorCode::ServerBusy {
                assert!(matches!(call_error(error_frame(code)), Failure::Other));
            }
        }
        assert!(matches!(call_error(ClientError::Closed), Failure::Lost(_)));
        assert!(matches!(
            call_error(anyhow::anyhow!("timed out")),
            Failure::Other
        ));
    }
}
