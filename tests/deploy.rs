//! The systemd and deploy files agree with the code: paths, ports, users and groups, probe
//! routes, exit status, notify type.
#![allow(clippy::unwrap_used)]

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

/// Every `tokenbroker probe ROUTE` in `text` names a route the probe command accepts (it
/// exits 1 for a daemon it cannot reach, 2 for a route it does not know).
fn probe_routes_are_real(text: &str) -> Vec<String> {
    let routes: Vec<String> = text
        .split(r#""/usr/bin/tokenbroker", "probe", ""#)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect();
    assert!(!routes.is_empty());
    for route in &routes {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_tokenbroker"))
            .args(["probe", route, "--socket", "/nonexistent/tokenbroker.sock"])
            .output()
            .unwrap()
            .status;
        assert_eq!(status.code(), Some(1), "tokenbroker probe {route}");
    }
    routes
}

/// The values of `key:` on the line after each line that contains `anchor` (YAML lists of
/// named items: `- name: X` then `mountPath: …`).
fn after<'a>(text: &'a str, anchor: &str, key: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[0].contains(anchor))
        .filter_map(|pair| pair[1].trim().strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().trim_matches('"'))
        .collect()
}

/// Every `key: value` (or `KEY=value`) in the text, for a key given with its separator.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|line| line.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|value| value.trim().trim_matches('"'))
        .collect()
}

