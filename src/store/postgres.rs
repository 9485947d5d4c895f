//! The shared store: accounts in one PostgreSQL table that several brokers use at once.
//!
//! Each account is one row: its name, a version that every write increases, and the
//! record sealed with the store key, as sled holds it (the database sees no secret). A
//! refresh claims its row with `SELECT … FOR UPDATE` in a transaction of its own, re-reads
//! it under the lock, and commits the new grant in that same transaction, so a broker that
//! lost its session cannot commit, and no lock outlives its holder. Every other write is a
//! compare-and-set on the version this broker last saw, so it never replaces a newer row.
//! Every write sends `NOTIFY`; [`PostgresStore::follow`] listens, reads what changed and
//! reports it. A refresh whose commit failed (the provider may have rotated the grant
//! already) is kept in `pending` in the broker's own store directory, synced, until a later
//! write stores it; at the next open it is stored then, if no other broker stored a newer
//! copy meanwhile. Only row and transaction-scoped locks are used (session advisory locks break
//! behind PgBouncer's transaction pooling).
//!
//! Why it is one file: the writes, the claims and the change feed all read and update the
//! one map of versions this broker has seen, and each is a few statements on the same two
//! tables; apart, each would reach into the others' state.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::future::BoxFuture;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::seal::{Keyring, StoreKey};
use super::{
    schema, Backend, Change, Claim, Config, Follower, Held, Lease, Store, StoreError, Stored,
};
use crate::token::{AccountName, AccountRecord};

/// The version of the tables this build creates and reads.
const SCHEMA_VERSION: u32 = 1;
/// The channel every write notifies, with the account's name as the payload.
const CHANNEL: &str = "tokenbroker_accounts";
/// Serialises schema creation when several brokers start at once (transaction-scoped).
const SCHEMA_LOCK: i64 = 0x746f_6b65_6e62;
/// Connections for writes and reads (the writer thread and `follow`'s look-ups).
const POOL_SIZE: usize = 4;
/// The file in `store.dir` that keeps grants whose commit failed.
const PENDING_FILE: &str = "pending";
/// How long `follow` waits before connecting again after losing its connection.
const RECONNECT: Duration = Duration::from_secs(1);

/// The accounts in PostgreSQL.
pub struct PostgresStore {
    shared: Arc<Shared>,
    /// Runs the blocking trait calls (made on the writer thread) on the daemon's runtime.
    handle: tokio::runtime::Handle,
    /// What the open read, handed out once by `load_all`.
    loaded: Mutex<Option<Vec<AccountRecord>>>,
}

