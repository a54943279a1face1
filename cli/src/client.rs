//! The `edgewise` command line's calls to a gateway, and how it prints their answers.

use std::io::Write;

use edgewise_proto as pb;
use tonic::Request;
use tonic::transport::Channel;

/// Routing hints as command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Hints {
    /// public | internal | confidential | restricted (default: the policy's)
    #[arg(long)]
    pub data_class: Option<String>,
    #[arg(long)]
    pub min_quality: Option<f32>,
    /// Use only this route.
    #[arg(long)]
    pub route: Option<String>,
}

impl Hints {
    fn proto(&self) -> pb::RoutingHints {
        pb::RoutingHints {
            data_class: self.data_class.clone().unwrap_or_default(),
            min_quality: self.min_quality,
            max_latency_ms: None,
            route: self.route.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the gateway at {0}: {1}")]
    Connect(String, String),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        Self::Status(s)
    }
}

/// Who the command line talks to and as whom: the gateway's address, the caller's
/// credentials (a bearer token, or a tenant certificate over TLS), and for a plaintext
/// development gateway the tenant header.
#[derive(Clone)]
pub struct Caller {
    pub addr: String,
    /// Sent as `x-edgewise-tenant`; only a plaintext gateway without tokens reads it.
    pub tenant: String,
    /// Sent as `authorization: Bearer`.
    pub token: Option<String>,
    /// For https:// gateways: trusts the fleet CA and presents the tenant certificate, if any.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Caller {
    /// A plaintext caller (tests, development).
    pub fn plain(addr: &str, tenant: &str) -> Self {
        Self {
            addr: addr.into(),
            tenant: tenant.into(),
            token: None,
            tls: None,
        }
    }

