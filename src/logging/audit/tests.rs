//! The audit line held to its bytes, and the events it leaves to the layer it wraps.

use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Collects what a layer writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
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

const TARGET: &str = "tokenbroker::audit";

fn fixed_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_764_402_178_123_456)
}

/// The audit layer over `tracing-subscriber`'s human format, both writing to their own
/// captures; `journald` as the daemon sets it up under journald.
fn logged(journald: bool, events: impl FnOnce()) -> (String, String) {
    let (audit, rest) = (Captured::default(), Captured::default());
    let human = tracing_subscriber::fmt::layer()
        .with_writer(rest.clone())
        .with_ansi(false);
    let mut layer = Audit::new(TARGET, human, audit.clone());
    layer.now = fixed_time;
    if journald {
        layer = layer.for_journald();
    }
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, events);
    (audit.text(), rest.text())
}

/// As `api::token` emits it: the message a string field, first; uid and pid options.
fn token_served(pid: Option<i32>) {
    tracing::info!(target: TARGET, message = "token served", client = "nightly", uid = Some(1000u32), pid = pid, account = %"dropbox-backup", expires_in = 3599u64);
}

#[test]
fn the_token_served_audit_line() {
    let (audit, rest) = logged(false, || {
        token_served(Some(4242));
        token_served(None);
    });
    assert_eq!(
        audit,
        "2025-11-29T07:42:58.123456Z  INFO tokenbroker::audit: token served client=\"nightly\" uid=1000 pid=4242 account=dropbox-backup expires_in=3599\n\
         2025-11-29T07:42:58.123456Z  INFO tokenbroker::audit: token served client=\"nightly\" uid=1000 account=dropbox-backup expires_in=3599\n"
    );
    assert_eq!(rest, "", "audit lines are the audit layer's alone");
}

#[test]
fn under_journald_the_line_starts_with_its_priority_and_no_time() {
    let (audit, _) = logged(true, || token_served(None));
    assert_eq!(
        audit,
        "<6> INFO tokenbroker::audit: token served client=\"nightly\" uid=1000 account=dropbox-backup expires_in=3599\n"
    );
}

#[test]
fn every_other_event_goes_to_the_wrapped_layer_with_its_span() {
    let (audit, rest) = logged(false, || {
        let span = tracing::info_span!("refresh", account = "corp");
        let _entered = span.enter();
        tracing::warn!(target: "tokenbroker::broker", attempt = 2u32, "refresh failed");
    });
    assert_eq!(audit, "");
    assert!(
        rest.ends_with(
            " WARN refresh{account=\"corp\"}: tokenbroker::broker: refresh failed attempt=2\n"
        ),
        "{rest}"
    );
}

#[test]
fn no_value_can_start_a_line_of_its_own() {
    let (audit, _) = logged(false, || {
        tracing::info!(target: TARGET, message = "token\nserved", client = "a\"b\nc", account = %"x\ny\u{1b}[31m", error = &std::io::Error::other("e\r\nf") as &(dyn std::error::Error + 'static), admin = true, delta = -3i64);
    });
    assert_eq!(
        audit,
        "2025-11-29T07:42:58.123456Z  INFO tokenbroker::audit: \"token\\nserved\" client=\"a\\\"b\\nc\" account=x\\ny\\u{1b}[31m error=e\\r\\nf admin=true delta=-3\n"
    );
}

#[test]
fn times_are_rfc3339_with_microseconds_across_second_boundaries() {
    let at = |micros: u64| {
        let mut out = Vec::new();
        write_time(&mut out, UNIX_EPOCH + Duration::from_micros(micros));
        String::from_utf8(out).unwrap()
    };
    // The same second twice (from the cache), the next, and one long before.
    assert_eq!(at(1_764_402_178_000_001), "2025-11-29T07:42:58.000001Z");
    assert_eq!(at(1_764_402_178_999_999), "2025-11-29T07:42:58.999999Z");
    assert_eq!(at(1_764_402_179_000_000), "2025-11-29T07:42:59.000000Z");
    assert_eq!(at(86_400_000_000), "1970-01-02T00:00:00.000000Z");
    let mut out = Vec::new();
    write_time(&mut out, UNIX_EPOCH - Duration::from_secs(1));
    assert_eq!(out, b"<unknown time>");
}
