//! Test harness: real agents on port-0 listeners, a real `Fleet` receiver standing in for a
//! gateway, real daemons as child processes, gateway clients, and waiting on conditions with a
//! deadline (never sleeping to synchronise).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use std::time::Duration;

use edgewise_agent::Agent;
use edgewise_agent::config::{AgentConfig, Limits};
use edgewise_proto as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

pub use crate::otlp::{OtlpReceiver, ReceivedMetric, ReceivedSpan};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/models")
}

/// The real models from `make models` (`models/`), or `None` (the test skips) when they
/// are missing — except under `make test`, which sets EDGEWISE_TEST_REAL_MODELS=required.
pub fn real_models() -> Option<PathBuf> {
    let dir = repo_root().join("models");
    if dir.join("smollm2-135m-int8/model.onnx").exists() {
        return Some(dir);
    }
    assert_ne!(
        std::env::var("EDGEWISE_TEST_REAL_MODELS").as_deref(),
        Ok("required"),
        "models/ is missing: run `make models`"
    );
    eprintln!("skipping: models/ is missing (run `make models`)");
    None
}

/// A process's resident memory (VmRSS) in bytes.
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// A models directory holding copies of the named fixture folders.
pub fn models_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        copy_dir(&fixtures().join(n), &dir.path().join(n));
    }
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The one way tests wait: polls `check` (every 10 ms) until it gives `Ok`, and returns that
/// value; once `timeout` has passed, fails the test with the last `Err` — what was seen
/// instead. Never a sleep standing in for synchronisation.
pub async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?}: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `poll` for a condition: waits until `cond` holds.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(timeout, || {
        let held = cond();
        async move {
            if held.await {
                Ok(())
            } else {
                Err(format!("waiting for: {what}"))
            }
        }
    })
    .await
}

/// Waits until `gateway` holds a live node whose reported models satisfy `ready`.
pub async fn wait_for_node(
    gateway: &edgewise_gateway::Gateway,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&[pb::ModelStatus]) -> bool,
) {
    let registry = gateway.state.registry.clone();
    wait_for(what, timeout, || {
        let nodes = registry.status(std::time::Instant::now());
        let found = nodes.iter().any(|n| n.live && ready(&n.models));
        async move { found }
    })
    .await;
}

/// A `Fleet` receiver: keeps the latest report and counts streams.
#[derive(Clone)]
pub struct FakeGateway {
    pub url: String,
    latest: watch::Receiver<Option<pb::NodeReport>>,
    pub reports: watch::Receiver<u64>,
}

