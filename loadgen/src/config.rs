//! The command line, and the options a run is made of.
//!
//! Amounts are typed as decimals in the currency's major unit (`--fund 5000.00`) and become
//! integer minor units here, refusing extra precision instead of rounding.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ledger::{Amount, Currency};
use rust_decimal::Decimal;

use crate::mix::{MixConfig, Weights};
use crate::schedule::Festival;

/// What every profile's help ends with: its options are its own, the others come first.
const PROFILE_AFTER_HELP: &str = "The options every profile takes (the switch, the load shape, \
the workload, the report) go before the profile's name: loadgen [OPTIONS] <PROFILE> \
[PROFILE OPTIONS]. See loadgen --help.";

/// A festival-peak load generator for the switch that verifies every cent.
///
/// Exit codes: 0 passed verification (or --no-verify); 1 verification failed; 2 the run could
/// not be made as asked (bad flag, no connection, setup refused, connection lost, most
/// requests declined for a misconfiguration, no leader of a cluster found); 3 `step` found no
/// rate that held the SLO.
#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    subcommand_value_name = "PROFILE",
    subcommand_help_heading = "Profiles"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub profile: ProfileCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ProfileCommand {
    /// A constant rate for a duration (open loop).
    #[command(after_help = PROFILE_AFTER_HELP)]
    Constant {
        /// Requests per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Baseline, ramp, the midnight spike to the peak, a plateau and the decay (open loop).
    #[command(after_help = PROFILE_AFTER_HELP)]
    Festival(FestivalArgs),
    /// Closed loop: every lane keeps `--depth` frames in flight, to find saturation.
    #[command(after_help = PROFILE_AFTER_HELP)]
    Max {
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Raises a constant rate step by step until p99 breaks the SLO; reports the highest rate
    /// that held it (exit code 3 if none did).
    #[command(after_help = PROFILE_AFTER_HELP)]
    Step {
        /// First rate (requests per second).
        #[arg(long, default_value_t = 1000.0)]
        start: f64,
        /// Added at each step.
        #[arg(long, default_value_t = 1000.0)]
        increment: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 5.0)]
        step_secs: f64,
        /// p99 latency objective, milliseconds.
        #[arg(long, default_value_t = 5.0)]
        slo_p99_ms: f64,
        /// Stop after this many steps even if the SLO still holds.
        #[arg(long, default_value_t = 50)]
        steps_max: u32,
    },
}

#[derive(Args, Debug, Clone)]
pub struct FestivalArgs {
    /// Peak rate (requests per second), or `auto`: a short closed-loop calibration measures
    /// what this machine holds and the peak is `--peak-fraction` of it.
    #[arg(long, default_value = "auto")]
    pub peak: String,
    /// With `--peak auto`: the share of the measured saturation rate to peak at.
    #[arg(long, default_value_t = 0.8)]
    pub peak_fraction: f64,
    /// With `--peak auto`: seconds of calibration.
    #[arg(long, default_value_t = 3.0)]
    pub calibrate_secs: f64,
    /// Overload festival: the peak is this multiple of the saturation the calibration
    /// measures (1.5: half as much again as the switch can take), and the report judges how
    /// the switch held the peak. Instead of `--peak` and `--peak-fraction`.
    #[arg(long, conflicts_with = "peak_fraction")]
    pub overload: Option<f64>,
    /// The p99 latency objective, milliseconds: the chart's SLO line, and what the peak's
    /// recovery is measured against.
    #[arg(long, default_value_t = 10.0)]
    pub slo_p99_ms: f64,
    /// Baseline rate as a share of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub baseline: f64,
    /// Rate reached by the ramp, just before the spike, as a share of the peak.
    #[arg(long, default_value_t = 0.3)]
    pub pre_spike: f64,
    /// Seconds at the baseline rate before the ramp.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Seconds from the baseline rate to the pre-spike rate.
    #[arg(long, default_value_t = 5.0)]
    pub ramp_secs: f64,
    /// Seconds from the pre-spike rate to the peak (the midnight spike).
    #[arg(long, default_value_t = 1.0)]
    pub spike_secs: f64,
    /// Seconds at the peak.
    #[arg(long, default_value_t = 10.0)]
    pub plateau_secs: f64,
    /// Seconds from the peak back to the baseline.
    #[arg(long, default_value_t = 10.0)]
    pub decay_secs: f64,
    /// Seconds at the baseline rate after the decay (with a short decay, the quiet seconds in
    /// which the peak's after-effects show).
    #[arg(long, default_value_t = 0.0)]
    pub tail_secs: f64,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Start an in-process switch on a temporary data directory and run against it.
    #[arg(long, conflicts_with = "target", help_heading = "The switch")]
    pub spawn: bool,
    /// With --spawn: the switch's configuration file (listen addresses, data directory and the
    /// loadgen route are set by loadgen).
    #[arg(long, help_heading = "The switch")]
    pub spawn_config: Option<PathBuf>,
    /// With --spawn: log without fdatasync (not durable; for comparison only).
    #[arg(long, help_heading = "The switch")]
    pub spawn_no_fsync: bool,
    /// How many payments the switch remembers (its `[ledger] transfers_remembered_max`). A run
    /// of more payments than that finds the oldest finished ones forgotten: verification then
    /// accepts "not found" for at most the surplus (their money is still checked in the
    /// balances). With --spawn the default is the spawned switch's setting; against --target,
    /// every payment's status must be found unless this is given.
    #[arg(long, help_heading = "The switch")]
    pub switch_remembers: Option<u64>,
    /// The switch's QUIC address, or host name and port (`localhost:4433`); for a cluster,
    /// every replica's, comma-separated (`a:4431,b:4431,c:4431`): loadgen follows the leader.
    #[arg(long, help_heading = "The switch")]
    pub target: Option<String>,
    /// With several --target addresses: how long to look for the cluster's leader after
    /// losing the one it talked to (or at the start), before the run stops (exit code 2).
    #[arg(long, default_value_t = 10.0, help_heading = "The switch")]
    pub failover_secs: f64,
    /// Trust the switch's certificate by its SHA-256 fingerprint (`ab:cd:…`), as it logs it.
    #[arg(long, help_heading = "The switch")]
    pub fingerprint: Option<String>,
    /// Trust the switch's certificate if it chains to a CA in this PEM file.
    #[arg(long, help_heading = "The switch")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a switch that requires one; it must map to an admin
    /// identity, since setup creates participants and accounts.
    #[arg(long, requires = "client_key", help_heading = "The switch")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, requires = "client_cert", help_heading = "The switch")]
    pub client_key: Option<PathBuf>,

