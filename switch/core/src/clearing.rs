//! The switch's clearing state: the open window's totals per pair of participants, the
//! participants' exposure for their net debit caps, and the closed windows.
//!
//! Two tallies are kept of what a window clears. `cleared` is the switch's own bookkeeping,
//! from the authorizations and sales it remembers (who acquired, who issued). `moved` is read
//! back from the ledger after each transfer is applied: the accounts it actually debited and
//! credited and their owners. Reconciliation compares them at the close; they must agree.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ledger::clearing::{self, ClearingError, FeeSchedule, Kind, PairKey, PairTotals, Settlement};
use ledger::{AccountId, Currency, ParticipantId, Timestamp};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Top 32 bits of the ids of everything the switch makes for itself (accounts, settlement
/// transfers, scheduled closes). Client request ids may not use them.
pub const SYSTEM_PREFIX: u32 = 0xffff_fff0;

/// A participant's settlement account in `currency`.
pub fn settlement_account(participant: ParticipantId, currency: Currency) -> AccountId {
    AccountId(
        (u128::from(SYSTEM_PREFIX) << 96)
            | (1u128 << 88)
            | (u128::from(participant.0) << 16)
            | u128::from(currency.numeric()),
    )
}

/// The ledger id of the `index`th settlement transfer of `window`.
pub fn settlement_transfer_id(window: u64, index: u32) -> u128 {
    (u128::from(SYSTEM_PREFIX) << 96)
        | (1u128 << 88)
        | (u128::from(window) << 32)
        | u128::from(index)
}

/// The request id of the switch's own scheduled close of `window`.
pub fn scheduled_close_id(window: u64) -> u128 {
    (u128::from(SYSTEM_PREFIX) << 96) | (2u128 << 88) | u128::from(window)
}

pub fn is_system_id(id: u128) -> bool {
    (id >> 96) as u32 == SYSTEM_PREFIX
}

/// What a participant owes in one currency, for its net debit cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    /// Owed (positive) or due to it (negative) from the open window's purchases and refunds.
    pub net: i128,
    /// Live holds on its cards, and reservations of requests not yet applied.
    pub held: u128,
}

impl Exposure {
    pub fn total(&self) -> i128 {
        self.net
            .saturating_add(i128::try_from(self.held).unwrap_or(i128::MAX))
    }
}

/// A window, as ListWindows and WindowReport show it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub id: u64,
    pub open: bool,
    pub opened_at: Timestamp,
    pub closed_at: Timestamp,
    pub transfer_count: u64,
    pub positions: Vec<(ParticipantId, Currency, i128)>,
    /// Whether the ledger's movements matched the cleared totals.
    pub reconciled: bool,
}

/// A settlement's positions, by participant then currency, as a window records them.
fn positions(settlement: &Settlement) -> Vec<(ParticipantId, Currency, i128)> {
    settlement
        .positions
        .iter()
        .map(|(&(p, c), &net)| (p, c, net))
        .collect()
}

/// A pair's cleared totals beside what the ledger moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconciliationLine {
    pub key: PairKey,
    pub cleared: PairTotals,
    pub moved: PairTotals,
}

impl ReconciliationLine {
    pub fn purchases_difference(&self) -> i128 {
        self.moved.purchases as i128 - self.cleared.purchases as i128
    }

    pub fn refunds_difference(&self) -> i128 {
        self.moved.refunds as i128 - self.cleared.refunds as i128
    }

    pub fn is_zero(&self) -> bool {
        self.cleared == self.moved
    }
}

/// Everything the reports of a closed window say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowDetails {
    pub window: Window,
    pub settlement: Settlement,
    pub reconciliation: Vec<ReconciliationLine>,
    pub fees: Arc<FeeSchedule>,
}

/// The open window.
#[derive(Clone, Debug, Default)]
pub struct OpenWindow {
    pub id: u64,
    pub opened_at: Timestamp,
    pub cleared: HashMap<PairKey, PairTotals>,
    pub moved: HashMap<PairKey, PairTotals>,
    pub transfer_count: u64,
}

pub struct Clearing {
    pub open: OpenWindow,
    pub exposure: HashMap<(ParticipantId, Currency), Exposure>,
    /// Newest last, at most `kept`.
    pub closed: VecDeque<Window>,
    pub kept: usize,
    /// Closed windows whose reports are still to be written, for the server to take.
    pub reports: Vec<Arc<WindowDetails>>,
    /// Past this, report details are dropped (the window itself is still closed and settled).
    pub reports_max: usize,
}

impl Clearing {
    pub fn new(kept: usize) -> Self {
        Clearing {
            open: OpenWindow {
                id: 1,
                ..OpenWindow::default()
            },
            exposure: HashMap::default(),
            closed: VecDeque::new(),
            kept: kept.max(1),
            reports: Vec::new(),
            reports_max: 64,
        }
    }

    /// The first window opens with the first batch the switch executes.
    pub fn start(&mut self, now: Timestamp) {
        if self.open.opened_at.0 == 0 {
            self.open.opened_at = now;
        }
    }

    /// Whether a schedule closing every `interval_ns` (at multiples of it since the epoch,
    /// so a day is midnight UTC) has passed a cut-off since the open window opened.
    pub fn due(&self, now: Timestamp, interval_ns: u64) -> bool {
        interval_ns != 0
            && self.open.opened_at.0 != 0
            && now.0 / interval_ns > self.open.opened_at.0 / interval_ns
    }

    pub fn exposure(&self, participant: ParticipantId, currency: Currency) -> Exposure {
        self.exposure
            .get(&(participant, currency))
            .copied()
            .unwrap_or_default()
    }

