//! The switch as a cluster of replicas: its configuration (`config`), the files a new cluster
//! starts from (`init`), and the link between replicas (`transport`).

pub mod config;
pub mod init;
pub mod transport;
