//! Closing a clearing window: fills one window with sales among many participants through
//! the switch core (no network, no log), then closes it while a steady stream of small
//! batches keeps arriving, and reports the close's time on the ledger stage, the report
//! writing time (off the stage), memory, and the batch latencies around the close.
//!
//! ```text
//! cargo run --release -p benches --bin clearing_run -- --transfers 10000000 --participants 100
//! ```

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use ledger::{AccountFlags, AccountId, Amount, Config, Currency, Ledger, ParticipantId, Timestamp};
use rand::{Rng, SeedableRng};
use switch::clearing::WindowDetails;
use switch::codes::Code;
use switch::core::{
    Body, Core, CoreConfig, CreateAccount, CreateParticipant, Item, Request, RequestId,
};
use switch::routing::{Route, RouteTable};
use switch::tls::Identity;

#[derive(Parser)]
struct Args {
    /// Sales in the window before it closes.
    #[arg(long, default_value_t = 10_000_000)]
    transfers: u64,
    #[arg(long, default_value_t = 100)]
    participants: u64,
    /// Requests per batch while filling.
    #[arg(long, default_value_t = 8190)]
    batch: usize,
    /// Requests per batch in the steady stream around the close.
    #[arg(long, default_value_t = 1024)]
    stream_batch: usize,
    /// Batches of the steady stream before and after the close.
    #[arg(long, default_value_t = 400)]
    stream_batches: usize,
}

const ADMIN: Identity = Identity {
    participant: ParticipantId(1),
    admin: true,
};

fn card(p: u64) -> AccountId {
    AccountId(u128::from(p) * 10)
}
fn merchant(p: u64) -> AccountId {
    AccountId(u128::from(p) * 10 + 1)
}
fn number(p: u64) -> String {
    format!("6{p:03}000000000000")
}

struct Traffic {
    rng: rand::rngs::StdRng,
    participants: u64,
    next: u128,
}

