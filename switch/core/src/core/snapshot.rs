//! The switch's whole state as bytes, and back: a snapshot that lets the log before it go.
//!
//! A snapshot is the ledger (its own snapshot encoding, `ledger::Capture`) and the core's own
//! state (participants, limits, the number directory, and the remembered originals, early
//! reversals and responses in their forgetting order), in tagged, length-prefixed sections, with
//! the last log sequence it covers. Layout: `docs/WAL-FORMAT.md`, "Switch snapshot payload".
//!
//! `Image::take` runs on the ledger stage between batches, so the state it sees is exactly
//! the log up to `sequence`. It copies the ledger (`Ledger::capture`: a memcpy of each shard)
//! and encodes the core's maps straight into pre-sized buffers: one sequential pass over each
//! map, which costs about what copying it would. `Image::encode` (the ledger's part, the
//! slow one) runs afterwards on another thread. `restore` checks everything it reads, never
//! panics, and names the section and payload offset of what it refuses.

use std::sync::Arc;

use ledger::codec::{self, CodecError};
use ledger::{AccountId, Amount, Balances, Currency, Ledger, ParticipantId, TransferId};

use crate::clearing::{Clearing, Exposure, OpenWindow, Window};
use ledger::clearing::{PairKey, PairTotals};

use super::{
    Body, Core, CoreConfig, EarlyReversals, HashMap, Kept, Order, Original, Participant,
    PaymentState, REMEMBERED_PARTS, Remembered, RequestId, Response, Status,
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
pub struct CoreImage {
    sections: Vec<(u16, Vec<u8>)>,
}

/// A consistent copy of the whole switch at one log sequence, ready to encode: the image a
/// snapshot is written from.
pub struct Image {
    sequence: u64,
    ledger: ledger::Capture,
    core: CoreImage,
}

impl Image {
    /// Copies the switch's state, which must be exactly the log up to and including
    /// `sequence`: call it between batches, on the thread that owns the core.
    pub fn take(core: &Core, sequence: u64) -> Image {
        Image {
            sequence,
            ledger: core.ledger().capture(),
            core: core.capture(),
        }
    }

    /// The last log sequence the snapshot covers.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The snapshot payload. Consumes the image, freeing each part once it is written.
    pub fn encode(self) -> Vec<u8> {
        let Image {
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
        codec::put_u32(&mut out, VERSION);
        codec::put_u64(&mut out, sequence);
        codec::put_u32(&mut out, sections.len() as u32);
        for (tag, bytes) in sections {
            codec::put_u16(&mut out, tag);
            codec::put_u64(&mut out, bytes.len() as u64);
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

/// Rebuilds the switch from a payload that `Image::encode` wrote; returns the core and the
/// last log sequence it covers. `file_sequence` is the sequence the file says it covers.
pub fn restore(
    bytes: &[u8],
    file_sequence: u64,
    config: RestoreConfig,
) -> Result<(Core, u64), SnapshotError> {
    let payload = Payload::read(bytes, file_sequence)?;
    let ledger_section = payload.required(section::LEDGER);
    let ledger = Ledger::restore(config.ledger, ledger_section.r.rest()).map_err(|source| {
        SnapshotError::Ledger {
            offset: ledger_section.at(),
            source,
        }
    })?;
    let max = config.core.requests_remembered_max.max(1);
    let (version, kept) = (payload.version, config.core.windows_kept);
    // A struct literal, not `..`: a field added to `Core` must be added to the snapshot too.
    // Sections are read in the order they are written.
    let core = Core {
        ledger: Arc::new(ledger),
        participants: decode_participants(payload.required(section::PARTICIPANTS))?,
        limits: decode_limits(payload.required(section::LIMITS))?,
        directory: decode_directory(payload.required(section::DIRECTORY))?,
        originals: decode_remembered(payload.required(section::ORIGINALS), max, |key, r| {
            decode_original(key, r, version)
        })?,
        early_reversals: restore_early_reversals(&payload, max)?,
        responses: decode_remembered(payload.required(section::RESPONSES), max, decode_response)?,
        clearing: match payload.optional(section::CLEARING) {
            Some(r) => decode_clearing(r, kept)?,
            None => Clearing::new(kept),
        },
        config: config.core,
        routes: config.routes,
        closing: None,
        batches: 0,
        reservations: 0,
        wave: Default::default(),
    };
    Ok((core, payload.sequence))
}

/// A payload's header and its sections, checked: known tags, ascending, each once, the
/// required ones there, nothing after the last.
struct Payload<'a> {
    version: u32,
    sequence: u64,
    sections: Vec<(u16, Reader<'a>)>,
}

impl<'a> Payload<'a> {
    fn read(bytes: &'a [u8], file_sequence: u64) -> Result<Self, SnapshotError> {
        let mut r = Reader::new(bytes, None);
        if r.take(8, "magic")? != MAGIC {
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
        let count_at = r.at();
        let count = r.u32("section count")?;
        let mut sections: Vec<(u16, Reader<'a>)> = Vec::new();
        for _ in 0..count {
            let at = r.at();
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
            if sections.last().is_some_and(|(last, _)| *last >= tag) {
                return Err(r.bad(at, format!("section {tag} out of order or repeated")));
            }
            let body = r.r.sub(len, "section body").map_err(|e| r.codec(e))?;
            sections.push((tag, Reader::section(body, tag)));
        }
        if !r.r.is_empty() {
            let what = format!("{} bytes after the last section", r.r.remaining());
            return Err(r.bad(r.at(), what));
        }
        let missing: Vec<&str> = section::REQUIRED
            .iter()
            .filter(|t| !sections.iter().any(|(tag, _)| tag == *t))
            .map(|t| section::name(*t))
            .collect();
        if !missing.is_empty() {
            let what = format!("sections missing: {}", missing.join(", "));
            return Err(r.bad(count_at, what));
        }
        Ok(Payload {
            version,
            sequence,
            sections,
        })
    }

    /// A section added later is read with `optional`, as empty when it is `None`.
    fn optional(&self, tag: u16) -> Option<Reader<'a>> {
        self.sections
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, r)| r.clone())
    }

    fn required(&self, tag: u16) -> Reader<'a> {
        self.optional(tag)
            .expect("every required section is present")
    }
}

/// Early reversals: section 10, or, written before it, sections 6 and 9 (in the order they
/// were remembered).
fn restore_early_reversals(
    payload: &Payload<'_>,
    max: usize,
) -> Result<EarlyReversals, SnapshotError> {
    let keys = payload.required(section::EARLY_REVERSALS);
    let mut early = decode_remembered_keys(keys.clone(), usize::MAX)?;
    if let Some(r) = payload.optional(section::EARLY_REVERSAL_SENDERS) {
        decode_senders(r, &mut early)?;
    }
    match payload.optional(section::EARLY_REVERSALS_BY_SENDER) {
        Some(r) if early.len() > 0 => {
            let what = format!(
                "{} early reversals in section 6 as well: they belong here",
                early.len()
            );
            Err(r.bad(r.at(), what))
        }
        Some(r) => decode_early_reversals(r, max),
        None => EarlyReversals::from_ordered(max, early.iter().map(|(id, by)| (*by, id)))
            .map_err(|i| keys.bad(keys.at() + 8 + 16 * i, "an early reversal twice".into())),
    }
}

/// Encodes the core's own state. An exhaustive destructuring: a field added to `Core` must be
/// considered here.
pub(super) fn capture(core: &Core) -> CoreImage {
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
        reservations,
        wave,
    } = core;
    debug_assert!(
        *reservations == 0 && wave.is_empty(),
        "a snapshot is taken between batches"
    );
    let image = CoreImage {
        sections: vec![
            (section::PARTICIPANTS, encode_participants(participants)),
            (section::LIMITS, encode_limits(limits)),
            (section::DIRECTORY, encode_directory(directory)),
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
    };
    if cfg!(debug_assertions) {
        for (tag, bytes) in &image.sections {
            read_back(core, *tag, bytes);
        }
    }
    image
}

/// Reads a section just written back and checks it is the state it was written from: a
/// writer and a reader that disagree would lose that state at the next restore, not now.
fn read_back(core: &Core, tag: u16, bytes: &[u8]) {
    let r = Reader::section(codec::Reader::new(bytes), tag);
    let max = core.config.requests_remembered_max.max(1);
    let same = match tag {
        section::PARTICIPANTS => decode_participants(r).map(|p| p == core.participants),
        section::LIMITS => decode_limits(r).map(|l| l == core.limits),
        section::DIRECTORY => decode_directory(r).map(|d| d == core.directory),
        section::ORIGINALS => decode_remembered(r, max, |key, r| decode_original(key, r, VERSION))
            .map(|m| m.iter().eq(core.originals.iter())),
        section::EARLY_REVERSALS => decode_remembered_keys(r, max).map(|m| m.len() == 0),
        section::RESPONSES => {
            decode_remembered(r, max, decode_response).map(|m| m.iter().eq(core.responses.iter()))
        }
        section::CLEARING => {
            decode_clearing(r, core.clearing.kept).map(|c| encode_clearing(&c) == bytes)
        }
        section::EARLY_REVERSALS_BY_SENDER => decode_early_reversals(r, usize::MAX)
            .map(|e| e.ordered().eq(core.early_reversals.ordered())),
        _ => unreachable!("section {tag} is not the core's"),
    };
    match same {
        Ok(same) => assert!(same, "section {tag} reads back as other state"),
        Err(e) => panic!("section {tag} just written does not read back: {e}"),
    }
}

/// Participants: count u32, then by id ascending the id u64, the name (`put_str`) and the
/// roles u8.
fn encode_participants(participants: &HashMap<ParticipantId, Participant>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + participants.len() * (10 + NAME_LEN_MAX));
    codec::put_u32(&mut out, participants.len() as u32);
    let mut sorted: Vec<_> = participants.iter().collect();
    sorted.sort_unstable_by_key(|(id, _)| **id);
    for (id, participant) in sorted {
        codec::put_u64(&mut out, id.0);
        // Participant names and numbers are checked against this bound before they are kept.
        codec::put_str(&mut out, &participant.name, NAME_LEN_MAX);
        codec::put_u8(&mut out, participant.roles);
    }
    out
}

/// Net debit caps: count u64, then each participant u64, currency u16 and cap u64.
fn encode_limits(limits: &HashMap<(ParticipantId, Currency), Amount>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + limits.len() * 18);
    codec::put_u64(&mut out, limits.len() as u64);
    for ((participant, currency), cap) in limits {
        codec::put_u64(&mut out, participant.0);
        codec::put_u16(&mut out, currency.numeric());
        codec::put_u64(&mut out, cap.0);
    }
    out
}

/// The number directory: count u64, then each number (`put_str`) and account u128.
fn encode_directory(directory: &HashMap<String, AccountId>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + directory.len() * 36);
    codec::put_u64(&mut out, directory.len() as u64);
    for (number, account) in directory {
        codec::put_str(&mut out, number, NAME_LEN_MAX);
        codec::put_u128(&mut out, account.0);
    }
    out
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
    codec::put_u64(&mut out, m.len() as u64);
    for (key, _) in m.iter() {
        codec::put_u128(&mut out, key);
    }
    if let Some(put) = put {
        for (key, value) in m.iter() {
            codec::put_u128(&mut out, key);
            put(key, value, &mut out);
        }
    }
    out
}

