//! A session: the connections and their lanes (one per stream), the calls outside the
//! schedule, and a lost connection, which stops the run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use switch::client::{Client, ClientError, Stream};
use switch::wire::{AccountId, CardNumber, ErrorCode, Request, RequestId, Response};

use super::shared::Shared;
use super::spawning::Endpoint;
use crate::config::Options;
use crate::cpu;
use crate::model::Model;
use crate::stats::Stats;

/// A connected run: setup, profile, verification, each callable on its own (tests tamper in
/// between).
pub struct Session {
    pub(super) options: Arc<Options>,
    pub(super) clients: Vec<Client>,
    pub(super) lanes: Vec<Stream>,
    pub(super) shared: Arc<Shared>,
    pub(super) setup_done: bool,
    pub(super) cpu_at_start: Option<cpu::Split>,
}

/// Why a frame brought no answers.
#[derive(Debug)]
pub(super) enum Failure {
    /// The switch had no room to take the frame in (error frame 8): nothing in it ran, as if
    /// every request had been answered 91.
    Busy,
    /// The connection or the stream is gone (the switch stopped, closed it, or broke its
    /// framing): what the requests did is unknown, and nothing more can be sent on it.
    Lost(String),
    /// Anything else (a timeout, another error frame): what the requests did is unknown until
    /// they are sent again.
    Other,
}

pub(super) fn call_error<E: 'static>(e: E) -> Failure {
    let any: &dyn std::any::Any = &e;
    let client = any.downcast_ref::<ClientError>().or_else(|| {
        any.downcast_ref::<anyhow::Error>()
            .and_then(|e| e.downcast_ref::<ClientError>())
    });
    client_failure(client)
}

pub(super) fn client_failure(client: Option<&ClientError>) -> Failure {
    match client {
        Some(ClientError::ErrorFrame {
            code: ErrorCode::ServerBusy,
            ..
        }) => Failure::Busy,
        Some(
            e @ (ClientError::Connection(_)
            | ClientError::Closed
            | ClientError::Write(_)
            | ClientError::Undecodable(_)),
        ) => Failure::Lost(e.to_string()),
        _ => Failure::Other,
    }
}

impl Session {
    pub async fn connect(options: Options, endpoint: &Endpoint) -> anyhow::Result<Session> {
        let options = Arc::new(options);
        let mut clients: Vec<Client> = Vec::with_capacity(options.connections);
        let mut lanes = Vec::with_capacity(options.lanes());
        for _ in 0..options.connections {
            let identity = endpoint.identity()?;
            // The first connection finds the address that answers; the others go there.
            let target = match clients.first() {
                Some(first) => first.connection().remote_address().to_string(),
                None => endpoint.target.clone(),
            };
            let client = Client::connect_to(&target, &endpoint.trust, identity, options.timeout)
                .await
                .with_context(|| {
                    format!(
                        "connecting to {} (--timeout-secs {})",
                        endpoint.target,
                        options.timeout.as_secs_f64()
                    )
                })?;
            for _ in 0..options.streams {
                lanes.push(client.stream().await.context("opening a stream")?);
            }
            clients.push(client);
        }
        let shared = Arc::new(Shared::new(options.clone()));
        Ok(Session {
            options,
            clients,
            lanes,
            shared,
            setup_done: false,
            cpu_at_start: None,
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn customer_account(&self, i: u32) -> AccountId {
        self.shared.customer_account(i)
    }

    pub fn merchant_account(&self, i: u32) -> AccountId {
        self.shared.merchant_account(i)
    }

    pub fn card(&self, i: u32) -> CardNumber {
        self.shared.card(i)
    }

    /// A fresh request id of this run.
    pub fn next_request_id(&self) -> RequestId {
        RequestId(self.shared.next_id())
    }

    /// Sends requests outside the model (tests use it to tamper with balances).
    pub async fn call_unmodelled(&self, requests: &[Request]) -> anyhow::Result<Vec<Response>> {
        self.call(requests).await
    }

    pub(super) async fn call(&self, requests: &[Request]) -> anyhow::Result<Vec<Response>> {
        let stream = &self.lanes[0];
        let Ok(answered) = tokio::time::timeout(self.options.timeout, stream.call(requests)).await
        else {
            bail!(
                "no answer within {} s (--timeout-secs)",
                self.options.timeout.as_secs_f64()
            );
        };
        answered.map_err(|e| {
            if let Failure::Lost(reason) = client_failure(Some(&e)) {
                self.shared.lose(reason);
            }
            anyhow::Error::from(e)
        })
    }

    /// Fails if the connection to the switch was lost: the run stopped sending, and what it
    /// cannot read back it does not verify.
    pub(super) fn check_lost(&self, during: &str) -> anyhow::Result<()> {
        let Some((reason, at)) = self.shared.lost.get() else {
            return Ok(());
        };
        let into = at
            .saturating_duration_since(self.shared.measure.lock().origin)
            .as_secs_f64();
        let unknown = self.shared.state.lock().unknown.len();
        bail!(
            "lost the connection to the switch {during}, {into:.1} s after the load began: \
             {reason}. loadgen stopped; {unknown} requests had no answer, so their outcome is \
             unknown, and nothing was verified"
        )
    }

    /// Starts measuring from now (drops whatever was measured before).
    pub(super) fn reset_measure(&self) {
        let mut m = self.shared.measure.lock();
        m.stats = Stats::default();
        m.origin = Instant::now();
    }

    /// The model as it stands (tests compare tampered observations with it).
    pub fn model(&self) -> Model {
        self.shared.state.lock().model.clone()
    }

    /// The measurements so far.
    pub fn stats(&self) -> Stats {
        self.shared.measure.lock().stats.clone()
    }

    /// Follow-ups that could not be queued (should be 0).
    pub fn follow_ups_dropped(&self) -> u64 {
        self.shared.state.lock().follow_ups_dropped
    }

    /// CPU time of loadgen's threads and of the others since the profile began.
    pub fn cpu_since_start(&self) -> Option<cpu::Split> {
        let (a, b) = (self.cpu_at_start?, cpu::split()?);
        Some(b.since(a))
    }

    pub async fn close(self) {
        drop(self.lanes);
        for c in self.clients {
            c.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use switch::client::ClientError;
    use switch::wire::ErrorCode;

    use super::{Failure, call_error};

    fn error_frame(code: ErrorCode) -> ClientError {
        ClientError::ErrorFrame {
            code,
            message: "m".into(),
        }
    }

    /// A frame refused as busy ran nothing, however the error reached the caller; any other
    /// failure leaves the outcome unknown.
    #[test]
    fn only_a_busy_error_frame_is_busy() {
        assert!(matches!(
            call_error(error_frame(ErrorCode::ServerBusy)),
            Failure::Busy
        ));
        assert!(matches!(
            call_error(anyhow::Error::new(error_frame(ErrorCode::ServerBusy))),
            Failure::Busy
        ));
        for code in ErrorCode::ALL {
            if code != ErrorCode::ServerBusy {
                assert!(matches!(call_error(error_frame(code)), Failure::Other));
            }
        }
        assert!(matches!(call_error(ClientError::Closed), Failure::Lost(_)));
        assert!(matches!(
            call_error(anyhow::anyhow!("timed out")),
            Failure::Other
        ));
    }
}