struct Shared {
    /// Writes and reads.
    pool: Pool,
    /// Refreshes holding a row lock: a pool of their own, so that they cannot starve writes.
    leases: Pool,
    pg_config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The store key (only `current`: a shared store is never mid-rekey).
    keyring: Keyring,
    lease_timeout: Duration,
    /// The version of each account's row as this broker last read or wrote it.
    seen: Mutex<HashMap<AccountName, i64>>,
    /// Grants whose commit failed, sealed as the row they should become (its version
    /// inside), kept in `pending_file` too until they are stored.
    pending: Mutex<std::collections::BTreeMap<AccountName, Vec<u8>>>,
    pending_file: std::path::PathBuf,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates or checks the tables (safely when several brokers start at once),
    /// checks that the store key is the one the database was sealed with, and reads every
    /// account. `leases`: how many refreshes may hold a row lock at once (`max_concurrent`).
    ///
    /// # Errors
    /// A bad URL, an unreachable database, a newer schema, or another key.
    pub async fn open(config: &Config, leases: usize) -> Result<Self, StoreError> {
        let Backend::Postgres {
            url,
            lease_timeout,
            ca_certificates,
        } = &config.backend
        else {
            return Err(StoreError::Engine {
                operation: "open",
                reason: "not a PostgreSQL store".into(),
            });
        };
        let lease_timeout = *lease_timeout;
        // Never generated here: every broker must have the same key, so a missing one is
        // an operator's mistake, not a new store.
        let keyring = super::sled::read_keyring(&config.key_file)?.ok_or_else(|| StoreError::Key {
            path: config.key_file.clone(),
            problem: "not found (a shared store's key is never generated: copy the same key file to every broker)".into(),
        })?;
        let pg_config = tokio_postgres::Config::from_str(url.expose()).map_err(|e| {
            StoreError::Unavailable {
                // The parser's message names what is wrong, never the URL itself.
                reason: format!("store.url is not a PostgreSQL URL: {e}"),
            }
        })?;
        let mut pg_config = pg_config;
        if pg_config.get_application_name().is_none() {
            // Shown in pg_stat_activity: which broker holds which lock.
            pg_config.application_name(format!("tokenbroker/{}", std::process::id()));
        }
        let tls = tls(&mut pg_config, ca_certificates)?;
        let pool = connections(&pg_config, &tls, POOL_SIZE)?;
        let lease_pool = connections(&pg_config, &tls, leases.max(1))?;
        let keyring = Keyring::new(keyring.current);
        super::sled::prepare_dir(&config.dir)?;
        let mut client = pool.get().await.map_err(pool_error)?;
        prepare(&mut client, &keyring.current).await?;
        drop(client);
        let shared = Arc::new(Shared {
            pool,
            leases: lease_pool,
            pg_config,
            tls,
            keyring,
            lease_timeout,
            seen: Mutex::new(HashMap::new()),
            pending: Mutex::new(std::collections::BTreeMap::new()),
            pending_file: config.dir.join(PENDING_FILE),
        });
        let mut records = shared.read_all().await?;
        if shared.store_pending().await? {
            records = shared.read_all().await?;
        }
        Ok(Self {
            shared,
            handle: tokio::runtime::Handle::current(),
            loaded: Mutex::new(Some(records)),
        })
    }
}

