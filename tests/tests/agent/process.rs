//! The real `edgewise-agent` binary: systemd notifications, SIGTERM drain, kill -9 and state.

use edgewise_tests::harness as common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use edgewise_proto as pb;

fn spawn(config: &Path, notify: &Path) -> Child {
    // as systemd does: WATCHDOG_PID names the service's own pid (`exec` keeps the shell's)
    Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" --config \"$1\"")
        .arg(agent_bin())
        .arg(config)
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "200000")
        .env("EDGEWISE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    poll(Duration::from_secs(30), || {
        let exited = child.try_wait().unwrap();
        async move { exited.ok_or_else(|| "the agent did not exit".to_string()) }
    })
    .await
}

#[tokio::test]
async fn notifies_systemd_survives_kill_9_and_drains_on_sigterm() {
    let gw = FakeGateway::start().await;
    let dir = models_dir(&["tiny-embed", "tiny-lm-fp32"]);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout_ms = 20000\n\n[tls]\nplaintext = true\n\n[models]\ndir = \"{}\"\n\n\
             [runtime]\nintra_op_threads = 1\n\n[report]\ngateways = [\"{}\"]\ninterval_ms = 100\n\n[state]\ndir = \"state\"\n",
            dir.path().display(),
            gw.url
        ),
    )
    .unwrap();

    // 1. start: loading extends the start timeout, then READY=1, then watchdog pings
    let mut notify = Notify::bind(&work.path().join("notify.sock"));
    let mut child = spawn(&config, &work.path().join("notify.sock"));
    notify.wait("EXTEND_TIMEOUT_USEC=");
    notify.wait("READY=1");
    notify.wait("WATCHDOG=1");
    let r = gw
        .wait_report("models ready", |r| {
            r.models
                .iter()
                .all(|m| m.state == pb::ModelState::Ready as i32)
        })
        .await;
    // each model's measured resident cost: something, and together no more than the process
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    for m in &r.models {
        assert!(m.resident_bytes > 0 && m.load_ms >= 1, "{m:?}");
    }
    let resident: u64 = r.models.iter().map(|m| m.resident_bytes).sum();
    assert!(resident < rss_kb * 1024, "{resident} of {rss_kb} KiB");
    let node_id = r.node_id.clone();
    let first_addr = r.advertise_addr.clone();
    let mut client = pb::agent_client::AgentClient::connect(r.advertise_addr.clone())
        .await
        .unwrap();
    for _ in 0..3 {
        client
            .embed(pb::EmbedRequest {
                model: "tiny-embed".into(),
                texts: vec!["hello".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    }
    gw.wait_report("three requests reported", |r| {
        r.models
            .iter()
            .any(|m| m.name == "tiny-embed" && m.requests_total == 3)
    })
    .await;

    // 2. kill -9, restart: same node id, reported counters intact
    child.kill().unwrap();
    child.wait().unwrap();
    drop(notify);
    std::fs::remove_file(work.path().join("notify.sock")).unwrap();
    let mut notify = Notify::bind(&work.path().join("notify.sock"));
    let mut child = spawn(&config, &work.path().join("notify.sock"));
    notify.wait("READY=1");
    let r = gw
        .wait_report("the restarted agent reports (on a new port)", |r| {
            r.advertise_addr != first_addr
        })
        .await;
    assert_eq!(r.node_id, node_id, "the node id survives kill -9");
    let embed = r.models.iter().find(|m| m.name == "tiny-embed").unwrap();
    assert_eq!(
        embed.requests_total, 3,
        "acknowledged counters survive kill -9"
    );

    // 3. SIGHUP applies new limits while serving; an invalid config changes nothing
    let base = std::fs::read_to_string(&config).unwrap();
    let limits = |c: u32, q: u32| {
        format!("{base}\n[models.limits.tiny-lm-fp32]\nmax_concurrency = {c}\nmax_queue = {q}\n")
    };
    let limits_are = |c: u32, q: u32| {
        move |r: &pb::NodeReport| {
            r.models
                .iter()
                .any(|m| m.name == "tiny-lm-fp32" && m.max_concurrency == c && m.max_queue == q)
        }
    };
    std::fs::write(&config, limits(3, 5)).unwrap();
    signal(&child, "-HUP");
    gw.wait_report("new limits after SIGHUP", limits_are(3, 5))
        .await;
    std::fs::write(&config, "[server]\nlisten = 5\n").unwrap();
    signal(&child, "-HUP");
    std::fs::write(&config, limits(2, 5)).unwrap();
    signal(&child, "-HUP");
    // signals are handled in order: the invalid file was read (and refused) before this one
    gw.wait_report(
        "limits after the invalid edit and a valid one",
        limits_are(2, 5),
    )
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP never stops the agent"
    );

    // 4. SIGTERM while a generation streams: it completes, then the agent exits 0
    let mut client = pb::agent_client::AgentClient::connect(r.advertise_addr.clone())
        .await
        .unwrap();
    let mut stream = client
        .generate(prompt("tiny-lm-fp32", "Hello, tiny LM!", 300))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    signal(&child, "-TERM");
    notify.wait("STOPPING=1");
    let mut done = None;
    while let Some(c) = stream.message().await.unwrap() {
        done = c.done.or(done);
    }
    assert_eq!(
        done.unwrap().usage.unwrap().completion_tokens,
        300,
        "the in-flight request finished"
    );
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "exit status {status:?}");
    gw.wait_report("the drain was reported", |r| r.draining)
        .await;
}
