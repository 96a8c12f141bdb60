//! What a run sends: payment flows in configured proportions, over customers and merchants
//! drawn with Zipf skew, with an optional hot merchant.
//!
//! A flow is one to two requests: authorize then capture (some partial), authorize then
//! reverse, authorize and let it expire, sale, sale then refund, balance inquiry.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::Serialize;

use crate::zipf::ZipfianShuffled;

/// A kind of payment flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    AuthCapture,
    AuthReverse,
    AuthExpire,
    Sale,
    Refund,
    Balance,
}

impl Flow {
    pub const ALL: [Flow; 6] = [
        Flow::AuthCapture,
        Flow::AuthReverse,
        Flow::AuthExpire,
        Flow::Sale,
        Flow::Refund,
        Flow::Balance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Flow::AuthCapture => "auth_capture",
            Flow::AuthReverse => "auth_reverse",
            Flow::AuthExpire => "auth_expire",
            Flow::Sale => "sale",
            Flow::Refund => "refund",
            Flow::Balance => "balance",
        }
    }
}

/// A request kind, as measured and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Authorize,
    Capture,
    Reverse,
    Sale,
    Refund,
    Balance,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Authorize,
        OpKind::Capture,
        OpKind::Reverse,
        OpKind::Sale,
        OpKind::Refund,
        OpKind::Balance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Authorize => "authorize",
            OpKind::Capture => "capture",
            OpKind::Reverse => "reverse",
            OpKind::Sale => "sale",
            OpKind::Refund => "refund",
            OpKind::Balance => "balance",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Relative weights of the flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Weights(pub [u32; 6]);

impl Default for Weights {
    fn default() -> Self {
        // auth_capture, auth_reverse, auth_expire, sale, refund, balance
        Weights([35, 5, 5, 35, 10, 10])
    }
}

impl Weights {
    pub fn get(&self, flow: Flow) -> u32 {
        self.0[flow as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|&w| u64::from(w)).sum()
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Flow::ALL
            .iter()
            .map(|&flow| format!("{}={}", flow.name(), self.get(flow)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Weights {
    type Err = String;

    /// `auth_capture=30,sale=50`: flows not named get weight 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = [0u32; 6];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected flow=weight"))?;
            let flow = Flow::ALL
                .into_iter()
                .find(|f| f.name() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<&str> = Flow::ALL.iter().map(|f| f.name()).collect();
                    format!("`{name}`: unknown flow (known: {})", names.join(", "))
                })?;
            weights[flow as usize] = value
                .trim()
                .parse()
                .map_err(|e| format!("`{part}`: weight: {e}"))?;
        }
        let w = Weights(weights);
        if w.total() == 0 {
            return Err("at least one flow needs a weight above 0".into());
        }
        Ok(w)
    }
}

/// Draws indexes in `0..n`: uniformly, or zipfian with ranks shuffled over the range.
#[derive(Clone, Debug)]
pub enum Picker {
    Uniform(u64),
    Zipf(ZipfianShuffled),
}

impl Picker {
    /// `theta` 0 means uniform; otherwise in (0, 1).
    pub fn new<R: Rng + ?Sized>(n: u64, theta: f64, rng: &mut R) -> Picker {
        assert!(n > 0, "nothing to pick from");
        if theta <= 0.0 || n < 2 {
            Picker::Uniform(n)
        } else {
            Picker::Zipf(ZipfianShuffled::new(n, theta, rng))
        }
    }

    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            Picker::Uniform(n) => rng.gen_range(0..*n),
            Picker::Zipf(z) => z.next(rng),
        }
    }
}

/// Everything that decides what a new flow looks like.
#[derive(Clone, Debug)]
pub struct Mix {
    weights: Weights,
    /// Share of captures that capture less than was authorized.
    partial_capture: f64,
    customers: Picker,
    merchants: Picker,
    /// Merchant 0 takes this share of all payments.
    hot_merchant_share: f64,
    /// Payment amounts in minor units, uniform in `amount_min..=amount_max`.
    amount_min: u64,
    amount_max: u64,
}

/// The first request of a flow, as drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    pub flow: Flow,
    pub customer: u64,
    pub merchant: u64,
    pub amount: u64,
}

#[derive(Clone, Debug)]
pub struct MixConfig {
    pub weights: Weights,
    pub partial_capture: f64,
    pub zipf_theta: f64,
    pub hot_merchant_share: f64,
    pub amount_min: u64,
    pub amount_max: u64,
}

