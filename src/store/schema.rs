//! The on-disk form of an account record: a format byte, then the serialized row.
//!
//! Format 2 (written): the key id, then the JSON row sealed with that key (`seal.rs`).
//! Format 3 (written): a removal (tombstone), sealed the same way; it holds only a version.
//! Format 1 (read only, from before encryption): the JSON row in the clear; such a value is
//! sealed on its next write. Every sealed value carries its write version (the store's
//! counter, 0 in values from before versions), so of two copies the newer is known and
//! cannot be forged. Domain types never derive `Serialize`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::seal::{Keyring, StoreKey, KEY_ID_LEN};
use super::StoreError;
use crate::secret::{AccessToken, RefreshToken};
use crate::token::{AccountName, AccountRecord, IssuedToken};

/// The schema version this build writes and reads. 2: rows carry their write version, and
/// removals are stored; a build that knows only 1 refuses such a store with a clear message
/// rather than failing on the first row.
pub(super) const SCHEMA_VERSION: u32 = 3;

/// Value format 1: a version byte followed by a JSON `Row` in the clear (read only).
const FORMAT_JSON_V1: u8 = 1;
/// Value format 2: version byte, key id, then `nonce || sealed JSON row`.
const FORMAT_SEALED_V2: u8 = 2;
/// Value format 3: a removal: version byte, key id, then `nonce || sealed JSON tombstone`.
const FORMAT_REMOVED_V3: u8 = 3;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    /// The store's write counter when this value was written (absent before versions).
    #[serde(default)]
    version: u64,
    provider: String,
    refresh_token: String,
    token: Option<TokenRow>,
    provider_user_id: Option<String>,
    needs_reauth: bool,
    last_refresh_ms: Option<u64>,
    last_error: Option<String>,
    /// When the refresh token itself ends, when the provider said (schema 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token_expires_at_ms: Option<u64>,
    /// No scheduled refresh before this, after a failed attempt; absent otherwise, so that
    /// a healthy account's row is what schema 3 wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_at_ms: Option<u64>,
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

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    version: u64,
}

/// What one stored value says about its account.
// Values live briefly (a queue, a merge); boxing the record would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// The account as it was written.
    Put(AccountRecord),
    /// The account was removed.
    Removed,
}

/// A decoded value with its write version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Versioned {
    /// The store's write counter when the value was written.
    pub(super) version: u64,
    /// What it says.
    pub(super) entry: Entry,
}

/// Serializes and seals a record, written as version `version`, into its stored form.
pub(super) fn encode(record: &AccountRecord, version: u64, key: &StoreKey) -> Vec<u8> {
    let row = Row {
        version,
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
        refresh_token_expires_at_ms: record.refresh_token_expires_at.map(to_millis),
        retry_at_ms: record.retry_at.map(to_millis),
    };
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(&row).expect("a row of strings and numbers always serializes"),
    );
    seal_value(FORMAT_SEALED_V2, record.name.as_str(), &plaintext, key)
}

/// The stored form of `name`'s removal, written as version `version`.
pub(super) fn encode_removal(name: &AccountName, version: u64, key: &StoreKey) -> Vec<u8> {
    let plaintext = serde_json::to_vec(&Tombstone { version }).expect("a number always serializes");
    seal_value(FORMAT_REMOVED_V3, name.as_str(), &plaintext, key)
}

fn seal_value(format: u8, name: &str, plaintext: &[u8], key: &StoreKey) -> Vec<u8> {
    let mut header = vec![format];
    header.extend_from_slice(&key.id());
    let sealed = key.seal(&associated(&header, name.as_bytes()), plaintext);
    header.extend_from_slice(&sealed);
    header
}

/// What a sealed value is bound to: its own header and the account's name.
fn associated(header: &[u8], name: &[u8]) -> Vec<u8> {
    let mut associated = header.to_vec();
    associated.extend_from_slice(name);
    associated
}

/// The id of the key that sealed a value, if it is sealed.
pub(super) fn key_id(bytes: &[u8]) -> Option<&[u8]> {
    match bytes.split_first() {
        Some((&(FORMAT_SEALED_V2 | FORMAT_REMOVED_V3), rest)) => rest.get(..KEY_ID_LEN),
        _ => None,
    }
}

/// Opens and parses a stored account value back into a record.
pub(super) fn decode(
    key: &[u8],
    bytes: &[u8],
    keyring: &Keyring,
) -> Result<AccountRecord, StoreError> {
    match decode_versioned(key, bytes, keyring)?.entry {
        Entry::Put(record) => Ok(record),
        Entry::Removed => Err(StoreError::Decode {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "a removal where an account was expected".into(),
        }),
    }
}

