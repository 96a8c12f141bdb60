//! The end of a run: learn the outcome of every unanswered request, end the holds their flow
//! left live, await the holds meant to expire, read every account and status back, compare.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switch::wire::{
    AccountId, BalanceTarget, Operation, Request, RequestId, ResponseBody, ResponseCode,
    TransferState,
};

use super::Session;
use super::flows::{FOLLOW_UP_TRIES_MAX, Sent, Step};
use super::shared::RESOLVE_ROUNDS_MAX;
use crate::mix::Flow;
use crate::verify::{self, Observed, Seen, SeenStatus, Verification};

impl Session {
    /// Learns the outcome of every unanswered request, ends holds that their flow left live,
    /// waits for the holds meant to expire, reads every account and status back, and compares.
    pub async fn verify(&self) -> anyhow::Result<Verification> {
        self.check_lost("during the load")?;
        self.resolve_unknown().await;
        let cleanup_reversals = self.cleanup().await;
        // A reversal of the cleanup left without an answer is asked again like the others.
        let unanswered = self.resolve_unknown().await;
        self.await_expiry().await;
        let observed = self.observe().await;
        self.check_lost("while verifying")?;
        let state = self.shared.state.lock();
        let mut v = verify::compare(
            &state.model,
            &observed,
            self.options.currency,
            &unanswered,
            self.options.switch_remembers,
        );
        v.cleanup_reversals = cleanup_reversals;
        Ok(v)
    }

    /// Asks again, with the same request ids, for every request that got no answer: a repeat
    /// returns the original answer, or executes the request now if it never arrived.
    async fn resolve_unknown(&self) -> Vec<String> {
        for _ in 0..RESOLVE_ROUNDS_MAX {
            if self.shared.is_lost() {
                break;
            }
            self.drain().await;
            let unknown = std::mem::take(&mut self.shared.state.lock().unknown);
            if unknown.is_empty() {
                break;
            }
            for chunk in unknown.chunks(self.options.setup_batch) {
                let requests: Vec<Request> = chunk
                    .iter()
                    .map(|s| self.shared.request(s.id, &s.step))
                    .collect();
                let (answers, _) = self.call_on_link(&requests).await.answers();
                self.shared.process(chunk.to_vec(), answers, 0, false, true);
            }
        }
        self.drain().await;
        let state = self.shared.state.lock();
        state
            .unknown
            .iter()
            .map(|s| format!("{:?} request {:#x}", s.step.op(), s.id))
            .collect()
    }

    /// Reverses holds that should have been captured or reversed but are still live (their
    /// follow-up was declined or never answered). Returns how many.
    async fn cleanup(&self) -> u64 {
        let live: Vec<u128> = {
            let state = self.shared.state.lock();
            state
                .model
                .live_holds()
                .filter(|(_, a)| a.flow != Flow::AuthExpire)
                .map(|(id, _)| id)
                .collect()
        };
        for chunk in live.chunks(self.options.setup_batch) {
            let sent: Vec<Sent> = chunk
                .iter()
                .map(|&auth| {
                    let id = self.shared.next_id();
                    Sent::new(
                        id,
                        Step::Reverse { auth },
                        Instant::now(),
                        FOLLOW_UP_TRIES_MAX,
                    )
                })
                .collect();
            let requests: Vec<Request> = sent
                .iter()
                .map(|s| self.shared.request(s.id, &s.step))
                .collect();
            let (answers, hint, resent) = self.call_on_link(&requests).await.answers_hinted();
            self.shared.process(sent, answers, hint, false, resent);
        }
        live.len() as u64
    }

