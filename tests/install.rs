//! docs/OPERATIONS.md's install, line by line, into a scratch root: systemd-sysusers and
//! systemd-tmpfiles with `--root`, the files installed with the modes and owners it gives,
//! then the daemon started as the service user (as the unit would) with the installed
//! configuration, and a member of the clients group getting an answer over the socket.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // bounding waits on another process takes real time
#![allow(clippy::print_stderr)] // says why the test is skipped

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::{Home, BINARY};

const OPERATIONS: &str = include_str!("../docs/OPERATIONS.md");

/// The commands of the install section's first shell block.
fn install_lines() -> Vec<&'static str> {
    let section = &OPERATIONS[OPERATIONS.find("## Install").unwrap()..];
    let start = section.find("```sh\n").unwrap() + "```sh\n".len();
    let end = section[start..].find("```").unwrap() + start;
    section[start..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// A group's id and members in the scratch root's `/etc/group`.
fn group(root: &Path, name: &str) -> (u32, Vec<String>) {
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let line = groups
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("group {name} in {groups}"));
    let fields: Vec<&str> = line.split(':').collect();
    let members = fields[3]
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    (fields[2].parse().unwrap(), members.collect())
}

fn sh(line: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "{line}");
}

/// Runs the tokenbroker binary as `uid` with `groups`, as setpriv does for a unit's `User=`.
fn as_user(uid: u32, groups: &[u32]) -> Vec<String> {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut wrapper = vec![
        "setpriv".to_owned(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
    ];
    if groups.is_empty() {
        wrapper.push("--clear-groups".into());
    } else {
        wrapper.push(format!("--groups={}", groups.join(",")));
    }
    wrapper
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_install_starts_and_serves_a_member_of_the_clients_group() {
    let tools = ["systemd-sysusers", "systemd-tmpfiles", "setpriv"];
    let have_tools = tools.iter().all(|tool| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !rustix::process::getuid().is_root() || !have_tools {
        support::missing(&format!("root, and {tools:?} (systemd, util-linux)"));
        return;
    }
    let home = Home::new();
    let root = home.dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [
        "etc",
        "usr/lib/sysusers.d",
        "usr/lib/tmpfiles.d",
        "usr/bin",
        "etc/systemd/system",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let r = root.display().to_string();
    for line in install_lines() {
        match line.split_whitespace().next().unwrap() {
            "cargo" => continue,                 // cargo test built the binary
            "systemctl" | "usermod" => continue, // the unit and the job user, emulated below
            "systemd-sysusers" => {
                sh(&format!("systemd-sysusers --root={r}"));
                sh(&format!("systemd-tmpfiles --root={r} --create"));
            }
            _ => {
                let mut line = line
                    .replace("target/release/tokenbroker", BINARY)
                    .replace(" /usr/", &format!(" {r}/usr/"))
                    .replace(" /etc/", &format!(" {r}/etc/"));
                if line.contains("-g tokenbroker") {
                    // Group names live in the scratch root's database, not the host's.
                    let (gid, _) = group(root, "tokenbroker");
                    line = line.replace("-g tokenbroker", &format!("-g {gid}"));
                }
                sh(&line);
            }
        }
    }
    let (daemon_gid, _) = group(root, "tokenbroker");
    let (clients_gid, clients) = group(root, "tokenbroker-clients");
    assert!(
        clients.contains(&"tokenbroker".to_owned()),
        "the daemon may chown its socket"
    );
    let config = root.join("etc/tokenbroker/config.toml");
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o640, daemon_gid));

    // What the unit does: User=tokenbroker, StateDirectory=, RuntimeDirectory=.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let uid: u32 = passwd
        .lines()
        .find(|l| l.starts_with("tokenbroker:"))
        .and_then(|l| l.split(':').nth(2))
        .unwrap()
        .parse()
        .unwrap();
    for (dir, mode) in [("var/lib/tokenbroker", 0o700), ("run/tokenbroker", 0o755)] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(daemon_gid)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let socket = root.join("run/tokenbroker/tokenbroker.sock");
    let wrapper = as_user(uid, &[clients_gid]);
    let wrapper: Vec<&std::ffi::OsStr> = wrapper.iter().map(|w| w.as_ref()).collect();
    let store = root.join("var/lib/tokenbroker").display().to_string();
    let socket_text = socket.display().to_string();
    let clients_text = clients_gid.to_string();
    let daemon = home
        .spawn_serving_at(
            &socket,
            &wrapper,
            &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
            &[
                // The scratch root's paths and group in place of the host's.
                ("TOKENBROKER__SERVER__SOCKET", &socket_text),
                ("TOKENBROKER__STORE__DIR", &store),
                ("TOKENBROKER__SERVER__SOCKET_GROUP", &clients_text),
                ("TOKENBROKER__SERVER__HTTP", ""),
            ],
        )
        .await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, clients_gid));

    // The example's backup job (uid 1001), once it is in the clients group, and a stranger.
    let client = |groups: &[u32]| {
        let wrapper = as_user(1001, groups);
        Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(BINARY)
            .args(["accounts", "--socket"])
            .arg(&socket)
            .output()
            .unwrap()
    };
    let member = client(&[clients_gid]);
    assert!(
        member.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&member.stderr),
        daemon.logs()
    );
    let stranger = client(&[]);
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("EACCES"));
}
