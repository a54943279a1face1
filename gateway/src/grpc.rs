//! gRPC edge of the gateway: `edgewise.v1.Gateway`, forwarding to agents, and the one place
//! where `GatewayError` becomes a `tonic::Status`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use futures::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::error::GatewayError;
use crate::routing::{
    self, Budgets, DataClass, Decision, Inputs, Refusal, RouteRequest, Target, Task,
};
use crate::state::State;

/// Maps every gateway error to a status with a readable reason (exhaustive on purpose).
pub fn status(e: &GatewayError) -> Status {
    let msg = e.to_string();
    match e {
        GatewayError::NoTenant => Status::unauthenticated(msg),
        GatewayError::InvalidRequest(_) => Status::invalid_argument(msg),
        GatewayError::Refused(Refusal::NoAdequateModel(_)) => Status::failed_precondition(msg),
        GatewayError::Refused(Refusal::NoCapacity(_)) => Status::resource_exhausted(msg),
        GatewayError::Refused(Refusal::Forbidden(_)) => Status::permission_denied(msg),
        GatewayError::ProviderUnavailable(_) => Status::unavailable(msg),
        GatewayError::Agent { status, .. } => Status::new(status.code(), msg),
        GatewayError::RetriesExhausted { .. } => Status::unavailable(msg),
    }
}

/// The tenant, from the caller's metadata (credentials come with the security work).
fn tenant<T>(req: &Request<T>) -> Result<String, GatewayError> {
    req.metadata()
        .get("x-edgewise-tenant")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or(GatewayError::NoTenant)
}

/// The routing request for an embed or classify batch: its longest text must fit.
fn texts_route(
    tenant: String,
    task: Task,
    h: Option<&pb::RoutingHints>,
    texts: &[String],
) -> Result<RouteRequest, Status> {
    let tokens = texts.iter().map(|t| estimate_tokens(t)).max().unwrap_or(0);
    hints(tenant, task, h, tokens, 0).map_err(|e| status(&e))
}

/// Tokens a text will take, estimated without the model's tokenizer (about 4 bytes a token);
/// the agent enforces the exact context length.
pub fn estimate_tokens(text: &str) -> u32 {
    (text.len() / 4 + 1) as u32
}

fn hints(
    tenant: String,
    task: Task,
    h: Option<&pb::RoutingHints>,
    prompt_tokens: u32,
    max_tokens: u32,
) -> Result<RouteRequest, GatewayError> {
    let data_class = match h.map(|h| h.data_class.as_str()).unwrap_or("") {
        "" => None,
        c => Some(DataClass::parse(c).ok_or_else(|| {
            GatewayError::InvalidRequest(format!(
                "routing.data_class `{c}` is not one of public, internal, confidential, restricted"
            ))
        })?),
    };
    let min_quality = h.and_then(|h| h.min_quality);
    if let Some(q) = min_quality
        && !(0.0..=1.0).contains(&q)
    {
        return Err(GatewayError::InvalidRequest(format!(
            "routing.min_quality {q} must be in 0..=1"
        )));
    }
    Ok(RouteRequest {
        tenant,
        task,
        data_class,
        min_quality,
        max_latency_ms: h.and_then(|h| h.max_latency_ms),
        route: h.map(|h| h.route.clone()).filter(|r| !r.is_empty()),
        prompt_tokens,
        max_tokens,
        exclude_nodes: Vec::new(),
    })
}

fn to_proto(d: &Decision, id: &str, retried: &[pb::Excluded]) -> pb::Decision {
    let target = match &d.outcome {
        Ok(Target::Local { node, addr, model }) => {
            Some(pb::decision::Target::Local(pb::LocalTarget {
                node_id: node.clone(),
                addr: addr.clone(),
                model: model.clone(),
            }))
        }
        Ok(Target::External {
            provider,
            model,
            worst_case_usd,
        }) => Some(pb::decision::Target::External(pb::ExternalTarget {
            provider: provider.clone(),
            model: model.clone(),
            worst_case_usd: *worst_case_usd,
        })),
        Err(_) => None,
    };
    pb::Decision {
        decision_id: id.to_string(),
        route: d.route.clone(),
        rule: d.rule.clone(),
        data_class: d.data_class.as_str().to_string(),
        target,
        excluded: d
            .excluded
            .iter()
            .map(|e| pb::Excluded {
                candidate: e.candidate.clone(),
                reason: e.reason.clone(),
            })
            .collect(),
        refusal: d
            .outcome
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default(),
        retried: retried.to_vec(),
    }
}

