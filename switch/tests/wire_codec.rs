//! Property tests of the wire codec: every message round-trips, every prefix of a frame is
//! "need more", and no input (random or a damaged valid frame) panics the decoder or decodes
//! to anything but the bytes it came from.

use proptest::prelude::*;
use switch::wire::{
    AccountFlags, AccountId, Amount, Balance, BalanceTarget, CardNumber, Currency, EchoPayload,
    ErrorCode, ErrorMessage, Frame, HEADER_LEN, Limits, Movement, NetPosition, Operation,
    ParticipantId, ParticipantName, Reason, ReportChunk, Request, RequestId, Response,
    ResponseBody, ResponseCode, Roles, Status, Timestamp, TransferId, TransferState, WindowId,
    WindowRecord, WindowReport, WindowState, annotate_frame, decode_frame, encode_frame,
    encode_response_frame, fit_responses,
};

// --- strategies -------------------------------------------------------------------------

fn card_number() -> impl Strategy<Value = CardNumber> {
    prop::collection::vec(b'0'..=b'9', 0..=CardNumber::LEN_MAX)
        .prop_map(|digits| CardNumber::from_bytes(&digits).expect("digits within bound"))
}

/// Any characters, cut to the byte bound at a character boundary.
fn bounded_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(move |chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() > max {
                break;
            }
            text.push(c);
        }
        text
    })
}

fn participant_name() -> impl Strategy<Value = ParticipantName> {
    bounded_string(ParticipantName::LEN_MAX)
        .prop_map(|name| ParticipantName::new(name).expect("name within bound"))
}

fn echo_payload() -> impl Strategy<Value = EchoPayload> {
    prop::collection::vec(any::<u8>(), 0..=EchoPayload::LEN_MAX)
        .prop_map(|payload| EchoPayload::new(payload).expect("payload within bound"))
}

fn request_id() -> impl Strategy<Value = RequestId> {
    any::<u128>().prop_map(RequestId)
}

fn account_id() -> impl Strategy<Value = AccountId> {
    any::<u128>().prop_map(AccountId)
}

fn participant_id() -> impl Strategy<Value = ParticipantId> {
    any::<u64>().prop_map(ParticipantId)
}

fn amount() -> impl Strategy<Value = Amount> {
    any::<u64>().prop_map(Amount)
}

