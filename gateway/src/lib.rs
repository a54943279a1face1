//! Edgewise gateway: receives capacity reports from agents, routes each request to the
//! smallest adequate local model, and falls back to a hosted API only where policy permits.
//!
//! Policy files (`policy`) feed the pure decision (`routing`) with the fleet registry's view
//! (`fleet`); the gRPC service (`grpc`) forwards to agents with retries or to a hosted API
//! (`providers`) after reserving its worst-case cost (`ledger`), and records external calls
//! and refused fallbacks (`audit`). `reload` swaps the policy on edits and SIGHUP.

pub mod adequacy;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dataclass;
pub mod dispatch;
pub mod error;
pub mod external;
pub mod fleet;
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod reload;
pub mod requests;
pub mod routing;
pub mod state;
pub mod store;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use edgewise_proto as pb;
use tokio::net::TcpListener;

use crate::state::{ActivePolicy, State};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Policy files or directories.
    pub policies: Vec<PathBuf>,
    /// A stable id for this gateway (shown to agents and in FleetStatus).
    pub id: String,
    /// How many other nodes a request may try after an agent fails before its first token.
    pub retry_budget: usize,
    /// Where the ledger and audit live (sled); `None` keeps them in a temporary store.
    pub state_dir: Option<PathBuf>,
    /// The longest a request waits for the store (a durable write, a read) before it fails
    /// with UNAVAILABLE naming the store.
    pub store_timeout: std::time::Duration,
    /// Hosted APIs routes may fall back to.
    pub providers: Vec<providers::ProviderConfig>,
    /// Mutual TLS with agents (and callers' certificates), or plain text for development.
    pub tls: edgewise_tls::TlsMode,
    /// Callers' bearer tokens (hashed) → tenant.
    pub tokens: auth::Tokens,
    /// Tenants allowed the operator calls (fleet status, audit export, all spend).
    pub operators: Vec<String>,
    /// What one request may ask for.
    pub limits: validate::Limits,
    /// Where `GET /metrics` is served (plain HTTP); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The OpenAI-compatible HTTP API (`[http]`); `None`: not served.
    pub http: Option<http::HttpConfig>,
    /// Where traces are exported (OTLP); `None`: not exported.
    pub otlp: Option<edgewise_ops::otlp::OtlpConfig>,
    /// The budget ledger shared with other gateways (`[store]` in gateway.toml); `None`:
    /// this gateway's own, in its state directory.
    pub shared_ledger: Option<SharedLedgerConfig>,
}

/// Where the shared ledger is and how reservations in it are held.
#[derive(Debug, Clone)]
pub struct SharedLedgerConfig {
    pub options: store::postgres::PgOptions,
    /// TLS to the database (the project's rustls configuration, with its CA); `None`:
    /// plaintext (a unix socket or loopback).
    pub tls: Option<rustls::ClientConfig>,
    /// A reservation's lease (see `store::SharedLedger`).
    pub lease: std::time::Duration,
    /// How often this gateway sweeps expired leases and re-reads every gateway's spend.
    pub sweep_every: std::time::Duration,
}

