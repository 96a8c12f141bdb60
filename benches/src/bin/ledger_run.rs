//! A whole run in the style of TigerBeetle's `benchmark` command: create the accounts, apply
//! every transfer in batches, and report transfers per second over the whole run, batch
//! latency percentiles and peak RSS. With `--durability fsync` the ledger writes its log to
//! `--dir` and a batch counts as done only when it is on disk; the raw fdatasync ceiling of the
//! same directory is measured in the same run, and so is the time to recover the log.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use benches::{Workload, account_batches, rss_bytes, transfer_batches};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use ledger::storage::FileStorage;
use ledger::wal::{Durability, WalOptions};
use ledger::{Config, DurableLedger, DurableOptions, Event, Ledger, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// In memory: no log at all.
    Memory,
    /// Write-ahead log with fdatasync per group commit.
    Fsync,
    /// Write-ahead log without fdatasync (not durable; reported separately).
    None,
}

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "uniform")]
    workload: String,
    #[arg(long, default_value_t = 10_000_000)]
    transfers: u64,
    #[arg(long, default_value_t = 8189)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    threads: u64,
    #[arg(long, value_enum, default_value = "memory")]
    durability: Mode,
    /// Batches a thread keeps in flight (applied, not yet durable).
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// Directory for the log (emptied first).
    #[arg(long, default_value = "target/ledger-run")]
    dir: PathBuf,
    #[arg(long, default_value_t = 64)]
    shards: usize,
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workload = Workload::parse(&args.workload).context("workload: uniform, zipfian or hot")?;
    let config = Config {
        shards: args.shards,
        transfers_remembered_max: args.transfers + 1_000,
        batch_len_max: args.batch.max(8190),
        ..Config::default()
    };
    eprintln!(
        "generating {} {} transfers...",
        args.transfers,
        workload.name()
    );
    let parts: Vec<Vec<Vec<Event>>> = (0..args.threads)
        .map(|t| {
            let first = 1_000_000 + u128::from(t) * u128::from(args.transfers);
            transfer_batches(
                workload,
                args.transfers / args.threads,
                args.batch,
                first,
                42 + t,
            )
        })
        .collect();
    let payload_bytes = 13 + 79 * args.batch;

    let durable = match args.durability {
        Mode::Memory => None,
        mode => {
            let _ = std::fs::remove_dir_all(&args.dir);
            std::fs::create_dir_all(&args.dir)?;
            let storage = FileStorage::open(&args.dir)?;
            let options = DurableOptions {
                wal: WalOptions {
                    durability: if mode == Mode::Fsync {
                        Durability::Fsync
                    } else {
                        Durability::None
                    },
                    segment_size_max_bytes: 256 << 20,
                    group_size_max_bytes: 16 << 20,
                    record_size_max_bytes: 16 << 20,
                    ..WalOptions::default()
                },
                ..DurableOptions::default()
            };
            Some((
                DurableLedger::open(storage, config.clone(), options.clone())?.0,
                options,
            ))
        }
    };
    let ledger: Arc<Ledger> = match &durable {
        Some((d, _)) => d.ledger().clone(),
        None => Arc::new(Ledger::new(config.clone())?),
    };
    for batch in account_batches(8189) {
        match &durable {
            Some((d, _)) => {
                d.apply_blocking(&batch, Timestamp(1))?;
            }
            None => {
                ledger.apply(&batch, Timestamp(1))?;
            }
        }
    }
    let durable = durable.map(|(d, options)| (Arc::new(d), options));

    eprintln!("applying...");
    let started = Instant::now();
    let handles: Vec<_> = parts
        .into_iter()
        .map(|batches| {
            let ledger = ledger.clone();
            let durable = durable.as_ref().map(|(d, _)| d.clone());
            let in_flight = args.in_flight.max(1);
            std::thread::spawn(move || -> anyhow::Result<(Histogram<u64>, u64)> {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
                let mut ok = 0u64;
                match durable {
                    None => {
                        for batch in &batches {
                            let t = Instant::now();
                            let outcomes = ledger.apply(batch, Timestamp(2))?;
                            latency.saturating_record(t.elapsed().as_micros() as u64);
                            ok += outcomes.iter().filter(|o| o.is_success()).count() as u64;
                        }
                    }
                    Some(d) => {
                        let (tx, rx) = mpsc::channel::<(Instant, usize)>();
                        let mut outstanding = 0;
                        for batch in &batches {
                            if outstanding == in_flight {
                                let (t, n) = rx.recv().context("log writer")?;
                                let us = t.elapsed().as_micros() as u64;
                                latency.saturating_record(us);
                                ok += n as u64;
                                outstanding -= 1;
                            }
                            let t = Instant::now();
                            let tx = tx.clone();
                            d.apply(
                                batch,
                                Timestamp(2),
                                Box::new(move |result| {
                                    let n = result
                                        .map_or(0, |o| o.iter().filter(|o| o.is_success()).count());
                                    let _ = tx.send((t, n));
                                }),
                            )?;
                            outstanding += 1;
                        }
                        for _ in 0..outstanding {
                            let (t, n) = rx.recv().context("log writer")?;
                            let us = t.elapsed().as_micros() as u64;
                            latency.saturating_record(us);
                            ok += n as u64;
                        }
                    }
                }
                Ok((latency, ok))
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut ok = 0;
    for h in handles {
        let (l, n) = h.join().expect("worker")?;
        latency.add(l).expect("same histogram bounds");
        ok += n;
    }
    let elapsed = started.elapsed();
    let (peak_rss, _) = rss_bytes();
    assert_eq!(
        ok,
        args.transfers / args.threads * args.threads,
        "every transfer applies"
    );
    for (_, totals) in ledger.totals() {
        assert!(totals.is_balanced(), "{totals:?}");
    }
    println!(
        "workload={} transfers={} batch={} threads={} durability={:?} in_flight={}",
        workload.name(),
        ok,
        args.batch,
        args.threads,
        args.durability,
        args.in_flight
    );
    println!(
        "throughput={:.0} transfers/s elapsed={:.2}s batch_latency_ms p50={:.2} p99={:.2} max={:.2} (batches={}) peak_rss_mib={}",
        ok as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        percentile_ms(&latency, 0.5),
        percentile_ms(&latency, 0.99),
        latency.max() as f64 / 1000.0,
        latency.len(),
        peak_rss >> 20
    );

    // The snapshot pause: how long every lock is held while the state is copied.
    let t = Instant::now();
    let capture = ledger.capture();
    let pause = t.elapsed();
    let t = Instant::now();
    let mut bytes = Vec::new();
    capture.encode(&mut bytes);
    println!(
        "snapshot: pause (copy under all locks) {:.1} ms, encode {:.1} ms off the locks, {} MiB",
        pause.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0,
        bytes.len() >> 20
    );
    drop((capture, bytes));

    if let Some((d, options)) = durable {
        let digest = ledger.digest();
        drop(ledger);
        Arc::try_unwrap(d)
            .map_err(|_| anyhow::anyhow!("ledger still shared"))?
            .close()?;
        // Recovery: replay the whole log from scratch.
        let t = Instant::now();
        let (recovered, recovery) =
            DurableLedger::open(FileStorage::open(&args.dir)?, config, options)?;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(
            recovered.ledger().digest(),
            digest,
            "recovery reproduces the state"
        );
        println!(
            "recovery: {} log records ({} transfers) in {:.2}s = {:.0} records/s, {:.0} transfers/s",
            recovery.records_replayed,
            ok,
            secs,
            recovery.records_replayed as f64 / secs,
            ok as f64 / secs
        );
        drop(recovered);
        raw_fdatasync(&args.dir, payload_bytes, args.batch)?;
    }
    Ok(())
}

/// The ceiling: append one batch's worth of bytes and fdatasync, as fast as the disk allows.
fn raw_fdatasync(dir: &std::path::Path, bytes: usize, batch: usize) -> anyhow::Result<()> {
    let path = dir.join("raw-fdatasync.bin");
    let mut file = std::fs::File::create(&path)?;
    let buf = vec![0x5au8; bytes];
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < Duration::from_secs(3) && syncs < 100_000 {
        file.write_all(&buf)?;
        file.sync_data()?;
        syncs += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw fdatasync ceiling: {:.0} appends+fdatasync/s of {} bytes = {:.0} transfers/s at one batch of {} per fdatasync ({:.3} ms each)",
        syncs as f64 / secs,
        bytes,
        syncs as f64 / secs * batch as f64,
        batch,
        secs * 1000.0 / syncs as f64
    );
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(())
}
