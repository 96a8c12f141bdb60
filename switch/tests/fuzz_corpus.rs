//! Replays every committed fuzz corpus file of the switch's targets through the same checks the
//! fuzz targets run (`switch::fuzz_check`), so a regression fails `cargo test` on the stable
//! toolchain without a fuzzer.
//!
//! The seeds are built here too: the wire corpus from the hex test vectors of
//! docs/PROTOCOL.md, the journal corpus from encoded sample records. `WRITE_FUZZ_SEEDS=1 cargo
//! test -p switch --test fuzz_corpus` (re)writes them into `fuzz/corpus/<target>/seed-*`;
//! without it they are only checked.

use std::path::{Path, PathBuf};

use ledger::{AccountFlags, AccountId, Amount, Currency, ParticipantId, Timestamp};
use switch::core::{
    Capture, Command, CreateAccount, CreateParticipant, Fund, Logged, Refund, RequestId, Reverse,
    SetLimits,
};
use switch::fuzz_check;
use switch::journal::SwitchRecord;
use switch::tls::Identity;

const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every `wire-vector` block of docs/PROTOCOL.md as (name, frame bytes).
fn wire_vectors() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for line in PROTOCOL_MD.lines() {
        if let Some(name) = line.strip_prefix("```wire-vector ") {
            current = Some((name.trim().to_string(), Vec::new()));
        } else if line.starts_with("```") {
            out.extend(current.take());
        } else if let Some((_, bytes)) = current.as_mut() {
            let hex = line.split('#').next().unwrap_or("");
            for pair in hex.split_whitespace() {
                bytes.push(u8::from_str_radix(pair, 16).expect("hex pair in a vector"));
            }
        }
    }
    out
}

fn logged(id: u128, participant: u64, admin: bool, command: Command) -> Logged {
    Logged {
        id: RequestId(id),
        who: Identity {
            participant: ParticipantId(participant),
            admin,
        },
        fingerprint: 0x1234_5678_9abc_def0 ^ id as u64,
        command,
    }
}

/// A replica's log records: runs of each entry type (the normal ones holding switch records),
/// and a reset.
fn replica_records() -> Vec<(String, Vec<u8>)> {
    use raft::eraftpb::{Entry, EntryType};
    use switch::replica::record::{encode_entries, encode_reset};
    let entry = |index: u64, term: u64, kind: EntryType, data: Vec<u8>| {
        let mut e = Entry {
            index,
            term,
            data: data.into(),
            ..Entry::default()
        };
        e.set_entry_type(kind);
        e
    };
    let payloads: Vec<Vec<u8>> = switch_records()
        .into_iter()
        .map(|(_, b)| b)
        .take(3)
        .collect();
    let run: Vec<Entry> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| entry(41 + i as u64, 3, EntryType::EntryNormal, p.clone()))
        .chain([
            entry(44, 3, EntryType::EntryConfChange, vec![8, 1, 16, 4]),
            entry(45, 4, EntryType::EntryConfChangeV2, Vec::new()),
        ])
        .collect();
    let mut entries = Vec::new();
    encode_entries(&run, 40, &mut entries);
    let mut one = Vec::new();
    encode_entries(&run[..1], 0, &mut one);
    let mut reset = Vec::new();
    encode_reset(1_000, 7, &mut reset);
    vec![
        ("entries".into(), entries),
        ("one-entry".into(), one),
        ("reset".into(), reset),
    ]
}

