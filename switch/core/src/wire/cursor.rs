//! Checked little-endian reads from untrusted bytes (`ledger::codec::Reader`, its errors told
//! as the protocol's), and writes that can record field boundaries for annotated hex dumps.

use ledger::codec::{self, CodecError};

use crate::wire::error::{WireError, WireErrorKind};
use crate::wire::types::FieldError;

/// Reads one frame. Every read is checked against the end of the frame; nothing indexes.
pub(crate) struct Reader<'a> {
    /// Over the frame from the first byte of its length prefix: offsets are the frame's.
    r: codec::Reader<'a>,
    /// The declared length of the whole frame; the reader may hold only its header.
    frame_len: usize,
    pub(crate) item: Option<u16>,
    pub(crate) correlation_id: Option<u64>,
}

impl<'a> Reader<'a> {
    /// `frame` is the frame from the first byte of its length prefix: all of it, or only its
    /// header while the rest has not arrived. `frame_len` is the length its prefix declares.
    pub(crate) fn new(frame: &'a [u8], frame_len: usize) -> Self {
        Self {
            r: codec::Reader::new(frame),
            frame_len,
            item: None,
            correlation_id: None,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.r.position()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.r.remaining()
    }

    pub(crate) fn error_at(
        &self,
        offset: usize,
        field: &'static str,
        kind: WireErrorKind,
    ) -> WireError {
        WireError {
            kind,
            offset,
            field,
            item: self.item,
            correlation_id: self.correlation_id,
            frame_len: Some(self.frame_len),
        }
    }

    /// The codec's error as the protocol reports it: at the same offset, in the same field.
    fn wire_error(&self, e: CodecError) -> WireError {
        let (field, kind) = match e {
            CodecError::Truncated {
                what,
                needed,
                available,
                ..
            } => (what, WireErrorKind::Truncated { needed, available }),
            CodecError::Invalid { what, value, .. } => {
                let value = u64::try_from(value).unwrap_or(u64::MAX);
                (what, FieldError::UnknownValue { value }.into())
            }
            CodecError::TooLong { what, len, max, .. } => {
                (what, FieldError::TooLong { len, max }.into())
            }
            // The reads this reader makes give none of these.
            CodecError::NotUtf8 { what, .. } => (what, FieldError::InvalidUtf8.into()),
            CodecError::TooMany {
                what,
                count,
                remaining,
                ..
            } => {
                let len = usize::try_from(count).unwrap_or(usize::MAX);
                (
                    what,
                    FieldError::TooLong {
                        len,
                        max: remaining,
                    }
                    .into(),
                )
            }
            CodecError::Trailing { extra, .. } => {
                ("frame", WireErrorKind::TrailingBytes { count: extra })
            }
        };
        self.error_at(e.at(), field, kind)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.r.u8(field).map_err(|e| self.wire_error(e))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.r.u16(field).map_err(|e| self.wire_error(e))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.r.u32(field).map_err(|e| self.wire_error(e))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.r.u64(field).map_err(|e| self.wire_error(e))
    }

    pub(crate) fn u128(&mut self, field: &'static str) -> Result<u128, WireError> {
        self.r.u128(field).map_err(|e| self.wire_error(e))
    }

    pub(crate) fn i128(&mut self, field: &'static str) -> Result<i128, WireError> {
        self.r.i128(field).map_err(|e| self.wire_error(e))
    }

    /// Reads a value and maps it through `parse`; `None` is an unknown value at its offset.
    pub(crate) fn enumerated<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(u8) -> Option<T>,
    ) -> Result<T, WireError> {
        self.r
            .enumerated(field, parse)
            .map_err(|e| self.wire_error(e))
    }

