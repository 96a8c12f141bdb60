//! Setup shared by the switch's integration tests that talk to a server.

use std::path::Path;
use std::process::Command;

use switch::config::{Config, RouteConfig};
use switch::wire::{
    self, AccountFlags, AccountId, Amount, CardNumber, Currency, EchoPayload, Operation,
    ParticipantId, ParticipantName, Request, RequestId, Roles,
};

pub mod cluster;
pub mod process;

pub const CNY: Currency = Currency(156);

/// Starts `switch serve --config CONFIG`, its log appended to `log`; `RUST_LOG` is ignored, so
/// that the log holds what the configuration's `[log]` says. Wait for it with `ready`.
#[allow(dead_code)] // only the tests that run the binary
pub fn serve(config: &Path, log: &Path) -> Result<process::Process, String> {
    process::Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_switch"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG"),
        log,
    )
}

/// The default configuration on loopback, ports chosen by the OS, data in `dir`, log segments
/// of 8 MiB prepared ahead, numbers starting 62 routed to participant 2, and clients without a
/// certificate acting as the admin identity of participant 3, the acquirer of
/// `setup_requests` (the admin sends payments only for its own participant's merchants).
#[allow(dead_code)] // not every test file starts a server in its process
pub fn loopback_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.tls.anonymous_participant = Some(3);
    config.tls.anonymous_is_admin = true;
    config.server.listen = "127.0.0.1:0".parse().expect("literal");
    config.metrics.listen = "127.0.0.1:0".parse().expect("literal");
    config.server.data_dir = dir.to_path_buf();
    // Segments prepared ahead, and small: every start fills one.
    config.wal.segment_bytes_max = 8 << 20;
    config.wal.prepare_segments = true;
    config.routes = vec![RouteConfig {
        prefix: "62".into(),
        issuer: 2,
        pooled_account: None,
    }];
    config
}

pub fn req(id: u128, operation: Operation) -> Request {
    Request {
        id: RequestId(id),
        operation,
    }
}

/// Participants 2 (issuer, card 6200000000000001 = account 100, funded with `funded` minor
/// units) and 3 (acquirer, merchant account 300).
pub fn setup_requests(funded: u64) -> Vec<Request> {
    vec![
        req(
            1,
            Operation::CreateParticipant {
                participant: ParticipantId(2),
                roles: Roles::ISSUER,
                name: ParticipantName::new("issuer").expect("short"),
            },
        ),
        req(
            2,
            Operation::CreateParticipant {
                participant: ParticipantId(3),
                roles: Roles::ACQUIRER,
                name: ParticipantName::new("acquirer").expect("short"),
            },
        ),
        req(
            3,
            Operation::CreateAccount {
                account: AccountId(100),
                owner: ParticipantId(2),
                currency: CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: CardNumber::new("6200000000000001").expect("digits"),
            },
        ),
        req(
            4,
            Operation::CreateAccount {
                account: AccountId(300),
                owner: ParticipantId(3),
                currency: CNY,
                flags: AccountFlags(0),
                number: CardNumber::EMPTY,
            },
        ),
        req(
            5,
            Operation::Fund {
                account: AccountId(100),
                amount: Amount(funded),
                currency: CNY,
            },
        ),
    ]
}

/// A request batch of echoes with the largest payload, as many as fit in `frame_bytes_max`;
/// request ids are `correlation_id` in the high bits and the item's index in the low 32.
#[allow(dead_code)] // not every test file sends echo frames
pub fn echo_frame(correlation_id: u64, frame_bytes_max: u32) -> Vec<u8> {
    let payload = EchoPayload::new(vec![0x5a; EchoPayload::LEN_MAX]).expect("max length");
    let one = req(
        1,
        Operation::Echo {
            payload: payload.clone(),
        },
    );
    let per_frame = (frame_bytes_max as usize - wire::HEADER_LEN - 2) / one.encoded_len();
    let requests: Vec<Request> = (0..per_frame)
        .map(|i| {
            req(
                u128::from(correlation_id) << 32 | i as u128,
                Operation::Echo {
                    payload: payload.clone(),
                },
            )
        })
        .collect();
    let mut out = Vec::new();
    wire::encode_request_frame(correlation_id, &requests, &mut out).expect("encodes");
    assert!(out.len() <= frame_bytes_max as usize);
    out
}
