//! Footprint: binary sizes; the agent's cold start to READY=1 (as systemd sees it) and its
//! idle memory with no models and with one model; against Python creating an onnxruntime
//! session on the same model file (what a user would otherwise run).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::stats::rss_bytes;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder holding edgewise-agent, edgewise-gateway and edgewise.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// One model folder (model.onnx, tokenizer.json, model.toml).
    #[arg(long)]
    model: PathBuf,
    /// A Python with onnxruntime (the reference).
    #[arg(long, default_value = "build/venv/bin/python")]
    python: PathBuf,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Starts the agent on `models` and returns (time to READY=1, RSS after it settles).
fn agent_once(bin: &Path, models: &Path, work: &Path) -> anyhow::Result<(Duration, u64)> {
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[tls]\nplaintext = true\n\n[models]\ndir = \"{}\"\n\n[runtime]\nintra_op_threads = 1\n\n[state]\ndir = \"{}\"\n",
            models.display(),
            work.join("state").display()
        ),
    )?;
    let sock = work.join("notify.sock");
    let _ = std::fs::remove_file(&sock);
    let notify = UnixDatagram::bind(&sock)?;
    notify.set_read_timeout(Some(Duration::from_secs(120)))?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock)
        .env("EDGEWISE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut buf = [0u8; 4096];
    let ready = loop {
        let n = notify.recv(&mut buf)?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break started.elapsed();
        }
    };
    // idle: let start-up allocations settle before reading resident memory
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_bytes(child.id()).unwrap_or(0);
    child.kill()?;
    child.wait()?;
    Ok((ready, rss))
}

/// Python: import onnxruntime, create a session on the model; (time to ready, RSS).
fn python_once(python: &Path, model: &Path) -> anyhow::Result<(Duration, u64)> {
    let script = "import sys, onnxruntime as ort\no = ort.SessionOptions(); o.intra_op_num_threads = 1\nort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\nprint('ready', flush=True)\nsys.stdin.read()\n";
    let started = Instant::now();
    let mut child = Command::new(python)
        .args(["-c", script])
        .arg(model.join("model.onnx"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_bytes(child.id()).unwrap_or(0);
    drop(child.stdin.take());
    child.kill()?;
    child.wait()?;
    Ok((ready, rss))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || footprint(a)).await?
}

fn footprint(a: Args) -> anyhow::Result<()> {
    let mb = |b: u64| b as f64 / 1048576.0;
    let sizes: Vec<(String, serde_json::Value)> =
        ["edgewise-agent", "edgewise-gateway", "edgewise"]
            .iter()
            .map(|b| {
                let len = std::fs::metadata(a.bin_dir.join(b))
                    .map(|m| m.len())
                    .unwrap_or(0);
                (b.to_string(), serde_json::json!(mb(len)))
            })
            .collect();
    let work = std::env::temp_dir().join(format!("edgewise-footprint-{}", std::process::id()));
    let empty = work.join("no-models");
    let one = work.join("one-model");
    std::fs::create_dir_all(&empty)?;
    std::fs::create_dir_all(&one)?;
    let name = a
        .model
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("--model has no folder name"))?;
    let dest = one.join(name);
    std::fs::create_dir_all(&dest)?;
    for f in std::fs::read_dir(&a.model)? {
        let f = f?;
        if f.path().is_file() {
            std::fs::copy(f.path(), dest.join(f.file_name()))?;
        }
    }
    let agent = a.bin_dir.join("edgewise-agent");
    let (mut t0, mut r0, mut t1, mut r1, mut tp, mut rp) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..a.runs {
        let w = work.join(format!("run-{i}"));
        std::fs::create_dir_all(&w)?;
        let (t, r) = agent_once(&agent, &empty, &w)?;
        t0.push(t.as_secs_f64() * 1e3);
        r0.push(mb(r));
        let (t, r) = agent_once(&agent, &one, &w)?;
        t1.push(t.as_secs_f64() * 1e3);
        r1.push(mb(r));
        let (t, r) = python_once(&a.python, &a.model)?;
        tp.push(t.as_secs_f64() * 1e3);
        rp.push(mb(r));
    }
    let _ = std::fs::remove_dir_all(&work);
    let (t1, r1, tp, rp) = (median(t1), median(r1), median(tp), median(rp));
    println!(
        "{}",
        serde_json::json!({
            "bench": "footprint",
            "model": name.to_string_lossy(),
            "binary_mb": sizes.into_iter().collect::<serde_json::Map<_, _>>(),
            "agent_no_models": {"ready_ms": median(t0), "rss_mb": median(r0)},
            "agent_one_model": {"ready_ms": t1, "rss_mb": r1},
            "python_onnxruntime_session": {"ready_ms": tp, "rss_mb": rp},
            "ratio_ready_agent_vs_python": t1 / tp,
            "ratio_rss_agent_vs_python": r1 / rp,
            "runs": a.runs,
        })
    );
    Ok(())
}