    pub fn hold(&mut self, issuer: ParticipantId, currency: Currency, amount: u64) {
        let e = self.exposure.entry((issuer, currency)).or_default();
        e.held += u128::from(amount);
    }

    /// Gives back `amount` that `hold` counted. More than is held is a bookkeeping bug (a
    /// hold released twice, or never made): a debug build stops there; a release build logs
    /// it and holds nothing rather than wrap.
    pub fn release(&mut self, issuer: ParticipantId, currency: Currency, amount: u64) {
        let e = self.exposure.entry((issuer, currency)).or_default();
        let held = e.held;
        debug_assert!(
            held >= u128::from(amount),
            "release of {amount} over the {held} held for participant {} in {currency}",
            issuer.0
        );
        e.held = held.checked_sub(u128::from(amount)).unwrap_or_else(|| {
            tracing::error!(
                participant = issuer.0,
                %currency,
                amount,
                held = %held,
                "clearing: a release over what is held; holding nothing"
            );
            0
        });
    }

    /// A capture, sale or refund cleared in the open window, as the switch's bookkeeping
    /// says (`cleared`).
    pub fn clear(
        &mut self,
        kind: Kind,
        acquirer: ParticipantId,
        issuer: ParticipantId,
        currency: Currency,
        amount: u64,
    ) {
        let key = PairKey {
            currency,
            acquirer,
            issuer,
        };
        self.open.cleared.entry(key).or_default().add(kind, amount);
        self.open.transfer_count += 1;
        let signed = i128::from(amount);
        let (payer, payee) = match kind {
            Kind::Purchase => (issuer, acquirer),
            Kind::Refund => (acquirer, issuer),
        };
        if payer != payee {
            self.exposure.entry((payer, currency)).or_default().net += signed;
            self.exposure.entry((payee, currency)).or_default().net -= signed;
        }
    }

    /// The same transfer as the ledger moved it: from the owner of the debited account to the
    /// owner of the credited one.
    pub fn moved(
        &mut self,
        kind: Kind,
        debited_owner: ParticipantId,
        credited_owner: ParticipantId,
        currency: Currency,
        amount: u64,
    ) {
        let (acquirer, issuer) = match kind {
            Kind::Purchase => (credited_owner, debited_owner),
            Kind::Refund => (debited_owner, credited_owner),
        };
        let key = PairKey {
            currency,
            acquirer,
            issuer,
        };
        self.open.moved.entry(key).or_default().add(kind, amount);
    }

    /// Nets the open window; nothing changes until `close` takes the result.
    pub fn settle(&self, fees: &FeeSchedule) -> Result<Settlement, ClearingError> {
        let pairs: BTreeMap<PairKey, PairTotals> =
            self.open.cleared.iter().map(|(k, v)| (*k, *v)).collect();
        clearing::settle(&pairs, fees)
    }

    /// Closes the open window at `now` with its `settlement` and opens the next.
    pub fn close(&mut self, now: Timestamp, settlement: Settlement, fees: Arc<FeeSchedule>) {
        let open = std::mem::take(&mut self.open);
        let mut keys: Vec<PairKey> = open
            .cleared
            .keys()
            .chain(open.moved.keys())
            .copied()
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let reconciliation: Vec<ReconciliationLine> = keys
            .into_iter()
            .map(|key| ReconciliationLine {
                key,
                cleared: open.cleared.get(&key).copied().unwrap_or_default(),
                moved: open.moved.get(&key).copied().unwrap_or_default(),
            })
            .collect();
        let window = Window {
            id: open.id,
            open: false,
            opened_at: open.opened_at,
            closed_at: now,
            transfer_count: open.transfer_count,
            positions: positions(&settlement),
            reconciled: reconciliation.iter().all(ReconciliationLine::is_zero),
        };
        self.open = OpenWindow {
            id: open.id + 1,
            opened_at: now,
            ..OpenWindow::default()
        };
        // Positions are settled: what participants owe starts again from nothing.
        for e in self.exposure.values_mut() {
            e.net = 0;
        }
        self.exposure.retain(|_, e| e.held != 0);
        if self.closed.len() == self.kept {
            self.closed.pop_front();
        }
        self.closed.push_back(window.clone());
        if self.reports.len() == self.reports_max {
            // The core refuses closes past this room in a batch; this is for replay only.
            tracing::warn!(
                window = self.reports[0].window.id,
                "a closed window's report is not written: more than {} waiting",
                self.reports_max
            );
            self.reports.remove(0);
        }
        self.reports.push(Arc::new(WindowDetails {
            window,
            settlement,
            reconciliation,
            fees,
        }));
    }

    /// The open window as WindowReport shows it: its positions are live, what a close now
    /// with `fees` would settle (the same arithmetic as `close`).
    pub fn open_report(&self, fees: &FeeSchedule) -> Result<Window, ClearingError> {
        let settlement = self.settle(fees)?;
        Ok(Window {
            positions: positions(&settlement),
            ..self.open_view()
        })
    }

    /// The open window as ListWindows shows it. Its `opened_at` is 0 until the first command
    /// is logged: the first window opens with it (`start`).
    pub fn open_view(&self) -> Window {
        Window {
            id: self.open.id,
            open: true,
            opened_at: self.open.opened_at,
            closed_at: Timestamp(0),
            transfer_count: self.open.transfer_count,
            positions: Vec::new(),
            reconciled: true,
        }
    }

    pub fn find(&self, id: u64) -> Option<&Window> {
        let newest = self.closed.back()?.id;
        let back = usize::try_from(newest.checked_sub(id)?).ok()?;
        let index = self.closed.len().checked_sub(1 + back)?;
        self.closed.get(index).filter(|w| w.id == id)
    }
}
