//! The configuration document (docs/contract.md section 3): parsed once at `on_configure`,
//! validated, and compiled into the runtime form the filter uses per request. Any error names the
//! offending field, so Envoy refuses the document instead of running half of it.

mod raw;
mod traffic;

use crate::rollout::WeightedTargets;
use crate::scheduling::{Profile, Strategy};
use raw::{RawConfig, RawModel, RawPool};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
pub use traffic::{
    find_objective, FlowControl, Objective, CRITICAL_PRIORITY, DEFAULT_FAIRNESS_HEADER,
    DEFAULT_OBJECTIVE_HEADER, SHEDDABLE_PRIORITY, STANDARD_PRIORITY,
};

pub const DEFAULT_DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// How long a gate holds a request for its reader's decision before it answers 503: the body's
/// upload counts against it, so it is generous (llm-d's request TTL).
pub const DEFAULT_GATE_TIMEOUT_MS: u64 = 60_000;
/// Upper bound of every time field: ten minutes (a typo of a few zeros is refused, not obeyed).
pub const MAX_TIME_MS: u64 = 600_000;
/// A vLLM page is ~50 KB (a few hundred KB with many adapters); 4 MiB leaves room for any engine
/// while a runaway page never reaches the VM's memory, which only grows.
pub const DEFAULT_MAX_PAGE_BYTES: u64 = 4 * 1024 * 1024;
pub const MIN_PAGE_BYTES: u64 = 1024;
pub const MAX_PAGE_BYTES: u64 = 64 * 1024 * 1024;

/// A configuration error: the JSON path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Vllm,
    Sglang,
    TrtllmServe,
    TritonTrtllm,
    VllmAscend,
}

impl Engine {
    fn parse(s: &str) -> Option<Engine> {
        Some(match s {
            "vllm" => Engine::Vllm,
            "sglang" => Engine::Sglang,
            "trtllm-serve" => Engine::TrtllmServe,
            "triton-trtllm" => Engine::TritonTrtllm,
            "vllm-ascend" => Engine::VllmAscend,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criticality {
    Critical,
    Standard,
    Sheddable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownModels {
    /// Route to `defaultPool` with the body unchanged (or, with no default pool, leave routing to Envoy).
    Passthrough,
    /// Reply 404.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    FailOpen,
    FailClose,
}

/// Who answers `GET /v1/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListModels {
    /// The gateway: its served names, then what a pod of the default pool lists.
    Merge,
    /// The gateway: its served names only.
    Gateway,
    /// A pod, as if the gateway were not there.
    Pool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorMode {
    Service,
    Embedded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    pub path: String,
    /// Port of the metrics page when it differs from the serving port.
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub staleness_ms: u64,
    /// A bigger page is a failed scrape, not read into the VM's memory.
    pub max_page_bytes: u64,
    /// Per-name overrides of the engine dialect's metric names.
    pub names: Vec<(String, String)>,
}

/// Where a pool's members come from when they are not listed: an Envoy cluster's membership,
/// read from Envoy's admin `/clusters?format=json` through `admin_cluster` (a cluster pointing at
/// the admin address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub cluster: String,
    pub admin_cluster: String,
    pub admin_path: String,
    pub refresh_ms: u64,
    /// Serving port of the members when it differs from the cluster's.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// Envoy cluster the pool's endpoints are reached through.
    pub cluster: String,
    /// `ip:port` as Envoy's ORIGINAL_DST header expects it. Empty with `discovery`: the members
    /// then come from the collector's snapshot.
    pub endpoints: Vec<String>,
    pub discovery: Option<Discovery>,
    pub engine: Engine,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// Index into `Config::pools`.
    pub pool: usize,
    /// Derived from `priority` (below zero: Sheddable), for the scheduler's shedding.
    pub criticality: Criticality,
    /// From its `objective`, else its `criticality`; a request's objective header overrides it.
    pub priority: i32,
    /// None: served as named.
    pub targets: Option<WeightedTargets>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub pools: Vec<Pool>,
    pub models: Vec<Model>,
    model_index: HashMap<String, usize>,
    pub default_pool: Option<usize>,
    pub unknown_models: UnknownModels,
    pub strategy: Strategy,
    /// Scorer weights, saturation thresholds and prefix settings of the strategy.
    pub profile: Profile,
    pub collector: CollectorMode,
    pub destination_header: String,
    pub session_header: Option<String>,
    pub max_request_body_bytes: u64,
    pub failure_mode: FailureMode,
    /// The gate role: how long a request waits for its reader's decision.
    pub gate_timeout_ms: u64,
    /// Names this plugin instance in Envoy shared data (`crate::shared::Keys`): two plugins in one
    /// Envoy with the same vm_id never share keys unless their instances are the same.
    pub instance: String,
    /// What the collector scrapes, as one number: filter and collector compare theirs to tell a
    /// deployment whose two roles were given different pools.
    pub pools_fingerprint: u64,
    pub list_models: ListModels,
    pub objectives: Vec<Objective>,
    /// Priority of requests no objective or model entry ranks (`defaultObjective`, else 0).
    pub default_priority: i32,
    /// Per pool: the targets of its rewrite rule that matches every model (names nothing else
    /// serves are rewritten to them).
    pub rewrite_fallbacks: Vec<Option<WeightedTargets>>,
    /// The request header naming an objective (None: not read).
    pub objective_header: Option<String>,
    /// The request header naming the flow (tenant) for fairness (None: one flow).
    pub fairness_header: Option<String>,
    /// None: saturated pools answer as they did (Sheddable 429, the rest piles on).
    pub flow_control: Option<FlowControl>,
    /// Publish the decision as filter state for the access log (`accessLogFields`).
    pub access_log_fields: bool,
}

impl Config {
    /// Parse and validate a configuration document.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = match path.as_str() {
                "." | "?" | "" => "configuration".to_string(),
                _ => path,
            };
            err(field, e.into_inner().to_string())
        })?;
        compile(raw)
    }

