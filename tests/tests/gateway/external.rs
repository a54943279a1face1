//! The gateway falling back to a hosted API — a mock speaking OpenAI's and Anthropic's wire
//! protocols over real TLS — only when policy permits: streamed answers, retries honouring
//! Retry-After, usage-based cost in the ledger, audit records, budgets and refusals.

use edgewise_tests::harness as common;

use common::*;

use std::path::Path;
use std::time::Duration;

use edgewise_gateway::providers::{Kind, ProviderConfig, Secret};
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use edgewise_tests::mock_provider::{Failure, MockProvider};
use tonic::{Code, Request};

const KEY: &str = "sk-test-canary-0123456789";

/// A policy with no local models: every generate and embed request may only go external.
fn policy(provider: &str, model: &str, budget: f64) -> String {
    format!(
        "default_data_class: internal\nroutes:\n  - name: hosted\n    min_quality: 0.5\n    spill: larger\n    external:\n      allowed: true\n      provider: {provider}\n      model: {model}\n      data_classes: [public, internal]\n      when: [no_adequate_local, no_local_capacity]\n      daily_budget_usd: {budget}\n"
    )
}

async fn gateway(
    policy: &str,
    providers: Vec<ProviderConfig>,
    state: Option<&Path>,
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), policy).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = GatewayConfig::new(vec![dir.path().to_path_buf()], "gw-ext");
    config.providers = providers;
    config.state_dir = state.map(Path::to_path_buf);
    (Gateway::start(config, listener).await.unwrap(), dir)
}

/// Runs a generation: (decision, text, done) or the status it failed with.
fn client(g: &Gateway) -> GatewayClient {
    gateway_client(g.addr)
}

async fn generate(
    g: &Gateway,
    r: Request<pb::GatewayGenerateRequest>,
) -> Result<(pb::Decision, String, pb::GenerateDone), tonic::Status> {
    let mut s = client(g).generate(r).await?.into_inner();
    let decision = s.message().await?.unwrap().decision.unwrap();
    let (mut text, mut done) = (String::new(), None);
    while let Some(m) = s.message().await? {
        let c = m.chunk.unwrap();
        text.push_str(&c.text);
        done = c.done.or(done);
    }
    Ok((decision, text, done.unwrap()))
}

/// As `generate`, counting the text chunks.
async fn generate_chunks(
    g: &Gateway,
    r: Request<pb::GatewayGenerateRequest>,
) -> Result<(pb::Decision, usize, pb::GenerateDone), tonic::Status> {
    let mut s = client(g).generate(r).await?.into_inner();
    let decision = s.message().await?.unwrap().decision.unwrap();
    let (mut chunks, mut done) = (0, None);
    while let Some(m) = s.message().await? {
        let c = m.chunk.unwrap();
        chunks += usize::from(!c.text.is_empty());
        done = c.done.or(done);
    }
    Ok((decision, chunks, done.unwrap()))
}

/// A 64-token answer that runs to its limit (past the cascade's bound of 8).
fn long_request(class: &str) -> Request<pb::GatewayGenerateRequest> {
    let mut r = chat_request(class, 64);
    if let Some(g) = r.get_mut().request.as_mut() {
        g.ignore_eos = true;
    }
    r
}

