//! Wakes the open loop's lanes when their next frame is due, from a thread of its own.
//!
//! tokio's timer rounds every sleep up to its next millisecond tick, so lanes that slept on it
//! sent each frame up to a millisecond after it was due, and since latency is measured from the
//! intended send time, that lateness counted as the switch's. A thread sleeping on the
//! operating system's high-resolution timer wakes a lane within tens of microseconds of the
//! time its frame is due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Instant;

use tokio::sync::Notify;

/// Asks the pacing thread for wake-ups. Each lane waits for its wake-up before it asks for the
/// next, so at most one per lane is pending: the channel holds that many. The thread ends when
/// every handle is gone.
#[derive(Clone)]
pub(super) struct Pacer {
    tx: SyncSender<Wake>,
}

struct Wake {
    at: Instant,
    seq: u64,
    notify: Arc<Notify>,
}

impl Pacer {
    /// Starts the pacing thread for `lanes` lanes.
    pub(super) fn start(lanes: usize) -> std::io::Result<Pacer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(lanes.max(1));
        std::thread::Builder::new()
            .name("loadgen-pacer".into())
            .spawn(move || pace(&rx))?;
        Ok(Pacer { tx })
    }

    /// Wakes `notify` (one permit) at `at`, at once if `at` has passed. False if the pacing
    /// thread is gone.
    pub(super) fn wake_at(&self, at: Instant, notify: &Arc<Notify>) -> bool {
        let wake = Wake {
            at,
            seq: 0,
            notify: notify.clone(),
        };
        self.tx.send(wake).is_ok()
    }
}

fn pace(rx: &Receiver<Wake>) {
    let mut due: BinaryHeap<Wake> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while due.peek().is_some_and(|w| w.at <= now) {
            if let Some(w) = due.pop() {
                w.notify.notify_one();
            }
        }
        let next = match due.peek() {
            Some(w) => rx.recv_timeout(w.at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(mut w) => {
                seq += 1;
                w.seq = seq;
                due.push(w);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

// A max-heap ordered so that the earliest wake-up (then the first asked) is on top.
impl Ord for Wake {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Wake {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Wake-ups asked out of order come in the order they are due, none before its time, and
    /// one already past comes at once.
    #[tokio::test]
    async fn lanes_wake_in_due_order_and_never_early() {
        let pacer = Pacer::start(4).expect("the pacing thread");
        let base = Instant::now();
        let offsets_ms = [30u64, 10, 20];
        let notifies: Vec<Arc<Notify>> = offsets_ms.iter().map(|_| Arc::default()).collect();
        for (ms, n) in offsets_ms.iter().zip(&notifies) {
            assert!(pacer.wake_at(base + Duration::from_millis(*ms), n));
        }
        let past = Arc::new(Notify::new());
        assert!(pacer.wake_at(base - Duration::from_millis(5), &past));
        past.notified().await;
        let mut woken = Vec::new();
        let mut waits: Vec<_> = notifies
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let n = n.clone();
                tokio::spawn(async move {
                    n.notified().await;
                    (i, Instant::now())
                })
            })
            .collect();
        for w in waits.drain(..) {
            woken.push(w.await.expect("woken"));
        }
        for &(i, at) in &woken {
            let due = base + Duration::from_millis(offsets_ms[i]);
            assert!(at >= due, "lane {i} woke {:?} early", due - at);
        }
        woken.sort_by_key(|&(_, at)| at);
        let order: Vec<usize> = woken.iter().map(|&(i, _)| i).collect();
        assert_eq!(order, [1, 2, 0], "woken in the order due");
    }
}