    pub fn model(&self, name: &str) -> Option<&Model> {
        self.model_index.get(name).and_then(|&i| self.models.get(i))
    }

    /// Position of the model named `name` in `models`.
    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.model_index.get(name).copied()
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut pools = Vec::with_capacity(raw.pools.len());
    for (i, p) in raw.pools.into_iter().enumerate() {
        let pool = compile_pool(i, p)?;
        if pools.iter().any(|q: &Pool| q.name == pool.name) {
            return Err(err(
                format!("pools[{i}].name"),
                format!("duplicate pool \"{}\"", pool.name),
            ));
        }
        pools.push(pool);
    }
    let find_pool = |name: &str| pools.iter().position(|p| p.name == name);

    let default_pool = match raw.default_pool.as_deref() {
        None => None,
        Some(name) => Some(
            find_pool(name)
                .ok_or_else(|| err("defaultPool", format!("unknown pool \"{name}\"")))?,
        ),
    };

    let objectives = traffic::compile_objectives(raw.objectives, &find_pool)?;
    let default_priority = match raw.default_objective.as_deref() {
        None => STANDARD_PRIORITY,
        Some(name) => find_objective(&objectives, name.as_bytes(), None)
            .filter(|o| o.pool.is_none())
            .map(|o| o.priority)
            .ok_or_else(|| {
                err(
                    "defaultObjective",
                    format!("no objective \"{name}\" without a poolRef"),
                )
            })?,
    };

    let mut models = Vec::with_capacity(raw.models.len());
    let mut model_index = HashMap::new();
    for (i, m) in raw.models.into_iter().enumerate() {
        let model = compile_model(i, m, &find_pool, default_pool, &objectives)?;
        if model_index.insert(model.name.clone(), i).is_some() {
            return Err(err(
                format!("models[{i}].modelName"),
                format!("duplicate model \"{}\"", model.name),
            ));
        }
        models.push(model);
    }

    let rewrite_fallbacks = traffic::compile_rewrites(
        raw.model_rewrites,
        &find_pool,
        default_pool,
        pools.len(),
        default_priority,
        &mut models,
        &mut model_index,
    )?;
    let optional_header = |field: &str, value: Option<&str>, default: &str| match value {
        Some("") => Ok(None),
        v => header_name(field, v.unwrap_or(default)).map(Some),
    };
    let objective_header = optional_header(
        "objectiveHeader",
        raw.objective_header.as_deref(),
        DEFAULT_OBJECTIVE_HEADER,
    )?;
    let fairness_header = optional_header(
        "fairnessHeader",
        raw.fairness_header.as_deref(),
        DEFAULT_FAIRNESS_HEADER,
    )?;
    let flow_control = traffic::compile_flow(raw.flow_control)?;