    /// A u8 length followed by that many bytes, at most `max`, converted with `make`. The
    /// bound is checked before the bytes are taken, so a length past the bound is reported as
    /// such even at the end of a frame; a conversion failure is reported at the field's first
    /// byte.
    pub(crate) fn bytes_u8<T>(
        &mut self,
        len_field: &'static str,
        field: &'static str,
        max: usize,
        make: impl FnOnce(&'a [u8]) -> Result<T, FieldError>,
    ) -> Result<T, WireError> {
        let bytes = self.r.bytes_u8(len_field, field, max);
        self.make(bytes, field, make)
    }

    /// A u16 length followed by that many bytes, at most `max`, as `bytes_u8` reads them.
    pub(crate) fn bytes_u16<T>(
        &mut self,
        len_field: &'static str,
        field: &'static str,
        max: usize,
        make: impl FnOnce(&'a [u8]) -> Result<T, FieldError>,
    ) -> Result<T, WireError> {
        let bytes = self.r.bytes_u16(len_field, field, max);
        self.make(bytes, field, make)
    }

    fn make<T>(
        &self,
        bytes: Result<&'a [u8], CodecError>,
        field: &'static str,
        make: impl FnOnce(&'a [u8]) -> Result<T, FieldError>,
    ) -> Result<T, WireError> {
        let bytes = bytes.map_err(|e| self.wire_error(e))?;
        let at = self.r.offset() - bytes.len();
        make(bytes).map_err(|error| self.error_at(at, field, WireErrorKind::Field(error)))
    }
}

/// Appends fields to a buffer. With a trace, it also records where each field starts, which
/// is how docs/PROTOCOL.md gets its annotated test vectors.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    trace: Option<&'a mut Vec<(usize, &'static str)>>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(
        out: &'a mut Vec<u8>,
        trace: Option<&'a mut Vec<(usize, &'static str)>>,
    ) -> Self {
        let start = out.len();
        Self { out, start, trace }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> usize {
        self.out.len() - self.start
    }

    pub(crate) fn put(&mut self, field: &'static str, bytes: &[u8]) {
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.push((self.out.len() - self.start, field));
        }
        self.out.extend_from_slice(bytes);
    }

    pub(crate) fn u8(&mut self, field: &'static str, value: u8) {
        self.put(field, &[value]);
    }

    pub(crate) fn u16(&mut self, field: &'static str, value: u16) {
        self.put(field, &value.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, field: &'static str, value: u32) {
        self.put(field, &value.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, field: &'static str, value: u64) {
        self.put(field, &value.to_le_bytes());
    }

    pub(crate) fn u128(&mut self, field: &'static str, value: u128) {
        self.put(field, &value.to_le_bytes());
    }

    pub(crate) fn i128(&mut self, field: &'static str, value: i128) {
        self.put(field, &value.to_le_bytes());
    }

    /// A u8 length, then the bytes. Callers pass values whose types bound them below 256.
    pub(crate) fn bytes_u8(&mut self, len_field: &'static str, field: &'static str, bytes: &[u8]) {
        assert!(
            bytes.len() <= usize::from(u8::MAX),
            "{field} over its bound"
        );
        self.u8(len_field, u8::try_from(bytes.len()).unwrap_or(u8::MAX));
        self.put(field, bytes);
    }

    /// A u16 length, then the bytes. Callers pass values whose types bound them below 65536.
    pub(crate) fn bytes_u16(&mut self, len_field: &'static str, field: &'static str, bytes: &[u8]) {
        assert!(
            bytes.len() <= usize::from(u16::MAX),
            "{field} over its bound"
        );
        self.u16(len_field, u16::try_from(bytes.len()).unwrap_or(u16::MAX));
        self.put(field, bytes);
    }

    /// Overwrites 4 bytes at `at` (counted from where this writer started).
    pub(crate) fn patch_u32(&mut self, at: usize, value: u32) {
        let at = self.start + at;
        if let Some(slot) = self.out.get_mut(at..at + 4) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Drops everything this writer wrote, leaving the buffer as it was handed over.
    pub(crate) fn rollback(&mut self) {
        self.out.truncate(self.start);
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.clear();
        }
    }
}
