//! The validated inputs of a routing decision: policy, fleet snapshot, request, budgets.
//!
//! These are plain data with no I/O; the policy loader, the fleet registry and the ledger
//! build them, and `decide` reads them.

use std::collections::BTreeMap;
use std::fmt;

use super::inference::{Findings, Floors, InferenceMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataClass {
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl DataClass {
    pub const ALL: [DataClass; 4] = [
        DataClass::Public,
        DataClass::Internal,
        DataClass::Confidential,
        DataClass::Restricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Public => "public",
            DataClass::Internal => "internal",
            DataClass::Confidential => "confidential",
            DataClass::Restricted => "restricted",
        }
    }

    /// Classes that may leave the box only when a route names them explicitly.
    pub fn is_sensitive(self) -> bool {
        matches!(self, DataClass::Confidential | DataClass::Restricted)
    }

    pub fn parse(s: &str) -> Option<Self> {
        DataClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    Generate,
    Embed,
    Classify,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Generate => "generate",
            Task::Embed => "embed",
            Task::Classify => "classify",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Task::Generate, Task::Embed, Task::Classify]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route does when its smallest adequate model has no free capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spill {
    /// Use the next larger adequate model that has capacity.
    Larger,
    /// Queue on the smallest adequate model (the node with the shortest queue that has room).
    Wait,
    /// Go to the route's external provider (if every external condition holds).
    External,
}

/// When a route may go external.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExternalCondition {
    /// No local model is adequate (task, quality, context).
    NoAdequateLocal,
    /// Adequate models exist but none has capacity.
    NoLocalCapacity,
}

impl ExternalCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalCondition::NoAdequateLocal => "no_adequate_local",
            ExternalCondition::NoLocalCapacity => "no_local_capacity",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExternalRule {
    pub provider: String,
    pub model: String,
    /// Data classes that may go to the provider; sensitive classes only when listed here.
    pub data_classes: Vec<DataClass>,
    pub conditions: Vec<ExternalCondition>,
    /// Per tenant, per UTC day, in USD.
    pub daily_budget_usd: f64,
    /// Embed: the vector space the provider's model is declared to be in. Without one (or in
    /// another space than the request needs) it never serves embeddings.
    pub space: Option<String>,
}

/// A confidence signal of a local answer (the agent's `Confidence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    MeanLogprob,
    MinLogprob,
    P10Logprob,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::MeanLogprob, Signal::MinLogprob, Signal::P10Logprob];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MeanLogprob => "mean_logprob",
            Signal::MinLogprob => "min_logprob",
            Signal::P10Logprob => "p10_logprob",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Signal::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A confidence cascade: the smallest adequate model answers; an answer whose `signal` is
/// below `threshold` is answered again by the next larger local model, then by the route's
/// hosted model where the data class permits. Only for short answers (`max_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cascade {
    pub signal: Signal,
    pub threshold: f32,
    /// The longest answer judged whole; a longer one (or one with `max_tokens` unset) is
    /// judged by its first this many tokens.
    pub max_tokens: u32,
    /// A threshold per model (rung), fitted jointly; `threshold` for a model not named.
    pub per_model: Vec<(String, f32)>,
    /// Models a judged request never starts on: they rarely keep an answer, so asking them
    /// first would only cost a generation thrown away.
    pub skip: Vec<String>,
    /// Where the threshold came from (the evaluation set and target), for explain.
    pub calibrated: Option<String>,
}

/// What a learned route's estimator is to routing: P(adequate) per model for a request's
/// text. It is implemented (request features, one head per model) in `adequacy`; routing
/// only reads the probabilities, computed before `decide`.
pub trait Estimator: fmt::Debug + Send + Sync {
    /// Estimators with the same id compute the same features (one computation serves them).
    fn features_id(&self) -> usize;
    fn features(&self, text: &str) -> Vec<f32>;
    /// P(adequate) per model it has a head for.
    fn predict(&self, features: &[f32]) -> Vec<(String, f32)>;
}

/// A learned pre-router: P(adequate | request, model) against a calibrated threshold. The
/// gateway computes the probabilities before `decide` (`RouteRequest::p_adequate`).
#[derive(Debug, Clone)]
pub struct Learned {
    pub estimator: std::sync::Arc<dyn Estimator>,
    pub threshold: f32,
    pub calibrated: Option<String>,
}

impl PartialEq for Learned {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.estimator, &other.estimator)
            && self.threshold == other.threshold
            && self.calibrated == other.calibrated
    }
}

impl Cascade {
    /// Whether the cascade judges this request: a short answer, bounded by `max_tokens`,
    /// that names no model.
    pub fn judges(&self, req: &RouteRequest) -> bool {
        req.space.is_none() && req.max_tokens > 0 && req.max_tokens <= self.max_tokens
    }

    /// Whether the cascade judges this request by its first `max_tokens` tokens while it
    /// streams: a longer answer, or one whose `max_tokens` is unset, that names no model.
    pub fn judges_start(&self, req: &RouteRequest) -> bool {
        req.space.is_none() && (req.max_tokens == 0 || req.max_tokens > self.max_tokens)
    }

