//! The switch's state machine: authorization lifecycle, participants, the number directory and
//! request idempotency, on top of the ledger. No I/O and no clock, like the ledger: the server
//! hands it batches of requests with `now` and logs what it returns.
//!
//! A batch runs in *waves*: consecutive requests that concern different transfers share one
//! `Ledger::apply`, so a busy switch takes the ledger's locks once per wave rather than once per
//! request. A request that concerns a transfer already in the wave (a capture of an
//! authorization in the same batch, say) closes the wave first, so every decision sees the
//! state left by everything before it, exactly as if requests ran one by one.
//!
//! What is logged is the `Command`, the request after routing: a reload of the routing table
//! cannot change what replaying the log does.

// A decline travels as `Err(Response)`: built once per request, it is cheaper moved than boxed.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::sync::Arc;

use ledger::{
    Account, AccountFlags, AccountId, Amount, Balances, Currency, Event, Ledger, NewAccount, Op,
    Outcome, ParticipantId, Timestamp, Transfer, TransferId, TransferKind, TransferRecord,
    TransferState,
};

use ledger::clearing::{FeeSchedule, Kind, Settlement};

use crate::clearing::{Clearing, Window, is_system_id, settlement_account, settlement_transfer_id};
use crate::codes::{Code, Reason, code_for};

// Keys are client-chosen: a seeded hasher, and a fast one (this is the hot path).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use crate::identity::Identity;
use crate::journal::{NAME_LEN_MAX, fingerprint};
use crate::routing::{RouteTable, is_valid_number};
use ledger::position_index::PositionIndex;

/// A client-chosen request id; also the ledger id of the transfer the request makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u128);

/// Accounts the switch makes for itself have ids with these top 32 bits; clients may not.
pub const SYSTEM_ACCOUNT_PREFIX: u32 = crate::clearing::SYSTEM_PREFIX;

/// Windows a ListWindows result holds at most (the protocol's limit).
pub const WINDOWS_LISTED_MAX: usize = 1024;
/// The participant roles version 1 knows: issuer (bit 0) and acquirer (bit 1).
const ROLES_KNOWN: u8 = ROLE_ISSUER | ROLE_ACQUIRER;
/// A participant whose cards a route may name.
const ROLE_ISSUER: u8 = 0b01;
/// A participant that may own the merchant side of an authorization or sale.
const ROLE_ACQUIRER: u8 = 0b10;

/// Who the switch itself acts as (scheduled closes); no client can be participant 0.
pub const SYSTEM: Identity = Identity {
    participant: ParticipantId(0),
    admin: true,
};

/// The account a participant's deposits in `currency` are drawn from.
pub fn funding_account(participant: ParticipantId, currency: Currency) -> AccountId {
    AccountId(
        (u128::from(SYSTEM_ACCOUNT_PREFIX) << 96)
            | (u128::from(participant.0) << 16)
            | u128::from(currency.numeric()),
    )
}

fn is_system_account(id: AccountId) -> bool {
    (id.0 >> 96) as u32 == SYSTEM_ACCOUNT_PREFIX
}

/// What a balance inquiry is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Number(String),
    Account(AccountId),
}

/// Creates a participant; repeating it with the same name and roles changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreateParticipant {
    pub participant: ParticipantId,
    pub name: String,
    pub roles: u8,
}

/// Creates an account; its card or wallet number, if any, goes into the number directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreateAccount {
    pub account: AccountId,
    pub owner: ParticipantId,
    pub currency: Currency,
    pub flags: AccountFlags,
    pub number: Option<String>,
}

/// Moves money into an account from its owner's funding account in `currency`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fund {
    pub account: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

/// Sets a participant's net debit cap in a currency (0: none).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetLimits {
    pub participant: ParticipantId,
    pub currency: Currency,
    pub net_debit_cap: Amount,
}

/// Captures an authorization's hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Capture {
    pub authorization: RequestId,
    /// 1 up to the held amount; the rest of the hold is released.
    pub amount: Amount,
}

/// Reverses an authorization, releasing its hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reverse {
    pub authorization: RequestId,
}

/// Gives back part or all of what a capture or sale moved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refund {
    pub original: RequestId,
    pub amount: Amount,
    pub currency: Currency,
}

/// A request as the switch understands it, before routing. The payloads routing leaves as they
/// are (`CreateParticipant`, `Fund` and the others) are `Command`'s too: a field added to one is
/// in both.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    CreateParticipant(CreateParticipant),
    CreateAccount(CreateAccount),
    Fund(Fund),
    SetLimits(SetLimits),
    Authorize {
        number: String,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
        expiry_seconds: u32,
    },
    Capture(Capture),
    Reverse(Reverse),
    Sale {
        number: String,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    },
    Refund(Refund),
    BalanceInquiry {
        target: Target,
    },
    TransferStatus {
        of: RequestId,
    },
    /// 0 closes whichever window is open.
    CloseWindow {
        window: u64,
    },
    ListWindows,
    WindowReport {
        window: u64,
    },
    Echo {
        payload: Vec<u8>,
    },
}

/// A state-changing request after routing: what the core executes and what the log holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    CreateParticipant(CreateParticipant),
    CreateAccount(CreateAccount),
    Fund(Fund),
    SetLimits(SetLimits),
    Authorize {
        card: AccountId,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
        expires_at: Timestamp,
    },
    Capture(Capture),
    Reverse(Reverse),
    Sale {
        card: AccountId,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    },
    Refund(Refund),
    /// Closes `window` (resolved: never 0) with the fee schedule in force when it was asked.
    CloseWindow {
        window: u64,
        fees: Arc<FeeSchedule>,
    },
}

impl Command {
    fn is_admin(&self) -> bool {
        matches!(
            self,
            Command::CreateParticipant(_)
                | Command::CreateAccount(_)
                | Command::Fund(_)
                | Command::SetLimits(_)
                | Command::CloseWindow { .. }
        )
    }

    /// The earlier request this one acts on, if any.
    fn original(&self) -> Option<RequestId> {
        match self {
            Command::Capture(Capture { authorization, .. })
            | Command::Reverse(Reverse { authorization }) => Some(*authorization),
            Command::Refund(Refund { original, .. }) => Some(*original),
            _ => None,
        }
    }
}

/// Where an authorization or sale stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Held,
    Captured,
    Reversed,
    Expired,
    Sold,
}

/// What a transfer-status response says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    /// The ledger transfer of the authorization or sale (its request id).
    pub transfer: TransferId,
    pub stage: Stage,
    pub currency: Currency,
    pub amount: Amount,
    pub captured: Amount,
    pub refunded: Amount,
}

/// The part of a response that depends on the request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    None,
    /// The ledger transfer made (its id is the request id) and the amount held or moved.
    Transfer {
        transfer: TransferId,
        amount: Amount,
        currency: Currency,
    },
    Balance {
        account: AccountId,
        currency: Currency,
        balances: Balances,
    },
    Status(Status),
    Echo(Vec<u8>),
    /// The window a CloseWindow closed.
    WindowClosed(u64),
    /// Newest first, the open window included.
    Windows(Vec<Window>),
    WindowReport(Window),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    pub id: RequestId,
    pub code: Code,
    pub reason: Reason,
    pub body: Body,
}

impl Response {
    pub fn new(id: RequestId, code: Code, reason: Reason) -> Self {
        Response {
            id,
            code,
            reason,
            body: Body::None,
        }
    }

    fn approved(id: RequestId, body: Body) -> Self {
        Response {
            id,
            code: Code::Approved,
            reason: Reason::NONE,
            body,
        }
    }

    fn from_outcome(id: RequestId, outcome: Outcome) -> Self {
        let (code, reason) = code_for(outcome);
        Response::new(id, code, reason)
    }
}

/// One request in a batch, with who sent it.
#[derive(Clone, Debug)]
pub struct Item {
    pub id: RequestId,
    pub who: Identity,
    pub request: Request,
}

/// An item with the fingerprint of its request (see `journal::fingerprint`) computed, which a
/// server does where the request is decoded rather than on the ledger stage.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub item: Item,
    pub fingerprint: u64,
}

impl Prepared {
    pub fn new(item: Item) -> Self {
        let fingerprint = fingerprint(item.who, &item.request);
        Prepared { item, fingerprint }
    }
}

/// One logged command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub id: RequestId,
    pub who: Identity,
    /// Of the request as sent (see `journal::fingerprint`): a repeat must match it.
    pub fingerprint: u64,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    pub default_expiry_seconds: u32,
    pub expiry_seconds_max: u32,
    /// Requests whose responses (and authorizations and sales) are remembered; past this,
    /// the oldest resolved ones are forgotten.
    pub requests_remembered_max: usize,
    /// The fee schedule closes use (logged with each close).
    pub fees: Arc<FeeSchedule>,
    /// Closed windows kept for ListWindows and WindowReport.
    pub windows_kept: usize,
    /// Bytes the closes of one batch may add to its log record (each carries the fee
    /// schedule): the record limit less what the batch's other commands can take
    /// (`closes_logged_bytes_max`). A close past it is answered 91 and not executed.
    pub closes_logged_bytes_max: usize,
    /// Participants the switch holds; a CreateParticipant past it is answered 91 and not
    /// executed. Bounds what participants take with them: their limits (one per currency)
    /// and their clearing positions.
    pub participants_max: usize,
}

