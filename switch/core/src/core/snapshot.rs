//! The switch's whole state as bytes, and back: a snapshot that lets the log before it go.
//!
//! A snapshot is the ledger (its own snapshot encoding, `ledger::Capture`) and the core's own
//! state (participants, limits, the number directory, and the remembered originals, early
//! reversals and responses in their forgetting order), in tagged, length-prefixed sections, with
//! the last log sequence it covers. Layout: `docs/WAL-FORMAT.md`, "Switch snapshot payload".
//!
//! `Capture::take` runs on the ledger stage between batches, so the state it sees is exactly
//! the log up to `sequence`. It copies the ledger (`Ledger::capture`: a memcpy of each shard)
//! and encodes the core's maps straight into pre-sized buffers: one sequential pass over each
//! map, which costs about what copying it would. `Capture::encode` (the ledger's part, the
//! slow one) runs afterwards on another thread. `restore` checks everything it reads, never
//! panics, and names the section and payload offset of what it refuses.

use std::sync::Arc;

use ledger::{AccountId, Amount, Balances, Currency, Ledger, ParticipantId, TransferId};

use crate::clearing::{Clearing, Exposure, OpenWindow, Window};
use ledger::clearing::{PairKey, PairTotals};

use super::{
    Body, Core, CoreConfig, EarlyReversals, HashMap, Kept, Order, Original, Participant,
    REMEMBERED_PARTS, Remembered, RequestId, Response, Stage, Status,
};
use crate::codes::{Code, Reason};
use crate::journal::NAME_LEN_MAX;
use crate::routing::{RouteTable, is_valid_number};

/// First bytes of every switch snapshot payload.
pub const MAGIC: [u8; 8] = *b"SWCHSNAP";
/// The payload format this build writes. It also reads version 1, whose originals carry no
/// fingerprint (their answers are among the remembered responses instead).
pub const VERSION: u32 = 2;

/// Section tags, in the order they are written. Each appears once; a reader refuses a tag it
/// does not know (it could not hold that state) and one missing.
pub mod section {
    pub const LEDGER: u16 = 1;
    pub const PARTICIPANTS: u16 = 2;
    pub const LIMITS: u16 = 3;
    pub const DIRECTORY: u16 = 4;
    pub const ORIGINALS: u16 = 5;
    pub const EARLY_REVERSALS: u16 = 6;
    pub const RESPONSES: u16 = 7;
    pub const CLEARING: u16 = 8;
    pub const EARLY_REVERSAL_SENDERS: u16 = 9;
    pub const EARLY_REVERSALS_BY_SENDER: u16 = 10;

    pub(super) fn name(tag: u16) -> &'static str {
        match tag {
            LEDGER => "ledger",
            PARTICIPANTS => "participants",
            LIMITS => "limits",
            DIRECTORY => "directory",
            ORIGINALS => "originals",
            EARLY_REVERSALS => "early reversals",
            RESPONSES => "responses",
            CLEARING => "clearing",
            EARLY_REVERSAL_SENDERS => "early reversal senders",
            EARLY_REVERSALS_BY_SENDER => "early reversals by sender",
            _ => "unknown",
        }
    }

    /// Every section this build reads, ascending. A section added later goes here and, if
    /// snapshots written before it must stay readable (they must: the log they cover may be
    /// gone), is read as empty when missing rather than added to `REQUIRED`.
    pub(super) const KNOWN: [u16; 10] = [
        LEDGER,
        PARTICIPANTS,
        LIMITS,
        DIRECTORY,
        ORIGINALS,
        EARLY_REVERSALS,
        RESPONSES,
        CLEARING,
        EARLY_REVERSAL_SENDERS,
        EARLY_REVERSALS_BY_SENDER,
    ];

    /// Sections a snapshot must have.
    pub(super) const REQUIRED: [u16; 7] = [
        LEDGER,
        PARTICIPANTS,
        LIMITS,
        DIRECTORY,
        ORIGINALS,
        EARLY_REVERSALS,
        RESPONSES,
    ];
}

const HEADER_LEN: usize = 24;
const SECTION_HEADER_LEN: usize = 10;

/// Why snapshot bytes could not become a switch.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("switch snapshot payload offset {offset}{}: {what}", in_section(*.section))]
    Malformed {
        offset: usize,
        section: Option<u16>,
        what: String,
    },
    #[error(
        "switch snapshot format version {0} is not supported (this build reads 1 to {VERSION})"
    )]
    Version(u32),
    #[error("switch snapshot covers sequence {in_payload}, but its file says {in_file}")]
    Sequence { in_payload: u64, in_file: u64 },
    #[error("switch snapshot section ledger (payload offset {offset}): {source}")]
    Ledger {
        offset: usize,
        source: ledger::SnapshotError,
    },
}

fn in_section(section: Option<u16>) -> String {
    match section {
        Some(tag) => format!(" (section {tag}, {})", section::name(tag)),
        None => String::new(),
    }
}

/// The core's own state, encoded section by section (`Core::capture`).
pub struct CoreCapture {
    sections: Vec<(u16, Vec<u8>)>,
}

