//! Compares what the switch says with what the model expects.
//!
//! The run reads every account it touched (balance inquiry) and the status of every
//! authorization and sale it made; `compare` is a pure function of the model and those
//! observations, so tests can feed it tampered observations and see it fail.
//!
//! A switch remembers a bounded number of payments and forgets the oldest finished ones past
//! it. In a run of more payments than that, "not found" is accepted for at most the surplus;
//! the money of a forgotten payment is still checked, in the balances of its accounts.

use std::collections::HashMap;

use ledger::Currency;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::model::{AuthState, Model};

/// A balance as the switch reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub ledger: i128,
    pub available: i128,
}

/// What the switch said became of an authorization or a sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeenStatus {
    NotFound,
    Pending,
    Captured { captured: u64, refunded: u64 },
    Reversed,
    Expired,
    Posted { amount: u64, refunded: u64 },
    Declined,
}

/// Everything read back from the switch at the end of a run. `None`: the read got no answer.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub customers: Vec<Option<Seen>>,
    pub merchants: Vec<Option<Seen>>,
    /// The issuer's funding account, as changed since before the run funded anything: it is
    /// shared with every other run and client that funds the issuer's accounts.
    pub funding: Option<Seen>,
    pub statuses: HashMap<u128, Option<SeenStatus>>,
    /// Authorizations and sales refused as busy and given up: a refusal did nothing, so the
    /// switch must not know them.
    pub refused: HashMap<u128, Option<SeenStatus>>,
}

/// The verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    pub passed: bool,
    pub accounts_checked: u64,
    pub authorizations_checked: u64,
    pub sales_checked: u64,
    /// Money moved into customer accounts at setup.
    pub funded: String,
    /// The sum of every balance read, with the funding account's change over the run: zero
    /// when money is conserved.
    pub sum_of_balances: String,
    /// Requests that never got a definitive answer.
    pub unanswered: u64,
    /// Holds the run reversed at the end because their own flow could not finish them.
    pub cleanup_reversals: u64,
    /// Payments the switch remembers (`None`: all), as verification assumed.
    pub switch_remembers: Option<u64>,
    /// Payments whose status the switch no longer knew: at most the run's payments past
    /// `switch_remembers`.
    pub statuses_forgotten: u64,
    /// Authorizations and sales refused as busy and given up whose status was read: each
    /// must be unknown to the switch.
    pub refused_checked: u64,
    /// Every discrepancy, one line each; empty when `passed`.
    pub mismatches: Vec<String>,
}

/// Minor units to a decimal string in `currency`'s exponent (exact).
pub fn money(minor: i128, currency: Currency) -> String {
    match Decimal::try_from_i128_with_scale(minor, u32::from(currency.exponent())) {
        Ok(d) => format!("{d} {currency}"),
        Err(_) => format!("{minor} minor units of {currency}"),
    }
}

/// How many of the model's payments a switch that remembers `remembers` of them (`None`: all)
/// may have forgotten: the payments past that bound.
pub fn forgettable(model: &Model, remembers: Option<u64>) -> u64 {
    let payments = (model.auths.len() + model.sales.len()) as u64;
    remembers.map_or(0, |n| payments.saturating_sub(n))
}

