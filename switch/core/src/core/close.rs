//! Closing a clearing window: its settlement transfers go to the ledger as one linked chain in
//! the close's own wave, and the window closes once they are applied; a window with nothing to
//! settle closes at once, and a closed one is answered from the window list.

use std::sync::Arc;

use ledger::clearing::{FeeSchedule, Settlement};
use ledger::{AccountFlags, Amount, NewAccount, Op, Timestamp, Transfer, TransferId, TransferKind};

use super::{Body, Command, Core, Finish, HashSet, Plan, RequestId, Response};
use crate::clearing::{settlement_account, settlement_transfer_id};
use crate::codes::{Code, Reason};

/// What the closes of one batch may still take: bytes of its log record (each close carries
/// the fee schedule), and reports for the stage to hand to the report writer after it.
pub(super) struct CloseRoom {
    logged_bytes: usize,
    reports: usize,
}

impl CloseRoom {
    pub(super) fn new(core: &Core) -> Self {
        let clearing = &core.clearing;
        CloseRoom {
            logged_bytes: core.config.closes_logged_bytes_max,
            reports: clearing.reports_max.saturating_sub(clearing.reports.len()),
        }
    }

    /// Takes the room `close` needs, if it is there.
    pub(super) fn take(&mut self, close: &Command) -> bool {
        let len = crate::journal::logged_len(close);
        if len > self.logged_bytes || self.reports == 0 {
            return false;
        }
        self.logged_bytes -= len;
        self.reports -= 1;
        true
    }
}

impl Core {
    /// A close of `window` (0: the open one) with the fee schedule in force now.
    pub(super) fn close_command(&self, window: u64) -> Command {
        Command::CloseWindow {
            window: if window == 0 {
                self.clearing.open.id
            } else {
                window
            },
            fees: self.config.fees.clone(),
        }
    }

    /// Nets the open window into settlement transfers (one linked chain, creating settlement
    /// accounts as needed), or answers at once: a closed window is already settled.
    pub(super) fn plan_close(
        &mut self,
        id: RequestId,
        window: u64,
        fees: &Arc<FeeSchedule>,
        now: Timestamp,
    ) -> Result<Plan, Response> {
        let open = self.clearing.open.id;
        if window > open {
            return Err(Response::new(
                id,
                Code::InvalidTransaction,
                Reason::WINDOW_NOT_FOUND,
            ));
        }
        if window < open {
            return Plan::answer(Response::approved(id, Body::WindowClosed(window)));
        }
        let malfunction = || Response::new(id, Code::SystemMalfunction, Reason::INTERNAL);
        let settlement = self.clearing.settle(fees).map_err(|e| {
            tracing::error!(window, "clearing: {e}");
            malfunction()
        })?;
        let events = self.settlement_events(window, &settlement);
        if events.len() > self.ledger.config().batch_len_max {
            tracing::error!(
                window,
                events = events.len(),
                "clearing: the settlement does not fit in one ledger batch"
            );
            return Err(malfunction());
        }
        if events.is_empty() {
            self.clearing.close(now, settlement, fees.clone());
            return Plan::answer(Response::approved(id, Body::WindowClosed(window)));
        }
        self.closing = Some((settlement, fees.clone()));
        Ok(Plan::Apply {
            events,
            finish: Finish::CloseWindow,
        })
    }

    /// The settlement's transfers, each after the creation of the settlement accounts it
    /// needs that the ledger does not hold yet.
    fn settlement_events(&self, window: u64, settlement: &Settlement) -> Vec<Op> {
        let mut events = Vec::new();
        let mut created = HashSet::default();
        for (index, t) in settlement.transfers.iter().enumerate() {
            let from = settlement_account(t.from, t.currency);
            let to = settlement_account(t.to, t.currency);
            for (account, owner) in [(from, t.from), (to, t.to)] {
                if self.ledger.account(account).is_none() && created.insert(account.0) {
                    events.push(Op::CreateAccount(NewAccount {
                        id: account,
                        currency: t.currency,
                        owner,
                        flags: AccountFlags::empty(),
                    }));
                }
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            events.push(Op::Transfer(Transfer {
                id: TransferId(settlement_transfer_id(window, index)),
                debit_account_id: from,
                credit_account_id: to,
                amount: Amount(t.amount),
                currency: t.currency,
                kind: TransferKind::Single,
                code: 0,
            }));
        }
        events
    }

    /// The settlement is applied: the window closes with it, and the next one opens.
    pub(super) fn finish_close(&mut self, id: RequestId, now: Timestamp) -> Response {
        let window = self.clearing.open.id;
        if let Some((settlement, fees)) = self.closing.take() {
            self.clearing.close(now, settlement, fees);
        }
        Response::approved(id, Body::WindowClosed(window))
    }
}
