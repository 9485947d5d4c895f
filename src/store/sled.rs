//! The embedded sled backend, used by the rules in CRATES.md.
//!
//! One writer at a time (a mutex), a blocking `flush()` before a write is acknowledged, a
//! small cache, open errors and panics turned into `StoreError`, and a snapshot file
//! (`accounts.snapshot`, written temp + fsync + rename) that restores an emptied store.
//! Values are sealed (`seal.rs`); the key is loaded, or generated for a new store, here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::schema::{self, SCHEMA_VERSION};
use super::seal::{self, Keyring, StoreKey};
use super::{Config, Store, StoreError};
use crate::token::{AccountName, AccountRecord};

const CACHE_CAPACITY: u64 = 16 * 1024 * 1024;
const SCHEMA_KEY: &[u8] = b"schema_version";
const SNAPSHOT_FILE: &str = "accounts.snapshot";
const SNAPSHOT_MAGIC: &[u8] = b"tokenbroker-snapshot-1\n";

/// Accounts in a sled database under `store.dir/db`.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    dir: PathBuf,
    key_file: PathBuf,
    keyring: std::sync::RwLock<Keyring>,
    /// Serialises writes and flushes: sled's concurrent flushes have deadlocked in the past.
    writer: Mutex<()>,
}

impl SledStore {
    /// Opens (or creates) the store in `config.dir`, restoring from the snapshot if the
    /// database is new but a snapshot exists.
    ///
    /// # Errors
    /// The directory cannot be prepared; the database is locked, corrupt, or newer.
    pub fn open(config: &Config) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        prepare_dir(&dir)?;
        // Check the key against the snapshot before the database is opened (opening it
        // writes sled's own files): a wrong or missing key must change nothing at all.
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
        let keyring = load_keyring(&config.key_file, &dir, snapshot.is_none())?;
        for (key, value) in snapshot.iter().flatten() {
            schema::decode(key, value, &keyring)?;
        }
        let db_path = dir.join("db");
        let opened = panic::catch_unwind(AssertUnwindSafe(|| {
            sled::Config::new()
                .path(&db_path)
                .cache_capacity(CACHE_CAPACITY)
                .open()
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(error)))
                if error.to_string().contains("could not acquire lock") =>
            {
                return Err(StoreError::Locked { path: db_path });
            }
            Ok(Err(error)) => return Err(open_error(&dir, &db_path, error.to_string())),
            Err(_) => {
                return Err(open_error(
                    &dir,
                    &db_path,
                    "the database engine panicked while reading it".into(),
                ))
            }
        };
        let accounts = db
            .open_tree("accounts")
            .map_err(|e| engine("open accounts tree", e))?;
        let store = Self {
            db,
            accounts,
            dir,
            key_file: config.key_file.clone(),
            keyring: std::sync::RwLock::new(keyring),
            writer: Mutex::new(()),
        };
        store.check_schema(&db_path)?;
        store.restore_snapshot_if_empty(snapshot)?;
        if store.next_key_file().exists() {
            // A rekey was interrupted: finish it before anything else is written.
            let _writer = store.lock();
            store.reseal_all()?;
        }
        restrict_files(&store.dir)?;
        Ok(store)
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

