//! The switch state machine without a network: every decline code, idempotent repeats, and
//! a property test that balances equal what the approved responses add up to, and that
//! replaying the journal rebuilds the same state.

use std::collections::HashMap;
use std::sync::Arc;

use ledger::{AccountFlags, AccountId, Amount, Config, Currency, Ledger, ParticipantId, Timestamp};
use proptest::prelude::*;
use switch::codes::{Code, Reason};
use switch::core::{
    Body, Capture, Core, CoreConfig, CreateAccount, CreateParticipant, Fund, Item, PaymentState,
    Refund, Request, RequestId, Reverse, Target,
};
use switch::journal::SwitchRecord;
use switch::routing::{Route, RouteTable};
use switch::tls::Identity;

const ADMIN: Identity = Identity {
    participant: ParticipantId(1),
    admin: true,
};
const ISSUER: ParticipantId = ParticipantId(2);
const ACQUIRER: Identity = Identity {
    participant: ParticipantId(3),
    admin: false,
};
const OTHER_ACQUIRER: Identity = Identity {
    participant: ParticipantId(4),
    admin: false,
};
const CARDS: u128 = 4;
const MERCHANTS: u128 = 2;
const FUNDED: u64 = 10_000;

fn card_number(i: u128) -> String {
    format!("62000000000000{i:02}")
}
fn card(i: u128) -> AccountId {
    AccountId(100 + i)
}
fn merchant(i: u128) -> AccountId {
    AccountId(200 + i)
}

/// A core, and the journal of everything it executed.
struct Harness {
    core: Core,
    core_config: CoreConfig,
    journal: Vec<Vec<u8>>,
    next_id: u128,
    /// Holds an expiry pass expires at most, as the server bounds them; `expire` runs passes
    /// until one finds fewer due, each its own journal record.
    expiry_pass_max: Option<u32>,
}

impl Harness {
    fn new() -> Self {
        Self::with(Config::default())
    }

    fn with(ledger_config: Config) -> Self {
        Self::with_configs(ledger_config, CoreConfig::default())
    }

    fn with_configs(ledger_config: Config, core_config: CoreConfig) -> Self {
        let ledger = Arc::new(Ledger::new(ledger_config).expect("valid"));
        let routes = RouteTable::new(vec![Route {
            prefix: "62".into(),
            issuer: ISSUER,
            pooled_account: None,
        }])
        .expect("valid routes");
        let core = Core::new(ledger, core_config.clone(), Arc::new(routes));
        let mut h = Harness {
            core,
            core_config,
            journal: Vec::new(),
            next_id: 1_000,
            expiry_pass_max: None,
        };
        let mut setup = Vec::new();
        for (p, name) in [(2, "issuer"), (3, "acquirer"), (4, "other acquirer")] {
            setup.push(Request::CreateParticipant(CreateParticipant {
                participant: ParticipantId(p),
                name: name.into(),
                roles: 3,
            }));
        }
        for i in 1..=CARDS {
            setup.push(Request::CreateAccount(CreateAccount {
                account: card(i),
                owner: ISSUER,
                currency: Currency::CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: Some(card_number(i)),
            }));
            setup.push(Request::Fund(Fund {
                account: card(i),
                amount: Amount(FUNDED),
                currency: Currency::CNY,
            }));
        }
        for i in 1..=MERCHANTS {
            setup.push(Request::CreateAccount(CreateAccount {
                account: merchant(i),
                owner: ACQUIRER.participant,
                currency: Currency::CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: None,
            }));
        }
        for r in setup {
            let (code, _) = h.one(ADMIN, r.clone(), Timestamp(1));
            assert_eq!(code, Code::Approved, "{r:?}");
        }
        h
    }

    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn run(&mut self, items: Vec<Item>, now: Timestamp) -> Vec<switch::core::Response> {
        let executed = self.core.execute(items, now);
        // The bound the ledger stage sizes its log records by.
        for logged in &executed.logged {
            if !matches!(logged.command, switch::core::Command::CloseWindow { .. }) {
                assert!(
                    switch::journal::logged_len(&logged.command)
                        <= switch::journal::logged_len_max(),
                    "{logged:?}"
                );
            }
        }
        if !executed.logged.is_empty() {
            let mut bytes = Vec::new();
            SwitchRecord::encode_batch(now, &executed.logged, &mut bytes);
            self.journal.push(bytes);
        }
        executed.responses
    }

    fn expire(&mut self, now: Timestamp) {
        let at_most = self.expiry_pass_max;
        loop {
            let expired = self.core.expire_holds(now, at_most);
            if expired > 0 {
                let mut bytes = Vec::new();
                SwitchRecord::encode_expire(now, at_most, &mut bytes);
                self.journal.push(bytes);
            }
            if at_most.is_none_or(|n| expired < n as usize) {
                return;
            }
        }
    }

    fn one(&mut self, who: Identity, request: Request, now: Timestamp) -> (Code, Reason) {
        let id = self.id();
        self.one_with(id, who, request, now)
    }

    fn one_with(
        &mut self,
        id: RequestId,
        who: Identity,
        request: Request,
        now: Timestamp,
    ) -> (Code, Reason) {
        let r = self.run(vec![Item { id, who, request }], now).remove(0);
        assert_eq!(r.id, id);
        (r.code, r.reason)
    }

    fn balance(&self, account: AccountId) -> ledger::Balances {
        self.core
            .ledger()
            .account(account)
            .expect("exists")
            .balances
    }

    /// A fresh core fed the journal: must end in the same state.
    fn replayed(&self) -> Core {
        let ledger = Arc::new(Ledger::new(self.core.ledger().config().clone()).expect("valid"));
        let mut core = Core::new(
            ledger,
            self.core_config.clone(),
            Arc::new(RouteTable::default()),
        );
        // As recovery and followers do.
        for bytes in &self.journal {
            switch::journal::replay(&mut core, bytes).expect("journal replays");
        }
        core
    }
}

fn authorize(number: &str, m: u128, amount: u64) -> Request {
    Request::Authorize {
        number: number.into(),
        merchant: merchant(m),
        amount: Amount(amount),
        currency: Currency::CNY,
        expiry_seconds: 60,
    }
}

const NOW: Timestamp = Timestamp(1_000_000_000);