impl Traffic {
    fn batch(&mut self, n: usize) -> Vec<Item> {
        (0..n)
            .map(|_| {
                let acquirer = self.rng.gen_range(1..=self.participants) + 1;
                let issuer = self.rng.gen_range(1..=self.participants) + 1;
                self.next += 1;
                Item {
                    id: RequestId(self.next),
                    who: Identity {
                        participant: ParticipantId(acquirer),
                        admin: false,
                    },
                    request: Request::Sale {
                        number: number(issuer),
                        merchant: merchant(acquirer),
                        amount: Amount(self.rng.gen_range(100..100_000)),
                        currency: Currency::CNY,
                    },
                }
            })
            .collect()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let participants: Vec<u64> = (2..args.participants + 2).collect();
    let remembered = usize::try_from(args.transfers).unwrap_or(usize::MAX) * 2;
    let ledger = Arc::new(Ledger::new(Config {
        transfers_remembered_max: args.transfers * 2,
        accounts_max: 1_000_000,
        ..Config::default()
    })?);
    let routes = RouteTable::new(
        participants
            .iter()
            .map(|&p| Route {
                prefix: format!("6{p:03}"),
                issuer: ParticipantId(p),
                pooled_account: Some(card(p)),
            })
            .collect(),
    )?;
    let mut core = Core::new(
        ledger,
        CoreConfig {
            requests_remembered_max: remembered,
            ..CoreConfig::default()
        },
        Arc::new(routes),
    );
    let mut now = Timestamp(1_800_000_000_000_000_000);
    let mut setup = Vec::new();
    for &p in &participants {
        setup.push(Request::CreateParticipant(CreateParticipant {
            participant: ParticipantId(p),
            name: format!("bank {p}"),
            roles: 3,
        }));
    }
    for &p in &participants {
        for (account, flags) in [
            (card(p), AccountFlags::empty()),
            (merchant(p), AccountFlags::empty()),
        ] {
            setup.push(Request::CreateAccount(CreateAccount {
                account,
                owner: ParticipantId(p),
                currency: Currency::CNY,
                flags,
                number: None,
            }));
        }
    }
    let items: Vec<Item> = setup
        .into_iter()
        .enumerate()
        .map(|(i, request)| Item {
            id: RequestId(u128::MAX - 1 - i as u128),
            who: ADMIN,
            request,
        })
        .collect();
    let executed = core.execute(items, now);
    anyhow::ensure!(
        executed.responses.iter().all(|r| r.code == Code::Approved),
        "setup failed"
    );
    let mut traffic = Traffic {
        rng: rand::rngs::StdRng::seed_from_u64(7),
        participants: args.participants,
        next: 0,
    };
    let (_, rss_before) = benches::rss_bytes();
    let started = Instant::now();
    let mut filled = 0u64;
    while filled < args.transfers {
        let n = usize::try_from(args.transfers - filled)
            .unwrap_or(usize::MAX)
            .min(args.batch);
        now = Timestamp(now.0 + 1_000);
        let executed = core.execute(traffic.batch(n), now);
        anyhow::ensure!(
            executed.responses.iter().all(|r| r.code == Code::Approved),
            "a sale was declined: {:?}",
            executed.responses.iter().find(|r| r.code != Code::Approved)
        );
        filled += n as u64;
    }
    let fill = started.elapsed();
    let (_, rss_filled) = benches::rss_bytes();
    println!(
        "filled one window with {} sales among {} participants in {:.1} s ({:.0} sales/s); RSS {:.0} → {:.0} MiB",
        args.transfers,
        args.participants,
        fill.as_secs_f64(),
        args.transfers as f64 / fill.as_secs_f64(),
        mib(rss_before),
        mib(rss_filled),
    );

    // A steady stream of batches, the close in the middle of it.
    let mut before = Histogram::<u64>::new(3)?;
    let mut after = Histogram::<u64>::new(3)?;
    for _ in 0..args.stream_batches {
        now = Timestamp(now.0 + 1_000);
        let items = traffic.batch(args.stream_batch);
        let t = Instant::now();
        core.execute(items, now);
        before.record(t.elapsed().as_micros() as u64)?;
    }
    now = Timestamp(now.0 + 1_000);
    let close = Item {
        id: RequestId(u128::MAX - 100_000),
        who: ADMIN,
        request: Request::CloseWindow { window: 0 },
    };
    let t = Instant::now();
    let executed = core.execute(vec![close], now);
    let close_on_stage = t.elapsed();
    anyhow::ensure!(
        executed.responses[0].body == Body::WindowClosed(1),
        "close failed: {:?}",
        executed.responses[0]
    );
    let details: Vec<Arc<WindowDetails>> = core.take_reports();
    let (peak, rss_closed) = benches::rss_bytes();
    for _ in 0..args.stream_batches {
        now = Timestamp(now.0 + 1_000);
        let items = traffic.batch(args.stream_batch);
        let t = Instant::now();
        core.execute(items, now);
        after.record(t.elapsed().as_micros() as u64)?;
    }
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    for d in &details {
        switch::report::write(dir.path(), d)?;
    }
    let reports = t.elapsed();
    let d = &details[0];
    println!(
        "close of window 1: {} transfers cleared, {} pairs, {} positions, {} settlement transfers, reconciled: {}",
        d.window.transfer_count,
        d.settlement.pairs.len(),
        d.window.positions.len(),
        d.settlement.transfers.len(),
        d.window.reconciled
    );
    println!(
        "  on the ledger stage: {:.3} ms; writing the three reports (off the stage): {:.1} ms",
        close_on_stage.as_secs_f64() * 1e3,
        reports.as_secs_f64() * 1e3
    );
    println!(
        "  RSS after the close {:.0} MiB (peak {:.0} MiB)",
        mib(rss_closed),
        mib(peak)
    );
    for (name, h) in [("before the close", &before), ("after the close", &after)] {
        println!(
            "  batches of {} sales {name}: p50 {} µs, p99 {} µs, max {} µs",
            args.stream_batch,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    Ok(())
}