    /// Re-seals every value under the pending key (`<key_file>.next`) and then makes it the
    /// key. Each step leaves every value readable with the keys on disk. Writer lock held.
    fn reseal_all(&self) -> Result<usize, StoreError> {
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
        let mut count = 0;
        for entry in self.accounts.iter() {
            let (key, value) = entry.map_err(|e| engine("read", e))?;
            if schema::key_id(&value) != Some(&keyring.current.id()[..]) {
                let record = schema::decode(&key, &value, &keyring)?;
                self.accounts
                    .insert(key, schema::encode(&record, &keyring.current))
                    .map_err(|e| engine("re-seal", e))?;
            }
            count += 1;
        }
        self.flush_locked()?;
        *self
            .keyring
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keyring.clone();
        self.write_snapshot()?;
        fs::rename(&next_path, &self.key_file).map_err(|source| StoreError::Io {
            operation: "key rename",
            source,
        })?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StoreError::Io {
                operation: "key rename",
                source,
            })?;
        *self
            .keyring
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Keyring::new(keyring.current);
        tracing::info!(accounts = count, "store re-sealed under a new key");
        Ok(count)
    }

    fn check_schema(&self, db_path: &Path) -> Result<(), StoreError> {
        match self
            .db
            .get(SCHEMA_KEY)
            .map_err(|e| engine("read schema version", e))?
        {
            None => {
                self.db
                    .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| engine("write schema version", e))?;
                self.flush()
            }
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Decode {
                        key: "schema_version".into(),
                        reason: "not a 4-byte version".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path: db_path.to_owned(),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Ok(())
            }
        }
    }

    /// Rebuilds an empty database from the snapshot, whose values `open` has already
    /// checked against the key.
    fn restore_snapshot_if_empty(&self, snapshot: Option<Entries>) -> Result<(), StoreError> {
        let Some(values) = snapshot.filter(|_| self.accounts.is_empty()) else {
            return Ok(());
        };
        for (key, value) in &values {
            self.accounts
                .insert(key.as_slice(), value.as_slice())
                .map_err(|e| engine("restore snapshot", e))?;
        }
        tracing::warn!(
            accounts = values.len(),
            "store was empty; restored accounts from {SNAPSHOT_FILE}"
        );
        self.flush()
    }

    /// Rewrites the snapshot from the tree; called with the writer lock held.
    fn write_snapshot(&self) -> Result<(), StoreError> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        for entry in self.accounts.iter() {
            let (key, value) = entry.map_err(|e| engine("read for snapshot", e))?;
            for part in [key.as_ref(), value.as_ref()] {
                let len = u32::try_from(part.len()).expect("keys and values are far below 4 GiB");
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(part);
            }
        }
        write_atomically(&self.dir.join(SNAPSHOT_FILE), &bytes).map_err(|source| StoreError::Io {
            operation: "snapshot write",
            source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves nothing half-written that the next writer must
        // know about (sled's insert is atomic), so a poisoned lock is safe to take over.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for SledStore {
    fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let keyring = self.keyring();
        self.accounts
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(|e| engine("read", e))?;
                schema::decode(&key, &value, &keyring)
            })
            .collect()
    }

    fn rekey(&self) -> Result<usize, StoreError> {
        if self.key_file.parent() != Some(self.dir.as_path()) {
            return Err(StoreError::Key {
                path: self.key_file.clone(),
                problem: "rekey rotates only the key tokenbroker manages in store.dir; for a key from LoadCredential= or elsewhere, provide the new key there and restart".into(),
            });
        }
        let _writer = self.lock();
        let (_, bytes) = StoreKey::generate();
        write_atomically(&self.next_key_file(), bytes.as_slice()).map_err(|source| {
            StoreError::Io {
                operation: "key write",
                source,
            }
        })?;
        self.reseal_all()
    }

    fn put(&self, record: &AccountRecord) -> Result<(), StoreError> {
        let _writer = self.lock();
        let value = schema::encode(record, &self.keyring().current);
        self.accounts
            .insert(record.name.as_str(), value)
            .map_err(|e| engine("write", e))?;
        self.flush_locked()?;
        self.write_snapshot()
    }

    fn remove(&self, name: &AccountName) -> Result<bool, StoreError> {
        let _writer = self.lock();
        let existed = self
            .accounts
            .remove(name.as_str())
            .map_err(|e| engine("delete", e))?
            .is_some();
        self.flush_locked()?;
        self.write_snapshot()?;
        Ok(existed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let _writer = self.lock();
        self.flush_locked()
    }
}

impl SledStore {
    fn flush_locked(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|e| match e {
            sled::Error::Io(source) => StoreError::Io {
                operation: "flush",
                source,
            },
            other => engine("flush", other),
        })
    }
}

fn next_key_path(key_file: &Path) -> PathBuf {
    let mut name = key_file
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    name.push(".next");
    key_file.with_file_name(name)
}

/// Loads the store key (and a pending rekey's next key), generating one for a new store.
fn load_keyring(key_file: &Path, dir: &Path, is_new: bool) -> Result<Keyring, StoreError> {
    let key_error = |problem: String| StoreError::Key {
        path: key_file.to_owned(),
        problem,
    };
    let read_key = |path: &Path| -> Result<Option<StoreKey>, StoreError> {
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                let key = seal::parse_key_file(&bytes).ok_or_else(|| {
                    key_error("is not a key (32 raw bytes or 64 hex digits)".into())
                })?;
                Ok(Some(StoreKey::from_bytes(&key)))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(key_error(error.to_string())),
        }
    };
    let current = match read_key(key_file)? {
        Some(key) => key,
        None if is_new && key_file.parent() == Some(dir) => {
            let (key, bytes) = StoreKey::generate();
            write_atomically(key_file, bytes.as_slice()).map_err(|e| key_error(format!("cannot write a new key: {e}")))?;
            tracing::info!(key_file = %key_file.display(), key_id = key.id_hex(), "generated a new store key");
            key
        }
        None if is_new => return Err(key_error("not found (tokenbroker generates a key only inside store.dir)".into())),
        None => return Err(key_error("not found, but the store holds sealed accounts: restore the key file (nothing was changed)".into())),
    };
    let mut keyring = Keyring::new(current);
    if let Some(next) = read_key(&next_key_path(key_file))? {
        keyring.previous.push(next);
    }
    Ok(keyring)
}