#[test]
fn every_decline_code_is_reachable_and_right() {
    let mut h = Harness::new();
    let c1 = card_number(1);
    // 92: no route; 14: routed but no such card.
    assert_eq!(
        h.one(ACQUIRER, authorize("4111111111111111", 1, 10), NOW).0,
        Code::CannotRoute
    );
    assert_eq!(
        h.one(ACQUIRER, authorize("6299999999999999", 1, 10), NOW).0,
        Code::InvalidCardOrAccount
    );
    assert_eq!(
        h.one(ACQUIRER, authorize("62ab", 1, 10), NOW).0,
        Code::InvalidCardOrAccount
    );
    // 51: more than the card holds.
    assert_eq!(
        h.one(ACQUIRER, authorize(&c1, 1, FUNDED + 1), NOW).0,
        Code::InsufficientFunds
    );
    // 57: another acquirer's merchant; an admin operation without being admin.
    assert_eq!(
        h.one(OTHER_ACQUIRER, authorize(&c1, 1, 10), NOW).0,
        Code::NotPermitted
    );
    let fund = Request::Fund(Fund {
        account: card(1),
        amount: Amount(5),
        currency: Currency::CNY,
    });
    assert_eq!(
        h.one(ACQUIRER, fund, NOW),
        (Code::NotPermitted, Reason::ADMIN_REQUIRED)
    );
    // 13: zero amount.
    assert_eq!(
        h.one(ACQUIRER, authorize(&c1, 1, 0), NOW).0,
        Code::InvalidAmount
    );
    // 12: expiry beyond the maximum; a currency the accounts are not in.
    let too_long = Request::Authorize {
        number: c1.clone(),
        merchant: merchant(1),
        amount: Amount(10),
        currency: Currency::CNY,
        expiry_seconds: u32::MAX,
    };
    assert_eq!(
        h.one(ACQUIRER, too_long, NOW),
        (Code::InvalidTransaction, Reason::NONE)
    );
    let usd = Request::Sale {
        number: c1.clone(),
        merchant: merchant(1),
        amount: Amount(1),
        currency: Currency::USD,
    };
    assert_eq!(h.one(ACQUIRER, usd, NOW).0, Code::InvalidTransaction);

    // An approved authorization, then a capture of more than was held: 13.
    let auth = h.id();
    assert_eq!(
        h.one_with(auth, ACQUIRER, authorize(&c1, 1, 300), NOW).0,
        Code::Approved
    );
    let over = Request::Capture(Capture {
        authorization: auth,
        amount: Amount(301),
    });
    assert_eq!(h.one(ACQUIRER, over, NOW).0, Code::InvalidAmount);
    // 57: someone else capturing it.
    let steal = Request::Capture(Capture {
        authorization: auth,
        amount: Amount(1),
    });
    assert_eq!(h.one(OTHER_ACQUIRER, steal, NOW).0, Code::NotPermitted);
    // 94: the same request id with other fields.
    assert_eq!(
        h.one_with(auth, ACQUIRER, authorize(&c1, 1, 301), NOW).0,
        Code::DuplicateWithOtherFields
    );
    // A partial capture releases the rest; refunds never exceed what was captured (13).
    let capture = Request::Capture(Capture {
        authorization: auth,
        amount: Amount(200),
    });
    assert_eq!(h.one(ACQUIRER, capture, NOW).0, Code::Approved);
    let b = h.balance(card(1));
    assert_eq!((b.debits_pending, b.debits_posted), (0, 200));
    let refund = |amount| {
        Request::Refund(Refund {
            original: auth,
            amount: Amount(amount),
            currency: Currency::CNY,
        })
    };
    assert_eq!(h.one(ACQUIRER, refund(150), NOW).0, Code::Approved);
    assert_eq!(
        h.one(ACQUIRER, refund(51), NOW),
        (Code::InvalidAmount, Reason::EXCEEDS_REFUNDABLE)
    );
    assert_eq!(h.one(ACQUIRER, refund(50), NOW).0, Code::Approved);
    // Capturing again: 12.
    let again = Request::Capture(Capture {
        authorization: auth,
        amount: Amount(1),
    });
    assert_eq!(
        h.one(ACQUIRER, again, NOW),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED)
    );

    // A reversal that arrives before its authorization: the late authorization is declined.
    let late = h.id();
    let reverse = Request::Reverse(Reverse {
        authorization: late,
    });
    assert_eq!(h.one(ACQUIRER, reverse, NOW).0, Code::Approved);
    assert_eq!(
        h.one_with(late, ACQUIRER, authorize(&c1, 1, 10), NOW),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED)
    );
    assert_eq!(h.balance(card(1)).debits_pending, 0, "nothing held");
}

#[test]
fn a_participant_needs_a_name_and_known_roles() {
    let mut h = Harness::new();
    let participant = |id, name: &str, roles| {
        Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(id),
            name: name.into(),
            roles,
        })
    };
    assert_eq!(
        h.one(ADMIN, participant(9, "", 3), NOW),
        (Code::InvalidTransaction, Reason::NONE)
    );
    for roles in [4, 0x80, 0xff] {
        assert_eq!(
            h.one(ADMIN, participant(9, "nine", roles), NOW),
            (Code::InvalidTransaction, Reason::RESERVED_BITS),
            "roles {roles:#x}"
        );
    }
    assert_eq!(
        h.one(ADMIN, participant(9, "nine", 3), NOW).0,
        Code::Approved
    );
}

#[test]
fn participants_past_the_bound_are_busy_and_a_lower_bound_still_replays() {
    let participant = |id| {
        Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(id),
            name: format!("participant {id}"),
            roles: 3,
        })
    };
    // Setup creates three; room for one more.
    let mut h = Harness::with_configs(
        Config::default(),
        CoreConfig {
            participants_max: 4,
            ..CoreConfig::default()
        },
    );
    let fifth = h.id();
    assert_eq!(
        h.one_with(fifth, ADMIN, participant(5), NOW).0,
        Code::Approved
    );
    let logged_before = h.journal.len();
    assert_eq!(
        h.one(ADMIN, participant(6), NOW),
        (Code::SystemBusy, Reason::OVERLOADED)
    );
    assert_eq!(h.journal.len(), logged_before, "the busy one is not logged");
    // One that exists, and a repeat, are still answered as before.
    assert_eq!(h.one(ADMIN, participant(5), NOW).0, Code::Approved);
    assert_eq!(
        h.one_with(fifth, ADMIN, participant(5), NOW).0,
        Code::Approved
    );
    // 91 is not remembered: the same request goes through once there is room.
    let sixth = h.id();
    assert_eq!(
        h.one_with(sixth, ADMIN, participant(6), NOW).0,
        Code::SystemBusy
    );
    h.core_config.participants_max = 5;
    let mut core = h.replayed();
    let sixth_request = Item {
        id: sixth,
        who: ADMIN,
        request: participant(6),
    };
    assert_eq!(
        core.execute(vec![sixth_request], NOW).responses[0].code,
        Code::Approved
    );
    // A log written under a larger bound replays whole under a smaller one.
    h.core_config.participants_max = 1;
    let mut core = h.replayed();
    let account = Item {
        id: h.id(),
        who: ADMIN,
        request: Request::CreateAccount(CreateAccount {
            account: AccountId(77_000),
            owner: ParticipantId(5),
            currency: Currency::CNY,
            flags: AccountFlags::default(),
            number: None,
        }),
    };
    assert_eq!(
        core.execute(vec![account], NOW).responses[0].code,
        Code::Approved,
        "participant 5 was replayed"
    );
}

#[test]
fn closes_past_a_batch_records_room_are_busy_and_not_logged() {
    let one = switch::journal::logged_len(&switch::core::Command::CloseWindow {
        window: 0,
        fees: Arc::default(),
    });
    let mut h = Harness::with_configs(
        Config::default(),
        CoreConfig {
            closes_logged_bytes_max: 2 * one,
            ..CoreConfig::default()
        },
    );
    let logged_before = h.journal.len();
    let closes: Vec<Item> = (0..3)
        .map(|_| Item {
            id: h.id(),
            who: ADMIN,
            request: Request::CloseWindow { window: 0 },
        })
        .collect();
    let codes: Vec<(Code, Reason)> = h
        .run(closes.clone(), NOW)
        .iter()
        .map(|r| (r.code, r.reason))
        .collect();
    assert_eq!(codes[..2], [(Code::Approved, Reason::NONE); 2]);
    assert_eq!(codes[2], (Code::SystemBusy, Reason::OVERLOADED));
    let record = &h.journal[logged_before];
    let SwitchRecord::Batch { commands, .. } = SwitchRecord::decode(record).expect("decodes")
    else {
        panic!("a batch record");
    };
    assert_eq!(commands.len(), 2, "the busy close is not logged");
    // 91 is not remembered: in the next batch the third close goes through.
    assert_eq!(h.run(closes[2..].to_vec(), NOW)[0].code, Code::Approved);
    assert_eq!(h.replayed().ledger().digest(), h.core.ledger().digest());
}

#[test]
fn closes_past_the_reports_one_batch_hands_over_are_busy() {
    let mut h = Harness::new();
    let room = h.core.clearing().reports_max;
    let closes: Vec<Item> = (0..room + 2)
        .map(|_| Item {
            id: h.id(),
            who: ADMIN,
            request: Request::CloseWindow { window: 0 },
        })
        .collect();
    let codes: Vec<Code> = h.run(closes, NOW).iter().map(|r| r.code).collect();
    assert!(
        codes[..room].iter().all(|c| *c == Code::Approved),
        "{codes:?}"
    );
    assert_eq!(codes[room..], [Code::SystemBusy; 2]);
    assert_eq!(
        h.core.take_reports().len(),
        room,
        "every close's report is kept"
    );
}

#[test]
fn an_existing_account_is_not_bound_to_a_second_number() {
    let mut h = Harness::new();
    let account = |number: &str| {
        Request::CreateAccount(CreateAccount {
            account: card(1),
            owner: ISSUER,
            currency: Currency::CNY,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            number: Some(number.into()),
        })
    };
    // The same account again, under a new request id: unchanged.
    assert_eq!(
        h.one(ADMIN, account(&card_number(1)), NOW).0,
        Code::Approved
    );
    assert_eq!(
        h.one(ADMIN, account("6200000000000099"), NOW),
        (Code::DuplicateWithOtherFields, Reason::ID_REUSED)
    );
    assert_eq!(
        h.one(ACQUIRER, authorize("6200000000000099", 1, 10), NOW).0,
        Code::InvalidCardOrAccount,
        "the second number is not bound"
    );
    assert_eq!(h.replayed().ledger().digest(), h.core.ledger().digest());
}

