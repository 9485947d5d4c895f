//! Configuration loading: the documented example, overrides, secrets, and every error path.

use std::path::Path;

use super::*;
use crate::provider::{AuthMethod, EndpointSource};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(&self, toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let path = self.write("config.toml", toml);
        let env: Env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load(&path, &env)
    }
}

const EXAMPLE: &str = r#"
[server]
socket = "/run/tokenbroker/tokenbroker.sock"
http = "127.0.0.1:8765"
public_url = "http://127.0.0.1:8765"
admin_uids = [0]

[store]
dir = "/var/lib/tokenbroker"

[refresh]
ahead = "1h"
jitter = "5m"
check_interval = "30s"
max_concurrent = 8
min_valid = "60s"

[providers.dropbox]
preset = "dropbox"
client_id = "abc123"
client_secret_file = "dropbox-secret"
scopes = ["files.content.read", "account_info.read"]

[providers.corp]
preset = "generic"
issuer = "https://login.example.com"
client_id = "broker"
client_secret_file = "corp-secret"
auth_method = "post"
default_lifetime = "1h"

[[clients]]
name = "nightly-backup"
uids = [1001]
accounts = ["dropbox-*"]

[[clients]]
name = "app-sidecar"
api_key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
accounts = ["corp-reports"]
metrics = true

[accounts.dropbox-main]
provider = "dropbox"
refresh_token_file = "dropbox-main-refresh"
required = true
sinks = [{ path = "/run/tokenbroker/dropbox-main.token", format = "raw", mode = "0640" }]
"#;

fn example_files() -> Files {
    let files = Files::new();
    files.write("dropbox-secret", "dropbox-SECRET-value\n");
    files.write("corp-secret", "corp-SECRET-value");
    files.write("dropbox-main-refresh", "refresh-SECRET-value\n");
    files
}

#[test]
fn the_documented_example_loads() {
    let files = example_files();
    let settings = files.load(EXAMPLE, &[]).unwrap();
    assert_eq!(settings.api.http.unwrap().to_string(), "127.0.0.1:8765");
    assert_eq!(
        settings.scheduler.check_interval,
        std::time::Duration::from_secs(30)
    );
    let dropbox = &settings
        .providers
        .iter()
        .find(|p| p.name == "dropbox")
        .unwrap();
    assert_eq!(
        dropbox.client_secret.as_ref().unwrap().expose(),
        "dropbox-SECRET-value",
        "trailing newline dropped"
    );
    assert_eq!(dropbox.auth_method, AuthMethod::Basic);
    assert!(
        matches!(&dropbox.endpoints, EndpointSource::Fixed(e) if e.token.as_str() == "https://api.dropboxapi.com/oauth2/token")
    );
    assert_eq!(
        dropbox.default_lifetime,
        std::time::Duration::from_secs(14400)
    );
    let corp = &settings
        .providers
        .iter()
        .find(|p| p.name == "corp")
        .unwrap();
    assert!(matches!(&corp.endpoints, EndpointSource::Discover { .. }));
    assert_eq!(corp.auth_method, AuthMethod::Post);
    assert_eq!(
        settings.accounts[0]
            .refresh_token
            .as_ref()
            .unwrap()
            .expose(),
        "refresh-SECRET-value"
    );
    assert!(settings.accounts[0].required);
    let sink = &settings.accounts[0].sinks[0];
    assert_eq!(
        sink.path.to_str(),
        Some("/run/tokenbroker/dropbox-main.token")
    );
    assert_eq!((sink.format, sink.mode), (crate::sink::Format::Raw, 0o640));
    assert_eq!(settings.api.clients.len(), 2);
    let metrics: Vec<_> = settings.api.clients.iter().map(|c| c.metrics).collect();
    assert_eq!(metrics, [false, true], "metrics = true, default false");
    // Neither the summary nor Debug shows a secret.
    for text in [settings.summary(), format!("{settings:?}")] {
        assert!(!text.contains("SECRET"), "{text}");
    }
}

