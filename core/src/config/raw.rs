//! The configuration document exactly as users write it (docs/contract.md section 3).
//! Unknown fields are refused so a typo is named instead of silently ignored.
//!
//! With the `schema` feature these types also derive the document's JSON Schema
//! (`docs/config.schema.json`, see [`super::json_schema`]): the doc comments become its
//! descriptions, the `schemars` attributes its enums and bounds. Validation proper stays in
//! `mod.rs`; the schema is for editors and tools.

use crate::scheduling::SchedulingConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The inference-router plugin's configuration document.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    /// Where an editor finds this schema; ignored by the plugin.
    #[serde(rename = "$schema")]
    #[allow(dead_code)] // accepted so a document can name its schema, never read
    pub schema: Option<String>,
    /// The pools of model servers (InferencePools).
    #[serde(default)]
    pub pools: Vec<RawPool>,
    /// One entry per served model name (InferenceModels).
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// The pool for a model name no entry lists.
    pub default_pool: Option<String>,
    /// A model name no entry lists: `passthrough` (to `defaultPool`, unchanged; default) or
    /// `reject` (404).
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["passthrough", "reject", null])))]
    pub unknown_models: Option<String>,
    /// The scheduling strategy and its weights and thresholds.
    #[serde(default)]
    pub scheduling: SchedulingConfig,
    /// Where the metrics collector runs.
    #[serde(default)]
    pub collector: RawCollector,
    /// The header that carries the picked `ip:port` (default `x-gateway-destination-endpoint`).
    pub destination_header: Option<String>,
    /// A header whose value keeps one client on one target model (else the body's `user`).
    pub session_header: Option<String>,
    /// Larger request bodies get 413 (default 8388608).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_request_body_bytes: Option<u64>,
    /// With no fresh metrics: `FailOpen` (route anyway; default) or `FailClose` (503).
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["FailOpen", "FailClose", null])))]
    pub failure_mode: Option<String>,
    /// The gate role's settings (reader + gate installs).
    #[serde(default)]
    pub gate: RawGate,
    /// Names this plugin instance in Envoy's shared data (default: derived from the pools).
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 128)))]
    pub instance_name: Option<String>,
    /// Who answers `GET /v1/models`: `merge` (default), `gateway` or `pool`.
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["merge", "gateway", "pool", null])))]
    pub list_models: Option<String>,
    /// Named priorities (InferenceObjectives).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = 256)))]
    pub objectives: Vec<RawObjective>,
    /// The objective (one without `poolRef`) of requests nothing else ranks.
    pub default_objective: Option<String>,
    /// Weighted rewrites of model names per pool (InferenceModelRewrites).
    #[serde(default)]
    pub model_rewrites: Vec<RawModelRewrite>,
    /// The request header naming an objective (`""`: not read).
    pub objective_header: Option<String>,
    /// The request header naming the flow (tenant) for fairness (`""`: not read).
    pub fairness_header: Option<String>,
    /// Holding requests in the gateway while the pool is saturated.
    #[serde(default)]
    pub flow_control: RawFlowControl,
    /// Put the decision in filter state for Envoy's access log (default true). `false` saves six
    /// filter-state writes per request where no access log reads them.
    pub access_log_fields: Option<bool>,
}

/// The gate role's own settings (installs without `allow_on_headers_stop_iteration`).
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Gate")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawGate {
    /// How long the gate holds a request for the reader's decision before answering 503
    /// (default 60000).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600000)))]
    pub timeout_ms: Option<u64>,
}

/// A pool of model servers (an InferencePool).
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Pool")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPool {
    /// The pool's id; also its Envoy cluster unless `cluster` names another.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub name: String,
    /// `ip:port` of each endpoint, literal IPs (or `discovery` instead).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Metric dialect (default `vllm`).
    #[cfg_attr(
        feature = "schema",
        schemars(extend("enum" = ["vllm", "sglang", "trtllm-serve", "triton-trtllm", "vllm-ascend", null]))
    )]
    pub engine: Option<String>,
    /// The Envoy cluster the pool is reached through (default: the pool's name).
    pub cluster: Option<String>,
    /// How the endpoints' metrics are scraped.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Members taken from an Envoy cluster through Envoy's admin, instead of `endpoints`.
    pub discovery: Option<RawDiscovery>,
}

/// A pool's members read from an Envoy cluster (Envoy's admin `/clusters?format=json`).
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Discovery")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDiscovery {
    /// The Envoy cluster whose hosts are the pool's members.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub cluster: String,
    /// A cluster reaching Envoy's admin (default `envoy-admin`; Istio's and Envoy Gateway's
    /// proxies have `prometheus_stats`).
    pub admin_cluster: Option<String>,
    /// The admin path (default `/clusters?format=json`).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^/")))]
    pub admin_path: Option<String>,
    /// How often the members are read (default 5000).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600000)))]
    pub refresh_ms: Option<u64>,
    /// Replaces the members' port.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub port: Option<u16>,
}

