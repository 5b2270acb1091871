//! Reading the user's Kubernetes YAML: documents, `List`s, and the Inference Extension resources
//! this tool converts, each typed per apiVersion so a wrong shape is named by its field.

use crate::{Error, Origin};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The older API group (InferencePool v1alpha1/v1alpha2, InferenceModel, InferenceObjective, …).
pub const X_GROUP: &str = "inference.networking.x-k8s.io";
/// The GA API group (InferencePool v1).
pub const GROUP: &str = "inference.networking.k8s.io";
/// llm-d's router's group: InferenceObjective and InferenceModelRewrite `v1alpha2` since the
/// Inference Extension removed them (before, llm-d served them under [`X_GROUP`] too).
pub const LLM_D_GROUP: &str = "llm-d.ai";
/// The apiVersions of InferenceObjective and InferenceModelRewrite that are served: the
/// Inference Extension's releases 1.0 to 1.5 (InferenceModelRewrite from 1.2) and llm-d's.
pub const OBJECTIVE_VERSIONS: [&str; 2] = [
    "inference.networking.x-k8s.io/v1alpha2",
    "llm-d.ai/v1alpha2",
];
/// The API's bounds for an InferenceModelRewrite target's weight.
pub const MIN_REWRITE_WEIGHT: i64 = 1;

/// The InferenceModel's bounds for a target's weight.
pub const MAX_WEIGHT: i64 = 1_000_000;

/// One input: a file's name (as given, `-` for stdin) and its text.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub text: String,
}

/// A Kubernetes object from the input, with where it came from.
#[derive(Debug, Clone)]
pub struct Object {
    pub origin: Origin,
    pub value: Value,
}

/// Every object in one input: its YAML documents in order, a `List`'s (or `<Kind>List`'s)
/// `items` in their place. Empty documents are skipped.
pub fn objects(input: &Input) -> Result<Vec<Object>, Error> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&input.text).enumerate() {
        let origin = Origin::document(&input.name, i + 1);
        let value = Value::deserialize(doc)
            .map_err(|e| Error::at(&origin, None, format!("not valid YAML: {e}")))?;
        match value {
            Value::Null => {}
            Value::Object(_) => {
                let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
                if kind.ends_with("List") && value.get("items").is_some() {
                    let items = match value.get("items") {
                        Some(Value::Array(items)) => items.clone(),
                        Some(Value::Null) => Vec::new(),
                        _ => return Err(Error::at(&origin, Some("items"), "must be a list")),
                    };
                    for (j, item) in items.into_iter().enumerate() {
                        let origin = origin.item(j);
                        if !item.is_object() {
                            return Err(Error::at(
                                &origin,
                                None,
                                "not a Kubernetes object (a mapping with apiVersion and kind)",
                            ));
                        }
                        out.push(Object {
                            origin: origin.named(&item),
                            value: item,
                        });
                    }
                } else {
                    out.push(Object {
                        origin: origin.named(&value),
                        value,
                    });
                }
            }
            _ => {
                return Err(Error::at(
                    &origin,
                    None,
                    "not a Kubernetes object (a mapping with apiVersion and kind)",
                ))
            }
        }
    }
    Ok(out)
}

/// An InferencePool, whatever its version.
#[derive(Debug, Clone)]
pub struct Pool {
    pub origin: Origin,
    pub name: String,
    pub namespace: String,
    pub target_port: u16,
    /// The v1 `endpointPickerRef.failureMode`, if given.
    pub failure_mode: Option<String>,
    /// The pods' labels (the Service the installs route to must select the same).
    pub selector: BTreeMap<String, String>,
}

/// An InferenceModel, whatever its version.
#[derive(Debug, Clone)]
pub struct Model {
    pub origin: Origin,
    pub namespace: String,
    pub model_name: String,
    /// As the document spells it (`Critical`, `Standard`, `Sheddable`).
    pub criticality: Option<String>,
    /// None: served as named.
    pub targets: Option<Vec<(String, Option<u32>)>>,
    pub pool_name: String,
}

/// An InferenceObjective: a named integer priority for one pool's requests.
#[derive(Debug, Clone)]
pub struct Objective {
    pub origin: Origin,
    pub name: String,
    pub namespace: String,
    /// Absent: 0, the API's default.
    pub priority: Option<i64>,
    pub pool_name: String,
}

