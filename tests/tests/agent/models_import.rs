//! `edgewise-agent models import`: a GGUF file becomes a folder the agent serves; an
//! unsupported architecture or a truncated file is refused with the reason and leaves nothing.

use edgewise_tests::harness as common;

use std::path::Path;
use std::process::Command;

use common::*;

fn import(gguf: &Path, models: &Path, name: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(agent_bin());
    cmd.current_dir(repo_root())
        .args(["--config", "/nonexistent/agent.toml", "models", "import"])
        .arg(gguf)
        .arg("--models-dir")
        .arg(models);
    if let Some(n) = name {
        cmd.args(["--name", n]);
    }
    cmd.output().unwrap()
}

/// Nothing but the folders named: no temporary `.import-*` left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn an_imported_gguf_is_served_and_bad_files_are_refused_cleanly() {
    let gguf = repo_root().join("tests/fixtures/gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = import(&gguf.join("tiny-qwen2.gguf"), dir.path(), Some("my-qwen"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("qwen2, 2 layers, q4") && stdout.contains("my-qwen"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("100% (2/2 layers)"));
    // the same converter wrote the committed fixture from the same file
    let folder = dir.path().join("my-qwen");
    assert_eq!(
        std::fs::read(folder.join("model.onnx")).unwrap(),
        std::fs::read(fixtures().join("tiny-qwen2-q4/model.onnx")).unwrap()
    );
    let manifest = std::fs::read_to_string(folder.join("model.toml")).unwrap();
    for want in [
        "name = \"my-qwen\"",
        "interface = \"fused-gqa\"",
        "eos_token_ids = [260, 258]",
        "message = \"<|im_start|>{role}\\n{content}<|im_end|>\\n\"",
        "context_length = 512",
    ] {
        assert!(manifest.contains(want), "{want} not in\n{manifest}");
    }

    // an agent serves it: a chat generation through the template
    let (cfg, state) = config(dir.path(), None);
    let mut a = TestAgent::start(cfg, state).await;
    let req = chat("my-qwen", "the", 8);
    let (_, done) = collect(&mut a.client, req).await.unwrap();
    assert!(done.usage.unwrap().completion_tokens > 0);
    a.stop().await;

    // another architecture: refused, naming what was found and what is supported
    let out = import(&gguf.join("tiny-gemma3.gguf"), dir.path(), None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("architecture 'gemma3' is not supported (supported: llama, qwen2)"),
        "{err}"
    );
    // a truncated file: refused before anything is written
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(gguf.join("tiny-qwen2.gguf")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = import(&cut, dir.path(), Some("cut"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated or corrupt"), "{err}");
    // an existing folder is never overwritten
    let out = import(&gguf.join("tiny-qwen2.gguf"), dir.path(), Some("my-qwen"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(entries(dir.path()), ["cut.gguf", "my-qwen"]);
}
