//! Logging: the batch writer every line goes through (`writer`), the audit layer that writes
//! the token-served line (`audit`), and the journald prefix for `tracing-subscriber`'s human
//! format. `main.rs` installs the `tracing` subscriber that uses them; nothing else writes
//! log lines.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub mod audit;
pub mod writer;

/// A line format for journald: each line starts with its syslog priority (`<3>` for errors),
/// so that `journalctl -p err` finds the errors; the rest is the wrapped format's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Journald<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The `sd-daemon(3)` prefix journald reads a line's priority from.
fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        Level::DEBUG | Level::TRACE => "<7>",
    }
}

/// The level as `tracing-subscriber`'s human format pads it, and the space after it.
fn padded_level(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    }
}