/// An InferenceModelRewrite: one pool's rules, in the document's shape already.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub origin: Origin,
    pub name: String,
    pub namespace: String,
    pub pool_name: String,
    /// `metadata.creationTimestamp` (RFC 3339, UTC, as Kubernetes writes it), if given: the
    /// older resource's rule wins a model name both match, as in llm-d.
    pub created: Option<String>,
    pub rules: Vec<RewriteRule>,
    /// What the input calls each rule's targets: `targets`, or `split` (Inference Extension
    /// v1.2), for naming fields in errors.
    pub targets_key: &'static str,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewriteRule {
    pub matches: Vec<RewriteMatch>,
    pub targets: Vec<RewriteTarget>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteMatch {
    pub model: ModelMatch,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelMatch {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteTarget {
    pub model_rewrite: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// What one object is.
#[derive(Debug, Clone)]
pub enum Resource {
    Pool(Pool),
    Model(Model),
    Objective(Objective),
    Rewrite(Rewrite),
    /// Not an Inference Extension object, skipped on request (`--skip-other-kinds`).
    Other,
}

/// Type one object. `skip_other`: objects outside the Inference Extension's API groups are
/// [`Resource::Other`] instead of an error.
pub fn classify(
    obj: &Object,
    default_namespace: &str,
    skip_other: bool,
) -> Result<Resource, Error> {
    let o = &obj.origin;
    let api_version = string_field(o, &obj.value, "apiVersion")?;
    let kind = string_field(o, &obj.value, "kind")?;
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    let ours = group == X_GROUP || group == GROUP || group == LLM_D_GROUP;
    let served = OBJECTIVE_VERSIONS.contains(&api_version);
    match (kind, api_version) {
        ("InferencePool", "inference.networking.x-k8s.io/v1alpha1")
        | ("InferencePool", "inference.networking.x-k8s.io/v1alpha2") => {
            let (name, namespace) = metadata(obj, default_namespace)?;
            let spec: PoolSpecAlpha = spec(obj)?;
            Ok(Resource::Pool(Pool {
                origin: o.clone(),
                name,
                namespace,
                target_port: port(o, "spec.targetPortNumber", spec.target_port_number)?,
                failure_mode: None,
                selector: spec.selector,
            }))
        }
        ("InferencePool", "inference.networking.k8s.io/v1") => {
            let (name, namespace) = metadata(obj, default_namespace)?;
            let spec: PoolSpecV1 = spec(obj)?;
            let first = match spec.target_ports.as_slice() {
                [] => {
                    return Err(Error::at(
                        o,
                        Some("spec.targetPorts"),
                        "must list the pool's target port",
                    ))
                }
                [first] => first,
                [_, ..] => {
                    return Err(Error::at(
                        o,
                        Some("spec.targetPorts[1]"),
                        "more than one target port is not supported (the InferencePool v1 API \
                         allows one)",
                    ))
                }
            };
            let failure_mode = match spec.endpoint_picker_ref.and_then(|r| r.failure_mode) {
                None => None,
                Some(m) if m == "FailOpen" || m == "FailClose" => Some(m),
                Some(m) => {
                    return Err(Error::at(
                        o,
                        Some("spec.endpointPickerRef.failureMode"),
                        format!("\"{m}\" is not one of FailOpen, FailClose"),
                    ))
                }
            };
            Ok(Resource::Pool(Pool {
                origin: o.clone(),
                name,
                namespace,
                target_port: port(o, "spec.targetPorts[0].number", first.number)?,
                failure_mode,
                selector: spec.selector.match_labels,
            }))
        }
        ("InferenceModel", "inference.networking.x-k8s.io/v1alpha1")
        | ("InferenceModel", "inference.networking.x-k8s.io/v1alpha2") => {
            let v1alpha1 = api_version.ends_with("/v1alpha1");
            let (_, namespace) = metadata(obj, default_namespace)?;
            let spec: ModelSpec = spec(obj)?;
            model(obj, namespace, spec, v1alpha1).map(Resource::Model)
        }
        ("InferenceObjective", _) if served => {
            let (name, namespace) = metadata(obj, default_namespace)?;
            let spec: ObjectiveSpec = spec(obj)?;
            let pool_name = pool_ref(o, &spec.pool_ref)?;
            if let Some(p) = spec.priority {
                if i32::try_from(p).is_err() {
                    return Err(Error::at(
                        o,
                        Some("spec.priority"),
                        "must be a 32-bit integer",
                    ));
                }
            }
            Ok(Resource::Objective(Objective {
                origin: o.clone(),
                name,
                namespace,
                priority: spec.priority,
                pool_name,
            }))
        }
        ("InferenceModelRewrite", _) if served => {
            let (name, namespace) = metadata(obj, default_namespace)?;
            let spec: RewriteSpec = spec(obj)?;
            let pool_name = pool_ref(o, &spec.pool_ref)?;
            let created = created(obj)?;
            rewrite(o, group, name, namespace, pool_name, created, spec.rules)
                .map(Resource::Rewrite)
        }
        // Another API's kind of the same name is skipped on request; ours are checked.
        ("InferenceObjective", _) | ("InferenceModelRewrite", _) if skip_other && !ours => {
            Ok(Resource::Other)
        }
        ("InferencePool", _)
        | ("InferenceModel", _)
        | ("InferenceObjective", _)
        | ("InferenceModelRewrite", _) => Err(Error::at(
            o,
            Some("apiVersion"),
            format!(
                "{api_version} is not a known version of {kind} (known: {})",
                match kind {
                    "InferencePool" => {
                        "inference.networking.k8s.io/v1, inference.networking.x-k8s.io/v1alpha2, \
                         inference.networking.x-k8s.io/v1alpha1"
                    }
                    "InferenceModel" => {
                        "inference.networking.x-k8s.io/v1alpha2, \
                         inference.networking.x-k8s.io/v1alpha1"
                    }
                    _ => "llm-d.ai/v1alpha2, inference.networking.x-k8s.io/v1alpha2",
                }
            ),
        )),
        _ if skip_other && !ours => Ok(Resource::Other),
        _ => Err(Error::at(
            o,
            Some("kind"),
            format!(
                "{kind} ({api_version}) is not an InferencePool, InferenceModel, \
                 InferenceObjective or InferenceModelRewrite{}",
                if ours {
                    ""
                } else {
                    " (--skip-other-kinds skips objects of other APIs)"
                }
            ),
        )),
    }
}

fn string_field<'a>(o: &Origin, v: &'a Value, field: &str) -> Result<&'a str, Error> {
    match v.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(Error::at(o, Some(field), "missing")),
        Some(_) => Err(Error::at(o, Some(field), "must be a non-empty string")),
    }
}