fn currency() -> impl Strategy<Value = Currency> {
    any::<u16>().prop_map(Currency)
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (participant_id(), any::<u8>(), participant_name()).prop_map(
            |(participant, roles, name)| Operation::CreateParticipant {
                participant,
                roles: Roles(roles),
                name,
            }
        ),
        (
            account_id(),
            participant_id(),
            currency(),
            any::<u16>(),
            card_number()
        )
            .prop_map(|(account, owner, currency, flags, number)| {
                Operation::CreateAccount {
                    account,
                    owner,
                    currency,
                    flags: AccountFlags(flags),
                    number,
                }
            }),
        (account_id(), amount(), currency()).prop_map(|(account, amount, currency)| {
            Operation::Fund {
                account,
                amount,
                currency,
            }
        }),
        (participant_id(), currency(), amount()).prop_map(
            |(participant, currency, net_debit_cap)| Operation::SetLimits {
                participant,
                currency,
                net_debit_cap,
            }
        ),
        Just(Operation::ReloadRoutes),
        (any::<u64>(), any::<u64>())
            .prop_map(|(remove, add)| Operation::ChangeMembership { remove, add }),
        (
            card_number(),
            account_id(),
            amount(),
            currency(),
            any::<u32>()
        )
            .prop_map(|(number, merchant, amount, currency, expiry_secs)| {
                Operation::Authorize {
                    number,
                    merchant,
                    amount,
                    currency,
                    expiry_secs,
                }
            }),
        (request_id(), amount()).prop_map(|(authorization, amount)| Operation::Capture {
            authorization,
            amount,
        }),
        request_id().prop_map(|authorization| Operation::Reverse { authorization }),
        (card_number(), account_id(), amount(), currency()).prop_map(
            |(number, merchant, amount, currency)| Operation::Sale {
                number,
                merchant,
                amount,
                currency,
            }
        ),
        (request_id(), amount(), currency()).prop_map(|(original, amount, currency)| {
            Operation::Refund {
                original,
                amount,
                currency,
            }
        }),
        prop_oneof![
            account_id().prop_map(BalanceTarget::Account),
            card_number().prop_map(BalanceTarget::Number),
        ]
        .prop_map(|target| Operation::BalanceInquiry { target }),
        request_id().prop_map(|lookup| Operation::TransferStatus { lookup }),
        any::<u64>().prop_map(|window| Operation::CloseWindow {
            window: WindowId(window),
        }),
        Just(Operation::ListWindows),
        (any::<u64>(), any::<u8>(), any::<u64>()).prop_map(|(window, file, offset)| {
            Operation::ReportFile {
                window: WindowId(window),
                file,
                offset,
            }
        }),
        any::<u64>().prop_map(|window| Operation::WindowReport {
            window: WindowId(window)
        }),
        echo_payload().prop_map(|payload| Operation::Echo { payload }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (request_id(), operation()).prop_map(|(id, operation)| Request { id, operation })
}

fn movement() -> impl Strategy<Value = Movement> {
    (any::<u128>(), amount(), currency()).prop_map(|(transfer, amount, currency)| Movement {
        transfer: TransferId(transfer),
        amount,
        currency,
    })
}

fn window_record() -> impl Strategy<Value = WindowRecord> {
    (
        any::<u64>(),
        prop::sample::select(WindowState::ALL.to_vec()),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(window, state, opened_at, closed_at, transfer_count)| WindowRecord {
                window: WindowId(window),
                state,
                opened_at: Timestamp(opened_at),
                closed_at: Timestamp(closed_at),
                transfer_count,
            },
        )
}

fn response_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        Just(ResponseBody::CreateParticipant),
        Just(ResponseBody::CreateAccount),
        movement().prop_map(ResponseBody::Fund),
        Just(ResponseBody::SetLimits),
        any::<u32>().prop_map(|route_count| ResponseBody::ReloadRoutes { route_count }),
        any::<u64>().prop_map(|index| ResponseBody::ChangeMembership { index }),
        movement().prop_map(ResponseBody::Authorize),
        movement().prop_map(ResponseBody::Capture),
        movement().prop_map(ResponseBody::Reverse),
        movement().prop_map(ResponseBody::Sale),
        movement().prop_map(ResponseBody::Refund),
        (account_id(), currency(), any::<i128>(), any::<i128>()).prop_map(
            |(account, currency, available, ledger)| ResponseBody::BalanceInquiry(Balance {
                account,
                currency,
                available,
                ledger,
            })
        ),
        (
            prop::sample::select(TransferState::ALL.to_vec()),
            currency(),
            any::<u128>(),
            amount(),
            amount(),
            amount()
        )
            .prop_map(|(state, currency, transfer, amount, captured, refunded)| {
                ResponseBody::TransferStatus(Status {
                    state,
                    currency,
                    transfer: TransferId(transfer),
                    amount,
                    captured,
                    refunded,
                })
            }),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(total_len, bytes)| {
                ResponseBody::ReportFile {
                    total_len,
                    chunk: ReportChunk::new(bytes).expect("short"),
                }
            }
        ),
        any::<u64>().prop_map(|window| ResponseBody::CloseWindow {
            window: WindowId(window)
        }),
        prop::collection::vec(window_record(), 0..4).prop_map(ResponseBody::ListWindows),
        (
            window_record(),
            prop::collection::vec((participant_id(), currency(), any::<i128>()), 0..4)
        )
            .prop_map(|(window, positions)| {
                ResponseBody::WindowReport(WindowReport {
                    window,
                    positions: positions
                        .into_iter()
                        .map(|(participant, currency, net)| NetPosition {
                            participant,
                            currency,
                            net,
                        })
                        .collect(),
                })
            }),
        echo_payload().prop_map(ResponseBody::Echo),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    (
        request_id(),
        prop::sample::select(ResponseCode::ALL.to_vec()),
        any::<u8>(),
        response_body(),
    )
        .prop_map(|(request_id, code, reason, mut body)| {
            // A window's state is `None` only in a result that is not approved.
            if code == ResponseCode::Approved {
                let records: Vec<&mut WindowRecord> = match &mut body {
                    ResponseBody::ListWindows(windows) => windows.iter_mut().collect(),
                    ResponseBody::WindowReport(report) => vec![&mut report.window],
                    _ => Vec::new(),
                };
                for record in records {
                    if record.state == WindowState::None {
                        record.state = WindowState::Open;
                    }
                }
            }
            Response {
                request_id,
                code,
                reason: Reason(reason),
                body,
            }
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u16>(),
            prop::collection::vec(request(), 1..8)
        )
            .prop_map(|(correlation_id, budget_ms, requests)| Frame::Requests {
                correlation_id,
                budget_ms,
                requests,
            }),
        (
            any::<u64>(),
            any::<u16>(),
            prop::collection::vec(response(), 1..8)
        )
            .prop_map(
                |(correlation_id, retry_after_ms, responses)| Frame::Responses {
                    correlation_id,
                    retry_after_ms,
                    responses,
                }
            ),
        (
            any::<u64>(),
            prop::sample::select(ErrorCode::ALL.to_vec()),
            bounded_string(ErrorMessage::LEN_MAX)
        )
            .prop_map(|(correlation_id, code, message)| Frame::Error {
                correlation_id,
                code,
                message: ErrorMessage::new(message).expect("message within bound"),
            }),
    ]
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut bytes = Vec::new();
    let len = encode_frame(frame, &mut bytes).expect("generated frames are encodable");
    assert_eq!(len, bytes.len(), "encode_frame reports the bytes it wrote");
    bytes
}

