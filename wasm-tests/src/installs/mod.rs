//! Envoy configured exactly as a control plane configures it, generated from the manifests this
//! repository ships (`examples/istio/`, `examples/envoy-gateway/`), so a test fails when a shipped
//! manifest stops working. Each generator follows the control plane's own translation (read in
//! its source; see `istio.rs` and `envoy_gateway.rs`) for the objects the manifests use; the test
//! supplies what a cluster would: the pods behind the pool's Service (as an EDS file), the module
//! file (where Istio's agent or Envoy Gateway's cache would have put the pulled image), and the
//! admin address.
//!
//! What the generated Envoy leaves out are only filters that exist in the control planes' own
//! Envoy builds and not in the upstream one (Istio's `istio.stats`, `istio_authn`, metadata
//! exchange): none of them touches the request body or the routing headers.

pub mod envoy_gateway;
pub mod istio;

use crate::envoy::Envoy;
use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Kubernetes objects read from YAML files (multi-document, as `kubectl apply -f` takes them).
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub objects: Vec<Value>,
}

impl Manifests {
    pub fn read(paths: &[PathBuf]) -> Result<Manifests> {
        let mut objects = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(doc)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if !value.is_null() {
                    objects.push(value);
                }
            }
        }
        Ok(Manifests { objects })
    }

    /// The shipped manifests of one example directory.
    pub fn example(dir: &str, files: &[&str]) -> Result<Manifests> {
        let root = crate::repo_root().join("examples").join(dir);
        let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
        Manifests::read(&paths)
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |o| o.get("kind").and_then(Value::as_str) == Some(kind))
    }

    pub fn of_kind_mut<'a>(
        &'a mut self,
        kind: &'a str,
    ) -> impl Iterator<Item = &'a mut Value> + 'a {
        self.objects
            .iter_mut()
            .filter(move |o| o.get("kind").and_then(Value::as_str) == Some(kind))
    }

    /// The object of `kind` named `name`, to change before generating (a test's variation).
    pub fn named_mut(&mut self, kind: &str, name: &str) -> Result<&mut Value> {
        self.objects
            .iter_mut()
            .find(|o| o.get("kind").and_then(Value::as_str) == Some(kind) && meta_name(o) == name)
            .ok_or_else(|| anyhow!("no {kind} named {name} in the manifests"))
    }

    /// Leave out the object of `kind` named `name` (an install that forgot it).
    pub fn remove(&mut self, kind: &str, name: &str) {
        self.objects.retain(|o| {
            !(o.get("kind").and_then(Value::as_str) == Some(kind) && meta_name(o) == name)
        });
    }
}

