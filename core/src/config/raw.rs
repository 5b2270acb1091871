//! The configuration document exactly as users write it (docs/contract.md section 3).
//! Unknown fields are refused so a typo is named instead of silently ignored.

use crate::scheduling::SchedulingConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    pub default_pool: Option<String>,
    pub unknown_models: Option<String>,
    #[serde(default)]
    pub scheduling: SchedulingConfig,
    #[serde(default)]
    pub collector: RawCollector,
    pub destination_header: Option<String>,
    pub session_header: Option<String>,
    pub max_request_body_bytes: Option<u64>,
    pub failure_mode: Option<String>,
    #[serde(default)]
    pub gate: RawGate,
    pub instance_name: Option<String>,
    pub list_models: Option<String>,
    #[serde(default)]
    pub objectives: Vec<RawObjective>,
    pub default_objective: Option<String>,
    #[serde(default)]
    pub model_rewrites: Vec<RawModelRewrite>,
    pub objective_header: Option<String>,
    pub fairness_header: Option<String>,
    #[serde(default)]
    pub flow_control: RawFlowControl,
}

/// The gate role's own settings (installs without `allow_on_headers_stop_iteration`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawGate {
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub engine: Option<String>,
    pub cluster: Option<String>,
    #[serde(default)]
    pub metrics: RawMetrics,
    pub discovery: Option<RawDiscovery>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDiscovery {
    pub cluster: String,
    pub admin_cluster: Option<String>,
    pub admin_path: Option<String>,
    pub refresh_ms: Option<u64>,
    pub port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawMetrics {
    pub path: Option<String>,
    pub port: Option<u16>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub staleness_ms: Option<u64>,
    pub max_page_bytes: Option<u64>,
    #[serde(default)]
    pub names: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModel {
    pub model_name: String,
    pub pool_ref: Option<String>,
    pub criticality: Option<String>,
    pub objective: Option<String>,
    pub target_models: Option<Vec<RawTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTarget {
    pub name: String,
    // Signed so a negative weight gets our own message rather than serde's.
    pub weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawCollector {
    pub mode: Option<String>,
}

/// An InferenceObjective: a named priority (higher first; below zero is sheddable).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawObjective {
    pub name: String,
    pub priority: Option<i64>,
    pub pool_ref: Option<String>,
}

/// An InferenceModelRewrite: ordered rules for one pool, each rewriting matched model names to
/// weighted targets.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModelRewrite {
    /// For the reader of the document (the resource's name); errors name rules by position.
    #[allow(dead_code)]
    pub name: Option<String>,
    pub pool_ref: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawRewriteRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRewriteRule {
    /// Empty: every model of the pool that no other rule names.
    #[serde(default)]
    pub matches: Vec<RawRewriteMatch>,
    #[serde(default)]
    pub targets: Vec<RawRewriteTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRewriteMatch {
    pub model: RawModelMatch,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModelMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRewriteTarget {
    pub model_rewrite: String,
    pub weight: Option<i64>,
}

/// Holding requests in the gateway while the pool is saturated.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawFlowControl {
    pub enabled: Option<bool>,
    pub ttl_ms: Option<u64>,
    pub no_endpoint_ttl_ms: Option<u64>,
    pub max_requests_per_band: Option<u64>,
    pub max_bytes_per_band: Option<u64>,
}