fn engine(operation: &'static str, error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(source) => StoreError::Io { operation, source },
        other => StoreError::Engine {
            operation,
            reason: other.to_string(),
        },
    }
}

fn open_error(dir: &Path, db_path: &Path, reason: String) -> StoreError {
    let snapshot = dir.join(SNAPSHOT_FILE);
    let recovery = if snapshot.exists() {
        format!(
            "a snapshot of every account is at {}: stop tokenbroker, move {} aside, and start it again to restore from the snapshot",
            snapshot.display(),
            db_path.display()
        )
    } else {
        "no snapshot exists; restore the store directory from a backup or reconnect the accounts"
            .into()
    };
    StoreError::Open {
        path: db_path.to_owned(),
        reason,
        recovery,
    }
}

fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    let wrap = |source| StoreError::PrepareDir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(wrap)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(wrap)
}

/// Gives every file under the store directory mode 0600 and every directory 0700, whatever
/// the umask was when sled created them.
fn restrict_files(dir: &Path) -> Result<(), StoreError> {
    let wrap = |source| StoreError::PrepareDir {
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(wrap)? {
        let entry = entry.map_err(wrap)?;
        let path = entry.path();
        if entry.file_type().map_err(wrap)?.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(wrap)?;
            restrict_files(&path)?;
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(wrap)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
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

fn read_snapshot(path: &Path) -> Result<Option<Entries>, StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::Io {
                operation: "snapshot read",
                source,
            })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                operation: "snapshot read",
                source,
            })
        }
    };
    let bad = |reason: &str| StoreError::Decode {
        key: SNAPSHOT_FILE.into(),
        reason: reason.into(),
    };
    let mut rest = bytes
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or_else(|| bad("not a tokenbroker snapshot"))?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let (key, tail) = take_part(rest).ok_or_else(|| bad("truncated"))?;
        let (value, tail) = take_part(tail).ok_or_else(|| bad("truncated"))?;
        entries.push((key.to_vec(), value.to_vec()));
        rest = tail;
    }
    Ok(Some(entries))
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

    fn config(dir: &Path) -> Config {
        Config {
            dir: dir.to_owned(),
            key_file: dir.join("store-key"),
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
            store.put(&record("a", "rt-a")).unwrap();
            store.put(&record("b", "rt-b")).unwrap();
            assert!(store.remove(&"b".parse().unwrap()).unwrap());
            assert!(!store.remove(&"b".parse().unwrap()).unwrap());
        }
        let store = open(&dir).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record("a", "rt-a")]);
    }

    #[test]
    fn directory_is_0700_and_files_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = open(&dir).unwrap();
        store.put(&record("a", "rt-a")).unwrap();
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
        assert!(seen >= 2, "expected database files and a snapshot");
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
    fn a_lost_database_is_restored_from_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path()).unwrap();
            store.put(&record("a", "rt-a")).unwrap();
            store.put(&record("b", "rt-b")).unwrap();
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
            store.put(&record("a", "rt-a")).unwrap();
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
                assert!(recovery.contains("accounts.snapshot"), "{recovery}")
            }
            Err(other) => panic!("unexpected error {other}"),
            // sled may treat garbage as an empty log; the snapshot must then bring the account back.
            Ok(store) => assert_eq!(store.load_all().unwrap(), vec![record("a", "rt-a")]),
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path()).unwrap();
            store.db.insert(SCHEMA_KEY, &99u32.to_be_bytes()).unwrap();
            store.flush().unwrap();
        }
        assert!(matches!(
            open(tmp.path()),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
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
                store
                    .put(&record(
                        &format!("acct-{n}"),
                        &format!("refresh-SECRET-{n:04}"),
                    ))
                    .unwrap();
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
        open(tmp.path()).unwrap().put(&record("a", "rt-a")).unwrap();
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
            records.iter().for_each(|r| store.put(r).unwrap());
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
            for r in &records[..2] {
                store
                    .accounts
                    .insert(r.name.as_str(), schema::encode(r, &next))
                    .unwrap();
            }
            store.db.flush().unwrap();
        }
        let store = open(tmp.path()).unwrap();
        assert_eq!(store.load_all().unwrap(), records, "every account readable");
        assert!(
            !tmp.path().join("store-key.next").exists(),
            "the rekey was finished"
        );
        let current = store.keyring().current.id();
        for entry in store.accounts.iter() {
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
        })
        .unwrap();
        store.put(&record("a", "rt")).unwrap();
        assert!(
            !tmp.path().join("store-key").exists(),
            "no key generated beside the store"
        );
        assert!(matches!(store.rekey(), Err(StoreError::Key { .. })));
    }
}
