//! The switch as a cluster of replicas: its configuration (`config`), the files a new cluster
//! starts from (`init`), the members' views (`status`), and the link between replicas
//! (`transport`).

pub mod config;
pub mod init;
pub mod status;
pub mod transport;
