//! Switch library.

pub mod wire;
