//! `edgewise eval items` and `eval score`: the rule the manifest quality script asks and scores
//! through (tools/measure_quality.py), run as that script runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn edgewise(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgewise"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn items_are_asked_and_replies_scored_by_the_one_rule() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.jsonl");
    std::fs::write(
        &set,
        "{\"kind\": \"capital\", \"question\": \"What is the capital of France?\", \"answer\": \"Paris\"}\n\
         {\"prompt\": \"Q?\\nA. x\\nB. y\\nC. z\\nD. w\\nAnswer:\", \"answer\": \"B\", \"subject\": \"s\"}\n",
    )
    .unwrap();
    let set = set.to_str().unwrap();
    let (ok, out, err) = edgewise(&["eval", "items", "--set", set], "");
    assert!(ok, "{err}");
    let asks: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(asks[0]["max_tokens"], 12);
    assert!(asks[0]["choice"].is_null());
    assert_eq!(asks[1]["line"], 2);
    assert_eq!(asks[1]["choice"], serde_json::json!(["A", "B", "C", "D"]));
    assert!(
        asks[1]["message"]
            .as_str()
            .unwrap()
            .ends_with("Answer with only the letter (A, B, C or D) of the correct option."),
        "{}",
        asks[1]
    );
    let (ok, out, err) = edgewise(
        &["eval", "score", "--set", set],
        "{\"line\": 1, \"reply\": \"The capital is Paris.\"}\n{\"line\": 2, \"reply\": \"C\"}\n{\"line\": 2, \"reply\": \" B.\"}\n",
    );
    assert!(ok, "{err}");
    let right: Vec<bool> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["correct"]
                .as_bool()
                .unwrap()
        })
        .collect();
    assert_eq!(right, [true, false, true]);
    // a reply to an item the set does not have is named
    let (ok, _, err) = edgewise(
        &["eval", "score", "--set", set],
        "{\"line\": 7, \"reply\": \"x\"}\n",
    );
    assert!(
        !ok && err.contains("stdin:1") && err.contains("no item at line 7"),
        "{err}"
    );
}