/// The keys in forgetting order.
fn decode_order(r: &mut Reader<'_>) -> Result<Order, SnapshotError> {
    // Every key takes 16 bytes: refuse a count the section cannot hold before allocating.
    let count = r.count64("count", 16)?;
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
            return Err(r.bad(r.start() + 8 + 16 * i, format!("key {key} appears twice")));
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
    let count_at = r.at();
    let count = r.u64("count")?;
    if count != m.len() as u64 {
        return Err(r.bad(
            count_at,
            format!("{count} senders for {} early reversals", m.len()),
        ));
    }
    for _ in 0..count {
        let at = r.at();
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
    codec::put_u64(&mut out, m.len() as u64);
    for (by, id) in m.ordered() {
        codec::put_u64(&mut out, by.0);
        codec::put_u128(&mut out, id);
    }
    out
}

fn decode_early_reversals(mut r: Reader<'_>, max: usize) -> Result<EarlyReversals, SnapshotError> {
    let count_at = r.at();
    let count = r.count64("count", 24)?;
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
        let at = r.at();
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
                    r.start(),
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
    codec::put_u64(out, o.fingerprint);
    codec::put_u64(out, o.acquirer.0);
    codec::put_u64(out, o.issuer.0);
    codec::put_u128(out, o.card.0);
    codec::put_u128(out, o.merchant.0);
    codec::put_u16(out, o.currency.numeric());
    codec::put_u64(out, o.amount.0);
    codec::put_u64(out, o.captured.0);
    codec::put_u64(out, o.refunded.0);
    codec::put_u8(out, state_tag(o.state));
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
    let at = r.at();
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
    let state = r.payment_state()?;
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
        state,
    })
}

