//! Edgewise gateway: receives capacity reports from agents, routes each request to the
//! smallest adequate local model, and falls back to a hosted API only where policy permits.
//!
//! Built so far: policy files (`policy`), the pure decision (`routing`), the fleet registry
//! (`fleet`) and the gRPC service forwarding to agents with retries (`grpc`). Calling hosted
//! providers, the budget ledger, audit, hot reload and gateway.toml are still to come.

pub mod cli;
pub mod config;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod policy;
pub mod reload;
pub mod routing;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use edgewise_proto as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::state::{ActivePolicy, State};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Policy files or directories.
    pub policies: Vec<PathBuf>,
    /// A stable id for this gateway (shown to agents and in FleetStatus).
    pub id: String,
    /// How many other nodes a request may try after an agent fails before its first token.
    pub retry_budget: usize,
}

impl GatewayConfig {
    pub fn new(policies: Vec<PathBuf>, id: impl Into<String>) -> Self {
        Self {
            policies,
            id: id.into(),
            retry_budget: 2,
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
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    /// Notify to reload the policy now (what SIGHUP does).
    pub reload: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Gateway {
    /// Validates the policy and serves `Gateway`, `Fleet` and health on `listener`.
    pub async fn start(config: GatewayConfig, listener: TcpListener) -> Result<Self, StartError> {
        let policy = ActivePolicy::load(&config.policies).map_err(StartError::Policy)?;
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        tracing::info!(%addr, policy = %policy.hash, routes = policy.policy.routes.len(), "gateway listening");
        let mut state = State::new(config.id.clone(), policy);
        state.retry_budget = config.retry_budget;
        let state = Arc::new(state);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::gateway_server::GatewayServer<grpc::GatewayService>>()
            .await;
        // reflection lets grpcurl and similar tools call the gateway without the .proto files
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(pb::fleet_server::FleetServer::new(fleet::FleetService {
                registry: state.registry.clone(),
                gateway_id: config.id.clone(),
            }))
            .add_service(pb::gateway_server::GatewayServer::new(
                grpc::GatewayService {
                    state: state.clone(),
                },
            ))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        let task = tokio::spawn(server);
        let reload = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(reload::watch(
            state.clone(),
            config.policies.clone(),
            reload.clone(),
            stop.clone(),
        ));
        Ok(Self {
            addr,
            state,
            reload,
            stop,
            task,
        })
    }

    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
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
