//! Three replicas as real `switch serve` processes on loopback: under load, the leader is
//! killed with SIGKILL, a new leader answers, the old one restarts and catches up; every
//! answer acknowledged before, during and after the failover holds at the end, and the three
//! ledgers are the same. And a leader cut off from the others answers nothing but "not
//! leader", and rejoins without divergence. Bounded in time.
//!
//! `scripts/chaos.sh --cluster N` runs N leader kills (`CLUSTER_KILLS`, default 2 here) and
//! writes what it saw to `CLUSTER_REPORT` (JSON): kills, acknowledged authorizations, lost
//! ones (always 0, or the test fails), and each failover's time from the kill to the next
//! acknowledged answer.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, START_LIMIT};
use common::{CNY, req, setup_requests};
use parking_lot::Mutex;
use switch::client::{Client, ClientError, Timeouts};
use switch::codes::Code;
use switch::tls::Trust;
use switch::wire::{self, AccountId, Amount, CardNumber, Operation, Request};

const LIMIT: Duration = Duration::from_secs(20);
/// How long a request may go unanswered before the client looks for another leader.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a connection may hear nothing at all (keep-alives every third of it) before the
/// client looks for another leader: a killed leader is left this soon, a slow answer is not.
const SILENCE: Duration = Duration::from_millis(150);

/// A client that follows the leader: a request that meets a replica that does not lead, a
/// lost connection or no answer in time goes again, unchanged, to whichever replica leads.
struct Follower {
    targets: Vec<String>,
    trust: Trust,
    client: Option<(Client, switch::client::Stream)>,
}

impl Follower {
    fn new(cluster: &Cluster) -> Follower {
        Follower {
            targets: cluster.targets(),
            trust: Trust::Fingerprint(cluster.fingerprint),
            client: None,
        }
    }

    /// The answers to `requests`, from a leader, however long a failover takes (up to
    /// `LIMIT`).
    async fn call(&mut self, requests: &[Request]) -> Vec<wire::Response> {
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "no leader answered within {LIMIT:?}"
            );
            if self.client.is_none() {
                match Client::connect_leader(
                    &self.targets,
                    &self.trust,
                    None,
                    Timeouts {
                        timeout: ANSWER_TIMEOUT,
                        silence: SILENCE,
                    },
                    LIMIT,
                )
                .await
                {
                    Ok((client, _)) => match client.stream().await {
                        Ok(stream) => self.client = Some((client, stream)),
                        Err(_) => continue,
                    },
                    Err(e) => panic!("no leader to connect to: {e}"),
                }
            }
            let (_, stream) = self.client.as_ref().expect("connected");
            match tokio::time::timeout(ANSWER_TIMEOUT, stream.call(requests)).await {
                Ok(Ok(responses)) => return responses,
                Ok(Err(e)) if e.is_retriable() => self.client = None,
                Ok(Err(ClientError::ErrorFrame { code, message })) => {
                    panic!("error frame {code:?}: {message}")
                }
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => self.client = None,
            }
        }
    }
}

fn authorize(id: u128, amount: u64) -> Request {
    req(
        id,
        Operation::Authorize {
            number: CardNumber::new("6200000000000001").expect("digits"),
            merchant: AccountId(300),
            amount: Amount(amount),
            currency: CNY,
            expiry_secs: 0,
        },
    )
}

/// Asserts that every acknowledged authorization (id to amount) reads as a hold at its amount,
/// from whichever replica leads; returns what they hold in all.
async fn held_at_their_amounts(client: &mut Follower, acked: &HashMap<u128, u64>) -> u64 {
    let ids: Vec<u128> = acked.keys().copied().collect();
    let mut held_total = 0u64;
    for (k, chunk) in ids.chunks(500).enumerate() {
        let asks: Vec<Request> = chunk
            .iter()
            .enumerate()
            .map(|(j, &of)| status(10_000_000 + (k * 500 + j) as u128, of))
            .collect();
        for (of, answer) in chunk.iter().zip(client.call(&asks).await) {
            match answer.body {
                wire::ResponseBody::TransferStatus(s)
                    if s.state == wire::TransferState::Pending =>
                {
                    assert_eq!(s.amount.0, acked[of], "authorization {of}");
                    held_total += s.amount.0;
                }
                other => panic!("authorization {of} acknowledged but reads {other:?}"),
            }
        }
    }
    held_total
}

