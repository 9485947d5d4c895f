//! The embedded sled backend, used by the rules in CRATES.md, with a journal beside it.
//!
//! One writer at a time (a mutex); a batch of changes goes into sled and into the journal,
//! the journal is synced once for the batch and sled flushed, and only then is the batch
//! acknowledged. At open the newest copy of each account among the database, the journal
//! (and an old snapshot) is kept (`merge.rs`) and the database repaired to match. After an
//! I/O error (a full disk) sled fails every later call until it is reopened, so the store
//! drops it and reopens it on the next write. Values are sealed (`seal.rs`); the key is
//! loaded, or generated for a new store, here.
//!
//! Why it is one file: the open (merge, repair, reopen), the writes, recovery after an I/O
//! error, compaction and rekey all act under the one writer lock on the same open state;
//! the journal's format, the merge, the schema and the sealing are modules of their own.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use super::journal::{self, Journal};
use super::merge::{Merge, Source};
use super::schema::{self, SCHEMA_VERSION};
use super::seal::{self, Keyring, StoreKey};
use super::{Change, Config, Store, StoreError};
use crate::token::{AccountName, AccountRecord};

const CACHE_CAPACITY: u64 = 16 * 1024 * 1024;
const SCHEMA_KEY: &[u8] = b"schema_version";
/// The full snapshot that stores kept before the journal: read once, then removed.
const SNAPSHOT_FILE: &str = "accounts.snapshot";
const SNAPSHOT_MAGIC: &[u8] = b"tokenbroker-snapshot-1\n";
/// The journal is compacted once it holds this many frames more than twice its accounts.
const COMPACT_SLACK: u64 = 1024;
/// How often, 20 ms apart, a reopen tries to take sled's file lock, which sled's previous
/// handle releases from a background thread after it is dropped (5 s in all).
const RELOCK_TRIES: u32 = 250;

/// Accounts in a sled database under `store.dir/db`, with `store.dir/journal` beside it.
#[derive(Debug)]
pub struct SledStore {
    dir: PathBuf,
    key_file: PathBuf,
    keyring: RwLock<Keyring>,
    /// Serialises writes: sled's concurrent flushes have deadlocked in the past.
    state: Mutex<State>,
    /// The accounts' tree, for reads of one account (`load`) that need not wait for a
    /// write's sync under `state`. Kept after a failed write, since reads may still work,
    /// until the reopen, which must drop every handle to take sled's file lock.
    reader: RwLock<Option<sled::Tree>>,
    /// What `reads_back` says: `store.token_memory_mib`.
    token_memory: usize,
}

#[derive(Debug, Default)]
struct State {
    /// `None` after an I/O error, until the next write reopens it.
    open: Option<Open>,
    /// The last write version handed out.
    version: u64,
    /// The accounts as `open` decoded them, for the first `load_all` (the broker's, at
    /// start), which then need not open every value again; dropped by any write.
    decoded: Option<Vec<AccountRecord>>,
}

/// The database and journal while they are usable.
#[derive(Debug)]
struct Open {
    db: sled::Db,
    accounts: sled::Tree,
    journal: Journal,
    /// Accounts in the database, for deciding when to compact (sled's `len` walks the tree).
    live: u64,
    /// Removed accounts and the version of their removal: kept in the journal across
    /// compactions, so that an old copy can never bring an account back.
    removed: BTreeMap<String, u64>,
}

