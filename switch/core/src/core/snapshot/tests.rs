//! A snapshot at any point, restored and fed the rest of the log, is the switch that never
//! stopped: same ledger, same remembered requests in the same forgetting order, same answers.

use std::sync::Arc;

use ledger::{AccountFlags, AccountId, Amount, Currency, Ledger, ParticipantId, Timestamp};
use proptest::prelude::*;

use super::{Image, RestoreConfig, SnapshotError};
use crate::core::{
    Core, CoreConfig, CreateAccount, CreateParticipant, Fund, Item, Refund, Request, RequestId,
    Response, Reverse, SetLimits,
};
use crate::identity::Identity;
use crate::journal::SwitchRecord;
use crate::routing::{Route, RouteTable};

const ADMIN: Identity = Identity {
    participant: ParticipantId(1),
    admin: true,
};
const ISSUER: ParticipantId = ParticipantId(2);
const ACQUIRER: Identity = Identity {
    participant: ParticipantId(3),
    admin: false,
};
/// Who sends reversals: the acquirer, another acquirer, the admin.
const SENDERS: [Identity; 3] = [
    ACQUIRER,
    Identity {
        participant: ParticipantId(4),
        admin: false,
    },
    ADMIN,
];
const CARDS: u128 = 3;
const SECOND: u64 = 1_000_000_000;

fn card_number(i: u128) -> String {
    format!("62000000000000{i:02}")
}

fn ledger_config() -> ledger::Config {
    ledger::Config {
        shards: 4,
        ..ledger::Config::default()
    }
}

fn routes() -> Arc<RouteTable> {
    Arc::new(
        RouteTable::new(vec![Route {
            prefix: "62".into(),
            issuer: ISSUER,
            pooled_account: None,
        }])
        .expect("valid routes"),
    )
}

fn core_config(remembered: usize) -> CoreConfig {
    CoreConfig {
        requests_remembered_max: remembered,
        ..CoreConfig::default()
    }
}

fn new_core(remembered: usize) -> Core {
    let ledger = Arc::new(Ledger::new(ledger_config()).expect("valid"));
    Core::new(ledger, core_config(remembered), routes())
}

fn restore_config(remembered: usize) -> RestoreConfig {
    RestoreConfig {
        ledger: ledger_config(),
        core: core_config(remembered),
        routes: routes(),
    }
}

/// Feeds journal records to a core, as recovery does.
fn replay(core: &mut Core, records: &[Vec<u8>]) {
    for bytes in records {
        match SwitchRecord::decode(bytes).expect("journal decodes") {
            SwitchRecord::Batch { now, commands } => core.replay(&commands, now),
            SwitchRecord::Expire { now, at_most } => {
                core.expire(now, at_most);
            }
        }
    }
}

/// Everything the core keeps, in a comparable form: the order of each remembered map is
/// compared as a list, so a restore that forgets in another order differs here.
fn state(core: &Core) -> String {
    let mut participants: Vec<_> = core.participants.iter().collect();
    participants.sort_by_key(|(id, _)| **id);
    let mut limits: Vec<_> = core.limits.iter().collect();
    limits.sort_by_key(|((p, c), _)| (*p, c.numeric()));
    let mut directory: Vec<_> = core.directory.iter().collect();
    directory.sort();
    let originals: Vec<_> = core
        .originals
        .iter()
        .map(|(k, _)| (k, core.originals.get(&k)))
        .collect();
    let responses: Vec<_> = core
        .responses
        .iter()
        .map(|(k, _)| (k, core.responses.get(&k)))
        .collect();
    let c = &core.clearing;
    let mut cleared: Vec<_> = c.open.cleared.iter().collect();
    cleared.sort_by_key(|(k, _)| **k);
    let mut moved: Vec<_> = c.open.moved.iter().collect();
    moved.sort_by_key(|(k, _)| **k);
    let mut exposure: Vec<_> = c
        .exposure
        .iter()
        .filter(|(_, e)| **e != Default::default())
        .collect();
    exposure.sort_by_key(|(k, _)| **k);
    let clearing = format!(
        "window {} {:?} {} cleared {cleared:?} moved {moved:?} exposure {exposure:?} closed {:?}",
        c.open.id, c.open.opened_at, c.open.transfer_count, c.closed
    );
    format!(
        "participants {participants:?}\nlimits {limits:?}\ndirectory {directory:?}\n\
         originals {} {originals:?}\nearly reversals {} {:?}\nresponses {} {responses:?}\n\
         clearing {clearing}\nledger {}",
        core.originals.len(),
        core.early_reversals.len(),
        core.early_reversals
            .ordered()
            .map(|(by, k)| (by, k, core.early_reversals.contains(k, by)))
            .collect::<Vec<_>>(),
        core.responses.len(),
        core.ledger.digest()
    )
}

