//! Frames: the length-prefixed header, the three kinds of body, encoding and decoding.

use crate::wire::cursor::{Reader, Writer};
use crate::wire::error::{EncodeError, ErrorCode, WireError, WireErrorKind};
use crate::wire::limits::Limits;
use crate::wire::request::{REQUEST_PREFIX_LEN, Request};
use crate::wire::response::{RESPONSE_PREFIX_LEN, Response, capacity};
use crate::wire::types::{ErrorMessage, FieldError};

/// The protocol version this codec speaks, carried in every frame.
pub const VERSION: u8 = 1;
/// Bytes before a frame's body: length u32, version u8, kind u8, a u16 whose meaning is the
/// kind's (a request batch's budget, a response batch's retry-after hint, 0 in an error
/// frame), correlation id u64.
pub const HEADER_LEN: usize = 16;
/// The smallest value of the length field: the header after the length field itself.
const LENGTH_FIELD_MIN: u32 = (HEADER_LEN - 4) as u32;

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Client to server: a batch of operations.
    Requests = 1,
    /// Server to client: one result per operation of a request batch, in the same order.
    Responses = 2,
    /// Either direction: the frame named by the correlation id was rejected.
    Error = 3,
}

impl FrameKind {
    pub const ALL: [FrameKind; 3] = [FrameKind::Requests, FrameKind::Responses, FrameKind::Error];

    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_u8() == value)
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    Requests {
        correlation_id: u64,
        /// The client's budget for the frame's operations in milliseconds, counted from when
        /// the server has read the frame; 0: none given (the server's defaults apply).
        budget_ms: u16,
        requests: Vec<Request>,
    },
    Responses {
        correlation_id: u64,
        /// When some operation was refused for overload: how long the client should wait
        /// before sending it again, in milliseconds; 0 otherwise.
        retry_after_ms: u16,
        responses: Vec<Response>,
    },
    Error {
        /// The rejected frame's correlation id, 0 if it could not be read.
        correlation_id: u64,
        code: ErrorCode,
        message: ErrorMessage,
    },
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Requests { .. } => FrameKind::Requests,
            Frame::Responses { .. } => FrameKind::Responses,
            Frame::Error { .. } => FrameKind::Error,
        }
    }

    pub fn correlation_id(&self) -> u64 {
        match *self {
            Frame::Requests { correlation_id, .. }
            | Frame::Responses { correlation_id, .. }
            | Frame::Error { correlation_id, .. } => correlation_id,
        }
    }
}

impl WireError {
    /// The error frame that reports this error to the peer: its code, the rejected frame's
    /// correlation id (0 if unread), and this error's description as the message.
    pub fn to_frame(&self) -> Frame {
        Frame::Error {
            correlation_id: self.correlation_id.unwrap_or(0),
            code: self.code(),
            message: ErrorMessage::truncated(&self.to_string()),
        }
    }
}

/// Appends a request-batch frame with no budget to `out` and returns its length. On error
/// `out` is left as it was.
pub fn encode_request_frame(
    correlation_id: u64,
    requests: &[Request],
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    encode_request_frame_within(correlation_id, 0, requests, out)
}

/// Appends a request-batch frame whose operations have `budget_ms` milliseconds (0: no budget)
/// to `out` and returns its length. On error `out` is left as it was.
pub fn encode_request_frame_within(
    correlation_id: u64,
    budget_ms: u16,
    requests: &[Request],
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let body_len: usize = requests.iter().map(Request::encoded_len).sum();
    out.reserve(HEADER_LEN + 2 + body_len);
    let start = out.len();
    let len = encode_requests(
        &mut Writer::new(out, None),
        correlation_id,
        budget_ms,
        requests,
    )?;
    read_back(&out[start..], |frame| {
        matches!(frame, Frame::Requests { correlation_id: c, budget_ms: b, requests: r }
            if *c == correlation_id && *b == budget_ms && r == requests)
    });
    Ok(len)
}

/// Appends a response-batch frame with no retry-after hint to `out` and returns its length.
/// On error `out` is left as it was.
pub fn encode_response_frame(
    correlation_id: u64,
    responses: &[Response],
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    encode_response_frame_retry(correlation_id, 0, responses, out)
}