impl SledStore {
    /// Opens (or creates) the store in `config.dir`, keeping the newest copy of each account
    /// from the database, the journal and an old snapshot.
    ///
    /// # Errors
    /// The directory cannot be prepared; the key is wrong or missing; the database is
    /// locked, corrupt, or newer.
    pub fn open(config: &Config) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        prepare_dir(&dir)?;
        // Check the key against the journal before the database is opened (opening it
        // writes sled's own files): a wrong or missing key must change nothing at all. This
        // is a pass of its own over the journal, which `reconcile` reads again: the merge
        // takes the database's copies first (so that it keeps no bytes of theirs) and needs
        // it open for that.
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE));
        let found = read_keyring(&config.key_file)?;
        let mut sealed_outside = false;
        // The key id in each value says which key sealed it: no value is opened here.
        let mut check = |value: &[u8]| {
            sealed_outside = true;
            match (&found, schema::key_id(value)) {
                (Some(keyring), Some(id)) if keyring.find(id).is_none() => {
                    Err(StoreError::WrongKey {
                        found: hex::encode(id),
                        loaded: keyring.current.id_hex(),
                    })
                }
                _ => Ok(()),
            }
        };
        journal::read(&dir.join(journal::FILE), |_, value| check(value))?;
        for (_, value) in &snapshot {
            check(value)?;
        }
        if found.is_none() && sealed_outside {
            return Err(StoreError::Key {
                path: config.key_file.clone(),
                problem: "not found, but the store holds sealed accounts: restore the key file (nothing was changed)".into(),
            });
        }
        let (db, accounts) = open_database(&dir)?;
        let keyring = match found {
            Some(keyring) => keyring,
            None if !accounts.is_empty() => {
                return Err(StoreError::Key {
                    path: config.key_file.clone(),
                    problem: "not found, but the database holds sealed accounts: restore the key file (no new key was made)".into(),
                })
            }
            None => generate_key(&config.key_file, &dir)?,
        };
        check_schema(&db, &dir.join("db"))?;
        let store = Self {
            dir,
            key_file: config.key_file.clone(),
            keyring: RwLock::new(keyring),
            state: Mutex::new(State::default()),
            reader: RwLock::new(None),
            token_memory: match config.backend {
                super::Backend::Sled { token_memory } => token_memory,
                super::Backend::Postgres { .. } => super::DEFAULT_TOKEN_MEMORY,
            },
        };
        {
            let mut state = store.lock();
            let (open, decoded) = store.reconcile(&mut state, db, accounts, snapshot)?;
            store.set_reader(Some(open.accounts.clone()));
            state.open = Some(open);
            state.decoded = Some(decoded);
            if store.next_key_file().exists() {
                // A rekey was interrupted: finish it before anything else is written.
                store.reseal_all(&mut state)?;
            }
        }
        restrict_files(&store.dir)?;
        Ok(store)
    }

    /// Brings the database up to date with the newest copy of every account and rewrites
    /// the journal if it is missing, damaged or long; returns the store ready for writes,
    /// and every account as it decoded them.
    fn reconcile(
        &self,
        state: &mut State,
        db: sled::Db,
        accounts: sled::Tree,
        snapshot: Entries,
    ) -> Result<(Open, Vec<AccountRecord>), StoreError> {
        let keyring = self.keyring();
        let mut merge = Merge::default();
        for entry in accounts.iter() {
            let (name, value) = entry.map_err(|e| engine("read", e))?;
            merge.offer(Source::Database, &name, &value, &keyring)?;
        }
        let journal_path = self.dir.join(journal::FILE);
        let journal = journal::read(&journal_path, |name, value| {
            merge.offer(Source::Journal, name, value, &keyring)
        })?;
        for (name, value) in &snapshot {
            merge.offer(Source::Snapshot, name, value, &keyring)?;
        }
        let merge = merge.finish()?;
        if let Some(damage) = journal.as_ref().and_then(|found| found.damage.as_ref()) {
            tracing::warn!(
                journal = %journal_path.display(),
                offset = damage.offset,
                "the journal is damaged ({}); nothing after that offset was read. The database's copies stand in for it; the journal is rewritten from the newest copies now",
                damage.reason
            );
        }
        if !merge.unreadable.is_empty() {
            let copies: Vec<String> = merge
                .unreadable
                .iter()
                .map(|(name, source)| format!("{name} in the {}", source.file()))
                .collect();
            tracing::warn!(
                values = %copies.join(", "),
                "some stored copies do not authenticate (damaged); the newest readable copy of each was used"
            );
        }
        let mut behind: Vec<(String, Vec<u8>, bool)> = merge
            .database_behind()
            .map(|(name, newest)| (name.to_owned(), newest.value.clone(), newest.removed()))
            .collect();
        behind.sort();
        if !behind.is_empty() {
            let names: Vec<&str> = behind.iter().map(|(name, ..)| name.as_str()).collect();
            tracing::warn!(
                accounts = behind.len(),
                names = %names.join(", "),
                database = %self.dir.join("db").display(),
                "the database held older copies of some accounts than the journal (after a crash or a power cut this is expected; otherwise the database is damaged); the newest copy of each was restored into it"
            );
        }
        for (name, value, removed) in &behind {
            let repaired = if *removed {
                accounts.remove(name.as_bytes()).map(drop)
            } else {
                accounts.insert(name.as_bytes(), value.as_slice()).map(drop)
            };
            repaired.map_err(|e| engine("repair", e))?;
        }
        flush_database(&db)?;
        // Reading every account paged the whole tree into sled's cache, which sled trims only
        // as later reads and writes pass through it (its LRU acts once a shard has seen 64
        // accesses, and it has 256): at 100k accounts that is 80 MB held for nothing.
        // Reopened, the database starts with an empty cache.
        drop((db, accounts));
        let (db, accounts) = reopen_database(&self.dir)?;
        state.version = state.version.max(merge.max_version);
        let live = merge.live();
        // A damaged journal is rewritten like a missing one.
        let whole = journal.filter(|found| found.damage.is_none());
        let complete = whole.is_some() && merge.journal_complete();
        let (decoded, removed) = merge.into_accounts();
        let mut open = Open {
            journal: match whole {
                Some(found) => {
                    Journal::reopen(&self.dir, found.frames).map_err(io_error("journal open"))?
                }
                None => Journal::rewrite(&self.dir, "journal write", |_| Ok(()))?,
            },
            db,
            accounts,
            live,
            removed,
        };
        // A journal that lacks the newest copy of some account (missing, damaged, from before
        // the journal, or behind the database after a crash) is rewritten whole; so is a
        // long one.
        if !complete || open.wants_compaction() {
            open.compact(&self.dir, &keyring.current)?;
        }
        if !snapshot.is_empty() {
            // Its accounts are in the journal now, which supersedes it.
            fs::remove_file(self.dir.join(SNAPSHOT_FILE))
                .map_err(io_error("old snapshot removal"))?;
            tracing::info!("moved the accounts of {SNAPSHOT_FILE} into the journal");
        }
        Ok((open, decoded))
    }

    /// Reopens the database after an I/O error and reconciles it with the journal.
    fn reopen(&self, state: &mut State) -> Result<(), StoreError> {
        // Drop the failed handles first: sled holds its file lock until they are gone.
        state.open = None;
        self.set_reader(None);
        let (db, accounts) = reopen_database(&self.dir)?;
        // The broker holds every account already; the decoded copies are not wanted.
        let (open, _) = self.reconcile(state, db, accounts, Vec::new())?;
        self.set_reader(Some(open.accounts.clone()));
        state.open = Some(open);
        tracing::info!(store = %self.dir.display(), "the store is writable again");
        Ok(())
    }

    /// The open store and the last version handed out, reopened first if an earlier write
    /// failed.
    fn usable<'s>(&self, state: &'s mut State) -> Result<(&'s mut Open, &'s mut u64), StoreError> {
        if state.open.is_none() {
            self.reopen(state)?;
        }
        let State { open, version, .. } = state;
        Ok((open.as_mut().expect("reopened above"), version))
    }

    fn set_reader(&self, tree: Option<sled::Tree>) {
        *self
            .reader
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = tree;
    }

    fn next_key_file(&self) -> PathBuf {
        next_key_path(&self.key_file)
    }

    fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_keyring(&self, keyring: Keyring) {
        *self
            .keyring
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keyring;
    }

    /// Re-seals every value under the pending key (`<key_file>.next`) and then makes it the
    /// key. Each step leaves every value readable with the keys on disk. Writer lock held.
    fn reseal_all(&self, state: &mut State) -> Result<usize, StoreError> {
        let next_path = self.next_key_file();
        let key_error = |problem: String| StoreError::Key {
            path: next_path.clone(),
            problem,
        };
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(&next_path).map_err(|e| key_error(e.to_string()))?,
        );
        let next_bytes =
            seal::parse_key_file(&bytes).ok_or_else(|| key_error("not a 32-byte key".into()))?;
        let next = StoreKey::from_bytes(&next_bytes);
        let mut keyring = self.keyring();
        if keyring.current.id() != next.id() {
            let old = std::mem::replace(&mut keyring.current, next);
            keyring.previous.push(old);
        }
        let (open, version) = self.usable(state)?;
        let mut count = 0;
        for entry in open.accounts.iter() {
            let (key, value) = entry.map_err(|e| engine("read", e))?;
            if schema::key_id(&value) != Some(&keyring.current.id()[..]) {
                let record = schema::decode(&key, &value, &keyring)?;
                *version += 1;
                let resealed = schema::encode(&record, *version, &keyring.current);
                open.accounts
                    .insert(key, resealed)
                    .map_err(|e| engine("re-seal", e))?;
            }
            count += 1;
        }
        flush_database(&open.db)?;
        self.set_keyring(keyring.clone());
        open.compact(&self.dir, &keyring.current)?;
        fs::rename(&next_path, &self.key_file).map_err(io_error("key rename"))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("key rename"))?;
        self.set_keyring(Keyring::new(keyring.current));
        tracing::info!(accounts = count, "store re-sealed under a new key");
        Ok(count)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-written that the next writer must
        // know about (sled's insert is atomic, and the journal is cut back to whole frames),
        // so a poisoned lock is safe to take over.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `changes` to the open store; any error leaves it to be reopened.
    fn apply(&self, state: &mut State, changes: &[Change]) -> Result<(), StoreError> {
        let key = self.keyring().current;
        let (open, last_version) = self.usable(state)?;
        let mut version = *last_version;
        let mut frames = Vec::with_capacity(changes.len() * 512);
        for change in changes {
            version += 1;
            match change {
                Change::Put(record) => {
                    let value = schema::encode(record, version, &key);
                    journal::push_frame(&mut frames, record.name.as_str(), &value);
                    let previous = open
                        .accounts
                        .insert(record.name.as_str(), value)
                        .map_err(|e| engine("write", e))?;
                    open.live += u64::from(previous.is_none());
                    open.removed.remove(record.name.as_str());
                }
                Change::Remove(name) => {
                    let value = schema::encode_removal(name, version, &key);
                    journal::push_frame(&mut frames, name.as_str(), &value);
                    let previous = open
                        .accounts
                        .remove(name.as_str())
                        .map_err(|e| engine("delete", e))?;
                    open.live -= u64::from(previous.is_some());
                    open.removed.insert(name.as_str().to_owned(), version);
                }
            }
        }
        *last_version = version;
        open.journal
            .append(&frames, changes.len() as u64)
            .map_err(io_error("journal write"))?;
        flush_database(&open.db)?;
        if open.wants_compaction() {
            // The batch is durable already; a failed compaction leaves the old journal whole.
            if let Err(error) = open.compact(&self.dir, &key) {
                tracing::warn!(error = %error, "journal compaction failed; it is tried again on a later write");
            }
        }
        Ok(())
    }
}