    let unknown_models = match raw.unknown_models.as_deref() {
        None | Some("passthrough") => UnknownModels::Passthrough,
        Some("reject") => UnknownModels::Reject,
        Some(other) => {
            return Err(err(
                "unknownModels",
                format!("\"{other}\" is not one of passthrough, reject"),
            ))
        }
    };

    let strategy = match raw.scheduling.strategy.as_deref() {
        None => Strategy::Default,
        Some(s) => Strategy::parse(s).map_err(|m| err("scheduling.strategy", m))?,
    };
    let mut profile = Profile::from_config(strategy, &raw.scheduling)
        .map_err(|(f, m)| err(format!("scheduling.{f}"), m))?;
    profile.saturation.flow_control = flow_control.is_some();

    let collector = match raw.collector.mode.as_deref() {
        None | Some("service") => CollectorMode::Service,
        Some("embedded") => CollectorMode::Embedded,
        Some(other) => {
            return Err(err(
                "collector.mode",
                format!("\"{other}\" is not one of service, embedded"),
            ))
        }
    };

    let destination_header = header_name(
        "destinationHeader",
        raw.destination_header
            .as_deref()
            .unwrap_or(DEFAULT_DESTINATION_HEADER),
    )?;
    let session_header = match raw.session_header.as_deref() {
        None => None,
        Some(h) => Some(header_name("sessionHeader", h)?),
    };

    let max_request_body_bytes = raw
        .max_request_body_bytes
        .unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES);
    if max_request_body_bytes == 0 {
        return Err(err("maxRequestBodyBytes", "must be greater than 0"));
    }

    let failure_mode = match raw.failure_mode.as_deref() {
        None | Some("FailOpen") => FailureMode::FailOpen,
        Some("FailClose") => FailureMode::FailClose,
        Some(other) => {
            return Err(err(
                "failureMode",
                format!("\"{other}\" is not one of FailOpen, FailClose"),
            ))
        }
    };

    if let Some(budget_blocks) = profile
        .prefix
        .capacity
        .checked_mul(pools.iter().map(|p| p.endpoints.len()).max().unwrap_or(0))
    {
        if strategy.needs_prefix() && budget_blocks > crate::scheduling::PREFIX_BUDGET_BLOCKS {
            return Err(err(
                "scheduling.prefix.capacity",
                format!(
                    "{} blocks per endpoint × the largest pool's endpoints is more than {} blocks \
                     ({} MiB per Envoy worker)",
                    profile.prefix.capacity,
                    crate::scheduling::PREFIX_BUDGET_BLOCKS,
                    (crate::scheduling::PREFIX_BUDGET_BLOCKS * 4) >> 20
                ),
            ));
        }
    }

    let gate_timeout_ms = raw.gate.timeout_ms.unwrap_or(DEFAULT_GATE_TIMEOUT_MS);
    if !(1..=MAX_TIME_MS).contains(&gate_timeout_ms) {
        return Err(err("gate.timeoutMs", format!("must be 1..={MAX_TIME_MS}")));
    }

    let list_models = match raw.list_models.as_deref() {
        None | Some("merge") => ListModels::Merge,
        Some("gateway") => ListModels::Gateway,
        Some("pool") => ListModels::Pool,
        Some(other) => {
            return Err(err(
                "listModels",
                format!("\"{other}\" is not one of merge, gateway, pool"),
            ))
        }
    };
    let pools_fingerprint = pools_fingerprint(&pools);
    let instance = match raw.instance_name {
        Some(name) => {
            if name.is_empty()
                || name.len() > 128
                || name.chars().any(|c| c.is_control() || c == '/')
            {
                return Err(err(
                    "instanceName",
                    "must be 1..128 characters, no '/' and no control characters",
                ));
            }
            name
        }
        // The pools' names and clusters: the same pods, the same instance.
        None => {
            let ids: Vec<String> = pools
                .iter()
                .map(|p| format!("{}@{}", p.name, p.cluster))
                .collect();
            format!(
                "{:016x}",
                crate::rollout::stable_hash(ids.join("\n").as_bytes())
            )
        }
    };

    Ok(Config {
        pools,
        models,
        model_index,
        default_pool,
        unknown_models,
        strategy,
        profile,
        collector,
        destination_header,
        session_header,
        max_request_body_bytes,
        failure_mode,
        gate_timeout_ms,
        objectives,
        default_priority,
        rewrite_fallbacks,
        objective_header,
        fairness_header,
        flow_control,
        instance,
        pools_fingerprint,
        list_models,
        access_log_fields: raw.access_log_fields.unwrap_or(true),
    })
}