#[test]
fn the_environment_overrides_the_file() {
    let files = example_files();
    let settings = files
        .load(
            EXAMPLE,
            &[
                ("TOKENBROKER__REFRESH__MAX_CONCURRENT", "3"),
                ("TOKENBROKER__REFRESH__AHEAD", "2h"),
                ("TOKENBROKER__SERVER__ADMIN_UIDS", "5,6"),
                ("TOKENBROKER__SERVER__HTTP", ""),
                ("TOKENBROKER__PROVIDERS__DROPBOX__CLIENT_ID", "12345"),
                ("UNRELATED__X", "y"),
            ],
        )
        .unwrap();
    assert_eq!(settings.broker.max_concurrent, 3);
    assert_eq!(
        settings.broker.policy.ahead,
        std::time::Duration::from_secs(7200)
    );
    assert_eq!(settings.api.admin_uids, vec![5, 6]);
    assert_eq!(settings.api.http, None);
    assert_eq!(
        settings
            .providers
            .iter()
            .find(|p| p.name == "dropbox")
            .unwrap()
            .client_id,
        "12345"
    );
}

#[test]
fn relative_secret_files_look_in_the_credentials_directory_first() {
    let files = example_files();
    let credentials = files.write("creds/dropbox-secret", "from-credentials");
    let path = files.write("config.toml", EXAMPLE);
    let mut env = Env::new();
    env.insert(
        "CREDENTIALS_DIRECTORY".into(),
        credentials.parent().unwrap().display().to_string(),
    );
    let settings = load(&path, &env).unwrap();
    let dropbox = settings
        .providers
        .iter()
        .find(|p| p.name == "dropbox")
        .unwrap();
    assert_eq!(
        dropbox.client_secret.as_ref().unwrap().expose(),
        "from-credentials"
    );
    // Files not in the credentials directory are still found beside the configuration.
    assert_eq!(
        settings
            .providers
            .iter()
            .find(|p| p.name == "corp")
            .unwrap()
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "corp-SECRET-value"
    );
}

fn error(toml: &str, env: &[(&str, &str)]) -> String {
    let files = example_files();
    let error = files.load(toml, env).unwrap_err();
    assert!(
        error.to_string().contains("config.toml"),
        "names the file: {error}"
    );
    error.to_string()
}

