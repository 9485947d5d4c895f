//! Accept loops for the Unix socket and loopback TCP.
//!
//! Hand-written rather than `axum::serve`, which installs no timer so hyper's header-read
//! timeout never fires: here a half-sent request is closed after `HEADER_READ_TIMEOUT`.
//! Each connection gets its peer attached to every request, a cap bounds how many are open,
//! and shutdown stops accepting and lets open connections finish within a grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Peer, Service};

/// A request's headers must arrive within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Open connections at most, per listener.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most header bytes hyper buffers for one request.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long open connections get to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on a Unix socket until `cancel` fires.
pub async fn serve_unix(listener: UnixListener, api: Service, cancel: CancellationToken) {
    serve(api, cancel, || async {
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
    serve(api, cancel, || async {
        let (stream, addr) = listener.accept().await?;
        // Small responses: do not wait to coalesce them.
        let _ = stream.set_nodelay(true);
        Ok(Some((stream, Peer::Tcp(addr))))
    })
    .await;
}

async fn serve<S, F, Fut>(api: Service, cancel: CancellationToken, mut accept: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Option<(S, Peer)>>>,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    loop {
        // Wait for a free slot before accepting, so a flood queues in the kernel's backlog
        // instead of in our memory.
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
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
        let api = api.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let api = api.clone();
            async move { Ok::<_, std::convert::Infallible>(api.call(request, peer).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {}s; closing them",
            DRAIN_TIMEOUT.as_secs()
        );
    }
}
