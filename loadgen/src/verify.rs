//! Compares what the switch says with what the model expects.
//!
//! The run reads every account it touched (balance inquiry) and the status of every
//! authorization and sale it made; `compare` is a pure function of the model and those
//! observations, so tests can feed it tampered observations and see it fail.

use std::collections::HashMap;

use ledger::Currency;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::model::{AuthState, Model};

/// A balance as the switch reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub funding: Option<Seen>,
    pub statuses: HashMap<u128, Option<SeenStatus>>,
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
    /// The sum of every balance read, funding account included: zero when money is conserved.
    pub sum_of_balances: String,
    /// Requests that never got a definitive answer.
    pub unanswered: u64,
    /// Holds the run reversed at the end because their own flow could not finish them.
    pub cleanup_reversals: u64,
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

/// Compares the model with the observations. `unanswered` lists requests with no definitive
/// answer (each one a failure).
pub fn compare(
    model: &Model,
    observed: &Observed,
    currency: Currency,
    unanswered: &[String],
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
                    "funding account: ledger balance {} but expected {}",
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
    for (id, a) in &model.auths {
        let expected = match a.state {
            AuthState::Held => SeenStatus::Pending,
            AuthState::Captured(c) => SeenStatus::Captured {
                captured: c,
                refunded: 0,
            },
            AuthState::Reversed => SeenStatus::Reversed,
            AuthState::Expired => SeenStatus::Expired,
        };
        check_status(&mut mismatches, "authorization", *id, expected, observed);
    }
    for (id, s) in &model.sales {
        let expected = SeenStatus::Posted {
            amount: s.amount,
            refunded: s.refunded,
        };
        check_status(&mut mismatches, "sale", *id, expected, observed);
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
        mismatches,
    }
}

fn check_status(
    mismatches: &mut Vec<String>,
    kind: &str,
    id: u128,
    expected: SeenStatus,
    observed: &Observed,
) {
    match observed.statuses.get(&id).copied().flatten() {
        None => mismatches.push(format!("{kind} {id:#x}: status could not be read")),
        Some(seen) if seen != expected => mismatches.push(format!(
            "{kind} {id:#x}: switch says {seen:?}, expected {expected:?}"
        )),
        Some(_) => {}
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
        };
        (model, observed)
    }

    #[test]
    fn agreement_passes() {
        let (model, observed) = consistent();
        let v = compare(&model, &observed, Currency::CNY, &[]);
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
        let v = compare(&model, &observed, Currency::CNY, &[]);
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
        let v = compare(&model, &observed, Currency::CNY, &["sale 0x9".into()]);
        assert_eq!(v.mismatches.len(), 4, "{:?}", v.mismatches);
        assert_eq!(v.unanswered, 1);

        let (mut model, observed) = consistent();
        model.authorized(7, 0, 0, 5, Flow::AuthExpire);
        let v = compare(&model, &observed, Currency::CNY, &[]);
        assert!(v.mismatches.iter().any(|m| m.contains("still live")));
        assert!(v.mismatches.iter().any(|m| m.contains("available balance")));
    }
}