#[test]
fn every_error_names_its_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("[server]\nsockt = \"x\"", &[], "sockt"),
        ("[refresh]\nahead = \"soon\"", &[], "refresh.ahead"),
        ("[refresh]\nmax_concurrent = -1", &[], "refresh.max_concurrent"),
        ("[refresh]\nmax_concurrent = 0", &[], "refresh.max_concurrent"),
        ("[refresh]\ncheck_interval = \"90s\"", &[], "refresh.check_interval"),
        ("[refresh]\nahead = \"30s\"", &[], "refresh.ahead"),
        ("[server]\nhttp = \"0.0.0.0:8765\"", &[], "server.http"),
        ("[server]\nhttp = \"192.168.1.5:8765\"", &[], "not a loopback address"),
        ("[server]\nhttp = \"nonsense\"", &[], "server.http"),
        ("[server\n", &[], "TOML parse error"),
        ("", &[("TOKENBROKER__REFRESH__MAX_CONCURRENT", "many")], "refresh.max_concurrent"),
        ("", &[("TOKENBROKER__SERVER__BOGUS", "x")], "bogus"),
        ("[accounts.main]\nprovider = \"nope\"", &[], "accounts.main.provider"),
        ("[accounts.Main]\nprovider = \"nope\"", &[], "accounts.Main"),
        ("[providers.d]\npreset = \"dropbox\"\nclient_id = \"x\"\nclient_secret_file = \"missing\"", &[], "providers.d.client_secret_file"),
        ("[providers.d]\npreset = \"dropbox\"\nclient_id = \"x\"\nauth_method = \"basic\"", &[], "providers.d.auth_method"),
        ("[providers.d]\npreset = \"dropbox\"\nclient_id = \"x\"\nclient_secret = \"s\"\nauth_method = \"none\"", &[], "providers.d.auth_method"),
        ("[providers.d]\npreset = \"magic\"\nclient_id = \"x\"", &[], "providers.d.preset"),
        ("[providers.g]\npreset = \"generic\"\nclient_id = \"x\"", &[], "providers.g.token_url"),
        ("[providers.g]\npreset = \"generic\"\nclient_id = \"x\"\ntoken_url = \"http://example.com/t\"", &[], "providers.g.token_url"),
        ("[providers.g]\npreset = \"generic\"\nclient_id = \"x\"\ntoken_url = \"https://a/t\"\nfoo = 1", &[], "providers.g"),
        ("[[clients]]\nname = \"c\"\naccounts = [\"*\"]", &[], "clients[0]"),
        ("[[clients]]\nname = \"c\"\napi_key_sha256 = \"abc\"", &[], "clients[0].api_key_sha256"),
        ("[[clients]]\nname = \"c\"\nuids = [1]\naccounts = [\"[\"]", &[], "clients[0].accounts"),
        ("[providers.g]\npreset = \"google\"\nclient_id = \"x\"\ntenant = \"t\"", &[], "providers.g.tenant"),
        ("[accounts.a]\nprovider = \"dropbox\"\nsinks = [{ path = \"rel/t\" }]", &[], "accounts.a.sinks[0].path"),
        ("[accounts.a]\nprovider = \"dropbox\"\nsinks = [{ path = \"/t\", format = \"yaml\" }]", &[], "accounts.a.sinks[0].format"),
        ("[accounts.a]\nprovider = \"dropbox\"\nsinks = [{ path = \"/t\", mode = \"0999\" }]", &[], "accounts.a.sinks[0].mode"),
        ("[accounts.a]\nprovider = \"dropbox\"\nsinks = [{ path = \"/t\", owner = \"no-such-user-x\" }]", &[], "accounts.a.sinks[0].owner"),
        ("[accounts.a]\nprovider = \"dropbox\"\nsinks = [{ path = \"/t\", colour = \"red\" }]", &[], "colour"),
        ("[[notify]]\nevents = [\"paged\"]\ncommand = [\"true\"]", &[], "notify[0].events: unknown event \"paged\""),
        ("[[notify]]\ncommand = [\"true\"]\nwebhook = \"https://h/x\"", &[], "give exactly one of command and webhook"),
        ("[[notify]]\nevents = [\"degraded\"]", &[], "notify[0].command"),
        ("[[notify]]\nwebhook = \"http://hooks.example.com/x\"", &[], "notify[0].webhook: must use https"),
        ("[[notify]]\nwebhook = \"https://h/x\"\nsecret_file = \"missing\"", &[], "notify[0].secret_file"),
        ("[[notify]]\ncommand = []", &[], "notify[0].command: must name a program"),
    ];
    for (toml, env, key) in cases {
        let text = error(toml, env);
        assert!(text.contains(key), "expected {key:?} in: {text}");
    }
}

#[test]
fn a_syntax_error_does_not_quote_the_line_it_is_on() {
    for toml in [
        "[providers.d]\npreset = \"dropbox\"\nclient_id = \"x\"\nclient_secret = \"s3cr3t-never-printed\n",
        "[providers.d]\nclient_secret = \"s3cr3t-never-printed\" junk\n",
    ] {
        let text = error(toml, &[]);
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("TOML parse error at line"), "{text}");
    }
}

#[test]
fn all_problems_are_reported_at_once_without_secret_contents() {
    let files = example_files();
    files.write("empty", "\n");
    let text = files
        .load("[server]\nhttp = \"8.8.8.8:1\"\n[refresh]\nmax_concurrent = 0\n[providers.d]\npreset = \"dropbox\"\nclient_id = \"x\"\nclient_secret_file = \"empty\"", &[])
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("server.http")
            && text.contains("max_concurrent")
            && text.contains("is empty"),
        "{text}"
    );
}

#[test]
fn a_missing_file_is_a_configuration_error() {
    let error = load(Path::new("/nonexistent/tokenbroker.toml"), &Env::new()).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/tokenbroker.toml"));
}

