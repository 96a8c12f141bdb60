//! ISO 4217 currencies and the conversion between minor units and decimals.
//!
//! Inside the ledger every amount is an integer count of minor units. Everything a person types
//! or reads is a `rust_decimal::Decimal` in major units. Conversion in either direction is exact
//! or an error: excess precision is never rounded away.

use std::fmt;

use rust_decimal::Decimal;

use crate::types::Amount;

/// A currency from the ISO 4217 table below, stored as its numeric code.
///
/// A `Currency` can only be made from the table, so its exponent is always known.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(u16);

/// (alphabetic code, numeric code, exponent), sorted by numeric code.
const TABLE: &[(&str, u16, u8)] = &[
    ("AUD", 36, 2),
    ("BHD", 48, 3),
    ("CAD", 124, 2),
    ("CNY", 156, 2),
    ("HKD", 344, 2),
    ("ISK", 352, 0),
    ("INR", 356, 2),
    ("IQD", 368, 3),
    ("JPY", 392, 0),
    ("JOD", 400, 3),
    ("KRW", 410, 0),
    ("KWD", 414, 3),
    ("LYD", 434, 3),
    ("MYR", 458, 2),
    ("OMR", 512, 3),
    ("SGD", 702, 2),
    ("VND", 704, 0),
    ("CHF", 756, 2),
    ("THB", 764, 2),
    ("TND", 788, 3),
    ("GBP", 826, 2),
    ("USD", 840, 2),
    ("TWD", 901, 2),
    ("EUR", 978, 2),
    ("CLF", 990, 4),
];

impl Currency {
    pub const CNY: Currency = Currency(156);
    pub const USD: Currency = Currency(840);
    pub const EUR: Currency = Currency(978);
    pub const HKD: Currency = Currency(344);
    pub const SGD: Currency = Currency(702);
    pub const JPY: Currency = Currency(392);
    pub const KRW: Currency = Currency(410);
    pub const KWD: Currency = Currency(414);
    pub const BHD: Currency = Currency(48);

    /// Every supported currency, in numeric-code order.
    pub fn all() -> impl Iterator<Item = Currency> {
        TABLE.iter().map(|&(_, numeric, _)| Currency(numeric))
    }

    /// Looks up an alphabetic code such as `"CNY"` (case-sensitive, as in ISO 4217).
    pub fn from_code(code: &str) -> Option<Currency> {
        TABLE
            .iter()
            .find(|(c, _, _)| *c == code)
            .map(|&(_, numeric, _)| Currency(numeric))
    }

    /// Looks up a numeric code such as `156`.
    pub fn from_numeric(numeric: u16) -> Option<Currency> {
        TABLE
            .binary_search_by_key(&numeric, |&(_, n, _)| n)
            .ok()
            .map(|_| Currency(numeric))
    }

    fn entry(self) -> (&'static str, u16, u8) {
        match TABLE.binary_search_by_key(&self.0, |&(_, n, _)| n) {
            Ok(i) => TABLE[i],
            // A `Currency` is only ever built from the table.
            Err(_) => unreachable!("currency {} is not in the table", self.0),
        }
    }

    pub fn code(self) -> &'static str {
        self.entry().0
    }

    pub fn numeric(self) -> u16 {
        self.0
    }

    /// The number of decimal places of the minor unit (CNY 2, JPY 0, KWD 3).
    pub fn exponent(self) -> u8 {
        self.entry().2
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a decimal could not become an amount, or a balance a decimal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("{value} {currency} is negative")]
    Negative { value: Decimal, currency: Currency },
    #[error(
        "{value} {currency} has more than {exponent} decimal places; amounts are never rounded"
    )]
    ExcessPrecision {
        value: Decimal,
        currency: Currency,
        exponent: u8,
    },
    #[error("{value} {currency} does not fit in 64 bits of minor units")]
    Overflow { value: Decimal, currency: Currency },
    #[error("{minor_units} minor units of {currency} do not fit in a decimal")]
    TooLargeForDecimal {
        minor_units: u128,
        currency: Currency,
    },
}

impl Amount {
    /// Converts major units (`12.34` CNY) to minor units (`1234`), exactly.
    pub fn from_decimal(value: Decimal, currency: Currency) -> Result<Amount, AmountError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(AmountError::Negative { value, currency });
        }
        let normal = value.normalize();
        let exponent = currency.exponent();
        let scale = normal.scale();
        if scale > u32::from(exponent) {
            return Err(AmountError::ExcessPrecision {
                value,
                currency,
                exponent,
            });
        }
        let overflow = || AmountError::Overflow { value, currency };
        let factor = 10i128
            .checked_pow(u32::from(exponent) - scale)
            .ok_or_else(overflow)?;
        let minor = normal.mantissa().checked_mul(factor).ok_or_else(overflow)?;
        u64::try_from(minor).map(Amount).map_err(|_| overflow())
    }

    /// Converts minor units to major units; always exact.
    pub fn to_decimal(self, currency: Currency) -> Decimal {
        Decimal::from_i128_with_scale(i128::from(self.0), u32::from(currency.exponent()))
    }
}