    /// QUIC connections.
    #[arg(long, default_value_t = 2, help_heading = "Load shape")]
    pub connections: usize,
    /// Streams per connection; each is one lane.
    #[arg(long, default_value_t = 4, help_heading = "Load shape")]
    pub streams: usize,
    /// Frames in flight per stream (pipelining depth) [default: 8 in a closed loop (`max`, a
    /// festival's calibration), 64 in an open loop, so that a switch past its capacity, not
    /// loadgen, holds the queue, and sheds]
    #[arg(long, help_heading = "Load shape")]
    pub depth: Option<usize>,
    /// Most requests in one frame: requests due at the same moment share a frame.
    #[arg(long, default_value_t = 64, help_heading = "Load shape")]
    pub batch_max: usize,
    /// Seconds to wait for the connection and for an answer before the request counts as
    /// unanswered; a connection that hears nothing from the switch this long is lost, and the
    /// run stops.
    #[arg(long, default_value_t = 10.0, help_heading = "Load shape")]
    pub timeout_secs: f64,
    /// Seconds of silence from the switch (keep-alives every third of it) after which a
    /// connection is lost. Default: 0.25 with several --target addresses, so that a leader
    /// that died is left for the next one at once; else --timeout-secs.
    #[arg(long, help_heading = "Load shape")]
    pub silence_secs: Option<f64>,
    /// How the open loop keeps its schedule: `timer` (tokio's millisecond timer: a frame holds
    /// the requests due within a millisecond and leaves up to 1 ms late) or `thread` (a pacing
    /// thread wakes each lane when its next request is due: frames of the requests due by
    /// then, as few as one, sent within tens of microseconds of their time).
    #[arg(long, value_enum, default_value_t = Pacing::Timer, help_heading = "Load shape")]
    pub pacing: Pacing,
    /// Worker threads of loadgen's own runtime (the spawned switch has its own).
    #[arg(long, default_value_t = 1, help_heading = "Load shape")]
    pub threads: usize,
    /// Budget of every frame of the load, milliseconds: the switch does not start an operation
    /// this long after it read its frame (answers 91, reason 33). 0: none, the switch's
    /// defaults apply.
    #[arg(long, default_value_t = 0, help_heading = "Load shape")]
    pub budget_ms: u16,
    /// Times a request refused as busy (91 with reason 22, 33 or 34, or a frame refused with
    /// error 8) is sent again, same request id, before loadgen gives it up as refused.
    #[arg(long, default_value_t = 5, help_heading = "Load shape")]
    pub retries_max: u8,
    /// Seconds after its first refusal past which a refused request is not sent again.
    #[arg(long, default_value_t = 10.0, help_heading = "Load shape")]
    pub retry_secs_max: f64,
    /// Client-side throttling of new payments while the switch sheds them: over the last
    /// second, loadgen refuses a new authorization or sale itself with probability
    /// max(0, (asked - K x admitted) / (asked + 1)), so that a shedding switch is sent about
    /// K times what it admits rather than every refusal's cost. 0: off; otherwise at least 1.
    #[arg(long, default_value_t = 0.0, help_heading = "Load shape")]
    pub throttle_k: f64,