/// Appends a response-batch frame carrying a retry-after hint of `retry_after_ms` (0: none)
/// to `out` and returns its length. On error `out` is left as it was.
pub fn encode_response_frame_retry(
    correlation_id: u64,
    retry_after_ms: u16,
    responses: &[Response],
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let body_len: usize = responses.iter().map(Response::encoded_len).sum();
    out.reserve(HEADER_LEN + 2 + body_len);
    let start = out.len();
    let len = encode_responses(
        &mut Writer::new(out, None),
        correlation_id,
        retry_after_ms,
        responses,
    )?;
    read_back(&out[start..], |frame| {
        matches!(frame, Frame::Responses { correlation_id: c, retry_after_ms: h, responses: r }
            if *c == correlation_id && *h == retry_after_ms && r == responses)
    });
    Ok(len)
}

/// Appends an error frame to `out` and returns its length.
pub fn encode_error_frame(
    correlation_id: u64,
    code: ErrorCode,
    message: &ErrorMessage,
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    let mut w = Writer::new(out, None);
    let encoded = encode_error(&mut w, correlation_id, code, message);
    // An error frame is at most a few hundred bytes: nothing in it can overflow.
    assert!(encoded.is_ok(), "error frame failed to encode: {encoded:?}");
    let len = w.written();
    read_back(&out[start..], |frame| {
        matches!(frame, Frame::Error { correlation_id: c, code: k, message: m }
            if *c == correlation_id && *k == code && m == message)
    });
    len
}

/// In debug builds, decodes a frame just encoded and checks it is the frame that was encoded:
/// an encoder and a decoder that disagree would tell the peer something else than was meant.
fn read_back(bytes: &[u8], is_encoded: impl FnOnce(&Frame) -> bool) {
    if !cfg!(debug_assertions) {
        return;
    }
    let any = Limits {
        frame_len_max: u32::MAX,
        batch_len_max: u16::MAX,
    };
    match decode_frame(bytes, &any) {
        Ok(Some((frame, len))) => assert!(
            len == bytes.len() && is_encoded(&frame),
            "a frame reads back as another: {frame:?}"
        ),
        other => panic!("a frame just encoded does not decode: {other:?}"),
    }
}

/// Appends any frame to `out` and returns its length. On error `out` is left as it was.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    match frame {
        Frame::Requests {
            correlation_id,
            budget_ms,
            requests,
        } => encode_request_frame_within(*correlation_id, *budget_ms, requests, out),
        Frame::Responses {
            correlation_id,
            retry_after_ms,
            responses,
        } => encode_response_frame_retry(*correlation_id, *retry_after_ms, responses, out),
        Frame::Error {
            correlation_id,
            code,
            message,
        } => Ok(encode_error_frame(*correlation_id, *code, message, out)),
    }
}

/// One field of an encoded frame, as named in docs/PROTOCOL.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotatedField {
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// Encodes `frame` and splits the bytes into its fields: for hex dumps, debugging and the
/// test vectors of docs/PROTOCOL.md. Not for hot paths.
pub fn annotate_frame(frame: &Frame) -> Result<Vec<AnnotatedField>, EncodeError> {
    let mut bytes = Vec::new();
    let mut trace = Vec::new();
    let mut w = Writer::new(&mut bytes, Some(&mut trace));
    match frame {
        Frame::Requests {
            correlation_id,
            budget_ms,
            requests,
        } => encode_requests(&mut w, *correlation_id, *budget_ms, requests)?,
        Frame::Responses {
            correlation_id,
            retry_after_ms,
            responses,
        } => encode_responses(&mut w, *correlation_id, *retry_after_ms, responses)?,
        Frame::Error {
            correlation_id,
            code,
            message,
        } => encode_error(&mut w, *correlation_id, *code, message)?,
    };
    let ends = trace
        .iter()
        .skip(1)
        .map(|&(start, _)| start)
        .chain([bytes.len()]);
    Ok(trace
        .iter()
        .zip(ends)
        .map(|(&(start, name), end)| AnnotatedField {
            name,
            bytes: bytes.get(start..end).unwrap_or_default().to_vec(),
        })
        .collect())
}

