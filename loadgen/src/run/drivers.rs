//! The drivers: each profile, the open loop along a schedule (one task per lane), the closed
//! loop (`depth` workers per lane), the drain of waiting follow-ups, and the progress line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use switch::wire::Request;

use super::Session;
use super::flows::Sent;
use super::leader::Link;
use super::pacer::Pacer;
use super::shared::Shared;
use crate::config::{Pacing, Profile};
use crate::cpu;
use crate::schedule::{Festival, LaneCursor, Schedule};

/// Requests with no answer kept for resolution; past this the run stops, since the switch is
/// clearly not answering.
const UNKNOWN_MAX: usize = 1_000_000;

/// What a profile found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProfileResult {
    pub profile: String,
    /// Seconds of load (excluding setup and verification).
    pub elapsed_secs: f64,
    /// Closed loop (`max`, festival calibration): answers per second, refusals not counted.
    pub saturation_rate: Option<f64>,
    /// Festival `--overload`: the peak as a multiple of the calibration's rate.
    pub overload: Option<f64>,
    /// Festival: the peak the curve was drawn to, and the calibration it came from.
    pub festival: Option<Festival>,
    pub calibration_rate: Option<f64>,
    /// Step: each rate tried, and the highest that held the SLO.
    pub steps: Vec<StepResult>,
    pub highest_rate_held: Option<f64>,
    /// Step, festival: the p99 latency objective, milliseconds.
    pub slo_p99_ms: Option<f64>,
    /// Target rate per second (open loop), from the schedule(s) run.
    pub target_per_second: Vec<f64>,
    /// Festival: when each part of the curve ran, in seconds of the time series.
    pub phases: Vec<Phase>,
}

/// A named stretch of the run, in seconds from the start of measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub start_secs: f64,
    pub end_secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub rate: f64,
    pub p99_ms: f64,
    pub answered: u64,
    pub errors: u64,
    pub held: bool,
}

impl Session {
    /// Runs the configured profile.
    pub async fn run_profile(&mut self) -> anyhow::Result<ProfileResult> {
        if !self.setup_done {
            self.setup().await?;
        }
        let mut result = ProfileResult {
            profile: self.options.profile.name().to_string(),
            ..ProfileResult::default()
        };
        let profile = self.options.profile.clone();
        match profile {
            Profile::Constant {
                rate,
                duration_secs,
            } => self.constant(rate, duration_secs, &mut result).await?,
            Profile::Max { duration_secs } => self.max(duration_secs, &mut result).await?,
            Profile::Festival {
                peak,
                peak_fraction,
                calibrate_secs,
                overload,
                slo_p99_ms,
                shape,
            } => {
                result.overload = overload;
                result.slo_p99_ms = Some(slo_p99_ms);
                let peak = match peak {
                    Some(p) => p,
                    None => {
                        self.calibrate(calibrate_secs, peak_fraction, &mut result)
                            .await?
                    }
                };
                self.festival(shape, peak, &mut result).await?;
            }
            Profile::Step {
                start,
                increment,
                step_secs,
                slo_p99_ms,
                steps_max,
            } => {
                let rates = (0..steps_max).map(|k| start + increment * f64::from(k));
                self.step(rates, step_secs, slo_p99_ms, &mut result).await?;
            }
        }
        Ok(result)
    }

    /// `constant`: open loop at `rate` for `duration_secs`.
    async fn constant(
        &mut self,
        rate: f64,
        duration_secs: f64,
        result: &mut ProfileResult,
    ) -> anyhow::Result<()> {
        let schedule = Schedule::constant(rate, duration_secs)?;
        self.reset_measure();
        self.cpu_at_start = cpu::split();
        let started = Instant::now();
        self.open_loop(&schedule, 0.0).await?;
        self.check_lost("during the load")?;
        result.elapsed_secs = started.elapsed().as_secs_f64();
        result.target_per_second = per_second(&schedule);
        Ok(())
    }

    /// `max`: closed loop for `duration_secs`.
    async fn max(&mut self, duration_secs: f64, result: &mut ProfileResult) -> anyhow::Result<()> {
        self.reset_measure();
        self.cpu_at_start = cpu::split();
        let (rate, elapsed) = self.closed_loop(duration_secs).await?;
        self.check_lost("during the load")?;
        result.saturation_rate = Some(rate);
        result.elapsed_secs = elapsed;
        Ok(())
    }

