//! `edgewise`: the operator's command line. So far: `policy check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgewise_gateway::policy;

#[derive(Parser)]
#[command(name = "edgewise", version, about = "Edgewise operator tools")]
struct Cli {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => match policy::load(&files) {
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
        },
    }
}
