//! gRPC edge of the gateway: `edgewise.v1.Gateway`, and the one place where `GatewayError`
//! becomes a `tonic::Status`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use futures::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

use crate::dispatch::{self, AgentClient, Served};
use crate::error::GatewayError;
use crate::external::{CallEnd, ExternalCall};
use crate::metrics::Tracker;
use crate::providers::{self, Event, Finish, GenerateCall, ProviderError, Usage};
use crate::routing::{Refusal, Task};
use crate::state::State;
use tracing::Instrument;

pub use crate::dispatch::settle_abandoned;

/// Maps every gateway error to a status with a readable reason (exhaustive on purpose).
pub fn status(e: &GatewayError) -> Status {
    let msg = e.to_string();
    match e {
        GatewayError::NoTenant | GatewayError::Unauthenticated(_) => Status::unauthenticated(msg),
        GatewayError::WrongIdentity(_) | GatewayError::NotOperator(_) => {
            Status::permission_denied(msg)
        }
        GatewayError::TenantBusy { .. } => Status::resource_exhausted(msg),
        GatewayError::InvalidRequest(_) => Status::invalid_argument(msg),
        GatewayError::Refused(Refusal::NoAdequateModel(_)) => Status::failed_precondition(msg),
        GatewayError::Refused(Refusal::NoCapacity(_)) => Status::resource_exhausted(msg),
        GatewayError::Refused(Refusal::Forbidden(_)) => Status::permission_denied(msg),
        GatewayError::Provider(p) => Status::new(provider_code(p), msg),
        GatewayError::Ledger(_) => Status::internal(msg),
        GatewayError::Agent { status, .. } => Status::new(status.code(), msg),
        GatewayError::RetriesExhausted { .. } => Status::unavailable(msg),
    }
}

fn provider_code(e: &ProviderError) -> Code {
    match e {
        ProviderError::Deadline { .. } => Code::DeadlineExceeded,
        ProviderError::Connect { .. } => Code::Unavailable,
        ProviderError::Status { status, .. } => match status {
            429 => Code::ResourceExhausted,
            400 | 413 | 422 => Code::InvalidArgument,
            401 | 403 | 404 => Code::FailedPrecondition,
            _ => Code::Unavailable,
        },
        ProviderError::Protocol { .. } => Code::Internal,
        ProviderError::Unsupported { .. } => Code::FailedPrecondition,
    }
}

pub use crate::validate::{estimate_tokens, max_tokens_of};

fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    edgewise_proto::grpc_timeout(request.metadata()).map(|t| Instant::now() + t)
}

/// An agent request: the remaining deadline, and the trace context of the current span.
fn with_timeout<T>(msg: T, t: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = t {
        r.set_timeout(t);
    }
    edgewise_ops::telemetry::inject(r.metadata_mut());
    r
}

