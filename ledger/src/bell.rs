//! A doorbell for a thread that takes work from a channel: it sleeps until something is
//! queued, without spinning first.
//!
//! `crossbeam_channel`'s blocking receive spins, then yields its core a few times, then sleeps.
//! On a machine whose cores are all busy, each yield can leave the receiver off its core for
//! milliseconds (the scheduler runs every other thread's turn first), and a record or a batch
//! that arrives meanwhile waits that long. The log writer and the switch's ledger stage are
//! each on every request's path, so they wait here instead: a producer that queues rings, and
//! the receiver sleeps on a condition variable until then.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
pub struct Bell {
    /// The receiver is asleep, or about to be: a producer must ring through the lock.
    sleeping: AtomicBool,
    /// No more will be queued: the receiver does not go to sleep again.
    closed: AtomicBool,
    lock: Mutex<()>,
    rung: Condvar,
}

impl Bell {
    pub fn new() -> Bell {
        Bell::default()
    }

    /// After queuing: wakes the receiver if it sleeps. Costs a fence and an atomic load when it
    /// does not.
    pub fn ring(&self) {
        // Pairs with the fence in `wait`: either this load sees `sleeping`, or the receiver's
        // check of the channel sees what was queued before it.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            let _held = self.lock.lock();
            self.rung.notify_one();
        }
    }

    /// Says that nothing more will be queued, as the last sender goes. From then on the
    /// receiver does not sleep: it finds the channel disconnected once that sender is dropped,
    /// before or after this call.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _held = self.lock.lock();
        self.rung.notify_one();
    }

    /// Returns when `rx` holds something, when the bell is closed, after `timeout` (if any),
    /// or spuriously; the caller then tries to receive and, finding nothing, waits again.
    pub fn wait<T>(&self, rx: &Receiver<T>, timeout: Option<Duration>) {
        self.wait_until(|| !rx.is_empty(), timeout);
    }

    /// `wait` for a receiver of several sources: returns when `ready` says something is there
    /// (asked after the receiver says it sleeps, so a ring before that is not missed), when
    /// the bell is closed, after `timeout`, or spuriously.
    pub fn wait_until(&self, ready: impl Fn() -> bool, timeout: Option<Duration>) {
        let mut held = self.lock.lock();
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // Under the lock: a producer that saw `sleeping` cannot notify before this sleeps.
        if !ready() && !self.closed.load(Ordering::SeqCst) {
            match timeout {
                Some(timeout) => {
                    self.rung.wait_for(&mut held, timeout);
                }
                None => self.rung.wait(&mut held),
            }
        }
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use crossbeam_channel::TryRecvError;

    use super::*;

    /// Receives everything `producers` threads send, waking only through the bell. A missed
    /// ring would leave the receiver asleep with items queued: with no timeout, the test would
    /// hang, so it gives the receiver a long timeout and fails if any wait ran it out.
    #[test]
    fn every_item_queued_wakes_the_receiver() {
        const PRODUCERS: u64 = 2;
        const ITEMS: u64 = 20_000;
        let (tx, rx) = crossbeam_channel::bounded::<u64>(64);
        let bell = Arc::new(Bell::new());
        let mut handles = Vec::new();
        for p in 0..PRODUCERS {
            let (tx, bell) = (tx.clone(), bell.clone());
            handles.push(std::thread::spawn(move || {
                for i in 0..ITEMS {
                    let mut item = p * ITEMS + i;
                    loop {
                        match tx.try_send(item) {
                            Ok(()) => break,
                            Err(e) => {
                                item = e.into_inner();
                                std::thread::yield_now();
                            }
                        }
                    }
                    bell.ring();
                }
            }));
        }
        drop(tx);
        let n = PRODUCERS * ITEMS;
        let (mut sum, mut count, mut timed_out) = (0u64, 0u64, 0);
        // Producers that find the channel full spin without ringing, so a ring the receiver
        // missed leaves it asleep until its timeout.
        while count < n && timed_out == 0 {
            match rx.try_recv() {
                Ok(item) => {
                    sum += item;
                    count += 1;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let started = Instant::now();
                    bell.wait(&rx, Some(Duration::from_secs(2)));
                    if started.elapsed() >= Duration::from_secs(2) && !rx.is_empty() {
                        timed_out += 1;
                    }
                }
            }
        }
        assert_eq!(timed_out, 0, "a wait ran out its timeout with items queued");
        for h in handles {
            h.join().expect("producer");
        }
        assert_eq!(count, n);
        assert_eq!(sum, n * (n - 1) / 2);
    }

    #[test]
    fn close_wakes_a_receiver_with_no_timeout() {
        let (tx, rx) = crossbeam_channel::unbounded::<u8>();
        let bell = Arc::new(Bell::new());
        // The waiter reports through a channel of its own, so that a close that does not wake
        // it fails the test instead of hanging it.
        let (report_tx, report) = crossbeam_channel::bounded(1);
        {
            let bell = bell.clone();
            std::thread::spawn(move || {
                bell.wait(&rx, None);
                let _ = report_tx.send(rx.try_recv());
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        bell.close();
        assert_eq!(
            report.recv_timeout(Duration::from_secs(10)),
            Ok(Err(TryRecvError::Disconnected)),
            "close did not wake the receiver"
        );
    }

    #[test]
    fn an_item_queued_before_the_wait_is_not_slept_on() {
        let (tx, rx) = crossbeam_channel::unbounded::<u8>();
        let bell = Bell::new();
        tx.send(7).expect("open");
        // Not rung: the receiver must see the item itself rather than sleep.
        let started = Instant::now();
        bell.wait(&rx, Some(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(rx.try_recv(), Ok(7));
    }

    #[test]
    fn a_timeout_returns_with_nothing_queued() {
        let (_tx, rx) = crossbeam_channel::unbounded::<u8>();
        let bell = Bell::new();
        bell.wait(&rx, Some(Duration::from_millis(5)));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }
}
