//! What a flow sends and how its answers update the model: a flow's steps, the frame a lane
//! sends for its due slots (waiting follow-ups first, then new flows), and what each answer,
//! or a frame's failure, does to the model, the follow-ups and the measurements.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rand::rngs::StdRng;
use switch::wire::{
    Amount, BalanceTarget, Operation, Request, RequestId, Response, ResponseBody, ResponseCode,
};

use super::sessions::Failure;
use super::shared::{Shared, State};
use crate::mix::{Flow, OpKind};

/// How many times a follow-up answered "busy" (91/96) is sent again before it is left to
/// the end-of-run cleanup.
pub(super) const FOLLOW_UP_TRIES_MAX: u8 = 5;

/// One step of a flow, with what the model needs to apply its answer.
#[derive(Clone, Copy, Debug)]
pub(super) enum Step {
    Authorize {
        flow: Flow,
        customer: u32,
        merchant: u32,
        amount: u64,
    },
    Capture {
        auth: u128,
        amount: u64,
    },
    Reverse {
        auth: u128,
    },
    Sale {
        flow: Flow,
        customer: u32,
        merchant: u32,
        amount: u64,
    },
    Refund {
        sale: u128,
        amount: u64,
    },
    Balance {
        customer: u32,
    },
}

impl Step {
    pub(super) fn op(&self) -> OpKind {
        match self {
            Step::Authorize { .. } => OpKind::Authorize,
            Step::Capture { .. } => OpKind::Capture,
            Step::Reverse { .. } => OpKind::Reverse,
            Step::Sale { .. } => OpKind::Sale,
            Step::Refund { .. } => OpKind::Refund,
            Step::Balance { .. } => OpKind::Balance,
        }
    }
}

/// A request on its way, and when it was meant to leave.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sent {
    pub(super) id: u128,
    pub(super) step: Step,
    pub(super) intended: Instant,
    pub(super) tries: u8,
}

/// A follow-up waiting for a slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct FollowUp {
    pub(super) id: u128,
    pub(super) step: Step,
    pub(super) tries: u8,
}

impl Shared {
    pub(super) fn request(&self, id: u128, step: &Step) -> Request {
        let currency = self.wire_currency;
        let operation = match *step {
            Step::Authorize {
                flow,
                customer,
                merchant,
                amount,
            } => Operation::Authorize {
                number: self.card(customer),
                merchant: self.merchant_account(merchant),
                amount: Amount(amount),
                currency,
                expiry_secs: if flow == Flow::AuthExpire {
                    self.options.expire_secs
                } else {
                    self.options.hold_secs
                },
            },
            Step::Capture { auth, amount } => Operation::Capture {
                authorization: RequestId(auth),
                amount: Amount(amount),
            },
            Step::Reverse { auth } => Operation::Reverse {
                authorization: RequestId(auth),
            },
            Step::Sale {
                customer,
                merchant,
                amount,
                ..
            } => Operation::Sale {
                number: self.card(customer),
                merchant: self.merchant_account(merchant),
                amount: Amount(amount),
                currency,
            },
            Step::Refund { sale, amount } => Operation::Refund {
                original: RequestId(sale),
                amount: Amount(amount),
                currency,
            },
            Step::Balance { customer } => Operation::BalanceInquiry {
                target: BalanceTarget::Account(self.customer_account(customer)),
            },
        };
        Request {
            id: RequestId(id),
            operation,
        }
    }

    /// A new flow's first step.
    pub(super) fn new_flow(&self, rng: &mut StdRng) -> Step {
        let d = self.mix.draw(rng);
        let (customer, merchant) = (d.customer as u32, d.merchant as u32);
        match d.flow {
            Flow::AuthCapture | Flow::AuthReverse | Flow::AuthExpire => Step::Authorize {
                flow: d.flow,
                customer,
                merchant,
                amount: d.amount,
            },
            Flow::Sale | Flow::Refund => Step::Sale {
                flow: d.flow,
                customer,
                merchant,
                amount: d.amount,
            },
            Flow::Balance => Step::Balance { customer },
        }
    }

    /// One frame for the slots intended at `intended`: waiting follow-ups first, then new flows.
    pub(super) fn build(
        &self,
        intended: &[Instant],
        rng: &mut StdRng,
    ) -> (Vec<Sent>, Vec<Request>) {
        let mut sent = Vec::with_capacity(intended.len());
        {
            let mut state = self.state.lock();
            for &at in intended {
                let Some(f) = state.follow_ups.pop_front() else {
                    break;
                };
                sent.push(Sent {
                    id: f.id,
                    step: f.step,
                    intended: at,
                    tries: f.tries,
                });
            }
        }
        for &at in &intended[sent.len()..] {
            sent.push(Sent {
                id: self.next_id(),
                step: self.new_flow(rng),
                intended: at,
                tries: 0,
            });
        }
        let requests = sent.iter().map(|s| self.request(s.id, &s.step)).collect();
        (sent, requests)
    }

