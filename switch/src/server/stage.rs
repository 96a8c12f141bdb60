//! The ledger stage: one thread that owns the replica (the core behind its Raft node), batches
//! what is queued, proposes it, and answers only what is committed.
//!
//! On the leader a batch is executed at once, its journal record proposed as one Raft entry,
//! and its answers wait in the pipeline until that entry is committed: written and synced on a
//! majority of the replicas (for a cluster of one, on this disk). A follower answers every
//! request "not leader", and applies the entries its leader commits. The same thread takes the
//! replica's messages from the link, its ticks, and the log writer's word that a write is
//! durable; everything Raft asks for (messages, writes, snapshots to install) is done between
//! batches.
//!
//! It speaks the core's types only: a job is core requests, its answer core responses or a
//! refusal of them all. What they are on the wire, and the metrics of what was answered, are
//! the connection's business; the log writer's thread only hands answers over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use ledger::Timestamp;
use ledger::bell::Bell;
use ledger::storage::{FileStorage, Storage};
use ledger::wal::{Wal, WalError};
use parking_lot::RwLock;
use raft::eraftpb::SnapshotMetadata;

use crate::clearing::WindowDetails;
use crate::cluster::transport::{Inbound, Inbox, Link};
use crate::codes::{Code, Reason};
use crate::config::settings::StageSettings;
use crate::core::snapshot::RestoreConfig;
use crate::core::{Core, Prepared, Response};
use crate::replica::{Node, Output, Proposed, Refused, Write};
use crate::routing::RouteTable;
use crate::server::replication::{self, FileDisk, Mirror, ReplicaState};
use crate::server::snapshots::{Covered, Snapshots, Target};

pub mod membership;
pub mod overload;
mod pipeline;
use crate::server::telemetry;
use overload::{Shedder, Signal};
use pipeline::{BatchAnswers, JobAnswer, Pipeline, Taken};

/// Consecutive requests of one frame, waiting for the stage.
pub struct Job {
    pub items: Vec<Prepared>,
    /// Where the answer goes.
    pub answer: tokio::sync::oneshot::Sender<Answered>,
    /// When the frame was read: the start of each item's queueing delay.
    pub received: Instant,
    /// Each item's deadline, in item order; empty when none has one.
    deadlines: Vec<Option<Instant>>,
    /// The earliest of `deadlines`: the stage looks at them one by one only once it has passed.
    earliest: Option<Instant>,
}

impl Job {
    /// `deadlines` holds one for each item, or is empty (none has one).
    pub fn new(
        items: Vec<Prepared>,
        deadlines: Vec<Option<Instant>>,
        received: Instant,
        answer: tokio::sync::oneshot::Sender<Answered>,
    ) -> Self {
        debug_assert!(deadlines.is_empty() || deadlines.len() == items.len());
        let earliest = deadlines.iter().flatten().min().copied();
        let deadlines = if earliest.is_some() {
            deadlines
        } else {
            Vec::new()
        };
        Job {
            items,
            answer,
            received,
            deadlines,
            earliest,
        }
    }

    /// Answers every request of the job with one refusal.
    pub fn refuse(self, refusal: Refusal) {
        let _ = self.answer.send(Err(refusal));
    }
}

/// The stage's answer to a job: a response for each item, in item order, or a refusal of them
/// all (nothing of the job was executed, or, after a log failure, nothing of it is durable).
pub type Answered = Result<Vec<Response>, Refusal>;

/// Why the stage answered none of a job's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full, or closed for shutdown.
    Busy,
    /// The log ran out of space: a retry after the operator frees space and restarts succeeds.
    StorageFull,
    /// The log failed otherwise.
    StorageFailed,
    /// The stage stopped without answering.
    Stopped,
    /// This replica does not lead: the requests go to the leader (its client address, if
    /// known). They were not executed here, or, taken while it led, may have been: the leader
    /// decides, and answers a repeat with the original answer.
    NotLeader(Option<SocketAddr>),
}

impl Refusal {
    /// The response code every refused request gets: 91 for what a retry can cure, 96
    /// otherwise.
    pub fn code(self) -> Code {
        match self {
            Refusal::Busy | Refusal::StorageFull | Refusal::NotLeader(_) => Code::SystemBusy,
            Refusal::StorageFailed | Refusal::Stopped => Code::SystemMalfunction,
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            Refusal::Busy => Reason::OVERLOADED,
            Refusal::StorageFull => Reason::STORAGE_FULL,
            Refusal::StorageFailed => Reason::STORAGE_FAILURE,
            Refusal::Stopped => Reason::INTERNAL,
            Refusal::NotLeader(_) => Reason::OVERLOADED,
        }
    }
}

/// The sending side of the stage's channel. When the last one goes it closes the bell: the
/// stage stops sleeping and finds the channel disconnected as soon as `tx` is dropped, right
/// after.
struct Sending {
    tx: Sender<Job>,
    bell: Arc<Bell>,
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.bell.close();
    }
}

/// The queue in front of the stage, bounded in requests (not frames).
#[derive(Clone)]
pub struct Queue {
    tx: Arc<Sending>,
    queued: Arc<AtomicUsize>,
    queued_max: usize,
    /// 0 while the log works; once it has failed, the reason every request gets from then on
    /// (`Reason::STORAGE_FULL` or `Reason::STORAGE_FAILURE`).
    failed: Arc<AtomicU8>,
}

