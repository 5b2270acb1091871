//! Envoy Gateway's translation of the manifests in `examples/envoy-gateway/` into its proxy's
//! Envoy configuration, as it builds it (read in envoyproxy/gateway, August 2026):
//!
//! - EnvoyExtensionPolicy wasm entries (`internal/gatewayapi/envoyextensionpolicy.go`,
//!   `internal/xds/translator/wasm.go`): one HCM filter per entry, named
//!   `envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<policy>/wasm/<index>`, `disabled: true`,
//!   enabled on the targeted route by `typed_per_filter_config` (`FilterConfig{config: {}}`);
//!   `PluginConfig{name: entry name, root_id, vm_config{vm_id: the filter's own name ("Do not share
//!   VMs across different filters"), runtime: v8, code: remote over HTTP from Envoy Gateway's wasm
//!   cache (`wasm_cluster`) with the module's sha256}, configuration: StringValue(JSON of config),
//!   fail_open}`. No `allow_on_headers_stop_iteration`.
//! - Filter order (`internal/xds/translator/httpfilters.go`): ext_proc 100+i, wasm 200+i, rbac,
//!   rate limits …, router last.
//! - An HTTPRoute rule becomes cluster `httproute/<ns>/<name>/rule/<i>` (EDS); a
//!   BackendTrafficPolicy `loadBalancer.endpointOverride` makes its load balancing Envoy's
//!   `override_host` with the configured type as fallback (`internal/xds/translator/cluster.go`).
//! - Listeners and clusters have a 32 KiB connection buffer unless a ClientTrafficPolicy /
//!   BackendTrafficPolicy `connection.bufferLimit` says otherwise.

use super::{
    access_log, config_json, file_source, gateway_duration, meta_name, meta_namespace,
    prometheus_stats_cluster, quantity_bytes, router_filter, sha256_hex, Generated, Manifests,
    World,
};
use anyhow::{anyhow, Result};
use serde_json::{json, Value};

const DEFAULT_BUFFER_LIMIT: u64 = 32768;
const WASM_CLUSTER: &str = "wasm_cluster";

/// The listener Envoy Gateway builds for a Gateway listener.
pub fn listener_name(ns: &str, gateway: &str, listener: &str) -> String {
    format!("{ns}/{gateway}/{listener}")
}