/// How connections are encrypted: with `sslmode=require` in the URL, TLS whose certificate
/// and host name are verified (against `ca_certificates`, or the system's roots); otherwise
/// none, `sslmode=prefer` (the URL's default) included, since it would accept a server that
/// declines TLS or presents any certificate.
fn tls(
    pg_config: &mut tokio_postgres::Config,
    ca_certificates: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<MakeRustlsConnect, StoreError> {
    crate::provider::install_crypto_provider();
    let unusable = |e: rustls::Error| StoreError::Unavailable {
        reason: format!("cannot set up TLS to the database: {e}"),
    };
    let builder = rustls::ClientConfig::builder();
    let config = if pg_config.get_ssl_mode() != SslMode::Require {
        pg_config.ssl_mode(SslMode::Disable);
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    } else if ca_certificates.is_empty() {
        use rustls_platform_verifier::BuilderVerifierExt;
        builder
            .with_platform_verifier()
            .map_err(unusable)?
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in ca_certificates {
            roots.add(certificate.clone()).map_err(unusable)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(MakeRustlsConnect::new(config))
}

fn connections(
    pg_config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    size: usize,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        pg_config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable {
            reason: format!("cannot set up the connection pool: {e}"),
        })
}

/// Creates the tables if they are missing and checks the schema version and the key, in
/// one transaction behind a transaction-scoped lock, so brokers starting together agree.
async fn prepare(client: &mut Object, key: &StoreKey) -> Result<(), StoreError> {
    let transaction = client
        .transaction()
        .await
        .map_err(|e| database("start", &e))?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(|e| database("lock the schema", &e))?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tokenbroker_meta (
                 name text PRIMARY KEY,
                 value text NOT NULL);
             CREATE TABLE IF NOT EXISTS tokenbroker_accounts (
                 name text PRIMARY KEY,
                 version bigint NOT NULL,
                 sealed bytea NOT NULL);",
        )
        .await
        .map_err(|e| database("create the tables", &e))?;
    transaction
        .execute(
            "INSERT INTO tokenbroker_meta VALUES ('schema_version', $1), ('key_id', $2)
             ON CONFLICT (name) DO NOTHING",
            &[&SCHEMA_VERSION.to_string(), &key.id_hex()],
        )
        .await
        .map_err(|e| database("write the schema version", &e))?;
    let meta: HashMap<String, String> = transaction
        .query("SELECT name, value FROM tokenbroker_meta", &[])
        .await
        .map_err(|e| database("read the schema version", &e))?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let found = meta
        .get("schema_version")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: "PostgreSQL".into(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    match meta.get("key_id") {
        Some(id) if *id == key.id_hex() => {}
        found => {
            return Err(StoreError::WrongKey {
                found: found.cloned().unwrap_or_default(),
                loaded: key.id_hex(),
            })
        }
    }
    transaction
        .commit()
        .await
        .map_err(|e| database("create the tables", &e))
}

impl Store for PostgresStore {
    fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError> {
        match self.loaded.lock().expect("never poisoned").take() {
            Some(records) => Ok(records),
            None => {
                let shared = self.shared.clone();
                self.handle.block_on(async move { shared.read_all().await })
            }
        }
    }

    fn write(&self, changes: &[Change]) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let changes = changes.to_vec();
        self.handle
            .block_on(async move { shared.write(&changes).await })
    }

    fn rekey(&self) -> Result<usize, StoreError> {
        Err(StoreError::Engine {
            operation: "rekey",
            reason: "a shared PostgreSQL store is re-keyed by copying it (tokenbroker store copy) into a store with the new key".into(),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every write is committed before it is acknowledged.
        Ok(())
    }

    fn claim<'a>(
        &'a self,
        name: &'a AccountName,
        wait: bool,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(self.shared.clone().claim(name, wait))
    }

    fn reachable(&self) -> Option<BoxFuture<'static, Result<(), StoreError>>> {
        let shared = self.shared.clone();
        Some(Box::pin(async move {
            let client = shared.pool.get().await.map_err(pool_error)?;
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| database("reach the database", &e))
        }))
    }

    fn follow(&self, follower: Follower) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin(self.shared.clone().follow(follower)))
    }
}