fn encode_requests(
    w: &mut Writer<'_>,
    correlation_id: u64,
    budget_ms: u16,
    requests: &[Request],
) -> Result<usize, EncodeError> {
    let header = Header {
        kind: FrameKind::Requests,
        field: ("budget_ms", budget_ms),
        correlation_id,
    };
    encode_with(w, header, |w| {
        w.u16("count", batch_count(requests.len())?);
        for request in requests {
            request.encode(w);
        }
        Ok(())
    })
}

fn encode_responses(
    w: &mut Writer<'_>,
    correlation_id: u64,
    retry_after_ms: u16,
    responses: &[Response],
) -> Result<usize, EncodeError> {
    let header = Header {
        kind: FrameKind::Responses,
        field: ("retry_after_ms", retry_after_ms),
        correlation_id,
    };
    encode_with(w, header, |w| {
        w.u16("count", batch_count(responses.len())?);
        for response in responses {
            response.encode(w)?;
        }
        Ok(())
    })
}

fn encode_error(
    w: &mut Writer<'_>,
    correlation_id: u64,
    code: ErrorCode,
    message: &ErrorMessage,
) -> Result<usize, EncodeError> {
    let header = Header {
        kind: FrameKind::Error,
        field: ("reserved", 0),
        correlation_id,
    };
    encode_with(w, header, |w| {
        w.u16("error_code", code.as_u16());
        w.bytes_u8("message_len", "message", message.as_str().as_bytes());
        Ok(())
    })
}

fn batch_count(len: usize) -> Result<u16, EncodeError> {
    if len == 0 {
        return Err(EncodeError::EmptyBatch);
    }
    u16::try_from(len).map_err(|_| EncodeError::BatchTooLong { len })
}

