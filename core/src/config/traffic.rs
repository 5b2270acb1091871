//! How requests are ranked and renamed beyond `models[]`: objectives (the Inference Extension's
//! InferenceObjective: a named integer priority, higher first, below zero sheddable), rewrite
//! rules (InferenceModelRewrite: model names of a pool to weighted targets) and flow control.

use super::raw::{RawFlowControl, RawModelRewrite, RawObjective};
use super::{err, ConfigError, Criticality, Model, MAX_TIME_MS};
use crate::rollout::WeightedTargets;
use std::collections::HashMap;

/// `criticality` as a priority: one step above and below `Standard`'s 0, so an objective with any
/// other priority ranks as its number says.
pub const CRITICAL_PRIORITY: i32 = 1;
pub const STANDARD_PRIORITY: i32 = 0;
pub const SHEDDABLE_PRIORITY: i32 = -1;
/// The Inference Extension's request headers.
pub const DEFAULT_OBJECTIVE_HEADER: &str = "x-gateway-inference-objective";
pub const DEFAULT_FAIRNESS_HEADER: &str = "x-gateway-inference-fairness-id";
/// Objective names a client may send are looked up, never stored: this bounds the table.
pub const MAX_OBJECTIVES: usize = 256;

impl Criticality {
    pub fn priority(self) -> i32 {
        match self {
            Criticality::Critical => CRITICAL_PRIORITY,
            Criticality::Standard => STANDARD_PRIORITY,
            Criticality::Sheddable => SHEDDABLE_PRIORITY,
        }
    }

    /// What the scheduler needs of a priority: below zero may be shed.
    pub fn of_priority(priority: i32) -> Criticality {
        match priority {
            p if p < 0 => Criticality::Sheddable,
            0 => Criticality::Standard,
            _ => Criticality::Critical,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objective {
    pub name: String,
    pub priority: i32,
    /// Index into `Config::pools`; None: any pool.
    pub pool: Option<usize>,
}

/// Holding requests in the gateway while their pool is saturated (`flowControl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    pub ttl_ms: u64,
    pub no_endpoint_ttl_ms: u64,
    pub max_requests_per_band: usize,
    pub max_bytes_per_band: u64,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            ttl_ms: 60_000,
            no_endpoint_ttl_ms: 10_000,
            max_requests_per_band: 1000,
            max_bytes_per_band: 64 * 1024 * 1024,
        }
    }
}

pub(super) fn compile_objectives(
    raw: Vec<RawObjective>,
    find_pool: &dyn Fn(&str) -> Option<usize>,
) -> Result<Vec<Objective>, ConfigError> {
    if raw.len() > MAX_OBJECTIVES {
        return Err(err(
            "objectives",
            format!("at most {MAX_OBJECTIVES} objectives"),
        ));
    }
    let mut out: Vec<Objective> = Vec::with_capacity(raw.len());
    for (i, o) in raw.into_iter().enumerate() {
        let at = |f: &str| format!("objectives[{i}].{f}");
        if o.name.is_empty() {
            return Err(err(at("name"), "must not be empty"));
        }
        let pool = match o.pool_ref.as_deref() {
            None => None,
            Some(p) => Some(
                find_pool(p).ok_or_else(|| err(at("poolRef"), format!("unknown pool \"{p}\"")))?,
            ),
        };
        if out.iter().any(|q| q.name == o.name && q.pool == pool) {
            return Err(err(
                at("name"),
                format!("duplicate objective \"{}\"", o.name),
            ));
        }
        let priority = i32::try_from(o.priority.unwrap_or(0)).map_err(|_| {
            err(
                at("priority"),
                format!("must be in {}..={}", i32::MIN, i32::MAX),
            )
        })?;
        out.push(Objective {
            name: o.name,
            priority,
            pool,
        });
    }
    Ok(out)
}

/// The objective named `name` for a request to `pool` (an objective bound to another pool does
/// not apply).
pub fn find_objective<'o>(
    objectives: &'o [Objective],
    name: &[u8],
    pool: Option<usize>,
) -> Option<&'o Objective> {
    objectives
        .iter()
        .filter(|o| o.name.as_bytes() == name)
        .find(|o| o.pool.is_none() || o.pool == pool)
}

/// Weighted targets from `(name, weight)` pairs: every target weighted or none, integer weights
/// ≥ 0, no duplicates. `at(j, field)` names the offending field.
pub(super) fn weighted_targets(
    list: Vec<(String, Option<i64>)>,
    at: &dyn Fn(usize, &str) -> String,
    whole: &str,
) -> Result<WeightedTargets, ConfigError> {
    if list.is_empty() {
        return Err(err(whole, "must not be empty (omit it instead)"));
    }
    let weighted = list.iter().filter(|t| t.1.is_some()).count();
    if weighted != 0 && weighted != list.len() {
        return Err(err(whole, "give a weight to every target or to none"));
    }
    let mut pairs: Vec<(String, u32)> = Vec::with_capacity(list.len());
    for (j, (name, weight)) in list.into_iter().enumerate() {
        if name.is_empty() {
            return Err(err(at(j, "name"), "must not be empty"));
        }
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(err(at(j, "name"), format!("duplicate target \"{name}\"")));
        }
        let w = weight.unwrap_or(1);
        let w = u32::try_from(w).map_err(|_| {
            err(
                at(j, "weight"),
                format!("{w} is not an integer in 0..={}", u32::MAX),
            )
        })?;
        pairs.push((name, w));
    }
    Ok(WeightedTargets::new(pairs))
}

