//! Clearing arithmetic: from what a window cleared between pairs of participants to fees, each
//! participant's multilateral net position and the settlement transfers that square them.
//!
//! Pure functions over integers in minor units; fees are the one place where a rate meets an
//! amount, and there the arithmetic is `Decimal` with one named rounding rule (banker's:
//! half to even), applied once per pair, currency and kind.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::{Currency, ParticipantId};

/// The rounding rule fees are computed with, as the reports name it.
pub const ROUNDING_RULE: &str = "half-even (banker's) to the currency's minor unit";

/// Purchases (captures and sales) or refunds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Purchase,
    Refund,
}

/// A fee: `percent` of the amount plus `fixed` per transaction, both in the transaction's
/// currency and written as decimals (`fixed` in major units: "0.10" is ten cents in CNY).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FeeRate {
    pub percent: Decimal,
    pub fixed: Decimal,
}

impl FeeRate {
    pub fn is_zero(&self) -> bool {
        self.percent.is_zero() && self.fixed.is_zero()
    }
}

/// Fees are paid by the acquirer to the issuer, at the issuer's rate for the kind of
/// transaction, or the default rate where the issuer has none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FeeSchedule {
    pub purchase: FeeRate,
    pub refund: FeeRate,
    pub by_issuer: BTreeMap<ParticipantId, (FeeRate, FeeRate)>,
}

impl FeeSchedule {
    pub fn rate(&self, issuer: ParticipantId, kind: Kind) -> FeeRate {
        let (purchase, refund) = self
            .by_issuer
            .get(&issuer)
            .copied()
            .unwrap_or((self.purchase, self.refund));
        match kind {
            Kind::Purchase => purchase,
            Kind::Refund => refund,
        }
    }
}

/// What one window cleared from `acquirer`'s merchants to `issuer`'s cards in one currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PairTotals {
    pub purchases: u128,
    pub purchase_count: u64,
    pub refunds: u128,
    pub refund_count: u64,
}

impl PairTotals {
    pub fn add(&mut self, kind: Kind, amount: u64) {
        match kind {
            Kind::Purchase => {
                self.purchases += u128::from(amount);
                self.purchase_count += 1;
            }
            Kind::Refund => {
                self.refunds += u128::from(amount);
                self.refund_count += 1;
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.purchase_count + self.refund_count
    }
}

/// Ordered by currency, then acquirer, then issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PairKey {
    pub currency: Currency,
    pub acquirer: ParticipantId,
    pub issuer: ParticipantId,
}

/// One pair's line in a settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairLine {
    pub key: PairKey,
    pub totals: PairTotals,
    pub purchase_fees: u128,
    pub refund_fees: u128,
    /// What the acquirer receives from the issuer: purchases − refunds − fees (may be negative).
    pub net: i128,
}

/// A transfer that squares positions: `from` pays `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettlementTransfer {
    pub currency: Currency,
    pub from: ParticipantId,
    pub to: ParticipantId,
    pub amount: u64,
}

/// A window's netting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    pub pairs: Vec<PairLine>,
    /// Per participant and currency: positive receives, negative pays. Sums to zero per
    /// currency. Participants with a zero position are left out.
    pub positions: BTreeMap<(ParticipantId, Currency), i128>,
    pub transfers: Vec<SettlementTransfer>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClearingError {
    #[error(
        "fee arithmetic overflows for {currency} between acquirer {acquirer} and issuer {issuer}"
    )]
    FeeOverflow {
        currency: &'static str,
        acquirer: u64,
        issuer: u64,
    },
    #[error("net position overflows in {currency}")]
    PositionOverflow { currency: &'static str },
}

/// The fee for `count` transactions totalling `total` minor units: `total × percent / 100 +
/// count × fixed`, rounded half to even to the currency's minor unit, once. None on overflow.
pub fn fee(total: u128, count: u64, rate: FeeRate, currency: Currency) -> Option<u128> {
    if rate.is_zero() || count == 0 {
        return Some(0);
    }
    let exponent = u32::from(currency.exponent());
    let total = Decimal::try_from_i128_with_scale(i128::try_from(total).ok()?, exponent).ok()?;
    let proportional = total
        .checked_mul(rate.percent)?
        .checked_div(Decimal::ONE_HUNDRED)?;
    let fixed = Decimal::from(count).checked_mul(rate.fixed)?;
    let exact = proportional.checked_add(fixed)?;
    let mut rounded = exact.round_dp_with_strategy(exponent, RoundingStrategy::MidpointNearestEven);
    // At most `exponent` decimals are left, so this only pads: the mantissa is minor units.
    rounded.rescale(exponent);
    u128::try_from(rounded.mantissa()).ok()
}