#[test]
fn client_commands_find_the_socket_leniently() {
    let files = Files::new();
    let path = files.write(
        "config.toml",
        "[server]\nsocket = \"/tmp/x.sock\"\n[whatever]\nkey = 1\n",
    );
    assert_eq!(socket_path(&path, &Env::new()), Path::new("/tmp/x.sock"));
    assert_eq!(
        socket_path(Path::new("/nonexistent"), &Env::new()),
        Path::new(DEFAULT_SOCKET)
    );
    let env: Env = [(
        "TOKENBROKER__SERVER__SOCKET".to_owned(),
        "/e.sock".to_owned(),
    )]
    .into();
    assert_eq!(socket_path(&path, &env), Path::new("/e.sock"));
}

#[test]
fn the_shipped_example_configurations_are_valid() {
    let credentials = Files::new();
    credentials.write("dropbox-secret", "s");
    credentials.write("corp-secret", "s");
    credentials.write("dropbox-client-secret", "s");
    credentials.write("dropbox-main-refresh-token", "r");
    // config/shared.toml: its database's URL, and the key every replica shares.
    credentials.write("pg-url", "postgres://tokenbroker@postgres/tokenbroker");
    chmod(&credentials.write("store-key", &"ab".repeat(32)), 0o600);
    let env: Env = [
        (
            "CREDENTIALS_DIRECTORY".to_owned(),
            credentials.dir.path().display().to_string(),
        ),
        // The examples name the group systemd-sysusers creates, which this host may lack.
        (
            "TOKENBROKER__SERVER__SOCKET_GROUP".to_owned(),
            rustix::process::getgid().as_raw().to_string(),
        ),
    ]
    .into();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path, &env).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 4);
}

#[test]
fn every_preset_loads_and_microsoft_takes_a_tenant() {
    let files = Files::new();
    let toml = "[providers.g]\npreset = \"google\"\nclient_id = \"x\"\n\
                [providers.m]\npreset = \"microsoft\"\nclient_id = \"x\"\ntenant = \"contoso\"\n\
                [providers.h]\npreset = \"github\"\nclient_id = \"x\"\n\
                [providers.b]\npreset = \"box\"\nclient_id = \"x\"\n";
    let settings = files.load(toml, &[]).unwrap();
    let microsoft = settings.providers.iter().find(|p| p.name == "m").unwrap();
    assert!(
        matches!(&microsoft.endpoints, EndpointSource::Fixed(e) if e.token.as_str().contains("/contoso/"))
    );
    assert_eq!(
        microsoft.issuer.as_deref(),
        Some("https://login.microsoftonline.com/contoso/v2.0")
    );
    let github = settings.providers.iter().find(|p| p.name == "h").unwrap();
    assert_eq!(
        github.default_lifetime,
        std::time::Duration::from_secs(28800)
    );
}

#[test]
fn the_store_key_is_found_in_the_credentials_directory_first() {
    let files = Files::new();
    let toml = "[store]\ndir = \"/var/lib/tb\"\n";
    let settings = files.load(toml, &[]).unwrap();
    assert_eq!(
        settings.store.key_file,
        Path::new("/var/lib/tb/store-key"),
        "generated beside the store by default"
    );
    let credential = files.write("creds/store-key", "k");
    chmod(&credential, 0o400); // as systemd makes credentials: the service's user's alone
    let path = files.write("config.toml", toml);
    let env: Env = [(
        "CREDENTIALS_DIRECTORY".to_owned(),
        credential.parent().unwrap().display().to_string(),
    )]
    .into();
    assert_eq!(
        load(&path, &env).unwrap().store.key_file,
        credential,
        "LoadCredential= wins when present"
    );
    let absolute = files
        .load(
            "[store]\ndir = \"/var/lib/tb\"\nkey_file = \"/etc/tb/key\"\n",
            &[],
        )
        .unwrap();
    assert_eq!(absolute.store.key_file, Path::new("/etc/tb/key"));
    let group = files.load("[server]\nsocket_group = \"0\"\n", &[]).unwrap();
    assert_eq!(group.api.socket_group, Some(0));
    assert!(files
        .load("[server]\nsocket_group = \"no-such-group-here\"\n", &[])
        .unwrap_err()
        .to_string()
        .contains("server.socket_group"));
}