impl Open {
    fn wants_compaction(&self) -> bool {
        self.journal.frames() > 2 * (self.live + self.removed.len() as u64) + COMPACT_SLACK
    }

    /// Rewrites the journal with one frame per account (the database's value) and one per
    /// removal. O(accounts), and done once every O(accounts) writes.
    fn compact(&mut self, dir: &Path, key: &StoreKey) -> Result<(), StoreError> {
        let (accounts, removed) = (&self.accounts, &self.removed);
        self.journal = Journal::rewrite(dir, "journal compaction", |frames| {
            for entry in accounts.iter() {
                let (name, value) = entry.map_err(|e| engine("read for compaction", e))?;
                frames.push(&String::from_utf8_lossy(&name), &value)?;
            }
            for (name, version) in removed {
                let name: crate::token::AccountName =
                    name.parse().map_err(|_| StoreError::Decode {
                        key: name.clone(),
                        reason: "a removed name is not an account name".into(),
                    })?;
                frames.push(name.as_str(), &schema::encode_removal(&name, *version, key))?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

impl Store for SledStore {
    fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let keyring = self.keyring();
        let mut state = self.lock();
        if let Some(decoded) = state.decoded.take() {
            return Ok(decoded);
        }
        let (open, _) = self.usable(&mut state)?;
        open.accounts
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(|e| engine("read", e))?;
                schema::decode(&key, &value, &keyring)
            })
            .collect()
    }

    fn load(&self, name: &AccountName) -> Result<Option<AccountRecord>, StoreError> {
        let tree = self
            .reader
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let Some(tree) = tree else {
            // Reopened after a failed write, and that reopen failed too: the next write tries again.
            return Err(StoreError::Engine {
                operation: "read",
                reason:
                    "the store is not open since a write failed; it is reopened on the next write"
                        .into(),
            });
        };
        let Some(value) = tree.get(name.as_str()).map_err(|e| engine("read", e))? else {
            return Ok(None);
        };
        schema::decode(name.as_str().as_bytes(), &value, &self.keyring()).map(Some)
    }

    fn reads_back(&self) -> Option<usize> {
        Some(self.token_memory)
    }

    fn write(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.decoded = None;
        let applied = self.apply(&mut state, changes);
        if let Err(error) = &applied {
            if state.open.take().is_some() {
                tracing::error!(error = %error, store = %self.dir.display(), "a store write failed; the store is reopened on the next write");
            }
        }
        applied
    }

    fn rekey(&self) -> Result<usize, StoreError> {
        if self.key_file.parent() != Some(self.dir.as_path()) {
            return Err(StoreError::Key {
                path: self.key_file.clone(),
                problem: "rekey rotates only the key tokenbroker manages in store.dir; for a key from LoadCredential= or elsewhere, provide the new key there and restart".into(),
            });
        }
        let mut state = self.lock();
        let (_, bytes) = StoreKey::generate();
        write_atomically(&self.next_key_file(), bytes.as_slice()).map_err(io_error("key write"))?;
        self.reseal_all(&mut state)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        let (open, _) = self.usable(&mut state)?;
        flush_database(&open.db)
    }
}

/// Opens sled in `dir/db`, turning its errors and panics into `StoreError`.
fn open_database(dir: &Path) -> Result<(sled::Db, sled::Tree), StoreError> {
    let db_path = dir.join("db");
    let opened = panic::catch_unwind(AssertUnwindSafe(|| {
        sled::Config::new()
            .path(&db_path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
    }));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(sled::Error::Io(error))) if error.to_string().contains("could not acquire lock") => {
            return Err(StoreError::Locked { path: db_path });
        }
        Ok(Err(error)) => return Err(open_error(dir, &db_path, error.to_string())),
        Err(_) => {
            return Err(open_error(
                dir,
                &db_path,
                "the database engine panicked while reading it".into(),
            ))
        }
    };
    let accounts = db
        .open_tree("accounts")
        .map_err(|e| engine("open accounts tree", e))?;
    Ok((db, accounts))
}

fn check_schema(db: &sled::Db, db_path: &Path) -> Result<(), StoreError> {
    let found = match db
        .get(SCHEMA_KEY)
        .map_err(|e| engine("read schema version", e))?
    {
        None => None,
        Some(bytes) => Some(
            <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Decode {
                    key: "schema_version".into(),
                    reason: "not a 4-byte version".into(),
                })?,
        ),
    };
    match found {
        Some(found) if found > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            path: db_path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        }),
        Some(found) if found == SCHEMA_VERSION => Ok(()),
        _ => {
            db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                .map_err(|e| engine("write schema version", e))?;
            flush_database(db)
        }
    }
}

