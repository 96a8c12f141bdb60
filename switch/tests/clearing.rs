//! Clearing: a model-based property test of windows, fees, positions, settlement and net
//! debit caps over random traffic among four participants in currencies with 0, 2 and 3
//! decimals; and crashes of the simulated disk at every step of a close.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use ledger::clearing::{FeeRate, FeeSchedule, Kind, PairKey, PairTotals, fee};
use ledger::storage::{SimStorage, Tear};
use ledger::wal::{self, RecoverOptions, Wal, WalOptions};
use ledger::{AccountFlags, AccountId, Amount, Config, Currency, Ledger, ParticipantId, Timestamp};
use proptest::prelude::*;
use rust_decimal::Decimal;
use switch::clearing::{WindowDetails, settlement_account};
use switch::codes::{Code, Reason};
use switch::core::{
    Body, Capture, Core, CoreConfig, CreateAccount, CreateParticipant, Fund, Item, Refund, Request,
    RequestId, Reverse, SetLimits,
};
use switch::journal::SwitchRecord;
use switch::routing::{Route, RouteTable};
use switch::tls::Identity;

const ADMIN: Identity = Identity {
    participant: ParticipantId(1),
    admin: true,
};
const PARTICIPANTS: [u64; 4] = [2, 3, 4, 5];
const CURRENCIES: [Currency; 3] = [Currency::JPY, Currency::CNY, Currency::KWD];
const FUNDED: u64 = 10_000_000;
const EXPIRY_SECONDS: u32 = 60;
const SECOND: u64 = 1_000_000_000;

fn acting(p: u64) -> Identity {
    Identity {
        participant: ParticipantId(p),
        admin: false,
    }
}

/// Participant `p`'s card in currency number `c`.
fn card(p: u64, c: usize) -> AccountId {
    AccountId(u128::from(p) * 1000 + c as u128)
}
fn card_number(p: u64, c: usize) -> String {
    format!("6{p}000000000000{c:02}")
}
fn merchant(p: u64, c: usize) -> AccountId {
    AccountId(u128::from(p) * 1000 + 500 + c as u128)
}

fn rate(percent: &str, fixed: &str) -> FeeRate {
    FeeRate {
        percent: Decimal::from_str(percent).expect("decimal"),
        fixed: Decimal::from_str(fixed).expect("decimal"),
    }
}

fn fees() -> Arc<FeeSchedule> {
    let mut by_issuer = BTreeMap::new();
    by_issuer.insert(ParticipantId(3), (rate("0.55", "0"), rate("0", "0.05")));
    Arc::new(FeeSchedule {
        purchase: rate("1.5", "0.10"),
        refund: rate("0.5", "0"),
        by_issuer,
    })
}

fn core_config() -> CoreConfig {
    CoreConfig {
        default_expiry_seconds: EXPIRY_SECONDS,
        fees: fees(),
        ..CoreConfig::default()
    }
}

fn new_core() -> Core {
    let ledger = Arc::new(Ledger::new(Config::default()).expect("valid"));
    let routes = RouteTable::new(
        PARTICIPANTS
            .iter()
            .map(|&p| Route {
                prefix: format!("6{p}"),
                issuer: ParticipantId(p),
                pooled_account: None,
            })
            .collect(),
    )
    .expect("valid routes");
    Core::new(ledger, core_config(), Arc::new(routes))
}

fn setup_requests() -> Vec<Request> {
    let mut setup = Vec::new();
    for p in PARTICIPANTS {
        setup.push(Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(p),
            name: format!("bank {p}"),
            roles: 3,
        }));
    }
    for p in PARTICIPANTS {
        for (c, &currency) in CURRENCIES.iter().enumerate() {
            setup.push(Request::CreateAccount(CreateAccount {
                account: card(p, c),
                owner: ParticipantId(p),
                currency,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: Some(card_number(p, c)),
            }));
            setup.push(Request::Fund(Fund {
                account: card(p, c),
                amount: Amount(FUNDED),
                currency,
            }));
            setup.push(Request::CreateAccount(CreateAccount {
                account: merchant(p, c),
                owner: ParticipantId(p),
                currency,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: None,
            }));
        }
    }
    setup
}

/// A core and the journal of what it executed.
struct Harness {
    core: Core,
    journal: Vec<Vec<u8>>,
    next_id: u128,
}

