//! A snapshot written by an earlier build restores in this one and answers exactly as the
//! switch that wrote it would have.
//!
//! `fixtures/switch-snapshot-v1.bin` is format version 1, in which an authorization's or a
//! sale's answer is kept among the remembered responses (version 2 keeps it with the
//! original). It was written by the build of commit 66f36c6 running `write_fixture` below
//! (`cargo test -p switch --test snapshot_compat -- --ignored write_fixture`); run by this
//! build, `write_fixture` writes version 2 instead, so the file is not to be regenerated.
//!
//! `fixtures/switch-snapshot-v2-senders.bin` is version 2 with early reversals in sections 6
//! and 9 (the ids in the order they came, then each one's sender), as builds before section 10
//! wrote them. It was written by the build of commit 3affd38 running `write_senders_fixture`.

use std::sync::Arc;

use ledger::{AccountFlags, AccountId, Amount, Config, Currency, Ledger, ParticipantId, Timestamp};
use switch::codes::Code;
use switch::core::snapshot::{Image, RestoreConfig};
use switch::core::{
    Capture, Core, CoreConfig, CreateAccount, CreateParticipant, Fund, Item, Refund, Request,
    RequestId, Response, Reverse,
};
use switch::routing::{Route, RouteTable};
use switch::tls::Identity;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/switch-snapshot-v1.bin"
);
const SENDERS_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/switch-snapshot-v2-senders.bin"
);
const SEQUENCE: u64 = 7;
const NOW: Timestamp = Timestamp(1_000_000_000);
const ADMIN: Identity = Identity {
    participant: ParticipantId(1),
    admin: true,
};
const ACQUIRER: Identity = Identity {
    participant: ParticipantId(3),
    admin: false,
};
const OTHER_ACQUIRER: Identity = Identity {
    participant: ParticipantId(4),
    admin: false,
};

fn card_number(i: u128) -> String {
    format!("62000000000000{i:02}")
}

fn fresh() -> Core {
    let ledger = Ledger::new(Config {
        shards: 4,
        ..Config::default()
    })
    .expect("valid");
    let routes = RouteTable::new(vec![Route {
        prefix: "62".into(),
        issuer: ParticipantId(2),
        pooled_account: None,
    }])
    .expect("valid routes");
    Core::new(Arc::new(ledger), CoreConfig::default(), Arc::new(routes))
}

/// Every kind of answer a snapshot remembers: approvals of each operation, declines,
/// authorizations held, captured and reversed, a sale refunded.
fn workload() -> Vec<Vec<Item>> {
    let item = |id: u128, who, request| Item {
        id: RequestId(id),
        who,
        request,
    };
    let mut setup = vec![
        item(
            1,
            ADMIN,
            Request::CreateParticipant(CreateParticipant {
                participant: ParticipantId(2),
                name: "issuer".into(),
                roles: 3,
            }),
        ),
        item(
            2,
            ADMIN,
            Request::CreateParticipant(CreateParticipant {
                participant: ParticipantId(3),
                name: "acquirer".into(),
                roles: 3,
            }),
        ),
        item(
            3,
            ADMIN,
            Request::CreateAccount(CreateAccount {
                account: AccountId(200),
                owner: ParticipantId(3),
                currency: Currency::CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: None,
            }),
        ),
    ];
    for i in 1..=3u128 {
        setup.push(item(
            10 + i,
            ADMIN,
            Request::CreateAccount(CreateAccount {
                account: AccountId(100 + i),
                owner: ParticipantId(2),
                currency: Currency::CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: Some(card_number(i)),
            }),
        ));
        setup.push(item(
            20 + i,
            ADMIN,
            Request::Fund(Fund {
                account: AccountId(100 + i),
                amount: Amount(10_000),
                currency: Currency::CNY,
            }),
        ));
    }
    let authorize = |id: u128, card: u128, amount: u64| {
        item(
            id,
            ACQUIRER,
            Request::Authorize {
                number: card_number(card),
                merchant: AccountId(200),
                amount: Amount(amount),
                currency: Currency::CNY,
                expiry_seconds: 3600,
            },
        )
    };
    let sale = |id: u128, card: u128, amount: u64| {
        item(
            id,
            ACQUIRER,
            Request::Sale {
                number: card_number(card),
                merchant: AccountId(200),
                amount: Amount(amount),
                currency: Currency::CNY,
            },
        )
    };
    let payments = vec![
        authorize(100, 1, 500),
        authorize(101, 2, 700),
        authorize(102, 3, 900),
        // Declined: more than the card holds; and a card nobody issued.
        authorize(103, 1, 1_000_000),
        authorize(104, 99, 5),
        sale(105, 2, 300),
        sale(106, 3, 20_000),
    ];
    let later = vec![
        item(
            110,
            ACQUIRER,
            Request::Capture(Capture {
                authorization: RequestId(100),
                amount: Amount(400),
            }),
        ),
        item(
            111,
            ACQUIRER,
            Request::Reverse(Reverse {
                authorization: RequestId(101),
            }),
        ),
        item(
            112,
            ACQUIRER,
            Request::Refund(Refund {
                original: RequestId(105),
                amount: Amount(100),
                currency: Currency::CNY,
            }),
        ),
        sale(113, 1, 50),
    ];
    vec![setup, payments, later]
}

fn run(core: &mut Core) -> Vec<(Item, Response)> {
    let mut answered = Vec::new();
    for batch in workload() {
        let responses = core.execute(batch.clone(), NOW).responses;
        answered.extend(batch.into_iter().zip(responses));
    }
    answered
}

