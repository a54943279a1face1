//! `edgewise-agent`: parse the command line, load config, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgewise_agent::config::AgentConfig;

#[derive(Parser)]
#[command(
    name = "edgewise-agent",
    version,
    about = "Edgewise node agent: serves quantized ONNX models and reports capacity"
)]
struct Cli {
    /// Agent config file (TOML). EDGEWISE_SECTION__KEY environment variables override it.
    #[arg(long, short, global = true, default_value = "/etc/edgewise/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Check the config file and exit (for ExecStartPre= and ExecReload=).
    Validate,
    /// Models: tools on model folders, and the models of a running agent.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Call a running agent (for trying a model by hand).
    Call {
        #[command(flatten)]
        dial: DialArgs,
        #[command(subcommand)]
        command: CallCommand,
    },
}

/// How to reach a running agent.
#[derive(clap::Args)]
struct DialArgs {
    /// The agent's address (https:// when it runs mutual TLS).
    #[arg(long, default_value = "http://127.0.0.1:7300")]
    addr: String,
    /// The fleet CA, for an https:// agent.
    #[arg(long, env = "EDGEWISE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A fleet certificate and its key (an agent accepts only callers that have one; the
    /// model commands only operators' certificates).
    #[arg(long, env = "EDGEWISE_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    #[arg(long, env = "EDGEWISE_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
}

impl DialArgs {
    fn dial(self) -> anyhow::Result<edgewise_agent::call::Dial> {
        let tls = match &self.ca_file {
            Some(ca) => Some(edgewise_tls::client_config(
                ca,
                self.cert_file.as_deref().zip(self.key_file.as_deref()),
            )?),
            None => None,
        };
        Ok(edgewise_agent::call::Dial {
            addr: self.addr,
            tls,
        })
    }
}

