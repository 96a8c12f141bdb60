//! `switch clearing …`: an admin client for a running switch's clearing windows.
//!
//! Everything goes through the protocol as the admin identity: CloseWindow, ListWindows,
//! WindowReport, and ReportFile, which downloads a report file in chunks.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ledger::{Currency, Timestamp};

use crate::client::Client;
use crate::config::{Config, TlsMode, parse_fingerprint};
use crate::report;
use crate::tls::{Fingerprint, ServerIdentity, Trust};
use crate::wire::{self, Operation, ResponseBody, ResponseCode, WindowId, WindowState};

/// How to reach and trust the switch, and who to be.
pub struct Target {
    pub config: Config,
    /// An address or a host name with a port; without it, the configuration's.
    pub address: Option<String>,
    /// How long to wait for the connection and for each answer.
    pub timeout: Duration,
    pub fingerprint: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

pub enum Action {
    Close { window: u64 },
    List,
    Show { window: u64 },
    Report { window: u64, file: ReportFile },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFile {
    Csv,
    Json,
    Reconciliation,
}

/// `Target::timeout` unless given.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Runs one clearing command, printing its result; the error says what went wrong.
pub fn run(target: Target, action: Action) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(call(target, action))
}

pub(crate) fn request_id() -> u128 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Never in the range the switch keeps for itself (top 32 bits 0xffff_fff0).
    (nanos & ((1u128 << 96) - 1)) | (u128::from(std::process::id()) << 96)
}

