//! `[cluster]`: who the replicas are, where they listen, and the bounds of their link. Without
//! it a switch is a cluster of one.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Ticks, messages and snapshots between replicas. Every key but `id`, `replica_listen`,
/// `cert_file`, `key_file` and `members` has a default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// This replica's id: one of `members`.
    pub id: u64,
    /// Where this replica listens for the others (QUIC, mutual TLS with member certificates).
    pub replica_listen: SocketAddr,
    /// This replica's certificate and key for the link (PEM); its SHA-256 fingerprint is its
    /// entry's `fingerprint_sha256` in every member's configuration.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// One Raft tick. An election starts after `election_ticks` without a word from a leader
    /// (randomised up to twice that); a leader sends heartbeats every `heartbeat_ticks`.
    #[serde(default = "defaults::tick_ms")]
    pub tick_ms: u32,
    #[serde(default = "defaults::election_ticks")]
    pub election_ticks: u32,
    #[serde(default = "defaults::heartbeat_ticks")]
    pub heartbeat_ticks: u32,
    /// Bytes of entries one append message carries (one entry always fits).
    #[serde(default = "defaults::message_bytes_max")]
    pub message_bytes_max: u64,
    /// Append messages in flight to one follower.
    #[serde(default = "defaults::messages_in_flight_max")]
    pub messages_in_flight_max: u32,
    /// Messages waiting to be sent to one member; past it they are dropped (Raft sends again).
    #[serde(default = "defaults::queue_messages_max")]
    pub queue_messages_max: u32,
    /// Largest snapshot accepted from a leader.
    #[serde(default = "defaults::snapshot_bytes_max")]
    pub snapshot_bytes_max: u64,
    /// This replica joins a running cluster rather than founding one: on its first start it
    /// has no membership and waits, without standing for election, until the leader adds it
    /// (`switch cluster change --add`) and sends it a snapshot. Founding members leave it
    /// false: their first start writes the founding membership (every member listed).
    #[serde(default)]
    pub join: bool,
    /// Every member, this one included.
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    /// Its `replica_listen`.
    pub replica_address: SocketAddr,
    /// Where its clients connect (its `[server] listen`): a follower names the leader's.
    pub client_address: SocketAddr,
    /// Its `/metrics` and `/cluster` address (its `[metrics] listen`), for `switch cluster
    /// status`.
    pub http_address: Option<SocketAddr>,
    /// SHA-256 of its replica certificate (hex, colons optional).
    pub fingerprint_sha256: String,
}

pub mod defaults {
    pub fn tick_ms() -> u32 {
        20
    }
    pub fn election_ticks() -> u32 {
        10
    }
    pub fn heartbeat_ticks() -> u32 {
        2
    }
    pub fn message_bytes_max() -> u64 {
        4 << 20
    }
    /// Few: the entries proposed while appends are in flight go out together in the next,
    /// so a follower wakes, writes and syncs once for many batches rather than for each.
    pub fn messages_in_flight_max() -> u32 {
        2
    }
    pub fn queue_messages_max() -> u32 {
        8192
    }
    pub fn snapshot_bytes_max() -> u64 {
        64 << 30
    }
}

impl Cluster {
    /// The members as the link talks to them (ids, replica addresses, certificates); a
    /// member whose fingerprint does not parse is left out (`check` refuses it first).
    pub fn peers(&self) -> Vec<crate::cluster::transport::Peer> {
        self.members
            .iter()
            .filter_map(|m| {
                Some(crate::cluster::transport::Peer {
                    id: m.id,
                    address: m.replica_address,
                    fingerprint: crate::tls::Fingerprint(crate::config::parse_fingerprint(
                        &m.fingerprint_sha256,
                    )?),
                })
            })
            .collect()
    }

    /// Each member's id, client address and http address.
    pub fn addresses(&self) -> Vec<crate::server::replication::MemberAddresses> {
        self.members
            .iter()
            .map(|m| (m.id, m.client_address, m.http_address))
            .collect()
    }
}

/// Members a cluster may have.
pub const MEMBERS_MAX: usize = 7;

impl Cluster {
    /// What is wrong with it, as (key, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.members.is_empty() || self.members.len() > MEMBERS_MAX {
            return Err((
                "cluster.members",
                format!("lists {} members; 1 to {MEMBERS_MAX}", self.members.len()),
            ));
        }
        let mut ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if ids.contains(&0) {
            return Err(("cluster.members.id", "0 is not a member id".into()));
        }
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(("cluster.members.id", "a member id is listed twice".into()));
        }
        if !ids.contains(&self.id) {
            return Err((
                "cluster.id",
                format!("{} is not one of the members ({ids:?})", self.id),
            ));
        }
        let mut fingerprints = Vec::new();
        for m in &self.members {
            let Some(f) = crate::config::parse_fingerprint(&m.fingerprint_sha256) else {
                return Err((
                    "cluster.members.fingerprint_sha256",
                    format!("member {}: not 32 bytes of hex", m.id),
                ));
            };
            if fingerprints.contains(&f) {
                return Err((
                    "cluster.members.fingerprint_sha256",
                    format!("member {}: the same certificate as another member", m.id),
                ));
            }
            fingerprints.push(f);
        }
        let bounded = |key, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err((
                    key,
                    format!("is {value}; it must be between {min} and {max}"),
                ))
            } else {
                Ok(())
            }
        };
        bounded("cluster.tick_ms", self.tick_ms.into(), 1, 10_000)?;
        bounded(
            "cluster.heartbeat_ticks",
            self.heartbeat_ticks.into(),
            1,
            1_000,
        )?;
        bounded(
            "cluster.election_ticks",
            self.election_ticks.into(),
            u64::from(self.heartbeat_ticks) + 1,
            10_000,
        )?;
        bounded(
            "cluster.message_bytes_max",
            self.message_bytes_max,
            1 << 10,
            1 << 30,
        )?;
        bounded(
            "cluster.messages_in_flight_max",
            self.messages_in_flight_max.into(),
            1,
            1 << 16,
        )?;
        bounded(
            "cluster.queue_messages_max",
            self.queue_messages_max.into(),
            16,
            1 << 20,
        )?;
        bounded(
            "cluster.snapshot_bytes_max",
            self.snapshot_bytes_max,
            1 << 20,
            1 << 44,
        )?;
        Ok(())
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}
