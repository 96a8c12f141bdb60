//! The load: workers running business flows over the streams of one connection until the
//! kill, and the kill itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switch::client::{Client, Stream};
use switch::wire::{
    AccountId, Amount, CardNumber, Operation, Request, RequestId, Response, ResponseCode as Code,
};

use crate::Run;
use crate::check::amount_of;
use crate::common::process::Process;
use crate::journal::{Shared, send};
use crate::world::{
    AMOUNT_MAX, CARDS, CNY, MERCHANTS, card_account, card_number, merchant_account,
};

/// The longest wait for the load tasks to end once the switch is killed.
const WORKERS_STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn fresh_id(rng: &mut StdRng) -> RequestId {
    loop {
        let id: u128 = rng.r#gen();
        if id != 0 && id != u128::MAX {
            return RequestId(id);
        }
    }
}

fn authorize(rng: &mut StdRng, number: CardNumber, merchant: AccountId) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Authorize {
            number,
            merchant,
            amount: Amount(rng.gen_range(1..=AMOUNT_MAX)),
            currency: CNY,
            expiry_secs: 0,
        },
    }
}

fn sale(rng: &mut StdRng, number: CardNumber, merchant: AccountId) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Sale {
            number,
            merchant,
            amount: Amount(rng.gen_range(1..=AMOUNT_MAX)),
            currency: CNY,
        },
    }
}

fn capture(rng: &mut StdRng, authorization: RequestId, amount: u64) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Capture {
            authorization,
            amount: Amount(amount),
        },
    }
}

fn reverse(rng: &mut StdRng, authorization: RequestId) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Reverse { authorization },
    }
}

fn refund(rng: &mut StdRng, original: RequestId, amount: u64) -> Request {
    Request {
        id: fresh_id(rng),
        operation: Operation::Refund {
            original,
            amount: Amount(amount),
            currency: CNY,
        },
    }
}

/// One of the concurrent flows of a cycle.
struct Worker {
    shared: Arc<Shared>,
    streams: Vec<Stream>,
    rng: StdRng,
    cycle: u32,
}

impl Worker {
    fn stream(&mut self) -> Stream {
        let i = self.rng.gen_range(0..self.streams.len());
        self.streams[i].clone()
    }

    async fn one(&mut self, request: Request) -> Option<Response> {
        let stream = self.stream();
        send(&self.shared, &stream, self.cycle, vec![request])
            .await?
            .into_iter()
            .next()
    }

    fn card(&mut self) -> CardNumber {
        card_number(self.rng.gen_range(0..CARDS))
    }

    fn merchant(&mut self) -> AccountId {
        merchant_account(self.rng.gen_range(0..MERCHANTS))
    }

