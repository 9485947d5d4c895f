//! The human log line, written as `tracing-subscriber`'s default format writes it without
//! colours, at a fraction of its cost: every token served writes a line.
//!
//! [`Line`] puts the line together (time, level, spans, target, fields) in a thread-local
//! string and hands it to the writer in one piece. [`Timestamp`] renders the date and time of
//! day once per second and only the microseconds per line. Fields (the event's, written by
//! `Line`, and spans', by [`Fields`]) are written directly: strings, numbers, booleans,
//! `Debug` and `Display` values, and the message with terminal controls escaped as
//! `tracing-subscriber` escapes them; errors, and every field when colours are on, go through
//! `tracing-subscriber`'s own visitor. The output is byte for byte what `Format<Full>`,
//! `DefaultFields` and the `SystemTime` timer write, and the tests hold it to that. With
//! colours (a terminal) the default format itself is used.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `time LEVEL span{fields}:span: target: message fields`, as `Format<Full>` writes it
/// without colours.
#[derive(Debug, Clone, Copy, Default)]
pub struct Line<T = Timestamp> {
    timer: Option<T>,
    /// Start each line with its syslog priority (`<3>` for errors), as journald reads it.
    priority: bool,
}

impl Line {
    /// Lines with a [`Timestamp`], or without one.
    pub fn new(timestamps: bool) -> Self {
        Self {
            timer: timestamps.then_some(Timestamp),
            priority: false,
        }
    }

    /// Lines for journald: no timestamp (it stamps lines itself), and each line prefixed
    /// with its syslog priority, so that `journalctl -p err` finds the errors.
    pub fn journald() -> Self {
        Self {
            timer: None,
            priority: true,
        }
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

impl<S, N, T> FormatEvent<S, N> for Line<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is put together in this thread's own string, which the compiler can write
        // to directly, and handed to `writer` (a `dyn fmt::Write`) in one piece.
        let mut line = LINE.take();
        line.clear();
        let result = self.format_into(ctx, &mut line, writer.sanitizes_ansi_escapes(), event);
        let result = result.and_then(|()| writer.write_str(&line));
        LINE.set(line);
        result
    }
}

thread_local! {
    /// The line being put together, kept between lines so that it is not allocated again.
    static LINE: Cell<String> = const { Cell::new(String::new()) };
}

impl<T: FormatTime> Line<T> {
    fn format_into<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        line: &mut String,
        sanitize: bool,
        event: &Event<'_>,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        // A record from the `log` crate (sled's) carries its real target in its fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if self.priority {
            line.push_str(priority(*meta.level()));
        }
        if let Some(timer) = &self.timer {
            if timer.format_time(&mut Writer::new(line)).is_err() {
                line.push_str("<unknown time>");
            }
            line.push(' ');
        }
        line.push_str(level(*meta.level()));
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                seen = true;
                line.push_str(span.metadata().name());
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        line.push('{');
                        line.push_str(fields);
                        line.push('}');
                    }
                }
                line.push(':');
            }
            if seen {
                line.push(' ');
            }
        }
        line.push_str(meta.target());
        line.push_str(": ");
        let mut visitor = Visitor::new(line, true, sanitize);
        event.record(&mut visitor);
        visitor.finish()?;
        line.push('\n');
        Ok(())
    }
}

/// The level as the default format pads it, and the space after it.
fn level(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    }
}

/// RFC 3339 UTC with microseconds (`2026-11-29T07:42:58.123456Z`), like
/// `tracing_subscriber::fmt::time::SystemTime`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timestamp;

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        #[allow(
            clippy::disallowed_methods,
            reason = "a log line's time is the wall clock's by definition"
        )]
        let now = SystemTime::now();
        match write_cached(w, now) {
            Some(result) => result,
            // A clock set before 1970 or after 9999: the default timer knows what to print.
            None => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

/// The first second after the year 9999.
const YEAR_10000: u64 = 253_402_300_800;

/// The last second rendered on this thread, and its text up to the microseconds.
struct SecondCache {
    second: u64,
    /// `2026-11-29T07:42:58.`
    text: String,
}

thread_local! {
    static SECOND: RefCell<Option<SecondCache>> = const { RefCell::new(None) };
}

/// Where the microseconds start in an RFC 3339 time with microseconds.
const MICROS_AT: usize = 20;

/// Writes `time`, or `None` for a time outside 1970 to 9999.
fn write_cached(w: &mut impl fmt::Write, time: SystemTime) -> Option<fmt::Result> {
    let since_epoch = time.duration_since(UNIX_EPOCH).ok()?;
    let second = since_epoch.as_secs();
    if second >= YEAR_10000 {
        return None;
    }
    // `{micros:06}` without the formatting machinery, which cost as much as the rest of the
    // timestamp: a million more, written by `itoa`, is a 1 and then the six digits.
    let mut digits = itoa::Buffer::new();
    let micros = &digits.format(1_000_000 + since_epoch.subsec_micros())[1..];
    Some(SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        let cached = match &mut *cache {
            Some(cached) if cached.second == second => cached,
            slot => {
                let mut text =
                    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_secs(second))
                        .to_string();
                text.truncate(MICROS_AT);
                slot.insert(SecondCache { second, text })
            }
        };
        w.write_str(&cached.text)?;
        w.write_str(micros)?;
        w.write_char('Z')
    }))
}

