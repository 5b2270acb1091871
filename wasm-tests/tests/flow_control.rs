//! Flow control (`flowControl`) through the real Envoy: while the pool is saturated, requests wait
//! paused in Envoy in priority bands and leave as the pods gain room — highest band first,
//! round-robin between tenants within a band — or are answered 429 / 503 saying why. The pods'
//! `/metrics` pages are pinned to say how busy they are; the pods record the order in which
//! requests reached them. Envoy runs two workers, each with its own queue.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sched_support;

use sched_support::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use wasm_tests::addr::next_pod_ip;
use wasm_tests::client::{Client, Reply};
use wasm_tests::envoy::{static_cluster, Envoy, EnvoySpec};
use wasm_tests::pod::{endpoints, start_pods, Pod, PodOptions};
use wasm_tests::PROMPT;

const QUEUED: &str = "inference_router_flow_queue_requests";
const QUEUED_BYTES: &str = "inference_router_flow_queue_bytes";
const FLOW_TOTAL: &str = "inference_router_flow_requests_total";
const WAIT_COUNT: &str = "inference_router_flow_queue_wait_ms_count";
const SATURATION: &str = "inference_router_pool_saturation_permille";
const DROPPED: &str = "x-inference-router-dropped-reason";
const FAIRNESS: &str = "x-gateway-inference-fairness-id";

/// The scheduling tests' pool with flow control on and `settings` merged in.
fn flow_config(endpoints: &[String], settings: Value) -> Value {
    let mut c = config(endpoints, "DEFAULT");
    let mut flow = json!({"enabled": true});
    if let (Some(f), Some(s)) = (flow.as_object_mut(), settings.as_object()) {
        f.extend(s.clone());
    }
    c["flowControl"] = flow;
    c
}

/// Pods whose `/metrics` say 50 requests wait (the saturation bound is 5), and Envoy once its
/// filters know it.
async fn saturated(n: usize, settings: Value) -> (Vec<Pod>, Envoy) {
    let pods = start_pods(n, &PodOptions::default()).await.unwrap();
    for p in &pods {
        p.pin(&load(50, 0.1));
    }
    let envoy = start_envoy(&flow_config(&endpoints(&pods), settings)).await;
    wait_gauges(&envoy, QUEUE_SIZE, &endpoints(&pods), &vec![50.0; n]).await;
    settle().await;
    (pods, envoy)
}

fn send(client: &Client, model: &str, headers: &[(&str, &str)]) -> JoinHandle<Reply> {
    let client = client.clone();
    let model = model.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::spawn(async move {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        client
            .post("/v1/completions", completion_body(&model, "Say hi", 3), &h)
            .await
            .unwrap()
    })
}

/// Requests held for the pool, over both workers (`priority`: one band, or all).
async fn queued(envoy: &Envoy, priority: Option<&str>) -> f64 {
    let mut labels = vec![("pool", POOL)];
    if let Some(p) = priority {
        labels.push(("priority", p));
    }
    sum(&prometheus(envoy).await, QUEUED, &labels)
}

async fn wait_queued(envoy: &Envoy, priority: Option<&str>, n: f64) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let q = queued(envoy, priority).await;
        if q == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{q} queued (priority {priority:?}), expected {n}\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn flow_total(envoy: &Envoy, priority: &str, outcome: &str) -> f64 {
    sum(
        &prometheus(envoy).await,
        FLOW_TOTAL,
        &[("pool", POOL), ("priority", priority), ("outcome", outcome)],
    )
}

/// Completions the pod served, in the order they reached it.
fn served(pod: &Pod) -> Vec<wasm_tests::pod::Recorded> {
    pod.requests()
        .into_iter()
        .filter(|r| r.path() == "/v1/completions")
        .collect()
}

