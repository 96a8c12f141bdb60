//! Group commit: one writer thread takes whatever was submitted since its last write, appends
//! it with one write, makes it durable with one fdatasync, and only then acknowledges each record.
//! It batches at its own pace: while one group syncs, the next accumulates. There are no timers.
//!
//! With `WalOptions::prepare_segments`, a helper thread fills the spare file with zeros and
//! syncs it while the writer appends elsewhere; the writer renames it into place when it starts
//! a segment, and cuts each segment to its length when closing it, so every segment but the
//! last is whole, as recovery expects. The writer never waits for the helper: without a spare
//! ready it starts an ordinary, growing segment, and moves to the spare once it is ready.
//! `Wal::open` prepares the first segment itself, before anything is submitted.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

use super::format::{
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, encode_record, segment_file_name,
};
use super::recovery::Resume;
use super::{Durability, OpenError, StorageError, WalError, WalOptions};
use crate::bell::Bell;
use crate::storage::{AppendFile, Storage};

/// Told once whether a record is durable: `Ok(sequence)` after the fdatasync that covers it,
/// or `Err` if it never will be. Runs on the writer thread (the next group waits for it), so it
/// must be quick and must not panic; it must not take locks that a submitter holds while
/// calling `Permit::submit`.
pub type OnDurable = Box<dyn FnOnce(Result<u64, WalError>) + Send>;

/// The segment filled with zeros ahead. Not a segment name: recovery never reads it, and
/// `Wal::open` removes one left over.
pub const SPARE_SEGMENT_NAME: &str = "spare-segment.zeros";

/// In a failure's reason exactly when the disk was full (`WalError::is_out_of_space`).
pub(super) const OUT_OF_SPACE: &str = "out of space";

fn io_failure(e: &std::io::Error, otherwise: &'static str) -> &'static str {
    if e.kind() == std::io::ErrorKind::StorageFull {
        OUT_OF_SPACE
    } else {
        otherwise
    }
}

struct Entry {
    sequence: u64,
    payload: Vec<u8>,
    on_durable: OnDurable,
}

struct Shared {
    queue_depth_max: usize,
    /// Reserved slots: permits not yet submitted plus entries not yet answered.
    queued: AtomicUsize,
    /// Set once, by the first fatal error; from then on nothing is acknowledged.
    failure: OnceLock<Arc<str>>,
    /// Sequence assignment and the push to the writer happen under one lock, so that sequence
    /// order is submission order is write order.
    submitter: Mutex<Submitter>,
    record_size_max_bytes: u32,
    /// Wakes the writer when an entry is queued or the log closes.
    bell: Bell,
}

struct Submitter {
    next_sequence: u64,
    /// `None` once the log is closing.
    sender: Option<Sender<Entry>>,
}

impl Shared {
    /// Records the first fatal error and returns the one in force.
    fn fail(&self, reason: String) -> Arc<str> {
        let _ = self.failure.set(reason.into());
        self.failure
            .get()
            .expect("the failure was just set, or already was")
            .clone()
    }

    fn failed(&self) -> Option<WalError> {
        self.failure.get().map(|reason| WalError::Failed {
            reason: reason.clone(),
        })
    }

    fn release(&self, slots: usize) {
        let before = self.queued.fetch_sub(slots, Ordering::AcqRel);
        assert!(
            before >= slots,
            "released more queue slots than were reserved"
        );
    }
}

/// The write-ahead log, open for appending. Dropping it (or `close`) waits until everything
/// submitted has been answered.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    durability: Durability,
}

/// The right to submit one record, obtained from `Wal::reserve`. Dropping it unused gives the
/// slot back.
#[must_use = "a permit holds a queue slot until it is submitted or dropped"]
pub struct Permit<'a> {
    wal: &'a Wal,
    submitted: bool,
}