#[tokio::test]
async fn a_permitted_fallback_is_streamed_billed_by_usage_and_audited() {
    let mock = MockProvider::start(KEY).await;
    let (g, _p) = gateway(
        &policy("openai", "gpt-4o-mini", 5.0),
        vec![provider("openai", Kind::OpenAi, &mock, 1.0)],
        None,
    )
    .await;
    let (d, text, done) = generate(&g, chat_request("internal", 32)).await.unwrap();
    assert_eq!(d.rule, "external: no_adequate_local");
    match &d.target {
        Some(pb::decision::Target::External(e)) => {
            assert_eq!(
                (e.provider.as_str(), e.model.as_str()),
                ("openai", "gpt-4o-mini")
            );
            // worst case: (30 bytes + 8 + 8) prompt tokens at $1/M, 32 output tokens at $2/M
            assert!(
                (e.worst_case_usd - (46.0 + 64.0) / 1e6).abs() < 1e-12,
                "{e:?}"
            );
        }
        other => panic!("not external: {other:?}"),
    }
    assert_eq!(text, "The capital of France is Paris.");
    let usage = done.usage.unwrap();
    // the mock bills words + 3 per message: 6 + 3 in, 6 pieces out
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 6));
    assert_eq!(done.finish_reason(), pb::FinishReason::Stop);

    let seen = mock.state.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].authorized);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].body["max_tokens"], 32);
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");

    let cost = (9.0 * 1.0 + 6.0 * 2.0) / 1e6;
    let s = spend_entries(&mut client(&g)).await;
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].tenant.as_str(), s[0].provider.as_str()),
        ("shop", "openai")
    );
    assert!((s[0].spent_usd - cost).abs() < 1e-12, "{s:?}");
    assert_eq!(s[0].reserved_usd, 0.0);

    let records = audit_records(&mut client(&g)).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.kind, "external_call");
    assert_eq!(r.decision_id, d.decision_id);
    assert_eq!(
        (r.tenant.as_str(), r.route.as_str(), r.data_class.as_str()),
        ("shop", "hosted", "internal")
    );
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.usage_reported),
        (9, 6, true)
    );
    assert!((r.cost_usd - cost).abs() < 1e-12);
    assert_eq!(r.outcome, "ok");
    let line = edgewise_gateway::audit::to_json(r).to_string();
    assert!(
        !line.contains("France") && !line.contains("Paris"),
        "{line}"
    );
    g.stop().await;
}

#[tokio::test]
async fn retries_honour_retry_after_and_never_pass_the_deadline() {
    let mock = MockProvider::start(KEY).await;
    let (g, _p) = gateway(
        &policy("openai", "gpt-4o-mini", 5.0),
        vec![provider("openai", Kind::OpenAi, &mock, 1.0)],
        None,
    )
    .await;
    mock.state.fail_next(Failure {
        status: 429,
        retry_after: Some("1".into()),
    });
    mock.state.fail_next(Failure {
        status: 503,
        retry_after: None,
    });
    let (_, text, _) = generate(&g, chat_request("public", 16)).await.unwrap();
    assert_eq!(text, "The capital of France is Paris.");
    let seen = mock.state.requests();
    assert_eq!(seen.len(), 3);
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
    // the refused attempts were not billed: one record, one charge
    assert_eq!(audit_records(&mut client(&g)).await.len(), 1);

    // a Retry-After beyond the caller's deadline: fail now, and do not try again
    mock.state.fail_next(Failure {
        status: 429,
        retry_after: Some("30".into()),
    });
    let mut r = chat_request("public", 16);
    r.set_timeout(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let err = generate(&g, r).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("HTTP 429 after 1 attempt(s)"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(mock.state.requests().len(), 4);
    let records = audit_records(&mut client(&g)).await;
    assert!(
        records[1]
            .outcome
            .starts_with("error: provider `openai`: HTTP 429"),
        "{records:?}"
    );
    assert_eq!(records[1].cost_usd, 0.0);
    assert_eq!(spend_entries(&mut client(&g)).await[0].reserved_usd, 0.0);
    g.stop().await;
}

#[tokio::test]
async fn confidential_data_is_refused_and_nothing_reaches_the_provider() {
    let mock = MockProvider::start(KEY).await;
    let (g, _p) = gateway(
        &policy("openai", "gpt-4o-mini", 5.0),
        vec![provider("openai", Kind::OpenAi, &mock, 1.0)],
        None,
    )
    .await;
    for class in ["confidential", "restricted"] {
        let err = generate(&g, chat_request(class, 16)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(
            err.message(),
            format!(
                "route `hosted`: no adequate local generate model (quality >= 0.5, context >= 28) and external provider `openai` is not permitted for {class} data"
            )
        );
    }
    assert_eq!(mock.state.requests().len(), 0);
    let records = audit_records(&mut client(&g)).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].kind, "refused_fallback");
    assert_eq!(
        (records[0].provider.as_str(), records[0].model.as_str()),
        ("openai", "gpt-4o-mini")
    );
    assert_eq!(records[0].data_class, "confidential");
    assert!(spend_entries(&mut client(&g)).await.is_empty());
    g.stop().await;
}

#[tokio::test]
async fn an_exhausted_budget_refuses_the_fallback() {
    let mock = MockProvider::start(KEY).await;
    // $1000/M in, $2000/M out. Worst case: 46 × 0.001 + 10 × 0.002 = $0.066; each call
    // costs 9 × 0.001 + 6 × 0.002 = $0.021 once settled. A $0.12 budget takes three calls and
    // refuses the fourth (0.042 + 0.066 fits; 0.063 + 0.066 does not).
    let (g, _p) = gateway(
        &policy("openai", "gpt-4o-mini", 0.12),
        vec![provider("openai", Kind::OpenAi, &mock, 1000.0)],
        None,
    )
    .await;
    for _ in 0..3 {
        generate(&g, chat_request("internal", 10)).await.unwrap();
    }
    let err = generate(&g, chat_request("internal", 10))
        .await
        .unwrap_err();
    // a client can act on it: no more today
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("daily budget for `openai` left"),
        "{}",
        err.message()
    );
    assert_eq!(mock.state.requests().len(), 3);
    let s = spend_entries(&mut client(&g)).await;
    assert!((s[0].spent_usd - 3.0 * 0.021).abs() < 1e-9, "{s:?}");
    let refused = audit_records(&mut client(&g))
        .await
        .into_iter()
        .filter(|r| r.kind == "refused_fallback")
        .count();
    assert_eq!(refused, 1);
    g.stop().await;
}