impl Shared {
    async fn read_all(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT name, version, sealed FROM tokenbroker_accounts",
                &[],
            )
            .await
            .map_err(|e| database("read the accounts", &e))?;
        let mut records = Vec::with_capacity(rows.len());
        let mut seen = self.seen.lock().expect("never poisoned");
        for row in rows {
            let (name, version, sealed): (String, i64, Vec<u8>) =
                (row.get(0), row.get(1), row.get(2));
            let record = schema::decode(name.as_bytes(), &sealed, &self.keyring)?;
            seen.insert(record.name.clone(), version);
            records.push(record);
        }
        Ok(records)
    }

    fn seen(&self, name: &AccountName) -> Option<i64> {
        self.seen.lock().expect("never poisoned").get(name).copied()
    }

    fn saw(&self, name: &AccountName, version: Option<i64>) {
        let mut seen = self.seen.lock().expect("never poisoned");
        match version {
            Some(version) => seen.insert(name.clone(), version),
            None => seen.remove(name),
        };
    }

    /// The row, decoded, when its version is not the one this broker saw last; noted as
    /// seen.
    fn newer(
        &self,
        name: &AccountName,
        version: i64,
        sealed: &[u8],
    ) -> Result<Option<AccountRecord>, StoreError> {
        if self.seen(name) == Some(version) {
            return Ok(None);
        }
        let record = schema::decode(name.as_str().as_bytes(), sealed, &self.keyring)?;
        self.saw(name, Some(version));
        Ok(Some(record))
    }

    /// One transaction for the whole batch. A put replaces the row only at the version this
    /// broker saw last (or creates it when there is none); a newer row is kept and the put
    /// dropped: `follow` brings the newer row to this broker.
    async fn write(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let transaction = client
            .transaction()
            .await
            .map_err(|e| database("start a write", &e))?;
        // Versions as this batch leaves them: an account may be written twice in one batch.
        let mut written: HashMap<AccountName, Option<i64>> = HashMap::new();
        for change in changes {
            match change {
                Change::Put(record) => {
                    let name = &record.name;
                    let base = match written.get(name) {
                        Some(version) => *version,
                        None => self.seen(name),
                    };
                    let next = base.unwrap_or(0) + 1;
                    let sealed = seal(record, next, &self.keyring.current);
                    let rows =
                        match base {
                            Some(base) => transaction
                                .execute(
                                    "UPDATE tokenbroker_accounts SET version = $2 + 1, sealed = $3
                                 WHERE name = $1 AND version = $2",
                                    &[&name.as_str(), &base, &sealed],
                                )
                                .await,
                            None => {
                                transaction
                                    .execute(
                                        "INSERT INTO tokenbroker_accounts VALUES ($1, 1, $2)
                                 ON CONFLICT (name) DO NOTHING",
                                        &[&name.as_str(), &sealed],
                                    )
                                    .await
                            }
                        }
                        .map_err(|e| database("write an account", &e))?;
                    if rows > 0 {
                        notify(&transaction, name, Some(next)).await?;
                        written.insert(name.clone(), Some(next));
                    } else {
                        tracing::warn!(account = %name, "another broker stored a newer version of the account; keeping it, not this broker's");
                    }
                }
                Change::Remove(name) => {
                    transaction
                        .execute(
                            "DELETE FROM tokenbroker_accounts WHERE name = $1",
                            &[&name.as_str()],
                        )
                        .await
                        .map_err(|e| database("remove an account", &e))?;
                    notify(&transaction, name, None).await?;
                    written.insert(name.clone(), None);
                }
            }
        }
        transaction
            .commit()
            .await
            .map_err(|e| database("commit a write", &e))?;
        let mut stored = Vec::with_capacity(written.len());
        for (name, version) in written {
            self.saw(&name, version);
            stored.push(name);
        }
        self.forget(&stored);
        Ok(())
    }

    /// Keeps a grant whose commit failed, in memory and synced to the pending file, until a
    /// write stores it (the broker retries it) or the next open does.
    fn keep(&self, name: &AccountName, sealed: Vec<u8>) {
        let mut pending = self.pending.lock().expect("never poisoned");
        pending.insert(name.clone(), sealed);
        if let Err(error) = self.save_pending(&pending) {
            tracing::error!(account = %name, file = %self.pending_file.display(), error = %error, "a grant that could not be committed could not be kept on disk either; it is held in memory only");
        }
    }

    /// Drops what `names` had pending, now that it is stored.
    fn forget(&self, names: &[AccountName]) {
        let mut pending = self.pending.lock().expect("never poisoned");
        let before = pending.len();
        for name in names {
            pending.remove(name);
        }
        if pending.len() != before {
            if let Err(error) = self.save_pending(&pending) {
                tracing::warn!(file = %self.pending_file.display(), error = %error, "cannot rewrite the pending grants file; the next open checks it against the database");
            }
        }
    }

    fn save_pending(
        &self,
        pending: &std::collections::BTreeMap<AccountName, Vec<u8>>,
    ) -> std::io::Result<()> {
        if pending.is_empty() {
            return match std::fs::remove_file(&self.pending_file) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            };
        }
        super::journal::write_whole(
            &self.pending_file,
            pending
                .iter()
                .map(|(name, sealed)| (name.as_str(), sealed.as_slice())),
        )
    }

    /// At open: stores each grant the pending file kept, by compare-and-set on the version
    /// it was based on; one that another broker has overtaken is dropped, saying so.
    /// Returns whether anything was stored.
    async fn store_pending(&self) -> Result<bool, StoreError> {
        let mut kept = Vec::new();
        super::journal::read(&self.pending_file, |name, value| {
            match schema::decode_versioned(name, value, &self.keyring) {
                Ok(schema::Versioned {
                    version,
                    entry: schema::Entry::Put(record),
                }) => kept.push((record, i64::try_from(version).unwrap_or(0))),
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(file = %self.pending_file.display(), error = %error, "a kept grant cannot be read");
                }
            }
            Ok(())
        })?;
        let mut changes = Vec::new();
        for (record, version) in kept {
            if self.seen(&record.name) == Some(version - 1) {
                tracing::warn!(account = %record.name, "storing a grant kept after its commit failed");
                changes.push(Change::Put(record));
            } else {
                tracing::error!(account = %record.name, "a grant kept after its commit failed is dropped: another broker stored a newer copy since");
            }
        }
        let any = !changes.is_empty();
        if any {
            self.write(&changes).await?;
        }
        self.pending.lock().expect("never poisoned").clear();
        self.save_pending(&std::collections::BTreeMap::new())
            .map_err(|cause| StoreError::Io {
                operation: "pending grants rewrite",
                cause: cause.into(),
            })?;
        Ok(any)
    }

    async fn claim(self: Arc<Self>, name: &AccountName, wait: bool) -> Result<Claim, StoreError> {
        let client = self.leases.get().await.map_err(pool_error)?;
        // From here on, an early return closes the connection (and any transaction on it).
        let mut lock = RowLock {
            client: Some(client),
            shared: self.clone(),
            name: name.clone(),
            version: 0,
        };
        let timeout = self.lease_timeout.as_millis();
        // The lock lasts as long as this transaction; a holder that goes quiet for longer
        // than a provider call can take loses its session, and with it the lock. A waiter
        // waits no longer than that either. (`SET LOCAL` lasts one transaction.)
        let begin = format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {timeout}; SET LOCAL lock_timeout = {timeout}"
        );
        lock.client()
            .batch_execute(&begin)
            .await
            .map_err(|e| database("start a claim", &e))?;
        let query = if wait {
            "SELECT version, sealed FROM tokenbroker_accounts WHERE name = $1 FOR UPDATE NOWAIT"
        } else {
            "SELECT version, sealed FROM tokenbroker_accounts WHERE name = $1 FOR UPDATE SKIP LOCKED"
        };
        // Statements on the hot path are prepared once per connection, not per call.
        let row = match lock.query_opt_cached(query, name).await {
            Ok(row) => row,
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                // Another broker is refreshing it: wait for its outcome, and adopt it.
                lock.client()
                    .batch_execute(&format!("ROLLBACK; {begin}"))
                    .await
                    .map_err(|e| database("wait for a claim", &e))?;
                let row = lock
                    .query_opt_cached(
                        "SELECT version, sealed FROM tokenbroker_accounts WHERE name = $1 FOR SHARE",
                        name,
                    )
                    .await
                    .map_err(|e| database("wait for another broker's refresh", &e))?;
                lock.end().await?;
                let newer = match row {
                    Some(row) => self.newer(name, row.get(0), row.get::<_, &[u8]>(1))?,
                    None => None,
                };
                return Ok(Claim::Elsewhere { newer });
            }
            Err(error) => return Err(database("claim an account", &error)),
        };
        let Some(row) = row else {
            // Locked elsewhere (SKIP LOCKED), or removed: either way not this broker's.
            lock.end().await?;
            return Ok(Claim::Elsewhere { newer: None });
        };
        lock.version = row.get(0);
        let newer = self.newer(name, lock.version, row.get::<_, &[u8]>(1))?;
        Ok(Claim::Held {
            lease: Lease::held(Box::new(lock)),
            newer,
        })
    }

    /// Listens for other brokers' writes and reports each changed account once read;
    /// after a lost connection, connects again and compares every row, so that nothing
    /// missed meanwhile stays unseen.
    ///
    /// The loss is said once at warn level, each failed reconnection at debug level, and the
    /// feed's return at info level: a database down for an hour is one warning, not 3,600.
    async fn follow(self: Arc<Self>, follower: Follower) {
        let mut failing = false;
        loop {
            if let Err(error) = self.listen(&follower, &mut failing).await {
                if failing {
                    tracing::debug!(error = %error, "the shared store's change feed is still down");
                } else {
                    tracing::warn!(error = %error, "lost the shared store's change feed; connecting again every second");
                    failing = true;
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }

    /// `failing`: the feed was lost and has not come back since; cleared (and said) once
    /// it is back and caught up.
    async fn listen(&self, follower: &Follower, failing: &mut bool) -> Result<(), StoreError> {
        let (client, mut connection) = self
            .pg_config
            .connect(self.tls.clone())
            .await
            .map_err(|e| database("connect for the change feed", &e))?;
        let (names, mut changed) = tokio::sync::mpsc::unbounded_channel::<String>();
        let messages = async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                match message {
                    Ok(AsyncMessage::Notification(note)) => {
                        if names.send(note.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => return database("follow the change feed", &error),
                }
            }
            StoreError::Unavailable {
                reason: "the change feed's connection closed".into(),
            }
        };
        let work = async {
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|e| database("listen for changes", &e))?;
            self.catch_up(follower).await?;
            if std::mem::take(failing) {
                tracing::info!("the shared store's change feed is back, caught up with every row");
            }
            while let Some(payload) = changed.recv().await {
                let (name, version) = match payload.split_once(' ') {
                    Some((name, version)) => (name, version.parse::<i64>().ok()),
                    None => (payload.as_str(), None),
                };
                let Ok(name) = name.parse::<AccountName>() else {
                    continue;
                };
                if version.is_some() && self.seen(&name) == version {
                    continue; // this broker's own write, or one it has read already
                }
                self.look_up(&name, follower).await?;
            }
            Ok(())
        };
        tokio::select! {
            error = messages => Err(error),
            done = work => done,
        }
    }

    /// Reports every account whose row differs from what this broker saw last.
    async fn catch_up(&self, follower: &Follower) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query("SELECT name, version FROM tokenbroker_accounts", &[])
            .await
            .map_err(|e| database("read the accounts", &e))?;
        drop(client);
        let stored: HashMap<String, i64> = rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let known: Vec<(AccountName, i64)> = self
            .seen
            .lock()
            .expect("never poisoned")
            .iter()
            .map(|(name, version)| (name.clone(), *version))
            .collect();
        for (name, version) in &known {
            if stored.get(name.as_str()) != Some(version) {
                self.look_up(name, follower).await?;
            }
        }
        for (name, _) in stored {
            if let Ok(name) = name.parse::<AccountName>() {
                if self.seen(&name).is_none() {
                    self.look_up(&name, follower).await?;
                }
            }
        }
        Ok(())
    }

    /// Reads one account and reports it when it changed since this broker last saw it.
    async fn look_up(&self, name: &AccountName, follower: &Follower) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = async {
            let statement = client
                .prepare_cached("SELECT version, sealed FROM tokenbroker_accounts WHERE name = $1")
                .await?;
            client.query_opt(&statement, &[&name.as_str()]).await
        }
        .await
        .map_err(|e| database("read an account", &e))?;
        drop(client);
        match row {
            Some(row) => match self.newer(name, row.get(0), row.get::<_, &[u8]>(1)) {
                Ok(Some(record)) => follower(Stored::Put(record)),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(account = %name, error = %error, "another broker stored an account this one cannot read");
                }
            },
            None => {
                if self.seen(name).is_some() {
                    self.saw(name, None);
                    follower(Stored::Removed(name.clone()));
                }
            }
        }
        Ok(())
    }
}