#[test]
fn busy_when_the_ledger_is_full_of_holds() {
    let mut h = Harness::with(Config {
        shards: 1,
        pending_max: 1,
        ..Config::default()
    });
    let c1 = card_number(1);
    assert_eq!(h.one(ACQUIRER, authorize(&c1, 1, 1), NOW).0, Code::Approved);
    assert_eq!(
        h.one(ACQUIRER, authorize(&c1, 1, 1), NOW).0,
        Code::SystemBusy
    );
}

#[test]
fn repeats_get_the_original_response_and_change_nothing() {
    let mut h = Harness::new();
    let c1 = card_number(1);
    let id = h.id();
    let first = h.one_with(id, ACQUIRER, authorize(&c1, 1, FUNDED + 5), NOW);
    assert_eq!(first.0, Code::InsufficientFunds);
    h.one(
        ADMIN,
        Request::Fund(Fund {
            account: card(1),
            amount: Amount(100),
            currency: Currency::CNY,
        }),
        NOW,
    );
    // Funds arrived, but the same request keeps its original answer.
    assert_eq!(
        h.one_with(id, ACQUIRER, authorize(&c1, 1, FUNDED + 5), NOW),
        first
    );
    let ok = h.id();
    let approved = h.one_with(ok, ACQUIRER, authorize(&c1, 1, 7), NOW);
    let held = h.balance(card(1)).debits_pending;
    assert_eq!(
        h.one_with(ok, ACQUIRER, authorize(&c1, 1, 7), NOW),
        approved
    );
    assert_eq!(h.balance(card(1)).debits_pending, held, "held once");
    // The same, in one batch: a capture of an authorization in the same batch sees it.
    let (a, c) = (h.id(), h.id());
    let rs = h.run(
        vec![
            Item {
                id: a,
                who: ACQUIRER,
                request: authorize(&c1, 2, 9),
            },
            Item {
                id: c,
                who: ACQUIRER,
                request: Request::Capture(Capture {
                    authorization: a,
                    amount: Amount(9),
                }),
            },
            Item {
                id: a,
                who: ACQUIRER,
                request: authorize(&c1, 2, 9),
            },
        ],
        NOW,
    );
    let codes: Vec<Code> = rs.iter().map(|r| r.code).collect();
    assert_eq!(codes, [Code::Approved; 3]);
    assert_eq!(
        rs[1].body,
        Body::Transfer {
            transfer: ledger::TransferId(c.0),
            amount: Amount(9),
            currency: Currency::CNY,
        }
    );
}

#[test]
fn a_repeat_hears_its_answer_whatever_the_routes_say_now() {
    let mut h = Harness::new();
    let c1 = card_number(1);
    let sale = Request::Sale {
        number: c1.clone(),
        merchant: merchant(1),
        amount: Amount(20),
        currency: Currency::CNY,
    };
    let id = h.id();
    let first = h.one_with(id, ACQUIRER, sale.clone(), NOW);
    assert_eq!(first.0, Code::Approved);
    // The route goes away (a reload): the sale was made, and its repeat says so.
    h.core.set_routes(Arc::new(RouteTable::default()));
    assert_eq!(h.one_with(id, ACQUIRER, sale, NOW), first);
    let other = Request::Sale {
        number: c1,
        merchant: merchant(1),
        amount: Amount(21),
        currency: Currency::CNY,
    };
    assert_eq!(
        h.one_with(id, ACQUIRER, other.clone(), NOW).0,
        Code::DuplicateWithOtherFields
    );
    assert_eq!(h.one(ACQUIRER, other, NOW).0, Code::CannotRoute);
}

/// A core that remembers `core_remembers` requests over a ledger that remembers
/// `ledger_remembers` transfers: each forgets on its own bound (the ledger shard by shard).
fn forgetting(ledger_remembers: u64, core_remembers: usize) -> Harness {
    let ledger_config = Config {
        shards: 4,
        transfers_remembered_max: ledger_remembers,
        ..Config::default()
    };
    let core_config = CoreConfig {
        requests_remembered_max: core_remembers,
        ..CoreConfig::default()
    };
    Harness::with_configs(ledger_config, core_config)
}

/// A payment can be forgotten by the switch and still be held by the ledger.
fn forgetful() -> Harness {
    forgetting(10_000, 4)
}

/// Pushes the answers the switch remembers out of its memory (declines, here).
fn forget_answers(h: &mut Harness) {
    for _ in 0..8 {
        let number = card_number(1);
        let declined = h.one(ACQUIRER, authorize(&number, 1, 0), NOW);
        assert_eq!(declined.0, Code::InvalidAmount);
    }
}

/// Pushes the payments the switch remembers (resolved ones) out of its memory.
fn forget_payments(h: &mut Harness) {
    for _ in 0..8 {
        let sale = Request::Sale {
            number: card_number(2),
            merchant: merchant(2),
            amount: Amount(1),
            currency: Currency::CNY,
        };
        assert_eq!(h.one(ACQUIRER, sale, NOW).0, Code::Approved);
    }
}

fn cleared_totals(h: &Harness) -> (u128, u128) {
    h.core
        .clearing()
        .open
        .cleared
        .values()
        .fold((0, 0), |(p, r), t| (p + t.purchases, r + t.refunds))
}

#[test]
fn a_payment_forgotten_by_the_switch_but_not_the_ledger_is_not_done_twice() {
    let mut h = forgetful();
    let c1 = card_number(1);
    let sale = Request::Sale {
        number: c1.clone(),
        merchant: merchant(1),
        amount: Amount(100),
        currency: Currency::CNY,
    };
    let (s, r) = (h.id(), h.id());
    assert_eq!(h.one_with(s, ACQUIRER, sale.clone(), NOW).0, Code::Approved);
    let refund = Request::Refund(Refund {
        original: s,
        amount: Amount(40),
        currency: Currency::CNY,
    });
    assert_eq!(
        h.one_with(r, ACQUIRER, refund.clone(), NOW).0,
        Code::Approved
    );
    let before = (
        cleared_totals(&h),
        h.balance(merchant(1)),
        h.balance(card(1)),
    );
    assert_eq!(before.0, (100, 40));
    forget_answers(&mut h);
    // The refund again: the ledger still holds it, so nothing moves or clears again.
    assert_eq!(h.one_with(r, ACQUIRER, refund, NOW).0, Code::Approved);
    forget_payments(&mut h);
    // The sale again: the same, and its refundable amount is not set back to 100.
    assert_eq!(h.one_with(s, ACQUIRER, sale, NOW).0, Code::Approved);
    let after = (
        cleared_totals(&h),
        h.balance(merchant(1)),
        h.balance(card(1)),
    );
    assert_eq!(
        after.0,
        (100 + 8, 40),
        "the 8 sales of forget_payments only"
    );
    assert_eq!(after.1.debits_posted, before.1.debits_posted);
    assert_eq!(after.1.credits_posted, before.1.credits_posted);
    assert_eq!(after.2, before.2);
    let more = Request::Refund(Refund {
        original: s,
        amount: Amount(70),
        currency: Currency::CNY,
    });
    assert_ne!(h.one(ACQUIRER, more, NOW).0, Code::Approved);
    assert_eq!(h.replayed().ledger().digest(), h.core.ledger().digest());
}

#[test]
fn a_reversal_of_a_forgotten_capture_is_refused_not_taken_for_early() {
    let mut h = forgetful();
    let c1 = card_number(1);
    let a = h.id();
    assert_eq!(
        h.one_with(a, ACQUIRER, authorize(&c1, 1, 30), NOW).0,
        Code::Approved
    );
    let capture = Request::Capture(Capture {
        authorization: a,
        amount: Amount(30),
    });
    assert_eq!(h.one(ACQUIRER, capture, NOW).0, Code::Approved);
    let reversed = h.id();
    assert_eq!(
        h.one_with(reversed, ACQUIRER, authorize(&c1, 1, 5), NOW).0,
        Code::Approved
    );
    let reverse = |of| Request::Reverse(Reverse { authorization: of });
    assert_eq!(h.one(ACQUIRER, reverse(reversed), NOW).0, Code::Approved);
    forget_payments(&mut h);
    assert_eq!(
        h.one(OTHER_ACQUIRER, reverse(a), NOW),
        (Code::NotPermitted, Reason::NOT_OWNER)
    );
    assert_eq!(
        h.one(ACQUIRER, reverse(a), NOW),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED)
    );
    // A reversed hold, reversed again: true, and nothing moves.
    let card_before = h.balance(card(1));
    assert_eq!(h.one(ACQUIRER, reverse(reversed), NOW).0, Code::Approved);
    assert_eq!(h.balance(card(1)), card_before);
    assert_eq!(h.balance(merchant(1)).credits_posted, 30);
}

