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
