//! Istio's translation of the manifests in `examples/istio/` into the gateway's Envoy
//! configuration, as istiod builds it (read in istio/istio, August 2026):
//!
//! - WasmPlugin (`pilot/pkg/config/kube/extensions/translate.go`, `pilot/pkg/model/extensions.go`):
//!   one ECDS resource per plugin, `PluginConfig{name: <namespace>.<name>, root_id: pluginName,
//!   configuration: StringValue(JSON of pluginConfig), vm_config{runtime: v8, code, environment
//!   variables incl. the resource version; no vm_id}, failure_policy}`. The agent replaces the
//!   image URL with the pulled file. The HCM refers to it by name through `config_discovery`
//!   (`pilot/pkg/networking/core/extension/extensionfilter.go`).
//! - Filter order (`pilot/pkg/networking/core/listener_builder.go`): AUTHN plugins, Istio authn,
//!   AUTHZ plugins, RBAC, STATS plugins, plugins without a phase, then grpc_stats, fault, cors,
//!   telemetry and the router; within a phase by `priority`, highest first, unset last.
//! - A Service port becomes cluster `outbound|<port>||<host>` (EDS, least request); EnvoyFilter
//!   CLUSTER patches apply to it (MERGE: protobuf merge); HTTP_FILTER patches to the chain.

use super::{
    access_log, config_json, file_source, gateway_duration, local_file, meta_name, meta_namespace,
    prometheus_stats_cluster, proto_merge, router_filter, Generated, Manifests, World,
};
use anyhow::{anyhow, Result};
use serde_json::{json, Value};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The listener Istio builds for a Gateway's HTTP port.
pub fn listener_name(port: u64) -> String {
    format!("0.0.0.0_{port}")
}

fn phase_rank(phase: Option<&str>) -> usize {
    match phase {
        Some("AUTHN") => 0,
        Some("AUTHZ") => 1,
        Some("STATS") => 2,
        _ => 3,
    }
}

/// The gateway's Envoy bootstrap for `manifests`, with `world`'s pods behind every Service.
pub fn generate(manifests: &Manifests, world: &World) -> Result<Generated> {
    let mut files = Vec::new();

    // WasmPlugins: ECDS resources, ordered as Istio orders them.
    let mut plugins: Vec<(usize, i64, usize, Value)> = Vec::new();
    for (i, wp) in manifests.of_kind("WasmPlugin").enumerate() {
        let spec = wp.get("spec").cloned().unwrap_or(Value::Null);
        let (ns, name) = (meta_namespace(wp), meta_name(wp));
        let resource = format!("extensions.istio.io/wasmplugin/{ns}.{name}");
        let failure_policy = match spec.get("failStrategy").and_then(Value::as_str) {
            Some("FAIL_OPEN") => "FAIL_OPEN",
            Some("FAIL_RELOAD") => "FAIL_RELOAD",
            _ => "FAIL_CLOSED",
        };
        let mut plugin_config = json!({
            "name": format!("{ns}.{name}"),
            "root_id": spec.get("pluginName").and_then(Value::as_str).unwrap_or_default(),
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": world.module.display().to_string()}},
                "environment_variables": {"key_values": {
                    "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}},
            },
            "failure_policy": failure_policy,
        });
        if let Some(config) = config_json(spec.get("pluginConfig")) {
            plugin_config["configuration"] = json!({
                "@type": "type.googleapis.com/google.protobuf.StringValue", "value": config});
        }
        let file = format!("ecds-{ns}.{name}.json");
        files.push((
            file.clone(),
            json!({"version_info": "1", "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": resource,
                "typed_config": {"@type": WASM_TYPE, "config": plugin_config},
            }]}),
        ));
        let filter = json!({
            "name": resource,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": local_file(&file)},
                    "resource_api_version": "V3",
                    "initial_fetch_timeout": "0s",
                },
                "type_urls": [WASM_TYPE, RBAC_TYPE],
            },
        });
        let rank = phase_rank(spec.get("phase").and_then(Value::as_str));
        let priority = spec
            .get("priority")
            .and_then(Value::as_i64)
            .unwrap_or(i64::from(i32::MIN));
        plugins.push((rank, priority, i, filter));
    }
    plugins.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut http_filters: Vec<Value> = plugins.into_iter().map(|p| p.3).collect();
    http_filters.extend([
        json!({"name": "envoy.filters.http.grpc_stats", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            "emit_filter_state": true, "stats_for_all_methods": false}}),
        json!({"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}),
        json!({"name": "envoy.filters.http.cors", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}),
        router_filter(),
    ]);

    // The Gateway's HTTP listener and the HTTPRoutes attached to it.
    let gateway = manifests
        .of_kind("Gateway")
        .next()
        .ok_or_else(|| anyhow!("no Gateway in the manifests"))?;
    let port = gateway
        .pointer("/spec/listeners/0/port")
        .and_then(Value::as_u64)
        .unwrap_or(80);
    let mut routes = Vec::new();
    let mut clusters = vec![prometheus_stats_cluster(world.admin)];
    let mut eds = Vec::new();
    for route in manifests.of_kind("HTTPRoute") {
        let ns = meta_namespace(route);
        for rule in route
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let backend = rule
                .pointer("/backendRefs/0")
                .ok_or_else(|| anyhow!("HTTPRoute rule without backendRefs"))?;
            let svc = backend
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let svc_port = backend.get("port").and_then(Value::as_u64).unwrap_or(80);
            let host = format!("{svc}.{ns}.svc.cluster.local");
            let cluster = format!("outbound|{svc_port}||{host}");
            let timeout = rule
                .pointer("/timeouts/request")
                .and_then(Value::as_str)
                .and_then(gateway_duration)
                .unwrap_or_else(|| "0s".to_string());
            let prefix = rule
                .pointer("/matches/0/path/value")
                .and_then(Value::as_str)
                .unwrap_or("/");
            routes.push(json!({
                "match": {"prefix": prefix},
                "route": {"cluster": cluster, "timeout": timeout},
            }));
            if !clusters
                .iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(cluster.as_str()))
            {
                let eds_file = format!("eds-{}.json", clusters.len());
                clusters.push(service_cluster(&cluster, &eds_file, svc, ns, &host));
                eds.push((cluster.clone(), eds_file));
            }
        }
    }

    // EnvoyFilter patches.
    for ef in manifests.of_kind("EnvoyFilter") {
        for patch in ef
            .pointer("/spec/configPatches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            apply_patch(patch, world, &mut clusters, &mut http_filters)?;
        }
    }

    let listener_name = listener_name(port);
    let listener = json!({
        "name": listener_name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("outbound_0.0.0.0_{port}"),
                "use_remote_address": true,
                "normalize_path": true,
                "stream_idle_timeout": "0s",
                "access_log": access_log(&listener_name),
                "route_config": {"name": format!("http.{port}"), "virtual_hosts": [{
                    "name": "*:80", "domains": ["*"], "routes": routes}]},
                "http_filters": http_filters,
            },
        }]}],
    });
    let bootstrap = super::bootstrap(
        json!({"id": "router~10.0.0.1~inference-gateway-istio.default~default.svc.cluster.local",
               "cluster": "inference-gateway-istio.default"}),
        world,
        listener,
        clusters,
    );
    Ok(Generated {
        bootstrap,
        listener: listener_name,
        files,
        eds,
    })
}