/// What the closes of a batch may log, for batches of up to `batch_len_max` requests a frame:
/// the ledger stage takes frames until it holds `batch_len_max` requests, so a batch holds
/// fewer than twice that many, each taking at most `journal::logged_len_max` bytes besides.
pub fn closes_logged_bytes_max(batch_len_max: u16) -> usize {
    (ledger::wal::RECORD_SIZE_MAX_DEFAULT as usize)
        .saturating_sub(crate::journal::BATCH_HEADER_LEN)
        .saturating_sub(2 * usize::from(batch_len_max) * crate::journal::logged_len_max())
}

/// `participants_max` unless configured.
pub const PARTICIPANTS_MAX_DEFAULT: usize = 65_536;

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            default_expiry_seconds: 7 * 24 * 3600,
            expiry_seconds_max: 30 * 24 * 3600,
            requests_remembered_max: 10_000_000,
            fees: Arc::default(),
            windows_kept: 1024,
            closes_logged_bytes_max: closes_logged_bytes_max(crate::wire::BATCH_LEN_MAX_DEFAULT),
            participants_max: PARTICIPANTS_MAX_DEFAULT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Participant {
    name: String,
    roles: u8,
}

/// An authorization or sale, remembered for capture, reversal, refund and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Original {
    /// Of the request as sent (see `journal::fingerprint`). The original is also the request's
    /// remembered answer (approved, a transfer of its own id, `amount` in `currency`): a repeat
    /// is answered from here, with no entry in the remembered responses, which saves the stage
    /// one map of millions per payment. 0: the answer is in the remembered responses instead
    /// (originals restored from a version 1 snapshot, or a fingerprint that happens to be 0).
    fingerprint: u64,
    acquirer: ParticipantId,
    issuer: ParticipantId,
    card: AccountId,
    merchant: AccountId,
    currency: Currency,
    amount: Amount,
    captured: Amount,
    refunded: Amount,
    stage: Stage,
}

/// A remembered response, kept small: the stage remembers one per request, millions of them,
/// and most are a code and a transfer of the request's own id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    /// Of the request as sent (see `journal::fingerprint`).
    fingerprint: u64,
    code: Code,
    reason: Reason,
    body: KeptBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeptBody {
    None,
    /// `Body::Transfer` of the request's own id.
    OwnTransfer {
        amount: Amount,
        currency: Currency,
    },
    Other(Box<Body>),
}

impl Kept {
    fn new(fingerprint: u64, response: &Response) -> Self {
        let body = match &response.body {
            Body::None => KeptBody::None,
            Body::Transfer {
                transfer,
                amount,
                currency,
            } if transfer.0 == response.id.0 => KeptBody::OwnTransfer {
                amount: *amount,
                currency: *currency,
            },
            other => KeptBody::Other(Box::new(other.clone())),
        };
        Kept {
            fingerprint,
            code: response.code,
            reason: response.reason,
            body,
        }
    }

    /// The response as it was given to request `id`.
    fn response(&self, id: RequestId) -> Response {
        Response {
            id,
            code: self.code,
            reason: self.reason,
            body: match &self.body {
                KeptBody::None => Body::None,
                KeptBody::OwnTransfer { amount, currency } => Body::Transfer {
                    transfer: TransferId(id.0),
                    amount: *amount,
                    currency: *currency,
                },
                KeptBody::Other(body) => (**body).clone(),
            },
        }
    }
}

/// A queue, oldest first, held in chunks of a fixed size: it never grows by copying itself, as
/// one deque of millions would when it doubles, stalling the stage. A chunk emptied at the
/// front is kept for the back (up to `spare_max` of them), so a queue that forgets as fast as
/// it remembers allocates nothing.
pub(crate) struct Chunked<T> {
    /// Every chunk holds at least one entry; all but the first and the last are full.
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
    spare: Vec<VecDeque<T>>,
    spare_max: usize,
}

/// A queue of keys.
pub(crate) type Order = Chunked<u128>;

const ORDER_CHUNK: usize = 4096;

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: VecDeque::new(),
            len: 0,
            spare: Vec::new(),
            spare_max: 1,
        }
    }
}

