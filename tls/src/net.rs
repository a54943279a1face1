//! TLS on the wire for tonic: an incoming stream of handshaken connections for servers, and
//! a connector for channels. Both take their rustls config per connection, so a reload
//! applies to the next handshake.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Identity;
use crate::config::Tls;

/// How long a peer may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server-side TLS connection; tonic puts its [`PeerInfo`] into every request's
/// extensions.
pub struct TlsConn(TlsStream<TcpStream>);

/// Who is on the other end of a request's connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<std::net::SocketAddr>,
    /// From the peer's verified certificate; `None` if it presented none.
    pub identity: Option<Identity>,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.0.get_ref();
        PeerInfo {
            remote_addr: tcp.peer_addr().ok(),
            identity: session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(Identity::from_cert),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts on `listener` and hands tonic only connections whose TLS handshake succeeded
/// (with the peer's certificate verified as the config demands). Handshakes run on their own
/// tasks, so a slow or hostile peer does not hold up the others. Ends when tonic stops
/// polling (server shutdown).
pub fn incoming(listener: TcpListener, tls: Arc<Tls>) -> ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of file descriptors and the like: say so, back off briefly
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConn(stream))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Where a channel gets its client config from at each connection.
pub type ClientConfigSource = Arc<dyn Fn() -> Arc<rustls::ClientConfig> + Send + Sync>;

/// The source for a daemon's own (reloadable) TLS.
pub fn source(tls: &Arc<Tls>) -> ClientConfigSource {
    let tls = tls.clone();
    Arc::new(move || tls.client_config())
}

/// A fixed config (command-line tools).
pub fn fixed(config: Arc<rustls::ClientConfig>) -> ClientConfigSource {
    Arc::new(move || config.clone())
}

async fn connect(
    uri: Uri,
    config: ClientConfigSource,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if uri.scheme_str() != Some("https") {
        return Err(invalid(format!(
            "`{uri}`: TLS is on, so addresses must be https://"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("`{uri}` has no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let name =
        ServerName::try_from(host.to_string()).map_err(|e| invalid(format!("`{host}`: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(config())
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(stream))
}

/// A channel to `endpoint` (https) over TLS from `config`, connecting on first use.
pub fn channel_lazy(endpoint: Endpoint, config: ClientConfigSource) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
        connect(uri, config.clone())
    }))
}

/// Like [`channel_lazy`], connecting now.
pub async fn channel(
    endpoint: Endpoint,
    config: ClientConfigSource,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| {
            connect(uri, config.clone())
        }))
        .await
}

/// The identity in the verified certificate of a request's peer, if it presented one.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<Identity> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity.clone())
}