    /// Polls the status of holds left to expire until the switch has expired them all, for at
    /// most their expiry plus a margin for the switch's expiry tick.
    async fn await_expiry(&self) {
        let deadline = Instant::now()
            + Duration::from_secs(u64::from(self.options.expire_secs))
            + Duration::from_secs(10);
        loop {
            let pending: Vec<u128> = {
                let state = self.shared.state.lock();
                state
                    .model
                    .live_holds()
                    .filter(|(_, a)| a.flow == Flow::AuthExpire)
                    .map(|(id, _)| id)
                    .collect()
            };
            if pending.is_empty() || Instant::now() > deadline || self.shared.is_lost() {
                return;
            }
            let statuses = self.statuses(&pending).await;
            {
                let mut state = self.shared.state.lock();
                // Past its bound, the switch forgets finished payments: a hold left to expire
                // that it no longer knows has expired (the balances check that it is no
                // longer held).
                let forgetting =
                    verify::forgettable(&state.model, self.options.switch_remembers) > 0;
                for (id, status) in statuses {
                    let forgotten = forgetting && status == Some(SeenStatus::NotFound);
                    if status == Some(SeenStatus::Expired) || forgotten {
                        state.model.expired(id);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn statuses(&self, ids: &[u128]) -> HashMap<u128, Option<SeenStatus>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(self.options.setup_batch) {
            if self.shared.is_lost() {
                break;
            }
            let requests: Vec<Request> = chunk
                .iter()
                .map(|&id| Request {
                    id: RequestId(self.shared.next_id()),
                    operation: Operation::TransferStatus {
                        lookup: RequestId(id),
                    },
                })
                .collect();
            let answers = self.call(&requests).await.ok();
            for (i, &id) in chunk.iter().enumerate() {
                let seen = answers.as_ref().and_then(|a| a.get(i)).and_then(|r| {
                    match (&r.code, &r.body) {
                        (ResponseCode::Approved, ResponseBody::TransferStatus(s)) => {
                            Some(match s.state {
                                TransferState::NotFound => SeenStatus::NotFound,
                                TransferState::Pending => SeenStatus::Pending,
                                TransferState::Captured => SeenStatus::Captured {
                                    captured: s.captured.0,
                                    refunded: s.refunded.0,
                                },
                                TransferState::Reversed => SeenStatus::Reversed,
                                TransferState::Expired => SeenStatus::Expired,
                                TransferState::Posted => SeenStatus::Posted {
                                    amount: s.amount.0,
                                    refunded: s.refunded.0,
                                },
                                TransferState::Declined => SeenStatus::Declined,
                            })
                        }
                        _ => None,
                    }
                });
                out.insert(id, seen);
            }
        }
        out
    }

    async fn balances(&self, accounts: &[AccountId]) -> Vec<Option<Seen>> {
        let mut out = Vec::with_capacity(accounts.len());
        for chunk in accounts.chunks(self.options.setup_batch) {
            if self.shared.is_lost() {
                break;
            }
            let requests: Vec<Request> = chunk
                .iter()
                .map(|&a| Request {
                    id: RequestId(self.shared.next_id()),
                    operation: Operation::BalanceInquiry {
                        target: BalanceTarget::Account(a),
                    },
                })
                .collect();
            let answers = self.call(&requests).await.ok();
            for (i, account) in chunk.iter().enumerate() {
                out.push(answers.as_ref().and_then(|a| a.get(i)).and_then(|r| {
                    match (&r.code, &r.body) {
                        (ResponseCode::Approved, ResponseBody::BalanceInquiry(b))
                            if b.account == *account =>
                        {
                            Some(Seen {
                                ledger: b.ledger,
                                available: b.available,
                            })
                        }
                        _ => None,
                    }
                }));
            }
        }
        out
    }

    /// Reads back every account and the status of every authorization and sale.
    pub async fn observe(&self) -> Observed {
        let customers: Vec<AccountId> = (0..self.options.customers as u32)
            .map(|i| self.shared.customer_account(i))
            .collect();
        let merchants: Vec<AccountId> = (0..self.options.merchants as u32)
            .map(|i| self.shared.merchant_account(i))
            .collect();
        let ids: Vec<u128> = {
            let state = self.shared.state.lock();
            let (auths, sales) = (state.model.auths.keys(), state.model.sales.keys());
            auths.chain(sales).copied().collect()
        };
        let (before, refused) = {
            let state = self.shared.state.lock();
            (state.funding_before, state.abandoned.clone())
        };
        Observed {
            customers: self.balances(&customers).await,
            merchants: self.balances(&merchants).await,
            funding: self
                .balances(&[self.shared.funding_account()])
                .await
                .pop()
                .flatten()
                .map(|now| Seen {
                    ledger: now.ledger - before.ledger,
                    available: now.available - before.available,
                }),
            statuses: self.statuses(&ids).await,
            refused: self.statuses(&refused).await,
        }
    }
}
