//! The switch's ledger stage without the network or the disk: what one core's worth of
//! `Core::execute_prepared` (and encoding its log record) costs per authorization.
//!
//! Setup is `switch_run`'s: 1,000 funded cards behind one issuer route, 10 merchants. Then
//! `--count` authorizations with fresh request ids, in batches of `--batch`, with their
//! fingerprints computed beforehand (the server computes them in the connection tasks).
//! Reports the rate, the stage's CPU per authorization, and the batch time p50/p99/max;
//! `--preallocate` reserves the memory for `--remembered` requests first, as
//! `[ledger] preallocate` does at start. With `--capture-lag N`, each batch also captures, in
//! full, as many authorizations as it makes, those made N authorizations before (lookups of
//! old, uncached holds, as a festival's captures are); rates are then per request.
//! With `--replay`, a second core then replays every logged record through `journal::replay`,
//! as a follower applies the leader's entries, and the replay's CPU is reported too.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use ledger::{AccountFlags, AccountId, Amount, Currency, Ledger, ParticipantId, Timestamp};
use switch::codes::Code;
use switch::core::{
    Capture, Core, CoreConfig, CreateAccount, CreateParticipant, Fund, Item, Prepared, Request,
    RequestId,
};
use switch::journal::SwitchRecord;
use switch::routing::{Route, RouteTable};
use switch::tls::Identity;

const CARDS: u64 = 1_000;
const MERCHANTS: u64 = 10;
const ISSUER: ParticipantId = ParticipantId(2);
const ACQUIRER: Identity = Identity {
    participant: ParticipantId(3),
    admin: false,
};
const ADMIN: Identity = Identity {
    participant: ParticipantId(1),
    admin: true,
};

#[derive(Parser)]
struct Args {
    /// Requests applied: authorizations, and with `--capture-lag` captures too.
    #[arg(long, default_value_t = 3_000_000)]
    count: u64,
    /// Authorizations per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Requests (and ledger transfers) remembered.
    #[arg(long, default_value_t = 50_000_000)]
    remembered: u64,
    /// Reserve the memory for `--remembered` before the run (`[ledger] preallocate`).
    #[arg(long)]
    preallocate: bool,
    /// Also capture the authorizations made this many authorizations before (0: none).
    #[arg(long, default_value_t = 0)]
    capture_lag: u64,
    /// Keep every batch's log record, then replay them all into a second core (a follower).
    #[arg(long)]
    replay: bool,
}

fn card_number(i: u64) -> String {
    format!("62{i:014}")
}

fn setup(core: &mut Core) -> anyhow::Result<()> {
    let mut requests = Vec::new();
    for (p, name) in [(2, "issuer"), (3, "acquirer")] {
        requests.push(Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(p),
            name: name.into(),
            roles: 3,
        }));
    }
    for i in 0..CARDS {
        requests.push(Request::CreateAccount(CreateAccount {
            account: AccountId(u128::from(100_000 + i)),
            owner: ISSUER,
            currency: Currency::CNY,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            number: Some(card_number(i)),
        }));
        requests.push(Request::Fund(Fund {
            account: AccountId(u128::from(100_000 + i)),
            amount: Amount(1 << 40),
            currency: Currency::CNY,
        }));
    }
    for i in 0..MERCHANTS {
        requests.push(Request::CreateAccount(CreateAccount {
            account: AccountId(u128::from(1_000_000 + i)),
            owner: ACQUIRER.participant,
            currency: Currency::CNY,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            number: None,
        }));
    }
    for (n, request) in requests.into_iter().enumerate() {
        let item = Item {
            id: RequestId(n as u128 + 1),
            who: ADMIN,
            request,
        };
        let executed = core.execute(vec![item], Timestamp(1));
        anyhow::ensure!(
            executed.responses[0].code == Code::Approved,
            "setup: {:?}",
            executed.responses[0]
        );
    }
    Ok(())
}

fn authorization(id: u64) -> Prepared {
    Prepared::new(Item {
        id: RequestId(u128::from(id)),
        who: ACQUIRER,
        request: Request::Authorize {
            number: card_number(id % CARDS),
            merchant: AccountId(u128::from(1_000_000 + id % MERCHANTS)),
            amount: Amount(1),
            currency: Currency::CNY,
            expiry_seconds: 3600,
        },
    })
}

