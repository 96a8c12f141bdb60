//! A cluster of real `switch serve` processes on loopback for a test: its files made with
//! `switch::cluster::init`, each replica's addresses chosen free by the system, and a replica
//! found, killed, restarted or stopped by its index. Every process is killed when the cluster
//! is dropped.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use switch::server::replication::StatusView;
use switch::tls::Fingerprint;

use super::process::Process;

pub const START_LIMIT: Duration = Duration::from_secs(30);

pub struct Member {
    pub id: u64,
    pub config: PathBuf,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    pub client: SocketAddr,
    pub http: SocketAddr,
    pub process: Option<Process>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub fingerprint: Fingerprint,
}

/// A port the system says is free now, on 127.0.0.1 (UDP for QUIC, TCP for HTTP).
fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
}

/// Between replicas: each member's replica address is a relay in the test's process, which
/// forwards datagrams to the member's real address and back, and drops them on a link the
/// test has cut. A replica's datagrams come from its own replica address (its endpoint both
/// listens and connects there), so the relay knows which member sent each one.
pub struct Relay {
    /// (from, to) member ids whose datagrams are dropped.
    cut: Arc<Mutex<HashSet<(u64, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Cuts member `a` off from every other member, both ways.
    pub fn isolate(&self, a: u64, members: u64) {
        let mut cut = self.cut.lock();
        for b in 1..=members {
            if b != a {
                cut.insert((a, b));
                cut.insert((b, a));
            }
        }
    }

    pub fn heal(&self) {
        self.cut.lock().clear();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Relays datagrams sent to `front` to member `to` at `real`, each sender through a socket
/// of its own so that the answers find their way back.
async fn relay(
    front: tokio::net::UdpSocket,
    to: u64,
    real: SocketAddr,
    members: Arc<Vec<(u64, SocketAddr)>>,
    cut: Arc<Mutex<HashSet<(u64, u64)>>>,
) {
    let front = Arc::new(front);
    let mut upstreams: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let Some(&(from_id, _)) = members.iter().find(|(_, a)| *a == from) else {
            continue;
        };
        if cut.lock().contains(&(from_id, to)) {
            continue;
        }
        let upstream = match upstreams.get(&from) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let u = Arc::new(u);
                upstreams.insert(from, u.clone());
                // Answers from the member go back to the sender, unless the link is cut.
                let (u2, front2, cut2) = (u.clone(), front.clone(), cut.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = u2.recv(&mut buf).await {
                        if !cut2.lock().contains(&(to, from_id)) {
                            let _ = front2.send_to(&buf[..n], from).await;
                        }
                    }
                });
                u
            }
        };
        let _ = upstream.send_to(&buf[..n], real).await;
    }
}

impl Cluster {
    /// Writes the files of `n` replicas and starts them all. `extra` is appended to each
    /// configuration (sections `switch cluster init` does not write).
    pub fn start(n: usize, extra: &str) -> Cluster {
        Self::start_with(n, extra, false).0
    }

    /// `start`, with the replicas' messages to one another through a `Relay` the test can cut.
    pub async fn start_relayed(n: usize, extra: &str) -> (Cluster, Relay) {
        let (cluster, fronts) = Self::start_with(n, extra, true);
        let cut: Arc<Mutex<HashSet<(u64, u64)>>> = Arc::default();
        let reals: Vec<(u64, SocketAddr)> =
            fronts.iter().map(|(id, _, real)| (*id, *real)).collect();
        let members = Arc::new(reals.clone());
        let mut tasks = Vec::new();
        for (id, front, real) in fronts {
            let front = tokio::net::UdpSocket::from_std(front).expect("relay socket");
            tasks.push(tokio::spawn(relay(
                front,
                id,
                real,
                members.clone(),
                cut.clone(),
            )));
        }
        (cluster, Relay { cut, tasks })
    }

