//! Replication: the switch's journal is a Raft log (`raft`, the library TiKV runs on), and every
//! replica's core is the same deterministic state machine applied to it.
//!
//! - `log`: the log as Raft reads it (`raft::Storage`), in memory since the newest snapshot.
//! - `record`: the journal's records under replication, and rebuilding the log from them.
//! - `snapshot`: a snapshot's Raft metadata in front of the core's snapshot payload.
//! - `node`: one replica, sans-IO: client batches, messages, ticks and durability in; messages
//!   to send, records to write and answers released out.

pub mod log;
pub mod node;
pub mod record;
pub mod snapshot;

pub use node::{Disk, Node, NodeConfig, Output, Proposed, Refused, Role, Write};

/// The library logs through `slog`; this passes its records on to `tracing`.
pub struct TracingDrain {
    pub node: u64,
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        use slog::KV;
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let node = self.node;
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(node, "raft: {message}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(node, "raft: {message}{}", kv.0),
            slog::Level::Info => tracing::info!(node, "raft: {message}{}", kv.0),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::debug!(node, "raft: {message}{}", kv.0)
            }
        }
        Ok(())
    }
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// A logger for replica `node`'s Raft library.
pub fn logger(node: u64) -> slog::Logger {
    slog::Logger::root(slog::Drain::fuse(TracingDrain { node }), slog::o!())
}