/// A refresh's lock on one row, in its own open transaction.
struct RowLock {
    client: Option<Object>,
    shared: Arc<Shared>,
    name: AccountName,
    /// The row's version under the lock.
    version: i64,
}

impl RowLock {
    fn client(&self) -> &Object {
        self.client
            .as_ref()
            .expect("held until released or committed")
    }

    /// Runs a statement about one account, prepared once per connection.
    async fn query_opt_cached(
        &self,
        statement: &str,
        name: &AccountName,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let client = self.client();
        let statement = client.prepare_cached(statement).await?;
        client.query_opt(&statement, &[&name.as_str()]).await
    }

    /// Ends the transaction and hands the connection back to the pool.
    async fn end(&mut self) -> Result<(), StoreError> {
        self.client()
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| database("end a claim", &e))?;
        drop(self.client.take());
        Ok(())
    }
}

impl Held for RowLock {
    fn commit(
        mut self: Box<Self>,
        record: AccountRecord,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client.take().expect("a lock commits once");
            let next = self.version + 1;
            let sealed = seal(&record, next, &self.shared.keyring.current);
            let written = async {
                // The update and its notification in one statement, prepared once per
                // connection.
                let statement = client
                    .prepare_cached(
                        "WITH updated AS (
                             UPDATE tokenbroker_accounts SET version = $2, sealed = $3 WHERE name = $1
                             RETURNING name)
                         SELECT pg_notify($4, $5) FROM updated",
                    )
                    .await?;
                client
                    .execute(
                        &statement,
                        &[
                            &self.name.as_str(),
                            &next,
                            &sealed,
                            &CHANNEL,
                            &payload(&self.name, Some(next)),
                        ],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            }
            .await;
            match written {
                Ok(()) => {
                    self.shared.saw(&self.name, Some(next));
                    Ok(())
                }
                Err(error) => {
                    // The transaction may still be open: close the connection rather than
                    // hand it back to the pool.
                    drop(Object::take(client));
                    self.shared.keep(&self.name, sealed);
                    Err(database("commit a refresh", &error))
                }
            }
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(self.give_up())
    }
}