impl<T> Chunked<T> {
    pub(crate) fn push_back(&mut self, value: T) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < ORDER_CHUNK => chunk.push_back(value),
            _ => {
                let mut chunk = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| VecDeque::with_capacity(ORDER_CHUNK));
                chunk.push_back(value);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let front = self.chunks.front_mut()?;
        let value = front.pop_front()?;
        self.len -= 1;
        if front.is_empty()
            && let Some(chunk) = self.chunks.pop_front()
            && self.spare.len() < self.spare_max
        {
            self.spare.push(chunk);
        }
        Some(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The `i`th oldest.
    fn get(&self, i: usize) -> Option<&T> {
        let front = self.chunks.front()?;
        match i.checked_sub(front.len()) {
            None => front.get(i),
            Some(rest) => self
                .chunks
                .get(1 + rest / ORDER_CHUNK)?
                .get(rest % ORDER_CHUNK),
        }
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        let front = self.chunks.front()?.len();
        match i.checked_sub(front) {
            None => self.chunks.front_mut()?.get_mut(i),
            Some(rest) => self
                .chunks
                .get_mut(1 + rest / ORDER_CHUNK)?
                .get_mut(rest % ORDER_CHUNK),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// Writes once (with copies of `filler`, then empties) spare chunks for `entries`, so
    /// that pushing that many never allocates or touches a fresh page. Returns the bytes
    /// reserved.
    fn preallocate(&mut self, entries: usize, filler: &T) -> usize
    where
        T: Clone,
    {
        let chunks = entries.div_ceil(ORDER_CHUNK) + 1;
        self.spare_max = self.spare_max.max(chunks);
        while self.spare.len() + self.chunks.len() < chunks {
            let mut chunk = VecDeque::with_capacity(ORDER_CHUNK);
            chunk.resize(ORDER_CHUNK, filler.clone());
            chunk.clear();
            self.spare.push(chunk);
        }
        (self.spare.len() + self.chunks.len()) * ORDER_CHUNK * std::mem::size_of::<T>()
    }
}

/// The keys, oldest first (how they are chunked is not part of what the queue is).
impl<T: std::fmt::Debug> std::fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a, T> IntoIterator for &'a Chunked<T> {
    type Item = &'a T;
    type IntoIter = Box<dyn Iterator<Item = &'a T> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// A map with a bound, forgetting the oldest entries first (except those `keep` says not to).
///
/// The entries sit in a queue in the order they are forgotten in; a `PositionIndex` takes a
/// key to its place there. Remembering writes the entry at the queue's end, next to the one
/// before, and a small tag-and-place into the index: the one write to a random place in
/// memory is 8 bytes, where an entry of the map itself would be over a hundred.
pub(crate) struct Remembered<V> {
    /// Key to position: `base` plus the index in `entries`. Split into parts so that no
    /// single index grows huge: an index doubles by copying itself, and one of millions of
    /// entries would stall the ledger stage for that long.
    parts: Vec<PositionIndex>,
    entries: Chunked<(u128, V)>,
    /// The position of the oldest entry.
    base: u64,
    max: usize,
}

const REMEMBERED_PARTS: usize = 64;

impl<V> Remembered<V> {
    fn new(max: usize) -> Self {
        Remembered {
            parts: (0..REMEMBERED_PARTS)
                .map(|_| PositionIndex::default())
                .collect(),
            entries: Chunked::default(),
            base: 0,
            max,
        }
    }

    fn part(&self, key: u128) -> usize {
        // Request ids are client-chosen; mix before picking a part.
        let folded = (key as u64) ^ ((key >> 64) as u64);
        (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn index(&self, key: u128) -> Option<usize> {
        let key_at = |p: u64| {
            let i = usize::try_from(p.checked_sub(self.base)?).ok()?;
            self.entries.get(i).map(|(k, _)| *k)
        };
        let position = self.parts[self.part(key)].find(key, self.base, key_at)?;
        usize::try_from(position - self.base).ok()
    }

    /// Brings what looking `key` up reads into cache (see `PositionIndex::touch`).
    fn touch(&self, key: u128) -> usize {
        self.parts[self.part(key)].touch(key)
    }

    fn get(&self, key: &u128) -> Option<&V> {
        let i = self.index(*key)?;
        self.entries.get(i).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &u128) -> Option<&mut V> {
        let i = self.index(*key)?;
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    #[cfg(test)]
    fn contains_key(&self, key: &u128) -> bool {
        self.index(*key).is_some()
    }

    /// Entries, key and value, oldest first.
    fn iter(&self) -> impl Iterator<Item = (u128, &V)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Entries a part is sized for: its share of `max`, and room for parts filling unevenly.
    fn part_bound(&self) -> usize {
        let share = self.max.div_ceil(REMEMBERED_PARTS);
        share.saturating_add(share / 8).saturating_add(64)
    }

    /// Grows part `n` ahead of need once it is three-quarters full, so that the parts, which
    /// fill evenly, do not all double (copying everything) in the same batch; never past
    /// room for its share of `max`.
    fn grow_ahead(&mut self, n: usize) {
        let bound = self.part_bound();
        let part = &mut self.parts[n % REMEMBERED_PARTS];
        if part.capacity() < bound && part.len() * 4 > part.capacity() * 3 {
            part.reserve(part.capacity());
        }
    }

    /// Makes room for `max` entries now and writes every page of it once (the queue's with
    /// copies of `filler`), so that remembering never grows a part or takes a page fault
    /// later; the entries held are kept. Returns the bytes now held.
    fn preallocate(&mut self, filler: &V) -> usize
    where
        V: Clone,
    {
        let bound = self.part_bound();
        let mut bytes = self
            .entries
            .preallocate(self.max.saturating_add(1), &(0, filler.clone()));
        for part in &mut self.parts {
            bytes += part.preallocate(bound);
        }
        bytes
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.parts.iter().map(PositionIndex::capacity).sum()
    }

    /// Adds `value` as the newest entry (for a new key; for a key held, `value` replaces
    /// its value in place). Does not forget.
    fn push(&mut self, key: u128, value: V) -> Result<(), (u128, V)> {
        let position = self.base + self.entries.len() as u64;
        let part = self.part(key);
        let (entries, base) = (&self.entries, self.base);
        let key_at = |p: u64| {
            let i = usize::try_from(p.checked_sub(base)?).ok()?;
            entries.get(i).map(|(k, _)| *k)
        };
        if self.parts[part]
            .insert(key, position, base, key_at)
            .is_err()
        {
            return Err((key, value));
        }
        self.entries.push_back((key, value));
        Ok(())
    }

    /// Remembers `key`, then forgets the oldest entries `keep` lets go until at most `max`
    /// remain, looking at no more than `FORGET_LOOKS_MAX` of them: an entry kept goes to the
    /// newest end. Returns how many it looked at.
    ///
    /// The bound on the looking is what keeps a request's cost constant when the oldest
    /// entries are all kept (live holds, when `pending_max` is near this map's `max`): the map
    /// then holds more than `max`: the kept entries, and others waiting for the looking to
    /// pass them, about one for every `FORGET_LOOKS_MAX` kept.
    fn insert(&mut self, key: u128, value: V, keep: impl Fn(&V) -> bool) -> usize {
        if let Err((key, value)) = self.push(key, value)
            && let Some(held) = self.get_mut(&key)
        {
            *held = value;
        }
        let mut budget = FORGET_LOOKS_MAX.min(self.len());
        let mut looked = 0;
        while self.len() > self.max && budget > 0 {
            budget -= 1;
            looked += 1;
            let Some((oldest, value)) = self.entries.pop_front() else {
                break;
            };
            let was = self.base;
            self.base += 1;
            let part = self.part(oldest);
            if keep(&value) {
                let position = self.base + self.entries.len() as u64;
                let moved = self.parts[part].relocate(oldest, was, position);
                debug_assert!(moved, "index and queue agree");
                self.entries.push_back((oldest, value));
            } else {
                let removed = self.parts[part].remove(oldest, was);
                debug_assert!(removed, "index and queue agree");
            }
        }
        looked
    }
}

/// Reads ahead, for a loop over a batch's requests, what the next `TOUCH_AHEAD` requests will
/// probe in the maps of millions, each time the loop reaches the end of what was read. Each
/// probe is a cache miss. One request at a time, each waits for the one before, and one read
/// a request ahead still stalls the loop behind it; reads issued together, with nothing
/// between them, overlap. A whole batch read first would be pushed out of cache again before
/// the last of thousands is reached.
#[derive(Default)]
struct TouchAhead {
    /// Ids before this have been read ahead.
    next: usize,
    read: usize,
}

const TOUCH_AHEAD: usize = 64;

impl TouchAhead {
    /// At request `at` of `ids`: once every request read ahead is reached, reads the next.
    fn to(&mut self, at: usize, ids: &[u128], mut touch: impl FnMut(u128) -> usize) {
        if at < self.next {
            return;
        }
        let end = (at + TOUCH_AHEAD).min(ids.len());
        for &id in &ids[at.min(end)..end] {
            self.read += touch(id);
        }
        self.next = end;
    }
}

impl Drop for TouchAhead {
    fn drop(&mut self) {
        // The reads are for their effect on the cache: keep the compiler from dropping them.
        std::hint::black_box(self.read);
    }
}

/// Entries a remembered map looks at to forget, at most, per insert.
pub const FORGET_LOOKS_MAX: usize = 16;

/// What to do with a command's ledger outcomes once its wave is applied.
#[derive(Clone, Copy, Debug)]
enum Finish {
    CreateAccount,
    Fund,
    Authorize(Original),
    Capture(RequestId, Amount),
    Reverse(RequestId),
    Sale(Original),
    Refund(RequestId, Original, Amount, Currency),
    CloseWindow,
}

struct Planned {
    slot: usize,
    id: RequestId,
    fingerprint: u64,
    events: std::ops::Range<usize>,
    finish: Finish,
    number: Option<(String, AccountId)>,
}

#[derive(Default)]
struct Wave {
    events: Vec<Event>,
    planned: Vec<Planned>,
    keys: HashSet<u128>,
    /// Repeats of a request planned in this wave, answered once it is applied.
    repeats: Vec<Repeat>,
}

/// A repeat waiting for the answer to the request it repeats.
struct Repeat {
    slot: usize,
    id: RequestId,
    fingerprint: u64,
    /// The slot of the request it repeats.
    of: usize,
}

/// The state machine.
pub struct Core {
    ledger: Arc<Ledger>,
    config: CoreConfig,
    routes: Arc<RouteTable>,
    participants: HashMap<ParticipantId, Participant>,
    limits: HashMap<(ParticipantId, Currency), Amount>,
    directory: HashMap<String, AccountId>,
    originals: Remembered<Original>,
    /// Reversals that came before their authorization: the id and who sent it.
    early_reversals: EarlyReversals,
    responses: Remembered<Kept>,
    clearing: Clearing,
    /// The settlement of a close in the wave being applied.
    closing: Option<(Settlement, Arc<FeeSchedule>)>,
    /// Batches executed, to take turns growing the remembered maps.
    batches: usize,
    /// Scratch for `execute` and `replay`, empty between calls; kept so that its buffers
    /// are not grown again for every batch.
    wave: Wave,
}

/// The result of a batch: a response per item, and the commands to log (empty if nothing
/// changed). Responses may leave only once the log holds the commands.
pub struct Executed {
    pub responses: Vec<Response>,
    pub logged: Vec<Logged>,
}

impl Core {
    pub fn new(ledger: Arc<Ledger>, config: CoreConfig, routes: Arc<RouteTable>) -> Self {
        let max = config.requests_remembered_max.max(1);
        Core {
            ledger,
            routes,
            participants: HashMap::default(),
            limits: HashMap::default(),
            directory: HashMap::default(),
            originals: Remembered::new(max),
            early_reversals: EarlyReversals::new(max),
            responses: Remembered::new(max),
            clearing: Clearing::new(config.windows_kept),
            closing: None,
            batches: 0,
            wave: Wave::default(),
            config,
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Reserves, and writes once, the memory for every request the core and the ledger will
    /// remember (`requests_remembered_max`, the ledger's `transfers_remembered_max`), so that
    /// no table grows and no fresh page is touched while serving: growing them as traffic
    /// arrives costs the stage about a quarter of its time and its longest batches. Returns
    /// the bytes reserved. Takes seconds for millions; the state is unchanged.
    pub fn preallocate(&mut self) -> usize {
        let zero = ParticipantId(0);
        let original = Original {
            fingerprint: u64::MAX,
            acquirer: zero,
            issuer: zero,
            card: AccountId(0),
            merchant: AccountId(0),
            currency: Currency::from_numeric(156).expect("CNY"),
            amount: Amount(0),
            captured: Amount(0),
            refunded: Amount(0),
            stage: Stage::Held,
        };
        // Fillers not all zeros, or the compiler may turn filling a fresh allocation into
        // `calloc`, which leaves the pages untouched (`Chunked::preallocate`).
        let kept = Kept {
            fingerprint: u64::MAX,
            code: Code::Approved,
            reason: Reason::NONE,
            body: KeptBody::None,
        };
        self.originals.preallocate(&original)
            + self.responses.preallocate(&kept)
            + self.ledger.preallocate()
    }

    /// Swaps in a new routing table; requests already executed are unaffected.
    pub fn set_routes(&mut self, routes: Arc<RouteTable>) {
        self.routes = routes;
    }

    pub fn net_debit_cap(&self, participant: ParticipantId, currency: Currency) -> Option<Amount> {
        self.limits.get(&(participant, currency)).copied()
    }

    pub fn clearing(&self) -> &Clearing {
        &self.clearing
    }

    /// Closed windows whose reports are to be written (each is handed out once).
    pub fn take_reports(&mut self) -> Vec<Arc<crate::clearing::WindowDetails>> {
        std::mem::take(&mut self.clearing.reports)
    }

    /// The switch's own close of the open window, for a schedule: an item to execute.
    pub fn scheduled_close(&self) -> Item {
        let window = self.clearing.open.id;
        Item {
            id: RequestId(crate::clearing::scheduled_close_id(window)),
            who: SYSTEM,
            request: Request::CloseWindow { window },
        }
    }

    /// Executes a batch of live requests at `now`.
    pub fn execute(&mut self, items: Vec<Item>, now: Timestamp) -> Executed {
        self.execute_prepared(items.into_iter().map(Prepared::new).collect(), now)
    }

    /// `execute` for items whose fingerprints are already computed.
    pub fn execute_prepared(&mut self, items: Vec<Prepared>, now: Timestamp) -> Executed {
        let ids: Vec<u128> = items.iter().map(|p| p.item.id.0).collect();
        let mut ahead = TouchAhead::default();
        let mut out: Vec<Option<Response>> = vec![None; items.len()];
        let mut logged = Vec::new();
        let mut wave = std::mem::take(&mut self.wave);
        let (mut closes_logged, mut closes) = (0, 0);
        let reports_room = self
            .clearing
            .reports_max
            .saturating_sub(self.clearing.reports.len());
        for (slot, prepared) in items.into_iter().enumerate() {
            ahead.to(slot, &ids, |id| self.touch_remembered(id));
            let Prepared {
                item: Item { id, who, request },
                fingerprint,
            } = prepared;
            if id.0 == 0 || id.0 == u128::MAX || (is_system_id(id.0) && who != SYSTEM) {
                out[slot] = Some(Response::new(
                    id,
                    Code::InvalidTransaction,
                    Reason::INVALID_ID,
                ));
                continue;
            }
            let command = match request {
                Request::BalanceInquiry { target } => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.balance(id, who, &target));
                    continue;
                }
                Request::TransferStatus { of } => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.status(id, who, of));
                    continue;
                }
                Request::Echo { payload } => {
                    out[slot] = Some(Response::approved(id, Body::Echo(payload)));
                    continue;
                }
                Request::ListWindows => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.list_windows(id, who));
                    continue;
                }
                Request::WindowReport { window } => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.window_report(id, who, window));
                    continue;
                }
                request => {
                    // A repeat hears its original answer, whatever the routes or the limits
                    // say now: an approved sale is not answered 92 after a route goes away.
                    if let Some(response) = self.remembered(id, fingerprint) {
                        out[slot] = Some(response);
                        continue;
                    }
                    match self.resolve(id, request, now) {
                        Ok(command) => command,
                        Err(response) => {
                            out[slot] = Some(response);
                            continue;
                        }
                    }
                }
            };
            // The batch's log record stays within the log's record limit, and its closes'
            // reports within what the stage hands to the report writer after the batch.
            if let Command::CloseWindow { .. } = command {
                let len = crate::journal::logged_len(&command);
                if closes_logged + len > self.config.closes_logged_bytes_max
                    || closes >= reports_room
                {
                    out[slot] = Some(Response::new(id, Code::SystemBusy, Reason::OVERLOADED));
                    continue;
                }
                closes_logged += len;
                closes += 1;
            }
            // Checked here and not in `plan`, so that a log written under a larger bound
            // replays whole.
            if let Command::CreateParticipant(CreateParticipant { participant, .. }) = &command
                && self.participants.len() >= self.config.participants_max
                && !self.participants.contains_key(participant)
            {
                out[slot] = Some(Response::new(id, Code::SystemBusy, Reason::OVERLOADED));
                continue;
            }
            if self.submit(
                &mut wave,
                slot,
                id,
                who,
                fingerprint,
                &command,
                now,
                &mut out,
            ) {
                logged.push(Logged {
                    id,
                    who,
                    fingerprint,
                    command,
                });
            }
        }
        self.flush(&mut wave, now, &mut out);
        self.wave = wave;
        self.grow_ahead();
        let responses = out
            .into_iter()
            .map(|r| r.expect("every item is answered"))
            .collect();
        Executed { responses, logged }
    }