#[test]
fn each_preset_authenticates_with_a_secret_as_its_provider_documents() {
    let files = Files::new();
    for (preset, expected) in [
        ("dropbox", AuthMethod::Basic),
        ("google", AuthMethod::Basic),
        ("microsoft", AuthMethod::Post),
        ("github", AuthMethod::Post),
        ("box", AuthMethod::Post),
    ] {
        let toml = format!(
            "[providers.p]\npreset = \"{preset}\"\nclient_id = \"x\"\nclient_secret = \"s\"\n"
        );
        let settings = files.load(&toml, &[]).unwrap();
        assert_eq!(settings.providers[0].auth_method, expected, "{preset}");
    }
    let explicit = files
        .load(
            "[providers.p]\npreset = \"box\"\nclient_id = \"x\"\nclient_secret = \"s\"\nauth_method = \"basic\"\n",
            &[],
        )
        .unwrap();
    assert_eq!(explicit.providers[0].auth_method, AuthMethod::Basic);
}

#[test]
fn an_issuer_beside_explicit_urls_is_the_expected_iss_and_is_not_discovered() {
    let files = Files::new();
    let settings = files
        .load(
            "[providers.g]\npreset = \"generic\"\nclient_id = \"x\"\nauth_method = \"none\"\nissuer = \"https://login.example.com/realms/x/\"\ntoken_url = \"https://login.example.com/t\"\n",
            &[],
        )
        .unwrap();
    let provider = &settings.providers[0];
    assert!(matches!(provider.endpoints, EndpointSource::Fixed(_)));
    assert_eq!(
        provider.issuer.as_deref(),
        Some("https://login.example.com/realms/x")
    );
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_store_key_other_users_can_read_is_refused() {
    let files = Files::new();
    let key = files.write("store/store-key", &"ab".repeat(32));
    let toml = format!(
        "[store]\ndir = \"{}\"",
        files.dir.path().join("store").display()
    );
    chmod(&key, 0o644);
    let text = files.load(&toml, &[]).unwrap_err().to_string();
    assert!(
        text.contains("store.key_file") && text.contains("0644"),
        "{text}"
    );
    chmod(&key, 0o600);
    assert!(files.load(&toml, &[]).is_ok());
}

#[test]
fn secrets_other_users_can_read_are_warned_about_by_file() {
    let files = Files::new();
    let secret = files.write("dropbox-secret", "dropbox-SECRET-value");
    let by_file = "[providers.d]\npreset = \"dropbox\"\nclient_id = \"x\"\nclient_secret_file = \"dropbox-secret\"";
    chmod(&secret, 0o644);
    let settings = files.load(by_file, &[]).unwrap();
    assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
    assert!(settings.warnings[0].contains("providers.d.client_secret_file"));
    assert!(settings.warnings[0].contains("dropbox-secret"));
    assert!(!settings.warnings[0].contains("SECRET-value"));
    chmod(&secret, 0o600);
    assert!(files.load(by_file, &[]).unwrap().warnings.is_empty());
    // Readable by our own group only, as the install makes files for the daemon's group.
    chmod(&secret, 0o640);
    assert!(files.load(by_file, &[]).unwrap().warnings.is_empty());

    let inline =
        "[providers.d]\npreset = \"dropbox\"\nclient_id = \"x\"\nclient_secret = \"inline-SECRET\"";
    let path = files.write("config.toml", inline);
    chmod(&path, 0o644);
    let settings = load(&path, &Env::new()).unwrap();
    assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
    assert!(settings.warnings[0].contains("providers.d.client_secret"));
    assert!(!settings.warnings[0].contains("inline-SECRET"));
    chmod(&path, 0o600);
    assert!(load(&path, &Env::new()).unwrap().warnings.is_empty());
}

#[test]
fn a_store_directory_others_could_plant_files_in_is_refused() {
    let files = Files::new();
    let real = files.dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = files.dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let with_dir = |dir: &std::path::Path| format!("[store]\ndir = \"{}\"", dir.display());
    let text = files.load(&with_dir(&link), &[]).unwrap_err().to_string();
    assert!(
        text.contains("store.dir") && text.contains("symbolic link"),
        "{text}"
    );
    chmod(&real, 0o777);
    let text = files.load(&with_dir(&real), &[]).unwrap_err().to_string();
    assert!(text.contains("written by other users"), "{text}");
    chmod(&real, 0o700);
    assert!(files.load(&with_dir(&real), &[]).is_ok());
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&real, Some(65534), None).unwrap();
        let text = files.load(&with_dir(&real), &[]).unwrap_err().to_string();
        assert!(text.contains("owned by uid 65534"), "{text}");
    }
}

