//! The test vectors of docs/PROTOCOL.md, checked against the codec in both directions.
//!
//! A vector is a fenced block whose info string is `wire-vector NAME`. Each line holds hex
//! bytes, optionally followed by `# comment`; a line with a comment starts a new field, a line
//! without one continues the previous field. The bytes of all lines together are one frame.
//!
//! For every vector this test checks that the doc's hex decodes to the value below, that the
//! value encodes to the doc's hex, and that the block's text is exactly what the codec's
//! field annotations render to (so the comments cannot drift from the bytes). On a mismatch it
//! writes every block as it should read to a file and names the file.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use switch::wire::{
    AccountFlags, AccountId, Amount, Balance, BalanceTarget, CardNumber, Currency, EchoPayload,
    ErrorCode, ErrorMessage, Frame, FrameKind, Limits, Movement, NetPosition, Op, Operation,
    ParticipantId, ParticipantName, Reason, ReportChunk, Request, RequestId, Response,
    ResponseBody, ResponseCode, Roles, Status, Timestamp, TransferId, TransferState, WindowId,
    WindowRecord, WindowReport, WindowState, annotate_frame, decode_frame, encode_frame,
};

const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");
const FENCE: &str = "```";
const INFO: &str = "wire-vector ";

const CNY: Currency = Currency(156);
const PAN: &str = "6212345678901234";
/// 2026-11-11 00:00:00 UTC in nanoseconds.
const MIDNIGHT_NS: u64 = 1_794_355_200_000_000_000;

fn number(digits: &str) -> CardNumber {
    CardNumber::new(digits).expect("test numbers are digits")
}

fn one_request(correlation_id: u64, id: u128, operation: Operation) -> Frame {
    Frame::Requests {
        correlation_id,
        budget_ms: 0,
        requests: vec![Request {
            id: RequestId(id),
            operation,
        }],
    }
}

fn one_response(correlation_id: u64, id: u128, body: ResponseBody) -> Frame {
    Frame::Responses {
        correlation_id,
        retry_after_ms: 0,
        responses: vec![Response {
            request_id: RequestId(id),
            code: ResponseCode::Approved,
            reason: Reason::NONE,
            body,
        }],
    }
}

fn movement(transfer: u128, amount: u64, currency: Currency) -> Movement {
    Movement {
        transfer: TransferId(transfer),
        amount: Amount(amount),
        currency,
    }
}

fn closed_window() -> WindowRecord {
    WindowRecord {
        window: WindowId(41),
        state: WindowState::Closed,
        opened_at: Timestamp(MIDNIGHT_NS - 3_600_000_000_000),
        closed_at: Timestamp(MIDNIGHT_NS),
        transfer_count: 1_000_000,
    }
}