    /// Reads the index entries of the remembered maps that looking `id` up and remembering it
    /// will probe and write (see `TouchAhead`).
    fn touch_remembered(&self, id: u128) -> usize {
        self.responses.touch(id) + self.originals.touch(id)
    }

    fn grow_ahead(&mut self) {
        self.batches = self.batches.wrapping_add(1);
        self.originals.grow_ahead(self.batches);
        self.responses.grow_ahead(self.batches);
    }

    /// Re-executes logged commands (recovery). Gives the same state as when they were logged.
    pub fn replay(&mut self, commands: &[Logged], now: Timestamp) {
        let mut out: Vec<Option<Response>> = vec![None; commands.len()];
        let mut wave = std::mem::take(&mut self.wave);
        for (slot, c) in commands.iter().enumerate() {
            // Never a repeat: the log holds only what was not remembered when it ran.
            if let Some(response) = self.remembered(c.id, c.fingerprint) {
                out[slot] = Some(response);
                continue;
            }
            self.submit(
                &mut wave,
                slot,
                c.id,
                c.who,
                c.fingerprint,
                &c.command,
                now,
                &mut out,
            );
        }
        self.flush(&mut wave, now, &mut out);
        self.wave = wave;
    }

    /// Expires due holds through the ledger; true if anything expired (and must be logged).
    pub fn expire(&mut self, now: Timestamp) -> bool {
        self.expire_holds(now) > 0
    }

    /// `expire`, returning how many holds expired.
    pub fn expire_holds(&mut self, now: Timestamp) -> usize {
        if self.ledger.next_expiry().is_none_or(|at| at > now) {
            return 0;
        }
        let expired = self.ledger.expire(now);
        for e in &expired {
            if let Some(original) = self.originals.get_mut(&e.id.0) {
                if original.stage == Stage::Held {
                    let (issuer, currency, amount) =
                        (original.issuer, original.currency, original.amount);
                    self.clearing.release(issuer, currency, amount.0);
                }
                original.stage = Stage::Expired;
            }
        }
        expired.len()
    }

    /// Routing and field checks that need no state change: number to account, expiry.
    fn resolve(
        &self,
        id: RequestId,
        request: Request,
        now: Timestamp,
    ) -> Result<Command, Response> {
        let reject = |code, reason| Err(Response::new(id, code, reason));
        Ok(match request {
            Request::Authorize {
                number,
                merchant,
                amount,
                currency,
                expiry_seconds,
            } => {
                let card = self.route(id, &number)?;
                let seconds = match expiry_seconds {
                    0 => self.config.default_expiry_seconds,
                    s if s > self.config.expiry_seconds_max => {
                        return reject(Code::InvalidTransaction, Reason::NONE);
                    }
                    s => s,
                };
                let expires_at =
                    Timestamp(now.0.saturating_add(u64::from(seconds) * 1_000_000_000));
                Command::Authorize {
                    card,
                    merchant,
                    amount,
                    currency,
                    expires_at,
                }
            }
            Request::Sale {
                number,
                merchant,
                amount,
                currency,
            } => Command::Sale {
                card: self.route(id, &number)?,
                merchant,
                amount,
                currency,
            },
            // Only the roles version 1 knows (issuer, acquirer), and a name.
            Request::CreateParticipant(CreateParticipant { roles, .. })
                if roles & !ROLES_KNOWN != 0 =>
            {
                return reject(Code::InvalidTransaction, Reason::RESERVED_BITS);
            }
            Request::CreateParticipant(CreateParticipant { name, .. })
                if name.is_empty() || name.len() > NAME_LEN_MAX =>
            {
                return reject(Code::InvalidTransaction, Reason::NONE);
            }
            Request::CreateAccount(CreateAccount {
                number: Some(number),
                ..
            }) if !is_valid_number(&number) => {
                return reject(Code::InvalidCardOrAccount, Reason::UNKNOWN_NUMBER);
            }
            Request::CreateParticipant(p) => Command::CreateParticipant(p),
            Request::CreateAccount(a) => Command::CreateAccount(a),
            Request::Fund(f) => Command::Fund(f),
            Request::SetLimits(l) => Command::SetLimits(l),
            Request::Capture(c) => Command::Capture(c),
            Request::Reverse(r) => Command::Reverse(r),
            Request::CloseWindow { window } => Command::CloseWindow {
                window: if window == 0 {
                    self.clearing.open.id
                } else {
                    window
                },
                fees: self.config.fees.clone(),
            },
            Request::Refund(r) => Command::Refund(r),
            Request::BalanceInquiry { .. }
            | Request::TransferStatus { .. }
            | Request::ListWindows
            | Request::WindowReport { .. }
            | Request::Echo { .. } => {
                unreachable!("queries are answered before resolution")
            }
        })
    }