/// A Service port's cluster as Istio builds it for a gateway.
fn service_cluster(name: &str, eds_file: &str, svc: &str, ns: &str, host: &str) -> Value {
    json!({
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": file_source(eds_file), "service_name": name},
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{
            "max_connections": 4294967295u64, "max_pending_requests": 4294967295u64,
            "max_requests": 4294967295u64, "max_retries": 4294967295u64,
            "track_remaining": true}]},
        "common_lb_config": {},
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": host, "name": svc, "namespace": ns}]}}},
    })
}

/// One EnvoyFilter patch, for the operations the manifests use.
fn apply_patch(
    patch: &Value,
    world: &World,
    clusters: &mut [Value],
    filters: &mut Vec<Value>,
) -> Result<()> {
    let apply_to = patch
        .get("applyTo")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let op = patch
        .pointer("/patch/operation")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut value = patch
        .pointer("/patch/value")
        .cloned()
        .unwrap_or(Value::Null);
    // A module read from a file: the file the operator mounted into the gateway pod.
    if let Some(file) = value.pointer_mut("/typed_config/config/vm_config/code/local/filename") {
        *file = json!(world.module.display().to_string());
    }
    match (apply_to, op) {
        ("CLUSTER", "MERGE") => {
            let service = patch
                .pointer("/match/cluster/service")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let port = patch
                .pointer("/match/cluster/portNumber")
                .and_then(Value::as_u64);
            let mut matched = false;
            for c in clusters.iter_mut() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                let mut parts = name.split('|');
                let (dir, p, _subset, host) =
                    (parts.next(), parts.next(), parts.next(), parts.next());
                if dir == Some("outbound")
                    && host == Some(service)
                    && port.is_none_or(|port| p == Some(port.to_string().as_str()))
                {
                    proto_merge(c, &value);
                    matched = true;
                }
            }
            if !matched {
                return Err(anyhow!(
                    "EnvoyFilter cluster patch matches no cluster: {patch}"
                ));
            }
        }
        ("HTTP_FILTER", "INSERT_BEFORE") => {
            let before = patch
                .pointer("/match/listener/filterChain/filter/subFilter/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let at = filters
                .iter()
                .position(|f| f.get("name").and_then(Value::as_str) == Some(before))
                .ok_or_else(|| anyhow!("EnvoyFilter: no filter {before} to insert before"))?;
            filters.insert(at, value);
        }
        other => return Err(anyhow!("EnvoyFilter patch {other:?} is not modelled here")),
    }
    Ok(())
}