/// An agent call on a batch of texts (Embed, Classify): one routing and retry path for both.
trait TextsCall: Clone + Send + Sync + 'static {
    type Out: Send + 'static;
    const TASK: Task;
    fn texts(&self) -> &[String];
    fn for_model(&self, model: String) -> Self;
    fn call(
        client: AgentClient,
        req: Request<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Self::Out, Status>>;
    /// The same request served by a hosted API: the answer and what it was billed.
    fn external<'a>(
        &'a self,
        provider: &'a providers::Provider,
        model: &'a str,
        deadline: tokio::time::Instant,
    ) -> futures::future::BoxFuture<'a, Result<(Self::Out, CallEnd), ProviderError>>;
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
        mut client: AgentClient,
        req: Request<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Self::Out, Status>> {
        Box::pin(async move { client.embed(req).await.map(Response::into_inner) })
    }
    fn external<'a>(
        &'a self,
        provider: &'a providers::Provider,
        model: &'a str,
        deadline: tokio::time::Instant,
    ) -> futures::future::BoxFuture<'a, Result<(Self::Out, CallEnd), ProviderError>> {
        Box::pin(async move {
            let e = provider.embed(model, &self.texts, deadline).await?;
            let estimate: u32 = self.texts.iter().map(|t| estimate_tokens(t)).sum();
            let end = match e.prompt_tokens {
                Some(t) => CallEnd::Billed(Usage {
                    prompt_tokens: t,
                    completion_tokens: 0,
                }),
                None => CallEnd::Unreported {
                    estimate: Usage {
                        prompt_tokens: estimate,
                        completion_tokens: 0,
                    },
                },
            };
            let out = pb::EmbedResponse {
                embeddings: e
                    .vectors
                    .into_iter()
                    .map(|values| pb::Embedding { values })
                    .collect(),
                usage: Some(pb::Usage {
                    prompt_tokens: e.prompt_tokens.unwrap_or(estimate),
                    completion_tokens: 0,
                }),
                model: model.to_string(),
            };
            Ok((out, end))
        })
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
        mut client: AgentClient,
        req: Request<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Self::Out, Status>> {
        Box::pin(async move { client.classify(req).await.map(Response::into_inner) })
    }
    fn external<'a>(
        &'a self,
        provider: &'a providers::Provider,
        _model: &'a str,
        _deadline: tokio::time::Instant,
    ) -> futures::future::BoxFuture<'a, Result<(Self::Out, CallEnd), ProviderError>> {
        // routing never sends classify to a provider (no provider kind serves it)
        Box::pin(async move {
            Err(ProviderError::Unsupported {
                provider: provider.config.name.clone(),
                kind: provider.config.kind.as_str(),
                task: Task::Classify,
            })
        })
    }
}

pub struct GatewayService {
    pub state: Arc<State>,
}

impl GatewayService {
    /// The provider an external decision named (a gone one closes the call unbilled).
    async fn provider_of(&self, ext: &ExternalCall) -> Result<&providers::Provider, Status> {
        match self.state.providers.get(&ext.provider) {
            Some(p) => Ok(p),
            None => {
                ext.close(&self.state, CallEnd::NotBilled("not configured".into()))
                    .await;
                Err(Status::failed_precondition(format!(
                    "provider `{}` is not configured",
                    ext.provider
                )))
            }
        }
    }