pub fn meta_name(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn meta_namespace(o: &Value) -> &str {
    o.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
}

/// What the tests supply in place of a Kubernetes cluster.
#[derive(Debug, Clone)]
pub struct World {
    /// The pool Service's ready endpoints (its EndpointSlices).
    pub pods: Vec<SocketAddr>,
    /// The module as the control plane hands it to Envoy (a file for Istio's agent).
    pub module: PathBuf,
    /// Where Envoy's admin listens: both control planes reach it through `prometheus_stats`.
    pub admin: SocketAddr,
    /// For Envoy Gateway: where its wasm cache serves the module over HTTP.
    pub module_server: Option<SocketAddr>,
}

/// A generated bootstrap and the files it refers to (ECDS and EDS resources).
pub struct Generated {
    pub bootstrap: Value,
    /// The listener the gateway's HTTP traffic arrives on.
    pub listener: String,
    /// Files to write next to the bootstrap: (file name, content).
    pub files: Vec<(String, Value)>,
    /// The EDS file of each cluster whose members come from the pool's Service.
    pub eds: Vec<(String, String)>,
}

/// A running generated install.
pub struct Running {
    pub envoy: Envoy,
    pub listener: SocketAddr,
    dir: tempfile::TempDir,
    eds: Vec<(String, String)>,
    /// What [`start_install`] generated from, for [`Running::push`].
    world: Option<(ControlPlane, World)>,
}

impl Running {
    pub async fn start(generated: Generated, pods: &[SocketAddr]) -> Result<Running> {
        let dir = tempfile::Builder::new().prefix("install-").tempdir()?;
        for (name, content) in &generated.files {
            std::fs::write(
                dir.path().join(name),
                serde_json::to_string_pretty(content)?,
            )?;
        }
        for (cluster, file) in &generated.eds {
            write_eds(&dir.path().join(file), cluster, pods)?;
        }
        let path = dir.path().join("envoy.yaml");
        let bootstrap = relocate(&generated.bootstrap, dir.path());
        std::fs::write(&path, serde_json::to_string_pretty(&bootstrap)?)?;
        let envoy = Envoy::start_file(&path, dir.path()).await?;
        let listener = envoy.listener(&generated.listener)?;
        Ok(Running {
            envoy,
            listener,
            dir,
            eds: generated.eds,
            world: None,
        })
    }

    pub fn client(&self) -> Result<crate::client::Client> {
        crate::client::Client::new(self.listener)
    }

    /// Push `manifests` as the control plane would after an edit: the xDS resources delivered by
    /// files (ECDS, EDS) are rewritten in place, each file replaced whole as Envoy expects. Istio
    /// bumps the resource version it puts in the VM's environment, as istiod does on a change.
    pub fn push(&self, manifests: &Manifests, version: u32) -> Result<()> {
        let (plane, world) = self
            .world
            .as_ref()
            .ok_or_else(|| anyhow!("push needs an install started by start_install"))?;
        let generated = match plane {
            ControlPlane::EnvoyGateway => envoy_gateway::generate(manifests, world)?,
            ControlPlane::Istio => istio::generate(manifests, world)?,
        };
        for (name, content) in &generated.files {
            let mut text = serde_json::to_string_pretty(&relocate(content, self.dir.path()))?;
            text = text.replace(
                "\"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION\": \"1\"",
                &format!("\"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION\": \"{version}\""),
            );
            text = text.replace(
                "\"version_info\": \"1\"",
                &format!("\"version_info\": \"{version}\""),
            );
            let path = self.dir.path().join(name);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// Change the pool's members, as the control plane's EDS would.
    pub fn set_members(&self, pods: &[SocketAddr]) -> Result<()> {
        for (cluster, file) in &self.eds {
            write_eds(&self.dir.path().join(file), cluster, pods)?;
        }
        Ok(())
    }
}

/// Which control plane's translation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPlane {
    /// Istio's WasmPlugin (and EnvoyFilter) translation.
    Istio,
    EnvoyGateway,
}

/// Generate and start an install of `manifests` with `module` in front of `members`: the module
/// as each control plane delivers it (a local file for Istio's agent; served over HTTP with its
/// sha256 for Envoy Gateway).
pub async fn start_install(
    plane: ControlPlane,
    manifests: &Manifests,
    members: &[SocketAddr],
    module: PathBuf,
) -> Result<Running> {
    let module_server = match plane {
        ControlPlane::EnvoyGateway => Some(serve_file(&module).await?),
        ControlPlane::Istio => None,
    };
    let world = World {
        pods: members.to_vec(),
        module,
        admin: (crate::addr::next_pod_ip(), 9901).into(),
        module_server,
    };
    let generated = match plane {
        ControlPlane::EnvoyGateway => envoy_gateway::generate(manifests, &world)?,
        ControlPlane::Istio => istio::generate(manifests, &world)?,
    };
    let mut running = Running::start(generated, members).await?;
    running.world = Some((plane, world));
    Ok(running)
}

/// File names in a generated bootstrap are relative (`@/name`); Envoy wants absolute paths.
fn relocate(value: &Value, dir: &Path) -> Value {
    match value {
        Value::String(s) => match s.strip_prefix("@/") {
            Some(rest) => Value::String(dir.join(rest).display().to_string()),
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(|v| relocate(v, dir)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), relocate(v, dir)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A file the bootstrap refers to, resolved in the install's directory at start.
pub fn local_file(name: &str) -> String {
    format!("@/{name}")
}

/// A file-based xDS source: what both control planes deliver over their gRPC ADS stream.
pub fn file_source(name: &str) -> Value {
    json!({"path_config_source": {"path": local_file(name)}, "resource_api_version": "V3"})
}

/// Write the endpoints of `cluster` for Envoy to pick up (it watches for the file moving in).
pub fn write_eds(path: &Path, cluster: &str, pods: &[SocketAddr]) -> Result<()> {
    let lb: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": p.ip().to_string(), "port_value": p.port()}}}})
        })
        .collect();
    let doc = json!({"version_info": format!("{}", std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)),
    "resources": [{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": lb}],
    }]});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Both control planes' bootstraps have this cluster: Envoy's own admin, for the Prometheus
/// listener. The plugin reads pool members through it.
pub fn prometheus_stats_cluster(admin: SocketAddr) -> Value {
    json!({
        "name": "prometheus_stats",
        "type": "STATIC",
        "connect_timeout": "0.250s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "prometheus_stats", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {
                "address": admin.ip().to_string(), "port_value": admin.port()}}}}]}]},
    })
}

