//! The hot path: `GET /v1/token/{account}` answered from memory without the router.
//!
//! Almost every request a broker sees is a job asking for a token it already holds. This path
//! answers exactly those, with the same checks and the same response as the router's
//! handler, and no allocation beyond the response. Anything else (another route, an error of
//! any kind, a token that must be refreshed first, a query it does not recognise) is left to
//! the router, which stays the one place where failures are answered.

use axum::http::{header, HeaderMap, HeaderValue, Method, Request};
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
    let headers = Headers::of(request.headers());
    browser::check(headers.origin, headers.host, Some(peer), &app.public_url).ok()?;
    let caller = handlers::identify(app, peer, headers.authorization).ok()?;
    handlers::may_have(&caller, account).ok()?;
    let wants_text = handlers::wants_text(headers.accept);
    // Rendered where the broker keeps the token, without copying it out.
    let (body, expires_in) = app
        .broker
        .with_cached_token(account, min_valid, |token, left| {
            (
                handlers::token_body(TokenView::of(token, left), wants_text),
                left,
            )
        })?;
    let response = handlers::token_response(&caller, account, expires_in, body, wants_text);
    Some((response, caller))
}

/// The headers the token route reads, found in one pass over the request's: looking each up
/// by name would hash every name again. The first of repeated headers counts, as with
/// `HeaderMap::get`.
#[derive(Debug, Default, PartialEq)]
struct Headers<'a> {
    origin: bool,
    host: Option<&'a HeaderValue>,
    authorization: Option<&'a HeaderValue>,
    accept: Option<&'a HeaderValue>,
}

impl<'a> Headers<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut found = Self::default();
        for (name, value) in headers {
            let slot = if name == header::HOST {
                &mut found.host
            } else if name == header::AUTHORIZATION {
                &mut found.authorization
            } else if name == header::ACCEPT {
                &mut found.accept
            } else {
                found.origin |= name == header::ORIGIN;
                continue;
            };
            slot.get_or_insert(value);
        }
        found
    }
}

/// `min_valid=SECONDS` and nothing else; other queries go to the router, which explains them.
fn min_valid(query: &str) -> Option<std::time::Duration> {
    let digits = query.strip_prefix("min_valid=")?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(std::time::Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_in_one_pass_as_by_name() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("user-agent", "job/1"),
            ("Host", "localhost:8080"),
            ("authorization", "Bearer first"),
            ("accept", "text/plain"),
            ("Authorization", "Bearer second"),
            ("accept", "application/json"),
            ("x-other", "1"),
        ] {
            headers.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        let by_name = Headers {
            origin: headers.contains_key(header::ORIGIN),
            host: headers.get(header::HOST),
            authorization: headers.get(header::AUTHORIZATION),
            accept: headers.get(header::ACCEPT),
        };
        assert_eq!(Headers::of(&headers), by_name);
        assert_eq!(by_name.authorization.unwrap(), "Bearer first");
        assert!(!by_name.origin);

        headers.append(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(Headers::of(&headers).origin);
        assert_eq!(Headers::of(&HeaderMap::new()), Headers::default());
    }
}
