//! A real process, a real directory, a real SIGKILL: the test re-runs its own binary as a
//! child that appends under load and prints each sequence number once `on_durable` says it is
//! durable; the parent kills it at random moments and checks that every record the child
//! announced is in the log with its exact payload.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger::storage::FileStorage;
use ledger::wal::{Wal, WalError, WalOptions};
use rand::Rng;

use crate::support::{payload, recover_all};

const CHILD_DIR: &str = "LEDGER_WAL_TEST_CHILD_DIR";
const CHILD_CYCLE: &str = "LEDGER_WAL_TEST_CHILD_CYCLE";
const TEST_NAME: &str = "kill::acknowledged_records_survive_sigkill";
const CYCLES: u64 = 5;
const CHILD_THREADS: u64 = 3;
/// The child stops by itself after this long, should nobody kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(5);

fn payload_len(key: u64) -> usize {
    (key * 7919 % 600) as usize
}

#[test]
fn acknowledged_records_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let cycle = std::env::var(CHILD_CYCLE)
            .ok()
            .and_then(|c| c.parse().ok())
            .expect("the parent sets the cycle");
        child(&dir, cycle);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::thread_rng();
    // sequence -> key of every record a child announced as durable
    let mut acknowledged: BTreeMap<u64, u64> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_CYCLE, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    let mut words = line.strip_prefix("ACK ")?.split(' ');
                    let sequence = words.next()?.parse::<u64>().ok()?;
                    let key = words.next()?.parse::<u64>().ok()?;
                    Some((sequence, key))
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..800)));
        // SIGKILL: no destructors, no flush, nothing the child can do about it.
        child.kill().expect("kill");
        child.wait().expect("reap");
        let announced = reader.join().expect("reader");
        for (sequence, key) in announced {
            assert_eq!(
                acknowledged.insert(sequence, key),
                None,
                "sequence {sequence} twice"
            );
        }

        let storage = FileStorage::open(dir.path()).expect("open");
        let (_, records) = recover_all(&storage);
        let recovered: BTreeMap<u64, Vec<u8>> = records.into_iter().collect();
        for (sequence, key) in &acknowledged {
            let bytes = recovered
                .get(sequence)
                .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged record {sequence} lost"));
            assert!(
                *bytes == payload(*key, payload_len(*key)),
                "cycle {cycle}: record {sequence} has the wrong payload"
            );
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "the children never got a record acknowledged"
    );
}

/// Appends from several threads until killed (or `CHILD_LIFETIME` passes).
fn child(dir: &str, cycle: u64) {
    let storage = FileStorage::open(dir).expect("open");
    let (recovered, _) = recover_all(&storage);
    let wal = Wal::open(
        storage,
        WalOptions {
            segment_size_max_bytes: 64 << 10,
            queue_depth_max: 256,
            // Both ways of starting segments, and a change of way across a restart.
            prepare_segments: cycle.is_multiple_of(2),
            ..WalOptions::default()
        },
        recovered.resume,
    )
    .expect("open log");
    let deadline = Instant::now() + CHILD_LIFETIME;
    std::thread::scope(|s| {
        for thread in 0..CHILD_THREADS {
            let wal = &wal;
            s.spawn(move || {
                for counter in 0..1_000_000u64 {
                    if Instant::now() > deadline {
                        return;
                    }
                    let key = (cycle * CHILD_THREADS + thread) * 1_000_000 + counter;
                    let permit = match wal.reserve() {
                        Ok(permit) => permit,
                        Err(WalError::QueueFull) => {
                            std::thread::yield_now();
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    };
                    permit.submit(
                        payload(key, payload_len(key)),
                        Box::new(move |result| {
                            if let Ok(sequence) = result {
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(out, "ACK {sequence} {key}");
                                let _ = out.flush();
                            }
                        }),
                    );
                }
            });
        }
    });
}