    /// The threshold `model`'s answers are judged against.
    pub fn threshold_for(&self, model: &str) -> f32 {
        self.per_model
            .iter()
            .find(|(m, _)| m == model)
            .map_or(self.threshold, |(_, t)| *t)
    }

    /// Whether a judged request skips `model`.
    pub fn skips(&self, model: &str) -> bool {
        self.skip.iter().any(|m| m == model)
    }
}

/// How a route judges that a local model is adequate for a request.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Adequacy {
    /// The manifest quality against `min_quality` (the same answer for every request).
    #[default]
    Static,
    Cascade(Cascade),
    Learned(Learned),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    /// Empty: any tenant.
    pub tenants: Vec<String>,
    /// Empty: any task.
    pub tasks: Vec<Task>,
    /// Empty: any data class.
    pub data_classes: Vec<DataClass>,
    pub min_quality: f32,
    pub latency_target_ms: Option<u32>,
    pub spill: Spill,
    /// `None`: this route never goes external.
    pub external: Option<ExternalRule>,
    /// The vector space its embeddings come from when a request names none.
    pub space: Option<String>,
    /// The label set its classifications come from when a request names none.
    pub label_set: Option<String>,
    pub adequacy: Adequacy,
    /// Whether what the text scan finds raises the class this route decides with.
    pub inference: InferenceMode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub default_data_class: DataClass,
    /// In file order; the first route that matches a request serves it.
    pub routes: Vec<Route>,
    /// What each kind of finding raises a request's class to.
    pub floors: Floors,
}

/// Prices of a configured provider, per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderPrice {
    pub input_per_million_usd: f64,
    pub output_per_million_usd: f64,
}

impl ProviderPrice {
    /// What `input` tokens in and `output` tokens out cost.
    pub fn cost_usd(&self, input: u32, output: u32) -> f64 {
        (f64::from(input) * self.input_per_million_usd
            + f64::from(output) * self.output_per_million_usd)
            / 1e6
    }

    /// Worst-case cost of a request: every prompt token in, `max_tokens` out.
    pub fn worst_case_usd(&self, prompt_tokens: u32, max_tokens: u32) -> f64 {
        self.cost_usd(prompt_tokens, max_tokens)
    }
}

/// A configured external provider as routing sees it: its prices and the tasks its API serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderView {
    pub price: ProviderPrice,
    pub tasks: Vec<Task>,
    /// The `max_tokens` a generation is sent with when the request leaves it at 0.
    pub default_max_tokens: u32,
    /// The output constraints the provider's API has a form for.
    pub constraints: Vec<OutputConstraint>,
}

/// One ready-or-not model on one node, as the registry last heard it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    pub name: String,
    pub task: Task,
    /// Resident, or loadable on demand (`cold_ms` > 0).
    pub ready: bool,
    /// Not resident: what a request waits for its load (the agent's measurement or
    /// estimate); 0 when resident.
    pub cold_ms: u32,
    pub quality: f32,
    pub parameters: u64,
    pub size_bytes: u64,
    pub context_length: u32,
    pub in_flight: u32,
    pub queue_depth: u32,
    pub max_concurrency: u32,
    pub max_queue: u32,
    /// Requests this gateway has sent and not yet seen finish (ahead of the next report).
    pub gateway_in_flight: u32,
    /// Measured by the agent (moving averages); 0 when nothing has been measured yet.
    pub ewma_latency_ms: f64,
    pub ewma_time_per_output_token_ms: f64,
    /// Generate models: the agent's K/V budget has room for another sequence (at least one
    /// allocation step of 64 positions). Always true for other tasks.
    pub kv_room: bool,
    /// Embed: the vector space; classify: the label set; empty for generate models.
    pub space: String,
    /// Embed: vector dimensions; classify: the number of labels.
    pub dimensions: u32,
    /// Generate models: decodes under output constraints (structured output).
    pub constraints: bool,
    /// Generate models: the chat template has a tool format.
    pub tools: bool,
}

/// Positions a generate model's K/V cache is allocated in (the agent's step).
pub const KV_ALLOCATION_POSITIONS: u64 = 64;

impl ModelView {
    /// A ready, idle model for tests: quality 0.5, `parameters` bytes, context 2048, 2 slots
    /// and 4 queue places; tests change what they need with struct update syntax.
    #[cfg(test)]
    pub(crate) fn idle(name: &str, task: Task, parameters: u64) -> Self {
        ModelView {
            name: name.into(),
            task,
            ready: true,
            cold_ms: 0,
            quality: 0.5,
            parameters,
            size_bytes: parameters,
            context_length: 2048,
            in_flight: 0,
            queue_depth: 0,
            max_concurrency: 2,
            max_queue: 4,
            gateway_in_flight: 0,
            ewma_latency_ms: 0.0,
            ewma_time_per_output_token_ms: 0.0,
            kv_room: true,
            space: String::new(),
            dimensions: 0,
            constraints: task == Task::Generate,
            tools: task == Task::Generate,
        }
    }

    /// Requests running or promised to run, counting the gateway's own.
    pub fn busy(&self) -> u32 {
        self.in_flight
            .max(self.gateway_in_flight)
            .saturating_add(self.queue_depth)
    }

