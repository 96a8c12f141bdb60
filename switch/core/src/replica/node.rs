//! One replica: the switch's core behind a Raft node (`raft::RawNode`), with no threads, sockets
//! or clock of its own. The caller feeds it client batches, peer messages, ticks and what the
//! journal made durable, and carries out what `poll` asks: messages to send, records to write.
//!
//! The leader applies a batch to its core at once (speculatively), proposes the batch's journal
//! record as one Raft entry, and its answers wait until that entry is committed. Followers apply
//! entries once committed, with the same replay code as recovery. A leader that loses its
//! leadership with applied entries not yet committed rebuilds its core from the newest snapshot
//! and the committed log: nothing uncommitted survives it.
//!
//! A follower's critical path is the leader's append, its own fdatasync, its answer. So a write
//! carries the messages that wait for it (`Write::messages`: the caller sends them as soon as
//! the write is durable, without coming back here), and the entries committed meanwhile are
//! applied by `apply` after the caller has handed the writes over, beside the fdatasync rather
//! than ahead of it.

use std::collections::VecDeque;

use ledger::Timestamp;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType, HardState, Message, SnapshotMetadata};
use raft::{RawNode, StateRole};

use super::log::LogStore;
use super::record;
use crate::core::{Core, Item, Prepared, Response};
use crate::journal::SwitchRecord;

/// How a replica takes part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: u64,
    /// Every member's id (this one's included), for a cluster that starts empty.
    pub voters: Vec<u64>,
    /// Ticks without a leader's word before an election (randomised up to twice this).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Bytes of entries one append message carries at most (one entry always fits).
    pub message_bytes_max: u64,
    /// Append messages in flight to one follower at most.
    pub messages_in_flight_max: usize,
    /// Seeds the election timeouts (a simulation makes them reproducible).
    pub seed: u64,
    /// The log's largest record: a write's entries are split into records no larger (an entry
    /// too large for that goes alone; the log's limit allows for it).
    pub record_bytes_max: usize,
}

/// What a replica waits for from the disk: rare, small, and needed before it goes on.
pub trait Disk {
    /// Makes the term and vote durable before returning.
    fn save_hard_state(&mut self, hard_state: &HardState) -> Result<(), String>;
    /// Takes the snapshot at `index` received from the leader (kept aside, whole and synced,
    /// by the link) as the newest snapshot, durably, and returns the state it holds.
    fn install_snapshot(&mut self, index: u64) -> Result<Core, String>;
    /// The newest snapshot kept, the log's compaction point (or the state the log starts from,
    /// at index 0).
    fn load_base(&mut self) -> Result<(Core, u64), String>;
}

/// Journal records to write in order. Once all are durable: send `messages`, then
/// `Node::persisted(ticket)`.
#[derive(Debug)]
pub struct Write {
    pub ticket: u64,
    /// A snapshot installed at this index: the first record says so.
    pub reset: Option<u64>,
    /// The index of the first entry among `records` (after the reset, if any); the entries
    /// follow one another.
    pub first_index: u64,
    pub records: Vec<Vec<u8>>,
    /// For a sole replica: the entries written are committed as soon as they are durable (no
    /// other vote is needed), so answers may leave then without waiting for `poll`.
    pub commits: Option<u64>,
    /// Messages that may leave once these records (and every earlier write) are durable, and
    /// not before: a follower's answers to the leader's appends. Sent by whoever learns of the
    /// durability first; `poll` does not hand them out again.
    pub messages: Vec<Message>,
}

/// This replica's place in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub term: u64,
    pub leader: Option<u64>,
    pub is_leader: bool,
}

/// What `poll` asks the caller to do.
#[derive(Debug, Default)]
pub struct Output {
    /// To send now.
    pub messages: Vec<Message>,
    pub writes: Vec<Write>,
    /// Every entry up to here is committed.
    pub committed: u64,
    /// Reads up to this number are confirmed (see `Proposed::read`).
    pub reads_confirmed: u64,
    /// The leadership was lost: answers still waiting may never be committed.
    pub deposed: bool,
    /// Set when the role changed.
    pub role: Option<Role>,
}

