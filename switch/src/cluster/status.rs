//! `switch cluster status`: every member's own view, read from its `/cluster` endpoint, as a
//! table. A member that does not answer is listed as unreachable.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;
use crate::server::replication::StatusView;

/// How long one member may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The table of every member of `config`'s cluster (a cluster of one without `[cluster]`).
pub fn show(config: &Config) -> anyhow::Result<String> {
    let members: Vec<(u64, Option<SocketAddr>)> = match &config.cluster {
        Some(c) => c.members.iter().map(|m| (m.id, m.http_address)).collect(),
        None => vec![(1, Some(config.metrics.listen))],
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>6}  {:<11} {:>6} {:>7} {:>12} {:>12} {:>12} {:>10}",
        "member", "role", "term", "leader", "commit", "applied", "last", "lag"
    );
    let views: Vec<(u64, Result<StatusView, String>)> = members
        .iter()
        .map(|&(id, http)| {
            let view = match http {
                Some(http) => fetch(http).map_err(|e| format!("unreachable at {http}: {e}")),
                None => Err("no http_address configured".to_string()),
            };
            (id, view)
        })
        .collect();
    // The leader knows how far each member lags, and the membership.
    let leader = views
        .iter()
        .filter_map(|(_, v)| v.as_ref().ok())
        .find(|v| v.role == "leader")
        .cloned();
    let lags: Vec<(u64, u64)> = leader
        .as_ref()
        .map(|v| v.members.iter().map(|m| (m.id, m.lag)).collect())
        .unwrap_or_default();
    for (id, view) in views {
        match view {
            Ok(v) => {
                let lag = lags
                    .iter()
                    .find(|(m, _)| *m == id)
                    .map_or("-".to_string(), |(_, lag)| lag.to_string());
                let _ = writeln!(
                    t,
                    "{:>6}  {:<11} {:>6} {:>7} {:>12} {:>12} {:>12} {:>10}",
                    id,
                    v.role,
                    v.term,
                    v.leader.map_or("-".to_string(), |l| l.to_string()),
                    v.committed,
                    v.applied,
                    v.last_index,
                    lag
                );
            }
            Err(e) => {
                let _ = writeln!(t, "{id:>6}  {e}");
            }
        }
    }
    match leader {
        Some(v) if v.voters_outgoing.is_empty() => {
            let _ = writeln!(t, "voters: {:?}", v.voters);
        }
        Some(v) => {
            let _ = writeln!(
                t,
                "voters: {:?}, leaving {:?} (a membership change is being made)",
                v.voters, v.voters_outgoing
            );
        }
        None => {
            let _ = writeln!(t, "no member says it leads");
        }
    }
    Ok(t)
}

pub(crate) fn fetch(http: SocketAddr) -> anyhow::Result<StatusView> {
    let mut stream = TcpStream::connect_timeout(&http, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /cluster HTTP/1.1\r\nhost: switch\r\nconnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| anyhow::anyhow!("no HTTP body"))?;
    Ok(serde_json::from_str(body.trim())?)
}