/// Every vector the doc must hold, in the doc's order.
fn vectors() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "request-create-participant",
            one_request(
                1,
                0x0101,
                Operation::CreateParticipant {
                    participant: ParticipantId(7),
                    roles: Roles(Roles::ISSUER.0 | Roles::ACQUIRER.0),
                    name: ParticipantName::new("Bank 7").expect("short"),
                },
            ),
        ),
        (
            "request-create-account",
            one_request(
                2,
                0x0102,
                Operation::CreateAccount {
                    account: AccountId(0x7001),
                    owner: ParticipantId(7),
                    currency: CNY,
                    flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    number: number(PAN),
                },
            ),
        ),
        (
            "request-fund",
            one_request(
                3,
                0x0103,
                Operation::Fund {
                    account: AccountId(0x7001),
                    amount: Amount(100_000),
                    currency: CNY,
                },
            ),
        ),
        (
            "request-set-limits",
            one_request(
                4,
                0x0104,
                Operation::SetLimits {
                    participant: ParticipantId(7),
                    currency: CNY,
                    net_debit_cap: Amount(5_000_000_000),
                },
            ),
        ),
        (
            "request-reload-routes",
            one_request(5, 0x0105, Operation::ReloadRoutes),
        ),
        (
            "request-change-membership",
            one_request(
                40,
                0x0106,
                Operation::ChangeMembership { remove: 3, add: 4 },
            ),
        ),
        (
            "request-authorize",
            one_request(
                6,
                0x0201,
                Operation::Authorize {
                    number: number(PAN),
                    merchant: AccountId(0x9001),
                    amount: Amount(12_345),
                    currency: CNY,
                    expiry_secs: 0,
                },
            ),
        ),
        (
            "request-capture",
            one_request(
                7,
                0x0202,
                Operation::Capture {
                    authorization: RequestId(0x0201),
                    amount: Amount(10_000),
                },
            ),
        ),
        (
            "request-reverse",
            one_request(
                8,
                0x0203,
                Operation::Reverse {
                    authorization: RequestId(0x0209),
                },
            ),
        ),
        (
            "request-sale",
            one_request(
                9,
                0x0204,
                Operation::Sale {
                    number: number(PAN),
                    merchant: AccountId(0x9001),
                    amount: Amount(500),
                    currency: CNY,
                },
            ),
        ),
        (
            "request-refund",
            one_request(
                10,
                0x0205,
                Operation::Refund {
                    original: RequestId(0x0204),
                    amount: Amount(200),
                    currency: CNY,
                },
            ),
        ),
        (
            "request-balance-inquiry-account",
            one_request(
                11,
                0x0206,
                Operation::BalanceInquiry {
                    target: BalanceTarget::Account(AccountId(0x7001)),
                },
            ),
        ),
        (
            "request-balance-inquiry-number",
            one_request(
                12,
                0x0207,
                Operation::BalanceInquiry {
                    target: BalanceTarget::Number(number(PAN)),
                },
            ),
        ),
        (
            "request-transfer-status",
            one_request(
                13,
                0x0208,
                Operation::TransferStatus {
                    lookup: RequestId(0x0201),
                },
            ),
        ),
        (
            "request-close-window",
            one_request(
                14,
                0x0301,
                Operation::CloseWindow {
                    window: WindowId(0),
                },
            ),
        ),
        (
            "request-list-windows",
            one_request(15, 0x0302, Operation::ListWindows),
        ),
        (
            "request-window-report",
            one_request(
                16,
                0x0303,
                Operation::WindowReport {
                    window: WindowId(41),
                },
            ),
        ),
        (
            "request-report-file",
            one_request(
                17,
                0x0304,
                Operation::ReportFile {
                    window: WindowId(41),
                    file: 2,
                    offset: 0,
                },
            ),
        ),
        (
            "request-echo",
            one_request(
                18,
                0x0401,
                Operation::Echo {
                    payload: EchoPayload::new(*b"ping").expect("short"),
                },
            ),
        ),
        (
            "request-batch",
            Frame::Requests {
                correlation_id: 19,
                budget_ms: 250,
                requests: vec![
                    Request {
                        id: RequestId(0x0501),
                        operation: Operation::Authorize {
                            number: number("4111111111111111"),
                            merchant: AccountId(0x9001),
                            amount: Amount(999),
                            currency: CNY,
                            expiry_secs: 600,
                        },
                    },
                    Request {
                        id: RequestId(0x0502),
                        operation: Operation::Capture {
                            authorization: RequestId(0x0501),
                            amount: Amount(999),
                        },
                    },
                ],
            },
        ),
        (
            "response-create-participant",
            one_response(1, 0x0101, ResponseBody::CreateParticipant),
        ),
        (
            "response-create-account",
            one_response(2, 0x0102, ResponseBody::CreateAccount),
        ),
        (
            "response-fund",
            one_response(
                3,
                0x0103,
                ResponseBody::Fund(movement(0x1_0001, 100_000, CNY)),
            ),
        ),
        (
            "response-set-limits",
            one_response(4, 0x0104, ResponseBody::SetLimits),
        ),
        (
            "response-reload-routes",
            one_response(5, 0x0105, ResponseBody::ReloadRoutes { route_count: 1200 }),
        ),
        (
            "response-change-membership",
            one_response(40, 0x0106, ResponseBody::ChangeMembership { index: 1834 }),
        ),
        (
            "response-authorize",
            one_response(
                6,
                0x0201,
                ResponseBody::Authorize(movement(0x1_0002, 12_345, CNY)),
            ),
        ),
        (
            "response-capture",
            one_response(
                7,
                0x0202,
                ResponseBody::Capture(movement(0x1_0003, 10_000, CNY)),
            ),
        ),
        (
            "response-reverse",
            one_response(
                8,
                0x0203,
                ResponseBody::Reverse(movement(0x1_0004, 12_345, CNY)),
            ),
        ),
        (
            "response-sale",
            one_response(9, 0x0204, ResponseBody::Sale(movement(0x1_0005, 500, CNY))),
        ),
        (
            "response-refund",
            one_response(
                10,
                0x0205,
                ResponseBody::Refund(movement(0x1_0006, 200, CNY)),
            ),
        ),
        (
            "response-balance-inquiry",
            one_response(
                11,
                0x0206,
                ResponseBody::BalanceInquiry(Balance {
                    account: AccountId(0x7001),
                    currency: CNY,
                    available: 87_655,
                    ledger: 100_000,
                }),
            ),
        ),
        (
            "response-transfer-status",
            one_response(
                13,
                0x0208,
                ResponseBody::TransferStatus(Status {
                    state: TransferState::Captured,
                    currency: CNY,
                    transfer: TransferId(0x1_0002),
                    amount: Amount(12_345),
                    captured: Amount(10_000),
                    refunded: Amount(0),
                }),
            ),
        ),
        (
            "response-close-window",
            one_response(
                14,
                0x0301,
                ResponseBody::CloseWindow {
                    window: WindowId(41),
                },
            ),
        ),
        (
            "response-list-windows",
            one_response(
                15,
                0x0302,
                ResponseBody::ListWindows(vec![
                    closed_window(),
                    WindowRecord {
                        window: WindowId(42),
                        state: WindowState::Open,
                        opened_at: Timestamp(MIDNIGHT_NS),
                        closed_at: Timestamp(0),
                        transfer_count: 17,
                    },
                ]),
            ),
        ),
        (
            "response-window-report",
            one_response(
                16,
                0x0303,
                ResponseBody::WindowReport(WindowReport {
                    window: closed_window(),
                    positions: vec![
                        NetPosition {
                            participant: ParticipantId(7),
                            currency: CNY,
                            net: -250_000,
                        },
                        NetPosition {
                            participant: ParticipantId(9),
                            currency: CNY,
                            net: 250_000,
                        },
                    ],
                }),
            ),
        ),
        (
            "response-window-report-declined",
            Frame::Responses {
                correlation_id: 16,
                retry_after_ms: 0,
                responses: vec![Response::declined(
                    RequestId(0x0303),
                    Op::WindowReport,
                    ResponseCode::InvalidTransaction,
                    Reason::WINDOW_NOT_FOUND,
                )],
            },
        ),
        (
            "response-report-file",
            one_response(
                17,
                0x0304,
                ResponseBody::ReportFile {
                    total_len: 5,
                    chunk: ReportChunk::new(*b"{\n  \"").expect("short"),
                },
            ),
        ),
        (
            "response-echo",
            one_response(
                18,
                0x0401,
                ResponseBody::Echo(EchoPayload::new(*b"ping").expect("short")),
            ),
        ),
        (
            "response-batch-declined",
            Frame::Responses {
                correlation_id: 19,
                retry_after_ms: 0,
                responses: vec![
                    Response::declined(
                        RequestId(0x0501),
                        Op::Authorize,
                        ResponseCode::InsufficientFunds,
                        Reason::INSUFFICIENT_FUNDS,
                    ),
                    Response::declined(
                        RequestId(0x0502),
                        Op::Capture,
                        ResponseCode::InvalidTransaction,
                        Reason::AUTHORIZATION_NOT_FOUND,
                    ),
                ],
            },
        ),
        (
            "response-batch-shed",
            Frame::Responses {
                correlation_id: 20,
                retry_after_ms: 40,
                responses: vec![
                    Response::declined(
                        RequestId(0x0601),
                        Op::Authorize,
                        ResponseCode::SystemBusy,
                        Reason::SHED,
                    ),
                    Response::declined(
                        RequestId(0x0602),
                        Op::Sale,
                        ResponseCode::SystemBusy,
                        Reason::DEADLINE_PASSED,
                    ),
                ],
            },
        ),
        (
            "error-bad-field",
            Frame::Error {
                correlation_id: 6,
                code: ErrorCode::BadField,
                message: ErrorMessage::new(
                    "frame offset 66 (batch item 0): number: not ASCII digits 0-9",
                )
                .expect("short"),
            },
        ),
        (
            "error-frame-too-large",
            Frame::Error {
                correlation_id: 0,
                code: ErrorCode::FrameTooLarge,
                message: ErrorMessage::new(
                    "frame offset 0: length: frame of 2097152 bytes exceeds the limit of 1048576",
                )
                .expect("short"),
            },
        ),
        (
            "error-server-busy",
            Frame::Error {
                correlation_id: 9,
                code: ErrorCode::ServerBusy,
                message: ErrorMessage::new(switch::server::connection::SERVER_BUSY_MESSAGE)
                    .expect("short"),
            },
        ),
        (
            "error-not-leader",
            Frame::Error {
                correlation_id: 10,
                code: ErrorCode::NotLeader,
                message: switch::wire::not_leader_message(Some(
                    "127.0.0.1:4432".parse().expect("an address"),
                )),
            },
        ),
    ]
}

