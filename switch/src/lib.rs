//! Switch library.
