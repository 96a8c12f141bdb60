//! The workloads of `benches/WORKLOADS.md`, which are TigerBeetle's own benchmark
//! workloads (`src/tigerbeetle/benchmark_load.zig`), generated ahead of time so that generation
//! is never what is measured.
//!
//! - 10,000 accounts in one currency, no balance-limit flags, created first;
//! - single-phase transfers with unique, increasing ids;
//! - amount: 1 + a sample of an exponential distribution with mean 10,000 (minor units);
//! - uniform: debit and credit drawn uniformly from all accounts; if equal, credit is the next;
//! - zipfian: debit and credit drawn by YCSB's zipfian generator with θ = 0.99 (`loadgen/src/zipf.rs`),
//!   with account ranks shuffled so that hot accounts are spread over the id space;
//! - hot: 10 hot accounts; half the transfers debit a uniformly chosen hot one; every other
//!   debit and every credit is uniform over the remaining 9,990.

use ledger::{
    AccountFlags, AccountId, Amount, Currency, Event, NewAccount, ParticipantId, Transfer,
    TransferId, TransferKind,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

/// YCSB's zipfian generator lives in `loadgen`, which draws its customers and merchants with it.
pub use loadgen::zipf;

use zipf::ZipfianShuffled;

pub const ACCOUNTS: u64 = 10_000;
pub const HOT_ACCOUNTS: u64 = 10;
pub const ZIPF_EXPONENT: f64 = 0.99;
pub const AMOUNT_MEAN: f64 = 10_000.0;
pub const CURRENCY: Currency = Currency::USD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Uniform,
    Zipfian,
    Hot,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Uniform, Workload::Zipfian, Workload::Hot];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::Zipfian => "zipfian",
            Workload::Hot => "hot",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// Account ids are 1..=ACCOUNTS.
pub fn account_id(index: u64) -> AccountId {
    AccountId(u128::from(index) + 1)
}

/// The account-creation batches (at most `batch_len` events each).
pub fn account_batches(batch_len: usize) -> Vec<Vec<Event>> {
    let events: Vec<Event> = (0..ACCOUNTS)
        .map(|i| {
            Event::from(NewAccount {
                id: account_id(i),
                currency: CURRENCY,
                owner: ParticipantId(1),
                flags: AccountFlags::empty(),
            })
        })
        .collect();
    events
        .chunks(batch_len.max(1))
        .map(<[Event]>::to_vec)
        .collect()
}

/// Draws (debit, credit) account indexes for one workload.
pub struct Picker {
    workload: Workload,
    /// YCSB's zipfian generator (Gray et al.), ranks shuffled over the accounts.
    zipf: ZipfianShuffled,
}

impl Picker {
    pub fn new(workload: Workload, rng: &mut StdRng) -> Picker {
        Picker {
            workload,
            zipf: ZipfianShuffled::new(ACCOUNTS, ZIPF_EXPONENT, rng),
        }
    }

    pub fn pick(&self, rng: &mut StdRng) -> (u64, u64) {
        match self.workload {
            Workload::Uniform => {
                let debit = rng.gen_range(0..ACCOUNTS);
                let mut credit = rng.gen_range(0..ACCOUNTS);
                if credit == debit {
                    credit = (debit + 1) % ACCOUNTS;
                }
                (debit, credit)
            }
            Workload::Zipfian => {
                let debit = self.zipf.next(rng);
                let mut credit = self.zipf.next(rng);
                if credit == debit {
                    credit = (debit + 1) % ACCOUNTS;
                }
                (debit, credit)
            }
            Workload::Hot => {
                let cold = || HOT_ACCOUNTS..ACCOUNTS;
                let debit = if rng.gen_bool(0.5) {
                    rng.gen_range(0..HOT_ACCOUNTS)
                } else {
                    rng.gen_range(cold())
                };
                let mut credit = rng.gen_range(cold());
                if credit == debit {
                    credit = if credit + 1 == ACCOUNTS {
                        HOT_ACCOUNTS
                    } else {
                        credit + 1
                    };
                }
                (debit, credit)
            }
        }
    }
}