impl Harness {
    fn new() -> Self {
        let mut h = Harness {
            core: new_core(),
            journal: Vec::new(),
            next_id: 1,
        };
        for r in setup_requests() {
            let response = h.one(ADMIN, r.clone(), Timestamp(SECOND));
            assert_eq!(response.code, Code::Approved, "{r:?}");
        }
        h
    }

    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn one(&mut self, who: Identity, request: Request, now: Timestamp) -> switch::core::Response {
        let id = self.id();
        self.one_with(id, who, request, now)
    }

    fn one_with(
        &mut self,
        id: RequestId,
        who: Identity,
        request: Request,
        now: Timestamp,
    ) -> switch::core::Response {
        let executed = self.core.execute(vec![Item { id, who, request }], now);
        if !executed.logged.is_empty() {
            let mut bytes = Vec::new();
            SwitchRecord::encode_batch(now, &executed.logged, &mut bytes);
            self.journal.push(bytes);
        }
        executed.responses.into_iter().next().expect("one answer")
    }

    fn expire(&mut self, now: Timestamp) {
        if self.core.expire(now, None) {
            let mut bytes = Vec::new();
            SwitchRecord::encode_expire(now, None, &mut bytes);
            self.journal.push(bytes);
        }
    }

    fn replayed(&self) -> Core {
        let mut core = new_core();
        for bytes in &self.journal {
            match SwitchRecord::decode(bytes).expect("journal decodes") {
                SwitchRecord::Batch { now, commands } => core.replay(&commands, now),
                SwitchRecord::Expire { now, at_most } => {
                    core.expire(now, at_most);
                }
            }
        }
        core
    }
}