#[derive(Clone, Debug)]
enum Action {
    Authorize {
        card: u128,
        amount: u64,
        expiry: u32,
    },
    Capture {
        nth: usize,
        amount: u64,
    },
    /// By the acquirer, another acquirer or the admin (`by` of `SENDERS`).
    Reverse {
        nth: usize,
        by: usize,
    },
    /// A reversal of an id not yet used: remembered as an early reversal.
    ReverseEarly {
        by: usize,
    },
    Sale {
        card: u128,
        amount: u64,
    },
    Refund {
        nth: usize,
        amount: u64,
    },
    Repeat {
        nth: usize,
    },
    NewCard,
    Limit {
        cap: u64,
    },
    Tick {
        seconds: u64,
    },
    Close,
    Snapshot,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => (1..=CARDS, 1u64..3_000, 0u32..120).prop_map(|(card, amount, expiry)| Action::Authorize { card, amount, expiry }),
        3 => (any::<usize>(), 0u64..3_000).prop_map(|(nth, amount)| Action::Capture { nth, amount }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(nth, by)| Action::Reverse { nth, by }),
        2 => any::<usize>().prop_map(|by| Action::ReverseEarly { by }),
        3 => (1..=CARDS, 1u64..2_000).prop_map(|(card, amount)| Action::Sale { card, amount }),
        2 => (any::<usize>(), 1u64..2_000).prop_map(|(nth, amount)| Action::Refund { nth, amount }),
        3 => any::<usize>().prop_map(|nth| Action::Repeat { nth }),
        1 => Just(Action::NewCard),
        1 => (1u64..1_000_000).prop_map(|cap| Action::Limit { cap }),
        1 => (1u64..90).prop_map(|seconds| Action::Tick { seconds }),
        1 => Just(Action::Close),
        2 => Just(Action::Snapshot),
    ]
}

struct Run {
    core: Core,
    journal: Vec<Vec<u8>>,
    /// (payload, the journal length it covers).
    snapshots: Vec<(Vec<u8>, u64)>,
    sent: Vec<Item>,
    now: Timestamp,
}

impl Run {
    fn execute(&mut self, items: Vec<Item>) -> Vec<Response> {
        self.core.expire_logged(self.now, &mut self.journal);
        let executed = self.core.execute(items, self.now);
        if !executed.logged.is_empty() {
            let mut bytes = Vec::new();
            SwitchRecord::encode_batch(self.now, &executed.logged, &mut bytes);
            self.journal.push(bytes);
        }
        executed.responses
    }
}

impl Core {
    /// Expires due holds and logs the pass, as the server's tick does.
    fn expire_logged(&mut self, now: Timestamp, journal: &mut Vec<Vec<u8>>) {
        if self.expire(now, None) {
            let mut bytes = Vec::new();
            SwitchRecord::encode_expire(now, None, &mut bytes);
            journal.push(bytes);
        }
    }
}