    /// Customer accounts (cards).
    #[arg(long, default_value_t = 1000, help_heading = "Workload")]
    pub customers: u64,
    /// Merchant accounts.
    #[arg(long, default_value_t = 100, help_heading = "Workload")]
    pub merchants: u64,
    /// Money put in each customer account at setup, in major units. Enough that the hottest
    /// customers of a long zipfian run are not declined for funds.
    #[arg(long, default_value = "100000000.00", help_heading = "Workload")]
    pub fund: Decimal,
    /// ISO 4217 currency of every account.
    #[arg(long, default_value = "CNY", help_heading = "Workload")]
    pub currency: String,
    /// Smallest payment, in major units.
    #[arg(long, default_value = "1.00", help_heading = "Workload")]
    pub amount_min: Decimal,
    /// Largest payment, in major units.
    #[arg(long, default_value = "500.00", help_heading = "Workload")]
    pub amount_max: Decimal,
    /// Requests per frame during setup.
    #[arg(long, default_value_t = 1000, help_heading = "Workload")]
    pub setup_batch: usize,
    /// The issuer participant (the switch's route for `--card-prefix` must name it).
    #[arg(long, default_value_t = 2, help_heading = "Workload")]
    pub issuer: u64,
    /// The acquirer participant that owns the merchants: loadgen must connect as its admin
    /// identity (the default switch's clients without a certificate are participant 1).
    #[arg(long, default_value_t = 1, help_heading = "Workload")]
    pub acquirer: u64,
    /// Card numbers start with this prefix, routed to `--issuer`.
    #[arg(long, default_value = "62", help_heading = "Workload")]
    pub card_prefix: String,

    /// Flow weights, e.g. `auth_capture=35,auth_reverse=5,auth_expire=5,sale=35,refund=10,balance=10`.
    #[arg(long, default_value_t = Weights::default(), help_heading = "Workload")]
    pub mix: Weights,
    /// Share of captures that take less than was authorized.
    #[arg(long, default_value_t = 0.3, help_heading = "Workload")]
    pub partial_capture: f64,
    /// Zipf skew over customers and merchants (YCSB's θ, in (0, 1)); 0 for uniform.
    #[arg(long, default_value_t = 0.99, help_heading = "Workload")]
    pub zipf: f64,
    /// Share of all payments that go to one hot merchant (0 for none).
    #[arg(long, default_value_t = 0.0, help_heading = "Workload")]
    pub hot_merchant: f64,
    /// Expiry of the holds that are left to expire, seconds.
    #[arg(long, default_value_t = 2, help_heading = "Workload")]
    pub expire_secs: u32,
    /// Expiry of the holds that are captured or reversed, seconds.
    #[arg(long, default_value_t = 3600, help_heading = "Workload")]
    pub hold_secs: u32,

    /// Directory for report.json, chart.png and chart.svg.
    #[arg(long, default_value = "loadgen-report", help_heading = "Report")]
    pub out: PathBuf,
    /// Skip the end-of-run verification.
    #[arg(long, help_heading = "Report")]
    pub no_verify: bool,
    /// No live progress.
    #[arg(long, help_heading = "Report")]
    pub quiet: bool,
    /// Seed of every random choice (a fixed seed repeats the same workload).
    #[arg(long, help_heading = "Report")]
    pub seed: Option<u64>,
}

/// Where the switch is.
#[derive(Clone, Debug)]
pub enum Target {
    Spawn {
        config: Option<PathBuf>,
        no_fsync: bool,
    },
    Remote {
        /// Each an address, or a host name and port: one switch, or a cluster's replicas.
        addrs: Vec<String>,
        trust: TrustSource,
        client: Option<(PathBuf, PathBuf)>,
    },
}

#[derive(Clone, Debug)]
pub enum TrustSource {
    Fingerprint([u8; 32]),
    CaFile(PathBuf),
}

#[derive(Clone, Debug)]
pub enum Profile {
    Constant {
        rate: f64,
        duration_secs: f64,
    },
    Festival {
        /// `None`: calibrate.
        peak: Option<f64>,
        /// With calibration: the peak as a share of the saturation measured (`--overload`
        /// sets it above 1).
        peak_fraction: f64,
        calibrate_secs: f64,
        /// `--overload`: the peak's multiple of saturation, and the run is judged as an
        /// overload.
        overload: Option<f64>,
        /// The p99 objective, milliseconds (`--slo-p99-ms`).
        slo_p99_ms: f64,
        /// The shape, with rates as shares of the peak.
        shape: Festival,
    },
    Max {
        duration_secs: f64,
    },
    Step {
        start: f64,
        increment: f64,
        step_secs: f64,
        slo_p99_ms: f64,
        steps_max: u32,
    },
}

