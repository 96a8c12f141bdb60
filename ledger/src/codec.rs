//! Little-endian encoding for every binary format of the workspace: a bounds-checked `Reader`
//! over untrusted bytes and the `put_*` helpers that write what it reads.
//!
//! A format keeps its own layout and error type; this module does the byte arithmetic once.
//! Every read is checked against the end of the buffer and nothing indexes, so a reader never
//! panics on what a file or a peer sends: a short buffer is `CodecError::Truncated`, a value a
//! field cannot hold is `Invalid`, and each format maps those into its own error with `From`
//! or `map_err`. Offsets in errors count from the start of the whole payload, also for a
//! `Reader` over one section of it (`Reader::sub`, `Reader::with_base`); an error's message
//! says what is wrong and `CodecError::at` where, for the format to print with its own context
//! (a payload offset, a section, a frame).
//!
//! After an error the reader's position is unspecified: a decoder returns the error.

/// Why bytes could not be read as what a format says they hold. `at` is the offset of the
/// field from the start of the payload (for a length over its bound, of the length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("ends inside {what} ({needed} bytes needed, {available} left)")]
    Truncated {
        what: &'static str,
        at: usize,
        needed: usize,
        available: usize,
    },
    /// A value the field has no meaning for: a bool other than 0 or 1, an unknown tag.
    #[error("{what} cannot be {value}")]
    Invalid {
        what: &'static str,
        at: usize,
        value: u128,
    },
    /// A length prefix over the field's bound.
    #[error("{what} of {len} is over its bound of {max}")]
    TooLong {
        what: &'static str,
        at: usize,
        len: usize,
        max: usize,
    },
    /// A count of entries that cannot all fit in what is left, each taking at least some bytes.
    #[error("{what} {count} does not fit in the remaining {remaining} bytes")]
    TooMany {
        what: &'static str,
        at: usize,
        count: u64,
        remaining: usize,
    },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str, at: usize },
    /// Bytes after the last field of something that must fill its buffer.
    #[error("{extra} bytes after the end")]
    Trailing { at: usize, extra: usize },
}

impl CodecError {
    /// Where the error is, from the start of the payload.
    pub fn at(&self) -> usize {
        match *self {
            CodecError::Truncated { at, .. }
            | CodecError::Invalid { at, .. }
            | CodecError::TooLong { at, .. }
            | CodecError::TooMany { at, .. }
            | CodecError::NotUtf8 { at, .. }
            | CodecError::Trailing { at, .. } => at,
        }
    }
}