fn run(batches: Vec<Vec<Action>>, remembered: usize) -> Run {
    let mut r = Run {
        core: new_core(remembered),
        journal: Vec::new(),
        snapshots: Vec::new(),
        sent: Vec::new(),
        now: Timestamp(1_000 * SECOND),
    };
    let mut next_id = 1_000u128;
    let mut setup = vec![
        Request::CreateParticipant(CreateParticipant {
            participant: ISSUER,
            name: "issuer".into(),
            roles: 1,
        }),
        Request::CreateParticipant(CreateParticipant {
            participant: ACQUIRER.participant,
            name: "acquirer".into(),
            roles: 2,
        }),
        Request::CreateAccount(CreateAccount {
            account: AccountId(300),
            owner: ACQUIRER.participant,
            currency: Currency::CNY,
            flags: AccountFlags::empty(),
            number: None,
        }),
    ];
    for i in 1..=CARDS {
        setup.push(Request::CreateAccount(CreateAccount {
            account: AccountId(100 + i),
            owner: ISSUER,
            currency: Currency::CNY,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            number: Some(card_number(i)),
        }));
        setup.push(Request::Fund(Fund {
            account: AccountId(100 + i),
            amount: Amount(10_000),
            currency: Currency::CNY,
        }));
    }
    let items = setup
        .into_iter()
        .enumerate()
        .map(|(i, request)| Item {
            id: RequestId(1 + i as u128),
            who: ADMIN,
            request,
        })
        .collect();
    r.execute(items);
    let mut auths: Vec<RequestId> = Vec::new();
    let mut cards = CARDS;
    for batch in batches {
        let mut items: Vec<Item> = Vec::new();
        for action in batch {
            next_id += 1;
            let id = RequestId(next_id);
            let (who, request) = match action {
                Action::Authorize {
                    card,
                    amount,
                    expiry,
                } => {
                    auths.push(id);
                    (
                        ACQUIRER,
                        Request::Authorize {
                            number: card_number(card),
                            merchant: AccountId(300),
                            amount: Amount(amount),
                            currency: Currency::CNY,
                            expiry_seconds: expiry,
                        },
                    )
                }
                Action::Capture { nth, amount } if !auths.is_empty() => (
                    ACQUIRER,
                    Request::Capture(crate::core::Capture {
                        authorization: auths[nth % auths.len()],
                        amount: Amount(amount),
                    }),
                ),
                Action::Reverse { nth, by } if !auths.is_empty() => (
                    SENDERS[by % SENDERS.len()],
                    Request::Reverse(Reverse {
                        authorization: auths[nth % auths.len()],
                    }),
                ),
                Action::ReverseEarly { by } => {
                    // The id the next request will get: an authorization may follow.
                    let late = RequestId(next_id + 1);
                    auths.push(late);
                    (
                        SENDERS[by % SENDERS.len()],
                        Request::Reverse(Reverse {
                            authorization: late,
                        }),
                    )
                }
                Action::Sale { card, amount } => {
                    auths.push(id);
                    (
                        ACQUIRER,
                        Request::Sale {
                            number: card_number(card),
                            merchant: AccountId(300),
                            amount: Amount(amount),
                            currency: Currency::CNY,
                        },
                    )
                }
                Action::Refund { nth, amount } if !auths.is_empty() => (
                    ACQUIRER,
                    Request::Refund(Refund {
                        original: auths[nth % auths.len()],
                        amount: Amount(amount),
                        currency: Currency::CNY,
                    }),
                ),
                // Of an earlier batch, or of this one (answered once its wave is applied).
                Action::Repeat { nth } if !r.sent.is_empty() || !items.is_empty() => {
                    let n = nth % (r.sent.len() + items.len());
                    let item = match r.sent.get(n) {
                        Some(item) => item.clone(),
                        None => items[n - r.sent.len()].clone(),
                    };
                    items.push(item);
                    continue;
                }
                Action::NewCard => {
                    cards += 1;
                    (
                        ADMIN,
                        Request::CreateAccount(CreateAccount {
                            account: AccountId(100 + cards),
                            owner: ISSUER,
                            currency: Currency::CNY,
                            flags: AccountFlags::empty(),
                            number: Some(card_number(cards)),
                        }),
                    )
                }
                Action::Close => (ADMIN, Request::CloseWindow { window: 0 }),
                Action::Limit { cap } => (
                    ADMIN,
                    Request::SetLimits(SetLimits {
                        participant: ISSUER,
                        currency: Currency::CNY,
                        net_debit_cap: Amount(cap),
                    }),
                ),
                Action::Tick { seconds } => {
                    r.now = Timestamp(r.now.0 + seconds * SECOND);
                    continue;
                }
                Action::Snapshot => {
                    // Between batches, as the ledger stage takes them.
                    if !items.is_empty() {
                        let taken = std::mem::take(&mut items);
                        r.sent.extend(taken.iter().cloned());
                        r.execute(taken);
                    }
                    let sequence = r.journal.len() as u64;
                    let payload = Image::take(&r.core, sequence).encode();
                    r.snapshots.push((payload, sequence));
                    continue;
                }
                _ => continue,
            };
            items.push(Item { id, who, request });
        }
        r.sent.extend(items.iter().cloned());
        r.execute(items);
    }
    r
}

