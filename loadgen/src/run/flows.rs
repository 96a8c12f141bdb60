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
use crate::backoff::Refusal;
use crate::mix::{Flow, OpKind};

/// How many times a follow-up answered "busy" (91/96) is sent again before it is left to
/// the end-of-run cleanup.
pub(super) const FOLLOW_UP_TRIES_MAX: u8 = 5;

/// Payments refused and given up whose status verification reads back (all are counted).
pub(super) const ABANDONED_KEPT_MAX: usize = 100_000;

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
    /// A new authorization or sale: what a shedding switch refuses, and the throttle too.
    pub(super) fn is_new_payment(&self) -> bool {
        matches!(self, Step::Authorize { .. } | Step::Sale { .. })
    }

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
    /// Times it was sent again after a refusal, and when it was first refused.
    pub(super) retries: u8,
    pub(super) refused_since: Option<Instant>,
}

impl Sent {
    /// A request sent for the first time.
    pub(super) fn new(id: u128, step: Step, intended: Instant, tries: u8) -> Sent {
        Sent {
            id,
            step,
            intended,
            tries,
            retries: 0,
            refused_since: None,
        }
    }
}

/// A follow-up waiting for a slot, or a refused request waiting to be sent again.
#[derive(Clone, Copy, Debug)]
pub(super) struct FollowUp {
    pub(super) id: u128,
    pub(super) step: Step,
    pub(super) tries: u8,
    pub(super) retries: u8,
    pub(super) refused_since: Option<Instant>,
}

impl FollowUp {
    fn sent(self, intended: Instant) -> Sent {
        Sent {
            id: self.id,
            step: self.step,
            intended,
            tries: self.tries,
            retries: self.retries,
            refused_since: self.refused_since,
        }
    }
}

/// A refused request waiting until `due` to be sent again (`retries::Retries`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Retry {
    pub(super) due: Instant,
    pub(super) request: FollowUp,
}

impl Retry {
    /// The order they go again in: the earliest due first, then the lowest id.
    pub(super) fn order(&self) -> (Instant, u128) {
        (self.due, self.request.id)
    }
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

    /// One frame for the slots intended at `intended`: waiting follow-ups first, then refused
    /// requests due to go again, then new flows. With `throttled` (the open loop), new
    /// payments the throttle refuses are left out (`throttle`): the frame may be empty.
    pub(super) fn build(
        &self,
        intended: &[Instant],
        rng: &mut StdRng,
        throttled: bool,
    ) -> (Vec<Sent>, Vec<Request>) {
        let now = Instant::now();
        let mut sent = self.take_waiting(intended, now);
        for &at in &intended[sent.len()..] {
            sent.push(Sent::new(self.next_id(), self.new_flow(rng), at, 0));
        }
        if throttled {
            self.throttle(&mut sent, now);
        }
        let requests = self.requests(&sent);
        (sent, requests)
    }

    /// Takes out of `sent` the new payments the throttle refuses at `now`: each counts as
    /// throttled and is given up at once, having done nothing (sent again, it would be one
    /// more request for the throttle to refuse while the switch is still shedding: retries
    /// of what the client refused itself would multiply the load it is there to cut).
    fn throttle(&self, sent: &mut Vec<Sent>, now: Instant) {
        // Off (the default), no lock is taken for it.
        if self.options.throttle_k == 0.0 {
            return;
        }
        let mut state = self.state.lock();
        let state = &mut *state;
        let mut throttled = Vec::new();
        sent.retain(|s| {
            let admit = !s.step.is_new_payment() || state.throttle.admit(now, &mut state.rng);
            if !admit {
                throttled.push(*s);
            }
            admit
        });
        if throttled.is_empty() {
            return;
        }
        let mut measure = self.measure.lock();
        let at = now.saturating_duration_since(measure.origin);
        for s in throttled {
            let op = s.step.op();
            measure.stats.throttled(op, at);
            measure.stats.abandoned(op);
            Self::give_up(state, &s);
        }
    }

    pub(super) fn requests(&self, sent: &[Sent]) -> Vec<Request> {
        sent.iter().map(|s| self.request(s.id, &s.step)).collect()
    }

