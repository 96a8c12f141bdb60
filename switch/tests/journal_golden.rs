//! Golden bytes of the switch's log and golden request fingerprints.
//!
//! Logs and snapshots already on disk hold these bytes, and their commands carry the
//! fingerprints of the requests they came from (a repeat after an upgrade must still match):
//! neither may change, whatever the code that writes them looks like. One command of each kind
//! is checked against its bytes as `docs/WAL-FORMAT.md` lays them out (a space between fields)
//! in both directions, and one request of each kind against its fingerprint. A failure lists
//! every value that changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;

use ledger::clearing::{FeeRate, FeeSchedule};
use ledger::{AccountFlags, AccountId, Amount, Currency, ParticipantId, Timestamp};
use rust_decimal::Decimal;
use switch::core::{
    Capture, Command, CreateAccount, CreateParticipant, Fund, Logged, Refund, Request, RequestId,
    Reverse, SetLimits, Target,
};
use switch::journal::{SwitchRecord, encode_command, fingerprint};
use switch::tls::Identity;

const BANK: ParticipantId = ParticipantId(7);
const ACCOUNT: AccountId = AccountId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
const CARD: AccountId = AccountId(7001);
const MERCHANT: AccountId = AccountId(7500);
const AUTHORIZATION: RequestId = RequestId(0x0a0b_0c0d);
const PAN: &str = "6212345678901234";
/// 2026-11-11 01:00:00 UTC in nanoseconds.
const EXPIRY: Timestamp = Timestamp(1_794_358_800_000_000_000);
/// Who sends the requests whose fingerprints are checked.
const SENDER: Identity = Identity {
    participant: ParticipantId(0x0102_0304),
    admin: true,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Golden hex, fields separated by spaces, as bytes.
fn unhex(fields: &str) -> Vec<u8> {
    let digits: String = fields.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("golden hex"))
        .collect()
}

fn rate(percent: &str, fixed: &str) -> FeeRate {
    FeeRate {
        percent: Decimal::from_str(percent).expect("decimal"),
        fixed: Decimal::from_str(fixed).expect("decimal"),
    }
}

/// One command of each kind (and both forms of an account's number), with its bytes.
fn commands() -> Vec<(Command, &'static str)> {
    let mut by_issuer = BTreeMap::new();
    by_issuer.insert(ParticipantId(3), (rate("0.6", "0.01"), rate("0", "0")));
    let fees = Arc::new(FeeSchedule {
        purchase: rate("0.55", "0"),
        refund: rate("0", "0.05"),
        by_issuer,
    });
    vec![
        (
            Command::CreateParticipant(CreateParticipant {
                participant: BANK,
                name: "Bank of Seven".to_string(),
                roles: 3,
            }),
            "01 0700000000000000 0d 42616e6b206f6620536576656e 03",
        ),
        (
            Command::CreateAccount(CreateAccount {
                account: ACCOUNT,
                owner: BANK,
                currency: Currency::CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: Some(PAN.to_string()),
            }),
            "02 100f0e0d0c0b0a090807060504030201 0700000000000000 9c00 0100 \
             10 36323132333435363738393031323334",
        ),
        (
            Command::CreateAccount(CreateAccount {
                account: ACCOUNT,
                owner: BANK,
                currency: Currency::JPY,
                flags: AccountFlags::empty(),
                number: None,
            }),
            "02 100f0e0d0c0b0a090807060504030201 0700000000000000 8801 0000 00",
        ),
        (
            Command::Fund(Fund {
                account: ACCOUNT,
                amount: Amount(1_000_000),
                currency: Currency::JPY,
            }),
            "03 100f0e0d0c0b0a090807060504030201 40420f0000000000 8801",
        ),
        (
            Command::SetLimits(SetLimits {
                participant: BANK,
                currency: Currency::KWD,
                net_debit_cap: Amount(5_000_000),
            }),
            "04 0700000000000000 9e01 404b4c0000000000",
        ),
        (
            Command::Authorize {
                card: CARD,
                merchant: MERCHANT,
                amount: Amount(12_345),
                currency: Currency::CNY,
                expires_at: EXPIRY,
            },
            "05 591b0000000000000000000000000000 4c1d0000000000000000000000000000 \
             3930000000000000 9c00 00a09859d2d7e618",
        ),
        (
            Command::Capture(Capture {
                authorization: AUTHORIZATION,
                amount: Amount(12_000),
            }),
            "06 0d0c0b0a000000000000000000000000 e02e000000000000",
        ),
        (
            Command::Reverse(Reverse {
                authorization: AUTHORIZATION,
            }),
            "07 0d0c0b0a000000000000000000000000",
        ),
        (
            Command::Sale {
                card: CARD,
                merchant: MERCHANT,
                amount: Amount(999),
                currency: Currency::JPY,
            },
            "08 591b0000000000000000000000000000 4c1d0000000000000000000000000000 \
             e703000000000000 8801",
        ),
        (
            Command::Refund(Refund {
                original: RequestId(0x0a0b_0c0e),
                amount: Amount(500),
                currency: Currency::CNY,
            }),
            "09 0e0c0b0a000000000000000000000000 f401000000000000 9c00",
        ),
        (
            Command::CloseWindow { window: 41, fees },
            "0a 2900000000000000 \
             00000200370000000000000000000000 00000000000000000000000000000000 \
             00000000000000000000000000000000 00000200050000000000000000000000 \
             01000000 \
             0300000000000000 \
             00000100060000000000000000000000 00000200010000000000000000000000 \
             00000000000000000000000000000000 00000000000000000000000000000000",
        ),
    ]
}