/// Asks both cores every request again, in the same batches, and compares the answers.
fn ask_again(a: &mut Core, b: &mut Core, sent: &[Item], now: Timestamp) -> Result<(), String> {
    for chunk in sent.chunks(7) {
        let ra = a.execute(chunk.to_vec(), now).responses;
        let rb = b.execute(chunk.to_vec(), now).responses;
        if ra != rb {
            return Err(format!("answers differ:\n{ra:?}\n{rb:?}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_snapshot.txt", 256, "/../../"))]

    #[test]
    fn snapshot_plus_tail_is_the_switch_that_never_stopped(
        batches in prop::collection::vec(prop::collection::vec(action(), 1..8), 1..25),
        remembered in 1usize..24,
    ) {
        let r = run(batches, remembered);
        prop_assert_eq!(state(&r.core), state(&{
            let mut full = new_core(remembered);
            replay(&mut full, &r.journal);
            full
        }));
        for (payload, sequence) in &r.snapshots {
            let (mut restored, covered) = Core::restore(payload, *sequence, restore_config(remembered))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(covered, *sequence);
            replay(&mut restored, &r.journal[*sequence as usize..]);
            let mut full = new_core(remembered);
            replay(&mut full, &r.journal);
            prop_assert_eq!(state(&restored), state(&full));
            // Observable behaviour: every request again gets the same answer from both, and
            // leaves them equal (a forgotten request runs again, a remembered one does not).
            ask_again(&mut full, &mut restored, &r.sent, r.now).map_err(TestCaseError::fail)?;
            prop_assert_eq!(state(&restored), state(&full));
        }
    }
}

#[test]
fn every_truncation_and_bit_flip_is_refused_or_harmless() {
    let batches = vec![vec![
        Action::Authorize {
            card: 1,
            amount: 10,
            expiry: 0,
        },
        Action::Sale { card: 2, amount: 5 },
        Action::ReverseEarly { by: 0 },
        Action::ReverseEarly { by: 1 },
        Action::Reverse { nth: 3, by: 2 },
        Action::Refund { nth: 1, amount: 2 },
        Action::Limit { cap: 7 },
        Action::NewCard,
    ]];
    let r = run(batches, 4);
    let payload = Image::take(&r.core, 9).encode();
    let (restored, _) = Core::restore(&payload, 9, restore_config(4)).expect("restores");
    assert_eq!(state(&restored), state(&r.core));
    for len in 0..payload.len() {
        assert!(
            Core::restore(&payload[..len], 9, restore_config(4)).is_err(),
            "truncated to {len}"
        );
    }
    // The file's CRC catches flips; here, without it, the decoder must still never panic.
    for bit in 0..payload.len() * 8 {
        let mut flipped = payload.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let _ = Core::restore(&flipped, 9, restore_config(4));
    }
    assert!(matches!(
        Core::restore(&payload, 8, restore_config(4)),
        Err(SnapshotError::Sequence { .. })
    ));
}

#[test]
fn an_unknown_or_missing_section_is_refused_by_name() {
    let r = run(vec![], 4);
    let mut payload = Image::take(&r.core, 3).encode();
    // The section count (offset 20) says one more section than there is: a section with
    // tag 99 is appended.
    let count = u32::from_le_bytes(payload[20..24].try_into().expect("4 bytes"));
    payload[20..24].copy_from_slice(&(count + 1).to_le_bytes());
    payload.extend_from_slice(&99u16.to_le_bytes());
    payload.extend_from_slice(&0u64.to_le_bytes());
    let err = Core::restore(&payload, 3, restore_config(4))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("unknown section tag 99"), "{err}");
    let err = Core::restore(&payload[..payload.len() - 10], 3, restore_config(4))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("ends inside section tag"), "{err}");
}