    pub(crate) async fn connect(
        &self,
    ) -> Result<pb::gateway_client::GatewayClient<Channel>, CliError> {
        let fail = |e: &dyn std::fmt::Display| CliError::Connect(self.addr.clone(), e.to_string());
        let endpoint = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .map_err(|e| fail(&e))?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = match (&self.tls, self.addr.starts_with("https://")) {
            (Some(tls), true) => {
                edgewise_tls::net::channel(endpoint, edgewise_tls::net::fixed(tls.clone()))
                    .await
                    .map_err(|e| fail(&edgewise_ops::error_chain(&e)))?
            }
            (None, true) => {
                return Err(CliError::Usage(format!(
                    "{} is https: give the fleet CA with --ca-file (or EDGEWISE_CA_FILE)",
                    self.addr
                )));
            }
            (_, false) => endpoint
                .connect()
                .await
                .map_err(|e| fail(&edgewise_ops::error_chain(&e)))?,
        };
        Ok(pb::gateway_client::GatewayClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// `msg` with the caller's credentials attached.
    pub(crate) fn request<T>(&self, msg: T) -> Result<Request<T>, CliError> {
        let mut r = Request::new(msg);
        let v = self.tenant.parse().map_err(|_| {
            CliError::Usage(format!(
                "tenant `{}` is not a valid header value",
                self.tenant
            ))
        })?;
        r.metadata_mut().insert("x-edgewise-tenant", v);
        if let Some(token) = &self.token {
            let mut v: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| CliError::Usage("the token is not a valid header value".into()))?;
            v.set_sensitive(true);
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }
}

/// A decision as people read it.
pub fn render_decision(d: &pb::Decision) -> String {
    let mut out = String::new();
    let target = match &d.target {
        Some(pb::decision::Target::Local(l)) => {
            let cold = match l.cold_load_ms {
                0 => String::new(),
                ms => format!(" (cold: +{ms} ms to load)"),
            };
            format!("local {} on node {} ({}){cold}", l.model, l.node_id, l.addr)
        }
        Some(pb::decision::Target::External(e)) => {
            format!(
                "external {}/{} (worst case ${:.4})",
                e.provider, e.model, e.worst_case_usd
            )
        }
        None => format!("refused: {}", d.refusal),
    };
    out.push_str(&format!(
        "decision {}\n  route: {}  rule: {}  data class: {}\n  target: {target}\n",
        d.decision_id, d.route, d.rule, d.data_class
    ));
    if !d.detections.is_empty() || !d.inferred_data_class.is_empty() {
        let found: Vec<String> = d
            .detections
            .iter()
            .map(|x| format!("{} ×{}", x.detector, x.count))
            .collect();
        let verdict = if d.data_class == d.declared_data_class {
            "not raised".to_string()
        } else {
            format!("raised from {}", d.declared_data_class)
        };
        out.push_str(&format!(
            "  text scan: {} → {} ({verdict})\n",
            found.join(", "),
            d.inferred_data_class
        ));
    }
    if !d.space.is_empty() {
        out.push_str(&format!(
            "  space: {} (only models of this vector space / label set serve it)\n",
            d.space
        ));
    }
    let mut p: Vec<(&String, &f32)> = d.p_adequate.iter().collect();
    p.sort_by(|a, b| a.0.cmp(b.0));
    for (model, p) in p {
        out.push_str(&format!("  P(adequate) {model}: {p:.3}\n"));
    }
    for s in &d.cascade {
        let conf = s.confidence.map_or(String::new(), |c| {
            format!(
                " (mean {:.3}, min {:.3}, p10 {:.3} over {} tokens)",
                c.mean_logprob, c.min_logprob, c.p10_logprob, c.tokens
            )
        });
        out.push_str(&format!(
            "  cascade: {}{conf} — {} (signal {} >= {})\n",
            s.candidate, s.outcome, s.signal, s.threshold
        ));
    }
    for r in &d.retried {
        out.push_str(&format!("  retried: {} — {}\n", r.candidate, r.reason));
    }
    for e in &d.excluded {
        out.push_str(&format!("  excluded: {} — {}\n", e.candidate, e.reason));
    }
    out
}

pub async fn explain(
    caller: &Caller,
    task: &str,
    hints: &Hints,
    max_tokens: u32,
    text: &str,
) -> Result<(), CliError> {
    let task = match task {
        "generate" => pb::Task::Generate,
        "embed" => pb::Task::Embed,
        "classify" => pb::Task::Classify,
        other => {
            return Err(CliError::Usage(format!(
                "--task `{other}` is not one of generate, embed, classify"
            )));
        }
    };
    let req = pb::ExplainRequest {
        task: task as i32,
        routing: Some(hints.proto()),
        text: text.into(),
        max_tokens,
    };
    let d = caller
        .connect()
        .await?
        .explain(caller.request(req)?)
        .await?
        .into_inner();
    print!("{}", render_decision(&d));
    Ok(())
}

pub async fn generate(
    caller: &Caller,
    hints: &Hints,
    max_tokens: u32,
    raw: bool,
    text: &str,
) -> Result<(), CliError> {
    let input = if raw {
        pb::generate_request::Input::Prompt(text.into())
    } else {
        pb::generate_request::Input::Chat(pb::ChatMessages {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: text.into(),
                ..Default::default()
            }],
        })
    };
    let req = pb::GatewayGenerateRequest {
        request: Some(pb::GenerateRequest {
            input: Some(input),
            max_tokens,
            ..Default::default()
        }),
        routing: Some(hints.proto()),
    };
    let mut stream = caller
        .connect()
        .await?
        .generate(caller.request(req)?)
        .await?
        .into_inner();
    let (mut decision, mut done) = (None, None);
    let mut out = std::io::stdout();
    while let Some(m) = stream.message().await? {
        decision = m.decision.or(decision);
        if let Some(c) = m.chunk {
            out.write_all(c.text.as_bytes())?;
            out.flush()?;
            done = c.done.or(done);
        }
    }
    writeln!(out)?;
    if let Some(d) = done {
        let u = d.usage.unwrap_or_default();
        eprintln!(
            "[{} prompt + {} completion tokens, first token {:.0} ms, {:.1} ms/token, finish {:?}]",
            u.prompt_tokens,
            u.completion_tokens,
            d.time_to_first_token_ms,
            d.time_per_output_token_ms,
            d.finish_reason()
        );
    }
    if let Some(d) = decision {
        eprint!("{}", render_decision(&d));
    }
    Ok(())
}

pub async fn fleet_status(caller: &Caller) -> Result<(), CliError> {
    let s = caller
        .connect()
        .await?
        .fleet_status(caller.request(pb::FleetStatusRequest {})?)
        .await?
        .into_inner();
    println!("gateway {}  policy {}", s.gateway_id, s.policy_hash);
    println!(
        "{:<38} {:<5} {:<22} {:<9} {:<8} {:>5} {:>5} {:>7} {:>9} {:>14} {:>8} {:>8}",
        "NODE",
        "LIVE",
        "MODEL",
        "TASK",
        "STATE",
        "BUSY",
        "QUEUE",
        "LAT ms",
        "TOK/s",
        "KV MiB used/free",
        "RES MiB",
        "LOAD ms"
    );
    for n in &s.nodes {
        if let Some(mem) = n.memory.filter(|m| m.budget_bytes > 0) {
            let mib = |b: u64| b as f64 / 1048576.0;
            println!(
                "{:<38} memory budget {:.0} MiB: {:.0} used, {:.0} free, {:.0} not evictable now",
                n.node_id,
                mib(mem.budget_bytes),
                mib(mem.used_bytes),
                mib(mem.budget_bytes.saturating_sub(mem.used_bytes)),
                mib(mem.held_bytes)
            );
        }
        for m in &n.models {
            let task = pb::Task::try_from(m.task)
                .map(|t| t.as_str_name().trim_start_matches("TASK_").to_lowercase())
                .unwrap_or_default();
            let state = pb::ModelState::try_from(m.state)
                .map(|t| {
                    t.as_str_name()
                        .trim_start_matches("MODEL_STATE_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            let kv = if m.kv_bytes_per_position > 0 {
                format!(
                    "{:.0}/{:.0}",
                    m.kv_bytes_in_use as f64 / 1048576.0,
                    m.kv_bytes_free as f64 / 1048576.0
                )
            } else {
                "-".to_string()
            };
            // what loading the model added to its agent's memory, and how long it took; a
            // model not resident shows what a request would wait for its load
            let (resident, load) = if m.load_ms > 0 {
                (
                    format!("{:.0}", m.resident_bytes as f64 / 1048576.0),
                    m.load_ms.to_string(),
                )
            } else if m.cold_load_ms > 0 {
                let tilde = if m.cold_load_estimated { "~" } else { "" };
                ("-".to_string(), format!("cold {tilde}{}", m.cold_load_ms))
            } else {
                ("-".to_string(), "-".to_string())
            };
            println!(
                "{:<38} {:<5} {:<22} {:<9} {:<8} {:>2}/{:<2} {:>5} {:>7.1} {:>9.1} {:>14} {:>8} {:>8}",
                n.node_id,
                if n.live { "yes" } else { "no" },
                m.name,
                task,
                state,
                m.in_flight,
                m.max_concurrency,
                m.queue_depth,
                m.ewma_latency_ms,
                m.tokens_per_s,
                kv,
                resident,
                load
            );
        }
    }
    print!("{}", gateways_table(&s));
    Ok(())
}

/// The gateways sharing the ledger, and a warning when they route by different policies.
fn gateways_table(s: &pb::FleetStatusResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !s.gateways_unavailable.is_empty() {
        let _ = writeln!(
            out,
            "gateways: cannot read the shared ledger's heartbeats: {}",
            s.gateways_unavailable
        );
    }
    if s.gateways.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:<10} {:<18} LAST SEEN",
        "GATEWAY", "VERSION", "POLICY"
    );
    for g in &s.gateways {
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<18} {:.1} s ago",
            g.id,
            g.version,
            g.policy_digest,
            g.seen_ms_ago as f64 / 1000.0
        );
    }
    let mut digests: Vec<&str> = s
        .gateways
        .iter()
        .map(|g| g.policy_digest.as_str())
        .collect();
    digests.sort_unstable();
    digests.dedup();
    if digests.len() > 1 {
        let _ = writeln!(
            out,
            "warning: the gateways route by {} different policies ({}): the same request may be decided differently depending on the gateway",
            digests.len(),
            digests.join(", ")
        );
    }
    out
}

