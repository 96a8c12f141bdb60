//! A switch that sheds: a QUIC proxy on loopback in front of an in-process switch refuses some
//! new payments as the protocol lets an overloaded server do (91 with reason 34 or 33 and a
//! retry-after hint, a capture with reason 22) and forwards everything else. Loadgen must send
//! the refused requests again with the same ids after the hint, count each payment once, give
//! up on the ones refused every time without counting them approved, and still verify every
//! cent against the real switch behind the proxy. And a festival run at one and a half times
//! the saturation it calibrates (in its own process: `profiles` measures loadgen's CPU time
//! by thread name, which another run's threads ending beside it would upset).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::backoff::Refusal;
use loadgen::config::{Options, Profile, Target, TrustSource};
use loadgen::mix::OpKind;
use loadgen::run::{Endpoint, Session, Spawned};
use loadgen::schedule::Festival;
use parking_lot::Mutex;
use switch::client::{Client, Stream};
use switch::tls::{self, ServerIdentity, Trust};
use switch::wire::{self, Frame, Op, Operation, Reason, Request, Response, ResponseCode};

/// A bound on the whole test, far above what it needs.
const LIMIT: Duration = Duration::from_secs(120);

/// The hint the proxy sends with a shed payment.
const HINT_MS: u16 = 20;

/// What the proxy answers an attempt of a request in place of the switch (a reason with 91),
/// if it does: by the request's operation, its id and how many times it came before.
type Verdict = fn(Op, u128, u32) -> Option<u8>;

/// What the proxy does with an attempt of a request, by the low bits of its id (loadgen
/// numbers its requests in order) and how many times it came before.
fn verdict(op: Op, id: u128, attempt: u32) -> Option<u8> {
    let n = id as u64;
    match op {
        Op::Authorize | Op::Sale => match (n % 5, attempt) {
            (0, _) => Some(34),
            (1, 0) => Some(34),
            (1, 1) => Some(33),
            _ => None,
        },
        Op::Capture if n.is_multiple_of(3) && attempt == 0 => Some(22),
        _ => None,
    }
}

/// What the proxy saw.
#[derive(Default)]
struct Seen {
    /// Every attempt of every payment and capture, by id: what it is, and when each came.
    attempts: HashMap<u128, (Op, Vec<Instant>)>,
    /// Authorizations and sales the switch behind approved.
    approved: HashSet<u128>,
    /// Authorizations and sales refused every time they came.
    never_forwarded: HashSet<u128>,
    /// Budgets of the frames that carried payments.
    budgets: HashSet<u16>,
}

struct Proxy {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: [u8; 32],
    seen: Arc<Mutex<Seen>>,
}

impl Proxy {
    fn start(upstream: SocketAddr, trust: Trust, verdict: Verdict) -> Proxy {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let identity = ServerIdentity {
            chain: vec![generated.cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
                .expect("key der"),
        };
        let fingerprint = identity.fingerprint().expect("a certificate").0;
        let crypto =
            tls::server_crypto(tls::ServerTls::without_client_auth(identity)).expect("server TLS");
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).expect("QUIC TLS");
        let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("literal"))
            .expect("bind 127.0.0.1:0");
        let addr = endpoint.local_addr().expect("local address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let accepting = endpoint.clone();
        let seen_by_proxy = seen.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let (trust, seen) = (trust.clone(), seen_by_proxy.clone());
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    let Ok(client) = Client::connect(upstream, &trust, None).await else {
                        return;
                    };
                    while let Ok((send, recv)) = connection.accept_bi().await {
                        let Ok(stream) = client.stream().await else {
                            return;
                        };
                        tokio::spawn(relay(send, recv, stream, seen.clone(), verdict));
                    }
                    client.close().await;
                });
            }
        });
        Proxy {
            endpoint,
            addr,
            fingerprint,
            seen,
        }
    }
}