impl Profile {
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Constant { .. } => "constant",
            Profile::Festival { .. } => "festival",
            Profile::Max { .. } => "max",
            Profile::Step { .. } => "step",
        }
    }
}

/// Deliberate faults, for tests that show the verifier can fail.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The model ignores the effect of the n-th approved sale (0-based), as if its answer
    /// had been lost.
    pub drop_sale_effect: Option<u64>,
    /// The answer to the n-th frame (0-based) is thrown away, as if it had timed out, so
    /// that its requests must be resolved by asking again.
    pub lose_frame: Option<u64>,
}

/// Everything a run needs, resolved and checked.
/// How the open loop keeps its schedule (`--pacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pacing {
    /// tokio's millisecond timer.
    Timer,
    /// A pacing thread on the high-resolution timer.
    Thread,
}

/// `--depth` when not given, in a closed loop and in an open one.
const CLOSED_DEPTH: usize = 8;
const OPEN_DEPTH: usize = 64;
/// `--silence-secs` against a cluster unless given: a dead leader is left about this long
/// after its last packet (keep-alives every third of it), which is under the election that
/// follows, while a live switch at its peak is never this silent.
const CLUSTER_SILENCE: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    pub connections: usize,
    pub streams: usize,
    /// Frames in flight per lane in a closed loop.
    pub depth: usize,
    /// Frames in flight per lane in an open loop: a bound on what waits at the switch, not a
    /// pace, so above what the switch may hold at its queueing-delay target.
    pub open_depth: usize,
    pub batch_max: usize,
    pub timeout: Duration,
    /// A connection that hears nothing this long is lost (`--silence-secs`).
    pub silence: Duration,
    /// How the open loop keeps its schedule (`--pacing`).
    pub pacing: Pacing,
    /// With several targets: the longest search for a leader (see `Common::failover_secs`).
    pub failover_deadline: Duration,
    pub threads: usize,
    /// Budget of each frame of the load, milliseconds; 0 for none (`--budget-ms`).
    pub budget_ms: u16,
    /// How requests refused as busy are sent again (`--retries-max`, `--retry-secs-max`).
    pub retry: crate::backoff::RetryPolicy,
    /// Client-side throttling's K, 0 for off (`--throttle-k`, `throttle`).
    pub throttle_k: f64,
    pub customers: u64,
    pub merchants: u64,
    pub currency: Currency,
    pub fund: Amount,
    pub setup_batch: usize,
    pub issuer: u64,
    pub acquirer: u64,
    pub card_prefix: String,
    pub mix: MixConfig,
    pub expire_secs: u32,
    pub hold_secs: u32,
    /// Payments the switch remembers; `None`: all of them (see `Common::switch_remembers`).
    pub switch_remembers: Option<u64>,
    pub profile: Profile,
    pub out: Option<PathBuf>,
    pub verify: bool,
    pub progress: bool,
    pub seed: u64,
    pub faults: Faults,
}

fn throttle_k(k: f64) -> anyhow::Result<f64> {
    if k == 0.0 || (k.is_finite() && k >= 1.0) {
        Ok(k)
    } else {
        anyhow::bail!("--throttle-k must be 0 (off) or at least 1, not {k}")
    }
}

fn positive(name: &str, value: f64) -> anyhow::Result<f64> {
    if !value.is_finite() || value <= 0.0 {
        bail!("--{name} must be a number above 0, not {value}");
    }
    Ok(value)
}

fn share(name: &str, value: f64) -> anyhow::Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        bail!("--{name} must be between 0 and 1, not {value}");
    }
    Ok(value)
}

/// `--target`: one address or several, comma-separated, each `HOST:PORT` (a host name, an
/// IPv4 address, or an IPv6 one in brackets), none twice.
pub fn parse_targets(text: &str) -> anyhow::Result<Vec<String>> {
    let mut targets: Vec<String> = Vec::new();
    for part in text.split(',') {
        let target = part.trim();
        let port = target
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>().ok().filter(|&p| p != 0)));
        match port {
            Some((host, Some(_))) if !host.is_empty() => {}
            _ if target.is_empty() => {
                bail!("--target {text}: an empty address in the list")
            }
            _ => bail!("--target {text}: {target} is not HOST:PORT or an address with its port"),
        }
        if targets.iter().any(|t| t == target) {
            bail!("--target {text}: {target} is listed twice");
        }
        targets.push(target.to_string());
    }
    Ok(targets)
}

fn minor(name: &str, value: Decimal, currency: Currency) -> anyhow::Result<Amount> {
    Amount::from_decimal(value, currency).with_context(|| format!("--{name}"))
}

impl Options {
    /// Options with small defaults against a spawned switch (tests start here).
    pub fn spawn_defaults(profile: Profile) -> Options {
        let cli = Cli::parse_from(["loadgen", "--spawn", "max"]);
        let mut options = Options::from_cli(cli).expect("the defaults are valid");
        options.profile = profile;
        options
    }