/// Whatever the decoder makes of `buf`, it must be consistent with it.
fn check_decode_is_honest(buf: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    match decode_frame(buf, limits) {
        Ok(Some((frame, consumed))) => {
            prop_assert!(consumed <= buf.len());
            // The encoding is canonical: a decoded frame re-encodes to exactly its bytes.
            prop_assert_eq!(&encode(&frame)[..], &buf[..consumed]);
        }
        Ok(None) => {
            // Only a frame whose declared length is not all there yet may ask for more.
            if let Some(prefix) = buf.first_chunk::<4>() {
                let declared = u64::from(u32::from_le_bytes(*prefix)) + 4;
                prop_assert!((buf.len() as u64) < declared);
            }
        }
        Err(error) => {
            prop_assert!(error.offset <= buf.len(), "{error}");
            if let Some(frame_len) = error.frame_len {
                prop_assert!(frame_len >= HEADER_LEN);
                prop_assert!(frame_len <= limits.frame_len_max as usize);
            }
            prop_assert!(!error.to_string().is_empty());
        }
    }
    Ok(())
}

// --- properties -------------------------------------------------------------------------

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_wire_fit.txt"))]

    /// A response frame fitted to a limit is within it whenever the results that cannot be
    /// cut (state changes, results already smallest) fit; only read-only results are cut, to
    /// 91 reason 27, and a result is cut only if keeping it would not fit.
    #[test]
    fn fitted_response_frames_stay_within_the_limit(
        responses in prop::collection::vec(response(), 1..24),
        limit in 64usize..8192,
    ) {
        let mut fitted = responses.clone();
        let replaced = fit_responses(&mut fitted, limit);
        let mut bytes = Vec::new();
        let len = encode_response_frame(1, &fitted, &mut bytes);
        let cut = fitted.iter().zip(&responses).filter(|(f, r)| f != r).count();
        prop_assert_eq!(cut, replaced);
        let smallest: usize = HEADER_LEN + 2 + fitted.iter().zip(&responses).map(|(f, r)| {
            if f == r && r.body.op().is_read_only() && r.encoded_len() > f.body.op().result_len_min() {
                r.body.op().result_len_min()
            } else {
                f.encoded_len()
            }
        }).sum::<usize>();
        for (f, r) in fitted.iter().zip(&responses) {
            if f != r {
                prop_assert!(r.body.op().is_read_only());
                prop_assert_eq!((f.code, f.reason), (ResponseCode::SystemBusy, Reason::RESPONSE_TOO_LARGE));
                prop_assert_eq!(f.request_id, r.request_id);
            }
        }
        if let Ok(len) = len {
            if smallest <= limit {
                prop_assert!(len <= limit, "{} bytes over a limit of {}", len, limit);
            }
            if replaced == 0 {
                prop_assert_eq!(&fitted, &responses);
            }
            // The first result cut could not have been kept.
            if let Some(i) = fitted.iter().zip(&responses).position(|(f, r)| f != r) {
                let mut kept = fitted.clone();
                kept[i] = responses[i].clone();
                let mut bytes = Vec::new();
                let with = encode_response_frame(1, &kept, &mut bytes).map_or(usize::MAX, |n| n);
                prop_assert!(with > limit, "result {} was cut though the frame kept it in {} bytes", i, with);
            }
        }
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_wire_round_trip.txt"))]

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let bytes = encode(&frame);
        let decoded = decode_frame(&bytes, &Limits::DEFAULT);
        prop_assert_eq!(decoded, Ok(Some((frame.clone(), bytes.len()))));

        // The annotated form is the same bytes, split at field boundaries.
        let fields = annotate_frame(&frame).expect("annotates");
        let joined: Vec<u8> = fields.iter().flat_map(|field| field.bytes.clone()).collect();
        prop_assert_eq!(&joined, &bytes);
        for field in &fields {
            prop_assert!(
                !field.bytes.is_empty() || matches!(field.name, "name" | "number" | "payload" | "message" | "chunk"),
                "empty field {}", field.name
            );
        }

        // encoded_len predicts the frame's size.
        let predicted = match &frame {
            Frame::Requests { requests, .. } => {
                Some(HEADER_LEN + 2 + requests.iter().map(Request::encoded_len).sum::<usize>())
            }
            Frame::Responses { responses, .. } => {
                Some(HEADER_LEN + 2 + responses.iter().map(Response::encoded_len).sum::<usize>())
            }
            Frame::Error { .. } => None,
        };
        if let Some(predicted) = predicted {
            prop_assert_eq!(predicted, bytes.len());
        }
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_wire_prefixes.txt"))]

    #[test]
    fn every_prefix_needs_more(frame in frame()) {
        let bytes = encode(&frame);
        for end in 0..bytes.len() {
            prop_assert_eq!(decode_frame(&bytes[..end], &Limits::DEFAULT), Ok(None), "prefix {}", end);
        }
    }

    #[test]
    fn pipelined_frames_decode_in_order(first in frame(), second in frame()) {
        let mut bytes = encode(&first);
        let first_len = bytes.len();
        bytes.extend(encode(&second));
        let (decoded, consumed) = decode_frame(&bytes, &Limits::DEFAULT)
            .expect("valid")
            .expect("complete");
        prop_assert_eq!(consumed, first_len);
        prop_assert_eq!(decoded, first);
        let (decoded, consumed) = decode_frame(&bytes[first_len..], &Limits::DEFAULT)
            .expect("valid")
            .expect("complete");
        prop_assert_eq!(consumed, bytes.len() - first_len);
        prop_assert_eq!(decoded, second);
    }
}