/// `metadata.name` and `metadata.namespace` (or the default namespace).
fn metadata(obj: &Object, default_namespace: &str) -> Result<(String, String), Error> {
    let o = &obj.origin;
    let meta = match obj.value.get("metadata") {
        Some(m @ Value::Object(_)) => m,
        None | Some(Value::Null) => return Err(Error::at(o, Some("metadata.name"), "missing")),
        Some(_) => return Err(Error::at(o, Some("metadata"), "must be a mapping")),
    };
    let name = match meta.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err(Error::at(o, Some("metadata.name"), "missing")),
        Some(_) => {
            return Err(Error::at(
                o,
                Some("metadata.name"),
                "must be a non-empty string",
            ))
        }
    };
    let namespace = match meta.get("namespace") {
        None | Some(Value::Null) => default_namespace.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(Error::at(
                o,
                Some("metadata.namespace"),
                "must be a non-empty string",
            ))
        }
    };
    Ok((name, namespace))
}

/// The object's `spec` as `T`; an error names the field under `spec`.
fn spec<T: DeserializeOwned>(obj: &Object) -> Result<T, Error> {
    let o = &obj.origin;
    let spec = match obj.value.get("spec") {
        None | Some(Value::Null) => return Err(Error::at(o, Some("spec"), "missing")),
        Some(s) => s,
    };
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = match path.as_str() {
            "." | "?" | "" => "spec".to_string(),
            p => format!("spec.{p}"),
        };
        Error::at(o, Some(&field), e.into_inner().to_string())
    })
}

fn port(o: &Origin, field: &str, n: i64) -> Result<u16, Error> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::at(
            o,
            Some(field),
            format!("{n} is not a port number (1 to 65535)"),
        )),
    }
}

