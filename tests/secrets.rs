//! At `RUST_LOG=trace`, nothing the daemon prints contains a token, a secret or a key.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use sha2::{Digest, Sha256};
use support::Home;
use tokenbroker::testing::{FakeProvider, Reply};

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs_even_at_trace() {
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    let home = Home::new();
    let client_secret = "client-SECRET-0123456789";
    let api_key = "api-key-SECRET-abcdef";
    home.write("secret", client_secret);
    let extra = format!(
        r#"
[providers.basic]
preset = "dropbox"
client_id = "app"
client_secret_file = "secret"
token_url = "{token_url}"

[providers.post]
preset = "generic"
client_id = "app"
client_secret_file = "secret"
auth_method = "post"
token_url = "{token_url}"

[[clients]]
name = "sidecar"
api_key_sha256 = "{hash}"
accounts = ["*"]
"#,
        token_url = fake.token_url(),
        hash = hex::encode(Sha256::digest(api_key.as_bytes())),
    );
    let config = home.config(&fake.token_url(), "", &extra);
    let (config, port) = home.with_tcp(&config);
    let mut daemon = home.start(&config, &[("RUST_LOG", "trace")]).await;

    let mut used_refresh_tokens = Vec::new();
    for (account, provider) in [("a-basic", "basic"), ("a-post", "post")] {
        let refresh = fake.grant(account);
        used_refresh_tokens.push(refresh.clone());
        let output = daemon.cli(
            &[
                "import",
                account,
                "--provider",
                provider,
                "--refresh-token-stdin",
            ],
            Some(&refresh),
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let output = daemon.cli(&["token", account], None);
        assert!(output.status.success());
        let (_, body) = daemon
            .request("GET", &format!("/v1/token/{account}"), None)
            .await;
        let rejected = body["access_token"].as_str().unwrap().to_owned();
        daemon
            .request(
                "POST",
                &format!("/v1/token/{account}"),
                Some(json!({"rejected": rejected})),
            )
            .await;
        daemon
            .request("POST", &format!("/v1/accounts/{account}/refresh"), None)
            .await;
    }
    // Over TCP with the API key, then with a wrong key.
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/token/a-basic");
    assert_eq!(
        http.get(&url)
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(format!("{api_key}-wrong"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A provider that echoes the refresh token back in its error.
    let current = fake.valid_refresh_tokens();
    let echoed = format!("refresh token {} is invalid", current.join(" "));
    fake.push([Reply::oauth_error(400, "invalid_grant", &echoed)]);
    daemon
        .request("POST", "/v1/accounts/a-basic/refresh", None)
        .await;
    let (_, accounts) = daemon.request("GET", "/v1/accounts", None).await;
    assert!(daemon.terminate().success());

    let logs = daemon.logs();
    assert!(logs.contains("TRACE"), "the daemon really logged at trace");
    assert!(logs.contains("token served"), "token hand-outs are logged");
    let mut secrets: Vec<String> = fake.issued_access_tokens();
    secrets.extend(fake.valid_refresh_tokens());
    secrets.extend(used_refresh_tokens);
    secrets.extend([client_secret.to_owned(), api_key.to_owned()]);
    assert!(secrets.len() > 8);
    let accounts = accounts.to_string();
    for secret in &secrets {
        let leaks: Vec<String> = logs
            .lines()
            .filter(|line| line.contains(secret.as_str()))
            .map(|line| line.replace(secret.as_str(), "<SECRET>"))
            .collect();
        assert!(
            leaks.is_empty(),
            "the log contains a secret:\n{}",
            leaks.join("\n")
        );
        assert!(
            !accounts.contains(secret.as_str()),
            "the account status contains a secret"
        );
    }
}