/// Nets a window's pair totals into fees, positions and settlement transfers.
pub fn settle(
    pairs: &BTreeMap<PairKey, PairTotals>,
    fees: &FeeSchedule,
) -> Result<Settlement, ClearingError> {
    let mut settlement = Settlement::default();
    for (&key, &totals) in pairs {
        let overflow = || ClearingError::FeeOverflow {
            currency: key.currency.code(),
            acquirer: key.acquirer.0,
            issuer: key.issuer.0,
        };
        let purchase_fees = fee(
            totals.purchases,
            totals.purchase_count,
            fees.rate(key.issuer, Kind::Purchase),
            key.currency,
        )
        .ok_or_else(overflow)?;
        let refund_fees = fee(
            totals.refunds,
            totals.refund_count,
            fees.rate(key.issuer, Kind::Refund),
            key.currency,
        )
        .ok_or_else(overflow)?;
        let signed = |v: u128| i128::try_from(v).map_err(|_| overflow());
        let net = signed(totals.purchases)?
            .checked_sub(signed(totals.refunds)?)
            .and_then(|n| n.checked_sub(signed(purchase_fees).ok()?))
            .and_then(|n| n.checked_sub(signed(refund_fees).ok()?))
            .ok_or_else(overflow)?;
        settlement.pairs.push(PairLine {
            key,
            totals,
            purchase_fees,
            refund_fees,
            net,
        });
        if key.acquirer != key.issuer && net != 0 {
            let position_overflow = || ClearingError::PositionOverflow {
                currency: key.currency.code(),
            };
            let acquirer = settlement
                .positions
                .entry((key.acquirer, key.currency))
                .or_insert(0);
            *acquirer = acquirer.checked_add(net).ok_or_else(position_overflow)?;
            let issuer = settlement
                .positions
                .entry((key.issuer, key.currency))
                .or_insert(0);
            *issuer = issuer.checked_sub(net).ok_or_else(position_overflow)?;
        }
    }
    settlement.positions.retain(|_, net| *net != 0);
    settlement.transfers = transfers(&settlement.positions);
    Ok(settlement)
}

/// Participants and the amounts they pay or receive.
type Sides = Vec<(ParticipantId, u128)>;