fn model(obj: &Object, namespace: String, spec: ModelSpec, v1alpha1: bool) -> Result<Model, Error> {
    let o = &obj.origin;
    if spec.model_name.is_empty() {
        return Err(Error::at(o, Some("spec.modelName"), "must not be empty"));
    }
    let criticality = match spec.criticality.as_deref() {
        None => None,
        Some(c @ ("Critical" | "Sheddable")) => Some(c.to_string()),
        // v1alpha1's middle level is `Default`; v1alpha2 renamed it `Standard`.
        Some("Default") if v1alpha1 => Some("Standard".to_string()),
        Some("Standard") if !v1alpha1 => Some("Standard".to_string()),
        Some(other) => {
            return Err(Error::at(
                o,
                Some("spec.criticality"),
                format!(
                    "\"{other}\" is not one of Critical, {}, Sheddable",
                    if v1alpha1 { "Default" } else { "Standard" }
                ),
            ))
        }
    };
    let pool_name = pool_ref(o, &spec.pool_ref)?;
    let list = spec.target_models.unwrap_or_default();
    // Kubernetes does not tell an empty list from an absent one: served as named.
    let targets = if list.is_empty() {
        None
    } else {
        let weighted = list.iter().filter(|t| t.weight.is_some()).count();
        if !v1alpha1 && weighted != 0 && weighted != list.len() {
            return Err(Error::at(
                o,
                Some("spec.targetModels"),
                "give a weight to every target model or to none",
            ));
        }
        let mut targets: Vec<(String, Option<u32>)> = Vec::with_capacity(list.len());
        for (j, t) in list.into_iter().enumerate() {
            if t.name.is_empty() {
                return Err(Error::at(
                    o,
                    Some(&format!("spec.targetModels[{j}].name")),
                    "must not be empty",
                ));
            }
            if targets.iter().any(|(n, _)| *n == t.name) {
                return Err(Error::at(
                    o,
                    Some(&format!("spec.targetModels[{j}].name")),
                    format!("duplicate target model \"{}\"", t.name),
                ));
            }
            // v1alpha1 defaults a missing weight to 1.
            let weight = match t.weight {
                None if v1alpha1 => Some(1),
                None => None,
                Some(w) => Some(
                    u32::try_from(w)
                        .ok()
                        .filter(|&w| i64::from(w) <= MAX_WEIGHT)
                        .ok_or_else(|| {
                            Error::at(
                                o,
                                Some(&format!("spec.targetModels[{j}].weight")),
                                format!("{w} is not an integer between 0 and {MAX_WEIGHT}"),
                            )
                        })?,
                ),
            };
            targets.push((t.name, weight));
        }
        Some(targets)
    };
    Ok(Model {
        origin: o.clone(),
        namespace,
        model_name: spec.model_name,
        criticality,
        targets,
        pool_name,
    })
}

/// `spec.poolRef`: an InferencePool (group and kind default to it) named by `name`.
fn pool_ref(o: &Origin, r: &PoolRefSpec) -> Result<String, Error> {
    if let Some(group) = r.group.as_deref() {
        if group != X_GROUP && group != GROUP {
            return Err(Error::at(
                o,
                Some("spec.poolRef.group"),
                format!("\"{group}\" is not {X_GROUP} or {GROUP}"),
            ));
        }
    }
    if let Some(kind) = r.kind.as_deref() {
        if kind != "InferencePool" {
            return Err(Error::at(
                o,
                Some("spec.poolRef.kind"),
                format!("\"{kind}\" is not InferencePool"),
            ));
        }
    }
    if r.name.is_empty() {
        return Err(Error::at(o, Some("spec.poolRef.name"), "must not be empty"));
    }
    Ok(r.name.clone())
}

/// `metadata.creationTimestamp`, if given: `YYYY-MM-DDTHH:MM:SSZ` as Kubernetes writes it (so
/// that two of them compare as text in time order).
fn created(obj: &Object) -> Result<Option<String>, Error> {
    let o = &obj.origin;
    match obj.value.pointer("/metadata/creationTimestamp") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if is_timestamp(t) => Ok(Some(t.clone())),
        Some(t) => Err(Error::at(
            o,
            Some("metadata.creationTimestamp"),
            format!("{t} is not a Kubernetes timestamp (YYYY-MM-DDTHH:MM:SSZ)"),
        )),
    }
}