impl Wal {
    /// Starts a new segment where `resume` (from `recover`) says and the writer thread.
    /// With `Durability::None`, log `Durability::warning` where an operator sees it.
    pub fn open<S: Storage>(
        storage: S,
        options: WalOptions,
        resume: Resume,
    ) -> Result<Wal, OpenError> {
        options.validate()?;
        let mut options = options;
        options.prepare_segments &= options.durability == Durability::Fsync;
        let storage = Arc::new(storage);
        remove_spare(&*storage).map_err(|e| StorageError::new(SPARE_SEGMENT_NAME, "remove", e))?;
        // The first segment is prepared here, at full speed, before anything waits on it; if
        // that cannot be done (no room for two segments), it grows.
        let first = options
            .prepare_segments
            .then(|| {
                let len_bytes = options.segment_size_max_bytes;
                prepare(&*storage, len_bytes, 0, &AtomicBool::new(false)).ok()
            })
            .flatten();
        let (number, sequence) = (resume.next_segment(), resume.next_sequence());
        let segment = Segment::begin(&*storage, first, number, sequence)?;
        let (sender, receiver) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            queue_depth_max: options.queue_depth_max,
            queued: AtomicUsize::new(0),
            failure: OnceLock::new(),
            submitter: Mutex::new(Submitter {
                next_sequence: resume.next_sequence(),
                sender: Some(sender),
            }),
            record_size_max_bytes: options.record_size_max_bytes,
            bell: Bell::new(),
        });
        let durability = options.durability;
        let mut writer = Writer {
            storage,
            shared: Arc::clone(&shared),
            receiver,
            segment,
            spare: Spare::Absent,
            stop_preparing: Arc::new(AtomicBool::new(false)),
            next_sequence: resume.next_sequence(),
            buf: Vec::new(),
            group: Vec::new(),
            carry: None,
            options,
        };
        writer.prepare_spare();
        let writer = std::thread::Builder::new()
            .name("wal-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::new("writer thread", "spawn", e))?;
        Ok(Wal {
            shared,
            writer: Some(writer),
            durability,
        })
    }

    /// Reserves a slot for one record, or says at once why not: `QueueFull` (nothing was
    /// reserved; answer "busy") or `Failed`. Never blocks. Reserve before changing anything
    /// that the record will describe, because `Permit::submit` cannot refuse.
    pub fn reserve(&self) -> Result<Permit<'_>, WalError> {
        if let Some(failed) = self.shared.failed() {
            return Err(failed);
        }
        let max = self.shared.queue_depth_max;
        self.shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < max).then_some(queued + 1)
            })
            .map_err(|_| WalError::QueueFull)?;
        Ok(Permit {
            wal: self,
            submitted: false,
        })
    }

    /// Appends one record and waits until it is durable. For tests and tools; a server uses
    /// `reserve` and `Permit::submit`.
    pub fn append(&self, payload: Vec<u8>) -> Result<u64, WalError> {
        let permit = self.reserve()?;
        let (sender, receiver) = crossbeam_channel::bounded(1);
        permit.submit(
            payload,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver.recv().unwrap_or_else(|_| {
            Err(WalError::Failed {
                reason: "WAL writer stopped without answering".into(),
            })
        })
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Payloads larger than this make the log fail; check before applying what they describe.
    pub fn record_size_max_bytes(&self) -> u32 {
        self.shared.record_size_max_bytes
    }

    /// Waits until everything submitted has been answered, stops the writer, and reports the
    /// failure the log ended with, if any.
    pub fn close(mut self) -> Result<(), WalError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), WalError> {
        // Dropping the sender lets the writer drain the queue and stop.
        self.shared.submitter.lock().sender = None;
        self.shared.bell.close();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            self.shared.fail("WAL writer thread panicked".to_owned());
        }
        match self.shared.failed() {
            Some(failed) => Err(failed),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Permit<'_> {
    /// Queues `payload` as the next record and returns its sequence number; `on_durable` is
    /// called once with the outcome. Cheap and non-blocking: call it under the locks that
    /// ordered the change, so that sequence order is the order the changes were applied in.
    ///
    /// A payload over `record_size_max_bytes` cannot be logged, yet whatever it describes
    /// may already be applied, so it makes the log fail: this and every later submission get
    /// `WalError::Failed`.
    pub fn submit(mut self, payload: Vec<u8>, on_durable: OnDurable) -> u64 {
        self.submitted = true;
        let shared = &self.wal.shared;
        let max = shared.record_size_max_bytes;
        if payload.len() > max as usize {
            shared.fail(format!(
                "a record of {} bytes was submitted, over the maximum of {max} bytes",
                payload.len()
            ));
        }
        let mut submitter = shared.submitter.lock();
        let sequence = submitter.next_sequence;
        submitter.next_sequence += 1;
        let entry = Entry {
            sequence,
            payload,
            on_durable,
        };
        let unsent = match &submitter.sender {
            Some(sender) => sender.send(entry).err().map(|e| e.into_inner()),
            None => Some(entry),
        };
        drop(submitter);
        shared.bell.ring();
        if let Some(entry) = unsent {
            // Only if the writer thread died (a callback panicked): nobody else will answer.
            let reason = shared.fail("WAL writer thread is gone".to_owned());
            shared.release(1);
            (entry.on_durable)(Err(WalError::Failed { reason }));
        }
        sequence
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.submitted {
            self.wal.shared.release(1);
        }
    }
}

/// The segment being appended to.
struct Segment<A> {
    number: u64,
    name: String,
    file: A,
    len_bytes: u64,
    records: u64,
    /// Made from the spare: the file runs on past `len_bytes` with zeros until it is cut.
    prepared: bool,
}

impl<A: AppendFile> Segment<A> {
    /// Starts segment `number` holding only its header, durably (in every durability mode:
    /// see `Writer::rotate`): in `spare`, renamed once its header is durable, or else in a new,
    /// empty file.
    fn begin<S: Storage<Append = A>>(
        storage: &S,
        spare: Option<A>,
        number: u64,
        first_sequence: u64,
    ) -> Result<Self, StorageError> {
        let name = segment_file_name(number);
        let err = |action: &'static str| {
            let name = &name;
            move |e| StorageError::new(name, action, e)
        };
        let prepared = spare.is_some();
        let mut file = match spare {
            Some(file) => file,
            None => storage.create(&name).map_err(err("create"))?,
        };
        let header = SegmentHeader {
            segment: number,
            first_sequence,
        };
        file.append(&header.encode()).map_err(err("write header"))?;
        file.sync_data().map_err(err("fdatasync"))?;
        if prepared {
            storage
                .rename(SPARE_SEGMENT_NAME, &name)
                .map_err(err("rename spare to"))?;
        }
        storage
            .sync_dir()
            .map_err(|e| StorageError::new("directory", "fsync", e))?;
        Ok(Segment {
            len_bytes: SEGMENT_HEADER_LEN as u64,
            name,
            number,
            file,
            records: 0,
            prepared,
        })
    }
}

