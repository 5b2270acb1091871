//! Deployments the plugin must survive and explain, in the real Envoy: two plugin instances in
//! one Envoy with no vm_id (every Istio WasmPlugin), a collector given other pools than its
//! filters, a root_id that names no filter role, and debug logs turned on while Envoy runs.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wasm_tests::envoy::{stats_tags, wasm_module, Envoy, EnvoySpec};
use wasm_tests::pod::{start_pods, Pod, PodOptions};
use wasm_tests::PROMPT;

fn filter(root_id: &str, vm_id: Option<&str>, config: &Value) -> Value {
    let mut vm = json!({"runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm_module().display().to_string()}}});
    if let Some(id) = vm_id {
        vm["vm_id"] = json!(id);
    }
    json!({"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": root_id, "root_id": root_id, "vm_config": vm,
                   "allow_on_headers_stop_iteration": true,
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                     "value": config.to_string()}}}})
}

fn listener(name: &str, filters: Vec<Value>, cluster: &str) -> Value {
    let mut chain = filters;
    chain.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
                "http_filters": chain,
            }}]}],
    })
}

fn original_dst(name: &str) -> Value {
    json!({"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
           "connect_timeout": "5s",
           "original_dst_lb_config": {"use_http_header": true,
                                      "http_header_name": "x-gateway-destination-endpoint"}})
}

async fn start(listeners: Vec<Value>, clusters: Vec<Value>) -> (Envoy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_config": {"stats_tags": stats_tags()},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let envoy = Envoy::start_file(&path, dir.path()).await.unwrap();
    (envoy, dir)
}

fn pool_config(pool: &str, pods: &[Pod]) -> Value {
    json!({
        "pools": [{"name": pool, "endpoints": pods.iter().map(Pod::endpoint).collect::<Vec<_>>(),
                   "metrics": {"intervalMs": 100}}],
        "defaultPool": pool,
        "collector": {"mode": "embedded"},
    })
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Istio gives every WasmPlugin no vm_id, so two inference-router plugins share one shared-data
/// store. Each must still elect its own collector and keep its own counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugin_instances_without_vm_id_each_scrape_their_own_pods() {
    let a = start_pods(2, &PodOptions::default()).await.unwrap();
    let b = start_pods(2, &PodOptions::default()).await.unwrap();
    let (envoy, _dir) = start(
        vec![
            listener(
                "a",
                vec![filter("inference-router", None, &pool_config("pool-a", &a))],
                "pool-a",
            ),
            listener(
                "b",
                vec![filter("inference-router", None, &pool_config("pool-b", &b))],
                "pool-b",
            ),
        ],
        vec![original_dst("pool-a"), original_dst("pool-b")],
    )
    .await;
    wait_until("every pod of both instances scraped", || {
        a.iter().chain(&b).all(|p| p.scrape_count() >= 3)
    })
    .await;
    for (listener, pods) in [("a", &a), ("b", &b)] {
        let client = wasm_tests::client::Client::new(envoy.listener(listener).unwrap()).unwrap();
        for _ in 0..4 {
            let r = client.completion("m", &[]).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        assert_eq!(
            pods.iter().map(Pod::request_count).sum::<usize>(),
            4,
            "listener {listener}'s requests went to its own pool"
        );
    }
    assert!(
        envoy.log().matches("collector lease taken").count() >= 2,
        "{}",
        envoy.log()
    );
}

/// A collector given other pools than its filters: the filter says so once, naming what differs,
/// and the endpoint it lists but the collector does not scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_with_other_pools_is_reported_once() {
    let pods = start_pods(2, &PodOptions::default()).await.unwrap();
    let eps: Vec<String> = pods.iter().map(Pod::endpoint).collect();
    let filter_doc = json!({"pools": [{"name": "pool-a", "endpoints": eps,
                                       "metrics": {"intervalMs": 100}}],
                            "defaultPool": "pool-a", "instanceName": "shared"});
    let collector_doc = json!({"pools": [{"name": "pool-a", "endpoints": [eps[0]],
                                          "metrics": {"intervalMs": 100}}],
                               "instanceName": "shared"});
    let spec = EnvoySpec::plugin(&filter_doc);
    let dir = tempfile::tempdir().unwrap();
    let mut bootstrap = spec.render(&dir.path().join("access.log")).unwrap();
    bootstrap["bootstrap_extensions"][0]["typed_config"]["config"]["configuration"]["value"] =
        json!(collector_doc.to_string());
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let envoy = Envoy::start_file(&path, dir.path()).await.unwrap();
    let client = envoy.client().unwrap();
    wait_until("the collector scraped its one pod", || {
        pods[0].scrape_count() >= 2
    })
    .await;
    for _ in 0..20 {
        assert_eq!(client.completion("m", &[]).await.unwrap().status, 200);
    }
    wait_until("the filter reported the mismatch", || {
        envoy.log().contains("was given different pools")
    })
    .await;
    let log = envoy.log();
    assert!(
        log.contains(&format!("does not scrape 1 configured here ({})", eps[1])),
        "{log}"
    );
    // Once per worker, not per request.
    assert!(log.matches("does not scrape").count() <= 3, "{log}");
    assert_eq!(pods[1].scrape_count(), 0);
}

/// A root_id that names no filter role (here the collector's) inserted as an HTTP filter must not
/// trap the VM: requests pass as if it were not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_with_the_collectors_root_id_lets_requests_pass() {
    let pods = start_pods(1, &PodOptions::default()).await.unwrap();
    let doc = pool_config("pool-a", &pods);
    let (envoy, _dir) = start(
        vec![listener(
            "x",
            vec![filter("inference-router-collector", Some("c"), &doc)],
            "plain",
        )],
        vec![wasm_tests::envoy::static_cluster(
            "plain",
            &[pods[0].addr()],
        )],
    )
    .await;
    let client = wasm_tests::client::Client::new(envoy.listener("x").unwrap()).unwrap();
    for _ in 0..3 {
        let r = client.completion("m", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
    assert_eq!(pods[0].request_count(), 3);
}

/// Debug logs follow Envoy's level for Wasm, changed at run time through the admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_follow_envoys_wasm_log_level() {
    let pods = start_pods(1, &PodOptions::default()).await.unwrap();
    let doc = json!({"pools": [{"name": "pool-a", "endpoints": [pods[0].endpoint()]}],
                     "defaultPool": "pool-a", "scheduling": {"strategy": "ROUND_ROBIN"}});
    let envoy = Envoy::start(&EnvoySpec::plugin(&doc)).await.unwrap();
    let client = envoy.client().unwrap();
    let bad = || async {
        client
            .post("/v1/completions", "{oops", &[])
            .await
            .unwrap()
            .status
    };
    assert_eq!(bad().await, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !envoy.log().contains("400 invalid_request_error"),
        "debug is off by default"
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    http.post(format!("http://{}/logging?wasm=debug", envoy.admin()))
        .send()
        .await
        .unwrap();
    // Each worker's root looks at the level once a second.
    let deadline = Instant::now() + PROMPT;
    while !envoy.log().contains("400 invalid_request_error") {
        assert!(
            Instant::now() < deadline,
            "no debug line after the level change"
        );
        assert_eq!(bad().await, 400);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
