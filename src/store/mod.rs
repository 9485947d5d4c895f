//! Durable storage of account records, behind a small trait.
//!
//! `Store` is what a backend implements; `SledStore` is the embedded one, `PostgresStore`
//! the one several brokers share. Each account is one value (so an update is atomic) that
//! carries its write version, and a batch of changes returns only once it is durable.
//! `Writer` is what the broker holds: one thread that takes changes from a bounded queue and
//! hands them to the backend in batches (group commit).
//!
//! A refresh first *claims* its account ([`Store::claim`]): a store that only this process
//! writes grants every claim at once (the broker's own single flight is enough), a shared
//! one locks the account's row, says whether another broker stored something newer, and
//! commits the refresh's outcome in the lock's own transaction ([`Lease`]).

mod journal;
mod merge;
mod postgres;
mod schema;
pub mod seal;
mod sled;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use self::postgres::PostgresStore;
pub use self::sled::SledStore;
pub use self::writer::Writer;
use crate::token::{AccountName, AccountRecord};

/// One change to the store.
// Values live briefly (a queue, a merge); boxing the record would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace an account.
    Put(AccountRecord),
    /// Forget an account (nothing happens if there is none).
    Remove(AccountName),
}

/// Where and how the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory holding the database and its snapshot (created 0700).
    pub dir: PathBuf,
    /// The key file: used if it exists; generated (0600) if the store is new. Only a key
    /// file inside `dir` is managed by tokenbroker (generated, rotated by `rekey`).
    pub key_file: PathBuf,
    /// Which backend holds the accounts.
    pub backend: Backend,
}

/// The backend that holds the accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded sled database in `dir`.
    Sled {
        /// Bytes of access-token text the broker keeps in memory at most
        /// (`store.token_memory_mib`): beyond it, the tokens asked for least recently are
        /// left to the store and read back when they are asked for.
        token_memory: usize,
    },
    /// A PostgreSQL database shared by several brokers.
    Postgres {
        /// Its URL (it may carry a password).
        url: crate::secret::DatabaseUrl,
        /// How long a refresh may hold an account's row lock: above the slowest provider's
        /// timeouts, so that only a holder that is gone loses its lock.
        lease_timeout: Duration,
        /// The certificates that a server reached with `sslmode=require` must chain to
        /// (`store.ca_file`); empty: the system's roots.
        ca_certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
}

/// Access-token text kept in memory at most by default: 32 MiB, about 25,000 of Dropbox's
/// 1.3 KB tokens or 150,000 of Google's.
pub const DEFAULT_TOKEN_MEMORY: usize = 32 << 20;

impl Backend {
    /// The embedded sled database, with the default memory for tokens.
    pub const fn sled() -> Self {
        Self::Sled {
            token_memory: DEFAULT_TOKEN_MEMORY,
        }
    }
}

/// What a store says when a refresh claims an account.
#[derive(Debug)]
pub enum Claim {
    /// This broker may refresh the account; `newer` is the account as stored, when another
    /// broker stored something this one has not seen (adopt it before deciding to refresh).
    Held {
        /// Commits the refresh's outcome, or gives the claim up when dropped.
        lease: Lease,
        /// The stored account, when it is newer than what this broker holds.
        newer: Option<AccountRecord>,
    },
    /// Another broker holds the account (or it is gone). `newer` is what it stored, when
    /// this broker waited for it and there was something new.
    Elsewhere {
        /// The stored account, when it is newer than what this broker holds.
        newer: Option<AccountRecord>,
    },
}

/// A granted claim: the refresh's outcome goes through it. Dropped uncommitted, the claim
/// ends and nothing is written.
pub struct Lease(Option<Box<dyn Held>>);

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Lease(held)"
        } else {
            "Lease(local)"
        })
    }
}

impl Lease {
    /// The claim of a store that only this process writes: the outcome goes through the
    /// writer like any other change.
    pub fn local() -> Self {
        Self(None)
    }

    /// A claim that a backend holds (a row lock, say).
    pub fn held(held: Box<dyn Held>) -> Self {
        Self(Some(held))
    }

