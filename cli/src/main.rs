//! `edgewise`: the operator's command line: policy check, route explain, generate, fleet status,
//! audit export, spend, and making credentials (certs, tokens).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgewise_cli::client as cli;
use edgewise_gateway::policy;

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
    /// The tenant header for a plaintext development gateway (x-edgewise-tenant); any other
    /// gateway takes the tenant from the credentials below.
    #[arg(
        long,
        global = true,
        default_value = "default",
        env = "EDGEWISE_TENANT"
    )]
    tenant: String,
    /// A file holding the caller's bearer token (`edgewise token new`).
    #[arg(long, global = true, env = "EDGEWISE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The fleet CA, for an https:// gateway.
    #[arg(long, global = true, env = "EDGEWISE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A tenant certificate to present (with --key-file) instead of a token.
    #[arg(long, global = true, env = "EDGEWISE_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    #[arg(long, global = true, env = "EDGEWISE_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
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
    /// The fleet's certificates for mutual TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Evaluate the fleet's models on item sets; calibrate and report routing.
    Eval {
        #[command(subcommand)]
        command: edgewise_cli::eval::EvalCommand,
    },
    /// Callers' bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a fleet CA in --out (ca.pem, ca.key) and certificates for the gateways, nodes
    /// and tenants named (KIND-NAME.pem / .key). Keys are written owner-only; nothing is
    /// overwritten.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        subjects: edgewise_cli::credentials::Subjects,
    },
    /// Issue more certificates from an existing CA (--ca-dir holds ca.pem and ca.key).
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        subjects: edgewise_cli::credentials::Subjects,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token for a tenant: the token goes to --out (owner-only), and the lines to add to
    /// gateway.toml (its SHA-256, never the token) are printed.
    New {
        /// The tenant the token authenticates.
        #[arg(value_name = "TENANT")]
        tenant: String,
        #[arg(long)]
        out: PathBuf,
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
    /// Check every gateway's hash chain in the shared audit log: an edited record, or a
    /// deleted one (a gap), is named; exits non-zero if any chain is not intact.
    Verify,
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

fn caller(args: &Cli) -> Result<cli::Caller, cli::CliError> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| cli::CliError::Usage(format!("{}: {e}", p.display())))
    };
    let token = args.token_file.as_ref().map(read).transpose()?;
    let tls = match &args.ca_file {
        Some(ca) => {
            let identity = args.cert_file.as_deref().zip(args.key_file.as_deref());
            Some(
                edgewise_tls::client_config(ca, identity)
                    .map_err(|e| cli::CliError::Usage(e.to_string()))?,
            )
        }
        None => None,
    };
    Ok(cli::Caller {
        addr: args.gateway.clone(),
        tenant: args.tenant.clone(),
        token,
        tls,
    })
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => return policy_check(files),
        Command::Certs { command } => certs(command),
        Command::Token {
            command: TokenCommand::New { tenant, out },
        } => edgewise_cli::credentials::token_new(tenant, out).map(|lines| {
            eprintln!(
                "token for `{tenant}` written to {}; add to gateway.toml:",
                out.display()
            );
            print!("{lines}");
        }),
        _ => {
            let caller = match caller(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("edgewise: {e}");
                    return ExitCode::from(2);
                }
            };
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
                match &args.command {
                    Command::Route {
                        command:
                            RouteCommand::Explain {
                                task,
                                hints,
                                max_tokens,
                                text,
                            },
                    } => cli::explain(&caller, task, hints, *max_tokens, text).await,
                    Command::Generate {
                        hints,
                        max_tokens,
                        raw,
                        text,
                    } => cli::generate(&caller, hints, *max_tokens, *raw, text).await,
                    Command::Fleet {
                        command: FleetCommand::Status,
                    } => cli::fleet_status(&caller).await,
                    Command::Audit {
                        command: AuditCommand::Export { since, until, out },
                    } => cli::audit_export(&caller, since, until.as_deref(), out.as_deref()).await,
                    Command::Audit {
                        command: AuditCommand::Verify,
                    } => cli::audit_verify(&caller).await,
                    Command::Spend { all_tenants } => {
                        let tenant = (!all_tenants).then_some(args.tenant.as_str());
                        cli::spend(&caller, tenant).await
                    }
                    Command::Selfcheck { wait_secs } => {
                        match edgewise_cli::selfcheck::run(
                            &caller,
                            std::time::Duration::from_secs(*wait_secs),
                        )
                        .await
                        {
                            Ok(true) => Ok(()),
                            Ok(false) => Err(cli::CliError::Usage("self-check failed".into())),
                            Err(e) => Err(e),
                        }
                    }
                    Command::Eval { command } => edgewise_cli::eval::main(&caller, command)
                        .await
                        .map_err(|e| cli::CliError::Usage(e.to_string())),
                    _ => Ok(()),
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

fn certs(command: &CertsCommand) -> Result<(), cli::CliError> {
    use edgewise_cli::credentials::{certs_init, certs_issue};
    let written = match command {
        CertsCommand::Init { out, subjects } => certs_init(out, subjects)?,
        CertsCommand::Issue {
            ca_dir,
            out,
            subjects,
        } => certs_issue(ca_dir, out, subjects)?,
    };
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
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
            print_paths(
                "external paths by data class:",
                policy::confidentiality_report(&p)
                    .into_iter()
                    .map(|(c, paths)| (c.as_str(), paths)),
            );
            print_paths(
                "external paths for requests whose text holds (data-class inference):",
                policy::leak_report(&p)
                    .into_iter()
                    .map(|(c, paths)| (c.as_str(), paths)),
            );
            ExitCode::SUCCESS
        }
    }
}

/// One `policy check` table: each row's paths off the box, or that it never leaves.
fn print_paths<'a>(title: &str, rows: impl Iterator<Item = (&'a str, Vec<String>)>) {
    println!("{title}");
    for (name, paths) in rows {
        if paths.is_empty() {
            println!("  {name:<13} never leaves the box");
        }
        for path in paths {
            println!("  {name:<13} {path}");
        }
    }
}
