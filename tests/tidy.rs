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
        "api/access.rs",
        "ADMIN",
        "the constant name of the admin caller, shared not copied",
    ),
    (
        "log_format.rs",
        "LINE",
        "a per-thread buffer the line is built in",
    ),
    (
        "log_format.rs",
        "SECOND",
        "the per-thread cache of the current second's text",
    ),
    (
        "log_writer.rs",
        "LINE",
        "a per-thread buffer the line is copied into",
    ),
    (
        "api/types.rs",
        "RECENT",
        "issue #14 item 3: to go with one rendered token shape",
    ),
];

#[test]
fn global_state_is_only_where_it_is_allowed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for path in files {
        let relative = path.strip_prefix(&src).unwrap().display().to_string();
        if relative.starts_with("testing/") || relative.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable file");
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