/// Nothing is left held: every band's request and byte gauges are back at zero.
async fn nothing_queued(envoy: &Envoy) {
    wait_queued(envoy, None, 0.0).await;
    let samples = prometheus(envoy).await;
    assert_eq!(sum(&samples, QUEUED_BYTES, &[("pool", POOL)]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn critical_request_passes_200_queued_sheddable_ones() {
    let (pods, envoy) = saturated(1, json!({})).await;
    // The saturation gauge (refreshed each second while nothing is held) reads ≥ 1.
    let deadline = Instant::now() + PROMPT;
    loop {
        let samples = prometheus(&envoy).await;
        let saturation = value(&samples, SATURATION, &[("pool", POOL)]).unwrap_or(0.0);
        if saturation >= 1000.0 {
            break;
        }
        assert!(Instant::now() < deadline, "saturation {saturation}‰");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New connections per request, so both workers hold some.
    let client = Client::fresh_connections(envoy.addr().unwrap()).unwrap();
    let sheddable: Vec<_> = (0..200).map(|_| send(&client, SHEDDABLE, &[])).collect();
    wait_queued(&envoy, Some("-1"), 200.0).await;
    let critical = send(&client, CRITICAL, &[]);
    wait_queued(&envoy, Some("1"), 1.0).await;
    assert!(
        served(&pods[0]).is_empty(),
        "nothing passes while saturated"
    );

    // The pod gains room for one request: the Critical one goes. Then it recovers fully and
    // the Sheddable ones drain.
    pods[0].pin(&load(5, 0.1));
    pods[0].wait_for_requests(1, PROMPT).await.unwrap();
    let first = served(&pods[0]);
    assert_eq!(
        first[0].model().as_deref(),
        Some("tweet-summary"),
        "the Critical request first"
    );
    pods[0].unpin();
    let r = critical.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for s in sheddable {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let order: Vec<String> = served(&pods[0])
        .iter()
        .map(|r| r.model().unwrap_or_default())
        .collect();
    assert_eq!(order.len(), 201);
    assert_eq!(flow_total(&envoy, "1", "dispatched").await, 1.0);
    assert_eq!(flow_total(&envoy, "-1", "dispatched").await, 200.0);
    // Every wait is recorded (histograms show at Envoy's next stats flush, each second here).
    let deadline = Instant::now() + PROMPT;
    loop {
        let waits = sum(&prometheus(&envoy).await, WAIT_COUNT, &[("pool", POOL)]);
        if waits == 201.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{waits} waits recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nothing_queued(&envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_in_one_band_share_dispatches_equally() {
    let (pods, envoy) = saturated(1, json!({})).await;
    let client = Client::fresh_connections(envoy.addr().unwrap()).unwrap();
    // The busy tenant queues ten times as many, all before the quiet one's.
    let busy: Vec<_> = (0..50)
        .map(|_| send(&client, STANDARD, &[(FAIRNESS, "busy")]))
        .collect();
    wait_queued(&envoy, Some("0"), 50.0).await;
    let quiet: Vec<_> = (0..5)
        .map(|_| send(&client, STANDARD, &[(FAIRNESS, "quiet")]))
        .collect();
    wait_queued(&envoy, Some("0"), 55.0).await;
    pods[0].unpin();
    for r in busy.into_iter().chain(quiet) {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let order: Vec<String> = served(&pods[0])
        .iter()
        .map(|r| r.header(FAIRNESS).unwrap_or("").to_string())
        .collect();
    assert_eq!(order.len(), 55);
    // Round-robin between the two tenants in each worker's queue: the quiet tenant's five go
    // out among the first dispatches, not after the busy tenant's fifty (first come, first served
    // would put them at 51–55). Each worker alternates on its own; how the quiet five fall between
    // the two workers, and which worker wins each free slot, spreads them over the first ~20.
    let last_quiet = order.iter().rposition(|t| t == "quiet").unwrap();
    assert!(
        last_quiet < 25,
        "the quiet tenant's last at {last_quiet}: {order:?}"
    );
    let early = order
        .iter()
        .take(10)
        .filter(|t| t.as_str() == "quiet")
        .count();
    assert!(
        early >= 2,
        "some of the quiet tenant's in the first 10: {order:?}"
    );
    nothing_queued(&envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_held_past_its_ttl_gets_429_saying_why() {
    let (pods, envoy) = saturated(1, json!({"ttlMs": 300})).await;
    let client = envoy.client().unwrap();
    let start = Instant::now();
    let r = send(&client, STANDARD, &[]).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header(DROPPED), Some("ttl_expired"));
    let body = r.json().unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded", "{body}");
    assert!(
        waited >= Duration::from_millis(300),
        "held for the TTL: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "and not much longer: {waited:?}"
    );
    assert!(served(&pods[0]).is_empty(), "the pod never saw it");
    assert_eq!(flow_total(&envoy, "0", "expired").await, 1.0);
    assert_eq!(
        requests_total(&envoy, STANDARD, "shed").await,
        1.0,
        "counted as shed in the request totals"
    );
    nothing_queued(&envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_band_answers_429_at_once_and_the_held_ones_go_when_the_pool_recovers() {
    // One request per band per worker; Envoy has two workers.
    let (pods, envoy) = saturated(1, json!({"maxRequestsPerBand": 1})).await;
    let client = Client::fresh_connections(envoy.addr().unwrap()).unwrap();
    let sent: Vec<_> = (0..6).map(|_| send(&client, STANDARD, &[])).collect();
    // Each request is either held or refused at once.
    let deadline = Instant::now() + PROMPT;
    let (held, refused) = loop {
        let held = queued(&envoy, Some("0")).await;
        let refused = flow_total(&envoy, "0", "rejected").await;
        if held + refused == 6.0 {
            break (held, refused);
        }
        assert!(Instant::now() < deadline, "{held} held, {refused} refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        (1.0..=2.0).contains(&held),
        "at most one held per worker: {held}"
    );
    assert!(served(&pods[0]).is_empty());
    pods[0].unpin();
    let (mut ok, mut full) = (0.0, 0.0);
    for s in sent {
        let r = s.await.unwrap();
        match r.status {
            200 => ok += 1.0,
            429 => {
                assert_eq!(r.header(DROPPED), Some("queue_full"), "{}", r.text());
                full += 1.0;
            }
            other => panic!("{other}: {}", r.text()),
        }
    }
    assert_eq!(
        (ok, full),
        (held, refused),
        "the held ones were served once the pod recovered"
    );
    assert_eq!(served(&pods[0]).len() as f64, held);
    assert_eq!(flow_total(&envoy, "0", "dispatched").await, held);
    nothing_queued(&envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_while_held_leaves_the_queue() {
    let (pods, envoy) = saturated(1, json!({})).await;
    let client = envoy.client().unwrap();
    let held = send(&client, STANDARD, &[]);
    wait_queued(&envoy, Some("0"), 1.0).await;
    held.abort();
    let _ = held.await;
    wait_queued(&envoy, Some("0"), 0.0).await;
    assert_eq!(flow_total(&envoy, "0", "abandoned").await, 1.0);
    pods[0].unpin();
    // The pod recovered; nothing left for it from the client that left.
    let r = complete(&client, STANDARD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served(&pods[0]).len(), 1);
    nothing_queued(&envoy).await;
}

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
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Scale from zero: a pool whose EDS cluster has no endpoints holds requests up to
/// `noEndpointTtlMs`, then answers 503 `no_endpoints`; a request held when a pod appears is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_pool_holds_requests_until_a_pod_appears_or_503() {
    let pod = Pod::start_next(PodOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let eds = dir.path().join("eds.json");
    write_eds(&eds, &[]);
    let admin: SocketAddr = (next_pod_ip(), 9901).into();
    let config = json!({
        "pools": [{"name": POOL, "discovery": {"cluster": "vllm-eds", "adminCluster": "envoy-admin",
                                               "refreshMs": 100},
                   "metrics": {"intervalMs": INTERVAL_MS}}],
        "models": [{"modelName": STANDARD, "poolRef": POOL, "criticality": "Standard"}],
        "scheduling": {"strategy": "DEFAULT"},
        "flowControl": {"enabled": true, "noEndpointTtlMs": 3000},
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
    let client = envoy.client().unwrap();

    // Before the first discovery nothing is known (the plugin's own 503); once the pool is known
    // to be empty, a request waits noEndpointTtlMs and gets the flow-control 503.
    let deadline = Instant::now() + PROMPT;
    loop {
        let start = Instant::now();
        let r = complete(&client, STANDARD).await;
        assert_eq!(r.status, 503, "{}", r.text());
        if r.header(DROPPED) == Some("no_endpoints") {
            assert!(start.elapsed() >= Duration::from_millis(3000));
            assert_eq!(r.json().unwrap()["error"]["type"], "service_unavailable");
            break;
        }
        assert!(Instant::now() < deadline, "never held\n{}", envoy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(flow_total(&envoy, "0", "no_endpoints").await, 1.0);

    // A pod appears while a request waits: it is served.
    let held = send(&client, STANDARD, &[]);
    wait_queued(&envoy, Some("0"), 1.0).await;
    write_eds(&eds, &[&pod]);
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served(&pod).len(), 1);
    assert_eq!(flow_total(&envoy, "0", "dispatched").await, 1.0);
    nothing_queued(&envoy).await;
}