/// A batch the leader executed: its answers leave once entry `after` is committed, and, for a
/// batch that logged nothing (its answers read the state), once read `read` is confirmed, which
/// proves that no newer leader existed when they were computed.
#[derive(Debug)]
pub struct Proposed {
    pub responses: Vec<Response>,
    pub after: u64,
    pub read: Option<u64>,
}

/// Why a replica does not take a batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not the leader")]
    NotLeader { leader: Option<u64> },
    /// The leader has not yet committed an entry of its term, or applied its log.
    #[error("the leader is not ready yet")]
    NotReady,
    #[error("replica failed: {0}")]
    Failed(String),
}

pub struct Node {
    id: u64,
    raw: RawNode<LogStore>,
    core: Core,
    disk: Box<dyn Disk + Send>,
    /// The last entry applied to the core: on a leader, possibly past `committed`.
    applied: u64,
    committed: u64,
    role: Role,
    /// The first entry of this leader's term: it serves once that is committed.
    term_start: u64,
    single: bool,
    /// Writes handed out, and the last one durable.
    next_ticket: u64,
    durable_ticket: u64,
    /// Readies in order, each with the write it waits for.
    unpersisted: VecDeque<(u64, u64)>,
    /// Messages to send once their ready is persisted, by ready number (those of a ready that
    /// wrote nothing: the others go with their write).
    held: VecDeque<(u64, Vec<Message>)>,
    /// Committed entries Raft handed out that `apply` has yet to apply (normal entries only,
    /// from readies with no snapshot and no change of role).
    unapplied: Vec<Entry>,
    saved: (u64, u64),
    next_read: u64,
    read_wanted: Option<u64>,
    reads_confirmed: u64,
    rng: u64,
    election_ticks: usize,
    record_bytes_max: usize,
    failed: Option<String>,
    rebuilds: u64,
    installs: u64,
    /// The last membership change applied to Raft (changes are applied when committed, never
    /// ahead like the leader's batches).
    conf_applied: u64,
    /// A snapshot installed by this ready number, whose index Raft counts as applied once
    /// the ready is persisted.
    installed: Option<(u64, u64)>,
}

/// Applies a committed (or, on the leader, proposed) entry to the core: the same replay as
/// recovery. Membership changes and the leaders' empty entries change nothing in the core.
pub fn apply_entry(core: &mut Core, entry: &Entry) -> Result<(), String> {
    if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
        return Ok(());
    }
    crate::journal::replay(core, &entry.data).map_err(|e| format!("entry {}: {e}", entry.index))
}

