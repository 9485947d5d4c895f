//! The store's one writer thread: changes wait in a bounded queue, and each batch taken from
//! it is one call to the backend (group commit), so a storm of refreshes costs a few syncs,
//! not one each, and never more than one thread.
//!
//! A full queue makes `write` wait (back-pressure on the refresh engine) rather than piling
//! work onto tokio's blocking pool. The thread ends when the last `Writer` is dropped.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Change, Claim, Store, StoreError};
use crate::token::AccountName;

/// Changes waiting for the writer thread at most.
const QUEUE: usize = 1024;
/// Changes in one batch at most.
const MAX_BATCH: usize = 512;

struct Job {
    change: Change,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A handle on the writer thread and the store behind it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    store: Arc<dyn Store>,
}

impl Writer {
    /// Starts the writer thread for `store`.
    ///
    /// # Panics
    /// The operating system refuses a thread.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let backend = store.clone();
        std::thread::Builder::new()
            .name("tokenbroker-store".into())
            .spawn(move || run(backend.as_ref(), jobs))
            .expect("the store writer thread starts");
        Self { queue, store }
    }

    /// Applies `change`, together with whatever else is queued, and returns once it is
    /// durable.
    ///
    /// # Errors
    /// The backend's failure, shared by every change of the batch.
    pub async fn write(&self, change: Change) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Job { change, done })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Claims `name` for a refresh (see [`Store::claim`]).
    ///
    /// # Errors
    /// The store cannot be reached.
    pub async fn claim(&self, name: &AccountName, wait: bool) -> Result<Claim, StoreError> {
        self.store.claim(name, wait).await
    }

    /// The store itself, for what is not a write (loading, re-keying, flushing).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

fn run(store: &dyn Store, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut changes = vec![first.change];
        let mut waiting = vec![first.done];
        while changes.len() < MAX_BATCH {
            let Ok(job) = jobs.try_recv() else { break };
            changes.push(job.change);
            waiting.push(job.done);
        }
        let result = panic::catch_unwind(AssertUnwindSafe(|| store.write(&changes)))
            .unwrap_or_else(|_| {
                Err(StoreError::Engine {
                    operation: "write",
                    reason: "the store panicked".into(),
                })
            });
        for done in waiting {
            // A caller that went away needs no answer; the change was applied all the same.
            let _ = done.send(result.clone());
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Engine {
        operation: "write",
        reason: "the store writer has stopped".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::secret::RefreshToken;
    use crate::token::AccountRecord;

    /// Records each batch; the first batch blocks until released, so others queue behind it.
    #[derive(Debug, Default)]
    struct Batches {
        seen: Mutex<Vec<usize>>,
        gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Store for Batches {
        fn load_all(&self) -> Result<Vec<AccountRecord>, StoreError> {
            Ok(vec![])
        }
        fn write(&self, changes: &[Change]) -> Result<(), StoreError> {
            let gate = self.gate.lock().unwrap().take();
            if let Some(gate) = gate {
                gate.recv().unwrap();
            }
            self.seen.lock().unwrap().push(changes.len());
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Io {
                    operation: "write",
                    cause: Arc::new(std::io::Error::from_raw_os_error(28)),
                });
            }
            Ok(())
        }
        fn rekey(&self) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn put(n: usize) -> Change {
        Change::Put(AccountRecord::new(
            format!("a{n}").parse().unwrap(),
            "p".into(),
            RefreshToken::new("rt"),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_queue_up_share_one_batch_and_its_outcome() {
        let (release, gate) = std::sync::mpsc::channel();
        let store = Arc::new(Batches::default());
        *store.gate.lock().unwrap() = Some(gate);
        let writer = Writer::start(store.clone());
        let first = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write(put(0)).await }
        });
        // The first batch is being written (and held); these 100 queue behind it.
        while store.gate.lock().unwrap().is_some() {
            tokio::task::yield_now().await;
        }
        let queued: Vec<_> = (1..=100)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(put(n)).await })
            })
            .collect();
        while writer.queue.capacity() > QUEUE - 100 {
            tokio::task::yield_now().await;
        }
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        release.send(()).unwrap();
        assert!(first.await.unwrap().is_err(), "the held batch failed too");
        for task in queued {
            let error = task.await.unwrap().unwrap_err();
            assert!(error.to_string().contains("No space left"), "{error}");
        }
        assert_eq!(*store.seen.lock().unwrap(), [1, 100]);
    }
}
