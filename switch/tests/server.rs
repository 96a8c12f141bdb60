//! The switch over real QUIC on loopback: the lifecycle, restarts, overload, malformed input
//! and mutual TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{CNY, loopback_config, req, setup_requests};
use switch::client::{Client, Stream};
use switch::config::{Config, Identity as IdentityConfig, SnapshotMethod, TlsMode};
use switch::server::{self, Running};
use switch::tls::{Fingerprint, ServerIdentity, Trust};
use switch::wire::{
    self, AccountId, Amount, CardNumber, Op, Operation, ParticipantId, Reason, Request, RequestId,
    ResponseBody, ResponseCode as Code,
};

const LIMIT: Duration = Duration::from_secs(30);

fn config(dir: &Path) -> Config {
    loopback_config(dir)
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

fn number(n: &str) -> CardNumber {
    CardNumber::new(n).expect("digits")
}

async fn call(stream: &Stream, requests: &[Request]) -> Vec<wire::Response> {
    tokio::time::timeout(LIMIT, stream.call(requests))
        .await
        .expect("answered in time")
        .expect("answered")
}

async fn one(stream: &Stream, request: Request) -> wire::Response {
    call(stream, &[request]).await.remove(0)
}

async fn setup(stream: &Stream) {
    for r in call(stream, &setup_requests(100_000)).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
}

fn authorize(id: u128, amount: u64) -> Request {
    req(
        id,
        Operation::Authorize {
            number: number("6200000000000001"),
            merchant: AccountId(300),
            amount: Amount(amount),
            currency: CNY,
            expiry_secs: 0,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_over_quic_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(config(dir.path())).await;
    let client = connect(&running, None)
        .await
        .expect("anonymous admin in self-signed mode");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;

    let approved = one(&stream, authorize(10, 25_000)).await;
    assert_eq!(approved.code, Code::Approved);
    let ResponseBody::Authorize(held) = approved.body else {
        panic!("{approved:?}")
    };
    assert_eq!(held.amount, Amount(25_000));
    // Pipelined: many frames in flight on one stream, answered by correlation id.
    let calls: Vec<_> = (0..50u128)
        .map(|i| {
            let stream = stream.clone();
            tokio::spawn(async move { one(&stream, authorize(1_000 + i, 10)).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("task").code, Code::Approved);
    }
    let capture = one(
        &stream,
        req(
            11,
            Operation::Capture {
                authorization: RequestId(10),
                amount: Amount(20_000),
            },
        ),
    )
    .await;
    assert_eq!(capture.code, Code::Approved);
    let declined = one(&stream, authorize(12, 10_000_000)).await;
    assert_eq!(declined.code, Code::InsufficientFunds);
    assert_eq!(
        one(
            &stream,
            req(
                13,
                Operation::Authorize {
                    number: number("4111111111111111"),
                    merchant: AccountId(300),
                    amount: Amount(1),
                    currency: CNY,
                    expiry_secs: 0
                }
            )
        )
        .await
        .code,
        Code::CannotRoute
    );
    assert_eq!(
        one(
            &stream,
            req(
                14,
                Operation::Authorize {
                    number: number("6299999999999999"),
                    merchant: AccountId(300),
                    amount: Amount(1),
                    currency: CNY,
                    expiry_secs: 0
                }
            )
        )
        .await
        .code,
        Code::InvalidCardOrAccount
    );
    assert_eq!(
        one(&stream, authorize(10, 1)).await.code,
        Code::DuplicateWithOtherFields
    );
    let balance = one(
        &stream,
        req(
            15,
            Operation::BalanceInquiry {
                target: wire::BalanceTarget::Account(AccountId(100)),
            },
        ),
    )
    .await;
    let ResponseBody::BalanceInquiry(before) = balance.body else {
        panic!("{balance:?}")
    };
    assert_eq!(before.ledger, 100_000 - 20_000);
    assert_eq!(before.available, 100_000 - 20_000 - 50 * 10);
    let echo = one(
        &stream,
        req(
            16,
            Operation::Echo {
                payload: wire::EchoPayload::new(b"ping".to_vec()).expect("short"),
            },
        ),
    )
    .await;
    assert_eq!(
        echo.body,
        ResponseBody::Echo(wire::EchoPayload::new(b"ping".to_vec()).expect("short"))
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");

    // Same data directory: every acknowledged result is still there.
    let running = start(config(dir.path())).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    assert_eq!(
        one(&stream, authorize(10, 25_000)).await,
        approved,
        "a repeat gets the original answer"
    );
    assert_eq!(one(&stream, authorize(12, 10_000_000)).await, declined);
    assert_eq!(
        one(
            &stream,
            req(
                11,
                Operation::Capture {
                    authorization: RequestId(10),
                    amount: Amount(20_000)
                }
            )
        )
        .await,
        capture
    );
    let balance = one(
        &stream,
        req(
            17,
            Operation::BalanceInquiry {
                target: wire::BalanceTarget::Account(AccountId(100)),
            },
        ),
    )
    .await;
    let ResponseBody::BalanceInquiry(after) = balance.body else {
        panic!("{balance:?}")
    };
    assert_eq!(after, before);
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_busy_and_malformed_input_is_survived() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.limits.in_flight_per_connection_max = 5;
    config.limits.malformed_frames_max = 2;
    let running = start(config).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    // Six requests in one frame while five may be in flight: all six are answered 91 at once
    // and none is executed; five fit.
    let batch: Vec<Request> = (0..6u128).map(|i| authorize(50 + i, 1)).collect();
    let busy = call(&stream, &batch).await;
    assert!(
        busy.iter()
            .all(|r| r.code == Code::SystemBusy && r.reason == Reason::OVERLOADED),
        "{busy:?}"
    );
    let codes: Vec<Code> = call(&stream, &batch[..5])
        .await
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [Code::Approved; 5]);
    // 91 is not remembered: the sixth id goes through once there is room.
    let codes: Vec<Code> = call(&stream, &batch[5..])
        .await
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [Code::Approved]);

    // A frame with an unknown operation: an error frame, and the stream goes on.
    let bad = one_raw_error(&stream).await;
    assert!(
        matches!(
            bad,
            switch::client::ClientError::ErrorFrame {
                code: wire::ErrorCode::UnknownOp,
                ..
            }
        ),
        "{bad:?}"
    );
    assert_eq!(one(&stream, authorize(60, 1)).await.code, Code::Approved);

    // Garbage on another connection gets it closed; this one keeps working.
    let rogue = connect(&running, None).await.expect("connect");
    let rogue_stream = rogue.stream().await.expect("stream");
    for _ in 0..4 {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            rogue_stream.call_raw(0, &[0xff; 64]),
        )
        .await;
    }
    assert_eq!(one(&stream, authorize(61, 1)).await.code, Code::Approved);
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

async fn one_raw_error(stream: &Stream) -> switch::client::ClientError {
    let mut frame = Vec::new();
    let id = stream.reserve_correlation_id();
    wire::encode_request_frame(id, &[authorize(70, 1)], &mut frame).expect("encodes");
    // The first operation byte sits after the 16-byte header and the 2-byte count.
    frame[18] = 0x7f;
    tokio::time::timeout(LIMIT, stream.call_raw(id, &frame))
        .await
        .expect("answered in time")
        .expect_err("an error frame")
}

struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

fn pki() -> Pki {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-signed CA");
    Pki {
        ca_pem: cert.pem(),
        ca: rcgen::Issuer::new(params, key),
    }
}

fn leaf(pki: &Pki, name: &str, client: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    (params.signed_by(&key, &pki.ca).expect("signed"), key)
}

fn identity(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> ServerIdentity {
    ServerIdentity {
        chain: vec![cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_strangers_and_confines_participants() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki();
    let stranger_pki = pki_stranger();
    let (server_cert, server_key) = leaf(&pki, "localhost", false);
    let (admin_cert, admin_key) = leaf(&pki, "admin", true);
    let (acquirer_cert, acquirer_key) = leaf(&pki, "acquirer", true);
    let (other_cert, other_key) = leaf(&pki, "other", true);
    let (unknown_cert, unknown_key) = leaf(&pki, "unknown", true);
    let (wrong_ca_cert, wrong_ca_key) = leaf(&stranger_pki, "admin", true);
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    };
    let mut config = config(&dir.path().join("data"));
    config.tls.mode = TlsMode::Files;
    config.tls.cert_file = Some(write("server.pem", server_cert.pem()));
    config.tls.key_file = Some(write("server.key", server_key.serialize_pem()));
    config.tls.client_ca_file = Some(write("ca.pem", pki.ca_pem.clone()));
    let fp = |c: &rcgen::Certificate| Fingerprint::of(c.der()).to_string();
    config.identities = vec![
        IdentityConfig {
            fingerprint_sha256: fp(&admin_cert),
            participant: 1,
            admin: true,
        },
        IdentityConfig {
            fingerprint_sha256: fp(&acquirer_cert),
            participant: 3,
            admin: false,
        },
        IdentityConfig {
            fingerprint_sha256: fp(&other_cert),
            participant: 4,
            admin: false,
        },
    ];
    let running = start(config).await;

    let admin = connect(&running, Some(identity(&admin_cert, &admin_key)))
        .await
        .expect("admin connects");
    let admin_stream = admin.stream().await.expect("stream");
    setup(&admin_stream).await;

    // No certificate, a certificate from another CA, a valid certificate that maps to no
    // participant: never served. (In TLS 1.3 the client may finish its side of the handshake
    // before the server refuses its certificate, so "refused" means no request is answered.)
    for (what, client_identity) in [
        ("no certificate", None),
        ("another CA", Some(identity(&wrong_ca_cert, &wrong_ca_key))),
        (
            "unmapped certificate",
            Some(identity(&unknown_cert, &unknown_key)),
        ),
    ] {
        assert!(
            refused(&running, client_identity).await,
            "{what} was served"
        );
    }

    // The acquirer may use its own merchant; another participant may not (57), nor may it
    // act as admin.
    let acquirer = connect(&running, Some(identity(&acquirer_cert, &acquirer_key)))
        .await
        .expect("connect");
    let acquirer_stream = acquirer.stream().await.expect("stream");
    assert_eq!(
        one(&acquirer_stream, authorize(81, 100)).await.code,
        Code::Approved
    );
    let other = connect(&running, Some(identity(&other_cert, &other_key)))
        .await
        .expect("connect");
    let other_stream = other.stream().await.expect("stream");
    assert_eq!(
        one(&other_stream, authorize(82, 100)).await.code,
        Code::NotPermitted
    );
    let capture = req(
        83,
        Operation::Capture {
            authorization: RequestId(81),
            amount: Amount(1),
        },
    );
    assert_eq!(one(&other_stream, capture).await.code, Code::NotPermitted);
    let fund = req(
        84,
        Operation::Fund {
            account: AccountId(100),
            amount: Amount(1),
            currency: CNY,
        },
    );
    let refused = one(&other_stream, fund).await;
    assert_eq!(
        (refused.code, refused.reason),
        (Code::NotPermitted, Reason::ADMIN_REQUIRED)
    );
    assert_eq!(refused.body, wire::ResponseBody::empty(Op::Fund));
    // Every admin operation, those the connection serves itself included, is the admin's
    // alone (PROTOCOL.md 10.3).
    let admin_only = [
        Operation::ReloadRoutes,
        Operation::ChangeMembership { remove: 0, add: 2 },
        Operation::ReportFile {
            window: wire::WindowId(1),
            file: 1,
            offset: 0,
        },
        Operation::CloseWindow {
            window: wire::WindowId(0),
        },
        Operation::ListWindows,
        Operation::WindowReport {
            window: wire::WindowId(1),
        },
    ];
    for (i, operation) in admin_only.into_iter().enumerate() {
        let r = one(&acquirer_stream, req(90 + i as u128, operation)).await;
        assert_eq!(
            (r.code, r.reason),
            (Code::NotPermitted, Reason::ADMIN_REQUIRED)
        );
    }
    // The admin identity (participant 1) acts on no other participant's payments: neither a
    // new one for the acquirer's merchant nor the acquirer's authorization.
    for request in [
        authorize(85, 100),
        req(
            86,
            Operation::Capture {
                authorization: RequestId(81),
                amount: Amount(1),
            },
        ),
        req(
            87,
            Operation::Reverse {
                authorization: RequestId(81),
            },
        ),
    ] {
        let r = one(&admin_stream, request).await;
        assert_eq!((r.code, r.reason), (Code::NotPermitted, Reason::NOT_OWNER));
    }
    running.shutdown().await.expect("clean shutdown");
}

async fn refused(running: &Running, client_identity: Option<ServerIdentity>) -> bool {
    let Ok(client) = connect(running, client_identity).await else {
        return true;
    };
    let served = match client.stream().await {
        Ok(s) => tokio::time::timeout(Duration::from_secs(5), s.call(&[authorize(80, 1)])).await,
        Err(_) => return true,
    };
    !matches!(served, Ok(Ok(_)))
}

/// A client the switch does not accept hears why: the connection's close code by name and the
/// switch's reason, not only that the stream closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_hears_the_close_code_and_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    // No identity for clients without a certificate.
    config.tls.anonymous_participant = None;
    let running = start(config).await;
    let client = connect(&running, None)
        .await
        .expect("the handshake completes");
    let refused = tokio::time::timeout(LIMIT, async {
        let stream = client.stream().await?;
        stream.call(&[authorize(80, 1)]).await
    })
    .await
    .expect("refused in time")
    .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("unauthenticated (0x04): certificate maps to no participant"),
        "{message}"
    );
    running.shutdown().await.expect("clean shutdown");
}

fn pki_stranger() -> Pki {
    pki()
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
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_over_quic_and_is_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(config(dir.path())).await;
    assert!(
        http_get(running.http_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(running.http_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;

    let sale = one(
        &stream,
        req(
            20,
            Operation::Sale {
                number: number("6200000000000001"),
                merchant: AccountId(300),
                amount: Amount(5_000),
                currency: CNY,
            },
        ),
    )
    .await;
    assert_eq!(sale.code, Code::Approved, "{sale:?}");
    let refund = |id, amount| {
        req(
            id,
            Operation::Refund {
                original: RequestId(20),
                amount: Amount(amount),
                currency: CNY,
            },
        )
    };
    assert_eq!(one(&stream, refund(21, 3_000)).await.code, Code::Approved);
    let over = one(&stream, refund(22, 2_001)).await;
    assert_eq!(
        (over.code, over.reason),
        (Code::InvalidAmount, Reason::EXCEEDS_REFUNDABLE)
    );

    assert_eq!(one(&stream, authorize(23, 700)).await.code, Code::Approved);
    let reverse = one(
        &stream,
        req(
            24,
            Operation::Reverse {
                authorization: RequestId(23),
            },
        ),
    )
    .await;
    assert_eq!(reverse.code, Code::Approved);
    let ResponseBody::Reverse(released) = reverse.body else {
        panic!("{reverse:?}")
    };
    assert_eq!(released.amount, Amount(700));
    let capture_reversed = one(
        &stream,
        req(
            25,
            Operation::Capture {
                authorization: RequestId(23),
                amount: Amount(1),
            },
        ),
    )
    .await;
    assert_eq!(
        (capture_reversed.code, capture_reversed.reason),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED)
    );

    let status = one(
        &stream,
        req(
            26,
            Operation::TransferStatus {
                lookup: RequestId(20),
            },
        ),
    )
    .await;
    let ResponseBody::TransferStatus(s) = status.body else {
        panic!("{status:?}")
    };
    assert_eq!(
        (s.state, s.amount, s.captured, s.refunded),
        (
            wire::TransferState::Posted,
            Amount(5_000),
            Amount(0),
            Amount(3_000)
        ),
        "a sale reports nothing captured (PROTOCOL.md 5.4)"
    );
    let unknown = one(
        &stream,
        req(
            27,
            Operation::TransferStatus {
                lookup: RequestId(999_999),
            },
        ),
    )
    .await;
    let ResponseBody::TransferStatus(s) = unknown.body else {
        panic!("{unknown:?}")
    };
    assert_eq!(
        (unknown.code, s.state),
        (Code::Approved, wire::TransferState::NotFound)
    );

    let by_number = one(
        &stream,
        req(
            28,
            Operation::BalanceInquiry {
                target: wire::BalanceTarget::Number(number("6200000000000001")),
            },
        ),
    )
    .await;
    let ResponseBody::BalanceInquiry(b) = by_number.body else {
        panic!("{by_number:?}")
    };
    assert_eq!(
        (b.account, b.ledger),
        (AccountId(100), 100_000 - 5_000 + 3_000)
    );

    let limits = one(
        &stream,
        req(
            29,
            Operation::SetLimits {
                participant: ParticipantId(2),
                currency: CNY,
                net_debit_cap: Amount(1_000_000),
            },
        ),
    )
    .await;
    assert_eq!(limits.code, Code::Approved);
    let reload = one(&stream, req(30, Operation::ReloadRoutes)).await;
    assert_eq!(
        reload.body,
        ResponseBody::ReloadRoutes { route_count: 1 },
        "no config file: the table it started with"
    );
    // A switch alone is a cluster of one: its membership is itself, and nothing else is listed.
    for (i, (remove, add, code, reason)) in [
        (0, 2, Code::InvalidTransaction, Reason::MEMBERSHIP_INVALID),
        (1, 0, Code::InvalidTransaction, Reason::MEMBERSHIP_INVALID),
        (0, 0, Code::InvalidTransaction, Reason::MEMBERSHIP_INVALID),
        (2, 2, Code::InvalidTransaction, Reason::MEMBERSHIP_INVALID),
        (0, 1, Code::Approved, Reason::NONE),
    ]
    .into_iter()
    .enumerate()
    {
        let r = one(
            &stream,
            req(
                31_000 + i as u128,
                Operation::ChangeMembership { remove, add },
            ),
        )
        .await;
        assert_eq!(
            (r.code, r.reason),
            (code, reason),
            "remove {remove} add {add}"
        );
        if code == Code::Approved {
            assert!(
                matches!(r.body, ResponseBody::ChangeMembership { index } if index > 0),
                "{r:?}"
            );
        }
    }
    // 61: past the issuer's net debit cap (checked before its funds).
    let over_cap = one(
        &stream,
        req(
            136,
            Operation::Sale {
                number: number("6200000000000001"),
                merchant: AccountId(300),
                amount: Amount(2_000_000),
                currency: CNY,
            },
        ),
    )
    .await;
    assert_eq!(
        (over_cap.code, over_cap.reason),
        (Code::ExceedsLimit, Reason::NET_DEBIT_CAP)
    );
    // 05: an account opened closed takes no money.
    let closed_account = req(
        137,
        Operation::CreateAccount {
            account: AccountId(900),
            owner: ParticipantId(2),
            currency: CNY,
            flags: wire::AccountFlags(4),
            number: CardNumber::EMPTY,
        },
    );
    assert_eq!(one(&stream, closed_account).await.code, Code::Approved);
    let fund_closed = one(
        &stream,
        req(
            138,
            Operation::Fund {
                account: AccountId(900),
                amount: Amount(10),
                currency: CNY,
            },
        ),
    )
    .await;
    assert_eq!(
        (fund_closed.code, fund_closed.reason),
        (Code::DoNotHonour, Reason::ACCOUNT_CLOSED)
    );
    let close = |id, window| {
        req(
            id,
            Operation::CloseWindow {
                window: wire::WindowId(window),
            },
        )
    };
    let closed = one(&stream, close(31, 0)).await;
    assert_eq!(
        (closed.code, closed.body),
        (
            Code::Approved,
            ResponseBody::CloseWindow {
                window: wire::WindowId(1)
            }
        )
    );
    // Closing it again, under a new request id, changes nothing.
    let again = one(&stream, close(32, 1)).await;
    assert_eq!(again.code, Code::Approved);
    let beyond = one(&stream, close(33, 9)).await;
    assert_eq!(
        (beyond.code, beyond.reason),
        (Code::InvalidTransaction, Reason::WINDOW_NOT_FOUND)
    );
    let list = one(&stream, req(34, Operation::ListWindows)).await;
    let ResponseBody::ListWindows(windows) = list.body else {
        panic!("{list:?}")
    };
    let states: Vec<(u64, wire::WindowState)> =
        windows.iter().map(|w| (w.window.0, w.state)).collect();
    assert_eq!(
        states,
        vec![(2, wire::WindowState::Open), (1, wire::WindowState::Closed)]
    );
    let report = one(
        &stream,
        req(
            35,
            Operation::WindowReport {
                window: wire::WindowId(1),
            },
        ),
    )
    .await;
    let ResponseBody::WindowReport(report) = report.body else {
        panic!("{report:?}")
    };
    // The sale (5 000) less its refund (3 000) moved 2 000 between the two participants.
    assert!(report.window.transfer_count >= 2, "{report:?}");
    assert_eq!(
        report.positions.iter().map(|p| p.net).sum::<i128>(),
        0,
        "{report:?}"
    );
    let reports = dir.path().join("reports");
    for _ in 0..100 {
        if reports.join("window-000001-settlement.json").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in [
        "window-000001-settlement.csv",
        "window-000001-settlement.json",
        "window-000001-reconciliation.csv",
    ] {
        assert!(reports.join(name).exists(), "{name} not written");
    }
    let json = std::fs::read_to_string(reports.join("window-000001-settlement.json"))
        .expect("settlement report");
    assert!(json.contains("\"reconciled\": true"), "{json}");

    let metrics = http_get(running.http_addr, "/metrics").await;
    // Every series exists from the start at 0: these must have counted.
    for counted in [
        "switch_requests_total{op=\"sale\",code=\"0\"} ",
        "switch_wal_append_seconds_count ",
    ] {
        assert!(
            metrics
                .lines()
                .filter_map(|l| l.strip_prefix(counted))
                .any(|v| v.parse::<f64>().is_ok_and(|v| v >= 1.0)),
            "{counted}: {metrics}"
        );
    }
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stage_queue_is_answered_busy_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.limits.queue_depth_max = 3;
    let running = start(config).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    // Setup one request at a time: each fits the tiny queue.
    for r in setup_requests(100_000) {
        assert_eq!(one(&stream, r).await.code, Code::Approved);
    }
    // Four requests cannot fit a queue of three: all four are answered 91, none executed.
    let batch: Vec<Request> = (0..4u128).map(|i| authorize(40 + i, 1)).collect();
    let busy = call(&stream, &batch).await;
    assert!(
        busy.iter()
            .all(|r| (r.code, r.reason) == (Code::SystemBusy, Reason::OVERLOADED)),
        "{busy:?}"
    );
    let balance = one(
        &stream,
        req(
            50,
            Operation::BalanceInquiry {
                target: wire::BalanceTarget::Account(AccountId(100)),
            },
        ),
    )
    .await;
    let ResponseBody::BalanceInquiry(b) = balance.body else {
        panic!("{balance:?}")
    };
    assert_eq!(b.available, 100_000, "nothing was held");
    // Three fit, and the refused ids are not remembered: they go through now.
    let codes: Vec<Code> = call(&stream, &batch[..3])
        .await
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [Code::Approved; 3]);
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// `switch clearing …` against a running switch: close, list, show, and the report files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clearing_cli_closes_lists_shows_and_prints_reports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    // Small frames: a report comes down in many pieces.
    config.limits.frame_bytes_max = 200;
    let running = start(config).await;
    let config_file = dir.path().join("switch.toml");
    std::fs::write(
        &config_file,
        format!(
            "[server]\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        ),
    )
    .expect("config file");
    let target = running.quic_addr.to_string();
    let fingerprint = running.fingerprint.expect("a certificate").to_string();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_switch"))
            .arg("clearing")
            .args(["--config", config_file.to_str().expect("utf-8 path")])
            .args(["--target", &target, "--fingerprint", &fingerprint])
            .args(args)
            .output()
            .expect("runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let cli = |args: &'static [&'static str]| {
        let cli = &cli;
        async move { tokio::task::block_in_place(|| cli(args)) }
    };
    let (ok, out, err) = cli(&["close"]).await;
    assert!(ok && out.contains("window 1 closed"), "{out}{err}");
    let (ok, out, err) = cli(&["close", "--window", "5"]).await;
    assert!(!ok && err.contains("window not found"), "{out}{err}");
    let (ok, out, _) = cli(&["list"]).await;
    assert!(ok, "{out}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].contains("open") && rows[1].contains("closed"),
        "{out}"
    );
    let (ok, out, _) = cli(&["show", "1"]).await;
    assert!(ok && out.contains("window 1 (closed)"), "{out}");
    for _ in 0..100 {
        if switch::report::paths(&dir.path().join("reports"), 1)
            .iter()
            .all(|p| p.exists())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [csv, json, reconciliation] = switch::report::paths(&dir.path().join("reports"), 1);
    let json_path = json.clone();
    for (args, path) in [
        (&["report", "1"][..], json.clone()),
        (&["report", "1", "--format", "csv"][..], csv),
        (
            &["report", "1", "--format", "reconciliation"][..],
            reconciliation,
        ),
    ] {
        let (ok, out, err) = cli(args).await;
        let on_disk = std::fs::read_to_string(&path).expect("report file");
        assert!(ok && out == on_disk, "{args:?}: {out}{err}");
    }
    let json = std::fs::read_to_string(&json_path).expect("report file");
    assert!(json.len() > 3 * 136, "the JSON comes in several pieces");
    let (ok, _, err) = cli(&["report", "7"]).await;
    assert!(!ok && err.contains("window not found"), "{err}");
    running.shutdown().await.expect("clean shutdown");
}

/// `switch clearing show` of the open window: before any request it says the window has not
/// opened (not the epoch); after a sale it shows the live positions, as a close would settle
/// them. `--target` takes a host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clearing_cli_shows_the_open_window_live() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(config(dir.path())).await;
    let target = format!("localhost:{}", running.quic_addr.port());
    let fingerprint = running.fingerprint.expect("a certificate").to_string();
    let show = |window: &'static str| {
        let target = target.clone();
        let fingerprint = fingerprint.clone();
        tokio::task::spawn_blocking(move || {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_switch"))
                .args([
                    "clearing",
                    "--target",
                    &target,
                    "--fingerprint",
                    &fingerprint,
                ])
                .args(["show", window])
                .output()
                .expect("runs");
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).to_string()
                    + &String::from_utf8_lossy(&output.stderr),
            )
        })
    };
    let (ok, out) = show("1").await.expect("joined");
    assert!(ok, "{out}");
    assert!(out.contains("window 1 (open), not opened yet"), "{out}");
    assert!(!out.contains("1970"), "{out}");

    let client = connect(&running, None).await.expect("connects");
    let stream = client.stream().await.expect("a stream");
    setup(&stream).await;
    let sale = req(
        10,
        Operation::Sale {
            number: number("6200000000000001"),
            merchant: AccountId(300),
            amount: Amount(12_345),
            currency: CNY,
        },
    );
    assert_eq!(one(&stream, sale).await.code, Code::Approved);
    let (ok, out) = show("1").await.expect("joined");
    assert!(ok, "{out}");
    assert!(out.contains("window 1 (open), opened 20"), "{out}");
    let positions: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.len() == 3 && words[1] == "CNY")
        .collect();
    // The default fees are zero: the acquirer receives the sale from the issuer.
    assert_eq!(
        positions,
        [vec!["2", "CNY", "-123.45"], vec!["3", "CNY", "123.45"]],
        "{out}"
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

fn files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

async fn available(stream: &Stream, id: u128) -> i128 {
    let balance = one(
        stream,
        req(
            id,
            Operation::BalanceInquiry {
                target: wire::BalanceTarget::Account(AccountId(100)),
            },
        ),
    )
    .await;
    let ResponseBody::BalanceInquiry(b) = balance.body else {
        panic!("{balance:?}")
    };
    b.available
}

/// A snapshot due while the switch is busy waits for the load to fall
/// (`[snapshot] defer_above_requests_per_second`), and is taken once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_due_at_a_peak_waits_for_the_load_to_fall() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.snapshot.every_records = 5;
    config.snapshot.every_wal_bytes = 0;
    // Any steady traffic is a peak here, and nothing but the load stops a snapshot.
    config.snapshot.defer_above_requests_per_second = 1;
    config.snapshot.defer_at_most = 1_000_000;
    config.snapshot.keep = 1_000;
    config.snapshot.on_shutdown = false;
    config.authorization.expiry_tick_ms = 100;
    let running = start(config).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    let snapshots = || files(&dir.path().join("snapshots"), ".snap").len();
    // One record per request, 50 a second: a snapshot due every tenth of a second. The first
    // second makes the load known (snapshots may be taken meanwhile).
    let load = |seconds: u64, first_id: u128| {
        let stream = &stream;
        let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
        async move {
            let mut sent = 0;
            while tokio::time::Instant::now() < until {
                // New ids only: a repeat is answered from memory and logs nothing.
                let answer = one(stream, authorize(first_id + sent, 1)).await;
                assert_eq!(answer.code, Code::Approved, "{answer:?}");
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    };
    load(2, 10_000).await;
    let at_peak = snapshots();
    let sent = load(3, 1_000_000).await;
    assert!(sent >= 20, "only {sent} requests in 3 s");
    // One may have been started just before and written since.
    let after_peak = snapshots();
    assert!(
        after_peak <= at_peak + 1,
        "{} snapshots taken during the peak ({sent} records, one due every 5)",
        after_peak - at_peak
    );
    let deadline = tokio::time::Instant::now() + LIMIT;
    while snapshots() == after_peak {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot after the load fell"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// Snapshots taken on the cadence and at shutdown let the oldest log segments go; a restart
/// from them (and from the older snapshot, when the newest is corrupt) gives every answer
/// again and the same balances. Each start also reserves its memory ahead
/// (`[ledger] preallocate`) after recovering, which must change none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_from_snapshots_after_the_log_was_pruned() {
    restarts_from_snapshots(SnapshotMethod::Replay, true).await;
}

/// The same with snapshots the ledger stage captures itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_from_captured_snapshots_after_the_log_was_pruned() {
    restarts_from_snapshots(SnapshotMethod::Capture, true).await;
}

/// With no snapshot at shutdown, the newest snapshots are the ones built by replaying the log
/// off the stage while it ran: a restart from them, or from the older one plus the log after
/// it, must give every answer and balance there was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_from_snapshots_built_by_replay_while_serving() {
    restarts_from_snapshots(SnapshotMethod::Replay, false).await;
}

async fn restarts_from_snapshots(method: SnapshotMethod, on_shutdown: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.snapshot.every_records = 10;
    config.snapshot.method = method;
    config.snapshot.on_shutdown = on_shutdown;
    config.wal.segment_bytes_max = 2048;
    config.ledger.preallocate = true;
    config.ledger.transfers_remembered_max = 4096;
    let running = start(config.clone()).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    // One record per request: many records, many segments, several snapshots.
    let mut sent = Vec::new();
    for i in 0..120u128 {
        let request = match i % 4 {
            3 => req(
                2_000 + i,
                Operation::Capture {
                    authorization: RequestId(2_000 + i - 1),
                    amount: Amount(3),
                },
            ),
            2 => req(
                2_000 + i,
                Operation::Reverse {
                    authorization: RequestId(2_000 + i - 2),
                },
            ),
            _ => authorize(2_000 + i, 5 + i as u64),
        };
        let answer = one(&stream, request.clone()).await;
        sent.push((request, answer));
        if !on_shutdown && i == 100 {
            // Let the snapshots due so far be made, so that the newest covers most of this.
            wait_for_snapshot_past(dir.path(), 90).await;
        }
    }
    let before = available(&stream, 9_000).await;
    client.close().await;
    running.shutdown().await.expect("clean shutdown");

    let snapshots = files(&dir.path().join("snapshots"), ".snap");
    assert_eq!(snapshots.len(), 2, "the newest two are kept: {snapshots:?}");
    let segments = files(&dir.path().join("wal"), ".wal");
    assert_ne!(
        segments.first().map(String::as_str),
        Some("00000000000000000001.wal"),
        "covered segments were removed: {segments:?}"
    );

    for round in [
        "from the newest snapshot",
        "past a corrupt newest snapshot",
        "past a snapshot that does not restore",
    ] {
        if round == "past a corrupt newest snapshot" {
            let newest = dir.path().join("snapshots").join(&snapshots[1]);
            let mut bytes = std::fs::read(&newest).expect("read snapshot");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&newest, bytes).expect("corrupt snapshot");
        }
        if round == "past a snapshot that does not restore" {
            // A sound file (its checksum holds) whose payload is no switch snapshot.
            let storage = ledger::storage::FileStorage::open(dir.path().join("snapshots"))
                .expect("snapshot directory");
            ledger::snapshot_file::write(&storage, 1 << 40, b"not a switch snapshot", 3)
                .expect("write snapshot");
        }
        let running = start(config.clone()).await;
        let client = connect(&running, None).await.expect("connect");
        let stream = client.stream().await.expect("stream");
        assert_eq!(available(&stream, 9_001).await, before, "{round}");
        for (request, answer) in &sent {
            assert_eq!(&one(&stream, request.clone()).await, answer, "{round}");
        }
        assert_eq!(available(&stream, 9_002).await, before, "{round}");
        client.close().await;
        running.shutdown().await.expect("clean shutdown");
    }
}

/// Waits (at most 20 s) for a snapshot file covering a log sequence past `sequence`.
async fn wait_for_snapshot_past(data_dir: &Path, sequence: u64) {
    let storage =
        ledger::storage::FileStorage::open(data_dir.join("snapshots")).expect("snapshot directory");
    for _ in 0..400 {
        let newest = ledger::snapshot_file::list(&storage)
            .expect("list snapshots")
            .into_iter()
            .max();
        if newest.is_some_and(|s| s > sequence) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no snapshot past sequence {sequence} within 20 s");
}

/// `[clearing] close_every_seconds`: the switch closes windows on its own, logged like any
/// close, with their reports, and a restart keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_close_on_the_configured_schedule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.clearing.close_every_seconds = 1;
    config.authorization.expiry_tick_ms = 50;
    let running = start(config.clone()).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    let list = |id| req(id, Operation::ListWindows);
    let closed = |body: &ResponseBody| match body {
        ResponseBody::ListWindows(windows) => windows
            .iter()
            .filter(|w| w.state == wire::WindowState::Closed)
            .count(),
        other => panic!("{other:?}"),
    };
    let mut seen = 0;
    for i in 0..100 {
        seen = closed(&one(&stream, list(50_000 + i)).await.body);
        if seen >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen >= 2,
        "two windows closed on schedule within 10 s, saw {seen}"
    );
    let reports = dir.path().join("reports");
    for _ in 0..100 {
        if switch::report::paths(&reports, 1)
            .iter()
            .all(|p| p.exists())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        switch::report::paths(&reports, 1)
            .iter()
            .all(|p| p.exists()),
        "reports of window 1"
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
    // After a restart the closed windows are still there (the schedule may have closed more).
    config.clearing.close_every_seconds = 0;
    let running = start(config).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    let after = closed(&one(&stream, list(60_000)).await.body);
    assert!(
        after >= seen,
        "{after} closed windows after the restart, {seen} before"
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// Every frame the server writes on a raw stream until it finishes the stream.
async fn frames_until_finished(recv: &mut quinn::RecvStream) -> Vec<(usize, wire::Frame)> {
    let limits = wire::Limits {
        frame_len_max: wire::FRAME_LEN_MAX_LIMIT,
        batch_len_max: u16::MAX,
    };
    let bytes = tokio::time::timeout(LIMIT, recv.read_to_end(64 << 20))
        .await
        .expect("finished in time")
        .expect("the server finishes the stream");
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (frame, used) = wire::decode_frame(&bytes[at..], &limits)
            .expect("the server's frames decode")
            .expect("whole frames");
        frames.push((used, frame));
        at += used;
    }
    frames
}

fn echo(id: u128, len: usize) -> Request {
    req(
        id,
        Operation::Echo {
            payload: wire::EchoPayload::new(vec![0x5a; len]).expect("within its bound"),
        },
    )
}

fn request_frame(correlation_id: u64, requests: &[Request]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_request_frame(correlation_id, requests, &mut out).expect("encodes");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_the_wrong_kind_and_cut_streams_are_protocol_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.limits.malformed_frames_max = 3;
    let running = start(config).await;
    let client = connect(&running, None).await.expect("connect");
    let (mut send, mut recv) = client.connection().open_bi().await.expect("a stream");
    let mut bytes = request_frame(1, &[echo(11, 3)]);
    // A response batch: error 7. An error frame: no answer.
    let reply = wire::Response::declined(RequestId(5), Op::Echo, Code::Approved, Reason::NONE);
    wire::encode_response_frame(2, &[reply], &mut bytes).expect("encodes");
    let message = wire::ErrorMessage::new("a client's error").expect("short");
    wire::encode_error_frame(3, wire::ErrorCode::BadField, &message, &mut bytes);
    bytes.extend(request_frame(4, &[echo(12, 4)]));
    // The stream ends inside frame 5, after its header.
    let cut = request_frame(5, &[echo(13, 5)]);
    bytes.extend_from_slice(&cut[..20]);
    send.write_all(&bytes).await.expect("written");
    send.finish().expect("finished");
    let frames = frames_until_finished(&mut recv).await;
    let kinds: Vec<(u64, Option<wire::ErrorCode>)> = frames
        .iter()
        .map(|(_, f)| match f {
            wire::Frame::Error {
                correlation_id,
                code,
                ..
            } => (*correlation_id, Some(*code)),
            other => (other.correlation_id(), None),
        })
        .collect();
    assert_eq!(kinds.len(), 4, "{frames:?}");
    for want in [
        (1, None),
        (2, Some(wire::ErrorCode::UnexpectedFrameKind)),
        (4, None),
    ] {
        assert!(kinds.contains(&want), "{want:?} in {kinds:?}");
    }
    // The cut frame's error comes last, after the answers to the whole frames.
    assert_eq!(kinds[3], (5, Some(wire::ErrorCode::MalformedFrame)));
    // Three protocol errors so far, the limit: the connection still serves.
    let stream = client.stream().await.expect("stream");
    assert_eq!(one(&stream, echo(14, 1)).await.code, Code::Approved);
    // One more closes it, after its error frame is written.
    let (mut send, mut recv) = client.connection().open_bi().await.expect("a stream");
    let mut bytes = Vec::new();
    let reply = wire::Response::declined(RequestId(6), Op::Echo, Code::Approved, Reason::NONE);
    wire::encode_response_frame(6, &[reply], &mut bytes).expect("encodes");
    send.write_all(&bytes).await.expect("written");
    let mut buf = vec![0u8; 512];
    let mut got = Vec::new();
    let limits = wire::Limits::default();
    let last = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(Some((frame, _))) = wire::decode_frame(&got, &limits) {
                return Some(frame);
            }
            match recv.read(&mut buf).await {
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    })
    .await
    .expect("in time");
    assert!(
        matches!(
            last,
            Some(wire::Frame::Error {
                correlation_id: 6,
                code: wire::ErrorCode::UnexpectedFrameKind,
                ..
            })
        ),
        "{last:?}"
    );
    let closed = tokio::time::timeout(LIMIT, client.connection().closed())
        .await
        .expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.error_code,
            quinn::VarInt::from_u32(wire::AppErrorCode::ProtocolViolation.as_u32())
        ),
        other => panic!("closed with {other:?}"),
    }
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_would_overflow_a_frame_are_answered_too_large() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    const FRAME: u32 = 64 * 1024;
    config.limits.frame_bytes_max = FRAME;
    config.limits.batch_len_max = 900;
    let running = start(config).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    // As many echoes of 256 bytes as one request frame holds, and a sale in the middle: the
    // answers are a little longer than the requests.
    let one_len = echo(1, 256).encoded_len();
    let n = (FRAME as usize - wire::HEADER_LEN - 2 - 64) / one_len;
    let mut requests: Vec<Request> = (0..n as u128).map(|i| echo(1_000 + i, 256)).collect();
    requests[n / 2] = authorize(900, 1);
    let frame = request_frame(7, &requests);
    assert!(frame.len() <= FRAME as usize);
    let (mut send, mut recv) = client.connection().open_bi().await.expect("a stream");
    send.write_all(&frame).await.expect("written");
    send.finish().expect("finished");
    let frames = frames_until_finished(&mut recv).await;
    let [(len, wire::Frame::Responses { responses, .. })] = &frames[..] else {
        panic!("one response frame: {frames:?}");
    };
    assert!(*len <= FRAME as usize, "a response frame of {len} bytes");
    assert_eq!(responses.len(), n);
    let too_large = responses
        .iter()
        .filter(|r| r.code == Code::SystemBusy && r.reason == Reason::RESPONSE_TOO_LARGE)
        .count();
    assert!(too_large > 0, "every echo fitted: {len} bytes");
    for (r, request) in responses.iter().zip(&requests) {
        assert_eq!(r.request_id, request.id);
        match (&request.operation, &r.body) {
            (Operation::Echo { payload }, wire::ResponseBody::Echo(back))
                if r.code == Code::Approved =>
            {
                assert_eq!(back, payload)
            }
            (Operation::Echo { .. }, _) => assert_eq!(r.reason, Reason::RESPONSE_TOO_LARGE),
            _ => assert_eq!(r.code, Code::Approved, "the sale is never cut: {r:?}"),
        }
    }
    // The answers kept are the first ones.
    let first_cut = responses
        .iter()
        .position(|r| r.reason == Reason::RESPONSE_TOO_LARGE)
        .expect("one cut");
    assert!(
        responses[first_cut..]
            .iter()
            .all(|r| r.reason == Reason::RESPONSE_TOO_LARGE || r.request_id.0 == 900)
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// A hold expires on the switch's clock tick: released, counted in `/metrics`, its status
/// "expired", and a capture of it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expire_on_the_clock_tick_and_are_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.authorization.expiry_tick_ms = 100;
    let running = start(config).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    let mut hold = authorize(500, 7);
    if let Operation::Authorize { expiry_secs, .. } = &mut hold.operation {
        *expiry_secs = 1;
    }
    assert_eq!(one(&stream, hold).await.code, Code::Approved);
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let metrics = http_get(running.http_addr, "/metrics").await;
        if metrics.contains("switch_holds_expired_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not expired: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = one(
        &stream,
        req(
            501,
            Operation::TransferStatus {
                lookup: RequestId(500),
            },
        ),
    )
    .await;
    let ResponseBody::TransferStatus(status) = status.body else {
        panic!("{status:?}")
    };
    assert_eq!(status.state, wire::TransferState::Expired);
    let capture = one(
        &stream,
        req(
            502,
            Operation::Capture {
                authorization: RequestId(500),
                amount: Amount(7),
            },
        ),
    )
    .await;
    assert_eq!(
        (capture.code, capture.reason),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_EXPIRED)
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// Random bytes, truncated frames and frames with bytes flipped, each on a stream of its own,
/// from clients that reconnect when the server closes them: the server answers what it can,
/// closes the rogue connections, and goes on serving a well-behaved client throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_truncated_frames_are_survived() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(config(dir.path())).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let valid = |id: u128| request_frame(id as u64, &[authorize(id, 1), echo(id + 1, 8)]);
    let mut rogue = connect(&running, None).await.expect("connect");
    let mut sales = 0u64;
    for round in 0..120u128 {
        let mut bytes = match round % 4 {
            0 => (0..rng.gen_range(1..300))
                .map(|_| rng.r#gen::<u8>())
                .collect(),
            1 => {
                let frame = valid(10_000 + round * 4);
                frame[..rng.gen_range(1..frame.len())].to_vec()
            }
            2 => {
                let mut frame = valid(10_000 + round * 4);
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..frame.len());
                    frame[at] ^= rng.gen_range(1..=255u8);
                }
                frame
            }
            _ => {
                let mut frame = valid(10_000 + round * 4)[..16].to_vec();
                let body: Vec<u8> = (0..rng.gen_range(0..200))
                    .map(|_| rng.r#gen::<u8>())
                    .collect();
                frame[..4].copy_from_slice(&(12 + body.len() as u32).to_le_bytes());
                frame.extend(body);
                frame
            }
        };
        if rng.gen_bool(0.5) {
            bytes.extend(valid(20_000 + round * 4));
        }
        // A closed rogue connection is replaced.
        let opened = match rogue.connection().open_bi().await {
            Ok(streams) => Some(streams),
            Err(_) => {
                rogue = connect(&running, None).await.expect("reconnect");
                rogue.connection().open_bi().await.ok()
            }
        };
        if let Some((mut send, mut recv)) = opened {
            let _ = send.write_all(&bytes).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
        }
        if round % 10 == 0 {
            let sale = one(
                &stream,
                req(
                    30_000 + round,
                    Operation::Sale {
                        number: number("6200000000000001"),
                        merchant: AccountId(300),
                        amount: Amount(1),
                        currency: CNY,
                    },
                ),
            )
            .await;
            assert_eq!(
                sale.code,
                Code::Approved,
                "seed {seed}, round {round}: {sale:?}"
            );
            sales += 1;
        }
    }
    assert!(
        http_get(running.http_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200"),
        "seed {seed}"
    );
    let balance = one(
        &stream,
        req(
            40_000,
            Operation::BalanceInquiry {
                target: wire::BalanceTarget::Account(AccountId(300)),
            },
        ),
    )
    .await;
    let ResponseBody::BalanceInquiry(balance) = balance.body else {
        panic!("seed {seed}: {balance:?}")
    };
    // Every well-behaved sale moved its unit (a frame with flipped bytes may, rarely, still
    // decode to a payment of its own).
    assert!(
        balance.ledger >= i128::from(sales),
        "seed {seed}: {balance:?}"
    );
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

/// An operation of a random frame for `a_frames_results_are_cut_only_when_they_do_not_fit`.
#[derive(Clone, Debug)]
enum Mixed {
    Echo(usize),
    Balance,
    Status,
    ListWindows,
    /// Of closed window 1 or 2, or of window 99, which does not exist (12/24).
    WindowReport(u64),
    /// Window 1 or 2, file 1 to 3, and where from: per mille of the file, or just past its end.
    ReportFile(u64, u8, Option<u16>),
    Sale,
    /// Of window 1, closed already: answered with its id, nothing changes.
    CloseClosed,
    SetLimits,
}

fn mixed() -> impl proptest::strategy::Strategy<Value = Mixed> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0usize..=256).prop_map(Mixed::Echo),
        1 => Just(Mixed::Balance),
        1 => Just(Mixed::Status),
        2 => Just(Mixed::ListWindows),
        3 => prop::sample::select(vec![1u64, 2, 99]).prop_map(Mixed::WindowReport),
        3 => (1u64..=2, 1u8..=3, prop::option::weighted(0.9, 0u16..=1000))
            .prop_map(|(w, f, at)| Mixed::ReportFile(w, f, at)),
        1 => Just(Mixed::Sale),
        1 => Just(Mixed::CloseClosed),
        1 => Just(Mixed::SetLimits),
    ]
}

/// One frame on its own stream: the response frame and its length.
async fn frame_alone(
    client: &Client,
    correlation_id: u64,
    requests: &[Request],
) -> (usize, Vec<wire::Response>) {
    let (mut send, mut recv) = client.connection().open_bi().await.expect("a stream");
    send.write_all(&request_frame(correlation_id, requests))
        .await
        .expect("written");
    send.finish().expect("finished");
    let frames = frames_until_finished(&mut recv).await;
    match frames.as_slice() {
        [(len, wire::Frame::Responses { responses, .. })] => (*len, responses.clone()),
        other => panic!("one response frame: {other:?}"),
    }
}

/// Random frames mixing every kind of operation, the large read-only results among them
/// (window lists and reports, echoes, report pieces), on a switch with a small frame limit: every
/// response frame is within the limit, and a result is cut (91, reason 27) only if it does
/// not fit after those before it, taking every later result at its smallest. A model lays the
/// results out in order, with each one's full size as it is when asked alone; a report piece
/// is cut to the room left.
#[test]
fn a_frames_results_are_cut_only_when_they_do_not_fit() {
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    const FRAME: u32 = 1400;
    const BATCH: u16 = 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.limits.frame_bytes_max = FRAME;
    config.limits.batch_len_max = BATCH;
    let (running, client, files) = runtime.block_on(async {
        let running = start(config).await;
        let client = connect(&running, None).await.expect("connect");
        let stream = client.stream().await.expect("stream");
        setup(&stream).await;
        // Window 1 with a sale (two positions), window 2 with none; window 3 open.
        let sale = req(
            10,
            Operation::Sale {
                number: number("6200000000000001"),
                merchant: AccountId(300),
                amount: Amount(700),
                currency: CNY,
            },
        );
        assert_eq!(one(&stream, sale).await.code, Code::Approved);
        for (id, window) in [(11, 1), (12, 2)] {
            let close = req(
                id,
                Operation::CloseWindow {
                    window: wire::WindowId(window),
                },
            );
            assert_eq!(one(&stream, close).await.code, Code::Approved);
        }
        // Every report's length, once it is written.
        let mut files = std::collections::HashMap::new();
        for window in 1..=2u64 {
            for file in 1..=3u8 {
                let ask = req(
                    13,
                    Operation::ReportFile {
                        window: wire::WindowId(window),
                        file,
                        offset: 0,
                    },
                );
                let total = tokio::time::timeout(LIMIT, async {
                    loop {
                        let r = one(&stream, ask.clone()).await;
                        match r.body {
                            ResponseBody::ReportFile { total_len, .. }
                                if r.code == Code::Approved =>
                            {
                                return total_len;
                            }
                            _ => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                })
                .await
                .expect("the reports are written");
                files.insert((window, file), total);
            }
        }
        (running, client, files)
    });
    let next_id = std::cell::Cell::new(1_000u128);
    let id = || {
        next_id.set(next_id.get() + 1);
        next_id.get()
    };
    let request = |op: &Mixed| -> Request {
        let operation = match *op {
            Mixed::Echo(len) => Operation::Echo {
                payload: wire::EchoPayload::new(vec![0x5a; len]).expect("within its bound"),
            },
            Mixed::Balance => Operation::BalanceInquiry {
                target: wire::BalanceTarget::Account(AccountId(100)),
            },
            Mixed::Status => Operation::TransferStatus {
                lookup: RequestId(10),
            },
            Mixed::ListWindows => Operation::ListWindows,
            Mixed::WindowReport(window) => Operation::WindowReport {
                window: wire::WindowId(window),
            },
            Mixed::ReportFile(window, file, at) => {
                let total = files[&(window, file)];
                Operation::ReportFile {
                    window: wire::WindowId(window),
                    file,
                    offset: at.map_or(total + 1, |permille| total * u64::from(permille) / 1000),
                }
            }
            Mixed::Sale => Operation::Sale {
                number: number("6200000000000001"),
                merchant: AccountId(300),
                amount: Amount(1),
                currency: CNY,
            },
            Mixed::CloseClosed => Operation::CloseWindow {
                window: wire::WindowId(1),
            },
            Mixed::SetLimits => Operation::SetLimits {
                participant: ParticipantId(2),
                currency: CNY,
                net_debit_cap: Amount(0),
            },
        };
        req(id(), operation)
    };
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 48,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = proptest::collection::vec(mixed(), 1..=usize::from(BATCH));
    // Results cut, and report pieces cut short, over all cases: the cases must reach both.
    let (cuts, shortened) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let outcome = runner.run(&strategy, |ops| {
        // As many as one request frame holds.
        let mut requests: Vec<Request> = ops.iter().map(&request).collect();
        while request_frame(1, &requests).len() > FRAME as usize {
            requests.pop();
        }
        let ops = &ops[..requests.len()];
        runtime.block_on(async {
            // What each result takes beyond its smallest form when it has room: asked alone.
            let mut full = Vec::new();
            for (op, r) in ops.iter().zip(&requests) {
                let least = r.operation.op().result_len_min();
                let extra = match op {
                    Mixed::ReportFile(..) => match &r.operation {
                        Operation::ReportFile {
                            window,
                            file,
                            offset,
                        } => {
                            let total = files[&(window.0, *file)];
                            total
                                .saturating_sub(*offset)
                                .min(wire::ReportChunk::LEN_MAX as u64)
                                as usize
                        }
                        _ => unreachable!("a report file request"),
                    },
                    _ if r.operation.op().is_read_only() => {
                        let again = req(id(), r.operation.clone());
                        let (_, alone) = frame_alone(&client, 2, &[again]).await;
                        alone[0].encoded_len() - least
                    }
                    _ => 0,
                };
                full.push(extra);
            }
            let (len, responses) = frame_alone(&client, 3, &requests).await;
            proptest::prop_assert!(len <= FRAME as usize, "a response frame of {} bytes", len);
            proptest::prop_assert_eq!(responses.len(), requests.len());
            // The model: in order, each takes its full size if it fits, a report piece what
            // is left; every other result counts at its smallest.
            let floor: usize = wire::HEADER_LEN
                + 2
                + requests
                    .iter()
                    .map(|r| r.operation.op().result_len_min())
                    .sum::<usize>();
            let mut room = FRAME as usize - floor;
            for ((r, extra), request) in responses.iter().zip(&full).zip(&requests) {
                let op = request.operation.op();
                let least = op.result_len_min();
                let takes = if op == Op::ReportFile {
                    (*extra).min(room)
                } else if *extra <= room {
                    *extra
                } else {
                    0
                };
                let cut = takes < *extra && (op != Op::ReportFile || takes == 0);
                cuts.set(cuts.get() + usize::from(cut));
                shortened.set(shortened.get() + usize::from(!cut && takes < *extra));
                let context = format!("{:?} in {:?}: {:?}", request.operation.op(), ops, r);
                if cut {
                    proptest::prop_assert_eq!(
                        (r.code, r.reason),
                        (Code::SystemBusy, Reason::RESPONSE_TOO_LARGE),
                        "{}",
                        context
                    );
                } else {
                    proptest::prop_assert!(
                        r.reason != Reason::RESPONSE_TOO_LARGE,
                        "cut, though it fits: {}",
                        context
                    );
                    proptest::prop_assert_eq!(r.encoded_len(), least + takes, "{}", context);
                    room -= takes;
                }
            }
            Ok(())
        })
    });
    runtime.block_on(async {
        client.close().await;
        running.shutdown().await.expect("clean shutdown");
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(cuts.get() > 0, "no case had a result that did not fit");
    assert!(shortened.get() > 0, "no case had a report piece cut short");
}

/// The next frame the server writes on a raw stream, reading as much as it takes; None once
/// the stream or the connection ends.
async fn next_frame(recv: &mut quinn::RecvStream, got: &mut Vec<u8>) -> Option<wire::Frame> {
    let limits = wire::Limits {
        frame_len_max: wire::FRAME_LEN_MAX_LIMIT,
        batch_len_max: u16::MAX,
    };
    let mut buf = vec![0u8; 4096];
    loop {
        if let Ok(Some((frame, used))) = wire::decode_frame(got, &limits) {
            got.drain(..used);
            return Some(frame);
        }
        match tokio::time::timeout(LIMIT, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// A response batch, which a client must not send: one protocol error (error 7).
fn wrong_kind(correlation_id: u64) -> Vec<u8> {
    let reply = wire::Response::declined(RequestId(5), Op::Echo, Code::Approved, Reason::NONE);
    let mut bytes = Vec::new();
    wire::encode_response_frame(correlation_id, &[reply], &mut bytes).expect("encodes");
    bytes
}

async fn closed_for_protocol_errors(client: &Client) {
    let closed = tokio::time::timeout(LIMIT, client.connection().closed())
        .await
        .expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.error_code,
            quinn::VarInt::from_u32(wire::AppErrorCode::ProtocolViolation.as_u32())
        ),
        other => panic!("closed with {other:?}"),
    }
}

/// The limit of protocol errors per connection is exact under pipelining: once the error past
/// it has been answered, a request sent on any other stream of the connection is not executed;
/// and however many streams send errors at once, no more errors than that are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_executed_or_answered_past_the_last_protocol_error() {
    const MAX: u32 = 3;
    const STREAMS: u64 = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.limits.malformed_frames_max = MAX;
    let running = start(config).await;
    let admin = connect(&running, None).await.expect("connect");
    let admin_stream = admin.stream().await.expect("stream");
    setup(&admin_stream).await;

    // Streams the server serves already, each answered once.
    let client = connect(&running, None).await.expect("connect");
    let mut others = Vec::new();
    for k in 0..STREAMS {
        let (mut send, mut recv) = client.connection().open_bi().await.expect("a stream");
        send.write_all(&request_frame(100 + k, &[echo(500 + u128::from(k), 1)]))
            .await
            .expect("written");
        let mut got = Vec::new();
        let answer = next_frame(&mut recv, &mut got).await;
        assert!(
            matches!(answer, Some(wire::Frame::Responses { .. })),
            "{answer:?}"
        );
        others.push(send);
    }
    let (mut send, mut recv) = client.connection().open_bi().await.expect("a stream");
    let mut got = Vec::new();
    for k in 0..=u64::from(MAX) {
        send.write_all(&wrong_kind(k + 1)).await.expect("written");
        let answer = next_frame(&mut recv, &mut got).await;
        assert!(
            matches!(
                answer,
                Some(wire::Frame::Error {
                    code: wire::ErrorCode::UnexpectedFrameKind,
                    ..
                })
            ),
            "error {k}: {answer:?}"
        );
    }
    // The last error is answered: every other stream now sends a deposit at once.
    let deposits: Vec<u128> = (0..STREAMS).map(|k| 700 + u128::from(k)).collect();
    for (send, &id) in others.iter_mut().zip(&deposits) {
        let fund = req(
            id,
            Operation::Fund {
                account: AccountId(100),
                amount: Amount(1),
                currency: CNY,
            },
        );
        // The connection may be gone already.
        let _ = send.write_all(&request_frame(9, &[fund])).await;
    }
    closed_for_protocol_errors(&client).await;
    for &id in &deposits {
        let status = one(
            &admin_stream,
            req(
                id + 1_000,
                Operation::TransferStatus {
                    lookup: RequestId(id),
                },
            ),
        )
        .await;
        assert_eq!(
            status.body,
            ResponseBody::empty(Op::TransferStatus),
            "deposit {id:#x} was executed"
        );
    }
    assert_eq!(available(&admin_stream, 3_000).await, 100_000);

    // Many streams sending errors at once: no more than MAX + 1 are answered.
    let flood = connect(&running, None).await.expect("connect");
    // Every stream is open before any sends: the errors of the first could close the
    // connection before the last is opened.
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(flood.connection().open_bi().await.expect("a stream"));
    }
    let mut readers = tokio::task::JoinSet::new();
    for (k, (mut send, mut recv)) in (0..STREAMS).zip(streams) {
        let bytes: Vec<u8> = (0..4 * MAX)
            .flat_map(|i| wrong_kind(k * 100 + u64::from(i)))
            .collect();
        readers.spawn(async move {
            let _ = send.write_all(&bytes).await;
            let mut got = Vec::new();
            let mut errors = 0;
            while let Some(frame) = next_frame(&mut recv, &mut got).await {
                errors += usize::from(matches!(frame, wire::Frame::Error { .. }));
            }
            errors
        });
    }
    closed_for_protocol_errors(&flood).await;
    let mut errors = 0;
    while let Some(n) = readers.join_next().await {
        errors += n.expect("a reader");
    }
    assert!(errors <= MAX as usize + 1, "{errors} errors answered");
    running.shutdown().await.expect("clean shutdown");
}

/// A ReportFile in the same frame as the close of its window runs after the close, and until
/// the reports are written it is answered 91, reason 29 (retry), never "not found"; a window
/// still open has no report (12, reason 24).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_asked_with_its_close_is_not_ready_until_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(config(dir.path())).await;
    let client = connect(&running, None).await.expect("connect");
    let stream = client.stream().await.expect("stream");
    setup(&stream).await;
    let report = |id, window| {
        req(
            id,
            Operation::ReportFile {
                window: wire::WindowId(window),
                file: 1,
                offset: 0,
            },
        )
    };
    let close = req(
        30,
        Operation::CloseWindow {
            window: wire::WindowId(0),
        },
    );
    let answers = call(&stream, &[report(31, 2), close, report(32, 1)]).await;
    let codes: Vec<(Code, Reason)> = answers.iter().map(|r| (r.code, r.reason)).collect();
    assert_eq!(
        codes[0],
        (Code::InvalidTransaction, Reason::WINDOW_NOT_FOUND)
    );
    assert_eq!(codes[1], (Code::Approved, Reason::NONE));
    assert!(
        [
            (Code::SystemBusy, Reason::REPORT_NOT_READY),
            (Code::Approved, Reason::NONE)
        ]
        .contains(&codes[2]),
        "{:?}",
        answers[2]
    );
    // Asked again until it is there: never "not found" meanwhile.
    let whole = tokio::time::timeout(LIMIT, async {
        for id in 40.. {
            let r = one(&stream, report(id, 1)).await;
            match (r.code, r.reason) {
                (Code::Approved, _) => return r,
                (Code::SystemBusy, Reason::REPORT_NOT_READY) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => panic!("{r:?}"),
            }
        }
        unreachable!("ids run out")
    })
    .await
    .expect("written in time");
    assert!(matches!(whole.body, ResponseBody::ReportFile { total_len, .. } if total_len > 0));
    // Window 2, open now, and window 0 have none.
    for window in [2, 0] {
        let r = one(&stream, report(90 + u128::from(window), window)).await;
        assert_eq!(
            (r.code, r.reason),
            (Code::InvalidTransaction, Reason::WINDOW_NOT_FOUND)
        );
    }
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}