/// One vector as the doc has it.
struct DocVector {
    name: String,
    /// The block's lines, verbatim.
    text: String,
    bytes: Vec<u8>,
}

fn parse_doc(doc: &str) -> Result<Vec<DocVector>, String> {
    let mut vectors = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        let Some(name) = line.strip_prefix(FENCE).and_then(|l| l.strip_prefix(INFO)) else {
            continue;
        };
        let mut vector = DocVector {
            name: name.trim().to_owned(),
            text: String::new(),
            bytes: Vec::new(),
        };
        let mut closed = false;
        for (number, line) in lines.by_ref() {
            if line.trim_end() == FENCE {
                closed = true;
                break;
            }
            vector.text.push_str(line);
            vector.text.push('\n');
            let hex = line.split('#').next().unwrap_or_default();
            for pair in hex.split_whitespace() {
                let byte = u8::from_str_radix(pair, 16)
                    .ok()
                    .filter(|_| pair.len() == 2)
                    .ok_or_else(|| format!("PROTOCOL.md line {}: bad hex {pair:?}", number + 1))?;
                vector.bytes.push(byte);
            }
        }
        if !closed {
            return Err(format!("vector {} is not closed", vector.name));
        }
        vectors.push(vector);
    }
    Ok(vectors)
}

const BYTES_PER_LINE: usize = 16;
const SIGNED_FIELDS: [&str; 3] = ["available", "ledger", "net"];
const TEXT_FIELDS: [&str; 3] = ["name", "number", "message"];

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a field's bytes mean, for the comment.
fn value_of(name: &str, bytes: &[u8]) -> String {
    if TEXT_FIELDS.contains(&name) {
        return format!("{:?}", String::from_utf8_lossy(bytes));
    }
    if name == "payload" {
        return format!("{} bytes", bytes.len());
    }
    let first = bytes.first().copied().unwrap_or_default();
    match name {
        "op" => return format!("{first:#04x} {:?}", Op::from_u8(first).expect("known op")),
        "kind" => {
            let kind = FrameKind::from_u8(first).expect("known kind");
            return format!("{first} {kind:?}");
        }
        "code" => {
            let code = ResponseCode::from_u8(first).expect("known code");
            return format!("{first} {code:?}");
        }
        "reason" => {
            return format!("{first} {}", Reason(first).name().unwrap_or("unlisted"));
        }
        "error_code" => {
            let code = u16::from_le_bytes([first, bytes.get(1).copied().unwrap_or_default()]);
            let code = ErrorCode::from_u16(code).expect("known error code");
            return format!("{} {code:?}", code.as_u16());
        }
        "target" => {
            let target = if first == 1 { "account" } else { "number" };
            return format!("{first} {target}");
        }
        _ => {}
    }
    match bytes.len() {
        1 => bytes[0].to_string(),
        2 => u16::from_le_bytes([bytes[0], bytes[1]]).to_string(),
        4 => u32::from_le_bytes(bytes.try_into().expect("4 bytes")).to_string(),
        8 => u64::from_le_bytes(bytes.try_into().expect("8 bytes")).to_string(),
        16 if SIGNED_FIELDS.contains(&name) => {
            i128::from_le_bytes(bytes.try_into().expect("16 bytes")).to_string()
        }
        16 => format!(
            "{:#x}",
            u128::from_le_bytes(bytes.try_into().expect("16 bytes"))
        ),
        _ => String::new(),
    }
}