/// Compares the model with the observations. `unanswered` lists requests with no definitive
/// answer (each one a failure). `remembers`: how many payments the switch remembers (`None`:
/// all of them, so every status must be found).
pub fn compare(
    model: &Model,
    observed: &Observed,
    currency: Currency,
    unanswered: &[String],
    remembers: Option<u64>,
) -> Verification {
    let mut mismatches: Vec<String> = model.violations.clone();
    mismatches.extend(unanswered.iter().map(|u| format!("no answer: {u}")));
    let m = |v: i128| money(v, currency);
    let mut sum: i128 = 0;
    let mut accounts_checked = 0;
    let groups = [
        ("customer", &model.customers, &observed.customers),
        ("merchant", &model.merchants, &observed.merchants),
    ];
    for (kind, expected, seen) in groups {
        for (i, e) in expected.iter().enumerate() {
            accounts_checked += 1;
            match seen.get(i).copied().flatten() {
                None => mismatches.push(format!("{kind} {i}: balance could not be read")),
                Some(s) => {
                    sum += s.ledger;
                    if s.ledger != e.ledger {
                        mismatches.push(format!(
                            "{kind} {i}: ledger balance {} but expected {} (off by {})",
                            m(s.ledger),
                            m(e.ledger),
                            m(s.ledger - e.ledger)
                        ));
                    }
                    if s.available != e.available() {
                        mismatches.push(format!(
                            "{kind} {i}: available balance {} but expected {} ({} held)",
                            m(s.available),
                            m(e.available()),
                            m(e.held)
                        ));
                    }
                }
            }
        }
    }
    accounts_checked += 1;
    match observed.funding {
        None => mismatches.push("funding account: balance could not be read".into()),
        Some(s) => {
            sum += s.ledger;
            if s.ledger != -model.funded {
                mismatches.push(format!(
                    "funding account: ledger balance changed by {} over the run but expected {}",
                    m(s.ledger),
                    m(-model.funded)
                ));
            }
        }
    }
    if sum != 0 {
        mismatches.push(format!(
            "money not conserved: the balances of every account touched sum to {}, not 0",
            m(sum)
        ));
    }
    for (id, a) in model.live_holds() {
        mismatches.push(format!(
            "authorization {id:#x} ({}): hold of {} still live at the end",
            a.flow.name(),
            m(i128::from(a.amount))
        ));
    }
    let allowed = forgettable(model, remembers);
    let mut statuses = Statuses {
        mismatches: &mut mismatches,
        observed,
        may_forget: allowed > 0,
        forgotten: 0,
    };
    for (id, a) in model.auths.iter() {
        let expected = match a.state {
            AuthState::Held => SeenStatus::Pending,
            AuthState::Captured(c) => SeenStatus::Captured {
                captured: c,
                refunded: 0,
            },
            AuthState::Reversed => SeenStatus::Reversed,
            AuthState::Expired => SeenStatus::Expired,
        };
        statuses.check("authorization", *id, expected);
    }
    for (id, s) in model.sales.iter() {
        let expected = SeenStatus::Posted {
            amount: s.amount,
            refunded: s.refunded,
        };
        statuses.check("sale", *id, expected);
    }
    let forgotten = statuses.forgotten;
    let mut refused: Vec<(&u128, &Option<SeenStatus>)> = observed.refused.iter().collect();
    refused.sort_by_key(|&(id, _)| *id);
    for (id, seen) in refused {
        match seen {
            Some(SeenStatus::NotFound) => {}
            None => mismatches.push(format!(
                "payment {id:#x} (refused as busy, given up): status could not be read"
            )),
            Some(other) => mismatches.push(format!(
                "payment {id:#x} was refused as busy and given up, so it did nothing, but the \
                 switch has it {other:?}"
            )),
        }
    }
    if forgotten > allowed {
        mismatches.push(format!(
            "the switch no longer knows {forgotten} of the run's {} payments, more than the \
             {allowed} past the {} it remembers",
            model.auths.len() + model.sales.len(),
            remembers.unwrap_or(0)
        ));
    }
    mismatches.sort();
    Verification {
        passed: mismatches.is_empty(),
        accounts_checked,
        authorizations_checked: model.auths.len() as u64,
        sales_checked: model.sales.len() as u64,
        funded: m(model.funded),
        sum_of_balances: m(sum),
        unanswered: unanswered.len() as u64,
        cleanup_reversals: 0,
        switch_remembers: remembers,
        statuses_forgotten: forgotten,
        refused_checked: observed.refused.len() as u64,
        mismatches,
    }
}