/// How a pool's endpoints are scraped.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Metrics")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawMetrics {
    /// The metrics page (default `/metrics`).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^/")))]
    pub path: Option<String>,
    /// The metrics port, when it is not the serving port.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub port: Option<u16>,
    /// Scrape interval (default 100).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600000)))]
    pub interval_ms: Option<u64>,
    /// Scrape timeout (default 1000).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600000)))]
    pub timeout_ms: Option<u64>,
    /// Metrics older than this are stale (default 2000).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600000)))]
    pub staleness_ms: Option<u64>,
    /// A larger page is a failed scrape (default 4194304).
    #[cfg_attr(feature = "schema", schemars(range(min = 1024, max = 67108864)))]
    pub max_page_bytes: Option<u64>,
    /// Overrides of the dialect's metric names.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(extend("propertyNames" = {"enum": ["waiting", "running", "kvCacheUsage", "loraInfo",
                                                     "cacheConfig", "kvBlocksFree", "kvBlocksTotal"]}))
    )]
    pub names: BTreeMap<String, String>,
}

/// A served model name (an InferenceModel).
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Model")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModel {
    /// The name clients send in `model`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub model_name: String,
    /// The pool serving it (default `defaultPool`).
    pub pool_ref: Option<String>,
    /// `Critical`, `Standard` (default) or `Sheddable` (429 when the pool is saturated).
    #[cfg_attr(
        feature = "schema",
        schemars(extend("enum" = ["Critical", "Standard", "Sheddable", null]))
    )]
    pub criticality: Option<String>,
    /// An objective's name (`objectives[].name`) giving its priority.
    pub objective: Option<String>,
    /// Weighted targets (LoRA adapters or base models); absent: served as named.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub target_models: Option<Vec<RawTarget>>,
}

/// One target of a served model name.
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Target")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTarget {
    /// The adapter or model name the server knows.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub name: String,
    /// Integer ≥ 0: the pick has probability weight / sum (all zero: uniform). Give every target
    /// a weight or none.
    // Signed so a negative weight gets our own message rather than serde's.
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 4294967295u32)))]
    pub weight: Option<i64>,
}

/// Where the metrics collector runs.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Collector")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawCollector {
    /// `service` (a singleton bootstrap service; default) or `embedded` (inside the filter's VMs).
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["service", "embedded", null])))]
    pub mode: Option<String>,
}

/// An InferenceObjective: a named priority (higher first; below zero is sheddable).
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Objective")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawObjective {
    /// The objective's name (requests and models name it).
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub name: String,
    /// Higher first; below zero is sheddable (default 0).
    #[cfg_attr(feature = "schema", schemars(range(min = -2147483648, max = 2147483647)))]
    pub priority: Option<i64>,
    /// Only for this pool (default: every pool).
    pub pool_ref: Option<String>,
}

/// An InferenceModelRewrite: ordered rules for one pool, each rewriting matched model names to
/// weighted targets.
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "ModelRewrite")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModelRewrite {
    /// For the reader of the document (the resource's name); errors name rules by position.
    #[allow(dead_code)]
    pub name: Option<String>,
    /// The pool whose model names it rewrites (default `defaultPool`).
    pub pool_ref: Option<String>,
    /// The rules, in order.
    #[serde(default)]
    pub rules: Vec<RawRewriteRule>,
}

/// Model names and the weighted targets they are rewritten to.
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "RewriteRule")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRewriteRule {
    /// Empty: every model of the pool that no other rule names.
    #[serde(default)]
    pub matches: Vec<RawRewriteMatch>,
    /// Weighted targets; give every target a weight or none.
    #[serde(default)]
    pub targets: Vec<RawRewriteTarget>,
}

/// One match of a rewrite rule.
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "RewriteMatch")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRewriteMatch {
    /// The model name matched.
    pub model: RawModelMatch,
}

/// A model name to match.
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "ModelMatch")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModelMatch {
    /// `Exact` (default; the only one supported).
    #[serde(rename = "type")]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["Exact", null])))]
    pub kind: Option<String>,
    /// The name.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub value: String,
}

/// A rewrite target.
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "RewriteTarget")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRewriteTarget {
    /// The model name the request is rewritten to.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub model_rewrite: String,
    /// Integer ≥ 0 (all zero: uniform).
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 4294967295u32)))]
    pub weight: Option<i64>,
}

/// Holding requests in the gateway while the pool is saturated.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "FlowControl")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawFlowControl {
    /// On (default off).
    pub enabled: Option<bool>,
    /// How long a request may wait (default 60000).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600000)))]
    pub ttl_ms: Option<u64>,
    /// How long a request may wait for an empty pool (default 10000).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 600000)))]
    pub no_endpoint_ttl_ms: Option<u64>,
    /// Requests held per priority band at most (default 1000).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100000)))]
    pub max_requests_per_band: Option<u64>,
    /// Bytes held per priority band at most (default 67108864).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 17179869184u64)))]
    pub max_bytes_per_band: Option<u64>,
}
