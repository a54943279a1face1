//! The budget ledger's durable writes (`bench/run.sh ledger`): reserve + settle cycles per
//! second and reserve latency, from many concurrent callers on a 2-worker runtime, through
//! the gateway's store (one thread, group commit) and through the reference measured in the
//! same run — the design it replaced: each operation a sled transaction under a mutex on the
//! async worker, then its own `flush_async`. Each runs once on an idle machine and once with
//! two CPU-burning processes beside it. Each run is a child process of this one: a run that
//! stops making progress is killed and reported as stalled (the reference can freeze — that is
//! why it was replaced — and a frozen sled database holds sled's process-wide transaction lock,
//! which would stop every later run in the same process). One JSON line per run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgewise_gateway::ledger::{LedgerError, LedgerTrees, Reservation};
use edgewise_gateway::store::{Mirror, Store, StoreOptions};

/// The design before the store thread, kept here as the reference.
struct Reference {
    db: sled::Db,
    trees: LedgerTrees,
    lock: Mutex<()>,
    mirror: Mirror,
}

impl Reference {
    fn open(dir: &std::path::Path) -> Result<Self, String> {
        let db = sled::Config::new()
            .path(dir.join("gateway.sled"))
            .open()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            trees: LedgerTrees::open(&db).map_err(|e| e.to_string())?,
            db,
            lock: Mutex::new(()),
            mirror: Mirror::default(),
        })
    }

    async fn reserve(&self, id: &str, r: &Reservation) -> Result<(), LedgerError> {
        {
            let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.trees.reserve(id, r, u64::MAX, &self.mirror)?;
        }
        self.db
            .flush_async()
            .await
            .map_err(|e| LedgerError::Storage(e.to_string()))?;
        Ok(())
    }

    async fn settle(&self, id: &str, charged: u64) -> Result<(), LedgerError> {
        {
            let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.trees.settle(id, Some(charged), &self.mirror)?;
        }
        self.db
            .flush_async()
            .await
            .map_err(|e| LedgerError::Storage(e.to_string()))?;
        Ok(())
    }
}

#[derive(Clone)]
enum Ledger {
    Store(Store),
    Reference(Arc<Reference>),
}

impl Ledger {
    async fn reserve(&self, id: &str, r: &Reservation) -> Result<(), LedgerError> {
        match self {
            Ledger::Store(s) => s.reserve(id, r, u64::MAX).await,
            Ledger::Reference(l) => l.reserve(id, r).await,
        }
    }

    async fn settle(&self, id: &str, charged: u64) -> Result<(), LedgerError> {
        match self {
            Ledger::Store(s) => s.settle(id, charged).await.map(drop),
            Ledger::Reference(l) => l.settle(id, charged).await,
        }
    }
}

struct Outcome {
    cycles: u64,
    errors: u64,
    reserve_ms: Vec<f64>,
    max_wait_ms: f64,
    elapsed: Duration,
    flushes: Option<(u64, u64)>,
}