    fn start_with(
        n: usize,
        extra: &str,
        relayed: bool,
    ) -> (Cluster, Vec<(u64, std::net::UdpSocket, SocketAddr)>) {
        let dir = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("CLUSTER_TEST_KEEP").is_some() {
            eprintln!("cluster files in {} (kept)", dir.path().display());
        }
        let addresses: Vec<switch::cluster::init::Addresses> = (0..n)
            .map(|_| switch::cluster::init::Addresses {
                client: free_udp(),
                replica: free_udp(),
                http: free_tcp(),
            })
            .collect();
        let made = switch::cluster::init::init_at(dir.path(), &addresses).expect("cluster files");
        // Relayed: every member's replica address as the others know it is a relay's.
        let mut fronts = Vec::new();
        if relayed {
            for (i, a) in addresses.iter().enumerate() {
                let front = std::net::UdpSocket::bind("127.0.0.1:0").expect("relay socket");
                front.set_nonblocking(true).expect("nonblocking");
                fronts.push((i as u64 + 1, front, a.replica));
            }
        }
        let mut members = Vec::new();
        for (i, (config, a)) in made.configs.iter().zip(&addresses).enumerate() {
            // The test clients act as the admin identity of participant 3, the acquirer of
            // `setup_requests`.
            let mut text = std::fs::read_to_string(config).expect("read config");
            text = text.replace("anonymous_participant = 1", "anonymous_participant = 3");
            for (_, front, real) in &fronts {
                let front = front.local_addr().expect("relay address");
                text = text.replace(
                    &format!("replica_address = \"{real}\""),
                    &format!("replica_address = \"{front}\""),
                );
            }
            std::fs::write(config, format!("{text}\n{extra}")).expect("write config");
            members.push(Member {
                id: i as u64 + 1,
                config: config.clone(),
                log: dir.path().join(format!("node{}.log", i + 1)),
                data_dir: dir.path().join(format!("node{}", i + 1)).join("data"),
                client: a.client,
                http: a.http,
                process: None,
            });
        }
        let mut cluster = Cluster {
            dir,
            members,
            fingerprint: made.client_fingerprint,
        };
        for i in 0..n {
            cluster.launch(i);
        }
        for i in 0..n {
            cluster.ready(i);
        }
        (cluster, fronts)
    }

    /// Starts replica `i` (not waiting for it).
    pub fn launch(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.process = Some(super::serve(&m.config, &m.log).expect("switch serve starts"));
    }

    /// Waits for replica `i`'s ready line.
    pub fn ready(&mut self, i: usize) {
        let m = &mut self.members[i];
        let process = m.process.as_mut().expect("started");
        process
            .ready(START_LIMIT)
            .unwrap_or_else(|e| panic!("replica {} did not start: {e}", m.id));
    }