impl Queue {
    /// Queues a job, or gives it back when the queue is full or the stage has failed.
    pub fn try_push(&self, job: Job) -> Result<(), (Job, Refusal)> {
        if let Some(refusal) = self.failure() {
            return Err((job, refusal));
        }
        let n = job.items.len();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.queued_max {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            metrics::counter!("switch_queue_full_total").increment(1);
            return Err((job, Refusal::Busy));
        }
        depth_gauge().increment(n as f64);
        match self.tx.tx.try_send(job) {
            Ok(()) => {
                self.tx.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                leave(&self.queued, n);
                Err((job, Refusal::Busy))
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Why the stage stopped acknowledging, once its log has failed.
    pub fn failure(&self) -> Option<Refusal> {
        match Reason(self.failed.load(Ordering::Acquire)) {
            Reason::NONE => None,
            Reason::STORAGE_FULL => Some(Refusal::StorageFull),
            _ => Some(Refusal::StorageFailed),
        }
    }

    /// The flag behind `failure`, for `/readyz`.
    pub(crate) fn failed_flag(&self) -> Arc<AtomicU8> {
        self.failed.clone()
    }
}

/// At most one line that shedding started this often (`switch_shedding` says when exactly).
const SHEDDING_LINE_EVERY: Duration = Duration::from_secs(10);

/// At most one `authorization holds expired` line this often (the counter is exact).
const EXPIRY_LINE_EVERY: Duration = Duration::from_secs(10);

/// How often the ledger stage sets what `/cluster` and the replica's gauges say (a read of
/// Raft's progress allocates).
const REPLICA_GAUGES_EVERY: Duration = Duration::from_millis(100);

/// How often the ledger stage reads the ledger's counts for `switch_holds_live` and
/// `switch_accounts` (a read takes every shard's lock in turn).
const LEDGER_GAUGES_EVERY: Duration = Duration::from_secs(1);

fn set_ledger_gauges(core: &Core) {
    let stats = core.ledger().stats();
    metrics::gauge!("switch_holds_live").set(stats.pending_live as f64);
    metrics::gauge!("switch_accounts").set(stats.accounts as f64);
}

/// `switch_queue_depth_requests`: moved by every change to the count of requests the stage
/// holds, up and down, so that it reads 0 whenever nothing is held.
fn depth_gauge() -> metrics::Gauge {
    metrics::gauge!("switch_queue_depth_requests")
}

/// `n` requests the stage held leave it (answered or refused).
fn leave(queued: &AtomicUsize, n: usize) {
    queued.fetch_sub(n, Ordering::AcqRel);
    depth_gauge().decrement(n as f64);
}

/// Why a log failure stops acknowledgements, as the refusal every request gets from then on.
fn failure_refusal(error: &WalError) -> Refusal {
    if error.is_out_of_space() {
        Refusal::StorageFull
    } else {
        Refusal::StorageFailed
    }
}

/// The recovered replica and the open journal, ready to run.
pub struct Stage {
    node: Node,
    wal: Wal,
    /// Where each entry's record is in the log, for pruning it behind snapshots.
    mirror: Mirror,
    snapshots: Snapshots,
    settings: StageSettings,
    /// Shared with the `Queue` (see there); set before any request hears of a failure.
    failed: Arc<AtomicU8>,
    /// Batches executed and proposed, answered as their entries commit.
    pipeline: Arc<Pipeline>,
    /// The sequence of the last record handed to the log.
    submitted: u64,
    /// Records handed to the log and not yet durable, at most (`[wal] queue_depth_max`).
    in_flight_max: u64,
    /// Reads the size of the log's files, for `switch_wal_bytes`.
    wal_bytes: telemetry::WalBytes,
    /// Rung by the link, the log writer and the connections; the stage sleeps on it.
    bell: Arc<Bell>,
    inbox_tx: crossbeam_channel::Sender<Inbound>,
    inbox: Receiver<Inbound>,
    /// The last write (see `replica::Write`) the log made durable, set on the writer's thread.
    durable_ticket: Arc<AtomicU64>,
    link: Option<Link>,
    replica: Arc<ReplicaState>,
    /// Reports of windows closed by entries not yet committed, with those entries' indexes.
    reports_waiting: Vec<(u64, Arc<WindowDetails>)>,
    /// Membership changes asked for, and the one proposed.
    changes: membership::Changes,
    /// Whether new payments are shed, from the queueing delays of the batches taken.
    shedder: Shedder,
    /// What the connections read of `shedder`.
    signal: Arc<Signal>,
    /// Shedding can start and stop many times a second: one line per period says how often.
    shedding_starts: telemetry::Tally,
}

/// What the last record of a write does once durable: sends the messages that waited for the
/// write, tells the replica the ticket, and, for a sole replica, commits through `commits`.
struct Durable {
    ticket: u64,
    commits: Option<u64>,
    messages: Vec<raft::eraftpb::Message>,
}

/// The wall clock as a ledger timestamp, never going backwards within the process.
struct Clock {
    last: u64,
}

impl Clock {
    fn now(&mut self) -> Timestamp {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.last = self.last.max(wall);
        Timestamp(self.last)
    }
}

impl Stage {
    /// Loads the newest usable snapshot (if any; `core` is the fresh state otherwise), reads
    /// the journal in the log directory after it, and opens the journal for appending.
    pub fn recover(core: Core, settings: StageSettings) -> anyhow::Result<Stage> {
        let dir = &settings.wal_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let storage =
            FileStorage::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        Self::recover_on(core, settings, storage)
    }

    /// Reads the journal in `storage` into `core` and opens it for appending (tests run the
    /// stage on a simulated disk this way).
    pub fn recover_on<S: Storage + Clone>(
        core: Core,
        settings: StageSettings,
        storage: S,
    ) -> anyhow::Result<Stage> {
        let snapshots = Snapshots::open(&settings.snapshots, storage.clone(), &core)?;
        let restore = RestoreConfig::like(&core);
        let voters = settings.replica.node.voters.clone();
        let recovered = replication::recover(
            core,
            &settings.data_dir,
            snapshots.storage(),
            &storage,
            &settings.wal,
            &voters,
        )?;
        let replication::Recovered {
            mut core,
            base,
            entries,
            commit,
            applied,
            hard_state,
            wal: wal_recovered,
            mirror,
            ..
        } = recovered;
        // Windows closed in the log whose reports a crash kept from being written.
        for details in core.take_reports() {
            write_report(&settings.report_dir, &details);
        }
        if let Some(requests) = settings.preallocate_requests {
            preallocate(&mut core, requests);
        }
        let disk = FileDisk::new(
            &settings.data_dir,
            snapshots.storage().clone(),
            restore,
            snapshots.initial(),
        )?;
        let node = Node::new(
            &settings.replica.node,
            core,
            Box::new(disk),
            base,
            &entries,
            hard_state,
            commit,
            applied,
            &crate::replica::logger(settings.replica.node.id),
        )
        .map_err(|e| anyhow::anyhow!("starting the replica: {e}"))?;
        let submitted = wal_recovered.resume.next_sequence().saturating_sub(1);
        let wal_bytes = wal_bytes_reader(storage.clone());
        let wal = Wal::open(storage, settings.wal.clone(), wal_recovered.resume)
            .context("opening the write-ahead log")?;
        let replica = Arc::new(ReplicaState::new(
            settings.replica.node.id,
            settings.replica.members.clone(),
        ));
        let (inbox_tx, inbox) = crossbeam_channel::bounded(settings.replica.inbox_max.max(16));
        let shedder = Shedder::new(settings.overload);
        let signal = Arc::new(Signal::new(&shedder));
        Ok(Stage {
            pipeline: Arc::new(Pipeline::new(submitted, node.committed())),
            node,
            wal,
            mirror,
            snapshots,
            failed: Arc::new(AtomicU8::new(0)),
            submitted,
            in_flight_max: settings.wal.queue_depth_max.max(1) as u64,
            settings,
            wal_bytes,
            bell: Arc::new(Bell::default()),
            inbox_tx,
            inbox,
            durable_ticket: Arc::new(AtomicU64::new(0)),
            link: None,
            replica,
            reports_waiting: Vec::new(),
            changes: membership::Changes::default(),
            shedder,
            signal,
            shedding_starts: telemetry::Tally::new(SHEDDING_LINE_EVERY),
        })
    }

    /// Whether new payments are shed, and the retry-after hint, for the connections.
    pub fn overload(&self) -> Arc<Signal> {
        self.signal.clone()
    }

    /// What reads the size of the log's files on disk (for each scrape of `/metrics`).
    pub fn wal_bytes(&self) -> telemetry::WalBytes {
        self.wal_bytes.clone()
    }

    /// Where the link delivers what other replicas send.
    pub fn inbox(&self) -> Inbox {
        Inbox {
            tx: self.inbox_tx.clone(),
            bell: self.bell.clone(),
            replica: self.replica.clone(),
        }
    }

    /// Where the connections hand membership changes.
    pub fn membership(&self) -> membership::Desk {
        self.changes.desk(self.bell.clone())
    }

    /// Sends this replica's messages to the others over `link`.
    pub fn attach(&mut self, link: Link) {
        self.link = Some(link);
    }

    /// The replica's role and progress, as the stage last set them.
    pub fn replica(&self) -> Arc<ReplicaState> {
        self.replica.clone()
    }

    /// Starts the stage thread. It ends when every `Queue` clone is dropped and the queue is
    /// empty, after syncing the journal.
    pub fn spawn(
        self,
        routes: Arc<RwLock<Arc<RouteTable>>>,
    ) -> (Queue, JoinHandle<anyhow::Result<()>>) {
        // The channel holds frames; the request count is bounded separately by `queued`.
        let queued_max = self.settings.queue_depth_max;
        let (tx, rx) = crossbeam_channel::bounded(queued_max);
        let queue = Queue {
            tx: Arc::new(Sending {
                tx,
                bell: self.bell.clone(),
            }),
            queued: Arc::new(AtomicUsize::new(0)),
            queued_max,
            failed: self.failed.clone(),
        };
        metrics::gauge!("switch_storage_failed").set(0.0);
        metrics::gauge!("switch_shedding").set(0.0);
        let queued = queue.queued.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-stage".into())
            .spawn(move || StageThread::start(self, rx, queued, routes)?.run())
            .expect("spawning the ledger stage thread");
        (queue, handle)
    }

    /// Takes what the link and the log writer said, ticks Raft when due, and does what Raft
    /// has ready: messages out, records to the log, entries applied, answers released.
    fn drive(&mut self) -> Result<(), StageError> {
        for inbound in self.inbox.try_iter().take(4096) {
            match inbound {
                Inbound::Message(m) => self.node.step(m),
                Inbound::Unreachable(peer) => self.node.report_unreachable(peer),
                Inbound::SnapshotSent { to, ok } => self.node.report_snapshot(to, ok),
            }
        }
        self.node
            .persisted(self.durable_ticket.load(Ordering::Acquire));
        self.changes.take(&mut self.node, &self.replica);
        let mut out = Output::default();
        self.node.poll(&mut out).map_err(StageError::Replica)?;
        self.carry_out(out)?;
        // With the writes on their way: a follower applies while its log syncs.
        self.node.apply().map_err(StageError::Replica)
    }

    /// Does what `poll` asked, in order: messages, writes, commits, role changes.
    fn carry_out(&mut self, out: Output) -> Result<(), StageError> {
        if let Some(link) = &self.link {
            for m in out.messages {
                link.send(m);
            }
        }
        if let Some(role) = out.role {
            if role.is_leader {
                tracing::info!(term = role.term, "this replica leads");
            } else if out.deposed {
                tracing::warn!(
                    term = role.term,
                    leader = role.leader,
                    "this replica no longer leads: what it had not answered goes to the leader"
                );
            }
            self.replica.set_role(role);
        }
        if out.deposed {
            // Reports of closes that may never commit: a rebuilt core offers the committed ones.
            self.reports_waiting.clear();
            self.pipeline
                .deposed(Refusal::NotLeader(self.replica.leader_address()));
            self.changes.deposed(self.replica.leader_address());
        }
        for w in out.writes {
            self.write(w)?;
        }
        self.pipeline.committed(out.committed, out.reads_confirmed);
        self.changes.committed(&self.node, &self.replica);
        Ok(())
    }

    /// Hands a write's records to the log; the last one's durability sends the messages that
    /// waited for it (from the log writer's thread: a follower's answer to an append does not
    /// wait for this thread) and tells the replica.
    fn write(&mut self, w: Write) -> Result<(), StageError> {
        let n = w.records.len();
        let mut next_index = w.first_index;
        let mut messages = w.messages;
        for (k, record) in w.records.into_iter().enumerate() {
            let is_reset = k == 0 && w.reset.is_some();
            let entries = if is_reset { 0 } else { entries_in(&record) };
            let last = (k + 1 == n).then(|| Durable {
                ticket: w.ticket,
                commits: w.commits,
                messages: std::mem::take(&mut messages),
            });
            let sequence = self.submit(record, last).map_err(StageError::Log)?;
            if is_reset {
                self.mirror.reset();
                self.mirror.wrote_other(sequence);
            } else {
                for index in next_index..next_index + entries {
                    self.mirror.wrote(index, sequence);
                }
                next_index += entries;
            }
        }
        Ok(())
    }

    /// Waits until fewer than `in_flight_max` records are waiting to become durable.
    fn wait_for_log_queue(&self) -> Result<(), WalError> {
        self.pipeline
            .wait_durable(self.submitted.saturating_sub(self.in_flight_max - 1))
    }

    /// Hands a record to the log (after waiting for room in its queue) and returns its
    /// sequence. For the last record of a write, its durability sends the write's messages and
    /// is told to the replica (and, for a sole replica, commits its entries at once).
    fn submit(&mut self, payload: Vec<u8>, last: Option<Durable>) -> Result<u64, WalError> {
        self.wait_for_log_queue()?;
        let permit = match self.wal.reserve() {
            Ok(permit) => permit,
            Err(e) => {
                self.pipeline.done(Err(e.clone()), None, &self.failed);
                return Err(e);
            }
        };
        let len = payload.len();
        let (pipeline, failed, started) =
            (self.pipeline.clone(), self.failed.clone(), Instant::now());
        let (durable_ticket, bell) = (self.durable_ticket.clone(), self.bell.clone());
        let link = last
            .as_ref()
            .filter(|l| !l.messages.is_empty())
            .and_then(|_| self.link.clone());
        let sequence = permit.submit(
            payload,
            Box::new(move |result| {
                metrics::histogram!("switch_wal_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                let ok = result.is_ok();
                pipeline.done(result, last.as_ref().and_then(|l| l.commits), &failed);
                if let (true, Some(last)) = (ok, last) {
                    // Before the ticket: whatever the stage releases for a later ready goes
                    // after these.
                    if let Some(link) = &link {
                        for m in last.messages {
                            link.send(m);
                        }
                    }
                    durable_ticket.fetch_max(last.ticket, Ordering::AcqRel);
                    bell.ring();
                }
            }),
        );
        self.submitted = sequence;
        self.snapshots.appended(len);
        Ok(sequence)
    }

    /// Takes a batch's jobs at `at`: the queueing delays go to the shedder, and the items
    /// whose deadline has passed, and the new payments shed, are answered 91 without reaching
    /// the core (PROTOCOL.md 8.1, 8.2). What is left runs in the core.
    fn screen(&mut self, jobs: Vec<Job>, at: Instant, count: usize) -> Screened {
        if let Some(oldest) = overload::head_delay(at, jobs.iter().map(|j| j.received)) {
            metrics::histogram!("switch_queue_delay_seconds").record(oldest.as_secs_f64());
            let changed = self.shedder.observe(at, oldest);
            self.publish_shedding(changed, at);
        }
        let mut items = Vec::with_capacity(count);
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let expired = job.earliest.is_some_and(|d| d <= at);
            let shed = self
                .shedder
                .sheds(at.saturating_duration_since(job.received));
            let n = job.items.len();
            if !expired && !shed {
                items.extend(job.items);
                answers.push(JobAnswer::whole(job.answer, n));
                continue;
            }
            let mut refused = Vec::new();
            for (i, item) in job.items.into_iter().enumerate() {
                let passed = expired
                    && job
                        .deadlines
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|d| d <= at);
                let reason = if passed {
                    Reason::DEADLINE_PASSED
                } else if shed && is_new_payment(&item.item.request) {
                    Reason::SHED
                } else {
                    items.push(item);
                    continue;
                };
                refused.push((i, Response::new(item.item.id, Code::SystemBusy, reason)));
            }
            answers.push(JobAnswer {
                answer: job.answer,
                count: n - refused.len(),
                refused,
            });
        }
        Screened { items, answers }
    }

    /// Tells the connections whether new payments are shed, and, if that `changed`, the
    /// metrics and (at most once per `SHEDDING_LINE_EVERY`) the log.
    fn publish_shedding(&mut self, changed: bool, now: Instant) {
        self.signal.publish(&self.shedder);
        if !changed {
            return;
        }
        let on = self.shedder.shedding();
        metrics::gauge!("switch_shedding").set(if on { 1.0 } else { 0.0 });
        if let Some(times) = self.shedding_starts.count(u64::from(on), now) {
            tracing::warn!(
                times,
                retry_after_ms = self.shedder.retry_after().as_millis() as u64,
                "the ledger stage's queueing delay stayed over its target: shedding new \
                 payments (times it started since the last such line)"
            );
        }
    }

    /// Executes a batch on the leader; its answers leave once its entry (and whatever it read
    /// from earlier ones) is committed. The stage goes on to the next batch meanwhile. A batch
    /// whose every item was refused by `screen` is answered at once.
    fn execute(
        &mut self,
        screened: Screened,
        now: Timestamp,
        taken: Taken,
    ) -> Result<(), StageError> {
        let Screened { items, answers } = screened;
        if items.is_empty() {
            drop(taken);
            for job in answers {
                job.hand_over(Vec::new());
            }
            return Ok(());
        }
        let executed = items.len();
        let started = Instant::now();
        let proposed = self.node.execute(items, now);
        metrics::histogram!("switch_stage_apply_seconds").record(started.elapsed().as_secs_f64());
        match proposed {
            Ok(Proposed {
                responses,
                after,
                read,
            }) => {
                debug_assert_eq!(responses.len(), executed, "a response per request");
                self.hold_reports(after);
                self.pipeline.answer(BatchAnswers {
                    after,
                    read,
                    jobs: answers,
                    responses,
                    taken,
                });
                self.drive()
            }
            Err(Refused::Failed(e)) => {
                drop(taken);
                for job in answers {
                    let _ = job.answer.send(Err(Refusal::StorageFailed));
                }
                Err(StageError::Replica(e))
            }
            Err(Refused::NotLeader { .. } | Refused::NotReady) => {
                drop(taken);
                let refusal = Refusal::NotLeader(self.replica.leader_address());
                for job in answers {
                    let _ = job.answer.send(Err(refusal));
                }
                Ok(())
            }
        }
    }

    /// Reports of windows closed by the entries up to `index` wait until it is committed.
    fn hold_reports(&mut self, index: u64) {
        for details in self.node.core_mut().take_reports() {
            self.reports_waiting.push((index, details));
        }
    }

    /// Reports whose closes are committed go to the writer (a follower's, and a rebuilt
    /// core's, are committed as they are made).
    fn hand_reports(&mut self, reports: &ReportWriter) {
        let applied = self.node.applied();
        self.hold_reports(applied);
        let committed = self.pipeline.committed_index();
        self.reports_waiting.retain(|(index, details)| {
            if *index <= committed {
                reports.hand(details.clone());
                false
            } else {
                true
            }
        });
    }

    /// A snapshot finished: the entries it covers leave memory, and the log's mirror forgets
    /// what the oldest kept snapshot covers.
    fn covered(&mut self, covered: Option<Covered>) {
        if let Some(c) = covered {
            self.node.compacted(c.index, c.term);
            self.mirror.forget_through(self.snapshots.oldest_kept());
        }
    }

    /// Starts a snapshot if one is due: of the newest entry committed and applied here, built
    /// from the entries since the newest snapshot (or captured, if nothing is uncommitted).
    fn maybe_snapshot(&mut self) {
        let (wanted, covered) = self.snapshots.wants_start(self.node.snapshot_wanted());
        self.covered(covered);
        if !wanted {
            return;
        }
        let Some(meta) = self.snapshot_meta() else {
            return;
        };
        let store = self.node.store();
        let base = store.base().index;
        let entries = (base + 1..=meta.index)
            .filter_map(|i| store.entry(i).cloned())
            .collect();
        let prune_through = self
            .mirror
            .covered_by(self.snapshots.oldest_kept_after(meta.index));
        let capture = (self.node.applied() == meta.index).then(|| self.node.core());
        self.snapshots.start(
            Target {
                base,
                entries,
                meta,
                prune_through,
            },
            capture,
        );
    }

    /// The metadata of a snapshot of everything this replica may snapshot now, if that is
    /// past the newest snapshot.
    fn snapshot_meta(&self) -> Option<SnapshotMetadata> {
        let index = self.node.snapshot_index_max();
        let store = self.node.store();
        if index <= store.base().index {
            return None;
        }
        Some(SnapshotMetadata {
            index,
            term: store.entry(index)?.term,
            conf_state: Some(store.conf_state_at(index)).into(),
            ..SnapshotMetadata::default()
        })
    }
}

/// A batch's items that go to the core, and each job's answer with what `Stage::screen`
/// refused of it.
struct Screened {
    items: Vec<Prepared>,
    answers: Vec<JobAnswer>,
}

/// `first` and what `next` gives after it, in order, until they hold at least `bound`
/// requests or `next` has nothing more; and how many requests they hold. A job is never
/// split, so only the last one taken can take the batch to or past `bound`.
fn fill_batch<J>(
    first: J,
    mut next: impl FnMut() -> Option<J>,
    len: impl Fn(&J) -> usize,
    bound: usize,
) -> (Vec<J>, usize) {
    let mut count = len(&first);
    let mut jobs = vec![first];
    while count < bound {
        let Some(job) = next() else { break };
        count += len(&job);
        jobs.push(job);
    }
    (jobs, count)
}

/// Authorize and Sale: what is shed under overload (PROTOCOL.md 8.2).
fn is_new_payment(request: &crate::core::Request) -> bool {
    matches!(
        request,
        crate::core::Request::Authorize { .. } | crate::core::Request::Sale { .. }
    )
}

/// How many entries an entries record holds (the count after its type and commit index).
fn entries_in(record: &[u8]) -> u64 {
    record
        .get(9..13)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u64::from(u32::from_le_bytes(b)))
}

/// Why the stage stops acknowledging.
#[derive(Debug)]
enum StageError {
    Log(WalError),
    Replica(String),
}

impl StageError {
    fn refusal(&self) -> Refusal {
        match self {
            StageError::Log(e) => failure_refusal(e),
            StageError::Replica(_) => Refusal::StorageFailed,
        }
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageError::Log(e) => write!(f, "write-ahead log failed: {e}"),
            StageError::Replica(e) => write!(f, "replica failed: {e}"),
        }
    }
}

