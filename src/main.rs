//! The `tokenbroker` binary: parse the command line, run the daemon or a client command,
//! and map the outcome to an exit status (0 ok, 1 failure, 2 usage, 69 no token for `exec`'s
//! command, 78 configuration).
#![allow(clippy::print_stdout, clippy::print_stderr)] // the edge of the program reports here

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokenbroker::cli::{self, Cli, Command, LogFormat};
use tokenbroker::config::{self, ConfigError, Env};
use tokenbroker::logging::{audit::Audit, writer as log_writer, Journald};
use tokenbroker::store::{self, StoreError};
use tokenbroker::{daemon, dev};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's allocator: at 100k accounts the daemon sat at 403 MB after
/// start with glibc (freed memory held in per-thread arenas and fragments) and 325 MB with
/// jemalloc, which returns unused pages to the system. It is built with one arena
/// (`.cargo/config.toml`), so that what one thread frees the others reuse
/// (`docs/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `EX_CONFIG` from sysexits.h: systemd's `RestartPreventExitStatus=78` stops restart loops.
const EX_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Env = std::env::vars().collect();
    let is_daemon = matches!(cli.command, Command::Serve { .. });
    // Held until main returns: dropping it flushes the log lines still queued.
    let _log_writer = init_logging(cli.log_format, cli.log_level.as_deref(), is_daemon, &env);
    match run(cli.command, &env).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if error.downcast_ref::<cli::StdoutClosed>().is_some() {
                // Whoever read our output has what they wanted (`| head`).
                return ExitCode::SUCCESS;
            }
            if error.downcast_ref::<cli::NoToken>().is_some() {
                eprintln!("tokenbroker exec: {error:#}");
                return ExitCode::from(cli::NoToken::EXIT_STATUS);
            }
            if let Some(config_error) = error.downcast_ref::<ConfigError>() {
                eprintln!("tokenbroker: configuration error in {config_error}");
                return ExitCode::from(EX_CONFIG);
            }
            // The store's key is the configuration's (`store.key_file`): another key is
            // the operator's to fix, and restarting will not.
            let wrong_key = error.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<StoreError>(),
                    Some(StoreError::WrongKey { .. })
                )
            });
            eprintln!("tokenbroker: {error:#}");
            if wrong_key {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command, env: &Env) -> anyhow::Result<()> {
    match command {
        exec @ Command::Exec { .. } => {
            let code = cli::exec(exec, env).await?;
            // The command's own status is ours; flush nothing else and leave now.
            std::process::exit(i32::from(code));
        }
        Command::Serve { dev: true, .. } => {
            let environment = dev::prepare(env).await?;
            eprintln!("{}", dev::banner(&environment.settings));
            tracing::warn!("running in dev mode: nothing is secured");
            let shutdown = daemon::shutdown_signal().context("while installing signal handlers")?;
            let listeners = daemon::bind(&environment.settings).await?;
            let clock = std::sync::Arc::new(tokenbroker::clock::SystemClock);
            daemon::run(
                environment.settings.clone(),
                listeners,
                clock,
                shutdown,
                None,
            )
            .await
        }
        Command::Serve { config, .. } => {
            let settings = config::load(&config, env)?;
            let env = env.clone();
            let reload: daemon::Loader = Box::new(move || config::load(&config, &env));
            let shutdown = daemon::shutdown_signal().context("while installing signal handlers")?;
            let listeners = daemon::bind(&settings).await?;
            let clock = std::sync::Arc::new(tokenbroker::clock::SystemClock);
            daemon::run(settings, listeners, clock, shutdown, Some(reload)).await
        }
        Command::CheckConfig { config } => {
            let settings = config::load(&config, env)?;
            for warning in &settings.warnings {
                eprintln!("tokenbroker: warning: {warning}");
            }
            cli::write_stdout(format!("{}\n", settings.summary()).as_bytes())
        }
        Command::Store {
            command: cli::StoreCommand::Copy { from, config },
        } => {
            let source = config::load(&from, env)?;
            let target = config::load(&config, env)?;
            let (copied, kept) = store::copy(&source.store, &target.store).await?;
            cli::write_stdout(
                format!("copied {copied} accounts; kept {kept} the target already had\n")
                    .as_bytes(),
            )
        }
        client => cli::run_client(client, env).await,
    }
}

/// Whether log lines get colours: only on a terminal, never under journald, and not when
/// `NO_COLOR` is set to anything (no-color.org).
fn colours(is_terminal: bool, under_journald: bool, no_color: bool) -> bool {
    is_terminal && !under_journald && !no_color
}

/// Logs go to stderr (stdout is for command output): human-readable, or flat JSON; no
/// colours or timestamps of our own under journald, which adds its own, and each line
/// prefixed with its syslog priority there. Lines are written by
/// a dedicated thread in batches, so serving a token never waits on a log write; none are
/// dropped (a full queue makes the logging call wait instead).
fn init_logging(
    format: LogFormat,
    level: Option<&str>,
    is_daemon: bool,
    env: &Env,
) -> log_writer::Guard {
    let default_level = if is_daemon { "info" } else { "warn" };
    let directives = level
        .map(str::to_owned)
        .or_else(|| env.get("RUST_LOG").cloned())
        .unwrap_or_else(|| default_level.to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|error| {
        eprintln!("tokenbroker: ignoring log filter {directives:?}: {error}");
        EnvFilter::new(default_level)
    });
    // tokio-cron-scheduler logs every job start at INFO.
    let filter = filter.add_directive(
        "tokio_cron_scheduler=warn"
            .parse()
            .expect("a valid directive"),
    );
    let under_journald = env.contains_key("JOURNAL_STREAM");
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = log_writer::batched(std::io::stderr());
    let no_color = env.get("NO_COLOR").is_some_and(|v| !v.is_empty());
    let human = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let subscriber = tracing_subscriber::registry().with(filter);
    let target = tokenbroker::api::AUDIT_TARGET;
    // The human format's lines, with the token-served line written by a layer of its own
    // (see `logging::audit`); JSON lines are all the JSON layer's.
    match format {
        LogFormat::Json => subscriber.with(human.json().flatten_event(true)).init(),
        LogFormat::Human if under_journald => {
            let human = human
                .with_ansi(false)
                .event_format(Journald(tracing_subscriber::fmt::format().without_time()));
            subscriber
                .with(Audit::new(target, human, writer).for_journald())
                .init();
        }
        LogFormat::Human => {
            let human = human.with_ansi(colours(is_terminal, under_journald, no_color));
            subscriber.with(Audit::new(target, human, writer)).init();
        }
    }
    guard
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_only_on_a_terminal_outside_journald_without_no_color() {
        assert!(super::colours(true, false, false));
        assert!(!super::colours(true, false, true), "NO_COLOR");
        assert!(!super::colours(true, true, false), "journald");
        assert!(!super::colours(false, false, false), "a pipe or file");
    }
}