/// One request of each kind (and both forms of what a balance inquiry is about), with the
/// fingerprint of it sent by `SENDER`.
fn requests() -> Vec<(Request, u64)> {
    vec![
        (
            Request::CreateParticipant(CreateParticipant {
                participant: BANK,
                name: "Bank of Seven".to_string(),
                roles: 3,
            }),
            0x55e1_5d74_5191_8792,
        ),
        (
            Request::CreateAccount(CreateAccount {
                account: ACCOUNT,
                owner: BANK,
                currency: Currency::CNY,
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                number: Some(PAN.to_string()),
            }),
            0x82ba_4925_55d1_00b1,
        ),
        (
            Request::CreateAccount(CreateAccount {
                account: ACCOUNT,
                owner: BANK,
                currency: Currency::JPY,
                flags: AccountFlags::empty(),
                number: None,
            }),
            0x818c_d82d_bf8b_343a,
        ),
        (
            Request::Fund(Fund {
                account: ACCOUNT,
                amount: Amount(1_000_000),
                currency: Currency::JPY,
            }),
            0xfdd6_27f5_f174_03cb,
        ),
        (
            Request::SetLimits(SetLimits {
                participant: BANK,
                currency: Currency::KWD,
                net_debit_cap: Amount(5_000_000),
            }),
            0xf67f_cbe9_cb5b_70af,
        ),
        (
            Request::Authorize {
                number: PAN.to_string(),
                merchant: MERCHANT,
                amount: Amount(12_345),
                currency: Currency::CNY,
                expiry_seconds: 3600,
            },
            0x0cff_b555_bec4_7bd2,
        ),
        (
            Request::Capture(Capture {
                authorization: AUTHORIZATION,
                amount: Amount(12_000),
            }),
            0xb7d0_7da3_4e2c_9258,
        ),
        (
            Request::Reverse(Reverse {
                authorization: AUTHORIZATION,
            }),
            0x770c_ffd3_9094_1519,
        ),
        (
            Request::Sale {
                number: PAN.to_string(),
                merchant: MERCHANT,
                amount: Amount(999),
                currency: Currency::JPY,
            },
            0x6f94_3189_c7f5_8a6f,
        ),
        (
            Request::Refund(Refund {
                original: RequestId(0x0a0b_0c0e),
                amount: Amount(500),
                currency: Currency::CNY,
            }),
            0x7534_57bb_bde5_6ed3,
        ),
        (
            Request::BalanceInquiry {
                target: Target::Number(PAN.to_string()),
            },
            0xd71f_43ad_2f06_a867,
        ),
        (
            Request::BalanceInquiry {
                target: Target::Account(CARD),
            },
            0xf0e6_3f58_3244_8289,
        ),
        (
            Request::TransferStatus { of: AUTHORIZATION },
            0xb3ab_17ec_8d7b_e39d,
        ),
        (Request::CloseWindow { window: 41 }, 0x9694_0b17_1225_a49a),
        (Request::ListWindows, 0x5044_1d41_bd94_f726),
        (Request::WindowReport { window: 41 }, 0x8c6e_0784_4839_76f0),
        (
            Request::Echo {
                payload: b"ping".to_vec(),
            },
            0x858d_5567_264b_f09c,
        ),
    ]
}

#[test]
fn commands_encode_to_their_golden_bytes_and_back() {
    let mut changed = String::new();
    for (command, golden) in commands() {
        let golden = unhex(golden);
        let mut encoded = Vec::new();
        encode_command(&command, &mut encoded);
        if encoded != golden {
            let _ = writeln!(
                changed,
                "{command:?}\n  golden:  {}\n  encoded: {}",
                hex(&golden),
                hex(&encoded)
            );
        }
        // The golden bytes, as a logged command in a batch record, read back as the command.
        let mut record = vec![0x81];
        record.extend_from_slice(&EXPIRY.0.to_le_bytes());
        record.extend_from_slice(&1u32.to_le_bytes());
        record.extend_from_slice(&AUTHORIZATION.0.to_le_bytes());
        record.extend_from_slice(&BANK.0.to_le_bytes());
        record.push(1);
        record.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        record.extend_from_slice(&golden);
        let expected = SwitchRecord::Batch {
            now: EXPIRY,
            commands: vec![Logged {
                id: AUTHORIZATION,
                who: Identity {
                    participant: BANK,
                    admin: true,
                },
                fingerprint: 0x1122_3344_5566_7788,
                command: command.clone(),
            }],
        };
        match SwitchRecord::decode(&record) {
            Ok(decoded) if decoded == expected => {}
            other => {
                let _ = writeln!(changed, "{command:?}\n  golden bytes decode to {other:?}");
            }
        }
    }
    assert!(changed.is_empty(), "the log format changed:\n{changed}");
}

#[test]
fn requests_keep_their_golden_fingerprints() {
    let mut changed = String::new();
    let mut check = |who: Identity, request: &Request, golden: u64| {
        let now = fingerprint(who, request);
        if now != golden {
            let _ = writeln!(
                changed,
                "{request:?} from {who:?}\n  golden: {golden:#018x}\n  now:    {now:#018x}"
            );
        }
    };
    for (request, golden) in requests() {
        check(SENDER, &request, golden);
    }
    // Who sent it is part of it: the same request from a client that is not an admin.
    let client = Identity {
        admin: false,
        ..SENDER
    };
    check(client, &Request::ListWindows, 0x5047_7f41_bd97_d383);
    assert!(changed.is_empty(), "fingerprints changed:\n{changed}");
}
