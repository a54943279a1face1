//! Whether a request may go to the route's hosted provider: data class, condition, provider,
//! vector space and the tenant's daily budget. Pure, like `decide`.

use super::adequacy::Wanted;
use super::decide::{Inputs, Target};
use super::trace::ExternalWhy;
use super::types::*;

/// How a refused fallback maps to the decision's refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefusalKind {
    /// Policy forbids this data class externally.
    Forbidden,
    /// Not allowed for another reason (no external block, condition, provider).
    NotPermitted,
    /// The tenant's daily budget for the provider has no room for the worst case.
    OverBudget,
}

/// Why the fallback was refused: `why` is `None` when the route has no external block (so
/// there is no candidate to list).
pub(super) struct ExternalRefusal {
    pub kind: RefusalKind,
    pub why: Option<ExternalWhy>,
}

fn refuse(kind: RefusalKind, why: ExternalWhy) -> Result<Target, ExternalRefusal> {
    Err(ExternalRefusal {
        kind,
        why: Some(why),
    })
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
) -> Result<Target, ExternalRefusal> {
    use RefusalKind::*;
    let Some(ext) = &route.external else {
        return Err(ExternalRefusal {
            kind: NotPermitted,
            why: None,
        });
    };
    if !ext.data_classes.contains(&class) {
        return refuse(Forbidden, ExternalWhy::Class);
    }
    // a hosted embedding model serves only the vector space the policy declares it in
    match (req.task, wanted) {
        (Task::Embed | Task::Classify, Some(Wanted::Model(_))) => {
            return refuse(NotPermitted, ExternalWhy::NamesLocalModel);
        }
        (Task::Embed | Task::Classify, Some(Wanted::Space(s)))
            if ext.space.as_deref() != Some(s.as_str()) =>
        {
            return refuse(NotPermitted, ExternalWhy::OtherSpace);
        }
        _ => {}
    }
    if !ext.conditions.contains(&condition) {
        return refuse(NotPermitted, ExternalWhy::Condition(condition));
    }
    let Some(provider) = inputs.providers.get(&ext.provider) else {
        return refuse(NotPermitted, ExternalWhy::NotConfigured);
    };
    if !provider.tasks.contains(&req.task) {
        return refuse(NotPermitted, ExternalWhy::ProviderTask);
    }
    if let Some(c) = req.constraint
        && !provider.constraints.contains(&c)
    {
        return refuse(NotPermitted, ExternalWhy::ProviderConstraint(c));
    }
    if req.tools {
        return refuse(NotPermitted, ExternalWhy::ProviderTools);
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
            OverBudget,
            ExternalWhy::Budget {
                left_usd: (ext.daily_budget_usd - spent).max(0.0),
                cost_usd: cost,
            },
        );
    }
    Ok(Target::External {
        provider: ext.provider.clone(),
        model: ext.model.clone(),
        worst_case_usd: cost,
        daily_budget_usd: ext.daily_budget_usd,
    })
}