fn targets(policy: &Value, kind: &str) -> Vec<String> {
    policy
        .pointer("/spec/targetRefs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("kind").and_then(Value::as_str) == Some(kind))
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The proxy's Envoy bootstrap for `manifests`, with `world`'s pods behind every Service.
pub fn generate(manifests: &Manifests, world: &World) -> Result<Generated> {
    let module_server = world
        .module_server
        .ok_or_else(|| anyhow!("Envoy Gateway serves the module over HTTP: start serve_file"))?;
    let sha256 = sha256_hex(&world.module)?;

    let gateway = manifests
        .of_kind("Gateway")
        .next()
        .ok_or_else(|| anyhow!("no Gateway in the manifests"))?;
    let (gw_ns, gw_name) = (meta_namespace(gateway), meta_name(gateway));
    let gw_listener = gateway
        .pointer("/spec/listeners/0/name")
        .and_then(Value::as_str)
        .unwrap_or("http");
    let listener_buffer = manifests
        .of_kind("ClientTrafficPolicy")
        .filter(|p| targets(p, "Gateway").iter().any(|t| t == gw_name))
        .find_map(|p| {
            p.pointer("/spec/connection/bufferLimit")
                .and_then(quantity_bytes)
        })
        .unwrap_or(DEFAULT_BUFFER_LIMIT);

    // Wasm filters per targeted route, in the order Envoy Gateway sorts them.
    let mut http_filters: Vec<(usize, Value)> = Vec::new();
    let mut route_filters: Vec<(String, Vec<String>)> = Vec::new();
    for policy in manifests.of_kind("EnvoyExtensionPolicy") {
        let (ns, name) = (meta_namespace(policy), meta_name(policy));
        let mut names = Vec::new();
        for (i, entry) in policy
            .pointer("/spec/wasm")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let ir_name = format!("envoyextensionpolicy/{ns}/{name}/wasm/{i}");
            let filter_name = format!("envoy.filters.http.wasm/{ir_name}");
            let wasm_name = entry
                .get("name")
                .and_then(Value::as_str)
                .map_or(ir_name.clone(), str::to_string);
            let mut plugin = json!({
                "name": wasm_name,
                "vm_config": {
                    "vm_id": ir_name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"remote": {
                        "http_uri": {
                            "uri": format!("http://{module_server}/{}.wasm", ir_name.replace('/', "-")),
                            "cluster": WASM_CLUSTER,
                            "timeout": "10s",
                        },
                        "sha256": sha256,
                        "retry_policy": {"num_retries": 10, "retry_back_off": {
                            "base_interval": "1s", "max_interval": "30s"}},
                    }},
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": config_json(entry.get("config")).unwrap_or_default()},
                "fail_open": entry.get("failOpen").and_then(Value::as_bool).unwrap_or(false),
            });
            if let Some(root) = entry.get("rootID").and_then(Value::as_str) {
                plugin["root_id"] = json!(root);
            }
            http_filters.push((
                200 + i,
                json!({"name": filter_name, "disabled": true, "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": plugin}}),
            ));
            names.push(filter_name);
        }
        for route in targets(policy, "HTTPRoute") {
            route_filters.push((route, names.clone()));
        }
    }
    http_filters.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            let name = |v: &Value| {
                v.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            name(&a.1).cmp(&name(&b.1))
        })
    });
    let mut filters: Vec<Value> = http_filters.into_iter().map(|f| f.1).collect();
    filters.push(router_filter());

    // Routes and their clusters.
    let mut routes = Vec::new();
    let mut clusters = vec![
        prometheus_stats_cluster(world.admin),
        json!({"name": WASM_CLUSTER, "type": "STATIC", "connect_timeout": "10s",
               "load_assignment": {"cluster_name": WASM_CLUSTER, "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {
                       "address": module_server.ip().to_string(),
                       "port_value": module_server.port()}}}}]}]}}),
    ];
    let mut eds = Vec::new();
    for route in manifests.of_kind("HTTPRoute") {
        let (ns, name) = (meta_namespace(route), meta_name(route));
        let enabled: Vec<&String> = route_filters
            .iter()
            .filter(|(r, _)| r == name)
            .flat_map(|(_, f)| f)
            .collect();
        let btp = manifests
            .of_kind("BackendTrafficPolicy")
            .find(|p| targets(p, "HTTPRoute").iter().any(|t| t == name));
        for (i, rule) in route
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cluster = format!("httproute/{ns}/{name}/rule/{i}");
            let prefix = rule
                .pointer("/matches/0/path/value")
                .and_then(Value::as_str)
                .unwrap_or("/");
            let mut action = json!({"cluster": cluster,
                                    "upgrade_configs": [{"upgrade_type": "websocket"}]});
            if let Some(t) = rule
                .pointer("/timeouts/request")
                .and_then(Value::as_str)
                .and_then(gateway_duration)
            {
                action["timeout"] = json!(t);
            }
            let mut per_filter = serde_json::Map::new();
            for f in &enabled {
                per_filter.insert(
                    (*f).clone(),
                    json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                           "config": {}}),
                );
            }
            routes.push(json!({
                "name": format!("{cluster}/match/0/*"),
                "match": {"prefix": prefix},
                "route": action,
                "typed_per_filter_config": per_filter,
            }));
            let eds_file = format!("eds-{}.json", eds.len());
            clusters.push(route_cluster(&cluster, &eds_file, btp));
            eds.push((cluster, eds_file));
        }
    }

    let listener_name = listener_name(gw_ns, gw_name, gw_listener);
    let listener = json!({
        "name": listener_name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "per_connection_buffer_limit_bytes": listener_buffer,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "http-10080",
                "use_remote_address": true,
                "normalize_path": true,
                "merge_slashes": true,
                "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
                "access_log": access_log(&listener_name),
                "route_config": {"name": listener_name, "virtual_hosts": [{
                    "name": format!("{listener_name}/*"), "domains": ["*"], "routes": routes}]},
                "http_filters": filters,
            },
        }]}],
    });
    let bootstrap = super::bootstrap(
        json!({"id": format!("envoy-{gw_ns}-{gw_name}"), "cluster": format!("{gw_ns}/{gw_name}")}),
        world,
        listener,
        clusters,
    );
    Ok(Generated {
        bootstrap,
        listener: listener_name,
        files: Vec::new(),
        eds,
    })
}

/// An HTTPRoute rule's cluster, with the load balancing its BackendTrafficPolicy asks for.
fn route_cluster(name: &str, eds_file: &str, btp: Option<&Value>) -> Value {
    let buffer = btp
        .and_then(|p| p.pointer("/spec/connection/bufferLimit"))
        .and_then(quantity_bytes)
        .unwrap_or(DEFAULT_BUFFER_LIMIT);
    let lb = btp.and_then(|p| p.pointer("/spec/loadBalancer"));
    let fallback = match lb.and_then(|l| l.get("type")).and_then(Value::as_str) {
        Some("RoundRobin") => ("round_robin", "round_robin.v3.RoundRobin"),
        Some("Random") => ("random", "random.v3.Random"),
        _ => ("least_request", "least_request.v3.LeastRequest"),
    };
    let fallback_policy = json!({"policies": [{"typed_extension_config": {
        "name": format!("envoy.load_balancing_policies.{}", fallback.0),
        "typed_config": {"@type": format!(
            "type.googleapis.com/envoy.extensions.load_balancing_policies.{}", fallback.1)},
    }}]});
    let sources: Vec<Value> = lb
        .and_then(|l| l.pointer("/endpointOverride/extractFrom"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("header").map(|h| json!({"header": h})))
        .collect();
    let policy = if sources.is_empty() {
        fallback_policy
    } else {
        json!({"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                "override_host_sources": sources,
                "fallback_policy": fallback_policy,
            },
        }}]})
    };
    json!({
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": file_source(eds_file), "service_name": name},
        "connect_timeout": "10s",
        "common_lb_config": {},
        "per_connection_buffer_limit_bytes": buffer,
        "ignore_health_on_host_removal": true,
        "load_balancing_policy": policy,
    })
}
