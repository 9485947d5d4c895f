//! The log line and its parts against `tracing-subscriber`'s own, byte for byte.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// Collects what a subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("outer \"failure\"\u{1b}[31m")]
struct Outer(#[source] Inner);

#[derive(Debug, thiserror::Error)]
#[error("inner cause\nwith a newline")]
struct Inner;

#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug")]
struct Shape {
    name: &'static str,
}

/// Every kind of field the daemon and its libraries log, with values that need escaping.
fn events() {
    let span = tracing::info_span!("refresh", account = "team \"a\"", attempt = 2u32);
    let _entered = span.enter();
    tracing::info!(client = "job", uid = 1000u32, pid = 4242u32, account = %"demo", expires_in = 3599u64, "token served");
    tracing::warn!(
        text = "quote \" backslash \\ tab \t newline \n",
        "odd strings"
    );
    tracing::warn!(path = "C:\\dir", quoted = "say \"hi\"", "one of each");
    tracing::warn!(
        text = "\u{1b}[31mred\u{1b}[0m",
        unicode = "zürich ✓",
        "escapes"
    );
    tracing::error!(
        negative = -5i64,
        yes = true,
        no = false,
        ratio = 0.5f64,
        "numbers"
    );
    tracing::info!(r#type = "raw identifier", "r#");
    tracing::info!(shape = ?Shape { name: "x" }, shown = %"display \"me\"", "debug and display");
    tracing::error!(
        error = &Outer(Inner) as &(dyn std::error::Error + 'static),
        "error with a source"
    );
    tracing::error!(error = &Inner as &(dyn std::error::Error + 'static));
    tracing::info!(empty = "", "message with \u{1b} escape and \"quotes\"");
    tracing::info!(
        c1 = "\u{9b}\u{7}\u{7f}",
        "controls: bell \u{7} csi \u{9b} delete \u{7f} backspace \u{8} feed \u{c} ünïcode"
    );
    tracing::info!(message = "\u{1b}[2J as a string", shown = %"\u{9b}display");
    tracing::info!(only = "fields", n = 1u64);
    tracing::info!("{} formatted {}", "message", 42);
    tracing::info!(message = "message as a string field", after = "x");
    tracing::info!(big = u64::MAX, small = i64::MIN, wide = 1u128 << 100);
}

/// A fixed time, so that two formatters' lines can be compared.
#[derive(Clone, Copy)]
struct Fixed;

impl FormatTime for Fixed {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str("2026-11-29T07:42:58.123456Z")
    }
}

/// Events inside nested spans (one without fields), and a record from the `log` crate.
fn nested_events() {
    let _ = tracing_log::LogTracer::init();
    let outer = tracing::info_span!("sweep", tick = 7u64);
    let _outer = outer.enter();
    let quiet = tracing::debug_span!("quiet");
    let _quiet = quiet.enter();
    events();
    log::warn!(target: "sled::pagecache", "a log record {}", 1);
    drop(_quiet);
    drop(_outer);
    tracing::trace!(target: "elsewhere", level = "trace", "outside every span");
}

fn render_line(timestamps: bool, line: bool) -> String {
    let captured = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE);
    match (timestamps, line) {
        (_, true) => {
            let line = Line {
                timer: timestamps.then_some(Fixed),
                priority: false,
            };
            let subscriber = builder.fmt_fields(Fields).event_format(line).finish();
            tracing::subscriber::with_default(subscriber, nested_events);
        }
        (true, false) => {
            tracing::subscriber::with_default(builder.with_timer(Fixed).finish(), nested_events);
        }
        (false, false) => {
            tracing::subscriber::with_default(builder.without_time().finish(), nested_events);
        }
    }
    captured.text()
}

#[test]
fn lines_are_written_as_the_default_format_writes_them() {
    for timestamps in [true, false] {
        let expected = render_line(timestamps, false);
        assert_eq!(
            expected.matches("logging::format::tests: ").count(),
            16,
            "{expected}"
        );
        assert!(expected.contains(" WARN sweep{tick=7}:quiet: sled::pagecache: a log record 1\n"));
        assert!(expected.contains("TRACE elsewhere: outside every span level=\"trace\"\n"));
        assert_eq!(
            expected.starts_with("2026-11-29T07:42:58.123456Z  INFO sweep{tick=7}:quiet:refresh{"),
            timestamps,
            "{expected}"
        );
        assert_eq!(render_line(timestamps, true), expected);
    }
}

fn render(ansi: bool, fast: bool) -> String {
    let captured = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(ansi)
        .without_time()
        .with_max_level(tracing::Level::TRACE);
    if fast {
        tracing::subscriber::with_default(builder.fmt_fields(Fields).finish(), events);
    } else {
        tracing::subscriber::with_default(builder.finish(), events);
    }
    captured.text()
}

#[test]
fn fields_are_written_as_the_default_formatter_writes_them() {
    let expected = render(false, false);
    assert_eq!(
        expected.matches("logging::format::tests: ").count(),
        16,
        "{expected}"
    );
    assert!(expected.contains(r#"client="job" uid=1000 pid=4242 account=demo expires_in=3599"#));
    assert_eq!(render(false, true), expected);
}

#[test]
fn fields_are_written_as_the_default_formatter_writes_them_in_colour() {
    let expected = render(true, false);
    assert!(expected.contains('\u{1b}'), "colours are on");
    assert_eq!(render(true, true), expected);
}

#[test]
fn timestamps_are_rfc3339_with_microseconds_across_second_boundaries() {
    let base = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let times = [
        base + Duration::from_micros(123_456),
        base + Duration::from_micros(999_999),
        base + Duration::from_micros(1_000_000), // the next second: the cache moves on
        base + Duration::from_micros(1_000_007),
        base,                                            // back in time (the clock was set)
        UNIX_EPOCH + Duration::from_secs(4_102_444_800), // 2100-01-01
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(YEAR_10000 - 1),
    ];
    for time in times {
        let mut ours = String::new();
        write_cached(&mut ours, time).unwrap().unwrap();
        assert_eq!(ours, humantime::format_rfc3339_micros(time).to_string());
    }
    for outside in [
        UNIX_EPOCH - Duration::from_micros(1),
        UNIX_EPOCH + Duration::from_secs(YEAR_10000),
    ] {
        assert!(write_cached(&mut String::new(), outside).is_none());
    }
}

#[test]
fn timestamps_have_the_shape_of_the_default_timer() {
    let mut ours = String::new();
    Timestamp.format_time(&mut Writer::new(&mut ours)).unwrap();
    let mut theirs = String::new();
    tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut Writer::new(&mut theirs))
        .unwrap();
    let shape = |s: &str| {
        s.chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect::<String>()
    };
    assert_eq!(shape(&ours), "0000-00-00T00:00:00.000000Z");
    assert_eq!(shape(&ours), shape(&theirs));
}

/// The audit line of a token handed out, as `api::token` emits it, through the daemon's
/// own format: the one line every token served writes, held to its exact bytes.
#[test]
fn the_token_served_audit_line() {
    let captured = Captured::default();
    let line = Line {
        timer: Some(Fixed),
        priority: false,
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .fmt_fields(Fields)
        .event_format(line)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // As `api::token` gives it: the message a string field, first.
        tracing::info!(target: "tokenbroker::audit", message = "token served", client = "nightly", uid = Some(1000u32), pid = None::<i32>, account = %"dropbox-backup", expires_in = 3599u64);
    });
    assert_eq!(
        captured.text(),
        "2026-11-29T07:42:58.123456Z  INFO tokenbroker::audit: token served client=\"nightly\" uid=1000 account=dropbox-backup expires_in=3599\n"
    );
}