#[derive(Clone, Debug)]
enum Action {
    Authorize {
        acquirer: usize,
        issuer: usize,
        currency: usize,
        amount: u64,
    },
    Capture {
        nth: usize,
        percent: u64,
    },
    Reverse {
        nth: usize,
    },
    Sale {
        acquirer: usize,
        issuer: usize,
        currency: usize,
        amount: u64,
    },
    Refund {
        nth: usize,
        percent: u64,
    },
    Close,
    /// Closing a window that is already closed, under a new request id.
    CloseAgain,
    Tick {
        seconds: u64,
    },
    SetCap {
        issuer: usize,
        currency: usize,
        cap: u64,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let who = 0..PARTICIPANTS.len();
    let currency = 0..CURRENCIES.len();
    prop_oneof![
        5 => (who.clone(), who.clone(), currency.clone(), 1u64..60_000).prop_map(|(acquirer, issuer, currency, amount)| Action::Authorize { acquirer, issuer, currency, amount }),
        4 => (any::<usize>(), 1u64..=100).prop_map(|(nth, percent)| Action::Capture { nth, percent }),
        1 => any::<usize>().prop_map(|nth| Action::Reverse { nth }),
        4 => (who.clone(), who.clone(), currency.clone(), 1u64..60_000).prop_map(|(acquirer, issuer, currency, amount)| Action::Sale { acquirer, issuer, currency, amount }),
        2 => (any::<usize>(), 1u64..=100).prop_map(|(nth, percent)| Action::Refund { nth, percent }),
        1 => Just(Action::Close),
        1 => Just(Action::CloseAgain),
        1 => (1u64..90).prop_map(|seconds| Action::Tick { seconds }),
        1 => (who, currency, prop_oneof![Just(0u64), 1u64..200_000]).prop_map(|(issuer, currency, cap)| Action::SetCap { issuer, currency, cap }),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Hold {
    acquirer: u64,
    issuer: u64,
    currency: Currency,
    amount: u64,
    expires_at: Timestamp,
}

#[derive(Clone, Copy, Debug)]
struct Paid {
    acquirer: u64,
    issuer: u64,
    currency: Currency,
    captured: u64,
    refunded: u64,
}

/// What the approved responses say the open window holds, and what each issuer owes.
#[derive(Default)]
struct Model {
    window: u64,
    pairs: BTreeMap<PairKey, PairTotals>,
    holds: BTreeMap<RequestId, Hold>,
    paid: Vec<(RequestId, Paid)>,
    caps: HashMap<(u64, Currency), u64>,
    /// Σ positions of every closed window.
    settled: BTreeMap<(ParticipantId, Currency), i128>,
    closed: u64,
}

impl Model {
    fn key(acquirer: u64, issuer: u64, currency: Currency) -> PairKey {
        PairKey {
            currency,
            acquirer: ParticipantId(acquirer),
            issuer: ParticipantId(issuer),
        }
    }

    fn clear(&mut self, kind: Kind, acquirer: u64, issuer: u64, currency: Currency, amount: u64) {
        self.pairs
            .entry(Self::key(acquirer, issuer, currency))
            .or_default()
            .add(kind, amount);
    }

    /// What `issuer` owes in `currency` for its cap: the open window's net plus live holds.
    fn exposure(&self, issuer: u64, currency: Currency) -> i128 {
        let mut total = 0i128;
        for (k, t) in &self.pairs {
            if k.currency != currency || k.acquirer == k.issuer {
                continue;
            }
            let net = t.purchases as i128 - t.refunds as i128;
            if k.issuer.0 == issuer {
                total += net;
            }
            if k.acquirer.0 == issuer {
                total -= net;
            }
        }
        total
            + self
                .holds
                .values()
                .filter(|h| h.issuer == issuer && h.currency == currency)
                .map(|h| i128::from(h.amount))
                .sum::<i128>()
    }

    /// Checks a new authorization's or sale's answer against the cap.
    fn check_cap(
        &self,
        issuer: u64,
        currency: Currency,
        amount: u64,
        code: Code,
    ) -> Result<(), TestCaseError> {
        let cap = self.caps.get(&(issuer, currency)).copied().unwrap_or(0);
        let after = self.exposure(issuer, currency) + i128::from(amount);
        if code == Code::ExceedsLimit {
            prop_assert!(
                cap != 0 && after > i128::from(cap),
                "61 with {after} ≤ cap {cap}"
            );
        }
        if code == Code::Approved && cap != 0 {
            prop_assert!(after <= i128::from(cap), "approved {after} over cap {cap}");
        }
        Ok(())
    }

    /// Checks a closed window's report against what the model cleared in it.
    fn check_close(&mut self, d: &WindowDetails) -> Result<(), TestCaseError> {
        prop_assert_eq!(d.window.id, self.window);
        let reported: BTreeMap<PairKey, PairTotals> = d
            .settlement
            .pairs
            .iter()
            .map(|l| (l.key, l.totals))
            .collect();
        // Per pair, exactly the captures, sales and refunds approved in this window.
        prop_assert_eq!(&reported, &self.pairs);
        let count: u64 = self.pairs.values().map(PairTotals::count).sum();
        prop_assert_eq!(d.window.transfer_count, count);
        prop_assert!(d.window.reconciled, "{:?}", d.reconciliation);
        let schedule = fees();
        let mut positions: BTreeMap<(ParticipantId, Currency), i128> = BTreeMap::new();
        for line in &d.settlement.pairs {
            let k = line.key;
            let purchase_fee = fee(
                line.totals.purchases,
                line.totals.purchase_count,
                schedule.rate(k.issuer, Kind::Purchase),
                k.currency,
            )
            .expect("fits");
            let refund_fee = fee(
                line.totals.refunds,
                line.totals.refund_count,
                schedule.rate(k.issuer, Kind::Refund),
                k.currency,
            )
            .expect("fits");
            prop_assert_eq!(
                (line.purchase_fees, line.refund_fees),
                (purchase_fee, refund_fee)
            );
            let net = line.totals.purchases as i128
                - line.totals.refunds as i128
                - purchase_fee as i128
                - refund_fee as i128;
            prop_assert_eq!(line.net, net);
            if k.acquirer != k.issuer {
                *positions.entry((k.acquirer, k.currency)).or_default() += net;
                *positions.entry((k.issuer, k.currency)).or_default() -= net;
            }
        }
        positions.retain(|_, v| *v != 0);
        let reported: BTreeMap<(ParticipantId, Currency), i128> = d
            .window
            .positions
            .iter()
            .map(|&(p, c, n)| ((p, c), n))
            .collect();
        prop_assert_eq!(&reported, &positions);
        for currency in CURRENCIES {
            let sum: i128 = positions
                .iter()
                .filter(|((_, c), _)| *c == currency)
                .map(|(_, n)| n)
                .sum();
            prop_assert_eq!(sum, 0, "positions in {} sum to {}", currency, sum);
        }
        for (k, v) in positions {
            *self.settled.entry(k).or_default() += v;
        }
        self.pairs.clear();
        self.window += 1;
        self.closed += 1;
        Ok(())
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_clearing.txt", 48))]

    /// Every approved capture, sale and refund is cleared in exactly the window it was
    /// approved in; fees follow the schedule; positions sum to zero and the settlement
    /// transfers move exactly them; caps hold; the journal replays to the same state.
    #[test]
    fn windows_clear_what_was_approved(actions in prop::collection::vec(action(), 1..80)) {
        let mut h = Harness::new();
        let mut now = Timestamp(2 * SECOND);
        let mut m = Model { window: 1, ..Model::default() };
        for action in actions {
            now = Timestamp(now.0 + 1_000);
            match action {
                Action::Authorize { acquirer, issuer, currency, amount } | Action::Sale { acquirer, issuer, currency, amount } => {
                    let sale = matches!(action, Action::Sale { .. });
                    let (a, i, c) = (PARTICIPANTS[acquirer], PARTICIPANTS[issuer], CURRENCIES[currency]);
                    let number = card_number(i, currency);
                    let request = if sale {
                        Request::Sale { number, merchant: merchant(a, currency), amount: Amount(amount), currency: c }
                    } else {
                        Request::Authorize { number, merchant: merchant(a, currency), amount: Amount(amount), currency: c, expiry_seconds: 0 }
                    };
                    let id = h.id();
                    let r = h.one_with(id, acting(a), request, now);
                    m.check_cap(i, c, amount, r.code)?;
                    if r.code == Code::Approved {
                        if sale {
                            m.clear(Kind::Purchase, a, i, c, amount);
                            m.paid.push((id, Paid { acquirer: a, issuer: i, currency: c, captured: amount, refunded: 0 }));
                        } else {
                            let expires_at = Timestamp(now.0 + u64::from(EXPIRY_SECONDS) * SECOND);
                            m.holds.insert(id, Hold { acquirer: a, issuer: i, currency: c, amount, expires_at });
                        }
                    } else {
                        prop_assert!(
                            matches!(r.code, Code::ExceedsLimit | Code::InsufficientFunds),
                            "{:?}", r
                        );
                    }
                }
                Action::Capture { nth, percent } => {
                    let Some((&id, &hold)) = m.holds.iter().nth(nth % m.holds.len().max(1)) else { continue };
                    let amount = (hold.amount * percent / 100).max(1);
                    let r = h.one(acting(hold.acquirer), Request::Capture(Capture { authorization: id, amount: Amount(amount) }), now);
                    prop_assert_eq!(r.code, Code::Approved, "{:?}", r);
                    m.holds.remove(&id);
                    m.clear(Kind::Purchase, hold.acquirer, hold.issuer, hold.currency, amount);
                    m.paid.push((id, Paid { acquirer: hold.acquirer, issuer: hold.issuer, currency: hold.currency, captured: amount, refunded: 0 }));
                }
                Action::Reverse { nth } => {
                    let Some((&id, &hold)) = m.holds.iter().nth(nth % m.holds.len().max(1)) else { continue };
                    let r = h.one(acting(hold.acquirer), Request::Reverse(Reverse { authorization: id }), now);
                    prop_assert_eq!(r.code, Code::Approved, "{:?}", r);
                    m.holds.remove(&id);
                }
                Action::Refund { nth, percent } => {
                    if m.paid.is_empty() { continue; }
                    let index = nth % m.paid.len();
                    let (id, p) = m.paid[index];
                    let amount = ((p.captured - p.refunded) * percent / 100).max(1);
                    let r = h.one(acting(p.acquirer), Request::Refund(Refund { original: id, amount: Amount(amount), currency: p.currency }), now);
                    if p.captured == p.refunded {
                        prop_assert_eq!(r.code, Code::InvalidAmount);
                        continue;
                    }
                    prop_assert_eq!(r.code, Code::Approved, "{:?}", r);
                    m.paid[index].1.refunded += amount;
                    m.clear(Kind::Refund, p.acquirer, p.issuer, p.currency, amount);
                }
                Action::Close => {
                    // The open window's report shows live what this close then settles.
                    let live = open_report(&mut h, m.window, now);
                    let r = h.one(ADMIN, Request::CloseWindow { window: 0 }, now);
                    prop_assert_eq!(&r.body, &Body::WindowClosed(m.window));
                    let reports = h.core.take_reports();
                    prop_assert_eq!(reports.len(), 1);
                    let closed = &reports[0].window;
                    prop_assert!(live.open && !closed.open);
                    prop_assert_eq!(
                        (&live.positions, live.opened_at, live.transfer_count),
                        (&closed.positions, closed.opened_at, closed.transfer_count)
                    );
                    m.check_close(&reports[0])?;
                }
                Action::CloseAgain => {
                    let before = h.core.ledger().digest();
                    let window = m.window.saturating_sub(1).max(1);
                    let r = h.one(ADMIN, Request::CloseWindow { window }, now);
                    if m.closed == 0 {
                        // Window 1 is the open one: this closes it.
                        prop_assert_eq!(&r.body, &Body::WindowClosed(1));
                        let reports = h.core.take_reports();
                        m.check_close(&reports[0])?;
                    } else {
                        prop_assert_eq!(&r.body, &Body::WindowClosed(window));
                        prop_assert_eq!(h.core.ledger().digest(), before, "a second close changed the ledger");
                        prop_assert!(h.core.take_reports().is_empty());
                    }
                }
                Action::Tick { seconds } => {
                    now = Timestamp(now.0 + seconds * SECOND);
                    h.expire(now);
                    m.holds.retain(|_, hold| hold.expires_at > now);
                }
                Action::SetCap { issuer, currency, cap } => {
                    let (i, c) = (PARTICIPANTS[issuer], CURRENCIES[currency]);
                    let r = h.one(ADMIN, Request::SetLimits(SetLimits { participant: ParticipantId(i), currency: c, net_debit_cap: Amount(cap) }), now);
                    prop_assert_eq!(r.code, Code::Approved);
                    m.caps.insert((i, c), cap);
                }
            }
        }
        let ledger = h.core.ledger();
        // Settlement accounts hold exactly the positions of every closed window.
        for p in PARTICIPANTS {
            for c in CURRENCIES {
                let expected = m.settled.get(&(ParticipantId(p), c)).copied().unwrap_or(0);
                let actual = ledger.account(settlement_account(ParticipantId(p), c)).map_or(0, |a| {
                    // A participant that receives is credited by the payers.
                    a.balances.credits_posted as i128 - a.balances.debits_posted as i128
                });
                prop_assert_eq!(actual, expected, "settlement account of {} in {}", p, c);
            }
        }
        for (currency, t) in ledger.totals() {
            prop_assert_eq!(t.debits_posted, t.credits_posted, "{} posted", currency);
            prop_assert_eq!(t.debits_pending, t.credits_pending, "{} pending", currency);
        }
        // The journal rebuilds the same ledger and the same windows.
        let replayed = h.replayed();
        prop_assert_eq!(replayed.ledger().digest(), ledger.digest());
        prop_assert_eq!(&replayed.clearing().closed, &h.core.clearing().closed);
        prop_assert_eq!(replayed.clearing().open.id, h.core.clearing().open.id);
    }
}

/// WindowReport of the open window `window`, as the admin asks for it.
fn open_report(h: &mut Harness, window: u64, now: Timestamp) -> switch::clearing::Window {
    let r = h.one(ADMIN, Request::WindowReport { window }, now);
    match r.body {
        Body::WindowReport(w) if r.code == Code::Approved => w,
        _ => panic!("WindowReport of window {window}: {r:?}"),
    }
}

/// A window opens with the first command logged, at that command's time: before any it has
/// no opening time (0), and the journal replays to the same time, never the clock at recovery.
#[test]
fn a_window_opens_with_the_first_command_at_its_logged_time() {
    let mut h = Harness {
        core: new_core(),
        journal: Vec::new(),
        next_id: 1,
    };
    let fresh = open_report(&mut h, 1, Timestamp(5 * SECOND));
    assert_eq!((fresh.opened_at, fresh.transfer_count), (Timestamp(0), 0));
    assert!(fresh.positions.is_empty());
    // Read-only requests are not logged and open nothing.
    assert_eq!(open_report(&mut h, 1, Timestamp(6 * SECOND)).opened_at.0, 0);
    let first = Timestamp(7 * SECOND);
    for r in setup_requests() {
        assert_eq!(h.one(ADMIN, r, first).code, Code::Approved);
    }
    let later = Timestamp(9 * SECOND);
    let sale = Request::Sale {
        number: card_number(3, 1),
        merchant: merchant(2, 1),
        amount: Amount(10_000),
        currency: Currency::CNY,
    };
    assert_eq!(h.one(acting(2), sale, later).code, Code::Approved);
    let open = open_report(&mut h, 1, later);
    assert_eq!(open.opened_at, first);
    // 100.00 CNY bought on a card of issuer 3, whose fee is 0.55 %: the acquirer receives
    // 99.45 from the issuer.
    assert_eq!(
        open.positions,
        vec![
            (ParticipantId(2), Currency::CNY, 9_945),
            (ParticipantId(3), Currency::CNY, -9_945)
        ]
    );
    let mut replayed = Harness {
        core: h.replayed(),
        journal: Vec::new(),
        next_id: 1_000,
    };
    let again = open_report(&mut replayed, 1, Timestamp(60 * SECOND));
    assert_eq!(again, open);
    // The next window opens at the close.
    let close_at = Timestamp(11 * SECOND);
    assert_eq!(
        h.one(ADMIN, Request::CloseWindow { window: 0 }, close_at)
            .body,
        Body::WindowClosed(1)
    );
    let next = open_report(&mut h, 2, Timestamp(12 * SECOND));
    assert_eq!((next.opened_at, next.transfer_count), (close_at, 0));
    assert!(next.positions.is_empty());
}

#[test]
fn the_net_debit_cap_declines_61_counts_holds_and_changes_at_once() {
    let mut h = Harness::new();
    let now = Timestamp(2 * SECOND);
    let cny = 1;
    let (acquirer, issuer) = (2, 3);
    let cap = |h: &mut Harness, amount| {
        let r = h.one(
            ADMIN,
            Request::SetLimits(SetLimits {
                participant: ParticipantId(issuer),
                currency: Currency::CNY,
                net_debit_cap: Amount(amount),
            }),
            now,
        );
        assert_eq!(r.code, Code::Approved);
    };
    let authorize = |amount| Request::Authorize {
        number: card_number(issuer, cny),
        merchant: merchant(acquirer, cny),
        amount: Amount(amount),
        currency: Currency::CNY,
        expiry_seconds: 0,
    };
    let sale = |amount| Request::Sale {
        number: card_number(issuer, cny),
        merchant: merchant(acquirer, cny),
        amount: Amount(amount),
        currency: Currency::CNY,
    };
    cap(&mut h, 1_000);
    // A hold counts against the cap.
    let held = h.id();
    assert_eq!(
        h.one_with(held, acting(acquirer), authorize(600), now).code,
        Code::Approved
    );
    let over = h.one(acting(acquirer), authorize(401), now);
    assert_eq!(
        (over.code, over.reason),
        (Code::ExceedsLimit, Reason::NET_DEBIT_CAP)
    );
    assert_eq!(
        h.one(acting(acquirer), sale(400), now).code,
        Code::Approved,
        "exactly at the cap"
    );
    assert_eq!(
        h.one(acting(acquirer), sale(1), now).code,
        Code::ExceedsLimit
    );
    // Reversing the hold frees its room.
    assert_eq!(
        h.one(
            acting(acquirer),
            Request::Reverse(Reverse {
                authorization: held
            }),
            now
        )
        .code,
        Code::Approved
    );
    assert_eq!(h.one(acting(acquirer), sale(600), now).code, Code::Approved);
    assert_eq!(
        h.one(acting(acquirer), sale(1), now).code,
        Code::ExceedsLimit
    );
    // Raising the cap takes effect for the next request.
    cap(&mut h, 1_500);
    assert_eq!(h.one(acting(acquirer), sale(500), now).code, Code::Approved);
    // What the issuer receives as an acquirer offsets what it owes.
    let back = Request::Sale {
        number: card_number(acquirer, cny),
        merchant: merchant(issuer, cny),
        amount: Amount(300),
        currency: Currency::CNY,
    };
    assert_eq!(h.one(acting(issuer), back, now).code, Code::Approved);
    assert_eq!(h.one(acting(acquirer), sale(300), now).code, Code::Approved);
    assert_eq!(
        h.one(acting(acquirer), sale(1), now).code,
        Code::ExceedsLimit
    );
    // A close settles the window: the issuer owes nothing in the next one.
    let closed = h.one(ADMIN, Request::CloseWindow { window: 0 }, now);
    assert_eq!(closed.body, Body::WindowClosed(1));
    assert_eq!(
        h.one(acting(acquirer), sale(1_500), now).code,
        Code::Approved
    );
    // 0 removes the cap.
    cap(&mut h, 0);
    assert_eq!(
        h.one(acting(acquirer), sale(50_000), now).code,
        Code::Approved
    );
    // Replay reaches the same decisions.
    assert_eq!(h.replayed().ledger().digest(), h.core.ledger().digest());
}

#[test]
fn clients_may_not_use_the_ids_the_switch_keeps_for_itself() {
    let mut h = Harness::new();
    let now = Timestamp(2 * SECOND);
    // The id of the first settlement transfer of window 1, and of the scheduled close of 1.
    for id in [
        switch::clearing::settlement_transfer_id(1, 0),
        switch::clearing::scheduled_close_id(1),
    ] {
        let r = h.one_with(
            RequestId(id),
            ADMIN,
            Request::CloseWindow { window: 0 },
            now,
        );
        assert_eq!(
            (r.code, r.reason),
            (Code::InvalidTransaction, Reason::INVALID_ID)
        );
    }
    assert_eq!(h.core.clearing().open.id, 1, "nothing closed");
}

#[test]
fn reservations_within_one_batch_never_pass_the_cap() {
    let mut h = Harness::new();
    let now = Timestamp(2 * SECOND);
    let r = h.one(
        ADMIN,
        Request::SetLimits(SetLimits {
            participant: ParticipantId(3),
            currency: Currency::CNY,
            net_debit_cap: Amount(1_000),
        }),
        now,
    );
    assert_eq!(r.code, Code::Approved);
    let items: Vec<Item> = (0..5)
        .map(|_| Item {
            id: h.id(),
            who: acting(2),
            request: Request::Sale {
                number: card_number(3, 1),
                merchant: merchant(2, 1),
                amount: Amount(300),
                currency: Currency::CNY,
            },
        })
        .collect();
    let codes: Vec<Code> = h
        .core
        .execute(items, now)
        .responses
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(
        codes,
        [
            Code::Approved,
            Code::Approved,
            Code::Approved,
            Code::ExceedsLimit,
            Code::ExceedsLimit
        ]
    );
}

/// Recovers a core from what survived on `storage`.
fn recover(storage: &SimStorage) -> (Core, wal::Resume) {
    let mut core = new_core();
    let recovered = wal::recover(storage, &RecoverOptions::default(), |_, payload| {
        match SwitchRecord::decode(payload)? {
            SwitchRecord::Batch { now, commands } => core.replay(&commands, now),
            SwitchRecord::Expire { now, at_most } => {
                core.expire(now, at_most);
            }
        }
        Ok::<(), switch::journal::JournalError>(())
    })
    .expect("recovers");
    (core, recovered.resume)
}

fn log(wal: &Wal, now: Timestamp, executed: &switch::core::Executed) {
    if !executed.logged.is_empty() {
        let mut payload = Vec::new();
        SwitchRecord::encode_batch(now, &executed.logged, &mut payload);
        wal.append(payload).expect("durable");
    }
}

/// Where a crash strikes during a close.
#[derive(Clone, Copy, Debug)]
enum CrashAt {
    /// Before the close's record is submitted.
    BeforeLogging,
    /// The record submitted, not known durable; a random part of it survives.
    WhileLogging { seed: u64, sector: bool },
    /// The record's sync fails.
    SyncFails,
    /// Durable and answered, before any report is written.
    BeforeReports,
    /// After one of the three report files.
    MidReports,
    /// After everything.
    AfterReports,
}

/// A close interrupted at `at`, then recovery, then the client's retry of the close it may
/// not have had an answer to: the window is settled exactly once, money is conserved, and
/// the reports exist.
fn close_with_crash(at: CrashAt) {
    let storage = SimStorage::new();
    let reports = tempfile::tempdir().expect("temp dir");
    let (mut core, resume) = recover(&storage);
    let wal = Wal::open(storage.clone(), WalOptions::default(), resume).expect("opens");
    let now = Timestamp(2 * SECOND);
    let mut id = 1u128;
    let mut next = || {
        id += 1;
        RequestId(id)
    };
    let setup: Vec<Item> = setup_requests()
        .into_iter()
        .map(|request| Item {
            id: next(),
            who: ADMIN,
            request,
        })
        .collect();
    let executed = core.execute(setup, now);
    log(&wal, now, &executed);
    // Traffic among all four in all three currencies.
    let mut traffic = Vec::new();
    for (k, (&a, &i)) in PARTICIPANTS
        .iter()
        .flat_map(|a| PARTICIPANTS.iter().map(move |i| (a, i)))
        .enumerate()
    {
        for (c, &currency) in CURRENCIES.iter().enumerate() {
            traffic.push(Item {
                id: next(),
                who: acting(a),
                request: Request::Sale {
                    number: card_number(i, c),
                    merchant: merchant(a, c),
                    amount: Amount(1_000 + 37 * k as u64 + c as u64),
                    currency,
                },
            });
        }
    }
    let executed = core.execute(traffic, now);
    assert!(executed.responses.iter().all(|r| r.code == Code::Approved));
    log(&wal, now, &executed);

    let close_id = next();
    let close = Item {
        id: close_id,
        who: ADMIN,
        request: Request::CloseWindow { window: 0 },
    };
    let executed = core.execute(vec![close.clone()], now);
    let details = core.take_reports();
    assert_eq!(details.len(), 1);
    let expected_positions = details[0].window.positions.clone();
    assert!(!expected_positions.is_empty());
    let mut payload = Vec::new();
    SwitchRecord::encode_batch(now, &executed.logged, &mut payload);
    let write_reports = |n: usize| {
        let dir = reports.path();
        std::fs::create_dir_all(dir).expect("dir");
        let paths = switch::report::paths(dir, 1);
        let texts = [
            switch::report::settlement_csv(&details[0]),
            switch::report::settlement_json(&details[0]),
            switch::report::reconciliation_csv(&details[0]),
        ];
        for (path, text) in paths.iter().zip(&texts).take(n) {
            std::fs::write(path, text).expect("write");
        }
    };
    let mut answered = false;
    let crashed = match at {
        CrashAt::BeforeLogging => storage.crash(),
        CrashAt::WhileLogging { seed, sector } => {
            let permit = wal.reserve().expect("room");
            let (tx, rx) = crossbeam_channel::bounded(1);
            permit.submit(
                payload,
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            );
            answered = rx.try_recv().unwrap_or(false);
            storage.crash_torn(seed, if sector { Tear::Sector } else { Tear::Byte })
        }
        CrashAt::SyncFails => {
            storage.fail_next_sync();
            answered = wal.append(payload).is_ok();
            storage.crash()
        }
        CrashAt::BeforeReports | CrashAt::MidReports | CrashAt::AfterReports => {
            wal.append(payload).expect("durable");
            answered = true;
            write_reports(match at {
                CrashAt::BeforeReports => 0,
                CrashAt::MidReports => 1,
                _ => 3,
            });
            storage.crash()
        }
    };
    drop(wal);

    let (mut core, resume) = recover(&crashed);
    // What recovery found closed gets its reports (as the server does at start).
    let recovered_reports = core.take_reports();
    for d in &recovered_reports {
        switch::report::write(reports.path(), d).expect("reports");
    }
    let closed_by_recovery = core.clearing().open.id == 2;
    if answered {
        assert!(closed_by_recovery, "{at:?}: an answered close was lost");
    }
    let wal = Wal::open(crashed.clone(), WalOptions::default(), resume).expect("opens");
    // The client retries (it may not have had the answer): the same request id.
    let retry = core.execute(vec![close], now);
    assert_eq!(
        retry.responses[0].body,
        Body::WindowClosed(1),
        "{at:?}: {:?}",
        retry.responses[0]
    );
    log(&wal, now, &retry);
    for d in core.take_reports() {
        assert!(!closed_by_recovery, "{at:?}: closed twice");
        switch::report::write(reports.path(), &d).expect("reports");
    }
    // And an operator closes window 1 again under a new id: nothing changes.
    let digest = core.ledger().digest();
    let again = core.execute(
        vec![Item {
            id: next(),
            who: ADMIN,
            request: Request::CloseWindow { window: 1 },
        }],
        now,
    );
    assert_eq!(again.responses[0].body, Body::WindowClosed(1));
    log(&wal, now, &again);
    assert_eq!(core.ledger().digest(), digest);
    assert_eq!(core.clearing().open.id, 2, "{at:?}");
    drop(wal);

    // Settled exactly once: each settlement account holds its position, once.
    let ledger = core.ledger();
    for &(participant, currency, net) in &expected_positions {
        let a = ledger
            .account(settlement_account(participant, currency))
            .expect("settlement account");
        assert_eq!(
            a.balances.credits_posted as i128 - a.balances.debits_posted as i128,
            net,
            "{at:?}: participant {participant} in {currency}"
        );
    }
    for (currency, t) in ledger.totals() {
        assert_eq!(t.debits_posted, t.credits_posted, "{at:?}: {currency}");
    }
    for path in switch::report::paths(reports.path(), 1) {
        assert!(path.exists(), "{at:?}: {} missing", path.display());
    }
    let json = std::fs::read_to_string(&switch::report::paths(reports.path(), 1)[1]).expect("json");
    assert!(json.contains("\"reconciled\": true"), "{json}");

    // A second recovery of the final state agrees.
    let (again, _) = recover(&crashed.crash());
    assert_eq!(again.ledger().digest(), core.ledger().digest(), "{at:?}");
}

#[test]
fn a_close_interrupted_anywhere_settles_exactly_once() {
    close_with_crash(CrashAt::BeforeLogging);
    close_with_crash(CrashAt::SyncFails);
    for seed in 0..24 {
        close_with_crash(CrashAt::WhileLogging {
            seed,
            sector: seed % 2 == 0,
        });
    }
    close_with_crash(CrashAt::BeforeReports);
    close_with_crash(CrashAt::MidReports);
    close_with_crash(CrashAt::AfterReports);
}