    pub fn has_free_slot(&self) -> bool {
        self.busy() < self.max_concurrency && self.kv_room
    }

    pub fn has_queue_room(&self) -> bool {
        self.busy() < self.max_concurrency.saturating_add(self.max_queue)
    }

    /// How long a request would take here, from the agent's measurements: a generation's
    /// tokens at the measured time per token (else the measured request latency), stretched
    /// by the requests already waiting for a slot. `None` until the model has been measured.
    pub fn expected_latency_ms(&self, task: Task, max_tokens: u32) -> Option<f64> {
        let one = if task == Task::Generate && self.ewma_time_per_output_token_ms > 0.0 {
            self.ewma_time_per_output_token_ms * f64::from(max_tokens.max(1))
        } else {
            self.ewma_latency_ms
        };
        if one <= 0.0 {
            return None;
        }
        let waiting = self
            .busy()
            .saturating_sub(self.max_concurrency.saturating_sub(1));
        Some(one * (1.0 + f64::from(waiting) / f64::from(self.max_concurrency.max(1))))
    }

    /// Load as a fraction of the slots.
    pub fn load(&self) -> f64 {
        f64::from(self.busy()) / f64::from(self.max_concurrency.max(1))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub addr: String,
    /// A live node is reporting and not draining.
    pub live: bool,
    pub models: Vec<ModelView>,
}

/// What the caller asked for, with the tenant taken from its credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRequest {
    pub tenant: String,
    pub task: Task,
    pub data_class: Option<DataClass>,
    pub min_quality: Option<f32>,
    pub max_latency_ms: Option<u32>,
    pub route: Option<String>,
    /// An estimate of the prompt's tokens (for the context-length check).
    pub prompt_tokens: u32,
    /// An upper bound on the prompt's tokens (for the worst-case cost of an external call).
    pub prompt_tokens_max: u32,
    pub max_tokens: u32,
    /// Nodes already tried for this request (retries decide again without them).
    pub exclude_nodes: Vec<String>,
    /// Embed and classify: the vector space or label set the caller needs, or one model by
    /// name (the request's `model` field); `None`: the route's pin. Generate: one model by
    /// name, or `None`.
    pub space: Option<String>,
    /// A cascade's next step: only models with more parameters than this (the smaller
    /// models' answers were not confident enough).
    pub larger_than: Option<u64>,
    /// Learned routes: P(adequate) per route and model, computed before `decide`.
    pub p_adequate: Vec<(String, String, f32)>,
    /// A generation that must run past end-of-sequence, which only local models do: an
    /// external decision for it is refused before anything is reserved.
    pub ignore_eos: bool,
    /// What the scan of the request's text found (detector ids and counts, no text).
    pub findings: Findings,
    /// Structured output: the kind of constraint the output must follow.
    pub constraint: Option<OutputConstraint>,
    /// The conversation uses tools (given, called or answered): only a model with a tool
    /// format serves it.
    pub tools: bool,
}

/// The kind of constraint a structured-output request carries: every local generate model
/// that reports constraints follows any of them; a hosted API only those it has a form for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputConstraint {
    JsonSchema,
    JsonObject,
    Regex,
    Choice,
    Grammar,
}

impl OutputConstraint {
    pub fn of(c: &edgewise_proto::Constraint) -> Option<Self> {
        use edgewise_proto::constraint::Kind;
        Some(match c.kind.as_ref()? {
            Kind::JsonSchema(_) => Self::JsonSchema,
            Kind::JsonObject(_) => Self::JsonObject,
            Kind::Regex(_) => Self::Regex,
            Kind::Choice(_) => Self::Choice,
            Kind::Lark(_) => Self::Grammar,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JsonSchema => "JSON schema",
            Self::JsonObject => "JSON object",
            Self::Regex => "regular expression",
            Self::Choice => "choice",
            Self::Grammar => "grammar",
        }
    }
}

impl RouteRequest {
    /// A request of `tenant` for `task` with no hints: `prompt_tokens` both the estimate and
    /// the bound, nothing excluded, no learned estimates.
    pub fn new(tenant: &str, task: Task, prompt_tokens: u32, max_tokens: u32) -> Self {
        RouteRequest {
            tenant: tenant.into(),
            task,
            data_class: None,
            min_quality: None,
            max_latency_ms: None,
            route: None,
            prompt_tokens,
            prompt_tokens_max: prompt_tokens,
            max_tokens,
            exclude_nodes: Vec::new(),
            space: None,
            larger_than: None,
            p_adequate: Vec::new(),
            ignore_eos: false,
            constraint: None,
            tools: false,
            findings: Findings::default(),
        }
    }

    /// The learned estimate for `model` under `route`.
    pub fn p_adequate(&self, route: &str, model: &str) -> Option<f32> {
        self.p_adequate
            .iter()
            .find(|(r, m, _)| r == route && m == model)
            .map(|(_, _, p)| *p)
    }
}

/// Spent (and reserved) today per (tenant, provider), in USD, as the ledger sees it now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budgets {
    pub spent_usd: BTreeMap<(String, String), f64>,
}