fn is_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// An InferenceModelRewrite's rules, checked as its API does: every rule has targets (under
/// `targets`, or `split` in the Inference Extension v1.2), each weight within the API's bounds.
fn rewrite(
    o: &Origin,
    group: &str,
    name: String,
    namespace: String,
    pool_name: String,
    created: Option<String>,
    raw: Vec<RuleSpec>,
) -> Result<Rewrite, Error> {
    let mut rules = Vec::with_capacity(raw.len());
    let mut targets_key = "targets";
    for (i, rule) in raw.into_iter().enumerate() {
        let targets = match (rule.targets, rule.split) {
            (Some(_), Some(_)) => {
                return Err(Error::at(
                    o,
                    Some(&format!("spec.rules[{i}].split")),
                    "give `targets` (or the Inference Extension v1.2's `split`), not both",
                ))
            }
            (_, Some(_)) if group != X_GROUP => {
                return Err(Error::at(
                    o,
                    Some(&format!("spec.rules[{i}].split")),
                    format!(
                        "unknown field: `split` is the Inference Extension v1.2's name for \
                         `targets` ({X_GROUP}); {group} calls it `targets`"
                    ),
                ))
            }
            (Some(t), None) => t,
            (None, Some(t)) => {
                targets_key = "split";
                t
            }
            (None, None) => Vec::new(),
        };
        if targets.is_empty() {
            return Err(Error::at(
                o,
                Some(&format!("spec.rules[{i}].{targets_key}")),
                "must name at least one target",
            ));
        }
        for (j, t) in targets.iter().enumerate() {
            if let Some(w) = t.weight {
                if !(MIN_REWRITE_WEIGHT..=MAX_WEIGHT).contains(&w) {
                    return Err(Error::at(
                        o,
                        Some(&format!("spec.rules[{i}].{targets_key}[{j}].weight")),
                        format!(
                            "{w} is not an integer between {MIN_REWRITE_WEIGHT} and {MAX_WEIGHT} \
                             (omit every weight for an even split)"
                        ),
                    ));
                }
            }
        }
        rules.push(RewriteRule {
            matches: rule.matches.unwrap_or_default(),
            targets,
        });
    }
    Ok(Rewrite {
        origin: o.clone(),
        name,
        namespace,
        pool_name,
        created,
        rules,
        targets_key,
    })
}

/// InferencePool `inference.networking.x-k8s.io/v1alpha1` and `v1alpha2`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PoolSpecAlpha {
    selector: BTreeMap<String, String>,
    target_port_number: i64,
    /// The external endpoint picker: this plugin is the picker, so it is not used.
    #[allow(dead_code)]
    extension_ref: Option<IgnoredAny>,
}

/// InferencePool `inference.networking.k8s.io/v1`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PoolSpecV1 {
    selector: SelectorV1,
    target_ports: Vec<PortV1>,
    /// HTTP/1.1 or h2c towards the pods: Envoy's cluster decides, not the document.
    #[allow(dead_code)]
    app_protocol: Option<IgnoredAny>,
    endpoint_picker_ref: Option<PickerRefV1>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorV1 {
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortV1 {
    number: i64,
}

/// Only `failureMode` is read; the picker's name, kind and port are the external picker's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PickerRefV1 {
    failure_mode: Option<String>,
}

/// InferenceModel `inference.networking.x-k8s.io/v1alpha1` and `v1alpha2`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModelSpec {
    model_name: String,
    criticality: Option<String>,
    target_models: Option<Vec<TargetSpec>>,
    pool_ref: PoolRefSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetSpec {
    name: String,
    weight: Option<i64>,
}

/// InferenceObjective `inference.networking.x-k8s.io/v1alpha2` (and llm-d's). An absent
/// `priority` is 0, as the API says its consumers read it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectiveSpec {
    priority: Option<i64>,
    pool_ref: PoolRefSpec,
}

/// InferenceModelRewrite `inference.networking.x-k8s.io/v1alpha2` (and llm-d's).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewriteSpec {
    pool_ref: PoolRefSpec,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

/// One rule as written: no `matches` (or an empty list) matches every model.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleSpec {
    matches: Option<Vec<RewriteMatch>>,
    targets: Option<Vec<RewriteTarget>>,
    /// The Inference Extension v1.2's name for `targets`.
    split: Option<Vec<RewriteTarget>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PoolRefSpec {
    group: Option<String>,
    kind: Option<String>,
    name: String,
}
