//! Entry points for the fuzz targets in `fuzz/` and for replaying their corpora in
//! `make test` (`tests/tests/fleet/fuzz_corpus.rs`). Each takes arbitrary bytes, must never panic,
//! and checks what must hold of whatever it accepts.

use std::path::PathBuf;

use edgewise_proto as pb;
use prost::Message;

use crate::routing::{self, Budgets, FleetSnapshot, RouteRequest, Task};
use crate::validate::{self, Limits};

/// The policy parser and validator; an accepted policy is decided on without a panic.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = crate::policy::parse(&[(PathBuf::from("fuzz.yaml"), text.to_string())]) else {
        return;
    };
    for r in &p.routes {
        assert!(!r.name.is_empty());
        assert!((0.0..=1.0).contains(&r.min_quality), "{}", r.min_quality);
    }
    let _ = crate::policy::confidentiality_report(&p);
    let fleet = FleetSnapshot::default();
    let providers = Default::default();
    let budgets = Budgets::default();
    let inputs = routing::Inputs {
        policy: &p,
        fleet: &fleet,
        providers: &providers,
        budgets: &budgets,
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    for task in [Task::Generate, Task::Embed, Task::Classify] {
        let req = RouteRequest {
            prompt_tokens_max: 20,
            ..RouteRequest::new("fuzz", task, 10, 16)
        };
        // nothing local: every decision is a refusal or an external target
        let d = routing::decide(&inputs, &req, &mut rng);
        assert!(!matches!(d.outcome, Ok(routing::Target::Local { .. })));
    }
}

/// Request validation on decoded messages: the first byte picks the message type.
pub fn request(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_texts: 8,
        max_prompt_tokens: 512,
        max_tokens: 256,
        ..Limits::default()
    };
    let accepted = match kind % 3 {
        0 => pb::GatewayGenerateRequest::decode(bytes)
            .ok()
            .and_then(|m| validate::generate("fuzz".into(), &m, &limits).ok())
            .map(|(messages, r)| {
                assert!(!messages.is_empty() && messages.len() <= limits.max_texts);
                r
            }),
        1 => pb::GatewayEmbedRequest::decode(bytes).ok().and_then(|m| {
            let (model, texts) = m.request.map(|r| (r.model, r.texts)).unwrap_or_default();
            validate::texts(
                "fuzz".into(),
                Task::Embed,
                &model,
                &texts,
                m.routing.as_ref(),
                &limits,
            )
            .ok()
            .inspect(|_| assert!(!texts.is_empty() && texts.len() <= limits.max_texts))
        }),
        _ => pb::ExplainRequest::decode(bytes).ok().and_then(|m| {
            validate::route_request(
                "fuzz".into(),
                Task::Generate,
                m.routing.as_ref(),
                (
                    validate::estimate_tokens(&m.text),
                    validate::max_tokens_of(&m.text),
                ),
                m.max_tokens,
                &limits,
            )
            .ok()
        }),
    };
    if let Some(r) = accepted {
        assert!(r.max_tokens <= limits.max_tokens);
        assert!(r.prompt_tokens <= limits.max_prompt_tokens);
        assert!(r.min_quality.is_none_or(|q| (0.0..=1.0).contains(&q)));
    }
    // the data-class detectors take any text: no panic, and a result within their bound
    let text = String::from_utf8_lossy(bytes);
    // so does the constraint engine, as a schema, a pattern or a grammar: an error or a
    // compiled constraint, never a panic
    {
        use pb::constraint::Kind;
        for kind in [
            Kind::JsonSchema(text.to_string()),
            Kind::Regex(text.to_string()),
            Kind::Lark(text.to_string()),
        ] {
            let _ = edgewise_constraint::check(&pb::Constraint { kind: Some(kind) });
        }
    }
    let f = crate::dataclass::scan([text.as_ref()], std::time::Duration::from_secs(5));
    assert!(
        !f.incomplete,
        "a scan of {} bytes ran out of time",
        bytes.len()
    );
}
