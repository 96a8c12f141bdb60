//! The cost of a switch snapshot at a realistic size, without the network: a core fed
//! `--requests` remembered requests (two authorizations, then a capture of the first, over and
//! over, on 1,000 funded cards), then:
//!
//! - the pause: `Image::take` on the thread that owns the core (ledger copy + core encoding),
//! - encode (off that thread) and a durable write to a temporary directory,
//! - recovery from the snapshot (read, verify, restore) against recovery by replaying the
//!   whole log in memory (the switch's recovery before snapshots).

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use ledger::snapshot_file;
use ledger::storage::FileStorage;
use ledger::{AccountFlags, AccountId, Amount, Currency, Ledger, ParticipantId, Timestamp};
use switch::core::snapshot::{Image, RestoreConfig};
use switch::core::{
    Core, CoreConfig, CreateAccount, CreateParticipant, Fund, Item, Request, RequestId,
};
use switch::journal::SwitchRecord;
use switch::routing::{Route, RouteTable};
use switch::tls::Identity;

const CARDS: u64 = 1_000;
const ADMIN: Identity = Identity {
    participant: ParticipantId(1),
    admin: true,
};
const ACQUIRER: Identity = Identity {
    participant: ParticipantId(3),
    admin: false,
};

#[derive(Parser)]
struct Args {
    /// Remembered requests when the snapshot is taken.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Requests per batch (per log record).
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Also time recovery by replaying the whole log (keeps the log in memory).
    #[arg(long)]
    replay: bool,
}

fn card(i: u64) -> String {
    format!("62{i:014}")
}

fn configs(requests: u64) -> (ledger::Config, CoreConfig, Arc<RouteTable>) {
    let ledger = ledger::Config {
        pending_max: requests,
        transfers_remembered_max: requests + 2 * CARDS + 100,
        ..ledger::Config::default()
    };
    let core = CoreConfig {
        requests_remembered_max: usize::try_from(requests + 2 * CARDS + 100).unwrap_or(usize::MAX),
        ..CoreConfig::default()
    };
    let routes = RouteTable::new(vec![Route {
        prefix: "62".into(),
        issuer: ParticipantId(2),
        pooled_account: None,
    }])
    .expect("valid routes");
    (ledger, core, Arc::new(routes))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (ledger_config, core_config, routes) = configs(args.requests);
    let ledger = Arc::new(Ledger::new(ledger_config.clone())?);
    let mut core = Core::new(ledger, core_config.clone(), routes.clone());
    let mut journal: Vec<Vec<u8>> = Vec::new();
    let mut log = |executed: switch::core::Executed, now: Timestamp| {
        if args.replay && !executed.logged.is_empty() {
            let mut bytes = Vec::new();
            SwitchRecord::encode_batch(now, &executed.logged, &mut bytes);
            journal.push(bytes);
        }
        executed
            .responses
            .iter()
            .all(|r| r.code == switch::codes::Code::Approved)
    };
    let now = Timestamp(1_000_000_000_000);
    let mut setup = vec![
        Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(2),
            name: "issuer".into(),
            roles: 1,
        }),
        Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(3),
            name: "acquirer".into(),
            roles: 2,
        }),
        Request::CreateAccount(CreateAccount {
            account: AccountId(1_000_000),
            owner: ParticipantId(3),
            currency: Currency::CNY,
            flags: AccountFlags::empty(),
            number: None,
        }),
    ];
    for i in 0..CARDS {
        setup.push(Request::CreateAccount(CreateAccount {
            account: AccountId(10_000 + u128::from(i)),
            owner: ParticipantId(2),
            currency: Currency::CNY,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            number: Some(card(i)),
        }));
        setup.push(Request::Fund(Fund {
            account: AccountId(10_000 + u128::from(i)),
            amount: Amount(1 << 40),
            currency: Currency::CNY,
        }));
    }
    let items = setup
        .into_iter()
        .enumerate()
        .map(|(i, request)| Item {
            id: RequestId(1 + i as u128),
            who: ADMIN,
            request,
        })
        .collect();
    anyhow::ensure!(log(core.execute(items, now), now), "setup declined");
    let started = Instant::now();
    let mut id = 3u128 << 40;
    let mut sent = 0u64;
    while sent < args.requests {
        let mut items = Vec::with_capacity(args.batch as usize);
        for _ in 0..args.batch.min(args.requests - sent) {
            id += 1;
            let request = if id.is_multiple_of(3) {
                Request::Capture(switch::core::Capture {
                    authorization: RequestId(id - 2),
                    amount: Amount(1),
                })
            } else {
                Request::Authorize {
                    number: card((id as u64) % CARDS),
                    merchant: AccountId(1_000_000),
                    amount: Amount(1),
                    currency: Currency::CNY,
                    expiry_seconds: 3_600,
                }
            };
            items.push(Item {
                id: RequestId(id),
                who: ACQUIRER,
                request,
            });
            sent += 1;
        }
        anyhow::ensure!(log(core.execute(items, now), now), "a request was declined");
    }
    let fill_s = started.elapsed().as_secs_f64();
    let records = journal.len() as u64;
    let journal_bytes: usize = journal.iter().map(Vec::len).sum();

    let started = Instant::now();
    let ledger_capture = core.ledger().capture();
    let ledger_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(ledger_capture);
    let started = Instant::now();
    let core_capture = core.capture();
    let core_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(core_capture);
    let started = Instant::now();
    let capture = Image::take(&core, records);
    let pause_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let payload = capture.encode();
    let encode_ms = started.elapsed().as_secs_f64() * 1e3;
    let dir = tempfile::tempdir()?;
    let storage = FileStorage::open(dir.path())?;
    let started = Instant::now();
    snapshot_file::write(&storage, records, &payload, 2)?;
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(payload);
    let digest = core.ledger().digest();
    drop(core);

    let started = Instant::now();
    let snapshot = snapshot_file::read(&storage, records)?.map_err(|r| anyhow::anyhow!("{r}"))?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let (restored, _) = Core::restore(
        &snapshot.payload,
        records,
        RestoreConfig {
            ledger: ledger_config.clone(),
            core: core_config.clone(),
            routes: routes.clone(),
        },
    )?;
    let restore_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        restored.ledger().digest() == digest,
        "restored digest differs"
    );
    let snapshot_bytes = snapshot.payload.len();
    drop(snapshot);
    drop(restored);

    println!(
        "remembered_requests={} batch={} fill_s={fill_s:.1} snapshot_mib={:.1}",
        args.requests,
        args.batch,
        snapshot_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "pause_ms={pause_ms:.1} (ledger capture {ledger_ms:.1} + core capture {core_ms:.1}) \
         encode_ms={encode_ms:.1} write_fsync_ms={write_ms:.1}"
    );
    println!(
        "recovery_from_snapshot_ms={:.1} (read and verify {read_ms:.1} + restore {restore_ms:.1})",
        read_ms + restore_ms
    );
    if args.replay {
        let ledger = Arc::new(Ledger::new(ledger_config)?);
        let mut replayed = Core::new(ledger, core_config, routes);
        let started = Instant::now();
        for bytes in &journal {
            match SwitchRecord::decode(bytes)? {
                SwitchRecord::Batch { now, commands } => replayed.replay(&commands, now),
                SwitchRecord::Expire { now, at_most } => {
                    replayed.expire(now, at_most);
                }
            }
        }
        let replay_ms = started.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            replayed.ledger().digest() == digest,
            "replayed digest differs"
        );
        println!(
            "recovery_by_full_replay_ms={replay_ms:.1} (log of {records} records, {:.1} MiB, in memory)",
            journal_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
