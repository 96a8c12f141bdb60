//! A stream's frames as its bytes arrive, without I/O: the caller reads into the reader's
//! buffer (or throws away what it says to skip), then takes what the bytes made.
//!
//! The reader yields each whole frame, each frame that does not decode (skipping the rest of
//! it as it arrives when its length can be trusted, or saying that the stream's framing is
//! lost), and decides, once the header of a frame not yet whole is there, whether the frame
//! may be kept: the caller's `hold` policy gives a hold on room for the frame's whole length
//! (a server takes it from a pool shared by every connection) or none, and then the frame is
//! thrown away as it arrives, nothing in it decoded. A hold is given back as soon as its frame
//! is whole. A frame that arrives whole in one read is never held.
//!
//! Memory follows what was sent, not what a header claims: the buffer grows as bytes come,
//! geometrically, but never past the frame it holds and a read's worth once the header has
//! said how long that is.

use crate::wire::error::WireError;
use crate::wire::frame::{Frame, HEADER_LEN, decode_frame, frame_header};
use crate::wire::limits::Limits;

/// Room a read is given beyond what the buffer holds; what the buffer keeps between frames.
pub const READ_BYTES: usize = 16 * 1024;

/// What the bytes read so far made.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole frame, `len` bytes of the stream.
    Frame { frame: Frame, len: usize },
    /// A frame that does not decode: its bytes are skipped, those still to come as they
    /// arrive (`FrameReader::skipping`).
    Skipped(WireError),
    /// A frame that does not decode and whose length cannot be trusted: nothing after it on
    /// the stream can be read. The reader takes nothing more.
    Lost(WireError),
    /// A frame not yet whole that the `hold` policy gave no room: it is thrown away as it
    /// arrives, and nothing in it is decoded.
    Refused {
        correlation_id: u64,
        frame_len: usize,
    },
    /// Nothing more until more bytes arrive.
    NeedBytes,
}

/// How a stream ended inside a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedInside {
    /// The frame's correlation id if its header came, 0 otherwise.
    pub correlation_id: u64,
    /// Bytes of the frame that came.
    pub bytes: usize,
}

/// Reads one stream's frames; `H` is the hold on room for an unfinished frame.
#[derive(Debug)]
pub struct FrameReader<H> {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already taken.
    consumed: usize,
    /// Bytes of a skipped or refused frame still to come, to be thrown away.
    skip: usize,
    /// The frame at the start of what is not consumed, once its header has been seen while
    /// it was not whole: its length, and the hold on its room (`None`: not held).
    front: Option<(usize, Option<H>)>,
    lost: bool,
}

impl<H> FrameReader<H> {
    pub fn new(limits: Limits) -> Self {
        FrameReader {
            limits,
            buf: Vec::new(),
            consumed: 0,
            skip: 0,
            front: None,
            lost: false,
        }
    }

    /// Bytes to throw away as they arrive before anything else is read: while it is not 0,
    /// read at most this many and give their count to `skipped`.
    pub fn skipping(&self) -> usize {
        self.skip
    }

    /// `n` bytes were read and thrown away (at most `skipping`).
    pub fn skipped(&mut self, n: usize) {
        debug_assert!(n <= self.skip, "skipped {n} of {}", self.skip);
        self.skip = self.skip.saturating_sub(n);
    }

    /// The buffer the next read appends to (append only), with room for at least
    /// `READ_BYTES` more. Only while `skipping` is 0.
    pub fn read_buffer(&mut self) -> &mut Vec<u8> {
        debug_assert_eq!(self.skip, 0, "bytes to skip come first");
        self.compact();
        let want = self.buf.len() + READ_BYTES;
        if self.buf.capacity() < want {
            let mut to = (self.buf.capacity() * 2).max(want);
            if let Some((frame_len, _)) = &self.front {
                to = to.min(frame_len.saturating_add(READ_BYTES)).max(want);
            }
            self.buf.reserve_exact(to - self.buf.len());
        }
        &mut self.buf
    }