/// Reserves the memory for `requests` remembered requests up front (`Core::preallocate`).
fn preallocate(core: &mut Core, requests: u64) {
    let started = Instant::now();
    let bytes = core.preallocate();
    tracing::info!(
        mib = bytes >> 20,
        requests,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "reserved the memory for every request remembered"
    );
}

/// Reads the size of the log's files in `storage`, for `switch_wal_bytes`.
fn wal_bytes_reader<S: Storage + 'static>(storage: S) -> telemetry::WalBytes {
    Arc::new(move || {
        let names = storage.list().ok()?;
        // A file deleted since the listing has no size: it takes no room.
        Some(names.iter().filter_map(|n| storage.len_bytes(n).ok()).sum())
    })
}

/// What the stage's queue gave.
enum Next {
    Job(Job),
    /// Nothing before the next tick was due, or something else woke the stage.
    Idle,
    /// Every sender is gone: the switch is stopping.
    Closed,
}

/// The stage thread: the stage, the receiving end of its queue, and the work it keeps time
/// for besides the batches.
struct StageThread {
    stage: Stage,
    jobs: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    routes: Arc<RwLock<Arc<RouteTable>>>,
    clock: Clock,
    /// When the periodic work last ran.
    ticked: Instant,
    /// When Raft was last ticked.
    raft_ticked: Instant,
    /// Holds expired since the last `authorization holds expired` line.
    expiries: telemetry::Tally,
    /// The last expiry pass expired as many holds as a pass may: more may be due, and the
    /// next pass runs after the next batch rather than at the next tick.
    expiry_behind: bool,
    gauges_set: Instant,
    replica_gauges_set: Instant,
    /// `switch_stage_wakeups_total`.
    wakeups: metrics::Counter,
    reports: ReportWriter,
    /// A job taken from the queue while waiting, not yet executed.
    held: Option<Job>,
}

