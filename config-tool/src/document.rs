//! From the typed resources to the configuration document, checked by the plugin's own parser.

use crate::resources::{
    classify, objects, Input, Model, Objective, Pool, Resource, Rewrite, RewriteRule,
};
use crate::{Error, Options, Origin, Target};
use serde::Serialize;

/// Envoy's default listener buffer, and what the shipped control-plane installs set: at or
/// below it the plugin answers an oversized body with its OpenAI-shaped 413 before Envoy's own.
pub const CONTROL_PLANE_MAX_BODY: u64 = 1_048_576;
/// How often a pool's members are read, as in the shipped installs.
pub const REFRESH_MS: u64 = 2000;

/// The configuration document (docs/contract.md section 3) as this tool writes it: fields in the
/// contract's order, defaults left out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub pools: Vec<DocPool>,
    pub models: Vec<DocModel>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<DocObjective>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_rewrites: Vec<DocRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    pub collector: DocCollector,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocPool {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub discovery: DocDiscovery,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocDiscovery {
    pub cluster: String,
    pub admin_cluster: String,
    pub refresh_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocModel {
    pub model_name: String,
    pub pool_ref: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub criticality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_models: Option<Vec<DocTarget>>,
}

/// An InferenceObjective as the document's `objectives[]` entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocObjective {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    pub pool_ref: String,
}

/// An InferenceModelRewrite as the document's `modelRewrites[]` entry (the same shape).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocRewrite {
    pub name: String,
    pub pool_ref: String,
    pub rules: Vec<RewriteRule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocTarget {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocCollector {
    pub mode: String,
}

/// The converted input: the document, and the pools it came from (for the manifests).
#[derive(Debug, Clone)]
pub struct Conversion {
    pub document: Document,
    pub pools: Vec<Pool>,
    /// Each pool's Envoy cluster, in `pools` order.
    pub clusters: Vec<String>,
    /// Each pool's Service (istio) or HTTPRoute (envoy-gateway); None for envoy.
    pub backends: Vec<Option<String>>,
    /// What the conversion left out, one line each (the command prints them to stderr).
    pub warnings: Vec<String>,
}

/// Convert the inputs into the document for `o.target`. The document has passed
/// [`router_core::config::Config::parse`].
pub fn convert(inputs: &[Input], o: &Options) -> Result<Conversion, Error> {
    let mut pools: Vec<Pool> = Vec::new();
    let mut models: Vec<Model> = Vec::new();
    let mut objectives: Vec<Objective> = Vec::new();
    let mut rewrites: Vec<Rewrite> = Vec::new();
    for input in inputs {
        for obj in objects(input)? {
            match classify(&obj, &o.namespace, o.skip_other_kinds)? {
                Resource::Pool(p) => {
                    if let Some(first) = pools.iter().find(|q| q.name == p.name) {
                        return Err(Error::at(
                            &p.origin,
                            Some("metadata.name"),
                            format!(
                                "a second InferencePool \"{}\" (the first: {}); pool names must \
                                 be unique across namespaces: convert each namespace apart",
                                p.name, first.origin
                            ),
                        ));
                    }
                    pools.push(p);
                }
                Resource::Model(m) => {
                    if let Some(first) = models.iter().find(|n| n.model_name == m.model_name) {
                        return Err(Error::at(
                            &m.origin,
                            Some("spec.modelName"),
                            format!(
                                "\"{}\" is served already by {}; one InferenceModel per model name",
                                m.model_name, first.origin
                            ),
                        ));
                    }
                    models.push(m);
                }
                Resource::Objective(x) => {
                    if let Some(first) = objectives
                        .iter()
                        .find(|y| y.name == x.name && y.pool_name == x.pool_name)
                    {
                        return Err(Error::at(
                            &x.origin,
                            Some("metadata.name"),
                            format!(
                                "a second InferenceObjective \"{}\" for pool \"{}\" (the first: {})",
                                x.name, x.pool_name, first.origin
                            ),
                        ));
                    }
                    objectives.push(x);
                }
                Resource::Rewrite(r) => rewrites.push(r),
                Resource::Other => {}
            }
        }
    }
    let mut doc_models = Vec::with_capacity(models.len());
    for m in &models {
        if !pools
            .iter()
            .any(|p| p.name == m.pool_name && p.namespace == m.namespace)
        {
            let elsewhere: Vec<&str> = pools
                .iter()
                .filter(|p| p.name == m.pool_name)
                .map(|p| p.namespace.as_str())
                .collect();
            return Err(Error::at(
                &m.origin,
                Some("spec.poolRef.name"),
                if elsewhere.is_empty() {
                    format!("no InferencePool \"{}\" in the input", m.pool_name)
                } else {
                    format!(
                        "InferencePool \"{}\" is in namespace {}, not {} (a pool must be in its \
                         models' namespace)",
                        m.pool_name,
                        elsewhere.join(", "),
                        m.namespace
                    )
                },
            ));
        }
        doc_models.push(DocModel {
            model_name: m.model_name.clone(),
            pool_ref: m.pool_name.clone(),
            criticality: m.criticality.clone(),
            target_models: m.targets.as_ref().map(|ts| {
                ts.iter()
                    .map(|(name, weight)| DocTarget {
                        name: name.clone(),
                        weight: *weight,
                    })
                    .collect()
            }),
        });
    }

    let pool_of = |origin, name: &str, namespace: &str, kind: &str| -> Result<(), Error> {
        if pools
            .iter()
            .any(|p| p.name == name && p.namespace == namespace)
        {
            Ok(())
        } else {
            Err(Error::at(
                origin,
                Some("spec.poolRef.name"),
                format!("no InferencePool \"{name}\" in namespace {namespace} in the input (an {kind} names a pool of its own namespace)"),
            ))
        }
    };
    let mut doc_objectives = Vec::with_capacity(objectives.len());
    for x in &objectives {
        pool_of(&x.origin, &x.pool_name, &x.namespace, "InferenceObjective")?;
        doc_objectives.push(DocObjective {
            name: x.name.clone(),
            priority: x.priority,
            pool_ref: x.pool_name.clone(),
        });
    }
    for r in &rewrites {
        pool_of(
            &r.origin,
            &r.pool_name,
            &r.namespace,
            "InferenceModelRewrite",
        )?;
    }
    let Resolved {
        doc: doc_rewrites,
        kept,
        warnings,
    } = precedence(&rewrites)?;

    if pools.is_empty() {
        return Err(Error::plain(
            "no InferencePool in the input: the document needs at least one pool",
        ));
    }

    // One failureMode for the document: the pools that give one must agree.
    let mut failure_mode: Option<(&str, &Pool)> = None;
    for p in &pools {
        if let Some(m) = p.failure_mode.as_deref() {
            match failure_mode {
                Some((first, q)) if first != m => {
                    return Err(Error::at(
                        &p.origin,
                        Some("spec.endpointPickerRef.failureMode"),
                        format!(
                            "{m}, but {} says {first}: the configuration has one failureMode \
                             for all its pools",
                            q.origin
                        ),
                    ))
                }
                Some(_) => {}
                None => failure_mode = Some((m, p)),
            }
        }
    }

    let services = per_pool("--service", &o.services, &pools)?;
    let routes = per_pool("--route", &o.routes, &pools)?;
    let mut doc_pools = Vec::with_capacity(pools.len());
    let mut clusters = Vec::with_capacity(pools.len());
    let mut backends = Vec::with_capacity(pools.len());
    for (i, p) in pools.iter().enumerate() {
        let (cluster, admin, backend) = match o.target {
            Target::Istio => {
                let service = services[i].clone().unwrap_or_else(|| p.name.clone());
                (
                    format!(
                        "outbound|{}||{service}.{}.svc.cluster.local",
                        p.target_port, p.namespace
                    ),
                    "prometheus_stats",
                    Some(service),
                )
            }
            Target::EnvoyGateway => {
                let route = routes[i].clone().unwrap_or_else(|| p.name.clone());
                (
                    format!("httproute/{}/{route}/rule/0", p.namespace),
                    "prometheus_stats",
                    Some(route),
                )
            }
            Target::Envoy => (p.name.clone(), "envoy-admin", None),
        };
        doc_pools.push(DocPool {
            name: p.name.clone(),
            // Under a control plane the pool's name is not a cluster: name the one that is.
            cluster: (cluster != p.name).then(|| cluster.clone()),
            discovery: DocDiscovery {
                cluster: cluster.clone(),
                admin_cluster: admin.to_string(),
                refresh_ms: REFRESH_MS,
            },
        });
        clusters.push(cluster);
        backends.push(backend);
    }

    let default_pool = match &o.default_pool {
        Some(name) => {
            if !pools.iter().any(|p| &p.name == name) {
                return Err(Error::plain(format!(
                    "--default-pool {name}: no InferencePool of that name in the input"
                )));
            }
            Some(name.clone())
        }
        None if pools.len() == 1 => Some(pools[0].name.clone()),
        None => None,
    };
    let control_plane = o.target != Target::Envoy;
    let document = Document {
        pools: doc_pools,
        models: doc_models,
        objectives: doc_objectives,
        model_rewrites: doc_rewrites,
        default_pool,
        collector: DocCollector {
            mode: if control_plane { "embedded" } else { "service" }.to_string(),
        },
        max_request_body_bytes: control_plane.then_some(CONTROL_PLANE_MAX_BODY),
        failure_mode: failure_mode.map(|(m, _)| m.to_string()),
    };
    let kinds: Vec<&Origin> = objectives.iter().map(|x| &x.origin).collect();
    check(&document, &pools, &models, &kinds, &rewrites, &kept)?;
    Ok(Conversion {
        document,
        pools,
        clusters,
        backends,
        warnings,
    })
}

/// What of an InferenceModelRewrite's rules the document keeps: per kept rule, its index in
/// the input and the indices of its kept matches.
type Kept = Vec<(usize, Vec<usize>)>;

/// [`precedence`]'s answer.
struct Resolved {
    doc: Vec<DocRewrite>,
    kept: Vec<Kept>,
    warnings: Vec<String>,
}

/// Who holds a model name (or, for `None`, a pool's catch-all): rewrite, rule, match.
type Holder = (usize, usize, Option<usize>);

/// The rewrites as llm-d applies them, in the document's shape, where the plugin takes each
/// model name once and one catch-all rule per pool: of the rules of one pool that match the
/// same name (or match every name), the first rule of the oldest resource
/// (`metadata.creationTimestamp`) wins; the others lose that match, with a warning. Two
/// resources whose age the input does not tell apart are refused. Returns the document's
/// entries, what each kept, and the warnings.
fn precedence(rewrites: &[Rewrite]) -> Result<Resolved, Error> {
    use std::collections::HashMap;
    // (namespace, pool, Some(model) | None for the catch-all) → holder.
    let mut holders: HashMap<(&str, &str, Option<&str>), Holder> = HashMap::new();
    let mut dropped: Vec<Holder> = Vec::new();
    let mut warnings = Vec::new();
    let field = |(_, r, m): Holder| -> String {
        match m {
            Some(k) => format!("spec.rules[{r}].matches[{k}]"),
            None => format!("spec.rules[{r}]"),
        }
    };
    for (i, rw) in rewrites.iter().enumerate() {
        for (r, rule) in rw.rules.iter().enumerate() {
            let mut claims: Vec<(Option<&str>, Option<usize>)> = Vec::new();
            if rule.matches.is_empty() {
                claims.push((None, None));
            }
            for (k, m) in rule.matches.iter().enumerate() {
                claims.push((Some(m.model.value.as_str()), Some(k)));
            }
            for (model, k) in claims {
                let key = (rw.namespace.as_str(), rw.pool_name.as_str(), model);
                let new: Holder = (i, r, k);
                let Some(&old) = holders.get(&key) else {
                    holders.insert(key, new);
                    continue;
                };
                let what = match model {
                    Some(name) => format!("model \"{name}\""),
                    None => "every model (a rule without matches)".to_string(),
                };
                let first = &rewrites[old.0];
                // The same resource: its first rule wins. Another: the older one's.
                let new_wins = if old.0 == i {
                    false
                } else {
                    match (&first.created, &rw.created) {
                        (Some(a), Some(b)) if a != b => b < a,
                        _ => {
                            return Err(Error::at(
                                &rw.origin,
                                Some(&field(new)),
                                format!(
                                    "matches {what} of pool \"{}\" as {} ({}) does; llm-d uses the \
                                     rule of the older resource, which the input does not tell: \
                                     give both metadata.creationTimestamp (as `kubectl get -o \
                                     yaml` prints it) or let one rule match it",
                                    rw.pool_name,
                                    first.origin,
                                    field(old)
                                ),
                            ))
                        }
                    }
                };
                let (winner, loser) = if new_wins { (new, old) } else { (old, new) };
                let (w, l) = (&rewrites[winner.0], &rewrites[loser.0]);
                warnings.push(format!(
                    "{}: {}: left out: {} ({}) matches {what} of pool \"{}\" first{}, as llm-d \
                     uses it",
                    l.origin,
                    field(loser),
                    w.origin,
                    field(winner),
                    rw.pool_name,
                    if winner.0 == loser.0 {
                        " (the first matching rule)"
                    } else {
                        " (the older resource)"
                    }
                ));
                dropped.push(loser);
                holders.insert(key, winner);
            }
        }
    }
    let mut doc = Vec::with_capacity(rewrites.len());
    let mut kept_all = Vec::with_capacity(rewrites.len());
    for (i, rw) in rewrites.iter().enumerate() {
        let mut rules = Vec::with_capacity(rw.rules.len());
        let mut kept: Kept = Vec::with_capacity(rw.rules.len());
        for (r, rule) in rw.rules.iter().enumerate() {
            if rule.matches.is_empty() {
                if !dropped.contains(&(i, r, None)) {
                    rules.push(rule.clone());
                    kept.push((r, Vec::new()));
                }
                continue;
            }
            let ks: Vec<usize> = (0..rule.matches.len())
                .filter(|&k| !dropped.contains(&(i, r, Some(k))))
                .collect();
            // A rule whose every match is taken matches nothing: it must not become a catch-all.
            if ks.is_empty() {
                continue;
            }
            rules.push(RewriteRule {
                matches: ks.iter().map(|&k| rule.matches[k].clone()).collect(),
                targets: rule.targets.clone(),
            });
            kept.push((r, ks));
        }
        doc.push(DocRewrite {
            name: rw.name.clone(),
            pool_ref: rw.pool_name.clone(),
            rules,
        });
        kept_all.push(kept);
    }
    Ok(Resolved {
        doc,
        kept: kept_all,
        warnings,
    })
}

/// `--service` / `--route` resolved per pool: `NAME` alone is for the only pool.
fn per_pool(
    flag: &str,
    given: &[(Option<String>, String)],
    pools: &[Pool],
) -> Result<Vec<Option<String>>, Error> {
    let mut out = vec![None; pools.len()];
    for (pool, name) in given {
        let i = match pool {
            None if pools.len() == 1 => 0,
            None => {
                return Err(Error::plain(format!(
                    "{flag} {name}: the input has {} pools; give {flag} POOL={name}",
                    pools.len()
                )))
            }
            Some(pool) => pools.iter().position(|p| &p.name == pool).ok_or_else(|| {
                Error::plain(format!(
                    "{flag} {pool}={name}: no InferencePool \"{pool}\" in the input"
                ))
            })?,
        };
        out[i] = Some(name.clone());
    }
    Ok(out)
}

/// The plugin's own validation of a document; an error is blamed on the input document it came
/// from where the field says which.
fn check(
    document: &Document,
    pools: &[Pool],
    models: &[Model],
    objectives: &[&Origin],
    rewrites: &[Rewrite],
    kept: &[Kept],
) -> Result<(), Error> {
    let json = serde_json::to_vec(document)
        .map_err(|e| Error::plain(format!("writing the document: {e}")))?;
    let e = match router_core::config::Config::parse(&json) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let message = format!(
        "refused by the plugin's validation ({}: {})",
        e.field, e.message
    );
    // `pools[3].x` / `models[2].targetModels[1].weight`: the index, and the rest.
    let split = |field: &str, prefix: &str| -> Option<(usize, String)> {
        let rest = field.strip_prefix(prefix)?;
        let (i, rest) = rest.split_once(']')?;
        Some((i.parse().ok()?, rest.trim_start_matches('.').to_string()))
    };
    let indexed = |prefix: &str| split(&e.field, prefix);
    if let Some((i, rest)) = indexed("models[") {
        if let Some(m) = models.get(i) {
            let field = match rest.as_str() {
                "poolRef" => "spec.poolRef.name".to_string(),
                r => format!("spec.{r}"),
            };
            return Err(Error::at(&m.origin, Some(&field), message));
        }
    }
    // The document's objectives and modelRewrites have the resources' own shape under `spec`;
    // a rewrite's rules and matches are numbered as the input numbers them.
    let spec_field = |rest: &str| match rest {
        "name" => "metadata.name".to_string(),
        "poolRef" => "spec.poolRef.name".to_string(),
        r => format!("spec.{r}"),
    };
    if let Some((i, rest)) = indexed("objectives[") {
        if let Some(origin) = objectives.get(i) {
            return Err(Error::at(origin, Some(&spec_field(&rest)), message));
        }
    }
    if let Some((i, rest)) = indexed("modelRewrites[") {
        if let (Some(rw), Some(kept)) = (rewrites.get(i), kept.get(i)) {
            let field = match split(&rest, "rules[") {
                Some((r, tail)) => {
                    let (orig, ks) = kept
                        .get(r)
                        .map(|(o, ks)| (*o, ks.as_slice()))
                        .unwrap_or((r, &[]));
                    let tail = match split(&tail, "matches[") {
                        Some((k, more)) => {
                            let k = ks.get(k).copied().unwrap_or(k);
                            if more.is_empty() {
                                format!("matches[{k}]")
                            } else {
                                format!("matches[{k}].{more}")
                            }
                        }
                        None => match tail.strip_prefix("targets") {
                            Some(more) => format!("{}{more}", rw.targets_key),
                            None => tail,
                        },
                    };
                    if tail.is_empty() {
                        format!("spec.rules[{orig}]")
                    } else {
                        format!("spec.rules[{orig}].{tail}")
                    }
                }
                None => spec_field(&rest),
            };
            return Err(Error::at(&rw.origin, Some(&field), message));
        }
    }
    if let Some((i, rest)) = indexed("pools[") {
        if let Some(p) = pools.get(i) {
            let field = if rest == "name" { "metadata.name" } else { "" };
            return Err(Error::at(
                &p.origin,
                (!field.is_empty()).then_some(field),
                message,
            ));
        }
    }
    Err(Error::plain(format!(
        "the generated configuration was {message}"
    )))
}

/// Check a document this tool writes (the gate's, in the manifests) the same way.
pub(crate) fn check_value(what: &str, v: &serde_json::Value) -> Result<(), Error> {
    let json = serde_json::to_vec(v).map_err(|e| Error::plain(format!("writing {what}: {e}")))?;
    router_core::config::Config::parse(&json)
        .map(|_| ())
        .map_err(|e| {
            Error::plain(format!(
                "{what} was refused by the plugin's validation: {e}"
            ))
        })
}
