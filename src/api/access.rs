//! Who is calling, and which accounts they may have.
//!
//! Socket peers are known by their kernel credentials (uid, gid, pid); TCP callers by an API
//! key whose SHA-256 is compared in constant time. Admins are uid 0, the daemon's own uid,
//! `server.admin_uids`, and clients marked `admin`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::metrics::{Metrics, TokenCounters};
use crate::secret::ApiKey;

/// The other end of a connection, as the listener found it at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A Unix-socket peer.
    Unix {
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
        /// Its pid, when the kernel tells.
        pid: Option<i32>,
    },
    /// A loopback TCP peer.
    Tcp(SocketAddr),
}

/// A configured client.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its name, for logs and metrics.
    pub name: Arc<str>,
    /// Socket peers with one of these uids are this client.
    pub uids: Vec<u32>,
    /// Socket peers with one of these primary gids are this client.
    pub gids: Vec<u32>,
    /// SHA-256 of its API key.
    pub api_key_sha256: Option<[u8; 32]>,
    /// Glob patterns of the accounts it may have.
    pub accounts: Vec<glob::Pattern>,
    /// May use the admin routes.
    pub admin: bool,
    /// May read `/metrics` (which names accounts and clients).
    pub metrics: bool,
}

/// A kind of caller the daemon knows (a configured client, or the admin uids), with what is
/// counted of it.
#[derive(Debug)]
struct Known {
    /// Its name, for logs and metrics.
    name: Arc<str>,
    /// The configured client; `None` for admin uids on the socket.
    client: Option<Client>,
    /// Its tokens served (`200`), counted without a label lookup.
    served: TokenCounters,
}

impl Known {
    fn new(name: Arc<str>, client: Option<Client>, metrics: &Metrics) -> Arc<Self> {
        let served = metrics.token_counters(&name, super::token::ROUTE, StatusCode::OK.as_u16());
        Arc::new(Self {
            name,
            client,
            served,
        })
    }
}

/// An identified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    known: Arc<Known>,
    /// The peer's uid, on the socket.
    pub uid: Option<u32>,
    /// The peer's pid, on the socket.
    pub pid: Option<i32>,
}

impl Caller {
    /// The client's name, for logs (`admin` for admin uids).
    pub fn name(&self) -> &str {
        &self.known.name
    }

    /// The client's name, shared rather than copied (for labelling responses).
    pub fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.known.name)
    }

    /// The counters of the tokens served to this caller's client.
    pub fn served(&self) -> &TokenCounters {
        &self.known.served
    }

    /// Whether the caller may use the admin routes.
    pub fn is_admin(&self) -> bool {
        self.known.client.as_ref().is_none_or(|client| client.admin)
    }

    /// Whether the caller may read `/metrics`: admins and clients with `metrics = true`.
    pub fn may_read_metrics(&self) -> bool {
        self.known
            .client
            .as_ref()
            .is_none_or(|client| client.admin || client.metrics)
    }

    /// Whether the caller may have this account's token and status.
    pub fn may_read(&self, account: &str) -> bool {
        self.known.client.as_ref().is_none_or(|client| {
            client
                .accounts
                .iter()
                .any(|p| p.as_str() == "*" || p.matches(account))
        })
    }

    /// Whether the caller may have every account (and so may learn which do not exist).
    pub fn sees_all(&self) -> bool {
        self.known
            .client
            .as_ref()
            .is_none_or(|client| client.accounts.iter().any(|p| p.as_str() == "*"))
    }
}

/// The rules for identifying callers.
#[derive(Debug, Clone)]
pub struct Access {
    /// Sorted, without repeats: a handful, searched on every socket request (a scan of a
    /// few numbers costs less than hashing one).
    admin_uids: Vec<u32>,
    admins: Arc<Known>,
    clients: Vec<Arc<Known>>,
}

impl Access {
    /// Rules from configuration, counted in `metrics`; uid 0 and `own_uid` are always admins.
    pub fn new(admin_uids: &[u32], own_uid: u32, clients: Vec<Client>, metrics: &Metrics) -> Self {
        let mut admin_uids: Vec<u32> = admin_uids.iter().copied().chain([0, own_uid]).collect();
        admin_uids.sort_unstable();
        admin_uids.dedup();
        Self {
            admin_uids,
            admins: Known::new("admin".into(), None, metrics),
            clients: clients
                .into_iter()
                .map(|client| Known::new(Arc::clone(&client.name), Some(client), metrics))
                .collect(),
        }
    }