fn capture(id: u64, of: u64) -> Prepared {
    Prepared::new(Item {
        id: RequestId(u128::from(id)),
        who: ACQUIRER,
        request: Request::Capture(Capture {
            authorization: RequestId(u128::from(of)),
            amount: Amount(1),
        }),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let batch = args.batch.max(1);
    anyhow::ensure!(
        args.capture_lag == 0 || args.capture_lag >= batch as u64,
        "--capture-lag must be at least --batch"
    );
    // The switch's defaults, with the same raised bounds as `switch_run`.
    let mut config = switch::config::Config::default();
    config.ledger.pending_max = 50_000_000;
    config.ledger.transfers_remembered_max = args.remembered;
    let routes = RouteTable::new(vec![Route {
        prefix: "62".into(),
        issuer: ISSUER,
        pooled_account: None,
    }])?;
    let core_config = CoreConfig {
        default_expiry_seconds: config.authorization.default_expiry_seconds,
        expiry_seconds_max: config.authorization.expiry_seconds_max,
        requests_remembered_max: usize::try_from(args.remembered)?,
        ..CoreConfig::default()
    };
    let routes = Arc::new(routes);
    let new_core = || -> anyhow::Result<Core> {
        let ledger = Arc::new(Ledger::new(switch::config::settings::ledger_config(
            &config,
        ))?);
        let mut core = Core::new(ledger, core_config.clone(), routes.clone());
        setup(&mut core)?;
        if args.preallocate {
            let started = Instant::now();
            let bytes = core.preallocate();
            println!(
                "preallocated_mib={} in {:.1} s",
                bytes >> 20,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(core)
    };
    let mut core = new_core()?;
    let mut records: Vec<Vec<u8>> = Vec::new();

    let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut approved, mut applied, mut busy) = (0u64, 0u64, 0f64);
    let mut payload = Vec::new();
    let first = 1u64 << 20;
    let mut next = first;
    let mut next_capture = 1u64 << 60;
    let now = Timestamp(2_000_000_000);
    let faults_before = benches::minor_faults();
    while applied < args.count {
        let n = (batch as u64).min(args.count - applied);
        // Built outside the timing: on the server, the connection tasks build these.
        let mut items: Vec<Prepared> = (next..next + n).map(authorization).collect();
        if args.capture_lag > 0 && next >= first + args.capture_lag {
            // Made in earlier batches: the lag is at least a batch.
            for of in next - args.capture_lag..next - args.capture_lag + n {
                items.push(capture(next_capture, of));
                next_capture += 1;
            }
        }
        next += n;
        let n = items.len() as u64;
        let started = Instant::now();
        let executed = core.execute_prepared(items, now);
        payload.clear();
        SwitchRecord::encode_batch(now, &executed.logged, &mut payload);
        let took = started.elapsed();
        if args.replay {
            records.push(payload.clone());
        }
        busy += took.as_secs_f64();
        times.saturating_record(took.as_micros() as u64);
        applied += n;
        approved += executed
            .responses
            .iter()
            .filter(|r| r.code == Code::Approved)
            .count() as u64;
    }
    let faults = benches::minor_faults() - faults_before;
    anyhow::ensure!(approved == applied, "{approved} of {applied} approved");
    let captures = next_capture - (1u64 << 60);
    let what = if captures > 0 {
        "request"
    } else {
        "authorization"
    };
    println!(
        "count={} captures={captures} batch={batch} remembered={} preallocate={} peak_rss_mib={} \
         page_faults_while_applying={faults}",
        args.count,
        args.remembered,
        args.preallocate,
        benches::rss_bytes().0 >> 20
    );
    println!(
        "{what}s/s={:.0} us_per_{what}={:.2} batch_us p50={} p99={} max={}",
        applied as f64 / busy,
        busy * 1e6 / applied as f64,
        times.value_at_quantile(0.5),
        times.value_at_quantile(0.99),
        times.max()
    );
    if args.replay {
        let mut follower = new_core()?;
        let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let started = Instant::now();
        for record in &records {
            let one = Instant::now();
            switch::journal::replay(&mut follower, record)?;
            times.saturating_record(one.elapsed().as_micros() as u64);
        }
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            follower.ledger().digest() == core.ledger().digest(),
            "the replayed ledger differs from the executed one"
        );
        println!(
            "replayed_{what}s/s={:.0} us_per_replayed_{what}={:.2} record_us p50={} p99={} max={}",
            applied as f64 / secs,
            secs * 1e6 / applied as f64,
            times.value_at_quantile(0.5),
            times.value_at_quantile(0.99),
            times.max()
        );
    }
    Ok(())
}
