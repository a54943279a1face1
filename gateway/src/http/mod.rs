//! The OpenAI-compatible HTTP API (`[http] listen`): `POST /v1/chat/completions`,
//! `POST /v1/embeddings`, `GET /v1/models`. The same TLS as the gRPC listener when it is on
//! (tenant certificates optional, bearer tokens accepted), plain HTTP in development.
//!
//! Slow clients are bounded: headers must arrive within `http.client_timeout_ms` (the
//! connection is closed otherwise) and so must the body (408).

mod api;
mod models;
mod tools;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::state::State;

pub use api::Front;

/// A 400 with `m` as its reason.
fn invalid(m: impl Into<String>) -> crate::error::GatewayError {
    crate::error::GatewayError::InvalidRequest(m.into())
}

/// `[http]` in gateway.toml, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// How long a client may take to send its headers, and then its body.
    pub client_timeout: Duration,
}

impl HttpConfig {
    pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// The endpoints, over `state`.
pub fn router(front: Arc<Front>) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(api::chat))
        .route("/v1/embeddings", post(api::embeddings))
        .route("/v1/models", get(api::models))
        .fallback(api::not_found)
        .with_state(front)
}

/// Binds `config.listen` and serves until `stop`; then lets the requests in flight finish
/// (for at most `drain`). Returns the bound address and the server's task.
pub async fn start(
    config: HttpConfig,
    state: Arc<State>,
    tls: Option<Arc<edgewise_tls::Tls>>,
    stop: CancellationToken,
    drain: Duration,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, "OpenAI-compatible API at {scheme}://{addr}/v1");
    let app = router(Arc::new(Front {
        state,
        client_timeout: config.client_timeout,
    }));
    let task = tokio::spawn(serve(
        listener,
        tls,
        app,
        config.client_timeout,
        stop,
        drain,
    ));
    Ok((addr, task))
}

async fn serve(
    listener: TcpListener,
    tls: Option<Arc<edgewise_tls::Tls>>,
    app: axum::Router,
    client_timeout: Duration,
    stop: CancellationToken,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    match tls {
        None => loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    let peer = edgewise_tls::net::PeerInfo {
                        remote_addr: Some(remote),
                        identity: None,
                    };
                    connection(tcp, peer, &app, client_timeout, &graceful);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP API: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        },
        Some(tls) => {
            let mut incoming = edgewise_tls::net::incoming(listener, tls);
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    c = incoming.next() => c,
                };
                match next {
                    Some(Ok(conn)) => {
                        let peer = conn.connect_info();
                        connection(conn, peer, &app, client_timeout, &graceful);
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "HTTP API: a connection failed"),
                    None => break,
                }
            }
        }
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP API: requests still running after {drain:?}; stopping anyway");
    }
}

/// Serves one connection; the peer (and its certificate's identity) goes into every request.
fn connection<IO>(
    io: IO,
    peer: edgewise_tls::net::PeerInfo,
    app: &axum::Router,
    client_timeout: Duration,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let app = app.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .serve_connection(TokioIo::new(io), service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP API connection ended");
        }
    });
}
