//! Listeners handed over by systemd (`tokenbroker.socket`): the `LISTEN_FDS` protocol.
//!
//! systemd binds the sockets and starts the daemon on the first connection, passing them as
//! file descriptors 3 and up. Each is recognised by its family (a Unix stream socket is the
//! API socket, a TCP one the loopback listener) and made non-blocking for tokio. The socket
//! file then belongs to systemd: the daemon neither replaces nor removes it.

use anyhow::{bail, Context as _};
use listenfd::ListenFd;

/// The sockets systemd passed, if any.
#[derive(Debug, Default)]
pub(super) struct Activated {
    pub(super) unix: Option<std::os::unix::net::UnixListener>,
    pub(super) tcp: Option<std::net::TcpListener>,
}

/// Takes the sockets systemd passed (none when not socket-activated).
///
/// # Errors
/// A passed descriptor is neither a Unix nor a TCP stream socket, or two of one kind.
pub(super) fn take() -> anyhow::Result<Activated> {
    let mut fds = ListenFd::from_env();
    let mut activated = Activated::default();
    for index in 0..fds.len() {
        if let Ok(Some(unix)) = fds.take_unix_listener(index) {
            if activated.unix.replace(unix).is_some() {
                bail!("systemd passed more than one Unix socket; tokenbroker serves one");
            }
        } else if let Ok(Some(tcp)) = fds.take_tcp_listener(index) {
            if activated.tcp.replace(tcp).is_some() {
                bail!("systemd passed more than one TCP socket; tokenbroker serves one");
            }
        } else {
            bail!(
                "passed file descriptor {} is neither a Unix nor a TCP stream socket",
                index + 3
            );
        }
    }
    for listener in [
        activated.unix.as_ref().map(|l| l.set_nonblocking(true)),
        activated.tcp.as_ref().map(|l| l.set_nonblocking(true)),
    ]
    .into_iter()
    .flatten()
    {
        listener.context("while making a passed socket non-blocking")?;
    }
    Ok(activated)
}
