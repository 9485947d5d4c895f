//! The one shape a token is handed out in: [`TokenBody`], the JSON of `GET /v1/token`,
//! `tokenbroker token --json` and `json` sinks.
//!
//! From one request to the next only `expires_in` changes, so each token's JSON is rendered
//! once, through serde, the first time it is asked for, and kept with the token: a new token
//! is a new value and starts without one. Serving splices the seconds left into it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::IssuedToken;
use crate::secret::REDACTED;

/// A token as it is handed out.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenBody {
    /// The bearer token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Whole seconds left.
    pub expires_in: u64,
    /// Granted scopes.
    pub scope: Option<String>,
}

impl fmt::Debug for TokenBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBody")
            .field("access_token", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A token's JSON once rendered, kept with the token, without a second copy of the token
/// itself. It takes no part in comparing tokens, and a clone shares it.
#[derive(Clone, Default)]
pub(super) struct Kept(OnceLock<Arc<Rendered>>);

impl Kept {
    /// `token`'s JSON with `expires_in` seconds left.
    ///
    /// A token's text, type and scope never change (a refresh makes a new token); its
    /// expiry may be moved in place (a step of the wall clock), so the kept text is checked
    /// against it, which costs one comparison.
    pub(super) fn json(&self, token: &IssuedToken, expires_in: u64) -> Vec<u8> {
        let kept = self.0.get_or_init(|| Arc::new(Rendered::of(token)));
        if kept.expires_at == token.expires_at {
            debug_assert!(
                kept.with_expires_in(token, expires_in)
                    == Rendered::of(token).with_expires_in(token, expires_in),
                "a kept token JSON is another token's"
            );
            kept.with_expires_in(token, expires_in)
        } else {
            Rendered::of(token).with_expires_in(token, expires_in)
        }
    }
}

impl PartialEq for Kept {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Kept {}

impl fmt::Debug for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "rendered"
        } else {
            "not rendered"
        })
    }
}

/// The text of [`TokenBody`] around the access token and the `expires_in` number. The token
/// is taken from the `IssuedToken` each time: keeping its text here too would double what
/// every served account holds (a Dropbox token is 1.3 KB). Only a token that JSON must
/// escape (none that providers issue) is kept, escaped, and wiped when dropped.
pub(super) struct Rendered {
    /// The expiry it was rendered with.
    expires_at: std::time::SystemTime,
    /// The token as a JSON string, when that is not the token between quotes.
    escaped: Option<Zeroizing<Box<[u8]>>>,
    /// `,"token_type":…,"expires_at":…,"expires_in":`
    middle: Box<[u8]>,
    /// `,"scope":…}`
    after: Box<[u8]>,
}

/// What serde writes before the token.
const HEAD: &[u8] = br#"{"access_token":"#;
/// What comes right before the number. A JSON string escapes every `"` in it, so `":` can
/// only end a key: this is found once, where serde wrote the key.
const EXPIRES_IN_KEY: &[u8] = br#""expires_in":"#;

impl Rendered {
    fn of(token: &IssuedToken) -> Self {
        let mut body = token.body(0);
        let json = Zeroizing::new(serde_json::to_vec(&body).expect("strings always serialise"));
        let string = Zeroizing::new(
            serde_json::to_vec(&body.access_token).expect("strings always serialise"),
        );
        body.access_token.zeroize();
        debug_assert!(json.starts_with(HEAD) && json[HEAD.len()..].starts_with(&string));
        let middle_starts = HEAD.len() + string.len();
        let key = json
            .windows(EXPIRES_IN_KEY.len())
            .position(|window| window == EXPIRES_IN_KEY)
            .expect("serde writes every field");
        let number = key + EXPIRES_IN_KEY.len();
        debug_assert_eq!(json[number], b'0');
        let plain = string.len() == token.access_token.expose().len() + 2;
        Self {
            expires_at: token.expires_at,
            escaped: (!plain).then(|| Zeroizing::new(string.as_slice().into())),
            middle: json[middle_starts..number].into(),
            after: json[number + 1..].into(),
        }
    }

    fn with_expires_in(&self, token: &IssuedToken, expires_in: u64) -> Vec<u8> {
        let mut number = itoa::Buffer::new();
        let number = number.format(expires_in);
        let raw = token.access_token.expose().as_bytes();
        let mut json = Vec::with_capacity(
            HEAD.len() + raw.len() + 2 + self.middle.len() + number.len() + self.after.len(),
        );
        json.extend_from_slice(HEAD);
        match &self.escaped {
            Some(escaped) => json.extend_from_slice(escaped),
            None => {
                json.push(b'"');
                json.extend_from_slice(raw);
                json.push(b'"');
            }
        }
        json.extend_from_slice(&self.middle);
        json.extend_from_slice(number.as_bytes());
        json.extend_from_slice(&self.after);
        json
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::secret::AccessToken;

    fn token(access_token: &str, scope: Option<&str>) -> IssuedToken {
        IssuedToken::new(
            AccessToken::new(access_token),
            "bearer".into(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            Duration::from_secs(14_400),
            scope.map(str::to_owned),
        )
    }

    /// The kept JSON is serde's, byte for byte, whatever the token holds (quotes, escapes,
    /// the key's own text), and clients read it back as `TokenBody`.
    #[test]
    fn the_kept_json_is_the_token_body_byte_for_byte() {
        for (access_token, scope) in [
            ("sl.u.AbC-123_xyz", None),
            (
                r#"with "quotes", \ and "expires_in":1"#,
                Some(r#"files.content.read "expires_in":2"#),
            ),
            ("\u{1}", Some("")),
            ("", None),
        ] {
            let token = token(access_token, scope);
            for left in [0, 7, 14_399, u64::MAX] {
                let json = token.json(Duration::from_secs(left));
                assert_eq!(json, serde_json::to_vec(&token.body(left)).unwrap());
                let read: TokenBody = serde_json::from_slice(&json).unwrap();
                assert_eq!(
                    (
                        read.access_token.as_str(),
                        read.expires_in,
                        read.scope.as_deref()
                    ),
                    (access_token, left, scope)
                );
                assert_eq!(read.expires_at, "2026-11-18T11:06:40Z");
            }
        }
    }

    /// A clone shares the JSON and compares equal; an expiry moved in place (a step of the
    /// wall clock) is what the JSON then says.
    #[test]
    fn a_moved_expiry_is_rendered_anew() {
        let mut token = token("first", None);
        let _ = token.json(Duration::from_secs(5));
        assert_eq!(token.clone(), token);
        token.expires_at -= Duration::from_secs(3600);
        let read: TokenBody = serde_json::from_slice(&token.json(Duration::ZERO)).unwrap();
        assert_eq!(read.expires_at, "2026-11-18T10:06:40Z");
    }

    /// What is kept per served token holds no second copy of it (a Dropbox token is 1.3 KB,
    /// and every account served keeps its JSON): only a token JSON must escape is kept.
    #[test]
    fn the_kept_json_holds_no_copy_of_a_plain_token() {
        let long = format!("sl.{}", "x".repeat(1300));
        let rendered = Rendered::of(&token(&long, Some("read")));
        assert!(rendered.escaped.is_none());
        assert!(rendered.middle.len() + rendered.after.len() < 200);
        let quoted = Rendered::of(&token(r#"with "quotes""#, None));
        assert!(quoted.escaped.is_some());
    }

    #[test]
    fn debug_shows_no_token() {
        let token = token("secret-token-text", Some("read"));
        let _ = token.json(Duration::ZERO);
        let shown = format!("{token:?} {:?}", token.body(1));
        assert!(!shown.contains("secret-token-text"), "{shown}");
    }
}
