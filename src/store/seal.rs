//! Sealing stored values: XChaCha20-Poly1305 with a random 24-byte nonce per write, the
//! value's header and the account name as associated data (a value cannot be moved to
//! another account), and the key's id in each value (so a store says which key it needs).

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of a store key.
pub const KEY_LEN: usize = 32;
/// Length of a key id in a sealed value.
pub(super) const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;

/// A key that seals and opens stored values.
#[derive(Clone)]
pub struct StoreKey {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey(id {})", self.id_hex())
    }
}

impl StoreKey {
    /// The key with these bytes. Its id is derived from them, so the same key always has
    /// the same id and the id reveals nothing useful about the key.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"tokenbroker store key id\0")
            .chain_update(bytes)
            .finalize();
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self {
            id,
            cipher: XChaCha20Poly1305::new(&Key::from(*bytes)),
        }
    }

    /// A new random key, with its bytes for writing to the key file.
    pub fn generate() -> (Self, Zeroizing<[u8; KEY_LEN]>) {
        let bytes = Zeroizing::new(rand::random::<[u8; KEY_LEN]>());
        (Self::from_bytes(&bytes), bytes)
    }

    /// The id stored in every value sealed with this key.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    /// The id as hex, for messages.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// `nonce || ciphertext` of `plaintext`, bound to `associated`.
    pub(super) fn seal(&self, associated: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = rand::random::<[u8; NONCE_LEN]>();
        let ciphertext = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: associated,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory values");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// The plaintext of `nonce || ciphertext`, if this key sealed it with `associated`.
    pub(super) fn open(&self, associated: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, ciphertext) = sealed.split_first_chunk::<NONCE_LEN>()?;
        self.cipher
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad: associated,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// The key that seals new values, and any others that may still open old ones (during a rekey).
#[derive(Debug, Clone)]
pub struct Keyring {
    /// Seals every write.
    pub current: StoreKey,
    /// Open values written before a rekey finished.
    pub previous: Vec<StoreKey>,
}

impl Keyring {
    /// A keyring of one key.
    pub fn new(current: StoreKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// The key with this id.
    pub(super) fn find(&self, id: &[u8]) -> Option<&StoreKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| key.id[..] == *id)
    }
}

/// Reads a key file: 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
pub fn parse_key_file(bytes: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Some(Zeroizing::new(raw));
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded = Zeroizing::new(hex::decode(text).ok()?);
    <[u8; KEY_LEN]>::try_from(decoded.as_slice())
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_associated_data() {
        let (key, _) = StoreKey::generate();
        let (other, _) = StoreKey::generate();
        let sealed = key.seal(b"account-a", b"secret row");
        assert_eq!(
            key.open(b"account-a", &sealed).unwrap().as_slice(),
            b"secret row"
        );
        assert!(
            key.open(b"account-b", &sealed).is_none(),
            "bound to its account"
        );
        assert!(
            other.open(b"account-a", &sealed).is_none(),
            "bound to its key"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open(b"account-a", &tampered).is_none());
        assert_ne!(
            key.seal(b"a", b"x"),
            key.seal(b"a", b"x"),
            "a fresh nonce per write"
        );
        assert!(!sealed.windows(10).any(|w| w == b"secret row"));
    }

    #[test]
    fn key_files_are_raw_or_hex_and_ids_are_stable() {
        let raw = [7u8; KEY_LEN];
        assert_eq!(*parse_key_file(&raw).unwrap(), raw);
        let hex_text = format!("{}\n", hex::encode(raw));
        assert_eq!(*parse_key_file(hex_text.as_bytes()).unwrap(), raw);
        assert!(parse_key_file(b"short").is_none());
        assert_eq!(
            StoreKey::from_bytes(&raw).id(),
            StoreKey::from_bytes(&raw).id()
        );
        assert!(!format!("{:?}", StoreKey::from_bytes(&raw)).contains("0707"));
    }
}