impl StageThread {
    fn start(
        stage: Stage,
        jobs: Receiver<Job>,
        queued: Arc<AtomicUsize>,
        routes: Arc<RwLock<Arc<RouteTable>>>,
    ) -> anyhow::Result<StageThread> {
        let reports = ReportWriter::spawn(stage.settings.report_dir.clone())?;
        set_ledger_gauges(stage.node.core());
        Ok(StageThread {
            stage,
            jobs,
            queued,
            routes,
            clock: Clock { last: 0 },
            ticked: Instant::now(),
            raft_ticked: Instant::now(),
            expiries: telemetry::Tally::new(EXPIRY_LINE_EVERY),
            expiry_behind: false,
            gauges_set: Instant::now(),
            replica_gauges_set: Instant::now(),
            wakeups: metrics::counter!("switch_stage_wakeups_total"),
            reports,
            held: None,
        })
    }

    /// Takes batches until the queue closes, with Raft's work and the periodic work between
    /// them; then drains. After a failure it answers every request with it until the queue
    /// closes.
    fn run(mut self) -> anyhow::Result<()> {
        loop {
            if let Some(e) = self.stage.pipeline.failure() {
                return Err(self.fail_stop(&StageError::Log(e)));
            }
            if let Err(e) = self.raft_work() {
                return Err(self.fail_stop(&e));
            }
            let serving = self.stage.node.serving();
            let first = match serving {
                // A new leader takes no job until it has applied its log and committed an entry
                // of its term: the jobs wait in the queue meanwhile.
                Err(Refused::NotReady) => match self.wait() {
                    Next::Closed => return self.shut_down(),
                    _ => continue,
                },
                Err(Refused::NotLeader { .. }) => {
                    self.refuse_not_leader();
                    match self.wait() {
                        Next::Closed => return self.shut_down(),
                        _ => continue,
                    }
                }
                Err(Refused::Failed(e)) => {
                    return Err(self.fail_stop(&StageError::Replica(e)));
                }
                Ok(()) => match self.next_job() {
                    Next::Job(job) => Some(job),
                    Next::Idle => None,
                    Next::Closed => return self.shut_down(),
                },
            };
            // Once a tick, busy or idle. Not at every idle wake-up: at a few thousand requests a
            // second the stage is idle between any two, and a pass each time would log an
            // expiry entry (with its fdatasync, which the next request waits behind) for
            // every hold that fell due since the last. Between ticks only while a bounded
            // pass left holds due: one pass between two batches.
            let periodic = if self.ticked.elapsed() >= self.stage.settings.expiry_tick {
                self.periodic()
            } else if self.expiry_behind {
                self.expire_due().and_then(|()| self.stage.drive())
            } else {
                Ok(())
            };
            if let Err(e) = periodic {
                self.refuse(first.into_iter().collect(), &e);
                return Err(self.fail_stop(&e));
            }
            let result = match first {
                Some(first) => self.batch(first),
                None => self.idle(),
            };
            if let Err(e) = result {
                return Err(self.fail_stop(&e));
            }
        }
    }