fn compile_pool(i: usize, p: RawPool) -> Result<Pool, ConfigError> {
    let at = |f: &str| format!("pools[{i}].{f}");
    if p.name.is_empty() {
        return Err(err(at("name"), "must not be empty"));
    }
    let discovery = match p.discovery {
        None => None,
        Some(d) => {
            if !p.endpoints.is_empty() {
                return Err(err(
                    at("discovery"),
                    "give either `endpoints` or `discovery`, not both",
                ));
            }
            if d.cluster.is_empty() {
                return Err(err(at("discovery.cluster"), "must not be empty"));
            }
            let admin_path = d
                .admin_path
                .unwrap_or_else(|| "/clusters?format=json".to_string());
            if !admin_path.starts_with('/') {
                return Err(err(at("discovery.adminPath"), "must start with /"));
            }
            let refresh_ms = d.refresh_ms.unwrap_or(5000);
            if !(1..=MAX_TIME_MS).contains(&refresh_ms) {
                return Err(err(
                    at("discovery.refreshMs"),
                    format!("must be 1..={MAX_TIME_MS}"),
                ));
            }
            if d.port == Some(0) {
                return Err(err(at("discovery.port"), "must be 1..65535"));
            }
            Some(Discovery {
                cluster: d.cluster,
                admin_cluster: d.admin_cluster.unwrap_or_else(|| "envoy-admin".to_string()),
                admin_path,
                refresh_ms,
                port: d.port,
            })
        }
    };
    let mut endpoints: Vec<String> = Vec::with_capacity(p.endpoints.len());
    for (j, e) in p.endpoints.iter().enumerate() {
        let addr = parse_endpoint(e).map_err(|m| err(format!("pools[{i}].endpoints[{j}]"), m))?;
        if endpoints.contains(&addr) {
            return Err(err(
                format!("pools[{i}].endpoints[{j}]"),
                format!("duplicate endpoint \"{e}\""),
            ));
        }
        endpoints.push(addr);
    }
    let engine = match p.engine.as_deref() {
        None => Engine::Vllm,
        Some(s) => Engine::parse(s).ok_or_else(|| {
            err(
                at("engine"),
                format!(
                    "\"{s}\" is not one of vllm, sglang, trtllm-serve, triton-trtllm, vllm-ascend"
                ),
            )
        })?,
    };
    let m = p.metrics;
    let names: Vec<(String, String)> = m.names.into_iter().collect();
    // Unknown override keys are refused here, so the filter role refuses them too.
    crate::metrics::Dialect::new(engine, &names).map_err(|e| err(at("metrics.names"), e))?;
    let path = m.path.unwrap_or_else(|| "/metrics".to_string());
    if !path.starts_with('/') {
        return Err(err(at("metrics.path"), "must start with /"));
    }
    if m.port == Some(0) {
        return Err(err(at("metrics.port"), "must be 1..65535"));
    }
    let interval_ms = m.interval_ms.unwrap_or(100);
    let timeout_ms = m.timeout_ms.unwrap_or(1000);
    let staleness_ms = m.staleness_ms.unwrap_or(2000);
    for (name, v) in [
        ("metrics.intervalMs", interval_ms),
        ("metrics.timeoutMs", timeout_ms),
        ("metrics.stalenessMs", staleness_ms),
    ] {
        if !(1..=MAX_TIME_MS).contains(&v) {
            return Err(err(at(name), format!("must be 1..={MAX_TIME_MS}")));
        }
    }
    let max_page_bytes = m.max_page_bytes.unwrap_or(DEFAULT_MAX_PAGE_BYTES);
    if !(MIN_PAGE_BYTES..=MAX_PAGE_BYTES).contains(&max_page_bytes) {
        return Err(err(
            at("metrics.maxPageBytes"),
            format!("must be {MIN_PAGE_BYTES}..={MAX_PAGE_BYTES}"),
        ));
    }
    Ok(Pool {
        cluster: p.cluster.unwrap_or_else(|| p.name.clone()),
        name: p.name,
        endpoints,
        discovery,
        engine,
        metrics: MetricsSettings {
            path,
            port: m.port,
            interval_ms,
            timeout_ms,
            staleness_ms,
            max_page_bytes,
            names,
        },
    })
}