#[test]
fn the_embedded_store_keeps_32_mib_of_tokens_in_memory_unless_told_otherwise() {
    let files = Files::new();
    let store = files.dir.path().join("store");
    let with =
        |store_lines: &str| format!("[store]\ndir = \"{}\"\n{store_lines}\n", store.display());
    let memory = |lines: &str| {
        let settings = files.load(&with(lines), &[]).unwrap();
        let store::Backend::Sled { token_memory } = settings.store.backend else {
            panic!("{:?}", settings.store.backend);
        };
        (token_memory, settings.summary())
    };
    let (default, summary) = memory("");
    assert_eq!(default, 32 << 20);
    assert!(
        summary.contains("(sled; up to 32 MiB of tokens in memory)"),
        "{summary}"
    );
    assert_eq!(memory("token_memory_mib = 8").0, 8 << 20);
    assert_eq!(memory("token_memory_mib = 0").0, 0, "every token read back");

    // OPERATIONS.md's sizing snippet, as printed but for the directory.
    let operations = include_str!("../../docs/OPERATIONS.md");
    let sizing = &operations[operations.find("## Sizing").unwrap()..];
    let snippet = sizing
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap()
        .lines()
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n")
        .replace("/var/lib/tokenbroker", &store.display().to_string());
    let settings = files.load(&snippet, &[]).unwrap();
    assert_eq!(
        settings.store.backend,
        store::Backend::Sled {
            token_memory: 256 << 20
        }
    );
}

#[test]
fn the_postgres_backend_takes_its_url_from_a_file_when_it_has_a_password() {
    let files = Files::new();
    let store = files.dir.path().join("store");
    let with = |store_lines: &str| {
        format!(
            "[store]\ndir = \"{}\"\n{store_lines}\n[providers.slow]\npreset = \"generic\"\nclient_id = \"x\"\nauth_method = \"none\"\ntoken_url = \"https://id.example/token\"\ntimeout = \"45s\"\nconnect_timeout = \"5s\"",
            store.display()
        )
    };
    let settings = files
        .load(
            &with("backend = \"postgres\"\nurl = \"postgres://tokenbroker@/tokenbroker?host=/run/postgresql\""),
            &[],
        )
        .unwrap();
    let store::Backend::Postgres {
        url,
        lease_timeout,
        ca_certificates,
    } = &settings.store.backend
    else {
        panic!("{:?}", settings.store.backend);
    };
    assert!(ca_certificates.is_empty());
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    assert_eq!(
        url.expose(),
        "postgres://tokenbroker@/tokenbroker?host=/run/postgresql"
    );
    // The slowest provider's timeouts, and a margin: only a holder that is gone loses it.
    assert_eq!(*lease_timeout, std::time::Duration::from_secs(55));
    assert!(
        !format!("{settings:?}").contains("tokenbroker@"),
        "the URL is redacted in Debug"
    );
    let summary = settings.summary();
    assert!(
        summary.contains("PostgreSQL, shared (row locks held at most 55s)"),
        "{summary}"
    );
    assert!(!summary.contains("tokenbroker@"), "{summary}");

    let inline = files
        .load(
            &with("backend = \"postgres\"\nurl = \"postgres://tb:pg-SECRET@db/tb\""),
            &[],
        )
        .unwrap_err()
        .to_string();
    assert!(
        inline.contains("store.url") && inline.contains("url_file"),
        "{inline}"
    );
    assert!(!inline.contains("pg-SECRET"), "{inline}");

    let url_file = files.write("pg-url", "postgres://tb:pg-SECRET@db/tb\n");
    chmod(&url_file, 0o600);
    let settings = files
        .load(&with("backend = \"postgres\"\nurl_file = \"pg-url\""), &[])
        .unwrap();
    let store::Backend::Postgres { url, .. } = &settings.store.backend else {
        panic!("postgres");
    };
    assert_eq!(url.expose(), "postgres://tb:pg-SECRET@db/tb");
    // A URL that does not parse is refused without its text.
    std::fs::write(&url_file, "postgres://tb:pg-SECRET@db:notaport/tb\n").unwrap();
    let unparsed = files
        .load(&with("backend = \"postgres\"\nurl_file = \"pg-url\""), &[])
        .unwrap_err()
        .to_string();
    assert!(unparsed.contains("not a PostgreSQL URL"), "{unparsed}");
    assert!(!unparsed.contains("pg-SECRET"), "{unparsed}");

    for (lines, expected) in [
        (
            "backend = \"postgres\"",
            "needs store.url or store.url_file",
        ),
        ("backend = \"mysql\"", "store.backend"),
        ("url = \"postgres://db/tb\"", "only for store.backend"),
        ("ca_file = \"ca.pem\"", "only for store.backend"),
        (
            "backend = \"postgres\"\nurl = \"postgres://db/tb\"\ntoken_memory_mib = 8",
            "store.token_memory_mib: only for store.backend = \"sled\"",
        ),
        (
            "token_memory_mib = 2000000",
            "store.token_memory_mib: at most",
        ),
        ("token_memory_mib = -1", "token_memory_mib"),
        (
            "backend = \"postgres\"\nurl = \"postgres://db:notaport/tb\"",
            "not a PostgreSQL URL",
        ),
    ] {
        let text = files.load(&with(lines), &[]).unwrap_err().to_string();
        assert!(text.contains(expected), "{lines}: {text}");
    }
}