    /// Ticks Raft when due and does what it has ready; updates what others read of the
    /// replica.
    fn raft_work(&mut self) -> Result<(), StageError> {
        let tick = self.stage.settings.replica.tick;
        while self.raft_ticked.elapsed() >= tick {
            self.raft_ticked += tick;
            self.stage.node.tick();
            if self.raft_ticked.elapsed() > tick * 8 {
                // Far behind (a long pause): one tick stands for the time lost.
                self.raft_ticked = Instant::now();
            }
        }
        self.stage.drive()?;
        self.stage.hand_reports(&self.reports);
        if self.gauges_set.elapsed() >= LEDGER_GAUGES_EVERY {
            self.gauges_set = Instant::now();
            set_ledger_gauges(self.stage.node.core());
        }
        if self.replica_gauges_set.elapsed() >= REPLICA_GAUGES_EVERY {
            self.replica_gauges_set = Instant::now();
            self.set_replica_gauges();
        }
        Ok(())
    }

    /// How long the stage may sleep: until the next Raft tick or periodic work. Periodic
    /// work (expiry passes, window closes) is the serving leader's: a replica that does not
    /// serve never does it, and would never sleep if it waited for it.
    fn sleep_for(&self) -> Duration {
        let raft = self
            .stage
            .settings
            .replica
            .tick
            .saturating_sub(self.raft_ticked.elapsed());
        if self.stage.node.serving().is_err() {
            return raft;
        }
        if self.expiry_behind {
            return Duration::ZERO;
        }
        let periodic = self
            .stage
            .settings
            .expiry_tick
            .saturating_sub(self.ticked.elapsed());
        raft.min(periodic)
    }

