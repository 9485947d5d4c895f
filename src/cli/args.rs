//! The command line's arguments, as clap parses them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_PATH;

/// tokenbroker keeps OAuth 2.0 access tokens fresh and serves them to local programs.
#[derive(Debug, Parser)]
#[command(name = "tokenbroker", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log level or filter (overrides RUST_LOG), e.g. `debug` or `tokenbroker=trace`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One flat JSON object per line, for log shippers.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Serve {
        /// Configuration file.
        #[arg(long, env = "TOKENBROKER_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Try-it-out mode: temporary store, a mock provider, an account `demo`. Secures nothing.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
    },
    /// Validate the configuration, print its effective settings (no secrets), and exit.
    CheckConfig {
        /// Configuration file.
        #[arg(long, env = "TOKENBROKER_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// List accounts: name, provider, status, expiry, last refresh, last error.
    Accounts {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only accounts in this status (active, refreshing, degraded, needs_reauth).
        #[arg(long)]
        status: Option<String>,
        /// Only accounts whose name matches this glob pattern (e.g. 'dropbox-*').
        #[arg(long)]
        name: Option<String>,
        /// At most this many accounts (default: every one, fetched a page at a time).
        #[arg(long)]
        limit: Option<usize>,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Print an account's current access token.
    Token {
        /// The account.
        name: String,
        /// Refresh first unless the token has at least this long left (e.g. 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        min_valid: Option<Duration>,
        /// Print the JSON answer (token, type, expiry, scope).
        #[arg(long)]
        json: bool,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Store a refresh token obtained elsewhere; it is refreshed at once to prove it works.
    Import {
        /// The account name to store it under.
        name: String,
        /// The configured provider that issued it.
        #[arg(long)]
        provider: String,
        /// Read the refresh token from this file.
        #[arg(long, group = "source", required = true)]
        refresh_token_file: Option<PathBuf>,
        /// Read the refresh token from standard input.
        #[arg(long, group = "source")]
        refresh_token_stdin: bool,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Connect (or reconnect) an account: approve in a browser, and the daemon keeps the grant.
    Connect {
        /// The account name.
        name: String,
        /// The configured provider.
        #[arg(long)]
        provider: String,
        /// Print the authorize URL without a redirect and read the code the provider shows.
        #[arg(long, conflicts_with = "device")]
        no_redirect: bool,
        /// Use the device flow (RFC 8628): enter a code on any device.
        #[arg(long)]
        device: bool,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Run a command with a fresh access token in its environment; exits with its status.
    Exec {
        /// The account whose token to pass.
        #[arg(long)]
        account: String,
        /// The variable to put it in (default: the account name in capitals, then `_TOKEN`).
        #[arg(long)]
        env: Option<String>,
        /// The token must have at least this long left (default: the daemon's
        /// refresh.min_valid, capped at half the token's lifetime, as for `token`).
        #[arg(long, value_parser = humantime::parse_duration)]
        min_valid: Option<Duration>,
        /// For jobs that outlive a token: keep a private token file (0600, yours) fresh for
        /// as long as the command runs, named in `BEARER_TOKEN_FILE` and `NAME_TOKEN_FILE`,
        /// and remove it when the command exits. Signals are passed on to the command.
        #[arg(long, conflicts_with = "env")]
        file: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Wait until an account holds a token a job would be given at once (exit 0), or time out
    /// (exit 1, saying why it is not ready). Also waits for a daemon that is not running yet.
    Wait {
        /// The account.
        name: String,
        /// Give up after this long (e.g. 30s, 10m).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        timeout: Duration,
        /// The token must have at least this long left (as for `token`).
        #[arg(long, value_parser = humantime::parse_duration)]
        min_valid: Option<Duration>,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Ask the daemon's /healthz or /readyz over its socket; exit 0 if it answers 200. For
    /// container health checks and Kubernetes exec probes (the API is on loopback only).
    Probe {
        /// The route to ask.
        #[arg(value_parser = ["/healthz", "/readyz"])]
        route: String,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or the page of one command (`tokenbroker man serve`).
    Man {
        /// The command whose page to print (tokenbroker-COMMAND(1), which the main page lists).
        command: Option<String>,
    },
    /// Work on a store directly, without a daemon (stop those that use a sled store first).
    Store {
        /// What to do.
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Re-seal the store under a new key (the key tokenbroker manages in store.dir).
    Rekey {
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Refresh an account's token now.
    Refresh {
        /// The account.
        name: String,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Forget an account.
    Remove {
        /// The account.
        name: String,
        /// Revoke the grant at the provider first; the account is kept if that fails.
        #[arg(long)]
        revoke: bool,
        /// How to reach the daemon.
        #[command(flatten)]
        daemon: Daemon,
    },
}

/// `tokenbroker store …`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every account from the store another configuration names into this one's
    /// (sled into PostgreSQL, or back); accounts this store already has are kept.
    Copy {
        /// The configuration whose store is read.
        #[arg(long)]
        from: PathBuf,
        /// The configuration whose store is written.
        #[arg(long, env = "TOKENBROKER_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// How a client command finds the daemon.
#[derive(Debug, Args)]
pub struct Daemon {
    /// The daemon's socket (default: from the configuration, else /run/tokenbroker/tokenbroker.sock).
    #[arg(long, env = "TOKENBROKER_SOCKET")]
    pub(super) socket: Option<PathBuf>,
    /// Configuration file to read the socket path from.
    #[arg(long, env = "TOKENBROKER_CONFIG", default_value = DEFAULT_PATH)]
    pub(super) config: PathBuf,
}
