//! The journal: every request sent and every answer received, and the one function that
//! sends a frame and journals it.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switch::client::Stream;
use switch::wire::{Request, Response, ResponseCode as Code};

/// The longest wait for a connection, a stream or a frame's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Entry {
    pub request: Request,
    /// The definitive answer: received while the switch ran, or learnt by sending the
    /// request again after a restart. `None` while unknown (in flight at a kill).
    pub response: Option<Response>,
    /// The cycle in which it was first sent (0: before the first kill).
    pub cycle: u32,
    pub sent_at: Instant,
}

#[derive(Default)]
pub struct Journal {
    pub entries: HashMap<u128, Entry>,
    /// Request ids in the order they were first sent.
    pub order: Vec<u128>,
    pub acknowledged_live: u64,
}

impl Journal {
    pub fn sent(&mut self, request: &Request, cycle: u32) {
        let id = request.id.0;
        if self.entries.contains_key(&id) {
            return;
        }
        self.entries.insert(
            id,
            Entry {
                request: request.clone(),
                response: None,
                cycle,
                sent_at: Instant::now(),
            },
        );
        self.order.push(id);
    }

    pub fn get(&self, id: u128) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn unknown(&self) -> Vec<u128> {
        self.order
            .iter()
            .copied()
            .filter(|id| self.entries.get(id).is_some_and(|e| e.response.is_none()))
            .collect()
    }
}

/// 91 and 96 say nothing was done: not an outcome.
pub fn is_definitive(response: &Response) -> bool {
    !matches!(response.code, Code::SystemBusy | Code::SystemMalfunction)
}

pub struct Shared {
    pub journal: Mutex<Journal>,
    /// Answers that break the protocol itself (wrong count or id); each is a mismatch.
    pub protocol: Mutex<Vec<String>>,
    pub stop: AtomicBool,
}

/// Sends one frame and journals it: the requests before they leave, the answers when they
/// arrive. `None` if the frame got no complete, definitive answer.
pub async fn send(
    shared: &Shared,
    stream: &Stream,
    cycle: u32,
    requests: Vec<Request>,
) -> Option<Vec<Response>> {
    {
        let mut journal = shared.journal.lock();
        for r in &requests {
            journal.sent(r, cycle);
        }
    }
    let responses = match tokio::time::timeout(CALL_TIMEOUT, stream.call(&requests)).await {
        Ok(Ok(responses)) => responses,
        _ => return None,
    };
    if responses.len() != requests.len()
        || responses
            .iter()
            .zip(&requests)
            .any(|(a, q)| a.request_id != q.id)
    {
        shared.protocol.lock().push(format!(
            "a frame of {} requests was answered by {} results: {responses:?}",
            requests.len(),
            responses.len()
        ));
        return None;
    }
    let mut complete = true;
    let mut journal = shared.journal.lock();
    for response in &responses {
        if !is_definitive(response) {
            complete = false;
            continue;
        }
        if let Some(entry) = journal.entries.get_mut(&response.request_id.0)
            && entry.response.is_none()
        {
            entry.response = Some(response.clone());
            journal.acknowledged_live += 1;
        }
    }
    complete.then_some(responses)
}
