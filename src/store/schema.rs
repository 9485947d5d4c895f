//! The on-disk form of an account record: a format byte, then the serialized row.
//!
//! Format 1 is a JSON row. The format byte leaves room for sealed (encrypted) values, and the
//! store's schema-version key for migrations; domain types never derive `Serialize`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::secret::{AccessToken, RefreshToken};
use crate::token::{AccountName, AccountRecord, IssuedToken};

/// The schema version this build writes and reads.
pub(super) const SCHEMA_VERSION: u32 = 1;

/// Value format: a version byte followed by a JSON `Row`.
const FORMAT_JSON_V1: u8 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    provider: String,
    refresh_token: String,
    token: Option<TokenRow>,
    provider_user_id: Option<String>,
    needs_reauth: bool,
    last_refresh_ms: Option<u64>,
    last_error: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRow {
    access_token: String,
    token_type: String,
    expires_at_ms: u64,
    lifetime_ms: u64,
    scope: Option<String>,
}

/// Serializes a record into its stored form.
pub(super) fn encode(record: &AccountRecord) -> Vec<u8> {
    let row = Row {
        provider: record.provider.clone(),
        refresh_token: record.refresh_token.expose().to_owned(),
        token: record.token.as_ref().map(|token| TokenRow {
            access_token: token.access_token.expose().to_owned(),
            token_type: token.token_type.clone(),
            expires_at_ms: to_millis(token.expires_at),
            lifetime_ms: u64::try_from(token.lifetime.as_millis()).unwrap_or(u64::MAX),
            scope: token.scope.clone(),
        }),
        provider_user_id: record.provider_user_id.clone(),
        needs_reauth: record.needs_reauth,
        last_refresh_ms: record.last_refresh.map(to_millis),
        last_error: record.last_error.clone(),
    };
    let mut bytes = vec![FORMAT_JSON_V1];
    serde_json::to_writer(&mut bytes, &row)
        .expect("a row of strings and numbers always serializes");
    bytes
}

/// Parses a stored value back into a record.
pub(super) fn decode(key: &[u8], bytes: &[u8]) -> Result<AccountRecord, StoreError> {
    let key_text = String::from_utf8_lossy(key).into_owned();
    let fail = |reason: String| StoreError::Decode {
        key: key_text.clone(),
        reason,
    };
    let name: AccountName = key_text
        .parse()
        .map_err(|_| fail("the key is not an account name".into()))?;
    let (format, body) = bytes
        .split_first()
        .ok_or_else(|| fail("empty value".into()))?;
    if *format != FORMAT_JSON_V1 {
        return Err(fail(format!("unknown value format {format}")));
    }
    // serde_json's messages quote no input text beyond a type name, so they carry no secret.
    let row: Row = serde_json::from_slice(body).map_err(|error| fail(format!("{error}")))?;
    Ok(AccountRecord {
        name,
        provider: row.provider,
        refresh_token: RefreshToken::new(row.refresh_token),
        token: row.token.map(|token| IssuedToken {
            access_token: AccessToken::new(token.access_token),
            token_type: token.token_type,
            expires_at: from_millis(token.expires_at_ms),
            lifetime: Duration::from_millis(token.lifetime_ms),
            scope: token.scope,
        }),
        provider_user_id: row.provider_user_id,
        needs_reauth: row.needs_reauth,
        last_refresh: row.last_refresh_ms.map(from_millis),
        last_error: row.last_error,
    })
}

fn to_millis(time: SystemTime) -> u64 {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

fn from_millis(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccountRecord {
        AccountRecord {
            name: "dropbox-main".parse().unwrap(),
            provider: "dropbox".into(),
            refresh_token: RefreshToken::new("rt-secret"),
            token: Some(IssuedToken {
                access_token: AccessToken::new("sl.at"),
                token_type: "Bearer".into(),
                expires_at: from_millis(1_800_000_000_123),
                lifetime: Duration::from_secs(14400),
                scope: Some("files.content.read".into()),
            }),
            provider_user_id: Some("dbid:abc".into()),
            needs_reauth: false,
            last_refresh: Some(from_millis(1_799_985_600_000)),
            last_error: None,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let record = sample();
        let bytes = encode(&record);
        assert_eq!(bytes[0], FORMAT_JSON_V1);
        assert_eq!(decode(b"dropbox-main", &bytes).unwrap(), record);
    }

    #[test]
    fn rejects_unknown_formats_and_garbage() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert!(matches!(
            decode(b"dropbox-main", &bytes),
            Err(StoreError::Decode { .. })
        ));
        assert!(decode(b"dropbox-main", &[]).is_err());
        assert!(decode(b"dropbox-main", &[FORMAT_JSON_V1, b'{']).is_err());
        assert!(decode(b"../x", &encode(&sample())).is_err());
    }
}
