//! The benchmark baseline: a bare hyper server that answers every request with a fixed
//! body of a given size, on a Unix socket and on loopback TCP. No routing, no state.
//!
//! `cargo run --release --example bare_hyper -- SOCKET_PATH TCP_ADDR BODY_BYTES`
#![allow(clippy::print_stderr, clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;

use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

type Body = http_body_util::Full<Bytes>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, tcp, size] = args.as_slice() else {
        eprintln!("usage: bare_hyper SOCKET_PATH TCP_ADDR BODY_BYTES");
        std::process::exit(2);
    };
    let body = Bytes::from(vec![b'x'; size.parse().unwrap()]);
    let _ = std::fs::remove_file(socket);
    let unix = UnixListener::bind(socket).unwrap();
    let tcp = TcpListener::bind(tcp)
        .await
        .unwrap_or_else(|e| panic!("bind {tcp}: {e}"));
    eprintln!(
        "bare hyper: {socket} and {}, {} byte bodies",
        tcp.local_addr().unwrap(),
        body.len()
    );
    let unix_body = body.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = unix.accept().await.unwrap();
            tokio::spawn(serve(stream, unix_body.clone()));
        }
    });
    loop {
        let (stream, _) = tcp.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, body.clone()));
    }
}

async fn serve(stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, body: Bytes) {
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        let body = body.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::new(body))
                    .unwrap(),
            )
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