/// Opens and parses a stored value (an account or a removal) with its version.
pub(super) fn decode_versioned(
    key: &[u8],
    bytes: &[u8],
    keyring: &Keyring,
) -> Result<Versioned, StoreError> {
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
    let plaintext = match *format {
        FORMAT_JSON_V1 => zeroize::Zeroizing::new(body.to_vec()),
        FORMAT_SEALED_V2 | FORMAT_REMOVED_V3 => {
            let (id, sealed) = body
                .split_at_checked(KEY_ID_LEN)
                .ok_or_else(|| fail("truncated".into()))?;
            let store_key = keyring.find(id).ok_or_else(|| StoreError::WrongKey {
                found: hex::encode(id),
                loaded: keyring.current.id_hex(),
            })?;
            let header = &bytes[..1 + KEY_ID_LEN];
            store_key
                .open(&associated(header, key), sealed)
                .ok_or_else(|| {
                    fail(
                        "it does not authenticate (tampered, or moved from another account)".into(),
                    )
                })?
        }
        other => return Err(fail(format!("unknown value format {other}"))),
    };
    // serde_json's messages quote no input text beyond a type name, so they carry no secret.
    if *format == FORMAT_REMOVED_V3 {
        let tombstone: Tombstone =
            serde_json::from_slice(&plaintext).map_err(|error| fail(format!("{error}")))?;
        return Ok(Versioned {
            version: tombstone.version,
            entry: Entry::Removed,
        });
    }
    let row: Row = serde_json::from_slice(&plaintext).map_err(|error| fail(format!("{error}")))?;
    let version = row.version;
    let record = AccountRecord {
        name,
        provider: row.provider,
        refresh_token: RefreshToken::new(row.refresh_token),
        token: row.token.map(|token| {
            IssuedToken::new(
                AccessToken::new(token.access_token),
                token.token_type,
                from_millis(token.expires_at_ms),
                Duration::from_millis(token.lifetime_ms),
                token.scope,
            )
        }),
        provider_user_id: row.provider_user_id,
        needs_reauth: row.needs_reauth,
        last_refresh: row.last_refresh_ms.map(from_millis),
        last_error: row.last_error,
        refresh_token_expires_at: row.refresh_token_expires_at_ms.map(from_millis),
        retry_at: row.retry_at_ms.map(from_millis),
    };
    Ok(Versioned {
        version,
        entry: Entry::Put(record),
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
            token: Some(IssuedToken::new(
                AccessToken::new("sl.at-secret"),
                "Bearer".into(),
                from_millis(1_800_000_000_123),
                Duration::from_secs(14400),
                Some("files.content.read".into()),
            )),
            provider_user_id: Some("dbid:abc".into()),
            needs_reauth: false,
            last_refresh: Some(from_millis(1_799_985_600_000)),
            last_error: None,
            refresh_token_expires_at: Some(from_millis(1_815_000_000_000)),
            retry_at: Some(from_millis(1_800_000_060_000)),
        }
    }

    fn keyring() -> Keyring {
        Keyring::new(StoreKey::from_bytes(&[1; 32]))
    }

    #[test]
    fn round_trips_every_field_sealed() {
        let record = sample();
        let bytes = encode(&record, 41, &keyring().current);
        assert_eq!(bytes[0], FORMAT_SEALED_V2);
        assert_eq!(key_id(&bytes), Some(&keyring().current.id()[..]));
        assert_eq!(decode(b"dropbox-main", &bytes, &keyring()).unwrap(), record);
        assert_eq!(
            decode_versioned(b"dropbox-main", &bytes, &keyring()).unwrap(),
            Versioned {
                version: 41,
                entry: Entry::Put(record.clone())
            }
        );
        for secret in ["rt-secret", "sl.at-secret"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in the clear"
            );
        }
    }

    #[test]
    fn a_removal_carries_its_version_and_is_bound_to_its_account() {
        let name: AccountName = "dropbox-main".parse().unwrap();
        let bytes = encode_removal(&name, 7, &keyring().current);
        assert_eq!(
            decode_versioned(b"dropbox-main", &bytes, &keyring()).unwrap(),
            Versioned {
                version: 7,
                entry: Entry::Removed
            }
        );
        assert!(decode_versioned(b"dropbox-other", &bytes, &keyring()).is_err());
        assert!(
            decode(b"dropbox-main", &bytes, &keyring()).is_err(),
            "not an account"
        );
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(
            decode_versioned(b"dropbox-main", &flipped, &keyring()).is_err(),
            "a flipped bit does not authenticate"
        );
    }

    #[test]
    fn reads_plaintext_values_from_before_encryption() {
        let row = r#"{"provider":"dropbox","refresh_token":"rt","token":null,"provider_user_id":null,"needs_reauth":false,"last_refresh_ms":null,"last_error":null}"#;
        let mut bytes = vec![FORMAT_JSON_V1];
        bytes.extend_from_slice(row.as_bytes());
        assert_eq!(
            decode(b"a", &bytes, &keyring())
                .unwrap()
                .refresh_token
                .expose(),
            "rt"
        );
    }

    #[test]
    fn the_wrong_key_or_account_or_garbage_is_refused() {
        let bytes = encode(&sample(), 1, &keyring().current);
        let other = Keyring::new(StoreKey::from_bytes(&[2; 32]));
        assert!(matches!(
            decode(b"dropbox-main", &bytes, &other),
            Err(StoreError::WrongKey { .. })
        ));
        assert!(
            matches!(
                decode(b"dropbox-other", &bytes, &keyring()),
                Err(StoreError::Decode { .. })
            ),
            "bound to its account"
        );
        let mut unknown = bytes.clone();
        unknown[0] = 9;
        assert!(matches!(
            decode(b"dropbox-main", &unknown, &keyring()),
            Err(StoreError::Decode { .. })
        ));
        assert!(decode(b"dropbox-main", &[], &keyring()).is_err());
        assert!(decode(b"dropbox-main", &[FORMAT_JSON_V1, b'{'], &keyring()).is_err());
        assert!(decode(b"../x", &bytes, &keyring()).is_err());
    }
}
