//! OAuth providers: presets, discovery, and the token-endpoint client.
//!
//! This is the only module that makes outbound requests. It knows values (secrets, tokens),
//! never the store or the broker; it turns every answer into a `TokenResponse` or a
//! classified `ProviderError` (see `error`).

mod error;
mod flow;
mod preset;
mod response;

use std::sync::Once;
use std::time::Duration;

use reqwest::header::{ACCEPT, DATE, RETRY_AFTER};
use serde_json::Value;
use tokio::sync::OnceCell;
use url::Url;

pub use self::error::{FailureKind, ProviderError};
pub use self::flow::{random_token, DeviceAuthorization, Pkce};
pub use self::preset::{Preset, Revocation, CLIENT_ID_PLACEHOLDER};
pub use self::response::{
    parse as parse_token_response, Headers as AnswerHeaders, TokenResponse, MAX_LIFETIME,
};
use crate::secret::{ClientSecret, RefreshToken};

/// The most we read of any provider answer.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const USER_AGENT: &str = concat!("tokenbroker/", env!("CARGO_PKG_VERSION"));

/// How the client authenticates at the token endpoint (never two ways at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post,
    /// A public (PKCE) client: `client_id` in the body, no secret.
    None,
}

/// A provider's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The token endpoint.
    pub token: Url,
    /// The authorization endpoint (for connecting accounts).
    pub authorize: Option<Url>,
    /// The revocation endpoint.
    pub revoke: Option<Url>,
    /// The device authorization endpoint (RFC 8628).
    pub device: Option<Url>,
}

/// Where a provider's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per provider, built once
pub enum EndpointSource {
    /// Known up front (presets, or explicit URLs).
    Fixed(Endpoints),
    /// Looked up at first use from the issuer's `.well-known` metadata.
    Discover {
        /// The issuer URL.
        issuer: Url,
    },
}

/// One configured provider, as plain data.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name accounts refer to.
    pub name: String,
    /// Which family.
    pub preset: Preset,
    /// The OAuth client id.
    pub client_id: String,
    /// The client secret, absent for public clients.
    pub client_secret: Option<ClientSecret>,
    /// How to present the client credentials.
    pub auth_method: AuthMethod,
    /// Endpoint URLs or the issuer to discover them from.
    pub endpoints: EndpointSource,
    /// Scopes to request when connecting.
    pub scopes: Vec<String>,
    /// The issuer a callback's `iss` must name (discovery's issuer, or a preset's).
    pub issuer: Option<String>,
    /// Lifetime assumed when a response has no usable `expires_in`.
    pub default_lifetime: Duration,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on a whole request, body included.
    pub timeout: Duration,
}

/// A provider's free text made safe to show: short, printable, no token-shaped runs.
pub fn clean_text(text: &str) -> String {
    response::clean(text, &[])
}

/// Checks that an endpoint is https, or http on a loopback host.
///
/// # Errors
/// A description of what is wrong, for a configuration message.
pub fn check_endpoint(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err("must use https (plain http is allowed only for loopback hosts)".into()),
        other => Err(format!("has unsupported scheme {other:?}")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A provider ready to answer refreshes.
#[derive(Debug)]
pub struct Provider {
    config: Config,
    http: reqwest::Client,
    discovered: OnceCell<Endpoints>,
}

/// An HTTP client for requests the daemon sends on its own behalf (notification webhooks),
/// built like a provider's: timeouts set, redirects off, rustls only.
///
/// # Panics
/// The TLS stack cannot be set up (it was when the providers' clients were built).
pub fn outbound_client(timeout: std::time::Duration) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .expect("the TLS stack was set up for the providers")
}

impl Provider {
    /// Builds the provider's HTTP client: timeouts set, redirects off (a 307 would resend
    /// the refresh token elsewhere), rustls only.
    ///
    /// # Errors
    /// The TLS stack cannot be set up.
    pub fn new(config: Config) -> Result<Self, ProviderError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(ProviderError::Client)?;
        Ok(Self {
            config,
            http,
            discovered: OnceCell::new(),
        })
    }

    /// The provider's configured name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The provider's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Exchanges a refresh token for a new access token.
    ///
    /// # Errors
    /// Every failure, classified (see `ProviderError::kind`).
    pub async fn refresh(
        &self,
        refresh_token: &RefreshToken,
    ) -> Result<TokenResponse, ProviderError> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        self.token_request(form, &[refresh_token.expose()]).await
    }

    /// Posts a grant to the token endpoint with the client's authentication and parses the
    /// answer; `sent_secrets` are scrubbed from any error text the provider echoes.
    async fn token_request(
        &self,
        mut form: Vec<(&str, &str)>,
        sent_secrets: &[&str],
    ) -> Result<TokenResponse, ProviderError> {
        let endpoints = self.endpoints().await?;
        let request = self
            .http
            .post(endpoints.token.clone())
            .header(ACCEPT, "application/json");
        let request = self.authenticate(request, &mut form);
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| request_error("token", e))?;
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (retry_after, date) = (header(RETRY_AFTER), header(DATE));
        let body = read_capped(response, "token").await?;
        let mut secrets = sent_secrets.to_vec();
        if let Some(secret) = &self.config.client_secret {
            secrets.push(secret.expose());
        }
        response::parse(
            status,
            response::Headers {
                retry_after: retry_after.as_deref(),
                date: date.as_deref(),
            },
            &body,
            self.config.default_lifetime,
            &secrets,
        )
    }

    /// Adds the client's credentials, one way only: Basic, body, or just the id.
    fn authenticate<'a>(
        &'a self,
        request: reqwest::RequestBuilder,
        form: &mut Vec<(&'a str, &'a str)>,
    ) -> reqwest::RequestBuilder {
        match (&self.config.auth_method, &self.config.client_secret) {
            (AuthMethod::Basic, Some(secret)) => {
                // RFC 6749 §2.3.1: form-encode id and secret before Basic encoding.
                let id: String =
                    url::form_urlencoded::byte_serialize(self.config.client_id.as_bytes())
                        .collect();
                let secret: String =
                    url::form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
                request.basic_auth(id, Some(secret))
            }
            (AuthMethod::Post, Some(secret)) => {
                form.push(("client_id", &self.config.client_id));
                form.push(("client_secret", secret.expose()));
                request
            }
            _ => {
                form.push(("client_id", &self.config.client_id));
                request
            }
        }
    }

    /// The endpoints, discovering them on first use if configured with an issuer.
    ///
    /// # Errors
    /// Discovery failed (retried at the next use).
    pub async fn endpoints(&self) -> Result<&Endpoints, ProviderError> {
        match &self.config.endpoints {
            EndpointSource::Fixed(endpoints) => Ok(endpoints),
            EndpointSource::Discover { issuer } => {
                self.discovered
                    .get_or_try_init(|| self.discover(issuer))
                    .await
            }
        }
    }

    /// RFC 8414 / OpenID Connect discovery: `openid-configuration`, then
    /// `oauth-authorization-server`; the metadata's `issuer` must match ours.
    async fn discover(&self, issuer: &Url) -> Result<Endpoints, ProviderError> {
        let fail = |reason: String| ProviderError::Discovery {
            issuer: issuer.to_string(),
            reason,
        };
        let base = issuer.as_str().trim_end_matches('/');
        let path = issuer.path().trim_end_matches('/');
        let origin = issuer.origin().ascii_serialization();
        let candidates = [
            format!("{base}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
        ];
        let mut last_error = None;
        for candidate in candidates {
            let url = Url::parse(&candidate).map_err(|e| fail(e.to_string()))?;
            let response = match self
                .http
                .get(url)
                .header(ACCEPT, "application/json")
                .send()
                .await
            {
                Ok(response) => response,
                Err(error) => {
                    last_error = Some(request_error("discovery", error));
                    continue;
                }
            };
            if !response.status().is_success() {
                last_error = Some(fail(format!(
                    "{candidate} answered HTTP {}",
                    response.status().as_u16()
                )));
                continue;
            }
            let body = read_capped(response, "discovery").await?;
            let metadata: Value = serde_json::from_slice(&body)
                .map_err(|_| fail(format!("{candidate} is not JSON")))?;
            return endpoints_from_metadata(issuer, &metadata).map_err(fail);
        }
        Err(last_error.unwrap_or_else(|| fail("no metadata found".into())))
    }
}