    /// A generation: decides, then streams from the agent or the provider; the tracker goes
    /// with the stream.
    async fn generate_tracked(
        &self,
        request: Request<pb::GatewayGenerateRequest>,
        track: &mut Option<Tracker>,
    ) -> Result<Response<ChunkStream>, Status> {
        let tenant = self.state.auth.tenant(&request).map_err(|e| status(&e))?;
        let deadline = deadline_of(&request);
        let body = request.into_inner();
        let slot = self.state.enter(&tenant).map_err(|e| status(&e))?;
        let (messages, route_req) =
            crate::validate::generate(tenant, &body, &self.state.limits).map_err(|e| status(&e))?;
        let tokens = (route_req.prompt_tokens, route_req.prompt_tokens_max);
        let gen_req = body.request.unwrap_or_default();
        let call = |mut client: AgentClient, model: String, timeout: Option<Duration>| {
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
        let served = dispatch::with_retries(&self.state, route_req, deadline, call)
            .await
            .map_err(|e| status(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        match served {
            Served::Local((first, stream), routed) => {
                let track = track.take();
                let span = tracing::Span::current();
                tokio::spawn(
                    async move {
                        let mut track = track;
                        if let Some(t) = track.as_mut() {
                            pipe_local(&tx, first, stream, &routed, t).await;
                        }
                        // the model's slot is released before the caller sees the end of the stream
                        drop(routed);
                        drop(slot);
                        drop(tx);
                    }
                    .instrument(span),
                );
            }
            Served::External(ext) => {
                let provider = self.provider_of(&ext).await?;
                let call = GenerateCall {
                    model: ext.model.clone(),
                    messages,
                    max_tokens: match gen_req.max_tokens {
                        0 => provider.config.default_max_tokens,
                        n => n,
                    },
                    temperature: gen_req.temperature,
                    top_p: gen_req.top_p,
                    top_k: gen_req.top_k,
                    stop: gen_req.stop.clone(),
                    seed: gen_req.seed,
                };
                let deadline = provider.deadline(deadline.map(tokio::time::Instant::from_std));
                let external = tracing::info_span!("external.call", provider = %ext.provider, model = %ext.model);
                let events = match provider
                    .generate(&call, deadline)
                    .instrument(external.clone())
                    .await
                {
                    Ok(events) => events,
                    Err(e) => return Err(self.failed(&ext, e).await),
                };
                let state = self.state.clone();
                let mut track = track.take();
                tokio::spawn(async move {
                    if let Some(t) = track.as_mut() {
                        pipe_external(&state, &tx, &ext, events, tokens.0, t)
                            .instrument(external)
                            .await;
                    }
                    drop(slot);
                });
            }
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// Closes an external call that failed before answering, and the status for the caller.
    async fn failed(&self, ext: &ExternalCall, e: ProviderError) -> Status {
        ext.close(&self.state, CallEnd::from_failure(&e)).await;
        status(&GatewayError::Provider(e))
    }

    /// An embed or classify request, measured (`metrics::Tracker`).
    async fn texts<Q: TextsCall>(
        &self,
        tenant: String,
        deadline: Option<Instant>,
        inner: Option<Q>,
        routing: Option<pb::RoutingHints>,
        caller: &tonic::metadata::MetadataMap,
    ) -> Result<(Q::Out, pb::Decision), Status> {
        let mut track = self.state.metrics.track(Q::TASK.as_str());
        let span = tracing::info_span!("gateway.request", task = Q::TASK.as_str());
        edgewise_ops::telemetry::continue_trace(&span, caller);
        let r = self
            .texts_untracked(tenant, deadline, inner, routing)
            .instrument(span)
            .await;
        match &r {
            Ok((_, d)) => track.decided(d),
            Err(s) => track.failed_with(s.code()),
        }
        r
    }

    async fn texts_untracked<Q: TextsCall>(
        &self,
        tenant: String,
        deadline: Option<Instant>,
        inner: Option<Q>,
        routing: Option<pb::RoutingHints>,
    ) -> Result<(Q::Out, pb::Decision), Status> {
        let inner = inner.ok_or_else(|| Status::invalid_argument("request is required"))?;
        let route_req = crate::validate::texts(
            tenant,
            Q::TASK,
            inner.texts(),
            routing.as_ref(),
            &self.state.limits,
        )
        .map_err(|e| status(&e))?;
        let call = |client, model: String, timeout: Option<Duration>| {
            Q::call(client, with_timeout(inner.for_model(model), timeout))
        };
        match dispatch::with_retries(&self.state, route_req, deadline, call)
            .await
            .map_err(|e| status(&e))?
        {
            Served::Local(out, routed) => Ok((out, routed.decision)),
            Served::External(ext) => {
                let provider = self.provider_of(&ext).await?;
                let deadline = provider.deadline(deadline.map(tokio::time::Instant::from_std));
                let external = tracing::info_span!("external.call", provider = %ext.provider, model = %ext.model);
                match inner
                    .external(provider, &ext.model, deadline)
                    .instrument(external)
                    .await
                {
                    Ok((out, end)) => {
                        ext.close(&self.state, end).await;
                        Ok((out, ext.decision))
                    }
                    Err(e) => Err(self.failed(&ext, e).await),
                }
            }
        }
    }
}

type Chunks = tokio::sync::mpsc::Sender<Result<pb::GatewayGenerateChunk, Status>>;

fn text_chunk(chunk: pb::GenerateChunk) -> pb::GatewayGenerateChunk {
    pb::GatewayGenerateChunk {
        chunk: Some(chunk),
        decision: None,
    }
}

fn decision_chunk(decision: pb::Decision) -> pb::GatewayGenerateChunk {
    pb::GatewayGenerateChunk {
        chunk: None,
        decision: Some(decision),
    }
}

/// Sends the decision, then the agent's chunks, to the caller; stops when either side ends.
async fn pipe_local(
    tx: &Chunks,
    first: Option<pb::GenerateChunk>,
    mut stream: tonic::Streaming<pb::GenerateChunk>,
    routed: &dispatch::LocalCall,
    track: &mut Tracker,
) {
    track.decided(&routed.decision);
    if tx
        .send(Ok(decision_chunk(routed.decision.clone())))
        .await
        .is_err()
    {
        return;
    }
    let mut next = first;
    while let Some(chunk) = next {
        if !chunk.text.is_empty() {
            track.first_token();
        }
        if let Some(u) = chunk.done.as_ref().and_then(|d| d.usage) {
            track.local_tokens((u.prompt_tokens, u.completion_tokens));
        }
        if tx.send(Ok(text_chunk(chunk))).await.is_err() {
            track.failed_with(Code::Cancelled);
            return; // the caller left: dropping the agent stream cancels the generation
        }
        next = match stream.message().await {
            Ok(c) => c,
            Err(s) => {
                let e = GatewayError::Agent {
                    node: routed.node.clone(),
                    model: routed.model.clone(),
                    status: s,
                };
                let st = status(&e);
                track.failed_with(st.code());
                let _ = tx.send(Err(st)).await;
                return;
            }
        };
    }
}

/// Streams a hosted API's answer to the caller as agent-shaped chunks, then settles and
/// audits the call before the final chunk (so an acknowledged answer is always accounted).
async fn pipe_external(
    state: &State,
    tx: &Chunks,
    ext: &ExternalCall,
    mut events: providers::EventStream,
    estimate_prompt: u32,
    track: &mut Tracker,
) {
    track.decided(&ext.decision);
    let started = Instant::now();
    let mut first_token: Option<Instant> = None;
    let mut pieces = 0u32;
    if tx
        .send(Ok(decision_chunk(ext.decision.clone())))
        .await
        .is_err()
    {
        ext.close(state, CallEnd::Cancelled).await;
        return;
    }
    loop {
        match events.next().await {
            Some(Ok(Event::Text(text))) => {
                first_token.get_or_insert_with(Instant::now);
                track.first_token();
                pieces += 1;
                let chunk = pb::GenerateChunk { text, done: None };
                if tx.send(Ok(text_chunk(chunk))).await.is_err() {
                    ext.close(state, CallEnd::Cancelled).await;
                    return;
                }
            }
            Some(Ok(Event::Done { finish, usage })) => {
                let end = match usage {
                    Some(u) => CallEnd::Billed(u),
                    None => CallEnd::Unreported {
                        estimate: Usage {
                            prompt_tokens: estimate_prompt,
                            completion_tokens: pieces,
                        },
                    },
                };
                let shown = match &end {
                    CallEnd::Billed(u) | CallEnd::Unreported { estimate: u } => *u,
                    _ => Usage::default(),
                };
                ext.close(state, end).await;
                let ttft = first_token.map_or(0.0, |t| (t - started).as_secs_f64() * 1e3);
                let decode_ms = first_token.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
                let done = pb::GenerateDone {
                    finish_reason: match finish {
                        Finish::Stop => pb::FinishReason::Stop,
                        Finish::Length => pb::FinishReason::Length,
                        Finish::StopSequence => pb::FinishReason::StopSequence,
                    } as i32,
                    usage: Some(pb::Usage {
                        prompt_tokens: shown.prompt_tokens,
                        completion_tokens: shown.completion_tokens,
                    }),
                    time_to_first_token_ms: ttft,
                    time_per_output_token_ms: decode_ms
                        / f64::from(shown.completion_tokens.saturating_sub(1).max(1)),
                };
                let chunk = pb::GenerateChunk {
                    text: String::new(),
                    done: Some(done),
                };
                let _ = tx.send(Ok(text_chunk(chunk))).await;
                return;
            }
            Some(Err(e)) => {
                ext.close(state, CallEnd::Failed(e.to_string())).await;
                let _ = tx.send(Err(status(&GatewayError::Provider(e)))).await;
                return;
            }
            None => {
                let e = ProviderError::Protocol {
                    provider: ext.provider.clone(),
                    detail: "the stream ended without a final event".into(),
                };
                ext.close(state, CallEnd::Failed(e.to_string())).await;
                let _ = tx.send(Err(status(&GatewayError::Provider(e)))).await;
                return;
            }
        }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GatewayGenerateChunk, Status>> + Send>>;
type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    type GenerateStream = ChunkStream;
    type ExportAuditStream = AuditStream;

    async fn generate(
        &self,
        request: Request<pb::GatewayGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        // moved into the stream's task once there is one; records the outcome when dropped
        let mut track = Some(self.state.metrics.track("generate"));
        let span = tracing::info_span!("gateway.generate");
        edgewise_ops::telemetry::continue_trace(&span, request.metadata());
        let r = self
            .generate_tracked(request, &mut track)
            .instrument(span)
            .await;
        if let (Err(s), Some(t)) = (&r, track.as_mut()) {
            t.failed_with(s.code());
        }
        r
    }

    async fn embed(
        &self,
        request: Request<pb::GatewayEmbedRequest>,
    ) -> Result<Response<pb::GatewayEmbedResponse>, Status> {
        let (tenant, deadline) = (
            self.state.auth.tenant(&request).map_err(|e| status(&e))?,
            deadline_of(&request),
        );
        let _slot = self.state.enter(&tenant).map_err(|e| status(&e))?;
        let caller = request.metadata().clone();
        let body = request.into_inner();
        let (response, decision) = self
            .texts(tenant, deadline, body.request, body.routing, &caller)
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
            self.state.auth.tenant(&request).map_err(|e| status(&e))?,
            deadline_of(&request),
        );
        let _slot = self.state.enter(&tenant).map_err(|e| status(&e))?;
        let caller = request.metadata().clone();
        let body = request.into_inner();
        let (response, decision) = self
            .texts(tenant, deadline, body.request, body.routing, &caller)
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
        let tenant = self.state.auth.tenant(&request).map_err(|e| status(&e))?;
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
        let req = crate::validate::route_request(
            tenant,
            task,
            body.routing.as_ref(),
            (estimate_tokens(&body.text), max_tokens_of(&body.text)),
            body.max_tokens,
            &self.state.limits,
        )
        .map_err(|e| status(&e))?;
        let d = dispatch::decide(&self.state, &req);
        Ok(Response::new(dispatch::to_proto(
            &d,
            &uuid::Uuid::new_v4().to_string(),
            &[],
        )))
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        self.state.auth.operator(&request).map_err(|e| status(&e))?;
        Ok(Response::new(pb::FleetStatusResponse {
            gateway_id: self.state.id.clone(),
            nodes: self.state.registry.status(Instant::now()),
            policy_hash: self.state.policy().hash.clone(),
            policy_reloads: self
                .state
                .reloads
                .load(std::sync::atomic::Ordering::Relaxed),
            policy_reload_failures: self
                .state
                .reload_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    async fn spend(
        &self,
        request: Request<pb::SpendRequest>,
    ) -> Result<Response<pb::SpendResponse>, Status> {
        let tenant = request.get_ref().tenant.clone();
        self.state
            .auth
            .may_read_spend(&request, &tenant)
            .map_err(|e| status(&e))?;
        let entries = self
            .state
            .ledger
            .entries()
            .into_iter()
            .filter(|e| tenant.is_empty() || e.1 == tenant)
            .map(|(day, tenant, provider, spent, reserved)| pb::SpendEntry {
                day,
                tenant,
                provider,
                spent_usd: crate::ledger::usd(spent),
                reserved_usd: crate::ledger::usd(reserved),
            })
            .collect();
        Ok(Response::new(pb::SpendResponse { entries }))
    }

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.state.auth.operator(&request).map_err(|e| status(&e))?;
        let r = request.into_inner();
        let until = if r.until_unix_ms == 0 {
            u64::MAX
        } else {
            r.until_unix_ms
        };
        let records: Vec<Result<pb::AuditRecord, Status>> = self
            .state
            .audit
            .range(r.since_unix_ms, until)
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(records))))
    }
}