    /// What the bytes read make next. `hold` is asked once about each frame whose header is
    /// there while the frame is not whole, with its length: a hold keeps it (and is dropped
    /// once it is whole), `None` refuses it. Call until `NeedBytes`, then read again.
    pub fn next(&mut self, hold: impl FnOnce(usize) -> Option<H>) -> Incoming {
        if self.lost {
            return Incoming::NeedBytes;
        }
        if self.skip > 0 {
            self.compact();
            return Incoming::NeedBytes;
        }
        let rest = self.buf.get(self.consumed..).unwrap_or_default();
        match decode_frame(rest, &self.limits) {
            Ok(Some((frame, len))) => {
                self.take(len);
                Incoming::Frame { frame, len }
            }
            Ok(None) => match (self.front.is_none(), frame_header(rest)) {
                (true, Some((frame_len, correlation_id))) => {
                    self.unfinished(frame_len, correlation_id, hold)
                }
                _ => {
                    self.compact();
                    Incoming::NeedBytes
                }
            },
            Err(e) => {
                let Some(frame_len) = e.frame_len else {
                    self.lost = true;
                    self.front = None;
                    return Incoming::Lost(e);
                };
                let here = frame_len.min(rest.len());
                self.take(here);
                self.skip = frame_len - here;
                Incoming::Skipped(e)
            }
        }
    }