    /// Applies a frame's answers (or its failure) to the model and the measurements.
    /// `resent`: the frame asks again for requests whose outcome is unknown (at the end of the
    /// run, or after a failover). A 91 (or a frame refused as busy) then says only that this
    /// attempt did not run, not that the first one did not: they stay unknown, to be asked
    /// again (and count as errors if measured).
    pub(super) fn process(
        &self,
        sent: Vec<Sent>,
        result: Result<Vec<Response>, Failure>,
        measured: bool,
        resent: bool,
    ) {
        let now = Instant::now();
        let frame = self.frames.fetch_add(1, Ordering::Relaxed);
        let result = if self.options.faults.lose_frame == Some(frame) {
            // The answer is lost (fault injected).
            Err(Failure::Other)
        } else {
            result
        };
        let mut state = self.state.lock();
        let mut measure = self.measure.lock();
        let origin = measure.origin;
        let at = |i: Instant| i.saturating_duration_since(origin);
        let responses = match result {
            Ok(r) if r.len() == sent.len() => r,
            Err(Failure::Busy) if !resent => {
                for s in sent {
                    let code = self.busy(&mut state, &s);
                    if measured {
                        measure
                            .stats
                            .answered(s.step.op(), Some(code), at(s.intended), at(now));
                    }
                }
                return;
            }
            failed => {
                if let Err(Failure::Lost(reason)) = failed {
                    self.lose(reason);
                }
                for s in sent {
                    if measured {
                        measure.stats.error(s.step.op(), at(now));
                    }
                    self.unknown(&mut state, s);
                }
                return;
            }
        };
        for (s, r) in sent.into_iter().zip(responses) {
            let not_run = matches!(
                r.code,
                ResponseCode::SystemBusy | ResponseCode::SystemMalfunction
            );
            if resent && not_run && r.request_id.0 == s.id {
                if measured {
                    measure.stats.error(s.step.op(), at(now));
                }
                self.unknown(&mut state, s);
                continue;
            }
            let verdict = if r.request_id.0 == s.id {
                self.answer(&mut state, &s, &r)
            } else {
                Err(())
            };
            match verdict {
                Ok(declined) if measured => {
                    measure
                        .stats
                        .answered(s.step.op(), declined, at(s.intended), at(now))
                }
                Ok(_) => {}
                Err(()) => {
                    if measured {
                        measure.stats.error(s.step.op(), at(now));
                    }
                    self.unknown(&mut state, s);
                }
            }
        }
    }

    pub(super) fn unknown(&self, state: &mut State, s: Sent) {
        // Balance inquiries change nothing: no need to learn their outcome.
        if !matches!(s.step, Step::Balance { .. }) {
            state.unknown.push(s);
        }
    }

    pub(super) fn follow_up(&self, state: &mut State, step: Step, id: u128, tries: u8) {
        if state.follow_ups.len() >= self.follow_ups_max {
            // Cannot happen while slots prefer follow-ups (at most one per request in flight);
            // if it does, the hold is reversed at the end and the report says so.
            state.follow_ups_dropped += 1;
            return;
        }
        state.follow_ups.push_back(FollowUp { id, step, tries });
    }

    /// A request not executed and not remembered (answered 91, or its frame refused as
    /// busy): a follow-up may simply go again. Returns the code to count it under, 91.
    pub(super) fn busy(&self, state: &mut State, s: &Sent) -> u8 {
        if matches!(
            s.step,
            Step::Capture { .. } | Step::Reverse { .. } | Step::Refund { .. }
        ) && s.tries < FOLLOW_UP_TRIES_MAX
        {
            self.follow_up(state, s.step, s.id, s.tries + 1);
        }
        ResponseCode::SystemBusy.as_u8()
    }

    /// A definitive answer: `Ok(None)` approved, `Ok(Some(code))` declined, `Err` unusable.
    pub(super) fn answer(
        &self,
        state: &mut State,
        s: &Sent,
        r: &Response,
    ) -> Result<Option<u8>, ()> {
        match r.code {
            ResponseCode::Approved => {}
            ResponseCode::SystemBusy | ResponseCode::SystemMalfunction => {
                self.busy(state, s);
                return Ok(Some(r.code.as_u8()));
            }
            code => return Ok(Some(code.as_u8())),
        }
        let amount = match &r.body {
            ResponseBody::Authorize(m)
            | ResponseBody::Capture(m)
            | ResponseBody::Reverse(m)
            | ResponseBody::Sale(m)
            | ResponseBody::Refund(m) => Some(m.amount.0),
            _ => None,
        };
        let model = &mut state.model;
        match (s.step, &r.body) {
            (Step::Authorize { .. }, ResponseBody::Authorize(_)) => {
                self.authorized(state, s, amount);
            }
            (
                Step::Capture {
                    auth,
                    amount: asked,
                },
                ResponseBody::Capture(_),
            ) => {
                model.check_amount("capture", s.id, asked, amount);
                model.captured(auth, asked);
            }
            (Step::Reverse { auth }, ResponseBody::Reverse(_)) => {
                if amount == Some(0) {
                    // Approved with nothing released: the hold had already gone (expired).
                    model.expired(auth);
                } else {
                    model.reversed(auth);
                }
            }
            (Step::Sale { .. }, ResponseBody::Sale(_)) => self.sold(state, s, amount),
            (
                Step::Refund {
                    sale,
                    amount: asked,
                },
                ResponseBody::Refund(_),
            ) => {
                model.check_amount("refund", s.id, asked, amount);
                model.refunded(sale, asked);
            }
            (Step::Balance { .. }, ResponseBody::BalanceInquiry(_)) => {}
            _ => return Err(()),
        }
        Ok(None)
    }

