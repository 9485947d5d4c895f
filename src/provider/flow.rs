//! Connecting accounts at the provider: the authorize URL with PKCE, the code exchange, the
//! device grant (RFC 8628), and revocation (Dropbox's bearer route or RFC 7009).

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use super::{
    read_capped, request_error, response, Provider, ProviderError, Revocation, TokenResponse,
};
use crate::secret::{AccessToken, AuthorizationCode, DeviceCode, PkceVerifier, RefreshToken};

/// RFC 8628 §3.5: poll every 5 s when the provider names no interval.
const DEFAULT_DEVICE_INTERVAL: Duration = Duration::from_secs(5);
/// The device grant type.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A PKCE verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// Sent at the exchange.
    pub verifier: PkceVerifier,
    /// Sent at authorize: `BASE64URL(SHA256(verifier))`.
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair: 32 random bytes, base64url-encoded to a 43-character verifier.
    pub fn generate() -> Self {
        Self::from_verifier(PkceVerifier::new(random_token()))
    }

    /// The pair for a given verifier.
    pub fn from_verifier(verifier: PkceVerifier) -> Self {
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.expose().as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

/// 32 random bytes as base64url: for PKCE verifiers, `state` values and connect tickets.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What the provider said when a device flow started.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// Polled with at the token endpoint.
    pub device_code: DeviceCode,
    /// Typed by the user at `verification_uri`.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code filled in, when the provider offers it.
    pub verification_uri_complete: Option<String>,
    /// How long the codes live.
    pub expires_in: Duration,
    /// How long to wait between polls.
    pub interval: Duration,
}

impl Provider {
    /// Whether this client sends PKCE: public clients always, confidential ones where the
    /// provider accepts a verifier beside a secret.
    pub fn uses_pkce(&self) -> bool {
        self.config.client_secret.is_none() || self.config.preset.pkce_with_secret()
    }