    /// Where the stream ended, if inside a frame (a frame being skipped has been answered).
    pub fn ended_inside(&self) -> Option<EndedInside> {
        let rest = self.buf.get(self.consumed..).unwrap_or_default();
        if self.lost || rest.is_empty() {
            return None;
        }
        let correlation_id = rest
            .get(8..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        Some(EndedInside {
            correlation_id,
            bytes: rest.len(),
        })
    }

    /// Whether a frame not yet whole is held.
    pub fn holds(&self) -> bool {
        matches!(self.front, Some((_, Some(_))))
    }

    /// The frame at the front is not whole and its header is there: held, or thrown away.
    fn unfinished(
        &mut self,
        frame_len: usize,
        correlation_id: u64,
        hold: impl FnOnce(usize) -> Option<H>,
    ) -> Incoming {
        let kept = self.buf.len() - self.consumed;
        debug_assert!(HEADER_LEN <= kept && kept < frame_len);
        match hold(frame_len) {
            Some(h) => {
                self.front = Some((frame_len, Some(h)));
                self.compact();
                Incoming::NeedBytes
            }
            None => {
                self.skip = frame_len - kept;
                self.consumed = self.buf.len();
                self.compact();
                Incoming::Refused {
                    correlation_id,
                    frame_len,
                }
            }
        }
    }

    /// The frame at the front (`len` of its bytes here) is done with: its hold goes.
    fn take(&mut self, len: usize) {
        self.consumed += len;
        self.front = None;
    }

    /// Drops what was taken; a buffer a large frame grew is not kept once that frame is read.
    fn compact(&mut self) {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        if self.front.is_none()
            && self.buf.capacity() > 2 * READ_BYTES
            && self.buf.len() <= READ_BYTES
        {
            self.buf.shrink_to(2 * READ_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use proptest::prelude::*;

    use super::*;
    use crate::wire::{
        EchoPayload, ErrorCode, ErrorMessage, Operation, Request, RequestId, encode_error_frame,
        encode_request_frame,
    };

    const LIMITS: Limits = Limits {
        frame_len_max: 1 << 17,
        batch_len_max: 1000,
    };

    /// A hold that counts the holds alive.
    #[derive(Debug)]
    struct Hold(Rc<Cell<usize>>);

    impl Drop for Hold {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    /// One frame of a test stream.
    #[derive(Clone, Debug)]
    enum Piece {
        /// A request batch of echoes.
        Echoes { count: usize, payload_len: usize },
        /// An error frame.
        Error,
        /// A request batch of no operations: its header is good, its body is not.
        Empty,
        /// A header with version 2: rejected once its 16 bytes are there.
        Version2 { body_len: usize },
    }

    fn encode(piece: &Piece, correlation_id: u64) -> Vec<u8> {
        let mut out = Vec::new();
        match piece {
            Piece::Echoes { count, payload_len } => {
                let requests: Vec<Request> = (0..*count)
                    .map(|i| Request {
                        id: RequestId(u128::from(correlation_id) << 32 | i as u128),
                        operation: Operation::Echo {
                            payload: EchoPayload::new(vec![i as u8; *payload_len])
                                .expect("within the bound"),
                        },
                    })
                    .collect();
                encode_request_frame(correlation_id, &requests, &mut out).expect("encodes");
            }
            Piece::Error => {
                let message = ErrorMessage::truncated("nothing");
                encode_error_frame(
                    correlation_id,
                    ErrorCode::MalformedFrame,
                    &message,
                    &mut out,
                );
            }
            Piece::Empty | Piece::Version2 { .. } => {
                let body_len = match piece {
                    Piece::Version2 { body_len } => *body_len,
                    _ => 2,
                };
                let length = u32::try_from(HEADER_LEN - 4 + body_len).expect("small");
                out.extend_from_slice(&length.to_le_bytes());
                out.push(if matches!(piece, Piece::Empty) { 1 } else { 2 });
                out.push(1);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&correlation_id.to_le_bytes());
                out.resize(HEADER_LEN + body_len, 0);
            }
        }
        out
    }

    /// How a test stream ends after its frames.
    #[derive(Clone, Debug)]
    enum Tail {
        Clean,
        /// Ends `n` bytes into one more echo frame (never all of it).
        Cut(usize),
        /// A length prefix over the frame limit.
        TooLarge,
    }

    /// What the reader told, in order.
    #[derive(Debug, PartialEq, Eq)]
    enum Told {
        Frame(Frame),
        Skipped(WireError),
        Lost(WireError),
        Refused(u64),
    }

    struct Stream {
        bytes: Vec<u8>,
        /// Each frame's span in `bytes`, and what it makes alone.
        frames: Vec<(usize, usize, Told)>,
        tail: Tail,
        /// Where the tail starts.
        tail_at: usize,
    }

    fn stream(pieces: &[Piece], tail: &Tail) -> Stream {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let encoded = encode(piece, i as u64 + 1);
            let alone = match decode_frame(&encoded, &LIMITS) {
                Ok(Some((frame, len))) => {
                    assert_eq!(len, encoded.len());
                    Told::Frame(frame)
                }
                Err(e) => {
                    assert_eq!(e.frame_len, Some(encoded.len()));
                    Told::Skipped(e)
                }
                Ok(None) => unreachable!("a whole frame"),
            };
            frames.push((bytes.len(), bytes.len() + encoded.len(), alone));
            bytes.extend_from_slice(&encoded);
        }
        let tail_at = bytes.len();
        match tail {
            Tail::Clean => {}
            Tail::Cut(n) => {
                let last = encode(
                    &Piece::Echoes {
                        count: 3,
                        payload_len: 40,
                    },
                    99,
                );
                bytes.extend_from_slice(&last[..(*n).min(last.len() - 1)]);
            }
            Tail::TooLarge => bytes.extend_from_slice(&(LIMITS.frame_len_max).to_le_bytes()),
        }
        Stream {
            bytes,
            frames,
            tail: tail.clone(),
            tail_at,
        }
    }

    /// What a reader made of `stream` arriving in pieces cut at `cuts`, read the way a server
    /// reads (into the buffer's room, or thrown away while skipping), holding room when
    /// `decisions` (cycled) say so.
    struct Run {
        told: Vec<Told>,
        /// Stream offsets at which each frame was asked about, in order.
        asked_at: Vec<usize>,
        /// Every offset a read into the buffer ended at.
        read_ends: Vec<usize>,
        ended: Option<EndedInside>,
        capacity_max: usize,
    }

    fn run(stream: &Stream, cuts: &[usize], decisions: &[bool]) -> Run {
        let live = Rc::new(Cell::new(0usize));
        let mut reader = FrameReader::<Hold>::new(LIMITS);
        let mut out = Run {
            told: Vec::new(),
            asked_at: Vec::new(),
            read_ends: Vec::new(),
            ended: None,
            capacity_max: 0,
        };
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.bytes.len())).collect();
        cuts.push(stream.bytes.len());
        cuts.sort_unstable();
        let mut at = 0;
        for cut in cuts {
            // Everything up to the cut has arrived: read it as a server would.
            while at < cut {
                let skip = reader.skipping();
                if skip > 0 {
                    let n = skip.min(cut - at);
                    reader.skipped(n);
                    at += n;
                    continue;
                }
                let buf = reader.read_buffer();
                let room = buf.capacity() - buf.len();
                assert!(room >= READ_BYTES);
                let n = room.min(cut - at);
                buf.extend_from_slice(&stream.bytes[at..at + n]);
                at += n;
                out.capacity_max = out.capacity_max.max(buf.capacity());
                out.read_ends.push(at);
                loop {
                    let mut asked = false;
                    let decision = decisions
                        .get(out.asked_at.len() % decisions.len().max(1))
                        .copied()
                        .unwrap_or(true);
                    let incoming = reader.next(|_| {
                        asked = true;
                        decision.then(|| {
                            live.set(live.get() + 1);
                            Hold(live.clone())
                        })
                    });
                    if asked {
                        out.asked_at.push(at);
                    }
                    assert!(live.get() <= 1, "one hold at a time");
                    assert_eq!(reader.holds(), live.get() == 1);
                    match incoming {
                        Incoming::NeedBytes => {
                            // Between frames, the buffer a large frame grew is not kept.
                            if !reader.holds() && !reader.lost {
                                assert!(reader.buf.capacity() <= 2 * READ_BYTES);
                            }
                            break;
                        }
                        Incoming::Frame { frame, .. } => out.told.push(Told::Frame(frame)),
                        Incoming::Skipped(e) => out.told.push(Told::Skipped(e)),
                        Incoming::Lost(e) => out.told.push(Told::Lost(e)),
                        Incoming::Refused { correlation_id, .. } => {
                            out.told.push(Told::Refused(correlation_id))
                        }
                    }
                    // A hold goes as soon as its frame is done with.
                    assert_eq!(live.get(), 0, "held past its frame");
                }
            }
        }
        out.ended = reader.ended_inside();
        drop(reader);
        assert_eq!(live.get(), 0);
        out
    }

    /// The model: each frame makes alone what it makes in the stream, unless it was asked
    /// about and refused; a frame is asked about exactly when a read ends after its header and
    /// before its end (its header is good); the stream's end is said if it ended inside a
    /// frame not refused.
    fn check(stream: &Stream, run: &Run, decisions: &[bool]) -> Result<(), TestCaseError> {
        let mut want = Vec::new();
        let mut asked = Vec::new();
        let mut refused_tail = false;
        let mut ask = |start: usize, end: usize, header_good: bool, want: &mut Vec<Told>| {
            let at = run
                .read_ends
                .iter()
                .copied()
                .find(|&b| header_good && start + HEADER_LEN <= b && b < end);
            let Some(at) = at else {
                return true;
            };
            let keep = decisions
                .get(asked.len() % decisions.len().max(1))
                .copied()
                .unwrap_or(true);
            asked.push(at);
            if !keep {
                let id = u64::from_le_bytes(
                    stream.bytes[start + 8..start + 16]
                        .try_into()
                        .expect("8 bytes"),
                );
                want.push(Told::Refused(id));
            }
            keep
        };
        for (start, end, alone) in &stream.frames {
            let header_good = !matches!(alone, Told::Skipped(e) if e.offset < HEADER_LEN);
            if ask(*start, *end, header_good, &mut want) {
                want.push(match alone {
                    Told::Frame(f) => Told::Frame(f.clone()),
                    Told::Skipped(e) => Told::Skipped(e.clone()),
                    _ => unreachable!(),
                });
            }
        }
        let len = stream.bytes.len();
        let mut ended = None;
        match stream.tail {
            Tail::Clean => {}
            Tail::TooLarge => match decode_frame(&stream.bytes[stream.tail_at..], &LIMITS) {
                Err(e) => want.push(Told::Lost(e)),
                other => prop_assert!(false, "{other:?}"),
            },
            Tail::Cut(_) if len == stream.tail_at => {}
            Tail::Cut(_) => {
                refused_tail = !ask(stream.tail_at, usize::MAX, true, &mut want);
                let rest = &stream.bytes[stream.tail_at..];
                ended = Some(EndedInside {
                    correlation_id: if rest.len() >= HEADER_LEN { 99 } else { 0 },
                    bytes: rest.len(),
                });
            }
        }
        if refused_tail {
            ended = None;
        }
        prop_assert_eq!(&run.told, &want);
        prop_assert_eq!(&run.asked_at, &asked);
        prop_assert_eq!(run.ended, ended);
        // Never more than a read's worth past the largest frame, or twice a read's worth.
        let largest = stream
            .frames
            .iter()
            .map(|(s, e, _)| e - s)
            .max()
            .unwrap_or(0);
        let bound = (largest + READ_BYTES).max(2 * (READ_BYTES + HEADER_LEN));
        prop_assert!(run.capacity_max <= bound, "{} > {bound}", run.capacity_max);
        Ok(())
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            4 => (1usize..80, 0usize..=256)
                .prop_map(|(count, payload_len)| Piece::Echoes { count, payload_len }),
            1 => (300usize..400).prop_map(|count| Piece::Echoes { count, payload_len: 256 }),
            1 => Just(Piece::Error),
            1 => Just(Piece::Empty),
            1 => (0usize..40_000).prop_map(|body_len| Piece::Version2 { body_len }),
        ]
    }

