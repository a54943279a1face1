//! `edgewise-agent models import`: a user's llama or qwen2 GGUF file → a model folder.
//!
//! The conversion is the project's Python converter (`tools/import_gguf.py`, the same code
//! `make models` prepares the shipped models with), run in the project's virtualenv. This
//! module finds both, runs the converter with the terminal as its output (its progress bar),
//! and then loads the new folder as `models check` does, so an import that the agent could
//! not serve is removed and reported instead of left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the converter and its Python live.
#[derive(Debug, Clone)]
pub struct Converter {
    pub python: PathBuf,
    pub script: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "cannot find the model converter (tools/import_gguf.py) above {0} or the executable; pass --tools-dir (a checkout's tools/)"
    )]
    NoTools(String),
    #[error(
        "the converter's virtualenv is missing ({0}); create it with `make models` or `bash tools/fetch_models.sh --venv-only` in the checkout, or pass --python"
    )]
    NoPython(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The converter refused the file (its message is already on stderr).
    #[error("refused")]
    Refused,
    #[error("the converter failed (exit status {0})")]
    Failed(i32),
}

fn ancestors_with_tools(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join("tools/import_gguf.py").is_file())
        .map(Path::to_path_buf)
}

impl Converter {
    /// `tools_dir` and `python` as given, else found from the working directory or the
    /// executable's location (a checkout's `tools/` and `build/venv`).
    pub fn locate(tools_dir: Option<&Path>, python: Option<&Path>) -> Result<Self, ImportError> {
        let root = match tools_dir {
            Some(t) => t.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => {
                let cwd = std::env::current_dir()?;
                let exe = std::env::current_exe().ok();
                ancestors_with_tools(&cwd)
                    .or_else(|| exe.as_deref().and_then(ancestors_with_tools))
                    .ok_or_else(|| ImportError::NoTools(cwd.display().to_string()))?
            }
        };
        let script = tools_dir
            .map_or_else(|| root.join("tools"), Path::to_path_buf)
            .join("import_gguf.py");
        if !script.is_file() {
            return Err(ImportError::NoTools(script.display().to_string()));
        }
        let python = python.map_or_else(|| root.join("build/venv/bin/python"), Path::to_path_buf);
        if !python.is_file() {
            return Err(ImportError::NoPython(python.display().to_string()));
        }
        Ok(Self { python, script })
    }

    /// Runs the converter (its output goes to the terminal).
    pub fn run(
        &self,
        gguf: &Path,
        models_dir: &Path,
        name: Option<&str>,
        quant: &str,
    ) -> Result<(), ImportError> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .arg(gguf)
            .arg("--models-dir")
            .arg(models_dir)
            .args(["--quant", quant]);
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        let status = cmd.status()?;
        match status.code() {
            Some(0) => Ok(()),
            Some(2) => Err(ImportError::Refused),
            other => Err(ImportError::Failed(other.unwrap_or(-1))),
        }
    }
}

/// The folder name the converter picks when none is given (mirrors `import_gguf.py`).
pub fn default_name(gguf: &Path, quant: &str) -> String {
    let stem = gguf
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".gguf").unwrap_or(&stem).to_string();
    let mut out = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    format!("{}-{quant}", out.trim_matches('-'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_names_follow_the_file() {
        let n = super::default_name(
            std::path::Path::new("/x/Qwen2.5-Coder_0.5B.Q4_K_M.gguf"),
            "q4",
        );
        assert_eq!(n, "qwen2.5-coder-0.5b.q4-k-m-q4");
    }
}