/// The test's access log (either control plane adds one when asked to).
pub fn access_log(name: &str) -> Value {
    json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": local_file("access.log"),
            "log_format": {"text_format_source": {"inline_string": format!(
                "[{name}] %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% \
                 dest=%REQ(x-gateway-destination-endpoint)% upstream=%UPSTREAM_HOST% \
                 cluster=%UPSTREAM_CLUSTER%\n")}},
        },
    }])
}

/// Protobuf merge of `patch` into `target`, as Istio's EnvoyFilter MERGE does: messages merge
/// field by field, repeated fields append, scalars replace.
pub fn proto_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) => proto_merge(existing, v),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p)) => t.extend(p.iter().cloned()),
        (t, p) => *t = p.clone(),
    }
}

/// Serve one file over HTTP, as Envoy Gateway's wasm cache serves a pulled module to its proxies.
pub async fn serve_file(path: &Path) -> Result<SocketAddr> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let listener = TcpListener::bind((crate::addr::next_pod_ip(), 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&bytes).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// The sha256 of a file, hex, as Envoy's remote data source checks it.
pub fn sha256_hex(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path)?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A Kubernetes quantity in bytes (`32Ki`, `1Mi`, `1048576`).
pub fn quantity_bytes(q: &Value) -> Option<u64> {
    if let Some(n) = q.as_u64() {
        return Some(n);
    }
    let s = q.as_str()?.trim();
    for (suffix, factor) in [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().ok().map(|n| n * factor);
        }
    }
    s.parse().ok()
}

/// A Gateway API duration (`0s`, `300s`, `5m`, `1h30m`, `500ms`) as Envoy's proto JSON wants it.
pub fn gateway_duration(d: &str) -> Option<String> {
    let mut total_ms: u64 = 0;
    let mut number = String::new();
    let mut chars = d.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        let unit_ms = match c {
            'h' => 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'm' => 60_000,
            's' => 1000,
            _ => return None,
        };
        total_ms += n * unit_ms;
    }
    if !number.is_empty() {
        return None;
    }
    Some(format!("{}.{:03}s", total_ms / 1000, total_ms % 1000))
}

/// The bootstrap around a generated listener and clusters: the node identity the control plane
/// gives its proxies, the admin where `World` says, and the shipped stats tags.
pub fn bootstrap(node: Value, world: &World, listener: Value, clusters: Vec<Value>) -> Value {
    json!({
        "node": node,
        "admin": {"address": {"socket_address": {
            "address": world.admin.ip().to_string(), "port_value": world.admin.port()}}},
        "stats_flush_interval": "1s",
        "stats_config": {"stats_tags": crate::envoy::stats_tags()},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    })
}

/// The HTTP router, last in every chain.
pub fn router_filter() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// The plugin configuration a manifest carries (YAML object → the JSON both control planes pass
/// as a StringValue). Istio marshals a protobuf Struct, Envoy Gateway the raw JSON: both compact.
pub fn config_json(config: Option<&Value>) -> Option<String> {
    match config {
        None => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(v) => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_quantities() {
        assert_eq!(gateway_duration("0s").as_deref(), Some("0.000s"));
        assert_eq!(gateway_duration("1h30m").as_deref(), Some("5400.000s"));
        assert_eq!(gateway_duration("250ms").as_deref(), Some("0.250s"));
        assert_eq!(gateway_duration("5x"), None);
        assert_eq!(quantity_bytes(&json!("1Mi")), Some(1 << 20));
        assert_eq!(quantity_bytes(&json!("32Ki")), Some(32768));
        assert_eq!(quantity_bytes(&json!(100)), Some(100));
    }

    #[test]
    fn merge_appends_lists_and_merges_messages() {
        let mut t = json!({"a": {"b": 1, "c": [1]}, "d": "x"});
        proto_merge(&mut t, &json!({"a": {"c": [2], "e": true}, "d": "y"}));
        assert_eq!(t, json!({"a": {"b": 1, "c": [1, 2], "e": true}, "d": "y"}));
    }
}