    /// A card or wallet number to its account: 92 without a route, 14 without an account.
    fn route(&self, id: RequestId, number: &str) -> Result<AccountId, Response> {
        if !is_valid_number(number) {
            return Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::UNKNOWN_NUMBER,
            ));
        }
        let Some(route) = self.routes.route(number) else {
            return Err(Response::new(id, Code::CannotRoute, Reason::NO_ROUTE));
        };
        let account = route
            .pooled_account
            .or_else(|| self.directory.get(number).copied())
            .ok_or_else(|| Response::new(id, Code::InvalidCardOrAccount, Reason::UNKNOWN_NUMBER))?;
        match self.ledger.account(account) {
            Some(a) if a.owner == route.issuer => {
                if self.has_role(route.issuer, ROLE_ISSUER) {
                    Ok(account)
                } else {
                    Err(Response::new(id, Code::CannotRoute, Reason::ROLE_MISSING))
                }
            }
            Some(_) => Err(Response::new(id, Code::CannotRoute, Reason::NO_ROUTE)),
            None => Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::UNKNOWN_NUMBER,
            )),
        }
    }

    /// Plans one command into the wave (or answers it at once). Returns whether it is new
    /// (and so must be logged). The caller has answered repeats of remembered request ids.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        wave: &mut Wave,
        slot: usize,
        id: RequestId,
        who: Identity,
        fingerprint: u64,
        command: &Command,
        now: Timestamp,
        out: &mut [Option<Response>],
    ) -> bool {
        // The caller has answered a repeat of a remembered request (`remembered`) without
        // closing the wave: it is not logged, so a replay would not close it there either, and
        // must build the same state (forgetting order too).
        if wave.keys.contains(&id.0)
            && let Some(planned) = wave.planned.iter().find(|p| p.id == id)
        {
            wave.repeats.push(Repeat {
                slot,
                id,
                fingerprint,
                of: planned.slot,
            });
            return false;
        }
        let conflict = command.original().is_some_and(|o| wave.keys.contains(&o.0))
            || wave.keys.contains(&id.0)
            || command.is_admin()
            || wave.events.len() + 3 > self.ledger.config().batch_len_max;
        if conflict {
            self.flush(wave, now, out);
        }
        // The first window opens with the first command logged (so replay agrees).
        self.clearing.start(now);
        match self.plan(id, who, command, now) {
            Err(response) => {
                self.remember(id, fingerprint, &response);
                out[slot] = Some(response);
            }
            Ok((events, finish, number)) => {
                let start = wave.events.len();
                let n = events.len();
                for (i, op) in events.into_iter().enumerate() {
                    wave.events.push(Event {
                        op,
                        linked: i + 1 < n,
                    });
                }
                wave.keys.insert(id.0);
                if let Some(original) = command.original() {
                    wave.keys.insert(original.0);
                }
                wave.planned.push(Planned {
                    slot,
                    id,
                    fingerprint,
                    events: start..wave.events.len(),
                    finish,
                    number,
                });
                if command.is_admin() {
                    self.flush(wave, now, out);
                }
            }
        }
        true
    }

    /// What a repeat of request `id` with `fingerprint` hears, if `id` is remembered: the
    /// original answer, or 94 if the repeat is not the same request.
    fn remembered(&self, id: RequestId, fingerprint: u64) -> Option<Response> {
        let (original_fingerprint, response) = match self.responses.get(&id.0) {
            Some(kept) => (kept.fingerprint, kept.response(id)),
            None => {
                let o = self.originals.get(&id.0).filter(|o| o.fingerprint != 0)?;
                let body = Body::Transfer {
                    transfer: TransferId(id.0),
                    amount: o.amount,
                    currency: o.currency,
                };
                (o.fingerprint, Response::approved(id, body))
            }
        };
        Some(if original_fingerprint == fingerprint {
            response
        } else {
            Response::new(id, Code::DuplicateWithOtherFields, Reason::ID_REUSED)
        })
    }

    fn remember(&mut self, id: RequestId, fingerprint: u64, response: &Response) {
        // Nothing was done: a retry with the same id is executed normally.
        if matches!(response.code, Code::SystemBusy | Code::SystemMalfunction) {
            return;
        }
        self.responses
            .insert(id.0, Kept::new(fingerprint, response), |_| false);
    }

    /// Whether `who` may read `account`'s balance: its owner, or the admin (oversight).
    fn may_read(&self, who: Identity, account: &Account) -> bool {
        who.admin || account.owner == who.participant
    }

    fn has_role(&self, participant: ParticipantId, role: u8) -> bool {
        self.participants
            .get(&participant)
            .is_some_and(|p| p.roles & role != 0)
    }

    /// Decides a command against the state: ledger events to apply, or an answer now.
    #[allow(clippy::type_complexity)]
    fn plan(
        &mut self,
        id: RequestId,
        who: Identity,
        command: &Command,
        now: Timestamp,
    ) -> Result<(Vec<Op>, Finish, Option<(String, AccountId)>), Response> {
        let reject = |code, reason| Err(Response::new(id, code, reason));
        if command.is_admin() && !who.admin {
            return reject(Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        let transfer = |debit, credit, amount, currency, kind| {
            Op::Transfer(Transfer {
                id: TransferId(id.0),
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                currency,
                kind,
                code: 0,
            })
        };
        match command {
            Command::CreateParticipant(CreateParticipant {
                participant,
                name,
                roles,
            }) => {
                if !participant.is_valid() {
                    return reject(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
                }
                let new = Participant {
                    name: name.clone(),
                    roles: *roles,
                };
                match self.participants.get(participant) {
                    Some(existing) if *existing == new => {}
                    Some(_) => return reject(Code::DuplicateWithOtherFields, Reason::ID_REUSED),
                    None => {
                        self.participants.insert(*participant, new);
                    }
                }
                Err(Response::approved(id, Body::None))
            }
            Command::SetLimits(SetLimits {
                participant,
                currency,
                net_debit_cap,
            }) => {
                if !self.participants.contains_key(participant) {
                    return reject(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
                }
                self.limits
                    .insert((*participant, *currency), *net_debit_cap);
                Err(Response::approved(id, Body::None))
            }
            Command::CreateAccount(CreateAccount {
                account,
                owner,
                currency,
                flags,
                number,
            }) => {
                if !self.participants.contains_key(owner) {
                    return reject(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
                }
                if is_system_account(*account) {
                    return reject(Code::InvalidCardOrAccount, Reason::NONE);
                }
                let number = match number {
                    None => None,
                    Some(n) if !is_valid_number(n) => {
                        return reject(Code::InvalidCardOrAccount, Reason::UNKNOWN_NUMBER);
                    }
                    Some(n) => match self.directory.get(n) {
                        Some(existing) if existing != account => {
                            return reject(Code::InvalidTransaction, Reason::ALREADY_EXISTS);
                        }
                        _ => Some((n.clone(), *account)),
                    },
                };
                let op = Op::CreateAccount(NewAccount {
                    id: *account,
                    currency: *currency,
                    owner: *owner,
                    flags: *flags,
                });
                Ok((vec![op], Finish::CreateAccount, number))
            }
            Command::Fund(Fund {
                account,
                amount,
                currency,
            }) => {
                let Some(target) = self.ledger.account(*account) else {
                    return reject(Code::InvalidCardOrAccount, Reason::NONE);
                };
                let funding = funding_account(target.owner, *currency);
                let mut ops = Vec::with_capacity(2);
                if self.ledger.account(funding).is_none() {
                    ops.push(Op::CreateAccount(NewAccount {
                        id: funding,
                        currency: *currency,
                        owner: target.owner,
                        flags: AccountFlags::empty(),
                    }));
                }
                ops.push(transfer(
                    funding,
                    *account,
                    *amount,
                    *currency,
                    TransferKind::Single,
                ));
                Ok((ops, Finish::Fund, None))
            }
            Command::Authorize {
                card,
                merchant,
                amount,
                currency,
                expires_at,
            } => {
                let original = self.acquire(id, who, *card, *merchant, *amount, *currency)?;
                // A reversal that came first voids the acquirer's own late authorization; another
                // participant's reversal of the same id does not.
                if self.early_reversals.voids(id.0, who.participant) {
                    return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED);
                }
                self.reserve(id, &original)?;
                let op = transfer(
                    *card,
                    *merchant,
                    *amount,
                    *currency,
                    TransferKind::Pending {
                        expires_at: *expires_at,
                    },
                );
                Ok((
                    vec![op],
                    Finish::Authorize(Original {
                        stage: Stage::Held,
                        ..original
                    }),
                    None,
                ))
            }
            Command::Sale {
                card,
                merchant,
                amount,
                currency,
            } => {
                let original = self.acquire(id, who, *card, *merchant, *amount, *currency)?;
                self.reserve(id, &original)?;
                let op = transfer(*card, *merchant, *amount, *currency, TransferKind::Single);
                Ok((
                    vec![op],
                    Finish::Sale(Original {
                        stage: Stage::Sold,
                        captured: *amount,
                        ..original
                    }),
                    None,
                ))
            }
            Command::Capture(Capture {
                authorization,
                amount,
            }) => {
                let original = self.original_of(id, who, *authorization)?;
                match original.stage {
                    Stage::Held => {}
                    Stage::Captured => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED);
                    }
                    Stage::Sold => return reject(Code::InvalidTransaction, Reason::NONE),
                    Stage::Reversed => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED);
                    }
                    Stage::Expired => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_EXPIRED);
                    }
                }
                let amount = *amount;
                let op = transfer(
                    AccountId(0),
                    AccountId(0),
                    amount,
                    original.currency,
                    TransferKind::Post {
                        pending_id: TransferId(authorization.0),
                    },
                );
                Ok((vec![op], Finish::Capture(*authorization, amount), None))
            }
            Command::Reverse(Reverse { authorization }) => {
                let Some(original) = self.originals.get(&authorization.0).copied() else {
                    if let Some(record) = self.ledger.transfer(TransferId(authorization.0)) {
                        return Err(self.reverse_forgotten(id, who, &record));
                    }
                    // Before (or without) its authorization: remember it, so that a late
                    // authorization with that id from the same participant is declined
                    // instead of held.
                    self.early_reversals
                        .insert(authorization.0, who.participant);
                    return Err(Response::new(
                        id,
                        Code::Approved,
                        Reason::AUTHORIZATION_REVERSED,
                    ));
                };
                if original.acquirer != who.participant {
                    return reject(Code::NotPermitted, Reason::NOT_OWNER);
                }
                match original.stage {
                    Stage::Held => {}
                    // The hold is already gone: what the reversal asks for is true.
                    Stage::Reversed | Stage::Expired => {
                        return Err(Response::approved(id, Body::None));
                    }
                    Stage::Captured | Stage::Sold => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED);
                    }
                }
                let op = transfer(
                    AccountId(0),
                    AccountId(0),
                    Amount::ZERO,
                    original.currency,
                    TransferKind::Void {
                        pending_id: TransferId(authorization.0),
                    },
                );
                Ok((vec![op], Finish::Reverse(*authorization), None))
            }
            Command::Refund(Refund {
                original: original_id,
                amount,
                currency,
            }) => {
                let original = self.original_of(id, who, *original_id)?;
                if !matches!(original.stage, Stage::Captured | Stage::Sold) {
                    return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_NOT_FOUND);
                }
                if *currency != original.currency {
                    return reject(Code::InvalidTransaction, Reason::CURRENCY_MISMATCH);
                }
                let refundable = original.captured.0 - original.refunded.0;
                if *amount == Amount::ZERO || amount.0 > refundable {
                    return reject(Code::InvalidAmount, Reason::EXCEEDS_REFUNDABLE);
                }
                let op = transfer(
                    original.merchant,
                    original.card,
                    *amount,
                    *currency,
                    TransferKind::Single,
                );
                Ok((
                    vec![op],
                    Finish::Refund(*original_id, original, *amount, *currency),
                    None,
                ))
            }
            Command::CloseWindow { window, fees } => self.plan_close(id, *window, fees, now),
        }
    }

    /// A reversal of a payment the switch has forgotten (it was resolved: live holds are never
    /// forgotten) but the ledger still holds: the ledger says what became of it. A captured
    /// authorization or a sale is not reversed, and is not taken for an early reversal either.
    fn reverse_forgotten(&self, id: RequestId, who: Identity, record: &TransferRecord) -> Response {
        let acquirer = self
            .ledger
            .account(record.credit_account_id)
            .map(|a| a.owner);
        if acquirer != Some(who.participant) {
            return Response::new(id, Code::NotPermitted, Reason::NOT_OWNER);
        }
        match record.state {
            TransferState::PendingVoided { .. } | TransferState::PendingExpired => {
                Response::approved(id, Body::None)
            }
            TransferState::Pending => Response::new(id, Code::SystemMalfunction, Reason::INTERNAL),
            _ => Response::new(id, Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED),
        }
    }

    /// Nets the open window into settlement transfers (one linked chain, creating settlement
    /// accounts as needed), or answers at once: a closed window is already settled.
    #[allow(clippy::type_complexity)]
    fn plan_close(
        &mut self,
        id: RequestId,
        window: u64,
        fees: &Arc<FeeSchedule>,
        now: Timestamp,
    ) -> Result<(Vec<Op>, Finish, Option<(String, AccountId)>), Response> {
        let open = self.clearing.open.id;
        if window > open {
            return Err(Response::new(
                id,
                Code::InvalidTransaction,
                Reason::WINDOW_NOT_FOUND,
            ));
        }
        if window < open {
            return Err(Response::approved(id, Body::WindowClosed(window)));
        }
        let settlement = self.clearing.settle(fees).map_err(|e| {
            tracing::error!(window, "clearing: {e}");
            Response::new(id, Code::SystemMalfunction, Reason::INTERNAL)
        })?;
        let mut ops = Vec::new();
        let mut created = HashSet::default();
        for (index, t) in settlement.transfers.iter().enumerate() {
            let from = settlement_account(t.from, t.currency);
            let to = settlement_account(t.to, t.currency);
            for (account, owner) in [(from, t.from), (to, t.to)] {
                if self.ledger.account(account).is_none() && created.insert(account.0) {
                    ops.push(Op::CreateAccount(NewAccount {
                        id: account,
                        currency: t.currency,
                        owner,
                        flags: AccountFlags::empty(),
                    }));
                }
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            ops.push(Op::Transfer(Transfer {
                id: TransferId(settlement_transfer_id(window, index)),
                debit_account_id: from,
                credit_account_id: to,
                amount: Amount(t.amount),
                currency: t.currency,
                kind: TransferKind::Single,
                code: 0,
            }));
        }
        if ops.len() > self.ledger.config().batch_len_max {
            tracing::error!(
                window,
                events = ops.len(),
                "clearing: the settlement does not fit in one ledger batch"
            );
            return Err(Response::new(id, Code::SystemMalfunction, Reason::INTERNAL));
        }
        if ops.is_empty() {
            self.clearing.close(now, settlement, fees.clone());
            return Err(Response::approved(id, Body::WindowClosed(window)));
        }
        self.closing = Some((settlement, fees.clone()));
        Ok((ops, Finish::CloseWindow, None))
    }

    /// Counts a new authorization or sale against its issuer's net debit cap: declined 61 if
    /// what the issuer owes in the open window, plus its live holds, plus this would exceed
    /// it; otherwise reserved until the ledger decides.
    fn reserve(&mut self, id: RequestId, original: &Original) -> Result<(), Response> {
        let cap = self
            .limits
            .get(&(original.issuer, original.currency))
            .copied()
            .unwrap_or(Amount::ZERO);
        if cap != Amount::ZERO {
            let exposure = self.clearing.exposure(original.issuer, original.currency);
            let after = exposure
                .total()
                .saturating_add(i128::from(original.amount.0));
            if after > i128::from(cap.0) {
                return Err(Response::new(id, Code::ExceedsLimit, Reason::NET_DEBIT_CAP));
            }
        }
        self.clearing
            .hold(original.issuer, original.currency, original.amount.0);
        Ok(())
    }

    /// Reads back from the ledger what a capture, sale or refund moved, for reconciliation.
    fn record_moved(&mut self, id: RequestId, kind: Kind) {
        let Some(record) = self.ledger.transfer(TransferId(id.0)) else {
            return;
        };
        let owner = |account| self.ledger.account(account).map(|a| a.owner);
        if let (Some(debited), Some(credited)) = (
            owner(record.debit_account_id),
            owner(record.credit_account_id),
        ) {
            self.clearing.moved(
                kind,
                debited,
                credited,
                record.event.currency,
                record.event.amount.0,
            );
        }
    }

    fn list_windows(&self, id: RequestId, who: Identity) -> Response {
        if !who.admin {
            return Response::new(id, Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        // A listed window is its record only: its positions are not copied.
        let record = |w: &Window| Window {
            positions: Vec::new(),
            ..*w
        };
        let mut windows = vec![record(&self.clearing.open_view())];
        windows.extend(
            self.clearing
                .closed
                .iter()
                .rev()
                .take(WINDOWS_LISTED_MAX - 1)
                .map(record),
        );
        Response::approved(id, Body::Windows(windows))
    }

    fn window_report(&self, id: RequestId, who: Identity, window: u64) -> Response {
        if !who.admin {
            return Response::new(id, Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        let found = if window == self.clearing.open.id {
            // Live positions: what a close now would settle, with the fees a close would use.
            match self.clearing.open_report(&self.config.fees) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(window, "clearing: {e}");
                    return Response::new(id, Code::SystemMalfunction, Reason::INTERNAL);
                }
            }
        } else {
            self.clearing.find(window).cloned()
        };
        match found {
            Some(w) => Response::approved(id, Body::WindowReport(w)),
            None => Response::new(id, Code::InvalidTransaction, Reason::WINDOW_NOT_FOUND),
        }
    }

    /// Checks for a new authorization or sale: the merchant is the sender's own, and the sender
    /// is an acquirer. The admin identity is no exception: it acts for its own participant only.
    fn acquire(
        &self,
        id: RequestId,
        who: Identity,
        card: AccountId,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    ) -> Result<Original, Response> {
        let Some(m) = self.ledger.account(merchant) else {
            return Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::ACCOUNT_NOT_FOUND,
            ));
        };
        if m.owner != who.participant {
            return Err(Response::new(id, Code::NotPermitted, Reason::NOT_OWNER));
        }
        if !self.has_role(m.owner, ROLE_ACQUIRER) {
            return Err(Response::new(id, Code::NotPermitted, Reason::ROLE_MISSING));
        }
        let Some(c) = self.ledger.account(card) else {
            return Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::ACCOUNT_NOT_FOUND,
            ));
        };
        Ok(Original {
            fingerprint: 0,
            acquirer: m.owner,
            issuer: c.owner,
            card,
            merchant,
            currency,
            amount,
            captured: Amount::ZERO,
            refunded: Amount::ZERO,
            stage: Stage::Held,
        })
    }

    fn original_of(
        &self,
        id: RequestId,
        who: Identity,
        of: RequestId,
    ) -> Result<Original, Response> {
        let original = self.originals.get(&of.0).copied().ok_or_else(|| {
            Response::new(
                id,
                Code::InvalidTransaction,
                Reason::AUTHORIZATION_NOT_FOUND,
            )
        })?;
        if original.acquirer != who.participant {
            return Err(Response::new(id, Code::NotPermitted, Reason::NOT_OWNER));
        }
        Ok(original)
    }

    /// Applies the wave's events in one ledger batch and answers its requests.
    fn flush(&mut self, wave: &mut Wave, now: Timestamp, out: &mut [Option<Response>]) {
        if wave.planned.is_empty() {
            return;
        }
        let outcomes = match self.ledger.apply(&wave.events, now) {
            Ok(outcomes) => outcomes,
            // Waves are cut below the ledger's batch limit (see `submit`).
            Err(e) => unreachable!("wave over the ledger's batch limit: {e}"),
        };
        // A wave of one read-ahead's worth is still in cache from the request loop's; a larger
        // one is read again as it is remembered (none read: nothing to read ahead).
        let ids: Vec<u128> = if wave.planned.len() > TOUCH_AHEAD {
            wave.planned.iter().map(|p| p.id.0).collect()
        } else {
            Vec::new()
        };
        let mut ahead = TouchAhead::default();
        for (k, planned) in wave.planned.drain(..).enumerate() {
            ahead.to(k, &ids, |id| self.touch_remembered(id));
            let results = &outcomes[planned.events.clone()];
            // The member that decided the chain: the first failure, or the last success.
            let outcome = results
                .iter()
                .copied()
                .find(|o| !o.is_success() && *o != Outcome::LinkedEventFailed)
                .unwrap_or_else(|| *results.last().expect("a planned command has events"));
            let response = self.finish(
                planned.id,
                planned.fingerprint,
                planned.finish,
                outcome,
                planned.number,
                now,
            );
            // An approved authorization or sale is answered from its original (see
            // `Original::fingerprint`).
            let in_original = planned.fingerprint != 0
                && response.code == Code::Approved
                && matches!(planned.finish, Finish::Authorize(_) | Finish::Sale(_));
            if !in_original {
                self.remember(planned.id, planned.fingerprint, &response);
            }
            out[planned.slot] = Some(response);
        }
        for repeat in wave.repeats.drain(..) {
            out[repeat.slot] = Some(match self.remembered(repeat.id, repeat.fingerprint) {
                Some(response) => response,
                // Not remembered (busy): nothing was done, and the repeat hears the same.
                None => out[repeat.of]
                    .clone()
                    .expect("the repeated request was answered"),
            });
        }
        wave.events.clear();
        wave.keys.clear();
    }

    fn finish(
        &mut self,
        id: RequestId,
        fingerprint: u64,
        finish: Finish,
        outcome: Outcome,
        number: Option<(String, AccountId)>,
        now: Timestamp,
    ) -> Response {
        if !outcome.is_success() {
            // A hold due but not yet expired by the clock's tick is gone all the same, as the
            // reversal asks: it hears what it would hear after the tick (see `plan`).
            if outcome == Outcome::PendingTransferExpired && matches!(finish, Finish::Reverse(_)) {
                return Response::approved(id, Body::None);
            }
            match finish {
                // The reservation against the net debit cap goes with the request.
                Finish::Authorize(o) | Finish::Sale(o) => {
                    self.clearing.release(o.issuer, o.currency, o.amount.0)
                }
                Finish::CloseWindow => {
                    self.closing = None;
                    tracing::error!(?outcome, "clearing: the settlement batch failed");
                }
                _ => {}
            }
            return Response::from_outcome(id, outcome);
        }
        let transfer = TransferId(id.0);
        if outcome == Outcome::Exists
            && let Finish::Authorize(_)
            | Finish::Sale(_)
            | Finish::Capture(..)
            | Finish::Reverse(_)
            | Finish::Refund(..) = finish
        {
            return self.done_before(id, finish);
        }
        let moved = |amount: Amount, currency: Currency| {
            Response::approved(
                id,
                Body::Transfer {
                    transfer,
                    amount,
                    currency,
                },
            )
        };
        match finish {
            Finish::CreateAccount => {
                if let Some((number, account)) = number {
                    // The account exists already with the same fields: a number it is not
                    // bound to is another field, not a second binding.
                    if outcome == Outcome::Exists && self.directory.get(&number) != Some(&account) {
                        return Response::new(
                            id,
                            Code::DuplicateWithOtherFields,
                            Reason::ID_REUSED,
                        );
                    }
                    self.directory.insert(number, account);
                }
                Response::approved(id, Body::None)
            }
            Finish::Fund => match self.ledger.transfer(transfer) {
                Some(r) => moved(r.event.amount, r.event.currency),
                None => Response::approved(id, Body::None),
            },
            Finish::Authorize(original) => {
                let original = Original {
                    fingerprint,
                    ..original
                };
                self.originals
                    .insert(id.0, original, |o| o.stage == Stage::Held);
                moved(original.amount, original.currency)
            }
            Finish::Sale(original) => {
                let original = Original {
                    fingerprint,
                    ..original
                };
                self.originals
                    .insert(id.0, original, |o| o.stage == Stage::Held);
                let (o, amount) = (original, original.amount);
                self.clearing.release(o.issuer, o.currency, amount.0);
                self.clearing
                    .clear(Kind::Purchase, o.acquirer, o.issuer, o.currency, amount.0);
                self.record_moved(id, Kind::Purchase);
                moved(amount, o.currency)
            }
            Finish::CloseWindow => {
                let window = self.clearing.open.id;
                if let Some((settlement, fees)) = self.closing.take() {
                    self.clearing.close(now, settlement, fees);
                }
                Response::approved(id, Body::WindowClosed(window))
            }
            Finish::Capture(authorization, amount) => {
                let o = self
                    .originals
                    .get_mut(&authorization.0)
                    .expect("a live hold's authorization is never forgotten");
                o.stage = Stage::Captured;
                o.captured = amount;
                let o = *o;
                self.clearing.release(o.issuer, o.currency, o.amount.0);
                self.clearing
                    .clear(Kind::Purchase, o.acquirer, o.issuer, o.currency, amount.0);
                self.record_moved(id, Kind::Purchase);
                moved(amount, o.currency)
            }
            Finish::Reverse(authorization) => {
                let o = self
                    .originals
                    .get_mut(&authorization.0)
                    .expect("a live hold's authorization is never forgotten");
                o.stage = Stage::Reversed;
                let (amount, currency, issuer) = (o.amount, o.currency, o.issuer);
                self.clearing.release(issuer, currency, amount.0);
                moved(amount, currency)
            }
            Finish::Refund(original, o, amount, currency) => {
                if let Some(o) = self.originals.get_mut(&original.0) {
                    o.refunded = Amount(o.refunded.0 + amount.0);
                }
                self.clearing
                    .clear(Kind::Refund, o.acquirer, o.issuer, currency, amount.0);
                self.record_moved(id, Kind::Refund);
                moved(amount, currency)
            }
        }
    }

    /// The ledger still holds this very transfer, with the same fields, though the switch has
    /// forgotten the request (the two forget on their own bounds): it was done before. Its
    /// repeat hears the approval again and changes nothing: no second clearing, no refundable
    /// amount set back, no hold remembered again. What it reserved against the net debit cap
    /// goes back.
    fn done_before(&mut self, id: RequestId, finish: Finish) -> Response {
        if let Finish::Authorize(o) | Finish::Sale(o) = finish {
            self.clearing.release(o.issuer, o.currency, o.amount.0);
        }
        match self.ledger.transfer(TransferId(id.0)) {
            Some(r) => Response::approved(
                id,
                Body::Transfer {
                    transfer: TransferId(id.0),
                    amount: r.event.amount,
                    currency: r.event.currency,
                },
            ),
            None => Response::approved(id, Body::None),
        }
    }

    fn balance(&self, id: RequestId, who: Identity, target: &Target) -> Response {
        let account = match target {
            Target::Account(account) => *account,
            Target::Number(number) => match self.route(id, number) {
                Ok(account) => account,
                Err(response) => return response,
            },
        };
        let Some(a) = self.ledger.account(account) else {
            return Response::new(id, Code::InvalidCardOrAccount, Reason::NONE);
        };
        // Only the owner may ask (by number, that is the issuer the number routes to), and the
        // admin.
        if !self.may_read(who, &a) {
            return Response::new(id, Code::NotPermitted, Reason::NOT_OWNER);
        }
        Response::approved(
            id,
            Body::Balance {
                account,
                currency: a.currency,
                balances: a.balances,
            },
        )
    }

    /// What became of an earlier request, for its sender and the admin. Anything else is "not
    /// found" (an approved answer with no status), so that request ids do not leak.
    fn status(&self, id: RequestId, who: Identity, of: RequestId) -> Response {
        let not_found = Response::approved(id, Body::None);
        if let Some(o) = self.originals.get(&of.0) {
            // The acquirer sent it (`acquire`: the merchant is the sender's).
            if !(who.admin || o.acquirer == who.participant) {
                return not_found;
            }
            return Response::approved(
                id,
                Body::Status(Status {
                    transfer: TransferId(of.0),
                    stage: o.stage,
                    currency: o.currency,
                    amount: o.amount,
                    // A sale keeps its amount as `captured` (what refunds may take back), but
                    // the protocol reports captures of authorizations only.
                    captured: if o.stage == Stage::Sold {
                        Amount::ZERO
                    } else {
                        o.captured
                    },
                    refunded: o.refunded,
                }),
            );
        }
        // Captures, reversals, refunds and funds: the transfer each made under its own id,
        // while the request's answer is remembered. The ledger forgets on its own bound, shard
        // by shard, so it may still hold the transfer of a sale forgotten here, without what
        // was refunded of it: that is "not found", not a sale reported unrefunded. (Originals
        // restored from a version 1 snapshot keep their answers among the responses; one of
        // those forgotten before its answer would still be reported from the ledger.)
        let Some(kept) = self.responses.get(&of.0) else {
            return not_found;
        };
        let KeptBody::OwnTransfer { amount, currency } = kept.body else {
            return not_found;
        };
        if kept.code != Code::Approved {
            return not_found;
        }
        let Some(record) = self.ledger.transfer(TransferId(of.0)) else {
            return not_found;
        };
        let owner = |account| self.ledger.account(account).map(|a| a.owner);
        // Who sent it, from the accounts: a capture or a reversal credits, and a refund debits,
        // the merchant, and only its acquirer may send them; only the admin funds.
        let (sender, stage) = match (record.event.kind, record.state) {
            (TransferKind::Post { .. }, TransferState::Posted) => {
                (owner(record.credit_account_id), Stage::Sold)
            }
            (TransferKind::Void { .. }, TransferState::Voided) => {
                (owner(record.credit_account_id), Stage::Reversed)
            }
            (TransferKind::Single, TransferState::Posted)
                if is_system_account(record.debit_account_id) =>
            {
                (None, Stage::Sold)
            }
            (TransferKind::Single, TransferState::Posted) => {
                (owner(record.debit_account_id), Stage::Sold)
            }
            _ => return not_found,
        };
        if !(who.admin || sender == Some(who.participant)) {
            return not_found;
        }
        Response::approved(
            id,
            Body::Status(Status {
                transfer: TransferId(of.0),
                stage,
                currency,
                amount,
                captured: Amount::ZERO,
                refunded: Amount::ZERO,
            }),
        )
    }
}

