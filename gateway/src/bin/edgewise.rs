//! `edgewise`: the operator's command line: policy check, route explain, generate, fleet status,
//! audit export, spend.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgewise_gateway::{cli, policy};

#[derive(Parser)]
#[command(name = "edgewise", version, about = "Edgewise operator tools")]
struct Cli {
    /// The gateway to talk to.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:7400",
        env = "EDGEWISE_GATEWAY"
    )]
    gateway: String,
    /// The tenant to act as (sent as the x-edgewise-tenant header).
    #[arg(
        long,
        global = true,
        default_value = "default",
        env = "EDGEWISE_TENANT"
    )]
    tenant: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Routing policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Routing decisions.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Stream a generation through the gateway, then print the decision.
    Generate {
        #[command(flatten)]
        hints: cli::Hints,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        /// Send the text as a raw prompt instead of a user chat message.
        #[arg(long)]
        raw: bool,
        text: String,
    },
    /// The fleet as the gateway sees it.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// The audit log of external calls and refused fallbacks.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Route an embed, a classify, a generation, a spill and a refused confidential request
    /// through the gateway and print a table; non-zero exit if any check fails.
    Selfcheck {
        /// How long to wait for the gateway to see ready models.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Today's external spend per tenant and provider (settled and reserved).
    Spend {
        /// Every tenant, not only --tenant.
        #[arg(long)]
        all_tenants: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write records as JSON lines (never prompt or completion text).
    Export {
        /// RFC 3339 time, a UTC date (2026-11-24), or a duration ago (24h).
        #[arg(long)]
        since: String,
        /// Same forms as --since; default now.
        #[arg(long)]
        until: Option<String>,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files (a directory means its *.yaml files) and print, for each data
    /// class, every path by which it can reach an external provider. Non-zero exit on any error.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Which target a request would go to, and why (no inference).
    Explain {
        /// generate | embed | classify
        #[arg(long, default_value = "generate")]
        task: String,
        #[command(flatten)]
        hints: cli::Hints,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        text: String,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// A table of nodes, models, state and load.
    Status,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => return policy_check(&files),
        other => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("edgewise: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async {
                match other {
                    Command::Route {
                        command:
                            RouteCommand::Explain {
                                task,
                                hints,
                                max_tokens,
                                text,
                            },
                    } => {
                        cli::explain(
                            &args.gateway,
                            &args.tenant,
                            &task,
                            &hints,
                            max_tokens,
                            &text,
                        )
                        .await
                    }
                    Command::Generate {
                        hints,
                        max_tokens,
                        raw,
                        text,
                    } => {
                        cli::generate(&args.gateway, &args.tenant, &hints, max_tokens, raw, &text)
                            .await
                    }
                    Command::Fleet {
                        command: FleetCommand::Status,
                    } => cli::fleet_status(&args.gateway).await,
                    Command::Audit {
                        command: AuditCommand::Export { since, until, out },
                    } => {
                        cli::audit_export(&args.gateway, &since, until.as_deref(), out.as_deref())
                            .await
                    }
                    Command::Spend { all_tenants } => {
                        let tenant = (!all_tenants).then_some(args.tenant.as_str());
                        cli::spend(&args.gateway, tenant).await
                    }
                    Command::Selfcheck { wait_secs } => {
                        match edgewise_gateway::selfcheck::run(
                            &args.gateway,
                            &args.tenant,
                            std::time::Duration::from_secs(wait_secs),
                        )
                        .await
                        {
                            Ok(true) => Ok(()),
                            Ok(false) => Err(cli::CliError::Usage("self-check failed".into())),
                            Err(e) => Err(e),
                        }
                    }
                    Command::Policy { .. } => Ok(()),
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgewise: {e}");
            ExitCode::from(1)
        }
    }
}

fn policy_check(files: &[PathBuf]) -> ExitCode {
    match policy::load(files) {
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("policy check: {} problem(s)", problems.0.len());
            ExitCode::from(1)
        }
        Ok(p) => {
            println!(
                "policy ok: {} route(s), default data class {}",
                p.routes.len(),
                p.default_data_class
            );
            println!("external paths by data class:");
            for (class, paths) in policy::confidentiality_report(&p) {
                if paths.is_empty() {
                    println!("  {:<13} never leaves the box", class.as_str());
                }
                for path in paths {
                    println!("  {:<13} {path}", class.as_str());
                }
            }
            ExitCode::SUCCESS
        }
    }
}