#[tokio::test]
async fn embeddings_and_anthropic_messages_go_through_their_apis() {
    let mock = MockProvider::start(KEY).await;
    let policy = "routes:\n  - name: embed\n    match: {tasks: [embed]}\n    space: openai-3-small\n    external: {allowed: true, provider: openai, model: text-embedding-3-small, space: openai-3-small, data_classes: [internal], when: [no_adequate_local], daily_budget_usd: 1}\n  - name: chat\n    external: {allowed: true, provider: claude, model: claude-haiku, data_classes: [internal], when: [no_adequate_local], daily_budget_usd: 1}\n";
    let (g, _p) = gateway(
        policy,
        vec![
            provider("openai", Kind::OpenAi, &mock, 1.0),
            provider("claude", Kind::Anthropic, &mock, 3.0),
        ],
        None,
    )
    .await;
    let mut r = Request::new(pb::GatewayEmbedRequest {
        request: Some(pb::EmbedRequest {
            model: String::new(),
            texts: vec!["one two".into(), "three".into()],
            ..Default::default()
        }),
        routing: None,
    });
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    let e = client(&g).embed(r).await.unwrap().into_inner();
    let resp = e.response.unwrap();
    assert_eq!(resp.embeddings.len(), 2);
    assert_eq!(resp.embeddings[0].values.len(), 8);
    assert_ne!(resp.embeddings[0].values, resp.embeddings[1].values);
    assert_eq!(resp.usage.unwrap().prompt_tokens, 3);
    assert_eq!(e.decision.unwrap().route, "embed");

    // structured output the Messages API's way: a forced tool whose input is the answer
    if let Ok(mut a) = mock.state.answer.lock() {
        *a = r#"{"city": "Paris", "country": "France"}"#.into();
    }
    let mut r = chat_request("internal", 64);
    let schema = r#"{"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}}, "required": ["city", "country"], "additionalProperties": false}"#;
    if let Some(g) = r.get_mut().request.as_mut() {
        g.constraint = Some(pb::Constraint {
            kind: Some(pb::constraint::Kind::JsonSchema(schema.into())),
        });
    }
    let (_, json, done) = generate(&g, r).await.unwrap();
    assert_eq!(json, r#"{"city": "Paris", "country": "France"}"#);
    assert_eq!(done.finish_reason(), pb::FinishReason::Stop);
    assert!(!done.incomplete);
    let asked = mock.state.requests().pop().unwrap().body;
    assert_eq!(
        asked["tool_choice"],
        serde_json::json!({"type": "tool", "name": "output"})
    );
    assert_eq!(
        asked["tools"][0]["input_schema"]["required"],
        serde_json::json!(["city", "country"])
    );
    // a regular expression has no form there: the decision says so, nothing is sent
    let before = mock.state.requests().len();
    let mut r = chat_request("internal", 8);
    if let Some(g) = r.get_mut().request.as_mut() {
        g.constraint = Some(pb::Constraint {
            kind: Some(pb::constraint::Kind::Regex("[a-z]+".into())),
        });
    }
    let refused = generate(&g, r).await.unwrap_err();
    assert!(
        refused
            .message()
            .contains("provider `claude` has no form for a regular expression constraint"),
        "{refused:?}"
    );
    assert_eq!(mock.state.requests().len(), before);
    if let Ok(mut a) = mock.state.answer.lock() {
        *a = "The capital of France is Paris.".into();
    }

    let (d, text, done) = generate(&g, chat_request("internal", 3)).await.unwrap();
    assert_eq!(d.route, "chat");
    assert_eq!(text, "The capital of");
    assert_eq!(done.finish_reason(), pb::FinishReason::Length);
    assert_eq!(done.usage.unwrap().completion_tokens, 3);
    let seen = mock.state.requests();
    assert_eq!(seen[1].path, "/v1/messages");
    assert!(seen.iter().all(|s| s.authorized));
    let records = audit_records(&mut client(&g)).await;
    let costs: Vec<f64> = records
        .iter()
        .filter(|r| r.kind == "external_call")
        .map(|r| r.cost_usd)
        .collect();
    // embeddings: 3 tokens at $1/M; the last messages call: 9 in at $3/M, 3 out at $6/M
    assert!(
        (costs[0] - 3e-6).abs() < 1e-12
            && (costs[costs.len() - 1] - (27.0 + 18.0) / 1e6).abs() < 1e-12,
        "{costs:?}"
    );
    g.stop().await;
}

#[tokio::test]
async fn a_rejected_key_is_reported_without_echoing_it() {
    let mock = MockProvider::start(KEY).await;
    let mut p = provider("openai", Kind::OpenAi, &mock, 1.0);
    p.key = Secret::new("sk-wrong-canary-999");
    let (g, _p) = gateway(&policy("openai", "gpt-4o-mini", 5.0), vec![p], None).await;
    let err = generate(&g, chat_request("internal", 8)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("HTTP 401"), "{}", err.message());
    assert!(!err.message().contains("canary"), "{}", err.message());
    let records = audit_records(&mut client(&g)).await;
    assert!(!format!("{records:?}").contains("canary"));
    assert_eq!(records[0].cost_usd, 0.0);
    assert_eq!(mock.state.requests().len(), 1, "a 401 is not retried");
    g.stop().await;
}

#[tokio::test]
async fn the_ledger_and_audit_survive_a_restart() {
    let mock = MockProvider::start(KEY).await;
    let state = tempfile::tempdir().unwrap();
    let p = policy("openai", "gpt-4o-mini", 5.0);
    let (g, _p) = gateway(
        &p,
        vec![provider("openai", Kind::OpenAi, &mock, 1.0)],
        Some(state.path()),
    )
    .await;
    let (d, _, _) = generate(&g, chat_request("internal", 8)).await.unwrap();
    let before = spend_entries(&mut client(&g)).await;
    g.stop().await;
    let (g, _p2) = gateway(
        &p,
        vec![provider("openai", Kind::OpenAi, &mock, 1.0)],
        Some(state.path()),
    )
    .await;
    assert_eq!(spend_entries(&mut client(&g)).await, before);
    let records = audit_records(&mut client(&g)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].decision_id, d.decision_id);
    g.stop().await;
}