    pub fn from_cli(cli: Cli) -> anyhow::Result<Options> {
        let c = cli.common;
        let currency = Currency::from_code(&c.currency)
            .with_context(|| format!("--currency {}: not a known ISO 4217 code", c.currency))?;
        let target = match (c.spawn, c.target) {
            (true, _) => Target::Spawn {
                config: c.spawn_config,
                no_fsync: c.spawn_no_fsync,
            },
            (false, Some(addr)) => {
                let addrs = parse_targets(&addr)?;
                let trust = match (c.fingerprint, c.ca_file) {
                    (Some(f), None) => TrustSource::Fingerprint(
                        switch::config::parse_fingerprint(&f).with_context(|| {
                            format!("--fingerprint {f}: expected 32 hex bytes separated by colons")
                        })?,
                    ),
                    (None, Some(path)) => TrustSource::CaFile(path),
                    _ => bail!("--target needs exactly one of --fingerprint and --ca-file"),
                };
                Target::Remote {
                    addrs,
                    trust,
                    client: c.client_cert.zip(c.client_key),
                }
            }
            (false, None) => bail!("say where the switch is: --spawn, or --target HOST:PORT"),
        };
        let switch_remembers = match (&target, c.switch_remembers) {
            (_, Some(n)) => Some(n),
            (Target::Spawn { config, .. }, None) => Some(
                match config {
                    Some(path) => switch::config::Config::load(path)?,
                    None => switch::config::Config::default(),
                }
                .ledger
                .transfers_remembered_max,
            ),
            (Target::Remote { .. }, None) => None,
        };
        let amount_min = minor("amount-min", c.amount_min, currency)?;
        let amount_max = minor("amount-max", c.amount_max, currency)?;
        if amount_min.0 == 0 || amount_min > amount_max {
            bail!("payments need 0 < --amount-min <= --amount-max");
        }
        let fund = minor("fund", c.fund, currency)?;
        if c.customers == 0 || c.merchants == 0 {
            bail!("--customers and --merchants must be at least 1");
        }
        if c.customers > 10_000_000 || c.merchants > 10_000_000 {
            bail!(
                "at most 10,000,000 customers and merchants (the switch's default account limit)"
            );
        }
        if c.card_prefix.is_empty()
            || c.card_prefix.len() > 4
            || !c.card_prefix.bytes().all(|b| b.is_ascii_digit())
        {
            bail!("--card-prefix must be 1 to 4 digits");
        }
        if c.zipf != 0.0 && !(c.zipf > 0.0 && c.zipf < 1.0) {
            bail!("--zipf must be 0 (uniform) or in (0, 1), not {}", c.zipf);
        }
        for (name, v) in [
            ("connections", c.connections),
            ("streams", c.streams),
            ("depth", c.depth.unwrap_or(CLOSED_DEPTH)),
            ("batch-max", c.batch_max),
            ("setup-batch", c.setup_batch),
            ("threads", c.threads),
        ] {
            if v == 0 {
                bail!("--{name} must be at least 1");
            }
        }
        if c.batch_max > 8190 || c.setup_batch > 8190 {
            bail!("--batch-max and --setup-batch are at most 8190 (the switch's frame limit)");
        }
        if c.expire_secs == 0 || c.hold_secs == 0 {
            bail!("--expire-secs and --hold-secs must be at least 1");
        }
        let profile = match cli.profile {
            ProfileCommand::Constant { rate, duration } => Profile::Constant {
                rate: positive("rate", rate)?,
                duration_secs: positive("duration", duration)?,
            },
            ProfileCommand::Max { duration } => Profile::Max {
                duration_secs: positive("duration", duration)?,
            },
            ProfileCommand::Step {
                start,
                increment,
                step_secs,
                slo_p99_ms,
                steps_max,
            } => Profile::Step {
                start: positive("start", start)?,
                increment: positive("increment", increment)?,
                step_secs: positive("step-secs", step_secs)?,
                slo_p99_ms: positive("slo-p99-ms", slo_p99_ms)?,
                steps_max: steps_max.max(1),
            },
            ProfileCommand::Festival(f) => {
                let overload = f.overload.map(|o| positive("overload", o)).transpose()?;
                if overload.is_some() && f.peak != "auto" {
                    bail!("--overload sets the peak from the calibration: leave out --peak");
                }
                let peak = if f.peak == "auto" {
                    None
                } else {
                    Some(positive(
                        "peak",
                        f64::from_str(&f.peak)
                            .with_context(|| format!("--peak {}: a rate or `auto`", f.peak))?,
                    )?)
                };
                for (name, v) in [
                    ("baseline-secs", f.baseline_secs),
                    ("ramp-secs", f.ramp_secs),
                    ("spike-secs", f.spike_secs),
                    ("plateau-secs", f.plateau_secs),
                    ("decay-secs", f.decay_secs),
                    ("tail-secs", f.tail_secs),
                ] {
                    if !v.is_finite() || v < 0.0 {
                        bail!("--{name} must be at least 0, not {v}");
                    }
                }
                Profile::Festival {
                    peak,
                    peak_fraction: match overload {
                        Some(o) => o,
                        None => positive("peak-fraction", f.peak_fraction)?,
                    },
                    calibrate_secs: positive("calibrate-secs", f.calibrate_secs)?,
                    overload,
                    slo_p99_ms: positive("slo-p99-ms", f.slo_p99_ms)?,
                    shape: Festival {
                        peak: 1.0,
                        baseline: share("baseline", f.baseline)?,
                        pre_spike: share("pre-spike", f.pre_spike)?,
                        baseline_secs: f.baseline_secs,
                        ramp_secs: f.ramp_secs,
                        spike_secs: f.spike_secs,
                        plateau_secs: f.plateau_secs,
                        decay_secs: f.decay_secs,
                        tail_secs: f.tail_secs,
                    },
                }
            }
        };
        let seed = c.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        let timeout = Duration::from_secs_f64(positive("timeout-secs", c.timeout_secs)?);
        let cluster = matches!(&target, Target::Remote { addrs, .. } if addrs.len() > 1);
        let silence = match c.silence_secs {
            Some(s) => Duration::from_secs_f64(positive("silence-secs", s)?),
            None if cluster => timeout.min(CLUSTER_SILENCE),
            None => timeout,
        };
        Ok(Options {
            target,
            connections: c.connections,
            streams: c.streams,
            depth: c.depth.unwrap_or(CLOSED_DEPTH),
            open_depth: c.depth.unwrap_or(OPEN_DEPTH),
            batch_max: c.batch_max,
            timeout,
            silence,
            pacing: c.pacing,
            failover_deadline: Duration::from_secs_f64(positive("failover-secs", c.failover_secs)?),
            threads: c.threads,
            budget_ms: c.budget_ms,
            retry: crate::backoff::RetryPolicy {
                retries_max: c.retries_max,
                give_up_after: Duration::from_secs_f64(positive(
                    "retry-secs-max",
                    c.retry_secs_max,
                )?),
            },
            throttle_k: throttle_k(c.throttle_k)?,
            customers: c.customers,
            merchants: c.merchants,
            currency,
            fund,
            setup_batch: c.setup_batch,
            issuer: c.issuer,
            acquirer: c.acquirer,
            card_prefix: c.card_prefix,
            mix: MixConfig {
                weights: c.mix,
                partial_capture: share("partial-capture", c.partial_capture)?,
                zipf_theta: c.zipf,
                hot_merchant_share: share("hot-merchant", c.hot_merchant)?,
                amount_min: amount_min.0,
                amount_max: amount_max.0,
            },
            expire_secs: c.expire_secs,
            hold_secs: c.hold_secs,
            switch_remembers,
            profile,
            out: Some(c.out),
            verify: !c.no_verify,
            progress: !c.quiet,
            seed,
            faults: Faults::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Options> {
        let mut all = vec!["loadgen"];
        all.extend_from_slice(args);
        Options::from_cli(Cli::try_parse_from(all)?)
    }

    #[test]
    fn spawn_festival_is_the_whole_command() {
        let o = parse(&["--spawn", "festival"]).expect("valid");
        assert!(matches!(o.target, Target::Spawn { .. }));
        assert!(matches!(o.profile, Profile::Festival { peak: None, .. }));
        assert_eq!(o.fund, Amount(10_000_000_000));
        let o = parse(&["--spawn", "--customers", "7", "constant", "--rate", "5"]).expect("ok");
        assert_eq!(o.customers, 7);
    }

    #[test]
    fn how_much_the_switch_remembers_comes_from_the_flag_or_the_spawned_config() {
        let default = switch::config::Config::default()
            .ledger
            .transfers_remembered_max;
        assert_eq!(
            parse(&["--spawn", "max"]).expect("valid").switch_remembers,
            Some(default)
        );
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("switch.toml");
        std::fs::write(
            &path,
            "[ledger]\ntransfers_remembered_max = 300\npending_max = 150\n",
        )
        .expect("written");
        let path = path.to_str().expect("utf-8");
        let o = parse(&["--spawn", "--spawn-config", path, "max"]).expect("valid");
        assert_eq!(o.switch_remembers, Some(300));
        let o = parse(&[
            "--spawn",
            "--spawn-config",
            path,
            "--switch-remembers",
            "7",
            "max",
        ]);
        assert_eq!(o.expect("valid").switch_remembers, Some(7));
        // A remote switch is expected to remember every payment unless told otherwise.
        let fingerprint = format!("{}ab", "ab:".repeat(31));
        let remote = [
            "--target",
            "127.0.0.1:4433",
            "--fingerprint",
            &fingerprint,
            "max",
        ];
        assert_eq!(parse(&remote).expect("valid").switch_remembers, None);
        // A configuration that does not load is refused before anything starts.
        std::fs::write(dir.path().join("bad.toml"), "[ledger]\nnonsense = 1\n").expect("written");
        let bad = dir.path().join("bad.toml");
        assert!(
            parse(&[
                "--spawn",
                "--spawn-config",
                bad.to_str().expect("utf-8"),
                "max"
            ])
            .is_err()
        );
    }

    /// Every option says what it does, and a profile's help lists its own options only (the
    /// common ones are in the main help, once).
    #[test]
    fn every_option_is_described_once() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let mut commands = vec![&cli];
        commands.extend(cli.get_subcommands());
        for command in commands {
            for arg in command.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{} --{}: no description",
                    command.get_name(),
                    arg.get_id()
                );
            }
        }
        let mut cli = Cli::command();
        let main = cli.render_help().to_string();
        assert!(
            main.contains("--customers") && main.contains("--target"),
            "{main}"
        );
        let constant = cli
            .find_subcommand_mut("constant")
            .expect("a profile")
            .render_help()
            .to_string();
        assert!(constant.contains("--rate"), "{constant}");
        assert!(!constant.contains("--customers"), "{constant}");
    }

