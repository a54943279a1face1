//! Embed and classify: a batch of texts, one routing and retry path for both.

use std::sync::Arc;
use std::time::Duration;

use edgewise_proto as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{Caller, with_timeout};
use crate::agents::AgentClient;
use crate::dispatch::{self, Served};
use crate::error::GatewayError;
use crate::external::stream::{failed, provider_of};
use crate::external::{CallEnd, SettleOnDrop};
use crate::providers::{self, ProviderError, Usage};
use crate::routing::Task;
use crate::state::State;
use crate::validate::estimate_tokens;

/// An agent call on a batch of texts (Embed, Classify): one routing and retry path for both.
pub trait TextsCall: Clone + Send + Sync + 'static {
    type Out: Send + 'static;
    const TASK: Task;
    fn texts(&self) -> &[String];
    /// The vector space, label set or model the caller asked for (empty: the route's).
    fn model(&self) -> &str;
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
        space: &'a str,
        deadline: tokio::time::Instant,
    ) -> futures::future::BoxFuture<'a, Result<(Self::Out, CallEnd), ProviderError>>;
}

/// What both requests share: their `texts` and `model` fields, and the agent call (`$rpc`).
macro_rules! texts_call {
    ($rpc:ident) => {
        fn texts(&self) -> &[String] {
            &self.texts
        }
        fn model(&self) -> &str {
            &self.model
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
            Box::pin(async move { client.$rpc(req).await.map(Response::into_inner) })
        }
    };
}

impl TextsCall for pb::EmbedRequest {
    type Out = pb::EmbedResponse;
    const TASK: Task = Task::Embed;
    texts_call!(embed);
    fn external<'a>(
        &'a self,
        provider: &'a providers::Provider,
        model: &'a str,
        space: &'a str,
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
                space: space.to_string(),
            };
            Ok((out, end))
        })
    }
}

impl TextsCall for pb::ClassifyRequest {
    type Out = pb::ClassifyResponse;
    const TASK: Task = Task::Classify;
    texts_call!(classify);
    fn external<'a>(
        &'a self,
        provider: &'a providers::Provider,
        _model: &'a str,
        _space: &'a str,
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

/// An embed or classify request, measured (`metrics::Tracker`) and traced.
pub async fn texts<Q: TextsCall>(
    state: &Arc<State>,
    caller: Caller,
    inner: Option<Q>,
    routing: Option<pb::RoutingHints>,
) -> Result<(Q::Out, pb::Decision), GatewayError> {
    let _slot = state.enter(&caller.tenant)?;
    let mut track = state.metrics.track(Q::TASK.as_str());
    let span = tracing::info_span!("gateway.request", task = Q::TASK.as_str());
    edgewise_ops::telemetry::continue_trace(&span, &caller.headers);
    let r = untracked(state, caller, inner, routing)
        .instrument(span)
        .await;
    match &r {
        Ok((_, d)) => track.decided(d),
        Err(e) => track.failed_with(e.grpc_code()),
    }
    r
}

async fn untracked<Q: TextsCall>(
    state: &Arc<State>,
    Caller {
        tenant,
        deadline,
        policy,
        ..
    }: Caller,
    inner: Option<Q>,
    routing: Option<pb::RoutingHints>,
) -> Result<(Q::Out, pb::Decision), GatewayError> {
    let inner = inner.ok_or_else(|| GatewayError::InvalidRequest("request is required".into()))?;
    let mut route_req = crate::validate::texts(
        tenant,
        Q::TASK,
        inner.model(),
        inner.texts(),
        routing.as_ref(),
        &state.limits,
    )?;
    route_req.findings =
        crate::dataclass::findings(&policy.policy, inner.texts().iter().map(String::as_str));
    let call = |client, to: dispatch::AgentCall, timeout: Option<Duration>| {
        Q::call(client, with_timeout(inner.for_model(to.model), timeout))
    };
    match dispatch::with_retries(state, &policy, route_req, deadline, call).await? {
        Served::Local(out, routed) => Ok((out, routed.decision)),
        Served::External(ext) => {
            // dropping the request before the answer settles the call as cancelled
            let guard = SettleOnDrop::new(state.clone(), ext);
            let ext = guard.call();
            let provider = provider_of(state, ext).await?;
            let deadline = provider.deadline(deadline.map(tokio::time::Instant::from_std));
            let external =
                tracing::info_span!("external.call", provider = %ext.provider, model = %ext.model);
            match inner
                .external(provider, &ext.model, &ext.decision.space, deadline)
                .instrument(external)
                .await
            {
                Ok((out, end)) => {
                    ext.close(state, end).await;
                    Ok((out, ext.decision.clone()))
                }
                Err(e) => Err(failed(state, ext, e).await),
            }
        }
    }
}
