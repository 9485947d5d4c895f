//! The token-endpoint client against the fake provider: how it authenticates, what it refuses
//! to follow, and discovery.

use serde_json::json;

use super::*;
use crate::testing::{FakeProvider, Reply};

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