/// Agent connections, one lazily connected channel per address.
#[derive(Default)]
pub struct AgentPool {
    channels: Mutex<HashMap<String, Channel>>,
}

impl AgentPool {
    fn client(&self, addr: &str) -> Result<pb::agent_client::AgentClient<Channel>, String> {
        let mut m = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(addr) {
            return Ok(pb::agent_client::AgentClient::new(c.clone()));
        }
        let ch = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("bad agent address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        m.insert(addr.to_string(), ch.clone());
        Ok(pb::agent_client::AgentClient::new(ch))
    }
}

/// An agent failure that happened before any token reached the caller: decide again without it.
fn retriable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Unknown
    )
}

pub struct GatewayService {
    pub state: Arc<State>,
}

struct Routed {
    decision: pb::Decision,
    node: String,
    model: String,
    addr: String,
    guard: crate::fleet::InFlight,
}

impl GatewayService {
    fn decide(&self, req: &RouteRequest) -> Decision {
        let policy = self.state.policy();
        let fleet = self.state.registry.snapshot(Instant::now());
        let inputs = Inputs {
            policy: &policy.policy,
            fleet: &fleet,
            providers: &self.state.providers,
            budgets: &Budgets::default(),
        };
        routing::decide(&inputs, req, &mut rand::rng())
    }

    /// Decides, and on a local target counts the request against that model.
    fn route(&self, req: &RouteRequest, retried: &[pb::Excluded]) -> Result<Routed, GatewayError> {
        let d = self.decide(req);
        let id = uuid::Uuid::new_v4().to_string();
        let proto = to_proto(&d, &id, retried);
        match d.outcome {
            Ok(Target::Local { node, addr, model }) => {
                tracing::debug!(decision = %id, route = %d.route, rule = %d.rule, node = %node, model = %model, "routed");
                let guard = self.state.registry.track(&node, &model);
                Ok(Routed {
                    decision: proto,
                    node,
                    model,
                    addr,
                    guard,
                })
            }
            Ok(Target::External { provider, .. }) => {
                Err(GatewayError::ProviderUnavailable(provider))
            }
            Err(r) => {
                tracing::info!(decision = %id, route = %d.route, reason = %r, "refused");
                Err(GatewayError::Refused(r))
            }
        }
    }

    /// Runs `call` on the routed agent; on a retriable failure decides again without that node.
    async fn with_retries<T, F, Fut>(
        &self,
        mut req: RouteRequest,
        deadline: Option<Instant>,
        call: F,
    ) -> Result<(T, Routed), GatewayError>
    where
        F: Fn(pb::agent_client::AgentClient<Channel>, String, Option<Duration>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut retried: Vec<pb::Excluded> = Vec::new();
        let budget = self.state.retry_budget;
        loop {
            let routed = self.route(&req, &retried)?;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let result = match self.state.agents.client(&routed.addr) {
                Ok(client) => call(client, routed.model.clone(), remaining).await,
                Err(e) => Err(Status::unavailable(e)),
            };
            match result {
                Ok(v) => return Ok((v, routed)),
                Err(s)
                    if retriable(&s)
                        && retried.len() < budget
                        && deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    tracing::info!(node = %routed.node, model = %routed.model, code = ?s.code(), "agent failed before the first token; routing again");
                    retried.push(pb::Excluded {
                        candidate: format!("{}/{}", routed.node, routed.model),
                        reason: format!("{:?}: {}", s.code(), s.message()),
                    });
                    req.exclude_nodes.push(routed.node.clone());
                }
                Err(s) if retriable(&s) && !retried.is_empty() => {
                    return Err(GatewayError::RetriesExhausted {
                        attempts: retried.len() + 1,
                        last: format!("{:?}: {}", s.code(), s.message()),
                    });
                }
                Err(status) => {
                    return Err(GatewayError::Agent {
                        node: routed.node,
                        model: routed.model,
                        status,
                    });
                }
            }
        }
    }
}

