//! `edgewise policy check` as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

fn edgewise() -> Command {
    Command::new(common::agent_bin().with_file_name("edgewise"))
}

#[test]
fn the_default_policy_checks_and_reports_external_paths() {
    let out = edgewise()
        .args(["policy", "check"])
        .arg(common::repo_root().join("policies"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("policy ok: 3 route(s), default data class internal\n"),
        "{text}"
    );
    assert!(
        text.contains("  internal      route `generate` → openai/gpt-4o-mini\n"),
        "{text}"
    );
    assert!(
        text.contains("  confidential  never leaves the box\n"),
        "{text}"
    );
    assert!(
        text.contains("  restricted    never leaves the box\n"),
        "{text}"
    );
}

#[test]
fn a_bad_policy_fails_with_every_problem_located() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: shop\n    min_quality: 2\n    spill: never\n",
    )
    .unwrap();
    let out = edgewise()
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert_eq!(
        err,
        format!(
            "{f}:3:18: routes[0].min_quality: 2 must be in 0..=1\n{f}:4:12: routes[0].spill: `never` is not one of larger, wait, external\npolicy check: 2 problem(s)\n"
        )
    );
}