    /// Identifies a caller from its connection and `Authorization` header.
    ///
    /// # Errors
    /// 401 for a missing or wrong key where a key is needed; 403 for a socket peer that is
    /// no configured client.
    pub fn identify(&self, peer: &Peer, bearer: Option<&ApiKey>) -> Result<Caller, ApiError> {
        let (uid, pid) = match peer {
            Peer::Unix { uid, pid, .. } => (Some(*uid), *pid),
            Peer::Tcp(_) => (None, None),
        };
        if let Some(key) = bearer {
            let digest: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
            // Compare against every client so the time taken does not tell which one matched.
            let mut found = None;
            for known in &self.clients {
                let expected = known
                    .client
                    .as_ref()
                    .and_then(|c| c.api_key_sha256.as_ref());
                if let Some(expected) = expected {
                    if bool::from(expected.ct_eq(&digest)) && found.is_none() {
                        found = Some(known);
                    }
                }
            }
            return found
                .map(|client| caller(client, uid, pid))
                .ok_or(ApiError::Unauthorized);
        }
        match peer {
            Peer::Unix { uid, gid, pid } => {
                if self.admin_uids.contains(uid) {
                    return Ok(caller(&self.admins, Some(*uid), *pid));
                }
                self.clients
                    .iter()
                    .find(|known| {
                        known.client.as_ref().is_some_and(|client| {
                            client.uids.contains(uid) || client.gids.contains(gid)
                        })
                    })
                    .map(|known| caller(known, Some(*uid), *pid))
                    .ok_or_else(|| {
                        ApiError::Forbidden(format!("uid {uid} is not a configured client"))
                    })
            }
            Peer::Tcp(_) => Err(ApiError::Unauthorized),
        }
    }
}

fn caller(known: &Arc<Known>, uid: Option<u32>, pid: Option<i32>) -> Caller {
    Caller {
        known: Arc::clone(known),
        uid,
        pid,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A client for tests; `key` is the plain API key.
    pub(in crate::api) fn client(
        name: &str,
        key: Option<&str>,
        uids: &[u32],
        accounts: &[&str],
    ) -> Client {
        Client {
            name: name.into(),
            uids: uids.to_vec(),
            gids: vec![],
            api_key_sha256: key.map(|k| Sha256::digest(k.as_bytes()).into()),
            accounts: accounts
                .iter()
                .map(|p| glob::Pattern::new(p).unwrap())
                .collect(),
            admin: false,
            metrics: false,
        }
    }

    fn access() -> Access {
        Access::new(
            &[500],
            999,
            vec![
                client("backup", None, &[1001], &["dropbox-*"]),
                client("sidecar", Some("k1"), &[], &["corp"]),
            ],
            &Metrics::new(crate::metrics::Detail::PerAccount),
        )
    }

    const TCP: Peer = Peer::Tcp(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        1,
    ));

    fn unix(uid: u32) -> Peer {
        Peer::Unix {
            uid,
            gid: 100,
            pid: Some(42),
        }
    }

    #[test]
    fn admins_are_root_self_and_configured_uids() {
        for uid in [0, 999, 500] {
            let caller = access().identify(&unix(uid), None).unwrap();
            assert!(caller.is_admin() && caller.sees_all(), "{uid}");
        }
    }

    #[test]
    fn socket_clients_are_matched_by_uid_and_scoped_by_glob() {
        let caller = access().identify(&unix(1001), None).unwrap();
        assert_eq!(caller.name(), "backup");
        assert!(!caller.is_admin());
        assert!(caller.may_read("dropbox-main") && !caller.may_read("corp") && !caller.sees_all());
        assert!(matches!(
            access().identify(&unix(1002), None),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn tcp_needs_a_right_key() {
        assert!(matches!(
            access().identify(&TCP, None),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            access().identify(&TCP, Some(&ApiKey::new("wrong"))),
            Err(ApiError::Unauthorized)
        ));
        let caller = access().identify(&TCP, Some(&ApiKey::new("k1"))).unwrap();
        assert_eq!(caller.name(), "sidecar");
        assert!(caller.may_read("corp") && !caller.may_read("dropbox-main"));
    }
}