/// Reads fields from the front of a byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    /// Bytes of `buf` read so far.
    position: usize,
    /// Where `buf` starts in the payload, for the offsets errors report.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self::with_base(buf, 0)
    }

    /// A reader over a part of a payload that starts at offset `base` of it.
    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Reader {
            buf,
            position: 0,
            base,
        }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Where the next field starts, counted from the start of the payload.
    pub fn offset(&self) -> usize {
        self.base.saturating_add(self.position)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.position)
    }

    /// The bytes not read yet, without reading them.
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.position..).unwrap_or_default()
    }

    /// Everything has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// `Trailing` unless everything has been read.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(CodecError::Trailing {
                at: self.offset(),
                extra,
            }),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let bytes = self
            .position
            .checked_add(n)
            .and_then(|end| self.buf.get(self.position..end))
            .ok_or(CodecError::Truncated {
                what,
                at: self.offset(),
                needed: n,
                available: self.remaining(),
            })?;
        self.position += n;
        Ok(bytes)
    }

    /// The next `n` bytes as a reader of their own, whose errors give offsets in the payload.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, CodecError> {
        let base = self.offset();
        Ok(Reader::with_base(self.take(n, what)?, base))
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let chunk = self
            .buf
            .get(self.position..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or(CodecError::Truncated {
                what,
                at: self.offset(),
                needed: N,
                available: self.remaining(),
            })?;
        self.position += N;
        Ok(*chunk)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        self.array(what).map(u8::from_le_bytes)
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub fn u128(&mut self, what: &'static str) -> Result<u128, CodecError> {
        self.array(what).map(u128::from_le_bytes)
    }

    pub fn i128(&mut self, what: &'static str) -> Result<i128, CodecError> {
        self.array(what).map(i128::from_le_bytes)
    }

    /// One byte, 0 or 1; anything else is `Invalid`.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        self.enumerated(what, |value| match value {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })
    }

    /// One byte mapped through `parse`; `None` is `Invalid` at the byte.
    pub fn enumerated<T>(
        &mut self,
        what: &'static str,
        parse: impl FnOnce(u8) -> Option<T>,
    ) -> Result<T, CodecError> {
        let at = self.offset();
        let value = self.u8(what)?;
        parse(value).ok_or(CodecError::Invalid {
            what,
            at,
            value: u128::from(value),
        })
    }

    /// A u32 count of entries that take at least `entry_len_min` bytes each: `TooMany` if they
    /// cannot all fit in what is left, so that a decoder may allocate for `count` entries.
    pub fn count_u32(
        &mut self,
        what: &'static str,
        entry_len_min: usize,
    ) -> Result<usize, CodecError> {
        let at = self.offset();
        let count = self.u32(what)?;
        self.fits(what, at, u64::from(count), entry_len_min)
    }

    /// `count_u32` with a u64 count.
    pub fn count_u64(
        &mut self,
        what: &'static str,
        entry_len_min: usize,
    ) -> Result<usize, CodecError> {
        let at = self.offset();
        let count = self.u64(what)?;
        self.fits(what, at, count, entry_len_min)
    }

    fn fits(
        &self,
        what: &'static str,
        at: usize,
        count: u64,
        entry_len_min: usize,
    ) -> Result<usize, CodecError> {
        let remaining = self.remaining();
        usize::try_from(count)
            .ok()
            .filter(|&n| {
                n.checked_mul(entry_len_min)
                    .is_some_and(|len| len <= remaining)
            })
            .ok_or(CodecError::TooMany {
                what,
                at,
                count,
                remaining,
            })
    }

    /// A u8 length (named `len_what` in errors), then that many bytes, at most `max`. The
    /// bound is checked before the bytes are taken, so a length over it is `TooLong` even at
    /// the end of the buffer.
    pub fn bytes_u8(
        &mut self,
        len_what: &'static str,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], CodecError> {
        let len_at = self.offset();
        let len = usize::from(self.u8(len_what)?);
        self.bounded(len_what, len_at, len, max, what)
    }

    /// `bytes_u8` with a u16 length.
    pub fn bytes_u16(
        &mut self,
        len_what: &'static str,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], CodecError> {
        let len_at = self.offset();
        let len = usize::from(self.u16(len_what)?);
        self.bounded(len_what, len_at, len, max, what)
    }

    fn bounded(
        &mut self,
        len_what: &'static str,
        len_at: usize,
        len: usize,
        max: usize,
        what: &'static str,
    ) -> Result<&'a [u8], CodecError> {
        if len > max {
            return Err(CodecError::TooLong {
                what: len_what,
                at: len_at,
                len,
                max,
            });
        }
        self.take(len, what)
    }

    /// What `put_str` wrote: a u8 length, then that many bytes of UTF-8, at most `max`; `what`
    /// names both. `NotUtf8` is reported at the first byte of the text.
    pub fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, CodecError> {
        let at = self.offset().saturating_add(1);
        let bytes = self.bytes_u8(what, what, max)?;
        std::str::from_utf8(bytes).map_err(|_| CodecError::NotUtf8 { what, at })
    }
}

pub fn put_u8(out: &mut Vec<u8>, value: u8) {
    out.push(value);
}

pub fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

pub fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_u128(out: &mut Vec<u8>, value: u128) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_i128(out: &mut Vec<u8>, value: i128) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// A u8 length, then `bytes`. Panics if they are longer than 255: callers write only what
/// their types or their checks bound below that, so a longer one is a bug, not input.
pub fn put_bytes_u8(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u8::try_from(bytes.len())
        .unwrap_or_else(|_| panic!("{} bytes under a u8 length", bytes.len()));
    out.push(len);
    out.extend_from_slice(bytes);
}

/// A u16 length, then `bytes`. Panics if they are longer than 65,535, as `put_bytes_u8` does.
pub fn put_bytes_u16(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len())
        .unwrap_or_else(|_| panic!("{} bytes under a u16 length", bytes.len()));
    put_u16(out, len);
    out.extend_from_slice(bytes);
}