#[tokio::test]
async fn a_caller_leaving_before_the_provider_answers_settles_its_reservation() {
    let mock = MockProvider::start(KEY).await;
    let (g, _p) = gateway(
        &policy("openai", "gpt-4o-mini", 5.0),
        vec![provider("openai", Kind::OpenAi, &mock, 1.0)],
        None,
    )
    .await;
    mock.state
        .stall_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let c = client(&g);
    let call = tokio::spawn(async move {
        let mut c = c;
        c.generate(chat_request("internal", 8)).await.map(|_| ())
    });
    // the reservation is made and the provider has the request; then the caller goes away
    let seen = mock.state.clone();
    wait_for(
        "the provider to receive the call",
        Duration::from_secs(10),
        || {
            let n = seen.requests().len();
            async move { n == 1 }
        },
    )
    .await;
    call.abort();
    let mut c = client(&g);
    wait_for(
        "the abandoned call to be settled and audited",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                audit_records(&mut c)
                    .await
                    .iter()
                    .any(|r| r.kind == "external_call" && r.outcome.starts_with("cancelled"))
            }
        },
    )
    .await;
    let spend = spend_entries(&mut c).await;
    assert!(
        spend.iter().all(|e| e.reserved_usd == 0.0) && spend.iter().any(|e| e.spent_usd > 0.0),
        "still reserved: {spend:?}"
    );
    g.stop().await;
}