/// A remembered map of `count` entries (key `k` holds `k * 3`), with some forgotten.
fn remembered(count: u128, max: usize) -> crate::core::Remembered<u64> {
    let mut m = crate::core::Remembered::new(max);
    for key in 1..=count {
        m.insert(key * 7, key as u64 * 3, |v| v % 5 == 0);
    }
    m
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_snapshot_entries.txt", 256, "/../../"))]

    /// The entries of a remembered map may come in any order (this build writes them in
    /// forgetting order, earlier ones in hash-map order): the map restored is the same,
    /// forgetting order included. An entry repeated in place of another is refused.
    #[test]
    fn remembered_entries_restore_in_any_order(
        count in 0u128..300,
        max in 1usize..400,
        in_order in 0usize..300,
        ranks in Just((0..300usize).collect::<Vec<_>>()).prop_shuffle(),
        repeat in any::<bool>(),
    ) {
        let m = remembered(count, max);
        let put = |_: u128, v: &u64, out: &mut Vec<u8>| out.extend_from_slice(&v.to_le_bytes());
        let bytes = super::encode_remembered(&m, 8, Some(put));
        let len = m.len();
        let entries_at = 8 + 16 * len;
        let mut entries: Vec<&[u8]> = bytes[entries_at..].chunks(24).collect();
        // The first `in_order` stay in place; the rest are shuffled (sorted by random ranks).
        let from = in_order.min(len);
        let mut rest: Vec<(usize, &[u8])> =
            entries.drain(from..).enumerate().map(|(i, e)| (ranks[i], e)).collect();
        rest.sort_unstable_by_key(|(rank, _)| *rank);
        entries.extend(rest.into_iter().map(|(_, e)| e));
        if repeat && len >= 2 {
            entries[len - 1] = entries[0];
        }
        let mut shuffled = bytes[..entries_at].to_vec();
        shuffled.extend(entries.concat());
        let value = |_: u128, r: &mut super::Reader<'_>| r.u64("value");
        let restored = super::decode_remembered(super::Reader::new(&shuffled, None), max, value);
        if repeat && len >= 2 {
            prop_assert!(restored.is_err());
        } else {
            let restored = restored.expect("restores");
            prop_assert!(restored.iter().eq(m.iter()));
            for (key, v) in m.iter() {
                prop_assert_eq!(restored.get(&key), Some(v));
            }
            prop_assert!(restored.get(&1).is_none());
        }
    }
}

/// Clearing totals a snapshot may hold are bounded so that sums of amounts can never wrap:
/// a file past the bounds (forged, since its checksum holds) is refused, one at them restores.
#[test]
fn clearing_totals_past_their_bounds_are_refused() {
    use crate::clearing::{Clearing, Exposure};
    use ledger::clearing::{PairKey, PairTotals};

    let decode = |c: &Clearing| {
        let bytes = super::encode_clearing(c);
        let r =
            super::Reader::section(ledger::codec::Reader::new(&bytes), super::section::CLEARING);
        super::decode_clearing(r, c.kept)
    };
    let key = PairKey {
        currency: Currency::CNY,
        acquirer: ACQUIRER.participant,
        issuer: ISSUER,
    };
    let at_bounds = || {
        let mut c = Clearing::new(4);
        c.open.id = u64::MAX - 1;
        c.open.transfer_count = super::COUNT_MAX;
        c.open.cleared.insert(
            key,
            PairTotals {
                purchases: super::TOTAL_MAX,
                purchase_count: super::COUNT_MAX,
                refunds: super::TOTAL_MAX,
                refund_count: super::COUNT_MAX,
            },
        );
        c.exposure.insert(
            (ISSUER, Currency::CNY),
            Exposure {
                net: -(super::TOTAL_MAX as i128),
                held: super::TOTAL_MAX,
            },
        );
        c
    };
    assert!(decode(&at_bounds()).is_ok());
    let past: [fn(&mut Clearing); 6] = [
        |c| c.open.id = u64::MAX,
        |c| c.open.transfer_count += 1,
        |c| {
            for t in c.open.cleared.values_mut() {
                t.purchases += 1;
            }
        },
        |c| {
            for t in c.open.cleared.values_mut() {
                t.refund_count += 1;
            }
        },
        |c| {
            for e in c.exposure.values_mut() {
                e.net -= 1;
            }
        },
        |c| {
            for e in c.exposure.values_mut() {
                e.held += 1;
            }
        },
    ];
    for (i, change) in past.iter().enumerate() {
        let mut c = at_bounds();
        change(&mut c);
        assert!(
            matches!(decode(&c), Err(SnapshotError::Malformed { .. })),
            "change {i} passed"
        );
    }
}
