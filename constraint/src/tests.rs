//! Constraints over a byte vocabulary (token i is byte i, and 256 is end-of-sequence): what a
//! guide allows, and the errors that name what is wrong.

use super::*;
use pb::constraint::Kind;

fn c(kind: Kind) -> pb::Constraint {
    pb::Constraint { kind: Some(kind) }
}

fn bytes() -> Vocabulary {
    let tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut tokens = tokens;
    tokens.push(b"\xff<eos>".to_vec());
    let tokenize: Tokenize = Arc::new(|s: &[u8]| s.iter().map(|&b| u32::from(b)).collect());
    let trie = TokTrie::from(&TokRxInfo::new(257, 256), &tokens);
    match Vocabulary::new(Arc::new(ModelTokens { trie, tokenize })) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

const EOS: u32 = 256;

/// Greedy under the guide, with `prefer` ranking the allowed tokens: the output and whether
/// it completed within `max` tokens.
fn run(g: &mut Guide, prefer: &dyn Fn(u32) -> f32, max: usize) -> (String, bool) {
    let mut out = Vec::new();
    for _ in 0..max {
        let allowed = match g.allowed() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let mut logits: Vec<f32> = (0..257).map(prefer).collect();
        apply(&allowed, &mut logits);
        let best = (0..257u32)
            .max_by(|&a, &b| logits[a as usize].total_cmp(&logits[b as usize]))
            .unwrap_or(0);
        assert!(logits[best as usize].is_finite(), "nothing allowed");
        if best == EOS {
            return (String::from_utf8_lossy(&out).into_owned(), true);
        }
        g.accept(best).unwrap_or_else(|e| panic!("{e}"));
        out.push(best as u8);
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

#[test]
fn a_choice_yields_exactly_one_option_whatever_the_model_prefers() {
    let v = bytes();
    let choice = c(Kind::Choice(pb::Choice {
        options: vec!["yes".into(), "no".into(), "maybe (a|b)".into()],
    }));
    // a model that prefers 'z', then end-of-sequence, then anything
    let prefer = |t: u32| match t {
        122 => 3.0,
        EOS => 2.0,
        _ => (t % 7) as f32 / 10.0,
    };
    let mut g = v.compile(&choice).unwrap_or_else(|e| panic!("{e}"));
    let (out, done) = run(&mut g, &prefer, 32);
    assert!(done);
    assert!(
        ["yes", "no", "maybe (a|b)"].contains(&out.as_str()),
        "{out}"
    );
}

#[test]
fn a_schema_output_parses_and_validates() {
    let v = bytes();
    let schema = r#"{"type":"object","properties":{"name":{"type":"string","maxLength":8},
        "age":{"type":"integer","minimum":0,"maximum":150},"tags":{"type":"array",
        "items":{"enum":["a","b"]},"maxItems":3}},"required":["name","age","tags"],
        "additionalProperties":false}"#;
    let mut g = v
        .compile(&c(Kind::JsonSchema(schema.into())))
        .unwrap_or_else(|e| panic!("{e}"));
    // a model that loves digits and 'x' and never wants to stop
    let prefer = |t: u32| match t {
        48..=57 => 2.0,
        120 => 1.5,
        EOS => -5.0,
        _ => (t % 13) as f32 / 20.0,
    };
    let (out, done) = run(&mut g, &prefer, 200);
    assert!(done, "{out}");
    let value: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let o = value.as_object().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(o.len(), 3, "{out}");
    assert!(o["name"].as_str().is_some_and(|s| s.chars().count() <= 8));
    assert!(
        o["age"].as_i64().is_some_and(|a| (0..=150).contains(&a)),
        "{out}"
    );
    assert!(o["tags"].as_array().is_some_and(|t| t.len() <= 3));
    // compact: no free whitespace
    assert!(!out.contains('\n') && !out.contains("  "), "{out}");
}

#[test]
fn a_regex_bounds_the_output_and_an_unfinished_one_is_not_complete() {
    let v = bytes();
    let mut g = v
        .compile(&c(Kind::Regex(r"[0-9]{3}-[0-9]{4}".into())))
        .unwrap_or_else(|e| panic!("{e}"));
    let (out, done) = run(&mut g, &|t| f32::from(t == 120), 4);
    assert!(!done);
    assert_eq!(out.len(), 4);
    assert!(!g.complete(), "four characters of eight are not a match");
    let (rest, done) = run(&mut g, &|t| f32::from(t == 120), 10);
    assert!(done);
    assert!(
        regex_syntax::Parser::new()
            .parse(r"[0-9]{3}-[0-9]{4}")
            .is_ok()
    );
    assert_eq!(format!("{out}{rest}").len(), 8);
}

#[test]
fn the_same_constraint_compiles_once() {
    let v = bytes();
    let k = c(Kind::JsonSchema(r#"{"type":"integer"}"#.into()));
    let _ = v.compile(&k);
    let _ = v.compile(&k);
    assert_eq!(v.cache.lock().map(|m| m.len()).unwrap_or(0), 1);
    assert_eq!(key(&k), key(&k.clone()));
    assert_ne!(
        key(&k),
        key(&c(Kind::JsonSchema(r#"{"type":"number"}"#.into())))
    );
}

#[test]
fn bad_constraints_name_the_field_and_what_is_wrong() {
    let err = |k: Kind| {
        check(&c(k))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err(Kind::JsonSchema("{\"type\": \n \"object\"".into()));
    assert!(
        e.starts_with("constraint.json_schema: not JSON (line 2"),
        "{e}"
    );
    let e = err(Kind::JsonSchema(
        r#"{"type":"object","properties":{"not":{"type":"array","uniqueItems":true}}}"#.into(),
    ));
    assert_eq!(
        e,
        "constraint.json_schema: `uniqueItems` at /properties/not is not supported"
    );
    let e = err(Kind::JsonSchema(r#"{"type":"strong"}"#.into()));
    assert!(
        e.contains("constraint.json_schema") && e.contains("strong"),
        "{e}"
    );
    let e = err(Kind::JsonSchema("[1]".into()));
    assert!(e.contains("a schema is a JSON object"), "{e}");
    let e = err(Kind::Regex("(unclosed".into()));
    assert!(e.starts_with("constraint.regex: "), "{e}");
    let e = err(Kind::Choice(pb::Choice { options: vec![] }));
    assert_eq!(e, "constraint.choice: has no options");
    let e = err(Kind::Choice(pb::Choice {
        options: vec!["a".into(), String::new()],
    }));
    assert_eq!(e, "constraint.choice: options[1] is empty");
    let e = err(Kind::Lark("start: undefined_rule".into()));
    assert!(e.starts_with("constraint.lark: "), "{e}");
    let e = err(Kind::JsonObject(false));
    assert!(e.contains("false"), "{e}");
    assert!(check(&pb::Constraint { kind: None }).is_err());
    let big = format!("{{\"enum\": [\"{}\"]}}", "a".repeat(MAX_SOURCE_BYTES));
    assert!(err(Kind::JsonSchema(big)).contains("bytes; at most"));
    assert_eq!(check(&c(Kind::JsonObject(true))), Ok(()));
    assert_eq!(check(&c(Kind::Lark("start: \"a\" | \"b\"".into()))), Ok(()));
}

#[test]
fn apply_masks_word_by_word() {
    let mut allowed = llguidance::toktrie::SimpleVob::alloc(70);
    for t in [0u32, 31, 32, 69] {
        allowed.allow_token(t);
    }
    let row: Vec<f32> = (0..72).map(|i| i as f32).collect();
    let mut logits = row.clone();
    apply(&allowed, &mut logits);
    let kept: Vec<usize> = (0..72).filter(|&i| logits[i].is_finite()).collect();
    assert_eq!(kept, vec![0, 31, 32, 69]);
    let (mut ids, mut values) = (vec![7], vec![7.0]);
    gather(&allowed, &row, &mut ids, &mut values);
    assert_eq!(ids, vec![0, 31, 32, 69]);
    assert_eq!(values, vec![0.0, 31.0, 32.0, 69.0]);
}

proptest::proptest! {
    /// A choice among random strings (regex metacharacters included) always yields one of them.
    #[test]
    fn any_choice_yields_one_of_its_options(
        options in proptest::collection::vec("[a-c.*+?()|\\[\\] ]{1,6}", 1..6),
        seed in 0u32..1000,
    ) {
        let v = bytes();
        let mut g = v.compile(&c(Kind::Choice(pb::Choice { options: options.clone() })))
            .unwrap_or_else(|e| panic!("{e}"));
        let prefer = move |t: u32| ((t.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32;
        let (out, done) = run(&mut g, &prefer, 16);
        proptest::prop_assert!(done);
        proptest::prop_assert!(options.contains(&out), "{out:?} not in {options:?}");
    }
}