    /// `festival --peak auto`: a closed loop for `secs`; the peak is `fraction` of its rate.
    async fn calibrate(
        &mut self,
        secs: f64,
        fraction: f64,
        result: &mut ProfileResult,
    ) -> anyhow::Result<f64> {
        self.reset_measure();
        let (rate, _) = self.closed_loop(secs).await?;
        self.check_lost("during the calibration")?;
        result.calibration_rate = Some(rate);
        Ok((rate * fraction).max(1.0))
    }

    /// `festival`: open loop along the curve of `shape` drawn to `peak`, its phases named.
    async fn festival(
        &mut self,
        shape: Festival,
        peak: f64,
        result: &mut ProfileResult,
    ) -> anyhow::Result<()> {
        let festival = Festival {
            peak,
            baseline: peak * shape.baseline,
            pre_spike: peak * shape.pre_spike,
            ..shape
        };
        let schedule = festival.schedule()?;
        self.reset_measure();
        self.cpu_at_start = cpu::split();
        let started = Instant::now();
        let mut at = self.open_loop(&schedule, 0.0).await?;
        self.check_lost("during the load")?;
        result.elapsed_secs = started.elapsed().as_secs_f64();
        result.target_per_second = per_second(&schedule);
        result.festival = Some(festival);
        for segment in schedule.segments() {
            result.phases.push(Phase {
                name: segment.name.clone(),
                start_secs: at,
                end_secs: at + segment.duration_secs,
            });
            at += segment.duration_secs;
        }
        Ok(())
    }

    /// `step`: each of `rates` open loop for `step_secs`, until one misses the SLO.
    async fn step(
        &mut self,
        rates: impl Iterator<Item = f64>,
        step_secs: f64,
        slo_p99_ms: f64,
        result: &mut ProfileResult,
    ) -> anyhow::Result<()> {
        result.slo_p99_ms = Some(slo_p99_ms);
        self.reset_measure();
        self.cpu_at_start = cpu::split();
        let started = Instant::now();
        for rate in rates {
            let schedule = Schedule::constant(rate, step_secs)?;
            self.shared.measure.lock().stats.begin_phase();
            let offset = started.elapsed().as_secs_f64();
            self.open_loop(&schedule, offset).await?;
            self.check_lost("during the load")?;
            let (p99_ms, answered, errors) = {
                let m = self.shared.measure.lock();
                (
                    m.stats.phase_latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                    m.stats.phase_answered,
                    m.stats.phase_errors,
                )
            };
            let held = p99_ms <= slo_p99_ms && errors == 0;
            let gap = (started.elapsed().as_secs_f64() - offset - step_secs).max(0.0);
            result.target_per_second.extend(per_second(&schedule));
            // The drain after a step sends nothing on schedule.
            result
                .target_per_second
                .extend(std::iter::repeat_n(0.0, gap as usize));
            result.steps.push(StepResult {
                rate,
                p99_ms,
                answered,
                errors,
                held,
            });
            if !held {
                break;
            }
            result.highest_rate_held = Some(rate);
        }
        result.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Sends `schedule` open loop; returns when every request of it (and every follow-up) has
    /// been answered or given up on, with the time its first request was due, in seconds from
    /// the start of measurement. `offset_secs`: where the schedule starts on the progress line.
    async fn open_loop(&self, schedule: &Schedule, offset_secs: f64) -> anyhow::Result<f64> {
        let schedule = Arc::new(schedule.clone());
        let lanes = self.link.lanes();
        self.shared.state.lock().throttle.reset();
        let start = Instant::now() + Duration::from_millis(20);
        let start_secs = start
            .saturating_duration_since(self.shared.measure.lock().origin)
            .as_secs_f64();
        let done = Arc::new(AtomicBool::new(false));
        let ticker = self.progress(Some((schedule.clone(), start, offset_secs)), done.clone());
        let mut tasks = Vec::with_capacity(lanes);
        let pacer = match self.options.pacing {
            Pacing::Thread => Some(Pacer::start(lanes).context("starting the pacing thread")?),
            Pacing::Timer => None,
        };
        for lane in 0..lanes {
            let shared = self.shared.clone();
            let link = self.link.clone();
            let schedule = schedule.clone();
            let seed = self.options.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(lane as u64 + 1));
            tasks.push(tokio::spawn(open_lane(
                shared,
                link,
                lane,
                schedule,
                LaneCursor::new(lane as u64, lanes as u64),
                Clock::new(start, pacer.clone()),
                seed,
            )));
        }
        for t in tasks {
            t.await.context("a lane failed")?;
        }
        self.drain().await;
        done.store(true, Ordering::Release);
        let _ = ticker.await;
        Ok(start_secs)
    }

