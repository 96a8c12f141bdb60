//! The raw QUIC ceiling on this machine: what the switch's transport alone can carry.
//!
//! A quinn server with the switch's TLS (1.3, self-signed, its ALPN) and transport settings
//! echoes every frame it reads, unparsed; a client in the same process pipelines frames of
//! `--frame` requests of `--request-bytes` each (`--depth` frames in flight per stream), like
//! `switch_run --mode max`. No codec, no ledger, no log: the figure is the most the
//! network path can carry here with the client on the same cores, to set the switch's
//! end-to-end rate against. With `--rate`, frames leave on schedule instead (open loop, like
//! `switch_run --mode rate`) and the round trip of each is measured, to set the switch's
//! latency against what the transport and this machine's scheduling add on their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use switch::client::bind_address;
use switch::tls::{self, ServerIdentity, Trust};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Frames in flight per stream.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Requests per frame.
    #[arg(long, default_value_t = 64)]
    frame: usize,
    /// Bytes per request (an authorization is 64 on the wire).
    #[arg(long, default_value_t = 64)]
    request_bytes: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests per second over all streams, sent on schedule; 0 sends as fast as the
    /// window allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (identity, _) = ServerIdentity::self_signed(dir.path())?;
    let fingerprint = identity.fingerprint().context("fingerprint")?;
    let config = switch::config::Config::default();
    let crypto = tls::server_crypto(tls::ServerTls::without_client_auth(identity))?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(config.limits.streams_per_connection_max.into())
        .max_concurrent_uni_streams(0u8.into());
    server_config.transport_config(Arc::new(transport));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    tokio::spawn(serve(server.clone()));

    let crypto = tls::client_crypto(&Trust::Fingerprint(fingerprint), None)?;
    let mut client = quinn::Endpoint::client(bind_address(addr))?;
    client.set_default_client_config(tls::quinn_client_config(crypto)?);
    let connection = client.connect(addr, "localhost")?.await?;

    // A frame carries the time it was due (or sent), so its echo tells its round trip.
    let frame_len = (args.frame * args.request_bytes).max(8);
    let frames = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.frame as f64 * args.streams as f64 / args.rate as f64)
    });
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let (cpu_before, started) = (benches::cpu_seconds(), Instant::now());
    let mut lanes = Vec::new();
    let streams = args.streams;
    for lane in 0..streams {
        let (mut send, mut recv) = connection.open_bi().await?;
        // In rate mode the window only bounds a stalled stream; the schedule sets the pace.
        let window = Arc::new(Semaphore::new(if interval.is_some() {
            1 << 16
        } else {
            args.depth
        }));
        let writer_window = window.clone();
        let writer = tokio::spawn(async move {
            let mut frame = vec![0u8; 4 + frame_len];
            frame[..4].copy_from_slice(&(frame_len as u32).to_le_bytes());
            let mut due = Instant::now();
            if let Some(interval) = interval {
                due += interval.mul_f64(lane as f64 / streams as f64);
            }
            while Instant::now() < deadline {
                writer_window.acquire().await?.forget();
                if interval.is_some() {
                    tokio::time::sleep_until(due.into()).await;
                } else {
                    due = Instant::now();
                }
                let stamp = due.duration_since(started).as_nanos() as u64;
                frame[4..12].copy_from_slice(&stamp.to_le_bytes());
                send.write_all(&frame).await?;
                if let Some(interval) = interval {
                    due += interval;
                }
            }
            send.finish()?;
            anyhow::Ok(())
        });
        let (frames, latency) = (frames.clone(), latency.clone());
        let reader = tokio::spawn(async move {
            let mut frame = vec![0u8; 4 + frame_len];
            while recv.read_exact(&mut frame).await.is_ok() {
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&frame[4..12]);
                let due = started + Duration::from_nanos(u64::from_le_bytes(stamp));
                latency
                    .lock()
                    .saturating_record(due.elapsed().as_micros() as u64);
                frames.fetch_add(1, Ordering::Relaxed);
                window.add_permits(1);
            }
        });
        lanes.push((writer, reader));
    }
    for (writer, reader) in lanes {
        writer.await??;
        reader.await?;
    }
    let (elapsed, cpu) = (
        started.elapsed().as_secs_f64(),
        benches::cpu_seconds() - cpu_before,
    );
    let requests = frames.load(Ordering::Relaxed) * args.frame as u64;
    let h = latency.lock().clone();
    println!(
        "streams={} depth={} frame={} request_bytes={} rate={}",
        args.streams,
        args.depth,
        args.frame,
        args.request_bytes,
        if args.rate > 0 {
            args.rate.to_string()
        } else {
            "max".into()
        }
    );
    println!(
        "requests/s={:.0} frames/s={:.0} cpu_cores={:.2} cpu_us_per_request={:.2} \
         frame_rtt_ms p50={:.2} p99={:.2} max={:.2}",
        requests as f64 / elapsed,
        requests as f64 / elapsed / args.frame as f64,
        cpu / elapsed,
        cpu * 1e6 / requests.max(1) as f64,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    connection.close(0u32.into(), b"done");
    client.wait_idle().await;
    server.close(0u32.into(), b"done");
    Ok(())
}

/// Echoes every stream's bytes back as they come, whole frames or not.
async fn serve(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(Some(n)) = recv.read(&mut buf).await {
                        if send.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    let _ = send.finish();
                });
            }
        });
    }
}
