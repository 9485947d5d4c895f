//! Project hygiene that the compiler does not check.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source tree") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The product's source files (not the test-support fake, not test modules of their own),
/// each with its path relative to `src/` and its text.
fn product_sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .filter_map(|path| {
            let relative = path
                .strip_prefix(&src)
                .expect("under src")
                .display()
                .to_string();
            let test_only = relative.starts_with("testing/") || relative.ends_with("tests.rs");
            (!test_only).then(|| {
                let text = std::fs::read_to_string(path).expect("readable file");
                (relative, text)
            })
        })
        .collect()
}

/// A file's code without its own unit tests, which come last, after `#[cfg(test)]`.
fn without_tests(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or_default()
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 20);
    let missing: Vec<_> = files
        .iter()
        .filter(|path| {
            !std::fs::read_to_string(path)
                .expect("readable file")
                .starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! comment: {missing:?}"
    );
}

#[test]
fn no_stubs_are_left_in_the_source() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable file");
        for stub in ["todo!(", "unimplemented!("] {
            assert!(!text.contains(stub), "{} contains {stub}", path.display());
        }
    }
}

/// Global state is a design decision, not a convenience: every `static` in the source (and
/// every `thread_local!`, whose items are statics too) is on this list, with why.
const STATICS: &[(&str, &str, &str)] = &[
    (
        "main.rs",
        "ALLOCATOR",
        "the global allocator is a static by Rust's rules",
    ),
    (
        "provider/mod.rs",
        "INSTALL",
        "rustls' process-wide crypto provider, installed once",
    ),
    (
        "logging/audit.rs",
        "SECOND",
        "the per-thread cache of the current second's text",
    ),
];

#[test]
fn global_state_is_only_where_it_is_allowed() {
    let mut found = Vec::new();
    for (relative, text) in product_sources() {
        for line in text.lines() {
            let code = line.trim_start();
            let Some(rest) = code
                .strip_prefix("static ")
                .or_else(|| code.strip_prefix("pub static "))
                .or_else(|| code.strip_prefix("pub(crate) static "))
            else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((relative.clone(), name));
        }
    }
    let unlisted: Vec<_> = found
        .iter()
        .filter(|(file, name)| !STATICS.iter().any(|(f, n, _)| f == file && n == name))
        .collect();
    assert!(
        unlisted.is_empty(),
        "statics not on tidy.rs's list: {unlisted:?}"
    );
    let stale: Vec<_> = STATICS
        .iter()
        .filter(|(f, n, _)| !found.iter().any(|(file, name)| file == f && name == n))
        .collect();
    assert!(
        stale.is_empty(),
        "listed statics that no longer exist: {stale:?}"
    );
}

/// Source files, outside tests and the test-support fake, that may spawn tasks with
/// `tokio::spawn` themselves, and why. Everything else spawns on a `TaskTracker` it is
/// handed (the broker's tasks, the scheduler's guard), so that shutdown knows of it.
const SPAWNERS: &[(&str, &str)] = &[
    ("daemon/mod.rs", "the daemon owns the process's tasks"),
    (
        "api/listen.rs",
        "one task per connection and its idle watchdog",
    ),
    (
        "dev.rs",
        "the dev mode's mock provider, aborted when the dev environment drops",
    ),
];

/// Source files that may read the wall or monotonic clock directly (clippy's
/// `disallowed_methods` refuses it elsewhere; this keeps the exceptions from spreading).
const CLOCK_READERS: &[(&str, &str)] = &[
    ("clock.rs", "the system clock itself"),
    (
        "logging/audit.rs",
        "a log line's time is the wall clock's by definition",
    ),
];

/// The non-test source files containing `needle`, relative to `src/`.
fn sources_containing(needle: &str) -> Vec<String> {
    product_sources()
        .into_iter()
        .filter(|(_, text)| without_tests(text).contains(needle))
        .map(|(relative, _)| relative)
        .collect()
}

#[test]
fn only_the_daemon_and_the_listener_spawn_tasks_of_their_own() {
    for needle in ["tokio::spawn(", "tokio::task::spawn("] {
        let stray: Vec<_> = sources_containing(needle)
            .into_iter()
            .filter(|file| !SPAWNERS.iter().any(|(f, _)| f == file))
            .collect();
        assert!(
            stray.is_empty(),
            "{needle} outside tidy.rs's list: {stray:?}"
        );
    }
}

#[test]
fn only_the_clock_and_the_log_line_read_the_system_clock() {
    let stray: Vec<_> = sources_containing("clippy::disallowed_methods")
        .into_iter()
        .filter(|file| !CLOCK_READERS.iter().any(|(f, _)| f == file))
        .collect();
    assert!(
        stray.is_empty(),
        "clock reads allowed outside tidy.rs's list: {stray:?}"
    );
}

/// The API answers requests; it does not reach into how metrics are kept or how logs are
/// written. It counts through `Metrics`' own methods and logs through `tracing`.
#[test]
fn the_api_uses_neither_metrics_internals_nor_logging_internals() {
    for needle in ["prometheus_client", "crate::logging", "logging::"] {
        let stray: Vec<_> = sources_containing(needle)
            .into_iter()
            .filter(|file| file.starts_with("api/"))
            .collect();
        assert!(stray.is_empty(), "{needle} in the API: {stray:?}");
    }
}

/// One function answers `GET /v1/token/{account}` (issue #14): no other file of the API
/// parses that path, and the broker's in-memory read is called from that file alone.
#[test]
fn one_function_answers_a_token_request() {
    for needle in ["\"/v1/token/", "with_cached_token("] {
        let files: Vec<_> = sources_containing(needle)
            .into_iter()
            .filter(|file| file.starts_with("api/"))
            .collect();
        assert_eq!(files, ["api/token.rs"], "{needle}");
    }
}

/// Lines of code a source file may have (its own unit tests, after `#[cfg(test)]`, not
/// counted) before its header must say why it is one file.
const LONG_FILE: usize = 500;
/// The words a long file's `//!` header gives its reason after.
const LONG_FILE_REASON: &str = "Why it is one file:";

/// Files are split by concept (issue #14): one that grows past `LONG_FILE` lines either
/// splits or says in its header why it does not.
#[test]
fn a_long_source_file_says_why_it_is_one_file() {
    let mut unexplained = Vec::new();
    for (relative, text) in product_sources() {
        let code = without_tests(&text);
        let header: Vec<&str> = text
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .collect();
        let says_why = header.iter().any(|line| line.contains(LONG_FILE_REASON));
        let lines = code.lines().count();
        if lines > LONG_FILE && !says_why {
            unexplained.push(format!("{relative} ({lines} lines)"));
        }
    }
    assert!(
        unexplained.is_empty(),
        "over {LONG_FILE} lines with no \"{LONG_FILE_REASON}\" in the header: {unexplained:?}"
    );
}
