//! Serving a daemon's gRPC router on its listener, over mutual TLS or (for development)
//! plain TCP, and the signal loop both daemons run until they are told to stop.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tower::{Layer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `router` on `listener` until `shutdown` resolves, then waits for in-flight calls.
/// With `tls`, every connection is a handshaken mutual-TLS one whose peer identity reaches
/// the handlers; without, plain TCP with Nagle's algorithm off (the builder's `tcp_nodelay`
/// applies only to listeners tonic binds itself).
pub fn spawn<L, ResBody>(
    router: Router<L>,
    listener: TcpListener,
    tls: Option<Arc<edgewise_tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), tonic::transport::Error>>
where
    L: Layer<Routes> + Send + 'static,
    L::Service:
        Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    match tls {
        Some(tls) => tokio::spawn(
            router
                .serve_with_incoming_shutdown(edgewise_tls::net::incoming(listener, tls), shutdown),
        ),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )),
    }
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested; draining");
}

/// Runs until SIGTERM or Ctrl-C, calling `on_hangup` for each SIGHUP (a reload).
pub async fn until_stopped(mut on_hangup: impl FnMut()) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                on_hangup();
            }
        }
    }
}
