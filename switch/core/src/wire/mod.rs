//! The wire protocol `pswitch/1`: bytes in, typed messages out.
//!
//! docs/PROTOCOL.md is the normative description; this module implements it and the test
//! vectors there are checked against it. The codec does no I/O and knows nothing of QUIC or
//! async runtimes, so clients, fuzzers and tests use it without a server.
//!
//! Decoding never panics and never trusts a length: every read is checked against the end of
//! the frame, and the frame and batch limits are enforced before anything is allocated for
//! them.

mod cursor;
mod error;
mod frame;
mod limits;
mod reader;
mod request;
mod response;
mod types;

pub use error::{
    AppErrorCode, EncodeError, ErrorCode, WireError, WireErrorKind, not_leader_address,
    not_leader_message,
};
pub use frame::{
    AnnotatedField, Frame, FrameKind, HEADER_LEN, VERSION, annotate_frame, decode_frame,
    encode_error_frame, encode_frame, encode_request_frame, encode_request_frame_within,
    encode_response_frame, encode_response_frame_retry, frame_header,
};
pub use limits::{
    BATCH_LEN_MAX_DEFAULT, FRAME_LEN_MAX_DEFAULT, FRAME_LEN_MAX_LIMIT,
    IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT, Limits, PROTOCOL_ERRORS_PER_CONNECTION_MAX_DEFAULT,
    STREAMS_PER_CONNECTION_MAX_DEFAULT,
};
pub use reader::{EndedInside, FrameReader, Incoming, READ_BYTES};
pub use request::{Op, Operation, Request};
pub use response::{
    Balance, Movement, NetPosition, Response, ResponseBody, Status, WindowRecord, WindowReport,
    fit_responses, response_frame_len_floor, result_len_min_max,
};
pub use types::{
    AccountFlags, AccountId, Amount, BalanceTarget, CardNumber, Currency, EchoPayload,
    ErrorMessage, FieldError, ParticipantId, ParticipantName, Reason, ReportChunk, RequestId,
    ResponseCode, Roles, Timestamp, TransferId, TransferState, WindowId, WindowState,
};

/// The ALPN protocol id a client offers and the server requires.
pub const ALPN: &[u8] = b"pswitch/1";
