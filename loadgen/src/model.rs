//! The expected effect of every acknowledged operation, in the spirit of Jepsen's bank test.
//!
//! Only definitive answers change the model: an approval applies its effect, a decline applies
//! none. A request with no answer is kept aside and asked again before verification (see
//! `run`), so that the model never guesses.

use serde::Serialize;
use std::collections::HashMap;
use std::hash::BuildHasher;

use ledger::position_index::grows_ahead;

use crate::mix::Flow;

/// Every approved payment of a run, by id: millions in a festival run, one insert per payment
/// on the answer path (hence foldhash). One map of that size doubling (copying every entry)
/// would stall the answer path, which shows as latency the switch did not cause. So the map is
/// in shards, and each shard grows ahead of need at a fill of its own: shards fill evenly, and
/// growing at the same fill they would all copy themselves within moments of each other, a
/// stall as long as the one map's. The model is behind the run's lock: no locks of its own.
#[derive(Clone, Debug)]
pub struct Payments<V> {
    shards: Vec<HashMap<u128, V, foldhash::fast::RandomState>>,
    /// Which shard an id is in: fixed, so that a run's growths are the same every time.
    hasher: foldhash::fast::FixedState,
}

/// Shards of `Payments`: a growth copies a 64th of the map.
const SHARDS: usize = 64;
/// Room each shard starts with.
const SHARD_START: usize = 1024;

impl<V> Default for Payments<V> {
    fn default() -> Self {
        Payments {
            shards: (0..SHARDS)
                .map(|_| HashMap::with_capacity_and_hasher(SHARD_START, Default::default()))
                .collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
        }
    }
}

impl<V> Payments<V> {
    fn shard(&self, id: u128) -> usize {
        (self.hasher.hash_one(id) % SHARDS as u64) as usize
    }

    pub fn contains_key(&self, id: &u128) -> bool {
        self.shards[self.shard(*id)].contains_key(id)
    }

    pub fn get(&self, id: &u128) -> Option<&V> {
        self.shards[self.shard(*id)].get(id)
    }

    pub fn get_mut(&mut self, id: &u128) -> Option<&mut V> {
        let k = self.shard(*id);
        self.shards[k].get_mut(id)
    }

    /// Shard `k` doubles ahead of need at its own fill, as the ledger's shards do
    /// (`ledger::position_index::grows_ahead`): the shards' growths are spread over the time
    /// the map takes to fill from half to three quarters.
    pub fn insert(&mut self, id: u128, value: V) {
        let k = self.shard(id);
        let shard = &mut self.shards[k];
        let room = shard.capacity();
        if grows_ahead(shard.len(), room, k, SHARDS) {
            shard.reserve(room);
        }
        shard.insert(id, value);
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    pub fn keys(&self) -> impl Iterator<Item = &u128> {
        self.shards.iter().flat_map(HashMap::keys)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u128, &V)> {
        self.shards.iter().flatten()
    }

    /// The capacity of each shard.
    #[cfg(test)]
    fn capacities(&self) -> Vec<usize> {
        self.shards.iter().map(HashMap::capacity).collect()
    }
}

/// What an account's balances should be, in minor units, seen from its owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// Posted credits less posted debits.
    pub ledger: i128,
    /// Live holds (pending debits).
    pub held: i128,
}

impl Expected {
    pub fn available(&self) -> i128 {
        self.ledger - self.held
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "amount")]
pub enum AuthState {
    Held,
    Captured(u64),
    Reversed,
    Expired,
}

/// An approved authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auth {
    pub customer: u32,
    pub merchant: u32,
    pub amount: u64,
    /// The flow it belongs to: what should become of it.
    pub flow: Flow,
    pub state: AuthState,
}

/// An approved sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sale {
    pub customer: u32,
    pub merchant: u32,
    pub amount: u64,
    pub refunded: u64,
}

