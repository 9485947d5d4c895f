//! The systemd files agree with the code: paths, user, exit status, notify type.

use std::path::Path;

use tokenbroker::config::{DEFAULT_PATH, DEFAULT_SOCKET};

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .expect("the file exists")
}

fn setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_service_unit_matches_the_daemons_defaults() {
    let unit = read("systemd/tokenbroker.service");
    assert_eq!(setting(&unit, "Type"), ["notify"]);
    assert_eq!(
        setting(&unit, "ExecStart"),
        [format!("/usr/bin/tokenbroker serve --config {DEFAULT_PATH}").as_str()]
    );
    assert_eq!(setting(&unit, "RestartPreventExitStatus"), ["78"]);
    // The default socket lives in the RuntimeDirectory, the default store in the StateDirectory.
    assert_eq!(
        Path::new(DEFAULT_SOCKET).parent().unwrap(),
        Path::new("/run").join(setting(&unit, "RuntimeDirectory")[0])
    );
    assert_eq!(setting(&unit, "StateDirectory"), ["tokenbroker"]);
    assert_eq!(
        Path::new(DEFAULT_PATH).parent().unwrap(),
        Path::new("/etc").join(setting(&unit, "ConfigurationDirectory")[0])
    );
    assert!(setting(&unit, "WatchdogSec").len() == 1);
    // Socket clients are recognised by uid: a private user namespace would hide them.
    assert!(setting(&unit, "PrivateUsers").is_empty());
    let user = setting(&unit, "User")[0];
    let sysusers = read("systemd/tokenbroker.sysusers");
    assert!(
        sysusers
            .lines()
            .any(|line| line.starts_with(&format!("u {user} "))),
        "sysusers creates {user}"
    );
    let tmpfiles = read("systemd/tokenbroker.tmpfiles");
    assert!(tmpfiles.contains(&format!("/etc/tokenbroker 0750 root {user}")));
}