    /// `--overload F` peaks at F times the calibration, refuses a fixed `--peak`; the budget,
    /// the retry bounds and the throttle are read as given, with sane defaults.
    #[test]
    fn overload_budget_and_retries_are_read() {
        let o = parse(&["--spawn", "festival"]).expect("valid");
        assert_eq!((o.budget_ms, o.retry.retries_max), (0, 5));
        assert_eq!(o.throttle_k, 0.0, "no throttling unless asked");
        assert_eq!(o.retry.give_up_after, Duration::from_secs(10));
        assert!(matches!(
            o.profile,
            Profile::Festival { overload: None, peak_fraction, slo_p99_ms, .. }
                if peak_fraction == 0.8 && slo_p99_ms == 10.0
        ));
        let o = parse(&[
            "--spawn",
            "--budget-ms",
            "250",
            "--retries-max",
            "2",
            "--retry-secs-max",
            "1.5",
            "--throttle-k",
            "1.25",
            "festival",
            "--overload",
            "1.5",
            "--slo-p99-ms",
            "7",
        ])
        .expect("valid");
        assert_eq!((o.budget_ms, o.retry.retries_max), (250, 2));
        assert_eq!(o.retry.give_up_after, Duration::from_millis(1500));
        assert_eq!(o.throttle_k, 1.25);
        assert!(matches!(
            o.profile,
            Profile::Festival { peak: None, overload: Some(f), peak_fraction, slo_p99_ms, .. }
                if f == 1.5 && peak_fraction == 1.5 && slo_p99_ms == 7.0
        ));
        for bad in [
            &["--spawn", "festival", "--overload", "1.5", "--peak", "100"][..],
            &[
                "--spawn",
                "festival",
                "--overload",
                "1.5",
                "--peak-fraction",
                "0.5",
            ],
            &["--spawn", "festival", "--overload", "0"],
            &["--spawn", "--retry-secs-max", "0", "max"],
            &["--spawn", "--budget-ms", "70000", "max"],
            // Below 1 the throttle would refuse payments the switch admits.
            &["--spawn", "--throttle-k", "0.9", "max"],
            &["--spawn", "--throttle-k", "NaN", "max"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_target_may_be_a_host_name() {
        let fingerprint = format!("{}ab", "ab:".repeat(31));
        let o = parse(&[
            "--target",
            "localhost:4520",
            "--fingerprint",
            &fingerprint,
            "max",
        ])
        .expect("valid");
        assert!(
            matches!(o.target, Target::Remote { ref addrs, .. } if addrs == &["localhost:4520"])
        );
    }

    /// `--target` takes one address or a cluster's, comma-separated, in the order given; each
    /// must have a port, none may be empty or listed twice.
    #[test]
    fn the_schedule_is_kept_on_the_millisecond_timer_unless_a_thread_is_asked_for() {
        let pacing = |extra: &[&str]| {
            let mut args = vec!["--spawn"];
            args.extend_from_slice(extra);
            args.push("max");
            parse(&args).map(|o| o.pacing)
        };
        assert_eq!(pacing(&[]).expect("valid"), Pacing::Timer);
        assert_eq!(
            pacing(&["--pacing", "thread"]).expect("valid"),
            Pacing::Thread
        );
        assert_eq!(
            pacing(&["--pacing", "timer"]).expect("valid"),
            Pacing::Timer
        );
        assert!(pacing(&["--pacing", "spin"]).is_err());
    }

    #[test]
    fn a_cluster_leaves_a_silent_leader_sooner_than_a_slow_answer() {
        let fingerprint = format!("{}ab", "ab:".repeat(31));
        let silence = |target: &str, extra: &[&str]| {
            let mut args = vec!["--target", target, "--fingerprint", &fingerprint];
            args.extend_from_slice(extra);
            args.push("max");
            parse(&args).map(|o| (o.timeout, o.silence))
        };
        let secs = Duration::from_secs_f64;
        let three = "127.0.0.1:4431,127.0.0.1:4432,127.0.0.1:4433";
        assert_eq!(
            silence(three, &[]).expect("valid"),
            (secs(10.0), secs(0.25))
        );
        assert_eq!(
            silence("127.0.0.1:4431", &[]).expect("valid"),
            (secs(10.0), secs(10.0))
        );
        // A timeout shorter than the cluster's silence is both.
        let short = ["--timeout-secs", "0.2"];
        assert_eq!(
            silence(three, &short).expect("valid"),
            (secs(0.2), secs(0.2))
        );
        let given = ["--silence-secs", "2.5"];
        assert_eq!(
            silence("127.0.0.1:4431", &given).expect("valid"),
            (secs(10.0), secs(2.5))
        );
        let zero = ["--silence-secs", "0"];
        let e = silence(three, &zero).expect_err("zero").to_string();
        assert!(e.contains("--silence-secs must be a number above 0"), "{e}");
    }

    #[test]
    fn a_target_may_list_a_cluster() {
        let ok = |text: &str| parse_targets(text).expect(text);
        assert_eq!(ok("127.0.0.1:4431"), ["127.0.0.1:4431"]);
        assert_eq!(
            ok("127.0.0.1:4431,localhost:4432, [::1]:4433"),
            ["127.0.0.1:4431", "localhost:4432", "[::1]:4433"]
        );
        assert_eq!(ok("b:2,a:1"), ["b:2", "a:1"]);
        for (bad, said) in [
            ("127.0.0.1", "is not HOST:PORT"),
            ("127.0.0.1:4431,", "an empty address"),
            (",127.0.0.1:4431", "an empty address"),
            ("a:1,,b:2", "an empty address"),
            ("a:1,b", "b is not HOST:PORT"),
            ("a:1,b:port", "b:port is not HOST:PORT"),
            ("a:1,b:70000", "b:70000 is not HOST:PORT"),
            ("a:0", "a:0 is not HOST:PORT"),
            (":4431", ":4431 is not HOST:PORT"),
            ("a:1,b:2,a:1", "a:1 is listed twice"),
        ] {
            let e = parse_targets(bad).expect_err(bad).to_string();
            assert!(e.contains(said), "{bad}: {e}");
        }
        let fingerprint = format!("{}ab", "ab:".repeat(31));
        let o = parse(&[
            "--target",
            "127.0.0.1:4431,127.0.0.1:4432,127.0.0.1:4433",
            "--fingerprint",
            &fingerprint,
            "--failover-secs",
            "4",
            "max",
        ])
        .expect("valid");
        assert!(matches!(o.target, Target::Remote { ref addrs, .. } if addrs.len() == 3));
        assert_eq!(o.failover_deadline, Duration::from_secs(4));
        assert!(parse(&["--spawn", "--failover-secs", "0", "max"]).is_err());
        let e = parse(&["--target", "a:1,a:1", "--fingerprint", &fingerprint, "max"])
            .expect_err("refused")
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn amounts_are_exact_or_refused() {
        let o = parse(&["--spawn", "--amount-min", "0.01", "max"]).expect("valid");
        assert_eq!(o.mix.amount_min, 1);
        assert!(parse(&["--spawn", "--amount-min", "0.001", "max"]).is_err());
        let o = parse(&[
            "--spawn",
            "--currency",
            "JPY",
            "--amount-min",
            "1",
            "--amount-max",
            "9",
            "--fund",
            "100",
            "max",
        ])
        .expect("valid");
        assert_eq!((o.mix.amount_max, o.fund), (9, Amount(100)));
        assert!(parse(&["--spawn", "--currency", "XXX", "max"]).is_err());
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        let e = parse(&["max"]).expect_err("refused").to_string();
        assert!(e.contains("--spawn"), "{e}");
        let e = parse(&["--target", "127.0.0.1:4433", "max"])
            .expect_err("refused")
            .to_string();
        assert!(e.contains("--fingerprint"), "{e}");
        assert!(parse(&["--spawn", "constant", "--rate", "0"]).is_err());
        assert!(parse(&["--spawn", "--zipf", "1.5", "max"]).is_err());
        assert!(parse(&["--spawn", "--mix", "sale=0", "max"]).is_err());
        assert!(parse(&["--spawn", "festival", "--peak", "fast"]).is_err());
        assert!(parse(&["--spawn", "--depth", "0", "max"]).is_err());
    }
}
