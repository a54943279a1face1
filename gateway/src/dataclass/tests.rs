//! Each detector: a value it must find (in a sentence, the way it reaches a prompt) and
//! values it must not (placeholders, look-alikes).

use std::time::Duration;

use super::*;

fn found(text: &str) -> Vec<&'static str> {
    let f = scan([text], Duration::from_secs(5));
    assert!(!f.incomplete);
    f.detections.iter().map(|d| d.detector).collect()
}

#[test]
fn every_rule_compiles() {
    assert_eq!(ready(), Ok(()));
    let mut ids: Vec<_> = detectors().map(|(id, _)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), RULES.len(), "detector ids are unique");
}

#[test]
fn each_detector_finds_its_kind() {
    // {"alg":"HS256","typ":"JWT"}.{"sub":"1234567890","name":"John Doe"}
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let pem_body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\nNMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ";
    let cases: &[(&str, &str)] = &[
        ("email", "Reach me at jane.doe@acme-corp.io tomorrow."),
        ("phone-e164", "Call +44 20 7946 0321 after five."),
        ("phone-nanp", "Her number is (415) 867-2309."),
        ("phone-cue", "mobile: 07700 963 412"),
        ("payment-card", "Card 4111 1111 1111 1111, exp 12/29."),
        ("iban", "Pay to GB82 WEST 1234 5698 7654 32 by Friday."),
        ("us-ssn", "SSN on file: 536-22-1234."),
        ("us-ssn-cue", "social security number 536221234"),
        (
            "aws-access-key-id",
            "aws_access_key_id = AKIAZ7QRTXW3PLMN4VYB",
        ),
        (
            "aws-secret-access-key",
            "aws_secret_access_key = \"q7Zt/3Xw9LmPv2Rk8Ns4Hj6Bd1Fg5Cy0Ae+Ou9Ti\"",
        ),
        ("gcp-api-key", "key=AIzaSyD8fK3mQ9pL2xR7vT4nW6bJ1cH5gY0zE8s"),
        (
            "github-token",
            "export GH_TOKEN=ghp_4fK9mQ2pL7xR3vT8nW1bJ6cH0gY5zE2sA9dF",
        ),
        ("gitlab-token", "token glpat-x9Kf3mQ2pL7xR3vT8nW1"),
        (
            "npm-token",
            "//registry.npmjs.org/:_authToken=npm_4fK9mQ2pL7xR3vT8nW1bJ6cH0gY5zE2sA9dF",
        ),
        (
            "slack-token",
            "SLACK=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        ),
        (
            "stripe-key",
            "stripe.api_key = 'sk_live_51H8fK3mQ9pL2xR7vT4nW6bJ1cH'",
        ),
        (
            "openai-key",
            "OPENAI_API_KEY=sk-proj-4fK9mQ2pL7xR3vT8nW1bJ6cH0gY5zE2sA9dFq8Xz3Lm0",
        ),
        (
            "anthropic-key",
            "sk-ant-api03-4fK9mQ2pL7xR3vT8nW1bJ6cH0gY5zE2sA9dFq8Xz3Lm0Vt7Rk2Np4fK9mQ2pL7xR3vT8nW1bJ6cH0gY5zE2sA9dF-AAA",
        ),
        ("jwt", jwt),
        (
            "connection-string-password",
            "DATABASE_URL=postgres://app:Xq7pL2mZ9v@db.internal:5432/app",
        ),
        (
            "bearer-token",
            "curl -H 'Authorization: Bearer 4fK9mQ2pL7xR3vT8nW1bJ6cH0gY5zE2s'",
        ),
        ("secret-assignment", "db_password = \"Tr0ub4dor&3x\""),
    ];
    for (id, text) in cases {
        assert!(
            found(text).contains(id),
            "{id} in {text:?}: {:?}",
            found(text)
        );
    }
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{pem_body}\n-----END PRIVATE KEY-----");
    assert!(found(&pem).contains(&"private-key"));
}

#[test]
fn placeholders_and_look_alikes_are_not_found() {
    for text in [
        "Write to user@example.com or admin@service.test.",
        "Call (415) 555-0142, a number reserved for fiction.",
        "Order 4111 1111 1111 1112 shipped.",
        "Build 1234-5678-9012-3456 passed.",
        "Commit 3f2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e fixed it.",
        "Request id 550e8400-e29b-41d4-a716-446655440000 failed.",
        "Released on 2026-12-04T15:00:45Z as v1.13.2.",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "GH_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "password = ${DB_PASSWORD}",
        "password: <your-password>",
        "max_tokens = 256",
        "public_key = ssh-ed25519AAAAC3NzaC1lZDI1NTE5",
        "DATABASE_URL=postgres://user:password@localhost/db",
        "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
        "The tokenizer splits text into tokens: each token is an id.",
        "Genesis 1:1 In the beginning God created the heaven and the earth.",
        "SSN format is 123-45-6789 in the docs.",
    ] {
        assert!(found(text).is_empty(), "{text:?}: {:?}", found(text));
    }
}

#[test]
fn evasions_are_undone_before_the_detectors_run() {
    // full-width digits, zero-width joiners inside a card number, a soft hyphen in an address
    assert!(found("card ４１１１ １１１１ １１１１ １１１１").contains(&"payment-card"));
    assert!(
        found("4111\u{200B}1111\u{200D}1111\u{2060}1111").contains(&"payment-card"),
        "zero-width characters removed"
    );
    assert!(found("jane\u{00AD}.doe@acme-corp.io").contains(&"email"));
    assert!(found("SSN 536 22 1234").contains(&"us-ssn"));
}

#[test]
fn counts_are_per_detector_and_the_text_is_not_kept() {
    let f = scan(
        [
            "a@acme-corp.io and b@acme-corp.io",
            "c@acme-corp.io",
            "nothing here",
        ],
        Duration::from_secs(5),
    );
    assert_eq!(f.detections.len(), 1);
    assert_eq!(
        (f.detections[0].detector, f.detections[0].count),
        ("email", 3)
    );
    assert!(
        !format!("{f:?}").contains("acme"),
        "no matched text in the findings"
    );
}

#[test]
fn a_scan_past_its_bound_is_incomplete() {
    let text = "x".repeat(1 << 16);
    let f = scan([text.as_str(); 64], Duration::ZERO);
    assert!(f.incomplete);
}

#[test]
fn a_long_token_is_found_past_the_usual_reach() {
    // a JWT with a 1.5 KB payload, in the middle of a long text
    let payload = "eyJ".to_string() + &"QWxhZGRpbjpvcGVuIHNlc2FtZQ".repeat(60);
    let jwt = format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    );
    let text = format!(
        "{} id_token: {jwt} {}",
        "filler ".repeat(500),
        "more ".repeat(500)
    );
    assert!(found(&text).contains(&"jwt"), "{:?}", found(&text));
}