// Snapshots of the switch: the layout and its encoding are in `core/snapshot.rs`. Core state
// added above must be added there too (`snapshot::capture` and `snapshot::restore` name every
// field of `Core`, so the compiler points at both).
mod early;
pub mod snapshot;

use early::EarlyReversals;

impl Core {
    /// The core's own state (the ledger's is `Ledger::capture`), encoded for a snapshot. Call
    /// it between batches: the state must be exactly what the log holds.
    pub fn capture(&self) -> snapshot::CoreCapture {
        snapshot::capture(self)
    }

    /// Rebuilds a core, its ledger included, from a snapshot payload (`snapshot::Capture`);
    /// returns it with the last log sequence the snapshot covers, which must equal
    /// `file_sequence`.
    pub fn restore(
        bytes: &[u8],
        file_sequence: u64,
        config: snapshot::RestoreConfig,
    ) -> Result<(Core, u64), snapshot::SnapshotError> {
        snapshot::restore(bytes, file_sequence, config)
    }
}

#[cfg(test)]
mod kept_tests {
    use super::*;

    fn transfer(transfer: u128) -> Body {
        Body::Transfer {
            transfer: TransferId(transfer),
            amount: Amount(1234),
            currency: Currency::from_numeric(156).expect("CNY"),
        }
    }

