//! What the switch answers from files rather than from the ledger stage: a reload of the
//! routing table and of the cluster's member list from the configuration file (ReloadRoutes,
//! SIGHUP), and pieces of closed
//! windows' report files (ReportFile). A connection calls these in its frame's order
//! (PROTOCOL.md, section 7), after the frame's operations before them; the disk work runs off
//! the network threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::error_line;
use crate::cluster::transport::Link;
use crate::codes::{Code, Reason};
use crate::config::Config;
use crate::routing::RouteTable;
use crate::server::replication::ReplicaState;

pub struct Files {
    /// The configuration file the switch was started from, if any.
    config_path: Option<PathBuf>,
    /// The configuration the switch runs with: a reload takes only the routes of the file.
    started: Arc<Config>,
    routes: Arc<RwLock<Arc<RouteTable>>>,
    report_dir: PathBuf,
    /// The link to the other replicas and what the connections read of the replica: a
    /// reload gives them the members the file lists.
    cluster: std::sync::OnceLock<(Link, Arc<ReplicaState>)>,
}

/// A piece of a report file.
#[derive(Debug, PartialEq, Eq)]
pub struct ReportPiece {
    /// The whole file's length.
    pub total_len: u64,
    pub bytes: Vec<u8>,
}

impl Files {
    pub fn new(
        started: Arc<Config>,
        config_path: Option<PathBuf>,
        routes: Arc<RwLock<Arc<RouteTable>>>,
        report_dir: PathBuf,
    ) -> Self {
        Files {
            config_path,
            started,
            routes,
            report_dir,
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// A reload also gives `link` and `replica` the members the file lists.
    pub fn attach_cluster(&self, link: Link, replica: Arc<ReplicaState>) {
        let _ = self.cluster.set((link, replica));
    }

    /// Re-reads the routing table from the configuration file and swaps it in; how many routes
    /// it has, or why it was not (logged). The cluster's member list is taken from the file
    /// too (`reload_members`), whatever becomes of the routes. Blocks on the disk.
    pub fn reload_routes(&self) -> Result<usize, String> {
        let file = self
            .config_path
            .as_deref()
            .map(|path| Config::load(path).map(|config| (path, config)));
        if let Some(Ok((path, config))) = &file {
            warn_of_other_changes(path, config, &self.started);
            self.reload_members(config);
        }
        let table = match file {
            Some(loaded) => loaded.and_then(|(_, config)| config.route_table("configuration")),
            None => self.started.route_table("configuration"),
        }
        .map_err(|e| anyhow::anyhow!(error_line(&e)));
        match table {
            Ok(table) => {
                let n = table.len();
                *self.routes.write() = Arc::new(table);
                tracing::info!(routes = n, "routing table reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!("routing table not reloaded: {e:#}");
                Err(format!("{e:#}"))
            }
        }
    }

    /// Takes the members `config` lists: the link talks to exactly them (a new member is
    /// reached, one gone is let go) and accepts their certificates, and a follower names the
    /// leader by its client address there. A list that leaves out a voter is refused (the
    /// voter is removed from the membership first, `switch cluster change --remove`).
    fn reload_members(&self, config: &Config) {
        let (Some((link, replica)), Some(cluster), Some(started)) = (
            self.cluster.get(),
            config.cluster.as_ref(),
            self.started.cluster.as_ref(),
        ) else {
            return;
        };
        if cluster.id != started.id {
            return;
        }
        let listed: Vec<u64> = cluster.members.iter().map(|m| m.id).collect();
        let (voters, outgoing) = replica.voters();
        if let Some(missing) = voters.iter().chain(&outgoing).find(|v| !listed.contains(v)) {
            tracing::error!(
                member = missing,
                "the cluster's members not reloaded: the file leaves out member {missing},                  a voter (remove it from the membership first: switch cluster change --remove                  {missing})"
            );
            return;
        }
        let sorted = |mut peers: Vec<crate::cluster::transport::Peer>| {
            peers.retain(|p| p.id != cluster.id);
            peers.sort_by_key(|p| p.id);
            peers
        };
        if replica.members() == cluster.addresses()
            && sorted(link.peers()) == sorted(cluster.peers())
        {
            return;
        }
        link.set_peers(cluster.peers());
        replica.set_members(cluster.addresses());
        tracing::info!(members = ?listed, "the cluster's members reloaded");
    }

    /// `reload_routes` on a thread that may block.
    pub async fn reload_routes_blocking(self: &Arc<Self>) -> Result<usize, String> {
        let files = self.clone();
        tokio::task::spawn_blocking(move || files.reload_routes())
            .await
            .unwrap_or_else(|e| Err(format!("the reload stopped: {e}")))
    }

    /// At most `len_max` bytes of report `file` (numbered from 1, as `report::paths` lists
    /// them) of `window`, from `offset`; or the code and reason of why not.
    pub async fn report_piece(
        &self,
        window: u64,
        file: u8,
        offset: u64,
        len_max: usize,
    ) -> Result<ReportPiece, (Code, Reason)> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let paths = crate::report::paths(&self.report_dir, window);
        let Some(path) = usize::from(file).checked_sub(1).and_then(|i| paths.get(i)) else {
            return Err((Code::InvalidTransaction, Reason::NONE));
        };
        let Ok(mut f) = tokio::fs::File::open(path).await else {
            return Err((Code::InvalidTransaction, Reason::WINDOW_NOT_FOUND));
        };
        let storage_failure = (Code::SystemMalfunction, Reason::STORAGE_FAILURE);
        let total_len = f.metadata().await.map_err(|_| storage_failure)?.len();
        if offset > total_len {
            return Err((Code::InvalidAmount, Reason::NONE));
        }
        let left = usize::try_from(total_len - offset).unwrap_or(usize::MAX);
        let mut bytes = vec![0u8; len_max.min(left)];
        if bytes.is_empty() {
            return Ok(ReportPiece { total_len, bytes });
        }
        let read = async {
            f.seek(std::io::SeekFrom::Start(offset)).await?;
            f.read_exact(&mut bytes).await
        };
        read.await.map_err(|_| storage_failure)?;
        Ok(ReportPiece { total_len, bytes })
    }
}

/// A reload takes only the routes and the cluster's member list from the file (a switch
/// started without a file reloads the routes it started with, so that a reload never wipes
/// routes it cannot read again): if other sections differ from `started`, a warning names
/// them (they apply at a restart).
fn warn_of_other_changes(path: &Path, config: &Config, started: &Config) {
    let mut compared = config.clone();
    if let (Some(c), Some(s)) = (compared.cluster.as_mut(), started.cluster.as_ref()) {
        c.members.clone_from(&s.members);
    }
    let changed = compared.sections_differing_from(started);
    if !changed.is_empty() {
        tracing::warn!(
            file = %path.display(),
            "a reload applies [[routes]] and [[cluster.members]] only; the file's {} differ \
             from what the switch runs with and apply at the next restart",
            changed.join(", ")
        );
    }
}