    /// The backend's hold, if the claim has one.
    pub(crate) fn into_held(self) -> Option<Box<dyn Held>> {
        self.0
    }

    /// Ends the claim without writing (the refresh was not needed after all), as cheaply as
    /// the backend can: a row lock's connection goes back to its pool.
    pub async fn release(self) {
        if let Some(held) = self.0 {
            held.release().await;
        }
    }
}

/// A backend's hold on one account, from the claim to the commit.
pub trait Held: Send + 'static {
    /// Writes `record` under the hold and ends it; durable when it returns `Ok`.
    ///
    /// # Errors
    /// The write or the commit failed (the hold was lost, say): nothing was written.
    fn commit(self: Box<Self>, record: AccountRecord)
        -> BoxFuture<'static, Result<(), StoreError>>;

    /// Ends the hold without writing. Dropping it does too, but may cost more (a row lock
    /// dropped closes its connection, since it cannot wait for a rollback).
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { drop(self) })
    }
}

/// A change another broker made, as a shared store reports it.
// Values live briefly (one change at a time); boxing the record would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The account as it is stored now.
    Put(AccountRecord),
    /// The account is gone.
    Removed(AccountName),
}

/// Where a shared store reports what other brokers changed.
pub type Follower = Arc<dyn Fn(Stored) + Send + Sync>;

/// Opens the configured backend: the embedded sled store (off the async workers: it blocks),
/// or the PostgreSQL store shared with other brokers, with `leases` connections for
/// refreshes that hold a row lock.
///
/// # Errors
/// The backend's, as its `open` says.
pub async fn open(config: &Config, leases: usize) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.backend {
        Backend::Sled { .. } => {
            let config = config.clone();
            let opened = tokio::task::spawn_blocking(move || SledStore::open(&config))
                .await
                .map_err(|_| StoreError::Engine {
                    operation: "open",
                    reason: "the store's open panicked".into(),
                })??;
            Arc::new(opened)
        }
        Backend::Postgres { .. } => Arc::new(PostgresStore::open(config, leases).await?),
    })
}

/// Copies every account of the store `from` describes into the one `to` describes, resealed
/// with `to`'s key; an account `to` already holds is kept as it is. Returns how many were
/// copied and how many kept.
///
/// # Errors
/// Either store cannot be opened (a sled store that a daemon holds, say), read or written.
pub async fn copy(from: &Config, to: &Config) -> Result<(usize, usize), StoreError> {
    let source = open(from, 1).await?;
    let target = open(to, 1).await?;
    // Blocking calls (and a shared store's, which wait on this runtime) off its workers.
    tokio::task::spawn_blocking(move || {
        let present: std::collections::HashSet<AccountName> = target
            .load_all()?
            .into_iter()
            .map(|record| record.name)
            .collect();
        let (kept, missing): (Vec<_>, Vec<_>) = source
            .load_all()?
            .into_iter()
            .partition(|record| present.contains(&record.name));
        for batch in missing.chunks(512) {
            let changes: Vec<Change> = batch.iter().cloned().map(Change::Put).collect();
            target.write(&changes)?;
        }
        target.flush()?;
        Ok((missing.len(), kept.len()))
    })
    .await
    .map_err(|_| StoreError::Engine {
        operation: "copy",
        reason: "the copy panicked".into(),
    })?
}