/// Opens the database again after this process closed it: sled lets go of its file lock
/// once its own threads have finished with the old handles, which can take a moment.
fn reopen_database(dir: &Path) -> Result<(sled::Db, sled::Tree), StoreError> {
    let mut tries = 0;
    loop {
        match open_database(dir) {
            Err(StoreError::Locked { .. }) if tries < RELOCK_TRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn flush_database(db: &sled::Db) -> Result<(), StoreError> {
    db.flush().map(drop).map_err(|e| engine("flush", e))
}

fn next_key_path(key_file: &Path) -> PathBuf {
    let mut name = key_file
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    name.push(".next");
    key_file.with_file_name(name)
}

/// Loads the store key, and a pending rekey's next key; `None` when there is no key file.
pub(super) fn read_keyring(key_file: &Path) -> Result<Option<Keyring>, StoreError> {
    let read_key = |path: &Path| -> Result<Option<StoreKey>, StoreError> {
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                let key = seal::parse_key_file(&bytes).ok_or_else(|| StoreError::Key {
                    path: path.to_owned(),
                    problem: "is not a key (32 raw bytes or 64 hex digits)".into(),
                })?;
                Ok(Some(StoreKey::from_bytes(&key)))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::Key {
                path: path.to_owned(),
                problem: error.to_string(),
            }),
        }
    };
    let Some(current) = read_key(key_file)? else {
        return Ok(None);
    };
    let mut keyring = Keyring::new(current);
    if let Some(next) = read_key(&next_key_path(key_file))? {
        keyring.previous.push(next);
    }
    Ok(Some(keyring))
}

/// Makes the key of a new store; only inside the store directory.
fn generate_key(key_file: &Path, dir: &Path) -> Result<Keyring, StoreError> {
    if key_file.parent() != Some(dir) {
        return Err(StoreError::Key {
            path: key_file.to_owned(),
            problem: "not found (tokenbroker generates a key only inside store.dir)".into(),
        });
    }
    let (key, bytes) = StoreKey::generate();
    write_atomically(key_file, bytes.as_slice()).map_err(|e| StoreError::Key {
        path: key_file.to_owned(),
        problem: format!("cannot write a new key: {e}"),
    })?;
    tracing::info!(key_file = %key_file.display(), key_id = key.id_hex(), "generated a new store key");
    Ok(Keyring::new(key))
}

fn engine(operation: &'static str, error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(cause) => StoreError::Io {
            operation,
            cause: cause.into(),
        },
        other => StoreError::Engine {
            operation,
            reason: other.to_string(),
        },
    }
}

