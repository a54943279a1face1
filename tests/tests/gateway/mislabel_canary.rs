//! The mislabel canary: requests declared `public` that carry an identifier or a secret —
//! in a system prompt, a user turn, an earlier assistant turn, a tool's result, a tool
//! call's arguments or an embedding input; in
//! prose, JSON, YAML, code or an env file; with full-width digits, zero-width joiners or
//! spaced digits — sent to a real gateway process whose only way to serve them is a hosted
//! provider that may see public data alone. The provider (the TLS mock) must receive none of
//! them; each refusal is audited with the detectors that raised the class; nothing matched
//! appears in the gateway's log (at debug) or its metrics. The negative control: the same
//! templates holding placeholders do reach the provider, so blocking everything fails.

use edgewise_tests::harness as common;

use common::*;

use edgewise_proto as pb;
use edgewise_tests::mock_provider::MockProvider;
use futures::StreamExt;
use tonic::Code;

const KEY: &str = "sk-test-canary-0123456789";

/// A fixed-seed generator (xorshift64*): the same values every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn from(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
            .collect()
    }
    fn alnum(&mut self, n: usize) -> String {
        self.from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            n,
        )
    }
}

fn luhn_complete(body: &str) -> String {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn iban(country: &str, bban: &str) -> String {
    let rearranged = format!("{bban}{country}00");
    let mut rem = 0u64;
    for c in rearranged.chars() {
        let v = c.to_digit(36).unwrap() as u64;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    format!("{country}{:02}{bban}", 98 - rem)
}

fn b64url(rng: &mut Rng, n: usize) -> String {
    rng.from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        n,
    )
}

/// One value of kind `k` (a real-looking one), with the detector that must name it.
fn value(k: usize, rng: &mut Rng) -> (String, &'static str) {
    match k {
        0 => (
            format!(
                "{}.{}@northwind-{}.io",
                rng.alnum(5),
                rng.alnum(4),
                rng.below(90)
            ),
            "email",
        ),
        1 => (format!("+44 20 7946 {}", rng.digits(4)), "phone-e164"),
        2 => (
            format!("(415) 8{}-{}", rng.digits(2), rng.digits(4)),
            "phone-nanp",
        ),
        3 => {
            let n = luhn_complete(&format!("4{}", rng.digits(14)));
            (
                format!("{} {} {} {}", &n[..4], &n[4..8], &n[8..12], &n[12..]),
                "payment-card",
            )
        }
        4 => {
            let i = iban("DE", &rng.digits(18));
            let spaced: Vec<String> = i
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            (spaced.join(" "), "iban")
        }
        5 => (
            format!(
                "{:03}-{:02}-{:04}",
                1 + rng.below(600),
                1 + rng.below(98),
                1 + rng.below(9998)
            ),
            "us-ssn",
        ),
        6 => (
            format!("AKIA{}", rng.from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
            "aws-access-key-id",
        ),
        7 => (format!("ghp_{}", rng.alnum(36)), "github-token"),
        8 => (format!("sk-proj-{}", rng.alnum(48)), "openai-key"),
        9 => (
            format!(
                "xoxb-{}-{}-{}",
                rng.digits(12),
                rng.digits(13),
                rng.alnum(24)
            ),
            "slack-token",
        ),
        10 => (format!("sk_live_{}", rng.alnum(28)), "stripe-key"),
        // {"alg":"HS256","typ":"JWT"}
        11 => (
            format!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}",
                b64url(rng, 40),
                b64url(rng, 43)
            ),
            "jwt",
        ),
        12 => (
            format!(
                "postgres://app:{}{}@db{}.internal:5432/orders",
                rng.alnum(10),
                rng.digits(2),
                rng.below(9)
            ),
            "connection-string-password",
        ),
        13 => (
            format!("Authorization: Bearer {}", rng.alnum(40)),
            "bearer-token",
        ),
        14 => (
            format!("db_password = \"{}!{}\"", rng.alnum(9), rng.digits(3)),
            "secret-assignment",
        ),
        _ => {
            let body: Vec<String> = (0..4)
                .map(|_| {
                    rng.from(
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                        64,
                    )
                })
                .collect();
            (
                format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
                    body.join("\n")
                ),
                "private-key",
            )
        }
    }
}

const KINDS: usize = 16;
/// System, user, an earlier assistant turn, a tool's result, a tool call's arguments, an
/// embedding input.
const PLACEMENTS: usize = 6;

/// Placeholders in the same places: what documentation and tests write, never a real value.
fn placeholder(k: usize) -> &'static str {
    [
        "someone@example.com",
        "+1 555 0100",
        "(415) 555-0142",
        "4111 1111 1111 1112",
        "GB00 XXXX 0000 0000 0000 00",
        "123-45-6789",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "sk-proj-<your-key>",
        "xoxb-<token>",
        "sk_live_<key>",
        "<jwt>",
        "postgres://user:password@localhost:5432/db",
        "Authorization: Bearer <token>",
        "db_password = ${DB_PASSWORD}",
        "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
    ][k]
}