/// The expected state of everything a run touched.
#[derive(Clone, Debug)]
pub struct Model {
    pub customers: Vec<Expected>,
    pub merchants: Vec<Expected>,
    /// Money moved from the issuer's funding account into customer accounts.
    pub funded: i128,
    pub auths: Payments<Auth>,
    pub sales: Payments<Sale>,
    /// Approvals that cannot be right whatever the server did (a capture of an unknown hold,
    /// a refund past what was sold): each is a verification failure.
    pub violations: Vec<String>,
}

impl Model {
    pub fn new(customers: usize, merchants: usize) -> Model {
        Model {
            customers: vec![Expected::default(); customers],
            merchants: vec![Expected::default(); merchants],
            funded: 0,
            auths: Payments::default(),
            sales: Payments::default(),
            violations: Vec::new(),
        }
    }

    fn customer(&mut self, c: u32) -> &mut Expected {
        let n = self.customers.len();
        self.customers
            .get_mut(c as usize)
            .unwrap_or_else(|| panic!("customer {c} of {n}: the generator draws in range"))
    }

    fn merchant(&mut self, m: u32) -> &mut Expected {
        let n = self.merchants.len();
        self.merchants
            .get_mut(m as usize)
            .unwrap_or_else(|| panic!("merchant {m} of {n}: the generator draws in range"))
    }

    pub fn funded(&mut self, customer: u32, amount: u64) {
        self.customer(customer).ledger += i128::from(amount);
        self.funded += i128::from(amount);
    }

    pub fn authorized(&mut self, id: u128, customer: u32, merchant: u32, amount: u64, flow: Flow) {
        if self.auths.contains_key(&id) {
            self.violations
                .push(format!("authorization {id:#x} approved twice"));
            return;
        }
        self.customer(customer).held += i128::from(amount);
        self.auths.insert(
            id,
            Auth {
                customer,
                merchant,
                amount,
                flow,
                state: AuthState::Held,
            },
        );
    }

    /// Ends a live hold; `None` if there is none to end (then the approval is a violation).
    fn release(&mut self, auth: u128, what: &str) -> Option<Auth> {
        match self.auths.get(&auth).copied() {
            Some(a) if a.state == AuthState::Held => {
                self.customer(a.customer).held -= i128::from(a.amount);
                Some(a)
            }
            Some(a) => {
                self.violations.push(format!(
                    "{what} of authorization {auth:#x} approved, but it was already {:?}",
                    a.state
                ));
                None
            }
            None => {
                self.violations.push(format!(
                    "{what} of authorization {auth:#x} approved, but no such authorization was approved"
                ));
                None
            }
        }
    }

    pub fn captured(&mut self, auth: u128, amount: u64) {
        let Some(a) = self.release(auth, "capture") else {
            return;
        };
        if amount > a.amount {
            self.violations.push(format!(
                "capture of {amount} on authorization {auth:#x} of {} approved",
                a.amount
            ));
        }
        self.customer(a.customer).ledger -= i128::from(amount);
        self.merchant(a.merchant).ledger += i128::from(amount);
        self.set_state(auth, AuthState::Captured(amount));
    }

    pub fn reversed(&mut self, auth: u128) {
        if self.release(auth, "reversal").is_some() {
            self.set_state(auth, AuthState::Reversed);
        }
    }

    pub fn expired(&mut self, auth: u128) {
        if self.release(auth, "expiry").is_some() {
            self.set_state(auth, AuthState::Expired);
        }
    }

    fn set_state(&mut self, auth: u128, state: AuthState) {
        if let Some(a) = self.auths.get_mut(&auth) {
            a.state = state;
        }
    }

    pub fn sold(&mut self, id: u128, customer: u32, merchant: u32, amount: u64) {
        if self.sales.contains_key(&id) {
            self.violations.push(format!("sale {id:#x} approved twice"));
            return;
        }
        self.customer(customer).ledger -= i128::from(amount);
        self.merchant(merchant).ledger += i128::from(amount);
        self.sales.insert(
            id,
            Sale {
                customer,
                merchant,
                amount,
                refunded: 0,
            },
        );
    }

