//! Account names, issued tokens, stored grants, and the pure arithmetic of when to refresh.
//!
//! Nothing here does I/O or reads the clock: callers pass `now` and a random fraction in,
//! which keeps the refresh rules exactly testable.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::secret::{AccessToken, RefreshToken};

mod json;
pub use self::json::TokenBody;

/// The longest account name DESIGN.md allows.
const MAX_NAME_LEN: usize = 63;

/// An account name: `[a-z0-9][a-z0-9._-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountName(String);

/// Why a string is not an account name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("account names are 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
pub struct InvalidAccountName;

impl FromStr for AccountName {
    type Err = InvalidAccountName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if Self::is_valid(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidAccountName)
        }
    }
}

/// Accounts kept by name can be looked up by a `&str` that [`AccountName::is_valid`] accepts,
/// without making an `AccountName` of it.
impl std::borrow::Borrow<str> for AccountName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AccountName {
    /// Whether `text` is an account name, without keeping it.
    pub fn is_valid(text: &str) -> bool {
        let bytes = text.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
        first_ok && rest_ok && bytes.len() <= MAX_NAME_LEN
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The environment variable that carries this account's token (`exec`, `env` sinks):
    /// `dropbox-main` → `DROPBOX_MAIN_TOKEN`.
    pub fn token_variable(&self) -> String {
        let stem: String = self
            .0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{stem}_TOKEN")
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An access token together with what the provider said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer token.
    pub access_token: AccessToken,
    /// `Bearer` for every provider we know; kept as sent otherwise.
    pub token_type: String,
    /// Wall-clock instant at which the provider stops accepting it.
    pub expires_at: SystemTime,
    /// How long it was issued for (the provider's `expires_in`, or the default lifetime).
    pub lifetime: Duration,
    /// Space-separated scopes, when the provider said.
    pub scope: Option<String>,
    /// Its JSON, once rendered.
    json: json::Kept,
}

impl IssuedToken {
    /// A token as the provider issued it.
    pub fn new(
        access_token: AccessToken,
        token_type: String,
        expires_at: SystemTime,
        lifetime: Duration,
        scope: Option<String>,
    ) -> Self {
        Self {
            access_token,
            token_type,
            expires_at,
            lifetime,
            scope,
            json: json::Kept::default(),
        }
    }

    /// The token as it is handed out, with `expires_in` seconds left.
    pub fn body(&self, expires_in: u64) -> TokenBody {
        TokenBody {
            access_token: self.access_token.expose().to_owned(),
            token_type: self.token_type.clone(),
            expires_at: humantime::format_rfc3339_seconds(self.expires_at).to_string(),
            expires_in,
            scope: self.scope.clone(),
        }
    }

    /// [`IssuedToken::body`] as JSON, byte for byte, rendered once per token and kept.
    pub fn json(&self, expires_in: Duration) -> Vec<u8> {
        self.json.json(self, expires_in.as_secs())
    }

    /// Time left before expiry at `now`; zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// When it was issued, as far as we know.
    pub fn issued_at(&self) -> SystemTime {
        self.expires_at
            .checked_sub(self.lifetime)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// One account's grant and status as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account's name.
    pub name: AccountName,
    /// Name of the configured provider that issued the grant.
    pub provider: String,
    /// The grant itself.
    pub refresh_token: RefreshToken,
    /// The current access token, if one has been issued.
    pub token: Option<IssuedToken>,
    /// The provider's id for the user (Dropbox `account_id`), when known.
    pub provider_user_id: Option<String>,
    /// The provider refused the grant (`invalid_grant`); no refresh is tried until reconnected.
    pub needs_reauth: bool,
    /// Time of the last successful refresh.
    pub last_refresh: Option<SystemTime>,
    /// The last failure, in words that carry no secret.
    pub last_error: Option<String>,
    /// When the refresh token itself ends, when the provider said how long it lasts.
    pub refresh_token_expires_at: Option<SystemTime>,
    /// After a failed attempt, no scheduled refresh before this (the backoff, and the
    /// provider's `Retry-After`): stored, so that brokers sharing a store keep to it too.
    pub retry_at: Option<SystemTime>,
}

impl AccountRecord {
    /// A fresh grant with no access token yet.
    pub fn new(name: AccountName, provider: String, refresh_token: RefreshToken) -> Self {
        Self {
            name,
            provider,
            refresh_token,
            token: None,
            provider_user_id: None,
            needs_reauth: false,
            last_refresh: None,
            last_error: None,
            refresh_token_expires_at: None,
            retry_at: None,
        }
    }
}

/// When tokens are refreshed and how failures back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Refresh when less than this (or half the lifetime) remains.
    pub ahead: Duration,
    /// Up to this much earlier, at random, so accounts do not align.
    pub jitter: Duration,
    /// Never hand out a token with less time left than this (capped at half the lifetime).
    pub min_valid: Duration,
    /// Never refresh an account more often than this on schedule, whatever the provider says.
    pub min_interval: Duration,
    /// First backoff step after a transient failure.
    pub backoff_base: Duration,
    /// Longest wait between attempts; also the pace of retries after a configuration error.
    pub backoff_max: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            ahead: Duration::from_secs(3600),
            jitter: Duration::from_secs(300),
            min_valid: Duration::from_secs(60),
            min_interval: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl RefreshPolicy {
    /// How long before expiry a refresh is due: `min(ahead, lifetime / 2)`.
    pub fn margin(&self, lifetime: Duration) -> Duration {
        self.ahead.min(lifetime / 2)
    }

    /// When a scheduled refresh of `token` is due. `random` in `[0, 1)` picks the jitter,
    /// which is capped at half the margin so that short-lived tokens cannot refresh in a loop.
    pub fn due_at(&self, token: &IssuedToken, random: f64) -> SystemTime {
        let margin = self.margin(token.lifetime);
        let jitter = self.jitter.min(margin / 2).mul_f64(random.clamp(0.0, 1.0));
        let due = token
            .expires_at
            .checked_sub(margin + jitter)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        due.max(token.issued_at() + self.min_interval)
    }

    /// The least time a token served without an explicit `min_valid` must have left.
    pub fn default_min_valid(&self, lifetime: Duration) -> Duration {
        self.min_valid.min(lifetime / 2)
    }

    /// Full-jitter exponential backoff after `failures` consecutive failures (1 for the first):
    /// a random wait in `[0, min(max, base * 2^(failures-1))]`, but never less than
    /// what the provider asked for with `Retry-After`.
    pub fn backoff(&self, failures: u32, retry_after: Option<Duration>, random: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << exponent)
            .min(self.backoff_max);
        let wait = ceiling.mul_f64(random.clamp(0.0, 1.0));
        wait.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn token(expires_at: SystemTime, lifetime: Duration) -> IssuedToken {
        IssuedToken::new(
            AccessToken::new("at"),
            "Bearer".into(),
            expires_at,
            lifetime,
            None,
        )
    }

    #[test]
    fn account_names_follow_the_design_pattern() {
        for good in ["a", "dropbox-main", "0.x_y-z", &"a".repeat(63)] {
            assert!(good.parse::<AccountName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "A",
            "a/b",
            "a b",
            "ä",
            &"a".repeat(64),
            "../etc",
        ] {
            assert_eq!(bad.parse::<AccountName>(), Err(InvalidAccountName), "{bad}");
        }
    }

    #[test]
    fn dropbox_tokens_refresh_an_hour_ahead_minus_jitter() {
        let policy = RefreshPolicy::default();
        let issued = SystemTime::UNIX_EPOCH + HOUR * 100;
        let t = token(issued + HOUR * 4, HOUR * 4);
        assert_eq!(policy.due_at(&t, 0.0), issued + HOUR * 3);
        let five_minutes = Duration::from_secs(300);
        let earliest = issued + HOUR * 3 - five_minutes;
        assert!(
            policy
                .due_at(&t, 0.999_999)
                .duration_since(earliest)
                .unwrap()
                < Duration::from_millis(1)
        );
    }

    #[test]
    fn short_tokens_refresh_at_half_life_and_jitter_cannot_make_a_loop() {
        let policy = RefreshPolicy::default();
        let issued = SystemTime::UNIX_EPOCH + HOUR;
        let t = token(issued + Duration::from_secs(60), Duration::from_secs(60));
        // margin 30 s; jitter (5 min configured) is capped at 15 s.
        assert_eq!(policy.due_at(&t, 0.0), issued + Duration::from_secs(30));
        assert_eq!(policy.due_at(&t, 1.0), issued + Duration::from_secs(15));
        // A one-second token still waits min_interval before the next scheduled refresh.
        let tiny = token(issued + Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(policy.due_at(&tiny, 1.0), issued + policy.min_interval);
    }

    #[test]
    fn default_min_valid_is_capped_at_half_the_lifetime() {
        let policy = RefreshPolicy::default();
        assert_eq!(policy.default_min_valid(HOUR * 4), Duration::from_secs(60));
        assert_eq!(
            policy.default_min_valid(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RefreshPolicy::default();
        assert_eq!(policy.backoff(1, None, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(4, None, 1.0), Duration::from_secs(8));
        assert_eq!(policy.backoff(40, None, 1.0), Duration::from_secs(300));
        assert_eq!(policy.backoff(4, None, 0.0), Duration::ZERO);
        assert_eq!(
            policy.backoff(1, Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            policy.backoff(40, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn remaining_is_zero_after_expiry() {
        let t = token(SystemTime::UNIX_EPOCH + HOUR, HOUR);
        assert_eq!(
            t.remaining(SystemTime::UNIX_EPOCH + HOUR * 2),
            Duration::ZERO
        );
        assert_eq!(t.remaining(SystemTime::UNIX_EPOCH), HOUR);
    }
}
