//! The switch as a cluster of replicas: the link between them (`transport`).

pub mod transport;