/// Converts a balance (u128 minor units) to major units, or says it is too large for a decimal.
pub fn balance_to_decimal(minor_units: u128, currency: Currency) -> Result<Decimal, AmountError> {
    i128::try_from(minor_units)
        .ok()
        .and_then(|m| Decimal::try_from_i128_with_scale(m, u32::from(currency.exponent())).ok())
        .ok_or(AmountError::TooLargeForDecimal {
            minor_units,
            currency,
        })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal")
    }

    #[test]
    fn table_is_sorted_and_has_the_required_currencies() {
        assert!(TABLE.windows(2).all(|w| w[0].1 < w[1].1));
        for (code, exponent) in [
            ("CNY", 2),
            ("USD", 2),
            ("EUR", 2),
            ("HKD", 2),
            ("SGD", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
        ] {
            let c = Currency::from_code(code).expect(code);
            assert_eq!(c.exponent(), exponent, "{code}");
            assert_eq!(c.code(), code);
            assert_eq!(Currency::from_numeric(c.numeric()), Some(c));
        }
        assert_eq!(Currency::from_code("XXX"), None);
        assert_eq!(Currency::from_code("cny"), None);
        assert_eq!(Currency::from_numeric(0), None);
    }

    #[test]
    fn conversions_are_exact_or_errors() {
        assert_eq!(
            Amount::from_decimal(dec("12.34"), Currency::CNY),
            Ok(Amount(1234))
        );
        assert_eq!(
            Amount::from_decimal(dec("12.340000"), Currency::CNY),
            Ok(Amount(1234))
        );
        assert_eq!(
            Amount::from_decimal(dec("12"), Currency::KWD),
            Ok(Amount(12_000))
        );
        assert_eq!(
            Amount::from_decimal(dec("1.005"), Currency::KWD),
            Ok(Amount(1005))
        );
        assert_eq!(
            Amount::from_decimal(dec("500"), Currency::JPY),
            Ok(Amount(500))
        );
        assert_eq!(
            Amount::from_decimal(dec("-0"), Currency::JPY),
            Ok(Amount(0))
        );
        assert!(matches!(
            Amount::from_decimal(dec("12.345"), Currency::CNY),
            Err(AmountError::ExcessPrecision { exponent: 2, .. })
        ));
        assert!(matches!(
            Amount::from_decimal(dec("0.5"), Currency::JPY),
            Err(AmountError::ExcessPrecision { exponent: 0, .. })
        ));
        assert!(matches!(
            Amount::from_decimal(dec("-0.01"), Currency::CNY),
            Err(AmountError::Negative { .. })
        ));
        assert!(matches!(
            Amount::from_decimal(dec("184467440737095516.16"), Currency::CNY),
            Err(AmountError::Overflow { .. })
        ));
        assert_eq!(
            Amount::from_decimal(dec("184467440737095516.15"), Currency::CNY),
            Ok(Amount(u64::MAX))
        );
        assert!(matches!(
            Amount::from_decimal(Decimal::MAX, Currency::KWD),
            Err(AmountError::Overflow { .. })
        ));
        assert_eq!(Amount(1234).to_decimal(Currency::CNY), dec("12.34"));
        assert_eq!(Amount(7).to_decimal(Currency::KWD), dec("0.007"));
        assert_eq!(balance_to_decimal(1234, Currency::JPY), Ok(dec("1234")));
        assert!(balance_to_decimal(u128::MAX, Currency::JPY).is_err());
    }

    proptest! {
        #![proptest_config(proptest_config!("ledger_currency.txt"))]

        #[test]
        fn minor_units_round_trip(minor in any::<u64>(), index in 0..TABLE.len()) {
            let currency = Currency(TABLE[index].1);
            let decimal = Amount(minor).to_decimal(currency);
            prop_assert_eq!(Amount::from_decimal(decimal, currency), Ok(Amount(minor)));
            let balance = balance_to_decimal(u128::from(minor), currency);
            prop_assert_eq!(balance, Ok(decimal));
        }

        #[test]
        fn excess_precision_is_never_rounded(minor in 1u64..1_000_000_000, index in 0..TABLE.len()) {
            let currency = Currency(TABLE[index].1);
            // One more decimal place than the currency has, and not a multiple of ten.
            let scale = u32::from(currency.exponent()) + 1;
            let value = Decimal::from_i128_with_scale(i128::from(minor) * 10 + 3, scale);
            let is_excess = matches!(
                Amount::from_decimal(value, currency),
                Err(AmountError::ExcessPrecision { .. })
            );
            prop_assert!(is_excess);
        }
    }
}
