//! `edgewise-gateway`: parse the command line, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use edgewise_gateway::GatewayConfig;

#[derive(Parser)]
#[command(
    name = "edgewise-gateway",
    version,
    about = "Edgewise gateway: routes requests to the smallest adequate local model"
)]
struct Cli {
    /// Address for the Gateway, Fleet and health services.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: std::net::SocketAddr,
    /// Policy files or directories (a directory means its *.yaml files).
    #[arg(long, default_value = "/etc/edgewise/policies")]
    policies: Vec<PathBuf>,
    /// This gateway's id, as agents and FleetStatus show it.
    #[arg(long, default_value = "gateway")]
    id: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGEWISE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = GatewayConfig {
        policies: cli.policies,
        id: cli.id,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgewise-gateway: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
        edgewise_gateway::run(config, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgewise-gateway: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