impl Node {
    /// A replica whose core holds the state at `base` (a snapshot's metadata, or index 0) and
    /// whose journal after it rebuilt `entries`, of which those up to `applied` are applied
    /// to `core` already; `commit` is the highest commit index the journal recorded.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &NodeConfig,
        core: Core,
        disk: Box<dyn Disk + Send>,
        base: SnapshotMetadata,
        entries: &[Entry],
        hard_state: HardState,
        commit: u64,
        applied: u64,
        logger: &slog::Logger,
    ) -> Result<Node, String> {
        let mut base = base;
        if base.get_conf_state().voters.is_empty() {
            base.mut_conf_state().voters = config.voters.clone();
        }
        let single = base.get_conf_state().voters == [config.id];
        let mut hard_state = hard_state;
        let last = base.index + entries.len() as u64;
        hard_state.commit = commit.min(last).max(base.index);
        assert!(
            applied <= hard_state.commit,
            "applied {applied} past the commit index {}",
            hard_state.commit
        );
        let saved = (hard_state.term, hard_state.vote);
        let mut store = LogStore::new(base, hard_state);
        store.append(entries);
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: config.message_bytes_max,
            max_inflight_msgs: config.messages_in_flight_max,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            max_uncommitted_size: raft::NO_LIMIT,
            ..raft::Config::default()
        };
        raft_config.validate().map_err(|e| e.to_string())?;
        let raw = RawNode::new(&raft_config, store, logger).map_err(|e| e.to_string())?;
        let committed = raw.raft.raft_log.committed;
        let mut node = Node {
            id: config.id,
            raw,
            core,
            disk,
            applied,
            committed,
            role: Role {
                term: saved.0,
                leader: None,
                is_leader: false,
            },
            term_start: u64::MAX,
            single,
            next_ticket: 1,
            durable_ticket: 0,
            unpersisted: VecDeque::new(),
            held: VecDeque::new(),
            unapplied: Vec::new(),
            saved,
            next_read: 1,
            read_wanted: None,
            reads_confirmed: 0,
            rng: config.seed ^ config.id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            election_ticks: config.election_ticks,
            record_bytes_max: config.record_bytes_max,
            failed: None,
            rebuilds: 0,
            installs: 0,
            conf_applied: 0,
            installed: None,
        };
        // Membership changes the journal holds as applied: Raft's membership starts at the
        // snapshot's, and must be told of them again.
        for e in entries.iter().take_while(|e| e.index <= applied) {
            if e.get_entry_type() != EntryType::EntryNormal {
                node.apply_conf_change(e)?;
            }
        }
        node.conf_applied = applied;
        node.randomize_election_timeout();
        // Entries the journal holds as committed but the core has not seen (a commit index
        // written after they were read in) are applied by the first ready.
        if single {
            // A sole replica need not wait for an election timeout.
            node.raw.campaign().map_err(|e| e.to_string())?;
        }
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// How often leadership was lost with uncommitted entries applied (see `rebuild`).
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// How many snapshots this replica took from the leader.
    pub fn installs(&self) -> u64 {
        self.installs
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn store(&self) -> &LogStore {
        self.raw.store()
    }

    /// The raft status, for `switch cluster status` and metrics.
    pub fn status(&self) -> raft::Status<'_> {
        self.raw.status()
    }

    /// Whether this replica takes client batches now.
    pub fn serving(&self) -> Result<(), Refused> {
        if let Some(e) = &self.failed {
            return Err(Refused::Failed(e.clone()));
        }
        if !self.role.is_leader {
            return Err(Refused::NotLeader {
                leader: self.role.leader,
            });
        }
        if self.committed < self.term_start || self.applied != self.last_index() {
            return Err(Refused::NotReady);
        }
        Ok(())
    }

    /// Executes a batch on the leader and proposes what it logged.
    pub fn execute(&mut self, items: Vec<Prepared>, now: Timestamp) -> Result<Proposed, Refused> {
        self.serving()?;
        let executed = self.core.execute_prepared(items, now);
        if executed.logged.is_empty() {
            return Ok(self.read_only(executed.responses));
        }
        let mut payload = Vec::with_capacity(64 * executed.logged.len());
        SwitchRecord::encode_batch(now, &executed.logged, &mut payload);
        let after = self.propose(payload)?;
        Ok(Proposed {
            responses: executed.responses,
            after,
            read: None,
        })
    }

    /// The leader's own items (a scheduled close): executed like a client's.
    pub fn execute_items(&mut self, items: Vec<Item>, now: Timestamp) -> Result<Proposed, Refused> {
        self.execute(items.into_iter().map(Prepared::new).collect(), now)
    }

    /// Expires due holds on the leader, at most `at_most` of them; returns how many and the
    /// entry that logs it, if any expired.
    pub fn expire(
        &mut self,
        now: Timestamp,
        at_most: Option<u32>,
    ) -> Result<Option<(usize, u64)>, Refused> {
        self.serving()?;
        let expired = self.core.expire_holds(now, at_most);
        if expired == 0 {
            return Ok(None);
        }
        let mut payload = Vec::with_capacity(13);
        SwitchRecord::encode_expire(now, at_most, &mut payload);
        Ok(Some((expired, self.propose(payload)?)))
    }

    fn read_only(&mut self, responses: Vec<Response>) -> Proposed {
        let read = if self.single {
            None
        } else {
            let n = *self.read_wanted.get_or_insert_with(|| {
                let n = self.next_read;
                self.next_read += 1;
                n
            });
            Some(n)
        };
        Proposed {
            responses,
            after: self.last_index(),
            read,
        }
    }

    /// Proposes an entry the core has applied already. Past `serving`, the library drops a
    /// proposal only while leadership is being transferred, which this switch never asks for:
    /// a drop would leave the core ahead of the log, so the replica stops.
    fn propose(&mut self, payload: Vec<u8>) -> Result<u64, Refused> {
        if let Err(e) = self.raw.propose(Vec::new(), payload) {
            let e = format!("a proposal was dropped after it was applied: {e}");
            self.failed = Some(e.clone());
            return Err(Refused::Failed(e));
        }
        let index = self.last_index();
        self.applied = index;
        Ok(index)
    }

    /// A message from a peer, whose sender the transport has authenticated.
    pub fn step(&mut self, mut message: Message) {
        if self.failed.is_some() {
            return;
        }
        // A leader never tells a follower to commit past what it sent it, but a replica whose
        // log was lost would be told so, and the library stops the process on it: commit what
        // is here, and no further.
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat {
            message.commit = message.commit.min(self.last_index());
        }
        let before = (self.raw.raft.term, self.raw.raft.state);
        if let Err(e) = self.raw.step(message) {
            tracing::debug!("raft message not taken: {e}");
        }
        self.after_change(before);
    }

    /// A message to `peer` could not be sent: Raft probes it again rather than assume it got
    /// there.
    pub fn report_unreachable(&mut self, peer: u64) {
        if self.failed.is_none() {
            self.raw.report_unreachable(peer);
        }
    }

    /// A snapshot sent to `peer` arrived whole (`true`) or did not.
    pub fn report_snapshot(&mut self, peer: u64, ok: bool) {
        if self.failed.is_none() {
            let status = if ok {
                raft::SnapshotStatus::Finish
            } else {
                raft::SnapshotStatus::Failure
            };
            self.raw.report_snapshot(peer, status);
        }
    }

    pub fn tick(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let before = (self.raw.raft.term, self.raw.raft.state);
        self.raw.tick();
        self.after_change(before);
    }

    /// The journal holds every write up to `ticket` durably.
    pub fn persisted(&mut self, ticket: u64) {
        self.durable_ticket = self.durable_ticket.max(ticket);
    }

    fn after_change(&mut self, before: (u64, StateRole)) {
        if before != (self.raw.raft.term, self.raw.raft.state) {
            self.randomize_election_timeout();
        }
    }

    /// The library draws election timeouts from the thread's random generator; ours is seeded,
    /// so that a simulation replays exactly.
    fn randomize_election_timeout(&mut self) {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = self.election_ticks.max(1) as u64;
        let timeout = self.election_ticks + (z % span) as usize;
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    /// Does what Raft has ready: fills `out` with messages to send and records to write (with
    /// the messages that wait for them), and notes what was committed for `apply`, which the
    /// caller calls once the writes are handed over. Call after every input.
    pub fn poll(&mut self, out: &mut Output) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.poll_inner(out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        out.committed = self.committed;
        out.reads_confirmed = self.reads_confirmed;
        result
    }

    fn poll_inner(&mut self, out: &mut Output) -> Result<(), String> {
        // What an earlier poll left for `apply`, first: every ready below starts from a core
        // that holds all that was committed before it.
        self.apply_unapplied()?;
        if let Some(n) = self.read_wanted.take() {
            self.raw.read_index(n.to_le_bytes().to_vec());
        }
        self.release_persisted(out);
        while self.raw.has_ready() {
            let before = (self.raw.raft.term, self.raw.raft.state);
            let mut rd = self.raw.ready();
            // Applying may wait for `apply` only in a ready that changes nothing else the
            // state depends on: no new role (a new leader catches up, a deposed one rebuilds),
            // no snapshot, no membership change among the entries.
            let mut defer_apply = rd.ss().is_none() && rd.snapshot().is_empty();
            if let Some(ss) = rd.ss() {
                let (leader, state) = (ss.leader_id, ss.raft_state);
                self.role_changed(leader, state, out)?;
            }
            if let Some(hs) = rd.hs() {
                if (hs.term, hs.vote) != self.saved {
                    self.disk.save_hard_state(hs)?;
                    self.saved = (hs.term, hs.vote);
                }
                self.raw.mut_store().set_hard_state(hs.clone());
            }
            out.messages.extend(rd.take_messages());
            let mut records = Vec::new();
            let mut reset = None;
            if !rd.snapshot().is_empty() {
                let meta = rd.snapshot().get_metadata().clone();
                self.install(&meta)?;
                self.installed = Some((rd.number(), meta.index));
                let mut r = Vec::with_capacity(17);
                record::encode_reset(meta.index, meta.term, &mut r);
                records.push(r);
                reset = Some(meta.index);
            }
            let entries = rd.take_entries();
            let first_index = entries.first().map_or(0, |e| e.index);
            if !entries.is_empty() {
                let commit = self.raw.raft.raft_log.committed;
                for run in record::runs(&entries, self.record_bytes_max) {
                    let mut r = Vec::new();
                    record::encode_entries(run, commit, &mut r);
                    records.push(r);
                }
                self.raw.mut_store().append(&entries);
            }
            // A ready that writes nothing holds its messages until the last write is durable;
            // the others' go with their write.
            let persisted_messages = rd.take_persisted_messages();
            let (needs, held) = if records.is_empty() {
                (self.next_ticket - 1, persisted_messages)
            } else {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                let commits = (self.single && self.role.is_leader)
                    .then(|| entries.last().map(|e| e.index))
                    .flatten();
                out.writes.push(Write {
                    ticket,
                    reset,
                    first_index,
                    records,
                    commits,
                    messages: persisted_messages,
                });
                (ticket, Vec::new())
            };
            let committed = rd.take_committed_entries();
            defer_apply &= committed
                .iter()
                .all(|e| e.get_entry_type() == EntryType::EntryNormal);
            let applied_through = if defer_apply {
                self.unapplied.extend(committed);
                None
            } else {
                let mut entries = std::mem::take(&mut self.unapplied);
                entries.extend(committed);
                self.apply_committed(&entries)?
            };
            for rs in rd.take_read_states() {
                if let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) {
                    self.reads_confirmed = self.reads_confirmed.max(u64::from_le_bytes(bytes));
                }
            }
            self.unpersisted.push_back((rd.number(), needs));
            if !held.is_empty() {
                self.held.push_back((rd.number(), held));
            }
            self.raw.advance_append_async(rd);
            // Only now, with the ready handed back: telling Raft what is applied may append
            // (the entry that leaves a joint membership).
            if let Some(index) = applied_through {
                self.advance_applied(index);
            }
            self.after_change(before);
            self.release_persisted(out);
        }
        self.committed = self.committed.max(self.raw.raft.raft_log.committed);
        Ok(())
    }

    /// Applies the committed entries the last `poll` left: call once its writes are handed
    /// over (they need not be durable). `poll` applies them first if this was not called.
    pub fn apply(&mut self) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.apply_unapplied();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn apply_unapplied(&mut self) -> Result<(), String> {
        if self.unapplied.is_empty() {
            return Ok(());
        }
        let mut entries = std::mem::take(&mut self.unapplied);
        let last = self.apply_committed(&entries)?;
        entries.clear();
        self.unapplied = entries;
        if let Some(index) = last {
            self.advance_applied(index);
        }
        Ok(())
    }

    /// Tells Raft the entries through `index` are applied (never backwards: an installed
    /// snapshot may have moved Raft's applied index past entries applied late).
    fn advance_applied(&mut self, index: u64) {
        if index > self.raw.raft.raft_log.applied {
            self.raw.advance_apply_to(index);
        }
    }

    /// Tells Raft which readies the journal has made durable, and sends what waited for them.
    fn release_persisted(&mut self, out: &mut Output) {
        let mut last = None;
        while let Some(&(number, needs)) = self.unpersisted.front() {
            if needs > self.durable_ticket {
                break;
            }
            self.unpersisted.pop_front();
            last = Some(number);
        }
        let Some(number) = last else {
            return;
        };
        self.raw.on_persist_ready(number);
        if let Some((ready, index)) = self.installed
            && ready <= number
        {
            // Raft leaves its applied index where it was; the state is the snapshot's now.
            self.installed = None;
            self.advance_applied(index);
        }
        while self.held.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, messages)) = self.held.pop_front() {
                out.messages.extend(messages);
            }
        }
    }

    fn role_changed(
        &mut self,
        leader: u64,
        state: StateRole,
        out: &mut Output,
    ) -> Result<(), String> {
        let was_leader = self.role.is_leader;
        let is_leader = state == StateRole::Leader;
        self.role = Role {
            term: self.raw.raft.term,
            leader: (leader != raft::INVALID_ID).then_some(leader),
            is_leader,
        };
        out.role = Some(self.role);
        if was_leader && !is_leader {
            out.deposed = true;
            self.read_wanted = None;
            self.term_start = u64::MAX;
            // What this leader applied past what it saw committed is its own speculation.
            // Not against Raft's commit index now: the message that deposed it may have
            // replaced those entries and committed the new leader's at the same indexes.
            if self.applied > self.committed {
                self.rebuild()?;
            }
        }
        if is_leader && !was_leader {
            // The no-op entry of the new term: served once it is committed.
            self.term_start = self.last_index();
            self.catch_up()?;
        }
        Ok(())
    }

    /// A new leader applies every entry of its log now: it will commit them all, and the
    /// batches it executes next read the state they leave.
    fn catch_up(&mut self) -> Result<(), String> {
        self.apply_through(self.last_index())
    }

    /// Applies the log's entries after `applied`, through `through`.
    fn apply_through(&mut self, through: u64) -> Result<(), String> {
        while self.applied < through {
            let from = self.applied + 1;
            let entries = self
                .raw
                .raft
                .raft_log
                .entries(from, 64 << 20, raft::GetEntriesContext::empty(false))
                .map_err(|e| format!("reading entries from {from}: {e}"))?;
            if entries.is_empty() {
                return Err(format!("no entry at {from}"));
            }
            for e in entries.iter().take_while(|e| e.index <= through) {
                apply_entry(&mut self.core, e)?;
                self.applied = e.index;
            }
        }
        Ok(())
    }

    /// Drops everything applied but not committed: the newest snapshot, then the committed
    /// log after it.
    fn rebuild(&mut self) -> Result<(), String> {
        let committed = self.committed.max(self.raw.raft.raft_log.committed);
        let (core, base) = self.disk.load_base()?;
        tracing::warn!(
            applied = self.applied,
            committed,
            base,
            "leadership lost with entries applied but not committed: rebuilding the state \
             from the newest snapshot and the committed log"
        );
        self.core = core;
        self.applied = base;
        self.rebuilds += 1;
        self.apply_through(committed)
            .map_err(|e| format!("rebuilding: {e}"))
    }

    fn install(&mut self, meta: &SnapshotMetadata) -> Result<(), String> {
        let core = self.disk.install_snapshot(meta.index)?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed the leader's snapshot"
        );
        self.core = core;
        self.installs += 1;
        self.applied = meta.index;
        self.conf_applied = meta.index;
        self.committed = self.committed.max(meta.index);
        self.raw.mut_store().reset(meta.clone());
        Ok(())
    }

    /// Applies committed entries; returns the last one's index, to tell Raft once the ready
    /// is handed back.
    fn apply_committed(&mut self, entries: &[Entry]) -> Result<Option<u64>, String> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(None);
        };
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.index > self.applied => apply_entry(&mut self.core, e)?,
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if e.index > self.conf_applied {
                        self.apply_conf_change(e)?;
                        self.conf_applied = e.index;
                    }
                }
            }
            self.applied = self.applied.max(e.index);
        }
        self.committed = self.committed.max(last);
        Ok(Some(last))
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), String> {
        use protobuf::Message as _;
        let bad =
            |err: &dyn std::fmt::Display| format!("entry {}: membership change: {err}", e.index);
        let cs = if e.get_entry_type() == EntryType::EntryConfChange {
            let mut cc = raft::eraftpb::ConfChange::default();
            cc.merge_from_bytes(&e.data).map_err(|err| bad(&err))?;
            self.raw.apply_conf_change(&cc)
        } else {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&e.data).map_err(|err| bad(&err))?;
            self.raw.apply_conf_change(&cc)
        }
        .map_err(|err| bad(&err))?;
        self.single = cs.voters == [self.id] && cs.voters_outgoing.is_empty();
        tracing::info!(
            index = e.index,
            voters = ?cs.voters,
            outgoing = ?cs.voters_outgoing,
            "membership changed"
        );
        self.raw.mut_store().set_conf_state(e.index, cs);
        Ok(())
    }

    /// Proposes replacing member `remove` by `add` (either may be absent), through a joint
    /// configuration that Raft leaves on its own once the change is committed: the cluster
    /// never depends on a majority of the old members alone nor of the new ones alone.
    /// Returns the change's index. One change at a time: the library refuses another while one
    /// is pending (it is proposed as an empty entry then), so the caller checks the membership
    /// after the change commits.
    pub fn propose_membership(
        &mut self,
        remove: Option<u64>,
        add: Option<u64>,
    ) -> Result<u64, Refused> {
        use raft::eraftpb::{ConfChangeSingle, ConfChangeType};
        self.serving()?;
        let mut cc = ConfChangeV2::default();
        let mut change = |node_id, ty| {
            let mut single = ConfChangeSingle {
                node_id,
                ..ConfChangeSingle::default()
            };
            single.set_change_type(ty);
            cc.mut_changes().push(single);
        };
        if let Some(id) = add {
            change(id, ConfChangeType::AddNode);
        }
        if let Some(id) = remove {
            change(id, ConfChangeType::RemoveNode);
        }
        if cc.changes.is_empty() {
            return Err(Refused::Failed("a membership change of nothing".into()));
        }
        self.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| Refused::Failed(format!("proposing a membership change: {e}")))?;
        let index = self.last_index();
        // Not applied ahead: the change takes effect when committed (`apply_committed`).
        self.applied = index;
        Ok(index)
    }

    /// The voters now (incoming and, during a change, outgoing).
    pub fn voters(&self) -> (Vec<u64>, Vec<u64>) {
        let cs = self.store().conf_state();
        (cs.voters.clone(), cs.voters_outgoing.clone())
    }

    /// The newest entry a snapshot may cover now: committed, applied here, and handed out by
    /// Raft (which still reads entries after its own applied index).
    pub fn snapshot_index_max(&self) -> u64 {
        self.applied
            .min(self.committed)
            .min(self.raw.raft.raft_log.applied)
    }

    /// A follower waits for a snapshot newer than the newest one (a member added since it, or
    /// one further behind than it covers): the caller makes one when it can, whatever its
    /// cadence.
    pub fn snapshot_wanted(&self) -> bool {
        self.store().snapshot_wanted()
    }

    /// A snapshot at `index` (with `term`) is durable: the log before it goes.
    pub fn compacted(&mut self, index: u64, term: u64) {
        if index > self.store().base().index && index <= self.snapshot_index_max() {
            self.raw.mut_store().compact(index, term);
        }
    }
}