    fn tail() -> impl Strategy<Value = Tail> {
        prop_oneof![
            2 => Just(Tail::Clean),
            1 => (0usize..200).prop_map(Tail::Cut),
            1 => Just(Tail::TooLarge),
        ]
    }

    /// Every way of cutting a stream in two gives the frames the stream holds, each once, in
    /// order, whichever frames are held and whichever are refused.
    #[test]
    fn every_split_of_a_stream_gives_its_frames() {
        let pieces = [
            Piece::Echoes {
                count: 2,
                payload_len: 5,
            },
            Piece::Version2 { body_len: 30 },
            Piece::Error,
            Piece::Empty,
            Piece::Echoes {
                count: 90,
                payload_len: 256,
            },
            Piece::Echoes {
                count: 1,
                payload_len: 0,
            },
        ];
        for tail in [Tail::Clean, Tail::Cut(40), Tail::TooLarge] {
            let s = stream(&pieces, &tail);
            for cut in 0..=s.bytes.len() {
                for decisions in [[true], [false]] {
                    let r = run(&s, &[cut], &decisions);
                    check(&s, &r, &decisions)
                        .unwrap_or_else(|e| panic!("cut at {cut}, {tail:?}, {decisions:?}: {e}"));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ledger::proptest_config!("wire_frame_reader.txt", 256, "/../../"))]

        /// Any stream, cut anywhere into any number of pieces, read with any hold decisions,
        /// against the model in `check`.
        #[test]
        fn frames_come_out_whole_however_the_stream_is_cut(
            pieces in prop::collection::vec(piece(), 0..8),
            tail in tail(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            decisions in prop::collection::vec(any::<bool>(), 1..6),
        ) {
            let s = stream(&pieces, &tail);
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(s.bytes.len() + 1)).collect();
            let r = run(&s, &cuts, &decisions);
            check(&s, &r, &decisions)?;
        }
    }

    /// A header that claims the largest frame, then a trickle: the buffer grows with what
    /// comes, not with what the header claims.
    #[test]
    fn a_claimed_length_is_not_allocated_before_its_bytes_come() {
        let limits = Limits {
            frame_len_max: 64 << 20,
            batch_len_max: 1000,
        };
        let mut reader = FrameReader::<()>::new(limits);
        let length = (64u32 << 20) - 4;
        let mut header = length.to_le_bytes().to_vec();
        header.extend_from_slice(&[1, 1, 0, 0]);
        header.extend_from_slice(&7u64.to_le_bytes());
        reader.read_buffer().extend_from_slice(&header);
        assert_eq!(
            reader.next(|len| (len == 64 << 20).then_some(())),
            Incoming::NeedBytes
        );
        assert!(reader.holds());
        let mut sent = header.len();
        for _ in 0..200 {
            let buf = reader.read_buffer();
            assert!(
                buf.capacity() <= 2 * (sent + READ_BYTES),
                "{} bytes for {sent} sent",
                buf.capacity()
            );
            buf.extend_from_slice(&[0u8; 1000]);
            sent += 1000;
            assert_eq!(
                reader.next(|_| unreachable!("asked once")),
                Incoming::NeedBytes
            );
        }
        assert_eq!(
            reader.ended_inside(),
            Some(EndedInside {
                correlation_id: 7,
                bytes: sent
            })
        );
    }
}