    /// Waiting follow-ups, then refused requests due by `now`, for the first of the slots
    /// `intended`; counts the requests sent again.
    pub(super) fn take_waiting(&self, intended: &[Instant], now: Instant) -> Vec<Sent> {
        let mut sent = Vec::with_capacity(intended.len());
        let mut retried = Vec::new();
        {
            let mut state = self.state.lock();
            for &at in intended {
                if let Some(f) = state.follow_ups.pop_front() {
                    sent.push(f.sent(at));
                } else if let Some(r) = state.retries.pop_due(now) {
                    retried.push(r.request.step.op());
                    // Timed from the slot, or from when it fell due if the slot was earlier
                    // (a lane behind its schedule).
                    sent.push(r.request.sent(at.max(r.due)));
                } else {
                    break;
                }
            }
        }
        if !retried.is_empty() {
            let mut m = self.measure.lock();
            let at = now.saturating_duration_since(m.origin);
            for op in retried {
                m.stats.retried(op, at);
            }
        }
        sent
    }

    /// When the earliest refused request is due to go again; `None` if none waits.
    pub(super) fn next_retry_due(&self) -> Option<Instant> {
        self.state.lock().retries.next_due()
    }

    /// Applies a frame's answers (or its failure) to the model and the measurements.
    /// `resent`: the frame asks again for requests whose outcome is unknown (at the end of the
    /// run, or after a failover). A 91 (or a frame refused as busy) then says only that this
    /// attempt did not run, not that the first one did not: they stay unknown, to be asked
    /// again (and count as errors if measured). Sent for the first time, a request refused
    /// as busy (`Refusal`) did nothing and goes again after the frame's `retry_after_ms`.
    pub(super) fn process(
        &self,
        sent: Vec<Sent>,
        result: Result<Vec<Response>, Failure>,
        retry_after_ms: u16,
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
                    if s.step.is_new_payment() {
                        state.throttle.answered(now, false);
                    }
                    if measured {
                        let why = Refusal::Overloaded;
                        measure
                            .stats
                            .refused(s.step.op(), why, at(s.intended), at(now));
                    }
                    if !self.refused(&mut state, s, 0, now) && measured {
                        measure.stats.abandoned(s.step.op());
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
            if let Some(why) = Refusal::of(r.code, r.reason).filter(|_| r.request_id.0 == s.id) {
                if s.step.is_new_payment() {
                    state.throttle.answered(now, false);
                }
                if measured {
                    measure
                        .stats
                        .refused(s.step.op(), why, at(s.intended), at(now));
                }
                if !self.refused(&mut state, s, retry_after_ms, now) && measured {
                    measure.stats.abandoned(s.step.op());
                }
                continue;
            }
            let verdict = if r.request_id.0 == s.id {
                self.answer(&mut state, &s, &r)
            } else {
                Err(())
            };
            if verdict.is_ok() && s.step.is_new_payment() {
                state.throttle.answered(now, true);
            }
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
        state.follow_ups.push_back(FollowUp {
            id,
            step,
            tries,
            retries: 0,
            refused_since: None,
        });
    }

    /// A request refused as busy at `now` (nothing done, nothing remembered): it waits to go
    /// again with the same id, after `hint_ms` and a random part, while the retry policy
    /// allows. Returns false if it is given up instead: then it stays refused, and a payment
    /// is listed so that verification can check the switch does not know it.
    pub(super) fn refused(&self, state: &mut State, s: Sent, hint_ms: u16, now: Instant) -> bool {
        let since = s.refused_since.unwrap_or(now);
        let retry = self.options.retry;
        let due = retry.next(s.retries, since, now, hint_ms, &mut state.rng);
        match due {
            Some(due) if state.retries.len() < self.follow_ups_max => {
                state.retries.push(Retry {
                    due,
                    request: FollowUp {
                        id: s.id,
                        step: s.step,
                        tries: s.tries,
                        retries: s.retries.saturating_add(1),
                        refused_since: Some(since),
                    },
                });
                true
            }
            _ => {
                Self::give_up(state, &s);
                false
            }
        }
    }

    /// A request refused and not sent again: it did nothing, and an authorization or sale is
    /// listed (the first `ABANDONED_KEPT_MAX`) so that verification checks the switch does
    /// not know it.
    fn give_up(state: &mut State, s: &Sent) {
        if s.step.is_new_payment() && state.abandoned.len() < ABANDONED_KEPT_MAX {
            state.abandoned.push(s.id);
        }
    }

    /// A request not executed and not remembered (answered 91 or 96 for another reason than
    /// overload): a follow-up may simply go again.
    pub(super) fn busy(&self, state: &mut State, s: &Sent) {
        if matches!(
            s.step,
            Step::Capture { .. } | Step::Reverse { .. } | Step::Refund { .. }
        ) && s.tries < FOLLOW_UP_TRIES_MAX
        {
            self.follow_up(state, s.step, s.id, s.tries + 1);
        }
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
    use std::time::{Duration, Instant};

    use switch::wire::{
        Amount, Movement, Op, Reason, RequestId, Response, ResponseBody, ResponseCode,
    };

    use super::super::sessions::Failure;
    use super::super::shared::Shared;
    use super::{Sent, Step};
    use crate::backoff::{HINT_MIN_MS, Refusal};
    use crate::config::{Options, Profile};
    use crate::mix::{Flow, OpKind};

    fn shared() -> Shared {
        Shared::new(Arc::new(Options::spawn_defaults(Profile::Constant {
            rate: 1.0,
            duration_secs: 1.0,
        })))
    }

    fn capture(id: u128, tries: u8) -> Sent {
        let step = Step::Capture {
            auth: 1,
            amount: 100,
        };
        Sent::new(id, step, Instant::now(), tries)
    }

    fn authorize(id: u128, flow: Flow) -> Sent {
        let step = Step::Authorize {
            flow,
            customer: 3,
            merchant: 1,
            amount: 500,
        };
        Sent::new(id, step, Instant::now(), 0)
    }

    fn busy_answer(id: u128) -> Response {
        refusal(id, Op::Capture, 22)
    }

    fn refusal(id: u128, op: Op, reason: u8) -> Response {
        Response::declined(RequestId(id), op, ResponseCode::SystemBusy, Reason(reason))
    }

    fn approved_authorization(id: u128, amount: u64) -> Response {
        Response {
            request_id: RequestId(id),
            code: ResponseCode::Approved,
            reason: Reason::NONE,
            body: ResponseBody::Authorize(Movement {
                amount: Amount(amount),
                ..Movement::default()
            }),
        }
    }

    /// The refused requests waiting to go again: (id, retries, due).
    fn waiting(shared: &Shared) -> Vec<(u128, u8, Instant)> {
        let state = shared.state.lock();
        let mut w: Vec<_> = state
            .retries
            .iter()
            .map(|r| (r.request.id, r.request.retries, r.due))
            .collect();
        w.sort_by_key(|&(id, ..)| id);
        w
    }

    /// A frame refused as busy ran none of its requests: each counts as 91 (overloaded), and
    /// goes again, same id, after the least wait, as after a 91 answer.
    #[test]
    fn a_busy_frame_counts_as_91_for_each_request() {
        let shared = shared();
        let before = Instant::now();
        shared.process(
            vec![capture(7, 0), capture(8, 0)],
            Err(Failure::Busy),
            0,
            true,
            false,
        );
        let w = waiting(&shared);
        assert_eq!(w.iter().map(|&(id, ..)| id).collect::<Vec<_>>(), vec![7, 8]);
        let least = Duration::from_millis(u64::from(HINT_MIN_MS));
        assert!(w.iter().all(|&(_, n, due)| n == 1 && due >= before + least));
        let state = shared.state.lock();
        assert!(state.unknown.is_empty() && state.follow_ups.is_empty());
        let stats = &shared.measure.lock().stats;
        assert_eq!(stats.by_code().get("91"), Some(&2));
        let capture = &stats.ops[OpKind::Capture.index()];
        assert_eq!(capture.refused[Refusal::Overloaded.index()], 2);
        assert_eq!(stats.errors_total(), 0);
    }

    /// Asking again for a request whose outcome is unknown, a 91 or a busy frame says only
    /// that this attempt did not run: the first may have, so the request stays unknown.
    #[test]
    fn a_request_asked_again_stays_unknown_after_a_91_or_a_busy_frame() {
        let shared = shared();
        shared.process(vec![capture(7, 0)], Err(Failure::Busy), 0, false, true);
        shared.process(
            vec![capture(8, 0)],
            Ok(vec![busy_answer(8)]),
            0,
            false,
            true,
        );
        // Sent for the first time, the same answer is a refusal, to go again.
        shared.process(
            vec![capture(9, 0)],
            Ok(vec![busy_answer(9)]),
            0,
            false,
            false,
        );
        let state = shared.state.lock();
        let unknown: Vec<u128> = state.unknown.iter().map(|s| s.id).collect();
        assert_eq!(unknown, vec![7, 8]);
        drop(state);
        let again: Vec<u128> = waiting(&shared).iter().map(|&(id, ..)| id).collect();
        assert_eq!(again, vec![9]);
    }

    /// An authorization shed twice, then approved: it goes again with the same id, each time
    /// no sooner than the frame's hint, is held once in the model, counted approved once
    /// with its two refusals and two retries, and only then is its capture queued.
    #[test]
    fn a_refused_then_retried_then_approved_request_counts_once() {
        let shared = shared();
        let id = shared.next_id();
        let mut sent = authorize(id, Flow::AuthCapture);
        for (round, reason) in [(1u8, 34u8), (2, 33)] {
            let before = Instant::now();
            let answer = refusal(id, Op::Authorize, reason);
            shared.process(vec![sent], Ok(vec![answer]), 200, true, false);
            let w = waiting(&shared);
            assert_eq!(w.len(), 1);
            let (again, retries, due) = w[0];
            assert_eq!((again, retries), (id, round));
            assert!(due >= before + Duration::from_millis(200), "{round}");
            // Nothing is held and no capture waits while the authorization is refused.
            assert_eq!(shared.state.lock().model.auths.len(), 0);
            assert!(shared.state.lock().follow_ups.is_empty());
            // Not due yet: a slot now starts something else.
            assert!(
                shared
                    .take_waiting(&[Instant::now()], Instant::now())
                    .is_empty()
            );
            let taken = shared.take_waiting(&[due], due);
            assert_eq!(taken.len(), 1);
            sent = taken[0];
            assert_eq!(sent.id, id);
        }
        shared.process(
            vec![sent],
            Ok(vec![approved_authorization(id, 500)]),
            0,
            true,
            false,
        );
        let state = shared.state.lock();
        assert_eq!(state.model.auths.len(), 1);
        assert!(state.model.auths.contains_key(&id));
        assert_eq!(state.model.customers[3].held, 500);
        assert!(
            state.model.violations.is_empty(),
            "{:?}",
            state.model.violations
        );
        assert_eq!(state.follow_ups.len(), 1, "its capture");
        assert!(state.retries.is_empty() && state.abandoned.is_empty());
        let stats = &shared.measure.lock().stats;
        let a = &stats.ops[OpKind::Authorize.index()];
        assert_eq!((a.count, a.approved, a.retries, a.abandoned), (3, 1, 2, 0));
        assert_eq!(a.refused, [1, 1, 0]);
        assert_eq!(a.refused_latency_us.len(), 2);
        assert_eq!(a.admitted_latency_us().len(), 1);
    }

    /// A sale refused every time is sent again `--retries-max` times, then given up: never
    /// in the model, listed for verification, and counted abandoned, not approved.
    #[test]
    fn a_refused_and_abandoned_request_is_not_approved() {
        let shared = shared();
        let retries_max = shared.options.retry.retries_max;
        let id = shared.next_id();
        let step = Step::Sale {
            flow: Flow::Refund,
            customer: 2,
            merchant: 0,
            amount: 700,
        };
        let mut sent = Sent::new(id, step, Instant::now(), 0);
        let mut sends = 0;
        loop {
            sends += 1;
            let answer = refusal(id, Op::Sale, 34);
            shared.process(vec![sent], Ok(vec![answer]), 0, true, false);
            let Some(&(_, _, due)) = waiting(&shared).first() else {
                break;
            };
            sent = shared.take_waiting(&[due], due)[0];
            assert!(sends <= retries_max + 1, "sent {sends} times");
        }
        assert_eq!(sends, retries_max + 1);
        let state = shared.state.lock();
        assert_eq!(state.model.sales.len(), 0);
        assert_eq!(state.model.customers[2].ledger, 0);
        assert_eq!(state.abandoned, vec![id]);
        assert!(
            state.follow_ups.is_empty(),
            "no refund of a sale never made"
        );
        let stats = &shared.measure.lock().stats;
        let sale = &stats.ops[OpKind::Sale.index()];
        assert_eq!((sale.approved, sale.abandoned), (0, 1));
        assert_eq!(sale.refused[Refusal::Shed.index()], u64::from(sends));
    }
}
