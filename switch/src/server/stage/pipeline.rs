//! Between the ledger stage and the log: the answers of each batch wait here until the entries
//! they depend on are committed (durable on a majority of the replicas; on this one's disk, for
//! a cluster of one), and, for a batch that logged nothing, until a read confirms that no newer
//! leader existed when they were computed. They are handed over on whichever thread learns it
//! (the log writer's for a cluster of one), or refused: after a log failure, or when the
//! leadership is lost before they commit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize};

use ledger::wal::WalError;
use parking_lot::{Condvar, Mutex};

use super::{Answered, Refusal, failure_refusal, leave, report_failure};
use crate::core::Response;

/// The answers to one stage batch, handed over once every entry up to `after` is committed and
/// read `read` (if any) is confirmed.
pub(super) struct BatchAnswers {
    pub(super) after: u64,
    pub(super) read: Option<u64>,
    /// Each job's answer and how many of `responses` are its own, in order.
    pub(super) jobs: Vec<JobAnswer>,
    pub(super) responses: Vec<Response>,
    pub(super) taken: Taken,
}

/// Where one job's answer goes: `count` responses of its batch's, in order, with `refused`
/// (the stage's answers to items it did not execute, by their place in the job) put back in
/// their places.
pub(super) struct JobAnswer {
    pub(super) answer: tokio::sync::oneshot::Sender<Answered>,
    pub(super) count: usize,
    /// In ascending place order.
    pub(super) refused: Vec<(usize, Response)>,
}

impl JobAnswer {
    /// A job every item of which was executed.
    pub(super) fn whole(answer: tokio::sync::oneshot::Sender<Answered>, count: usize) -> Self {
        JobAnswer {
            answer,
            count,
            refused: Vec::new(),
        }
    }

    /// Sends the job its responses: `executed` (its `count`, in order) and the refused ones
    /// in their places.
    pub(super) fn hand_over(self, executed: impl IntoIterator<Item = Response>) {
        let responses = if self.refused.is_empty() {
            executed.into_iter().collect()
        } else {
            let mut executed = executed.into_iter();
            let mut refused = self.refused.into_iter().peekable();
            let total = self.count + refused.len();
            let mut out = Vec::with_capacity(total);
            for place in 0..total {
                match refused.next_if(|(at, _)| *at == place) {
                    Some((_, response)) => out.push(response),
                    None => out.extend(executed.next()),
                }
            }
            out
        };
        let _ = self.answer.send(Ok(responses));
    }
}

/// Requests a batch took from the queue. They count against `queue_depth_max` until their
/// answers leave, not only while queued: a batch that logged nothing still waits for the
/// record before it, and what waits so must be bounded too.
pub(super) struct Taken {
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) count: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        leave(&self.queued, self.count);
    }
}

/// Between the ledger stage and the log writer: the stage applies the next batch while the
/// log syncs the last, and no answer leaves before the records it depends on are durable.
/// A batch that logged nothing (declines, inquiries, repeats) may still have read what an
/// earlier, not yet durable batch did, so it waits for that batch's record too.
pub(super) struct Pipeline {
    state: Mutex<PipelineState>,
    progressed: Condvar,
}

struct PipelineState {
    /// Every record up to this log sequence is durable here.
    durable: u64,
    /// Every entry up to this index is committed.
    committed: u64,
    /// Reads up to this number are confirmed.
    reads: u64,
    /// The log's failure, once it has failed: nothing more is answered as done.
    failure: Option<WalError>,
    /// In `after` order (the stage adds them in log order).
    waiting: VecDeque<BatchAnswers>,
}

impl PipelineState {
    fn ready(&self, a: &BatchAnswers) -> bool {
        a.after <= self.committed && a.read.is_none_or(|r| r <= self.reads)
    }

    /// The answers that may leave now, in order: a batch waits for the ones before it.
    fn take_ready(&mut self) -> Vec<BatchAnswers> {
        let n = self.waiting.iter().take_while(|a| self.ready(a)).count();
        self.waiting.drain(..n).collect()
    }
}

impl Pipeline {
    pub(super) fn new(durable: u64, committed: u64) -> Self {
        Pipeline {
            state: Mutex::new(PipelineState {
                durable,
                committed,
                reads: 0,
                failure: None,
                waiting: VecDeque::new(),
            }),
            progressed: Condvar::new(),
        }
    }

    /// Every entry up to `index` is committed (the replica learnt it), and reads up to `reads`
    /// are confirmed: answers that waited for them leave.
    pub(super) fn committed(&self, index: u64, reads: u64) {
        let ready = {
            let mut state = self.state.lock();
            if state.failure.is_some() {
                return;
            }
            state.committed = state.committed.max(index);
            state.reads = state.reads.max(reads);
            state.take_ready()
        };
        self.progressed.notify_all();
        for answers in ready {
            answers.hand_over(None);
        }
    }

    /// The leadership was lost: what waits may never commit, and goes to the leader.
    pub(super) fn deposed(&self, refusal: Refusal) {
        let waiting: Vec<BatchAnswers> = {
            let mut state = self.state.lock();
            state.waiting.drain(..).collect()
        };
        for answers in waiting {
            answers.hand_over(Some(refusal));
        }
    }

    /// Every entry up to here is committed.
    pub(super) fn committed_index(&self) -> u64 {
        self.state.lock().committed
    }

