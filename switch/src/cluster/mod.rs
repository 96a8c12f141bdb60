//! The switch as a cluster of replicas: its configuration (`config`), the files a new cluster
//! or a new member starts from (`init`), the members' views (`status`), membership changes
//! (`change`), and the link between replicas (`transport`).

pub mod change;
pub mod config;
pub mod init;
pub mod status;
pub mod transport;
