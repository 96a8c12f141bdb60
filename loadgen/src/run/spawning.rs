//! The in-process switch of `--spawn`, and how to reach a switch (spawned or remote).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use switch::config::{Config, Durability, RouteConfig, TlsMode};
use switch::tls::{ServerIdentity, Trust};

use crate::config::{Options, Target, TrustSource};

/// A switch started in this process on a temporary data directory.
pub struct Spawned {
    runtime: tokio::runtime::Runtime,
    running: Option<switch::server::Running>,
    pub addr: SocketAddr,
    pub fingerprint: [u8; 32],
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts the switch on its own runtime (its threads are named `switch-io`, loadgen's
    /// `loadgen`, so each side's CPU time can be told apart). Call outside any async context.
    pub fn start(options: &Options) -> anyhow::Result<Spawned> {
        let (config_path, no_fsync) = match &options.target {
            Target::Spawn { config, no_fsync } => (config.clone(), *no_fsync),
            Target::Remote { .. } => bail!("not a spawn target"),
        };
        let mut config = match &config_path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let dir = tempfile::Builder::new()
            .prefix("loadgen-switch-")
            .tempdir()
            .context("creating a temporary data directory")?;
        config.server.listen = "127.0.0.1:0".parse().context("literal")?;
        config.metrics.listen = "127.0.0.1:0".parse().context("literal")?;
        config.server.data_dir = dir.path().to_path_buf();
        config.tls.mode = TlsMode::SelfSigned;
        // Loadgen acts as the admin identity of the acquirer: the admin sends payments only for
        // its own participant's merchants.
        config.tls.anonymous_participant = Some(options.acquirer);
        config.tls.anonymous_is_admin = true;
        let in_flight = options.connections_in_flight_max();
        config.limits.in_flight_per_connection_max =
            config.limits.in_flight_per_connection_max.max(in_flight);
        if no_fsync {
            config.wal.durability = Durability::None;
        }
        config.routes.push(RouteConfig {
            prefix: options.card_prefix.clone(),
            issuer: options.issuer,
            pooled_account: None,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.server.io_threads())
            .enable_all()
            .thread_name("switch-io")
            .build()
            .context("starting the switch's runtime")?;
        let running = runtime.block_on(switch::server::start(config, None))?;
        let fingerprint = running
            .fingerprint
            .context("the spawned switch has no certificate fingerprint")?;
        Ok(Spawned {
            addr: running.quic_addr,
            fingerprint: fingerprint.0,
            running: Some(running),
            runtime,
            _dir: dir,
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            targets: vec![self.addr.to_string()],
            trust: Trust::Fingerprint(switch::tls::Fingerprint(self.fingerprint)),
            client: None,
        }
    }

    /// Shuts the switch down cleanly. Call outside any async context.
    pub fn stop(mut self) -> anyhow::Result<()> {
        match self.running.take() {
            Some(running) => self.runtime.block_on(running.shutdown()),
            None => Ok(()),
        }
    }
}

/// How to reach a switch.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Each an address, or a host name and port: one switch, or a cluster's replicas.
    pub targets: Vec<String>,
    pub trust: Trust,
    /// Client certificate and key (PEM files).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Endpoint {
    pub fn remote(options: &Options) -> anyhow::Result<Endpoint> {
        let Target::Remote {
            addrs,
            trust,
            client,
        } = &options.target
        else {
            bail!("not a remote target");
        };
        let trust = match trust {
            TrustSource::Fingerprint(f) => Trust::Fingerprint(switch::tls::Fingerprint(*f)),
            TrustSource::CaFile(path) => Trust::Roots(switch::tls::read_certs(path)?),
        };
        Ok(Endpoint {
            targets: addrs.clone(),
            trust,
            client: client.clone(),
        })
    }

    pub(super) fn identity(&self) -> anyhow::Result<Option<ServerIdentity>> {
        self.client
            .as_ref()
            .map(|(cert, key)| ServerIdentity::from_pem_files(cert, key))
            .transpose()
            .context("client certificate")
    }
}