/// Durable, per-account storage. Calls block: run them off the async workers.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored account.
    ///
    /// # Errors
    /// A read failure or an undecodable value.
    fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError>;

    /// One stored account, or `None` if there is none. This default reads every account;
    /// a store that [reads back](Store::reads_back) reads only the one.
    ///
    /// # Errors
    /// A read failure or an undecodable value.
    fn load(&self, name: &AccountName) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self
            .load_all()?
            .into_iter()
            .find(|record| &record.name == name))
    }

    /// For a store that only this process writes, which reads one account without a round
    /// trip to another machine: how many bytes of access-token text the broker may keep in
    /// memory. Beyond them it leaves the tokens asked for least recently to the store, and
    /// reads each back with [`Store::load`] when it is asked for. `None`: the broker keeps
    /// every token (a store others write too may hold another broker's newer token).
    fn reads_back(&self) -> Option<usize> {
        None
    }

    /// Applies `changes` in order and returns once all of them are durable: one sync for
    /// the whole batch. After a failure the backend recovers by itself (reopens, say) on a
    /// later call, once writing is possible again.
    ///
    /// # Errors
    /// A write or sync failure (a full disk, say); none of the batch is acknowledged then.
    fn write(&self, changes: &[Change]) -> Result<(), StoreError>;

    /// Re-seals every value under a new key and makes it the key; returns how many values.
    /// Interrupted at any point, every value stays readable (the next open finishes the job).
    ///
    /// # Errors
    /// The key is not managed by tokenbroker, or a write failed.
    fn rekey(&self) -> Result<usize, StoreError>;

    /// Flushes whatever is pending; called on shutdown.
    ///
    /// # Errors
    /// A flush failure.
    fn flush(&self) -> Result<(), StoreError>;

    /// Claims `name` for a refresh. `wait`: when another broker holds it, wait for that
    /// broker's outcome (an on-demand caller) rather than give up at once (the schedule).
    /// A store that only this process writes grants every claim.
    ///
    /// # Errors
    /// The store cannot be reached: no refresh may start, since its outcome could not be
    /// stored.
    fn claim<'a>(
        &'a self,
        name: &'a AccountName,
        wait: bool,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let _ = (name, wait);
        Box::pin(std::future::ready(Ok(Claim::Held {
            lease: Lease::local(),
            newer: None,
        })))
    }

    /// For a store reached over a connection: whether it can be reached now, so that a
    /// broker that saw it fail knows when it is back without waiting for a write. A store
    /// only this process writes has no such check (its writes say whether it works).
    fn reachable(&self) -> Option<BoxFuture<'static, Result<(), StoreError>>> {
        None
    }

    /// For a store that others write too: a task that reports their changes to `follower`
    /// until it is dropped. A store that only this process writes has none.
    fn follow(&self, follower: Follower) -> Option<BoxFuture<'static, ()>> {
        let _ = follower;
        None
    }
}

/// What went wrong with the store. Messages name the path, never a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The directory could not be created or given its permissions.
    #[error("cannot prepare store directory {path}: {cause}")]
    PrepareDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        cause: Arc<std::io::Error>,
    },
    /// Another process holds the database.
    #[error("store {path} is locked by another process (is another tokenbroker running? use the CLI, which goes through the daemon)")]
    Locked {
        /// The database path.
        path: PathBuf,
    },
    /// The database could not be opened.
    #[error("store {path} cannot be opened: {reason}; {recovery}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// What the database engine said.
        reason: String,
        /// What the operator can do about it.
        recovery: String,
    },
    /// The values are sealed with a key we do not have.
    #[error("the store's values are sealed with key {found}, but the key loaded is {loaded}; start with the right store.key_file (nothing was changed)")]
    WrongKey {
        /// Key id found in a value.
        found: String,
        /// Key id of the key loaded.
        loaded: String,
    },
    /// The key file is missing while the store holds sealed values, or is unreadable.
    #[error("store key {path}: {problem}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The store was written by a newer tokenbroker.
    #[error("store {path} has schema version {found}, newer than this tokenbroker understands ({supported}); upgrade tokenbroker")]
    NewerSchema {
        /// The database path.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A stored value cannot be decoded.
    #[error("stored value for account {key:?} is unreadable: {reason}")]
    Decode {
        /// The key (an account name, or what stands in its place).
        key: String,
        /// Why.
        reason: String,
    },
    /// A read, write or flush failed. The message carries the cause ("No space left on
    /// device"): it is what the operator must act on, and it ends up in the account's status.
    #[error("store {operation} failed: {cause}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        cause: Arc<std::io::Error>,
    },
    /// A shared store cannot be reached (PostgreSQL down, say).
    #[error("store_unavailable: {reason}")]
    Unavailable {
        /// What went wrong, without the database's URL.
        reason: String,
    },
    /// The database engine failed in some other way.
    #[error("store {operation} failed: {reason}")]
    Engine {
        /// What was being done.
        operation: &'static str,
        /// What the database engine said.
        reason: String,
    },
}