/// `callers` tasks doing reserve + settle for `seconds` on a 2-worker runtime.
fn drive(ledger: Ledger, callers: usize, seconds: f64, progress: Arc<AtomicU64>) -> Outcome {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    rt.block_on(async move {
        let started = Instant::now();
        let end = started + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let (ledger, progress) = (ledger.clone(), progress.clone());
                tokio::spawn(async move {
                    let mut reserve_ms = Vec::new();
                    let (mut cycles, mut errors, mut max_wait) = (0u64, 0u64, 0f64);
                    let r = Reservation {
                        day: "2026-12-04".into(),
                        tenant: format!("tenant-{}", c % 4),
                        provider: "openai".into(),
                        nanos: 1_000,
                    };
                    let mut i = 0u64;
                    while Instant::now() < end {
                        let id = format!("{c}-{i}");
                        i += 1;
                        let t = Instant::now();
                        let reserved = ledger.reserve(&id, &r).await;
                        let took = t.elapsed().as_secs_f64() * 1e3;
                        reserve_ms.push(took);
                        max_wait = max_wait.max(took);
                        if reserved.is_err() {
                            errors += 1;
                            continue;
                        }
                        let t = Instant::now();
                        let settled = ledger.settle(&id, 500).await;
                        max_wait = max_wait.max(t.elapsed().as_secs_f64() * 1e3);
                        if settled.is_err() {
                            errors += 1;
                            continue;
                        }
                        cycles += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    (cycles, errors, reserve_ms, max_wait)
                })
            })
            .collect();
        let mut out = Outcome {
            cycles: 0,
            errors: 0,
            reserve_ms: Vec::new(),
            max_wait_ms: 0.0,
            elapsed: Duration::ZERO,
            flushes: None,
        };
        for t in tasks {
            if let Ok((cycles, errors, reserve_ms, max_wait)) = t.await {
                out.cycles += cycles;
                out.errors += errors;
                out.reserve_ms.extend(reserve_ms);
                out.max_wait_ms = out.max_wait_ms.max(max_wait);
            }
        }
        out.elapsed = started.elapsed();
        if let Ledger::Store(s) = &ledger {
            out.flushes = Some(s.flush_counts());
        }
        out
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Two processes keeping both cores busy while alive.
struct Burners(Vec<std::process::Child>);

impl Burners {
    fn start() -> Self {
        Self(
            (0..2)
                .filter_map(|_| {
                    std::process::Command::new("sh")
                        .arg("-c")
                        .arg("while :; do :; done")
                        .spawn()
                        .ok()
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run, in this (child) process: its JSON line on stdout.
fn run_one(variant: &str, load: &str, callers: usize, seconds: f64, base: &std::path::Path) {
    let bound = edgewise_gateway::store::DEFAULT_WRITE_TIMEOUT;
    let dir = tempfile::tempdir_in(base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let ledger = if variant == "store" || variant == "shared" {
        // shared: the ledger on PostgreSQL (LEDGER_POSTGRES), a fresh database per run
        let shared = (variant == "shared").then(|| shared_ledger(callers, load));
        Ledger::Store(
            Store::open(&StoreOptions {
                dir: Some(dir.path().to_path_buf()),
                write_timeout: bound,
                shared,
            })
            .unwrap_or_else(|e| panic!("{e}")),
        )
    } else {
        Ledger::Reference(Arc::new(
            Reference::open(dir.path()).unwrap_or_else(|e| panic!("{e}")),
        ))
    };
    let mut o = drive(ledger, callers, seconds, Arc::new(AtomicU64::new(0)));
    o.reserve_ms.sort_by(f64::total_cmp);
    let (flushes, writes) = o.flushes.unwrap_or((0, 0));
    println!(
        "{}",
        serde_json::json!({
            "variant": variant, "load": load, "callers": callers,
            "seconds": o.elapsed.as_secs_f64(), "cycles": o.cycles, "errors": o.errors,
            "cycles_per_s": o.cycles as f64 / o.elapsed.as_secs_f64(),
            "reserve_p50_ms": percentile(&o.reserve_ms, 0.5),
            "reserve_p99_ms": percentile(&o.reserve_ms, 0.99),
            "max_wait_ms": o.max_wait_ms,
            "bound_ms": bound.as_millis() as u64,
            "writes_per_flush": if flushes > 0 { writes as f64 / flushes as f64 } else { f64::NAN },
            "stalled": false,
        })
    );
    // a process exit, not a drop: the reference's sled threads may still be flushing
    std::process::exit(0);
}

/// The shared ledger on a database of its own on the server LEDGER_POSTGRES names.
fn shared_ledger(callers: usize, load: &str) -> edgewise_gateway::store::SharedLedger {
    use edgewise_gateway::store::postgres::{PgLedger, PgOptions};
    let params = std::env::var("LEDGER_POSTGRES").unwrap_or_else(|_| panic!("LEDGER_POSTGRES"));
    let name = format!(
        "bench_{}_{}_{callers}",
        std::process::id(),
        if load == "idle" { "idle" } else { "loaded" }
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&params, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(client);
        let _ = task.await;
    });
    let db = format!("{params} dbname={name}");
    let mut options = PgOptions::new(db, "bench");
    options.timeout = edgewise_gateway::store::DEFAULT_WRITE_TIMEOUT;
    // connects (and migrates) at its first use, on the run's own runtime
    let ledger = PgLedger::new(&options, None).unwrap_or_else(|e| panic!("{e}"));
    edgewise_gateway::store::SharedLedger {
        ledger,
        lease: Duration::from_secs(60),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a child run is told what to do by LEDGER_RUN
    let seconds: f64 = env_or("LEDGER_SECONDS", 5.0);
    let callers: String = env_or("LEDGER_CALLERS", "2,8,32".to_string());
    let base = std::path::PathBuf::from(env_or(
        "LEDGER_DIR",
        env!("CARGO_TARGET_TMPDIR").to_string(),
    ));
    if let Ok(run) = std::env::var("LEDGER_RUN") {
        let (variant, load) = run.split_once('/').unwrap_or((run.as_str(), "idle"));
        run_one(variant, load, callers.parse().unwrap_or(2), seconds, &base);
        return;
    }
    let callers: Vec<usize> = callers
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    // with a PostgreSQL server to use, the shared ledger too
    let variants: &[&str] = if std::env::var("LEDGER_POSTGRES").is_ok() {
        &["store", "reference", "shared"]
    } else {
        &["store", "reference"]
    };
    for (load, callers, variant) in ["idle", "two CPU burners"].into_iter().flat_map(|load| {
        callers
            .iter()
            .flat_map(move |c| variants.iter().map(move |v| (load, *c, *v)))
    }) {
        {
            let _burners = (load != "idle").then(Burners::start);
            let mut child = std::process::Command::new(&exe)
                .env("LEDGER_RUN", format!("{variant}/{load}"))
                .env("LEDGER_CALLERS", callers.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{e}"));
            let limit = Duration::from_secs_f64(seconds) + Duration::from_secs(20);
            let started = Instant::now();
            // polled, not awaited: a frozen child never exits by itself
            let finished = loop {
                match child.try_wait() {
                    Ok(Some(_)) => break true,
                    Ok(None) if started.elapsed() < limit => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => break false,
                }
            };
            let mut out = String::new();
            if finished {
                if let Some(mut o) = child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut out);
                }
            } else {
                let _ = child.kill();
                let _ = child.wait();
            }
            match out.lines().find(|l| l.starts_with('{')) {
                Some(line) => println!("{line}"),
                None => println!(
                    "{}",
                    serde_json::json!({
                        "variant": variant, "load": load, "callers": callers,
                        "stalled": true, "stalled_after_s": limit.as_secs_f64(),
                    })
                ),
            }
        }
    }
}
