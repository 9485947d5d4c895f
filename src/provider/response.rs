//! Turning a token endpoint's HTTP answer into a token or a classified error.
//!
//! Pure functions over status, headers and bytes, so hostile input can be thrown at them
//! directly. Secrets in the answer are checked for shape and moved into secret types at once.

use std::time::Duration;

use serde_json::{Map, Value};

use super::error::ProviderError;
use crate::secret::{AccessToken, RefreshToken};

/// The longest `expires_in` we believe (a day); larger values are clamped, so a hostile or
/// garbled answer cannot stop an account from being refreshed for a year.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest refresh-token lifetime believed (`refresh_token_expires_in`): ten years.
const MAX_REFRESH_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The longest `Retry-After` we honour; a hostile value cannot silence an account for longer.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The longest token we accept.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// A run of token characters at least this long in a provider's text is taken for a credential.
const TOKEN_LIKE_LEN: usize = 20;
/// Error codes of RFC 6749, 7009 and 8628, and the providers' own, kept verbatim (some are
/// longer than `TOKEN_LIKE_LEN`, and the device flow depends on reading them).
const KNOWN_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "unsupported_response_type",
    "server_error",
    "temporarily_unavailable",
    "unsupported_token_type",
    "authorization_pending",
    "slow_down",
    "expired_token",
    "bad_refresh_token",
    "incorrect_client_credentials",
    "bad_verification_code",
    "interaction_required",
    "consent_required",
    "login_required",
];
/// How much of an `error_description` we keep.
const MAX_DESCRIPTION_LEN: usize = 200;

/// A successful token response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The new access token.
    pub access_token: AccessToken,
    /// `Bearer`, normalised; other types as sent.
    pub token_type: String,
    /// `expires_in` (at most [`MAX_LIFETIME`]), or the provider's default lifetime when absent.
    /// Zero when `expires_in` is zero, negative or not a number: the token is then never
    /// served, and the account is refreshed again after a backoff.
    pub lifetime: Duration,
    /// A new refresh token (rotation), when the provider sent one.
    pub refresh_token: Option<RefreshToken>,
    /// Granted scopes, when sent.
    pub scope: Option<String>,
    /// The provider's user id (Dropbox `account_id`, `team_id`, or OIDC-style `user_id`).
    pub user_id: Option<String>,
    /// How long the refresh token itself lasts, when the provider says
    /// (`refresh_token_expires_in`: GitHub, Box, some OAuth 2.1 servers).
    pub refresh_token_lifetime: Option<Duration>,
}

/// The headers of an answer that bear on when to ask again, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    /// `Retry-After`: seconds, or an HTTP date.
    pub retry_after: Option<&'a str>,
    /// `Date`: the provider's clock, against which an HTTP-date `Retry-After` is measured.
    pub date: Option<&'a str>,
}

/// Interprets a token endpoint answer. `secrets` are values we sent, scrubbed from any
/// description the provider echoes back.
///
/// # Errors
/// Any non-success, an error body (even with 200), or a body that is not a valid token.
pub fn parse(
    status: u16,
    headers: Headers<'_>,
    body: &[u8],
    default_lifetime: Duration,
    secrets: &[&str],
) -> Result<TokenResponse, ProviderError> {
    let json: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    let header_wait = parse_retry_after(headers);
    if status == 429 {
        let body_wait = json.as_ref().and_then(json_retry_after);
        return Err(ProviderError::RateLimited {
            retry_after: header_wait.or(body_wait),
        });
    }
    if (500..600).contains(&status) {
        return Err(ProviderError::Unavailable {
            status,
            retry_after: header_wait,
        });
    }
    if let Some(object) = &json {
        if let Some(error) = object.get("error") {
            return Err(oauth_error(error, object.get("error_description"), secrets));
        }
    }
    if status != 200 {
        return Err(ProviderError::UnexpectedStatus {
            endpoint: "token",
            status,
        });
    }
    let Some(object) = json else {
        return Err(malformed("the body is not a JSON object"));
    };
    success(&object, default_lifetime)
}