/// The status checks, counting the payments the switch no longer knows.
struct Statuses<'a> {
    mismatches: &'a mut Vec<String>,
    observed: &'a Observed,
    /// Whether the run made more payments than the switch remembers.
    may_forget: bool,
    forgotten: u64,
}

impl Statuses<'_> {
    fn check(&mut self, kind: &str, id: u128, expected: SeenStatus) {
        match self.observed.statuses.get(&id).copied().flatten() {
            None => self
                .mismatches
                .push(format!("{kind} {id:#x}: status could not be read")),
            // A live hold is never forgotten.
            Some(SeenStatus::NotFound) if self.may_forget && expected != SeenStatus::Pending => {
                self.forgotten += 1
            }
            Some(seen) if seen != expected => self.mismatches.push(format!(
                "{kind} {id:#x}: switch says {seen:?}, expected {expected:?}"
            )),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::Flow;

    fn consistent() -> (Model, Observed) {
        let mut model = Model::new(1, 1);
        model.funded(0, 1000);
        model.sold(5, 0, 0, 300);
        model.authorized(6, 0, 0, 100, Flow::AuthReverse);
        model.reversed(6);
        let observed = Observed {
            customers: vec![Some(Seen {
                ledger: 700,
                available: 700,
            })],
            merchants: vec![Some(Seen {
                ledger: 300,
                available: 300,
            })],
            funding: Some(Seen {
                ledger: -1000,
                available: -1000,
            }),
            statuses: [
                (
                    5,
                    Some(SeenStatus::Posted {
                        amount: 300,
                        refunded: 0,
                    }),
                ),
                (6, Some(SeenStatus::Reversed)),
            ]
            .into_iter()
            .collect(),
            refused: [(7, Some(SeenStatus::NotFound))].into_iter().collect(),
        };
        (model, observed)
    }

    #[test]
    fn agreement_passes() {
        let (model, observed) = consistent();
        let v = compare(&model, &observed, Currency::CNY, &[], None);
        assert!(v.passed, "{:?}", v.mismatches);
        assert_eq!(v.sum_of_balances, "0.00 CNY");
        assert_eq!(v.funded, "10.00 CNY");
    }

    #[test]
    fn every_kind_of_disagreement_is_listed() {
        let (model, mut observed) = consistent();
        observed.customers[0] = Some(Seen {
            ledger: 701,
            available: 701,
        });
        let v = compare(&model, &observed, Currency::CNY, &[], None);
        assert!(!v.passed);
        assert!(
            v.mismatches
                .iter()
                .any(|m| m.contains("customer 0: ledger balance 7.01 CNY but expected 7.00 CNY")),
            "{:?}",
            v.mismatches
        );
        assert!(v.mismatches.iter().any(|m| m.contains("not conserved")));

        let (model, mut observed) = consistent();
        observed.statuses.insert(6, Some(SeenStatus::Expired));
        observed.merchants[0] = None;
        let v = compare(&model, &observed, Currency::CNY, &["sale 0x9".into()], None);
        assert_eq!(v.mismatches.len(), 4, "{:?}", v.mismatches);
        assert_eq!(v.unanswered, 1);

        let (mut model, observed) = consistent();
        model.authorized(7, 0, 0, 5, Flow::AuthExpire);
        let v = compare(&model, &observed, Currency::CNY, &[], None);
        assert!(v.mismatches.iter().any(|m| m.contains("still live")));
        assert!(v.mismatches.iter().any(|m| m.contains("available balance")));
    }

    /// A payment refused as busy and given up did nothing: the switch knowing it (the refusal
    /// was not true), or its status unread, fails verification.
    #[test]
    fn a_refused_payment_the_switch_knows_is_a_mismatch() {
        let (model, mut observed) = consistent();
        assert_eq!(
            compare(&model, &observed, Currency::CNY, &[], None).refused_checked,
            1
        );
        let posted = SeenStatus::Posted {
            amount: 5,
            refunded: 0,
        };
        observed.refused.insert(7, Some(posted));
        observed.refused.insert(8, Some(SeenStatus::Pending));
        observed.refused.insert(9, None);
        let v = compare(&model, &observed, Currency::CNY, &[], None);
        assert!(!v.passed);
        assert_eq!(v.refused_checked, 3);
        assert_eq!(v.mismatches.len(), 3, "{:?}", v.mismatches);
        assert!(v.mismatches[0].contains("payment 0x7 was refused as busy and given up"));
        assert!(v.mismatches[2].contains("0x9 (refused as busy, given up): status could not"));
    }

    /// `sales` sales of 1 minor unit each, and the switch's honest account of them.
    fn paid(sales: u64) -> (Model, Observed) {
        let mut model = Model::new(1, 1);
        model.funded(0, 1000);
        let mut statuses = HashMap::new();
        for id in 0..sales {
            model.sold(u128::from(id), 0, 0, 1);
            let posted = SeenStatus::Posted {
                amount: 1,
                refunded: 0,
            };
            statuses.insert(u128::from(id), Some(posted));
        }
        let (paid, left) = (sales as i128, 1000 - sales as i128);
        let seen = |v: i128| {
            Some(Seen {
                ledger: v,
                available: v,
            })
        };
        let observed = Observed {
            customers: vec![seen(left)],
            merchants: vec![seen(paid)],
            funding: seen(-1000),
            statuses,
            refused: HashMap::new(),
        };
        (model, observed)
    }

    proptest::proptest! {
        #![proptest_config(ledger::proptest_config!("loadgen_forgotten_statuses.txt"))]

        /// "Not found" passes for at most the payments past what the switch remembers, and
        /// never when it remembers them all.
        #[test]
        fn forgotten_statuses_pass_only_within_the_switch_s_bound(
            sales in 1u64..40,
            remembers in proptest::option::of(0u64..50),
            forgotten in proptest::collection::btree_set(0u64..40, 0..40),
        ) {
            let (model, mut observed) = paid(sales);
            let forgotten: Vec<u64> = forgotten.into_iter().filter(|&id| id < sales).collect();
            for &id in &forgotten {
                observed.statuses.insert(u128::from(id), Some(SeenStatus::NotFound));
            }
            let v = compare(&model, &observed, Currency::CNY, &[], remembers);
            let allowed = remembers.map_or(0, |n| sales.saturating_sub(n));
            let n = forgotten.len() as u64;
            proptest::prop_assert_eq!(v.passed, n <= allowed, "{:?}", v.mismatches);
            proptest::prop_assert_eq!(v.statuses_forgotten, if allowed > 0 { n } else { 0 });
            if allowed == 0 {
                // Each one is listed as a wrong status.
                proptest::prop_assert_eq!(v.mismatches.len() as u64, n);
            }
        }
    }

    #[test]
    fn a_forgotten_live_hold_or_a_wrong_balance_fails_whatever_the_bound() {
        let (mut model, mut observed) = paid(3);
        model.authorized(9, 0, 0, 5, Flow::AuthCapture);
        observed.customers[0] = Some(Seen {
            ledger: 997,
            available: 992,
        });
        observed.statuses.insert(9, Some(SeenStatus::NotFound));
        let v = compare(&model, &observed, Currency::CNY, &[], Some(0));
        assert!(!v.passed);
        assert!(
            v.mismatches
                .iter()
                .any(|m| m.contains("switch says NotFound, expected Pending"))
        );
        // A forgotten sale whose money did not move is caught by the balances.
        let (model, mut observed) = paid(3);
        observed.statuses.insert(1, Some(SeenStatus::NotFound));
        observed.merchants[0] = Some(Seen {
            ledger: 2,
            available: 2,
        });
        let v = compare(&model, &observed, Currency::CNY, &[], Some(1));
        assert_eq!(v.statuses_forgotten, 1);
        assert!(!v.passed);
        assert!(
            v.mismatches
                .iter()
                .any(|m| m.starts_with("merchant 0: ledger balance"))
        );
    }
}
