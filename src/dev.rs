//! `serve --dev`: try tokenbroker with nothing to set up.
//!
//! A built-in mock provider named `dev` on an ephemeral loopback port issues 60-second
//! tokens and has an authorize page that approves at once (so `connect` can be tried end to
//! end, in a browser or with `--no-redirect`); an account `demo` is connected to it; the store lives in a temporary directory
//! that disappears on exit, and the socket at the per-user path that the client commands
//! look for (`config::dev_socket_path`). `TOKENBROKER__…` overrides still apply.

use std::path::Path;

use anyhow::Context as _;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::config::{self, Env, Settings};

/// How long the mock provider's tokens live.
pub const DEV_TOKEN_LIFETIME_SECS: u64 = 60;
const DEV_REFRESH_TOKEN: &str = "dev-refresh-token";
/// The API key of the dev mode's all-powerful TCP client; printed, because nothing is secret here.
pub const DEV_API_KEY: &str = "dev";

/// A running dev environment; dropping it stops the mock provider and deletes the files.
#[derive(Debug)]
pub struct DevEnvironment {
    /// The configuration the daemon runs with.
    pub settings: Settings,
    _dir: tempfile::TempDir,
    mock: JoinHandle<()>,
}

impl Drop for DevEnvironment {
    fn drop(&mut self) {
        self.mock.abort();
    }
}

/// Starts the mock provider and builds the dev configuration.
///
/// # Errors
/// A temporary directory or loopback port cannot be had, or an override is invalid.
pub async fn prepare(env: &Env) -> anyhow::Result<DevEnvironment> {
    let dir = tempfile::Builder::new()
        .prefix("tokenbroker-dev-")
        .tempdir()
        .context("while creating a temporary directory")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("while starting the mock provider")?;
    let port = listener.local_addr()?.port();
    let mock = tokio::spawn(async move {
        let router = Router::new()
            .route("/token", post(mock_token))
            .route("/authorize", get(mock_authorize))
            .with_state(Codes::default());
        let _ = axum::serve(listener, router).await;
    });
    std::fs::write(dir.path().join("demo-refresh-token"), DEV_REFRESH_TOKEN)?;
    let socket = config::dev_socket_path(env);
    prepare_socket_dir(&socket)?;
    let toml = dev_toml(dir.path(), &socket, port);
    let settings = config::load_str(&toml, "the built-in dev configuration", dir.path(), env)?;
    Ok(DevEnvironment {
        settings,
        _dir: dir,
        mock,
    })
}

/// Makes the dev socket's directory, private to this user, unless it exists; refuses one
/// that someone else could write to (they could stand in for the daemon).
fn prepare_socket_dir(socket: &Path) -> anyhow::Result<()> {
    let Some(parent) = socket.parent() else {
        return Ok(());
    };
    match std::fs::symlink_metadata(parent) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("while creating {}", parent.display()))
        }
        Err(error) => {
            Err(error).with_context(|| format!("while checking {}", parent.display()))
        }
        Ok(_) if config::is_private_dir(parent) => Ok(()),
        Ok(_) => anyhow::bail!(
            "{} is not a directory of this user's that only it can write to; remove it, or set TOKENBROKER__SERVER__SOCKET",
            parent.display()
        ),
    }
}

fn dev_toml(dir: &Path, socket: &Path, port: u16) -> String {
    let socket = socket.display();
    let dir = dir.display();
    let key_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        DEV_API_KEY.as_bytes(),
    ));
    format!(
        r#"
[server]
socket = "{socket}"
http = "127.0.0.1:8765"

[store]
dir = "{dir}/store"

[refresh]
check_interval = "5s"

[providers.dev]
preset = "generic"
client_id = "tokenbroker-dev"
auth_method = "none"
token_url = "http://127.0.0.1:{port}/token"
authorize_url = "http://127.0.0.1:{port}/authorize"

[[clients]]
name = "dev"
api_key_sha256 = "{key_hash}"
accounts = ["*"]
admin = true

[accounts.demo]
provider = "dev"
refresh_token_file = "demo-refresh-token"
"#
    )
}

/// The warning printed at start: dev mode secures nothing.
pub fn banner(settings: &Settings) -> String {
    let http = settings
        .api
        .http
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    let socket = settings.api.socket.display();
    format!(
        "\n\
        ************************************************************************\n\
        *  DEV MODE: NOTHING IS SECURED. Temporary store, a mock provider,     *\n\
        *  any local user who can reach the socket or port is an admin or may  *\n\
        *  be. Never use --dev for real accounts.                              *\n\
        ************************************************************************\n\
        socket: {socket}\n\
        http:   {http}\n\
        account `demo` (provider `dev`, tokens live {DEV_TOKEN_LIFETIME_SECS}s) is connected. Try:\n\
        \x20 curl --unix-socket {socket} http://localhost/v1/token/demo\n\
        \x20 curl -H 'Authorization: Bearer {DEV_API_KEY}' http://{http}/v1/token/demo\n\
        \x20 cargo run -- accounts        (client commands find this socket by themselves)\n"
    )
}

/// Authorization codes the mock has issued and not yet seen exchanged.
type Codes = Arc<Mutex<HashSet<String>>>;

#[derive(Debug, serde::Deserialize)]
struct MockRequest {
    grant_type: String,
    refresh_token: Option<String>,
    code: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct AuthorizeQuery {
    redirect_uri: Option<String>,
    state: Option<String>,
}

/// Approves at once: back to a loopback `redirect_uri` with a code, or, without one (the
/// `--no-redirect` flow), a page that shows the code to paste.
async fn mock_authorize(
    State(codes): State<Codes>,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    let code = format!("dev-code-{:016x}", rand::random::<u64>());
    codes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(code.clone());
    let Some(redirect_uri) = query.redirect_uri else {
        return Html(format!(
            "<!doctype html><title>tokenbroker dev</title><p>Approved. Your code: <code>{code}</code></p>"
        ))
        .into_response();
    };
    // Only back to this machine: the mock is no open redirector.
    let Ok(mut target) = url::Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    if !matches!(target.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")) {
        return (
            StatusCode::BAD_REQUEST,
            "the dev provider redirects only to loopback",
        )
            .into_response();
    }
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", query.state.as_deref().unwrap_or_default());
    Redirect::to(target.as_str()).into_response()
}

async fn mock_token(State(codes): State<Codes>, Form(request): Form<MockRequest>) -> Response {
    let refused = |description: &str| {
        let body = json!({"error": "invalid_grant", "error_description": description});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    };
    let access_token = format!("dev-{:032x}", rand::random::<u128>());
    let lifetime = DEV_TOKEN_LIFETIME_SECS;
    match request.grant_type.as_str() {
        "refresh_token" if request.refresh_token.as_deref() == Some(DEV_REFRESH_TOKEN) => Json(
            json!({"access_token": access_token, "token_type": "bearer", "expires_in": lifetime}),
        )
        .into_response(),
        "authorization_code" => {
            let known = request.code.is_some_and(|code| {
                codes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remove(&code)
            });
            if !known {
                return refused("the dev provider issued no such code, or it was used");
            }
            Json(json!({"access_token": access_token, "token_type": "bearer", "expires_in": lifetime, "refresh_token": DEV_REFRESH_TOKEN}))
                .into_response()
        }
        _ => refused("the dev provider knows one refresh token"),
    }
}
