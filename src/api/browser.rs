//! Keeping web pages away from the API: a page in a browser on the same machine can send
//! requests to loopback, and DNS rebinding can make one look same-origin. Such requests carry
//! an `Origin` header, or (on TCP) a `Host` that is not ours; both are refused on every
//! route. The connect pages, which a browser is meant to visit, are reached by navigation,
//! which sends no `Origin` with a `GET`, and under a `Host` that is ours.

use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue};
use url::Url;

use super::{ApiError, Peer};

/// Whether a request with these headers, from this peer, may be answered: no `Origin`, and
/// on TCP a `Host` that names us. Checked for every route, before routing.
pub(super) fn check(headers: &HeaderMap, peer: &Peer, public_url: &Url) -> Result<(), ApiError> {
    if headers.contains_key(ORIGIN) {
        return Err(ApiError::Forbidden(
            "requests from web pages (with an Origin header) are refused".into(),
        ));
    }
    if matches!(peer, Peer::Tcp(_)) {
        check_host(headers.get(HOST), public_url)?;
    }
    Ok(())
}

/// A TCP request's `Host`: a loopback name, `public_url`'s host, or none (HTTP/1.0).
fn check_host(host: Option<&HeaderValue>, public_url: &Url) -> Result<(), ApiError> {
    // A Host that is not visible ASCII names nothing of ours: refused, not taken for none.
    let host = match host.map(HeaderValue::to_str) {
        None => None,
        Some(Ok(text)) => Some(text),
        Some(Err(_)) => {
            return Err(ApiError::Forbidden(
                "the Host header is not readable text".into(),
            ))
        }
    };
    if host_allowed(host, public_url) {
        return Ok(());
    }
    let shown = host
        .unwrap_or("(none)")
        .chars()
        .take(100)
        .collect::<String>();
    Err(ApiError::Forbidden(format!(
        "Host {shown:?} is neither a loopback name nor the public_url host"
    )))
}

/// Whether a `Host` header names us: a loopback name or address, or `public_url`'s host.
fn host_allowed(host: Option<&str>, public_url: &Url) -> bool {
    let Some(host) = host else {
        // HTTP/1.0 clients may omit it; browsers never do.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    // The usual names first: parsing an address costs more than the rest of the request.
    name == "127.0.0.1"
        || name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || public_url
            .host_str()
            .is_some_and(|public| public.trim_matches(['[', ']']).eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_host_is_refused_not_taken_for_none() {
        let public: Url = "http://127.0.0.1:8765".parse().unwrap();
        let unreadable = HeaderValue::from_bytes(b"evil\xff.example").unwrap();
        assert!(check_host(Some(&unreadable), &public).is_err());
        let ours = HeaderValue::from_static("127.0.0.1:8765");
        assert!(check_host(Some(&ours), &public).is_ok());
        assert!(check_host(None, &public).is_ok(), "HTTP/1.0: no Host");
    }

    #[test]
    fn loopback_names_and_the_public_host_are_ours() {
        let public: Url = "https://broker.internal:8443".parse().unwrap();
        for ours in [
            None,
            Some("localhost"),
            Some("LOCALHOST:8765"),
            Some("127.0.0.1:8765"),
            Some("127.1.2.3"),
            Some("[::1]:8765"),
            Some("broker.internal:8443"),
        ] {
            assert!(host_allowed(ours, &public), "{ours:?}");
        }
        for theirs in [
            Some("evil.example"),
            Some("evil.example:8765"),
            Some("10.0.0.1:8765"),
            Some("localhost.evil.example"),
            Some("[::2]:1"),
            Some(""),
        ] {
            assert!(!host_allowed(theirs, &public), "{theirs:?}");
        }
    }
}