/// `transfers` transfers in batches of `batch_len`, ids from `first_id` up.
pub fn transfer_batches(
    workload: Workload,
    transfers: u64,
    batch_len: usize,
    first_id: u128,
    seed: u64,
) -> Vec<Vec<Event>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let picker = Picker::new(workload, &mut rng);
    let exp = Exp::new(1.0 / AMOUNT_MEAN).expect("positive rate");
    let batch_len = batch_len.max(1);
    let mut batches = Vec::with_capacity((transfers as usize).div_ceil(batch_len));
    let mut batch = Vec::with_capacity(batch_len);
    for i in 0..transfers {
        let (debit, credit) = picker.pick(&mut rng);
        let amount = 1 + exp.sample(&mut rng) as u64;
        batch.push(Event::from(Transfer {
            id: TransferId(first_id + u128::from(i)),
            debit_account_id: account_id(debit),
            credit_account_id: account_id(credit),
            amount: Amount(amount),
            currency: CURRENCY,
            kind: TransferKind::Single,
            code: 0,
        }));
        if batch.len() == batch_len {
            batches.push(std::mem::replace(&mut batch, Vec::with_capacity(batch_len)));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Peak and current resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Field `n` (counted from 1, as in `proc(5)`) of `/proc/self/stat`, or 0 if it cannot be read.
fn stat_field(n: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 3 on follow the command name (field 2), which is in parentheses and may hold
    // spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    n.checked_sub(3)
        .and_then(|i| rest.split_whitespace().nth(i))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// Minor page faults of this process so far (`minflt`): each is a page touched for the first
/// time, or again after the kernel took it back.
pub fn minor_faults() -> u64 {
    stat_field(10)
}

/// CPU time of this process so far (`utime` + `stime`), at 100 ticks/s.
pub fn cpu_seconds() -> f64 {
    (stat_field(14) + stat_field(15)) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn transfers(workload: Workload, n: u64) -> Vec<Transfer> {
        transfer_batches(workload, n, 1000, 1, 7)
            .into_iter()
            .flatten()
            .map(|e| match e.op {
                ledger::Op::Transfer(t) => t,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// The CPU clock reads this process's own time: it starts above zero and grows while
    /// the process works (bounded: a broken parse reads zero for ever and fails here).
    #[test]
    fn cpu_seconds_counts_this_process_working() {
        let before = cpu_seconds();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 1u64;
        while cpu_seconds() <= before && std::time::Instant::now() < deadline {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        assert!(
            cpu_seconds() > before,
            "no CPU time counted ({before} s before)"
        );
    }

    /// Touching 64 MiB of fresh memory takes thousands of page faults (a broken parse reads
    /// zero, or a field that does not move).
    #[test]
    fn minor_faults_count_fresh_pages_touched() {
        let before = minor_faults();
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = minor_faults();
        assert!(
            after >= before + 4_000,
            "{before} then {after} faults for {} bytes",
            touched.len()
        );
    }

    #[test]
    fn common_rules_hold_for_every_workload() {
        for workload in Workload::ALL {
            let ts = transfers(workload, 50_000);
            assert_eq!(ts.len(), 50_000);
            assert!(ts.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
            assert!(ts.iter().all(|t| t.debit_account_id != t.credit_account_id));
            assert!(
                ts.iter()
                    .all(|t| (1..=u128::from(ACCOUNTS)).contains(&t.debit_account_id.0))
            );
            assert!(ts.iter().all(|t| t.amount.0 >= 1));
            let mean = ts.iter().map(|t| t.amount.0 as f64).sum::<f64>() / ts.len() as f64;
            assert!(
                (mean - 10_001.0).abs() < 300.0,
                "{workload:?} mean amount {mean}"
            );
        }
    }

    #[test]
    fn hot_sends_half_the_debits_to_ten_accounts_and_no_credits() {
        let ts = transfers(Workload::Hot, 50_000);
        let hot = |id: AccountId| id.0 <= u128::from(HOT_ACCOUNTS);
        let share = ts.iter().filter(|t| hot(t.debit_account_id)).count() as f64 / ts.len() as f64;
        assert!((share - 0.5).abs() < 0.02, "hot debit share {share}");
        assert!(ts.iter().all(|t| !hot(t.credit_account_id)));
    }

    #[test]
    fn zipfian_is_skewed_and_spread_over_the_id_space() {
        let ts = transfers(Workload::Zipfian, 50_000);
        let mut counts: HashMap<u128, u64> = HashMap::new();
        for t in &ts {
            *counts.entry(t.debit_account_id.0).or_default() += 1;
        }
        let mut by_count: Vec<(u128, u64)> = counts.into_iter().collect();
        by_count.sort_by_key(|c| std::cmp::Reverse(c.1));
        let top10: u64 = by_count.iter().take(10).map(|c| c.1).sum();
        // With exponent 0.99 over 10,000 ranks the top ten take about a quarter of the draws.
        let share = top10 as f64 / ts.len() as f64;
        assert!((0.18..0.35).contains(&share), "top-ten share {share}");
        // Shuffled ranks: the hottest accounts are not simply the lowest ids.
        assert!(
            by_count.iter().take(10).any(|c| c.0 > 100),
            "{:?}",
            &by_count[..10]
        );
        let uniform = transfers(Workload::Uniform, 50_000);
        let max_uniform = uniform
            .iter()
            .fold(HashMap::<u128, u64>::new(), |mut m, t| {
                *m.entry(t.debit_account_id.0).or_default() += 1;
                m
            })
            .into_values()
            .max()
            .unwrap_or(0);
        assert!(by_count[0].1 > 10 * max_uniform);
    }
}
