//! Accept loops for the Unix socket and loopback TCP.
//!
//! Hand-written rather than `axum::serve`: each connection gets its peer attached to every
//! request, a cap bounds how many are open, a connection left waiting for a request (a
//! half-sent one, or an idle keep-alive) is closed after [`IDLE_TIMEOUT`], and shutdown stops
//! accepting and lets open connections finish within a grace period.
//!
//! The idle timeout is a watchdog task per connection that wakes every half timeout, not
//! hyper's header-read timeout, which arms and drops a timer for every request: on the token
//! route that timer cost more than a tenth of the daemon's work per request. Shutdown tells
//! each open connection through a flag it reads at every poll (see `until_drained`), not
//! through hyper-util's `GracefulShutdown`, whose watch takes a lock shared by every
//! connection at every poll.
//!
//! A token held in memory is answered as soon as hyper hands over the request, before hyper
//! polls for the answer (see `Connection::answer`), so the request is gone when hyper reads
//! the next one into the same buffer.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use futures_util::future::{self, BoxFuture, Either, Ready};
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Answer, Peer, Service};

/// A connection waiting this long for a request without one arriving whole (and none being
/// answered) is closed, within another half of it: a half-sent request, or an idle
/// keep-alive connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Open connections at most, per listener.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most header bytes hyper buffers for one request.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long open connections get to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on a Unix socket until `cancel` fires.
pub async fn serve_unix(listener: UnixListener, api: Service, cancel: CancellationToken) {
    serve_unix_with(listener, api, cancel, MAX_CONNECTIONS).await;
}

async fn serve_unix_with(
    listener: UnixListener,
    api: Service,
    cancel: CancellationToken,
    max_connections: usize,
) {
    serve(api, cancel, max_connections, || async {
        let (stream, _) = listener.accept().await?;
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer::Unix {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            Err(error) => {
                tracing::warn!(error = %error, "cannot read a socket peer's credentials; closing");
                return Ok(None);
            }
        };
        Ok(Some((stream, peer)))
    })
    .await;
}

/// Serves `router` on a TCP listener until `cancel` fires.
pub async fn serve_tcp(listener: TcpListener, api: Service, cancel: CancellationToken) {
    serve_tcp_with(listener, api, cancel, MAX_CONNECTIONS).await;
}

async fn serve_tcp_with(
    listener: TcpListener,
    api: Service,
    cancel: CancellationToken,
    max_connections: usize,
) {
    serve(api, cancel, max_connections, || async {
        let (stream, addr) = listener.accept().await?;
        // Small responses: do not wait to coalesce them.
        let _ = stream.set_nodelay(true);
        Ok(Some((stream, Peer::Tcp(addr))))
    })
    .await;
}

/// Serves connections from `accept`, at most `max_connections` at once. At the cap, the
/// connection that has been open longest among those not being answered is closed to admit
/// the new one (one that never sent a whole request first), so that no caller can hold the
/// slots by keeping idle connections open; only connections all busy answering make a new
/// one wait.
async fn serve<S, F, Fut>(
    api: Service,
    cancel: CancellationToken,
    max_connections: usize,
    mut accept: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Option<(S, Peer)>>>,
{
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let open = Arc::new(Open::default());
    let mut full_since_warned = None;
    let mut builder = http1::Builder::new();
    builder.max_buf_size(MAX_HEADER_BYTES);
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(Some(accepted)) => accepted,
            Ok(None) => continue,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let closed = open.close_one_idle();
                let now = tokio::time::Instant::now();
                if full_since_warned.is_none_or(|at| now - at >= FULL_WARNING_INTERVAL) {
                    full_since_warned = Some(now);
                    tracing::warn!(
                        max_connections,
                        closed_an_idle_one = closed,
                        "the listener's connections are all taken; closing the one open longest without a request in progress to admit a new one (warned at most once a minute)"
                    );
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let shared = Arc::new(Connection {
            api: api.clone(),
            peer,
            activity: Activity::default(),
            close: CancellationToken::new(),
            drain: Drain::default(),
        });
        let id = open.add(&shared);
        let service = hyper::service::service_fn({
            let shared = Arc::clone(&shared);
            move |request: hyper::Request<Incoming>| shared.answer(request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let task = connections.spawn({
            let shared = Arc::clone(&shared);
            async move {
                if let Err(error) = until_drained(connection, &shared.drain).await {
                    tracing::debug!(error = %error, "connection ended with an error");
                }
                drop(permit);
            }
        });
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            close_when_idle(task, &shared).await;
            open.remove(id);
        });
    }
    open.drain();
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {}s; closing them",
            DRAIN_TIMEOUT.as_secs()
        );
    }
}

