//! `edgewise-gateway`: parse the command line, load config, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgewise_gateway::config::GatewayFile;

#[derive(Parser)]
#[command(
    name = "edgewise-gateway",
    version,
    about = "Edgewise gateway: routes requests to the smallest adequate local model"
)]
struct Cli {
    /// Gateway config file (TOML). EDGEWISE_SECTION__KEY environment variables override it.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/edgewise/gateway.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Check the config and the policy files, and exit (for ExecStartPre= and ExecReload=).
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let file = match GatewayFile::load(&cli.config, &env) {
        Ok(f) => f,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(1);
        }
    };
    match (&cli.command, &file.gateway.otlp) {
        (Some(Command::Validate), _) | (_, None) => edgewise_ops::init_logging(),
        (_, Some(otlp)) => edgewise_ops::telemetry::init(Some(("edgewise-gateway", otlp))),
    }
    if let Some(Command::Validate) = cli.command {
        // the certificates too: an expired or mismatched file fails here, before a restart
        if let edgewise_tls::TlsMode::Mutual(files) = &file.gateway.tls
            && let Err(e) =
                edgewise_tls::Tls::load(files.clone(), edgewise_tls::ClientAuth::Optional)
        {
            eprintln!("{}: tls: {e}", cli.config.display());
            return ExitCode::from(1);
        }
        return match edgewise_gateway::policy::load(&file.gateway.policies) {
            Ok(p) => {
                let names: Vec<&str> = file
                    .gateway
                    .providers
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                for w in edgewise_gateway::policy::unconfigured_providers(&p, &names) {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok; policy ok: {} route(s)",
                    cli.config.display(),
                    p.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("{problems}");
                ExitCode::from(1)
            }
        };
    }
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
        let listener = tokio::net::TcpListener::bind(file.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", file.listen))?;
        serve(file.gateway, listener)
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

/// Serves until SIGTERM or Ctrl-C; SIGHUP reloads the policy. Tells systemd when it is
/// ready, pings its watchdog, and says when it is stopping.
async fn serve(
    config: edgewise_gateway::GatewayConfig,
    listener: tokio::net::TcpListener,
) -> Result<(), edgewise_gateway::StartError> {
    let g = edgewise_gateway::Gateway::start(config, listener).await?;
    edgewise_ops::systemd::ready();
    // `systemctl status` shows where it listens (with port 0, the port it was given)
    edgewise_ops::systemd::status(&format!("serving on {}", g.addr));
    let watchdog_stop = tokio_util::sync::CancellationToken::new();
    let watchdog = edgewise_ops::systemd::spawn_watchdog(watchdog_stop.clone());
    edgewise_ops::until_stopped(|| {
        tracing::info!("SIGHUP: reloading the policy");
        g.reload.notify_one();
    })
    .await;
    g.stop().await;
    watchdog_stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    edgewise_ops::telemetry::shutdown_traces(std::time::Duration::from_secs(5));
    Ok(())
}