fn compile_model(
    i: usize,
    m: RawModel,
    find_pool: &dyn Fn(&str) -> Option<usize>,
    default_pool: Option<usize>,
    objectives: &[Objective],
) -> Result<Model, ConfigError> {
    let at = |f: &str| format!("models[{i}].{f}");
    if m.model_name.is_empty() {
        return Err(err(at("modelName"), "must not be empty"));
    }
    let pool = match m.pool_ref.as_deref() {
        Some(name) => {
            find_pool(name).ok_or_else(|| err(at("poolRef"), format!("unknown pool \"{name}\"")))?
        }
        None => default_pool.ok_or_else(|| err(at("poolRef"), "missing, and no defaultPool"))?,
    };
    let criticality = match m.criticality.as_deref() {
        None | Some("Standard") => Criticality::Standard,
        Some("Critical") => Criticality::Critical,
        Some("Sheddable") => Criticality::Sheddable,
        Some(other) => {
            return Err(err(
                at("criticality"),
                format!("\"{other}\" is not one of Critical, Standard, Sheddable"),
            ))
        }
    };
    let priority = match (&m.objective, &m.criticality) {
        (Some(_), Some(_)) => {
            return Err(err(
                at("objective"),
                "give criticality or objective, not both",
            ))
        }
        (Some(name), None) => find_objective(objectives, name.as_bytes(), Some(pool))
            .map(|o| o.priority)
            .ok_or_else(|| err(at("objective"), format!("unknown objective \"{name}\"")))?,
        (None, _) => criticality.priority(),
    };
    let targets = match m.target_models {
        None => None,
        Some(list) => Some(traffic::weighted_targets(
            list.into_iter().map(|t| (t.name, t.weight)).collect(),
            &|j, f| at(&format!("targetModels[{j}].{f}")),
            &at("targetModels"),
        )?),
    };
    Ok(Model {
        name: m.model_name,
        pool,
        criticality: Criticality::of_priority(priority),
        priority,
        targets,
    })
}

/// `ip:port` with a literal IP (Envoy's ORIGINAL_DST header takes no host names), normalised.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("\"{s}\" is not an ip:port address"))?;
    if addr.port() == 0 {
        return Err(format!("\"{s}\" has port 0"));
    }
    Ok(addr.to_string())
}

fn header_name(field: &str, h: &str) -> Result<String, ConfigError> {
    let ok = !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
    if !ok {
        return Err(err(field, format!("\"{h}\" is not a valid header name")));
    }
    Ok(h.to_ascii_lowercase())
}

/// The JSON Schema (draft 2020-12) of the configuration document, generated from the types the
/// document is parsed into (`raw.rs` and the scheduling section's). `docs/config.schema.json` is
/// this, pretty-printed (`inference-router-config --schema`). The schema describes the document's
/// shape, enums and bounds for editors and tools; [`Config::parse`] remains the authority (it
/// also checks references between fields, duplicates and addresses).
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(raw::RawConfig))
        .unwrap_or(serde_json::Value::Null);
    if let Some(o) = schema.as_object_mut() {
        o.insert("title".to_string(), "inference-router configuration".into());
    }
    schema
}

#[cfg(test)]
mod tests;

/// Everything the collector reads of the pools, canonically written out and hashed.
fn pools_fingerprint(pools: &[Pool]) -> u64 {
    let mut text = String::new();
    for p in pools {
        let m = &p.metrics;
        text.push_str(&format!(
            "pool {} cluster {} engine {:?} endpoints {} metrics {} {:?} {} {} {} {} {:?}",
            p.name,
            p.cluster,
            p.engine,
            p.endpoints.join(","),
            m.path,
            m.port,
            m.interval_ms,
            m.timeout_ms,
            m.staleness_ms,
            m.max_page_bytes,
            m.names
        ));
        if let Some(d) = &p.discovery {
            text.push_str(&format!(
                " discovery {} {} {} {} {:?}",
                d.cluster, d.admin_cluster, d.admin_path, d.refresh_ms, d.port
            ));
        }
        text.push('\n');
    }
    crate::rollout::stable_hash(text.as_bytes())
}
