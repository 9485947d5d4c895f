//! The token-endpoint client against the fake provider: how it authenticates, what it refuses
//! to follow, and discovery.

use serde_json::json;

use super::*;
use crate::testing::{FakeProvider, Reply};
use url::Url;

fn with_auth(fake: &FakeProvider, auth_method: AuthMethod, secret: Option<&str>) -> Provider {
    let mut config = fake.provider_config("p");
    config.auth_method = auth_method;
    config.client_id = "my client".into();
    config.client_secret = secret.map(ClientSecret::new);
    Provider::new(config).unwrap()
}

#[tokio::test]
async fn each_auth_method_presents_the_client_exactly_one_way() {
    let fake = FakeProvider::start().await;
    let refresh = RefreshToken::new(fake.grant("a"));
    with_auth(&fake, AuthMethod::Basic, Some("s3cret&="))
        .refresh(&refresh)
        .await
        .unwrap();
    with_auth(&fake, AuthMethod::Post, Some("s3cret&="))
        .refresh(&refresh)
        .await
        .unwrap();
    with_auth(&fake, AuthMethod::None, None)
        .refresh(&refresh)
        .await
        .unwrap();
    let [basic, post, public] = fake.requests().try_into().unwrap();
    // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
    assert_eq!(
        basic.authorization.as_deref(),
        Some("Basic bXkrY2xpZW50OnMzY3JldCUyNiUzRA==")
    );
    assert!(!basic.form.contains_key("client_secret") && !basic.form.contains_key("client_id"));
    assert_eq!(post.authorization, None);
    assert_eq!(
        (
            post.form["client_id"].as_str(),
            post.form["client_secret"].as_str()
        ),
        ("my client", "s3cret&=")
    );
    assert_eq!(public.authorization, None);
    assert_eq!(public.form["client_id"], "my client");
    assert!(!public.form.contains_key("client_secret"));
    for request in [basic, post, public] {
        assert_eq!(request.form["grant_type"], "refresh_token");
        assert!(
            !request.form.contains_key("scope"),
            "a refresh keeps the granted scope"
        );
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let fake = FakeProvider::start().await;
    let elsewhere = FakeProvider::start().await;
    fake.push([Reply::Json(
        307,
        json!({}),
        vec![("location", elsewhere.token_url())],
    )]);
    let error = with_auth(&fake, AuthMethod::None, None)
        .refresh(&RefreshToken::new(fake.grant("a")))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Configuration, "{error}");
    assert_eq!(
        elsewhere.token_calls(),
        0,
        "the refresh token went nowhere else"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fake = FakeProvider::start().await;
    let mut config = fake.provider_config("p");
    config.endpoints = EndpointSource::Fixed(Endpoints {
        token: format!("http://127.0.0.1:{port}/t").parse().unwrap(),
        authorize: None,
        revoke: None,
        device: None,
    });
    let error = Provider::new(config)
        .unwrap()
        .refresh(&RefreshToken::new("x"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transient, "{error}");
}

#[tokio::test]
async fn discovery_finds_the_token_endpoint_once() {
    let fake = FakeProvider::start().await;
    let mut config = fake.provider_config("p");
    config.endpoints = EndpointSource::Discover {
        issuer: fake.base_url().parse().unwrap(),
    };
    let provider = Provider::new(config).unwrap();
    let refresh = RefreshToken::new(fake.grant("a"));
    let answer = provider.refresh(&refresh).await.unwrap();
    assert_eq!(answer.access_token.expose(), fake.issued_access_tokens()[0]);
    assert_eq!(
        provider.endpoints().await.unwrap().token.as_str(),
        fake.token_url()
    );
    provider.refresh(&refresh).await.unwrap();
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test]
async fn discovery_of_a_foreign_issuer_is_refused() {
    let fake = FakeProvider::start().await;
    let mut config = fake.provider_config("p");
    // The fake's metadata names its own base URL; asking for it under another name is a mix-up.
    let other = fake.base_url().replace("127.0.0.1", "localhost");
    config.endpoints = EndpointSource::Discover {
        issuer: other.parse().unwrap(),
    };
    let error = Provider::new(config)
        .unwrap()
        .refresh(&RefreshToken::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(error, ProviderError::Discovery { .. }), "{error}");
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn authorize_urls_carry_each_presets_offline_parameters_and_pkce() {
    let fake = FakeProvider::start().await;
    let pkce = Pkce::generate();
    let redirect: Url = "http://127.0.0.1:8765/oauth/callback".parse().unwrap();
    for (preset, secret, expect_pkce, offline) in [
        (
            Preset::Google,
            Some("s"),
            true,
            vec![("access_type", "offline"), ("prompt", "consent")],
        ),
        (
            Preset::Dropbox,
            Some("s"),
            false,
            vec![("token_access_type", "offline")],
        ),
        (
            Preset::Dropbox,
            None,
            true,
            vec![("token_access_type", "offline")],
        ),
        (Preset::Box, Some("s"), false, vec![]),
        (Preset::Github, Some("s"), true, vec![]),
    ] {
        let mut config = preset_config(&fake, preset, None);
        config.client_secret = secret.map(ClientSecret::new);
        if secret.is_none() {
            config.auth_method = AuthMethod::None;
        }
        let provider = Provider::new(config).unwrap();
        assert_eq!(provider.uses_pkce(), expect_pkce, "{preset:?}");
        let url = provider
            .authorize_url("st", provider.uses_pkce().then_some(&pkce), Some(&redirect))
            .await
            .unwrap();
        let query: std::collections::BTreeMap<String, String> =
            url.query_pairs().into_owned().collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["state"], "st");
        assert_eq!(query["redirect_uri"], redirect.as_str());
        assert_eq!(
            query.contains_key("code_challenge"),
            expect_pkce,
            "{preset:?}"
        );
        for (key, value) in offline {
            assert_eq!(query[key], value, "{preset:?}");
        }
    }
}

#[tokio::test]
async fn device_flow_errors_are_classified_like_token_errors() {
    let fake = FakeProvider::start().await;
    let mut config = fake.provider_config("p");
    // The fake's token endpoint takes scripted replies; use it as the device endpoint.
    config.endpoints = EndpointSource::Fixed(Endpoints {
        token: fake.token_url().parse().unwrap(),
        authorize: None,
        revoke: None,
        device: Some(fake.token_url().parse().unwrap()),
    });
    let provider = Provider::new(config).unwrap();
    fake.push([
        Reply::Raw(503, b"<html>maintenance</html>".to_vec()),
        Reply::oauth_error(400, "invalid_client", "unknown client"),
        Reply::Json(200, serde_json::json!({"error": "access_denied"}), vec![]),
    ]);
    let outage = provider.start_device().await.unwrap_err();
    assert!(
        matches!(outage, ProviderError::Unavailable { status: 503, .. }),
        "an outage, not a garbled answer: {outage}"
    );
    assert_eq!(
        provider.start_device().await.unwrap_err().kind(),
        FailureKind::Configuration
    );
    assert_eq!(
        provider.start_device().await.unwrap_err().oauth_code(),
        Some("access_denied")
    );
}

/// The configuration of a provider of `preset` with a secret, pointed at the fake,
/// authenticating as the configuration would choose by default for that preset.
fn preset_config(fake: &FakeProvider, preset: Preset, revoke: Option<String>) -> Config {
    let mut config = fake.provider_config("p");
    config.preset = preset;
    config.client_secret = Some(ClientSecret::new("s3cret"));
    config.auth_method = if preset.secret_auth_in_body() {
        AuthMethod::Post
    } else {
        AuthMethod::Basic
    };
    config.endpoints = EndpointSource::Fixed(Endpoints {
        token: fake.token_url().parse().unwrap(),
        authorize: Some(fake.authorize_url().parse().unwrap()),
        revoke: revoke.map(|url| url.parse().unwrap()),
        device: None,
    });
    config
}

fn preset_at(fake: &FakeProvider, preset: Preset, revoke: Option<String>) -> Provider {
    Provider::new(preset_config(fake, preset, revoke)).unwrap()
}

#[tokio::test]
async fn box_gets_its_credentials_in_the_body_for_refresh_and_revocation() {
    let fake = FakeProvider::start().await;
    fake.set_body_credentials_only(true);
    let refresh = RefreshToken::new(fake.grant("a"));
    let provider = preset_at(&fake, Preset::Box, Some(fake.revoke_url()));
    provider.refresh(&refresh).await.unwrap();
    provider.revoke(&refresh, None).await.unwrap();
    assert!(!fake.is_valid(refresh.expose()), "revoked at the provider");
    let request = &fake.requests()[0];
    assert_eq!(request.authorization, None);
    assert_eq!(request.form["client_secret"], "s3cret");
    // Basic, as before, is what Box refuses.
    let basic = with_auth(&fake, AuthMethod::Basic, Some("s3cret"));
    let refused = basic
        .refresh(&RefreshToken::new(fake.grant("b")))
        .await
        .unwrap_err();
    assert_eq!(refused.oauth_code(), Some("invalid_client"));
}

#[tokio::test]
async fn github_revokes_the_grant_through_its_applications_endpoint() {
    let fake = FakeProvider::start().await;
    let refresh = RefreshToken::new(fake.grant("a"));
    let provider = preset_at(&fake, Preset::Github, Some(fake.github_revoke_url()));
    let token = provider.refresh(&refresh).await.unwrap().access_token;
    provider.revoke(&refresh, Some(&token)).await.unwrap();
    assert!(!fake.is_valid(refresh.expose()));
    assert_eq!(
        fake.revocations(),
        [(
            "/applications/client/grant".into(),
            token.expose().to_owned()
        )]
    );
    // A grant that is already gone (404) counts as revoked.
    provider.revoke(&refresh, Some(&token)).await.unwrap();
    let error = provider.revoke(&refresh, None).await.unwrap_err();
    assert!(error.to_string().contains("access token"), "{error}");
}

#[tokio::test]
async fn revoking_a_grant_that_is_already_dead_counts_as_revoked() {
    let fake = FakeProvider::start().await;
    let dead = RefreshToken::new("never-issued");
    // Dropbox: 401 invalid_access_token for a token it no longer knows.
    let dropbox = preset_at(&fake, Preset::Dropbox, Some(fake.dropbox_revoke_url()));
    dropbox
        .revoke(&dead, Some(&crate::secret::AccessToken::new("sl.gone")))
        .await
        .unwrap();
    // Google: 400 invalid_token, "Token expired or revoked".
    let google = preset_at(&fake, Preset::Google, Some(fake.revoke_url()));
    google.revoke(&dead, None).await.unwrap();
    // A refusal for another reason is still an error, and says what the provider said.
    fake.set_body_credentials_only(true);
    let error = google.revoke(&dead, None).await.unwrap_err();
    assert_eq!(error.oauth_code(), Some("invalid_client"));
}

#[tokio::test]
async fn microsoft_asks_for_offline_access_and_each_preset_has_its_own_hint() {
    let fake = FakeProvider::start().await;
    let mut config = preset_config(&fake, Preset::Microsoft, None);
    config.scopes = vec!["Files.Read".into()];
    let provider = Provider::new(config).unwrap();
    let url = provider.authorize_url("st", None, None).await.unwrap();
    let scope = url
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned());
    assert_eq!(scope.as_deref(), Some("Files.Read offline_access"));
    assert!(Preset::Microsoft
        .no_refresh_token_hint()
        .contains("offline_access"));
    assert!(!Preset::Google
        .no_refresh_token_hint()
        .contains("token_access_type"));
    assert!(Preset::Dropbox
        .no_refresh_token_hint()
        .contains("token_access_type"));
}
