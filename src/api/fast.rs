//! The hot path: `GET /v1/token/{account}` answered from memory without the router.
//!
//! Almost every request a broker sees is a job asking for a token it already holds. This path
//! answers exactly those, with the same checks and the same response as the router's
//! handler, and no allocation beyond the response. Anything else (another route, an error of
//! any kind, a token that must be refreshed first, a query it does not recognise) is left to
//! the router, which stays the one place where failures are answered.

use axum::http::{Method, Request};
use axum::response::Response;

use super::types::TokenView;
use super::{browser, handlers, AppState, Caller, Peer};

/// The answer to a token request that can be served from memory (always `200 OK`), with the
/// caller; `None` for anything else.
pub(super) fn token<B>(
    app: &AppState,
    peer: &Peer,
    request: &Request<B>,
) -> Option<(Response, Caller)> {
    if request.method() != Method::GET {
        return None;
    }
    let account = request.uri().path().strip_prefix("/v1/token/")?;
    let min_valid = match request.uri().query() {
        None => None,
        Some(query) => Some(min_valid(query)?),
    };
    let headers = request.headers();
    browser::check(headers, Some(peer), &app.public_url).ok()?;
    let caller = handlers::identify(app, peer, headers).ok()?;
    let name = handlers::readable(&caller, account).ok()?;
    let wants_text = handlers::wants_text(headers);
    // Rendered where the broker keeps the token, without copying it out.
    let (body, expires_in) = app
        .broker
        .with_cached_token(&name, min_valid, |token, left| {
            (
                handlers::token_body(TokenView::of(token, left), wants_text),
                left,
            )
        })?;
    let response = handlers::token_response(&caller, &name, expires_in, body, wants_text);
    Some((response, caller))
}

/// `min_valid=SECONDS` and nothing else; other queries go to the router, which explains them.
fn min_valid(query: &str) -> Option<std::time::Duration> {
    let digits = query.strip_prefix("min_valid=")?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(std::time::Duration::from_secs)
}
