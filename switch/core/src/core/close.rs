//! Closing a clearing window: its settlement transfers, or an answer at once.

use std::sync::Arc;

use ledger::clearing::FeeSchedule;
use ledger::{
    AccountFlags, AccountId, Amount, NewAccount, Op, Timestamp, Transfer, TransferId, TransferKind,
};

use super::{Body, Core, Finish, HashSet, RequestId, Response};
use crate::clearing::{settlement_account, settlement_transfer_id};
use crate::codes::{Code, Reason};

impl Core {
    /// Nets the open window into settlement transfers (one linked chain, creating settlement
    /// accounts as needed), or answers at once: a closed window is already settled.
    #[allow(clippy::type_complexity)]
    pub(super) fn plan_close(
        &mut self,
        id: RequestId,
        window: u64,
        fees: &Arc<FeeSchedule>,
        now: Timestamp,
    ) -> Result<(Vec<Op>, Finish, Option<(String, AccountId)>), Response> {
        let open = self.clearing.open.id;
        if window > open {
            return Err(Response::new(
                id,
                Code::InvalidTransaction,
                Reason::WINDOW_NOT_FOUND,
            ));
        }
        if window < open {
            return Err(Response::approved(id, Body::WindowClosed(window)));
        }
        let settlement = self.clearing.settle(fees).map_err(|e| {
            tracing::error!(window, "clearing: {e}");
            Response::new(id, Code::SystemMalfunction, Reason::INTERNAL)
        })?;
        let mut ops = Vec::new();
        let mut created = HashSet::default();
        for (index, t) in settlement.transfers.iter().enumerate() {
            let from = settlement_account(t.from, t.currency);
            let to = settlement_account(t.to, t.currency);
            for (account, owner) in [(from, t.from), (to, t.to)] {
                if self.ledger.account(account).is_none() && created.insert(account.0) {
                    ops.push(Op::CreateAccount(NewAccount {
                        id: account,
                        currency: t.currency,
                        owner,
                        flags: AccountFlags::empty(),
                    }));
                }
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            ops.push(Op::Transfer(Transfer {
                id: TransferId(settlement_transfer_id(window, index)),
                debit_account_id: from,
                credit_account_id: to,
                amount: Amount(t.amount),
                currency: t.currency,
                kind: TransferKind::Single,
                code: 0,
            }));
        }
        if ops.len() > self.ledger.config().batch_len_max {
            tracing::error!(
                window,
                events = ops.len(),
                "clearing: the settlement does not fit in one ledger batch"
            );
            return Err(Response::new(id, Code::SystemMalfunction, Reason::INTERNAL));
        }
        if ops.is_empty() {
            self.clearing.close(now, settlement, fees.clone());
            return Err(Response::approved(id, Body::WindowClosed(window)));
        }
        self.closing = Some((settlement, fees.clone()));
        Ok((ops, Finish::CloseWindow, None))
    }
}