    /// Sleeps until a job, a message, a durable write, or the next tick; says whether the
    /// queue closed. A job that woke it is held for `next_job`.
    fn wait(&mut self) -> Next {
        if self.held.is_none() {
            let stage = &self.stage;
            let (jobs, inbox, durable) = (&self.jobs, &stage.inbox, &stage.durable_ticket);
            let seen = durable.load(Ordering::Acquire);
            stage.bell.wait_until(
                || !jobs.is_empty() || !inbox.is_empty() || durable.load(Ordering::Acquire) != seen,
                Some(self.sleep_for()),
            );
            self.wakeups.increment(1);
            match self.jobs.try_recv() {
                Ok(job) => self.held = Some(job),
                Err(TryRecvError::Disconnected) => return Next::Closed,
                Err(TryRecvError::Empty) => {}
            }
        }
        Next::Idle
    }

    /// The next job, waiting for one at most until the next tick is due (or until the link
    /// or the log writer has something for the stage).
    fn next_job(&mut self) -> Next {
        if let Some(job) = self.held.take() {
            return Next::Job(job);
        }
        match self.jobs.try_recv() {
            Ok(job) => return Next::Job(job),
            Err(TryRecvError::Disconnected) => return Next::Closed,
            Err(TryRecvError::Empty) => {}
        }
        if let Next::Closed = self.wait() {
            return Next::Closed;
        }
        match self.held.take() {
            Some(job) => Next::Job(job),
            None => Next::Idle,
        }
    }

