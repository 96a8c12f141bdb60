//! What every lane of a run shares: the run's tags and accounts, the model and the follow-ups
//! under one lock, the measurements under another, and whether the connection was lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switch::wire::{AccountId, CardNumber, Currency};

use super::flows::{FollowUp, Sent};
use super::retries::Retries;
use crate::config::Options;
use crate::mix::Mix;
use crate::model::Model;
use crate::stats::Stats;
use crate::throttle::Throttle;
use crate::verify::Seen;

/// Rounds of asking again for requests that got no answer.
pub(super) const RESOLVE_ROUNDS_MAX: u32 = 3;

/// What answers change, under one lock: the model, the follow-ups waiting for a slot, the
/// requests with no answer yet.
pub(super) struct State {
    pub(super) model: Model,
    pub(super) follow_ups: VecDeque<FollowUp>,
    /// Requests refused as busy, waiting to go again (bounded like the follow-ups).
    pub(super) retries: Retries,
    /// Authorizations and sales refused and given up (the first `ABANDONED_KEPT_MAX`): the
    /// switch must not know them.
    pub(super) abandoned: Vec<u128>,
    /// Requests with no definitive answer yet.
    pub(super) unknown: Vec<Sent>,
    pub(super) rng: StdRng,
    /// The issuer's funding account before this run funded anything.
    pub(super) funding_before: Seen,
    pub(super) sales_approved: u64,
    pub(super) follow_ups_dropped: u64,
    /// New payments refused here while the switch sheds (`--throttle-k`).
    pub(super) throttle: Throttle,
}

/// The measurements, under a lock of their own, and when measuring began.
pub(super) struct Measure {
    pub(super) stats: Stats,
    pub(super) origin: Instant,
}

/// What the session and every lane and worker task share.
pub(super) struct Shared {
    pub(super) options: Arc<Options>,
    pub(super) mix: Mix,
    pub(super) wire_currency: Currency,
    /// High 64 bits of every request id of this run.
    pub(super) run_tag: u64,
    /// Bits 40.. of every account id of this run.
    pub(super) account_tag: u128,
    /// Every customer's card number, made once (setup and every payment use them).
    pub(super) cards: Vec<CardNumber>,
    pub(super) next_id: AtomicU64,
    /// Frames answered so far (for `Faults::lose_frame`).
    pub(super) frames: AtomicU64,
    pub(super) follow_ups_max: usize,
    /// Set when a connection or stream to the switch is lost: why, and when.
    pub(super) lost: OnceLock<(String, Instant)>,
    pub(super) state: Mutex<State>,
    pub(super) measure: Mutex<Measure>,
}

impl Shared {
    pub(super) fn next_id(&self) -> u128 {
        (u128::from(self.run_tag) << 64) | u128::from(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(super) fn customer_account(&self, i: u32) -> AccountId {
        AccountId(self.account_tag | (1 << 32) | u128::from(i))
    }

    pub(super) fn merchant_account(&self, i: u32) -> AccountId {
        AccountId(self.account_tag | (2 << 32) | u128::from(i))
    }

    pub(super) fn card(&self, i: u32) -> CardNumber {
        self.cards[i as usize]
    }

    pub(super) fn funding_account(&self) -> AccountId {
        let ledger_id = switch::core::funding_account(
            ledger::ParticipantId(self.options.issuer),
            self.options.currency,
        );
        AccountId(ledger_id.0)
    }

    /// The run's tags, cards and empty model, all drawn from `options.seed`.
    pub(super) fn new(options: Arc<Options>) -> Shared {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let mix = Mix::new(&options.mix, options.customers, options.merchants, &mut rng);
        let run_tag = rng.gen_range(1..u64::MAX);
        let account_tag_bits: u32 = rng.gen_range(1..u32::MAX);
        let follow_ups_max =
            options.lanes() * options.depth.max(options.open_depth) * options.batch_max
                + options.setup_batch * RESOLVE_ROUNDS_MAX as usize;
        Shared {
            mix,
            wire_currency: Currency(options.currency.numeric()),
            run_tag,
            account_tag: u128::from(account_tag_bits) << 40,
            cards: (0..options.customers)
                .map(|i| {
                    // Prefix, the run's number, the customer: at most 4 + 6 + 9 digits.
                    let run = u64::from(account_tag_bits) % 1_000_000;
                    let digits = format!("{}{run:06}{i:09}", options.card_prefix);
                    CardNumber::new(&digits).expect("digits only, at most 19, checked in options")
                })
                .collect(),
            next_id: AtomicU64::new(1),
            frames: AtomicU64::new(0),
            follow_ups_max,
            lost: OnceLock::new(),
            state: Mutex::new(State {
                model: Model::new(options.customers as usize, options.merchants as usize),
                follow_ups: VecDeque::new(),
                retries: Retries::new(Instant::now()),
                abandoned: Vec::new(),
                unknown: Vec::new(),
                rng: StdRng::seed_from_u64(rng.r#gen()),
                funding_before: Seen::default(),
                sales_approved: 0,
                follow_ups_dropped: 0,
                throttle: Throttle::new(options.throttle_k, Instant::now()),
            }),
            measure: Mutex::new(Measure {
                stats: Stats::default(),
                origin: Instant::now(),
            }),
            options,
        }
    }
}

impl Shared {
    pub(super) fn scheduled(&self, intended: &[Instant]) {
        let mut m = self.measure.lock();
        let origin = m.origin;
        for &at in intended {
            m.stats.scheduled(at.saturating_duration_since(origin), 1);
        }
    }

    /// The connection to the switch is gone: the run stops sending (the first reason is kept).
    pub(super) fn lose(&self, reason: String) {
        let _ = self.lost.set((reason, Instant::now()));
    }

    pub(super) fn is_lost(&self) -> bool {
        self.lost.get().is_some()
    }
}
