//! The complete manifests carrying the document, in the shapes of the shipped installs:
//! `examples/istio/wasmplugin.yaml` (two WasmPlugins) and
//! `examples/envoy-gateway/extension-policy.yaml` (one EnvoyExtensionPolicy, two wasm entries).

use crate::document::{check_value, Conversion, Document};
use crate::{Error, Options};
use serde::Serialize;

pub const READER: &str = "inference-router-reader";
pub const GATE: &str = "inference-router-gate";
/// As the shipped WasmPlugins: a VM that crashes is reloaded at its worker's next request, rather
/// than let requests through unread (FAIL_OPEN) or answer 503 until the next push (FAIL_CLOSE).
pub const FAIL_STRATEGY: &str = "FAIL_RELOAD";
/// The gate's timeout in the shipped installs (the contract's default, written out).
pub const GATE_TIMEOUT_MS: u64 = 60_000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GateConfig {
    gate: GateSettings,
    failure_mode: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GateSettings {
    timeout_ms: u64,
}

/// The gate's configuration: its timeout, and the document's failureMode for half an install.
fn gate_config(document: &Document) -> Result<serde_yaml::Value, Error> {
    let gate = GateConfig {
        gate: GateSettings {
            timeout_ms: GATE_TIMEOUT_MS,
        },
        failure_mode: document
            .failure_mode
            .clone()
            .unwrap_or_else(|| "FailOpen".to_string()),
    };
    let json = serde_json::to_value(&gate)
        .map_err(|e| Error::plain(format!("writing the gate's configuration: {e}")))?;
    check_value("the gate's configuration", &json)?;
    yaml_value(&gate)
}

/// A value for a manifest, fields in their written order.
fn yaml_value(v: &impl Serialize) -> Result<serde_yaml::Value, Error> {
    serde_yaml::to_value(v).map_err(|e| Error::plain(format!("writing YAML: {e}")))
}

/// The one namespace of the pools: the manifests go there.
fn namespace(c: &Conversion, what: &str) -> Result<String, Error> {
    let mut namespaces: Vec<&str> = c.pools.iter().map(|p| p.namespace.as_str()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    match namespaces.as_slice() {
        [one] => Ok(one.to_string()),
        _ => Err(Error::plain(format!(
            "the pools are in several namespaces ({}): {what} goes into one; convert each \
             namespace's resources apart",
            namespaces.join(", ")
        ))),
    }
}

fn inputs_of(o: &Options) -> String {
    o.files
        .iter()
        .map(|f| if f == "-" { "<stdin>" } else { f.as_str() })
        .collect::<Vec<_>>()
        .join(", ")
}

fn yaml(v: &impl Serialize) -> Result<String, Error> {
    serde_yaml::to_string(v).map_err(|e| Error::plain(format!("writing YAML: {e}")))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<S> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: S,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    namespace: String,
}

#[derive(Serialize)]
struct TargetRef {
    group: &'static str,
    kind: &'static str,
    name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmPluginSpec<C> {
    target_refs: Vec<TargetRef>,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    image_pull_policy: &'static str,
    plugin_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<&'static str>,
    fail_strategy: &'static str,
    plugin_config: C,
}

/// Istio: the reader (phase STATS, with the document) and the gate (no phase: last before the
/// router), from the same image, attached to the Gateway.
pub fn wasm_plugins(c: &Conversion, o: &Options) -> Result<String, Error> {
    let namespace = namespace(c, "a WasmPlugin")?;
    // Istio's fetcher takes oci:// (and http(s)://, file://) URLs; a bare reference is an image.
    let url = if o.image.contains("://") {
        o.image.clone()
    } else {
        format!("oci://{}", o.image)
    };
    let target_refs = || {
        vec![TargetRef {
            group: "gateway.networking.k8s.io",
            kind: "Gateway",
            name: o.gateway.clone(),
        }]
    };
    let reader = Manifest {
        api_version: "extensions.istio.io/v1alpha1",
        kind: "WasmPlugin",
        metadata: Metadata {
            name: "inference-router".to_string(),
            namespace: namespace.clone(),
        },
        spec: WasmPluginSpec {
            target_refs: target_refs(),
            url: url.clone(),
            sha256: o.sha256.clone(),
            image_pull_policy: "IfNotPresent",
            plugin_name: READER,
            phase: Some("STATS"),
            fail_strategy: FAIL_STRATEGY,
            plugin_config: &c.document,
        },
    };
    let gate = Manifest {
        api_version: "extensions.istio.io/v1alpha1",
        kind: "WasmPlugin",
        metadata: Metadata {
            name: GATE.to_string(),
            namespace,
        },
        spec: WasmPluginSpec {
            target_refs: target_refs(),
            url,
            sha256: o.sha256.clone(),
            image_pull_policy: "IfNotPresent",
            plugin_name: GATE,
            phase: None,
            fail_strategy: FAIL_STRATEGY,
            plugin_config: gate_config(&c.document)?,
        },
    };
    let mut text = format!(
        "# inference-router on Istio: generated by inference-router-config from {}.\n\
         # The reader (phase STATS) reads and routes; the gate (no phase: last before the router) holds\n\
         # each request until the reader's decision. Both attach to the Gateway {}.\n\
         # Also needed, as in examples/istio/: for each pool, a Service selecting its pods on the\n\
         # target port, and the EnvoyFilter adding override_host to that Service's cluster\n\
         # (routing.yaml):\n",
        inputs_of(o),
        o.gateway
    );
    for (i, p) in c.pools.iter().enumerate() {
        let service = c.backends[i].as_deref().unwrap_or(&p.name);
        text.push_str(&format!(
            "#   pool {}: Service {}/{} (selector {}, port {}), cluster {}\n",
            p.name,
            p.namespace,
            service,
            selector(p),
            p.target_port,
            c.clusters[i]
        ));
    }
    text.push_str(&yaml(&reader)?);
    text.push_str("---\n");
    text.push_str(&yaml(&gate)?);
    Ok(text)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    target_refs: Vec<TargetRef>,
    wasm: Vec<WasmEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmEntry {
    name: &'static str,
    #[serde(rename = "rootID")]
    root_id: &'static str,
    code: Code,
    fail_open: bool,
    config: serde_yaml::Value,
}

/// Envoy Gateway's `WasmCodeSource`.
#[derive(Clone, Serialize)]
struct Code {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<CodeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<CodeSource>,
}

#[derive(Clone, Serialize)]
struct CodeSource {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

/// Envoy Gateway: one policy on the pools' HTTPRoutes, the reader's entry (with the document)
/// before the gate's; Envoy Gateway inserts them in list order.
pub fn extension_policy(c: &Conversion, o: &Options) -> Result<String, Error> {
    let namespace = namespace(c, "an EnvoyExtensionPolicy")?;
    let code = match o.image.split_once("://") {
        // The module itself over HTTP(S).
        Some(("http" | "https", _)) => Code {
            kind: "HTTP",
            http: Some(CodeSource {
                url: o.image.clone(),
                sha256: o.sha256.clone(),
            }),
            image: None,
        },
        // Envoy Gateway's image URLs have no scheme.
        Some(("oci", reference)) => image_code(reference, o),
        Some((scheme, _)) => {
            return Err(Error::plain(format!(
                "--image {}: Envoy Gateway takes an image reference or an http(s):// URL, not {scheme}://",
                o.image
            )))
        }
        None => image_code(&o.image, o),
    };
    let mut routes: Vec<String> = Vec::new();
    for (i, p) in c.pools.iter().enumerate() {
        let route = c.backends[i].clone().unwrap_or_else(|| p.name.clone());
        if !routes.contains(&route) {
            routes.push(route);
        }
    }
    let document = yaml_value(&c.document)?;
    let policy = Manifest {
        api_version: "gateway.envoyproxy.io/v1alpha1",
        kind: "EnvoyExtensionPolicy",
        metadata: Metadata {
            name: "inference-router".to_string(),
            namespace,
        },
        spec: PolicySpec {
            target_refs: routes
                .iter()
                .map(|r| TargetRef {
                    group: "gateway.networking.k8s.io",
                    kind: "HTTPRoute",
                    name: r.clone(),
                })
                .collect(),
            wasm: vec![
                WasmEntry {
                    name: READER,
                    root_id: READER,
                    code: code.clone(),
                    fail_open: false,
                    config: document,
                },
                WasmEntry {
                    name: GATE,
                    root_id: GATE,
                    code,
                    fail_open: false,
                    config: gate_config(&c.document)?,
                },
            ],
        },
    };
    let mut text = format!(
        "# inference-router on Envoy Gateway: generated by inference-router-config from {}.\n\
         # The reader entry reads and routes; the gate entry, inserted after it, holds each request\n\
         # until the reader's decision. Also needed, as in examples/envoy-gateway/: for each pool,\n\
         # an HTTPRoute whose rule 0 goes to a Service selecting its pods on the target port, with\n\
         # the BackendTrafficPolicy (endpointOverride) and ClientTrafficPolicy (1Mi buffer) of\n\
         # traffic-policies.yaml:\n",
        inputs_of(o)
    );
    for (i, p) in c.pools.iter().enumerate() {
        text.push_str(&format!(
            "#   pool {}: HTTPRoute {}/{} (pods: selector {}, port {}), cluster {}\n",
            p.name,
            p.namespace,
            c.backends[i].as_deref().unwrap_or(&p.name),
            selector(p),
            p.target_port,
            c.clusters[i]
        ));
    }
    text.push_str(&yaml(&policy)?);
    Ok(text)
}

fn image_code(reference: &str, o: &Options) -> Code {
    Code {
        kind: "Image",
        http: None,
        image: Some(CodeSource {
            url: reference.to_string(),
            sha256: o.sha256.clone(),
        }),
    }
}

fn selector(p: &crate::resources::Pool) -> String {
    if p.selector.is_empty() {
        return "none".to_string();
    }
    p.selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
