//! Connecting accounts through the real binary: the browser flow step by step over HTTP,
//! every way it can go wrong, the no-redirect and device flows, reconnecting, and revoking.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // bounding waits on another process takes real time

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{Daemon, Home, BINARY};
use tokenbroker::testing::{FakeProvider, Reply};
use url::Url;

/// A daemon with loopback TCP (the browser's way in) and the given providers.
async fn daemon_with(home: &Home, providers: &str) -> (Daemon, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[server]\nsocket = \"{}\"\nhttp = \"127.0.0.1:{port}\"\n[store]\ndir = \"{}\"\n{providers}",
        home.socket().display(),
        home.store().display()
    );
    let path = home.write("config.toml", &config);
    (home.start(&path, &[]).await, port)
}

/// A public client at the fake: PKCE always.
fn public_provider(name: &str, fake: &FakeProvider) -> String {
    format!(
        "[providers.{name}]\npreset = \"generic\"\nclient_id = \"cli\"\nauth_method = \"none\"\ntoken_url = \"{}\"\nauthorize_url = \"{}\"\ndevice_url = \"{}\"\nrevoke_url = \"{}\"\nscopes = [\"files.read\"]\n",
        fake.token_url(),
        fake.authorize_url(),
        fake.device_url(),
        fake.revoke_url()
    )
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> Url {
    assert_eq!(response.status(), 302, "expected a redirect");
    Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
}

/// What the person does: open the start link, then press Allow (or Deny) on the provider's
/// page. Returns the callback URL the provider sends the browser to.
async fn approve(start_url: &str, allow: bool) -> Url {
    let http = no_redirects();
    let authorize = location(&http.get(start_url).send().await.unwrap());
    let page = http
        .get(authorize.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"allow\""),
        "the provider's consent page renders"
    );
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.push((
        "decision".into(),
        if allow { "allow" } else { "deny" }.into(),
    ));
    let decision_url = format!(
        "{}://{}{}",
        authorize.scheme(),
        authorize.host_str().unwrap(),
        authorize
            .port()
            .map(|p| format!(":{p}"))
            .unwrap_or_default()
    );
    location(
        &http
            .post(format!("{decision_url}/oauth2/authorize"))
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
}

async fn start(daemon: &Daemon, account: &str, provider: &str, mode: &str) -> Value {
    let (status, body) = daemon
        .request(
            "POST",
            "/v1/connect",
            Some(json!({"account": account, "provider": provider, "mode": mode})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn callback(url: &Url) -> (u16, String) {
    let response = no_redirects().get(url.clone()).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_browser_flow_connects_an_account_with_pkce_and_the_same_redirect_uri() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, port) = daemon_with(&home, &public_provider("fake", &fake)).await;
    let started = start(&daemon, "files", "fake", "redirect").await;
    let start_url = started["start_url"].as_str().unwrap();
    assert!(
        start_url.starts_with(&format!("http://127.0.0.1:{port}/oauth/start/")),
        "{start_url}"
    );
    let back = approve(start_url, true).await;
    let (status, page) = callback(&back).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Account connected") && page.contains("files"),
        "{page}"
    );
    for secret in fake
        .issued_access_tokens()
        .iter()
        .chain(&fake.valid_refresh_tokens())
    {
        assert!(!page.contains(secret.as_str()), "the page shows no token");
    }
    assert!(
        !page.contains(
            back.query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap()
                .1
                .as_ref()
        ),
        "nor the code"
    );

    let authorize = &fake.authorize_requests()[0];
    let callback_url = format!("http://127.0.0.1:{port}/oauth/callback");
    assert_eq!(authorize["response_type"], "code");
    assert_eq!(authorize["client_id"], "cli");
    assert_eq!(authorize["redirect_uri"], callback_url);
    assert_eq!(authorize["code_challenge_method"], "S256");
    assert_eq!(authorize["scope"], "files.read");
    assert!(authorize["state"].len() >= 43);
    let exchange = &fake.requests()[0];
    assert_eq!(exchange.form["grant_type"], "authorization_code");
    assert_eq!(
        exchange.form["redirect_uri"], callback_url,
        "the identical redirect_uri"
    );
    assert!(
        exchange.form.contains_key("code_verifier"),
        "the fake checked it against the challenge"
    );

    let (status, token) = daemon.request("GET", "/v1/token/files", None).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["access_token"], json!(fake.issued_access_tokens()[0]));
    let (_, flow) = daemon
        .request(
            "GET",
            &format!("/v1/connect/{}", started["ticket"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(flow["status"], "connected");
    assert_eq!(flow["account"]["provider_user_id"], "dbid:fake-user");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropbox_flows_ask_for_offline_access() {
    let fake = FakeProvider::start().await;
    fake.set_dropbox_mode(true);
    let home = Home::new();
    home.write("secret", "app-secret");
    let provider = format!(
        "[providers.dbx]\npreset = \"dropbox\"\nclient_id = \"app\"\nclient_secret_file = \"secret\"\ntoken_url = \"{}\"\nauthorize_url = \"{}\"\n",
        fake.token_url(),
        fake.authorize_url()
    );
    let (daemon, _) = daemon_with(&home, &provider).await;
    let started = start(&daemon, "dropbox-main", "dbx", "redirect").await;
    let (status, page) =
        callback(&approve(started["start_url"].as_str().unwrap(), true).await).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(fake.authorize_requests()[0]["token_access_type"], "offline");
    // A confidential Dropbox client authenticates with its secret, once.
    let exchange = &fake.requests()[0];
    assert!(exchange
        .authorization
        .as_deref()
        .unwrap()
        .starts_with("Basic "));
    assert!(!exchange.form.contains_key("client_secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_states_and_provider_errors_store_nothing_and_call_nothing() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, port) = daemon_with(&home, &public_provider("fake", &fake)).await;
    let base = format!("http://127.0.0.1:{port}/oauth/callback");

    // A state nobody issued, and no state at all.
    for query in ["?code=abc&state=forged", "?code=abc"] {
        let (status, page) = callback(&Url::parse(&format!("{base}{query}")).unwrap()).await;
        assert_eq!(status, 400, "{page}");
        assert!(
            page.contains("not connected") && page.contains("Nothing was stored"),
            "{page}"
        );
    }
    // The user denies access.
    let started = start(&daemon, "denied", "fake", "redirect").await;
    let (status, page) =
        callback(&approve(started["start_url"].as_str().unwrap(), false).await).await;
    assert_eq!(status, 400);
    assert!(
        page.contains("access_denied") && page.contains("denied"),
        "{page}"
    );
    // A start link works once.
    let second = no_redirects()
        .get(started["start_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 410);
    assert_eq!(fake.token_calls(), 0, "no token call for any of these");

    // The exchange fails at the provider.
    let started = start(&daemon, "broken", "fake", "redirect").await;
    let back = approve(started["start_url"].as_str().unwrap(), true).await;
    fake.push([Reply::oauth_error(
        400,
        "invalid_grant",
        "code doesn't exist or has expired",
    )]);
    let (status, page) = callback(&back).await;
    assert_eq!(status, 400);
    assert!(page.contains("exchanging the code failed"), "{page}");
    // Replaying the same callback: the state is used up, so no second token call.
    let calls = fake.token_calls();
    let (status, _) = callback(&back).await;
    assert_eq!(status, 400);
    assert_eq!(fake.token_calls(), calls);

    let (_, accounts) = daemon.request("GET", "/v1/accounts", None).await;
    assert_eq!(accounts["accounts"], json!([]), "nothing was stored");
    let (_, flow) = daemon
        .request(
            "GET",
            &format!("/v1/connect/{}", started["ticket"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(flow["status"], "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_naming_another_issuer_is_refused() {
    let first = FakeProvider::start().await;
    let second = FakeProvider::start().await;
    let home = Home::new();
    let providers = format!(
        "[providers.first]\npreset = \"generic\"\nclient_id = \"cli\"\nauth_method = \"none\"\nissuer = \"{}\"\n\
         [providers.second]\npreset = \"generic\"\nclient_id = \"cli\"\nauth_method = \"none\"\nissuer = \"{}\"\n",
        first.base_url(),
        second.base_url()
    );
    let (daemon, _) = daemon_with(&home, &providers).await;
    // The answer to a flow started at `first` claims to come from `second`.
    first.set_callback_iss(Some(second.base_url()));
    let started = start(&daemon, "mixed", "first", "redirect").await;
    let (status, page) =
        callback(&approve(started["start_url"].as_str().unwrap(), true).await).await;
    assert_eq!(status, 400);
    assert!(page.contains("mix-up"), "{page}");
    assert_eq!(first.token_calls() + second.token_calls(), 0);
    // With its own issuer the same flow works.
    first.set_callback_iss(Some(first.base_url()));
    let started = start(&daemon, "mixed", "first", "redirect").await;
    let (status, page) =
        callback(&approve(started["start_url"].as_str().unwrap(), true).await).await;
    assert_eq!(status, 200, "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_urls_accept_the_authorize_servers_own_iss_or_the_configured_issuer() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let other = FakeProvider::start().await;
    // No issuer configured: an `iss` from the authorize URL's origin is genuine (Keycloak,
    // panva oidc-provider send one); any other is a mix-up.
    let providers = format!(
        "{}[providers.stated]\npreset = \"generic\"\nclient_id = \"cli\"\nauth_method = \"none\"\ntoken_url = \"{}\"\nauthorize_url = \"{}\"\nissuer = \"{}/realms/x\"\n",
        public_provider("explicit", &fake),
        fake.token_url(),
        fake.authorize_url(),
        fake.base_url()
    );
    let (daemon, _) = daemon_with(&home, &providers).await;
    let connect = |provider: &'static str| {
        let daemon = &daemon;
        async move {
            let started = start(daemon, "acct", provider, "redirect").await;
            callback(&approve(started["start_url"].as_str().unwrap(), true).await).await
        }
    };
    fake.set_callback_iss(Some(fake.base_url()));
    let (status, page) = connect("explicit").await;
    assert_eq!(status, 200, "{page}");
    fake.set_callback_iss(Some(other.base_url()));
    let (status, page) = connect("explicit").await;
    assert_eq!(status, 400);
    assert!(page.contains("mix-up"), "{page}");
    // An issuer beside explicit URLs is what `iss` must equal.
    fake.set_callback_iss(Some(format!("{}/realms/x", fake.base_url())));
    let (status, page) = connect("stated").await;
    assert_eq!(status, 200, "{page}");
    fake.set_callback_iss(Some(fake.base_url()));
    let (status, _) = connect("stated").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_replaces_the_grant_only_once_the_new_one_works() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, _) = daemon_with(&home, &public_provider("fake", &fake)).await;
    daemon.import("files", &fake.grant("old"));
    fake.push([Reply::oauth_error(400, "invalid_grant", "revoked")]);
    daemon
        .request("POST", "/v1/accounts/files/refresh", None)
        .await;
    assert_eq!(
        daemon.request("GET", "/v1/accounts/files", None).await.1["status"],
        "needs_reauth"
    );
    // A reconnect the user denies leaves everything as it was.
    let started = start(&daemon, "files", "fake", "redirect").await;
    callback(&approve(started["start_url"].as_str().unwrap(), false).await).await;
    assert_eq!(
        daemon.request("GET", "/v1/accounts/files", None).await.1["status"],
        "needs_reauth"
    );
    // An approved one brings the account back.
    let started = start(&daemon, "files", "fake", "redirect").await;
    let (status, _) = callback(&approve(started["start_url"].as_str().unwrap(), true).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        daemon.request("GET", "/v1/accounts/files", None).await.1["status"],
        "active"
    );
    assert_eq!(daemon.request("GET", "/v1/token/files", None).await.0, 200);
}

/// Runs `tokenbroker connect` interactively; returns it with its stdout lines.
fn spawn_connect(
    daemon: &Daemon,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(BINARY)
        .arg("connect")
        .args(args)
        .env("TOKENBROKER_SOCKET", &daemon.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_no_redirect_flow_reads_the_code_the_provider_shows() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, _) = daemon_with(&home, &public_provider("fake", &fake)).await;
    let (mut child, mut lines) =
        spawn_connect(&daemon, &["files", "--provider", "fake", "--no-redirect"]);
    let authorize = Url::parse(&lines.next().unwrap().unwrap()).unwrap();
    assert!(
        authorize.query_pairs().all(|(k, _)| k != "redirect_uri"),
        "no redirect_uri: {authorize}"
    );
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.push(("decision".into(), "allow".into()));
    let page = reqwest::Client::new()
        .post(fake.authorize_url())
        .form(&form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let code = page
        .split("<code id=\"code\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    let result = lines.next().unwrap().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(result.starts_with("connected files at fake"), "{result}");
    let exchange = &fake.requests()[0];
    assert!(
        !exchange.form.contains_key("redirect_uri"),
        "omitted at the exchange too"
    );
    assert!(exchange.form.contains_key("code_verifier"));
    assert_eq!(daemon.request("GET", "/v1/token/files", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_flow_polls_slows_down_and_connects() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, _) = daemon_with(&home, &public_provider("fake", &fake)).await;
    fake.push([Reply::oauth_error(400, "slow_down", "polling too fast")]);
    let (mut child, mut lines) = spawn_connect(&daemon, &["tv", "--provider", "fake", "--device"]);
    assert_eq!(lines.next().unwrap().unwrap(), "WDJB-MJHT");
    fake.wait_for_calls(2, Duration::from_secs(10)).await; // slow_down, then pending
    fake.approve_device();
    support::wait_bounded(&mut child, Duration::from_secs(20));
    let result = lines.next().and_then(Result::ok).unwrap_or_default();
    if !result.starts_with("connected tv at fake") {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        panic!(
            "device flow did not connect: {result:?}\n{stderr}\n{}",
            daemon.logs()
        );
    }
    let polls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.form["grant_type"].ends_with("device_code"))
        .collect();
    // Interval 1 s; after slow_down it is 6 s for good.
    let gap = polls[1].received_at - polls[0].received_at;
    assert!(
        gap >= Duration::from_millis(5900),
        "slow_down honoured: {gap:?}"
    );
    assert_eq!(daemon.request("GET", "/v1/token/tv", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_device_flow_stops_and_says_so() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, _) = daemon_with(&home, &public_provider("fake", &fake)).await;
    fake.push([Reply::oauth_error(400, "access_denied", "the user said no")]);
    let (child, lines) = spawn_connect(&daemon, &["tv", "--provider", "fake", "--device"]);
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        lines.map(Result::unwrap).collect::<Vec<_>>(),
        vec!["WDJB-MJHT"]
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("access_denied"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(fake.token_calls(), 1, "no polling after access_denied");
    assert_eq!(daemon.request("GET", "/v1/accounts/tv", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_dropbox_grant_refreshes_first_and_deletes_only_after_confirmation() {
    let fake = FakeProvider::start().await;
    fake.set_expires_in(json!(30)); // less than a minute left: revocation refreshes first
    let home = Home::new();
    home.write("secret", "app-secret");
    let providers = format!(
        "[providers.dbx]\npreset = \"dropbox\"\nclient_id = \"app\"\nclient_secret_file = \"secret\"\ntoken_url = \"{}\"\nrevoke_url = \"{}\"\n\
         [providers.broken]\npreset = \"dropbox\"\nclient_id = \"app\"\nclient_secret_file = \"secret\"\ntoken_url = \"{}\"\nrevoke_url = \"http://127.0.0.1:9/2/auth/token/revoke\"\n",
        fake.token_url(),
        fake.dropbox_revoke_url(),
        fake.token_url()
    );
    let (daemon, _) = daemon_with(&home, &providers).await;
    let refresh = fake.grant("dbx");
    let output = daemon.cli(
        &[
            "import",
            "kept",
            "--provider",
            "broken",
            "--refresh-token-stdin",
        ],
        Some(&fake.grant("broken")),
    );
    assert!(output.status.success());
    let output = daemon.cli(
        &[
            "import",
            "gone",
            "--provider",
            "dbx",
            "--refresh-token-stdin",
        ],
        Some(&refresh),
    );
    assert!(output.status.success());

    // The provider cannot be reached: the command fails and the account stays.
    let failed = daemon.cli(&["remove", "kept", "--revoke"], None);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("revocation failed"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    assert_eq!(
        daemon.request("GET", "/v1/accounts/kept", None).await.0,
        200
    );

    let calls = fake.token_calls();
    let removed = daemon.cli(&["remove", "gone", "--revoke"], None);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(fake.token_calls(), calls + 1, "refreshed before revoking");
    let fresh = fake.issued_access_tokens().last().unwrap().clone();
    assert_eq!(
        fake.revocations().last().unwrap(),
        &("/2/auth/token/revoke".to_owned(), fresh),
        "revoked with the fresh token"
    );
    assert!(!fake.is_valid(&refresh), "the refresh token died with it");
    assert_eq!(
        daemon.request("GET", "/v1/accounts/gone", None).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_providers_revoke_the_refresh_token_with_rfc_7009() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, _) = daemon_with(&home, &public_provider("fake", &fake)).await;
    let refresh = fake.grant("r");
    daemon.import("files", &refresh);
    let removed = daemon.cli(&["remove", "files", "--revoke"], None);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(
        fake.revocations(),
        vec![("/oauth2/revoke".to_owned(), refresh.clone())]
    );
    assert!(!fake.is_valid(&refresh));
    assert_eq!(
        daemon.request("GET", "/v1/accounts/files", None).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_cancels_the_pending_flow() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let (daemon, _) = daemon_with(&home, &public_provider("fake", &fake)).await;
    let (child, mut lines) = spawn_connect(&daemon, &["files", "--provider", "fake"]);
    let start_url = lines.next().unwrap().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cancelled"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let gone = no_redirects().get(&start_url).send().await.unwrap();
    assert_eq!(
        gone.status(),
        410,
        "the cancelled flow's link no longer works"
    );
    assert!(fake.authorize_requests().is_empty());
}

/// A hostile provider's device-flow texts carry terminal escape sequences (clear the screen,
/// set the window title): `connect --device` prints them without the escapes.
#[tokio::test(flavor = "multi_thread")]
async fn a_providers_escape_sequences_do_not_reach_the_terminal() {
    let fake = FakeProvider::start().await;
    fake.set_device_texts("WDJB\u{1b}[2J-MJHT", "/device\u{1b}]0;pwned\u{7}");
    let home = Home::new();
    let (daemon, _) = daemon_with(&home, &public_provider("fake", &fake)).await;
    let (mut child, mut lines) = spawn_connect(&daemon, &["tv", "--provider", "fake", "--device"]);
    let code = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, "WDJB?[2J-MJHT");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
    assert!(stderr.contains("/device?]0;pwned?"), "{stderr:?}");
}