    /// A remembered response is the response given, whatever its body: a repeat must hear
    /// exactly what the request heard.
    #[test]
    fn a_kept_response_is_the_response_given() {
        let id = RequestId(77);
        let bodies = [
            Body::None,
            transfer(77),
            // A transfer that is not the request's own is kept whole.
            transfer(78),
            Body::Echo(vec![1, 2, 3]),
            Body::WindowClosed(9),
            Body::Status(Status {
                transfer: TransferId(5),
                stage: Stage::Captured,
                currency: Currency::from_numeric(392).expect("JPY"),
                amount: Amount(10),
                captured: Amount(7),
                refunded: Amount(2),
            }),
        ];
        for body in bodies {
            for (code, reason) in [
                (Code::Approved, Reason::NONE),
                (Code::InsufficientFunds, Reason(3)),
            ] {
                let given = Response {
                    id,
                    code,
                    reason,
                    body: body.clone(),
                };
                let kept = Kept::new(42, &given);
                assert_eq!(kept.fingerprint, 42);
                assert_eq!(kept.response(id), given);
            }
        }
        assert!(
            std::mem::size_of::<Kept>() <= 32,
            "a remembered response stays small: {} bytes",
            std::mem::size_of::<Kept>()
        );
    }
}

#[cfg(test)]
mod order_tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::{ORDER_CHUNK, Order};

    proptest! {
        /// The chunked queue is a queue: against a `VecDeque`, over runs of pushes and pops
        /// long enough to fill, empty and refill several chunks.
        #[test]
        fn order_is_a_queue(runs in prop::collection::vec((0..3 * ORDER_CHUNK, 0..3 * ORDER_CHUNK), 1..6)) {
            let (mut order, mut model) = (Order::default(), VecDeque::new());
            let mut next = 0u128;
            for (pushes, pops) in runs {
                for _ in 0..pushes {
                    order.push_back(next);
                    model.push_back(next);
                    next += 1;
                }
                for _ in 0..pops {
                    prop_assert_eq!(order.pop_front(), model.pop_front());
                }
                prop_assert_eq!(order.len(), model.len());
                prop_assert!(order.iter().eq(model.iter()));
                prop_assert!((&order).into_iter().eq(model.iter()));
                for i in 0..model.len() + 2 {
                    prop_assert_eq!(order.get(i), model.get(i), "at {}", i);
                }
                if let Some(i) = pops.checked_rem(model.len().max(1)) && i < model.len() {
                    *order.get_mut(i).expect("held") += 1_000_000;
                    model[i] += 1_000_000;
                    prop_assert!(order.iter().eq(model.iter()));
                }
            }
        }
    }
}