/// Rewrite rules into what requests meet: each exact-match name becomes a served model of its
/// pool (added to `models`; a name `models[]` or an earlier rule already serves is refused), and
/// a rule with no matches becomes its pool's fallback for names nothing else serves. Returns the
/// fallback per pool.
pub(super) fn compile_rewrites(
    raw: Vec<RawModelRewrite>,
    find_pool: &dyn Fn(&str) -> Option<usize>,
    default_pool: Option<usize>,
    pools: usize,
    default_priority: i32,
    models: &mut Vec<Model>,
    model_index: &mut HashMap<String, usize>,
) -> Result<Vec<Option<WeightedTargets>>, ConfigError> {
    let mut fallbacks: Vec<Option<WeightedTargets>> = vec![None; pools];
    for (i, rw) in raw.into_iter().enumerate() {
        let pool = match rw.pool_ref.as_deref() {
            Some(p) => find_pool(p).ok_or_else(|| {
                err(
                    format!("modelRewrites[{i}].poolRef"),
                    format!("unknown pool \"{p}\""),
                )
            })?,
            None => default_pool.ok_or_else(|| {
                err(
                    format!("modelRewrites[{i}].poolRef"),
                    "missing, and no defaultPool",
                )
            })?,
        };
        for (r, rule) in rw.rules.into_iter().enumerate() {
            let at_rule = format!("modelRewrites[{i}].rules[{r}]");
            let pairs = rule
                .targets
                .into_iter()
                .map(|t| (t.model_rewrite, t.weight))
                .collect();
            let targets = weighted_targets(
                pairs,
                &|j, f| {
                    let f = if f == "name" { "modelRewrite" } else { f };
                    format!("{at_rule}.targets[{j}].{f}")
                },
                &format!("{at_rule}.targets"),
            )?;
            if rule.matches.is_empty() {
                let slot = fallbacks
                    .get_mut(pool)
                    .ok_or_else(|| err(&at_rule, "no such pool"))?;
                if slot.is_some() {
                    return Err(err(
                        format!("{at_rule}.matches"),
                        "a second rule matching every model of the same pool",
                    ));
                }
                *slot = Some(targets);
                continue;
            }
            for (k, m) in rule.matches.into_iter().enumerate() {
                let at_match = format!("{at_rule}.matches[{k}].model");
                match m.model.kind.as_deref() {
                    None | Some("Exact") => {}
                    Some(other) => {
                        return Err(err(
                            format!("{at_match}.type"),
                            format!("\"{other}\" is not supported (only Exact)"),
                        ))
                    }
                }
                let name = m.model.value;
                if name.is_empty() {
                    return Err(err(format!("{at_match}.value"), "must not be empty"));
                }
                if model_index.contains_key(&name) {
                    return Err(err(
                        format!("{at_match}.value"),
                        format!("\"{name}\" is already served by another entry"),
                    ));
                }
                model_index.insert(name.clone(), models.len());
                models.push(Model {
                    name,
                    pool,
                    criticality: Criticality::of_priority(default_priority),
                    priority: default_priority,
                    targets: Some(targets.clone()),
                });
            }
        }
    }
    Ok(fallbacks)
}

pub(super) fn compile_flow(raw: RawFlowControl) -> Result<Option<FlowControl>, ConfigError> {
    if raw.enabled != Some(true) {
        return Ok(None);
    }
    let d = FlowControl::default();
    let ttl_ms = raw.ttl_ms.unwrap_or(d.ttl_ms);
    let no_endpoint_ttl_ms = raw.no_endpoint_ttl_ms.unwrap_or(d.no_endpoint_ttl_ms);
    for (f, v) in [
        ("flowControl.ttlMs", ttl_ms),
        ("flowControl.noEndpointTtlMs", no_endpoint_ttl_ms),
    ] {
        if !(1..=MAX_TIME_MS).contains(&v) {
            return Err(err(f, format!("must be 1..={MAX_TIME_MS}")));
        }
    }
    let requests = raw
        .max_requests_per_band
        .unwrap_or(d.max_requests_per_band as u64);
    if !(1..=100_000).contains(&requests) {
        return Err(err("flowControl.maxRequestsPerBand", "must be 1..=100000"));
    }
    let bytes = raw.max_bytes_per_band.unwrap_or(d.max_bytes_per_band);
    if !(1..=(1u64 << 34)).contains(&bytes) {
        return Err(err(
            "flowControl.maxBytesPerBand",
            "must be 1..=17179869184 (16 GiB)",
        ));
    }
    Ok(Some(FlowControl {
        ttl_ms,
        no_endpoint_ttl_ms,
        max_requests_per_band: usize::try_from(requests).unwrap_or(usize::MAX),
        max_bytes_per_band: bytes,
    }))
}