fn success(
    object: &Map<String, Value>,
    default_lifetime: Duration,
) -> Result<TokenResponse, ProviderError> {
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) => checked_token(token, "access_token")?,
        Some(_) => return Err(malformed("access_token is not a string")),
        None => return Err(malformed("no access_token")),
    };
    let token_type = match object.get("token_type") {
        Some(Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(Value::String(kind)) if is_plain(kind, 64) => kind.clone(),
        Some(_) => return Err(malformed("token_type is not a short string")),
        // RFC 6749 requires it, but every provider we serve issues bearer tokens.
        None => "Bearer".to_owned(),
    };
    let refresh_token = match object.get("refresh_token") {
        Some(Value::String(token)) if !token.is_empty() => Some(RefreshToken::new(
            checked_token(token, "refresh_token")?.expose(),
        )),
        Some(Value::String(_)) | Some(Value::Null) | None => None,
        Some(_) => return Err(malformed("refresh_token is not a string")),
    };
    let lifetime = match object.get("expires_in") {
        None | Some(Value::Null) => default_lifetime,
        Some(value) => expires_in(value),
    };
    // A list of scopes (as some providers send) is joined first, then held to the same
    // rule as a string: no control characters (CR, LF, ESC would be stored and served).
    let scope = match object.get("scope") {
        Some(Value::String(scope)) => Some(scope.clone()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
    .filter(|scope| is_plain(scope, 4096) || scope.is_empty());
    let user_id = ["account_id", "team_id", "user_id"]
        .iter()
        .find_map(|key| object.get(*key).and_then(Value::as_str))
        .filter(|id| is_plain(id, 256))
        .map(str::to_owned);
    let refresh_token_lifetime = object
        .get("refresh_token_expires_in")
        .and_then(seconds)
        .filter(|lifetime| !lifetime.is_zero())
        .map(|lifetime| lifetime.min(MAX_REFRESH_LIFETIME));
    Ok(TokenResponse {
        access_token,
        token_type,
        lifetime,
        refresh_token,
        scope,
        user_id,
        refresh_token_lifetime,
    })
}

/// A number of seconds (a number, or a numeric string as some providers send), whole and at
/// most [`MAX_REFRESH_LIFETIME`]; none for anything else, or below one second.
fn seconds(value: &Value) -> Option<Duration> {
    let seconds = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    // `as` saturates, and the value is finite and positive here.
    (seconds.is_finite() && seconds >= 1.0)
        .then(|| Duration::from_secs(seconds.min(MAX_REFRESH_LIFETIME.as_secs_f64()) as u64))
}

/// `expires_in` (a number, or a numeric string as some providers send) as whole seconds,
/// clamped to [`MAX_LIFETIME`]; zero for anything below one second or not a number.
fn expires_in(value: &Value) -> Duration {
    seconds(value).map_or(Duration::ZERO, |lifetime| lifetime.min(MAX_LIFETIME))
}

/// Tokens go into HTTP headers and environment variables: printable ASCII only.
fn checked_token(token: &str, field: &str) -> Result<AccessToken, ProviderError> {
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(malformed(&format!(
            "{field} is empty, too long, or has characters a token cannot have"
        )));
    }
    Ok(AccessToken::new(token))
}

/// Lowercase words joined by underscores, at most 64 characters: the shape of every error
/// code a provider documents, and not of a token (no digits, no mixed case).
fn is_code_shaped(code: &str) -> bool {
    code.len() <= 64
        && code.contains('_')
        && !code.starts_with('_')
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn is_plain(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && text.chars().all(|c| !c.is_control())
}

fn oauth_error(error: &Value, description: Option<&Value>, secrets: &[&str]) -> ProviderError {
    // Dropbox once folded the description into `error` ("invalid_client: Invalid client_id...");
    // classify by the part before the colon.
    let (code, folded) = match error {
        Value::String(text) => match text.split_once(':') {
            Some((code, rest)) => (code.trim().to_owned(), Some(rest.trim().to_owned())),
            None => (text.trim().to_owned(), None),
        },
        Value::Object(object) => (
            object
                .get(".tag")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            None,
        ),
        _ => ("unknown".to_owned(), None),
    };
    let description = description
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(folded)
        .map(|text| clean(&text, secrets));
    // Error codes are vocabulary, not secrets: those of the OAuth standards, and any that
    // is shaped like one (lowercase words joined by `_`, as Dropbox's
    // `expired_access_token`), are kept as sent; anything else is provider text.
    let code = if KNOWN_CODES.contains(&code.as_str()) || is_code_shaped(&code) {
        code
    } else {
        clean(&code, secrets)
    };
    match code.as_str() {
        "invalid_grant" => ProviderError::InvalidGrant { description },
        "invalid_client" | "unauthorized_client" => {
            ProviderError::ClientRejected { code, description }
        }
        // GitHub's names for the same two failures, sent with HTTP 200.
        "bad_refresh_token" => ProviderError::InvalidGrant { description },
        "incorrect_client_credentials" => ProviderError::ClientRejected { code, description },
        _ => ProviderError::Rejected { code, description },
    }
}

/// Keeps a provider's text short, printable and free of secrets: anything we sent it, and any
/// long token-shaped run (a provider may echo any credential it knows).
pub(crate) fn clean(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "[REDACTED]");
    }
    let mut cleaned = String::new();
    let mut run = String::new();
    for c in text
        .chars()
        .filter(|c| !c.is_control())
        .chain(std::iter::once(' '))
    {
        if c.is_ascii_alphanumeric() || "-._~+/=:".contains(c) {
            run.push(c);
            continue;
        }
        cleaned.push_str(if run.len() >= TOKEN_LIKE_LEN {
            "[REDACTED]"
        } else {
            &run
        });
        run.clear();
        cleaned.push(c);
    }
    let mut cleaned: String = cleaned
        .trim_end()
        .chars()
        .take(MAX_DESCRIPTION_LEN)
        .collect();
    if cleaned.is_empty() {
        cleaned.push('-');
    }
    cleaned
}

