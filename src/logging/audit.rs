//! The audit line of every token handed out, written by a layer of its own: events on the
//! audit target go straight into the log writer in a small owned format, and every other
//! event goes on to the human-format layer this one wraps.
//!
//! ```text
//! 2026-12-03T09:03:16.409656Z  INFO tokenbroker::audit: token served client="nightly" uid=1000 pid=4242 account=dropbox-backup expires_in=3599
//! ```
//!
//! The line reads as `tracing-subscriber`'s human line for the same event (so that one grep
//! finds both), but is put together without that format's general machinery, which cost the
//! daemon more than the rest of a token request's own work: no span scope (the token route
//! runs in none), no per-thread string; the line is put together in a `Vec` and copied into
//! the writer once. Strings are quoted (escaped as `{:?}` escapes them when they need it),
//! numbers written by `itoa`, `Display` and `Debug` values bare with control characters
//! escaped, so that no value can start a line of its own.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// Room for a token-served line with long names, so that it is not grown on the way.
const LINE_CAPACITY: usize = 256;

/// Writes the events of one target as audit lines into `writer`; hands every other event,
/// and every span, to `inner`.
#[derive(Debug)]
pub struct Audit<L, W> {
    target: &'static str,
    inner: L,
    writer: W,
    journald: bool,
    /// The wall clock the line's time is read from.
    now: fn() -> SystemTime,
}

impl<L, W> Audit<L, W> {
    /// Audit lines of `target`'s events, each starting with its time; the rest to `inner`.
    pub fn new(target: &'static str, inner: L, writer: W) -> Self {
        Self {
            target,
            inner,
            writer,
            journald: false,
            now: current_time,
        }
    }

    /// Audit lines for journald: no time (it stamps lines itself), and the syslog priority
    /// first, as [`super::Journald`] writes the other lines.
    #[must_use]
    pub fn for_journald(self) -> Self {
        Self {
            journald: true,
            ..self
        }
    }
}

impl<S, L, W> Layer<S> for Audit<L, W>
where
    S: Subscriber,
    L: Layer<S>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != self.target {
            return self.inner.on_event(event, ctx);
        }
        // Put together first and then written in one piece: the writer (the batch's lock,
        // in the daemon) is held for one copy, and the line's many small writes go to a
        // plain `Vec`.
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        self.write_line(&mut line, event);
        // Nowhere to report a failing log write; the daemon goes on.
        let _ = self.writer.make_writer().write_all(&line);
    }

    // Everything else is the wrapped layer's.
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx);
    }
    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx);
    }
    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx);
    }
    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }
    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }
    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }
}

impl<L, W> Audit<L, W> {
    /// `time LEVEL target: message fields`, and the newline.
    fn write_line(&self, line: &mut Vec<u8>, event: &Event<'_>) {
        let meta = event.metadata();
        if self.journald {
            line.extend_from_slice(super::priority(*meta.level()).as_bytes());
        } else {
            write_time(line, (self.now)());
            line.push(b' ');
        }
        line.extend_from_slice(super::padded_level(*meta.level()).as_bytes());
        line.extend_from_slice(meta.target().as_bytes());
        line.push(b':');
        event.record(&mut Fields(line));
        line.push(b'\n');
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "a log line's time is the wall clock's by definition"
)]
fn current_time() -> SystemTime {
    SystemTime::now()
}

/// Writes each field as ` name=value`, the message as ` value`.
struct Fields<'a>(&'a mut Vec<u8>);

impl Fields<'_> {
    /// The separator and, but for the message, `name=`; then the value, by the caller.
    fn name(&mut self, field: &Field) -> &mut Vec<u8> {
        self.0.push(b' ');
        if field.name() != "message" {
            self.0.extend_from_slice(field.name().as_bytes());
            self.0.push(b'=');
        }
        self.0
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let quoted = field.name() != "message";
        let out = self.name(field);
        if !is_plain(value) {
            // `{:?}` of a string cannot fail.
            let _ = write!(out, "{value:?}");
        } else if quoted {
            out.push(b'"');
            out.extend_from_slice(value.as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(value.as_bytes());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let out = self.name(field);
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let out = self.name(field);
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let out = self.name(field);
        out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        write_escaped(self.name(field), format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        write_escaped(self.name(field), format_args!("{value:?}"));
    }
}

/// Whether a string goes out as it is: printable ASCII, nothing `{:?}` would escape.
fn is_plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// Writes formatted text with its control characters (a newline, a terminal escape)
/// escaped as `{:?}` escapes them, the rest as it is. A value whose formatting fails keeps
/// what it wrote: the line is written all the same.
fn write_escaped(out: &mut Vec<u8>, text: fmt::Arguments<'_>) {
    struct Escaping<'a>(&'a mut Vec<u8>);
    impl fmt::Write for Escaping<'_> {
        fn write_str(&mut self, text: &str) -> fmt::Result {
            if !text.chars().any(char::is_control) {
                self.0.extend_from_slice(text.as_bytes());
                return Ok(());
            }
            for c in text.chars() {
                if c.is_control() {
                    // Writing to a `Vec` cannot fail.
                    let _ = write!(self.0, "{}", c.escape_debug());
                } else {
                    self.0
                        .extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
            Ok(())
        }
    }
    let _ = Escaping(out).write_fmt(text);
}

/// The first second after the year 9999.
const YEAR_10000: u64 = 253_402_300_800;

/// Where the microseconds start in an RFC 3339 time with microseconds.
const MICROS_AT: usize = 20;

/// The last second rendered on this thread, and its text up to the microseconds
/// (`2026-11-29T07:42:58.`).
struct SecondCache {
    second: u64,
    text: String,
}

thread_local! {
    static SECOND: RefCell<Option<SecondCache>> = const { RefCell::new(None) };
}

/// Writes `time` in RFC 3339 UTC with microseconds (`2026-11-29T07:42:58.123456Z`), as
/// `tracing_subscriber::fmt::time::SystemTime` does; the date and time of day are rendered
/// once per second on each thread, the microseconds for every line.
fn write_time(out: &mut Vec<u8>, time: SystemTime) {
    let Some(since_epoch) = time
        .duration_since(UNIX_EPOCH)
        .ok()
        .filter(|t| t.as_secs() < YEAR_10000)
    else {
        // A clock set before 1970 or after 9999: humantime cannot say, nor can we.
        return out.extend_from_slice(b"<unknown time>");
    };
    let second = since_epoch.as_secs();
    // A million more, written by `itoa`, is a 1 and then the six digits.
    let mut digits = itoa::Buffer::new();
    let micros = &digits.format(1_000_000 + since_epoch.subsec_micros())[1..];
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        let cached = match &mut *cache {
            Some(cached) if cached.second == second => cached,
            slot => {
                let mut text = String::with_capacity(32);
                let _ = write!(
                    text,
                    "{}",
                    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_secs(second))
                );
                text.truncate(MICROS_AT);
                slot.insert(SecondCache { second, text })
            }
        };
        out.extend_from_slice(cached.text.as_bytes());
        out.extend_from_slice(micros.as_bytes());
        out.push(b'Z');
    });
}

#[cfg(test)]
mod tests;
