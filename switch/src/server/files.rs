//! What the switch answers from files rather than from the ledger stage: a reload of the
//! routing table from the configuration file (ReloadRoutes, SIGHUP), and pieces of closed
//! windows' report files (ReportFile). A connection calls these in its frame's order
//! (PROTOCOL.md, section 7), after the frame's operations before them; the disk work runs off
//! the network threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::error_line;
use crate::codes::{Code, Reason};
use crate::config::Config;
use crate::routing::RouteTable;

pub struct Files {
    /// The configuration file the switch was started from, if any.
    config_path: Option<PathBuf>,
    /// The configuration the switch runs with: a reload takes only the routes of the file.
    started: Arc<Config>,
    routes: Arc<RwLock<Arc<RouteTable>>>,
    report_dir: PathBuf,
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
        }
    }

    /// Re-reads the routing table from the configuration file and swaps it in; how many routes
    /// it has, or why it was not (logged). Blocks on the disk.
    pub fn reload_routes(&self) -> Result<usize, String> {
        match read_routes(self.config_path.as_deref(), &self.started) {
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

/// The routing table for a reload: from the configuration file at `path`, or, for a switch
/// started without one, from the configuration it was started with (`started`), so that a
/// reload never wipes routes it cannot read again. Only the routes are taken from the file:
/// if other sections differ from `started`, a warning names them (they apply at a restart).
/// The error is one line (`error_line`).
fn read_routes(path: Option<&Path>, started: &Config) -> anyhow::Result<RouteTable> {
    let table = match path {
        Some(path) => Config::load(path).and_then(|config| {
            let changed = config.sections_differing_from(started);
            if !changed.is_empty() {
                tracing::warn!(
                    file = %path.display(),
                    "a reload applies [[routes]] only; the file's {} differ from what the \
                     switch runs with and apply at the next restart",
                    changed.join(", ")
                );
            }
            config.route_table("configuration")
        }),
        None => started.route_table("configuration"),
    };
    table.map_err(|e| anyhow::anyhow!(error_line(&e)))
}