fn endpoints_from_metadata(issuer: &Url, metadata: &Value) -> Result<Endpoints, String> {
    let claimed = metadata
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or("metadata has no issuer")?;
    if claimed.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!(
            "metadata names issuer {claimed:?}, not the configured one"
        ));
    }
    let endpoint = |key: &str| -> Result<Option<Url>, String> {
        let Some(text) = metadata.get(key).and_then(Value::as_str) else {
            return Ok(None);
        };
        let url = Url::parse(text).map_err(|e| format!("{key} is not a URL: {e}"))?;
        check_endpoint(&url).map_err(|problem| format!("{key} {problem}"))?;
        Ok(Some(url))
    };
    Ok(Endpoints {
        token: endpoint("token_endpoint")?.ok_or("metadata has no token_endpoint")?,
        authorize: endpoint("authorization_endpoint")?,
        revoke: endpoint("revocation_endpoint")?,
        device: endpoint("device_authorization_endpoint")?,
    })
}

fn request_error(endpoint: &'static str, error: reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        ProviderError::Timeout { endpoint }
    } else {
        ProviderError::Network {
            endpoint,
            source: error.without_url(),
        }
    }
}

/// Reads a body, refusing more than `MAX_RESPONSE_BYTES` (checked as it streams in, so a
/// hostile endless body costs at most that much memory).
async fn read_capped(
    mut response: reqwest::Response,
    endpoint: &'static str,
) -> Result<Vec<u8>, ProviderError> {
    let too_large = || ProviderError::Malformed {
        reason: format!("the {endpoint} response is larger than {MAX_RESPONSE_BYTES} bytes"),
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| request_error(endpoint, e))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// rustls needs a process-wide crypto provider before the first client is built.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod client_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_unless_loopback() {
        for good in [
            "https://api.dropboxapi.com/oauth2/token",
            "http://127.0.0.1:9/t",
            "http://localhost/t",
            "http://[::1]:8/t",
        ] {
            assert!(check_endpoint(&Url::parse(good).unwrap()).is_ok(), "{good}");
        }
        for bad in [
            "http://example.com/t",
            "http://10.0.0.1/t",
            "ftp://127.0.0.1/t",
            "http://127.0.0.1.example.com/t",
        ] {
            assert!(check_endpoint(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_must_name_our_issuer() {
        let issuer = Url::parse("https://login.example.com").unwrap();
        let good = serde_json::json!({"issuer": "https://login.example.com/", "token_endpoint": "https://login.example.com/token"});
        assert_eq!(
            endpoints_from_metadata(&issuer, &good)
                .unwrap()
                .token
                .as_str(),
            "https://login.example.com/token"
        );
        let mixed_up = serde_json::json!({"issuer": "https://evil.example", "token_endpoint": "https://evil.example/token"});
        assert!(endpoints_from_metadata(&issuer, &mixed_up).is_err());
        let insecure = serde_json::json!({"issuer": "https://login.example.com", "token_endpoint": "http://login.example.com/token"});
        assert!(endpoints_from_metadata(&issuer, &insecure).is_err());
    }
}