/// Relays one stream: each request frame, less what the proxy refuses, goes to the switch; the
/// answers, with the refusals in their places, go back in one response frame.
async fn relay(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    upstream: Stream,
    seen: Arc<Mutex<Seen>>,
    verdict: Verdict,
) {
    let send = Arc::new(tokio::sync::Mutex::new(send));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let frame = match wire::decode_frame(&buf, &wire::Limits::DEFAULT) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                frame
            }
            Ok(None) => match recv.read(&mut chunk).await {
                Ok(Some(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                _ => return,
            },
            Err(_) => return,
        };
        let Frame::Requests {
            correlation_id,
            budget_ms,
            requests,
        } = frame
        else {
            return;
        };
        let (send, upstream, seen) = (send.clone(), upstream.clone(), seen.clone());
        tokio::spawn(async move {
            let now = Instant::now();
            let mut refused: Vec<Option<Response>> = Vec::with_capacity(requests.len());
            let mut forwarded: Vec<Request> = Vec::new();
            {
                let mut seen = seen.lock();
                for r in &requests {
                    let op = r.operation.op();
                    if matches!(op, Op::Authorize | Op::Sale | Op::Capture) {
                        if op != Op::Capture {
                            seen.budgets.insert(budget_ms);
                        }
                        let (_, attempts) = seen.attempts.entry(r.id.0).or_insert((op, Vec::new()));
                        attempts.push(now);
                        let attempt = attempts.len() as u32 - 1;
                        if let Some(reason) = verdict(op, r.id.0, attempt) {
                            let code = ResponseCode::SystemBusy;
                            refused.push(Some(Response::declined(r.id, op, code, Reason(reason))));
                            if op != Op::Capture {
                                seen.never_forwarded.insert(r.id.0);
                            }
                            continue;
                        }
                        seen.never_forwarded.remove(&r.id.0);
                    }
                    refused.push(None);
                    forwarded.push(r.clone());
                }
            }
            let answers = if forwarded.is_empty() {
                Vec::new()
            } else {
                match upstream.call_within(budget_ms, &forwarded).await {
                    Ok(reply) => reply.responses,
                    // The switch did not answer: leave the frame unanswered (loadgen resolves it).
                    Err(_) => return,
                }
            };
            let mut answers = answers.into_iter();
            let mut responses = Vec::with_capacity(requests.len());
            let mut hint = 0;
            {
                let mut seen = seen.lock();
                for (r, refusal) in requests.iter().zip(refused) {
                    let response = match refusal {
                        Some(response) => {
                            if response.reason.0 == 34 {
                                hint = HINT_MS;
                            }
                            response
                        }
                        None => match answers.next() {
                            Some(a) => a,
                            None => return,
                        },
                    };
                    let payment = matches!(
                        r.operation,
                        Operation::Authorize { .. } | Operation::Sale { .. }
                    );
                    if payment && response.code == ResponseCode::Approved {
                        seen.approved.insert(r.id.0);
                    }
                    responses.push(response);
                }
            }
            let mut out = Vec::new();
            if wire::encode_response_frame_retry(correlation_id, hint, &responses, &mut out)
                .is_err()
            {
                return;
            }
            let _ = send.lock().await.write_all(&out).await;
        });
    }
}

/// The options of the runs through the proxy: a small constant load on an in-process switch.
fn spawn_options() -> Options {
    let mut spawn = Options::spawn_defaults(Profile::Constant {
        rate: 300.0,
        duration_secs: 1.5,
    });
    spawn.customers = 40;
    spawn.merchants = 4;
    spawn.connections = 1;
    spawn.streams = 2;
    spawn.depth = 4;
    spawn.open_depth = 4;
    spawn.batch_max = 16;
    spawn.expire_secs = 1;
    spawn.progress = false;
    spawn.out = None;
    spawn.seed = 5;
    spawn.budget_ms = 1500;
    spawn.retry.retries_max = 3;
    spawn.retry.give_up_after = Duration::from_secs(5);
    spawn
}

/// Runs `spawn`'s profile through a proxy answering as `verdict` says in front of a switch it
/// starts, then verifies against the switch; returns what loadgen and the proxy saw.
fn through_proxy(
    spawn: &Options,
    verdict: Verdict,
) -> (
    loadgen::verify::Verification,
    loadgen::stats::Stats,
    loadgen::model::Model,
    Seen,
) {
    let spawned = Spawned::start(spawn).expect("the switch starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("a runtime");
    let upstream_trust = spawned.endpoint().trust;
    let seen = runtime.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let proxy = Proxy::start(spawned.addr, upstream_trust, verdict);
            let mut options = spawn.clone();
            options.target = Target::Remote {
                addrs: vec![proxy.addr.to_string()],
                trust: TrustSource::Fingerprint(proxy.fingerprint),
                client: None,
            };
            let endpoint = Endpoint::remote(&options).expect("an endpoint");
            let mut session = Session::connect(options, &endpoint)
                .await
                .expect("connects");
            session.setup().await.expect("setup");
            session.run_profile().await.expect("the profile runs");
            let verification = session.verify().await.expect("verifies");
            let (stats, model) = (session.stats(), session.model());
            session.close().await;
            proxy.endpoint.close(0u32.into(), b"done");
            let seen = std::mem::take(&mut *proxy.seen.lock());
            (verification, stats, model, seen)
        })
        .await
        .expect("the test finishes in time")
    });
    drop(runtime);
    spawned.stop().expect("the switch stops cleanly");
    seen
}