/// The container configuration, loaded as the sidecar would load it: secrets from a
/// credentials directory holding the files the deploy examples name.
fn container_settings(socket_group: &str) -> tokenbroker::config::Settings {
    let credentials = tempfile::tempdir().unwrap();
    for name in ["dropbox-client-secret", "dropbox-main-refresh-token"] {
        std::fs::write(credentials.path().join(name), "x").unwrap();
    }
    let env: tokenbroker::config::Env = [
        (
            "CREDENTIALS_DIRECTORY".to_owned(),
            credentials.path().display().to_string(),
        ),
        (
            "TOKENBROKER__SERVER__SOCKET_GROUP".to_owned(),
            socket_group.to_owned(),
        ),
    ]
    .into();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/container.toml");
    tokenbroker::config::load(&path, &env).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_container_image_runs_the_example_configuration_as_non_root() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains(&format!("config/container.toml /out{DEFAULT_PATH}")));
    assert!(dockerfile.contains(&format!(r#"CMD ["serve", "--config", "{DEFAULT_PATH}"]"#)));
    let stages =
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM "));
    assert!(stages >= 2, "a multi-stage build");
    let user = values(&dockerfile, "USER ");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with('0') && !user[0].starts_with("root"),
        "{user:?}"
    );
    let settings = container_settings("2000");
    for dir in [
        settings.api.socket.parent().unwrap(),
        settings.store.dir.parent().unwrap(),
    ] {
        assert!(
            dockerfile.contains(&format!("/out{}", dir.display())),
            "{}",
            dir.display()
        );
        assert!(
            dockerfile.contains(&format!("\"{}\"", dir.display())),
            "VOLUME {}",
            dir.display()
        );
    }
    assert_eq!(probe_routes_are_real(&dockerfile), ["/readyz"]);
}

#[test]
fn the_kubernetes_sidecar_agrees_with_the_code() {
    let pod = read("deploy/kubernetes/sidecar.yaml");
    let group = values(&pod, "runAsGroup:");
    assert!(
        group.iter().all(|g| *g == group[0]),
        "one shared group: {group:?}"
    );
    let group_env = after(&pod, "TOKENBROKER__SERVER__SOCKET_GROUP", "value");
    assert_eq!(group_env, [group[0]]);
    let settings = container_settings(group_env[0]);
    assert_eq!(settings.api.socket_group, Some(group[0].parse().unwrap()));

    // The socket's directory is shared by both containers; the store is on its own volume.
    let socket_dir = settings.api.socket.parent().unwrap().display().to_string();
    assert_eq!(
        after(&pod, "- name: tokenbroker-run", "mountPath"),
        [socket_dir.as_str(); 2]
    );
    // The store is created one level below its volume's root, which it could not chmod.
    let store_volume = settings.store.dir.parent().unwrap().display().to_string();
    assert_eq!(
        after(&pod, "- name: tokenbroker-store", "mountPath"),
        [store_volume.as_str()]
    );
    assert!(pod.contains("emptyDir:"));

    // Secrets: mounted where CREDENTIALS_DIRECTORY says, under the names the config reads.
    let credentials = after(&pod, "- name: CREDENTIALS_DIRECTORY", "value");
    assert_eq!(
        after(&pod, "- name: tokenbroker-secrets", "mountPath"),
        credentials
    );
    assert_eq!(
        values(&read("deploy/Dockerfile"), "ENV CREDENTIALS_DIRECTORY="),
        credentials
    );
    let container = read("config/container.toml");
    for file in values(&container, "client_secret_file = ")
        .into_iter()
        .chain(values(&container, "refresh_token_file = "))
    {
        let name = file.split('"').next().unwrap();
        assert!(pod.contains(&format!("--from-file={name}=")), "{name}");
    }

    // Startup and readiness ask /readyz, liveness /healthz, through the probe command.
    assert_eq!(
        probe_routes_are_real(&pod),
        ["/readyz", "/healthz", "/readyz"]
    );
    assert_eq!(
        after(&pod, "startupProbe:", "exec").len()
            + after(&pod, "livenessProbe:", "exec").len()
            + after(&pod, "readinessProbe:", "exec").len(),
        3
    );
    assert!(pod.find("livenessProbe").unwrap() < pod.find("readinessProbe").unwrap());
    let args = values(&pod, "args:");
    assert_eq!(
        args,
        [format!(r#"["serve", "--config", "{DEFAULT_PATH}"]"#).as_str()]
    );

    // The app is a configured client, and reads the socket and the sink the config names.
    let app_uid: u32 = values(&pod, "runAsUser:")[1].parse().unwrap();
    let app = settings
        .api
        .clients
        .iter()
        .find(|c| c.uids.contains(&app_uid));
    let account = &settings.accounts[0];
    assert!(app.is_some_and(|c| c.accounts.iter().any(|p| p.matches(account.name.as_str()))));
    assert_eq!(
        after(&pod, "- name: TOKENBROKER_SOCKET", "value"),
        [settings.api.socket.display().to_string().as_str()]
    );
    assert_eq!(
        after(&pod, "- name: DROPBOX_TOKEN_FILE", "value"),
        [account.sinks[0].path.display().to_string().as_str()]
    );
}

#[test]
fn the_compose_example_agrees_with_the_code() {
    let compose = read("deploy/compose.yaml");
    let users = values(&compose, "user:");
    let group = users[0].split(':').nth(1).unwrap();
    assert!(
        users.iter().all(|u| u.ends_with(&format!(":{group}"))),
        "{users:?}"
    );
    let settings = container_settings(group);
    let socket_dir = settings.api.socket.parent().unwrap().display().to_string();
    assert!(compose.contains(&format!("tokenbroker-run:{socket_dir}\n")));
    assert!(compose.contains(&format!("tokenbroker-run:{socket_dir}:ro\n")));
    let store_volume = settings.store.dir.parent().unwrap().display().to_string();
    assert!(compose.contains(&format!("tokenbroker-store:{store_volume}\n")));
    assert_eq!(values(&compose, "CREDENTIALS_DIRECTORY:"), ["/run/secrets"]);
    assert_eq!(
        values(&compose, "TOKENBROKER__SERVER__SOCKET_GROUP:"),
        [group]
    );
    assert_eq!(probe_routes_are_real(&compose), ["/readyz"]);
    let app_uid: u32 = users[1].split(':').next().unwrap().parse().unwrap();
    assert!(settings
        .api
        .clients
        .iter()
        .any(|c| c.uids.contains(&app_uid)));
    let account = &settings.accounts[0];
    assert_eq!(
        values(&compose, "DROPBOX_TOKEN_FILE:"),
        [account.sinks[0].path.display().to_string().as_str()]
    );
    for name in ["dropbox-client-secret", "dropbox-main-refresh-token"] {
        assert!(
            compose.contains(&format!("  {name}:\n    file: ./secrets/{name}")),
            "{name}"
        );
    }
}

#[test]
fn the_socket_unit_agrees_with_the_service_and_the_daemon() {
    let socket = read("systemd/tokenbroker.socket");
    assert_eq!(setting(&socket, "ListenStream"), [DEFAULT_SOCKET]);
    assert_eq!(setting(&socket, "SocketMode"), ["0660"]);
    let service = read("systemd/tokenbroker.service");
    assert_eq!(setting(&socket, "SocketUser"), setting(&service, "User"));
    let sysusers = read("systemd/tokenbroker.sysusers");
    let group = setting(&socket, "SocketGroup")[0];
    assert!(
        sysusers
            .lines()
            .any(|l| l.starts_with(&format!("g {group} "))),
        "{group}"
    );
    assert_eq!(setting(&service, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(setting(&service, "RuntimeDirectoryPreserve"), ["yes"]);
}

#[test]
fn the_credentials_drop_in_loads_what_the_example_configuration_reads() {
    let drop_in = read("systemd/tokenbroker.service.d/credentials.conf");
    let config = read("config/tokenbroker.toml");
    let names = |key: &str| -> Vec<String> {
        setting(&drop_in, key)
            .iter()
            .map(|value| value.split(':').next().unwrap().to_owned())
            .collect()
    };
    let quoted = |name: &str| format!("\"{name}\"");
    for name in names("LoadCredential") {
        assert!(
            config.contains(&format!("client_secret_file = {}", quoted(&name))),
            "{name}"
        );
    }
    for name in names("LoadCredentialEncrypted") {
        assert!(
            config.contains(&format!("key_file = {}", quoted(&name))),
            "{name}"
        );
    }
    assert_eq!(
        names("LoadCredential").len() + names("LoadCredentialEncrypted").len(),
        2
    );
}

/// The Kubernetes examples, each with the kind of its workload.
const KUBERNETES: [(&str, &str); 4] = [
    ("deploy/kubernetes/sidecar.yaml", "Deployment"),
    ("deploy/kubernetes/replicas.yaml", "Deployment"),
    ("deploy/kubernetes/sidecar-native.yaml", "Deployment"),
    ("deploy/kubernetes/cronjob.yaml", "CronJob"),
];

#[test]
fn every_kubernetes_example_passes_pod_security_restricted() {
    for (file, kind) in KUBERNETES {
        let text = read(file);
        assert!(text.contains(&format!("kind: {kind}")), "{file}");
        // Pod level: non-root, and the runtime's default seccomp profile.
        assert_eq!(values(&text, "type: RuntimeDefault").len(), 1, "{file}");
        assert!(text.contains("seccompProfile:"), "{file}");
        // Every container (one `image:` each): non-root, no privilege escalation, and every
        // capability dropped.
        let containers = values(&text, "image:").len();
        assert_eq!(containers, 2, "{file}");
        let pod_level = 1;
        for (rule, expected) in [
            ("runAsNonRoot: true", containers + pod_level),
            ("allowPrivilegeEscalation: false", containers),
            ("drop: [\"ALL\"]", containers),
        ] {
            let found = text.lines().filter(|l| l.trim() == rule).count();
            assert_eq!(found, expected, "{file}: {rule}");
        }
        assert!(
            !text.contains("privileged: true") && !text.contains("hostPath"),
            "{file}"
        );
        probe_routes_are_real(&text);
        assert!(text.contains("startupProbe:"), "{file}");
    }
}

#[test]
fn the_kubernetes_configuration_is_the_container_configuration_from_a_configmap() {
    let container = read("config/container.toml");
    for (file, _) in KUBERNETES {
        let text = read(file);
        let block = text
            .split("config.toml: |\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{file} has a ConfigMap with config.toml"));
        let embedded: String = block
            .split("\n---")
            .next()
            .unwrap()
            .lines()
            .map(|line| line.strip_prefix("    ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        // The replicas share a PostgreSQL store, whose configuration is its own.
        let (expected, source) = if file.ends_with("replicas.yaml") {
            (read("config/shared.toml"), "config/shared.toml")
        } else {
            (container.clone(), "config/container.toml")
        };
        assert_eq!(embedded, expected, "{file} embeds {source}");
        assert_eq!(
            after(&text, "- name: tokenbroker-config", "mountPath"),
            [Path::new(DEFAULT_PATH).parent().unwrap().to_str().unwrap()],
            "{file}"
        );
    }
}

#[test]
fn the_native_sidecar_and_the_cronjob_start_tokenbroker_as_an_init_container_that_keeps_running() {
    for file in [
        "deploy/kubernetes/sidecar-native.yaml",
        "deploy/kubernetes/cronjob.yaml",
    ] {
        let text = read(file);
        let init = text.find("initContainers:").unwrap();
        let main = text
            .find("\n          containers:")
            .or_else(|| text.find("      containers:"))
            .unwrap();
        assert!(init < main, "{file}: the sidecar comes first");
        let sidecar = &text[init..main];
        assert!(sidecar.contains("name: tokenbroker"), "{file}");
        assert!(
            values(sidecar, "restartPolicy:")
                .iter()
                .any(|v| v.starts_with("Always")),
            "{file}: a native sidecar"
        );
    }
    // The job's pod may end (its container's exit completes the Job); one run at a time,
    // since the store has a single writer.
    let cron = read("deploy/kubernetes/cronjob.yaml");
    assert!(values(&cron, "restartPolicy:").contains(&"OnFailure"));
    assert_eq!(
        values(&cron, "concurrencyPolicy:")[0]
            .split_whitespace()
            .next(),
        Some("Forbid")
    );
}

#[test]
fn the_dockerfile_builds_dependencies_in_their_own_layer_and_ships_a_stripped_binary() {
    let dockerfile = read("deploy/Dockerfile");
    let manifests = dockerfile.find("COPY Cargo.toml Cargo.lock").unwrap();
    let sources = dockerfile.find("COPY . .").unwrap();
    let first_build = dockerfile.find("cargo build --release --locked").unwrap();
    assert!(
        manifests < first_build && first_build < sources,
        "dependencies before sources"
    );
    assert!(dockerfile.contains("install -D -s -m 0755 target/release/tokenbroker"));
}

#[test]
fn the_replica_examples_share_one_postgres_store() {
    let pods = read("deploy/kubernetes/replicas.yaml");
    let compose = read("deploy/compose-replicas.yaml");
    // (That the ConfigMap holds config/shared.toml as it is, the test of every
    // ConfigMap checks.)
    assert!(compose.contains("file: ../config/shared.toml\n"));
    assert_eq!(values(&pods, "replicas:"), ["3"]);
    for replica in ["a", "b", "c"] {
        assert!(compose.contains(&format!("  tokenbroker-{replica}:\n    <<: *tokenbroker\n")));
    }

    // It loads, with the secret files it names, as a PostgreSQL store whose key is one of
    // them (the same in every replica), and each of them is in both examples.
    let credentials = tempfile::tempdir().unwrap();
    let secrets = [
        (
            "pg-url",
            "postgres://tokenbroker@postgres/tokenbroker".to_owned(),
        ),
        ("store-key", "ab".repeat(32)),
        ("dropbox-client-secret", "x".to_owned()),
        ("dropbox-main-refresh-token", "x".to_owned()),
    ];
    for (name, value) in &secrets {
        let path = credentials.path().join(name);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert!(pods.contains(&format!("--from-file={name}=")), "{name}");
        assert!(
            compose.contains(&format!("  {name}:\n    file: ./secrets/{name}\n")),
            "{name}"
        );
    }
    let env: tokenbroker::config::Env = [(
        "CREDENTIALS_DIRECTORY".to_owned(),
        credentials.path().display().to_string(),
    )]
    .into();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shared.toml");
    let settings = tokenbroker::config::load(&path, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        settings.store.backend,
        tokenbroker::store::Backend::Postgres { .. }
    ));
    assert_eq!(
        settings.store.key_file,
        credentials.path().join("store-key")
    );
    assert_eq!(
        probe_routes_are_real(&pods),
        ["/readyz", "/healthz", "/readyz"]
    );
    assert_eq!(probe_routes_are_real(&compose), ["/readyz"]);
}
