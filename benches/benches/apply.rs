//! Ledger apply throughput, in memory: the three workloads × batch sizes 1, 64, 1024, 8189 ×
//! one and two threads. Each sample starts from a fresh ledger holding the 10,000 accounts
//! (set up outside the timed part) and applies 65,536 pre-generated transfers; with two
//! threads, each applies its own half to the shared ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Workload, account_batches, transfer_batches};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ledger::{Config, Ledger, Timestamp};

const TRANSFERS: u64 = 65_536;

fn fresh_ledger() -> Arc<Ledger> {
    let ledger = Ledger::new(Config {
        transfers_remembered_max: 1 << 20,
        ..Config::default()
    })
    .expect("valid config");
    for batch in account_batches(8189) {
        ledger
            .apply(&batch, Timestamp(1))
            .expect("batch within limit");
    }
    Arc::new(ledger)
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(TRANSFERS));
    for workload in Workload::ALL {
        for batch_len in [1usize, 64, 1024, 8189] {
            for threads in [1u64, 2] {
                let parts: Vec<Vec<Vec<ledger::Event>>> = (0..threads)
                    .map(|t| {
                        let first = 1 + u128::from(t) * u128::from(TRANSFERS);
                        transfer_batches(workload, TRANSFERS / threads, batch_len, first, t)
                    })
                    .collect();
                let parts = Arc::new(parts);
                let id = BenchmarkId::new(format!("{}/{}t", workload.name(), threads), batch_len);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let ledger = fresh_ledger();
                            let started = Instant::now();
                            let handles: Vec<_> = (0..parts.len())
                                .map(|t| {
                                    let ledger = ledger.clone();
                                    let parts = parts.clone();
                                    std::thread::spawn(move || {
                                        for batch in &parts[t] {
                                            ledger.apply(batch, Timestamp(2)).expect("applies");
                                        }
                                    })
                                })
                                .collect();
                            for h in handles {
                                h.join().expect("worker");
                            }
                            total += started.elapsed();
                        }
                        total
                    });
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