/// The authorizations and sales the model holds: the ones the switch approved.
fn modelled_payments(model: &loadgen::model::Model) -> HashSet<u128> {
    model
        .auths
        .keys()
        .chain(model.sales.keys())
        .copied()
        .collect()
}

#[test]
fn refused_payments_go_again_after_the_hint_count_once_and_verify() {
    let spawn = spawn_options();
    let (verification, stats, model, seen) = through_proxy(&spawn, verdict);

    assert!(verification.passed, "{:#?}", verification.mismatches);
    // Each payment the switch approved is in the model once, and nothing else is.
    let modelled = modelled_payments(&model);
    assert_eq!(modelled, seen.approved);
    // Payments refused every time were given up: not in the model, read back as unknown.
    let abandoned = seen.never_forwarded.len() as u64;
    assert!(abandoned > 10, "{abandoned}");
    assert!(seen.never_forwarded.is_disjoint(&modelled));
    assert_eq!(verification.refused_checked, abandoned);
    let op = |k: OpKind| &stats.ops[k.index()];
    let given_up = op(OpKind::Authorize).abandoned + op(OpKind::Sale).abandoned;
    assert_eq!(given_up, abandoned);
    // Each id came at most 1 + retries_max times, and again no sooner than the hint (or the
    // least wait, for a capture's 22).
    let retries_max = spawn.retry.retries_max as usize;
    let mut retried = 0;
    for (id, (op, times)) in &seen.attempts {
        assert!(
            times.len() <= 1 + retries_max,
            "{id:#x}: {} sends",
            times.len()
        );
        for (i, pair) in times.windows(2).enumerate() {
            // A payment's first refusal is a shed, with the hint; anything else waits at least
            // the least wait.
            let least = if i == 0 && *op != Op::Capture {
                Duration::from_millis(u64::from(HINT_MS))
            } else {
                Duration::from_millis(10)
            };
            let gap = pair[1] - pair[0];
            assert!(gap >= least, "{id:#x} ({op:?}): again after {gap:?}");
            retried += 1;
        }
    }
    let counted: u64 = stats.ops.iter().map(|o| o.retries).sum();
    assert_eq!(counted, retried);
    // Refusals by why: shed and deadline passed (payments), overloaded (captures).
    let refused = |k: OpKind, why: Refusal| op(k).refused[why.index()];
    assert!(refused(OpKind::Authorize, Refusal::Shed) > 0);
    assert!(refused(OpKind::Sale, Refusal::DeadlinePassed) > 0);
    assert!(refused(OpKind::Capture, Refusal::Overloaded) > 0);
    // The budget went with the load's frames.
    assert!(seen.budgets.contains(&1500), "{:?}", seen.budgets);
}

/// A proxy that keeps refusing four new payments in five (shed, reason 34) and captures never.
fn mostly_shed(op: Op, id: u128, _attempt: u32) -> Option<u8> {
    (matches!(op, Op::Authorize | Op::Sale) && !(id as u64).is_multiple_of(5)).then_some(34)
}