struct FleetSvc {
    latest: watch::Sender<Option<pb::NodeReport>>,
    count: watch::Sender<u64>,
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetSvc {
    type ReportStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ReportAck, Status>> + Send>>;

    async fn report(
        &self,
        req: Request<Streaming<pb::NodeReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut stream = req.into_inner();
        let (latest, count) = (self.latest.clone(), self.count.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(r)) = stream.next().await {
                let seq = r.seq;
                latest.send_replace(Some(r));
                count.send_modify(|c| *c += 1);
                if tx
                    .send(Ok(pb::ReportAck {
                        gateway_id: "test".into(),
                        seq,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl FakeGateway {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (latest_tx, latest) = watch::channel(None);
        let (count_tx, reports) = watch::channel(0);
        let svc = pb::fleet_server::FleetServer::new(FleetSvc {
            latest: latest_tx,
            count: count_tx,
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            url,
            latest,
            reports,
        }
    }

    pub fn latest(&self) -> Option<pb::NodeReport> {
        self.latest.borrow().clone()
    }

    pub fn model(&self, name: &str) -> Option<pb::ModelStatus> {
        self.latest()?.models.into_iter().find(|m| m.name == name)
    }

    /// Waits until a report satisfies `cond`; returns it.
    pub async fn wait_report(
        &self,
        what: &str,
        cond: impl Fn(&pb::NodeReport) -> bool,
    ) -> pb::NodeReport {
        let mut rx = self.latest.clone();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            rx.wait_for(|r| r.as_ref().is_some_and(&cond)),
        )
        .await
        .unwrap_or_else(|_| panic!("no report where {what}; last: {:?}", self.latest()));
        r.unwrap().clone().unwrap()
    }
}

pub struct TestAgent {
    pub agent: Option<Agent>,
    pub client: pb::agent_client::AgentClient<tonic::transport::Channel>,
    pub url: String,
    _state: tempfile::TempDir,
}

pub fn config(models: &Path, gateway: Option<&FakeGateway>) -> (AgentConfig, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut c = AgentConfig::for_models_dir(models.to_path_buf());
    c.state_dir = state.path().to_path_buf();
    c.intra_op_threads = 1;
    // tests that want mapped copies turn them on (each state directory writes its own)
    c.mapped_copies = false;
    c.report_interval = Duration::from_millis(100);
    c.drain_timeout = Duration::from_secs(5);
    if let Some(g) = gateway {
        c.gateways = vec![g.url.clone()];
    }
    (c, state)
}

pub fn limit(c: &mut AgentConfig, model: &str, max_concurrency: u32, max_queue: u32) {
    c.limits.insert(
        model.into(),
        Limits {
            max_concurrency: Some(max_concurrency),
            max_queue: Some(max_queue),
            ..Limits::default()
        },
    );
}

impl TestAgent {
    pub async fn start(config: AgentConfig, state: tempfile::TempDir) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut agent = Agent::start(config, listener).await.unwrap();
        agent.loaded().await;
        let url = format!("http://{}", agent.addr);
        let client = pb::agent_client::AgentClient::connect(url.clone())
            .await
            .unwrap();
        Self {
            agent: Some(agent),
            client,
            url,
            _state: state,
        }
    }

    pub fn slot(&self, name: &str) -> std::sync::Arc<edgewise_agent::node::ModelSlot> {
        self.agent
            .as_ref()
            .unwrap()
            .node
            .slots
            .get(name)
            .unwrap()
            .clone()
    }

    pub async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.stop().await.unwrap();
        }
    }
}

/// A channel whose HTTP/2 receive window is a kilobyte: a stream it stops reading fills within
/// a few hundred bytes, so the server's sender blocks on it deterministically.
pub async fn slow_channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap()
}

/// An agent client on a `slow_channel`: a generation it stops reading blocks the agent.
pub async fn slow_reader(url: &str) -> pb::agent_client::AgentClient<tonic::transport::Channel> {
    pb::agent_client::AgentClient::new(slow_channel(url).await)
}

pub fn prompt(model: &str, text: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        input: Some(pb::generate_request::Input::Prompt(text.into())),
        max_tokens,
        ..Default::default()
    }
}

/// Reads a whole generation stream: (text, final chunk).
pub async fn collect(
    client: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    req: impl tonic::IntoRequest<pb::GenerateRequest>,
) -> Result<(String, pb::GenerateDone), Status> {
    let mut stream = client.generate(req).await?.into_inner();
    let mut text = String::new();
    while let Some(chunk) = stream.message().await? {
        text.push_str(&chunk.text);
        if let Some(done) = chunk.done {
            return Ok((text, done));
        }
    }
    Err(Status::internal("stream ended without a final chunk"))
}

/// The agent binary built by this workspace (next to the test executable's deps folder).
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("edgewise-agent");
    assert!(
        bin.exists(),
        "{} not built (run `cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// Copies fixture model `from` into `dir` as `name` with other declared size and quality
/// (a test fleet of "different" models from the few committed fixtures).
pub fn model_as(dir: &Path, from: &str, name: &str, parameters: u64, quality: f32) {
    copy_dir(&fixtures().join(from), &dir.join(name));
    let file = dir.join(name).join("model.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("name = ") {
                format!("name = \"{name}\"")
            } else if l.starts_with("parameters = ") {
                format!("parameters = {parameters}")
            } else if l.starts_with("quality = ") {
                format!("quality = {quality}")
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&file, text).unwrap();
}

/// A systemd notification socket, as a test stands in for systemd.
pub struct Notify {
    sock: std::os::unix::net::UnixDatagram,
    pub seen: Vec<String>,
}

impl Notify {
    /// Binds `path`, replacing the socket of an earlier run of the same daemon.
    pub fn bind(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            sock,
            seen: Vec::new(),
        }
    }

    /// Reads notifications until one contains `what` (deadline 30 s).
    pub fn wait(&mut self, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while !self
            .seen
            .iter()
            .any(|m| m.lines().any(|l| l == what || l.starts_with(what)))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{what}` notification; saw {:?}",
                self.seen
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

pub type GatewayClient = pb::gateway_client::GatewayClient<tonic::transport::Channel>;

/// A client for the gateway listening on `addr` (`host:port`), connecting on first use.
pub fn gateway_client(addr: impl std::fmt::Display) -> GatewayClient {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    pb::gateway_client::GatewayClient::new(ch)
}

/// `text` as one user chat message to `model` (empty: the gateway chooses), greedy.
pub fn chat(model: &str, text: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: text.into(),
                ..Default::default()
            }],
        })),
        max_tokens,
        ..Default::default()
    }
}

/// "What is the capital of France?" as a chat, from tenant `shop`, with data class `class`.
pub fn chat_request(class: &str, max_tokens: u32) -> Request<pb::GatewayGenerateRequest> {
    let mut r = Request::new(pb::GatewayGenerateRequest {
        request: Some(chat("", "What is the capital of France?", max_tokens)),
        routing: Some(pb::RoutingHints {
            data_class: class.into(),
            ..Default::default()
        }),
    });
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    r
}

pub async fn fleet_status(c: &mut GatewayClient) -> pb::FleetStatusResponse {
    c.fleet_status(pb::FleetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits (up to 30 s) until the gateway's view of the fleet satisfies `pred`.
pub async fn wait_fleet<P>(c: &GatewayClient, what: &str, pred: P)
where
    P: Fn(&pb::FleetStatusResponse) -> bool + Clone,
{
    wait_for(what, Duration::from_secs(30), || {
        let (mut c, pred) = (c.clone(), pred.clone());
        async move { pred(&fleet_status(&mut c).await) }
    })
    .await;
}

/// Every audit record the gateway holds, oldest first.
pub async fn audit_records(c: &mut GatewayClient) -> Vec<pb::AuditRecord> {
    let mut s = c
        .export_audit(pb::ExportAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.unwrap() {
        out.push(r);
    }
    out
}

/// Today's spend per tenant and provider.
pub async fn spend_entries(c: &mut GatewayClient) -> Vec<pb::SpendEntry> {
    c.spend(pb::SpendRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// A daemon process, killed when dropped (a failing test leaves nothing running).
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, and wait for the exit (what queued work a daemon flushes on the way out).
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// `bin --config config run` at log level `level`, stderr to `log` (or the test's own);
/// returned once it says READY=1, with its notifications.
pub fn daemon(bin: &Path, config: &Path, level: &str, log: Option<&Path>) -> (Proc, Notify) {
    let sock = config.with_extension("notify");
    let mut notify = Notify::bind(&sock);
    let stderr = match log {
        Some(p) => std::process::Stdio::from(std::fs::File::create(p).unwrap()),
        None => std::process::Stdio::inherit(),
    };
    let child = std::process::Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock)
        .env("EDGEWISE_LOG", level)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let child = Proc(child);
    notify.wait("READY=1");
    (child, notify)
}

impl Notify {
    /// The address a gateway reports with `STATUS=serving on ADDR` (waits for it).
    pub fn serving_addr(&mut self) -> String {
        self.wait("STATUS=serving on ");
        self.seen
            .iter()
            .flat_map(|m| m.lines())
            .find_map(|l| l.strip_prefix("STATUS=serving on "))
            .unwrap()
            .to_string()
    }
}

/// An address on loopback that was free a moment ago (for daemons that take no port 0).
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// GET `path` from `addr` over HTTP/1.0; the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A hosted provider's config pointing at the mock: its URL, key and CA; `price` per million
/// input tokens (output costs twice that), 3 retries, 30 s timeout.
pub fn provider(
    name: &str,
    kind: edgewise_gateway::providers::Kind,
    mock: &crate::mock_provider::MockProvider,
    price: f64,
) -> edgewise_gateway::providers::ProviderConfig {
    edgewise_gateway::providers::ProviderConfig {
        name: name.into(),
        kind,
        base_url: mock.base_url.parse().unwrap(),
        key: edgewise_gateway::providers::Secret::new(
            std::fs::read_to_string(&mock.key_file).unwrap().trim(),
        ),
        ca_file: Some(mock.ca_file.clone()),
        price: edgewise_gateway::routing::ProviderPrice {
            input_per_million_usd: price,
            output_per_million_usd: 2.0 * price,
        },
        timeout: Duration::from_secs(30),
        max_retries: 3,
        default_max_tokens: 64,
    }
}

/// Runs a generation to its end through the gateway; its status if it failed.
pub async fn drain(
    c: &mut GatewayClient,
    r: tonic::Request<pb::GatewayGenerateRequest>,
) -> Result<(), tonic::Status> {
    let mut s = c.generate(r).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

/// The pinned `openai` SDK's Python (build/test-venv), or `None` (skipped) outside `make test`.
pub fn sdk_python() -> Option<std::path::PathBuf> {
    let py = repo_root().join("build/test-venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var("EDGEWISE_TEST_SDK").as_deref() != Ok("required"),
        "build/test-venv is missing: `make test` creates it (tools/fetch_test_venv.sh)"
    );
    eprintln!("skipped: build/test-venv is missing (tools/fetch_test_venv.sh creates it)");
    None
}

/// Runs one of the SDK scripts (`tests/openai/NAME`) with `args` in the test venv's Python,
/// and asserts it passed: it exits 0 and prints `done` (its last line). Its output is printed.
pub async fn run_sdk_script(python: &Path, name: &str, args: &[String], done: &str) {
    let out = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/openai").join(name))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{log}");
    assert!(out.status.success(), "{name} failed:\n{log}");
    assert!(log.contains(done), "{name}: no `{done}`:\n{log}");
}