/// A string as `Reader::str` reads it: a u8 length, then its bytes. Panics if it is longer
/// than `max` (at most 255): strings are checked against their bound before they are kept,
/// so a longer one here is a bug, and a reader given the same `max` reads every string written.
pub fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    assert!(
        s.len() <= max && max <= usize::from(u8::MAX),
        "string of {} bytes over its bound of {max}",
        s.len()
    );
    put_bytes_u8(out, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const STR_MAX: usize = 64;

    /// One value of each kind the module reads and writes.
    #[derive(Clone, Debug, PartialEq)]
    enum Value {
        U8(u8),
        Bool(bool),
        U16(u16),
        U32(u32),
        U64(u64),
        U128(u128),
        I128(i128),
        Str(String),
        Bytes8(Vec<u8>),
        Bytes16(Vec<u8>),
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u8>().prop_map(Value::U8),
            any::<bool>().prop_map(Value::Bool),
            any::<u16>().prop_map(Value::U16),
            any::<u32>().prop_map(Value::U32),
            any::<u64>().prop_map(Value::U64),
            any::<u128>().prop_map(Value::U128),
            any::<i128>().prop_map(Value::I128),
            "\\PC{0,16}"
                .prop_filter("within the bound", |s: &String| s.len() <= STR_MAX)
                .prop_map(Value::Str),
            prop::collection::vec(any::<u8>(), 0..=255).prop_map(Value::Bytes8),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes16),
        ]
    }

    fn put(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::U8(v) => put_u8(out, *v),
            Value::Bool(v) => put_bool(out, *v),
            Value::U16(v) => put_u16(out, *v),
            Value::U32(v) => put_u32(out, *v),
            Value::U64(v) => put_u64(out, *v),
            Value::U128(v) => put_u128(out, *v),
            Value::I128(v) => put_i128(out, *v),
            Value::Str(s) => put_str(out, s, STR_MAX),
            Value::Bytes8(b) => put_bytes_u8(out, b),
            Value::Bytes16(b) => put_bytes_u16(out, b),
        }
    }

    /// Reads a value of the kind `like` is, with the reader call that matches its writer.
    fn read(like: &Value, r: &mut Reader<'_>) -> Result<Value, CodecError> {
        Ok(match like {
            Value::U8(_) => Value::U8(r.u8("u8")?),
            Value::Bool(_) => Value::Bool(r.bool("bool")?),
            Value::U16(_) => Value::U16(r.u16("u16")?),
            Value::U32(_) => Value::U32(r.u32("u32")?),
            Value::U64(_) => Value::U64(r.u64("u64")?),
            Value::U128(_) => Value::U128(r.u128("u128")?),
            Value::I128(_) => Value::I128(r.i128("i128")?),
            Value::Str(_) => Value::Str(r.str("str", STR_MAX)?.to_owned()),
            Value::Bytes8(_) => Value::Bytes8(r.bytes_u8("len8", "bytes8", 255)?.to_vec()),
            Value::Bytes16(_) => Value::Bytes16(r.bytes_u16("len16", "bytes16", 300)?.to_vec()),
        })
    }

    fn read_all(values: &[Value], buf: &[u8], base: usize) -> Result<Vec<Value>, CodecError> {
        let mut r = Reader::with_base(buf, base);
        let read = values
            .iter()
            .map(|v| read(v, &mut r))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(read)
    }

    proptest! {
        #![proptest_config(crate::proptest_config!("ledger_codec.txt"))]

        /// What the `put_*` helpers write, the matching reads give back, using every byte.
        #[test]
        fn sequences_round_trip(
            values in prop::collection::vec(value(), 0..24),
            base in 0usize..1_000,
        ) {
            let mut out = Vec::new();
            for v in &values {
                put(v, &mut out);
            }
            prop_assert_eq!(read_all(&values, &out, base), Ok(values.clone()));
            let mut extra = out.clone();
            extra.push(0);
            prop_assert_eq!(
                read_all(&values, &extra, base),
                Err(CodecError::Trailing { at: base + out.len(), extra: 1 })
            );
        }

        /// Every strict prefix of a valid encoding is `Truncated`, at an offset inside the
        /// prefix, asking for more than it holds: never a panic, never another error, never
        /// a value.
        #[test]
        fn every_truncation_is_truncated(
            values in prop::collection::vec(value(), 1..12),
            base in 0usize..1_000,
        ) {
            let mut out = Vec::new();
            for v in &values {
                put(v, &mut out);
            }
            for cut in 0..out.len() {
                match read_all(&values, &out[..cut], base) {
                    Err(CodecError::Truncated { at, needed, available, .. }) => {
                        prop_assert!(at >= base && at - base <= cut, "at {} cut {}", at, cut);
                        prop_assert_eq!(at - base + available, cut);
                        prop_assert!(needed > available);
                    }
                    other => prop_assert!(false, "cut {}: {:?}", cut, other),
                }
            }
        }

        /// Any reads over any bytes: a value or an error, never a panic, and never a read
        /// past the end.
        #[test]
        fn arbitrary_bytes_never_panic(
            kinds in prop::collection::vec(value(), 0..12),
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut r = Reader::new(&bytes);
            for kind in &kinds {
                if read(kind, &mut r).is_err() {
                    break;
                }
                prop_assert!(r.position() <= bytes.len());
            }
        }
    }

    #[test]
    fn bools_enums_and_bounds_are_checked_where_they_are() {
        let mut r = Reader::with_base(&[1, 0, 2], 10);
        assert_eq!(r.bool("a"), Ok(true));
        assert_eq!(r.bool("b"), Ok(false));
        assert_eq!(
            r.bool("c"),
            Err(CodecError::Invalid {
                what: "c",
                at: 12,
                value: 2
            })
        );

        let mut r = Reader::new(&[7, 9]);
        assert_eq!(
            r.enumerated("tag", |v| (v == 7).then_some("seven")),
            Ok("seven")
        );
        assert_eq!(
            r.enumerated("tag", |v| (v == 7).then_some("seven")),
            Err(CodecError::Invalid {
                what: "tag",
                at: 1,
                value: 9
            })
        );

        // The bound is checked before the bytes, which are not there.
        let mut r = Reader::new(&[5, 0, 0xaa]);
        assert_eq!(
            r.str("name", 4),
            Err(CodecError::TooLong {
                what: "name",
                at: 0,
                len: 5,
                max: 4
            })
        );
        let mut r = Reader::new(&[0, 2, 0xff, 0xfe]);
        assert_eq!(r.str("empty", 4), Ok(""));
        assert_eq!(
            r.str("name", 4),
            Err(CodecError::NotUtf8 {
                what: "name",
                at: 2
            })
        );
        let mut r = Reader::new(&[3, 0, 1, 2, 3, 4, 0]);
        assert_eq!(r.bytes_u16("blob len", "blob", 3), Ok(&[1u8, 2, 3][..]));
        assert_eq!(r.rest(), [4, 0]);
        assert!(!r.is_empty());
        assert_eq!(
            r.bytes_u16("blob len", "blob", 3),
            Err(CodecError::TooLong {
                what: "blob len",
                at: 5,
                len: 4,
                max: 3
            })
        );
        let mut r = Reader::new(&[2, 0, 1]);
        assert_eq!(
            r.bytes_u16("blob len", "blob", 3),
            Err(CodecError::Truncated {
                what: "blob",
                at: 2,
                needed: 2,
                available: 1
            })
        );
    }

    #[test]
    fn counts_must_fit_what_is_left() {
        let mut bytes = Vec::new();
        put_u32(&mut bytes, 3);
        bytes.extend_from_slice(&[0; 6]);
        assert_eq!(Reader::new(&bytes).count_u32("entries", 2), Ok(3));
        assert_eq!(
            Reader::new(&bytes).count_u32("entries", 3),
            Err(CodecError::TooMany {
                what: "entries",
                at: 0,
                count: 3,
                remaining: 6
            })
        );
        let mut bytes = Vec::new();
        put_u64(&mut bytes, u64::MAX);
        assert_eq!(
            Reader::with_base(&bytes, 4).count_u64("entries", 1),
            Err(CodecError::TooMany {
                what: "entries",
                at: 4,
                count: u64::MAX,
                remaining: 0
            })
        );
        // Entries of no bytes (a count of nothing) always fit.
        assert_eq!(Reader::new(&bytes).count_u64("empty", 0), Ok(usize::MAX));
    }

    #[test]
    fn sub_readers_report_offsets_in_the_payload() {
        let mut outer = Reader::with_base(&[1, 2, 3, 4, 5, 6], 100);
        outer.u8("head").expect("a byte");
        let mut section = outer.sub(3, "section").expect("three bytes");
        assert_eq!(outer.offset(), 104);
        assert_eq!(section.offset(), 101);
        assert_eq!(section.u16("field"), Ok(0x0302));
        assert_eq!(
            section.u16("field"),
            Err(CodecError::Truncated {
                what: "field",
                at: 103,
                needed: 2,
                available: 1
            })
        );
        assert_eq!(
            section.finish(),
            Err(CodecError::Trailing { at: 103, extra: 1 })
        );
        assert_eq!(
            outer.sub(3, "section").err(),
            Some(CodecError::Truncated {
                what: "section",
                at: 104,
                needed: 3,
                available: 2
            })
        );
        assert_eq!(
            outer.take(usize::MAX, "huge"),
            Err(CodecError::Truncated {
                what: "huge",
                at: 104,
                needed: usize::MAX,
                available: 2
            })
        );
    }

    #[test]
    #[should_panic(expected = "over its bound")]
    fn put_str_refuses_a_string_over_its_bound() {
        put_str(&mut Vec::new(), "abcde", 4);
    }
}
