//! `switch cluster change`: removes a member, adds one, or both in one change (a lost member
//! replaced), asked of the leader as the admin (ChangeMembership), then followed on the
//! leader's `/cluster` until the change is done and the added member holds the log.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::admin::{self, Target};
use crate::server::replication::StatusView;
use crate::wire::{self, Operation, Reason, ResponseBody, ResponseCode};

/// What to change.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub remove: Option<u64>,
    pub add: Option<u64>,
    /// How long the change, and the added member's catching up, may take.
    pub wait: Duration,
}

/// An added member counts as caught up within this many entries of the leader.
const CAUGHT_UP_ENTRIES: u64 = 1_000;

/// Makes the change and says how the cluster stands after it.
pub fn run(target: Target, change: Change) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(make(target, change))
}

async fn make(target: Target, change: Change) -> anyhow::Result<String> {
    let Some(cluster) = target.config.cluster.clone() else {
        bail!("the configuration has no [cluster]: a single switch has no members to change");
    };
    if change.remove.is_none() && change.add.is_none() {
        bail!("say what to change: --remove ID, --add ID, or both");
    }
    if let Some(add) = change.add
        && !cluster.members.iter().any(|m| m.id == add)
    {
        bail!(
            "member {add} is not in this configuration's [[cluster.members]]: add its entry \
             (`switch cluster add-member` prints it) to every member's configuration, reload \
             them (kill -HUP), and start it"
        );
    }
    // One id for every attempt: a change asked again once made is approved as it is.
    let id = wire::RequestId(admin::request_id());
    let request = [wire::Request {
        id,
        operation: Operation::ChangeMembership {
            remove: change.remove.unwrap_or(0),
            add: change.add.unwrap_or(0),
        },
    }];
    let deadline = Instant::now() + change.wait;
    let index = loop {
        let answer = ask_leader(&target, &request).await;
        let retry = match answer {
            Ok(response) if response.code == ResponseCode::Approved => match response.body {
                ResponseBody::ChangeMembership { index } => break index,
                other => bail!("unexpected answer: {other:?}"),
            },
            Ok(response) if response.reason == Reason::MEMBERSHIP_INVALID => {
                let view = leader_view(&cluster).await.ok();
                bail!(
                    "the leader refused the change (voters now: {}); its log says why",
                    view.map_or("unknown".to_string(), |v| format!("{:?}", v.voters))
                );
            }
            Ok(response) if response.code == ResponseCode::SystemBusy => format!(
                "busy ({})",
                response.reason.name().unwrap_or("unknown reason")
            ),
            Ok(response) => bail!(
                "declined: code {:02} ({:?}), reason {}",
                response.code.as_u8(),
                response.code,
                response.reason.name().unwrap_or("unknown")
            ),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "the change was not confirmed within {} s (--wait-secs): {retry}; asking \
                 again is safe",
                change.wait.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut out = String::new();
    let _ = writeln!(out, "membership change committed at entry {index}");
    // The leader leaves the joint membership on its own; the added member catches up.
    let settled = loop {
        let view = leader_view(&cluster).await;
        if let Ok(v) = &view {
            let joint = !v.voters_outgoing.is_empty();
            let lag = change
                .add
                .map(|a| v.members.iter().find(|m| m.id == a).map(|m| m.lag));
            let caught_up = match lag {
                None => true,
                Some(Some(lag)) => lag <= CAUGHT_UP_ENTRIES,
                Some(None) => false,
            };
            if !joint && caught_up {
                break Ok(v.clone());
            }
        }
        if Instant::now() >= deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match settled {
        Ok(v) => {
            let _ = writeln!(out, "voters: {:?}", v.voters);
            if !v.voters_outgoing.is_empty() {
                let _ = writeln!(
                    out,
                    "still leaving the old membership {:?} (see switch cluster status)",
                    v.voters_outgoing
                );
            }
            if let Some(a) = change.add {
                match v.members.iter().find(|m| m.id == a) {
                    Some(m) => {
                        let _ = writeln!(
                            out,
                            "member {a} holds the log up to entry {} ({} behind the leader)",
                            m.matched, m.lag
                        );
                    }
                    None => {
                        let _ = writeln!(out, "member {a}: the leader has no word of it yet");
                    }
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "the leader's /cluster did not answer: {e:#}");
        }
    }
    if let Some(r) = change.remove {
        let _ = writeln!(
            out,
            "member {r} is out: stop it, and remove its [[cluster.members]] entry from every \
             member's configuration (then kill -HUP each)"
        );
    }
    Ok(out)
}

/// Sends the request to the leader, wherever it is now.
async fn ask_leader(target: &Target, request: &[wire::Request]) -> anyhow::Result<wire::Response> {
    let client = admin::connect(target).await?;
    let answered = async {
        let stream = client.stream().await?;
        // The leader answers once the change is committed (up to its own wait).
        let responses = tokio::time::timeout(
            target.timeout + Duration::from_secs(10),
            stream.call(request),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the leader did not answer in time"))??;
        responses
            .into_iter()
            .next()
            .context("the leader sent no answer")
    }
    .await;
    client.close().await;
    answered
}

/// The leader's own view, from its `/cluster` endpoint.
async fn leader_view(cluster: &crate::cluster::config::Cluster) -> anyhow::Result<StatusView> {
    let addresses: Vec<_> = cluster
        .members
        .iter()
        .filter_map(|m| m.http_address)
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut last = anyhow::anyhow!("no member has an http_address");
        for http in addresses {
            match super::status::fetch(http) {
                Ok(v) if v.role == "leader" => return Ok(v),
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last.context("no member says it leads"))
    })
    .await?
}