/// Squares positions with as few transfers as a greedy pass gives (at most one fewer than
/// the participants with a position, per currency): payers and receivers in participant
/// order, each payer paying receivers until its debt is gone. Deterministic.
fn transfers(positions: &BTreeMap<(ParticipantId, Currency), i128>) -> Vec<SettlementTransfer> {
    let mut by_currency: BTreeMap<Currency, (Sides, Sides)> = BTreeMap::new();
    for (&(participant, currency), &net) in positions {
        let (payers, receivers) = by_currency.entry(currency).or_default();
        if net < 0 {
            payers.push((participant, net.unsigned_abs()));
        } else if net > 0 {
            receivers.push((participant, net.unsigned_abs()));
        }
    }
    let mut out = Vec::new();
    for (currency, (payers, mut receivers)) in by_currency {
        let mut r = 0;
        for (payer, mut owed) in payers {
            while owed > 0 && r < receivers.len() {
                let (receiver, due) = &mut receivers[r];
                let step = owed.min(*due).min(u128::from(u64::MAX));
                out.push(SettlementTransfer {
                    currency,
                    from: payer,
                    to: *receiver,
                    amount: step as u64,
                });
                owed -= step;
                *due -= step;
                if *due == 0 {
                    r += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn cur(code: &str) -> Currency {
        Currency::from_code(code).expect("known currency")
    }

    fn rate(percent: &str, fixed: &str) -> FeeRate {
        FeeRate {
            percent: Decimal::from_str(percent).expect("decimal"),
            fixed: Decimal::from_str(fixed).expect("decimal"),
        }
    }

    #[test]
    fn fees_round_half_to_even_once() {
        // 0.5% of 1.00 CNY is 0.005: half-way, to even gives 0.00; of 3.00 it is 0.015 → 0.02.
        assert_eq!(fee(100, 1, rate("0.5", "0"), cur("CNY")), Some(0));
        assert_eq!(fee(300, 1, rate("0.5", "0"), cur("CNY")), Some(2));
        // JPY has no minor unit: 1.5% of 100 yen is 1.5 → 2; of 300 yen 4.5 → 4.
        assert_eq!(fee(100, 1, rate("1.5", "0"), cur("JPY")), Some(2));
        assert_eq!(fee(300, 1, rate("1.5", "0"), cur("JPY")), Some(4));
        // KWD has three decimals: 0.25% of 1.002 KWD is 0.002505 → 0.003 (not half-way).
        assert_eq!(fee(1002, 1, rate("0.25", "0"), cur("KWD")), Some(3));
        // The fixed part counts per transaction, in major units.
        assert_eq!(fee(0, 3, rate("0", "0.10"), cur("CNY")), Some(30));
        assert_eq!(fee(10_000, 2, rate("1", "0.05"), cur("CNY")), Some(110));
    }

    fn key(currency: &str, acquirer: u64, issuer: u64) -> PairKey {
        PairKey {
            currency: cur(currency),
            acquirer: ParticipantId(acquirer),
            issuer: ParticipantId(issuer),
        }
    }

    fn pairs_strategy() -> impl Strategy<Value = BTreeMap<PairKey, PairTotals>> {
        let currency = prop::sample::select(vec!["CNY", "JPY", "KWD"]);
        prop::collection::btree_map(
            (currency, 1u64..8, 1u64..8).prop_map(|(c, a, i)| key(c, a, i)),
            (0u64..1_000_000_000, 0u64..50, 0u64..1_000_000, 0u64..5).prop_map(|(p, pc, r, rc)| {
                PairTotals {
                    purchases: u128::from(p),
                    purchase_count: pc,
                    refunds: u128::from(r),
                    refund_count: rc,
                }
            }),
            0..30,
        )
    }

    fn schedule_strategy() -> impl Strategy<Value = FeeSchedule> {
        let r = (0u32..500, 0u32..100).prop_map(|(p, f)| FeeRate {
            percent: Decimal::new(i64::from(p), 2),
            fixed: Decimal::new(i64::from(f), 2),
        });
        (
            r.clone(),
            r.clone(),
            prop::collection::btree_map(1u64..8, (r.clone(), r), 0..4),
        )
            .prop_map(|(purchase, refund, by)| FeeSchedule {
                purchase,
                refund,
                by_issuer: by.into_iter().map(|(p, v)| (ParticipantId(p), v)).collect(),
            })
    }

    proptest! {
        #![proptest_config(proptest_config!("ledger-clearing"))]

        #[test]
        fn positions_sum_to_zero_and_transfers_square_them(
            pairs in pairs_strategy(),
            fees in schedule_strategy(),
        ) {
            let s = settle(&pairs, &fees).expect("small totals never overflow");
            // Per currency, positions sum to zero.
            let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
            for (&(_, c), &net) in &s.positions {
                *sums.entry(c).or_default() += net;
            }
            prop_assert!(sums.values().all(|&v| v == 0), "{sums:?}");
            // Applying the transfers brings every position to zero.
            let mut left = s.positions.clone();
            for t in &s.transfers {
                prop_assert!(t.amount > 0);
                prop_assert_ne!(t.from, t.to);
                *left.entry((t.from, t.currency)).or_default() += i128::from(t.amount);
                *left.entry((t.to, t.currency)).or_default() -= i128::from(t.amount);
            }
            prop_assert!(left.values().all(|&v| v == 0), "{left:?}");
            // Every pair appears once, with its totals unchanged.
            prop_assert_eq!(s.pairs.len(), pairs.len());
            for line in &s.pairs {
                prop_assert_eq!(pairs.get(&line.key), Some(&line.totals));
                let fees_total = line.purchase_fees + line.refund_fees;
                prop_assert_eq!(
                    line.net,
                    line.totals.purchases as i128 - line.totals.refunds as i128 - fees_total as i128
                );
            }
        }

        /// The fee is the exact value rounded half to even: within half a minor unit of it,
        /// and exactly half-way only when the result is even.
        #[test]
        fn fees_follow_the_rule(
            total in 0u64..10_000_000_000,
            count in 1u64..1000,
            percent in 0u32..10_000,
            fixed in 0u32..10_000,
            currency in prop::sample::select(vec!["JPY", "CNY", "KWD"]),
        ) {
            let currency = cur(currency);
            let rate = FeeRate {
                percent: Decimal::new(i64::from(percent), 3),
                fixed: Decimal::new(i64::from(fixed), 3),
            };
            let got = fee(u128::from(total), count, rate, currency).expect("no overflow");
            // Exact value in minor units, as a fraction with denominator 100 × 1000 × 1000.
            let unit = 10u128.pow(u32::from(currency.exponent()));
            let denominator = 100u128 * 1000 * 1000;
            let exact = u128::from(total) * u128::from(percent) * 1000
                + u128::from(count) * u128::from(fixed) * 100 * 1000 * unit;
            let got_scaled = got * denominator;
            let diff = got_scaled.abs_diff(exact);
            prop_assert!(diff * 2 <= denominator, "fee {got} too far from {exact}/{denominator}");
            if diff * 2 == denominator {
                prop_assert_eq!(got % 2, 0, "half-way must round to even");
            }
        }
    }
}