    async fn run(mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            if self.flow().await.is_none() {
                return;
            }
        }
    }

    /// One business flow; `None` when the switch stopped answering.
    async fn flow(&mut self) -> Option<()> {
        let (card, merchant) = (self.card(), self.merchant());
        match self.rng.gen_range(0..100) {
            0..=31 => self.authorization(card, merchant).await,
            32..=55 => self.sale(card, merchant).await,
            56..=69 => self.burst().await,
            70..=83 => self.race(card, merchant).await,
            84..=89 => self.expiring(card, merchant).await,
            90..=91 => {
                // An admin operation among the payments: a top-up from the issuer's funds.
                let account = card_account(self.rng.gen_range(0..CARDS));
                let request = Request {
                    id: fresh_id(&mut self.rng),
                    operation: Operation::Fund {
                        account,
                        amount: Amount(self.rng.gen_range(1..=AMOUNT_MAX)),
                        currency: CNY,
                    },
                };
                self.one(request).await.map(|_| ())
            }
            92..=96 => {
                // Declined before the ledger: no route (92), no account (14).
                let number = if self.rng.gen_bool(0.5) {
                    "4111111111111111"
                } else {
                    "6299999999999999"
                };
                let request = authorize(
                    &mut self.rng,
                    CardNumber::new(number).expect("digits"),
                    merchant,
                );
                self.one(request).await.map(|_| ())
            }
            _ => {
                // A reversal of an authorization that never comes.
                let id = fresh_id(&mut self.rng);
                let request = reverse(&mut self.rng, id);
                self.one(request).await.map(|_| ())
            }
        }
    }

    async fn authorization(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let auth = authorize(&mut self.rng, card, merchant);
        let (id, held) = (auth.id, amount_of(&auth));
        if self.one(auth).await?.code != Code::Approved {
            return Some(());
        }
        match self.rng.gen_range(0..6) {
            0 => {
                let c = capture(&mut self.rng, id, held);
                self.one(c).await?;
            }
            1 => {
                let partial = self.rng.gen_range(1..=held);
                let c = capture(&mut self.rng, id, partial);
                self.one(c).await?;
            }
            2 => {
                let r = reverse(&mut self.rng, id);
                self.one(r).await?;
            }
            3 => {} // left held
            4 => {
                let captured = self.rng.gen_range(1..=held);
                let c = capture(&mut self.rng, id, captured);
                if self.one(c).await?.code == Code::Approved {
                    self.refunds(id, captured).await?;
                }
            }
            _ => {
                // More than held: declined (13), and the hold stays until reversed.
                let c = capture(&mut self.rng, id, held + 1);
                self.one(c).await?;
                let r = reverse(&mut self.rng, id);
                self.one(r).await?;
            }
        }
        Some(())
    }

    /// A hold of a second or two, left to expire, or captured or reversed around the time it
    /// expires (either may win; the answer says which).
    async fn expiring(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let mut auth = authorize(&mut self.rng, card, merchant);
        if let Operation::Authorize { expiry_secs, .. } = &mut auth.operation {
            *expiry_secs = self.rng.gen_range(1..=2);
        }
        let (id, held) = (auth.id, amount_of(&auth));
        if self.one(auth).await?.code != Code::Approved || self.rng.gen_bool(0.5) {
            return Some(());
        }
        let wait = Duration::from_millis(self.rng.gen_range(500..2500));
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until {
            if self.shared.stop.load(Ordering::Acquire) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let then = if self.rng.gen_bool(0.5) {
            capture(&mut self.rng, id, held)
        } else {
            reverse(&mut self.rng, id)
        };
        self.one(then).await.map(|_| ())
    }

    /// One or two refunds of `original`, sometimes one too many (declined 13).
    async fn refunds(&mut self, original: RequestId, moved: u64) -> Option<()> {
        let first = self.rng.gen_range(1..=moved);
        let r = refund(&mut self.rng, original, first);
        self.one(r).await?;
        if self.rng.gen_bool(0.3) {
            let extra = if self.rng.gen_bool(0.5) {
                moved - first + 1
            } else {
                (moved - first).max(1)
            };
            let r = refund(&mut self.rng, original, extra);
            self.one(r).await?;
        }
        Some(())
    }

    async fn sale(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let s = sale(&mut self.rng, card, merchant);
        let (id, moved) = (s.id, amount_of(&s));
        if self.one(s).await?.code == Code::Approved && self.rng.gen_bool(0.5) {
            self.refunds(id, moved).await?;
        }
        Some(())
    }

    /// Several independent operations in one frame, then the follow-ups in another.
    async fn burst(&mut self) -> Option<()> {
        let n = self.rng.gen_range(2..=8);
        let mut frame = Vec::with_capacity(n);
        for _ in 0..n {
            let (card, merchant) = (self.card(), self.merchant());
            frame.push(if self.rng.gen_bool(0.5) {
                authorize(&mut self.rng, card, merchant)
            } else {
                sale(&mut self.rng, card, merchant)
            });
        }
        let stream = self.stream();
        let answers = send(&self.shared, &stream, self.cycle, frame.clone()).await?;
        let mut follow = Vec::new();
        for (request, answer) in frame.iter().zip(&answers) {
            if answer.code != Code::Approved
                || !matches!(request.operation, Operation::Authorize { .. })
            {
                continue;
            }
            follow.push(if self.rng.gen_bool(0.5) {
                capture(&mut self.rng, request.id, amount_of(request))
            } else {
                reverse(&mut self.rng, request.id)
            });
        }
        if !follow.is_empty() {
            let stream = self.stream();
            send(&self.shared, &stream, self.cycle, follow).await?;
        }
        Some(())
    }

    /// A capture and a reverse of the same authorization, in flight at once on two
    /// streams: exactly one of them may take effect.
    async fn race(&mut self, card: CardNumber, merchant: AccountId) -> Option<()> {
        let auth = authorize(&mut self.rng, card, merchant);
        let (id, held) = (auth.id, amount_of(&auth));
        if self.one(auth).await?.code != Code::Approved {
            return Some(());
        }
        let amount = self.rng.gen_range(1..=held);
        let c = capture(&mut self.rng, id, amount);
        let r = reverse(&mut self.rng, id);
        let i = self.rng.gen_range(0..self.streams.len());
        let j = (i + 1) % self.streams.len();
        let (a, b) = (self.streams[i].clone(), self.streams[j].clone());
        let (x, y) = tokio::join!(
            send(&self.shared, &a, self.cycle, vec![c]),
            send(&self.shared, &b, self.cycle, vec![r])
        );
        x.and(y).map(|_| ())
    }
}

impl Run {
    /// Load until a random moment, then SIGKILL. Returns how many requests were in flight.
    pub async fn load_and_kill(
        &mut self,
        process: &mut Process,
        client: Client,
        streams: Vec<Stream>,
        cycle: u32,
    ) -> Result<u64, String> {
        self.shared.stop.store(false, Ordering::Release);
        let workers: Vec<_> = (0..self.settings.workers)
            .map(|_| {
                let worker = Worker {
                    shared: self.shared.clone(),
                    streams: streams.clone(),
                    rng: StdRng::seed_from_u64(self.rng.r#gen()),
                    cycle,
                };
                tokio::spawn(worker.run())
            })
            .collect();
        let max = self.settings.kill_ms_max;
        let delay = Duration::from_millis(self.rng.gen_range(max / 10..=max));
        tokio::time::sleep(delay).await;
        if let Some(status) = process.exited() {
            return Err(format!(
                "the switch exited by itself under load ({status}); log:\n{}",
                process.log_tail(30)
            ));
        }
        process.kill()?;
        // The process is gone; end the connection here rather than wait for its idle timeout.
        client
            .connection()
            .close(0u32.into(), b"the switch was killed");
        self.shared.stop.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + WORKERS_STOP_TIMEOUT;
        for w in workers {
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                return Err("a load task did not stop after the kill".to_string());
            }
        }
        drop(client);
        let journal = self.shared.journal.lock();
        Ok(journal
            .unknown()
            .iter()
            .filter(|id| journal.get(**id).is_some_and(|e| e.cycle == cycle))
            .count() as u64)
    }
}
