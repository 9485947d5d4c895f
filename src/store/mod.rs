//! Durable storage of account records, behind a small trait.
//!
//! `Store` is what the broker sees; `SledStore` is the embedded backend. Each account is one
//! value (so an update is atomic), a write returns only once it is on disk, and every change
//! also rewrites an independent snapshot file from which a damaged store can be rebuilt.
//! A shared multi-host backend can implement the same trait later.

mod schema;
pub mod seal;
mod sled;

use std::path::PathBuf;

pub use self::sled::SledStore;
use crate::token::{AccountName, AccountRecord};

/// Where and how the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory holding the database and its snapshot (created 0700).
    pub dir: PathBuf,
    /// The key file: used if it exists; generated (0600) if the store is new. Only a key
    /// file inside `dir` is managed by tokenbroker (generated, rotated by `rekey`).
    pub key_file: PathBuf,
}

/// Durable, per-account storage. Calls block: run them off the async workers.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored account.
    ///
    /// # Errors
    /// A read failure or an undecodable value.
    fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError>;

    /// Inserts or replaces one account; returns once the write is durable.
    ///
    /// # Errors
    /// A write or flush failure (a full disk, say); nothing is acknowledged then.
    fn put(&self, record: &AccountRecord) -> Result<(), StoreError>;

    /// Deletes one account durably; `false` when there was none.
    ///
    /// # Errors
    /// A write or flush failure.
    fn remove(&self, name: &AccountName) -> Result<bool, StoreError>;

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
}

/// What went wrong with the store. Messages name the path, never a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory could not be created or given its permissions.
    #[error("cannot prepare store directory {path}")]
    PrepareDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
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
    /// A read, write or flush failed.
    #[error("store {operation} failed")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
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
