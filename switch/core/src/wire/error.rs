//! What can go wrong when decoding or encoding a frame, and the codes that go back to the peer.

use std::fmt;

use crate::wire::types::FieldError;

/// A frame that cannot be decoded: what is wrong, in which field, at which byte.
///
/// `offset` counts from the first byte of the frame (the first byte of its length prefix).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame offset {offset}{}: {field}: {kind}", ItemSuffix(*.item))]
pub struct WireError {
    pub kind: WireErrorKind,
    pub offset: usize,
    /// The field as named in docs/PROTOCOL.md, e.g. `authorize.number`.
    pub field: &'static str,
    /// Index of the operation or result within its batch, if the error is inside one.
    pub item: Option<u16>,
    /// The frame's correlation id, once its header was read.
    pub correlation_id: Option<u64>,
    /// The whole frame's length in bytes (prefix included) when the length prefix itself was
    /// acceptable: a reader may discard that many bytes and carry on with the next frame.
    /// `None` when the stream cannot be resynchronised.
    pub frame_len: Option<usize>,
}

impl WireError {
    /// The error frame code that reports this error to the peer.
    pub fn code(&self) -> ErrorCode {
        self.kind.code()
    }
}

struct ItemSuffix(Option<u16>);

impl fmt::Display for ItemSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(item) => write!(f, " (batch item {item})"),
            None => Ok(()),
        }
    }
}

/// The reason a frame was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireErrorKind {
    #[error("length {len} is shorter than the 12-byte header")]
    FrameTooShort { len: u32 },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("protocol version {version} is not supported")]
    UnsupportedVersion { version: u8 },
    #[error("frame kind {kind} is unknown")]
    UnknownFrameKind { kind: u8 },
    #[error("reserved field is {value}, must be 0")]
    ReservedNotZero { value: u16 },
    #[error("field needs {needed} bytes but the frame has {available} left")]
    Truncated { needed: usize, available: usize },
    #[error("{count} bytes left over after the last field")]
    TrailingBytes { count: usize },
    #[error("a batch must hold at least one item")]
    EmptyBatch,
    #[error("batch of {count} items exceeds the limit of {max}")]
    BatchTooLarge { count: u16, max: u16 },
    #[error("operation code {op:#04x} is unknown")]
    UnknownOp { op: u8 },
    #[error(transparent)]
    Field(#[from] FieldError),
}

impl WireErrorKind {
    pub fn code(&self) -> ErrorCode {
        match self {
            WireErrorKind::FrameTooShort { .. }
            | WireErrorKind::UnknownFrameKind { .. }
            | WireErrorKind::ReservedNotZero { .. }
            | WireErrorKind::Truncated { .. }
            | WireErrorKind::TrailingBytes { .. } => ErrorCode::MalformedFrame,
            WireErrorKind::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireErrorKind::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            WireErrorKind::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            WireErrorKind::UnknownOp { .. } => ErrorCode::UnknownOp,
            WireErrorKind::EmptyBatch | WireErrorKind::Field(_) => ErrorCode::BadField,
        }
    }
}

/// A value that cannot be put on the wire. Field values are bounded by their types, so only
/// counts and the total length can be out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a batch must hold at least one item")]
    EmptyBatch,
    #[error("batch of {len} items does not fit the u16 count")]
    BatchTooLong { len: usize },
    #[error("{field} has {len} entries, more than the u16 count holds")]
    ListTooLong { field: &'static str, len: usize },
    #[error("frame of {len} bytes does not fit the u32 length")]
    FrameTooLong { len: usize },
}