fn status(id: u128, of: u128) -> Request {
    req(
        id,
        Operation::TransferStatus {
            lookup: wire::RequestId(of),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rides_through_leader_kills_and_loses_nothing_acknowledged() {
    // Snapshots often, so that failovers meet compacted logs and snapshot installs. Every
    // acknowledged authorization stays held to the end (about 45,000 a kill here): room for
    // the holds of `scripts/chaos.sh --cluster 100` and more. Each of the 64 transfer shards
    // keeps a 64th of `pending_max`, and a full shard answers 91.
    let mut cluster = Cluster::start(
        3,
        "[snapshot]\nevery_records = 40\n[ledger]\npending_max = 20000000\n",
    );
    let mut client = Follower::new(&cluster);
    for r in client.call(&setup_requests(1_000_000_000)).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    // Load: frames of authorizations, each answered (by whichever replica leads) before the
    // next; every approved one is remembered with its amount, and when each frame was
    // answered with how many were acknowledged by then.
    let acked: Arc<Mutex<HashMap<u128, u64>>> = Arc::default();
    let answered: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, answered, stop) = (acked.clone(), answered.clone(), stop.clone());
        let mut client = Follower::new(&cluster);
        tokio::spawn(async move {
            let mut next = 1_000u128;
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Acquire) {
                let frame: Vec<Request> = (0..16)
                    .map(|k| authorize(next + k, 1 + (next + k) as u64 % 97))
                    .collect();
                let sent = Instant::now();
                let answers = client.call(&frame).await;
                longest = longest.max(sent.elapsed());
                let mut acked = acked.lock();
                for (r, a) in frame.iter().zip(answers) {
                    assert_eq!(a.code, Code::Approved, "{a:?}");
                    if let Operation::Authorize { amount, .. } = r.operation {
                        acked.insert(r.id.0, amount.0);
                    }
                }
                answered.lock().push((Instant::now(), acked.len()));
                drop(acked);
                next += 16;
            }
            longest
        })
    };
    let kills: usize = std::env::var("CLUSTER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut failovers = Vec::new();
    let mut rejoins = Vec::new();
    let mut teardowns = Vec::new();
    for cycle in 0..kills {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let leader = cluster.leader(LIMIT);
        let before = {
            let acked = acked.lock();
            answered.lock().clear();
            acked.len()
        };
        // From the signal, not from the reaping: a large process takes a while to be torn
        // down, and the others stop hearing from it the moment it is killed.
        let killed = Instant::now();
        cluster.kill(leader);
        let reaped = killed.elapsed();
        // A new leader answers: the load goes on. Two more frames than were acknowledged at
        // the kill (one may have been the old leader's), timed by the load when it had them,
        // not when this loop looks (after the reaping, which can take longer).
        let deadline = killed + LIMIT;
        let failover = loop {
            let again = answered
                .lock()
                .iter()
                .find(|&&(_, n)| n > before + 32)
                .map(|&(at, _)| at.saturating_duration_since(killed));
            if let Some(failover) = again {
                break failover;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: no answer after the kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        failovers.push(failover);
        teardowns.push(reaped);
        eprintln!(
            "cycle {cycle}: leader {} killed (reaped after {reaped:?}); answers again after \
             {failover:?}",
            leader + 1,
        );
        let new_leader = cluster.leader(LIMIT);
        assert_ne!(new_leader, leader, "a new leader");
        // The killed replica comes back and catches up to where the cluster stood when it
        // came back before the next kill: each kill is of a leader in a cluster of three, not
        // a second failure while a member is still recovering.
        let committed = cluster.view(new_leader).map_or(0, |v| v.committed);
        cluster.restart(leader);
        rejoins.push(cluster.caught_up(leader, new_leader, committed, LIMIT));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let longest = load.await.expect("the load ran");
    eprintln!("longest frame including failovers: {longest:?}");
    cluster.converge(LIMIT);
    // Every acknowledged authorization is held, once, at its amount.
    let acked = acked.lock().clone();
    assert!(acked.len() > 100, "the load ran: {}", acked.len());
    let held_total = held_at_their_amounts(&mut client, &acked).await;
    let balance = client
        .call(&[req(
            20_000_000,
            Operation::BalanceInquiry {
                target: wire::BalanceTarget::Account(AccountId(100)),
            },
        )])
        .await;
    match &balance[0].body {
        wire::ResponseBody::BalanceInquiry(b) => assert_eq!(
            b.ledger - b.available,
            i128::from(held_total),
            "the card's holds are exactly the acknowledged authorizations"
        ),
        other => panic!("{other:?}"),
    }
    let digests = cluster.digests_at_stop();
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "the replicas' ledgers differ: {digests:?}"
    );
    report(
        kills,
        acked.len(),
        &failovers,
        &teardowns,
        &rejoins,
        &digests[0],
    );
}

/// Writes what the run saw to `CLUSTER_REPORT`, if set: each failover (from the kill to the
/// next acknowledged answer), each killed leader's teardown (from the signal to the reaping:
/// the kernel freeing its memory on the cores the others share here) and each rejoin (from
/// the restart to caught up).
fn report(
    kills: usize,
    acknowledged: usize,
    failovers: &[Duration],
    teardowns: &[Duration],
    rejoins: &[Duration],
    digest: &str,
) {
    let Ok(path) = std::env::var("CLUSTER_REPORT") else {
        return;
    };
    let summary = |times: &[Duration]| {
        let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        serde_json::json!({ "p50": at(0.5), "p99": at(0.99), "max": at(1.0), "each": ms })
    };
    let report = serde_json::json!({
        "leader_kills": kills,
        "acknowledged_authorizations": acknowledged,
        "lost": 0,
        "replicas_digest": digest,
        "failover_ms": summary(failovers),
        "teardown_ms": summary(teardowns),
        "rejoin_ms": summary(rejoins),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json"))
        .expect("write the report");
    eprintln!("report in {path}");
}

/// A client connected to one replica, whoever leads.
async fn connect_to(cluster: &Cluster, i: usize) -> (Client, switch::client::Stream) {
    let client = Client::connect_to(
        &cluster.members[i].client.to_string(),
        &Trust::Fingerprint(cluster.fingerprint),
        None,
        LIMIT,
    )
    .await
    .expect("connects");
    let stream = client.stream().await.expect("a stream");
    (client, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_answers_nothing_and_rejoins_without_divergence() {
    let (mut cluster, relay) = Cluster::start_relayed(3, "").await;
    let mut client = Follower::new(&cluster);
    for r in client.call(&setup_requests(1_000_000_000)).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    for r in client.call(&[authorize(100, 7)]).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    let old = cluster.leader(LIMIT);
    let (_direct, to_old) = connect_to(&cluster, old).await;
    relay.isolate(old as u64 + 1, 3);
    // The old leader may still believe it leads, but it cannot commit a write nor confirm a
    // read: neither is answered from it, only turned away once it learns it does not lead.
    let (w, r) = ([authorize(200, 11)], [status(201, 100)]);
    let write = tokio::time::timeout(LIMIT, to_old.call(&w));
    let read = tokio::time::timeout(LIMIT, to_old.call(&r));
    let (write, read) = tokio::join!(write, read);
    for (what, answer) in [("write", write), ("read", read)] {
        match answer.expect("answered in time") {
            Err(e) => assert!(e.not_leader().is_some(), "the cut-off leader's {what}: {e}"),
            Ok(r) => panic!("the cut-off leader answered a {what}: {r:?}"),
        }
    }
    // The majority elects a new leader and serves.
    let new = cluster.leader(LIMIT);
    assert_ne!(new, old);
    for r in client.call(&[authorize(300, 13)]).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    relay.heal();
    cluster.converge(LIMIT);
    assert_eq!(
        cluster.view(old).map(|v| v.role).as_deref(),
        Some("follower"),
        "the old leader rejoins as a follower"
    );
    // The write the old leader took may or may not have been kept (it decides at the new
    // leader): asked again, it is answered, once.
    for r in client.call(&[authorize(200, 11)]).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    cluster.converge(LIMIT);
    let digests = cluster.digests_at_stop();
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "the replicas' ledgers differ: {digests:?}"
    );
}

/// A follower's host is lost for good (killed, its data directory gone). A new member is made
/// with `switch cluster add-member`, listed in every configuration (SIGHUP), started, and put
/// in the lost one's place with `switch cluster change`; it catches up by snapshot and log.
/// Then the leader is killed too: the new member is one of the majority that carries on, and
/// nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_member_is_replaced_by_a_new_one_that_carries_the_next_failover() {
    // Snapshots often, so that the new member starts from one.
    let mut cluster = Cluster::start(3, "[snapshot]\nevery_records = 40\n");
    let mut client = Follower::new(&cluster);
    for r in client.call(&setup_requests(1_000_000_000)).await {
        assert_eq!(r.code, Code::Approved, "{r:?}");
    }
    let mut acked: HashMap<u128, u64> = HashMap::new();
    let mut next = 1_000u128;
    let mut load = async |client: &mut Follower, frames: usize, acked: &mut HashMap<u128, u64>| {
        for _ in 0..frames {
            let frame: Vec<Request> = (0..16)
                .map(|k| authorize(next + k, 1 + (next + k) as u64 % 97))
                .collect();
            for (r, a) in frame.iter().zip(client.call(&frame).await) {
                assert_eq!(a.code, Code::Approved, "{a:?}");
                if let Operation::Authorize { amount, .. } = r.operation {
                    acked.insert(r.id.0, amount.0);
                }
            }
            next += 16;
        }
    };
    load(&mut client, 30, &mut acked).await;

    let leader = cluster.leader(LIMIT);
    let lost = (0..3).find(|&i| i != leader).expect("a follower");
    let lost_id = cluster.members[lost].id;
    let new = cluster.add_member();
    let new_id = cluster.members[new].id;
    assert_eq!(
        cluster.view(new).map(|v| v.role).as_deref(),
        Some("joining"),
        "the new member waits to be added"
    );
    cluster.kill(lost);
    std::fs::remove_dir_all(&cluster.members[lost].data_dir).expect("the lost disk");
    load(&mut client, 10, &mut acked).await;

    // What the leader refuses: a member the configurations do not list, and itself.
    let (ok, out) = cluster.change(new, &["--add", "99"]);
    assert!(!ok && out.contains("not in this configuration"), "{out}");
    let leader_id = cluster.members[cluster.leader(LIMIT)].id.to_string();
    let (ok, out) = cluster.change(new, &["--remove", &leader_id]);
    assert!(!ok && out.contains("refused"), "{out}");

    let (lost_arg, new_arg) = (lost_id.to_string(), new_id.to_string());
    let (ok, out) = cluster.change(new, &["--remove", &lost_arg, "--add", &new_arg]);
    assert!(ok, "switch cluster change: {out}");
    assert!(out.contains("membership change committed"), "{out}");
    let mut voters: Vec<u64> = (0..3)
        .filter(|&i| i != lost)
        .map(|i| cluster.members[i].id)
        .chain([new_id])
        .collect();
    voters.sort_unstable();
    let view = cluster
        .view(cluster.leader(LIMIT))
        .expect("the leader's view");
    assert_eq!(view.voters, voters, "{view:?}");
    assert!(view.voters_outgoing.is_empty(), "{view:?}");
    // Asked again, the change is made already.
    let (ok, out) = cluster.change(new, &["--remove", &lost_arg, "--add", &new_arg]);
    assert!(ok, "asked again: {out}");
    cluster.converge(LIMIT);
    assert_eq!(
        cluster.view(new).map(|v| v.role).as_deref(),
        Some("follower"),
        "the new member follows"
    );

    // The next loss: the leader. The new member and the other old one carry on.
    let leader = cluster.leader(LIMIT);
    cluster.kill(leader);
    load(&mut client, 10, &mut acked).await;
    let after = cluster.leader(LIMIT);
    assert_ne!(after, leader);
    // What a reception cut short by the kill would leave: the restart removes it, as nothing
    // announces it to Raft any more.
    let snapshots = switch::server::replication::snapshot_dir(&cluster.members[leader].data_dir);
    let leftovers = ["received", "receiving"].map(|suffix| {
        snapshots.join(format!(
            "{}.{suffix}",
            ledger::snapshot_file::snapshot_file_name(u64::MAX - 1)
        ))
    });
    for path in &leftovers {
        std::fs::write(path, b"half a snapshot").expect("a leftover");
    }
    cluster.restart(leader);
    cluster.converge(LIMIT);
    for path in &leftovers {
        assert!(!path.exists(), "{} is still there", path.display());
    }

    // Every acknowledged authorization is held, at its amount, on the cluster as it is now.
    held_at_their_amounts(&mut client, &acked).await;
    // A window closed through the leader: every member, the new one included, writes the same
    // reports once the close is committed.
    let closed = client
        .call(&[req(
            30_000_000,
            Operation::CloseWindow {
                window: wire::WindowId(0),
            },
        )])
        .await;
    let window = match &closed[0].body {
        wire::ResponseBody::CloseWindow { window } if closed[0].code == Code::Approved => window.0,
        other => panic!("the close: {:?} {other:?}", closed[0].code),
    };
    cluster.converge(LIMIT);
    let live: Vec<usize> = (0..cluster.members.len()).filter(|&i| i != lost).collect();
    let reports: Vec<Vec<Vec<u8>>> = live
        .iter()
        .map(|&i| {
            let dir = cluster.members[i].data_dir.join("reports");
            let paths = switch::report::paths(&dir, window);
            let deadline = Instant::now() + LIMIT;
            while !paths.iter().all(|p| p.exists()) {
                assert!(
                    Instant::now() < deadline,
                    "member {} wrote no reports of window {window}",
                    cluster.members[i].id
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Each is written whole under another name, then renamed into place.
            paths
                .iter()
                .map(|p| std::fs::read(p).expect("a report"))
                .collect()
        })
        .collect();
    assert!(
        reports.windows(2).all(|r| r[0] == r[1]),
        "the members' reports of window {window} differ"
    );
    assert!(reports[0].iter().all(|r| !r.is_empty()));
    // The new member started from a snapshot: installed under its own name, nothing left
    // under a reception's.
    for &i in &live {
        let dir = switch::server::replication::snapshot_dir(&cluster.members[i].data_dir);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("the snapshot directory")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with(".received") || n.ends_with(".receiving")),
            "member {}: {names:?}",
            cluster.members[i].id
        );
    }
    let digests: Vec<String> = live
        .iter()
        .copied()
        .map(|i| {
            cluster.stop(i);
            let log = std::fs::read_to_string(&cluster.members[i].log).expect("read log");
            common::cluster::last_digest(&log).expect("a digest at the stop")
        })
        .collect();
    assert_eq!(digests.len(), 3);
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "the members' ledgers differ: {digests:?}"
    );
}

/// An idle replica sleeps between its Raft ticks and the leader's messages. A follower's stage
/// once also waited for the periodic work (expiry passes, window closes) that only the leader
/// does: past its first second it never slept again, and spun on whatever core it could get.
#[test]
fn idle_replicas_sleep_between_ticks() {
    let cluster = Cluster::start(3, "");
    let leader = cluster.leader(LIMIT);
    let wakeups = |i: usize| {
        cluster
            .metric(i, "switch_stage_wakeups_total")
            .expect("the replica answers its metrics")
    };
    // Past the first periodic deadlines ([authorization] expiry_tick_ms, 100 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<f64> = (0..3).map(wakeups).collect();
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let secs = since.elapsed().as_secs_f64();
    for (i, before) in before.iter().enumerate() {
        let rate = (wakeups(i) - before) / secs;
        // A tick every 20 ms and a wake-up per message: well under 500 a second. A spinning
        // stage wakes hundreds of thousands of times a second.
        assert!(
            rate < 500.0,
            "replica {i} (the leader is {leader}) woke {rate:.0} times a second while idle"
        );
    }
}

/// A replica of a cluster that lost its data, started again under its old id, refuses to start
/// (it has forgotten the votes it gave, and voting again could elect two leaders in one term),
/// and says how to come back: as a new member. The first start of every replica consumed the
/// founding file `switch cluster init` left it.
#[test]
fn a_replica_that_lost_its_data_refuses_to_rejoin_under_its_old_id() {
    let mut cluster = Cluster::start(3, "");
    let leader = cluster.leader(LIMIT);
    for m in &cluster.members {
        assert!(
            !m.data_dir.join("FOUNDING").exists(),
            "replica {} founded and kept its founding file",
            m.id
        );
    }
    let lost = (leader + 1) % 3;
    cluster.kill(lost);
    std::fs::remove_dir_all(&cluster.members[lost].data_dir).expect("the lost disk");
    cluster.launch(lost);
    let mut process = cluster.members[lost].process.take().expect("launched");
    let refused = process
        .ready(START_LIMIT)
        .expect_err("no start on a lost data directory");
    let status = process.wait(LIMIT).expect("it exits");
    assert!(!status.success(), "{refused}");
    let log = std::fs::read_to_string(&cluster.members[lost].log).expect("its log");
    assert!(
        log.contains("has lost its data") && log.contains("switch cluster add-member"),
        "{refused}\n---\n{log}"
    );
    let still = cluster.leader(LIMIT);
    assert_ne!(still, lost, "the two left still lead and serve");
}

/// Finding the leader leaves nothing open on the replicas that do not lead: each one asked
/// answers "not leader" and its connection is closed, not left for the replica to time out
/// (60 s), holding one of its `connections_max` slots, after every leader search of every
/// client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_search_leaves_no_connection_open_on_the_followers() {
    let cluster = Cluster::start(3, "");
    let leader = cluster.leader(LIMIT);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (client, _) = Client::connect_leader(
            &cluster.targets(),
            &Trust::Fingerprint(cluster.fingerprint),
            None,
            Timeouts {
                timeout: ANSWER_TIMEOUT,
                silence: Duration::from_secs(30),
            },
            LIMIT,
        )
        .await
        .expect("a leader");
        clients.push(client);
    }
    let connections = |i: usize| {
        cluster
            .metric(i, "switch_connections")
            .expect("the replica answers its metrics")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open: Vec<f64> = (0..3).map(connections).collect();
        let followers_clear = (0..3).filter(|&i| i != leader).all(|i| open[i] == 0.0);
        if followers_clear {
            assert_eq!(
                open[leader], 5.0,
                "the five clients stay with the leader: {open:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "5 s after the searches the followers still hold connections: {open:?} (leader {leader})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