proptest! {
    #![proptest_config(ledger::proptest_config!("switch_wire_hostile_input.txt"))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        check_decode_is_honest(&buf, &Limits::DEFAULT)?;
    }

    /// Random bytes rarely get past the header; damaged valid frames reach every field.
    #[test]
    fn damaged_frames_never_decode_wrongly(
        frame in frame(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = encode(&frame);
        for (at, value) in damage {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        check_decode_is_honest(&bytes, &Limits::DEFAULT)?;
        let small = Limits { frame_len_max: 256, batch_len_max: 2 };
        check_decode_is_honest(&bytes, &small)?;
    }

    /// Lengths inside a frame that disagree with the frame's own length are errors, never
    /// "need more" and never a frame.
    #[test]
    fn wrong_length_prefix_is_rejected(frame in frame(), delta in 1u32..64, longer in any::<bool>()) {
        let mut bytes = encode(&frame);
        let length = u32::from_le_bytes(*bytes.first_chunk::<4>().expect("header"));
        let wrong = if longer { length + delta } else { length.saturating_sub(delta) };
        bytes[..4].copy_from_slice(&wrong.to_le_bytes());
        if longer {
            bytes.resize(bytes.len() + delta as usize, 0);
        }
        let result = decode_frame(&bytes, &Limits::DEFAULT);
        prop_assert!(result.is_err(), "{:?}", result);
    }
}

// --- specific rejections ----------------------------------------------------------------

fn authorize(number: &str) -> Frame {
    Frame::Requests {
        correlation_id: 7,
        budget_ms: 0,
        requests: vec![
            Request {
                id: RequestId(1),
                operation: Operation::ReloadRoutes,
            },
            Request {
                id: RequestId(2),
                operation: Operation::Authorize {
                    number: CardNumber::new(number).expect("digits"),
                    merchant: AccountId(3),
                    amount: Amount(100),
                    currency: Currency(156),
                    expiry_secs: 0,
                },
            },
        ],
    }
}

/// Offset of the first authorize's number inside `authorize(..)`'s frame: header, count,
/// the 17-byte reload, then 47 bytes of authorize before `number_len`.
const AUTHORIZE_NUMBER_LEN_AT: usize = HEADER_LEN + 2 + 17 + 47;

fn error_of(bytes: &[u8], limits: &Limits) -> switch::wire::WireError {
    match decode_frame(bytes, limits) {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn non_digit_number_is_a_bad_field_at_its_offset() {
    let mut bytes = encode(&authorize("4111111111111111"));
    bytes[AUTHORIZE_NUMBER_LEN_AT + 1 + 3] = b'x';
    let error = error_of(&bytes, &Limits::DEFAULT);
    assert_eq!(error.code(), ErrorCode::BadField);
    assert_eq!(error.field, "number");
    assert_eq!(error.offset, AUTHORIZE_NUMBER_LEN_AT + 1);
    assert_eq!(error.item, Some(1));
    assert_eq!(error.correlation_id, Some(7));
    assert_eq!(error.frame_len, Some(bytes.len()));
    assert_eq!(
        error.to_string(),
        format!(
            "frame offset {} (batch item 1): number: not ASCII digits 0-9",
            AUTHORIZE_NUMBER_LEN_AT + 1
        )
    );
}

#[test]
fn number_length_over_bound_is_reported_on_the_length_field() {
    let mut bytes = encode(&authorize(""));
    bytes[AUTHORIZE_NUMBER_LEN_AT] = 20;
    let error = error_of(&bytes, &Limits::DEFAULT);
    assert_eq!(error.code(), ErrorCode::BadField);
    assert_eq!(error.field, "number_len");
    assert_eq!(error.offset, AUTHORIZE_NUMBER_LEN_AT);
}

#[test]
fn unknown_op_is_named() {
    let mut bytes = encode(&authorize("4"));
    bytes[HEADER_LEN + 2] = 0x7f;
    let error = error_of(&bytes, &Limits::DEFAULT);
    assert_eq!(error.code(), ErrorCode::UnknownOp);
    assert_eq!((error.offset, error.item), (HEADER_LEN + 2, Some(0)));
}

#[test]
fn header_errors_come_as_soon_as_the_header_is_there() {
    let requests = encode(&authorize("4111"));
    // Only an error frame's u16 after the kind is reserved: a request batch's is its budget.
    let error_frame = encode(&Frame::Error {
        correlation_id: 7,
        code: ErrorCode::BadField,
        message: ErrorMessage::new("count").expect("short"),
    });
    let cases: [(&[u8], usize, u8, ErrorCode, &str); 4] = [
        (&requests, 4, 2, ErrorCode::UnsupportedVersion, "version"),
        (&requests, 5, 9, ErrorCode::MalformedFrame, "kind"),
        (&error_frame, 6, 1, ErrorCode::MalformedFrame, "reserved"),
        (&error_frame, 7, 1, ErrorCode::MalformedFrame, "reserved"),
    ];
    for (bytes, at, value, code, field) in cases {
        let mut damaged = bytes.to_vec();
        damaged[at] = value;
        for end in [HEADER_LEN, damaged.len()] {
            let error = error_of(&damaged[..end], &Limits::DEFAULT);
            assert_eq!((error.code(), error.field), (code, field), "byte {at}");
            assert_eq!(error.correlation_id, Some(7));
            assert_eq!(error.frame_len, Some(bytes.len()), "a reader can skip it");
        }
        assert_eq!(
            decode_frame(&damaged[..HEADER_LEN - 1], &Limits::DEFAULT),
            Ok(None)
        );
    }
}

#[test]
fn frame_limit_is_checked_on_the_length_prefix_alone() {
    let limits = Limits {
        frame_len_max: 64,
        ..Limits::DEFAULT
    };
    let bytes = encode(&authorize("4111111111111111"));
    assert!(bytes.len() > 64);
    let error = error_of(&bytes[..4], &limits);
    assert_eq!(error.code(), ErrorCode::FrameTooLarge);
    assert_eq!(error.frame_len, None, "a too-large frame cannot be skipped");

    let error = error_of(&u32::MAX.to_le_bytes(), &Limits::DEFAULT);
    assert_eq!(error.code(), ErrorCode::FrameTooLarge);

    let at_limit = Limits {
        frame_len_max: u32::try_from(bytes.len()).expect("small"),
        ..Limits::DEFAULT
    };
    assert!(matches!(decode_frame(&bytes, &at_limit), Ok(Some(_))));
}

#[test]
fn length_shorter_than_the_header_loses_sync() {
    for length in 0..12u32 {
        let error = error_of(&length.to_le_bytes(), &Limits::DEFAULT);
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
        assert_eq!((error.field, error.frame_len), ("length", None));
    }
}

#[test]
fn batch_limit_and_empty_batch() {
    let bytes = encode(&authorize("4111"));
    let one = Limits {
        batch_len_max: 1,
        ..Limits::DEFAULT
    };
    let error = error_of(&bytes, &one);
    assert_eq!(error.code(), ErrorCode::BatchTooLarge);
    assert_eq!((error.field, error.offset), ("count", HEADER_LEN));

    let mut empty = bytes[..HEADER_LEN + 2].to_vec();
    empty[..4].copy_from_slice(&14u32.to_le_bytes());
    empty[HEADER_LEN..].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        error_of(&empty, &Limits::DEFAULT).code(),
        ErrorCode::BadField
    );

    let mut out = Vec::new();
    assert!(switch::wire::encode_request_frame(1, &[], &mut out).is_err());
    assert!(
        out.is_empty(),
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn a_huge_claimed_count_in_a_tiny_frame_is_truncated_not_allocated() {
    let mut bytes = encode(&authorize("4111"));
    bytes[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&8190u16.to_le_bytes());
    let error = error_of(&bytes, &Limits::DEFAULT);
    assert_eq!(error.code(), ErrorCode::MalformedFrame);
    assert_eq!(error.item, Some(2));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = encode(&authorize("4111"));
    bytes.push(0);
    let length = u32::try_from(bytes.len() - 4).expect("small");
    bytes[..4].copy_from_slice(&length.to_le_bytes());
    let error = error_of(&bytes, &Limits::DEFAULT);
    assert_eq!(error.code(), ErrorCode::MalformedFrame);
    assert_eq!((error.field, error.offset), ("end", bytes.len() - 1));
}

#[test]
fn bounded_fields_refuse_out_of_bound_values() {
    assert!(CardNumber::new("12345678901234567890").is_err());
    assert!(CardNumber::new("4111 1111").is_err());
    assert!(ParticipantName::new("x".repeat(65)).is_err());
    assert!(EchoPayload::new(vec![0; 257]).is_err());
    assert!(ErrorMessage::new("x".repeat(256)).is_err());
    let cut = ErrorMessage::truncated(&"é".repeat(200));
    assert_eq!(cut.as_str().len(), 254, "cut at a character boundary");
}

#[test]
fn card_numbers_are_masked_in_debug_output() {
    let number = CardNumber::new("4111111111111111").expect("digits");
    assert_eq!(format!("{number:?}"), "CardNumber(411111******1111)");
    assert_eq!(number.as_str(), "4111111111111111");
}

/// A declined WindowReport's fields are zero, its window's state included (0, "none"); an
/// approved result whose window state is 0 is rejected (code 6) at that byte.
#[test]
fn a_window_state_of_none_is_only_in_a_result_not_approved() {
    let declined = Response::declined(
        RequestId(9),
        switch::wire::Op::WindowReport,
        ResponseCode::InvalidTransaction,
        Reason::WINDOW_NOT_FOUND,
    );
    let mut bytes = Vec::new();
    encode_response_frame(1, std::slice::from_ref(&declined), &mut bytes).expect("encodes");
    // Header, count, then op, request id, code and reason, then the window id.
    let state_at = HEADER_LEN + 2 + 19 + 8;
    assert_eq!(bytes[state_at], 0);
    assert!(
        bytes[HEADER_LEN + 2 + 19..].iter().all(|&b| b == 0),
        "every field after the reason is zero"
    );
    let decoded = decode_frame(&bytes, &Limits::DEFAULT).expect("decodes");
    assert!(
        matches!(decoded, Some((Frame::Responses { responses, .. }, _)) if responses == [declined])
    );
    // The same bytes, approved.
    bytes[HEADER_LEN + 2 + 17] = ResponseCode::Approved.as_u8();
    let error = error_of(&bytes, &Limits::DEFAULT);
    assert_eq!(error.code(), ErrorCode::BadField);
    assert_eq!((error.field, error.offset), ("state", state_at));
}

/// The decoder reads a frame's fields in order and the first one in error decides the code:
/// a `count` over the batch limit is error 4 even when no operation follows it (where reading
/// on would find the frame too short, error 1), a bad version wins over a bad `reserved`, and
/// an empty batch is error 6 before anything after it is read.
#[test]
fn the_first_field_in_error_decides_the_code() {
    let header = |length: u32, version: u8, reserved: u16, count: u16| {
        // A request batch, or an error frame when `reserved` is set: only an error frame's
        // u16 after the kind must be 0.
        let kind = if reserved == 0 { 1 } else { 3 };
        let mut bytes = length.to_le_bytes().to_vec();
        bytes.extend([version, kind]);
        bytes.extend(reserved.to_le_bytes());
        bytes.extend(7u64.to_le_bytes());
        bytes.extend(count.to_le_bytes());
        bytes
    };
    for (bytes, code) in [
        (header(14, 1, 0, 8191), ErrorCode::BatchTooLarge),
        (header(14, 1, 0, 2), ErrorCode::MalformedFrame),
        (header(14, 2, 1, 8191), ErrorCode::UnsupportedVersion),
        (header(14, 1, 1, 8191), ErrorCode::MalformedFrame),
        (header(14, 1, 0, 0), ErrorCode::BadField),
    ] {
        assert_eq!(
            error_of(&bytes, &Limits::DEFAULT).code(),
            code,
            "{bytes:02x?}"
        );
    }
}
