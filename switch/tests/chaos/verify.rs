//! Checking after a restart (steps 1 to 4 of the test's comment, and the clearing windows):
//! what to read, reading it without changing anything, sending again, and comparing with the
//! journal through `check`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use switch::client::Stream;
use switch::wire::{
    BalanceTarget, Operation, Request, RequestId, Response, ResponseBody, ResponseCode as Code,
    Status, TransferState,
};

use crate::Run;
use crate::check::{Observed, check_into, expires, expiry_secs_of, lost, mismatch, status_ids_for};
use crate::journal::{CALL_TIMEOUT, is_definitive};
use crate::load::fresh_id;
use crate::world::all_accounts;

/// Operations per frame when checking.
const CHECK_CHUNK: usize = 512;

/// Sends `requests` in chunks, a few chunks in flight at once; the answers in order.
async fn call_all(streams: &[Stream], requests: &[Request]) -> Result<Vec<Response>, String> {
    let mut out = Vec::with_capacity(requests.len());
    for group in requests.chunks(CHECK_CHUNK * streams.len()) {
        let calls: Vec<_> = group
            .chunks(CHECK_CHUNK)
            .zip(streams.iter().cycle())
            .map(|(chunk, stream)| {
                let (stream, chunk) = (stream.clone(), chunk.to_vec());
                tokio::spawn(async move {
                    tokio::time::timeout(CALL_TIMEOUT, stream.call(&chunk)).await
                })
            })
            .collect();
        for (call, chunk) in calls.into_iter().zip(group.chunks(CHECK_CHUNK)) {
            let answers = match call.await {
                Ok(Ok(Ok(answers))) => answers,
                other => return Err(format!("a check call failed: {other:?}")),
            };
            if answers.len() != chunk.len()
                || answers.iter().zip(chunk).any(|(a, q)| a.request_id != q.id)
            {
                return Err(format!(
                    "{} requests answered by {} results",
                    chunk.len(),
                    answers.len()
                ));
            }
            out.extend(answers);
        }
    }
    Ok(out)
}

/// Reads the status of `ids`; changes nothing.
async fn observe_statuses(
    streams: &[Stream],
    rng: &mut StdRng,
    ids: &[u128],
) -> Result<HashMap<u128, Status>, String> {
    let mut out = HashMap::with_capacity(ids.len());
    let queries: Vec<Request> = ids
        .iter()
        .map(|id| Request {
            id: fresh_id(rng),
            operation: Operation::TransferStatus {
                lookup: RequestId(*id),
            },
        })
        .collect();
    for (id, answer) in ids.iter().zip(call_all(streams, &queries).await?) {
        match answer.body {
            ResponseBody::TransferStatus(s) if answer.code == Code::Approved => {
                out.insert(*id, s);
            }
            _ => return Err(format!("status of {id:#x}: {answer:?}")),
        }
    }
    Ok(out)
}

/// Reads the status of `ids` and the balance of every account; changes nothing.
async fn observe_all(
    streams: &[Stream],
    rng: &mut StdRng,
    ids: &[u128],
) -> Result<Observed, String> {
    let mut observed = Observed {
        status: observe_statuses(streams, rng, ids).await?,
        ..Observed::default()
    };
    let accounts = all_accounts();
    let queries: Vec<Request> = accounts
        .iter()
        .map(|account| Request {
            id: fresh_id(rng),
            operation: Operation::BalanceInquiry {
                target: BalanceTarget::Account(*account),
            },
        })
        .collect();
    for (account, answer) in accounts.iter().zip(call_all(streams, &queries).await?) {
        match answer.body {
            ResponseBody::BalanceInquiry(b) if answer.code == Code::Approved => {
                observed.balances.insert(*account, (b.available, b.ledger));
            }
            _ => return Err(format!("balance of {account:?}: {answer:?}")),
        }
    }
    Ok(observed)
}

impl Run {
    /// Ids to check this time: everything sent in `cycle`, and a sample of the rest (or
    /// everything, at the end).
    fn check_set(&mut self, cycle: u32, all: bool) -> Vec<u128> {
        let journal = self.shared.journal.lock();
        let (mut recent, older): (Vec<u128>, Vec<u128>) = journal
            .order
            .iter()
            .copied()
            .partition(|id| all || journal.get(*id).is_some_and(|e| e.cycle >= cycle));
        let n = self.settings.sample.min(older.len());
        recent.extend(older.choose_multiple(&mut self.rng, n));
        recent
    }

