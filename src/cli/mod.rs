//! The command line: clap types (`args`), the client that talks to the daemon (`client`),
//! and what each command does (`commands`, with `exec` and `connect` apart).
//!
//! Client commands never open the store (the daemon is its one writer); they call the HTTP
//! API over the Unix socket and share its request and response types (`api::types`).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool prints

/// `println!` for command output, through `write_stdout`; returns early on failure.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())?
    };
}

mod args;
mod client;
mod commands;
mod connect;
mod exec;

pub use self::args::{Cli, Command, Daemon, LogFormat, StoreCommand};
pub use self::commands::{accounts_table, run_client, write_stdout, StdoutClosed};
pub use self::exec::{exec, NoToken};
