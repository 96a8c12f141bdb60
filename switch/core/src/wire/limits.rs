//! Bounds on what a peer may send. The decoder enforces the frame and batch bounds itself;
//! the others are the server's, listed here so that clients and servers share the defaults.

/// Default largest frame, length prefix included: 1 MiB.
pub const FRAME_LEN_MAX_DEFAULT: u32 = 1 << 20;
/// The most a switch may be configured to accept or send (64 MiB); clients accept this much.
pub const FRAME_LEN_MAX_LIMIT: u32 = 64 << 20;
/// Default largest batch: 8190 operations (or results) in one frame.
pub const BATCH_LEN_MAX_DEFAULT: u16 = 8190;
/// Default concurrent bidirectional streams a client may open on one connection.
pub const STREAMS_PER_CONNECTION_MAX_DEFAULT: u32 = 64;
/// Default operations a connection may have outstanding (received, not yet answered).
pub const IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: u32 = 65_536;
/// Default rejected frames (error frames sent) after which the server closes a connection.
pub const PROTOCOL_ERRORS_PER_CONNECTION_MAX_DEFAULT: u32 = 16;

/// What the decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame in bytes, length prefix included. Checked before anything is buffered
    /// or allocated for the frame.
    pub frame_len_max: u32,
    /// Most operations (or results) in one batch.
    pub batch_len_max: u16,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        frame_len_max: FRAME_LEN_MAX_DEFAULT,
        batch_len_max: BATCH_LEN_MAX_DEFAULT,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
