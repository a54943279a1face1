//! Edgewise node agent: serves quantized ONNX models over gRPC and reports capacity.
//!
//! `main.rs` only parses the command line and loads config; everything else is here so that
//! tests can start a real agent on a port-0 listener with their own shutdown signal.

pub mod batch;
pub mod budget;
pub mod call;
pub mod callers;
pub mod check;
pub mod config;
pub mod engine;
pub mod error;
pub mod fuzzing;
pub mod generation;
pub mod grpc;
pub mod hardware;
pub mod import;
pub mod metrics;
pub mod models;
pub mod node;
pub mod report;
pub mod residency;
pub mod runtime;
pub mod scheduler;
pub mod service;
pub mod slot;
pub mod stats;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgewise_proto as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::config::AgentConfig;
use crate::node::Node;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot create the state directory {0}: {1}")]
    StateDir(String, std::io::Error),
    #[error("{0}")]
    Models(String),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("gRPC server: {0}")]
    Server(String),
    #[error("tls: {0}")]
    Tls(edgewise_tls::TlsError),
}

/// Health service name of one model.
pub fn model_health_name(model: &str) -> String {
    format!("edgewise.v1.Agent/{model}")
}

/// A running agent.
pub struct Agent {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    loaded: watch::Receiver<bool>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), StartError>>,
}

impl Agent {
    /// Loads ONNX Runtime, opens state, starts serving on `listener` (health NOT_SERVING),
    /// starts reporting, and loads the models in the background.
    pub async fn start(config: AgentConfig, listener: TcpListener) -> Result<Self, StartError> {
        let rt = runtime::init(config.onnxruntime_library.as_deref())?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| StartError::StateDir(config.state_dir.display().to_string(), e))?;
        let store = store::Store::open(&config.state_dir)?;
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        let tls = match &config.tls {
            edgewise_tls::TlsMode::Mutual(files) => {
                let tls =
                    edgewise_tls::Tls::load(files.clone(), edgewise_tls::ClientAuth::Required)
                        .map_err(StartError::Tls)?;
                Some(tls)
            }
            edgewise_tls::TlsMode::Plaintext => {
                tracing::warn!(
                    "plaintext mode (tls.plaintext = true): no TLS, for local development only"
                );
                None
            }
        };
        let id = match tls.as_ref().map(|t| t.identity()) {
            Some(edgewise_tls::Identity::Node(id)) => Some(id),
            Some(other) => {
                return Err(StartError::Tls(edgewise_tls::TlsError::Invalid(format!(
                    "the certificate names {other}; an agent needs a node certificate"
                ))));
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let node = Arc::new(
            Node::new(config, store, advertise, id, tls.clone(), rt).map_err(StartError::Models)?,
        );
        tracing::info!(node = %node.id, %addr, library = %rt.library.display(), "agent listening");

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<pb::agent_server::AgentServer<grpc::AgentService>>()
            .await;
        for name in node.slots.keys() {
            health
                .set_service_status(model_health_name(name), ServingStatus::NotServing)
                .await;
        }
        let stop = CancellationToken::new();
        // reporters and the watchdog outlive the drain; they stop last
        let background = CancellationToken::new();
        let max = node.config.max_message_bytes;
        let service = pb::agent_server::AgentServer::new(grpc::AgentService {
            inference: service::Inference::new(node.clone()),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let server_stop = CancellationToken::new();
        let router = tonic::transport::Server::builder()
            // bounded concurrent streams per connection: one client cannot hog the box
            .max_concurrent_streams(Some(256))
            // an oversized message is refused from its length prefix, RESOURCE_EXHAUSTED
            .layer(edgewise_ops::message_limit::MessageLimitLayer::new(max))
            .add_service(health_service)
            .add_service(service);
        let server = edgewise_ops::serve::spawn(
            router,
            listener,
            node.tls.clone(),
            server_stop.clone().cancelled_owned(),
        );

        let reporters: Vec<JoinHandle<()>> = node
            .config
            .gateways
            .iter()
            .map(|g| {
                tokio::spawn(report::report_to(
                    node.clone(),
                    g.clone(),
                    background.clone(),
                ))
            })
            .collect();

        let (loaded_tx, loaded) = watch::channel(false);
        let loader = tokio::spawn(load_models(node.clone(), health.clone(), loaded_tx));
        let reaper = tokio::spawn(node.clone().reap_idle(background.clone()));
        let watchdog = edgewise_ops::systemd::spawn_watchdog(background.clone());
        let metrics_addr = match node.config.metrics_listen {
            Some(at) => Some(
                edgewise_ops::metrics::start(at, metrics::registry(&node), background.clone())
                    .await
                    .map_err(StartError::Listener)?,
            ),
            None => None,
        };

        let metrics_export = node.config.otlp.as_ref().map(|otlp| {
            edgewise_ops::metrics::otlp::spawn(
                edgewise_ops::metrics::otlp::Source {
                    service: "edgewise-agent",
                    instance: node.id.clone(),
                },
                metrics::registry(&node),
                otlp,
                background.clone(),
            )
        });

        let task = tokio::spawn(lifecycle(
            node.clone(),
            stop.clone(),
            server,
            server_stop,
            Background {
                reporters,
                loader,
                reaper,
                watchdog,
                metrics_export,
                stop: background,
            },
            health,
        ));
        Ok(Self {
            node,
            addr,
            metrics_addr,
            loaded,
            stop,
            task,
        })
    }

    /// Resolves once every model has finished loading (ready or failed).
    pub async fn loaded(&mut self) {
        let _ = self.loaded.wait_for(|l| *l).await;
    }

    /// Applies a reloaded config (limits now; other changes at the next restart) and reads
    /// the TLS files again. Errors: the TLS files were refused (the ones in use stay).
    pub fn reload(&self, next: &AgentConfig) -> Result<(), edgewise_tls::TlsError> {
        let tls = match &self.node.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        };
        for change in self.node.apply_limits(next) {
            tracing::info!("limits reloaded: {change}");
        }
        let now = &self.node.config;
        let restart: Vec<&str> = [
            ("server.listen", now.listen != next.listen),
            ("server.advertise", now.advertise != next.advertise),
            ("server.operators", now.operators != next.operators),
            (
                "models.dir / models.include",
                now.models_dir != next.models_dir || now.include != next.include,
            ),
            (
                "runtime",
                now.intra_op_threads != next.intra_op_threads
                    || now.onnxruntime_library != next.onnxruntime_library,
            ),
            ("report.gateways", now.gateways != next.gateways),
            (
                "models.memory_budget / keep_alive_ms / max_keep_alive_ms",
                now.memory != next.memory,
            ),
            (
                "models.limits.*.pin / keep_alive_ms / kv_budget_mb",
                now.limits.iter().any(|(name, l)| {
                    let n = next.limits.get(name).copied().unwrap_or_default();
                    (l.pin, l.keep_alive, l.kv_budget_bytes)
                        != (n.pin, n.keep_alive, n.kv_budget_bytes)
                }) || next.limits.iter().any(|(name, n)| {
                    !now.limits.contains_key(name)
                        && (n.pin || n.keep_alive.is_some() || n.kv_budget_bytes.is_some())
                }),
            ),
            (
                "runtime.mapped_copies",
                now.mapped_copies != next.mapped_copies,
            ),
            ("state.dir", now.state_dir != next.state_dir),
            ("tls (mode or file paths)", now.tls != next.tls),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !restart.is_empty() {
            tracing::warn!(
                "changed settings that take effect at the next restart: {}",
                restart.join(", ")
            );
        }
        tls
    }

    /// Drains and stops; resolves when the agent has shut down.
    pub async fn stop(self) -> Result<(), StartError> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| StartError::Server(e.to_string()))?
    }
}

/// Runs the agent until `shutdown` resolves, then drains within the configured grace period.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let agent = Agent::start(config, listener).await?;
    shutdown.await;
    agent.stop().await
}