/// A point in time from the command line: RFC 3339 (`2026-11-24T08:00:00Z`), a UTC date
/// (`2026-11-24`), or a duration before `now` (`90m`, `24h`, `7d`). Milliseconds since the epoch.
pub fn parse_since(s: &str, now: std::time::SystemTime) -> Result<u64, CliError> {
    let s = s.trim();
    let t = if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else if s.len() == 10
        && let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s}T00:00:00"))
    {
        t
    } else if let Ok(d) = humantime::parse_duration(s) {
        now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH)
    } else {
        return Err(CliError::Usage(format!(
            "`{s}` is not a time: use RFC 3339 (2026-11-24T08:00:00Z), a date (2026-11-24) or a duration ago (24h)"
        )));
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

/// Writes audit records from `since` (and before `until`) as JSON lines to `out`, or stdout.
/// A file is written whole or not at all (a temporary file renamed into place).
/// Verifies every gateway's hash chain in the shared audit log; an error (non-zero exit)
/// when a record was edited or deleted, or the log is not shared.
pub async fn audit_verify(caller: &Caller) -> Result<(), CliError> {
    let r = caller
        .connect()
        .await?
        .verify_audit(caller.request(pb::VerifyAuditRequest {})?)
        .await?
        .into_inner();
    if !r.unavailable.is_empty() {
        return Err(CliError::Usage(r.unavailable));
    }
    let mut broken = 0;
    for c in &r.chains {
        if c.problems.is_empty() {
            println!(
                "gateway {}: {} record(s), 1..={}: intact",
                c.gateway, c.records, c.last_seq
            );
        } else {
            broken += 1;
            println!(
                "gateway {}: {} record(s), last {}: {} problem(s)",
                c.gateway,
                c.records,
                c.last_seq,
                c.problems.len()
            );
            for p in &c.problems {
                println!("  {p}");
            }
        }
    }
    if r.chains.is_empty() {
        println!("the shared audit log has no records yet");
    }
    if broken > 0 {
        return Err(CliError::Usage(format!(
            "{broken} of {} chain(s) are not intact",
            r.chains.len()
        )));
    }
    Ok(())
}

pub async fn audit_export(
    caller: &Caller,
    since: &str,
    until: Option<&str>,
    out: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let now = std::time::SystemTime::now();
    let req = pb::ExportAuditRequest {
        since_unix_ms: parse_since(since, now)?,
        until_unix_ms: until.map(|u| parse_since(u, now)).transpose()?.unwrap_or(0),
    };
    let mut stream = caller
        .connect()
        .await?
        .export_audit(caller.request(req)?)
        .await?
        .into_inner();
    let mut lines = Vec::new();
    while let Some(r) = stream.message().await? {
        lines.extend_from_slice(edgewise_gateway::audit::to_json(&r).to_string().as_bytes());
        lines.push(b'\n');
    }
    match out {
        None => std::io::stdout().write_all(&lines)?,
        Some(path) => {
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, &lines)?;
            std::fs::rename(&tmp, path)?;
            eprintln!(
                "wrote {} record(s) to {}",
                lines.iter().filter(|b| **b == b'\n').count(),
                path.display()
            );
        }
    }
    Ok(())
}

/// External spend per day, tenant and provider (settled plus in-flight reservations).
pub async fn spend(caller: &Caller, tenant: Option<&str>) -> Result<(), CliError> {
    let s = caller
        .connect()
        .await?
        .spend(caller.request(pb::SpendRequest {
            tenant: tenant.unwrap_or_default().into(),
        })?)
        .await?
        .into_inner();
    println!(
        "{:<10} {:<20} {:<16} {:>12} {:>12}",
        "DAY", "TENANT", "PROVIDER", "SPENT $", "RESERVED $"
    );
    for e in s.entries {
        println!(
            "{:<10} {:<20} {:<16} {:>12.6} {:>12.6}",
            e.day, e.tenant, e.provider, e.spent_usd, e.reserved_usd
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_dates_and_durations() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_500_000);
        assert_eq!(
            parse_since("2026-11-24T00:00:00Z", now).ok(),
            Some(1_795_478_400_000)
        );
        assert_eq!(parse_since("2026-11-24", now).ok(), Some(1_795_478_400_000));
        assert_eq!(parse_since("1h", now).ok(), Some(1_795_496_400_000));
        assert!(parse_since("yesterday-ish", now).is_err());
    }
}