/// A bounded pass logs its bound, and a replay (a follower, recovery) expires the same holds,
/// not every hold due: a batch that follows the pass sees the rest still held on both.
#[test]
fn a_bounded_expiry_pass_replays_as_bounded() {
    let mut h = Harness::new();
    for amount in [10, 20, 30, 40, 50] {
        assert_eq!(
            h.one(ACQUIRER, authorize(&card_number(3), 1, amount), NOW)
                .0,
            Code::Approved
        );
    }
    let due = Timestamp(NOW.0 + 60_000_000_000);
    assert_eq!(h.core.expire_holds(due, Some(2)), 2);
    let mut bytes = Vec::new();
    SwitchRecord::encode_expire(due, Some(2), &mut bytes);
    h.journal.push(bytes);
    // The first two in (expiry, id) order: the holds of 10 and 20.
    assert_eq!(h.balance(card(3)).debits_pending, 120);
    let replayed = h.replayed();
    assert_eq!(
        replayed
            .ledger()
            .account(card(3))
            .expect("exists")
            .balances
            .debits_pending,
        120
    );
    assert_eq!(replayed.ledger().digest(), h.core.ledger().digest());
}

#[test]
fn holds_expire_on_the_tick_and_status_says_so() {
    let mut h = Harness::new();
    let id = h.id();
    assert_eq!(
        h.one_with(id, ACQUIRER, authorize(&card_number(2), 1, 40), NOW)
            .0,
        Code::Approved
    );
    h.expire(Timestamp(NOW.0 + 59_000_000_000));
    assert_eq!(h.balance(card(2)).debits_pending, 40, "not yet due");
    h.expire(Timestamp(NOW.0 + 60_000_000_000));
    assert_eq!(h.balance(card(2)).debits_pending, 0);
    let status = h.run(
        vec![Item {
            id: h_id(),
            who: ACQUIRER,
            request: Request::TransferStatus { of: id },
        }],
        NOW,
    );
    match &status[0].body {
        Body::Status(s) => assert_eq!(s.state, PaymentState::Expired),
        other => panic!("{other:?}"),
    }
    let capture = Request::Capture(Capture {
        authorization: id,
        amount: Amount(40),
    });
    assert_eq!(h.one(ACQUIRER, capture, NOW).0, Code::InvalidTransaction);
    // Balance inquiries are for the owner only (by number: the issuer it routes to).
    let by_number = Request::BalanceInquiry {
        target: Target::Number(card_number(2)),
    };
    assert_eq!(
        h.one(ACQUIRER, by_number.clone(), NOW).0,
        Code::NotPermitted
    );
    let issuer = Identity {
        participant: ISSUER,
        admin: false,
    };
    assert_eq!(h.one(issuer, by_number, NOW).0, Code::Approved);
    let by_account = Request::BalanceInquiry {
        target: Target::Account(card(2)),
    };
    assert_eq!(h.one(ACQUIRER, by_account, NOW).0, Code::NotPermitted);
}

#[test]
fn a_reversal_of_a_due_hold_hears_the_same_before_and_after_the_tick() {
    let mut h = Harness::new();
    let (a, b) = (h.id(), h.id());
    for id in [a, b] {
        let held = h.one_with(id, ACQUIRER, authorize(&card_number(2), 1, 40), NOW);
        assert_eq!(held.0, Code::Approved);
    }
    let due = Timestamp(NOW.0 + 61_000_000_000);
    let reverse = |of| Request::Reverse(Reverse { authorization: of });
    // Due, and the tick has not come yet.
    let (ra, rb) = (h.id(), h.id());
    let before = h.run(
        vec![Item {
            id: ra,
            who: ACQUIRER,
            request: reverse(a),
        }],
        due,
    );
    h.expire(due);
    let after = h.run(
        vec![Item {
            id: rb,
            who: ACQUIRER,
            request: reverse(b),
        }],
        due,
    );
    assert_eq!(
        (before[0].code, before[0].reason, &before[0].body),
        (after[0].code, after[0].reason, &after[0].body)
    );
    assert_eq!(before[0].code, Code::Approved);
    assert_eq!(h.balance(card(2)).debits_pending, 0);
    assert_eq!(h.replayed().ledger().digest(), h.core.ledger().digest());
}

#[test]
fn an_early_reversal_voids_only_its_own_acquirers_late_authorization() {
    let mut h = Harness::new();
    let reverse = |of| Request::Reverse(Reverse { authorization: of });
    let (mine, theirs, admins) = (RequestId(7_001), RequestId(7_002), RequestId(7_003));
    for (who, of) in [(ACQUIRER, mine), (OTHER_ACQUIRER, theirs), (ADMIN, admins)] {
        assert_eq!(
            h.one(who, reverse(of), NOW),
            (Code::Approved, Reason::AUTHORIZATION_REVERSED)
        );
    }
    let late =
        |h: &mut Harness, id| h.one_with(id, ACQUIRER, authorize(&card_number(1), 1, 5), NOW);
    assert_eq!(
        late(&mut h, mine),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED)
    );
    // Another participant's reversal of the id does not void this acquirer's authorization,
    // and the admin's is another participant's (its own, 1).
    assert_eq!(late(&mut h, theirs).0, Code::Approved);
    assert_eq!(late(&mut h, admins).0, Code::Approved);
    assert_eq!(h.replayed().ledger().digest(), h.core.ledger().digest());
}

#[test]
fn a_second_senders_early_reversal_does_not_replace_the_first() {
    let mut h = Harness::new();
    let reverse = |of| Request::Reverse(Reverse { authorization: of });
    let (a, b) = (RequestId(7_101), RequestId(7_102));
    // The acquirer's reversal first, another's second; and the other way round.
    for (first, second, of) in [(ACQUIRER, OTHER_ACQUIRER, a), (OTHER_ACQUIRER, ACQUIRER, b)] {
        for who in [first, second] {
            assert_eq!(
                h.one(who, reverse(of), NOW),
                (Code::Approved, Reason::AUTHORIZATION_REVERSED)
            );
        }
    }
    for of in [a, b] {
        assert_eq!(
            h.one_with(of, ACQUIRER, authorize(&card_number(1), 1, 5), NOW),
            (Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED),
            "{of:?}"
        );
    }
}

#[test]
fn a_flood_of_early_reversals_forgets_the_flooders_own() {
    const REMEMBERED: usize = 64;
    let mut h = forgetting(10_000, REMEMBERED);
    let reverse = |of| Request::Reverse(Reverse { authorization: of });
    let genuine: Vec<RequestId> = (0..8).map(|i| RequestId(9_000 + i)).collect();
    for &of in &genuine {
        assert_eq!(h.one(ACQUIRER, reverse(of), NOW).0, Code::Approved);
    }
    // Ten times the memory, of ids nobody will use, in frames as a client would send them.
    let flood: Vec<Item> = (0..10 * REMEMBERED as u128)
        .map(|i| Item {
            id: RequestId(50_000 + 2 * i),
            who: OTHER_ACQUIRER,
            request: reverse(RequestId(50_001 + 2 * i)),
        })
        .collect();
    for frame in flood.chunks(100) {
        assert!(
            h.run(frame.to_vec(), NOW)
                .iter()
                .all(|r| r.code == Code::Approved)
        );
    }
    for &of in &genuine {
        assert_eq!(
            h.one_with(of, ACQUIRER, authorize(&card_number(1), 1, 5), NOW),
            (Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED),
            "the acquirer's reversal of {of:?} was pushed out"
        );
    }
    assert_eq!(h.replayed().ledger().digest(), h.core.ledger().digest());
}

fn h_id() -> RequestId {
    RequestId(u128::MAX - 7)
}

