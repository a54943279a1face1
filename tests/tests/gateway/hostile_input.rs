//! Hostile or mistaken input is refused early with a reason: oversized messages
//! (RESOURCE_EXHAUSTED, from the length prefix, at the gateway and at the agent), too many
//! texts or messages, too long a prompt, too large a `max_tokens`, malformed sampling settings
//! (INVALID_ARGUMENT), and a tenant over its requests in flight (RESOURCE_EXHAUSTED).

use edgewise_tests::harness as common;

use common::*;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use tonic::{Code, Request};

async fn gateway(limits: edgewise_gateway::validate::Limits) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "routes:\n  - name: all\n    min_quality: 0\n    spill: wait\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = GatewayConfig::new(vec![dir.path().to_path_buf()], "gw-limits");
    config.limits = limits;
    (Gateway::start(config, listener).await.unwrap(), dir)
}

fn shop<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    r
}

fn embed(texts: Vec<String>) -> pb::GatewayEmbedRequest {
    pb::GatewayEmbedRequest {
        request: Some(pb::EmbedRequest {
            model: String::new(),
            texts,
            ..Default::default()
        }),
        routing: None,
    }
}

fn generate(f: impl FnOnce(&mut pb::GenerateRequest)) -> pb::GatewayGenerateRequest {
    let mut r = prompt("", "hello", 16);
    f(&mut r);
    pb::GatewayGenerateRequest {
        request: Some(r),
        routing: None,
    }
}

fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, reason: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(reason), "{}", e.message());
}

#[tokio::test]
async fn the_gateway_refuses_each_limit_with_its_reason() {
    let limits = edgewise_gateway::validate::Limits {
        max_message_bytes: 64 << 10,
        max_texts: 4,
        max_prompt_tokens: 1000,
        max_tokens: 512,
        max_in_flight_per_tenant: 2,
    };
    let (gw, _dir) = gateway(limits).await;
    let mut c = gateway_client(gw.addr);

    // a message over 64 KiB: refused from its length prefix
    let big = "x".repeat(100 << 10);
    refused(
        c.embed(shop(embed(vec![big]))).await,
        Code::ResourceExhausted,
        "this server takes at most 65536 (max_message_bytes)",
    );
    // the connection is still usable afterwards
    refused(
        c.embed(shop(embed(vec!["a".into(); 5]))).await,
        Code::InvalidArgument,
        "5 texts; at most 4 per request (limits.max_texts)",
    );
    refused(
        c.embed(shop(embed(vec![]))).await,
        Code::InvalidArgument,
        "request.texts is empty",
    );
    refused(
        c.generate(shop(generate(|r| r.max_tokens = 513))).await,
        Code::InvalidArgument,
        "limits.max_tokens",
    );
    let long = "word ".repeat(1000);
    refused(
        c.generate(shop(generate(|r| {
            r.input = Some(pb::generate_request::Input::Prompt(long.clone()))
        })))
        .await,
        Code::InvalidArgument,
        "limits.max_prompt_tokens",
    );
    refused(
        c.generate(shop(generate(|r| r.top_p = 7.0))).await,
        Code::InvalidArgument,
        "request.top_p 7 must be in 0..=1",
    );
    let many = pb::ChatMessages {
        messages: vec![
            pb::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            };
            5
        ],
    };
    refused(
        c.generate(shop(generate(|r| {
            r.input = Some(pb::generate_request::Input::Chat(many.clone()))
        })))
        .await,
        Code::InvalidArgument,
        "5 messages; at most 4",
    );

    // a tenant at its requests-in-flight limit (two held here): the next one is refused,
    // other tenants are not affected, and the place frees when a request ends
    let a = gw.state.enter("shop").unwrap();
    let _b = gw.state.enter("shop").unwrap();
    refused(
        c.embed(shop(embed(vec!["a".into()]))).await,
        Code::ResourceExhausted,
        "tenant `shop` already has 2 requests in flight",
    );
    let mut other = Request::new(embed(vec!["a".into()]));
    other
        .metadata_mut()
        .insert("x-edgewise-tenant", "billing".parse().unwrap());
    // (no agent: it gets past the limit to routing, which finds no model)
    refused(c.embed(other).await, Code::FailedPrecondition, "");
    drop(a);
    refused(
        c.embed(shop(embed(vec!["a".into()]))).await,
        Code::FailedPrecondition,
        "",
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_agent_refuses_an_oversized_message_from_its_length_prefix() {
    let models = models_dir(&["tiny-classify"]);
    let (mut c, state) = config(models.path(), None);
    c.max_message_bytes = 8 << 10;
    let agent = TestAgent::start(c, state).await;
    let mut client = agent.client.clone();
    let r = client
        .classify(pb::ClassifyRequest {
            model: "tiny-classify".into(),
            texts: vec!["y".repeat(20 << 10)],
            ..Default::default()
        })
        .await;
    refused(
        r,
        Code::ResourceExhausted,
        "at most 8192 (max_message_bytes)",
    );
    // and serves the next request on the same connection
    let ok = client
        .classify(pb::ClassifyRequest {
            model: "tiny-classify".into(),
            texts: vec!["fine".into()],
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    agent.stop().await;
}