#[test]
#[ignore = "writes the fixture; see the module's comment"]
fn write_fixture() {
    let mut core = fresh();
    run(&mut core);
    let bytes = Image::take(&core, SEQUENCE).encode();
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
        .expect("fixtures directory");
    std::fs::write(FIXTURE, bytes).expect("write the fixture");
}

#[test]
fn a_version_1_snapshot_restores_and_answers_as_before() {
    let bytes = std::fs::read(FIXTURE).expect("the fixture");
    assert_eq!(&bytes[..8], b"SWCHSNAP");
    assert_eq!(
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        1
    );

    let mut live = fresh();
    let answered = run(&mut live);
    assert!(
        answered.iter().any(|(_, r)| r.code != Code::Approved),
        "the workload has declines"
    );
    let (mut restored, sequence) =
        Core::restore(&bytes, SEQUENCE, RestoreConfig::like(&fresh())).expect("restores");
    assert_eq!(sequence, SEQUENCE);
    assert_eq!(restored.ledger().digest(), live.ledger().digest());

    // Every request again: the answer it first had, and nothing changes.
    for (item, answer) in &answered {
        let again = restored.execute(vec![item.clone()], NOW).responses;
        assert_eq!(&again[0], answer, "{item:?}");
    }
    assert_eq!(restored.ledger().digest(), live.ledger().digest());

    // And the restored switch goes on as the live one does: capture the hold still live,
    // refund the sale, reverse the captured one, and repeat a request with other fields.
    let next = vec![
        Item {
            id: RequestId(120),
            who: ACQUIRER,
            request: Request::Capture(Capture {
                authorization: RequestId(102),
                amount: Amount(900),
            }),
        },
        Item {
            id: RequestId(121),
            who: ACQUIRER,
            request: Request::Refund(Refund {
                original: RequestId(113),
                amount: Amount(50),
                currency: Currency::CNY,
            }),
        },
        Item {
            id: RequestId(122),
            who: ACQUIRER,
            request: Request::Reverse(Reverse {
                authorization: RequestId(100),
            }),
        },
        Item {
            id: RequestId(100),
            who: ACQUIRER,
            request: Request::Sale {
                number: card_number(1),
                merchant: AccountId(200),
                amount: Amount(1),
                currency: Currency::CNY,
            },
        },
    ];
    let want = live.execute(next.clone(), NOW).responses;
    assert_eq!(restored.execute(next, NOW).responses, want);
    assert_eq!(want[3].code, Code::DuplicateWithOtherFields);
    assert_eq!(restored.ledger().digest(), live.ledger().digest());

    // Written again (version 2 now), it restores to the same answers.
    let bytes = Image::take(&restored, SEQUENCE + 1).encode();
    let (mut again, _) =
        Core::restore(&bytes, SEQUENCE + 1, RestoreConfig::like(&fresh())).expect("restores");
    for (item, answer) in &answered {
        assert_eq!(&again.execute(vec![item.clone()], NOW).responses[0], answer);
    }
    assert_eq!(again.ledger().digest(), live.ledger().digest());
}

/// Early reversals by the acquirer, another acquirer and the admin, interleaved; then the
/// late authorizations they are for, and some nobody reversed.
fn early_reversals() -> (Vec<Item>, Vec<Item>) {
    let reverse = |id: u128, who, of: u128| Item {
        id: RequestId(id),
        who,
        request: Request::Reverse(Reverse {
            authorization: RequestId(of),
        }),
    };
    let reversals = vec![
        reverse(300, ACQUIRER, 400),
        reverse(301, OTHER_ACQUIRER, 401),
        reverse(302, ADMIN, 402),
        reverse(303, ACQUIRER, 403),
        reverse(304, OTHER_ACQUIRER, 404),
        reverse(305, ACQUIRER, 405),
    ];
    let late = (400..=406)
        .map(|id| Item {
            id: RequestId(id),
            who: ACQUIRER,
            request: Request::Authorize {
                number: card_number(3),
                merchant: AccountId(200),
                amount: Amount(1),
                currency: Currency::CNY,
                expiry_seconds: 3600,
            },
        })
        .collect();
    (reversals, late)
}

#[test]
#[ignore = "writes the fixture; see the module's comment"]
fn write_senders_fixture() {
    let mut core = fresh();
    run(&mut core);
    let (reversals, _) = early_reversals();
    core.execute(reversals, NOW);
    let bytes = Image::take(&core, SEQUENCE).encode();
    std::fs::write(SENDERS_FIXTURE, bytes).expect("write the fixture");
}

#[test]
fn early_reversals_with_their_senders_restore_from_sections_6_and_9() {
    let bytes = std::fs::read(SENDERS_FIXTURE).expect("the fixture");
    let mut live = fresh();
    run(&mut live);
    let (reversals, late) = early_reversals();
    live.execute(reversals, NOW);
    let (mut restored, _) =
        Core::restore(&bytes, SEQUENCE, RestoreConfig::like(&fresh())).expect("restores");
    let want = live.execute(late.clone(), NOW).responses;
    let codes: Vec<Code> = want.iter().map(|r| r.code).collect();
    // The acquirer's own reversals void its late authorizations; another acquirer's do not,
    // nor does the admin's (it reverses as its own participant, 1, and the fixture's sender 0
    // voids nothing), nor does nothing.
    use Code::{Approved as A, InvalidTransaction as R};
    assert_eq!(codes, [R, A, A, R, A, R, A]);
    assert_eq!(restored.execute(late, NOW).responses, want);
    assert_eq!(restored.ledger().digest(), live.ledger().digest());
}