/// A cascade route over two tiny LMs (`small`, then `large`) with the mock as its hosted
/// step: `threshold: 0.0` is a confidence no answer reaches (every log-probability is below
/// 0), `-1000` one every answer does.
async fn cascade_fleet(
    threshold: f32,
    mock: &MockProvider,
) -> (Gateway, TestAgent, tempfile::TempDir) {
    let policy = format!(
        "default_data_class: internal\nroutes:\n  - name: short\n    match: {{tasks: [generate]}}\n    adequacy:\n      estimator: cascade\n      signal: mean_logprob\n      threshold: {threshold}\n      max_tokens: 8\n    external:\n      allowed: true\n      provider: openai\n      model: gpt-x\n      data_classes: [public, internal]\n      when: [no_adequate_local, no_local_capacity]\n      daily_budget_usd: 1.0\n"
    );
    let (g, p) = gateway(
        &policy,
        vec![provider("openai", Kind::OpenAi, mock, 1.0)],
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    model_as(dir.path(), "tiny-lm-q4", "small", 100_000, 0.2);
    model_as(dir.path(), "tiny-lm-q4", "large", 200_000, 0.2);
    let (mut cfg, state) = config(dir.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    let a = TestAgent::start(cfg, state).await;
    std::mem::forget(dir);
    wait_fleet(&client(&g), "the gateway sees both models ready", |s| {
        s.nodes.iter().any(|n| {
            n.live
                && n.models.len() == 2
                && n.models
                    .iter()
                    .all(|m| m.state == pb::ModelState::Ready as i32)
        })
    })
    .await;
    (g, a, p)
}

fn steps(d: &pb::Decision) -> Vec<(String, String)> {
    d.cascade
        .iter()
        .map(|s| {
            let model = s
                .candidate
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (
                model,
                s.outcome.split(':').next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_cascade_escalates_only_while_not_confident_and_confidential_data_stays() {
    let mock = MockProvider::start(KEY).await;

    // confident at once: the smallest answers, one step, nothing hosted (a choice, so the
    // random-weight model's answer ends by itself rather than at max_tokens)
    let (g, a, _p) = cascade_fleet(-1000.0, &mock).await;
    let mut r = chat_request("internal", 4);
    if let Some(g) = r.get_mut().request.as_mut() {
        g.constraint = Some(pb::Constraint {
            kind: Some(pb::constraint::Kind::Choice(pb::Choice {
                options: vec!["yes".into(), "no".into()],
            })),
        });
    }
    let (d, text, done) = generate(&g, r).await.unwrap();
    assert_eq!(steps(&d), [("small".into(), "kept".into())]);
    assert!(text == "yes" || text == "no", "{text:?}");
    assert!(done.confidence.is_some(), "{text:?} {done:?}");
    let c = d.cascade[0].confidence.unwrap();
    assert!(
        c.mean_logprob <= 0.0 && c.min_logprob <= c.p10_logprob && c.tokens >= 1,
        "{c:?}"
    );
    // a long answer is judged by its first 8 tokens (the route's bound) and, kept, streams
    // on from the same generation: 64 tokens in all, sent as they come
    let (d, chunks, done) = generate_chunks(&g, long_request("internal")).await.unwrap();
    assert_eq!(steps(&d), [("small".into(), "kept".into())]);
    assert_eq!(d.cascade[0].confidence.map(|c| c.tokens), Some(8), "{d:?}");
    assert_eq!(
        done.usage.map(|u| u.completion_tokens),
        Some(64),
        "{done:?}"
    );
    assert!(chunks > 2, "held then streamed: {chunks} chunks");
    // an answer cut at max_tokens is never kept, however confident: both rungs are cut, so
    // the hosted model answers
    let (d, _, _) = generate(&g, chat_request("internal", 4)).await.unwrap();
    assert_eq!(
        d.cascade
            .iter()
            .map(|s| s.outcome.as_str())
            .collect::<Vec<_>>(),
        [
            "escalated: cut at max_tokens",
            "escalated: cut at max_tokens"
        ],
        "{d:?}"
    );
    assert!(
        matches!(d.target, Some(pb::decision::Target::External(_))),
        "{d:?}"
    );
    let hosted_before = mock.state.requests().len();
    a.stop().await;
    drop(g);

    // never confident: small, then large, then the hosted model, which answers once
    let (g, a, _p) = cascade_fleet(0.0, &mock).await;
    let (d, text, _) = generate(&g, chat_request("internal", 4)).await.unwrap();
    assert_eq!(
        steps(&d),
        [
            ("small".into(), "escalated".into()),
            ("large".into(), "escalated".into())
        ]
    );
    assert!(
        matches!(d.target, Some(pb::decision::Target::External(_))),
        "{d:?}"
    );
    assert!(!text.is_empty());
    assert_eq!(mock.state.requests().len(), hosted_before + 1);

    // a long answer not confident at its start: each rung judged by its first 8 tokens,
    // then hosted (which cannot ignore end-of-sequence: a plain 64-token request)
    let (d, _, _) = generate_chunks(&g, chat_request("internal", 64))
        .await
        .unwrap();
    assert_eq!(
        steps(&d),
        [
            ("small".into(), "escalated".into()),
            ("large".into(), "escalated".into())
        ],
        "{:?}",
        d.cascade
    );
    assert_eq!(mock.state.requests().len(), hosted_before + 2);
    // confidential and long: the larger model's begun answer is kept and streams on
    let (d, _, done) = generate_chunks(&g, long_request("confidential"))
        .await
        .unwrap();
    assert_eq!(
        steps(&d),
        [
            ("small".into(), "escalated".into()),
            ("large".into(), "kept below the threshold".into())
        ]
    );
    assert_eq!(
        done.usage.map(|u| u.completion_tokens),
        Some(64),
        "{done:?}"
    );
    let hosted_before = hosted_before + 1;

    // confidential: the hosted step is forbidden, so the largest local answer stands
    let (d, text, _) = generate(&g, chat_request("confidential", 4)).await.unwrap();
    assert_eq!(
        steps(&d),
        [
            ("small".into(), "escalated".into()),
            ("large".into(), "kept below the threshold".into())
        ]
    );
    assert!(
        d.cascade[1].outcome.contains("confidential"),
        "{:?}",
        d.cascade[1]
    );
    match &d.target {
        Some(pb::decision::Target::Local(t)) => assert_eq!(t.model, "large"),
        other => panic!("{other:?} {text:?}"),
    }
    assert_eq!(
        mock.state.requests().len(),
        hosted_before + 1,
        "nothing confidential reached the provider"
    );

    // the hosted step fails (its reservation cannot be made durable while the store is held):
    // the answer in hand is returned, and the decision says why it was kept
    let held = g.state.store.hold_writer();
    let (d, text, _) = generate(&g, chat_request("internal", 4)).await.unwrap();
    drop(held);
    assert_eq!(
        steps(&d),
        [
            ("small".into(), "escalated".into()),
            ("large".into(), "kept below the threshold".into())
        ]
    );
    assert!(
        d.cascade[1].outcome.contains("escalating failed")
            && d.cascade[1].outcome.contains("the gateway's store"),
        "{:?}",
        d.cascade[1]
    );
    assert!(!text.is_empty());
    match &d.target {
        Some(pb::decision::Target::Local(t)) => assert_eq!(t.model, "large"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        mock.state.requests().len(),
        hosted_before + 1,
        "no hosted call was made"
    );
    a.stop().await;
}

#[tokio::test]
async fn ignore_eos_routed_to_a_hosted_api_is_refused_before_any_reservation() {
    let mock = MockProvider::start(KEY).await;
    let (g, _p) = gateway(
        &policy("openai", "gpt-4o-mini", 5.0),
        vec![provider("openai", Kind::OpenAi, &mock, 1.0)],
        None,
    )
    .await;
    let mut r = chat_request("internal", 32);
    if let Some(req) = r.get_mut().request.as_mut() {
        req.ignore_eos = true;
    }
    let err = generate(&g, r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("request.ignore_eos"),
        "{}",
        err.message()
    );
    // no call, nothing reserved or charged, and no audit record of a call that never happened
    assert!(mock.state.requests().is_empty());
    assert!(spend_entries(&mut client(&g)).await.is_empty());
    assert!(audit_records(&mut client(&g)).await.is_empty());
}
