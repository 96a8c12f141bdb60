//! A replica's snapshot: the core's snapshot payload (`core::snapshot`, which knows nothing of
//! replication) behind the Raft metadata of the entry it covers: its index and term, and the
//! membership then. The file is named by that index (`ledger::snapshot_file`), and the same
//! bytes are what a leader sends a follower that is too far behind. Layout in
//! `docs/WAL-FORMAT.md`, "Replica snapshot payload".

use protobuf::Message as _;
use raft::eraftpb::{ConfState, SnapshotMetadata};

/// First bytes of a replica snapshot payload.
pub const MAGIC: [u8; 8] = *b"SWREPLSN";
/// The layout this build writes and reads.
pub const VERSION: u32 = 1;
/// The membership is at most this long encoded (a few ids).
const CONF_STATE_BYTES_MAX: usize = 64 << 10;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotMetaError {
    #[error("replica snapshot: not one (bad magic)")]
    Magic,
    #[error("replica snapshot: layout version {0} is not supported (this build reads {VERSION})")]
    Version(u32),
    #[error("replica snapshot: {what} is cut short at offset {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("replica snapshot: membership of {0} bytes is over the limit")]
    ConfTooLong(usize),
    #[error("replica snapshot: membership does not decode: {0}")]
    Conf(String),
    #[error("replica snapshot covers entry {in_payload}, but its file says {in_file}")]
    Index { in_payload: u64, in_file: u64 },
}

/// The entry a founding replica's log starts after: its data directory begins with a snapshot
/// of the empty ledger at this index, with the founding membership. The membership is in no
/// entry, so a replica that joins later must not learn it from entries: the leader holds none
/// before this one, and sends a joining replica a snapshot first, membership and all.
pub const FOUNDING_INDEX: u64 = 1;

/// The metadata of the founding snapshot of a cluster of `voters`.
pub fn founding(voters: &[u64]) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index: FOUNDING_INDEX,
        term: 1,
        ..SnapshotMetadata::default()
    };
    meta.mut_conf_state().voters = voters.to_vec();
    meta
}

/// The payload of a snapshot of entry `meta.index`.
pub fn encode(meta: &SnapshotMetadata, core_payload: &[u8]) -> Vec<u8> {
    let conf = meta.get_conf_state().write_to_bytes().unwrap_or_default();
    let mut out = Vec::with_capacity(8 + 4 + 8 + 8 + 4 + conf.len() + core_payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&(conf.len() as u32).to_le_bytes());
    out.extend_from_slice(&conf);
    out.extend_from_slice(core_payload);
    debug_assert!(
        decode(&out, meta.index).is_ok_and(|(m, p)| m == *meta && p == core_payload),
        "a replica snapshot reads back as written"
    );
    out
}

/// The metadata and the core's payload; `file_index` is the index the file is named by.
pub fn decode(
    bytes: &[u8],
    file_index: u64,
) -> Result<(SnapshotMetadata, &[u8]), SnapshotMetaError> {
    let field = |at: usize, len: usize, what| {
        bytes
            .get(at..at + len)
            .ok_or(SnapshotMetaError::Truncated { what, at })
    };
    if field(0, 8, "magic")? != MAGIC {
        return Err(SnapshotMetaError::Magic);
    }
    let u32_at = |at, what| -> Result<u32, SnapshotMetaError> {
        Ok(u32::from_le_bytes(
            field(at, 4, what)?.try_into().unwrap_or_default(),
        ))
    };
    let u64_at = |at, what| -> Result<u64, SnapshotMetaError> {
        Ok(u64::from_le_bytes(
            field(at, 8, what)?.try_into().unwrap_or_default(),
        ))
    };
    let version = u32_at(8, "version")?;
    if version != VERSION {
        return Err(SnapshotMetaError::Version(version));
    }
    let index = u64_at(12, "index")?;
    let term = u64_at(20, "term")?;
    let conf_len = u32_at(28, "membership length")? as usize;
    if conf_len > CONF_STATE_BYTES_MAX {
        return Err(SnapshotMetaError::ConfTooLong(conf_len));
    }
    let conf = ConfState::parse_from_bytes(field(32, conf_len, "membership")?)
        .map_err(|e| SnapshotMetaError::Conf(e.to_string()))?;
    if index != file_index {
        return Err(SnapshotMetaError::Index {
            in_payload: index,
            in_file: file_index,
        });
    }
    let meta = SnapshotMetadata {
        index,
        term,
        conf_state: Some(conf).into(),
        ..SnapshotMetadata::default()
    };
    Ok((meta, &bytes[32 + conf_len..]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn metadata_round_trips_and_every_prefix_is_refused(
            index in 1u64..u64::MAX,
            term in any::<u64>(),
            voters in prop::collection::vec(1u64..10, 0..5),
            learners in prop::collection::vec(1u64..10, 0..3),
            core in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut meta = SnapshotMetadata {
                index,
                term,
                ..SnapshotMetadata::default()
            };
            meta.mut_conf_state().voters = voters;
            meta.mut_conf_state().learners = learners;
            let bytes = encode(&meta, &core);
            let (m, p) = decode(&bytes, index).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m, meta.clone());
            prop_assert_eq!(p, &core[..]);
            prop_assert!(decode(&bytes, index.wrapping_add(1)).is_err());
            let header = bytes.len() - core.len();
            for cut in 0..header {
                prop_assert!(decode(&bytes[..cut], index).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode(&bytes, 1);
        }
    }
}