    /// The log's verdict on record `sequence` (runs on the log writer's thread, in sequence
    /// order): notes what it made durable (and, for a cluster of one, `commits`: the entry
    /// that is committed once it is, answering what waited for it), or, on a failure, refuses
    /// everything waiting.
    pub(super) fn done(
        &self,
        result: Result<u64, WalError>,
        commits: Option<u64>,
        failed: &AtomicU8,
    ) {
        let (ready, refusal) = {
            let mut state = self.state.lock();
            match result {
                Ok(sequence) => {
                    state.durable = state.durable.max(sequence);
                    if let Some(index) = commits {
                        state.committed = state.committed.max(index);
                    }
                }
                Err(e) => {
                    if state.failure.is_none() {
                        // Before any client hears of it (`/readyz`, `Queue::failure`).
                        report_failure(&e, failed);
                        state.failure = Some(e);
                    }
                }
            }
            let refusal = state.failure.as_ref().map(failure_refusal);
            let ready = if refusal.is_some() {
                state.waiting.drain(..).collect()
            } else {
                state.take_ready()
            };
            (ready, refusal)
        };
        self.progressed.notify_all();
        for answers in ready {
            answers.hand_over(refusal);
        }
    }

    /// Hands `answers` over now if what they depend on is committed (and nothing before them
    /// waits), or leaves them for `committed` and `done`.
    pub(super) fn answer(&self, answers: BatchAnswers) {
        let mut state = self.state.lock();
        if let Some(e) = &state.failure {
            let refusal = failure_refusal(e);
            drop(state);
            answers.hand_over(Some(refusal));
        } else if state.waiting.is_empty() && state.ready(&answers) {
            drop(state);
            answers.hand_over(None);
        } else {
            state.waiting.push_back(answers);
        }
    }

    /// Waits until every record up to `sequence` is durable, or the log has failed.
    pub(super) fn wait_durable(&self, sequence: u64) -> Result<(), WalError> {
        let mut state = self.state.lock();
        loop {
            if let Some(e) = &state.failure {
                return Err(e.clone());
            }
            if state.durable >= sequence {
                return Ok(());
            }
            self.progressed.wait(&mut state);
        }
    }

    pub(super) fn failure(&self) -> Option<WalError> {
        self.state.lock().failure.clone()
    }
}

impl BatchAnswers {
    /// Gives each job its responses, or, if the log failed, the refusal of them all.
    fn hand_over(self, refusal: Option<Refusal>) {
        let BatchAnswers {
            jobs,
            responses,
            taken,
            ..
        } = self;
        // The requests leave the queue's count before their answers leave: a client that
        // sends again the moment it has its answer must find the room its requests took.
        drop(taken);
        let mut responses = responses.into_iter();
        for job in jobs {
            match refusal {
                Some(refusal) => {
                    let _ = job.answer.send(Err(refusal));
                }
                None => {
                    let count = job.count;
                    job.hand_over(responses.by_ref().take(count));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::sync::atomic::Ordering;

    use super::*;
    use crate::codes::{Code, Reason};
    use crate::core::RequestId;

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_stage_answers.txt", 64))]

        /// A batch's responses go back split by job, each job getting exactly its own, in
        /// order, with the ones the stage refused before executing (deadline passed, shed) in
        /// their places; after a log failure every job gets the refusal. Either way the
        /// batch's requests have left the queue's count by the time any job hears.
        #[test]
        fn each_job_gets_its_own_responses_or_the_refusal(
            jobs_refused in prop::collection::vec(prop::collection::vec(any::<bool>(), 0..6), 0..8),
            refusal in prop::option::of(prop_oneof![
                Just(Refusal::StorageFull),
                Just(Refusal::StorageFailed),
            ]),
        ) {
            // A refused item's response is told apart by its id: this bit, and its place.
            const REFUSED: u128 = 1 << 100;
            let total: usize = jobs_refused.iter().map(Vec::len).sum();
            let queued = Arc::new(AtomicUsize::new(total));
            let mut jobs = Vec::new();
            let mut heard = Vec::new();
            let mut executed = 0usize;
            for places in &jobs_refused {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let refused: Vec<(usize, Response)> = places
                    .iter()
                    .enumerate()
                    .filter(|(_, refused)| **refused)
                    .map(|(at, _)| {
                        let id = RequestId(REFUSED | at as u128);
                        (at, Response::new(id, Code::SystemBusy, Reason::DEADLINE_PASSED))
                    })
                    .collect();
                let count = places.len() - refused.len();
                executed += count;
                jobs.push(JobAnswer { answer: tx, count, refused });
                heard.push(rx);
            }
            let responses = (0..executed)
                .map(|i| Response::new(RequestId(i as u128), Code::Approved, Reason::NONE))
                .collect();
            BatchAnswers {
                after: 0,
                read: None,
                jobs,
                responses,
                taken: Taken { queued: queued.clone(), count: total },
            }
            .hand_over(refusal);
            prop_assert_eq!(queued.load(Ordering::Acquire), 0);
            let mut next = 0u128;
            for (mut rx, places) in heard.into_iter().zip(&jobs_refused) {
                match (rx.try_recv(), refusal) {
                    (Ok(Err(got)), Some(want)) => prop_assert_eq!(got, want),
                    (Ok(Ok(responses)), None) => {
                        let ids: Vec<u128> = responses.iter().map(|r| r.id.0).collect();
                        let want: Vec<u128> = places
                            .iter()
                            .enumerate()
                            .map(|(at, refused)| {
                                if *refused {
                                    REFUSED | at as u128
                                } else {
                                    next += 1;
                                    next - 1
                                }
                            })
                            .collect();
                        prop_assert_eq!(ids, want);
                    }
                    (other, _) => prop_assert!(false, "job {:?} heard {:?}", places, other),
                }
            }
        }
    }
}