/// A vector's block body as the doc must hold it.
fn render(frame: &Frame) -> String {
    let fields = annotate_frame(frame).expect("vectors encode");
    let mut text = String::new();
    for field in fields {
        let mut chunks = field.bytes.chunks(BYTES_PER_LINE);
        let first = chunks.next().unwrap_or_default();
        let value = value_of(field.name, &field.bytes);
        let comment = if value.is_empty() {
            field.name.to_owned()
        } else {
            format!("{} = {value}", field.name)
        };
        let line = format!("{:<48} # {comment}", hex(first));
        writeln!(text, "{}", line.trim_end()).expect("string");
        for chunk in chunks {
            writeln!(text, "{}", hex(chunk)).expect("string");
        }
    }
    text
}

#[test]
fn protocol_md_vectors_match_the_codec() {
    let doc = parse_doc(PROTOCOL_MD).expect("PROTOCOL.md parses");
    let expected = vectors();
    let mut failures = Vec::new();

    let doc_names: Vec<&str> = doc.iter().map(|v| v.name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    if doc_names != expected_names {
        failures.push(format!(
            "vector names differ:\n  doc:      {doc_names:?}\n  expected: {expected_names:?}"
        ));
    }

    for (name, frame) in &expected {
        let Some(vector) = doc.iter().find(|v| v.name == *name) else {
            continue;
        };
        match decode_frame(&vector.bytes, &Limits::DEFAULT) {
            Ok(Some((decoded, consumed))) => {
                if decoded != *frame {
                    failures.push(format!("{name}: decodes to {decoded:?}"));
                }
                if consumed != vector.bytes.len() {
                    failures.push(format!(
                        "{name}: decoding consumed {consumed} of {} bytes",
                        vector.bytes.len()
                    ));
                }
            }
            other => failures.push(format!("{name}: decoding gave {other:?}")),
        }
        let mut encoded = Vec::new();
        encode_frame(frame, &mut encoded).expect("vectors encode");
        if encoded != vector.bytes {
            failures.push(format!(
                "{name}: encodes to\n{}\nnot\n{}",
                hex(&encoded),
                hex(&vector.bytes)
            ));
        }
        if render(frame) != vector.text {
            failures.push(format!("{name}: block text differs from the rendering"));
        }
    }

    if !failures.is_empty() {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("protocol-vectors.md");
        let mut blocks = String::new();
        for (name, frame) in &expected {
            writeln!(blocks, "{FENCE}{INFO}{name}\n{}{FENCE}\n", render(frame)).expect("string");
        }
        std::fs::write(&path, blocks).expect("write rendered vectors");
        panic!(
            "docs/PROTOCOL.md vectors disagree with the codec:\n{}\nThe blocks as they should read are in {}",
            failures.join("\n"),
            path.display()
        );
    }
}

#[test]
fn vectors_cover_every_message() {
    let mut request_ops = BTreeSet::new();
    let mut response_ops = BTreeSet::new();
    let mut error_frames = 0;
    for (_, frame) in vectors() {
        match frame {
            Frame::Requests { requests, .. } => {
                request_ops.extend(requests.iter().map(|r| r.operation.op()));
            }
            Frame::Responses { responses, .. } => {
                response_ops.extend(responses.iter().map(|r| r.body.op()));
            }
            Frame::Error { .. } => error_frames += 1,
        }
    }
    let all: BTreeSet<Op> = Op::ALL.into_iter().collect();
    assert_eq!(request_ops, all, "a request vector for every op");
    assert_eq!(response_ops, all, "a response vector for every op");
    assert!(error_frames > 0, "an error frame vector");
}

#[test]
fn the_parser_reads_what_the_renderer_writes() {
    for (name, frame) in vectors() {
        let block = format!(
            "text\n{FENCE}{INFO}{name}\n{}{FENCE}\nmore text\n",
            render(&frame)
        );
        let parsed = parse_doc(&block).expect("parses");
        assert_eq!(parsed.len(), 1);
        let mut encoded = Vec::new();
        encode_frame(&frame, &mut encoded).expect("encodes");
        assert_eq!(parsed[0].bytes, encoded, "{name}");
        assert_eq!(parsed[0].name, name);
    }
    assert!(parse_doc(&format!("{FENCE}{INFO}open\n00\n")).is_err());
    assert!(parse_doc(&format!("{FENCE}{INFO}bad\n0g\n{FENCE}\n")).is_err());
}

fn vector(name: &str) -> Frame {
    vectors()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, frame)| frame)
        .expect("vector exists")
}

