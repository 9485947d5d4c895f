//! Who is calling, and which accounts they may have.
//!
//! Socket peers are known by their kernel credentials (uid, gid, pid); TCP callers by an API
//! key whose SHA-256 is compared in constant time. Admins are uid 0, the daemon's own uid,
//! `server.admin_uids`, and clients marked `admin`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::metrics::{Metrics, TokenCounters};
use crate::secret::ApiKey;

/// The other end of a connection, attached to every request by the listener.
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
    /// Its tokens served from memory, counted without a label lookup (filled on first use).
    pub served: OnceLock<TokenCounters>,
}

/// The name of callers known by an admin uid.
static ADMIN: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("admin"));

/// An identified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The configured client; `None` for an admin uid on the socket.
    client: Option<Arc<Client>>,
    /// The peer's uid, on the socket.
    pub uid: Option<u32>,
    /// The peer's pid, on the socket.
    pub pid: Option<i32>,
}

impl Caller {
    /// The client's name, for logs (`admin` for admin uids).
    pub fn name(&self) -> &str {
        self.client.as_ref().map_or(&ADMIN, |client| &client.name)
    }

    /// The client's name, shared rather than copied (for labelling responses).
    pub fn shared_name(&self) -> Arc<str> {
        self.client
            .as_ref()
            .map_or_else(|| Arc::clone(&ADMIN), |client| Arc::clone(&client.name))
    }

    /// The counters of this caller's tokens served from memory: its client's, or those of
    /// admin callers in `admins`; looked up in `metrics` the first time.
    pub fn served_counters<'a>(
        &'a self,
        admins: &'a OnceLock<TokenCounters>,
        metrics: &Metrics,
        route: &'static str,
    ) -> &'a TokenCounters {
        let (counters, name) = match &self.client {
            Some(client) => (&client.served, &*client.name),
            None => (admins, &**ADMIN),
        };
        counters.get_or_init(|| metrics.token_counters(name, route, StatusCode::OK.as_u16()))
    }

    /// Whether the caller may use the admin routes.
    pub fn is_admin(&self) -> bool {
        self.client.as_ref().is_none_or(|client| client.admin)
    }

    /// Whether the caller may have this account's token and status.
    pub fn may_read(&self, account: &str) -> bool {
        self.client.as_ref().is_none_or(|client| {
            client
                .accounts
                .iter()
                .any(|p| p.as_str() == "*" || p.matches(account))
        })
    }

    /// Whether the caller may have every account (and so may learn which do not exist).
    pub fn sees_all(&self) -> bool {
        self.client
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
    clients: Vec<Arc<Client>>,
}

impl Access {
    /// Rules from configuration; uid 0 and `own_uid` are always admins.
    pub fn new(admin_uids: &[u32], own_uid: u32, clients: Vec<Client>) -> Self {
        let mut admin_uids: Vec<u32> = admin_uids.iter().copied().chain([0, own_uid]).collect();
        admin_uids.sort_unstable();
        admin_uids.dedup();
        Self {
            admin_uids,
            clients: clients.into_iter().map(Arc::new).collect(),
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
            for client in &self.clients {
                if let Some(expected) = &client.api_key_sha256 {
                    if bool::from(expected.ct_eq(&digest)) && found.is_none() {
                        found = Some(client);
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
                    return Ok(Caller {
                        client: None,
                        uid: Some(*uid),
                        pid: *pid,
                    });
                }
                self.clients
                    .iter()
                    .find(|client| client.uids.contains(uid) || client.gids.contains(gid))
                    .map(|client| caller(client, Some(*uid), *pid))
                    .ok_or_else(|| {
                        ApiError::Forbidden(format!("uid {uid} is not a configured client"))
                    })
            }
            Peer::Tcp(_) => Err(ApiError::Unauthorized),
        }
    }
}

fn caller(client: &Arc<Client>, uid: Option<u32>, pid: Option<i32>) -> Caller {
    Caller {
        client: Some(Arc::clone(client)),
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
            served: OnceLock::new(),
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