/// Formats fields as `DefaultFields` does, faster for plain strings and numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields;

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let plain = !writer.has_ansi_escapes();
        let sanitize = writer.sanitizes_ansi_escapes();
        let mut visitor = Visitor::new(&mut writer, plain, sanitize);
        fields.record(&mut visitor);
        visitor.finish()
    }
}

/// Where a visitor writes: a `Writer`, or a plain string (which it can write to directly).
trait Output: fmt::Write {
    /// A `Writer` over this output, for `tracing-subscriber`'s visitor.
    fn as_writer(&mut self) -> Writer<'_>;
}

impl Output for String {
    fn as_writer(&mut self) -> Writer<'_> {
        Writer::new(self)
    }
}

impl Output for Writer<'_> {
    fn as_writer(&mut self) -> Writer<'_> {
        self.by_ref()
    }
}

struct Visitor<'a, W: Output> {
    out: &'a mut W,
    /// No colours: the fast paths write exactly what the default visitor would.
    plain: bool,
    /// Escape terminal controls in messages, as `tracing-subscriber` does by default.
    sanitize: bool,
    is_empty: bool,
    result: fmt::Result,
}

impl<'a, W: Output> Visitor<'a, W> {
    fn new(out: &'a mut W, plain: bool, sanitize: bool) -> Self {
        Self {
            out,
            plain,
            sanitize,
            is_empty: true,
            result: Ok(()),
        }
    }

    /// Writes `name=value`, `value` written by `write_value`, after a separator if needed.
    fn write_field(&mut self, field: &Field, write_value: impl FnOnce(&mut W) -> fmt::Result) {
        let name = field.name();
        // The `log` crate's metadata, shown already as the line's target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        self.pad();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = self
            .out
            .write_str(name)
            .and_then(|()| self.out.write_char('='))
            .and_then(|()| write_value(self.out));
    }

    fn pad(&mut self) {
        if self.is_empty {
            self.is_empty = false;
        } else if let Err(error) = self.out.write_char(' ') {
            self.result = Err(error);
        }
    }

    /// Renders `field` with `tracing-subscriber`'s visitor, keeping the separator state.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut inner = DefaultVisitor::new(self.out.as_writer(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        // It writes every field but `log.` metadata.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }

    /// Writes the message: no name, terminal controls escaped if the writer asks for it.
    fn write_message(&mut self, write: impl FnOnce(&mut dyn fmt::Write) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.pad();
        self.result = if self.sanitize {
            write(&mut Sanitizing(&mut *self.out))
        } else {
            write(&mut *self.out)
        };
    }

    fn write_integer(&mut self, field: &Field, value: impl itoa::Integer) {
        self.write_field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }
}

impl<W: Output> Visit for Visitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.plain {
            return self.delegate(field, |inner| inner.record_str(field, value));
        }
        if field.name() == "message" {
            // A message given as a string (`message = "…"`, as the audit line gives it) is
            // written as the default visitor writes a formatted one: bare, controls escaped.
            return self.write_message(|w| w.write_str(value));
        }
        self.write_field(field, |w| write_str_value(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.plain {
            return self.delegate(field, |inner| inner.record_u64(field, value));
        }
        self.write_integer(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.plain {
            return self.delegate(field, |inner| inner.record_i64(field, value));
        }
        self.write_integer(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.plain {
            return self.delegate(field, |inner| inner.record_bool(field, value));
        }
        self.write_field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |inner| inner.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.plain {
            return self.delegate(field, |inner| inner.record_debug(field, value));
        }
        if field.name() != "message" {
            return self.write_field(field, |w| write!(w, "{value:?}"));
        }
        self.write_message(|w| write!(w, "{value:?}"));
    }
}

impl<W: Output> VisitOutput<fmt::Result> for Visitor<'_, W> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

/// Escapes in a message what `tracing-subscriber` escapes there: the control characters a
/// terminal acts on (a caller's input could otherwise rewrite an operator's screen).
struct Sanitizing<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Sanitizing<'_, W> {
    fn write_str(&mut self, mut text: &str) -> fmt::Result {
        // Printable ASCII is the usual message, and holds no control: one pass over its bytes.
        if text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return self.0.write_str(text);
        }
        while let Some(at) = text.find(is_terminal_control) {
            self.0.write_str(&text[..at])?;
            let control = text[at..].chars().next().unwrap_or_default();
            match control {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c1 => write!(self.0, "\\u{{{:x}}}", u32::from(c1))?,
            }
            text = &text[at + control.len_utf8()..];
        }
        self.0.write_str(text)
    }
}

fn is_terminal_control(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// A string field's value as the default visitor writes it: `{value:?}`, quicker when that
/// is the value in quotes.
fn write_str_value(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if is_plain(value) {
        w.write_char('"')?;
        w.write_str(value)?;
        w.write_char('"')
    } else {
        write!(w, "{value:?}")
    }
}

/// Whether `{:?}` of `value` is `value` in quotes: printable ASCII without `"` or `\`.
fn is_plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests;