/// The value as an evasive caller would write it.
fn evade(v: &str, how: u64) -> String {
    match how {
        // full-width digits
        1 => v
            .chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from_u32(0xFF10 + d).unwrap_or(c),
                None => c,
            })
            .collect(),
        // a zero-width joiner every fourth character
        2 => v
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                if i % 4 == 3 {
                    vec![c, '\u{200D}']
                } else {
                    vec![c]
                }
            })
            .collect(),
        _ => v.to_string(),
    }
}

fn wrap(v: &str, format: usize) -> String {
    match format {
        0 => format!("Can you check this for me: {v} — thanks."),
        1 => format!("{{\"customer\": {{\"note\": \"{v}\", \"tier\": 2}}}}"),
        2 => format!("customer:\n  note: {v}\n  tier: 2\n"),
        3 => format!("const NOTE = `{v}`;\nconsole.log(NOTE.length);"),
        _ => format!("# settings\nNOTE={v}\nDEBUG=false\n"),
    }
}

fn chat(messages: &[(&str, String)]) -> tonic::Request<pb::GatewayGenerateRequest> {
    with_messages(
        messages
            .iter()
            .map(|(role, content)| pb::ChatMessage {
                role: role.to_string(),
                content: content.clone(),
                ..Default::default()
            })
            .collect(),
    )
}

/// A conversation that used a tool: the value in the call's arguments (`in_call`) or in
/// the tool's result.
fn tool_turns(text: &str, in_call: bool) -> tonic::Request<pb::GatewayGenerateRequest> {
    let arguments = serde_json::json!({"ticket": if in_call { text } else { "T-1" }}).to_string();
    let result = if in_call { "no such ticket" } else { text };
    with_messages(vec![
        pb::ChatMessage {
            role: "user".into(),
            content: "Look the ticket up and summarise it.".into(),
            ..Default::default()
        },
        pb::ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![pb::ToolCall {
                id: "call_1".into(),
                name: "lookup".into(),
                arguments,
            }],
            ..Default::default()
        },
        pb::ChatMessage {
            role: "tool".into(),
            content: result.into(),
            tool_call_id: "call_1".into(),
            ..Default::default()
        },
    ])
}

fn with_messages(messages: Vec<pb::ChatMessage>) -> tonic::Request<pb::GatewayGenerateRequest> {
    let mut r = tonic::Request::new(pb::GatewayGenerateRequest {
        request: Some(pb::GenerateRequest {
            input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
                messages,
            })),
            max_tokens: 16,
            ..Default::default()
        }),
        routing: Some(pb::RoutingHints {
            data_class: "public".into(),
            ..Default::default()
        }),
    });
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    r
}

/// Sends `text` placed as `placement`: Ok when the gateway served it (from the provider).
async fn send(c: &mut GatewayClient, text: &str, placement: usize) -> Result<(), tonic::Status> {
    let filler = "Summarise the ticket below in one line.".to_string();
    match placement {
        0 => drain(c, chat(&[("system", text.into()), ("user", filler)])).await,
        1 => drain(c, chat(&[("user", text.into())])).await,
        2 => {
            drain(
                c,
                chat(&[
                    ("user", "What did I send you earlier?".into()),
                    ("assistant", text.into()),
                    ("user", filler),
                ]),
            )
            .await
        }
        4 => drain(c, tool_turns(text, false)).await,
        5 => drain(c, tool_turns(text, true)).await,
        _ => {
            let mut r = tonic::Request::new(pb::GatewayEmbedRequest {
                request: Some(pb::EmbedRequest {
                    model: String::new(),
                    texts: vec!["a harmless sentence".into(), text.into()],
                    ..Default::default()
                }),
                routing: Some(pb::RoutingHints {
                    data_class: "public".into(),
                    ..Default::default()
                }),
            });
            r.metadata_mut()
                .insert("x-edgewise-tenant", "shop".parse().unwrap());
            c.embed(r).await.map(drop)
        }
    }
}

const POLICY: &str = "default_data_class: internal
routes:
  - name: embed
    match: {tasks: [embed]}
    space: hosted-space
    external: {allowed: true, provider: openai, model: text-embedding-3-small, space: hosted-space, data_classes: [public], when: [no_adequate_local], daily_budget_usd: 1000}
  - name: chat
    match: {tasks: [generate]}
    min_quality: 0.5
    external: {allowed: true, provider: openai, model: gpt-4o-mini, data_classes: [public], when: [no_adequate_local, no_local_capacity], daily_budget_usd: 1000}
";

