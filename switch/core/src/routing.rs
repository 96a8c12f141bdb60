//! The routing table: card and wallet number prefixes to the issuer that owns them.
//!
//! The longest matching prefix wins. A route may also name a pooled account that every number
//! under it resolves to (a wallet operator's omnibus account); otherwise a number resolves to the
//! account registered for it when that account was created. No route: 92 (cannot route);
//! a route but no account: 14 (invalid card or account).

use ledger::{AccountId, ParticipantId};

/// The longest card or wallet number accepted (ISO/IEC 7812 PANs have at most 19 digits).
pub const NUMBER_LEN_MAX: usize = 19;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub issuer: ParticipantId,
    /// Every number under the prefix resolves to this account, if set.
    pub pooled_account: Option<AccountId>,
}

/// A table that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route {index}: prefix {prefix:?} must be 1 to {NUMBER_LEN_MAX} ASCII digits")]
    BadPrefix { index: usize, prefix: String },
    #[error("route {index}: prefix {prefix:?} is already routed by route {first}")]
    Duplicate {
        index: usize,
        first: usize,
        prefix: String,
    },
    #[error("route {index}: issuer must not be 0")]
    NoIssuer { index: usize },
    #[error("route {index}: pooled account id {account} is not a valid account id")]
    BadAccount { index: usize, account: u128 },
}

/// Whether `number` is a syntactically valid card or wallet number.
pub fn is_valid_number(number: &str) -> bool {
    (1..=NUMBER_LEN_MAX).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit())
}

/// An immutable table; reloading builds a new one and swaps it in whole.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// One map per prefix length (index 0 = length 1).
    by_len: Vec<HashMap<String, Route>>,
    /// The prefix lengths routed, longest first: a lookup tries only these.
    lens: Vec<usize>,
    len: usize,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Result<Self, RouteError> {
        let mut by_len: Vec<HashMap<String, Route>> = vec![HashMap::default(); NUMBER_LEN_MAX];
        let mut first_index: HashMap<String, usize> = HashMap::default();
        let len = routes.len();
        for (index, route) in routes.into_iter().enumerate() {
            if !is_valid_number(&route.prefix) {
                return Err(RouteError::BadPrefix {
                    index,
                    prefix: route.prefix,
                });
            }
            if !route.issuer.is_valid() {
                return Err(RouteError::NoIssuer { index });
            }
            if let Some(account) = route.pooled_account
                && !account.is_valid()
            {
                return Err(RouteError::BadAccount {
                    index,
                    account: account.0,
                });
            }
            if let Some(&first) = first_index.get(&route.prefix) {
                return Err(RouteError::Duplicate {
                    index,
                    first,
                    prefix: route.prefix,
                });
            }
            first_index.insert(route.prefix.clone(), index);
            by_len[route.prefix.len() - 1].insert(route.prefix.clone(), route);
        }
        let lens = (1..=NUMBER_LEN_MAX)
            .rev()
            .filter(|len| !by_len[len - 1].is_empty())
            .collect();
        Ok(RouteTable { by_len, lens, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The route with the longest prefix of `number`, if any.
    pub fn route(&self, number: &str) -> Option<&Route> {
        if !is_valid_number(number) {
            return None;
        }
        self.lens
            .iter()
            .filter(|&&len| len <= number.len())
            .find_map(|&len| self.by_len.get(len - 1)?.get(number.get(..len)?))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn route(prefix: &str, issuer: u64) -> Route {
        Route {
            prefix: prefix.to_string(),
            issuer: ParticipantId(issuer),
            pooled_account: None,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let table = RouteTable::new(vec![route("6", 1), route("62", 2), route("6228", 3)])
            .expect("valid table");
        assert_eq!(table.route("6228480012345678").map(|r| r.issuer.0), Some(3));
        assert_eq!(table.route("6212345678").map(|r| r.issuer.0), Some(2));
        assert_eq!(table.route("6999").map(|r| r.issuer.0), Some(1));
        assert_eq!(table.route("4111111111111111"), None);
        assert_eq!(table.route(""), None);
        assert_eq!(table.route("62a"), None);
        assert_eq!(table.route("62345678901234567890"), None, "20 digits");
    }

    #[test]
    fn bad_tables_are_refused_with_the_row() {
        assert_eq!(
            RouteTable::new(vec![route("62", 1), route("62", 2)]).err(),
            Some(RouteError::Duplicate {
                index: 1,
                first: 0,
                prefix: "62".into()
            })
        );
        assert!(matches!(
            RouteTable::new(vec![route("6x", 1)]),
            Err(RouteError::BadPrefix { index: 0, .. })
        ));
        assert_eq!(
            RouteTable::new(vec![route("1", 1), route("2", 0)]).err(),
            Some(RouteError::NoIssuer { index: 1 })
        );
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_routing.txt", 256, "/../../"))]

        /// Against a model: scan every route, keep the longest that is a prefix.
        #[test]
        fn lookup_matches_a_linear_scan(
            prefixes in prop::collection::btree_set("[0-9]{1,6}", 0..30),
            number in "[0-9]{1,19}",
        ) {
            let routes: Vec<Route> =
                prefixes.iter().enumerate().map(|(i, p)| route(p, i as u64 + 1)).collect();
            let table = RouteTable::new(routes.clone()).expect("distinct prefixes");
            let want = routes
                .iter()
                .filter(|r| number.starts_with(&r.prefix))
                .max_by_key(|r| r.prefix.len());
            prop_assert_eq!(table.route(&number), want);
        }
    }
}
