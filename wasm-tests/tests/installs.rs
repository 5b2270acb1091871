//! The shipped installs, in the real Envoy configured exactly as each control plane configures
//! it from the manifests in `examples/` (`wasm_tests::installs`):
//!
//! - Istio WasmPlugin (`examples/istio/wasmplugin.yaml` + `routing.yaml` + `gateway.yaml`): the
//!   reader and the gate delivered by ECDS, no vm_id (one VM for both), no
//!   `allow_on_headers_stop_iteration`;
//! - Envoy Gateway (`examples/envoy-gateway/*`): the same pair as EnvoyExtensionPolicy entries,
//!   a VM per filter, code fetched over HTTP with its sha256, a 32 KiB listener buffer unless the
//!   ClientTrafficPolicy raises it;
//! - Istio EnvoyFilter (`examples/istio/envoyfilter-wasm.yaml`): the single filter with the flag.
//!
//! A shipped manifest that stops working fails here.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sched_support;

use sched_support::{load, prometheus, sum};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasm_tests::envoy::wasm_module;
use wasm_tests::installs::{start_install, ControlPlane, Manifests, Running};
use wasm_tests::pod::{start_pods, wait_total_held, Hold, Pod, PodOptions};
use wasm_tests::PROMPT;

const POOL: &str = "vllm-llama2-7b-pool";
const TARGETS: [&str; 2] = ["tweet-summary", "sql-lora"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Install {
    IstioWasmPlugin,
    EnvoyGateway,
    IstioEnvoyFilter,
}

use Install::*;

impl Install {
    fn manifests(self) -> Manifests {
        match self {
            IstioWasmPlugin => Manifests::example(
                "istio",
                &["wasmplugin.yaml", "routing.yaml", "gateway.yaml"],
            ),
            IstioEnvoyFilter => Manifests::example(
                "istio",
                &["envoyfilter-wasm.yaml", "routing.yaml", "gateway.yaml"],
            ),
            EnvoyGateway => Manifests::example(
                "envoy-gateway",
                &[
                    "extension-policy.yaml",
                    "traffic-policies.yaml",
                    "gateway.yaml",
                ],
            ),
        }
        .unwrap()
    }

    /// The reader's plugin configuration in the manifests (the single filter's for EnvoyFilter).
    fn reader_config(self, m: &mut Manifests) -> &mut Value {
        match self {
            IstioWasmPlugin => {
                &mut m.named_mut("WasmPlugin", "inference-router").unwrap()["spec"]["pluginConfig"]
            }
            EnvoyGateway => &mut m
                .named_mut("EnvoyExtensionPolicy", "inference-router")
                .unwrap()["spec"]["wasm"][0]["config"],
            IstioEnvoyFilter => panic!("the EnvoyFilter carries its document as a string"),
        }
    }

    fn gate_config(self, m: &mut Manifests) -> &mut Value {
        match self {
            IstioWasmPlugin => &mut m.named_mut("WasmPlugin", "inference-router-gate").unwrap()
                ["spec"]["pluginConfig"],
            EnvoyGateway => &mut m
                .named_mut("EnvoyExtensionPolicy", "inference-router")
                .unwrap()["spec"]["wasm"][1]["config"],
            IstioEnvoyFilter => panic!("no gate in the single-filter install"),
        }
    }

    /// Leave the gate (`gate: true`) or the reader out of the install.
    fn drop_filter(self, m: &mut Manifests, gate: bool) {
        match self {
            IstioWasmPlugin => m.remove(
                "WasmPlugin",
                if gate {
                    "inference-router-gate"
                } else {
                    "inference-router"
                },
            ),
            EnvoyGateway => {
                let wasm = m
                    .named_mut("EnvoyExtensionPolicy", "inference-router")
                    .unwrap()["spec"]["wasm"]
                    .as_array_mut()
                    .unwrap();
                wasm.remove(if gate { 1 } else { 0 });
            }
            IstioEnvoyFilter => panic!("one filter only"),
        }
    }
}

async fn pods(n: usize) -> Vec<Pod> {
    let options = PodOptions {
        adapters: TARGETS.iter().map(|s| s.to_string()).collect(),
        ..PodOptions::default()
    };
    start_pods(n, &options).await.unwrap()
}

async fn start(install: Install, manifests: &Manifests, members: &[SocketAddr]) -> Running {
    let plane = match install {
        EnvoyGateway => ControlPlane::EnvoyGateway,
        _ => ControlPlane::Istio,
    };
    start_install(plane, manifests, members, wasm_module())
        .await
        .unwrap()
}

fn addrs(pods: &[Pod]) -> Vec<SocketAddr> {
    pods.iter().map(Pod::addr).collect()
}

/// Wait until the plugin has discovered the members and scraped each of them.
async fn wait_scraped(pods: &[Pod], times: usize) {
    let deadline = Instant::now() + PROMPT;
    while pods.iter().any(|p| p.scrape_count() < times) {
        assert!(
            Instant::now() < deadline,
            "scrapes per pod: {:?}",
            pods.iter().map(Pod::scrape_count).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn completion(model: &str, max_tokens: u64) -> String {
    json!({"model": model, "prompt": "one two three", "max_tokens": max_tokens}).to_string()
}

fn assert_error(what: &str, status: u16, body: &[u8], expected: u16) {
    assert_eq!(
        status,
        expected,
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert_eq!(v["error"]["code"], json!(expected), "{what}: {v}");
}

// ---- The canary release through each install ---------------------------------------------------

async fn canary_requests_reach_a_pod_with_the_substituted_target(install: Install) {
    let pods = pods(3).await;
    let running = start(install, &install.manifests(), &addrs(&pods)).await;
    wait_scraped(&pods, 1).await;
    let client = running.client().unwrap();
    let mut completion_tokens = 0;
    for i in 0..30u64 {
        let r = client
            .post(
                "/v1/completions",
                completion("lora-request", 1 + i % 4),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{install:?}: {}", r.text());
        completion_tokens += r.json().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap();
    }
    let mut seen = Vec::new();
    for pod in &pods {
        for req in pod.requests() {
            let model = req.model().unwrap();
            assert!(TARGETS.contains(&model.as_str()), "{install:?}: {model}");
            assert_eq!(req.header("x-gateway-model-name"), Some(model.as_str()));
            // It went exactly where the plugin said, and the body length is right.
            assert_eq!(
                req.header("x-gateway-destination-endpoint"),
                Some(pod.endpoint().as_str()),
                "{install:?}"
            );
            assert_eq!(
                req.header("content-length")
                    .map(|l| l.parse::<usize>().unwrap()),
                Some(req.body.len())
            );
            seen.push(model);
        }
    }
    assert_eq!(
        seen.len(),
        30,
        "{install:?}: every request reached a pod once"
    );
    for t in TARGETS {
        assert!(
            seen.iter().any(|m| m == t),
            "{install:?}: no request for {t}: {seen:?}"
        );
    }
    // Tokens counted per target, as the pods reported them.
    let deadline = Instant::now() + PROMPT;
    loop {
        let samples = prometheus(&running.envoy).await;
        let counted = sum(
            &samples,
            "inference_router_completion_tokens_total",
            &[("pool", POOL), ("model", "lora-request")],
        );
        if counted == completion_tokens as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{install:?}: counted {counted} of {completion_tokens}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // How the reader found its gate: Istio gives both filters one VM, Envoy Gateway one each.
    let log = running.envoy.log();
    match install {
        IstioWasmPlugin => assert!(log.contains("(this reader's VM)"), "{log}"),
        EnvoyGateway => assert!(log.contains("(another VM)"), "{log}"),
        IstioEnvoyFilter => assert!(!log.contains("gate queue")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_routes_the_canary() {
    canary_requests_reach_a_pod_with_the_substituted_target(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_routes_the_canary() {
    canary_requests_reach_a_pod_with_the_substituted_target(EnvoyGateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_envoyfilter_routes_the_canary() {
    canary_requests_reach_a_pod_with_the_substituted_target(IstioEnvoyFilter).await;
}

// ---- Replies, bodies and streams ----------------------------------------------------------------

async fn contract_replies(install: Install) {
    let pods = pods(2).await;
    let running = start(install, &install.manifests(), &addrs(&pods)).await;
    let client = running.client().unwrap();
    // Decided in the reader's body callback while the gate holds the headers.
    for (what, body) in [
        ("not JSON", "{not json".to_string()),
        ("no model", json!({"prompt": "hi"}).to_string()),
        (
            "model not a string",
            json!({"model": 7, "prompt": "hi"}).to_string(),
        ),
    ] {
        let r = client.post("/v1/completions", body, &[]).await.unwrap();
        assert_error(&format!("{install:?} {what}"), r.status, &r.body, 400);
    }
    // Chunked (no content-length): the reader decides on the last chunk.
    let r = client
        .post_chunked(
            "/v1/completions",
            vec![
                "{\"model\":".into(),
                "\"lora-request\",\"prompt\":\"a\"".into(),
                "}".into(),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{install:?} chunked: {}", r.text());
    // No body at all.
    let r = client.post("/v1/completions", "", &[]).await.unwrap();
    assert_error(&format!("{install:?} empty body"), r.status, &r.body, 400);
    // Over maxRequestBodyBytes (1 MiB in the manifests), announced and chunked.
    let big = format!(
        "{{\"model\":\"lora-request\",\"prompt\":\"{}\"}}",
        "a".repeat(1 << 20)
    );
    let r = client
        .post("/v1/completions", big.clone(), &[])
        .await
        .unwrap();
    assert_error(
        &format!("{install:?} 1 MiB announced"),
        r.status,
        &r.body,
        413,
    );
    let chunks: Vec<bytes::Bytes> = big
        .as_bytes()
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let r = client
        .post_chunked("/v1/completions", chunks, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{install:?} 1 MiB chunked: {}", r.text());
    // Not an inference request: passes through untouched, gate or not.
    let r = client.get("/v1/models", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{install:?} GET /v1/models: {}", r.text());
    // A body just under the limit is read, decided and routed whole.
    let body = format!(
        "{{\"model\":\"lora-request\",\"prompt\":\"{}\"}}",
        "b".repeat(900_000)
    );
    let r = client
        .post("/v1/completions", body.clone(), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{install:?} 900 KB: {}", r.text());
    let routed: Vec<_> = pods
        .iter()
        .flat_map(Pod::requests)
        .filter(|r| r.body.len() > 800_000)
        .collect();
    assert_eq!(routed.len(), 1, "{install:?}");
    let expected_len = body.len() - "lora-request".len() + routed[0].model().unwrap().len();
    assert_eq!(
        routed[0].body.len(),
        expected_len,
        "{install:?}: the body arrived whole"
    );
    // No pod ever saw the refused ones.
    let bad: Vec<_> = pods
        .iter()
        .flat_map(Pod::requests)
        .filter(|r| r.path() == "/v1/completions" && r.model().is_none())
        .collect();
    assert!(bad.is_empty(), "{install:?}: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_replies_as_the_contract_says() {
    contract_replies(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_replies_as_the_contract_says() {
    contract_replies(EnvoyGateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_envoyfilter_replies_as_the_contract_says() {
    contract_replies(IstioEnvoyFilter).await;
}

async fn streams_pass_through_incrementally(install: Install) {
    let pods = pods(1).await;
    let running = start(install, &install.manifests(), &addrs(&pods)).await;
    pods[0].set_hold(Hold::AfterFirstChunk);
    let body = json!({"model": "lora-request", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4, "stream": true});
    let mut stream = running
        .client()
        .unwrap()
        .post_streaming("/v1/chat/completions", body.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(stream.status, 200, "{install:?}");
    let first = stream
        .next_event(PROMPT)
        .await
        .unwrap()
        .expect("a first event");
    wait_total_held(&pods, 1, PROMPT).await.unwrap();
    assert!(first.starts_with("data: "), "{first}");
    pods[0].release_all();
    let rest = stream.rest_events(PROMPT).await.unwrap();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("data: [DONE]"),
        "{install:?}"
    );
    // The client did not ask for usage: it gets no usage event though the pod sent one.
    assert!(rest.iter().all(|e| !e.contains("\"usage\":{")), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_streams_pass_through_incrementally() {
    streams_pass_through_incrementally(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_streams_pass_through_incrementally() {
    streams_pass_through_incrementally(EnvoyGateway).await;
}

// ---- The pair's failure modes -------------------------------------------------------------------

/// Send headers and part of the body, then wait for the reply without sending the rest.
async fn stalled_request(addr: SocketAddr) -> (u16, Vec<u8>, Duration) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"model\":\"lora-",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PROMPT, async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len || n == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("a reply, not a hang");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.as_bytes().to_vec())
        .unwrap_or_default();
    (status, body, elapsed)
}

async fn a_gate_that_never_hears_answers_503(install: Install) {
    let pods = pods(1).await;
    let mut m = install.manifests();
    install.gate_config(&mut m)["gate"]["timeoutMs"] = json!(400);
    let running = start(install, &m, &addrs(&pods)).await;
    let (status, body, elapsed) = stalled_request(running.listener).await;
    assert_error(&format!("{install:?} stalled body"), status, &body, 503);
    assert!(
        elapsed >= Duration::from_millis(400),
        "{install:?}: {elapsed:?}"
    );
    assert_eq!(pods[0].request_count(), 0);
    // The next request is served normally.
    let r = running
        .client()
        .unwrap()
        .post("/v1/completions", completion("lora-request", 2), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{install:?}: {}", r.text());
    let samples = prometheus(&running.envoy).await;
    assert_eq!(
        sum(&samples, "inference_router_gate_timeouts_total", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_gate_times_out_with_503() {
    a_gate_that_never_hears_answers_503(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_gate_times_out_with_503() {
    a_gate_that_never_hears_answers_503(EnvoyGateway).await;
}

/// One of the pair left out: the other says so (log, counter) and `failureMode` decides.
async fn half_installs_follow_the_failure_mode(install: Install) {
    let pods = pods(2).await;
    for (gate_missing, failure_mode, expected) in [
        (false, "FailOpen", 200),
        (false, "FailClose", 503),
        (true, "FailOpen", 200),
        (true, "FailClose", 503),
    ] {
        let mut m = install.manifests();
        if gate_missing {
            install.reader_config(&mut m)["failureMode"] = json!(failure_mode);
        } else {
            install.gate_config(&mut m)["failureMode"] = json!(failure_mode);
        }
        install.drop_filter(&mut m, gate_missing);
        let running = start(install, &m, &addrs(&pods)).await;
        let client = running.client().unwrap();
        let what = format!("{install:?} gate missing {gate_missing}, {failure_mode}");
        let r = client
            .post("/v1/completions", completion("lora-request", 2), &[])
            .await
            .unwrap();
        assert_eq!(r.status, expected, "{what}: {}", r.text());
        if expected == 200 {
            // Untouched: the cluster's own load balancing, the client's body as sent.
            let last = pods.iter().flat_map(Pod::requests).last().unwrap();
            assert_eq!(last.model().as_deref(), Some("lora-request"), "{what}");
        }
        let counter = if gate_missing {
            "inference_router_reader_gate_missing_total"
        } else {
            "inference_router_gate_reader_missing_total"
        };
        assert_eq!(
            sum(&prometheus(&running.envoy).await, counter, &[]),
            1.0,
            "{what}"
        );
        assert!(
            running.envoy.log().contains(if gate_missing {
                "no inference-router-gate"
            } else {
                "without the reader's mark"
            }),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_half_installed() {
    half_installs_follow_the_failure_mode(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_half_installed() {
    half_installs_follow_the_failure_mode(EnvoyGateway).await;
}

/// With no plugin at all (say its VM failed open), a client's own destination header can reach
/// only a member of the pool: the route's override_host skips any other address.
async fn spoofed_destinations_reach_only_members(install: Install) {
    let pods = pods(2).await;
    let rogue = Pod::start_next(PodOptions::default()).await.unwrap();
    let mut m = install.manifests();
    match install {
        IstioWasmPlugin | IstioEnvoyFilter => {
            m.remove("WasmPlugin", "inference-router");
            m.remove("WasmPlugin", "inference-router-gate");
            m.remove("EnvoyFilter", "inference-router-wasm");
        }
        EnvoyGateway => m.remove("EnvoyExtensionPolicy", "inference-router"),
    }
    let running = start(install, &m, &addrs(&pods)).await;
    let client = running.client().unwrap();
    let rogue_endpoint = rogue.endpoint();
    for _ in 0..10 {
        let r = client
            .post(
                "/v1/completions",
                completion("lora-request", 1),
                &[("x-gateway-destination-endpoint", &rogue_endpoint)],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{install:?}: {}", r.text());
    }
    assert_eq!(
        rogue.request_count(),
        0,
        "{install:?}: a non-member was reached"
    );
    // And a member named by the header is honoured (that is how the plugin routes).
    let member = pods[1].endpoint();
    let before = pods[1].request_count();
    client
        .post(
            "/v1/completions",
            completion("lora-request", 1),
            &[("x-gateway-destination-endpoint", &member)],
        )
        .await
        .unwrap();
    assert_eq!(pods[1].request_count(), before + 1, "{install:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_routing_reaches_only_pool_members() {
    spoofed_destinations_reach_only_members(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_routing_reaches_only_pool_members() {
    spoofed_destinations_reach_only_members(EnvoyGateway).await;
}

/// Members follow the Service's endpoints: a pod that joins is scraped and picked, an empty pool
/// answers 503 from the reader while the gate holds the headers.
async fn members_follow_the_service(install: Install) {
    let pods = pods(3).await;
    let running = start(install, &install.manifests(), &addrs(&pods[..2])).await;
    wait_scraped(&pods[..2], 1).await;
    assert_eq!(pods[2].scrape_count(), 0);
    running.set_members(&addrs(&pods)).unwrap();
    wait_scraped(&pods, 1).await;
    running.set_members(&[]).unwrap();
    let client = running.client().unwrap();
    let deadline = Instant::now() + PROMPT;
    loop {
        let r = client
            .post("/v1/completions", completion("lora-request", 1), &[])
            .await
            .unwrap();
        // Until the plugin's next read of the members, Envoy itself answers "no healthy
        // upstream"; then the plugin does, in the OpenAI shape.
        if r.status == 503 && r.json().is_ok() {
            assert_error(&format!("{install:?} empty pool"), r.status, &r.body, 503);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{install:?}: still {} with no members",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_members_follow_the_service() {
    members_follow_the_service(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_members_follow_the_service() {
    members_follow_the_service(EnvoyGateway).await;
}

/// The reader's model-level replies: 404 for an unknown model (`unknownModels: reject`), 429 for
/// a Sheddable model while every pod is saturated; both while the gate holds the headers.
async fn model_replies(install: Install) {
    let pods = pods(2).await;
    let mut m = install.manifests();
    let reader = install.reader_config(&mut m);
    reader["unknownModels"] = json!("reject");
    reader["models"]
        .as_array_mut()
        .unwrap()
        .push(json!({"modelName": "batch", "poolRef": POOL, "criticality": "Sheddable"}));
    let running = start(install, &m, &addrs(&pods)).await;
    let client = running.client().unwrap();
    let r = client
        .post("/v1/completions", completion("no-such-model", 1), &[])
        .await
        .unwrap();
    assert_error(
        &format!("{install:?} unknown model"),
        r.status,
        &r.body,
        404,
    );
    // Saturated pods (queue 10 > 5): Sheddable requests are shed, the others still routed.
    for pod in &pods {
        pod.pin(&load(10, 0.1));
    }
    let baseline: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
    let deadline = Instant::now() + PROMPT;
    while pods
        .iter()
        .zip(&baseline)
        .any(|(p, b)| p.scrape_count() < b + 2)
    {
        assert!(
            Instant::now() < deadline,
            "{install:?}: pods not scraped again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client
        .post("/v1/completions", completion("batch", 1), &[])
        .await
        .unwrap();
    assert_error(
        &format!("{install:?} sheddable, saturated"),
        r.status,
        &r.body,
        429,
    );
    let r = client
        .post("/v1/completions", completion("lora-request", 1), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{install:?}: {}", r.text());
    let shed = pods
        .iter()
        .flat_map(Pod::requests)
        .filter(|r| matches!(r.model().as_deref(), Some("batch" | "no-such-model")))
        .count();
    assert_eq!(shed, 0, "{install:?}: a refused request reached a pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_rejects_and_sheds() {
    model_replies(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_rejects_and_sheds() {
    model_replies(EnvoyGateway).await;
}

/// Why the Envoy Gateway install ships a ClientTrafficPolicy: without it the listener buffer is
/// 32 KiB and Envoy itself refuses a larger prompt while the reader buffers it (413, never a
/// hang); with it, the same prompt is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_needs_its_buffer_policy_for_large_prompts() {
    let pods = pods(1).await;
    let body = format!(
        "{{\"model\":\"lora-request\",\"prompt\":\"{}\"}}",
        "c".repeat(200_000)
    );
    let mut m = EnvoyGateway.manifests();
    m.remove("ClientTrafficPolicy", "inference-gateway-buffer");
    let running = start(EnvoyGateway, &m, &addrs(&pods)).await;
    let r = running
        .client()
        .unwrap()
        .post("/v1/completions", body.clone(), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(pods[0].request_count(), 0);
    drop(running);
    let running = start(EnvoyGateway, &EnvoyGateway.manifests(), &addrs(&pods)).await;
    let r = running
        .client()
        .unwrap()
        .post("/v1/completions", body, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A body that ends with trailers (HTTP/2): the reader decides when they arrive, the gate
/// carries it out.
async fn trailers_end_the_body(install: Install) {
    let pods = pods(1).await;
    let running = start(install, &install.manifests(), &addrs(&pods)).await;
    let (status, body) = wasm_tests::client::post_h2_with_trailers(
        running.listener,
        "/v1/completions",
        &completion("lora-request", 2),
    )
    .await
    .unwrap();
    assert_eq!(
        status,
        200,
        "{install:?}: {}",
        String::from_utf8_lossy(&body)
    );
    let got = pods[0].requests();
    assert_eq!(got.len(), 1);
    assert!(
        TARGETS.contains(&got[0].model().unwrap().as_str()),
        "{install:?}: rewritten"
    );
    assert_eq!(
        got[0].header("x-gateway-destination-endpoint"),
        Some(pods[0].endpoint().as_str())
    );
    let (status, _) = wasm_tests::client::post_h2_with_trailers(
        running.listener,
        "/v1/completions",
        "{\"model\":",
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{install:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_trailers_end_the_body() {
    trailers_end_the_body(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_trailers_end_the_body() {
    trailers_end_the_body(EnvoyGateway).await;
}

// ---- Flow control through the reader and the gate ----------------------------------------------

/// Requests held for the pool by flow control, summed over workers, from admin `/stats` (the
/// installs' stats tags differ per control plane; the flat names all start the same).
async fn held(running: &Running) -> u64 {
    let text = running
        .envoy
        .admin_get("/stats?filter=inference_router_flow_queue_requests")
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        })
        .sum()
}

async fn wait_held(running: &Running, n: u64) {
    let deadline = Instant::now() + PROMPT;
    while held(running).await != n {
        assert!(Instant::now() < deadline, "never {n} held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `flowControl` in the reader's (and the gate's) document, a request for a saturated pool
/// waits in the reader — the gate waits with it — and goes on once the pod has room; one that
/// waits past the TTL gets the 429 that says why.
async fn flow_control_holds_in_the_reader(install: Install) {
    let pods = pods(1).await;
    pods[0].pin(&load(50, 0.1));
    let mut m = install.manifests();
    let flow = json!({"enabled": true, "ttlMs": 1500});
    install.reader_config(&mut m)["flowControl"] = flow.clone();
    install.gate_config(&mut m)["flowControl"] = flow;
    let running = start(install, &m, &addrs(&pods)).await;
    wait_scraped(&pods, 3).await;
    let client = running.client().unwrap();

    let started = Instant::now();
    let r = client
        .post("/v1/completions", completion("lora-request", 2), &[])
        .await
        .unwrap();
    assert_error(
        &format!("{install:?} held past the TTL"),
        r.status,
        &r.body,
        429,
    );
    assert_eq!(
        r.header("x-inference-router-dropped-reason"),
        Some("ttl_expired")
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));

    let held_request = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .post("/v1/completions", completion("lora-request", 2), &[])
                .await
                .unwrap()
        })
    };
    wait_held(&running, 1).await;
    assert_eq!(
        pods[0].request_count(),
        0,
        "nothing reached the pod while held"
    );
    pods[0].unpin();
    let r = held_request.await.unwrap();
    assert_eq!(r.status, 200, "{install:?}: {}", r.text());
    assert_eq!(pods[0].request_count(), 1);
    wait_held(&running, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_wasmplugin_flow_control_holds_in_the_reader() {
    flow_control_holds_in_the_reader(IstioWasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_flow_control_holds_in_the_reader() {
    flow_control_holds_in_the_reader(EnvoyGateway).await;
}