    /// A replica that does not lead sends every queued job to the leader.
    fn refuse_not_leader(&mut self) {
        let refusal = Refusal::NotLeader(self.stage.replica.leader_address());
        let held = self.held.take();
        for job in held
            .into_iter()
            .chain(std::iter::from_fn(|| self.jobs.try_recv().ok()))
        {
            leave(&self.queued, job.items.len());
            job.refuse(refusal);
        }
    }

    /// The clock's work on the leader: the scheduled close of the open window if it is due,
    /// the expiry of due holds (proposed), and the gauges.
    fn periodic(&mut self) -> Result<(), StageError> {
        self.ticked = Instant::now();
        if self.stage.node.serving().is_err() {
            return Ok(());
        }
        let now = self.clock.now();
        if self
            .stage
            .node
            .core()
            .clearing()
            .due(now, self.stage.settings.close_every_ns)
        {
            self.close_on_schedule(now)?;
        }
        self.expire_due()?;
        self.stage.drive()
    }

    /// One expiry pass on the leader: the holds due now, at most `expiry_pass_max` of them.
    fn expire_due(&mut self) -> Result<(), StageError> {
        let now = self.clock.now();
        let at_most = self.stage.settings.expiry_pass_max;
        let expired = match self.stage.node.expire(now, Some(at_most)) {
            Ok(Some((holds, _))) => holds,
            Ok(None) | Err(Refused::NotLeader { .. } | Refused::NotReady) => 0,
            Err(Refused::Failed(e)) => return Err(StageError::Replica(e)),
        };
        self.expiry_behind = expired >= at_most as usize;
        if let Some(holds) = self.expiries.count(expired as u64, Instant::now()) {
            tracing::info!(
                holds,
                "authorization holds expired (since the last such line)"
            );
        }
        if expired > 0 {
            metrics::counter!("switch_holds_expired_total").increment(expired as u64);
            metrics::counter!("switch_expiry_passes_total").increment(1);
        }
        Ok(())
    }

    fn set_replica_gauges(&self) {
        let node = &self.stage.node;
        let status = node.status();
        let progress = status
            .progress
            .map(|p| p.iter().map(|(&id, pr)| (id, pr.matched)).collect())
            .unwrap_or_default();
        self.stage.replica.set_voters(node.voters());
        self.stage.replica.set_progress(
            node.committed(),
            node.applied(),
            node.last_index(),
            progress,
        );
    }

    /// Closes the open clearing window on the switch's own schedule, proposed like any
    /// request.
    fn close_on_schedule(&mut self, now: Timestamp) -> Result<(), StageError> {
        let core = self.stage.node.core();
        let item = core.scheduled_close();
        let window = core.clearing().open.id;
        match self.stage.node.execute_items(vec![item], now) {
            Ok(p) => {
                self.stage.hold_reports(p.after);
                match p.responses.first() {
                    Some(r) if r.code == Code::Approved => {
                        tracing::info!(window, "clearing window closed on schedule");
                    }
                    Some(r) => tracing::error!(
                        window,
                        code = r.code.as_u8(),
                        reason = r.reason.0,
                        "the scheduled close of a clearing window failed; it stays open"
                    ),
                    None => {}
                }
                Ok(())
            }
            Err(Refused::Failed(e)) => Err(StageError::Replica(e)),
            Err(_) => Ok(()),
        }
    }

    /// Takes what is queued, up to a batch, and executes it. On a failure, `first` is refused
    /// if it was not executed, and the batch's answers are refused by the pipeline.
    fn batch(&mut self, first: Job) -> Result<(), StageError> {
        // Room in the log's queue first: what arrives meanwhile joins this batch.
        if let Err(e) = self.stage.wait_for_log_queue() {
            let e = StageError::Log(e);
            self.refuse(vec![first], &e);
            return Err(e);
        }
        let (jobs, count) = self.take_batch(first);
        metrics::histogram!("switch_batch_requests").record(count as f64);
        self.stage.snapshots.batch(count);
        self.stage
            .node
            .core_mut()
            .set_routes(self.routes.read().clone());
        let taken = Taken {
            queued: self.queued.clone(),
            count,
        };
        let screened = self.stage.screen(jobs, Instant::now(), count);
        self.stage.execute(screened, self.clock.now(), taken)?;
        self.maybe_snapshot();
        Ok(())
    }

    /// `first` and the jobs queued behind it, until the batch holds `stage_batch_len_max` requests
    /// (a job is never split, so the last may take it past); and how many requests.
    fn take_batch(&self, first: Job) -> (Vec<Job>, usize) {
        fill_batch(
            first,
            || self.jobs.try_recv().ok(),
            |job| job.items.len(),
            self.stage.settings.stage_batch_len_max,
        )
    }

    /// Nothing queued: the snapshot cadence hears of the idle tick, and a snapshot may start.
    fn idle(&mut self) -> Result<(), StageError> {
        let now = Instant::now();
        // An empty queue has no standing delay.
        let changed = self.stage.shedder.observe(now, Duration::ZERO);
        self.stage.publish_shedding(changed, now);
        self.stage.snapshots.batch(0);
        self.maybe_snapshot();
        Ok(())
    }

    /// A snapshot waits while reports are being written: reports are not in it, and the log
    /// that could rebuild them goes once it is written.
    fn maybe_snapshot(&mut self) {
        if self.reports.all_written() {
            self.stage.maybe_snapshot();
        } else {
            let covered = self.stage.snapshots.collect();
            self.stage.covered(covered);
        }
    }

    /// Answers jobs taken from the queue and not executed with the failure.
    fn refuse(&self, jobs: Vec<Job>, error: &StageError) {
        for job in jobs {
            leave(&self.queued, job.items.len());
            job.refuse(error.refusal());
        }
    }