/// `--throttle-k`: against a switch that sheds most new payments, loadgen refuses new payments
/// itself instead of sending them all (so the switch is spared most of those refusals), never
/// a capture, reversal or refund; what it refused it gives up, having done nothing, and the
/// run still verifies every cent.
#[test]
fn a_throttled_client_refuses_new_payments_itself_and_still_verifies() {
    let mut spawn = spawn_options();
    spawn.throttle_k = 1.1;
    let (verification, stats, model, seen) = through_proxy(&spawn, mostly_shed);

    assert!(verification.passed, "{:#?}", verification.mismatches);
    let op = |k: OpKind| &stats.ops[k.index()];
    let payments = [OpKind::Authorize, OpKind::Sale];
    let throttled: u64 = payments.iter().map(|&k| op(k).throttled).sum();
    let sent: u64 = seen
        .attempts
        .values()
        .filter(|(op, _)| *op != Op::Capture)
        .map(|(_, times)| times.len() as u64)
        .sum();
    // Once the first refusals are in, most new payments stay here. (A switch that sheds four
    // in five whatever it is sent is past what any K tolerates: 1 - 1/K of what it is sent.
    // A real one sheds less as it is sent less; `throttle`'s own tests model that.)
    assert!(throttled > sent, "{throttled} throttled, {sent} sent");
    for k in [
        OpKind::Capture,
        OpKind::Reverse,
        OpKind::Refund,
        OpKind::Balance,
    ] {
        assert_eq!(op(k).throttled, 0, "{k:?}");
    }
    // What the switch approved is what the model holds; a throttled payment never reached
    // the proxy, so every payment given up (throttled, or refused every time) is one the
    // proxy never forwarded or never saw, and verification read each back as unknown.
    let modelled = modelled_payments(&model);
    assert_eq!(modelled, seen.approved);
    let given_up: u64 = payments.iter().map(|&k| op(k).abandoned).sum();
    // (A payment the proxy refused may be throttled when it goes again: counted once.)
    let refused_by_proxy = seen.never_forwarded.len() as u64;
    assert!(
        (throttled..=throttled + refused_by_proxy).contains(&given_up),
        "{given_up} given up, {throttled} throttled, {refused_by_proxy} refused by the proxy"
    );
    assert_eq!(verification.refused_checked, given_up);
}

/// `--overload 1.5`: the peak is one and a half times what the calibration measured with the
/// mix, and the report gives the peak's goodput as a share of it. Today's switch sheds
/// nothing: the peak queues, and every cent still verifies.
#[test]
fn an_overload_festival_peaks_above_the_calibrated_saturation() {
    let shape = Festival {
        peak: 1.0,
        baseline: 0.1,
        pre_spike: 0.3,
        baseline_secs: 0.5,
        ramp_secs: 0.3,
        spike_secs: 0.2,
        plateau_secs: 1.0,
        decay_secs: 0.5,
        tail_secs: 0.5,
    };
    let mut o = Options::spawn_defaults(Profile::Festival {
        peak: None,
        peak_fraction: 1.5,
        calibrate_secs: 0.5,
        overload: Some(1.5),
        slo_p99_ms: 10.0,
        shape,
    });
    o.customers = 30;
    o.merchants = 3;
    o.connections = 1;
    o.streams = 2;
    o.depth = 4;
    o.open_depth = 4;
    o.batch_max = 16;
    o.expire_secs = 1;
    o.progress = false;
    o.out = None;
    o.seed = 11;
    o.timeout = std::time::Duration::from_secs(30);
    let outcome = loadgen::run::run(o).expect("the run completes");
    let r = &outcome.report;
    assert!(r.passed(), "{}", r.table());
    let calibration = r.profile.calibration_rate.expect("calibrated");
    let f = r.profile.festival.as_ref().expect("a festival");
    assert!(
        (f.peak - 1.5 * calibration).abs() < 1e-6,
        "{} {calibration}",
        f.peak
    );
    assert_eq!(r.profile.overload, Some(1.5));
    let peak = r.peak.as_ref().expect("the peak judged");
    assert_eq!(peak.saturation_rate, Some(calibration));
    let share = peak.goodput_of_saturation.expect("a share");
    assert!(share > 0.0 && share < 3.0, "{share}");
    assert!(r.table().contains("x saturation"), "{}", r.table());
    // The overload ends a third of the way down the decay (1.5 to 1 of 1.5 to 0.15 times the
    // saturation), and the tail runs at the baseline after it.
    let phase = |name: &str| {
        let p = r.profile.phases.iter().find(|p| p.name == name);
        p.map(|p| (p.start_secs, p.end_secs)).expect(name)
    };
    let (decay_start, decay_end) = phase("decay");
    let expected = decay_start + (0.5 / 1.35) * (decay_end - decay_start);
    assert!(
        (peak.overload_end_secs - expected).abs() < 1e-6,
        "{} {expected}",
        peak.overload_end_secs
    );
    let (tail_start, tail_end) = phase("tail");
    assert!((tail_start - decay_end).abs() < 1e-9 && (tail_end - tail_start - 0.5).abs() < 1e-9);
}