    pub fn restart(&mut self, i: usize) {
        self.launch(i);
        self.ready(i);
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill().expect("killed");
        }
    }

    /// SIGTERM, and the exit awaited.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.signal("TERM").expect("signalled");
            let status = p.wait(Duration::from_secs(30)).expect("stopped in time");
            assert!(status.success(), "replica {} stopped with {status}", i + 1);
        }
    }

    pub fn targets(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// Replica `i`'s own view, if it answers.
    pub fn view(&self, i: usize) -> Option<StatusView> {
        self.members[i].process.as_ref()?;
        let body = http_get(self.members[i].http, "/cluster")?;
        serde_json::from_str(body.trim()).ok()
    }

    /// The value of metric `name` (a family without labels) on replica `i`, if it answers.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        self.members[i].process.as_ref()?;
        let body = http_get(self.members[i].http, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The index of the replica that leads, once one does and commits in its term.
    pub fn leader(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            for i in 0..self.members.len() {
                if self
                    .view(i)
                    .is_some_and(|v| v.role == "leader" && v.committed > 0)
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until replica `i` follows leader `leader` and has applied at least `index`;
    /// returns how long that took.
    pub fn caught_up(&self, i: usize, leader: usize, index: u64, limit: Duration) -> Duration {
        let start = Instant::now();
        let leader_id = self.members[leader].id;
        loop {
            if self
                .view(i)
                .is_some_and(|v| v.leader == Some(leader_id) && v.applied >= index)
            {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "replica {} did not catch up to {index} within {limit:?}",
                self.members[i].id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running replica follows the leader, in its term, and has applied
    /// everything the leader holds (an index alone could be a deposed leader's own entries).
    pub fn converge(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let views: Vec<Option<StatusView>> =
                (0..self.members.len()).map(|i| self.view(i)).collect();
            let leader = views.iter().flatten().find(|v| v.role == "leader");
            if let Some(l) = leader
                && l.committed == l.last_index
                && views.iter().enumerate().all(|(i, v)| {
                    self.members[i].process.is_none()
                        || v.as_ref().is_some_and(|v| {
                            v.applied == l.last_index && v.term == l.term && v.leader == Some(l.id)
                        })
                })
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge within {limit:?}: {views:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The digest of each replica's ledger, as it logs it when it stops.
    pub fn digests_at_stop(&mut self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| {
                self.stop(i);
                let log = std::fs::read_to_string(&self.members[i].log).expect("read log");
                last_digest(&log)
                    .unwrap_or_else(|| panic!("replica {} logged no digest at its stop", i + 1))
            })
            .collect()
    }
}

impl Cluster {
    /// A new member: its files made with `switch cluster add-member` from member 1's
    /// configuration, its entry appended to every running member's configuration, each
    /// reloaded (SIGHUP), and the new member started (it waits to be added). Returns its
    /// index.
    pub fn add_member(&mut self) -> usize {
        let id = self.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let (client, replica, http) = (free_udp(), free_udp(), free_tcp());
        let (ok, out) = switch_cli(&[
            "cluster",
            "add-member",
            "--from",
            &self.members[0].config.display().to_string(),
            "--dir",
            &self.dir.path().display().to_string(),
            "--id",
            &id.to_string(),
            "--host",
            "127.0.0.1",
            "--client-port",
            &client.port().to_string(),
            "--replica-port",
            &replica.port().to_string(),
            "--http-port",
            &http.port().to_string(),
        ]);
        assert!(ok, "switch cluster add-member: {out}");
        let config = self.dir.path().join(format!("node{id}.toml"));
        let text = std::fs::read_to_string(&config).expect("the new member's configuration");
        assert!(text.contains("join = true"), "{text}");
        // Its entry, as add-member printed it.
        let entry: String = out
            .lines()
            .skip_while(|l| !l.starts_with("[[cluster.members]]"))
            .take_while(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(entry.contains(&format!("id = {id}")), "{out}");
        for m in &self.members {
            let mut text = std::fs::read_to_string(&m.config).expect("read config");
            text.push_str(&format!("\n{entry}"));
            std::fs::write(&m.config, text).expect("write config");
            if let Some(p) = &m.process {
                let before = reloads(&m.log);
                p.signal("HUP").expect("SIGHUP");
                let deadline = Instant::now() + START_LIMIT;
                while reloads(&m.log) == before {
                    assert!(Instant::now() < deadline, "member {} did not reload", m.id);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.members.push(Member {
            id,
            config,
            log: self.dir.path().join(format!("node{id}.log")),
            data_dir: self.dir.path().join(format!("node{id}")).join("data"),
            client,
            http,
            process: None,
        });
        let i = self.members.len() - 1;
        self.restart(i);
        i
    }

    /// `switch cluster change` with `args`, through member `via`'s configuration.
    pub fn change(&self, via: usize, args: &[&str]) -> (bool, String) {
        let config = self.members[via].config.display().to_string();
        let mut all = vec![
            "cluster",
            "change",
            "--config",
            &config,
            "--wait-secs",
            "30",
        ];
        all.extend_from_slice(args);
        switch_cli(&all)
    }
}

/// How many times a member's log says it reloaded its members.
fn reloads(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("the cluster's members reloaded")
        .count()
}

/// Runs the `switch` binary with `args`: whether it succeeded, and what it printed.
pub fn switch_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("switch runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The digest of the last "ledger stage stopped" line of a log.
pub fn last_digest(log: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.contains("ledger stage stopped"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("digest="))
        .map(str::to_owned)
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// Where a replica keeps its data (for a test that wipes it).
pub fn data_dir(member: &Member) -> &Path {
    &member.data_dir
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("CLUSTER_TEST_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let _ = kept.keep();
        }
    }
}
