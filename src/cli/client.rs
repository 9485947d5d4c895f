//! The client side of the HTTP API over the Unix socket: finding the daemon, asking it (an
//! account name always as one escaped path segment), and turning its errors into messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::de::DeserializeOwned;

use crate::api::types::{AccountReadyBody, ErrorBody, HealthBody};
use crate::config::{self, Env};

use super::args::Daemon;

/// How long a client command waits for the daemon (a token may need a refresh first).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// How often `wait` asks again.
const WAIT_POLL: Duration = Duration::from_millis(250);

pub(super) struct Client {
    http: reqwest::Client,
    socket: PathBuf,
}

/// `configured`, unless no socket is there and a dev daemon's is (`serve --dev` in another
/// terminal): then the dev socket, saying so.
fn fall_back_to_dev(configured: PathBuf, env: &Env) -> PathBuf {
    let dev = config::dev_socket_path(env);
    let dev_is_there = dev.parent().is_some_and(config::is_private_dir) && dev.exists();
    if configured.exists() || !dev_is_there {
        return configured;
    }
    eprintln!(
        "tokenbroker: no socket at {}; using the dev daemon's socket {}",
        configured.display(),
        dev.display()
    );
    dev
}

/// Why the daemon's socket could not be reached, with the operating system's error and what
/// to do about it.
fn unreachable(socket: &Path, error: &reqwest::Error) -> anyhow::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let io = std::iter::from_fn(|| {
        let current = cause?;
        cause = current.source();
        Some(current)
    })
    .find_map(|e| e.downcast_ref::<std::io::Error>());
    let socket = socket.display();
    let Some(io) = io else {
        return anyhow::anyhow!("cannot talk to tokenbroker at {socket}: {error}");
    };
    let advice = match io.kind() {
        std::io::ErrorKind::NotFound => "no socket there (ENOENT): is the daemon running, and is this its server.socket? (see --socket or TOKENBROKER_SOCKET)",
        std::io::ErrorKind::PermissionDenied => "permission denied (EACCES): your user must be in the socket's group (server.socket_group), or run as a member of it",
        std::io::ErrorKind::ConnectionRefused => "connection refused (ECONNREFUSED): a socket file is there but no daemon listens on it; start tokenbroker",
        _ => return anyhow::anyhow!("cannot reach tokenbroker at {socket}: {io}"),
    };
    anyhow::anyhow!("cannot reach tokenbroker at {socket}: {advice}")
}

impl Client {
    pub(super) fn new(daemon: &Daemon, env: &Env) -> anyhow::Result<Self> {
        let socket = match &daemon.socket {
            Some(socket) => socket.clone(),
            None => fall_back_to_dev(config::socket_path(&daemon.config, env), env),
        };
        crate::provider::install_crypto_provider();
        let http = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .timeout(CLIENT_TIMEOUT)
            .build()?;
        Ok(Self { http, socket })
    }

    pub(super) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self.http.request(method, format!("http://localhost{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| unreachable(&self.socket, &error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        match response.json::<ErrorBody>().await {
            Ok(error) => bail!("{} ({})", error.message, error.error),
            Err(_) => bail!("the daemon answered HTTP {status}"),
        }
    }

    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let response = self.send(method, path, body).await?;
        response
            .json()
            .await
            .context("the daemon's answer is not what this client expects")
    }

    /// `/healthz` or `/readyz`: the body whatever the status, an error naming the problems
    /// unless it is 200.
    pub(super) async fn health(&self, route: &str) -> anyhow::Result<HealthBody> {
        let response = self
            .http
            .get(format!("http://localhost{route}"))
            .send()
            .await
            .map_err(|error| unreachable(&self.socket, &error))?;
        let status = response.status();
        let body: HealthBody = response
            .json()
            .await
            .context("the daemon's answer is not what this client expects")?;
        if !status.is_success() {
            bail!("{route}: {} ({})", body.status, body.problems.join("; "));
        }
        Ok(body)
    }

    /// Asks `/readyz/{account}` until it answers 200, for at most `timeout`. A daemon that
    /// cannot be reached yet (not started, its socket not there) and an account that does
    /// not exist yet are waited for too; a refusal that waiting cannot change ends it at
    /// once.
    ///
    /// # Errors
    /// The timeout passed (saying why the account is not ready), or the daemon refused.
    pub(super) async fn wait_ready(
        &self,
        account: &str,
        timeout: Duration,
        min_valid: Option<Duration>,
    ) -> anyhow::Result<()> {
        let query = min_valid
            .map(|d| format!("?min_valid={}", d.as_secs()))
            .unwrap_or_default();
        let url = format!("http://localhost/readyz/{}{query}", segment(account));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let why = match self.http.get(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    let body: AccountReadyBody = response
                        .json()
                        .await
                        .context("the daemon's answer is not what this client expects")?;
                    body.reason.unwrap_or(body.status)
                }
                Ok(response) => {
                    let status = response.status();
                    let said = match response.json::<ErrorBody>().await {
                        Ok(error) => format!("{} ({})", error.message, error.error),
                        Err(_) => format!("the daemon answered HTTP {status}"),
                    };
                    // An account may be imported or connected while we wait (and a client
                    // restricted to some accounts is told 403 for one that does not exist
                    // yet); any other refusal would not change.
                    if !matches!(status.as_u16(), 403 | 404) {
                        bail!("{said}");
                    }
                    said
                }
                Err(error) => format!("{:#}", unreachable(&self.socket, &error)),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                bail!(
                    "{account} is not ready after {}: {why}",
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(WAIT_POLL.min(deadline - now)).await;
        }
    }

    pub(super) async fn call_empty(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<()> {
        self.send(method, path, None).await.map(drop)
    }
}

/// An account name as a path segment: anything not in the name alphabet is escaped, so a
/// bad name reaches the daemon (and is refused there) rather than changing the path.
pub(super) fn segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_change_the_request_path() {
        assert_eq!(segment("a/../b"), "a%2F..%2Fb");
        assert_eq!(segment("ok-name.1"), "ok-name.1");
    }
}