impl GatewayConfig {
    pub fn new(policies: Vec<PathBuf>, id: impl Into<String>) -> Self {
        Self {
            policies,
            id: id.into(),
            retry_budget: 2,
            state_dir: None,
            store_timeout: store::DEFAULT_WRITE_TIMEOUT,
            providers: Vec::new(),
            tls: edgewise_tls::TlsMode::Plaintext,
            tokens: auth::Tokens::default(),
            operators: Vec::new(),
            limits: validate::Limits::default(),
            metrics_listen: None,
            http: None,
            otlp: None,
            shared_ledger: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy:\n{0}")]
    Policy(edgewise_diag::Diagnostics),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Provider(String),
    #[error("tls: {0}")]
    Tls(edgewise_tls::TlsError),
    #[error("data-class detectors: {0}")]
    Detectors(String),
}

/// How long a stopping gateway waits for requests in flight.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the OpenAI-compatible API is served, when `[http] listen` is set.
    pub http_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    /// Notify to reload the policy now (what SIGHUP does).
    pub reload: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    /// Metrics over OTLP, when `[telemetry]` names a collector; stopped after the drain so
    /// its last export counts every request.
    metrics_export: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Gateway {
    /// Validates the policy and serves `Gateway`, `Fleet` and health on `listener`.
    pub async fn start(config: GatewayConfig, listener: TcpListener) -> Result<Self, StartError> {
        let policy = ActivePolicy::load(&config.policies).map_err(StartError::Policy)?;
        // compiled now, so that the first request does not pay for it (and a broken table
        // stops the start instead of making every request restricted)
        dataclass::ready().map_err(StartError::Detectors)?;
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        tracing::info!(%addr, policy = %policy.hash, routes = policy.policy.routes.len(), "gateway listening");
        let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
        for w in policy::unconfigured_providers(&policy.policy, &names) {
            tracing::warn!("{w}");
        }
        let shared = match &config.shared_ledger {
            Some(c) => Some(store::SharedLedger {
                ledger: store::postgres::PgLedger::new(&c.options, c.tls.clone())
                    .map_err(|e| StartError::Store(e.to_string()))?,
                lease: c.lease,
            }),
            None => None,
        };
        let store = store::Store::open(&store::StoreOptions {
            dir: config.state_dir.clone(),
            write_timeout: config.store_timeout,
            shared,
        })
        .map_err(|e| StartError::Store(e.to_string()))?;
        let providers =
            providers::Providers::new(config.providers.clone()).map_err(StartError::Provider)?;
        let tls = match &config.tls {
            edgewise_tls::TlsMode::Mutual(files) => {
                let tls =
                    edgewise_tls::Tls::load(files.clone(), edgewise_tls::ClientAuth::Optional)
                        .map_err(StartError::Tls)?;
                tracing::info!(identity = %tls.identity(), "mutual TLS on");
                Some(tls)
            }
            edgewise_tls::TlsMode::Plaintext => {
                tracing::warn!(
                    "plaintext mode (tls.plaintext = true): no TLS, for local development only"
                );
                None
            }
        };
        let auth = if tls.is_none() && config.tokens.is_empty() {
            tracing::warn!(
                "callers are not authenticated (plaintext, no auth.tokens): the tenant is taken from the x-edgewise-tenant header"
            );
            auth::CallerAuth::Header
        } else {
            auth::CallerAuth::Credentials {
                tokens: config.tokens.clone(),
                certificates: tls.is_some(),
                operators: config.operators.clone(),
            }
        };
        let setup = state::Setup {
            id: config.id.clone(),
            policy,
            providers,
            retry_budget: config.retry_budget,
            limits: config.limits,
            tls: tls.clone(),
            auth,
        };
        let state = Arc::new(State::new(setup, store));
        dispatch::settle_abandoned(&state).await;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::gateway_server::GatewayServer<grpc::GatewayService>>()
            .await;
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(store::report_health(
            state.store.clone(),
            health.clone(),
            <pb::gateway_server::GatewayServer<grpc::GatewayService> as tonic::server::NamedService>::NAME,
            stop.clone(),
        ));
        if let Some(c) = &config.shared_ledger {
            tokio::spawn(dispatch::sweep_shared(
                state.clone(),
                c.sweep_every,
                stop.clone(),
            ));
        }
        // reflection lets grpcurl and similar tools call the gateway without the .proto files
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        let max = config.limits.max_message_bytes;
        let router = tonic::transport::Server::builder()
            // bounded concurrent streams per connection: one caller cannot hog the gateway
            .max_concurrent_streams(Some(256))
            // an oversized message is refused from its length prefix, RESOURCE_EXHAUSTED
            .layer(edgewise_ops::message_limit::MessageLimitLayer::new(max))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(pb::fleet_server::FleetServer::new(grpc::FleetService {
                registry: state.registry.clone(),
                gateway_id: config.id.clone(),
                stop: stop.clone(),
                node_certificates: tls.is_some(),
            }))
            .add_service(
                pb::gateway_server::GatewayServer::new(grpc::GatewayService {
                    state: state.clone(),
                })
                .max_decoding_message_size(max),
            );
        let task = edgewise_ops::serve::spawn(
            router,
            listener,
            tls.clone(),
            stop.clone().cancelled_owned(),
        );
        let metrics_addr = match config.metrics_listen {
            Some(at) => Some(
                edgewise_ops::metrics::start(at, metrics_registry(&state), stop.clone())
                    .await
                    .map_err(StartError::Listener)?,
            ),
            None => None,
        };
        let (http_addr, http_task) = match config.http {
            Some(h) => {
                let (addr, task) =
                    http::start(h, state.clone(), tls.clone(), stop.clone(), DRAIN_TIMEOUT)
                        .await
                        .map_err(StartError::Listener)?;
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let metrics_export = config.otlp.as_ref().map(|otlp| {
            let done = tokio_util::sync::CancellationToken::new();
            let task = edgewise_ops::metrics::otlp::spawn(
                edgewise_ops::metrics::otlp::Source {
                    service: "edgewise-gateway",
                    instance: config.id.clone(),
                },
                metrics_registry(&state),
                otlp,
                done.clone(),
            );
            (done, task)
        });
        let reload = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(reload::watch(
            state.clone(),
            config.policies.clone(),
            reload.clone(),
            stop.clone(),
        ));
        Ok(Self {
            addr,
            metrics_addr,
            http_addr,
            state,
            reload,
            stop,
            task,
            http_task,
            metrics_export,
        })
    }

    /// Stops, in order:
    pub async fn stop(self) {
        // 1. tell systemd, stop accepting, and end the agents' report streams (they go to
        //    other gateways) — one signal for the gRPC server, the HTTP front and the watcher;
        edgewise_ops::systemd::stopping();
        self.stop.cancel();
        // 2. let in-flight requests finish, up to the drain timeout;
        let abort = self.task.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.task)
            .await
            .is_err()
        {
            tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
            abort.abort();
        }
        // 3. the HTTP front drains on the same signal, within the same timeout;
        if let Some(http) = self.http_task {
            let _ = http.await;
        }
        // 4. the last metrics export, after the drain, so that it counts every request;
        if let Some((done, task)) = self.metrics_export {
            done.cancel();
            let _ = task.await;
        }
        // 5. the ledger and audit reach the disk before the process ends — waiting for a
        //    stuck store at most its bound: what it had acknowledged is durable already.
        if let Err(e) = self.state.store.close(self.state.store.bound()).await {
            tracing::error!(error = %e, "cannot flush the ledger and audit store");
        }
        tracing::info!("gateway stopped");
    }
}

/// What `/metrics` and the OTLP export read: the request metrics, the fleet and the store.
fn metrics_registry(state: &State) -> prometheus_client::registry::Registry {
    let mut r = state.metrics.registry(&state.registry);
    state.store.register_metrics(&mut r);
    r
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let g = Gateway::start(config, listener).await?;
    shutdown.await;
    g.stop().await;
    Ok(())
}
