//! The ledger stage: one thread that owns the core, batches what is queued, logs it, and
//! answers only what is durable.
//!
//! It speaks the core's types only: a job is core requests, its answer core responses or a
//! refusal of them all. What they are on the wire, and the metrics of what was answered, are
//! the connection's business; the log writer's thread only hands answers over.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use ledger::Timestamp;
use ledger::bell::Bell;
use ledger::storage::{FileStorage, Storage};
use ledger::wal::{self, RecoverOptions, Wal, WalError, WalOptions};
use parking_lot::RwLock;

use crate::clearing::WindowDetails;
use crate::codes::{Code, Reason};
use crate::config::settings::StageSettings;
use crate::core::snapshot::RestoreConfig;
use crate::core::{Core, Prepared, Response};
use crate::journal::{self, SwitchRecord};
use crate::routing::RouteTable;
use crate::server::snapshots::Snapshots;

mod pipeline;
use crate::server::telemetry;
use pipeline::{BatchAnswers, Pipeline, Taken};

/// Consecutive requests of one frame, waiting for the stage.
pub struct Job {
    pub items: Vec<Prepared>,
    /// Where the answer goes.
    pub answer: tokio::sync::oneshot::Sender<Answered>,
}

impl Job {
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
}

impl Refusal {
    /// The response code every refused request gets: 91 for what a retry can cure, 96
    /// otherwise.
    pub fn code(self) -> Code {
        match self {
            Refusal::Busy | Refusal::StorageFull => Code::SystemBusy,
            Refusal::StorageFailed | Refusal::Stopped => Code::SystemMalfunction,
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            Refusal::Busy => Reason::OVERLOADED,
            Refusal::StorageFull => Reason::STORAGE_FULL,
            Refusal::StorageFailed => Reason::STORAGE_FAILURE,
            Refusal::Stopped => Reason::INTERNAL,
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

/// At most one `authorization holds expired` line this often (the counter is exact).
const EXPIRY_LINE_EVERY: Duration = Duration::from_secs(10);

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

/// The recovered state and the open journal, ready to run.
pub struct Stage {
    core: Core,
    wal: Wal,
    snapshots: Snapshots,
    settings: StageSettings,
    /// Shared with the `Queue` (see there); set before any request hears of a failure.
    failed: Arc<AtomicU8>,
    /// Batches applied and logged, answered as the log makes them durable.
    pipeline: Arc<Pipeline>,
    /// The sequence of the last record handed to the log.
    submitted: u64,
    /// Records handed to the log and not yet durable, at most (`[wal] queue_depth_max`).
    in_flight_max: u64,
    /// Reads the size of the log's files, for `switch_wal_bytes`.
    wal_bytes: telemetry::WalBytes,
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
    /// Loads the newest usable snapshot in the snapshot directory (if any; `core` is the
    /// fresh state otherwise), replays the journal in the log directory after it, and opens the
    /// journal for appending.
    pub fn recover(core: Core, settings: StageSettings) -> anyhow::Result<Stage> {
        let dir = &settings.wal_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let storage =
            FileStorage::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        Self::recover_on(core, settings, storage)
    }

    /// Replays the journal in `storage` into `core` and opens it for appending (tests run the
    /// stage on a simulated disk this way).
    pub fn recover_on<S: Storage + Clone>(
        core: Core,
        settings: StageSettings,
        storage: S,
    ) -> anyhow::Result<Stage> {
        let mut snapshots = Snapshots::open(&settings.snapshots, storage.clone())?;
        let (mut core, recovered) = replay_log(core, &mut snapshots, &storage, &settings.wal)?;
        // Windows closed in the log whose reports a crash kept from being written.
        for details in core.take_reports() {
            write_report(&settings.report_dir, &details);
        }
        if let Some(requests) = settings.preallocate_requests {
            preallocate(&mut core, requests);
        }
        let submitted = recovered.resume.next_sequence().saturating_sub(1);
        let wal_bytes = wal_bytes_reader(storage.clone());
        let wal = Wal::open(storage, settings.wal.clone(), recovered.resume)
            .context("opening the write-ahead log")?;
        Ok(Stage {
            core,
            wal,
            snapshots,
            failed: Arc::new(AtomicU8::new(0)),
            pipeline: Arc::new(Pipeline::new(submitted)),
            submitted,
            in_flight_max: settings.wal.queue_depth_max.max(1) as u64,
            settings,
            wal_bytes,
        })
    }

    /// What reads the size of the log's files on disk (for each scrape of `/metrics`).
    pub fn wal_bytes(&self) -> telemetry::WalBytes {
        self.wal_bytes.clone()
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
        let bell = Arc::new(Bell::default());
        let queue = Queue {
            tx: Arc::new(Sending {
                tx,
                bell: bell.clone(),
            }),
            queued: Arc::new(AtomicUsize::new(0)),
            queued_max,
            failed: self.failed.clone(),
        };
        metrics::gauge!("switch_storage_failed").set(0.0);
        let queued = queue.queued.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-stage".into())
            .spawn(move || StageThread::start(self, rx, bell, queued, routes)?.run())
            .expect("spawning the ledger stage thread");
        (queue, handle)
    }

    /// Closes the open clearing window on the switch's own schedule, logged like any request.
    fn close_on_schedule(
        &mut self,
        now: Timestamp,
        reports: &ReportWriter,
    ) -> Result<(), WalError> {
        let item = self.core.scheduled_close();
        let window = self.core.clearing().open.id;
        let executed = self.core.execute(vec![item], now);
        if !executed.logged.is_empty() {
            let mut payload = Vec::with_capacity(256);
            SwitchRecord::encode_batch(now, &executed.logged, &mut payload);
            self.append(payload)?;
        }
        match executed.responses.first() {
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
        self.hand_reports(reports)
    }

    /// Gives the reports of windows closed to the report writer, once their closes are durable.
    fn hand_reports(&mut self, reports: &ReportWriter) -> Result<(), WalError> {
        let closed = self.core.take_reports();
        if closed.is_empty() {
            return Ok(());
        }
        self.pipeline.wait_durable(self.submitted)?;
        for details in closed {
            reports.hand(details);
        }
        Ok(())
    }

    /// Waits until fewer than `in_flight_max` records are waiting to become durable.
    fn wait_for_log_queue(&self) -> Result<(), WalError> {
        self.pipeline
            .wait_durable(self.submitted.saturating_sub(self.in_flight_max - 1))
    }

    /// Hands a record to the log (after waiting for room in its queue) and returns its
    /// sequence; the pipeline hears when it is durable.
    fn submit(&mut self, payload: Vec<u8>) -> Result<u64, WalError> {
        self.wait_for_log_queue()?;
        let permit = match self.wal.reserve() {
            Ok(permit) => permit,
            Err(e) => {
                self.pipeline.done(Err(e.clone()), &self.failed);
                return Err(e);
            }
        };
        let len = payload.len();
        let (pipeline, failed, started) =
            (self.pipeline.clone(), self.failed.clone(), Instant::now());
        let sequence = permit.submit(
            payload,
            Box::new(move |result| {
                metrics::histogram!("switch_wal_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                pipeline.done(result, &failed);
            }),
        );
        self.submitted = sequence;
        self.snapshots.appended(sequence, len);
        Ok(sequence)
    }

    /// Logs a record and waits until it (and everything before it) is durable.
    fn append(&mut self, payload: Vec<u8>) -> Result<(), WalError> {
        let sequence = self.submit(payload)?;
        self.pipeline.wait_durable(sequence)
    }

    /// Starts a snapshot if one is due, once everything it covers is durable: a snapshot
    /// must never claim a record the log does not hold.
    fn maybe_snapshot(&mut self) -> Result<(), WalError> {
        if self.snapshots.wants_start() {
            self.pipeline.wait_durable(self.submitted)?;
            self.snapshots.maybe_start(&self.core);
        }
        Ok(())
    }

    /// Applies a batch and logs it; its answers leave once the log holds it (and whatever it
    /// read from earlier batches). The stage goes on to the next batch meanwhile.
    fn execute(&mut self, jobs: Vec<Job>, now: Timestamp, taken: Taken) -> Result<(), WalError> {
        let mut items = Vec::with_capacity(taken.count);
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            answers.push((job.answer, job.items.len()));
            items.extend(job.items);
        }
        let started = Instant::now();
        let executed = self.core.execute_prepared(items, now);
        metrics::histogram!("switch_stage_apply_seconds").record(started.elapsed().as_secs_f64());
        debug_assert_eq!(
            executed.responses.len(),
            taken.count,
            "a response per request"
        );
        let mut result = Ok(());
        if !executed.logged.is_empty() {
            let mut payload = Vec::with_capacity(64 * executed.logged.len());
            SwitchRecord::encode_batch(now, &executed.logged, &mut payload);
            // On a failure the core has applied a batch the log does not hold: the pipeline
            // refuses its answers, and the stage stops acknowledging (see `fail_stop`).
            result = self.submit(payload).map(|_| ());
        }
        self.pipeline.answer(BatchAnswers {
            after: self.submitted,
            jobs: answers,
            responses: executed.responses,
            taken,
        });
        result
    }
}

/// Loads the newest usable snapshot into `snapshots` (or keeps `core`, the state the log starts
/// from) and replays the log in `storage` after it.
fn replay_log<S: Storage>(
    core: Core,
    snapshots: &mut Snapshots,
    storage: &S,
    options: &WalOptions,
) -> anyhow::Result<(Core, wal::Recovered)> {
    let started = Instant::now();
    // Before anything is loaded: `core` is the state the log starts from.
    snapshots.starting_from(&core);
    let (loaded, passed_over) = snapshots
        .load(|| RestoreConfig::like(&core))
        .with_context(|| format!("loading a snapshot from {}", snapshots.dir().display()))?;
    let (mut core, after_sequence, snapshot_file) = match loaded {
        Some(l) => (l.core, l.sequence, Some(l.file)),
        None => (core, 0, None),
    };
    let recovered = wal::recover(
        storage,
        &RecoverOptions {
            record_size_max_bytes: options.record_size_max_bytes,
            after_sequence,
            write_max_bytes: options.write_max_bytes(),
            ..RecoverOptions::default()
        },
        |_sequence, payload| journal::replay(&mut core, payload),
    )
    .map_err(|e| {
        if passed_over.is_empty() {
            anyhow::anyhow!("{e}")
        } else {
            anyhow::anyhow!("{e} (snapshots passed over: {})", passed_over.join("; "))
        }
    })?;
    snapshots.recovered(recovered.last_sequence.unwrap_or(0));
    if let Some(truncation) = &recovered.truncation {
        tracing::warn!("{truncation}");
    }
    tracing::info!(
        snapshot = snapshot_file.as_deref().unwrap_or("none"),
        after_sequence,
        records = recovered.records_applied,
        segments = recovered.segments_read,
        elapsed_ms = started.elapsed().as_millis() as u64,
        digest = %core.ledger().digest(),
        "recovered from the snapshot and the write-ahead log after it"
    );
    Ok((core, recovered))
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
    /// Nothing before the next tick was due.
    Idle,
    /// Every sender is gone: the switch is stopping.
    Closed,
}

/// The stage thread: the stage, the receiving end of its queue, and the work it keeps time
/// for besides the batches.
struct StageThread {
    stage: Stage,
    jobs: Receiver<Job>,
    bell: Arc<Bell>,
    queued: Arc<AtomicUsize>,
    routes: Arc<RwLock<Arc<RouteTable>>>,
    clock: Clock,
    /// When the periodic work last ran.
    ticked: Instant,
    /// The expiry pass runs whenever the queue is empty: many times a second under load.
    expiries: telemetry::Tally,
    gauges_set: Instant,
    reports: ReportWriter,
}

impl StageThread {
    fn start(
        stage: Stage,
        jobs: Receiver<Job>,
        bell: Arc<Bell>,
        queued: Arc<AtomicUsize>,
        routes: Arc<RwLock<Arc<RouteTable>>>,
    ) -> anyhow::Result<StageThread> {
        let reports = ReportWriter::spawn(stage.settings.report_dir.clone())?;
        set_ledger_gauges(&stage.core);
        Ok(StageThread {
            stage,
            jobs,
            bell,
            queued,
            routes,
            clock: Clock { last: 0 },
            ticked: Instant::now(),
            expiries: telemetry::Tally::new(EXPIRY_LINE_EVERY),
            gauges_set: Instant::now(),
            reports,
        })
    }

    /// Takes batches until the queue closes, with the periodic work between them; then drains.
    /// After a log failure it answers every request with the failure until the queue closes.
    fn run(mut self) -> anyhow::Result<()> {
        loop {
            if let Some(e) = self.stage.pipeline.failure() {
                return Err(self.fail_stop(&e));
            }
            let first = match self.next_job() {
                Next::Job(job) => Some(job),
                Next::Idle => None,
                Next::Closed => return self.shut_down(),
            };
            if (first.is_none() || self.ticked.elapsed() >= self.stage.settings.expiry_tick)
                && let Err(e) = self.periodic()
            {
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

    /// The next job, waiting for one at most until the next tick is due.
    fn next_job(&self) -> Next {
        let received = match self.jobs.try_recv() {
            Err(TryRecvError::Empty) => {
                // Not the channel's own blocking receive: see `ledger::bell`.
                let tick = self.stage.settings.expiry_tick;
                self.bell
                    .wait(&self.jobs, Some(tick.saturating_sub(self.ticked.elapsed())));
                self.jobs.try_recv()
            }
            received => received,
        };
        match received {
            Ok(job) => Next::Job(job),
            Err(TryRecvError::Empty) => Next::Idle,
            Err(TryRecvError::Disconnected) => Next::Closed,
        }
    }

    /// The clock's work: the scheduled close of the open window if it is due, the expiry of
    /// due holds (logged), and the ledger's gauges.
    fn periodic(&mut self) -> Result<(), WalError> {
        self.ticked = Instant::now();
        let now = self.clock.now();
        if self
            .stage
            .core
            .clearing()
            .due(now, self.stage.settings.close_every_ns)
        {
            self.stage.close_on_schedule(now, &self.reports)?;
        }
        let expired = self.stage.core.expire_holds(now);
        if let Some(holds) = self.expiries.count(expired as u64, Instant::now()) {
            tracing::info!(
                holds,
                "authorization holds expired (since the last such line)"
            );
        }
        if self.gauges_set.elapsed() >= LEDGER_GAUGES_EVERY {
            self.gauges_set = Instant::now();
            set_ledger_gauges(&self.stage.core);
        }
        if expired > 0 {
            metrics::counter!("switch_holds_expired_total").increment(expired as u64);
            let mut payload = Vec::with_capacity(9);
            SwitchRecord::encode_expire(now, &mut payload);
            self.stage.append(payload)?;
        }
        Ok(())
    }

    /// Takes what is queued, up to a batch, and executes it. On a failure, `first` is refused
    /// if it was not executed, and the batch's answers are refused by the pipeline.
    fn batch(&mut self, first: Job) -> Result<(), WalError> {
        // Room in the log's queue first: what arrives meanwhile joins this batch.
        if let Err(e) = self.stage.wait_for_log_queue() {
            self.refuse(vec![first], &e);
            return Err(e);
        }
        let (jobs, count) = self.take_batch(first);
        metrics::histogram!("switch_batch_requests").record(count as f64);
        self.stage.snapshots.batch(count);
        self.stage.core.set_routes(self.routes.read().clone());
        let taken = Taken {
            queued: self.queued.clone(),
            count,
        };
        self.stage.execute(jobs, self.clock.now(), taken)?;
        self.stage.hand_reports(&self.reports)?;
        self.maybe_snapshot()
    }

    /// `first` and the jobs queued behind it, until the batch holds `batch_len_max` requests
    /// (a job is never split, so the last may take it past); and how many requests.
    fn take_batch(&self, first: Job) -> (Vec<Job>, usize) {
        let mut count = first.items.len();
        let mut jobs = vec![first];
        while count < self.stage.settings.batch_len_max {
            match self.jobs.try_recv() {
                Ok(job) => {
                    count += job.items.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        (jobs, count)
    }

    /// Nothing queued: the snapshot cadence hears of the idle tick, and a snapshot may start.
    fn idle(&mut self) -> Result<(), WalError> {
        self.stage.snapshots.batch(0);
        self.maybe_snapshot()
    }

    /// A snapshot waits while reports are being written: reports are not in it, and the log
    /// that could rebuild them goes once it is written.
    fn maybe_snapshot(&mut self) -> Result<(), WalError> {
        if self.reports.all_written() {
            self.stage.maybe_snapshot()
        } else {
            Ok(())
        }
    }

    /// Answers jobs taken from the queue and not executed with the log's failure.
    fn refuse(&self, jobs: Vec<Job>, error: &WalError) {
        for job in jobs {
            leave(&self.queued, job.items.len());
            job.refuse(failure_refusal(error));
        }
    }

    /// After a log failure: the in-memory state is ahead of the log (the failed batch was
    /// applied but is not durable), and a failed fdatasync cannot be retried safely on Linux
    /// (the kernel may have dropped the dirty pages and report success next time). So the
    /// stage stops acknowledging for good: it says so in the log, the metrics and `/readyz`,
    /// and answers every request from then on with the failure's code until the switch shuts
    /// down. A restart on the same directory recovers everything that was acknowledged.
    fn fail_stop(&self, error: &WalError) -> anyhow::Error {
        let refusal = failure_refusal(error);
        self.stage
            .failed
            .store(refusal.reason().0, Ordering::Release);
        // Until every sender is gone (shutdown), whatever arrives is answered at once.
        for job in self.jobs.iter() {
            leave(&self.queued, job.items.len());
            job.refuse(refusal);
        }
        anyhow::anyhow!("write-ahead log failed; no further acknowledgements: {error}")
    }

    /// The queue closed: the last reports go to the writer, everything logged becomes
    /// durable, the shutdown snapshot is taken, and the log is closed.
    fn shut_down(mut self) -> anyhow::Result<()> {
        let drained = self
            .stage
            .hand_reports(&self.reports)
            .and_then(|()| self.stage.pipeline.wait_durable(self.stage.submitted));
        self.reports.stop();
        if let Some(holds) = self.expiries.flush() {
            tracing::info!(
                holds,
                "authorization holds expired (since the last such line)"
            );
        }
        let mut stage = self.stage;
        if drained.is_ok() {
            stage.snapshots.finish(&stage.core);
        }
        stage
            .wal
            .close()
            .map_err(|e| anyhow::anyhow!("closing the write-ahead log: {e}"))?;
        tracing::info!(digest = %stage.core.ledger().digest(), "ledger stage stopped; journal synced");
        Ok(())
    }
}

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