proptest::proptest! {
    /// Normalising a stretch at a time gives what normalising the whole text gives.
    #[test]
    fn stretch_normalisation_is_whole_text_normalisation(
        pieces in proptest::collection::vec(proptest::sample::select(vec![
            "a", "e", "1", " ", "-", "\n", "\u{301}", "\u{308}", "\u{327}", "\u{ff11}", "\u{ff21}",
            "\u{200b}", "\u{200d}", "\u{ad}", "\u{fb01}", "\u{2460}", "é", "\u{1100}", "\u{1161}",
            "\u{ac00}", "\u{11a8}", "ß", "\u{3000}", "\u{2126}", "\u{b47}", "\u{b3e}", "x\u{323}\u{302}",
        ]), 0..40)
    ) {
        use unicode_normalization::UnicodeNormalization;
        let text: String = pieces.concat();
        let whole: String = text.nfkc().filter(|c| !INVISIBLE.contains(c)).collect();
        let stretched = normalize(&text);
        proptest::prop_assert_eq!(stretched.as_ref(), whole.as_str());
    }
}

#[test]
fn a_tool_calls_arguments_are_read_decoded() {
    let body = ["R8FNdyzPKoUnaJboPr/ZqnRXRRfbjNW6tF+Hc2GIdRJAL9z35V49SfLra8MiTruC"; 4].join("\n");
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----");
    let said =
        format!("Can you check this for me: db_password = \"Xk3pQ9zLm!123\" — thanks. {pem}");
    let arguments = serde_json::json!({"ticket": said}).to_string();
    assert!(!arguments.contains("KEY-----\n"), "escaped in JSON");
    let decoded = json_strings(&arguments);
    let mut f = found(&decoded);
    f.sort_unstable();
    assert_eq!(f, vec!["private-key", "secret-assignment"], "{decoded}");
    assert_eq!(json_strings("not json"), "");
    // among the conversation's other parts, as the generate handler passes them
    let parts = [
        "Look the ticket up.",
        "",
        "no such ticket",
        arguments.as_str(),
        decoded.as_str(),
    ];
    let all = scan(parts, Duration::from_secs(5));
    let mut ids: Vec<_> = all.detections.iter().map(|d| d.detector).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, vec!["private-key", "secret-assignment"]);
}