#[cfg(test)]
mod remembered_model {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::{FORGET_LOOKS_MAX, Remembered};

    /// What `Remembered` is: entries oldest first, a new key at the end, a held key's value
    /// replaced in place, and forgetting that looks at no more than `FORGET_LOOKS_MAX` of
    /// the oldest while more than `max` are held, moving those kept to the end.
    #[derive(Default)]
    struct Model {
        entries: VecDeque<(u128, u64)>,
    }

    impl Model {
        fn insert(
            &mut self,
            max: usize,
            key: u128,
            value: u64,
            keep: impl Fn(&u64) -> bool,
        ) -> usize {
            match self.entries.iter_mut().find(|(k, _)| *k == key) {
                Some((_, held)) => *held = value,
                None => self.entries.push_back((key, value)),
            }
            let mut looked = 0;
            let budget = FORGET_LOOKS_MAX.min(self.entries.len());
            while self.entries.len() > max && looked < budget {
                looked += 1;
                let Some(oldest) = self.entries.pop_front() else {
                    break;
                };
                if keep(&oldest.1) {
                    self.entries.push_back(oldest);
                }
            }
            looked
        }
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("switch_remembered.txt", 64, "/../../"))]

        /// Against the model, over inserts of new and held keys, some kept (odd values),
        /// across bounds small enough to forget all the time; with memory reserved ahead or
        /// not.
        #[test]
        fn remembered_is_its_model(
            max in 0usize..40,
            inserts in prop::collection::vec((0u128..120, 0u64..1_000), 1..400),
            preallocate in any::<bool>(),
        ) {
            let mut m: Remembered<u64> = Remembered::new(max);
            if preallocate {
                prop_assert!(m.preallocate(&7) > 0);
            }
            let mut model = Model::default();
            let keep = |v: &u64| v % 2 == 1;
            for (key, value) in inserts {
                prop_assert_eq!(m.insert(key, value, keep), model.insert(max, key, value, keep));
                prop_assert_eq!(m.len(), model.entries.len());
                let held: Vec<_> = m.iter().map(|(k, v)| (k, *v)).collect();
                prop_assert!(held.iter().copied().eq(model.entries.iter().copied()));
                for key in 0..120u128 {
                    let want = model.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
                    prop_assert_eq!(m.get(&key), want, "key {}", key);
                    prop_assert_eq!(m.contains_key(&key), want.is_some());
                }
            }
        }
    }
}

#[cfg(test)]
mod remembered_tests {
    use super::{FORGET_LOOKS_MAX, REMEMBERED_PARTS, Remembered};

    /// When the oldest entries are all kept, an insert looks at a bounded number of them
    /// (not the whole map), keeps them all, and forgets what it may once that comes round.
    #[test]
    fn forgetting_past_kept_entries_does_bounded_work() {
        let max = 100;
        let mut m: Remembered<bool> = Remembered::new(max);
        let keep = |kept: &bool| *kept;
        for key in 0..5_000u128 {
            assert!(m.insert(key, true, keep) <= FORGET_LOOKS_MAX);
        }
        assert_eq!(m.len(), 5_000, "kept entries are never forgotten");
        let mut most = 0;
        for key in 5_000..40_000u128 {
            assert!(m.insert(key, false, keep) <= FORGET_LOOKS_MAX);
            most = most.max(m.len());
        }
        // Looking at 16 an insert and adding one, the others wait at most one pass over the
        // kept entries: about one for every 15 kept.
        assert!(most <= 5_000 + 5_000 / (FORGET_LOOKS_MAX - 1) + 1, "{most}");
        assert!((0..5_000).all(|key| m.contains_key(&key)));
        // The others reached are forgotten: all but the newest few hundred.
        assert!((5_000..39_000).all(|key| !m.contains_key(&key)));
        assert!(m.contains_key(&39_999));
    }

    /// Preallocating keeps the entries and their forgetting order, and remembering past the
    /// bound from then on (forgetting as it goes) never grows a part again.
    #[test]
    fn a_preallocated_map_keeps_its_entries_and_never_grows() {
        // 500 a part: sized once, a part would be more than half full, and grow.
        let max = 500 * REMEMBERED_PARTS;
        let mut m: Remembered<u64> = Remembered::new(max);
        for key in 0..3_000u128 {
            m.insert(key, key as u64 * 3, |_| false);
        }
        assert!(m.preallocate(&0) > 0);
        let reserved = m.capacity();
        assert!(reserved > max, "{reserved}");
        assert_eq!(
            m.iter().map(|(key, _)| key).collect::<Vec<_>>(),
            (0..3_000).collect::<Vec<_>>()
        );
        for key in 0..3_000u128 {
            assert_eq!(m.get(&key), Some(&(key as u64 * 3)));
        }
        for key in 3_000..10 * max as u128 {
            m.insert(key, key as u64 * 3, |_| false);
            if key % 64 == 0 {
                m.grow_ahead(key as usize);
            }
            assert_eq!(m.capacity(), reserved, "grew at {key}");
        }
        assert_eq!(m.len(), max);
        assert!(m.get(&0).is_none());
        assert_eq!(
            m.get(&(10 * max as u128 - 1)),
            Some(&((10 * max as u64 - 1) * 3))
        );
    }
}
