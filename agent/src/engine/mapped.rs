//! Mapped copies: a model's optimized graph saved with its prepacked weights in an external
//! data file that ONNX Runtime memory-maps when it loads it.
//!
//! Creating a session spends most of its time prepacking the 4-bit weights (Qwen2.5 0.5B:
//! ~1.4 s of 1.7 s on two cores) and holds the packed copies on the heap. Saved once, the
//! packed weights load by mapping a file: the session opens in a fraction of the time and
//! the weights are clean file pages the kernel can reclaim under pressure. The copy is
//! specific to the CPU and runtime that made it (ONNX Runtime warns so), so its directory
//! name is a key over the source files, the runtime library and the CPU's flags; another
//! key makes another copy. A copy is written into a temporary directory and renamed into
//! place whole, so a crash never leaves half of one.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

const GRAPH: &str = "model.onnx";
const DATA: &str = "model.data";

/// Where `model`'s copy lives under `root`: a key over what the copy depends on.
pub fn copy_dir(root: &Path, model: &Path, library: &Path) -> PathBuf {
    let mut h = std::hash::DefaultHasher::new();
    for f in [
        model.to_path_buf(),
        model.with_extension("onnx.data"),
        library.to_path_buf(),
    ] {
        f.hash(&mut h);
        if let Ok(m) = std::fs::metadata(&f) {
            m.len().hash(&mut h);
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .hash(&mut h);
        }
    }
    cpu_flags().hash(&mut h);
    let name = model
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("model");
    root.join(format!("{name}-{:016x}", h.finish()))
}

/// The CPU's feature flags (the packed layout depends on them).
fn cpu_flags() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The copy's graph, if a complete copy exists.
pub fn existing(dir: &Path) -> Option<PathBuf> {
    let graph = dir.join(GRAPH);
    (graph.is_file() && dir.join(DATA).is_file()).then_some(graph)
}

/// A fresh temporary directory beside `dir` to write a copy into, and the graph path and
/// data file name the session options take.
pub fn staging(dir: &Path) -> std::io::Result<(PathBuf, PathBuf, &'static str)> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("copy"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let graph = tmp.join(GRAPH);
    Ok((tmp, graph, DATA))
}

/// Makes a written copy visible: both files synced, then the directory renamed into place.
/// A copy with no data file (nothing was large enough to externalize) is dropped: it would
/// load onto the heap like its source.
pub fn publish(tmp: &Path, dir: &Path) -> std::io::Result<bool> {
    if !tmp.join(DATA).is_file() {
        std::fs::remove_dir_all(tmp)?;
        return Ok(false);
    }
    for f in [GRAPH, DATA] {
        std::fs::File::open(tmp.join(f))?.sync_all()?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(tmp, dir)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(true)
}

/// Removes copies of `model` under other keys (older files, another runtime or CPU).
pub fn prune(root: &Path, keep: &Path) {
    let Some(prefix) = keep
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('-'))
        .map(|(p, _)| format!("{p}-"))
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let stale = p != keep
            && p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|rest| {
                    rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit())
                });
        if stale {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Whether two sessions of one model compute the same thing: both run on the same probe
/// input (every dynamic dimension 1, integers 1, floats 0) and every float output must agree
/// within 1e-4 relative. ONNX Runtime 1.31 writes some prepacked 4-bit weights wrongly (a
/// tiny test model's copy gives NaN logits), so a copy is kept only when it passes this.
pub fn same_outputs(
    source: &mut ort::session::Session,
    copy: &mut ort::session::Session,
) -> Result<(), String> {
    use ort::value::{DynValue, Tensor, TensorElementType as T, ValueType};
    let mut feeds: Vec<(String, DynValue)> = Vec::new();
    for input in source.inputs() {
        let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
            return Err(format!("input `{}` is not a tensor", input.name()));
        };
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(1) as usize).collect();
        let n: usize = dims.iter().product();
        let value: DynValue = match ty {
            T::Float32 => Tensor::from_array((dims, vec![0f32; n])).map(Into::into),
            T::Int64 => Tensor::from_array((dims, vec![1i64; n])).map(Into::into),
            T::Int32 => Tensor::from_array((dims, vec![1i32; n])).map(Into::into),
            other => return Err(format!("input `{}` is {other:?}", input.name())),
        }
        .map_err(|e| e.to_string())?;
        feeds.push((input.name().to_string(), value));
    }
    let run = |s: &mut ort::session::Session| -> Result<Vec<(String, Vec<f32>)>, String> {
        let inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = feeds
            .iter()
            .map(|(n, v)| (n.clone(), v.view().into()))
            .collect();
        let out = s.run(inputs).map_err(|e| e.to_string())?;
        Ok(out
            .iter()
            .filter_map(|(name, v)| {
                let (_, data) = v.try_extract_tensor::<f32>().ok()?;
                Some((name.to_string(), data.to_vec()))
            })
            .collect())
    };
    let (want, got) = (run(source)?, run(copy)?);
    if want.len() != got.len() {
        return Err(format!("{} outputs, the copy {}", want.len(), got.len()));
    }
    for ((name, a), (_, b)) in want.iter().zip(&got) {
        let agree =
            |x: f32, y: f32| (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-4 * (1.0 + x.abs());
        let off = a.iter().zip(b).find(|&(&x, &y)| !agree(x, y));
        if let Some((x, y)) = off {
            return Err(format!(
                "output `{name}`: {x} from the source, {y} from the copy"
            ));
        }
    }
    Ok(())
}

/// A copy that failed `same_outputs` leaves this marker, so it is not written again.
pub fn refused_marker(dir: &Path) -> PathBuf {
    dir.with_extension("refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_keyed_by_its_sources_and_published_whole() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let model_dir = d.path().join("m");
        std::fs::create_dir_all(&model_dir)?;
        let model = model_dir.join("model.onnx");
        std::fs::write(&model, b"graph")?;
        let lib = d.path().join("libonnxruntime.so");
        std::fs::write(&lib, b"lib")?;
        let root = d.path().join("mapped");
        let a = copy_dir(&root, &model, &lib);
        assert_eq!(copy_dir(&root, &model, &lib), a);
        std::fs::write(&model, b"another graph")?;
        let b = copy_dir(&root, &model, &lib);
        assert_ne!(a, b);
        // a copy without a data file is not kept; one with both files appears whole
        let (tmp, graph, data) = staging(&b)?;
        std::fs::write(&graph, b"g")?;
        assert!(!publish(&tmp, &b)?);
        assert!(existing(&b).is_none() && !tmp.exists());
        let (tmp, graph, data2) = staging(&b)?;
        assert_eq!(data, data2);
        std::fs::write(&graph, b"g")?;
        std::fs::write(tmp.join(data), b"d")?;
        assert!(publish(&tmp, &b)?);
        assert_eq!(existing(&b), Some(b.join("model.onnx")));
        // the copy under the old key goes
        std::fs::create_dir_all(&a)?;
        prune(&root, &b);
        assert!(!a.exists() && b.exists());
        Ok(())
    }
}