/// The listener's cap warning is repeated at most this often while it stays full.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The open connections of one listener, in the order they were accepted.
#[derive(Default)]
struct Open {
    connections: std::sync::Mutex<Connections>,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    by_age: std::collections::BTreeMap<u64, Arc<Connection>>,
}

impl Open {
    fn add(&self, connection: &Arc<Connection>) -> u64 {
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.by_age.insert(id, Arc::clone(connection));
        id
    }

    fn remove(&self, id: u64) {
        self.lock().by_age.remove(&id);
    }

    /// Tells every open connection to finish the request it is answering, if any, and close.
    fn drain(&self) {
        for connection in self.lock().by_age.values() {
            connection.drain.tell();
        }
    }

    /// Closes the connection open longest that sent no whole request yet or, if none, the
    /// one open longest that is not answering one; returns whether there was one. The cap
    /// is reached only under a flood, so a scan of every connection is fine.
    fn close_one_idle(&self) -> bool {
        let mut open = self.lock();
        let idle = |connection: &&Arc<Connection>| {
            !connection.close.is_cancelled() && connection.activity.events() % 2 == 0
        };
        let chosen = open
            .by_age
            .iter()
            .map(|(id, connection)| (*id, connection))
            .filter(|(_, connection)| idle(connection))
            .min_by_key(|(id, connection)| (connection.activity.events() != 0, *id))
            .map(|(id, _)| id);
        let Some(id) = chosen else {
            return false;
        };
        if let Some(connection) = open.by_age.remove(&id) {
            connection.close.cancel();
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the requests of one connection share.
struct Connection {
    api: Service,
    peer: Peer,
    activity: Activity,
    /// Fired to close the connection (it was chosen to make room for another).
    close: CancellationToken,
    /// Told when the listener stops.
    drain: Drain,
}

/// The listener's word to one connection that it is stopping.
#[derive(Debug, Default)]
struct Drain {
    told: AtomicBool,
    /// The connection's task, woken when told.
    waker: AtomicWaker,
}

impl Drain {
    fn tell(&self) {
        self.told.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Runs hyper's `connection` until it ends, shutting it down gracefully once `drain` is told:
/// a request being answered is finished, and the connection then closes. At each poll this
/// reads one flag and registers the task's waker with this connection alone; hyper-util's
/// `GracefulShutdown` polls a `Notify` there instead, whose lock every connection shares
/// (about 250 instructions per token request, `docs/BENCHMARKS.md`).
async fn until_drained<C: GracefulConnection>(
    connection: C,
    drain: &Drain,
) -> Result<(), C::Error> {
    let mut connection = pin!(connection);
    let mut told = false;
    std::future::poll_fn(|cx| {
        if !told {
            // Registered before the flag is read, so that a `tell` in between wakes us.
            drain.waker.register(cx.waker());
            if drain.told.load(Ordering::Acquire) {
                told = true;
                connection.as_mut().graceful_shutdown();
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}

/// What hyper waits on for an answer: ready at once for a token served from memory.
type Pending =
    Either<Ready<Result<Response, Infallible>>, BoxFuture<'static, Result<Response, Infallible>>>;

impl Connection {
    /// Answers one request. A token held in memory is answered before hyper polls anything:
    /// hyper reads on (to see the connection close) before it polls the answer, and a request
    /// still held by an unpolled answer would keep the read buffer it was parsed from, so
    /// that the next read needs a new one. Anything else goes through the router.
    fn answer<B>(self: &Arc<Self>, request: hyper::Request<B>) -> Pending
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        match self.api.answer(request, self.peer) {
            Answer::Now(response) => {
                self.activity.answered();
                Either::Left(future::ready(Ok(response)))
            }
            Answer::Later(answer) => {
                // The connection's own `Arc`: no count shared with other connections' threads.
                let connection = Arc::clone(self);
                Either::Right(Box::pin(async move {
                    let _answering = connection.activity.begin();
                    Ok(answer.await)
                }))
            }
        }
    }
}

/// Requests begun plus requests answered on one connection: odd while one is being answered
/// (HTTP/1 answers one at a time).
#[derive(Debug, Default)]
struct Activity(AtomicU64);

/// Marks the end of an answer when dropped, however the answer ends.
struct Answering<'a>(&'a Activity);

impl Activity {
    fn begin(&self) -> Answering<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Answering(self)
    }

    /// A request begun and answered at once.
    fn answered(&self) {
        self.0.fetch_add(2, Ordering::Relaxed);
    }

    fn events(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Ends the connection `task` once it has been idle for [`IDLE_TIMEOUT`], or when it is
/// chosen to make room; returns when it ends.
async fn close_when_idle(mut task: JoinHandle<()>, connection: &Connection) {
    tokio::select! {
        _ = &mut task => {}
        () = idle(&connection.activity) => {
            tracing::debug!("closing a connection that sent no whole request for {}s", IDLE_TIMEOUT.as_secs());
            task.abort();
        }
        () = connection.close.cancelled() => {
            tracing::debug!("closing an idle connection to make room for a new one");
            task.abort();
        }
    }
}

/// Returns once no request has begun or been answered for two checks in a row, half an
/// [`IDLE_TIMEOUT`] apart, and none is being answered: after between one and one and a half
/// timeouts of idleness.
async fn idle(activity: &Activity) {
    let mut seen = activity.events();
    let mut quiet_checks = 0;
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let now = activity.events();
        let answering = now % 2 == 1;
        if now != seen || answering {
            seen = now;
            quiet_checks = 0;
            continue;
        }
        quiet_checks += 1;
        if quiet_checks == 2 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use axum::body::Body;
    use tokio::time::{timeout, Instant};

    use super::*;
    use crate::api::tests::{api, ADMIN};

    /// Dropped with the request it is attached to.
    #[derive(Clone)]
    struct Witness(Arc<()>);

    fn request(path: &str, witness: &Witness) -> hyper::Request<Body> {
        let mut request = hyper::Request::get(path).body(Body::empty()).unwrap();
        request.extensions_mut().insert(witness.clone());
        request
    }

    #[tokio::test]
    async fn a_token_in_memory_is_answered_before_the_answer_is_polled() {
        let api = api().await;
        api.import("corp").await;
        let connection = Arc::new(Connection {
            api: api.service.clone(),
            peer: ADMIN,
            activity: Activity::default(),
            close: CancellationToken::new(),
            drain: Drain::default(),
        });
        let witness = Witness(Arc::new(()));

        let answer = connection.answer(request("/v1/token/corp", &witness));
        // hyper reads on before it polls the answer: by then the request must be gone.
        assert_eq!(
            Arc::strong_count(&witness.0),
            1,
            "the request is still held"
        );
        assert_eq!(connection.activity.events(), 2, "begun and answered");
        let mut answer = std::pin::pin!(answer);
        let Poll::Ready(Ok(response)) = answer
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("the answer is not ready at once");
        };
        assert_eq!(response.status(), 200);

        // Anything else is the router's, which has the request until it answers.
        let answer = connection.answer(request("/v1/accounts/corp", &witness));
        assert_eq!(Arc::strong_count(&witness.0), 2);
        let response = answer.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(Arc::strong_count(&witness.0), 1);
        assert_eq!(connection.activity.events(), 4);
    }

    /// A listener with room for `max` connections over `api`'s service, and its address.
    async fn listening(api: &crate::api::tests::Api, max: usize) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = api.service.clone();
        tokio::spawn(serve_tcp_with(
            listener,
            service,
            CancellationToken::new(),
            max,
        ));
        address
    }

    /// A client's token request over a connection of its own, within a second.
    async fn token_within_a_second(address: std::net::SocketAddr) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let request = http
            .get(format!("http://{address}/v1/token/corp"))
            .bearer_auth("sidecar-key")
            .send();
        let response = timeout(Duration::from_secs(1), request)
            .await
            .expect("a client waited more than a second for its token")
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// A new connection to `address` with `request` sent on it and its answer read, in lower
    /// case.
    async fn connection_with_an_answer(
        address: std::net::SocketAddr,
        request: &str,
    ) -> (tokio::net::TcpStream, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        let read = timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        (
            stream,
            String::from_utf8_lossy(&answer[..read]).to_lowercase(),
        )
    }

    /// The issue #15 attack: a local user with no key holds every connection with
    /// keep-alive requests for `/healthz`. Its answers end their connections.
    #[tokio::test]
    async fn a_caller_that_is_no_client_cannot_hold_the_connections() {
        let api = api().await;
        api.import("corp").await;
        let address = listening(&api, 8).await;
        let mut held = Vec::new();
        for _ in 0..8 {
            let (stream, answer) = connection_with_an_answer(
                address,
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            )
            .await;
            assert!(answer.starts_with("http/1.1 200"), "{answer}");
            assert!(answer.contains("connection: close"), "{answer}");
            held.push(stream);
        }
        token_within_a_second(address).await;
    }

    /// At shutdown a request being answered gets its answer and its connection then closes;
    /// a connection waiting for its next request is closed at once; the listener returns
    /// once both are done.
    #[tokio::test]
    async fn at_shutdown_a_request_being_answered_is_finished_and_idle_connections_close() {
        use tokio::io::AsyncReadExt;
        let api = api().await;
        api.import("corp").await;
        // A TCP listener whose callers count as the admin on the socket, who may force a
        // refresh.
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let address = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve(api.service.clone(), cancel.clone(), 8, move || {
            let listener = Arc::clone(&listener);
            async move {
                let (stream, _) = listener.accept().await?;
                Ok(Some((stream, ADMIN)))
            }
        }));

        // A keep-alive connection that has had its answer and waits for its next request.
        let (mut idle, answer) = connection_with_an_answer(
            address,
            "GET /v1/token/corp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        let mut answer = vec![0; 4096];

        // A request being answered: a refresh the provider takes its time over.
        let calls = api.fake.token_calls();
        api.fake.set_latency(Duration::from_millis(300));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let slow = tokio::spawn(
            http.post(format!("http://{address}/v1/accounts/corp/refresh"))
                .send(),
        );
        api.fake
            .wait_for_calls(calls + 1, Duration::from_secs(5))
            .await;
        cancel.cancel();

        let read = timeout(Duration::from_secs(2), idle.read(&mut answer))
            .await
            .expect("the idle connection is still open after the listener stopped")
            .unwrap();
        assert_eq!(read, 0, "the idle connection is closed");
        let response = timeout(Duration::from_secs(5), slow)
            .await
            .expect("the request being answered got no answer")
            .unwrap()
            .unwrap();
        let closing = response.headers().get("connection").cloned();
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap());
        assert_eq!(
            closing.unwrap(),
            "close",
            "its connection closes once it is answered"
        );
        timeout(DRAIN_TIMEOUT / 2, served)
            .await
            .expect("the listener did not return once its connections had finished")
            .unwrap();
    }

    /// What a test's log lines were written to.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Connections that send nothing (or nothing more) cannot keep a client out: at the cap,
    /// the one open longest without a request is closed to admit the new one, and the
    /// daemon warns that the listener is full.
    #[tokio::test]
    async fn at_the_cap_an_idle_connection_makes_room_for_a_new_one() {
        use tokio::io::AsyncReadExt;
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .finish();
        // This test's runtime runs every task on this thread, the listener's included.
        let _logging = tracing::subscriber::set_default(subscriber);
        let api = api().await;
        api.import("corp").await;
        let address = listening(&api, 8).await;
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        token_within_a_second(address).await;
        // The oldest silent connection was the one closed.
        let mut byte = [0; 1];
        let read = timeout(Duration::from_secs(1), held[0].read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the oldest idle connection is still open: {read:?}"
        );
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("the listener's connections are all taken"),
            "{logged}"
        );
    }

    /// How long `idle` took to return, in (paused) time.
    async fn time_to_close(activity: &Activity) -> Duration {
        let started = Instant::now();
        idle(activity).await;
        started.elapsed()
    }

    fn within_one_to_one_and_a_half_timeouts(waited: Duration) -> bool {
        (IDLE_TIMEOUT..=IDLE_TIMEOUT * 3 / 2).contains(&waited)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_request_is_closed_after_the_timeout() {
        let waited = time_to_close(&Activity::default()).await;
        assert!(within_one_to_one_and_a_half_timeouts(waited), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_keeps_its_connection_however_long_it_takes() {
        let activity = Activity::default();
        let answering = activity.begin();
        assert!(
            timeout(IDLE_TIMEOUT * 20, idle(&activity)).await.is_err(),
            "closed while answering"
        );
        drop(answering);
        let waited = time_to_close(&activity).await;
        assert!(within_one_to_one_and_a_half_timeouts(waited), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_requests_coming_stays_open_and_closes_once_they_stop() {
        let activity = Arc::new(Activity::default());
        let requests = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                for _ in 0..40 {
                    tokio::time::sleep(IDLE_TIMEOUT * 9 / 10).await;
                    drop(activity.begin());
                }
            }
        });
        let started = Instant::now();
        idle(&activity).await;
        assert!(requests.is_finished(), "closed between requests");
        let after_the_last = started.elapsed() - IDLE_TIMEOUT * 9 / 10 * 40;
        assert!(
            within_one_to_one_and_a_half_timeouts(after_the_last),
            "{after_the_last:?}"
        );
    }
}
