//! What each built-in provider is: endpoints, lifetimes, authorize-URL quirks, revocation.
//!
//! Facts from PROTOCOL.md §1 (Dropbox), §3.6 (device endpoints) and §4 (the others).

use std::time::Duration;

use url::Url;

use super::Endpoints;

/// The built-in provider families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Dropbox: `token_access_type=offline`, 4-hour tokens, no rotation, no device flow.
    Dropbox,
    /// Google: `access_type=offline` and `prompt=consent`, 1-hour tokens.
    Google,
    /// Microsoft Entra (`tenant`): rotating refresh tokens, no revocation endpoint.
    Microsoft,
    /// GitHub Apps with expiring user tokens: 8-hour tokens, rotation, errors with HTTP 200.
    Github,
    /// Box: single-use rotating refresh tokens, 1-hour tokens.
    Box,
    /// Any RFC 6749 server: explicit URLs or `issuer` discovery.
    Generic,
}

/// How a preset revokes a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Dropbox `POST /2/auth/token/revoke` with a bearer access token (kills the refresh token too).
    DropboxBearer,
    /// RFC 7009: `token=<refresh token>&token_type_hint=refresh_token` with client authentication.
    Rfc7009,
    /// GitHub `DELETE /applications/{client_id}/grant`, Basic `client_id:client_secret`, with
    /// a current access token in a JSON body (it revokes the whole grant).
    GithubGrant,
}

impl Revocation {
    /// Whether revoking needs a current access token (refreshed first if none is held).
    pub fn needs_access_token(self) -> bool {
        matches!(self, Self::DropboxBearer | Self::GithubGrant)
    }
}

/// Where `{client_id}` stands in GitHub's revocation URL.
pub const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

impl Preset {
    /// The preset named in a configuration.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "dropbox" => Self::Dropbox,
            "google" => Self::Google,
            "microsoft" => Self::Microsoft,
            "github" => Self::Github,
            "box" => Self::Box,
            "generic" => Self::Generic,
            _ => return None,
        })
    }

    /// The endpoints a preset fixes (`tenant` is Microsoft's); `None` for generic.
    pub fn endpoints(self, tenant: &str) -> Option<Endpoints> {
        let url = |text: &str| Some(Url::parse(text).expect("a valid preset URL"));
        let (authorize, token, revoke, device) = match self {
            Self::Dropbox => (
                "https://www.dropbox.com/oauth2/authorize",
                "https://api.dropboxapi.com/oauth2/token",
                Some("https://api.dropboxapi.com/2/auth/token/revoke"),
                None,
            ),
            Self::Google => (
                "https://accounts.google.com/o/oauth2/v2/auth",
                "https://oauth2.googleapis.com/token",
                Some("https://oauth2.googleapis.com/revoke"),
                Some("https://oauth2.googleapis.com/device/code"),
            ),
            Self::Microsoft => {
                let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
                return Some(Endpoints {
                    token: url(&format!("{base}/token"))?,
                    authorize: url(&format!("{base}/authorize")),
                    revoke: None,
                    device: url(&format!("{base}/devicecode")),
                });
            }
            Self::Github => (
                "https://github.com/login/oauth/authorize",
                "https://github.com/login/oauth/access_token",
                Some("https://api.github.com/applications/{client_id}/grant"),
                Some("https://github.com/login/device/code"),
            ),
            Self::Box => (
                "https://account.box.com/api/oauth2/authorize",
                "https://api.box.com/oauth2/token",
                Some("https://api.box.com/oauth2/revoke"),
                None,
            ),
            Self::Generic => return None,
        };
        Some(Endpoints {
            token: url(token)?,
            authorize: url(authorize),
            revoke: revoke.and_then(url),
            device: device.and_then(url),
        })
    }

    /// The issuer a callback's `iss` parameter must name, when the preset has one.
    pub fn issuer(self, tenant: &str) -> Option<String> {
        match self {
            Self::Google => Some("https://accounts.google.com".into()),
            Self::Microsoft => Some(format!("https://login.microsoftonline.com/{tenant}/v2.0")),
            _ => None,
        }
    }

    /// Access-token lifetime assumed when a response omits `expires_in`.
    pub fn default_lifetime(self) -> Duration {
        match self {
            Self::Dropbox => Duration::from_secs(14400),
            Self::Github => Duration::from_secs(28800),
            _ => Duration::from_secs(3600),
        }
    }

    /// How a client with a secret authenticates by default, as each provider documents it:
    /// Box, GitHub and Microsoft take the credentials in the request body (Box refuses
    /// HTTP Basic); Dropbox, Google and RFC 6749 servers take Basic.
    pub fn secret_auth_in_body(self) -> bool {
        matches!(self, Self::Box | Self::Github | Self::Microsoft)
    }

    /// Scopes that must be requested for the provider to issue a refresh token at all.
    pub fn offline_scopes(self) -> &'static [&'static str] {
        match self {
            Self::Microsoft => &["offline_access"],
            _ => &[],
        }
    }

    /// What to change when a provider issued no refresh token.
    pub fn no_refresh_token_hint(self) -> &'static str {
        match self {
            Self::Dropbox => "the flow must ask for token_access_type=offline (a scoped app)",
            Self::Google => "the flow must ask for access_type=offline with prompt=consent; check the OAuth consent screen",
            Self::Microsoft => "the offline_access scope must be requested and granted",
            Self::Github => "enable \"Expire user authorization tokens\" in the GitHub App's settings",
            Self::Box => "Box issues one with every code; check the app's OAuth 2.0 settings",
            Self::Generic => "the server must be configured to issue refresh tokens to this client (often through the offline_access scope)",
        }
    }

    /// Extra authorize parameters that make the provider hand out a refresh token.
    pub fn offline_parameters(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Dropbox => &[("token_access_type", "offline")],
            Self::Google => &[("access_type", "offline"), ("prompt", "consent")],
            Self::Microsoft => &[],
            _ => &[],
        }
    }

    /// Whether a confidential client (one with a secret) also sends PKCE. Public clients
    /// always do. Dropbox takes a secret or a verifier, not both; Box has no PKCE.
    pub fn pkce_with_secret(self) -> bool {
        !matches!(self, Self::Dropbox | Self::Box)
    }

    /// How grants are revoked at this provider, if they can be.
    pub fn revocation(self) -> Option<Revocation> {
        match self {
            Self::Dropbox => Some(Revocation::DropboxBearer),
            Self::Google | Self::Box | Self::Generic => Some(Revocation::Rfc7009),
            Self::Github => Some(Revocation::GithubGrant),
            Self::Microsoft => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_endpoints_carry_the_tenant() {
        let endpoints = Preset::Microsoft
            .endpoints("contoso.onmicrosoft.com")
            .unwrap();
        assert_eq!(
            endpoints.token.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(endpoints.device.unwrap().as_str().ends_with("/devicecode"));
        assert_eq!(
            Preset::Microsoft.issuer("t").unwrap(),
            "https://login.microsoftonline.com/t/v2.0"
        );
    }

    #[test]
    fn every_named_preset_but_generic_has_endpoints() {
        for name in ["dropbox", "google", "microsoft", "github", "box"] {
            let preset = Preset::from_name(name).unwrap();
            assert!(
                preset
                    .endpoints("common")
                    .is_some_and(|e| e.authorize.is_some()),
                "{name}"
            );
        }
        assert!(Preset::from_name("generic")
            .unwrap()
            .endpoints("common")
            .is_none());
        assert_eq!(Preset::from_name("yahoo"), None);
    }
}
