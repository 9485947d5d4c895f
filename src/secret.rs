//! Secret values and the token newtypes built on them.
//!
//! A secret can be read only through `expose()`, which is easy to grep for. None of these
//! types implements `Display` or `Serialize`, and their `Debug` prints a fixed placeholder,
//! so a secret cannot reach a log line, an error message or a metric by accident.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// The text printed in place of any secret.
pub const REDACTED: &str = "[REDACTED]";

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The secret itself; every call site is a place where a secret leaves its box.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({REDACTED})", stringify!($name))
            }
        }

        impl PartialEq for $name {
            /// Compares in constant time, so equality checks do not leak a prefix.
            fn eq(&self, other: &Self) -> bool {
                use subtle::ConstantTimeEq;
                self.expose().as_bytes().ct_eq(other.expose().as_bytes()).into()
            }
        }

        impl Eq for $name {}
    };
}

secret_type!(
    /// A bearer access token, handed to clients.
    AccessToken
);
secret_type!(
    /// A refresh token: the long-lived grant. It never leaves the broker except towards the provider.
    RefreshToken
);
secret_type!(
    /// The key that signs a notification webhook's body (HMAC-SHA256).
    WebhookSecret
);
secret_type!(
    /// An OAuth client secret from the configuration.
    ClientSecret
);
secret_type!(
    /// A PostgreSQL URL: it may carry a password.
    DatabaseUrl
);
secret_type!(
    /// An API key presented by a TCP client.
    ApiKey
);
secret_type!(
    /// A one-time authorization code from a provider's redirect or its no-redirect page.
    AuthorizationCode
);
secret_type!(
    /// A PKCE code verifier (RFC 7636): proves the exchange comes from who started the flow.
    PkceVerifier
);
secret_type!(
    /// An RFC 8628 device code, polled with at the token endpoint.
    DeviceCode
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let samples = [
            format!("{:?}", AccessToken::new("sl.access-SECRET")),
            format!("{:?}", RefreshToken::new("refresh-SECRET")),
            format!("{:?}", ClientSecret::new("client-SECRET")),
            format!("{:?}", ApiKey::new("key-SECRET")),
            format!("{:#?}", Some(AccessToken::new("pretty-SECRET"))),
        ];
        for text in samples {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
    }

    #[test]
    fn equality_compares_the_values() {
        assert_eq!(AccessToken::new("a"), AccessToken::new("a"));
        assert_ne!(AccessToken::new("a"), AccessToken::new("b"));
        assert_ne!(AccessToken::new("a"), AccessToken::new("ab"));
    }
}
