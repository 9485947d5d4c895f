//! The two HTML pages a person sees when connecting an account: success and failure.
//!
//! Plain HTML, readable without JavaScript or external resources, and free of secrets: no
//! token, code or state appears on them. Every dynamic text is escaped.

use std::time::SystemTime;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// The page after a connected account.
pub(super) fn connected(account: &str, provider: &str, expires_at: Option<SystemTime>) -> Response {
    let expiry = expires_at.map_or_else(
        || "unknown".to_owned(),
        |at| humantime::format_rfc3339_seconds(at).to_string(),
    );
    let body = format!(
        "<h1>Account connected</h1>\
         <p>The account <strong>{account}</strong> at <strong>{provider}</strong> is connected to tokenbroker.</p>\
         <p>Its current access token expires at {expiry}; tokenbroker refreshes it before then, for as long as the grant is valid.</p>\
         <p>You can close this window.</p>",
        account = escape(account),
        provider = escape(provider),
        expiry = escape(&expiry),
    );
    page(StatusCode::OK, "Account connected", &body)
}

/// The page after a failed or refused connection.
pub(super) fn failed(status: StatusCode, what_happened: &str, what_to_do: &str) -> Response {
    let body = format!(
        "<h1>The account was not connected</h1><p>{}</p><p>{}</p><p>Nothing was stored.</p>",
        escape(what_happened),
        escape(what_to_do),
    );
    page(status, "Account not connected", &body)
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokenbroker: {title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em;line-height:1.5}}</style>\
         </head><body>{body}</body></html>\n"
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The callback URL carried a code: do not leak it to anything this page links to.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // No script, no framing (clickjacking), and no content sniffing.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cannot_be_framed_or_sniffed() {
        let response = page(StatusCode::OK, "t", "b");
        let headers = response.headers();
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[test]
    fn dynamic_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