/// A frame's header after its length: the kind's u16 field goes by its name in the kind.
struct Header {
    kind: FrameKind,
    field: (&'static str, u16),
    correlation_id: u64,
}

/// Writes the header, then the body, then the length; undoes everything on error.
fn encode_with(
    w: &mut Writer<'_>,
    header: Header,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    w.u32("length", 0);
    w.u8("version", VERSION);
    w.u8("kind", header.kind.as_u8());
    w.u16(header.field.0, header.field.1);
    w.u64("correlation_id", header.correlation_id);
    let result = body(w).and_then(|()| {
        let len = w.written();
        let length = len
            .checked_sub(4)
            .and_then(|rest| u32::try_from(rest).ok())
            .ok_or(EncodeError::FrameTooLong { len })?;
        w.patch_u32(0, length);
        Ok(len)
    });
    if result.is_err() {
        w.rollback();
    }
    result
}

/// The length (its prefix included) and the correlation id of the frame at the start of
/// `buf`, once its header is there. Checks nothing: it is for bytes `decode_frame` has
/// already found to be the start of an acceptable frame (it returned `Ok(None)` for them).
pub fn frame_header(buf: &[u8]) -> Option<(usize, u64)> {
    let header = buf.first_chunk::<HEADER_LEN>()?;
    let (length, rest) = header.split_first_chunk::<4>()?;
    let (_, correlation_id) = rest.split_last_chunk::<8>()?;
    let frame_len = usize::try_from(u32::from_le_bytes(*length)).ok()? + 4;
    Some((frame_len, u64::from_le_bytes(*correlation_id)))
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` while `buf` holds only a prefix of an acceptable frame, and
/// `Ok(Some((frame, consumed)))` once it holds a whole one. Rejects a length beyond
/// `limits.frame_len_max` as soon as the 4-byte prefix is there, and a bad header as soon as
/// its 16 bytes are, so a peer cannot make the reader buffer a frame it will refuse. Never
/// panics, and allocates at most in proportion to the bytes of the frame.
pub fn decode_frame(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(&length) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let length = u32::from_le_bytes(length);
    let unsynced = |kind| WireError {
        kind,
        offset: 0,
        field: "length",
        item: None,
        correlation_id: None,
        frame_len: None,
    };
    if length < LENGTH_FIELD_MIN {
        return Err(unsynced(WireErrorKind::FrameTooShort { len: length }));
    }
    let frame_len = u64::from(length) + 4;
    let too_large = WireErrorKind::FrameTooLarge {
        len: frame_len,
        max: limits.frame_len_max,
    };
    if frame_len > u64::from(limits.frame_len_max) {
        return Err(unsynced(too_large));
    }
    let frame_len = usize::try_from(frame_len).map_err(|_| unsynced(too_large))?;

    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    read_header(&mut Reader::new(header, frame_len))?;
    let Some(frame) = buf.get(..frame_len) else {
        return Ok(None);
    };
    let mut r = Reader::new(frame, frame_len);
    let (kind, field, correlation_id) = read_header(&mut r)?;
    let frame = match kind {
        FrameKind::Requests => Frame::Requests {
            correlation_id,
            budget_ms: field,
            requests: read_batch(&mut r, limits, REQUEST_PREFIX_LEN, Request::decode)?,
        },
        FrameKind::Responses => Frame::Responses {
            correlation_id,
            retry_after_ms: field,
            responses: read_batch(&mut r, limits, RESPONSE_PREFIX_LEN, Response::decode)?,
        },
        FrameKind::Error => {
            let code_at = r.pos();
            let code = r.u16("error_code")?;
            let code = ErrorCode::from_u16(code).ok_or_else(|| {
                r.error_at(
                    code_at,
                    "error_code",
                    WireErrorKind::Field(FieldError::UnknownValue {
                        value: u64::from(code),
                    }),
                )
            })?;
            let message = r.bytes_u8("message_len", "message", ErrorMessage::LEN_MAX, |bytes| {
                let message = std::str::from_utf8(bytes).map_err(|_| FieldError::InvalidUtf8)?;
                ErrorMessage::new(message)
            })?;
            Frame::Error {
                correlation_id,
                code,
                message,
            }
        }
    };
    if r.remaining() != 0 {
        return Err(r.error_at(
            r.pos(),
            "end",
            WireErrorKind::TrailingBytes {
                count: r.remaining(),
            },
        ));
    }
    Ok(Some((frame, frame_len)))
}

/// Reads and checks the header after the length, and gives the kind, the kind's u16 field
/// (an error frame's must be 0) and the correlation id; records the correlation id in the
/// reader first, so every later error carries it.
fn read_header(r: &mut Reader<'_>) -> Result<(FrameKind, u16, u64), WireError> {
    r.u32("length")?;
    let version = r.u8("version")?;
    let kind = r.u8("kind")?;
    let field = r.u16("reserved")?;
    let correlation_id = r.u64("correlation_id")?;
    r.correlation_id = Some(correlation_id);
    if version != VERSION {
        return Err(r.error_at(4, "version", WireErrorKind::UnsupportedVersion { version }));
    }
    let kind = FrameKind::from_u8(kind)
        .ok_or_else(|| r.error_at(5, "kind", WireErrorKind::UnknownFrameKind { kind }))?;
    if kind == FrameKind::Error && field != 0 {
        return Err(r.error_at(
            6,
            "reserved",
            WireErrorKind::ReservedNotZero { value: field },
        ));
    }
    Ok((kind, field, correlation_id))
}

fn read_batch<T>(
    r: &mut Reader<'_>,
    limits: &Limits,
    item_len_min: usize,
    decode: impl Fn(&mut Reader<'_>) -> Result<T, WireError>,
) -> Result<Vec<T>, WireError> {
    let count_at = r.pos();
    let count = r.u16("count")?;
    if count == 0 {
        return Err(r.error_at(count_at, "count", WireErrorKind::EmptyBatch));
    }
    if count > limits.batch_len_max {
        return Err(r.error_at(
            count_at,
            "count",
            WireErrorKind::BatchTooLarge {
                count,
                max: limits.batch_len_max,
            },
        ));
    }
    let mut items = Vec::with_capacity(capacity(r, usize::from(count), item_len_min));
    for index in 0..count {
        r.item = Some(index);
        items.push(decode(r)?);
    }
    r.item = None;
    Ok(items)
}
