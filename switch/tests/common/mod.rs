//! Setup shared by the switch's integration tests that talk to a server.

use switch::config::{Config, RouteConfig};
use switch::wire::{
    AccountFlags, AccountId, Amount, CardNumber, Currency, Operation, ParticipantId,
    ParticipantName, Request, RequestId, Roles,
};

pub const CNY: Currency = Currency(156);

/// The default configuration on loopback, ports chosen by the OS, data in `dir`, log segments
/// of 8 MiB prepared ahead, and numbers starting 62 routed to participant 2.
pub fn loopback_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
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
