//! The switch as a child process: its configuration, its starts (some killed while they
//! recover), and the connection that ends a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use switch::client::{Client, Stream};
use switch::tls::Trust;
use switch::wire::{EchoPayload, Operation, Request, RequestId, ResponseCode as Code};

use crate::Run;
use crate::common::{self, process::Process, process::Ready};
use crate::journal::CALL_TIMEOUT;
use crate::world::{ACQUIRER, ISSUER};

/// Streams of the one connection the load and the checks use.
const STREAMS: usize = 4;
/// The longest wait for a start: recovery replays the log since the last snapshot.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The switch's configuration, in `dir`. Clients act as the admin identity of the acquirer:
/// the admin sends payments only for its own participant's merchants. The log is JSON, one
/// event a line, for `report::logged`.
pub fn write_config(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [log]\nlevel = \"info\"\nformat = \"json\"\n\n\
         [authorization]\nexpiry_tick_ms = 100\n\n\
         [snapshot]\nevery_records = 300\n\n\
         [clearing]\nclose_every_seconds = 2\n\n\
         [wal]\nsegment_bytes_max = 1048576\nprepare_segments = true\n\n\
         [tls]\nanonymous_participant = {ACQUIRER}\n\n\
         [[routes]]\nprefix = \"62\"\nissuer = {ISSUER}\n",
        data = data.display().to_string(),
    );
    let path = dir.join("switch.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// Connects and waits until the switch answers an Echo: the end of a restart.
async fn connect(ready: &Ready) -> Result<(Client, Vec<Stream>), String> {
    let trust = Trust::Fingerprint(ready.fingerprint);
    let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(ready.quic, &trust, None))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let stream = tokio::time::timeout(CALL_TIMEOUT, client.stream())
            .await
            .map_err(|_| "opening a stream timed out".to_string())?
            .map_err(|e| format!("opening a stream: {e}"))?;
        streams.push(stream);
    }
    let echo = Request {
        id: RequestId(1),
        operation: Operation::Echo {
            payload: EchoPayload::new(b"up?".to_vec()).expect("short"),
        },
    };
    match tokio::time::timeout(CALL_TIMEOUT, streams[0].call(&[echo])).await {
        Ok(Ok(r)) if r.first().is_some_and(|r| r.code == Code::Approved) => Ok((client, streams)),
        other => Err(format!("echo after start: {other:?}")),
    }
}

impl Run {
    /// Starts the switch and connects: the time to its ready line and to its first answer
    /// count as a restart's.
    pub async fn spawn(&mut self) -> Result<(Process, Client, Vec<Stream>), String> {
        let started = Instant::now();
        let (config, log) = (self.config.clone(), self.log.clone());
        let (process, ready) = tokio::task::spawn_blocking(move || {
            let mut process = common::serve(&config, &log)?;
            let ready = process.ready(START_TIMEOUT)?;
            Ok::<_, String>((process, ready))
        })
        .await
        .map_err(|e| format!("{e}"))??;
        let ready_after = started.elapsed();
        let (client, streams) = connect(&ready).await?;
        self.report.ready_ms.push(ready_after.as_secs_f64() * 1e3);
        self.report
            .recovery_ms
            .push(started.elapsed().as_secs_f64() * 1e3);
        Ok((process, client, streams))
    }

    /// Starts the switch and kills it again at a random moment up to its last recovery time:
    /// mostly while it replays its log and opens a new segment.
    pub async fn kill_while_starting(&mut self) -> Result<(), String> {
        let last_ms = self
            .report
            .ready_ms
            .last()
            .copied()
            .unwrap_or(100.0)
            .max(10.0);
        let after = Duration::from_secs_f64(self.rng.gen_range(0.0..last_ms) / 1e3);
        let (config, log) = (self.config.clone(), self.log.clone());
        let early = tokio::task::spawn_blocking(move || {
            let mut process = common::serve(&config, &log)?;
            // Killed before it was ready: while it recovered.
            let early = process.ready(after).is_err();
            process.kill()?;
            Ok::<_, String>(early)
        })
        .await
        .map_err(|e| format!("{e}"))??;
        self.report.start_kills += 1;
        self.report.start_kills_before_ready += u64::from(early);
        Ok(())
    }
}
