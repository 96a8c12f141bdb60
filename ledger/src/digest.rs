//! A deterministic 128-bit digest of the ledger's state.
//!
//! Equal states give equal digests whatever the order of iteration, so shards and hash maps can
//! be walked in any order: each entry is hashed alone and the entry hashes are summed. This is a
//! consistency check for recovery and replication tests, not a cryptographic commitment.

use std::fmt;

/// The state digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub u128);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({:032x})", self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Hashes one entry as a sequence of words, in two independent lanes.
pub(crate) struct EntryHasher {
    a: u64,
    b: u64,
}

const fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: a bijection with good avalanche.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl EntryHasher {
    /// `tag` keeps entries of different kinds apart.
    pub(crate) fn new(tag: u64) -> Self {
        EntryHasher {
            a: mix(tag ^ 0x243f_6a88_85a3_08d3),
            b: mix(tag ^ 0x1319_8a2e_0370_7344),
        }
    }

    pub(crate) fn word(&mut self, w: u64) -> &mut Self {
        self.a = mix(self.a ^ w).rotate_left(17);
        self.b = mix(self.b.wrapping_add(w) ^ 0x9e37_79b9_7f4a_7c15);
        self
    }

    pub(crate) fn wide(&mut self, w: u128) -> &mut Self {
        self.word(w as u64).word((w >> 64) as u64)
    }

    pub(crate) fn finish(&self) -> u128 {
        (u128::from(mix(self.a)) << 64) | u128::from(mix(self.b ^ self.a))
    }
}

/// Maps an id to a shard; fixed for all time, because per-shard bounds make shard placement
/// part of the state that recovery must reproduce.
pub(crate) fn shard_of(id: u128, mask: usize) -> usize {
    (mix((id as u64) ^ mix((id >> 64) as u64)) as usize) & mask
}