async fn call(target: Target, action: Action) -> anyhow::Result<()> {
    let client = connect(&target).await?;
    let stream = client.stream().await?;
    let stream = Asking {
        stream: &stream,
        timeout: target.timeout,
    };
    if let Action::Report { window, file } = action {
        let bytes = download(&stream, window, file as u8 + 1).await;
        client.close().await;
        let bytes = bytes?;
        use std::io::Write as _;
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    let operation = match action {
        Action::Close { window } => Operation::CloseWindow {
            window: WindowId(window),
        },
        Action::List => Operation::ListWindows,
        Action::Show { window } => Operation::WindowReport {
            window: WindowId(window),
        },
        Action::Report { .. } => unreachable!("downloaded above"),
    };
    let body = ask(&stream, operation).await;
    client.close().await;
    match body? {
        ResponseBody::CloseWindow { window } => println!("window {} closed", window.0),
        ResponseBody::ListWindows(windows) => print_windows(&windows),
        ResponseBody::WindowReport(report) => print_report(&report),
        other => bail!("unexpected answer: {other:?}"),
    }
    Ok(())
}

/// Connects to the switch at the target's address (or the configuration's; for a cluster,
/// to its leader, whichever member that is), trusting it as the target says, as the target's
/// identity.
pub(crate) async fn connect(target: &Target) -> anyhow::Result<Client> {
    let config = &target.config;
    if let (None, Some(cluster)) = (&target.address, &config.cluster) {
        let targets: Vec<String> = cluster
            .members
            .iter()
            .map(|m| m.client_address.to_string())
            .collect();
        let trust = trust(target)?;
        let identity = identity(target)?;
        let (client, _) = Client::connect_leader(
            &targets,
            &trust,
            identity.as_ref(),
            target.timeout,
            target.timeout,
        )
        .await
        .with_context(|| {
            format!(
                "finding the cluster's leader among {} (--timeout-secs {})",
                targets.join(", "),
                target.timeout.as_secs_f64()
            )
        })?;
        return Ok(client);
    }
    let address = target.address.clone().unwrap_or_else(|| {
        let mut a = config.server.listen;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a.to_string()
    });
    let trust = trust(target)?;
    let identity = identity(target)?;
    let timeout = target.timeout;
    Client::connect_to(&address, &trust, identity, timeout)
        .await
        .with_context(|| {
            format!(
                "connecting to {address} (--timeout-secs {})",
                timeout.as_secs_f64()
            )
        })
}

/// Who to be: `--cert` and `--key`, or no certificate.
fn identity(target: &Target) -> anyhow::Result<Option<ServerIdentity>> {
    Ok(match (&target.cert_file, &target.key_file) {
        (Some(cert), Some(key)) => Some(ServerIdentity::from_pem_files(cert, key)?),
        (None, None) => None,
        _ => bail!("--cert and --key go together"),
    })
}

/// How to trust the switch: `--fingerprint`, `--ca`, or the certificate a self-signed switch
/// keeps in its data directory.
fn trust(target: &Target) -> anyhow::Result<Trust> {
    let config = &target.config;
    if let Some(text) = &target.fingerprint {
        let fingerprint =
            parse_fingerprint(text).context("--fingerprint is not 32 bytes of hex")?;
        return Ok(Trust::Fingerprint(Fingerprint(fingerprint)));
    }
    if let Some(ca) = &target.ca_file {
        return Ok(Trust::Roots(crate::tls::read_certs(ca)?));
    }
    if config.tls.mode != TlsMode::SelfSigned {
        bail!("give --ca (or --fingerprint) to trust the switch");
    }
    let cert = config.server.data_dir.join("tls").join("server-cert.der");
    let der = std::fs::read(&cert).with_context(|| {
        format!(
            "reading {} (give --fingerprint or --ca for a switch elsewhere)",
            cert.display()
        )
    })?;
    Ok(Trust::Fingerprint(Fingerprint::of(&der.into())))
}

/// `switch clearing list`: one line a window, newest first.
fn print_windows(windows: &[wire::WindowRecord]) {
    println!(
        "{:>8}  {:<6}  {:<30}  {:<30}  {:>12}",
        "window", "state", "opened", "closed", "transfers"
    );
    for w in windows {
        let open = w.state == WindowState::Open;
        println!(
            "{:>8}  {:<6}  {:<30}  {:<30}  {:>12}",
            w.window.0,
            if open { "open" } else { "closed" },
            opened(w, "not yet"),
            if open {
                String::from("-")
            } else {
                report::rfc3339(Timestamp(w.closed_at.0))
            },
            w.transfer_count
        );
    }
}

/// `switch clearing show`: the window, then each participant's net position.
fn print_report(r: &wire::WindowReport) {
    let w = &r.window;
    println!(
        "window {} ({}), {}, {} transfers",
        w.window.0,
        if w.state == WindowState::Open {
            "open"
        } else {
            "closed"
        },
        if w.opened_at.0 == 0 {
            "not opened yet (it opens with the first request the switch executes)".to_string()
        } else {
            format!("opened {}", opened(w, ""))
        },
        w.transfer_count
    );
    if w.state == WindowState::Open && !r.positions.is_empty() {
        println!("positions so far: what a close now would settle");
    }
    if w.state == WindowState::Closed {
        println!("closed {}", report::rfc3339(Timestamp(w.closed_at.0)));
    }
    println!("{:>12}  {:<8}  {:>24}", "participant", "currency", "net");
    for p in &r.positions {
        match Currency::from_numeric(p.currency.0) {
            Some(c) => println!(
                "{:>12}  {:<8}  {:>24}",
                p.participant.0,
                c.code(),
                report::signed(p.net, c)
            ),
            None => println!(
                "{:>12}  {:<8}  {:>24}",
                p.participant.0, p.currency.0, p.net
            ),
        }
    }
}

/// When a window opened; `not_yet` for the first window before any request opened it (its
/// `opened_at` is then 0, not a time).
fn opened(w: &wire::WindowRecord, not_yet: &str) -> String {
    if w.opened_at.0 == 0 {
        not_yet.to_string()
    } else {
        report::rfc3339(Timestamp(w.opened_at.0))
    }
}

/// Largest report file downloaded.
const REPORT_BYTES_MAX: u64 = 1 << 30;

/// Downloads a whole report file, chunk by chunk.
async fn download(stream: &Asking<'_>, window: u64, file: u8) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let body = ask(
            stream,
            Operation::ReportFile {
                window: WindowId(window),
                file,
                offset: out.len() as u64,
            },
        )
        .await?;
        let ResponseBody::ReportFile { total_len, chunk } = body else {
            bail!("unexpected answer: {body:?}");
        };
        if total_len > REPORT_BYTES_MAX {
            bail!("the report is {total_len} bytes, over {REPORT_BYTES_MAX}");
        }
        out.extend_from_slice(chunk.as_bytes());
        if out.len() as u64 >= total_len {
            return Ok(out);
        }
        if chunk.as_bytes().is_empty() {
            bail!(
                "the switch sent an empty chunk at {} of {total_len} bytes",
                out.len()
            );
        }
    }
}

/// A stream, and how long to wait for each answer on it.
struct Asking<'a> {
    stream: &'a crate::client::Stream,
    timeout: Duration,
}

/// Sends one operation and returns its result, or says why it was declined.
async fn ask(stream: &Asking<'_>, operation: Operation) -> anyhow::Result<ResponseBody> {
    let request = [wire::Request {
        id: wire::RequestId(request_id()),
        operation,
    }];
    let responses = tokio::time::timeout(stream.timeout, stream.stream.call(&request))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the switch did not answer within {} s (--timeout-secs)",
                stream.timeout.as_secs_f64()
            )
        })??;
    let response = responses
        .into_iter()
        .next()
        .context("the switch sent no answer")?;
    if response.code != ResponseCode::Approved {
        bail!(
            "declined: code {:02} ({:?}), reason {}",
            response.code.as_u8(),
            response.code,
            response.reason.name().unwrap_or("unknown")
        );
    }
    Ok(response.body)
}
