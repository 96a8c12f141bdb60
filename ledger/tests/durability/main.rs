//! The log, the snapshot files and the storage they run on, tested together: every test here
//! crashes, tears, corrupts or fills a disk (simulated, or a real directory and a real process)
//! and checks that recovery gives back exactly what it must.

mod fixtures;
mod kill;
mod snapshots;
mod support;
mod wal_recovery;
mod wal_writer;