fn with_timeout<T>(msg: T, t: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = t {
        r.set_timeout(t);
    }
    r
}

/// An agent call on a batch of texts (Embed, Classify): one routing and retry path for both.
trait TextsCall: Clone + Send + Sync + 'static {
    type Out: Send + 'static;
    const TASK: Task;
    fn texts(&self) -> &[String];
    fn for_model(&self, model: String) -> Self;
    fn call(
        client: pb::agent_client::AgentClient<Channel>,
        req: Request<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Self::Out, Status>>;
}

impl TextsCall for pb::EmbedRequest {
    type Out = pb::EmbedResponse;
    const TASK: Task = Task::Embed;
    fn texts(&self) -> &[String] {
        &self.texts
    }
    fn for_model(&self, model: String) -> Self {
        Self {
            model,
            ..self.clone()
        }
    }
    fn call(
        mut client: pb::agent_client::AgentClient<Channel>,
        req: Request<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Self::Out, Status>> {
        Box::pin(async move { client.embed(req).await.map(Response::into_inner) })
    }
}

impl TextsCall for pb::ClassifyRequest {
    type Out = pb::ClassifyResponse;
    const TASK: Task = Task::Classify;
    fn texts(&self) -> &[String] {
        &self.texts
    }
    fn for_model(&self, model: String) -> Self {
        Self {
            model,
            ..self.clone()
        }
    }
    fn call(
        mut client: pb::agent_client::AgentClient<Channel>,
        req: Request<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Self::Out, Status>> {
        Box::pin(async move { client.classify(req).await.map(Response::into_inner) })
    }
}

fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    edgewise_proto::grpc_timeout(request.metadata()).map(|t| Instant::now() + t)
}

impl GatewayService {
    async fn texts<Q: TextsCall>(
        &self,
        tenant: String,
        deadline: Option<Instant>,
        inner: Option<Q>,
        routing: Option<pb::RoutingHints>,
    ) -> Result<(Q::Out, pb::Decision), Status> {
        let inner = inner.ok_or_else(|| Status::invalid_argument("request is required"))?;
        let route_req = texts_route(tenant, Q::TASK, routing.as_ref(), inner.texts())?;
        let call = |client, model: String, timeout: Option<Duration>| {
            Q::call(client, with_timeout(inner.for_model(model), timeout))
        };
        let (out, routed) = self
            .with_retries(route_req, deadline, call)
            .await
            .map_err(|e| status(&e))?;
        Ok((out, routed.decision))
    }
}

/// Sends the decision, then the agent's chunks, to the caller; stops when either side ends.
async fn pipe(
    tx: &tokio::sync::mpsc::Sender<Result<pb::GatewayGenerateChunk, Status>>,
    decision: pb::Decision,
    first: Option<pb::GenerateChunk>,
    mut stream: tonic::Streaming<pb::GenerateChunk>,
    node: &str,
    model: &str,
) {
    let head = pb::GatewayGenerateChunk {
        chunk: None,
        decision: Some(decision),
    };
    if tx.send(Ok(head)).await.is_err() {
        return;
    }
    let mut next = first;
    while let Some(chunk) = next {
        if tx
            .send(Ok(pb::GatewayGenerateChunk {
                chunk: Some(chunk),
                decision: None,
            }))
            .await
            .is_err()
        {
            return; // the caller left: dropping the agent stream cancels the generation
        }
        next = match stream.message().await {
            Ok(c) => c,
            Err(s) => {
                let e = GatewayError::Agent {
                    node: node.to_string(),
                    model: model.to_string(),
                    status: s,
                };
                let _ = tx.send(Err(status(&e))).await;
                return;
            }
        };
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GatewayGenerateChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    type GenerateStream = ChunkStream;

    async fn generate(
        &self,
        request: Request<pb::GatewayGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let tenant = tenant(&request).map_err(|e| status(&e))?;
        let deadline = deadline_of(&request);
        let body = request.into_inner();
        let gen_req = body
            .request
            .ok_or_else(|| Status::invalid_argument("request is required"))?;
        let text_len = match &gen_req.input {
            Some(pb::generate_request::Input::Prompt(p)) => estimate_tokens(p),
            Some(pb::generate_request::Input::Chat(c)) => c
                .messages
                .iter()
                .map(|m| estimate_tokens(&m.content) + 4)
                .sum(),
            None => {
                return Err(Status::invalid_argument(
                    "request.input: one of prompt or chat is required",
                ));
            }
        };
        let route_req = hints(
            tenant,
            Task::Generate,
            body.routing.as_ref(),
            text_len,
            gen_req.max_tokens,
        )
        .map_err(|e| status(&e))?;
        let call = |mut client: pb::agent_client::AgentClient<Channel>,
                    model: String,
                    timeout: Option<Duration>| {
            let mut r = gen_req.clone();
            r.model = model;
            async move {
                let mut stream = client
                    .generate(with_timeout(r, timeout))
                    .await?
                    .into_inner();
                // the first chunk decides whether a retry is still possible
                let first = stream.message().await?;
                Ok((first, stream))
            }
        };
        let ((first, stream), routed) = self
            .with_retries(route_req, deadline, call)
            .await
            .map_err(|e| status(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let decision = routed.decision.clone();
        tokio::spawn(async move {
            let in_flight = routed.guard;
            let (node, model) = (routed.node, routed.model);
            pipe(&tx, decision, first, stream, &node, &model).await;
            // the model's slot is released before the caller sees the end of the stream
            drop(in_flight);
            drop(tx);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn embed(
        &self,
        request: Request<pb::GatewayEmbedRequest>,
    ) -> Result<Response<pb::GatewayEmbedResponse>, Status> {
        let (tenant, deadline) = (
            tenant(&request).map_err(|e| status(&e))?,
            deadline_of(&request),
        );
        let body = request.into_inner();
        let (response, decision) = self
            .texts(tenant, deadline, body.request, body.routing)
            .await?;
        Ok(Response::new(pb::GatewayEmbedResponse {
            response: Some(response),
            decision: Some(decision),
        }))
    }

    async fn classify(
        &self,
        request: Request<pb::GatewayClassifyRequest>,
    ) -> Result<Response<pb::GatewayClassifyResponse>, Status> {
        let (tenant, deadline) = (
            tenant(&request).map_err(|e| status(&e))?,
            deadline_of(&request),
        );
        let body = request.into_inner();
        let (response, decision) = self
            .texts(tenant, deadline, body.request, body.routing)
            .await?;
        Ok(Response::new(pb::GatewayClassifyResponse {
            response: Some(response),
            decision: Some(decision),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let tenant = tenant(&request).map_err(|e| status(&e))?;
        let body = request.into_inner();
        let task = match pb::Task::try_from(body.task) {
            Ok(pb::Task::Generate) => Task::Generate,
            Ok(pb::Task::Embed) => Task::Embed,
            Ok(pb::Task::Classify) => Task::Classify,
            _ => {
                return Err(Status::invalid_argument(
                    "task must be TASK_GENERATE, TASK_EMBED or TASK_CLASSIFY",
                ));
            }
        };
        let req = hints(
            tenant,
            task,
            body.routing.as_ref(),
            estimate_tokens(&body.text),
            body.max_tokens,
        )
        .map_err(|e| status(&e))?;
        let d = self.decide(&req);
        Ok(Response::new(to_proto(
            &d,
            &uuid::Uuid::new_v4().to_string(),
            &[],
        )))
    }

    async fn fleet_status(
        &self,
        _request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        Ok(Response::new(pb::FleetStatusResponse {
            gateway_id: self.state.id.clone(),
            nodes: self.state.registry.status(Instant::now()),
            policy_hash: self.state.policy().hash.clone(),
        }))
    }
}
