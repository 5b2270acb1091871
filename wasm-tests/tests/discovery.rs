//! Pools discovered from Envoy's own cluster membership: the pool names an EDS cluster instead of
//! listing pods, the collector reads its members from Envoy's admin `/clusters?format=json`, and
//! requests follow the membership as EDS changes it. EDS here comes from a watched file, the
//! simplest real xDS source; Istio and Envoy Gateway feed the same cluster type over gRPC.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use wasm_tests::addr::next_pod_ip;
use wasm_tests::envoy::{static_cluster, Envoy, EnvoySpec};
use wasm_tests::pod::{Pod, PodOptions};

fn write_eds(path: &Path, pods: &[&Pod]) {
    let lb: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": p.addr().ip().to_string(), "port_value": p.addr().port()}}}})
        })
        .collect();
    let doc = json!({"version_info": format!("{}", pods.len()), "resources": [{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": "vllm-eds",
        "endpoints": [{"lb_endpoints": lb}],
    }]});
    // Envoy watches for the file being moved into place.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn send(envoy: &Envoy, n: usize) {
    let client = envoy.client().unwrap();
    for _ in 0..n {
        let r = client.completion("lora-request", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Completions a pod served (its /metrics scrapes are recorded too, and do not count).
fn served(pod: &Pod) -> usize {
    pod.requests()
        .iter()
        .filter(|r| r.path() == "/v1/completions")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_members_follow_the_eds_cluster() {
    let pods = [
        Pod::start_next(PodOptions::default()).await.unwrap(),
        Pod::start_next(PodOptions::default()).await.unwrap(),
        Pod::start_next(PodOptions::default()).await.unwrap(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let eds = dir.path().join("eds.json");
    write_eds(&eds, &[&pods[0], &pods[1]]);

    // The admin on an address of its own, so the admin cluster can name it before Envoy starts.
    let admin: SocketAddr = (next_pod_ip(), 9901).into();
    // The target is the pods' base model (their `model_name`): requests for one adapter would
    // rightly stay on the pod that has it (LoRA affinity), and this test is about membership.
    let config = json!({
        "pools": [{"name": "pool-a", "discovery": {"cluster": "vllm-eds", "adminCluster": "envoy-admin",
                                                   "refreshMs": 200}}],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                    "targetModels": [{"name": "tiny-llama", "weight": 1}]}],
        "scheduling": {"strategy": "DEFAULT"},
    });
    let mut spec = EnvoySpec::plugin(&config);
    spec.admin_address = Some(admin);
    spec.extra_clusters = vec![
        json!({
            "name": "vllm-eds",
            "type": "EDS",
            "connect_timeout": "5s",
            "eds_cluster_config": {"eds_config": {
                "path_config_source": {"path": eds.display().to_string()},
                "resource_api_version": "V3"}},
        }),
        static_cluster("envoy-admin", &[admin]),
    ];
    let envoy = Envoy::start(&spec).await.unwrap();

    // Until the first discovery the pool has no member (503); readiness is the first 200.
    let client = envoy.client().unwrap();
    let start = Instant::now();
    loop {
        let r = client.completion("lora-request", &[]).await.unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no member discovered\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Members discovered: traffic reaches both EDS members and never the third pod.
    let counts = |pods: &[Pod; 3]| pods.iter().map(served).collect::<Vec<_>>();
    send(&envoy, 40).await;
    let c = counts(&pods);
    assert!(c[0] > 0 && c[1] > 0, "both members get traffic: {c:?}");
    assert_eq!(c[2], 0, "a pod outside the cluster gets none: {c:?}");

    // EDS swaps pod 0 for pod 2: within a few refreshes traffic follows.
    write_eds(&eds, &[&pods[1], &pods[2]]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for p in &pods {
            p.clear();
        }
        send(&envoy, 20).await;
        let c = counts(&pods);
        if c[0] == 0 && c[2] > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "membership change not followed: {c:?}\n{}",
            envoy.log()
        );
    }
    // Stable afterwards.
    send(&envoy, 40).await;
    let c = counts(&pods);
    assert_eq!(c[0], 0, "the removed member gets no more traffic: {c:?}");
    assert!(c[1] > 0 && c[2] > 0, "{c:?}");
}

/// A discovered pool with no collector to publish its members: nothing is known of it. FailOpen
/// leaves the pick to the cluster's own load balancing (here the route's fallback cluster);
/// FailClose answers 503 and says why. Either way the filter's log says once that no collector
/// publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_pool_without_collector_follows_the_failure_mode() {
    let pod = Pod::start_next(PodOptions::default()).await.unwrap();
    for (mode, expected) in [("FailOpen", 200), ("FailClose", 503)] {
        let config = json!({
            "pools": [{"name": "pool-a", "discovery": {"cluster": "vllm-eds", "adminCluster": "envoy-admin"},
                       "metrics": {"intervalMs": 100, "timeoutMs": 100}}],
            "models": [{"modelName": "lora-request", "poolRef": "pool-a"}],
            "failureMode": mode,
        });
        let mut spec = EnvoySpec::plugin(&config).without_collector();
        spec.passthrough = vec![pod.addr()];
        let envoy = Envoy::start(&spec).await.unwrap();
        let r = envoy
            .client()
            .unwrap()
            .completion("lora-request", &[])
            .await
            .unwrap();
        assert_eq!(r.status, expected, "{mode}: {}", r.text());
        if expected == 503 {
            assert!(
                r.text().contains("no collector has published"),
                "{}",
                r.text()
            );
        }
        let stats = envoy
            .admin_get("/stats?filter=requests_total")
            .await
            .unwrap();
        let outcome = if mode == "FailOpen" {
            "failed_open"
        } else {
            "unavailable"
        };
        assert!(stats.contains(&format!("outcome=.={outcome}")), "{stats}");
    }
}