fn state_tag(state: PaymentState) -> u8 {
    match state {
        PaymentState::Held => 0,
        PaymentState::Captured => 1,
        PaymentState::Reversed => 2,
        PaymentState::Expired => 3,
        PaymentState::Sold => 4,
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
    codec::put_u64(out, *fingerprint);
    codec::put_u8(out, r.code.as_u8());
    codec::put_u8(out, r.reason.0);
    match &r.body {
        Body::None => out.push(BODY_NONE),
        Body::Transfer {
            transfer,
            amount,
            currency,
        } => {
            codec::put_u8(out, BODY_TRANSFER);
            codec::put_u128(out, transfer.0);
            codec::put_u64(out, amount.0);
            codec::put_u16(out, currency.numeric());
        }
        Body::Balance {
            account,
            currency,
            balances,
        } => {
            codec::put_u8(out, BODY_BALANCE);
            codec::put_u128(out, account.0);
            codec::put_u16(out, currency.numeric());
            balances.put(out);
        }
        Body::Status(s) => {
            codec::put_u8(out, BODY_STATUS);
            codec::put_u128(out, s.transfer.0);
            codec::put_u8(out, state_tag(s.state));
            codec::put_u16(out, s.currency.numeric());
            codec::put_u64(out, s.amount.0);
            codec::put_u64(out, s.captured.0);
            codec::put_u64(out, s.refunded.0);
        }
        Body::Echo(payload) => {
            codec::put_u8(out, BODY_ECHO);
            codec::put_bytes_u16(out, payload);
        }
        Body::WindowClosed(window) => {
            codec::put_u8(out, BODY_WINDOW_CLOSED);
            codec::put_u64(out, *window);
        }
        Body::Windows(windows) => {
            codec::put_u8(out, BODY_WINDOWS);
            codec::put_u32(out, windows.len() as u32);
            for w in windows {
                encode_window(w, out);
            }
        }
        Body::WindowReport(w) => {
            codec::put_u8(out, BODY_WINDOW_REPORT);
            encode_window(w, out);
        }
    }
}

fn decode_response(key: u128, r: &mut Reader<'_>) -> Result<Kept, SnapshotError> {
    let id = RequestId(key);
    let fingerprint = r.u64("fingerprint")?;
    let at = r.at();
    let code = r.u8("code")?;
    let code = Code::from_u8(code).ok_or_else(|| r.bad(at, format!("unknown code {code}")))?;
    let reason = Reason(r.u8("reason")?);
    let at = r.at();
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
            balances: r.balances()?,
        },
        BODY_STATUS => Body::Status(Status {
            transfer: TransferId(r.u128("transfer")?),
            state: r.payment_state()?,
            currency: r.currency()?,
            amount: Amount(r.u64("amount")?),
            captured: Amount(r.u64("captured")?),
            refunded: Amount(r.u64("refunded")?),
        }),
        BODY_ECHO => {
            let payload = r.bytes_u16("echo length", "echo payload", ECHO_LEN_MAX)?;
            Body::Echo(payload.to_vec())
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
        let at = r.at();
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
        let at = r.at();
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
    // An entry takes at least 18 bytes.
    let count = r.count64("directory count", 18)?;
    let mut directory = HashMap::default();
    directory.reserve(count);
    for _ in 0..count {
        let at = r.at();
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

/// Reads a section (or the header) with `ledger::codec`, naming the section in its errors;
/// offsets count from the start of the whole payload.
#[derive(Clone)]
struct Reader<'a> {
    r: codec::Reader<'a>,
    section: Option<u16>,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], section: Option<u16>) -> Self {
        Reader {
            r: codec::Reader::new(buf),
            section,
        }
    }

    fn section(r: codec::Reader<'a>, tag: u16) -> Self {
        Reader {
            r,
            section: Some(tag),
        }
    }

    /// Where the next field starts in the payload.
    fn at(&self) -> usize {
        self.r.offset()
    }

    /// Where the section starts in the payload.
    fn start(&self) -> usize {
        self.r.offset() - self.r.position()
    }

    /// `what` is wrong at payload offset `at`.
    fn bad(&self, at: usize, what: String) -> SnapshotError {
        SnapshotError::Malformed {
            offset: at,
            section: self.section,
            what,
        }
    }

    fn codec(&self, e: CodecError) -> SnapshotError {
        let what = match e {
            CodecError::Trailing { extra, .. } => {
                format!("{extra} bytes after the section's content")
            }
            e => e.to_string(),
        };
        self.bad(e.at(), what)
    }

    fn end(&self) -> Result<(), SnapshotError> {
        self.r.finish().map_err(|e| self.codec(e))
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        self.r.take(n, what).map_err(|e| self.codec(e))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SnapshotError> {
        self.r.u8(what).map_err(|e| self.codec(e))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SnapshotError> {
        self.r.u16(what).map_err(|e| self.codec(e))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SnapshotError> {
        self.r.u32(what).map_err(|e| self.codec(e))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, SnapshotError> {
        self.r.u64(what).map_err(|e| self.codec(e))
    }

    fn u128(&mut self, what: &'static str) -> Result<u128, SnapshotError> {
        self.r.u128(what).map_err(|e| self.codec(e))
    }

    fn i128(&mut self, what: &'static str) -> Result<i128, SnapshotError> {
        self.r.i128(what).map_err(|e| self.codec(e))
    }

    /// A u16 length, then that many bytes, at most `max`.
    fn bytes_u16(
        &mut self,
        len_what: &'static str,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], SnapshotError> {
        let bytes = self.r.bytes_u16(len_what, what, max);
        bytes.map_err(|e| self.codec(e))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, SnapshotError> {
        self.r.bool(what).map_err(|e| self.codec(e))
    }

    /// A u32 count of entries of at least `min_len` bytes each, checked against what is left.
    fn count32(&mut self, what: &'static str, min_len: usize) -> Result<usize, SnapshotError> {
        self.r.count_u32(what, min_len).map_err(|e| self.codec(e))
    }

    /// `count32` with a u64 count.
    fn count64(&mut self, what: &'static str, min_len: usize) -> Result<usize, SnapshotError> {
        self.r.count_u64(what, min_len).map_err(|e| self.codec(e))
    }

    fn balances(&mut self) -> Result<Balances, SnapshotError> {
        Balances::read(&mut self.r).map_err(|e| self.codec(e))
    }

    fn currency(&mut self) -> Result<Currency, SnapshotError> {
        let at = self.at();
        let numeric = self.u16("currency")?;
        Currency::from_numeric(numeric)
            .ok_or_else(|| self.bad(at, format!("unknown currency {numeric}")))
    }

    fn payment_state(&mut self) -> Result<PaymentState, SnapshotError> {
        let at = self.at();
        Ok(match self.u8("payment state")? {
            0 => PaymentState::Held,
            1 => PaymentState::Captured,
            2 => PaymentState::Reversed,
            3 => PaymentState::Expired,
            4 => PaymentState::Sold,
            other => return Err(self.bad(at, format!("unknown payment state {other}"))),
        })
    }

    /// What `codec::put_str` wrote, at most `max` bytes.
    fn string(&mut self, what: &'static str, max: usize) -> Result<String, SnapshotError> {
        match self.r.str(what, max) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.codec(e)),
        }
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
    codec::put_u64(out, w.id);
    codec::put_bool(out, w.open);
    codec::put_u64(out, w.opened_at.0);
    codec::put_u64(out, w.closed_at.0);
    codec::put_u64(out, w.transfer_count);
    codec::put_bool(out, w.reconciled);
    codec::put_u32(out, w.positions.len() as u32);
    for (participant, currency, net) in &w.positions {
        codec::put_u64(out, participant.0);
        codec::put_u16(out, currency.numeric());
        codec::put_i128(out, *net);
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
    codec::put_u64(out, sorted.len() as u64);
    for (k, t) in sorted {
        codec::put_u16(out, k.currency.numeric());
        codec::put_u64(out, k.acquirer.0);
        codec::put_u64(out, k.issuer.0);
        codec::put_u128(out, t.purchases);
        codec::put_u64(out, t.purchase_count);
        codec::put_u128(out, t.refunds);
        codec::put_u64(out, t.refund_count);
    }
}

fn decode_pairs(r: &mut Reader<'_>) -> Result<HashMap<PairKey, PairTotals>, SnapshotError> {
    let count = r.count64("pair count", PAIR_LEN)?;
    let mut pairs = HashMap::default();
    pairs.reserve(count);
    for _ in 0..count {
        let at = r.at();
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
        if totals.purchases > TOTAL_MAX
            || totals.refunds > TOTAL_MAX
            || totals.purchase_count > COUNT_MAX
            || totals.refund_count > COUNT_MAX
        {
            return Err(r.bad(at, "pair totals out of range".into()));
        }
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
    codec::put_u64(&mut out, c.open.id);
    codec::put_u64(&mut out, c.open.opened_at.0);
    codec::put_u64(&mut out, c.open.transfer_count);
    encode_pairs(&c.open.cleared, &mut out);
    encode_pairs(&c.open.moved, &mut out);
    let mut exposure: Vec<_> = c.exposure.iter().collect();
    exposure.sort_unstable_by_key(|(k, _)| **k);
    codec::put_u64(&mut out, exposure.len() as u64);
    for ((participant, currency), e) in exposure {
        codec::put_u64(&mut out, participant.0);
        codec::put_u16(&mut out, currency.numeric());
        codec::put_i128(&mut out, e.net);
        codec::put_u128(&mut out, e.held);
    }
    codec::put_u32(&mut out, c.closed.len() as u32);
    for w in &c.closed {
        encode_window(w, &mut out);
    }
    out
}

/// The largest total of amounts (and, either way, net position) a snapshot may hold. Sums of
/// `u64` amounts in `u128` (and `i128`) never overflow from real traffic, nor from this bound
/// on (2^62 more transfers of the largest amount fit), and converting between the two is
/// exact; a file with more is corrupt or forged, and refused rather than left to wrap.
const TOTAL_MAX: u128 = 1 << 126;
/// The largest transfer count a snapshot may hold, for the same reason.
const COUNT_MAX: u64 = 1 << 62;

fn decode_clearing(mut r: Reader<'_>, kept: usize) -> Result<Clearing, SnapshotError> {
    let mut c = Clearing::new(kept);
    let at = r.at();
    let id = r.u64("open window")?;
    if id == 0 || id == u64::MAX {
        // 0 is no window, and the largest id has no next one for the close to open.
        return Err(r.bad(at, format!("open window {id}")));
    }
    let opened_at = ledger::Timestamp(r.u64("opened at")?);
    let at = r.at();
    let transfer_count = r.u64("transfer count")?;
    if transfer_count > COUNT_MAX {
        return Err(r.bad(at, "transfer count out of range".into()));
    }
    c.open = OpenWindow {
        id,
        opened_at,
        transfer_count,
        cleared: decode_pairs(&mut r)?,
        moved: decode_pairs(&mut r)?,
    };
    let count = r.count64("exposure count", EXPOSURE_LEN)?;
    for _ in 0..count {
        let at = r.at();
        let key = (ParticipantId(r.u64("participant")?), r.currency()?);
        let e = Exposure {
            net: r.i128("net")?,
            held: r.u128("held")?,
        };
        if e.held > TOTAL_MAX || e.net.unsigned_abs() > TOTAL_MAX {
            return Err(r.bad(at, "exposure out of range".into()));
        }
        if c.exposure.insert(key, e).is_some() {
            return Err(r.bad(at, "exposure repeated".into()));
        }
    }
    let count = r.count32("closed window count", WINDOW_LEN_MIN)?;
    for _ in 0..count {
        let at = r.at();
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