    pub fn refunded(&mut self, sale: u128, amount: u64) {
        let Some(s) = self.sales.get(&sale).copied() else {
            self.violations.push(format!(
                "refund of {amount} on sale {sale:#x} approved, but no such sale was approved"
            ));
            return;
        };
        if s.refunded + amount > s.amount {
            self.violations.push(format!(
                "refund of {amount} on sale {sale:#x} approved, past what is refundable ({} of {} refunded)",
                s.refunded, s.amount
            ));
        }
        self.merchant(s.merchant).ledger -= i128::from(amount);
        self.customer(s.customer).ledger += i128::from(amount);
        if let Some(s) = self.sales.get_mut(&sale) {
            s.refunded += amount;
        }
    }

    /// An approval must move exactly what was asked; anything else is a violation.
    pub fn check_amount(&mut self, what: &str, id: u128, asked: u64, approved: Option<u64>) {
        if approved != Some(asked) {
            self.violations.push(format!(
                "{what} {id:#x}: asked for {asked}, approved {approved:?}"
            ));
        }
    }

    /// Authorizations whose hold is still live.
    pub fn live_holds(&self) -> impl Iterator<Item = (u128, Auth)> + '_ {
        self.auths
            .iter()
            .filter(|(_, a)| a.state == AuthState::Held)
            .map(|(&id, &a)| (id, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shards fill evenly, so growing at the same fill they would all copy themselves
    /// within a few thousand inserts of each other: one stall as long as the whole map's
    /// growth. Spread out, no short stretch of inserts holds more than a few growths (at a
    /// common point, 30 of them fall within one such stretch).
    #[test]
    fn evenly_filled_shards_grow_at_spread_out_moments() {
        const INSERTS: usize = 400_000;
        const WINDOW: usize = INSERTS / 200;
        let mut map = Payments::default();
        let mut before = map.capacities();
        let mut growths = Vec::new();
        for i in 0..INSERTS {
            map.insert(i as u128 * 0x9e37_79b9, ());
            let after = map.capacities();
            growths.extend(before.iter().zip(&after).filter(|(b, a)| a > b).map(|_| i));
            before = after;
        }
        assert!(growths.len() >= 2 * SHARDS, "the map grew: {growths:?}");
        let crowded = growths
            .iter()
            .map(|&at| {
                growths
                    .iter()
                    .filter(|&&g| g >= at && g < at + WINDOW)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(
            crowded <= 12,
            "{crowded} of {} shard growths within {WINDOW} inserts",
            growths.len()
        );
        assert_eq!(map.len(), INSERTS);
    }

    #[test]
    fn a_payment_lifecycle_moves_money_and_conserves_it() {
        let mut m = Model::new(2, 1);
        m.funded(0, 1000);
        m.funded(1, 500);
        m.authorized(10, 0, 0, 300, Flow::AuthCapture);
        assert_eq!(m.customers[0].available(), 700);
        m.captured(10, 200);
        assert_eq!(
            m.customers[0],
            Expected {
                ledger: 800,
                held: 0
            }
        );
        m.sold(11, 1, 0, 100);
        m.refunded(11, 40);
        m.authorized(12, 1, 0, 50, Flow::AuthExpire);
        m.expired(12);
        m.authorized(13, 1, 0, 60, Flow::AuthReverse);
        m.reversed(13);
        assert_eq!(
            m.customers[1],
            Expected {
                ledger: 440,
                held: 0
            }
        );
        assert_eq!(m.merchants[0].ledger, 260);
        let total: i128 = m
            .customers
            .iter()
            .chain(&m.merchants)
            .map(|e| e.ledger)
            .sum();
        assert_eq!(total, m.funded);
        assert!(m.violations.is_empty(), "{:?}", m.violations);
        assert_eq!(m.live_holds().count(), 0);
    }

    #[test]
    fn impossible_approvals_are_violations() {
        let mut m = Model::new(1, 1);
        m.funded(0, 1000);
        m.captured(99, 1);
        m.authorized(1, 0, 0, 100, Flow::AuthCapture);
        m.captured(1, 100);
        m.reversed(1);
        m.sold(2, 0, 0, 10);
        m.refunded(2, 11);
        assert_eq!(m.violations.len(), 3, "{:?}", m.violations);
    }
}