#[derive(Subcommand)]
enum CallCommand {
    /// Stream a generation to stdout.
    Generate {
        #[arg(long)]
        model: String,
        /// Send the text as a user chat message (rendered with the model's chat template).
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        text: String,
    },
    /// Print the embedding of each text (dimensions and the first values).
    Embed {
        #[arg(long)]
        model: String,
        texts: Vec<String>,
    },
    /// Print the label probabilities of each text.
    Classify {
        #[arg(long)]
        model: String,
        texts: Vec<String>,
    },
    /// Wait until the agent serves (all models loaded); non-zero exit if it does not in time.
    WaitReady {
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

/// The model commands that call a running agent.
#[derive(Subcommand)]
enum Manage {
    /// A running agent's models: state, memory, keep-alive, loads; and its memory budget.
    List {
        #[command(flatten)]
        dial: DialArgs,
    },
    /// Load a model on a running agent now (a failed one is tried again).
    Load {
        #[command(flatten)]
        dial: DialArgs,
        model: String,
    },
    /// Unload a model on a running agent (requests in flight finish first).
    Unload {
        #[command(flatten)]
        dial: DialArgs,
        model: String,
    },
    /// Pin a model on a running agent: loaded now and never evicted (until restart; set
    /// `pin = true` in agent.toml to keep it).
    Pin {
        #[command(flatten)]
        dial: DialArgs,
        model: String,
    },
    /// Let a pinned model be evicted again.
    Unpin {
        #[command(flatten)]
        dial: DialArgs,
        model: String,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    #[command(flatten)]
    Manage(Manage),
    /// Load every model, run one smoke inference each, and report; non-zero exit if any failed.
    Check {
        /// Models directory (default: the config's models.dir, or ./models without a config).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Load from mapped copies kept in this directory (written by the first check), as
        /// the agent loads from `state.dir/mapped`.
        #[arg(long)]
        mapped_dir: Option<PathBuf>,
    },
    /// Turn a llama or qwen2 GGUF file (as used with llama.cpp or Ollama) into a model folder:
    /// fused ONNX decoder, tokenizer, manifest (chat template and EOS from the file). Runs the
    /// project's Python converter (tools/import_gguf.py) in its virtualenv (build/venv, made by
    /// `make models`), then loads the folder once; a refused, failed or unloadable import leaves
    /// no folder behind.
    Import {
        /// The GGUF file.
        gguf: PathBuf,
        /// Folder name (default: from the file name and quantization).
        #[arg(long)]
        name: Option<String>,
        /// Weight encoding: q4 (4-bit, 8-bit head) or q8 (8-bit).
        #[arg(long, default_value = "q4", value_parser = ["q4", "q8"])]
        quant: String,
        /// Models directory (default: the config's models.dir, or ./models without a config).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// A checkout's tools/ (default: found above the working directory or the executable).
        #[arg(long, env = "EDGEWISE_TOOLS_DIR")]
        tools_dir: Option<PathBuf>,
        /// The converter's Python (default: build/venv/bin/python beside tools/).
        #[arg(long, env = "EDGEWISE_MODELPREP_PYTHON")]
        python: Option<PathBuf>,
    },
}

impl Manage {
    /// Calls the agent; prints its models after the change.
    fn run(self) -> anyhow::Result<ExitCode> {
        use edgewise_agent::call::Op;
        let (dial, op) = match self {
            Manage::List { dial } => (dial, Op::List),
            Manage::Load { dial, model } => (dial, Op::Load(model)),
            Manage::Unload { dial, model } => (dial, Op::Unload(model)),
            Manage::Pin { dial, model } => (dial, Op::Pin(model, true)),
            Manage::Unpin { dial, model } => (dial, Op::Pin(model, false)),
        };
        let dial = dial.dial()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        print!(
            "{}",
            runtime.block_on(edgewise_agent::call::manage(&dial, op))?
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// The config for the `models` commands (the file if there is one, else a checkout's
/// defaults) and the models directory they work on.
fn models_config(
    path: &std::path::Path,
    models_dir: Option<PathBuf>,
) -> anyhow::Result<(AgentConfig, PathBuf)> {
    let config = if path.exists() {
        AgentConfig::load(path, &env_vars())?
    } else {
        AgentConfig::for_models_dir(PathBuf::from("models"))
    };
    let dir = models_dir.unwrap_or_else(|| config.models_dir.clone());
    Ok((config, dir))
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgewise-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if !matches!(command, Command::Run) {
        edgewise_ops::init_logging(); // `run` sets logging up with its traces, once configured
    }
    match command {
        Command::Validate => {
            let config = AgentConfig::load(&cli.config, &env_vars())?;
            // the certificates too: an expired or mismatched file fails here, before a restart
            if let edgewise_tls::TlsMode::Mutual(files) = &config.tls {
                edgewise_tls::Tls::load(files.clone(), edgewise_tls::ClientAuth::Required)
                    .with_context(|| format!("{}: tls", cli.config.display()))?;
            }
            println!("{}: ok", cli.config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command } => models(&cli.config, command),
        Command::Call { dial, command } => {
            let dial = dial.dial()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(call(&dial, command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let config = AgentConfig::load(&cli.config, &env_vars())?;
            // traces when the config names a collector; logging set up with them
            edgewise_ops::telemetry::init(config.otlp.as_ref().map(|o| ("edgewise-agent", o)));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.listen))?;
                serve(&cli.config, config, listener).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `edgewise-agent models ...`: tools on model folders, and the calls that manage a running
/// agent's models.
fn models(config_path: &std::path::Path, command: ModelsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelsCommand::Manage(m) => m.run(),
        ModelsCommand::Check {
            models_dir,
            json,
            mapped_dir,
        } => {
            let (config, dir) = models_config(config_path, models_dir)?;
            let rt = edgewise_agent::runtime::init(config.onnxruntime_library.as_deref())?;
            let results = edgewise_agent::check::check_dir(
                &dir,
                rt,
                config.intra_op_threads,
                mapped_dir.as_deref(),
            )
            .with_context(|| format!("models directory {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                print!("{}", edgewise_agent::check::render_table(&results));
            }
            if results.is_empty() {
                eprintln!("edgewise-agent: no model folders in {}", dir.display());
                return Ok(ExitCode::from(1));
            }
            Ok(
                if results
                    .iter()
                    .all(|r| r.state == edgewise_agent::check::CheckState::Ready)
                {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                },
            )
        }
        ModelsCommand::Import {
            gguf,
            name,
            quant,
            models_dir,
            tools_dir,
            python,
        } => {
            let (config, dir) = models_config(config_path, models_dir)?;
            let converter =
                edgewise_agent::import::Converter::locate(tools_dir.as_deref(), python.as_deref())?;
            match converter.run(&gguf, &dir, name.as_deref(), &quant) {
                Ok(()) => {}
                Err(edgewise_agent::import::ImportError::Refused) => return Ok(ExitCode::from(2)),
                Err(e) => return Err(e.into()),
            }
            let name = name.unwrap_or_else(|| edgewise_agent::import::default_name(&gguf, &quant));
            let folder = dir.join(&name);
            let rt = edgewise_agent::runtime::init(config.onnxruntime_library.as_deref())?;
            let r = edgewise_agent::check::check_folder(&folder, rt, config.intra_op_threads, None);
            print!(
                "{}",
                edgewise_agent::check::render_table(std::slice::from_ref(&r))
            );
            if r.state != edgewise_agent::check::CheckState::Ready {
                // a folder the agent cannot serve is not left for it to fail on
                std::fs::remove_dir_all(&folder)
                    .with_context(|| format!("removing {}", folder.display()))?;
                eprintln!(
                    "edgewise-agent: the imported model does not load ({}); {} removed",
                    r.reason,
                    folder.display()
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Serves until SIGTERM or Ctrl-C. SIGHUP re-reads the config file: a valid one has its
/// per-model limits applied at once (other changes are named as needing a restart); an
/// invalid one is reported and changes nothing.
async fn serve(
    path: &std::path::Path,
    config: edgewise_agent::config::AgentConfig,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let agent = edgewise_agent::Agent::start(config, listener).await?;
    // the outcome of a reload also shows in `systemctl status`
    edgewise_ops::until_stopped(|| match edgewise_agent::config::AgentConfig::load(path, &env_vars()) {
        Ok(next) => match agent.reload(&next) {
            Ok(()) => edgewise_ops::systemd::status("serving (config reloaded)"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload rejected; the certificates in use stay");
                edgewise_ops::systemd::status("serving (TLS reload rejected; see the log)");
            }
        },
        Err(problems) => {
            tracing::error!("reload rejected; the running config stays in force:\n{problems}");
            edgewise_ops::systemd::status(
                "serving (reload rejected: the config has errors; see the log)",
            );
        }
    })
    .await;
    agent.stop().await?;
    edgewise_ops::telemetry::shutdown_traces(std::time::Duration::from_secs(5));
    Ok(())
}

async fn call(dial: &edgewise_agent::call::Dial, command: CallCommand) -> anyhow::Result<()> {
    use edgewise_agent::call;
    match command {
        CallCommand::Generate {
            model,
            chat,
            max_tokens,
            text,
        } => {
            let done = call::generate(dial, &model, &text, chat, max_tokens).await?;
            let usage = done.usage.unwrap_or_default();
            eprintln!(
                "[{model}: {} prompt + {} completion tokens, first token {:.0} ms, {:.1} ms/token, finish {:?}]",
                usage.prompt_tokens,
                usage.completion_tokens,
                done.time_to_first_token_ms,
                done.time_per_output_token_ms,
                done.finish_reason()
            );
        }
        CallCommand::Embed { model, texts } => {
            let r = call::embed(dial, &model, texts.clone()).await?;
            for (t, e) in texts.iter().zip(r.embeddings) {
                let head: Vec<String> =
                    e.values.iter().take(4).map(|v| format!("{v:.4}")).collect();
                println!("{t:?}: {} dims [{}, ...]", e.values.len(), head.join(", "));
            }
        }
        CallCommand::WaitReady { timeout_secs } => {
            call::wait_ready(dial, std::time::Duration::from_secs(timeout_secs)).await?;
            eprintln!("{}: serving", dial.addr);
        }
        CallCommand::Classify { model, texts } => {
            let r = call::classify(dial, &model, texts.clone()).await?;
            for (t, c) in texts.iter().zip(r.results) {
                let top: Vec<String> = c
                    .labels
                    .iter()
                    .take(3)
                    .map(|l| format!("{} {:.2}", l.label, l.probability))
                    .collect();
                println!("{t:?}: {}", top.join(", "));
            }
        }
    }
    Ok(())
}