/// Dropbox's JSON `retry_after`, at the top level or inside `error`.
fn json_retry_after(object: &Map<String, Value>) -> Option<Duration> {
    let value = object
        .get("retry_after")
        .or_else(|| object.get("error")?.get("retry_after"))?;
    let seconds = value
        .as_f64()
        .or_else(|| value.as_str()?.trim().parse().ok())?;
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// A `Retry-After` header: seconds, or an HTTP date measured against the answer's own `Date`
/// (so neither clock skew nor our clock matters). An HTTP date without a `Date` header, or
/// garbage, falls back to our own backoff.
pub(crate) fn parse_retry_after(headers: Headers<'_>) -> Option<Duration> {
    let value = headers.retry_after?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let until = httpdate::parse_http_date(value).ok()?;
            let sent = httpdate::parse_http_date(headers.date?.trim()).ok()?;
            until.duration_since(sent).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn malformed(reason: &str) -> ProviderError {
    ProviderError::Malformed {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::FailureKind;

    const HOUR: Duration = Duration::from_secs(3600);

    fn ok(body: &str) -> TokenResponse {
        parse(200, Headers::default(), body.as_bytes(), HOUR, &[]).unwrap()
    }

    #[test]
    fn a_refresh_tokens_own_lifetime_is_read_when_sent_and_sane() {
        let with = |value: &str| {
            ok(&format!(
                r#"{{"access_token":"at","expires_in":28800,"refresh_token_expires_in":{value}}}"#
            ))
            .refresh_token_lifetime
        };
        assert_eq!(with("15897600"), Some(Duration::from_secs(15_897_600)));
        assert_eq!(with("\"5184000\""), Some(Duration::from_secs(5_184_000)));
        assert_eq!(with("1e300"), Some(MAX_REFRESH_LIFETIME));
        for nonsense in ["0", "-5", "null", "\"soon\"", "[1]"] {
            assert_eq!(with(nonsense), None, "{nonsense}");
        }
        assert_eq!(ok(r#"{"access_token":"at"}"#).refresh_token_lifetime, None);
    }

    fn err(status: u16, header: Option<&str>, body: &str) -> ProviderError {
        let headers = Headers {
            retry_after: header,
            date: None,
        };
        parse(status, headers, body.as_bytes(), HOUR, &["rt-sent-secret"]).unwrap_err()
    }

    #[test]
    fn dropbox_refresh_response_has_no_refresh_token() {
        let response =
            ok(r#"{"access_token": "sl.abc", "token_type": "bearer", "expires_in": 14400}"#);
        assert_eq!(response.access_token.expose(), "sl.abc");
        assert_eq!(response.token_type, "Bearer");
        assert_eq!(response.lifetime, Duration::from_secs(14400));
        assert!(response.refresh_token.is_none());
    }

    #[test]
    fn a_scope_with_control_characters_is_dropped_in_every_form() {
        for body in [
            r#"{"access_token": "a", "expires_in": 60, "scope": "read\r\nX-Evil: 1"}"#,
            r#"{"access_token": "a", "expires_in": 60, "scope": ["read", "\u001b[2J"]}"#,
        ] {
            let response = ok(body);
            assert_eq!(response.scope, None, "{body}");
        }
        let listed = ok(r#"{"access_token": "a", "expires_in": 60, "scope": ["read", "write"]}"#);
        assert_eq!(listed.scope.as_deref(), Some("read write"));
    }

    #[test]
    fn dropbox_code_response_carries_account_and_scope() {
        let response = ok(
            r#"{"access_token": "sl.x", "token_type": "bearer", "expires_in": 14400, "refresh_token": "rt2",
            "scope": "account_info.read files.content.read", "uid": "12", "account_id": "dbid:AAH"}"#,
        );
        assert_eq!(response.refresh_token.unwrap().expose(), "rt2");
        assert_eq!(response.user_id.as_deref(), Some("dbid:AAH"));
        assert_eq!(
            response.scope.as_deref(),
            Some("account_info.read files.content.read")
        );
    }

    #[test]
    fn odd_expires_in_values_are_clamped_or_mean_no_lifetime() {
        for (value, expected) in [
            ("\"14400\"", Duration::from_secs(14400)),
            ("3599.9", Duration::from_secs(3599)),
            ("0", Duration::ZERO),
            ("-5", Duration::ZERO),
            ("0.5", Duration::ZERO),
            ("null", HOUR),
            ("\"soon\"", Duration::ZERO),
            ("true", Duration::ZERO),
            ("1e300", MAX_LIFETIME),
            ("\"1e300\"", MAX_LIFETIME),
            ("864000", MAX_LIFETIME),
        ] {
            let body = format!(
                r#"{{"access_token": "a", "token_type": "bearer", "expires_in": {value}}}"#
            );
            assert_eq!(ok(&body).lifetime, expected, "{value}");
        }
        assert_eq!(
            ok(r#"{"access_token": "a", "token_type": "bearer"}"#).lifetime,
            HOUR
        );
    }

    #[test]
    fn errors_are_classified() {
        let grant = err(
            400,
            None,
            r#"{"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"}"#,
        );
        assert_eq!(grant.kind(), FailureKind::Reauth);
        assert!(grant
            .to_string()
            .contains("refresh token is invalid or revoked"));
        let legacy = err(
            400,
            None,
            r#"{"error": "invalid_client: Invalid client_id or client_secret"}"#,
        );
        assert!(
            matches!(&legacy, ProviderError::ClientRejected { code, .. } if code == "invalid_client")
        );
        assert_eq!(legacy.kind(), FailureKind::Configuration);
        assert_eq!(
            err(401, None, r#"{"error": "invalid_client"}"#).kind(),
            FailureKind::Configuration
        );
        assert_eq!(
            err(400, None, r#"{"error": "unauthorized_client"}"#).kind(),
            FailureKind::Configuration
        );
        assert_eq!(
            err(200, None, r#"{"error": "bad_refresh_token"}"#).kind(),
            FailureKind::Reauth
        );
        assert_eq!(
            err(
                200,
                None,
                r#"{"error": "invalid_scope", "access_token": "x"}"#
            )
            .kind(),
            FailureKind::Configuration
        );
        assert_eq!(
            err(404, None, "<html>not found</html>").kind(),
            FailureKind::Configuration
        );
        assert_eq!(err(302, None, "").kind(), FailureKind::Configuration);
    }

    #[test]
    fn long_standard_codes_survive_and_unknown_token_like_codes_do_not() {
        let pending = err(400, None, r#"{"error": "authorization_pending"}"#);
        assert_eq!(pending.oauth_code(), Some("authorization_pending"));
        let odd = err(400, None, r#"{"error": "sl.AbCdEf0123456789xyzQwerty"}"#);
        assert_eq!(odd.oauth_code(), Some("[REDACTED]"));
        // Dropbox's own codes are longer than a token-like run and are not secrets.
        let dead = err(
            401,
            None,
            r#"{"error_summary": "expired_access_token/..", "error": {".tag": "expired_access_token"}}"#,
        );
        assert_eq!(dead.oauth_code(), Some("expired_access_token"));
        assert!(!dead.to_string().contains("REDACTED"), "{dead}");
        let hexish = err(
            400,
            None,
            r#"{"error": "a3f09c2b7d4e5f60718293a4b5c6d7e8"}"#,
        );
        assert_eq!(hexish.oauth_code(), Some("[REDACTED]"));
    }

    #[test]
    fn a_new_sign_in_requirement_is_reauth_not_configuration() {
        for code in ["interaction_required", "consent_required", "login_required"] {
            let body = format!(
                r#"{{"error": "{code}", "error_description": "AADSTS50076: multi-factor authentication required"}}"#
            );
            assert_eq!(err(400, None, &body).kind(), FailureKind::Reauth, "{code}");
        }
        let other = err(400, None, r#"{"error": "invalid_scope"}"#);
        assert_eq!(other.kind(), FailureKind::Configuration);
    }

    #[test]
    fn rate_limits_and_outages_carry_their_wait() {
        assert_eq!(
            err(429, Some("30"), "").retry_after(),
            Some(Duration::from_secs(30))
        );
        let json = r#"{"error_summary": "too_many_requests/", "error": {"reason": {".tag": "too_many_requests"}, "retry_after": 30}}"#;
        assert_eq!(
            err(429, None, json).retry_after(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            err(429, None, r#"{"retry_after": 7}"#).retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            err(429, Some("99999999"), "").retry_after(),
            Some(MAX_RETRY_AFTER)
        );
        let outage = err(503, Some("12"), "busy");
        assert_eq!(outage.kind(), FailureKind::Transient);
        assert_eq!(outage.retry_after(), Some(Duration::from_secs(12)));
    }

    #[test]
    fn an_http_date_retry_after_is_measured_against_the_answers_date() {
        let at = |retry_after, date| {
            parse_retry_after(Headers {
                retry_after: Some(retry_after),
                date,
            })
        };
        let sent = Some("Wed, 21 Oct 2026 07:27:00 GMT");
        assert_eq!(
            at("Wed, 21 Oct 2026 07:28:30 GMT", sent),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            at("Wed, 21 Oct 2026 07:26:00 GMT", sent),
            Some(Duration::ZERO),
            "a date already past: ask again now"
        );
        assert_eq!(
            at("Thu, 21 Oct 2027 07:27:00 GMT", sent),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(at("Wed, 21 Oct 2026 07:28:30 GMT", None), None, "no Date");
        assert_eq!(at("soon", sent), None);
        assert_eq!(at(" 30 ", None), Some(Duration::from_secs(30)));
    }

    #[test]
    fn garbage_is_transient_and_never_a_token() {
        for body in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"access_token": 5}"#,
            r#"{"access_token": ""}"#,
            r#"{"access_token": "a b"}"#,
            r#"{"access_token": "a\nInjected: x"}"#,
            "\u{0}\u{1}",
        ] {
            let error = err(200, None, body);
            assert_eq!(error.kind(), FailureKind::Transient, "{body}");
        }
        let huge = format!(r#"{{"access_token": "{}"}}"#, "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(parse(200, Headers::default(), huge.as_bytes(), HOUR, &[]).is_err());
    }

    #[test]
    fn echoed_secrets_and_control_characters_are_scrubbed() {
        let error = err(400, None, "{\"error\": \"invalid_grant\", \"error_description\": \"token rt-sent-secret is bad\\u001b[31m\"}");
        let text = error.to_string();
        assert!(!text.contains("rt-sent-secret"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let long = format!(
            r#"{{"error": "invalid_grant", "error_description": "{}"}}"#,
            "x ".repeat(5000)
        );
        assert!(err(400, None, &long).to_string().len() < 400);
        let other = err(
            400,
            None,
            r#"{"error": "invalid_grant", "error_description": "token sl.AbCdEf0123456789xyzQ/w= of user dbid:1 is revoked"}"#,
        );
        assert_eq!(other.to_string(), "the provider refused the grant (invalid_grant: token [REDACTED] of user dbid:1 is revoked)");
    }
}