/// The error-frame vectors are what the codec really says about the inputs their
/// descriptions name.
#[test]
fn error_vectors_are_the_codecs_own_errors() {
    let mut bytes = Vec::new();
    encode_frame(&vector("request-authorize"), &mut bytes).expect("encodes");
    let number_at = 16 + 2 + 48;
    bytes[number_at + 3] = b'A';
    let error = decode_frame(&bytes, &Limits::DEFAULT).expect_err("rejected");
    assert_eq!(vector("error-bad-field"), error.to_frame());

    let two_mib: u32 = 2 << 20;
    let prefix = (two_mib - 4).to_le_bytes();
    let error = decode_frame(&prefix, &Limits::DEFAULT).expect_err("rejected");
    assert_eq!(vector("error-frame-too-large"), error.to_frame());
}

/// The cells of the body rows of the `nth` table (from 0) under the heading that starts with
/// `heading`, before the next heading.
fn table(heading: &str, nth: usize) -> Vec<Vec<String>> {
    let section: Vec<&str> = PROTOCOL_MD
        .lines()
        .skip_while(|line| !line.starts_with(heading))
        .skip(1)
        .take_while(|line| !line.starts_with('#'))
        .collect();
    let tables: Vec<&[&str]> = section
        .split(|line| !line.starts_with('|'))
        .filter(|lines| !lines.is_empty())
        .collect();
    let Some(lines) = tables.get(nth) else {
        panic!("no table {nth} under {heading:?}");
    };
    lines
        .iter()
        .skip(2) // header and separator
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

/// `InsufficientFunds` -> `insufficient funds`.
fn words(debug: impl std::fmt::Debug) -> String {
    let mut text = String::new();
    for c in format!("{debug:?}").chars() {
        if c.is_uppercase() && !text.is_empty() {
            text.push(' ');
        }
        text.extend(c.to_lowercase());
    }
    text
}

fn column(rows: &[Vec<String>], index: usize) -> Vec<String> {
    rows.iter()
        .map(|row| row.get(index).cloned().unwrap_or_default())
        .collect()
}

#[test]
fn doc_tables_match_the_code() {
    use switch::wire::{AppErrorCode, BATCH_LEN_MAX_DEFAULT, FRAME_LEN_MAX_DEFAULT};

    let expected: Vec<(String, String)> = Op::ALL
        .iter()
        .map(|op| (format!("{:#04x}", op.as_u8()), format!("{op:?}")))
        .collect();
    // The first table under the heading is the common prefix; the op table follows it.
    let op_table = table("## 4. Operations", 1);
    let listed: Vec<(String, String)> = op_table
        .iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    assert_eq!(listed, expected, "op table");
    for op in Op::ALL {
        let row = op_table
            .iter()
            .find(|row| row[1] == format!("{op:?}"))
            .expect("listed");
        assert_eq!(row[2] == "yes", op.is_admin(), "admin column of {op:?}");
    }

    let codes = table("### 6.1", 0);
    let listed: Vec<String> = column(&codes, 0);
    let expected: Vec<String> = ResponseCode::ALL
        .iter()
        .map(|c| c.as_u8().to_string())
        .collect();
    assert_eq!(listed, expected, "response codes");
    for row in &codes {
        let value: u8 = row[0].parse().expect("decimal");
        assert_eq!(row[1], format!("{value:02x}"), "hex of {value}");
    }

    let reasons = table("### 6.2", 0);
    for (index, row) in reasons.iter().enumerate() {
        let reason = Reason(u8::try_from(index).expect("small"));
        assert_eq!(row[0], reason.0.to_string());
        assert_eq!(Some(row[1].as_str()), reason.name(), "reason {index}");
    }
    assert_eq!(
        Reason(u8::try_from(reasons.len()).expect("small")).name(),
        None,
        "every reason listed"
    );

    let states = table("### 6.3", 0);
    let expected: Vec<(String, String)> = TransferState::ALL
        .iter()
        .map(|s| ((*s as u8).to_string(), words(s)))
        .collect();
    let listed: Vec<(String, String)> = states
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(listed, expected, "transfer states");

    let windows = table("### 6.4", 0);
    let expected: Vec<(String, String)> = WindowState::ALL
        .iter()
        .map(|s| ((*s as u8).to_string(), words(s)))
        .collect();
    let listed: Vec<(String, String)> = windows
        .iter()
        .map(|r| {
            (
                r[0].clone(),
                r[1].split(':').next().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed, expected, "window states");

    let errors = table("### 7.1", 0);
    let expected: Vec<(String, String)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u16().to_string(), words(c)))
        .collect();
    let listed: Vec<(String, String)> = errors
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(listed, expected, "error codes");

    let app = table("### 7.3", 0);
    let expected: Vec<(String, String)> = AppErrorCode::ALL
        .iter()
        .map(|c| (format!("{:#04x}", c.as_u32()), words(c)))
        .collect();
    let listed: Vec<(String, String)> = app.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(listed, expected, "QUIC application error codes");

    let limits = table("## 8. Limits", 0);
    let default_of = |limit: &str| {
        limits
            .iter()
            .find(|row| row[0].starts_with(limit))
            .map(|row| row[1].replace(' ', ""))
            .unwrap_or_else(|| panic!("limit {limit:?} listed"))
    };
    assert!(default_of("frame size").contains(&FRAME_LEN_MAX_DEFAULT.to_string()));
    assert_eq!(
        default_of("operations per batch"),
        BATCH_LEN_MAX_DEFAULT.to_string()
    );
    assert_eq!(
        default_of("concurrent streams"),
        switch::wire::STREAMS_PER_CONNECTION_MAX_DEFAULT.to_string()
    );
    assert_eq!(
        default_of("operations in flight"),
        switch::wire::IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT.to_string()
    );
    assert_eq!(
        default_of("protocol errors"),
        switch::wire::PROTOCOL_ERRORS_PER_CONNECTION_MAX_DEFAULT.to_string()
    );
    assert!(default_of("participant name").starts_with(&ParticipantName::LEN_MAX.to_string()));
    assert!(default_of("card or wallet number").starts_with(&CardNumber::LEN_MAX.to_string()));
    assert!(default_of("echo payload").starts_with(&EchoPayload::LEN_MAX.to_string()));
    assert!(default_of("error message").starts_with(&ErrorMessage::LEN_MAX.to_string()));

    let alpn = std::str::from_utf8(switch::wire::ALPN).expect("ASCII");
    assert!(PROTOCOL_MD.contains(&format!("**`{alpn}`**")));
    let alpn_hex: Vec<String> = switch::wire::ALPN
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(PROTOCOL_MD.contains(&alpn_hex.join(" ")));
}