impl Mix {
    /// Draws over `customers` customers and `merchants` merchants.
    pub fn new<R: Rng + ?Sized>(
        config: &MixConfig,
        customers: u64,
        merchants: u64,
        rng: &mut R,
    ) -> Mix {
        assert!(config.amount_min >= 1 && config.amount_min <= config.amount_max);
        Mix {
            weights: config.weights,
            partial_capture: config.partial_capture.clamp(0.0, 1.0),
            customers: Picker::new(customers, config.zipf_theta, rng),
            merchants: Picker::new(merchants, config.zipf_theta, rng),
            hot_merchant_share: config.hot_merchant_share.clamp(0.0, 1.0),
            amount_min: config.amount_min,
            amount_max: config.amount_max,
        }
    }

    pub fn flow<R: Rng + ?Sized>(&self, rng: &mut R) -> Flow {
        let mut x = rng.gen_range(0..self.weights.total());
        for flow in Flow::ALL {
            let w = u64::from(self.weights.get(flow));
            if x < w {
                return flow;
            }
            x -= w;
        }
        unreachable!("the weights sum to more than the draw")
    }

    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Draw {
        let flow = self.flow(rng);
        let merchant = if self.hot_merchant_share > 0.0 && rng.gen_bool(self.hot_merchant_share) {
            0
        } else {
            self.merchants.pick(rng)
        };
        Draw {
            flow,
            customer: self.customers.pick(rng),
            merchant,
            amount: rng.gen_range(self.amount_min..=self.amount_max),
        }
    }

    /// What to capture of an authorization of `amount`: all of it, or (partial) some of it.
    pub fn capture_amount<R: Rng + ?Sized>(&self, amount: u64, rng: &mut R) -> u64 {
        if amount > 1 && rng.gen_bool(self.partial_capture) {
            rng.gen_range(1..amount)
        } else {
            amount
        }
    }

    /// A refund of a sale of `amount`: between one minor unit and all of it.
    pub fn refund_amount<R: Rng + ?Sized>(&self, amount: u64, rng: &mut R) -> u64 {
        rng.gen_range(1..=amount.max(1))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn config() -> MixConfig {
        MixConfig {
            weights: Weights::default(),
            partial_capture: 0.3,
            zipf_theta: 0.99,
            hot_merchant_share: 0.0,
            amount_min: 100,
            amount_max: 20_000,
        }
    }

    #[test]
    fn weights_parse_and_print() {
        let w: Weights = "sale=3, refund=1".parse().expect("valid");
        assert_eq!(w.0, [0, 0, 0, 3, 1, 0]);
        assert_eq!(w.to_string().parse::<Weights>(), Ok(w));
        assert!("sale".parse::<Weights>().is_err());
        assert!("bogus=1".parse::<Weights>().is_err());
        assert!("sale=0".parse::<Weights>().is_err());
        assert!("sale=-1".parse::<Weights>().is_err());
    }

    #[test]
    fn flows_follow_the_weights() {
        let mut c = config();
        c.weights = "sale=3,balance=1".parse().expect("valid");
        let mut rng = StdRng::seed_from_u64(1);
        let mix = Mix::new(&c, 1000, 100, &mut rng);
        let n = 40_000;
        let sales = (0..n).filter(|_| mix.flow(&mut rng) == Flow::Sale).count();
        let share = sales as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    #[test]
    fn hot_merchant_takes_its_share_and_amounts_stay_in_range() {
        let mut c = config();
        c.hot_merchant_share = 0.5;
        c.zipf_theta = 0.0;
        let mut rng = StdRng::seed_from_u64(2);
        let mix = Mix::new(&c, 1000, 100, &mut rng);
        let draws: Vec<Draw> = (0..20_000).map(|_| mix.draw(&mut rng)).collect();
        let hot = draws.iter().filter(|d| d.merchant == 0).count() as f64 / draws.len() as f64;
        // Half by the option, and 1/100 of the other half by chance.
        assert!((hot - 0.505).abs() < 0.02, "{hot}");
        assert!(draws.iter().all(|d| (100..=20_000).contains(&d.amount)));
        assert!(draws.iter().all(|d| d.customer < 1000 && d.merchant < 100));
        for d in &draws {
            let captured = mix.capture_amount(d.amount, &mut rng);
            assert!((1..=d.amount).contains(&captured));
            let refunded = mix.refund_amount(d.amount, &mut rng);
            assert!((1..=d.amount).contains(&refunded));
        }
    }

    #[test]
    fn partial_captures_happen_at_the_configured_share() {
        let mut rng = StdRng::seed_from_u64(3);
        let mix = Mix::new(&config(), 1000, 100, &mut rng);
        let partial = (0..10_000)
            .filter(|_| mix.capture_amount(1000, &mut rng) < 1000)
            .count();
        assert!((2700..3300).contains(&partial), "{partial}");
    }
}