    /// The provider's authorize URL for one flow. Without `redirect_uri` the provider shows
    /// the code to the user instead (Dropbox's no-redirect flow).
    ///
    /// # Errors
    /// Discovery failed, or the provider has no authorization endpoint.
    pub async fn authorize_url(
        &self,
        state: &str,
        pkce: Option<&Pkce>,
        redirect_uri: Option<&Url>,
    ) -> Result<Url, ProviderError> {
        let endpoints = self.endpoints().await?;
        let mut url = endpoints
            .authorize
            .clone()
            .ok_or_else(|| self.missing("an authorization endpoint"))?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id);
            if let Some(redirect_uri) = redirect_uri {
                query.append_pair("redirect_uri", redirect_uri.as_str());
            }
            query.append_pair("state", state);
            if let Some(pkce) = pkce {
                query
                    .append_pair("code_challenge", &pkce.challenge)
                    .append_pair("code_challenge_method", "S256");
            }
            let scope = self.requested_scopes();
            if !scope.is_empty() {
                query.append_pair("scope", &scope);
            }
            for (key, value) in self.config.preset.offline_parameters() {
                query.append_pair(key, value);
            }
        }
        Ok(url)
    }

    /// Exchanges an authorization code, with the identical `redirect_uri` (or none) and the
    /// verifier of the flow.
    ///
    /// # Errors
    /// Every failure, classified; a bad or used code is `invalid_grant`.
    pub async fn exchange_code(
        &self,
        code: &AuthorizationCode,
        verifier: Option<&PkceVerifier>,
        redirect_uri: Option<&Url>,
    ) -> Result<TokenResponse, ProviderError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
        ];
        let redirect_text = redirect_uri.map(Url::to_string);
        if let Some(redirect) = &redirect_text {
            form.push(("redirect_uri", redirect));
        }
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier.expose()));
        }
        let mut secrets = vec![code.expose()];
        secrets.extend(verifier.map(PkceVerifier::expose));
        self.token_request(form, &secrets).await
    }

    /// Starts an RFC 8628 device flow.
    ///
    /// # Errors
    /// The provider has no device endpoint, or refused.
    pub async fn start_device(&self) -> Result<DeviceAuthorization, ProviderError> {
        let endpoints = self.endpoints().await?;
        let url = endpoints
            .device
            .clone()
            .ok_or_else(|| self.missing("a device authorization endpoint"))?;
        let scope = self.requested_scopes();
        let mut form = Vec::new();
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        let request = self.http.post(url).header(ACCEPT, "application/json");
        let request = self.authenticate(request, &mut form);
        let answer = request
            .form(&form)
            .send()
            .await
            .map_err(|e| request_error("device", e))?;
        let status = answer.status().as_u16();
        let body = read_capped(answer, "device").await?;
        // Anything but a 200 without an `error` goes through the token endpoint's classifier
        // (status, Retry-After-free error codes, garbage), so a 503 page stays transient.
        let usable = serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|json| status == 200 && json.get("error").is_none());
        let Some(json) = usable else {
            return Err(response::parse(
                status,
                response::Headers::default(),
                &body,
                self.config.default_lifetime,
                &[],
            )
            .err()
            .unwrap_or_else(|| malformed("the device answer is not a JSON object")));
        };
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        let seconds = |key: &str| {
            json.get(key)
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        };
        Ok(DeviceAuthorization {
            device_code: DeviceCode::new(
                text("device_code").ok_or_else(|| malformed("no device_code"))?,
            ),
            user_code: text("user_code").ok_or_else(|| malformed("no user_code"))?,
            // Google calls it verification_url.
            verification_uri: text("verification_uri")
                .or_else(|| text("verification_url"))
                .ok_or_else(|| malformed("no verification_uri"))?,
            verification_uri_complete: text("verification_uri_complete"),
            expires_in: Duration::from_secs(seconds("expires_in").unwrap_or(600).clamp(1, 3600)),
            interval: seconds("interval").map_or(DEFAULT_DEVICE_INTERVAL, |s| {
                Duration::from_secs(s.clamp(1, 60))
            }),
        })
    }

    /// One poll of a device flow. `authorization_pending` and `slow_down` come back as
    /// `ProviderError::Rejected` with that code (see `ProviderError::oauth_code`).
    ///
    /// # Errors
    /// Pending, slow down, denied, expired, or any other failure.
    pub async fn poll_device(
        &self,
        device_code: &DeviceCode,
    ) -> Result<TokenResponse, ProviderError> {
        let form = vec![
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code.expose()),
        ];
        self.token_request(form, &[device_code.expose()]).await
    }

    /// Revokes a grant at the provider. Dropbox and GitHub revoke through a current access
    /// token (which kills the whole grant); RFC 7009 providers take the refresh token itself.
    /// An answer saying the grant or token is already dead counts as success: Dropbox's 401
    /// `invalid_access_token`/`expired_access_token`, Google's `invalid_token`, `invalid_grant`
    /// anywhere, Box's 400, GitHub's 404/422.
    ///
    /// # Errors
    /// The provider cannot revoke, or did not confirm.
    pub async fn revoke(
        &self,
        refresh_token: &RefreshToken,
        access_token: Option<&AccessToken>,
    ) -> Result<(), ProviderError> {
        let endpoints = self.endpoints().await?;
        let url = endpoints
            .revoke
            .clone()
            .ok_or_else(|| self.missing("a revocation endpoint"))?;
        let style = self
            .config
            .preset
            .revocation()
            .ok_or_else(|| self.missing("a way to revoke grants"))?;
        let needs_access_token = || {
            access_token
                .ok_or_else(|| malformed("this provider revokes through a current access token"))
        };
        let answer = match style {
            Revocation::DropboxBearer => {
                let bearer = format!("Bearer {}", needs_access_token()?.expose());
                self.http
                    .post(url)
                    .header(AUTHORIZATION, bearer)
                    .send()
                    .await
            }
            Revocation::Rfc7009 => {
                let mut form = vec![
                    ("token", refresh_token.expose()),
                    ("token_type_hint", "refresh_token"),
                ];
                let request = self.http.post(url).header(ACCEPT, "application/json");
                self.authenticate(request, &mut form)
                    .form(&form)
                    .send()
                    .await
            }
            Revocation::GithubGrant => {
                let access_token = needs_access_token()?;
                let encoded_id: String =
                    url::form_urlencoded::byte_serialize(self.config.client_id.as_bytes())
                        .collect();
                // The placeholder is percent-encoded inside a parsed URL.
                let url = url
                    .as_str()
                    .replace("%7Bclient_id%7D", &encoded_id)
                    .replace(super::CLIENT_ID_PLACEHOLDER, &encoded_id);
                let secret = self.config.client_secret.as_ref().map(|s| s.expose());
                self.http
                    .delete(url)
                    .header(ACCEPT, "application/vnd.github+json")
                    .basic_auth(&self.config.client_id, secret)
                    .json(&serde_json::json!({ "access_token": access_token.expose() }))
                    .send()
                    .await
            }
        }
        .map_err(|e| request_error("revocation", e))?;
        let status = answer.status().as_u16();
        let body = read_capped(answer, "revocation").await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let already_dead = match (style, status) {
            (Revocation::GithubGrant, 404 | 422) => true,
            (Revocation::Rfc7009, 400) => self.config.preset == super::Preset::Box,
            _ => false,
        };
        if already_dead {
            return Ok(());
        }
        let mut secrets = vec![refresh_token.expose()];
        secrets.extend(access_token.map(AccessToken::expose));
        match response::parse(
            status,
            response::Headers::default(),
            &body,
            self.config.default_lifetime,
            &secrets,
        ) {
            Err(ProviderError::InvalidGrant { .. }) => Ok(()),
            Err(error)
                if matches!(
                    error.oauth_code(),
                    Some("invalid_token" | "invalid_access_token" | "expired_access_token")
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
            Ok(_) => Err(ProviderError::UnexpectedStatus {
                endpoint: "revocation",
                status,
            }),
        }
    }

    /// The scopes a connect flow asks for: the configured ones, and those without which the
    /// provider issues no refresh token (Microsoft's `offline_access`).
    fn requested_scopes(&self) -> String {
        let mut scopes: Vec<&str> = self.config.scopes.iter().map(String::as_str).collect();
        for needed in self.config.preset.offline_scopes() {
            if !scopes.contains(needed) {
                scopes.push(needed);
            }
        }
        scopes.join(" ")
    }

    fn missing(&self, what: &str) -> ProviderError {
        ProviderError::Unsupported {
            provider: self.config.name.clone(),
            what: what.to_owned(),
        }
    }
}

fn malformed(reason: &str) -> ProviderError {
    ProviderError::Malformed {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        let pkce = Pkce::from_verifier(PkceVerifier::new(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        ));
        assert_eq!(
            pkce.challenge,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let fresh = Pkce::generate();
        assert_eq!(fresh.verifier.expose().len(), 43);
        assert_ne!(fresh.verifier.expose(), Pkce::generate().verifier.expose());
    }
}