impl RowLock {
    /// `Held::release`: rolls back and hands the connection back; if the rollback fails,
    /// the connection is closed (by the drop).
    async fn give_up(mut self: Box<Self>) {
        if let Err(error) = self.end().await {
            tracing::debug!(error = %error, "could not end a claim; closing its connection");
        }
    }
}

impl Drop for RowLock {
    fn drop(&mut self) {
        // Given up without a commit: closing the connection ends the transaction (and the
        // lock) on the server; a pooled connection must never carry an open transaction.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

fn seal(record: &AccountRecord, version: i64, key: &StoreKey) -> Vec<u8> {
    schema::encode(record, u64::try_from(version).unwrap_or(0), key)
}

async fn notify(
    transaction: &deadpool_postgres::Transaction<'_>,
    name: &AccountName,
    version: Option<i64>,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &payload(name, version)],
        )
        .await
        .map(drop)
        .map_err(|e| database("notify a change", &e))
}

/// A change's notification: the account's name, and the row's new version unless it was
/// removed, so that a broker that already has that version (the writer) reads nothing.
fn payload(name: &AccountName, version: Option<i64>) -> String {
    match version {
        Some(version) => format!("{name} {version}"),
        None => name.as_str().to_owned(),
    }
}

/// A database error in words that carry no secret: PostgreSQL's own message (it never
/// holds a parameter's value) or the connection's failure.
fn database(operation: &str, error: &tokio_postgres::Error) -> StoreError {
    let reason = match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => with_causes(error),
    };
    StoreError::Unavailable {
        reason: format!("cannot {operation}: {reason}"),
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable {
        reason: format!("cannot reach PostgreSQL: {}", with_causes(&error)),
    }
}

/// An error and what caused it (a TLS handshake's reason is only in its cause), each said
/// once. None of them holds the URL or a password.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}
