//! `switch`: the payment switch binary. A thin shell over the `switch` library.
//!
//! Exit codes: 0 a clean stop (or a valid configuration); 1 `serve` could not start (the data
//! directory is locked by another switch, recovery failed, an address is taken) or stopped on
//! a failure, and a `clearing` command failed; 2 the configuration is invalid (an unknown or
//! bad key, or unusable TLS files), for `config check` and `serve` alike.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switch::config::{Config, ConfigError, DEFAULT_CONFIG, TlsMode};
use switch::server::error_line;
use switch::tls::ServerTls;

#[derive(Parser)]
#[command(
    name = "switch",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SWITCH_COMMIT"), ")"),
    about = "Payment switch and clearing core"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the protocol (the default when no command is given).
    Serve {
        /// TOML configuration; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Clearing windows of a running switch: close, list, show, and its report files.
    Clearing(ClearingArgs),
    /// A cluster of replicas: make one's files, or see how its members stand.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Write the files of a new cluster into DIR: each replica's certificate for the link
    /// between replicas, one certificate for clients on every replica, and each replica's
    /// configuration (`nodeN.toml`), with every address on this machine unless `--hosts`
    /// says where each replica runs.
    Init {
        /// Directory for the files; it must not hold them already.
        #[arg(long)]
        dir: PathBuf,
        /// Replicas (3 or 5 for a cluster that survives the loss of one or two).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// One IP address per replica, comma-separated (default: 127.0.0.1 for all, with
        /// ports one apart).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<std::net::IpAddr>,
        /// The first replica's client (QUIC) port.
        #[arg(long, default_value_t = 4431)]
        client_port: u16,
        /// The first replica's port for the other replicas.
        #[arg(long, default_value_t = 4441)]
        replica_port: u16,
        /// The first replica's metrics port.
        #[arg(long, default_value_t = 9461)]
        http_port: u16,
    },
    /// Each member's role, term, commit and applied index, and how far behind the leader it
    /// is, read from every member's `/cluster` endpoint.
    Status {
        /// A member's configuration (it lists every member).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write the files of a new member into DIR: its certificate for the link, the clients'
    /// certificate the others have, and a configuration like `--from`'s with its own
    /// addresses and `join = true`. Prints the entry every member's configuration needs.
    AddMember {
        /// A member's configuration.
        #[arg(long)]
        from: PathBuf,
        /// Directory for the new member's files (`nodeID.toml`, `nodeID/`).
        #[arg(long)]
        dir: PathBuf,
        /// Its id: one no member ever had.
        #[arg(long)]
        id: u64,
        /// Its IP address.
        #[arg(long)]
        host: std::net::IpAddr,
        #[arg(long, default_value_t = 4431)]
        client_port: u16,
        #[arg(long, default_value_t = 4441)]
        replica_port: u16,
        #[arg(long, default_value_t = 9461)]
        http_port: u16,
    },
    /// Remove a member, add one, or both in one change (a lost member replaced), through the
    /// leader, as the admin; then wait until the change is done and the added member holds
    /// the log.
    Change {
        /// A member's configuration (the added member must be among its members).
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        remove: Option<u64>,
        #[arg(long)]
        add: Option<u64>,
        /// Seconds the change and the added member's catching up may take.
        #[arg(long, default_value_t = 120.0)]
        wait_secs: f64,
        /// Seconds to wait for a connection and for each answer.
        #[arg(long, default_value_t = switch::admin::TIMEOUT_DEFAULT.as_secs_f64())]
        timeout_secs: f64,
        /// Trust the members by their clients' certificate's SHA-256 fingerprint (default: the
        /// self-signed certificate in the data directory).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Trust the members by this CA certificate (PEM).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate (PEM) of the admin identity, when the members require one.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ClearingArgs {
    /// The switch's configuration (its address, data and report directories); without it
    /// the embedded default.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The switch's QUIC address or host name with port (`localhost:4433`), if not the
    /// configuration's.
    #[arg(long, global = true)]
    target: Option<String>,
    /// Seconds to wait for the connection and for each answer.
    #[arg(long, global = true, default_value_t = switch::admin::TIMEOUT_DEFAULT.as_secs_f64())]
    timeout_secs: f64,
    /// Trust the switch by its certificate's SHA-256 fingerprint (default: the self-signed
    /// certificate in the data directory).
    #[arg(long, global = true)]
    fingerprint: Option<String>,
    /// Trust the switch by this CA certificate (PEM).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) of the admin identity, when the switch requires one.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    #[command(subcommand)]
    action: ClearingCommand,
}

#[derive(Subcommand)]
enum ClearingCommand {
    /// Close the open window (or `--window N`; closing a closed window changes nothing).
    Close {
        #[arg(long, default_value_t = 0)]
        window: u64,
    },
    /// List windows, newest first.
    List,
    /// Show a window and its net positions.
    Show { window: u64 },
    /// Print a closed window's report file (settlement CSV or JSON, or reconciliation CSV).
    Report {
        window: u64,
        #[arg(long, value_enum, default_value = "json")]
        format: switch::admin::ReportFile,
    },
}

fn load(config: Option<&PathBuf>) -> Result<Config, ExitCode> {
    let loaded = match config {
        Some(path) => Config::load(path),
        None => Config::parse(DEFAULT_CONFIG, "embedded default"),
    };
    loaded.map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the documented default configuration.
    Default,
    /// Check a configuration file and say what is wrong with it, including the certificate,
    /// key and client CA files of `tls.mode = "files"` (read and checked as `serve` does).
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Clearing(args) => clearing(args),
        Command::Cluster(command) => cluster(command),
        Command::Serve { config } => serve(config),
    }
}

/// `switch config check FILE`: 0 with its warnings, 2 with what is wrong.
fn config_check(file: &Path) -> ExitCode {
    let checked = Config::load(file).and_then(|config| {
        if config.tls.mode == TlsMode::Files {
            ServerTls::from_files(&config.tls, &file.display().to_string())?;
        }
        Ok(config)
    });
    match checked {
        Ok(config) => {
            println!("{}: ok", file.display());
            for warning in config.warnings() {
                println!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `switch clearing ...`: 2 for a configuration or an argument that cannot be used, 1 for a
/// failed call.
fn clearing(args: ClearingArgs) -> ExitCode {
    let config = match load(args.config.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let action = match args.action {
        ClearingCommand::Close { window } => switch::admin::Action::Close { window },
        ClearingCommand::List => switch::admin::Action::List,
        ClearingCommand::Show { window } => switch::admin::Action::Show { window },
        ClearingCommand::Report { window, format } => switch::admin::Action::Report {
            window,
            file: format,
        },
    };
    let Some(timeout) = std::time::Duration::try_from_secs_f64(args.timeout_secs)
        .ok()
        .filter(|t| !t.is_zero())
    else {
        eprintln!(
            "--timeout-secs must be a number of seconds above 0, not {}",
            args.timeout_secs
        );
        return ExitCode::from(2);
    };
    let target = switch::admin::Target {
        config,
        address: args.target,
        timeout,
        fingerprint: args.fingerprint,
        ca_file: args.ca,
        cert_file: args.cert,
        key_file: args.key,
    };
    match switch::admin::run(target, action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switch clearing: {}", error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `switch serve`: runs until a signal; 2 for a configuration the start found unusable, 1 for
/// anything else that stopped it.
fn cluster(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Init {
            dir,
            replicas,
            hosts,
            client_port,
            replica_port,
            http_port,
        } => {
            let hosts = if hosts.is_empty() {
                vec![std::net::IpAddr::from([127, 0, 0, 1]); replicas]
            } else {
                hosts
            };
            let plan = switch::cluster::init::Plan {
                dir,
                hosts,
                client_port,
                replica_port,
                http_port,
            };
            match switch::cluster::init::init(&plan) {
                Ok(made) => {
                    print!("{}", switch::cluster::init::instructions(&made));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switch cluster init: {}", error_line(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        ClusterCommand::AddMember {
            from,
            dir,
            id,
            host,
            client_port,
            replica_port,
            http_port,
        } => {
            let addresses = switch::cluster::init::Addresses {
                client: std::net::SocketAddr::new(host, client_port),
                replica: std::net::SocketAddr::new(host, replica_port),
                http: std::net::SocketAddr::new(host, http_port),
            };
            match switch::cluster::init::add_member(&from, &dir, id, addresses) {
                Ok(added) => {
                    print!("{}", switch::cluster::init::add_instructions(&added));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switch cluster add-member: {}", error_line(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        ClusterCommand::Change {
            config,
            remove,
            add,
            wait_secs,
            timeout_secs,
            fingerprint,
            ca,
            cert,
            key,
        } => {
            let config = match load(Some(&config)) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let seconds = |name: &str, secs: f64| {
                std::time::Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|t| !t.is_zero())
                    .ok_or_else(|| {
                        eprintln!("--{name} must be a number of seconds above 0, not {secs}");
                        ExitCode::from(2)
                    })
            };
            let (timeout, wait) = match (
                seconds("timeout-secs", timeout_secs),
                seconds("wait-secs", wait_secs),
            ) {
                (Ok(t), Ok(w)) => (t, w),
                (Err(code), _) | (_, Err(code)) => return code,
            };
            let target = switch::admin::Target {
                config,
                address: None,
                timeout,
                fingerprint,
                ca_file: ca,
                cert_file: cert,
                key_file: key,
            };
            let change = switch::cluster::change::Change { remove, add, wait };
            match switch::cluster::change::run(target, change) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switch cluster change: {}", error_line(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        ClusterCommand::Status { config } => {
            let config = match load(Some(&config)) {
                Ok(config) => config,
                Err(code) => return code,
            };
            match switch::cluster::status::show(&config) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switch cluster status: {}", error_line(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let path = config.clone();
    let config = match load(config.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    switch::server::init_logging(&config.log);
    match switch::server::run(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = error_line(e.as_ref());
            // Once, in the log if it shows errors, else plainly.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{line}");
            } else {
                eprintln!("switch: {line}");
            }
            // A configuration the start found unusable (its TLS files) exits as
            // `config check` does; anything else that stopped it, 1.
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