    /// After a log (or replica) failure: the in-memory state may be ahead of the log (the
    /// failed batch was applied but is not durable), and a failed fdatasync cannot be retried
    /// safely on Linux (the kernel may have dropped the dirty pages and report success next
    /// time). So the stage stops acknowledging for good, and stops taking part in the cluster:
    /// it says so in the log, the metrics and `/readyz`, and answers every request from then on
    /// with the failure's code until the switch shuts down. A restart on the same directory
    /// recovers everything that was acknowledged.
    fn fail_stop(&self, error: &StageError) -> anyhow::Error {
        let refusal = error.refusal();
        if let StageError::Replica(e) = error {
            tracing::error!("replica failed; no further acknowledgements until a restart: {e}");
            metrics::gauge!("switch_storage_failed").set(1.0);
        }
        self.stage
            .failed
            .store(refusal.reason().0, Ordering::Release);
        self.stage.pipeline.deposed(refusal);
        if let Some(link) = &self.stage.link {
            link.close();
        }
        // Until every sender is gone (shutdown), whatever arrives is answered at once.
        for job in self.jobs.iter() {
            leave(&self.queued, job.items.len());
            job.refuse(refusal);
        }
        anyhow::anyhow!("{error}; no further acknowledgements")
    }

    /// The queue closed: what was proposed is waited for (a little, in a cluster), the last
    /// reports go to the writer, the shutdown snapshot is taken, and the log is closed.
    fn shut_down(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SHUTDOWN_COMMIT_WAIT;
        while self.stage.node.committed() < self.stage.node.applied() && Instant::now() < deadline {
            if self.raft_work().is_err() {
                break;
            }
            self.wait();
        }
        let _ = self.raft_work();
        let drained = self.stage.pipeline.wait_durable(self.stage.submitted);
        self.reports.stop();
        if let Some(holds) = self.expiries.flush() {
            tracing::info!(
                holds,
                "authorization holds expired (since the last such line)"
            );
        }
        let mut stage = self.stage;
        if let Some(link) = &stage.link {
            link.close();
        }
        // The capture must hold nothing uncommitted: only a state applied exactly to what may
        // be snapshot is taken.
        let meta = stage
            .snapshot_meta()
            .filter(|m| drained.is_ok() && m.index == stage.node.applied());
        let prune_through = meta.as_ref().map_or(0, |m| {
            stage
                .mirror
                .covered_by(stage.snapshots.oldest_kept_after(m.index))
        });
        let core = stage.node.core();
        let _ = stage.snapshots.finish(core, meta, prune_through);
        stage
            .wal
            .close()
            .map_err(|e| anyhow::anyhow!("closing the write-ahead log: {e}"))?;
        tracing::info!(digest = %stage.node.core().ledger().digest(), "ledger stage stopped; journal synced");
        Ok(())
    }
}

/// How long a stopping leader waits for what it proposed to commit.
const SHUTDOWN_COMMIT_WAIT: Duration = Duration::from_secs(2);

/// Writes the reports of closed windows, on a thread of its own: the stage does not wait on
/// the disk for them.
struct ReportWriter {
    tx: Sender<Arc<WindowDetails>>,
    /// Reports handed over and not yet written.
    unwritten: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

impl ReportWriter {
    fn spawn(dir: PathBuf) -> anyhow::Result<ReportWriter> {
        // Closes are rare, so the channel is small.
        let (tx, rx) = crossbeam_channel::bounded::<Arc<WindowDetails>>(16);
        let unwritten = Arc::new(AtomicUsize::new(0));
        let written = unwritten.clone();
        let thread = std::thread::Builder::new()
            .name("clearing-reports".into())
            .spawn(move || {
                for details in rx {
                    write_report(&dir, &details);
                    written.fetch_sub(1, Ordering::AcqRel);
                }
            })
            .context("spawning the report writer")?;
        Ok(ReportWriter {
            tx,
            unwritten,
            thread,
        })
    }

    fn hand(&self, details: Arc<WindowDetails>) {
        self.unwritten.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(details).is_err() {
            self.unwritten.fetch_sub(1, Ordering::AcqRel);
            tracing::error!("the report writer has stopped; reports are not being written");
        }
    }

    fn all_written(&self) -> bool {
        self.unwritten.load(Ordering::Acquire) == 0
    }

    /// Writes what was handed over, and stops.
    fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn write_report(dir: &std::path::Path, details: &WindowDetails) {
    if let Err(e) = crate::report::write(dir, details) {
        metrics::counter!("switch_clearing_report_failures_total").increment(1);
        tracing::error!(
            window = details.window.id,
            dir = %dir.display(),
            "writing the settlement reports failed: {e}"
        );
    }
}

/// Says once, where an operator sees it, that the log failed, and stops acknowledgements
/// (`Queue::failure`, `/readyz`) before any client hears of it.
fn report_failure(error: &WalError, failed: &AtomicU8) {
    let refusal = failure_refusal(error);
    failed.store(refusal.reason().0, Ordering::Release);
    let cause = match refusal {
        Refusal::StorageFull => "out_of_space",
        _ => "io_error",
    };
    metrics::gauge!("switch_storage_failed").set(1.0);
    metrics::counter!("switch_storage_failures_total", "cause" => cause).increment(1);
    tracing::error!(
        cause,
        "write-ahead log failed; no further acknowledgements until a restart recovers the \
         log: {error}"
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::fill_batch;

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_stage_batch_fill.txt"))]

        /// A batch takes queued jobs in order, whole, and stops at the first that takes it to
        /// the bound: below the bound before its last job, nothing left queued unless it
        /// reached the bound, and never more than the bound plus one job.
        #[test]
        fn a_batch_fills_to_its_bound_with_whole_jobs_in_order(
            lens in prop::collection::vec(1usize..100, 1..60),
            bound in 1usize..400,
        ) {
            let mut queue = lens.iter().copied().enumerate().skip(1);
            let (jobs, count) = fill_batch((0, lens[0]), || queue.next(), |j| j.1, bound);
            let taken: Vec<usize> = jobs.iter().map(|j| j.0).collect();
            prop_assert_eq!(taken, (0..jobs.len()).collect::<Vec<_>>());
            prop_assert_eq!(count, jobs.iter().map(|j| j.1).sum::<usize>());
            let before_last = count - jobs[jobs.len() - 1].1;
            prop_assert!(jobs.len() == 1 || before_last < bound);
            prop_assert!(count >= bound || jobs.len() == lens.len());
            prop_assert!(count < bound + lens.iter().max().copied().unwrap_or(0));
        }
    }
}