/// A consistent copy of the whole switch at one log sequence, ready to encode.
pub struct Capture {
    sequence: u64,
    ledger: ledger::Capture,
    core: CoreCapture,
}

impl Capture {
    /// Copies the switch's state, which must be exactly the log up to and including
    /// `sequence`: call it between batches, on the thread that owns the core.
    pub fn take(core: &Core, sequence: u64) -> Capture {
        Capture {
            sequence,
            ledger: core.ledger().capture(),
            core: core.capture(),
        }
    }

    /// The last log sequence the snapshot covers.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The snapshot payload. Consumes the capture, freeing each part once it is written.
    pub fn encode(self) -> Vec<u8> {
        let Capture {
            sequence,
            ledger,
            core,
        } = self;
        let mut ledger_bytes = Vec::new();
        ledger.encode(&mut ledger_bytes);
        drop(ledger);
        let mut sections = Vec::with_capacity(1 + core.sections.len());
        sections.push((section::LEDGER, ledger_bytes));
        sections.extend(core.sections);
        let total: usize = sections
            .iter()
            .map(|(_, b)| SECTION_HEADER_LEN + b.len())
            .sum();
        let mut out = Vec::with_capacity(HEADER_LEN + total);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for (tag, bytes) in sections {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }
}

/// What a restore needs besides the bytes: the same configuration a fresh start would use.
#[derive(Clone)]
pub struct RestoreConfig {
    pub ledger: ledger::Config,
    pub core: CoreConfig,
    pub routes: Arc<RouteTable>,
}

impl RestoreConfig {
    /// The configuration `core` was made with (a fresh core, before recovery).
    pub fn like(core: &Core) -> RestoreConfig {
        RestoreConfig {
            ledger: core.ledger.config().clone(),
            core: core.config.clone(),
            routes: core.routes.clone(),
        }
    }
}

/// Rebuilds the switch from a payload that `Capture::encode` wrote; returns the core and the
/// last log sequence it covers. `file_sequence` is the sequence the file says it covers.
pub fn restore(
    bytes: &[u8],
    file_sequence: u64,
    config: RestoreConfig,
) -> Result<(Core, u64), SnapshotError> {
    let mut r = Reader::new(bytes, None);
    let magic = r.take(8, "magic")?;
    if magic != MAGIC {
        return Err(r.bad(0, "not a switch snapshot (bad magic)".into()));
    }
    let version = r.u32("version")?;
    if !(1..=VERSION).contains(&version) {
        return Err(SnapshotError::Version(version));
    }
    let sequence = r.u64("sequence")?;
    if sequence != file_sequence {
        return Err(SnapshotError::Sequence {
            in_payload: sequence,
            in_file: file_sequence,
        });
    }
    let count_at = r.at;
    let count = r.u32("section count")?;
    let mut sections: Vec<(u16, usize, &[u8])> = Vec::new();
    for _ in 0..count {
        let at = r.at;
        let tag = r.u16("section tag")?;
        let len = r.u64("section length")?;
        let len = usize::try_from(len)
            .map_err(|_| r.bad(at, format!("section length {len} is too large")))?;
        if !section::KNOWN.contains(&tag) {
            return Err(r.bad(
                at,
                format!("unknown section tag {tag} (written by a newer build?)"),
            ));
        }
        if sections.last().is_some_and(|(last, _, _)| *last >= tag) {
            return Err(r.bad(at, format!("section {tag} out of order or repeated")));
        }
        let body_at = r.at;
        let body = r.take(len, "section body")?;
        sections.push((tag, body_at, body));
    }
    if r.at != bytes.len() {
        return Err(r.bad(
            r.at,
            format!("{} bytes after the last section", bytes.len() - r.at),
        ));
    }
    let missing: Vec<&str> = section::REQUIRED
        .iter()
        .filter(|t| !sections.iter().any(|(tag, _, _)| tag == *t))
        .map(|t| section::name(*t))
        .collect();
    if !missing.is_empty() {
        return Err(r.bad(
            count_at,
            format!("sections missing: {}", missing.join(", ")),
        ));
    }
    // A section added later is read with `optional(tag)`, as empty when it is `None`.
    let optional = |tag: u16| {
        sections
            .iter()
            .find(|(t, _, _)| *t == tag)
            .map(|(_, at, body)| Reader {
                buf: body,
                at: 0,
                base: *at,
                section: Some(tag),
            })
    };
    let section = |tag: u16| optional(tag).expect("every required section is present");
    let ledger_section = section(section::LEDGER);
    let ledger = Ledger::restore(config.ledger, ledger_section.buf).map_err(|source| {
        SnapshotError::Ledger {
            offset: ledger_section.base,
            source,
        }
    })?;
    let max = config.core.requests_remembered_max.max(1);
    let participants = decode_participants(section(section::PARTICIPANTS))?;
    let limits = decode_limits(section(section::LIMITS))?;
    let directory = decode_directory(section(section::DIRECTORY))?;
    let originals = decode_remembered(section(section::ORIGINALS), max, |key, r| {
        decode_original(key, r, version)
    })?;
    // Written before section 10: in sections 6 and 9, in the order they were remembered.
    let mut early = decode_remembered_keys(section(section::EARLY_REVERSALS), usize::MAX)?;
    if let Some(r) = optional(section::EARLY_REVERSAL_SENDERS) {
        decode_senders(r, &mut early)?;
    }
    let early_reversals = match optional(section::EARLY_REVERSALS_BY_SENDER) {
        Some(r) if early.len() > 0 => {
            return Err(r.bad(
                0,
                format!(
                    "{} early reversals in section 6 as well: they belong here",
                    early.len()
                ),
            ));
        }
        Some(r) => decode_early_reversals(r, max)?,
        None => EarlyReversals::from_ordered(max, early.iter().map(|(id, by)| (*by, id))).map_err(
            |i| section(section::EARLY_REVERSALS).bad(8 + 16 * i, "an early reversal twice".into()),
        )?,
    };
    let responses = decode_remembered(section(section::RESPONSES), max, decode_response)?;
    let clearing = match optional(section::CLEARING) {
        Some(r) => decode_clearing(r, config.core.windows_kept)?,
        None => Clearing::new(config.core.windows_kept),
    };
    // A struct literal, not `..`: a field added to `Core` must be added to the snapshot too.
    let core = Core {
        ledger: Arc::new(ledger),
        config: config.core,
        routes: config.routes,
        participants,
        limits,
        directory,
        originals,
        early_reversals,
        responses,
        clearing,
        closing: None,
        batches: 0,
        wave: Default::default(),
    };
    Ok((core, sequence))
}

/// Encodes the core's own state. An exhaustive destructuring: a field added to `Core` must be
/// considered here.
pub(super) fn capture(core: &Core) -> CoreCapture {
    let Core {
        ledger: _,
        config: _,
        routes: _,
        participants,
        limits,
        directory,
        originals,
        early_reversals,
        responses,
        clearing,
        closing: _,
        batches: _,
        wave: _,
    } = core;
    let mut p = Vec::with_capacity(4 + participants.len() * (10 + NAME_LEN_MAX));
    p.extend_from_slice(&(participants.len() as u32).to_le_bytes());
    let mut sorted: Vec<_> = participants.iter().collect();
    sorted.sort_unstable_by_key(|(id, _)| **id);
    for (id, participant) in sorted {
        p.extend_from_slice(&id.0.to_le_bytes());
        put_str(&participant.name, &mut p);
        p.push(participant.roles);
    }
    let mut l = Vec::with_capacity(8 + limits.len() * 18);
    l.extend_from_slice(&(limits.len() as u64).to_le_bytes());
    for ((participant, currency), cap) in limits {
        l.extend_from_slice(&participant.0.to_le_bytes());
        l.extend_from_slice(&currency.numeric().to_le_bytes());
        l.extend_from_slice(&cap.0.to_le_bytes());
    }
    let mut d = Vec::with_capacity(8 + directory.len() * 36);
    d.extend_from_slice(&(directory.len() as u64).to_le_bytes());
    for (number, account) in directory {
        put_str(number, &mut d);
        d.extend_from_slice(&account.0.to_le_bytes());
    }
    CoreCapture {
        sections: vec![
            (section::PARTICIPANTS, p),
            (section::LIMITS, l),
            (section::DIRECTORY, d),
            (
                section::ORIGINALS,
                encode_remembered(originals, ORIGINAL_LEN, Some(encode_original)),
            ),
            // Empty: section 10 holds them, with their senders.
            (section::EARLY_REVERSALS, 0u64.to_le_bytes().to_vec()),
            (
                section::RESPONSES,
                encode_remembered(responses, RESPONSE_LEN_TYPICAL, Some(encode_response)),
            ),
            (section::CLEARING, encode_clearing(clearing)),
            (
                section::EARLY_REVERSALS_BY_SENDER,
                encode_early_reversals(early_reversals),
            ),
        ],
    }
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    // Participant names and numbers are checked against these bounds before they are kept.
    assert!(
        s.len() <= NAME_LEN_MAX,
        "string of {} bytes in state",
        s.len()
    );
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A remembered map: count, the keys in forgetting order (oldest first), then (if the map has
/// values) every entry, key and value. This writes the entries in forgetting order too, but a
/// reader takes them in any order; `restore` checks that the two lists agree.
fn encode_remembered<V>(
    m: &Remembered<V>,
    value_len: usize,
    put: Option<impl Fn(u128, &V, &mut Vec<u8>)>,
) -> Vec<u8> {
    let entry_len = if put.is_some() { 16 + value_len } else { 0 };
    let mut out = Vec::with_capacity(8 + m.len() * (16 + entry_len));
    out.extend_from_slice(&(m.len() as u64).to_le_bytes());
    for (key, _) in m.iter() {
        out.extend_from_slice(&key.to_le_bytes());
    }
    if let Some(put) = put {
        for (key, value) in m.iter() {
            out.extend_from_slice(&key.to_le_bytes());
            put(key, value, &mut out);
        }
    }
    out
}

/// The keys in forgetting order.
fn decode_order(r: &mut Reader<'_>) -> Result<Order, SnapshotError> {
    let count_at = r.at;
    let count = r.u64("count")?;
    // Every key takes 16 bytes: refuse a count the section cannot hold before allocating.
    let count = usize::try_from(count)
        .ok()
        .filter(|c| c.checked_mul(16).is_some_and(|b| b <= r.remaining()))
        .ok_or_else(|| r.bad(count_at, format!("count {count} does not fit the section")))?;
    let mut order = Order::default();
    for _ in 0..count {
        order.push_back(r.u128("key")?);
    }
    Ok(order)
}

/// A map sized for `count` entries, whose keys are those of `order`, in that order, each
/// placed but without its entry yet.
fn placed<V>(r: &Reader<'_>, max: usize, order: &Order) -> Result<Remembered<V>, SnapshotError> {
    let count = order.len();
    let mut m = Remembered::new(max);
    for part in &mut m.parts {
        part.reserve(count / REMEMBERED_PARTS + count / REMEMBERED_PARTS / 4 + 1);
    }
    for (i, &key) in order.iter().enumerate() {
        let part = m.part(key);
        let key_at = |p: u64| order.get(usize::try_from(p).ok()?).copied();
        if m.parts[part].insert(key, i as u64, 0, key_at).is_err() {
            return Err(r.bad(8 + 16 * i, format!("key {key} appears twice")));
        }
    }
    Ok(m)
}

/// A remembered set (no values): the forgetting order is all there is.
/// A remembered set: the keys, each with who sent it not known yet (participant 0).
fn decode_remembered_keys(
    mut r: Reader<'_>,
    max: usize,
) -> Result<Remembered<ParticipantId>, SnapshotError> {
    let order = decode_order(&mut r)?;
    let mut m = placed(&r, max, &order)?;
    r.end()?;
    for &key in &order {
        m.entries.push_back((key, ParticipantId(0)));
    }
    Ok(m)
}

/// Who sent each early reversal, in snapshots written before section 10: count u64, then per
/// reversal (in the order of section 6) its authorization id u128 and the sender u64 (0: not
/// known, or the admin in an earlier build). Snapshots written before this section leave every
/// sender 0.
fn decode_senders(
    mut r: Reader<'_>,
    m: &mut Remembered<ParticipantId>,
) -> Result<(), SnapshotError> {
    let count_at = r.at;
    let count = r.u64("count")?;
    if count != m.len() as u64 {
        return Err(r.bad(
            count_at,
            format!("{count} senders for {} early reversals", m.len()),
        ));
    }
    for _ in 0..count {
        let at = r.at;
        let key = r.u128("authorization id")?;
        let by = ParticipantId(r.u64("sender")?);
        let Some(slot) = m.get_mut(&key) else {
            return Err(r.bad(at, format!("sender of {key:#x}, not an early reversal")));
        };
        *slot = by;
    }
    r.end()
}

/// Early reversals: count u64, then per reversal the sender u64 (the participant that sent it)
/// and the authorization id u128; by sender ascending, each sender's oldest first.
fn encode_early_reversals(m: &EarlyReversals) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + m.len() * 24);
    out.extend_from_slice(&(m.len() as u64).to_le_bytes());
    for (by, id) in m.ordered() {
        out.extend_from_slice(&by.0.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn decode_early_reversals(mut r: Reader<'_>, max: usize) -> Result<EarlyReversals, SnapshotError> {
    let count_at = r.at;
    let count = r.u64("count")?;
    let count = usize::try_from(count)
        .ok()
        .filter(|c| c.checked_mul(24).is_some_and(|b| b <= r.remaining()))
        .ok_or_else(|| r.bad(count_at, format!("count {count} does not fit the section")))?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let by = ParticipantId(r.u64("sender")?);
        entries.push((by, r.u128("authorization id")?));
    }
    r.end()?;
    EarlyReversals::from_ordered(max, entries)
        .map_err(|i| r.bad(count_at + 8 + 24 * i, "an early reversal twice".into()))
}

fn decode_remembered<V>(
    mut r: Reader<'_>,
    max: usize,
    value: impl Fn(u128, &mut Reader<'_>) -> Result<V, SnapshotError>,
) -> Result<Remembered<V>, SnapshotError> {
    let order = decode_order(&mut r)?;
    let mut m = placed(&r, max, &order)?;
    // This writer puts the entries in forgetting order, so each goes straight to the end of
    // the queue. From the first entry out of place on (a snapshot of an earlier build), each
    // waits in its key's place among those still to come: `pushed` is where they start.
    let mut placing: Option<(usize, Vec<Option<V>>)> = None;
    for &next in &order {
        let at = r.at;
        let key = r.u128("entry key")?;
        let v = value(key, &mut r)?;
        if placing.is_none() && key == next {
            m.entries.push_back((key, v));
            continue;
        }
        let pushed = m.entries.len();
        let (pushed, values) =
            placing.get_or_insert_with(|| (pushed, (pushed..order.len()).map(|_| None).collect()));
        // The queue is not filled yet: the forgetting order holds the key of each place.
        let key_at = |p: u64| order.get(usize::try_from(p).ok()?).copied();
        let place = m.parts[m.part(key)].find(key, 0, key_at);
        let Some(place) = place.and_then(|p| usize::try_from(p).ok()) else {
            return Err(r.bad(at, format!("entry {key} is not in the forgetting order")));
        };
        let slot = place.checked_sub(*pushed).and_then(|p| values.get_mut(p));
        if slot.is_none_or(|slot| slot.replace(v).is_some()) {
            return Err(r.bad(at, format!("entry {key} appears twice")));
        }
    }
    r.end()?;
    if let Some((pushed, values)) = placing {
        // As many entries as keys, each in a place of its own: every place is taken.
        for (&key, v) in order.iter().skip(pushed).zip(values) {
            let Some(v) = v else {
                return Err(r.bad(
                    0,
                    format!("the forgetting order names {key}, which has no entry"),
                ));
            };
            m.entries.push_back((key, v));
        }
    }
    Ok(m)
}

const ORIGINAL_LEN: usize = 83;

fn encode_original(_key: u128, o: &Original, out: &mut Vec<u8>) {
    out.extend_from_slice(&o.fingerprint.to_le_bytes());
    out.extend_from_slice(&o.acquirer.0.to_le_bytes());
    out.extend_from_slice(&o.issuer.0.to_le_bytes());
    out.extend_from_slice(&o.card.0.to_le_bytes());
    out.extend_from_slice(&o.merchant.0.to_le_bytes());
    out.extend_from_slice(&o.currency.numeric().to_le_bytes());
    out.extend_from_slice(&o.amount.0.to_le_bytes());
    out.extend_from_slice(&o.captured.0.to_le_bytes());
    out.extend_from_slice(&o.refunded.0.to_le_bytes());
    out.push(stage_tag(o.stage));
}

fn decode_original(
    _key: u128,
    r: &mut Reader<'_>,
    version: u32,
) -> Result<Original, SnapshotError> {
    // Version 1 kept every answer among the responses.
    let fingerprint = if version >= 2 {
        r.u64("fingerprint")?
    } else {
        0
    };
    let acquirer = ParticipantId(r.u64("acquirer")?);
    let issuer = ParticipantId(r.u64("issuer")?);
    let card = AccountId(r.u128("card")?);
    let merchant = AccountId(r.u128("merchant")?);
    let currency = r.currency()?;
    let amount = Amount(r.u64("amount")?);
    let at = r.at;
    let captured = Amount(r.u64("captured")?);
    let refunded = Amount(r.u64("refunded")?);
    // The core subtracts these (refundable = captured - refunded): check the order here.
    if captured > amount || refunded > captured {
        return Err(r.bad(
            at,
            format!(
                "captured {} and refunded {} do not fit amount {}",
                captured.0, refunded.0, amount.0
            ),
        ));
    }
    let stage = r.stage()?;
    Ok(Original {
        fingerprint,
        acquirer,
        issuer,
        card,
        merchant,
        currency,
        amount,
        captured,
        refunded,
        stage,
    })
}

fn stage_tag(stage: Stage) -> u8 {
    match stage {
        Stage::Held => 0,
        Stage::Captured => 1,
        Stage::Reversed => 2,
        Stage::Expired => 3,
        Stage::Sold => 4,
    }
}

/// Fingerprint, code, reason and a body holding a transfer: what most responses take.
const RESPONSE_LEN_TYPICAL: usize = 8 + 1 + 1 + 1 + 16 + 8 + 2;

const BODY_NONE: u8 = 0;
const BODY_TRANSFER: u8 = 1;
const BODY_BALANCE: u8 = 2;
const BODY_STATUS: u8 = 3;
const BODY_ECHO: u8 = 4;
const BODY_WINDOW_CLOSED: u8 = 5;
const BODY_WINDOWS: u8 = 6;
const BODY_WINDOW_REPORT: u8 = 7;
/// Echo payloads are never remembered today; if one ever is, this bounds what is read back.
const ECHO_LEN_MAX: usize = u16::MAX as usize;

fn encode_response(key: u128, kept: &Kept, out: &mut Vec<u8>) {
    let (fingerprint, r) = (&kept.fingerprint, &kept.response(RequestId(key)));
    // The response's id is the key: it is not written twice.
    assert_eq!(
        r.id.0, key,
        "a remembered response is filed under its own id"
    );
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.push(r.code.as_u8());
    out.push(r.reason.0);
    match &r.body {
        Body::None => out.push(BODY_NONE),
        Body::Transfer {
            transfer,
            amount,
            currency,
        } => {
            out.push(BODY_TRANSFER);
            out.extend_from_slice(&transfer.0.to_le_bytes());
            out.extend_from_slice(&amount.0.to_le_bytes());
            out.extend_from_slice(&currency.numeric().to_le_bytes());
        }
        Body::Balance {
            account,
            currency,
            balances,
        } => {
            out.push(BODY_BALANCE);
            out.extend_from_slice(&account.0.to_le_bytes());
            out.extend_from_slice(&currency.numeric().to_le_bytes());
            for v in [
                balances.debits_pending,
                balances.debits_posted,
                balances.credits_pending,
                balances.credits_posted,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Body::Status(s) => {
            out.push(BODY_STATUS);
            out.extend_from_slice(&s.transfer.0.to_le_bytes());
            out.push(stage_tag(s.stage));
            out.extend_from_slice(&s.currency.numeric().to_le_bytes());
            out.extend_from_slice(&s.amount.0.to_le_bytes());
            out.extend_from_slice(&s.captured.0.to_le_bytes());
            out.extend_from_slice(&s.refunded.0.to_le_bytes());
        }
        Body::Echo(payload) => {
            assert!(payload.len() <= ECHO_LEN_MAX, "echo payloads are bounded");
            out.push(BODY_ECHO);
            out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            out.extend_from_slice(payload);
        }
        Body::WindowClosed(window) => {
            out.push(BODY_WINDOW_CLOSED);
            out.extend_from_slice(&window.to_le_bytes());
        }
        Body::Windows(windows) => {
            out.push(BODY_WINDOWS);
            out.extend_from_slice(&(windows.len() as u32).to_le_bytes());
            for w in windows {
                encode_window(w, out);
            }
        }
        Body::WindowReport(w) => {
            out.push(BODY_WINDOW_REPORT);
            encode_window(w, out);
        }
    }
}

fn decode_response(key: u128, r: &mut Reader<'_>) -> Result<Kept, SnapshotError> {
    let id = RequestId(key);
    let fingerprint = r.u64("fingerprint")?;
    let at = r.at;
    let code = r.u8("code")?;
    let code = Code::from_u8(code).ok_or_else(|| r.bad(at, format!("unknown code {code}")))?;
    let reason = Reason(r.u8("reason")?);
    let at = r.at;
    let body = match r.u8("body")? {
        BODY_NONE => Body::None,
        BODY_TRANSFER => Body::Transfer {
            transfer: TransferId(r.u128("transfer")?),
            amount: Amount(r.u64("amount")?),
            currency: r.currency()?,
        },
        BODY_BALANCE => Body::Balance {
            account: AccountId(r.u128("account")?),
            currency: r.currency()?,
            balances: Balances {
                debits_pending: r.u128("debits pending")?,
                debits_posted: r.u128("debits posted")?,
                credits_pending: r.u128("credits pending")?,
                credits_posted: r.u128("credits posted")?,
            },
        },
        BODY_STATUS => Body::Status(Status {
            transfer: TransferId(r.u128("transfer")?),
            stage: r.stage()?,
            currency: r.currency()?,
            amount: Amount(r.u64("amount")?),
            captured: Amount(r.u64("captured")?),
            refunded: Amount(r.u64("refunded")?),
        }),
        BODY_ECHO => {
            let len = usize::from(r.u16("echo length")?);
            Body::Echo(r.take(len, "echo payload")?.to_vec())
        }
        BODY_WINDOW_CLOSED => Body::WindowClosed(r.u64("window")?),
        BODY_WINDOWS => {
            let count = r.count32("window count", WINDOW_LEN_MIN)?;
            let mut windows = Vec::with_capacity(count);
            for _ in 0..count {
                windows.push(decode_window(r)?);
            }
            Body::Windows(windows)
        }
        BODY_WINDOW_REPORT => Body::WindowReport(decode_window(r)?),
        tag => return Err(r.bad(at, format!("unknown body tag {tag}"))),
    };
    Ok(Kept::new(
        fingerprint,
        &Response {
            id,
            code,
            reason,
            body,
        },
    ))
}

fn decode_participants(
    mut r: Reader<'_>,
) -> Result<HashMap<ParticipantId, Participant>, SnapshotError> {
    let count = r.u32("participant count")?;
    let mut participants = HashMap::default();
    for _ in 0..count {
        let at = r.at;
        let id = ParticipantId(r.u64("participant")?);
        if !id.is_valid() {
            return Err(r.bad(at, "participant 0".into()));
        }
        let name = r.string("name", NAME_LEN_MAX)?;
        let roles = r.u8("roles")?;
        if participants
            .insert(id, Participant { name, roles })
            .is_some()
        {
            return Err(r.bad(at, format!("participant {} appears twice", id.0)));
        }
    }
    r.end()?;
    Ok(participants)
}

fn decode_limits(
    mut r: Reader<'_>,
) -> Result<HashMap<(ParticipantId, Currency), Amount>, SnapshotError> {
    let count = r.u64("limit count")?;
    let mut limits = HashMap::default();
    for _ in 0..count {
        let at = r.at;
        let participant = ParticipantId(r.u64("participant")?);
        let currency = r.currency()?;
        let cap = Amount(r.u64("net debit cap")?);
        if limits.insert((participant, currency), cap).is_some() {
            return Err(r.bad(
                at,
                format!("limit of participant {} repeated", participant.0),
            ));
        }
    }
    r.end()?;
    Ok(limits)
}

fn decode_directory(mut r: Reader<'_>) -> Result<HashMap<String, AccountId>, SnapshotError> {
    let count_at = r.at;
    let count = r.u64("directory count")?;
    // An entry takes at least 18 bytes.
    let count = usize::try_from(count)
        .ok()
        .filter(|c| c.checked_mul(18).is_some_and(|b| b <= r.remaining()))
        .ok_or_else(|| r.bad(count_at, format!("count {count} does not fit the section")))?;
    let mut directory = HashMap::default();
    directory.reserve(count);
    for _ in 0..count {
        let at = r.at;
        let number = r.string("number", NAME_LEN_MAX)?;
        if !is_valid_number(&number) {
            return Err(r.bad(at, format!("{number:?} is not a card or wallet number")));
        }
        let account = AccountId(r.u128("account")?);
        if directory.insert(number, account).is_some() {
            return Err(r.bad(at, "number appears twice".into()));
        }
    }
    r.end()?;
    Ok(directory)
}

/// Reads a section (or the header), keeping offsets relative to the whole payload.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    /// Where `buf` starts in the payload.
    base: usize,
    section: Option<u16>,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], section: Option<u16>) -> Self {
        Reader {
            buf,
            at: 0,
            base: 0,
            section,
        }
    }

    fn bad(&self, at: usize, what: String) -> SnapshotError {
        SnapshotError::Malformed {
            offset: self.base + at,
            section: self.section,
            what,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    fn end(&self) -> Result<(), SnapshotError> {
        if self.at != self.buf.len() {
            return Err(self.bad(
                self.at,
                format!(
                    "{} bytes after the section's content",
                    self.buf.len() - self.at
                ),
            ));
        }
        Ok(())
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.bad(self.at, format!("ends inside {what}")))?;
        let slice = &self.buf[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn i128(&mut self, what: &str) -> Result<i128, SnapshotError> {
        Ok(i128::from_le_bytes(self.array(what)?))
    }

    fn flag(&mut self, what: &str) -> Result<bool, SnapshotError> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.bad(at, format!("{what} {v} is not 0 or 1"))),
        }
    }

    /// A u32 count of entries of at least `min_len` bytes each, checked against what is left.
    fn count32(&mut self, what: &str, min_len: usize) -> Result<usize, SnapshotError> {
        let at = self.at;
        let count = self.u32(what)? as usize;
        self.fits(at, what, count, min_len)
    }

    fn count64(&mut self, what: &str, min_len: usize) -> Result<usize, SnapshotError> {
        let at = self.at;
        let count = self.u64(what)?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        self.fits(at, what, count, min_len)
    }

    fn fits(
        &self,
        at: usize,
        what: &str,
        count: usize,
        min_len: usize,
    ) -> Result<usize, SnapshotError> {
        if count
            .checked_mul(min_len)
            .is_some_and(|b| b <= self.remaining())
        {
            Ok(count)
        } else {
            Err(self.bad(at, format!("{what} {count} does not fit the section")))
        }
    }

    fn u128(&mut self, what: &str) -> Result<u128, SnapshotError> {
        Ok(u128::from_le_bytes(self.array(what)?))
    }

    fn currency(&mut self) -> Result<Currency, SnapshotError> {
        let at = self.at;
        let numeric = self.u16("currency")?;
        Currency::from_numeric(numeric)
            .ok_or_else(|| self.bad(at, format!("unknown currency {numeric}")))
    }

    fn stage(&mut self) -> Result<Stage, SnapshotError> {
        let at = self.at;
        Ok(match self.u8("stage")? {
            0 => Stage::Held,
            1 => Stage::Captured,
            2 => Stage::Reversed,
            3 => Stage::Expired,
            4 => Stage::Sold,
            other => return Err(self.bad(at, format!("unknown stage {other}"))),
        })
    }

    fn string(&mut self, what: &str, max: usize) -> Result<String, SnapshotError> {
        let at = self.at;
        let len = usize::from(self.u8(what)?);
        if len > max {
            return Err(self.bad(at, format!("{what} of {len} bytes, over {max}")));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad(at, format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests;

/// The smallest encoded window (no positions).
const WINDOW_LEN_MIN: usize = 8 + 1 + 8 + 8 + 8 + 1 + 4;
const POSITION_LEN: usize = 8 + 2 + 16;
const PAIR_LEN: usize = 2 + 8 + 8 + 16 + 8 + 16 + 8;
const EXPOSURE_LEN: usize = 8 + 2 + 16 + 16;

fn encode_window(w: &Window, out: &mut Vec<u8>) {
    out.extend_from_slice(&w.id.to_le_bytes());
    out.push(u8::from(w.open));
    out.extend_from_slice(&w.opened_at.0.to_le_bytes());
    out.extend_from_slice(&w.closed_at.0.to_le_bytes());
    out.extend_from_slice(&w.transfer_count.to_le_bytes());
    out.push(u8::from(w.reconciled));
    out.extend_from_slice(&(w.positions.len() as u32).to_le_bytes());
    for (participant, currency, net) in &w.positions {
        out.extend_from_slice(&participant.0.to_le_bytes());
        out.extend_from_slice(&currency.numeric().to_le_bytes());
        out.extend_from_slice(&net.to_le_bytes());
    }
}

fn decode_window(r: &mut Reader<'_>) -> Result<Window, SnapshotError> {
    let id = r.u64("window")?;
    let open = r.flag("window open")?;
    let opened_at = ledger::Timestamp(r.u64("opened at")?);
    let closed_at = ledger::Timestamp(r.u64("closed at")?);
    let transfer_count = r.u64("transfer count")?;
    let reconciled = r.flag("reconciled")?;
    let count = r.count32("position count", POSITION_LEN)?;
    let mut positions = Vec::with_capacity(count);
    for _ in 0..count {
        let participant = ParticipantId(r.u64("participant")?);
        let currency = r.currency()?;
        let net = r.i128("net")?;
        positions.push((participant, currency, net));
    }
    Ok(Window {
        id,
        open,
        opened_at,
        closed_at,
        transfer_count,
        positions,
        reconciled,
    })
}

fn encode_pairs(pairs: &HashMap<PairKey, PairTotals>, out: &mut Vec<u8>) {
    let mut sorted: Vec<_> = pairs.iter().collect();
    sorted.sort_unstable_by_key(|(k, _)| **k);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for (k, t) in sorted {
        out.extend_from_slice(&k.currency.numeric().to_le_bytes());
        out.extend_from_slice(&k.acquirer.0.to_le_bytes());
        out.extend_from_slice(&k.issuer.0.to_le_bytes());
        out.extend_from_slice(&t.purchases.to_le_bytes());
        out.extend_from_slice(&t.purchase_count.to_le_bytes());
        out.extend_from_slice(&t.refunds.to_le_bytes());
        out.extend_from_slice(&t.refund_count.to_le_bytes());
    }
}

fn decode_pairs(r: &mut Reader<'_>) -> Result<HashMap<PairKey, PairTotals>, SnapshotError> {
    let count = r.count64("pair count", PAIR_LEN)?;
    let mut pairs = HashMap::default();
    pairs.reserve(count);
    for _ in 0..count {
        let at = r.at;
        let key = PairKey {
            currency: r.currency()?,
            acquirer: ParticipantId(r.u64("acquirer")?),
            issuer: ParticipantId(r.u64("issuer")?),
        };
        let totals = PairTotals {
            purchases: r.u128("purchases")?,
            purchase_count: r.u64("purchase count")?,
            refunds: r.u128("refunds")?,
            refund_count: r.u64("refund count")?,
        };
        if pairs.insert(key, totals).is_some() {
            return Err(r.bad(at, "pair repeated".into()));
        }
    }
    Ok(pairs)
}

/// The open window's totals, every exposure and the closed windows kept. Reports still to be
/// written are not state: the server takes no snapshot while any is being written.
fn encode_clearing(c: &Clearing) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&c.open.id.to_le_bytes());
    out.extend_from_slice(&c.open.opened_at.0.to_le_bytes());
    out.extend_from_slice(&c.open.transfer_count.to_le_bytes());
    encode_pairs(&c.open.cleared, &mut out);
    encode_pairs(&c.open.moved, &mut out);
    let mut exposure: Vec<_> = c.exposure.iter().collect();
    exposure.sort_unstable_by_key(|(k, _)| **k);
    out.extend_from_slice(&(exposure.len() as u64).to_le_bytes());
    for ((participant, currency), e) in exposure {
        out.extend_from_slice(&participant.0.to_le_bytes());
        out.extend_from_slice(&currency.numeric().to_le_bytes());
        out.extend_from_slice(&e.net.to_le_bytes());
        out.extend_from_slice(&e.held.to_le_bytes());
    }
    out.extend_from_slice(&(c.closed.len() as u32).to_le_bytes());
    for w in &c.closed {
        encode_window(w, &mut out);
    }
    out
}

fn decode_clearing(mut r: Reader<'_>, kept: usize) -> Result<Clearing, SnapshotError> {
    let mut c = Clearing::new(kept);
    let at = r.at;
    let id = r.u64("open window")?;
    if id == 0 {
        return Err(r.bad(at, "open window 0".into()));
    }
    c.open = OpenWindow {
        id,
        opened_at: ledger::Timestamp(r.u64("opened at")?),
        transfer_count: r.u64("transfer count")?,
        cleared: decode_pairs(&mut r)?,
        moved: decode_pairs(&mut r)?,
    };
    let count = r.count64("exposure count", EXPOSURE_LEN)?;
    for _ in 0..count {
        let at = r.at;
        let key = (ParticipantId(r.u64("participant")?), r.currency()?);
        let e = Exposure {
            net: r.i128("net")?,
            held: r.u128("held")?,
        };
        if c.exposure.insert(key, e).is_some() {
            return Err(r.bad(at, "exposure repeated".into()));
        }
    }
    let count = r.count32("closed window count", WINDOW_LEN_MIN)?;
    for _ in 0..count {
        let at = r.at;
        let w = decode_window(&mut r)?;
        if w.open || w.id >= id || c.closed.back().is_some_and(|last| last.id >= w.id) {
            return Err(r.bad(at, format!("closed window {} out of order", w.id)));
        }
        if c.closed.len() == c.kept {
            c.closed.pop_front();
        }
        c.closed.push_back(w);
    }
    r.end()?;
    Ok(c)
}
