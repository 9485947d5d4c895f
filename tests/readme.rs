//! The README's quick start, run as printed against `serve --dev`: the commands of its
//! first screen and its Python snippet, read from README.md itself so that they cannot drift.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};

use support::{Home, BINARY};

const README: &str = include_str!("../README.md");

/// The body of the fenced block of `language` that follows `marker` in the README.
fn block_after(marker: &str, language: &str) -> String {
    let from = README
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in README"));
    let fence = format!("```{language}\n");
    let start = README[from..].find(&fence).unwrap() + from + fence.len();
    let end = README[start..].find("```").unwrap() + start;
    README[start..end].to_owned()
}

/// Runs one README command line with `sh`, the way a person would, but with this build's
/// binary for `cargo run --release --` (the same program, without a second build).
fn run_line(line: &str, home: &Home) -> Output {
    run_line_with(line, home, None)
}

/// As `run_line`, with `TOKENBROKER_SOCKET` set to `socket` when given.
fn run_line_with(line: &str, home: &Home, socket: Option<&std::path::Path>) -> Output {
    let line = line.replace("cargo run --release --", BINARY);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&line)
        .env("XDG_RUNTIME_DIR", home.path("run"))
        .env_remove("TOKENBROKER_SOCKET")
        .env_remove("RUST_LOG")
        .current_dir(home.dir.path());
    if let Some(socket) = socket {
        command.env("TOKENBROKER_SOCKET", socket);
    }
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quick_start_commands_work_as_printed_against_serve_dev() {
    let home = Home::new();
    // As printed: the dev daemon on its own default socket and on 127.0.0.1:8765.
    let first_screen = block_after("# tokenbroker", "sh");
    assert!(first_screen.contains("cargo run --release -- serve --dev"));
    let daemon = home.start_dev_as_documented(&[]).await;
    let commands = block_after("While it runs", "sh");
    let lines: Vec<&str> = commands.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 4, "{commands}");
    for line in lines {
        let output = run_line(line, &home);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{line}\nstdout: {stdout}\nstderr: {stderr}\ndaemon: {}",
            daemon.logs()
        );
        if line.contains(" accounts") {
            assert!(stdout.contains("demo"), "{stdout}");
            assert!(stderr.contains("using the dev daemon's socket"), "{stderr}");
        }
        if line.contains(" exec ") {
            assert!(stdout.contains("got a token"), "{stdout}");
        }
        if line.starts_with("curl") {
            assert!(stdout.contains("\"access_token\""), "{stdout}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_snippet_gets_a_token_and_reports_an_error_without_a_traceback() {
    let home = Home::new();
    let daemon = home.start_dev(&[("TOKENBROKER__SERVER__HTTP", "")]).await;
    let snippet = block_after("From Python", "python");
    let python = |account: &str| {
        Command::new("python3")
            .arg("-c")
            .arg(&snippet)
            // What `pip install ./clients/python` makes importable.
            .env(
                "PYTHONPATH",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python"),
            )
            .env("TOKENBROKER_SOCKET", &daemon.socket)
            .env("ACCOUNT", account)
            .output()
    };
    let Ok(output) = python("demo") else {
        support::missing("python3");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("got a token"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = python("no-such-account").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no token:"), "{stderr}");
    assert!(!stderr.contains("Traceback"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fetching_examples_work_against_serve_dev_with_its_socket_and_account() {
    let home = Home::new();
    let daemon = home.start_dev(&[("TOKENBROKER__SERVER__HTTP", "")]).await;
    let socket = daemon.socket.display().to_string();
    // The job the exec line runs: it must see the token in its variable.
    let job = home.write(
        "backup.sh",
        "#!/bin/sh\ntest -n \"$DEMO_TOKEN\" && echo backed up\n",
    );
    std::fs::set_permissions(&job, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let block = block_after("## Fetching a token", "sh");
    // Lines ending in a backslash continue on the next one, as in sh.
    let joined = block.replace("\\\n", " ");
    let commands: Vec<&str> = joined
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert_eq!(commands.len(), 4, "{block}");
    for line in commands {
        let line = line
            .replace("/run/tokenbroker/tokenbroker.sock", &socket)
            .replace("dropbox-main", "demo")
            .replace("DROPBOX_MAIN_TOKEN", "DEMO_TOKEN")
            .replace("tokenbroker ", &format!("{BINARY} "));
        let output = run_line_with(&line, &home, Some(&daemon.socket));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && !stdout.trim().is_empty(),
            "{line}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if line.contains("exec") {
            assert!(stdout.contains("backed up"), "{stdout}");
        }
    }
}