#[test]
fn a_postgres_server_over_the_network_needs_sslmode_require_and_may_name_its_ca() {
    let files = Files::new();
    let store = files.dir.path().join("store");
    let with = |store_lines: &str| {
        format!(
            "[store]\ndir = \"{}\"\nbackend = \"postgres\"\n{store_lines}\n",
            store.display()
        )
    };
    // In the clear to another host: said at start and by check-config.
    let settings = files
        .load(&with("url = \"postgres://tb@db.example/tb\""), &[])
        .unwrap();
    assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
    assert!(
        settings.warnings[0].contains("db.example")
            && settings.warnings[0].contains("sslmode=require"),
        "{:?}",
        settings.warnings
    );
    // Verified TLS, or this host: nothing to say.
    for url in [
        "postgres://tb@db.example/tb?sslmode=require",
        "postgres://tb@localhost/tb",
        "postgres://tb@127.0.0.1:5433/tb",
        "postgres://tb@/tb?host=/run/postgresql",
    ] {
        let settings = files.load(&with(&format!("url = \"{url}\"")), &[]).unwrap();
        assert!(
            settings.warnings.is_empty(),
            "{url}: {:?}",
            settings.warnings
        );
    }

    // store.ca_file: PEM certificates, found beside the configuration.
    let der = [0x30_u8, 0x03, 0x02, 0x01, 0x07];
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
    );
    files.write("db-ca.pem", &format!("{pem}{pem}"));
    let settings = files
        .load(
            &with("url = \"postgres://tb@db.example/tb?sslmode=require\"\nca_file = \"db-ca.pem\""),
            &[],
        )
        .unwrap();
    let store::Backend::Postgres {
        ca_certificates, ..
    } = &settings.store.backend
    else {
        panic!("postgres");
    };
    assert_eq!(ca_certificates.len(), 2);
    assert_eq!(ca_certificates[0].as_ref(), der);
    let summary = settings.summary();
    assert!(
        summary.contains("PostgreSQL over verified TLS, shared"),
        "{summary}"
    );

    files.write("not-pem.txt", "just text\n");
    for (file, expected) in [
        ("missing.pem", "store.ca_file: \"missing.pem\" not found"),
        ("not-pem.txt", "holds no PEM certificate"),
    ] {
        let text = files
            .load(
                &with(&format!(
                    "url = \"postgres://tb@db.example/tb?sslmode=require\"\nca_file = \"{file}\""
                )),
                &[],
            )
            .unwrap_err()
            .to_string();
        assert!(text.contains(expected), "{file}: {text}");
    }
}
