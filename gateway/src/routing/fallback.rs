//! Whether a request may go to the route's hosted provider: data class, condition, provider,
//! vector space and the tenant's daily budget. Pure, like `decide`.

use super::adequacy::Wanted;
use super::decide::{Exclusion, Inputs, Target};
use super::types::*;

pub(super) enum ExternalRefusal {
    /// Policy forbids this data class externally.
    Forbidden(String),
    /// Not allowed for another reason (no external block, condition, provider).
    NotPermitted(String),
    /// The tenant's daily budget for the provider has no room for the worst case.
    OverBudget(String),
}

/// External only when every condition holds: the route allows it, the data class is
/// permitted (sensitive classes only when named), the condition applies, the provider is
/// configured, and the tenant's budget has room for the worst case.
pub(super) fn external(
    inputs: &Inputs<'_>,
    route: &Route,
    req: &RouteRequest,
    class: DataClass,
    condition: ExternalCondition,
    wanted: Option<&Wanted>,
    excluded: &mut Vec<Exclusion>,
) -> Result<Target, ExternalRefusal> {
    let Some(ext) = &route.external else {
        return Err(ExternalRefusal::NotPermitted(
            "the route allows no external provider".into(),
        ));
    };
    let candidate = format!("external:{}/{}", ext.provider, ext.model);
    let refuse = |excluded: &mut Vec<Exclusion>, r: ExternalRefusal| {
        let (ExternalRefusal::Forbidden(why)
        | ExternalRefusal::NotPermitted(why)
        | ExternalRefusal::OverBudget(why)) = &r;
        excluded.push(Exclusion {
            candidate: candidate.clone(),
            reason: why.clone(),
        });
        Err(r)
    };
    if !ext.data_classes.contains(&class) {
        return refuse(
            excluded,
            ExternalRefusal::Forbidden(format!(
                "external provider `{}` is not permitted for {class} data",
                ext.provider
            )),
        );
    }
    // a hosted embedding model serves only the vector space the policy declares it in
    match (req.task, wanted) {
        (Task::Embed | Task::Classify, Some(Wanted::Model(m))) => {
            return refuse(
                excluded,
                ExternalRefusal::NotPermitted(format!("the request names the local model `{m}`")),
            );
        }
        (Task::Embed | Task::Classify, Some(Wanted::Space(s)))
            if ext.space.as_deref() != Some(s.as_str()) =>
        {
            return refuse(
                excluded,
                ExternalRefusal::NotPermitted(match &ext.space {
                    Some(other) => format!(
                        "`{}` is declared in vector space `{other}`, and the request needs `{s}`",
                        ext.model
                    ),
                    None => format!(
                        "`{}` is declared in no vector space (external.space), and the request needs `{s}`",
                        ext.model
                    ),
                }),
            );
        }
        _ => {}
    }
    if !ext.conditions.contains(&condition) {
        return refuse(
            excluded,
            ExternalRefusal::NotPermitted(format!(
                "the route does not go external on {}",
                condition.as_str()
            )),
        );
    }
    let Some(provider) = inputs.providers.get(&ext.provider) else {
        return refuse(
            excluded,
            ExternalRefusal::NotPermitted(format!("provider `{}` is not configured", ext.provider)),
        );
    };
    if !provider.tasks.contains(&req.task) {
        return refuse(
            excluded,
            ExternalRefusal::NotPermitted(format!(
                "provider `{}` does not serve {} requests",
                ext.provider, req.task
            )),
        );
    }
    let max_tokens = match (req.task, req.max_tokens) {
        (Task::Generate, 0) => provider.default_max_tokens,
        (Task::Generate, n) => n,
        _ => 0,
    };
    let cost = provider
        .price
        .worst_case_usd(req.prompt_tokens_max, max_tokens);
    let spent = inputs
        .budgets
        .spent_usd
        .get(&(req.tenant.clone(), ext.provider.clone()))
        .copied()
        .unwrap_or(0.0);
    if spent + cost > ext.daily_budget_usd {
        return refuse(
            excluded,
            ExternalRefusal::OverBudget(format!(
                "tenant `{}` has ${:.4} of its ${} daily budget for `{}` left, and this request may cost ${cost:.4}",
                req.tenant,
                (ext.daily_budget_usd - spent).max(0.0),
                ext.daily_budget_usd,
                ext.provider
            )),
        );
    }
    Ok(Target::External {
        provider: ext.provider.clone(),
        model: ext.model.clone(),
        worst_case_usd: cost,
        daily_budget_usd: ext.daily_budget_usd,
    })
}
