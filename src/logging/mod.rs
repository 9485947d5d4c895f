//! Logging: the human line format (`format`) and the batch writer the subscriber writes
//! through (`writer`). `main.rs` installs the `tracing` subscriber that uses both; nothing
//! else writes log lines.

pub mod format;
pub mod writer;