/// Fills the spare with zeros and syncs it; on failure, removes what was written. Refuses
/// (with `StorageFull`, writing nothing) unless the disk has room for two segments: the spare
/// must never take the space the segment being written still needs.
fn prepare<S: Storage>(
    storage: &S,
    len_bytes: u64,
    bytes_per_second: u64,
    stop: &AtomicBool,
) -> io::Result<S::Append> {
    let available = storage.available_bytes()?;
    if available < len_bytes.saturating_mul(2) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{available} bytes free, fewer than two segments of {len_bytes}"),
        ));
    }
    storage
        .create_zeroed(SPARE_SEGMENT_NAME, len_bytes, bytes_per_second, stop)
        .inspect_err(|_| {
            let _ = remove_spare(storage);
        })
}

/// Removes the spare, if there is one.
fn remove_spare<S: Storage>(storage: &S) -> io::Result<()> {
    match storage.remove(SPARE_SEGMENT_NAME) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Where the next segment's zeros stand.
enum Spare<A> {
    /// None is being filled: none was asked for yet, or the last filling failed (it is tried
    /// again at the next rotation, not at once).
    Absent,
    /// The helper filling it.
    Filling(JoinHandle<io::Result<A>>),
    Ready(A),
}

struct Writer<S: Storage> {
    storage: Arc<S>,
    options: WalOptions,
    shared: Arc<Shared>,
    receiver: Receiver<Entry>,
    segment: Segment<S::Append>,
    spare: Spare<S::Append>,
    /// Set at close: the helper gives up at its next piece.
    stop_preparing: Arc<AtomicBool>,
    next_sequence: u64,
    /// The group's bytes, reused from group to group.
    buf: Vec<u8>,
    group: Vec<Entry>,
    /// The entry that did not fit into the last group.
    carry: Option<Entry>,
}

impl<S: Storage> Writer<S> {
    fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(entry) => entry,
                None => match self.receive() {
                    Some(entry) => entry,
                    // Closed, and everything queued has been answered.
                    None => return self.finish(),
                },
            };
            self.collect(first);
            // Checked after collecting: an oversized submission sets the failure before it is
            // queued, so it is never written and nothing after it is acknowledged.
            let outcome = match self.shared.failure.get() {
                Some(reason) => Err(reason.clone()),
                None => self
                    .write_group()
                    .map_err(|reason| self.shared.fail(reason)),
            };
            let mut group = std::mem::take(&mut self.group);
            self.shared.release(group.len());
            for entry in group.drain(..) {
                let result = match &outcome {
                    Ok(()) => Ok(entry.sequence),
                    Err(reason) => Err(WalError::Failed {
                        reason: reason.clone(),
                    }),
                };
                (entry.on_durable)(result);
            }
            self.group = group;
        }
    }

    /// The next entry, sleeping on the bell (not in the channel's own receive, which yields the
    /// core before it sleeps: see `crate::bell`); `None` once closed and drained.
    fn receive(&mut self) -> Option<Entry> {
        loop {
            match self.receiver.try_recv() {
                Ok(entry) => return Some(entry),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.shared.bell.wait(&self.receiver, None),
            }
        }
    }

    /// Takes `first` and whatever else is queued, within the group bounds.
    fn collect(&mut self, first: Entry) {
        let mut size_bytes = first.payload.len();
        self.group.push(first);
        while self.group.len() < self.options.group_records_max {
            let Ok(entry) = self.receiver.try_recv() else {
                break;
            };
            size_bytes = size_bytes.saturating_add(entry.payload.len());
            if size_bytes > self.options.group_size_max_bytes {
                self.carry = Some(entry);
                break;
            }
            self.group.push(entry);
        }
    }

    /// Writes the group and syncs it. An error is fatal: after a failed write or fdatasync the
    /// file's state is unknown (Linux may drop the dirty pages and report success next time),
    /// so nothing is retried and nothing more is acknowledged.
    fn write_group(&mut self) -> Result<(), String> {
        self.buf.clear();
        // A growing segment (no spare was ready when it began) gives way to the spare as soon
        // as it is.
        if !self.segment.prepared && self.segment.records > 0 && self.spare_ready() {
            self.rotate()?;
        }
        for i in 0..self.group.len() {
            let sequence = self.group[i].sequence;
            let len = self.group[i].payload.len();
            assert_eq!(
                sequence, self.next_sequence,
                "records reach the writer in sequence order"
            );
            debug_assert!(len <= self.options.record_size_max_bytes as usize);
            let record_bytes = (RECORD_HEADER_LEN + len) as u64;
            if self.segment.records > 0
                && self.segment.len_bytes + record_bytes > self.options.segment_size_max_bytes
            {
                self.rotate()?;
            }
            encode_record(
                &mut self.buf,
                self.segment.number,
                sequence,
                &self.group[i].payload,
            );
            self.segment.len_bytes += record_bytes;
            self.segment.records += 1;
            self.next_sequence += 1;
        }
        self.flush()?;
        if self.options.durability == Durability::Fsync {
            self.sync_data()?;
        }
        Ok(())
    }

    /// Makes the current segment durable and starts the next one. This syncs even with
    /// `Durability::None`: recovery relies on every segment but the last being whole (only the
    /// last may have a torn tail), and one sync per segment costs a benchmark nothing.
    fn rotate(&mut self) -> Result<(), String> {
        self.flush()?;
        self.sync_data()?;
        self.seal()?;
        let number = self
            .segment
            .number
            .checked_add(1)
            .ok_or_else(|| "WAL segment numbers exhausted".to_owned())?;
        let spare = match self.spare_ready() {
            true => match std::mem::replace(&mut self.spare, Spare::Absent) {
                Spare::Ready(file) => Some(file),
                _ => None,
            },
            false => None,
        };
        let next = Segment::begin(&*self.storage, spare, number, self.next_sequence);
        self.segment = next.map_err(|e| {
            let what = io_failure(&e.source, "failed");
            format!("WAL segment {e} ({what})")
        })?;
        self.prepare_spare();
        Ok(())
    }

    /// Cuts a prepared segment, whose records are durable, to its length, durably: every
    /// segment but the last must end with its last record.
    fn seal(&mut self) -> Result<(), String> {
        if !self.segment.prepared {
            return Ok(());
        }
        let name = &self.segment.name;
        let failed = |e: io::Error, action: &str| {
            let what = io_failure(&e, "failed");
            format!("WAL segment {name}: {action} {what}: {e}")
        };
        self.storage
            .truncate(name, self.segment.len_bytes)
            .map_err(|e| failed(e, "cutting to length"))?;
        self.storage
            .sync(name)
            .map_err(|e| failed(e, "fdatasync after cutting"))?;
        self.segment.prepared = false;
        Ok(())
    }

    /// Starts filling the spare, if segments are prepared and there is none under way or ready.
    fn prepare_spare(&mut self) {
        if !self.options.prepare_segments || !matches!(self.spare, Spare::Absent) {
            return;
        }
        let storage = Arc::clone(&self.storage);
        let len_bytes = self.options.segment_size_max_bytes;
        let rate = self.options.prepare_bytes_per_second;
        let stop = Arc::clone(&self.stop_preparing);
        // If no thread can be started, segments just grow; the next rotation tries again.
        let spawned = std::thread::Builder::new()
            .name("wal-prepare".to_owned())
            .spawn(move || prepare(&*storage, len_bytes, rate, &stop));
        if let Ok(handle) = spawned {
            self.spare = Spare::Filling(handle);
        }
    }

    /// Whether the spare is ready, collecting the helper's outcome once it has finished: a
    /// failed filling (a full disk, say) leaves no spare.
    fn spare_ready(&mut self) -> bool {
        if matches!(&self.spare, Spare::Filling(handle) if handle.is_finished())
            && let Spare::Filling(handle) = std::mem::replace(&mut self.spare, Spare::Absent)
            && let Ok(Ok(file)) = handle.join()
        {
            self.spare = Spare::Ready(file);
        }
        matches!(self.spare, Spare::Ready(_))
    }

    /// At close, with everything answered: cuts the last segment to its length, so that a
    /// clean restart finds no unwritten tail, and removes the spare (stopping its helper).
    fn finish(mut self) {
        self.stop_preparing.store(true, Ordering::Relaxed);
        if self.shared.failure.get().is_some() {
            return;
        }
        let result = self.seal().and_then(|()| {
            match std::mem::replace(&mut self.spare, Spare::Absent) {
                Spare::Absent => return Ok(()),
                // Its own outcome does not matter: the file goes either way.
                Spare::Filling(handle) => drop(handle.join()),
                Spare::Ready(file) => drop(file),
            }
            remove_spare(&*self.storage)
                .and_then(|()| self.storage.sync_dir())
                .map_err(|e| format!("WAL spare segment {SPARE_SEGMENT_NAME}: remove failed: {e}"))
        });
        if let Err(reason) = result {
            self.shared.fail(reason);
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.segment.file.append(&self.buf);
        self.buf.clear();
        result.map_err(|e| {
            let what = io_failure(&e, "write failed");
            format!("WAL segment {}: {what}: {e}", self.segment.name)
        })
    }

    fn sync_data(&mut self) -> Result<(), String> {
        self.segment.file.sync_data().map_err(|e| {
            let what = io_failure(&e, "fdatasync failed");
            format!("WAL segment {}: {what}: {e}", self.segment.name)
        })
    }
}
