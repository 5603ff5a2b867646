//! Loading and attaching the kernel programs.

pub mod format;