// multi-threaded: the blocking stop at the end must not starve the client's connection
// tasks, whose close the gateway's drain waits for
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mislabelled_requests_never_reach_the_hosted_provider() {
    let mock = MockProvider::start(KEY).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), POLICY).unwrap();
    let metrics = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nid = \"gw-canary\"\n\n[tls]\nplaintext = true\n\n[policies]\npaths = [\"policies\"]\n\n[state]\ndir = \"state\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n{}",
            mock.provider_toml(0.01, 0.02)
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let bin = agent_bin().with_file_name("edgewise-gateway");
    let (proc, mut notify) = daemon(&bin, &config, "debug", Some(&log));
    let mut c = gateway_client(notify.serving_addr());

    // the canary: 480 requests, each one value: every kind in every format at every place
    // (made in order, sent 16 at a time)
    let mut rng = Rng(0x6564_6765_7769_7365);
    let mut sent: Vec<(String, &'static str)> = Vec::new();
    let mut requests = Vec::new();
    for i in 0..KINDS * 5 * PLACEMENTS {
        let kind = i % KINDS;
        let (v, detector) = value(kind, &mut rng);
        let format = (i / KINDS) % 5;
        let placement = (i / (KINDS * 5)) % PLACEMENTS;
        requests.push((
            i,
            detector,
            wrap(&evade(&v, (i as u64 / 3) % 3), format),
            placement,
        ));
        sent.push((v, detector));
    }
    let answers: Vec<_> =
        futures::stream::iter(requests.into_iter().map(|(i, detector, text, placement)| {
            let mut c = c.clone();
            async move { (i, detector, send(&mut c, &text, placement).await) }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    for (i, detector, answer) in answers {
        let status = answer.expect_err(&format!("request {i} ({detector}) was served"));
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "request {i} ({detector}): {status:?}"
        );
        assert!(
            status
                .message()
                .contains("raised by what the request's text holds"),
            "request {i}: {}",
            status.message()
        );
    }
    assert_eq!(
        mock.state.requests().len(),
        0,
        "the provider received a canary"
    );

    // the negative control: the same templates with placeholders are served by the provider;
    // a conversation that used tools never goes to a hosted API (tool calling is local), so
    // there the control is that it is refused for that, not for its data class
    let mut controls = 0;
    for k in 0..KINDS {
        for placement in 0..PLACEMENTS {
            let text = wrap(placeholder(k), (k + placement) % 5);
            let answer = send(&mut c, &text, placement).await;
            if placement == 4 || placement == 5 {
                let s = answer.expect_err("a tool conversation was sent to the hosted API");
                assert!(
                    s.message()
                        .contains("tool calling is served by local models only")
                        && !s.message().contains("raised by"),
                    "placeholder {k} at {placement}: {s:?}"
                );
                continue;
            }
            answer.unwrap_or_else(|s| panic!("placeholder {k} at {placement}: {s:?}"));
            controls += 1;
        }
    }
    assert_eq!(mock.state.requests().len(), controls);

    // the audit names the detectors (and the declared class), never the text
    let audit = audit_records(&mut c).await;
    let (refused, tools_only): (Vec<_>, Vec<_>) = audit
        .iter()
        .filter(|r| r.kind == "refused_fallback")
        .partition(|r| !r.detections.is_empty());
    assert_eq!(refused.len(), sent.len());
    // the tool conversations of the control: refused, and nothing detected in them
    assert_eq!(tools_only.len(), KINDS * 2, "{tools_only:?}");
    for r in &refused {
        assert_eq!(r.declared_data_class, "public", "{r:?}");
        assert!(
            r.data_class == "confidential" || r.data_class == "internal",
            "{r:?}"
        );
        assert!(!r.detections.is_empty(), "{r:?}");
    }
    let named: std::collections::BTreeSet<&str> = refused
        .iter()
        .flat_map(|r| r.detections.iter().map(|d| d.detector.as_str()))
        .collect();
    for (_, detector) in &sent {
        assert!(
            named.contains(detector),
            "no audit record names {detector}: {named:?}"
        );
    }

    // nothing matched is in the log or the metrics
    let scraped = http_get(metrics, "/metrics").await;
    assert!(
        scraped.contains("edgewise_gateway_data_class_detections_total{detector=\"payment-card\"}")
    );
    drop(c); // an open connection would hold the drain
    proc.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("refused"),
        "the log is at debug and has the refusals"
    );
    for (v, detector) in &sent {
        // the distinctive part of the value (a prefix like `sk_live_` is no secret)
        let core: String = v
            .chars()
            .rev()
            .take(10)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        assert!(
            !logged.contains(&core),
            "{detector}'s value is in the gateway log"
        );
        assert!(
            !scraped.contains(&core),
            "{detector}'s value is in the metrics"
        );
        let audit_text = format!("{audit:?}");
        assert!(
            !audit_text.contains(&core),
            "{detector}'s value is in the audit"
        );
    }
}