fn io_error(operation: &'static str) -> impl Fn(io::Error) -> StoreError {
    move |cause| StoreError::Io {
        operation,
        cause: cause.into(),
    }
}

fn open_error(dir: &Path, db_path: &Path, reason: String) -> StoreError {
    let journal = dir.join(journal::FILE);
    let recovery = if journal.exists() {
        format!(
            "the journal {} holds a copy of every account: stop tokenbroker, move {} aside, and start it again to rebuild the database from the journal",
            journal.display(),
            db_path.display()
        )
    } else {
        "no journal exists; restore the store directory from a backup or reconnect the accounts"
            .into()
    };
    StoreError::Open {
        path: db_path.to_owned(),
        reason,
        recovery,
    }
}

pub(super) fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    let wrap = |cause: io::Error| StoreError::PrepareDir {
        path: dir.to_owned(),
        cause: cause.into(),
    };
    fs::create_dir_all(dir).map_err(wrap)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(wrap)
}

/// Gives every file under the store directory mode 0600 and every directory 0700, whatever
/// the umask was when sled created them.
fn restrict_files(dir: &Path) -> Result<(), StoreError> {
    let wrap = |cause: io::Error| StoreError::PrepareDir {
        path: dir.to_owned(),
        cause: cause.into(),
    };
    for entry in fs::read_dir(dir).map_err(wrap)? {
        let entry = entry.map_err(wrap)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(wrap)?;
        if kind.is_symlink() {
            // Not ours to change: a chmod would go to wherever it points.
            tracing::warn!(path = %path.display(), "a symbolic link in the store directory; left alone");
            continue;
        }
        if kind.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(wrap)?;
            restrict_files(&path)?;
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(wrap)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
/// The temporary file is made anew (`O_EXCL`, never through a symlink planted in its place).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    // A leftover (or planted) temporary file or link is removed, not written through.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits one length-prefixed part off the front.
fn take_part(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, tail) = bytes.split_first_chunk::<4>()?;
    tail.split_at_checked(usize::try_from(u32::from_be_bytes(*len)).ok()?)
}

/// The values of an old `accounts.snapshot`, as far as they can be read. It is only ever a
/// second copy, so a damaged one is reported and read no further, never fatal.
fn read_snapshot(path: &Path) -> Entries {
    let mut bytes = Vec::new();
    match File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            tracing::warn!(snapshot = %path.display(), error = %error, "cannot read the old snapshot; the database and journal are used without it");
            return Vec::new();
        }
    }
    let mut entries = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(SNAPSHOT_MAGIC) else {
        tracing::warn!(snapshot = %path.display(), "the old snapshot is not a tokenbroker snapshot; the database and journal are used without it");
        return entries;
    };
    while !rest.is_empty() {
        let Some((key, tail)) = take_part(rest) else {
            break;
        };
        let Some((value, tail)) = take_part(tail) else {
            break;
        };
        entries.push((key.to_vec(), value.to_vec()));
        rest = tail;
    }
    if !rest.is_empty() {
        tracing::warn!(snapshot = %path.display(), read = entries.len(), "the old snapshot is truncated; the accounts before the damage were read");
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::RefreshToken;

    fn record(name: &str, refresh: &str) -> AccountRecord {
        AccountRecord::new(
            name.parse().unwrap(),
            "dropbox".into(),
            RefreshToken::new(refresh),
        )
    }

    fn put(store: &SledStore, record: &AccountRecord) {
        store.write(&[Change::Put(record.clone())]).unwrap();
    }

    fn config(dir: &Path) -> Config {
        Config {
            dir: dir.to_owned(),
            key_file: dir.join("store-key"),
            backend: super::super::Backend::sled(),
        }
    }

    /// Opens the store in `dir`. sled releases its file lock from a background thread after
    /// the previous handle is dropped, so a reopen in the same process may briefly see it
    /// held: retry that case only, for a bounded time.
    fn open(dir: &Path) -> Result<SledStore, StoreError> {
        for _ in 0..200 {
            match SledStore::open(&config(dir)) {
                Err(StoreError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other,
            }
        }
        SledStore::open(&config(dir))
    }

    #[test]
    fn writes_survive_reopen_and_removal_is_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        {
            let store = open(&dir).unwrap();
            put(&store, &record("a", "rt-a"));
            put(&store, &record("b", "rt-b"));
            store
                .write(&[Change::Remove("b".parse().unwrap())])
                .unwrap();
            store
                .write(&[Change::Remove("b".parse().unwrap())])
                .unwrap();
        }
        let store = open(&dir).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record("a", "rt-a")]);
    }

    #[test]
    fn directory_is_0700_and_files_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = open(&dir).unwrap();
        put(&store, &record("a", "rt-a"));
        drop(store);
        let _ = open(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut seen = 0;
        for path in walk(&dir) {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            if path.is_dir() {
                assert_eq!(mode, 0o700, "{path:?}");
            } else {
                assert_eq!(mode, 0o600, "{path:?}");
                seen += 1;
            }
        }
        assert!(seen >= 2, "expected database files and a journal");
    }

    #[test]
    fn a_second_opener_gets_a_clear_locked_error() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = open(tmp.path()).unwrap();
        let error = SledStore::open(&config(tmp.path())).unwrap_err();
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
        assert!(error.to_string().contains("locked by another process"));
    }

    #[test]
    fn links_planted_in_the_store_directory_are_not_written_or_chmodded_through() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let dir = tmp.path().join("store");
        fs::create_dir(&dir).unwrap();
        symlink(&victim, dir.join("store-key.tmp")).unwrap();
        symlink(&victim, dir.join("planted")).unwrap();
        drop(open(&dir).unwrap()); // generates a key through store-key.tmp, restricts modes
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(fs::metadata(dir.join("store-key")).unwrap().is_file());
    }

    #[test]
    fn a_lost_database_is_restored_from_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path()).unwrap();
            put(&store, &record("a", "rt-a"));
            put(&store, &record("b", "rt-b"));
        }
        fs::rename(tmp.path().join("db"), tmp.path().join("db.broken")).unwrap();
        let store = open(tmp.path()).unwrap();
        assert_eq!(
            store.load_all().unwrap(),
            vec![record("a", "rt-a"), record("b", "rt-b")]
        );
    }

    #[test]
    fn a_corrupt_database_fails_with_a_recovery_hint_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path()).unwrap();
            put(&store, &record("a", "rt-a"));
        }
        // Overwrite every database file with garbage.
        for path in walk(&tmp.path().join("db"))
            .into_iter()
            .filter(|p| p.is_file())
        {
            fs::write(path, vec![0xA5; 4096]).unwrap();
        }
        match open(tmp.path()) {
            Err(StoreError::Open { recovery, .. }) => {
                assert!(recovery.contains("journal"), "{recovery}")
            }
            Err(other) => panic!("unexpected error {other}"),
            // sled may treat garbage as an empty log; the journal must then bring the account back.
            Ok(store) => assert_eq!(store.load_all().unwrap(), vec![record("a", "rt-a")]),
        }
    }

    /// Sets the stored schema version, as another build would have left it.
    fn stamp_schema(dir: &Path, version: u32) {
        let store = open(dir).unwrap();
        let mut state = store.lock();
        let (open, _) = store.usable(&mut state).unwrap();
        open.db.insert(SCHEMA_KEY, &version.to_be_bytes()).unwrap();
        drop(state);
        store.flush().unwrap();
    }

    fn stored_schema(store: &SledStore) -> u32 {
        let mut state = store.lock();
        let (open, _) = store.usable(&mut state).unwrap();
        let bytes = open.db.get(SCHEMA_KEY).unwrap().unwrap();
        u32::from_be_bytes(bytes.as_ref().try_into().unwrap())
    }

    #[test]
    fn newer_schema_is_refused_and_an_older_one_upgraded() {
        let tmp = tempfile::tempdir().unwrap();
        stamp_schema(tmp.path(), 99);
        assert!(matches!(
            open(tmp.path()),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
        stamp_schema_raw(tmp.path(), 1);
        let store = open(tmp.path()).unwrap();
        assert_eq!(
            stored_schema(&store),
            3,
            "rows now carry versions (2) and may carry the refresh token's expiry (3)"
        );
    }

    /// As `stamp_schema`, on a store that this build refuses to open.
    fn stamp_schema_raw(dir: &Path, version: u32) {
        // As `open`: the previous handle releases sled's lock from a background thread.
        let db = (0..200)
            .find_map(|_| {
                let opened = sled::open(dir.join("db")).ok();
                if opened.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened
            })
            .unwrap();
        db.insert(SCHEMA_KEY, &version.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }

    fn digests(dir: &Path) -> Vec<(PathBuf, String)> {
        use sha2::Digest as _;
        all_bytes(dir)
            .into_iter()
            .map(|(path, bytes)| (path, hex::encode(sha2::Sha256::digest(bytes))))
            .collect()
    }

    /// Every file and directory below `dir`, sorted.
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(path) = stack.pop() {
            for entry in fs::read_dir(&path).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path.clone());
                }
                found.push(path);
            }
        }
        found.sort();
        found
    }

    fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        walk(dir)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| (p.clone(), fs::read(p).unwrap()))
            .collect()
    }

    #[test]
    fn no_file_in_the_store_holds_a_token_in_the_clear() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path()).unwrap();
            for n in 0..20 {
                put(
                    &store,
                    &record(&format!("acct-{n}"), &format!("refresh-SECRET-{n:04}")),
                );
            }
        }
        let files = all_bytes(tmp.path());
        assert!(files.iter().any(|(path, _)| path.ends_with("store-key")));
        for (path, bytes) in files {
            assert!(
                !bytes.windows(14).any(|w| w == b"refresh-SECRET"),
                "{} holds a token in the clear",
                path.display()
            );
        }
    }

    #[test]
    fn the_wrong_key_or_a_missing_key_refuses_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        put(&open(tmp.path()).unwrap(), &record("a", "rt-a"));
        let before = digests(tmp.path());
        fs::write(tmp.path().join("store-key"), [9u8; 32]).unwrap();
        let error = open(tmp.path()).unwrap_err();
        assert!(matches!(error, StoreError::WrongKey { .. }), "{error}");
        assert!(error.to_string().contains("nothing was changed"));
        let mut after = digests(tmp.path());
        after.retain(|(path, _)| !path.ends_with("store-key"));
        let mut expected = before.clone();
        expected.retain(|(path, _)| !path.ends_with("store-key"));
        assert_eq!(after, expected, "the store's files are untouched");
        fs::remove_file(tmp.path().join("store-key")).unwrap();
        let error = open(tmp.path()).unwrap_err();
        assert!(
            matches!(error, StoreError::Key { .. })
                && error.to_string().contains("restore the key file"),
            "{error}"
        );
        assert!(
            !tmp.path().join("store-key").exists(),
            "no new key is made for a store with data"
        );
    }

    #[test]
    fn rekey_reseals_everything_and_an_interrupted_one_finishes_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let records: Vec<_> = (0..5)
            .map(|n| record(&format!("a{n}"), &format!("rt-{n}")))
            .collect();
        let old_key = {
            let store = open(tmp.path()).unwrap();
            records.iter().for_each(|r| put(&store, r));
            let old = fs::read(tmp.path().join("store-key")).unwrap();
            assert_eq!(store.rekey().unwrap(), 5);
            assert_eq!(store.load_all().unwrap(), records);
            old
        };
        assert_ne!(fs::read(tmp.path().join("store-key")).unwrap(), old_key);
        assert!(!tmp.path().join("store-key.next").exists());
        assert_eq!(open(tmp.path()).unwrap().load_all().unwrap(), records);

        // Interrupted halfway: a next key on disk, two values re-sealed under it, the rest not.
        {
            let store = open(tmp.path()).unwrap();
            let (next, bytes) = StoreKey::generate();
            fs::write(tmp.path().join("store-key.next"), bytes.as_slice()).unwrap();
            let mut state = store.lock();
            let (open, _) = store.usable(&mut state).unwrap();
            for r in &records[..2] {
                open.accounts
                    .insert(r.name.as_str(), schema::encode(r, 100, &next))
                    .unwrap();
            }
            open.db.flush().unwrap();
        }
        let store = open(tmp.path()).unwrap();
        assert_eq!(store.load_all().unwrap(), records, "every account readable");
        assert!(
            !tmp.path().join("store-key.next").exists(),
            "the rekey was finished"
        );
        let current = store.keyring().current.id();
        let mut state = store.lock();
        let (open, _) = store.usable(&mut state).unwrap();
        for entry in open.accounts.iter() {
            assert_eq!(schema::key_id(&entry.unwrap().1), Some(&current[..]));
        }
    }

    #[test]
    fn a_key_from_elsewhere_is_used_but_not_rotated() {
        let tmp = tempfile::tempdir().unwrap();
        let credentials = tempfile::tempdir().unwrap();
        let key_file = credentials.path().join("store-key");
        fs::write(&key_file, hex::encode([5u8; 32])).unwrap();
        let store = SledStore::open(&Config {
            dir: tmp.path().to_owned(),
            key_file: key_file.clone(),
            backend: super::super::Backend::sled(),
        })
        .unwrap();
        put(&store, &record("a", "rt"));
        assert!(
            !tmp.path().join("store-key").exists(),
            "no key generated beside the store"
        );
        assert!(matches!(store.rekey(), Err(StoreError::Key { .. })));
    }

    /// Writes twenty versions of one account (and a neighbour), as a rotating provider would.
    fn rotations(dir: &Path) {
        let store = open(dir).unwrap();
        for n in 1..=20 {
            put(&store, &record("a", &format!("rt-{n:02}")));
            put(&store, &record("b", &format!("other-{n:02}")));
        }
    }

    /// Copies a store directory, so one written store can be damaged many ways.
    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// What a damaged copy of the store opens to: the refresh token of account `a`, or the
    /// open error. An older token than the newest written is never acceptable.
    fn open_damaged(pristine: &Path, damage: impl FnOnce(&Path)) -> Result<String, String> {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine, tmp.path());
        damage(tmp.path());
        let store = open(tmp.path()).map_err(|e| e.to_string())?;
        let records = store.load_all().map_err(|e| e.to_string())?;
        let a = records.iter().find(|r| r.name.as_str() == "a");
        Ok(a.map(|r| r.refresh_token.expose().to_owned())
            .unwrap_or_default())
    }

    fn largest_file(dir: &Path) -> PathBuf {
        walk(dir)
            .into_iter()
            .filter(|p| p.is_file())
            .max_by_key(|p| fs::metadata(p).unwrap().len())
            .unwrap()
    }

    #[test]
    fn a_truncated_or_bit_flipped_database_never_brings_back_an_older_grant() {
        let pristine = tempfile::tempdir().unwrap();
        rotations(pristine.path());
        let log = largest_file(&pristine.path().join("db"));
        let rel = log.strip_prefix(pristine.path()).unwrap().to_owned();
        let len = fs::metadata(&log).unwrap().len();
        let mut outcomes = Vec::new();
        for eighth in 1..8 {
            let keep = len * eighth / 8;
            let rel = rel.clone();
            outcomes.push(open_damaged(pristine.path(), move |dir| {
                let file = OpenOptions::new().write(true).open(dir.join(&rel)).unwrap();
                file.set_len(keep).unwrap();
            }));
        }
        for step in 1..16u64 {
            let at = len * step / 16;
            let rel = rel.clone();
            outcomes.push(open_damaged(pristine.path(), move |dir| {
                let path = dir.join(&rel);
                let mut bytes = fs::read(&path).unwrap();
                bytes[at as usize] ^= 0x10;
                fs::write(&path, bytes).unwrap();
            }));
        }
        for (n, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(token) => assert_eq!(token, "rt-20", "damage {n} brought back an older grant"),
                Err(message) => assert!(
                    message.contains("journal") || message.contains("cannot be opened"),
                    "damage {n}: an error without a recovery: {message}"
                ),
            }
        }
        assert!(
            outcomes.iter().filter(|o| o.is_ok()).count() > outcomes.len() / 2,
            "most damaged databases are repaired from the journal: {outcomes:?}"
        );
    }

    #[test]
    fn a_damaged_journal_with_a_healthy_database_opens_and_is_rewritten() {
        let pristine = tempfile::tempdir().unwrap();
        rotations(pristine.path());
        let journal = pristine.path().join(journal::FILE);
        let len = fs::metadata(&journal).unwrap().len() as usize;
        for at in [0, 10, len / 3, len / 2, len - 3] {
            let flipped = open_damaged(pristine.path(), |dir| {
                let path = dir.join(journal::FILE);
                let mut bytes = fs::read(&path).unwrap();
                bytes[at] ^= 0x55;
                fs::write(&path, bytes).unwrap();
            });
            assert_eq!(flipped.as_deref(), Ok("rt-20"), "flip at {at}");
            let truncated = open_damaged(pristine.path(), |dir| {
                let file = OpenOptions::new()
                    .write(true)
                    .open(dir.join(journal::FILE))
                    .unwrap();
                file.set_len(at as u64).unwrap();
            });
            assert_eq!(truncated.as_deref(), Ok("rt-20"), "truncated at {at}");
        }
        // Once opened, the journal is whole again and holds the newest copy on its own.
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), tmp.path());
        fs::write(tmp.path().join(journal::FILE), b"garbage").unwrap();
        drop(open(tmp.path()).unwrap());
        fs::remove_dir_all(tmp.path().join("db")).unwrap();
        let store = open(tmp.path()).unwrap();
        let a = store.load_all().unwrap();
        assert_eq!(a[0].refresh_token.expose(), "rt-20");
    }

    #[test]
    fn an_old_snapshot_is_read_once_and_the_newer_copy_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let key = {
            let store = open(tmp.path()).unwrap();
            put(&store, &record("a", "rt-db"));
            store.keyring().current
        };
        // A store from before the journal: its snapshot holds a copy of version 0 and the
        // journal is gone. The database's copy (version 1) is newer and wins.
        let mut snapshot = SNAPSHOT_MAGIC.to_vec();
        for part in [&b"a"[..], &schema::encode(&record("a", "rt-old"), 0, &key)] {
            snapshot.extend_from_slice(&(part.len() as u32).to_be_bytes());
            snapshot.extend_from_slice(part);
        }
        fs::write(tmp.path().join(SNAPSHOT_FILE), snapshot).unwrap();
        fs::remove_file(tmp.path().join(journal::FILE)).unwrap();
        let store = open(tmp.path()).unwrap();
        assert_eq!(store.load_all().unwrap()[0].refresh_token.expose(), "rt-db");
        assert!(
            !tmp.path().join(SNAPSHOT_FILE).exists(),
            "moved into the journal"
        );
        assert!(tmp.path().join(journal::FILE).exists());
    }

    #[test]
    fn no_key_and_no_journal_but_a_database_with_accounts_refuses_without_making_a_key() {
        let tmp = tempfile::tempdir().unwrap();
        put(&open(tmp.path()).unwrap(), &record("a", "rt-a"));
        fs::remove_file(tmp.path().join("store-key")).unwrap();
        fs::remove_file(tmp.path().join(journal::FILE)).unwrap();
        let error = open(tmp.path()).unwrap_err().to_string();
        assert!(error.contains("restore the key file"), "{error}");
        assert!(!error.contains("nothing was changed"), "{error}");
        assert!(!tmp.path().join("store-key").exists(), "no key was made");
    }

    #[test]
    fn writes_cost_the_size_of_the_batch_not_of_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).unwrap();
        let batch: Vec<Change> = (0..2000)
            .map(|n| Change::Put(record(&format!("acct-{n}"), "rt")))
            .collect();
        store.write(&batch).unwrap();
        let journal = tmp.path().join(journal::FILE);
        let before = fs::metadata(&journal).unwrap().len();
        put(&store, &record("acct-7", "rt-new"));
        let grew = fs::metadata(&journal).unwrap().len() - before;
        assert!(
            grew < 1024,
            "one write appended {grew} bytes to the journal"
        );
        // Compaction keeps the journal within a small multiple of the store's size.
        for n in 0..6000 {
            put(&store, &record("acct-7", &format!("rt-{n}")));
        }
        let frames = store.lock().open.as_ref().unwrap().journal.frames();
        assert!(frames <= 2 * 2000 + COMPACT_SLACK + 1, "{frames} frames");
        drop(store);
        let store = open(tmp.path()).unwrap();
        let records = store.load_all().unwrap();
        assert_eq!(records.len(), 2000);
        let seven = records
            .iter()
            .find(|r| r.name.as_str() == "acct-7")
            .unwrap();
        assert_eq!(seven.refresh_token.expose(), "rt-5999");
    }
}