/// Loads what the node loads at start (`Node::load_at_start`), then marks the agent serving.
/// Every model that has not failed is served: one not resident loads on its first request.
async fn load_models(
    node: Arc<Node>,
    health: tonic_health::server::HealthReporter,
    done: watch::Sender<bool>,
) {
    node.load_at_start(|slot, i, total| {
        edgewise_ops::systemd::status(&format!("loading model {}/{total}: {}", i + 1, slot.name));
        // loading a large model on a small box can take a while: keep systemd waiting
        edgewise_ops::systemd::extend_start_timeout(Duration::from_secs(120));
    })
    .await;
    for slot in node.slots.values() {
        let status = match slot.state_name().0 {
            "failed" => ServingStatus::NotServing,
            _ => ServingStatus::Serving,
        };
        health
            .set_service_status(model_health_name(&slot.name), status)
            .await;
    }
    if !node.is_draining() {
        health
            .set_serving::<pb::agent_server::AgentServer<grpc::AgentService>>()
            .await;
        edgewise_ops::systemd::ready();
    }
    let ready = node.slots.values().filter(|s| s.ready().is_some()).count();
    let failed = node
        .slots
        .values()
        .filter(|s| s.state_name().0 == "failed")
        .count();
    tracing::info!(
        resident = ready,
        on_demand = node.slots.len() - ready - failed,
        failed,
        budget = %node.budget.map_or("none".into(), budget::show),
        "models loaded"
    );
    let _ = done.send(true);
}

/// Tasks that run beside the server and stop after the drain.
struct Background {
    reporters: Vec<JoinHandle<()>>,
    loader: JoinHandle<()>,
    /// Unloads models idle past their keep-alive.
    reaper: JoinHandle<()>,
    watchdog: Option<JoinHandle<()>>,
    /// Metrics over OTLP: its last export, after the drain, counts every request.
    metrics_export: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

async fn lifecycle(
    node: Arc<Node>,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    server_stop: CancellationToken,
    background: Background,
    health: tonic_health::server::HealthReporter,
) -> Result<(), StartError> {
    let mut server = server;
    tokio::select! {
        _ = stop.cancelled() => {}
        r = &mut server => {
            // the server ended on its own: a listener failure
            stop.cancel();
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StartError::Server(e.to_string())),
                Err(e) => Err(StartError::Server(e.to_string())),
            };
        }
    }
    // Shutdown, in order:
    // 1. refuse new work and tell gateways and systemd (reports go out at once on drain);
    node.start_drain();
    edgewise_ops::systemd::stopping();
    health
        .set_not_serving::<pb::agent_server::AgentServer<grpc::AgentService>>()
        .await;
    // 2. stop accepting connections and let in-flight requests finish, up to the grace period;
    server_stop.cancel();
    let grace = node.config.drain_timeout;
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight requests outlived the drain timeout; stopping anyway"
        );
        server.abort();
    }
    // 3. stop the background tasks;
    background.loader.abort();
    background.stop.cancel();
    let _ = background.reaper.await;
    for r in background.reporters {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    if let Some(w) = background.watchdog {
        let _ = w.await;
    }
    if let Some(m) = background.metrics_export {
        let _ = m.await;
    }
    // 4. persist counters and flush state.
    node.save_counters();
    node.store.flush()?;
    tracing::info!("agent stopped");
    Ok(())
}
