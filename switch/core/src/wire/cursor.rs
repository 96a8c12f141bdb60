//! Checked little-endian reads from untrusted bytes, and writes that can record field
//! boundaries for annotated hex dumps.

use crate::wire::error::{WireError, WireErrorKind};
use crate::wire::types::FieldError;

/// Reads one frame. Every read is checked against the end of the frame; nothing indexes.
pub(crate) struct Reader<'a> {
    frame: &'a [u8],
    /// The declared length of the whole frame; `frame` may be only its header.
    frame_len: usize,
    pos: usize,
    pub(crate) item: Option<u16>,
    pub(crate) correlation_id: Option<u64>,
}

impl<'a> Reader<'a> {
    /// `frame` is the frame from the first byte of its length prefix: all of it, or only its
    /// header while the rest has not arrived. `frame_len` is the length its prefix declares.
    pub(crate) fn new(frame: &'a [u8], frame_len: usize) -> Self {
        Self {
            frame,
            frame_len,
            pos: 0,
            item: None,
            correlation_id: None,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.frame.len().saturating_sub(self.pos)
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

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.frame.get(self.pos..end));
        match bytes {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(self.error_at(
                self.pos,
                field,
                WireErrorKind::Truncated {
                    needed: n,
                    available: self.remaining(),
                },
            )),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let chunk = self
            .frame
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>());
        match chunk {
            Some(chunk) => {
                self.pos += N;
                Ok(*chunk)
            }
            None => Err(self.error_at(
                self.pos,
                field,
                WireErrorKind::Truncated {
                    needed: N,
                    available: self.remaining(),
                },
            )),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.array::<1>(field).map(u8::from_le_bytes)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.array(field).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.array(field).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.array(field).map(u64::from_le_bytes)
    }

    pub(crate) fn u128(&mut self, field: &'static str) -> Result<u128, WireError> {
        self.array(field).map(u128::from_le_bytes)
    }

    pub(crate) fn i128(&mut self, field: &'static str) -> Result<i128, WireError> {
        self.array(field).map(i128::from_le_bytes)
    }

    /// Reads a value and maps it through `parse`; `None` is an unknown value at its offset.
    pub(crate) fn enumerated<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(u8) -> Option<T>,
    ) -> Result<T, WireError> {
        let at = self.pos;
        let value = self.u8(field)?;
        parse(value).ok_or_else(|| {
            self.error_at(
                at,
                field,
                WireErrorKind::Field(FieldError::UnknownValue {
                    value: u64::from(value),
                }),
            )
        })
    }

    /// Reads `len` bytes of a bounded field and converts them with `make`, reporting a
    /// conversion failure at the field's first byte. The bound is checked before the bytes
    /// are taken, so a length past the bound is reported as such even at the end of a frame.
    pub(crate) fn bounded<T>(
        &mut self,
        len_field: &'static str,
        len_at: usize,
        len: usize,
        max: usize,
        field: &'static str,
        make: impl FnOnce(&'a [u8]) -> Result<T, FieldError>,
    ) -> Result<T, WireError> {
        if len > max {
            return Err(self.error_at(
                len_at,
                len_field,
                WireErrorKind::Field(FieldError::TooLong { len, max }),
            ));
        }
        let at = self.pos;
        let bytes = self.take(len, field)?;
        make(bytes).map_err(|error| self.error_at(at, field, WireErrorKind::Field(error)))
    }

    /// A u8 length followed by that many bytes, at most `max`.
    pub(crate) fn bytes_u8<T>(
        &mut self,
        len_field: &'static str,
        field: &'static str,
        max: usize,
        make: impl FnOnce(&'a [u8]) -> Result<T, FieldError>,
    ) -> Result<T, WireError> {
        let len_at = self.pos;
        let len = usize::from(self.u8(len_field)?);
        self.bounded(len_field, len_at, len, max, field, make)
    }

    /// A u16 length followed by that many bytes, at most `max`.
    pub(crate) fn bytes_u16<T>(
        &mut self,
        len_field: &'static str,
        field: &'static str,
        max: usize,
        make: impl FnOnce(&'a [u8]) -> Result<T, FieldError>,
    ) -> Result<T, WireError> {
        let len_at = self.pos;
        let len = usize::from(self.u16(len_field)?);
        self.bounded(len_field, len_at, len, max, field, make)
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
