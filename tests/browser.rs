//! End to end in a real browser: headless Chromium, driven through chromedriver's WebDriver
//! API, opens the start link, renders the fake provider's consent page and clicks Allow,
//! lands on tokenbroker's success page; the account is then served. A screenshot of the
//! success page is saved as a test artefact (target/test-artifacts/connect-success.png).
#![allow(clippy::unwrap_used)]
#![allow(clippy::print_stderr)] // says why the test is skipped
#![allow(clippy::disallowed_methods)] // bounding waits on other processes takes real time

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::Home;
use tokenbroker::testing::FakeProvider;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    process: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Self {
            process,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            if let Ok(response) = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
            {
                if response
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == json!(true))
                {
                    return driver;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            answer["value"].get("error").is_none(),
            "webdriver {path}: {answer}"
        );
        answer["value"].clone()
    }
}

fn artifact_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-artifacts")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_connects_an_account_in_a_real_browser() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        support::missing("Debian's chromium and chromium-driver");
        return;
    }
    let fake = FakeProvider::start().await;
    fake.set_dropbox_mode(true);
    let home = Home::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[server]\nsocket = \"{}\"\nhttp = \"127.0.0.1:{port}\"\n[store]\ndir = \"{}\"\n\
         [providers.dropbox]\npreset = \"dropbox\"\nclient_id = \"app\"\nauth_method = \"none\"\ntoken_url = \"{}\"\nauthorize_url = \"{}\"\n",
        home.socket().display(),
        home.store().display(),
        fake.token_url(),
        fake.authorize_url()
    );
    let daemon = home.start(&home.write("config.toml", &config), &[]).await;
    let (status, started) = daemon
        .request(
            "POST",
            "/v1/connect",
            Some(json!({"account": "dropbox-main", "provider": "dropbox"})),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    let start_url = started["start_url"].as_str().unwrap();

    let driver = Driver::start().await;
    let profile = home.path("chromium-profile");
    let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": CHROMIUM,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=900,600",
                 format!("--user-data-dir={}", profile.display())]
    }}}});
    let session = driver
        .call(reqwest::Method::POST, "/session", Some(capabilities))
        .await;
    let id = session["sessionId"].as_str().unwrap().to_owned();
    driver
        .call(
            reqwest::Method::POST,
            &format!("/session/{id}/url"),
            Some(json!({"url": start_url})),
        )
        .await;
    // The provider's page rendered: find its Allow button and click it.
    let title = driver
        .call(reqwest::Method::GET, &format!("/session/{id}/title"), None)
        .await;
    assert_eq!(title, "Fake provider: authorize");
    let allow = driver
        .call(
            reqwest::Method::POST,
            &format!("/session/{id}/element"),
            Some(json!({"using": "css selector", "value": "#allow"})),
        )
        .await;
    let element = allow[ELEMENT].as_str().unwrap();
    driver
        .call(
            reqwest::Method::POST,
            &format!("/session/{id}/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    let started_waiting = Instant::now();
    loop {
        let url = driver
            .call(reqwest::Method::GET, &format!("/session/{id}/url"), None)
            .await;
        if url.as_str().unwrap().contains("/oauth/callback") {
            break;
        }
        assert!(
            started_waiting.elapsed() < Duration::from_secs(20),
            "the browser never reached the callback: {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let source = driver
        .call(reqwest::Method::GET, &format!("/session/{id}/source"), None)
        .await;
    let source = source.as_str().unwrap();
    assert!(
        source.contains("Account connected") && source.contains("dropbox-main"),
        "{source}"
    );
    let screenshot = driver
        .call(
            reqwest::Method::GET,
            &format!("/session/{id}/screenshot"),
            None,
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::create_dir_all(artifact_dir()).unwrap();
    std::fs::write(artifact_dir().join("connect-success.png"), png).unwrap();
    driver
        .call(reqwest::Method::DELETE, &format!("/session/{id}"), None)
        .await;

    assert_eq!(fake.authorize_requests()[0]["token_access_type"], "offline");
    let (status, token) = daemon.request("GET", "/v1/token/dropbox-main", None).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["access_token"], json!(fake.issued_access_tokens()[0]));
}
