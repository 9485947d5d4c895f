//! Log lines written in batches by a background thread, so that recording a served token
//! costs the request a copy into a buffer, not a write(2) or a wake-up of another thread.
//!
//! `tracing-appender`'s non-blocking writer hands every line to its thread through a channel,
//! which wakes that thread once per line: under load, a context switch per token served. Here
//! the first line of a batch wakes the writer thread, which then lingers [`LINGER`] so that
//! lines arriving meanwhile go out in the same `write`. Nothing is dropped: when the buffer
//! is full, logging waits for the thread to drain it. Dropping the [`Guard`] writes the rest.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer thread waits for more lines after the first of a batch.
pub const LINGER: Duration = Duration::from_millis(5);
/// Lines buffered at most before logging calls wait for the writer thread.
const MAX_BUFFERED: usize = 1024 * 1024;

#[derive(Debug, Default)]
struct Buffer {
    lines: Vec<u8>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when the first line of a batch arrives, and at close.
    pending: Condvar,
    /// Signalled when the writer thread has taken the buffer.
    drained: Condvar,
}

/// The `MakeWriter` handed to `tracing_subscriber`.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread; dropping it writes every buffered line and stops the thread.
#[derive(Debug)]
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `output`.
///
/// # Panics
/// If the thread cannot be spawned (the process is out of resources at start-up).
pub fn batched<W: Write + Send + 'static>(output: W) -> (BatchWriter, Guard) {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("tokenbroker-log".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || write_batches(&shared, output)
        })
        .expect("cannot start the log writer thread");
    (
        BatchWriter {
            shared: Arc::clone(&shared),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    )
}

fn write_batches(shared: &Shared, mut output: impl Write) {
    // Two buffers taking turns, so that neither is grown again for every batch.
    let mut lines = Vec::new();
    loop {
        let mut buffer = shared.lock();
        while buffer.lines.is_empty() && !buffer.closed {
            buffer = shared
                .pending
                .wait(buffer)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if !buffer.closed {
            drop(buffer);
            std::thread::sleep(LINGER);
            buffer = shared.lock();
        }
        std::mem::swap(&mut lines, &mut buffer.lines);
        let closed = buffer.closed;
        drop(buffer);
        shared.drained.notify_all();
        // Nowhere to report a failing log write; the lines are lost, the daemon goes on.
        let _ = output.write_all(&lines).and_then(|()| output.flush());
        lines.clear();
        if lines.capacity() > MAX_BUFFERED {
            lines.shrink_to(MAX_BUFFERED);
        }
        if closed {
            return;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.pending.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One log line, written straight into the batch: it holds the buffer's lock from
/// `make_writer` until it is dropped, so that a line arrives whole however many writes make
/// it. `tracing-subscriber` formats a line first and then writes it in one `write_all`, so
/// the lock is held for one copy.
#[derive(Debug)]
pub struct Line<'a> {
    shared: &'a Shared,
    buffer: MutexGuard<'a, Buffer>,
    /// The batch was empty when this line began: the writer thread is told once it is in.
    first: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.lines.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        // Told with the lock still held: the thread takes it once this line has let it go.
        if self.first && !self.buffer.lines.is_empty() {
            self.shared.pending.notify_one();
        }
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;

    /// Takes the buffer's lock, waiting first while the buffer is full.
    fn make_writer(&'a self) -> Self::Writer {
        let mut buffer = self.shared.lock();
        while buffer.lines.len() >= MAX_BUFFERED && !buffer.closed {
            buffer = self
                .shared
                .drained
                .wait(buffer)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        Line {
            shared: &self.shared,
            first: buffer.lines.is_empty(),
            buffer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read while the writer thread writes to it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(writer: &BatchWriter, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_from_every_thread_arrives_whole() {
        let output = Shared::default();
        let (writer, guard) = batched(output.clone());
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let writer = writer.clone();
                scope.spawn(move || {
                    for n in 0..5_000 {
                        // Long lines, so the buffer fills and writers wait for the thread.
                        line(&writer, &format!("{thread} {n} {}\n", "x".repeat(200)));
                    }
                });
            }
        });
        drop(guard);
        let text = output.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for thread in 0..4 {
            let numbers: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("{thread} ")))
                .map(|rest| {
                    let (n, xs) = rest.split_once(' ').unwrap();
                    assert_eq!(xs.len(), 200);
                    n.parse().unwrap()
                })
                .collect();
            assert_eq!(numbers, (0..5_000).collect::<Vec<_>>(), "thread {thread}");
        }
    }

    /// Polls, at most 10 s, until `output` holds `text`: long before the guard is dropped.
    fn wait_for(output: &Shared, text: &str) {
        for _ in 0..10_000 {
            if output.text() == text {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(output.text(), text);
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let output = Shared::default();
        let (writer, _guard) = batched(output.clone());
        line(&writer, "one\n");
        wait_for(&output, "one\n");
        // The thread has written a batch and waits for the next: the next line must wake it.
        line(&writer, "two\n");
        wait_for(&output, "one\ntwo\n");
    }
}