    /// Closed loop for `secs`: every lane keeps `depth` frames of `batch_max` in flight.
    /// Returns answers per second (the requests the switch executed: refusals, which did
    /// nothing, do not count) and the elapsed time.
    async fn closed_loop(&self, secs: f64) -> anyhow::Result<(f64, f64)> {
        let done = Arc::new(AtomicBool::new(false));
        let ticker = self.progress(None, done.clone());
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let before = self.shared.measure.lock().stats.admitted_total();
        let mut tasks = Vec::new();
        for lane in 0..self.link.lanes() {
            for d in 0..self.options.depth {
                let shared = self.shared.clone();
                let link = self.link.clone();
                let seed = self.options.seed
                    ^ (0x9e37_79b9_7f4a_7c15u64
                        .wrapping_mul((lane * self.options.depth + d) as u64 + 1));
                tasks.push(tokio::spawn(closed_worker(
                    shared, link, lane, deadline, seed,
                )));
            }
        }
        for t in tasks {
            t.await.context("a closed-loop worker failed")?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let answered = self.shared.measure.lock().stats.admitted_total() - before;
        self.drain().await;
        done.store(true, Ordering::Release);
        let _ = ticker.await;
        Ok((answered as f64 / elapsed.max(1e-9), elapsed))
    }

    /// Sends waiting follow-ups, and refused requests as they fall due, until none is left,
    /// as fast as the pipelines allow.
    pub(super) async fn drain(&self) {
        while !self.shared.is_lost() {
            let mut tasks = Vec::new();
            for lane in 0..self.link.lanes() {
                for _ in 0..self.options.depth {
                    let now = Instant::now();
                    let sent = self
                        .shared
                        .take_waiting(&vec![now; self.options.batch_max], now);
                    if sent.is_empty() {
                        break;
                    }
                    let intended: Vec<Instant> = sent.iter().map(|s| s.intended).collect();
                    self.shared.scheduled(&intended);
                    let requests = self.shared.requests(&sent);
                    let shared = self.shared.clone();
                    let link = self.link.clone();
                    tasks.push(tokio::spawn(async move {
                        send(&shared, &link, lane, sent, &requests).await;
                    }));
                }
            }
            if tasks.is_empty() {
                // Nothing to send now: wait for the next refused request to fall due (the
                // retry policy bounds how long), or stop if none is waiting.
                match self.shared.next_retry_due() {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => return,
                }
                continue;
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    /// Live progress until `done`; the target rate comes from the schedule, if any.
    fn progress(
        &self,
        schedule: Option<(Arc<Schedule>, Instant, f64)>,
        done: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let shared = self.shared.clone();
        let enabled = self.options.progress;
        tokio::spawn(async move {
            let bar = progress_spinner(enabled);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !done.load(Ordering::Acquire) {
                tick.tick().await;
                let line = {
                    let m = shared.measure.lock();
                    let elapsed = m.origin.elapsed().as_secs_f64();
                    let last = (elapsed as usize).checked_sub(1);
                    let second = last.and_then(|i| m.stats.seconds.get(i));
                    let achieved = second.map_or(0, |s| s.answered);
                    let (p50, p99) = second.map_or((0.0, 0.0), |s| {
                        (
                            s.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                            s.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                        )
                    });
                    let target = match &schedule {
                        Some((s, start, _)) => {
                            let t = start.elapsed().as_secs_f64();
                            format!("{:.0}/s", s.rate_at(t))
                        }
                        None => "max".to_string(),
                    };
                    let codes: Vec<String> = m
                        .stats
                        .by_code()
                        .into_iter()
                        .map(|(c, n)| format!("{c}:{n}"))
                        .collect();
                    format!(
                        "{elapsed:6.1}s  target {target}  achieved {achieved}/s  p50 {p50:.2} ms  \
                         p99 {p99:.2} ms  answered {}  declined/errors [{}]",
                        m.stats.answered_total(),
                        codes.join(" ")
                    )
                };
                bar.set_message(line);
                bar.tick();
            }
            bar.finish_and_clear();
        })
    }
}

/// The target rate in each whole second of a schedule.
fn per_second(schedule: &Schedule) -> Vec<f64> {
    let seconds = schedule.duration_secs().ceil() as usize;
    (0..seconds)
        .map(|s| schedule.integral(s as f64 + 1.0) - schedule.integral(s as f64))
        .collect()
}

/// A lane's schedule clock: seconds from `start`, kept by the pacing thread or tokio's timer.
struct Clock {
    start: Instant,
    pacer: Option<Pacer>,
    due: Arc<Notify>,
}

impl Clock {
    fn new(start: Instant, pacer: Option<Pacer>) -> Clock {
        Clock {
            start,
            pacer,
            due: Arc::new(Notify::new()),
        }
    }

    fn at(&self, t: f64) -> Instant {
        self.start + Duration::from_secs_f64(t)
    }

    /// Returns at `t` seconds from the start (on tokio's timer without a pacing thread, or if
    /// it is gone).
    async fn until(&self, t: f64) {
        if self
            .pacer
            .as_ref()
            .is_some_and(|p| p.wake_at(self.at(t), &self.due))
        {
            self.due.notified().await;
        } else {
            tokio::time::sleep_until(self.at(t).into()).await;
        }
    }
}

async fn open_lane(
    shared: Arc<Shared>,
    link: Arc<Link>,
    lane: usize,
    schedule: Arc<Schedule>,
    mut cursor: LaneCursor,
    clock: Clock,
    seed: u64,
) {
    let depth = shared.options.open_depth;
    let batch_max = shared.options.batch_max;
    let permits = Arc::new(Semaphore::new(depth));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut intended = Vec::with_capacity(batch_max);
    while let Some((_, t)) = cursor.peek(&schedule) {
        if shared.state.lock().unknown.len() > UNKNOWN_MAX {
            // The switch has stopped answering; what was sent is resolved at the end.
            break;
        }
        clock.until(t).await;
        if shared.is_lost() {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Everything due by now goes in this frame (intended times are kept, so the wait for
        // a permit shows in the latency instead of hiding it).
        let now = Instant::now();
        intended.clear();
        while let Some((_, t)) = cursor.peek(&schedule) {
            let due = clock.at(t);
            if due > now || intended.len() == batch_max {
                break;
            }
            intended.push(due);
            cursor.advance();
        }
        let (sent, requests) = shared.build(&intended, &mut rng, true);
        shared.scheduled(&intended);
        if sent.is_empty() {
            // Every slot was a new payment refused here (throttled).
            continue;
        }
        let shared = shared.clone();
        let link = link.clone();
        tokio::spawn(async move {
            send(&shared, &link, lane, sent, &requests).await;
            drop(permit);
        });
    }
    // Every frame of this lane is answered once all permits are back.
    let _ = permits.acquire_many(depth as u32).await;
}

/// Sends `requests` (the `sent` ones) as one frame on `lane`, carrying `--budget-ms`, and
/// applies the answers, or the failure, to the model and the measurements; says whether the
/// call failed.
async fn send(
    shared: &Shared,
    link: &Link,
    lane: usize,
    sent: Vec<Sent>,
    requests: &[Request],
) -> bool {
    let called = link
        .call_within(lane, shared.options.budget_ms, requests)
        .await;
    let (answers, hint, resent) = called.answers_hinted();
    let failed = answers.is_err();
    shared.process(sent, answers, hint, true, resent);
    failed
}

async fn closed_worker(
    shared: Arc<Shared>,
    link: Arc<Link>,
    lane: usize,
    deadline: Instant,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shared.options.batch_max;
    while Instant::now() < deadline && !shared.is_lost() {
        let intended = vec![Instant::now(); n];
        let (sent, requests) = shared.build(&intended, &mut rng, false);
        shared.scheduled(&intended);
        let failed = send(&shared, &link, lane, sent, &requests).await;
        if failed && shared.state.lock().unknown.len() > UNKNOWN_MAX {
            return;
        }
    }
}

fn progress_spinner(enabled: bool) -> ProgressBar {
    let bar = if enabled {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}