    /// The ids to read for a check of `of`: what they act on, and every hold that may have
    /// expired since it was last read.
    fn status_ids(&self, of: &[u128], also: &[u128]) -> Vec<u128> {
        let journal = self.shared.journal.lock();
        let mut ids = status_ids_for(&journal, of);
        ids.extend(status_ids_for(&journal, also));
        ids.extend(
            journal
                .order
                .iter()
                .copied()
                .filter(|id| expires(&journal, *id) && !self.expired.contains(id)),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// A read-only pass. Holds may expire while it runs, so the statuses of the expiring ones
    /// are read again after the balances; the pass is repeated until they stood still.
    async fn observe(&mut self, streams: &[Stream], ids: &[u128]) -> Result<Observed, String> {
        let volatile: Vec<u128> = {
            let journal = self.shared.journal.lock();
            ids.iter()
                .copied()
                .filter(|id| expires(&journal, *id))
                .collect()
        };
        for _ in 0..10 {
            self.report.statuses_checked += ids.len() as u64;
            let mut observed = observe_all(streams, &mut self.rng, ids).await?;
            let again = observe_statuses(streams, &mut self.rng, &volatile).await?;
            let still = volatile.iter().all(|id| {
                observed.status.get(id).map(|s| s.state) == again.get(id).map(|s| s.state)
            });
            if still {
                observed.known_expired = self.expired.clone();
                return Ok(observed);
            }
        }
        Err("holds kept expiring during ten read-only passes".to_string())
    }

    /// Remembers the holds a pass saw expired.
    fn note_expired(&mut self, observed: &Observed) {
        self.expired.extend(
            observed
                .status
                .iter()
                .filter(|(_, s)| s.state == TransferState::Expired)
                .map(|(id, _)| *id),
        );
    }

    /// Steps 1 to 4 of the module comment, after a restart.
    pub async fn verify(
        &mut self,
        streams: &[Stream],
        cycle: u32,
        all: bool,
    ) -> Result<(), String> {
        let check = self.check_set(cycle, all);
        let unknown = self.shared.journal.lock().unknown();
        let applied = self.read_only(streams, cycle, &unknown, &check).await?;
        self.resend_unknown(streams, cycle, &unknown, &applied)
            .await?;
        self.repeat_acknowledged(streams, cycle, &check).await?;
        // At the end, first let every expiring hold fall due, with time to spare for the
        // switch's expiry pass.
        if all {
            tokio::time::sleep(self.until_all_due() + Duration::from_millis(1000)).await;
        }
        // Step 4: everything definitive now, statuses and balances again.
        let ids = self.status_ids(&unknown, &check);
        let mut observed = self.observe(streams, &ids).await?;
        observed.all_due = all;
        let still = {
            let journal = self.shared.journal.lock();
            check_into(&journal, &observed, &mut self.problems, cycle, "after")
        };
        self.note_expired(&observed);
        if !still.is_empty() {
            self.problems.push(mismatch(
                None,
                format!("{} requests still without an outcome", still.len()),
            ));
            return Ok(());
        }
        self.check_clearing(streams, cycle).await
    }

    /// Step 1, read-only, before anything is sent again. Returns the requests without an
    /// answer that were found to have taken effect.
    async fn read_only(
        &mut self,
        streams: &[Stream],
        cycle: u32,
        unknown: &[u128],
        check: &[u128],
    ) -> Result<HashSet<u128>, String> {
        let ids = self.status_ids(unknown, check);
        let observed = self.observe(streams, &ids).await?;
        let applied = {
            let journal = self.shared.journal.lock();
            check_into(
                &journal,
                &observed,
                &mut self.problems,
                cycle,
                "before re-sending",
            )
        };
        self.report.in_flight_found_applied += applied.len() as u64;
        self.note_expired(&observed);
        Ok(applied)
    }

    /// Step 2: the requests without an answer, sent again until each has its definitive
    /// outcome, which must agree with step 1.
    async fn resend_unknown(
        &mut self,
        streams: &[Stream],
        cycle: u32,
        unknown: &[u128],
        applied: &HashSet<u128>,
    ) -> Result<(), String> {
        let mut pending: Vec<Request> = {
            let journal = self.shared.journal.lock();
            unknown
                .iter()
                .filter_map(|id| journal.get(*id).map(|e| e.request.clone()))
                .collect()
        };
        for attempt in 0.. {
            if pending.is_empty() {
                break;
            }
            if attempt == 20 {
                return Err(format!("{} requests answered only 91/96", pending.len()));
            }
            let answers = call_all(streams, &pending).await?;
            let mut again = Vec::new();
            {
                let mut journal = self.shared.journal.lock();
                for (request, answer) in pending.iter().zip(answers) {
                    if !is_definitive(&answer) {
                        again.push(request.clone());
                        continue;
                    }
                    let id = request.id.0;
                    if applied.contains(&id) && answer.code != Code::Approved {
                        self.problems.push(mismatch(
                            Some(id),
                            format!(
                                "cycle {cycle}: {id:#x} took effect, yet is answered {:?}",
                                answer.code
                            ),
                        ));
                    }
                    if let Some(entry) = journal.entries.get_mut(&id) {
                        entry.response = Some(answer);
                    }
                }
            }
            pending = again;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Step 3: acknowledged requests again, which must get the original answer, exactly.
    async fn repeat_acknowledged(
        &mut self,
        streams: &[Stream],
        cycle: u32,
        check: &[u128],
    ) -> Result<(), String> {
        let repeats: Vec<(Request, Response)> = {
            let journal = self.shared.journal.lock();
            check
                .iter()
                .filter_map(|id| {
                    let e = journal.get(*id)?;
                    Some((e.request.clone(), e.response.clone()?))
                })
                .collect()
        };
        let requests: Vec<Request> = repeats.iter().map(|(q, _)| q.clone()).collect();
        let answers = call_all(streams, &requests).await?;
        self.report.repeats_checked += answers.len() as u64;
        for ((request, original), answer) in repeats.iter().zip(answers) {
            if answer != *original {
                self.problems.push(lost(
                    request.id.0,
                    format!(
                        "cycle {cycle}: {:#x} ({:?}) was answered {original:?}, and after the \
                         restart {answer:?}",
                        request.id.0,
                        request.operation.op()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// How long until every expiring hold in the journal is due.
    fn until_all_due(&self) -> Duration {
        let journal = self.shared.journal.lock();
        journal
            .order
            .iter()
            .filter_map(|id| journal.get(*id))
            .filter(|e| expiry_secs_of(&e.request) > 0)
            .map(|e| {
                let secs = Duration::from_secs(u64::from(expiry_secs_of(&e.request)));
                secs.saturating_sub(e.sent_at.elapsed())
            })
            .max()
            .unwrap_or_default()
    }

    /// Every approved capture, sale and refund is cleared in exactly one window, kills and
    /// closes (every 2 s, on the switch's own schedule) notwithstanding: the windows' counts
    /// add up to the approvals in the journal, every outcome being definitive by now.
    async fn check_clearing(&mut self, streams: &[Stream], cycle: u32) -> Result<(), String> {
        let list = Request {
            id: fresh_id(&mut self.rng),
            operation: Operation::ListWindows,
        };
        let answer = call_all(streams, &[list]).await?.remove(0);
        let ResponseBody::ListWindows(windows) = &answer.body else {
            return Err(format!("ListWindows answered {answer:?}"));
        };
        // The open window comes first and has the highest id; ids start at 1.
        let open = windows.first().map_or(0, |w| w.window.0);
        if windows.len() as u64 != open {
            self.report.clearing_checks_skipped += 1;
            return Ok(());
        }
        let cleared: u64 = windows.iter().map(|w| w.transfer_count).sum();
        let approved = {
            let journal = self.shared.journal.lock();
            journal
                .entries
                .values()
                .filter(|e| {
                    matches!(
                        e.request.operation,
                        Operation::Capture { .. }
                            | Operation::Sale { .. }
                            | Operation::Refund { .. }
                    )
                })
                .filter(|e| {
                    e.response
                        .as_ref()
                        .is_some_and(|r| r.code == Code::Approved)
                })
                .count() as u64
        };
        self.report.clearing_checks += 1;
        self.report.windows_seen = open;
        if cleared != approved {
            self.problems.push(mismatch(
                None,
                format!(
                    "cycle {cycle}: {open} clearing windows hold {cleared} captures, sales and \
                     refunds; {approved} were approved"
                ),
            ));
        }
        Ok(())
    }
}
