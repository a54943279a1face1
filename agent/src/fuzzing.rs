//! Entry point for the manifest fuzz target in `fuzz/` and for replaying its corpus in
//! `make test` (`tests/tests/fleet/fuzz_corpus.rs`): arbitrary bytes as `model.toml` must never
//! panic, and an accepted manifest is sane.

use std::path::Path;

use crate::models::manifest::Manifest;

pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Manifest::parse(Path::new("model.toml"), text.to_string()) {
        assert!(!m.name.is_empty());
        assert!((0.0..=1.0).contains(&m.quality), "{}", m.quality);
        assert!(m.context_length > 0);
        let _ = m.task();
    }
}
