//! tokenbroker keeps OAuth 2.0 access tokens fresh and serves them to local programs.
//!
//! # Layout
//! - values: [`secret`], [`clock`], [`token`] (pure; no I/O)
//! - adapters: [`store`] (sled, behind a trait), [`provider`] (token endpoints)
//! - core: [`broker`] (serve a token, one refresh per account at a time, persist rotation)
//! - drivers: [`scheduler`] (the sweep tick), [`api`] (HTTP on a Unix socket and loopback TCP)
//! - edges: [`config`], [`daemon`], [`dev`], [`cli`]

pub mod api;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod provider;
pub mod scheduler;
pub mod secret;
pub mod sink;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod token;