/// Records holding every command.
fn switch_records() -> Vec<(String, Vec<u8>)> {
    let now = Timestamp(1_794_355_200_000_000_000);
    let cny = Currency::CNY;
    let admin = vec![
        logged(
            1,
            1,
            true,
            Command::CreateParticipant(CreateParticipant {
                participant: ParticipantId(7),
                name: "issuer bank".into(),
                roles: 3,
            }),
        ),
        logged(
            2,
            1,
            true,
            Command::CreateAccount(CreateAccount {
                account: AccountId(0x7001),
                owner: ParticipantId(7),
                currency: cny,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: Some("6212345678901234".into()),
            }),
        ),
        logged(
            3,
            1,
            true,
            Command::Fund(Fund {
                account: AccountId(0x7001),
                amount: Amount(1_000_000),
                currency: cny,
            }),
        ),
        logged(
            4,
            1,
            true,
            Command::SetLimits(SetLimits {
                participant: ParticipantId(7),
                currency: cny,
                net_debit_cap: Amount(5_000_000),
            }),
        ),
    ];
    let payments = vec![
        logged(
            5,
            3,
            false,
            Command::Authorize {
                card: AccountId(0x7001),
                merchant: AccountId(0x8001),
                amount: Amount(12_345),
                currency: cny,
                expires_at: Timestamp(now.0 + 600_000_000_000),
            },
        ),
        logged(
            6,
            3,
            false,
            Command::Capture(Capture {
                authorization: RequestId(5),
                amount: Amount(12_000),
            }),
        ),
        logged(
            7,
            3,
            false,
            Command::Reverse(Reverse {
                authorization: RequestId(5),
            }),
        ),
        logged(
            8,
            3,
            false,
            Command::Sale {
                card: AccountId(0x7001),
                merchant: AccountId(0x8001),
                amount: Amount(999),
                currency: cny,
            },
        ),
        logged(
            9,
            3,
            false,
            Command::Refund(Refund {
                original: RequestId(8),
                amount: Amount(500),
                currency: cny,
            }),
        ),
    ];
    let mut out = Vec::new();
    for (name, record) in [
        (
            "batch-admin",
            SwitchRecord::Batch {
                now,
                commands: admin,
            },
        ),
        (
            "batch-payments",
            SwitchRecord::Batch {
                now,
                commands: payments,
            },
        ),
        ("expire", SwitchRecord::Expire { now, at_most: None }),
        (
            "expire-at-most",
            SwitchRecord::Expire {
                now,
                at_most: Some(4096),
            },
        ),
    ] {
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        out.push((name.to_string(), bytes));
    }
    out
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "wire_frames" => {
            let vectors = wire_vectors();
            // One stream of several frames, as a pipelining client sends them.
            let stream: Vec<u8> = vectors
                .iter()
                .filter(|(name, _)| name.starts_with("request-"))
                .flat_map(|(_, bytes)| bytes.iter().copied())
                .collect();
            let mut seeds = vectors;
            seeds.push(("stream-of-requests".into(), stream));
            seeds
        }
        "switch_record" => switch_records(),
        "replica_record" => replica_records(),
        _ => unreachable!("no such target {target}"),
    }
}

/// A fuzz target's name and its check.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 3] = [
    ("wire_frames", fuzz_check::wire_frames),
    ("switch_record", fuzz_check::switch_record),
    ("replica_record", fuzz_check::replica_record),
];

#[test]
fn seeds_pass_their_checks() {
    assert!(
        wire_vectors().len() >= 30,
        "the vectors of docs/PROTOCOL.md were not found"
    );
    let write = std::env::var_os("WRITE_FUZZ_SEEDS").is_some();
    for (target, check) in TARGETS {
        for (name, bytes) in seeds(target) {
            check(&bytes);
            if write {
                std::fs::create_dir_all(corpus_dir(target)).expect("corpus dir");
                let path = corpus_dir(target).join(format!("seed-{name}"));
                std::fs::write(&path, &bytes).expect("writing a seed");
            }
        }
    }
}

#[test]
fn seeds_decode() {
    // Guards the seeds themselves: a corpus of inputs that decode to nothing fuzzes little.
    for (name, bytes) in seeds("wire_frames") {
        let decoded = switch::wire::decode_frame(&bytes, &switch::wire::Limits::DEFAULT);
        assert!(matches!(decoded, Ok(Some(_))), "vector {name}: {decoded:?}");
    }
    for (name, bytes) in seeds("switch_record") {
        assert!(SwitchRecord::decode(&bytes).is_ok(), "record {name}");
    }
    for (name, bytes) in seeds("replica_record") {
        assert!(
            switch::replica::record::Record::decode(&bytes).is_ok(),
            "replica record {name}"
        );
    }
}

#[test]
fn committed_corpora_pass_their_checks() {
    for (target, check) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "the {target} corpus is empty");
        for path in files {
            let bytes = std::fs::read(&path).expect("corpus file");
            let result = std::panic::catch_unwind(|| check(&bytes));
            assert!(
                result.is_ok(),
                "corpus file {} fails its check",
                path.display()
            );
        }
    }
}

#[test]
fn a_journal_string_longer_than_the_writer_writes_is_refused() {
    // Found by the switch_record fuzz target: the decoder took names of up to 255 bytes, which
    // the encoder refuses (it writes at most `NAME_LEN_MAX`), so a decoded record could not be
    // written again.
    let mut bytes = Vec::new();
    SwitchRecord::Batch {
        now: Timestamp(1),
        commands: vec![logged(
            1,
            1,
            true,
            Command::CreateParticipant(CreateParticipant {
                participant: ParticipantId(7),
                name: "n".repeat(switch::journal::NAME_LEN_MAX),
                roles: 3,
            }),
        )],
    }
    .encode(&mut bytes);
    assert!(
        SwitchRecord::decode(&bytes).is_ok(),
        "the longest name is fine"
    );
    // One byte more: the length byte (after 1+8+4 record bytes, 16+8+1+8 command header,
    // 1 command tag and 8 participant bytes) and one more character.
    let len_at = 1 + 8 + 4 + 16 + 8 + 1 + 8 + 1 + 8;
    assert_eq!(usize::from(bytes[len_at]), switch::journal::NAME_LEN_MAX);
    bytes[len_at] += 1;
    bytes.insert(len_at + 1, b'n');
    assert!(SwitchRecord::decode(&bytes).is_err());
    fuzz_check::switch_record(&bytes);
}