#[derive(Clone, Debug)]
enum Action {
    Authorize {
        card: u128,
        merchant: u128,
        amount: u64,
    },
    Capture {
        nth: usize,
        amount: u64,
    },
    Reverse {
        nth: usize,
    },
    Sale {
        card: u128,
        merchant: u128,
        amount: u64,
    },
    Refund {
        nth: usize,
        amount: u64,
    },
    Repeat {
        nth: usize,
    },
    Tick {
        seconds: u64,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1..=CARDS, 1..=MERCHANTS, 1u64..4_000).prop_map(|(card, merchant, amount)| Action::Authorize { card, merchant, amount }),
        3 => (any::<usize>(), 0u64..4_000).prop_map(|(nth, amount)| Action::Capture { nth, amount }),
        2 => any::<usize>().prop_map(|nth| Action::Reverse { nth }),
        3 => (1..=CARDS, 1..=MERCHANTS, 1u64..3_000).prop_map(|(card, merchant, amount)| Action::Sale { card, merchant, amount }),
        2 => (any::<usize>(), 1u64..2_000).prop_map(|(nth, amount)| Action::Refund { nth, amount }),
        2 => any::<usize>().prop_map(|nth| Action::Repeat { nth }),
        1 => (1u64..90).prop_map(|seconds| Action::Tick { seconds }),
    ]
}

/// Turns generated actions into requests, remembering what was sent, so that captures,
/// reversals, refunds and repeats name earlier requests.
#[derive(Default)]
struct Script {
    auths: Vec<RequestId>,
    sold: Vec<RequestId>,
    /// Requests sent whose first answer is known (a repeat resends one of these).
    sent: Vec<Item>,
}

enum Next {
    Send(Request),
    Repeat(Item),
    Tick(u64),
    Skip,
}

impl Script {
    /// A batch's items from its actions, numbered by `id`; ticks move `now` on.
    fn items(
        &mut self,
        actions: Vec<Action>,
        mut id: impl FnMut() -> RequestId,
        now: &mut Timestamp,
    ) -> Vec<Item> {
        let mut items = Vec::new();
        for action in actions {
            let id = id();
            match self.next(id, action) {
                Next::Send(request) => items.push(Item {
                    id,
                    who: ACQUIRER,
                    request,
                }),
                Next::Repeat(item) => items.push(item),
                Next::Tick(seconds) => *now = Timestamp(now.0 + seconds * 1_000_000_000),
                Next::Skip => {}
            }
        }
        items
    }

