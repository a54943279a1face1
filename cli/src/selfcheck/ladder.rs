//! The self-check's ladder checks: a request needing more quality than the smallest model
//! has, and a model a node keeps on disk loaded on demand.

use super::*;

/// Asks for a generate model that a node with a memory budget does not hold in memory; the
/// row passes when it was served cold, is resident afterwards, and (where the budget had no
/// room for it) something was evicted. `None` when no node has such a model.
pub(super) async fn load_on_demand(
    c: &mut Client,
    caller: &Caller,
    internal: &pb::RoutingHints,
) -> Result<Option<Row>, CliError> {
    let status = |c: &mut Client| {
        let req = caller.request(pb::FleetStatusRequest {});
        let mut c = c.clone();
        async move { Ok::<_, CliError>(c.fleet_status(req?).await?.into_inner()) }
    };
    let cold = |m: &pb::ModelStatus| {
        m.task == pb::Task::Generate as i32
            && (m.state == pb::ModelState::Available as i32
                || m.state == pb::ModelState::Unloaded as i32)
    };
    let before = status(c).await?;
    let Some((node, model)) = before.nodes.iter().find_map(|n| {
        let budget = n.memory.filter(|m| m.budget_bytes > 0)?;
        let m = n
            .models
            .iter()
            .filter(|m| cold(m))
            .max_by_key(|m| m.parameters)?;
        Some((n, (m, budget)))
    }) else {
        return Ok(None);
    };
    let (model, budget) = model;
    let needs_room = budget.used_bytes + model.budget_bytes > budget.budget_bytes;
    let evictions = |s: &pb::FleetStatusResponse| -> Vec<(String, u64)> {
        s.nodes
            .iter()
            .filter(|n| n.node_id == node.node_id)
            .flat_map(|n| &n.models)
            .map(|m| (m.name.clone(), m.evictions_total))
            .collect()
    };
    let was = evictions(&before);
    let check = format!("load on demand ({})", model.name);
    let t = Instant::now();
    let mut req = chat("What is the capital of France?", 8, internal.clone());
    if let Some(r) = req.request.as_mut() {
        r.model = model.name.clone();
    }
    let (d, _) = match generate(c, caller, req).await {
        Ok(r) => r,
        Err(s) => return Ok(Some(failed(&check, &s, t))),
    };
    let served = t.elapsed();
    let cold_ms = match d.as_ref().and_then(|d| d.target.as_ref()) {
        Some(pb::decision::Target::Local(l)) => l.cold_load_ms,
        _ => 0,
    };
    // the agent's next report shows the model resident (reports come every interval)
    let until = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = status(c).await?;
        let resident = s
            .nodes
            .iter()
            .filter(|n| n.node_id == node.node_id)
            .flat_map(|n| &n.models)
            .any(|m| m.name == model.name && m.state == pb::ModelState::Ready as i32);
        if resident || Instant::now() > until {
            break (resident, s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (resident, now) = after;
    let evicted: Vec<String> = evictions(&now)
        .into_iter()
        .filter(|(name, n)| was.iter().any(|(w, before)| w == name && n > before))
        .map(|(name, _)| name)
        .collect();
    let mut row = Row::served(
        check,
        d.as_ref(),
        t,
        format!(
            "decided cold (+{cold_ms} ms to load), served in {} ms; evicted: {}",
            served.as_millis(),
            if evicted.is_empty() {
                "nothing".to_string()
            } else {
                evicted.join(", ")
            }
        ),
        cold_ms > 0 && resident && (!needs_room || !evicted.is_empty()),
    );
    if !resident {
        row.result.push_str("; not resident afterwards");
    }
    Ok(Some(row))
}

/// The ready generate models' (quality, name), smallest quality first.
fn generate_qualities(fleet: &pb::FleetStatusResponse) -> Vec<(f32, String)> {
    let mut q: Vec<(f32, String)> = fleet
        .nodes
        .iter()
        .flat_map(|n| &n.models)
        .filter(|m| m.task == pb::Task::Generate as i32 && m.state == pb::ModelState::Ready as i32)
        .map(|m| (m.quality, m.name.clone()))
        .collect();
    q.sort_by(|a, b| a.0.total_cmp(&b.0));
    q
}

pub(super) async fn quality_floor(
    c: &mut Client,
    caller: &Caller,
    fleet: &pb::FleetStatusResponse,
    internal: &pb::RoutingHints,
    question: &str,
) -> Result<Row, CliError> {
    let t = Instant::now();
    let q = generate_qualities(fleet);
    let Some((low, high)) = q.first().zip(q.iter().find(|(v, _)| *v > q[0].0)) else {
        return Ok(Row {
            check: "quality floor".into(),
            decision: "-".into(),
            target: "-".into(),
            result: "one model size only: nothing larger to choose".into(),
            ms: 0,
            ok: false,
        });
    };
    // halfway between the two measured qualities
    let floor = (low.0 + high.0) / 2.0;
    let hints = pb::RoutingHints {
        min_quality: Some(floor),
        ..internal.clone()
    };
    let check = format!("needs quality {floor:.2} (> {} {:.2})", low.1, low.0);
    // the held generations of the check before may still be ending on their agent: a model
    // at capacity for a few seconds more is waited for, not failed
    let until = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let r = generate(c, caller, chat(question, 24, hints.clone())).await;
        match &r {
            Err(s)
                if s.code() == tonic::Code::ResourceExhausted
                    && s.message().contains("at capacity")
                    && Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => break r,
        }
    };
    Ok(match answer {
        Ok((d, text)) => {
            let chosen = d.as_ref().and_then(|d| match &d.target {
                Some(pb::decision::Target::Local(l)) => Some(l.model.clone()),
                _ => None,
            });
            Row {
                check,
                decision: rule(d.as_ref()),
                target: target(d.as_ref()),
                result: format!("{:?}", text.trim().chars().take(40).collect::<String>()),
                ms: t.elapsed().as_millis(),
                ok: chosen.as_deref() == Some(high.1.as_str()),
            }
        }
        Err(s) => failed("quality floor", &s, t),
    })
}
