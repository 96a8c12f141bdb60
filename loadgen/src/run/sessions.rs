//! A session: its link to the switch (`leader`: the connections, their lanes, following a
//! cluster's leader), the calls outside the schedule, and a lost connection, which stops the
//! run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use switch::wire::{AccountId, CardNumber, Request, RequestId, Response};

use super::leader::{Called, Link};
use super::shared::Shared;
use super::spawning::Endpoint;
use crate::config::Options;
use crate::cpu;
use crate::model::Model;
use crate::report::ClusterReport;
use crate::stats::Stats;

/// A connected run: setup, profile, verification, each callable on its own (tests tamper in
/// between).
pub struct Session {
    pub(super) options: Arc<Options>,
    pub(super) link: Arc<Link>,
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
    /// framing), or no leader of a cluster was found in time: what the requests did is
    /// unknown, and nothing more can be sent.
    Lost(String),
    /// Anything else (a timeout, another error frame): what the requests did is unknown until
    /// they are sent again.
    Other,
}

impl Session {
    pub async fn connect(options: Options, endpoint: &Endpoint) -> anyhow::Result<Session> {
        let options = Arc::new(options);
        let link = Arc::new(Link::connect(&options, endpoint).await?);
        let shared = Arc::new(Shared::new(options.clone()));
        Ok(Session {
            options,
            link,
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
        self.call_on_link(requests)
            .await
            .result
            .map_err(anyhow::Error::from)
    }

    /// A call on the first lane, outside the schedule; a lost connection stops the run.
    pub(super) async fn call_on_link(&self, requests: &[Request]) -> Called {
        let called = self.link.call(0, requests).await;
        if let Err(e) = &called.result
            && let Failure::Lost(reason) = e.failure()
        {
            self.shared.lose(reason);
        }
        called
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
        let (a, b) = (self.cpu_at_start.as_ref()?, cpu::split()?);
        Some(b.since(a))
    }

    /// Against a cluster, its leaders and the failovers the run rode through, with times
    /// from the start of the load; `None` against one switch.
    pub fn cluster_report(&self) -> Option<ClusterReport> {
        let origin = self.shared.measure.lock().origin;
        self.link.report(origin)
    }

    pub async fn close(self) {
        self.link.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switch::client::ClientError;
    use switch::wire::ErrorCode;

    use super::super::leader::CallError;
    use super::Failure;

    fn error_frame(code: ErrorCode) -> CallError {
        CallError::Client(ClientError::ErrorFrame {
            code,
            message: "m".into(),
        })
    }

    /// A frame refused as busy ran nothing; a lost stream, or no leader found, is a lost
    /// connection; any other failure leaves the outcome unknown.
    #[test]
    fn only_a_busy_error_frame_is_busy() {
        assert!(matches!(
            error_frame(ErrorCode::ServerBusy).failure(),
            Failure::Busy
        ));
        for code in ErrorCode::ALL {
            if code != ErrorCode::ServerBusy {
                assert!(matches!(error_frame(code).failure(), Failure::Other));
            }
        }
        assert!(matches!(
            CallError::Client(ClientError::Closed).failure(),
            Failure::Lost(_)
        ));
        assert!(matches!(
            CallError::NoLeader("none".into()).failure(),
            Failure::Lost(_)
        ));
        assert!(matches!(
            CallError::TimedOut(Duration::from_secs(1)).failure(),
            Failure::Other
        ));
    }
}