    fn next(&mut self, id: RequestId, action: Action) -> Next {
        let pick = |ids: &[RequestId], nth: usize| ids[nth % ids.len()];
        Next::Send(match action {
            Action::Authorize {
                card,
                merchant,
                amount,
            } => {
                self.auths.push(id);
                authorize(&card_number(card), merchant, amount)
            }
            Action::Capture { nth, amount } if !self.auths.is_empty() => {
                Request::Capture(Capture {
                    authorization: pick(&self.auths, nth),
                    amount: Amount(amount),
                })
            }
            Action::Reverse { nth } if !self.auths.is_empty() => Request::Reverse(Reverse {
                authorization: pick(&self.auths, nth),
            }),
            Action::Sale {
                card,
                merchant,
                amount,
            } => {
                self.sold.push(id);
                Request::Sale {
                    number: card_number(card),
                    merchant: merchant_of(merchant),
                    amount: Amount(amount),
                    currency: Currency::CNY,
                }
            }
            Action::Refund { nth, amount } if !self.sold.is_empty() || !self.auths.is_empty() => {
                let originals: Vec<RequestId> =
                    self.sold.iter().chain(&self.auths).copied().collect();
                Request::Refund(Refund {
                    original: pick(&originals, nth),
                    amount: Amount(amount),
                    currency: Currency::CNY,
                })
            }
            Action::Repeat { nth } if !self.sent.is_empty() => {
                return Next::Repeat(self.sent[nth % self.sent.len()].clone());
            }
            Action::Tick { seconds } => return Next::Tick(seconds),
            _ => return Next::Skip,
        })
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_core.txt", 64))]

    /// Like Jepsen's bank test: what the approved responses say happened is what the ledger
    /// holds, money is conserved, and the journal replays to the same state.
    #[test]
    fn balances_follow_the_approved_responses(
        batches in prop::collection::vec(prop::collection::vec(action(), 1..8), 1..25),
        expiry_pass_max in prop::option::of(1u32..4),
    ) {
        let mut h = Harness::new();
        h.expiry_pass_max = expiry_pass_max;
        let mut now = NOW;
        // Per account: (debits_pending, debits_posted, credits_pending, credits_posted) deltas.
        let mut expected: HashMap<AccountId, [i128; 4]> = HashMap::new();
        let mut script = Script::default();
        let mut answers: HashMap<RequestId, switch::core::Response> = HashMap::new();
        let mut holds: HashMap<RequestId, (u128, u128, u64, Timestamp)> = HashMap::new();
        let mut captured: HashMap<RequestId, (u128, u128, u64)> = HashMap::new();
        for batch in batches {
            let items = script.items(batch, || h.id(), &mut now);
            // Holds due by `now` expire before the batch, as the server's tick would.
            h.expire(now);
            for (id, (c, m, amount, at)) in holds.clone() {
                if at <= now {
                    holds.remove(&id);
                    add(&mut expected, card_id(c), 0, -(amount as i128));
                    add(&mut expected, merchant(m), 2, -(amount as i128));
                }
            }
            let responses = h.run(items.clone(), now);
            prop_assert_eq!(responses.len(), items.len());
            for (item, response) in items.iter().zip(&responses) {
                prop_assert_eq!(response.id, item.id);
                if let Some(first) = answers.get(&item.id) {
                    // A repeat: the original answer, and no effect.
                    prop_assert_eq!(first, response, "repeat of {:?}", item);
                    continue;
                }
                answers.insert(item.id, response.clone());
                script.sent.push(item.clone());
                if response.code != Code::Approved {
                    continue;
                }
                match &item.request {
                    Request::Authorize { amount, expiry_seconds, merchant: m, number, .. } => {
                        let c = card_of(number);
                        let mi = m.0 - 200;
                        add(&mut expected, card_id(c), 0, amount.0 as i128);
                        add(&mut expected, *m, 2, amount.0 as i128);
                        holds.insert(item.id, (c, mi, amount.0, Timestamp(now.0 + u64::from(*expiry_seconds) * 1_000_000_000)));
                    }
                    Request::Capture(Capture { authorization, .. }) => {
                        let (c, mi, held, _) = holds.remove(authorization).expect("capture of a live hold");
                        let Body::Transfer { amount, .. } = response.body else { panic!("capture body") };
                        add(&mut expected, card_id(c), 0, -(held as i128));
                        add(&mut expected, merchant(mi), 2, -(held as i128));
                        add(&mut expected, card_id(c), 1, amount.0 as i128);
                        add(&mut expected, merchant(mi), 3, amount.0 as i128);
                        captured.insert(*authorization, (c, mi, amount.0));
                    }
                    Request::Reverse(Reverse { authorization }) => {
                        if let Some((c, mi, held, _)) = holds.remove(authorization) {
                            add(&mut expected, card_id(c), 0, -(held as i128));
                            add(&mut expected, merchant(mi), 2, -(held as i128));
                        }
                    }
                    Request::Sale { number, merchant: m, amount, .. } => {
                        let c = card_of(number);
                        add(&mut expected, card_id(c), 1, amount.0 as i128);
                        add(&mut expected, *m, 3, amount.0 as i128);
                        captured.insert(item.id, (c, m.0 - 200, amount.0));
                    }
                    Request::Refund(Refund { original, amount, .. }) => {
                        let (c, mi, _) = *captured.get(original).expect("refund of a capture or sale");
                        add(&mut expected, merchant(mi), 1, amount.0 as i128);
                        add(&mut expected, card_id(c), 3, amount.0 as i128);
                    }
                    _ => {}
                }
            }
        }
        for (account, delta) in &expected {
            let b = h.balance(*account);
            let base = if account.0 >= 200 { [0i128; 4] } else { [0, 0, 0, FUNDED as i128] };
            let got = [b.debits_pending as i128, b.debits_posted as i128, b.credits_pending as i128, b.credits_posted as i128];
            let want: Vec<i128> = base.iter().zip(delta).map(|(a, d)| a + d).collect();
            prop_assert_eq!(got.to_vec(), want, "account {:?}", account);
        }
        for (_, totals) in h.core.ledger().totals() {
            prop_assert!(totals.is_balanced());
        }
        let replayed = h.replayed();
        prop_assert_eq!(replayed.ledger().digest(), h.core.ledger().digest());
    }

    /// Reserving the memory ahead (`Core::preallocate`), at any point, changes no answer, no
    /// journal record and no balance: against a core that grows as it goes, with bounds
    /// small enough that both forget.
    #[test]
    fn preallocating_changes_nothing(batches in prop::collection::vec(prop::collection::vec(action(), 1..8), 1..25), at in 0usize..25) {
        let ledger_config = Config { shards: 4, transfers_remembered_max: 24, ..Config::default() };
        let core_config = CoreConfig { requests_remembered_max: 24, ..CoreConfig::default() };
        let mut grows = Harness::with_configs(ledger_config.clone(), core_config.clone());
        let mut reserved = Harness::with_configs(ledger_config, core_config);
        let mut now = NOW;
        let mut script = Script::default();
        for (n, batch) in batches.into_iter().enumerate() {
            if n == at {
                prop_assert!(reserved.core.preallocate() > 0);
            }
            let items = script.items(batch, || {
                let id = grows.id();
                assert_eq!(reserved.id(), id, "both harnesses number requests alike");
                id
            }, &mut now);
            grows.expire(now);
            reserved.expire(now);
            let want = grows.run(items.clone(), now);
            prop_assert_eq!(reserved.run(items.clone(), now), want);
            prop_assert_eq!(reserved.core.ledger().digest(), grows.core.ledger().digest());
            script.sent.extend(items);
        }
        prop_assert_eq!(&reserved.journal, &grows.journal);
        let replayed = reserved.replayed();
        prop_assert_eq!(replayed.ledger().digest(), grows.core.ledger().digest());
    }

    /// A transfer status is the truth or "not found", never a stale half-truth: whatever the
    /// switch and the ledger have each forgotten (they forget on their own bounds, the ledger
    /// shard by shard), every payment's status says what the approved answers made of it.
    #[test]
    fn a_status_is_true_or_not_found_whatever_was_forgotten(
        batches in prop::collection::vec(prop::collection::vec(action(), 1..8), 1..25),
        ledger_remembers in prop_oneof![Just(8u64), Just(24), Just(10_000)],
        core_remembers in prop_oneof![Just(4usize), Just(12), Just(10_000)],
    ) {
        let mut h = forgetting(ledger_remembers, core_remembers);
        let mut now = NOW;
        let mut script = Script::default();
        let mut answered: HashMap<RequestId, Code> = HashMap::new();
        // No repeats: past the bounds a repeat of a forgotten payment is a new payment (by
        // design, ARCHITECTURE.md), which this model cannot tell from a remembered answer.
        let batches = batches.into_iter().map(|b| {
            b.into_iter().filter(|a| !matches!(a, Action::Repeat { .. })).collect::<Vec<_>>()
        });
        // What each approved payment is, as its answers say: (state, amount, captured,
        // refunded), and the expiry of a live hold.
        let mut payments: HashMap<RequestId, (PaymentState, u64, u64, u64)> = HashMap::new();
        let mut expiries: HashMap<RequestId, Timestamp> = HashMap::new();
        for batch in batches {
            let items = script.items(batch, || h.id(), &mut now);
            h.expire(now);
            expiries.retain(|id, at| {
                if *at <= now {
                    payments.get_mut(id).expect("a hold").0 = PaymentState::Expired;
                }
                *at > now
            });
            let responses = h.run(items.clone(), now);
            for (item, response) in items.iter().zip(&responses) {
                if answered.insert(item.id, response.code).is_some() || response.code != Code::Approved {
                    continue;
                }
                script.sent.push(item.clone());
                match &item.request {
                    Request::Authorize { amount, expiry_seconds, .. } => {
                        payments.insert(item.id, (PaymentState::Held, amount.0, 0, 0));
                        expiries.insert(item.id, Timestamp(now.0 + u64::from(*expiry_seconds) * 1_000_000_000));
                    }
                    Request::Capture(Capture { authorization, .. }) => {
                        let Body::Transfer { amount, .. } = response.body else { panic!("capture body") };
                        let p = payments.get_mut(authorization).expect("capture of a hold");
                        (p.0, p.2) = (PaymentState::Captured, amount.0);
                        expiries.remove(authorization);
                    }
                    Request::Reverse(Reverse { authorization }) if expiries.remove(authorization).is_some() => {
                        payments.get_mut(authorization).expect("a hold").0 = PaymentState::Reversed;
                    }
                    Request::Sale { amount, .. } => {
                        payments.insert(item.id, (PaymentState::Sold, amount.0, 0, 0));
                    }
                    Request::Refund(Refund { original, amount, .. }) => {
                        payments.get_mut(original).expect("refund of a payment").3 += amount.0;
                    }
                    _ => {}
                }
            }
        }
        let mut found = 0;
        for (&of, &(state, amount, captured, refunded)) in &payments {
            let id = h.id();
            let status = h.run(vec![Item { id, who: ADMIN, request: Request::TransferStatus { of } }], now);
            prop_assert_eq!(status[0].code, Code::Approved);
            match &status[0].body {
                Body::None => {}
                Body::Status(s) => {
                    found += 1;
                    prop_assert_eq!(
                        (s.state, s.amount.0, s.captured.0, s.refunded.0),
                        (state, amount, captured, refunded),
                        "status of {:?}", of
                    );
                }
                other => prop_assert!(false, "status of {:?}: {:?}", of, other),
            }
        }
        // Nothing forgotten while both remember everything.
        if core_remembers >= 10_000 && ledger_remembers >= 10_000 {
            prop_assert_eq!(found, payments.len());
        }
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_core_forgetting.txt", 64))]

    /// Whatever the switch and the ledger have each forgotten, and however often requests are
    /// repeated, clearing counts exactly what the ledger moved (a repeat of a payment the
    /// ledger still holds is not cleared twice), and while the ledger holds a payment, an
    /// approved reversal never names a captured authorization or a sale.
    #[test]
    fn clearing_counts_what_the_ledger_moved_whatever_was_forgotten(
        batches in prop::collection::vec(prop::collection::vec(action(), 1..8), 1..25),
        ledger_remembers in prop_oneof![Just(8u64), Just(24), Just(10_000)],
        core_remembers in prop_oneof![Just(4usize), Just(12), Just(10_000)],
    ) {
        let mut h = forgetting(ledger_remembers, core_remembers);
        let mut now = NOW;
        let mut script = Script::default();
        let mut paid: std::collections::HashSet<RequestId> = std::collections::HashSet::new();
        for batch in batches {
            let items = script.items(batch, || h.id(), &mut now);
            h.expire(now);
            let responses = h.run(items.clone(), now);
            for (item, response) in items.iter().zip(&responses) {
                script.sent.push(item.clone());
                if response.code != Code::Approved {
                    continue;
                }
                match &item.request {
                    Request::Capture(Capture { authorization, .. }) => {
                        paid.insert(*authorization);
                    }
                    Request::Sale { .. } => {
                        paid.insert(item.id);
                    }
                    // Once both have forgotten a payment, a reversal of it is an early one.
                    Request::Reverse(Reverse { authorization }) if ledger_remembers >= 10_000 => {
                        prop_assert!(!paid.contains(authorization), "reversed a payment: {:?}", item);
                    }
                    _ => {}
                }
            }
        }
        let (purchases, refunds) = cleared_totals(&h);
        let merchants = (1..=MERCHANTS).map(|m| h.balance(merchant(m)));
        let (credited, debited) = merchants.fold((0u128, 0u128), |(c, d), b| {
            (c + b.credits_posted, d + b.debits_posted)
        });
        prop_assert_eq!((purchases, refunds), (credited, debited));
        let replayed = h.replayed();
        prop_assert_eq!(replayed.ledger().digest(), h.core.ledger().digest());
    }
}

fn merchant_of(i: u128) -> AccountId {
    merchant(i)
}

fn card_id(i: u128) -> AccountId {
    card(i)
}

fn card_of(number: &str) -> u128 {
    number[14..].parse().expect("test card number")
}

fn add(
    expected: &mut HashMap<AccountId, [i128; 4]>,
    account: AccountId,
    column: usize,
    amount: i128,
) {
    expected.entry(account).or_default()[column] += amount;
}

/// The rows of the table under the heading that starts with `heading` in docs/PROTOCOL.md:
/// each row's cells, the header and separator left out.
fn protocol_table(heading: &str) -> Vec<Vec<String>> {
    const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");
    PROTOCOL_MD
        .lines()
        .skip_while(|line| !line.starts_with(heading))
        .skip(1)
        .take_while(|line| !line.starts_with('#'))
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

const ISSUER_ID: Identity = Identity {
    participant: ISSUER,
    admin: false,
};

/// The columns of PROTOCOL.md's table of who may do what (10.3), as senders.
const SIDES: [(&str, Identity); 4] = [
    ("admin", ADMIN),
    ("acquirer", ACQUIRER),
    ("issuer", ISSUER_ID),
    ("other", OTHER_ACQUIRER),
];

/// In a harness, sets up what the operation of `row` (a row of the table in 10.3) needs, done
/// by those entitled to, and returns the operation.
fn authority_scenario(h: &mut Harness, row: &str) -> Request {
    let card1 = card_number(1);
    // A payment made by its acquirer, for the operations that name one.
    let paid = |h: &mut Harness, request: Request, who: Identity| {
        let id = h.id();
        let (code, reason) = h.one_with(id, who, request, NOW);
        (id, code, reason)
    };
    let sale = |amount| Request::Sale {
        number: card_number(1),
        merchant: merchant(1),
        amount: Amount(amount),
        currency: Currency::CNY,
    };
    let approved = |(id, code, reason): (RequestId, Code, Reason)| {
        assert_eq!(
            (code, reason),
            (Code::Approved, Reason::NONE),
            "{row}: setup"
        );
        id
    };
    let status = |of| Request::TransferStatus { of };
    match row {
        "CreateParticipant" => Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(9),
            name: "nine".into(),
            roles: 1,
        }),
        "CreateAccount" => Request::CreateAccount(CreateAccount {
            account: AccountId(900),
            owner: ISSUER,
            currency: Currency::CNY,
            flags: AccountFlags::empty(),
            number: None,
        }),
        "Fund" => Request::Fund(Fund {
            account: card(1),
            amount: Amount(5),
            currency: Currency::CNY,
        }),
        "SetLimits" => Request::SetLimits(switch::core::SetLimits {
            participant: ISSUER,
            currency: Currency::CNY,
            net_debit_cap: Amount(1_000_000),
        }),
        "CloseWindow" => Request::CloseWindow { window: 0 },
        "ListWindows" => Request::ListWindows,
        "WindowReport" => Request::WindowReport { window: 1 },
        "Authorize" => authorize(&card1, 1, 10),
        "Sale" => sale(10),
        "Capture" => {
            let auth = approved(paid(h, authorize(&card1, 1, 10), ACQUIRER));
            Request::Capture(Capture {
                authorization: auth,
                amount: Amount(6),
            })
        }
        "Reverse" => {
            let auth = approved(paid(h, authorize(&card1, 1, 10), ACQUIRER));
            Request::Reverse(Reverse {
                authorization: auth,
            })
        }
        "Refund" => {
            let sold = approved(paid(h, sale(10), ACQUIRER));
            Request::Refund(Refund {
                original: sold,
                amount: Amount(4),
                currency: Currency::CNY,
            })
        }
        "BalanceInquiry of a merchant account" => Request::BalanceInquiry {
            target: Target::Account(merchant(1)),
        },
        "BalanceInquiry of a card account by id" => Request::BalanceInquiry {
            target: Target::Account(card(1)),
        },
        "BalanceInquiry of a card account by number" => Request::BalanceInquiry {
            target: Target::Number(card1),
        },
        "TransferStatus of an Authorize" => {
            status(approved(paid(h, authorize(&card1, 1, 10), ACQUIRER)))
        }
        "TransferStatus of a Sale" => status(approved(paid(h, sale(10), ACQUIRER))),
        "TransferStatus of a Capture" | "TransferStatus of a Reverse" => {
            let auth = approved(paid(h, authorize(&card1, 1, 10), ACQUIRER));
            let then = if row.ends_with("Capture") {
                Request::Capture(Capture {
                    authorization: auth,
                    amount: Amount(6),
                })
            } else {
                Request::Reverse(Reverse {
                    authorization: auth,
                })
            };
            status(approved(paid(h, then, ACQUIRER)))
        }
        "TransferStatus of a Refund" => {
            let sold = approved(paid(h, sale(10), ACQUIRER));
            let refund = Request::Refund(Refund {
                original: sold,
                amount: Amount(4),
                currency: Currency::CNY,
            });
            status(approved(paid(h, refund, ACQUIRER)))
        }
        "TransferStatus of a Fund" => {
            let fund = Request::Fund(Fund {
                account: card(2),
                amount: Amount(5),
                currency: Currency::CNY,
            });
            status(approved(paid(h, fund, ADMIN)))
        }
        "TransferStatus of a declined Authorize" => {
            let (id, code, _) = paid(h, authorize(&card1, 1, FUNDED + 1), ACQUIRER);
            assert_eq!(code, Code::InsufficientFunds, "{row}: setup");
            status(id)
        }
        "Echo" => Request::Echo {
            payload: b"ping".to_vec(),
        },
        other => panic!("PROTOCOL.md 10.3 lists {other:?}, which this test does not know"),
    }
}

/// Every operation from every side (the admin identity, the payment's acquirer, the card's
/// issuer, another participant), each on a fresh switch, answered as the table in PROTOCOL.md
/// 10.3 says, row by row.
#[test]
fn every_operation_from_every_side_is_answered_as_the_protocol_table_says() {
    let rows = protocol_table("### 10.3");
    let header_ok = rows.iter().all(|row| row.len() == 1 + SIDES.len());
    assert!(header_ok && rows.len() > 20, "the table of 10.3: {rows:?}");
    // Served by the connection, not the core: `tests/server.rs` sends them.
    let served_outside = ["ReloadRoutes", "ReportFile", "ChangeMembership"];
    let mut checked = 0;
    for row in &rows {
        let name = row[0].as_str();
        if served_outside.contains(&name) {
            continue;
        }
        for ((side, who), want) in SIDES.iter().zip(&row[1..]) {
            let mut h = Harness::new();
            let request = authority_scenario(&mut h, name);
            let id = h.id();
            let response = h.run(
                vec![Item {
                    id,
                    who: *who,
                    request,
                }],
                NOW,
            );
            let r = &response[0];
            let context = format!("{name} from the {side}: {r:?}");
            match want.as_str() {
                "yes" => {
                    assert_eq!(
                        (r.code, r.reason),
                        (Code::Approved, Reason::NONE),
                        "{context}"
                    );
                    if name.starts_with("TransferStatus") {
                        assert!(matches!(r.body, Body::Status(_)), "{context}");
                    }
                }
                "not found" => {
                    assert!(name.starts_with("TransferStatus"), "{context}");
                    assert_eq!(
                        (r.code, &r.body),
                        (Code::Approved, &Body::None),
                        "{context}"
                    );
                }
                refused => {
                    let (code, reason) = refused
                        .split_once('/')
                        .unwrap_or_else(|| panic!("cell {refused:?} of {name}"));
                    assert_eq!(r.code.as_u8().to_string(), code, "{context}");
                    assert_eq!(r.reason.0.to_string(), reason, "{context}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, (rows.len() - served_outside.len()) * SIDES.len());
}

/// A request's status by its own id: what each of the payment's operations made, as its
/// sender reads it (state and amounts), for every kind of operation.
#[test]
fn every_operations_own_id_reads_as_what_it_made() {
    let mut h = Harness::new();
    let read = |h: &mut Harness, who, of| {
        let id = h.id();
        match h
            .run(
                vec![Item {
                    id,
                    who,
                    request: Request::TransferStatus { of },
                }],
                NOW,
            )
            .remove(0)
            .body
        {
            Body::Status(s) => Some((s.state, s.amount.0, s.captured.0, s.refunded.0)),
            Body::None => None,
            other => panic!("{other:?}"),
        }
    };
    let send = |h: &mut Harness, who, request| {
        let id = h.id();
        assert_eq!(h.one_with(id, who, request, NOW).0, Code::Approved);
        id
    };
    let auth = send(&mut h, ACQUIRER, authorize(&card_number(1), 1, 100));
    let capture = send(
        &mut h,
        ACQUIRER,
        Request::Capture(Capture {
            authorization: auth,
            amount: Amount(60),
        }),
    );
    let refund = send(
        &mut h,
        ACQUIRER,
        Request::Refund(Refund {
            original: auth,
            amount: Amount(25),
            currency: Currency::CNY,
        }),
    );
    let held = send(&mut h, ACQUIRER, authorize(&card_number(2), 1, 70));
    let reverse = send(
        &mut h,
        ACQUIRER,
        Request::Reverse(Reverse {
            authorization: held,
        }),
    );
    let fund = send(
        &mut h,
        ADMIN,
        Request::Fund(Fund {
            account: card(3),
            amount: Amount(40),
            currency: Currency::CNY,
        }),
    );
    // The issue's case: the acquirer reads its capture, posted 60.
    for (of, who, want) in [
        (auth, ACQUIRER, (PaymentState::Captured, 100, 60, 25)),
        (capture, ACQUIRER, (PaymentState::Sold, 60, 0, 0)),
        (refund, ACQUIRER, (PaymentState::Sold, 25, 0, 0)),
        (held, ACQUIRER, (PaymentState::Reversed, 70, 0, 0)),
        (reverse, ACQUIRER, (PaymentState::Reversed, 70, 0, 0)),
        (fund, ADMIN, (PaymentState::Sold, 40, 0, 0)),
    ] {
        assert_eq!(read(&mut h, who, of), Some(want), "{of:?}");
        assert_eq!(read(&mut h, ADMIN, of), Some(want), "{of:?} for the admin");
        assert_eq!(read(&mut h, ISSUER_ID, of), None, "{of:?} for the issuer");
    }
}

/// A read-only operation may carry the request id of one that changed state: it is answered
/// as usual, and remembers nothing, so the earlier request's repeat still hears its answer and
/// an id first used by a read-only operation stays new.
#[test]
fn a_read_only_operation_may_reuse_a_request_id() {
    let mut h = Harness::new();
    let auth = h.id();
    let request = authorize(&card_number(1), 1, 30);
    assert_eq!(
        h.one_with(auth, ACQUIRER, request.clone(), NOW).0,
        Code::Approved
    );
    let status = h.run(
        vec![Item {
            id: auth,
            who: ACQUIRER,
            request: Request::TransferStatus { of: auth },
        }],
        NOW,
    );
    assert!(
        matches!(&status[0].body, Body::Status(s) if s.state == PaymentState::Held),
        "{status:?}"
    );
    assert_eq!(
        h.one_with(auth, ACQUIRER, request, NOW),
        (Code::Approved, Reason::NONE)
    );
    assert_eq!(h.balance(card(1)).debits_pending, 30, "held once");
    let fresh = h.id();
    let inquiry = Request::BalanceInquiry {
        target: Target::Account(merchant(1)),
    };
    assert_eq!(h.one_with(fresh, ACQUIRER, inquiry, NOW).0, Code::Approved);
    let sale = Request::Sale {
        number: card_number(1),
        merchant: merchant(1),
        amount: Amount(7),
        currency: Currency::CNY,
    };
    assert_eq!(h.one_with(fresh, ACQUIRER, sale, NOW).0, Code::Approved);
    assert_eq!(h.balance(card(1)).debits_posted, 7);
}

/// An Authorize or Sale needs a sender with the acquirer role, and a number routes only to a
/// participant with the issuer role.
#[test]
fn payments_need_the_acquirer_and_issuer_roles() {
    let mut h = Harness::new();
    // Participant 5 owns a merchant account but is only an issuer.
    let issuer_only = Identity {
        participant: ParticipantId(5),
        admin: false,
    };
    for request in [
        Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(5),
            name: "issuer only".into(),
            roles: 1,
        }),
        Request::CreateAccount(CreateAccount {
            account: AccountId(500),
            owner: ParticipantId(5),
            currency: Currency::CNY,
            flags: AccountFlags::empty(),
            number: None,
        }),
    ] {
        assert_eq!(h.one(ADMIN, request, NOW).0, Code::Approved);
    }
    let pay = |merchant: AccountId, number: &str| Request::Sale {
        number: number.into(),
        merchant,
        amount: Amount(3),
        currency: Currency::CNY,
    };
    assert_eq!(
        h.one(issuer_only, pay(AccountId(500), &card_number(1)), NOW),
        (Code::NotPermitted, Reason::ROLE_MISSING)
    );
    // A route to participant 6, an acquirer only, whose card exists: no issuer to route to.
    let routes = RouteTable::new(vec![
        Route {
            prefix: "62".into(),
            issuer: ISSUER,
            pooled_account: None,
        },
        Route {
            prefix: "63".into(),
            issuer: ParticipantId(6),
            pooled_account: None,
        },
    ])
    .expect("valid routes");
    h.core.set_routes(Arc::new(routes));
    for request in [
        Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(6),
            name: "acquirer only".into(),
            roles: 2,
        }),
        Request::CreateAccount(CreateAccount {
            account: AccountId(600),
            owner: ParticipantId(6),
            currency: Currency::CNY,
            flags: AccountFlags::empty(),
            number: Some("6300000000000001".into()),
        }),
        Request::Fund(Fund {
            account: AccountId(600),
            amount: Amount(50),
            currency: Currency::CNY,
        }),
    ] {
        assert_eq!(h.one(ADMIN, request, NOW).0, Code::Approved);
    }
    assert_eq!(
        h.one(ACQUIRER, pay(merchant(1), "6300000000000001"), NOW),
        (Code::CannotRoute, Reason::ROLE_MISSING)
    );
    assert_eq!(h.balance(AccountId(600)).debits_posted, 0);
    assert_eq!(h.balance(AccountId(500)).credits_posted, 0);
}

/// The ids PROTOCOL.md (4.3) gives for the switch's own accounts are the ones it makes, and a
/// Fund's money comes from the first of them.
#[test]
fn the_switch_s_own_accounts_have_the_documented_ids() {
    const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");
    let funding = switch::core::funding_account(ParticipantId(7), Currency::CNY);
    let settlement = switch::clearing::settlement_account(ParticipantId(7), Currency::CNY);
    let hex = |id: AccountId| {
        let digits = format!("{:032x}", id.0);
        let groups: Vec<&str> = (0..4).map(|i| &digits[8 * i..8 * i + 8]).collect();
        format!("0x{}", groups.join("_"))
    };
    for (what, id) in [("funding", funding), ("settlement", settlement)] {
        let documented = format!("{what} `{}`", hex(id));
        assert!(PROTOCOL_MD.contains(&documented), "{documented} in 4.3");
    }
    let mut h = Harness::new();
    let fund = Request::Fund(Fund {
        account: card(1),
        amount: Amount(5),
        currency: Currency::CNY,
    });
    let before = h.balance(switch::core::funding_account(ISSUER, Currency::CNY));
    assert_eq!(h.one(ADMIN, fund, NOW).0, Code::Approved);
    let after = h.balance(switch::core::funding_account(ISSUER, Currency::CNY));
    assert_eq!(after.debits_posted - before.debits_posted, 5);
}

/// Between a hold's deadline and the expiry pass that releases it (PROTOCOL.md 5.4): a
/// Capture is refused as expired, while TransferStatus still says pending and the money is
/// still held; from the pass on, the status says expired and the money is back.
#[test]
fn a_hold_past_its_deadline_is_expired_for_a_capture_before_the_pass_releases_it() {
    let mut h = Harness::new();
    let auth = h.id();
    assert_eq!(
        h.one_with(auth, ACQUIRER, authorize(&card_number(1), 1, 40), NOW)
            .0,
        Code::Approved
    );
    let due = Timestamp(NOW.0 + 60_000_000_000);
    let state = |h: &mut Harness| {
        let id = h.id();
        match h
            .run(
                vec![Item {
                    id,
                    who: ACQUIRER,
                    request: Request::TransferStatus { of: auth },
                }],
                due,
            )
            .remove(0)
            .body
        {
            Body::Status(s) => s.state,
            other => panic!("{other:?}"),
        }
    };
    let capture = Request::Capture(Capture {
        authorization: auth,
        amount: Amount(40),
    });
    assert_eq!(
        h.one(ACQUIRER, capture.clone(), due),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_EXPIRED)
    );
    assert_eq!(state(&mut h), PaymentState::Held);
    assert_eq!(h.balance(card(1)).debits_pending, 40);
    h.expire(due);
    assert_eq!(state(&mut h), PaymentState::Expired);
    assert_eq!(h.balance(card(1)).debits_pending, 0);
    assert_eq!(
        h.one(ACQUIRER, capture, due),
        (Code::InvalidTransaction, Reason::AUTHORIZATION_EXPIRED)
    );
}