    /// An approved authorization holding `approved`: a hold in the model, and its flow's
    /// capture or reversal waits for a slot.
    fn authorized(&self, state: &mut State, s: &Sent, approved: Option<u64>) {
        let Step::Authorize {
            flow,
            customer,
            merchant,
            amount: asked,
        } = s.step
        else {
            return;
        };
        let model = &mut state.model;
        if approved != Some(asked) {
            model.violations.push(format!(
                "authorization {:#x}: asked to hold {asked}, approved holding {approved:?}",
                s.id
            ));
        }
        model.authorized(s.id, customer, merchant, asked, flow);
        let next = match flow {
            Flow::AuthCapture => Some(Step::Capture {
                auth: s.id,
                amount: self.mix.capture_amount(asked, &mut state.rng),
            }),
            Flow::AuthReverse => Some(Step::Reverse { auth: s.id }),
            _ => None,
        };
        if let Some(step) = next {
            let id = self.next_id();
            self.follow_up(state, step, id, 0);
        }
    }

    /// An approved sale moving `approved`: the money moves in the model, and a refund flow's
    /// refund waits for a slot.
    fn sold(&self, state: &mut State, s: &Sent, approved: Option<u64>) {
        let Step::Sale {
            flow,
            customer,
            merchant,
            amount: asked,
        } = s.step
        else {
            return;
        };
        let n = state.sales_approved;
        state.sales_approved += 1;
        if self.options.faults.drop_sale_effect == Some(n) {
            return;
        }
        let model = &mut state.model;
        model.check_amount("sale", s.id, asked, approved);
        model.sold(s.id, customer, merchant, asked);
        if flow == Flow::Refund {
            let step = Step::Refund {
                sale: s.id,
                amount: self.mix.refund_amount(asked, &mut state.rng),
            };
            let id = self.next_id();
            self.follow_up(state, step, id, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use switch::wire::{Op, Reason, RequestId, Response, ResponseCode};

    use super::super::sessions::Failure;
    use super::super::shared::Shared;
    use super::{Sent, Step};
    use crate::config::{Options, Profile};

    fn shared() -> Shared {
        Shared::new(Arc::new(Options::spawn_defaults(Profile::Constant {
            rate: 1.0,
            duration_secs: 1.0,
        })))
    }

    fn capture(id: u128, tries: u8) -> Sent {
        Sent {
            id,
            step: Step::Capture {
                auth: 1,
                amount: 100,
            },
            intended: Instant::now(),
            tries,
        }
    }

    fn busy_answer(id: u128) -> Response {
        Response::declined(
            RequestId(id),
            Op::Capture,
            ResponseCode::SystemBusy,
            Reason(22),
        )
    }

    /// A frame refused as busy ran none of its requests: each counts as 91, and a capture
    /// goes again as a follow-up, as after a 91 answer.
    #[test]
    fn a_busy_frame_counts_as_91_for_each_request() {
        let shared = shared();
        shared.process(
            vec![capture(7, 0), capture(8, 0)],
            Err(Failure::Busy),
            true,
            false,
        );
        let state = shared.state.lock();
        assert!(state.unknown.is_empty());
        let again: Vec<u128> = state.follow_ups.iter().map(|f| f.id).collect();
        assert_eq!(again, vec![7, 8]);
        let stats = &shared.measure.lock().stats;
        assert_eq!(stats.by_code().get("91"), Some(&2));
        assert_eq!(stats.errors_total(), 0);
    }

    /// Asking again for a request whose outcome is unknown, a 91 or a busy frame says only
    /// that this attempt did not run: the first may have, so the request stays unknown.
    #[test]
    fn a_request_asked_again_stays_unknown_after_a_91_or_a_busy_frame() {
        let shared = shared();
        shared.process(vec![capture(7, 0)], Err(Failure::Busy), false, true);
        shared.process(vec![capture(8, 0)], Ok(vec![busy_answer(8)]), false, true);
        // Sent for the first time, the same answer is a decline.
        shared.process(vec![capture(9, 0)], Ok(vec![busy_answer(9)]), false, false);
        let state = shared.state.lock();
        let unknown: Vec<u128> = state.unknown.iter().map(|s| s.id).collect();
        assert_eq!(unknown, vec![7, 8]);
        let again: Vec<u128> = state.follow_ups.iter().map(|f| f.id).collect();
        assert_eq!(again, vec![9]);
    }
}