/// The code of an error frame: why the receiver rejected a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame's structure is wrong: too short, unknown kind, reserved bits set, a field runs
    /// past its end, or bytes are left over.
    MalformedFrame = 1,
    /// The version byte is not one this peer speaks.
    UnsupportedVersion = 2,
    /// The frame is longer than the receiver's frame limit.
    FrameTooLarge = 3,
    /// The batch holds more items than the receiver's batch limit.
    BatchTooLarge = 4,
    /// An operation code is unknown.
    UnknownOp = 5,
    /// A field's value cannot be represented: too long, bad UTF-8, non-digits, unknown enum
    /// value, or an empty batch.
    BadField = 6,
    /// A well-formed frame of a kind the receiver does not accept (a server receiving a
    /// response batch or an error frame).
    UnexpectedFrameKind = 7,
    /// The receiver had no room to take the frame in now (a server's room for frames being
    /// received is full). It read the frame through and threw it away: nothing in it was
    /// executed, and it may be sent again, with the same request ids, later.
    ServerBusy = 8,
    /// The receiver is a replica that does not lead its cluster now. The message is the
    /// leader's client address (`ip:port`), or empty when it does not know one. The frame's
    /// requests were not executed here, unless this replica took them while it led and lost
    /// the leadership before they committed; either way they go again, unchanged (same ids),
    /// to the leader, which answers a request that did run with its original answer.
    NotLeader = 9,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::BatchTooLarge,
        ErrorCode::UnknownOp,
        ErrorCode::BadField,
        ErrorCode::UnexpectedFrameKind,
        ErrorCode::ServerBusy,
        ErrorCode::NotLeader,
    ];

    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_u16() == value)
    }
}

/// QUIC application error codes the server uses to close a stream or the connection.
/// These are QUIC variable-length integers (they fit `quinn::VarInt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum AppErrorCode {
    /// Closing normally.
    NoError = 0x00,
    /// Too many rejected frames on one connection: the connection is closed.
    ProtocolViolation = 0x01,
    /// A stream's framing is lost (a length prefix out of range): the server stops reading
    /// the stream (STOP_SENDING) with this code.
    FrameSyncLost = 0x02,
    /// The server is shutting down or restarting; reconnect and retry with the same ids.
    ShuttingDown = 0x03,
    /// The client certificate maps to no participant.
    Unauthenticated = 0x04,
    /// The server failed internally.
    InternalError = 0x05,
}

impl AppErrorCode {
    pub const ALL: [AppErrorCode; 6] = [
        AppErrorCode::NoError,
        AppErrorCode::ProtocolViolation,
        AppErrorCode::FrameSyncLost,
        AppErrorCode::ShuttingDown,
        AppErrorCode::Unauthenticated,
        AppErrorCode::InternalError,
    ];

    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    pub fn from_u64(value: u64) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|code| u64::from(code.as_u32()) == value)
    }
}

/// The message of a `NotLeader` error frame: the leader's client address, or nothing.
pub fn not_leader_message(leader: Option<std::net::SocketAddr>) -> super::ErrorMessage {
    super::ErrorMessage::truncated(&leader.map(|a| a.to_string()).unwrap_or_default())
}

/// The leader a `NotLeader` error frame names, if it names one.
pub fn not_leader_address(message: &str) -> Option<std::net::SocketAddr> {
    message.parse().ok()
}

#[cfg(test)]
mod not_leader_tests {
    use super::{not_leader_address, not_leader_message};

    /// What a follower writes, a client reads back: both address families, and no leader.
    #[test]
    fn the_leader_named_is_the_leader_read() {
        for leader in [
            "127.0.0.1:4432",
            "[::1]:4433",
            "[fe80::1]:65535",
            "10.0.0.7:1",
        ] {
            let address = leader.parse().expect("an address");
            let message = not_leader_message(Some(address));
            assert_eq!(message.as_str(), leader);
            assert_eq!(not_leader_address(message.as_str()), Some(address));
        }
        let none = not_leader_message(None);
        assert_eq!(none.as_str(), "");
        assert_eq!(not_leader_address(none.as_str()), None);
        assert_eq!(not_leader_address("leader is 10.0.0.1"), None);
    }
}
