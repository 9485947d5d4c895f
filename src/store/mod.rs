//! Durable storage of account records, behind a small trait.
//!
//! `Store` is what a backend implements; `SledStore` is the embedded one. Each account is one
//! value (so an update is atomic) that carries its write version, and a batch of changes
//! returns only once it is on disk. `Writer` is what the broker holds: one thread that takes
//! changes from a bounded queue and hands them to the backend in batches (group commit).

mod journal;
mod merge;
mod schema;
pub mod seal;
mod sled;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

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
}

/// Durable, per-account storage. Calls block: run them off the async workers.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored account.
    ///
    /// # Errors
    /// A read failure or an undecodable value.
    fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError>;

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
    /// The database engine failed in some other way.
    #[error("store {operation} failed: {reason}")]
    Engine {
        /// What was being done.
        operation: &'static str,
        /// What the database engine said.
        reason: String,
    },
}
