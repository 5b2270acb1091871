//! Faults through the real Envoy, each with the outcome it must have:
//!
//! - a pod killed mid-stream: that client's stream ends without `[DONE]`, the other streams are
//!   untouched, in-flight counts return to zero and the token counters hold exactly what the
//!   completed responses reported;
//! - `/metrics` that answers garbage, 50 MB, or flaps: the pod is out of rotation while its page
//!   is bad (never a 5xx to a client), back when it is good, the VM's memory does not take the
//!   50 MB in, and the failures are said once, not at every scrape;
//! - the VM crashing (the fault-injection build, `make build-faults`), as Istio installs the
//!   plugin with `failStrategy: FAIL_RELOAD`: traffic keeps flowing and the collector comes back;
//! - a configuration pushed (ECDS) while requests are in flight: none is dropped, new requests
//!   follow the new document, old shared data is never read as new;
//! - pool membership changing under load; a pool of 1,000 endpoints.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sched_support;

use bytes::Bytes;
use sched_support::{parse_prometheus, prometheus, sum, value, Sample};
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};
use wasm_tests::envoy::{faults_module, Envoy, EnvoySpec};
use wasm_tests::installs::{start_install, ControlPlane, Manifests};
use wasm_tests::pod::{start_pods, Hold, Pod, PodOptions};
use wasm_tests::sim::MetricsFail;

const UP: &str = "inference_router_endpoint_up";
const IN_FLIGHT: &str = "inference_router_endpoint_in_flight";
const SCRAPE_ERRORS: &str = "inference_router_endpoint_scrape_errors_total";
const WASM_MEMORY: &str = "inference_router_wasm_memory_bytes";

/// Poll `check` every 50 ms until it gives Some, for at most `within`; panics naming `what`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One endpoint's series of `name` in `pool`, now.
async fn metric(envoy: &Envoy, name: &str, pool: &str, endpoint: &str) -> Option<f64> {
    value(
        &prometheus(envoy).await,
        name,
        &[("pool", pool), ("endpoint", endpoint)],
    )
}

fn pool(name: &str, pods: &[&Pod], interval_ms: u64) -> Value {
    json!({"name": name, "endpoints": pods.iter().map(|p| p.endpoint()).collect::<Vec<_>>(),
           "metrics": {"intervalMs": interval_ms, "stalenessMs": 2000}})
}

fn completion(model: &str, max_tokens: u64, stream: bool) -> String {
    let mut b = json!({"model": model, "prompt": "one two three four", "max_tokens": max_tokens});
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
    }
    b.to_string()
}

/// The `usage` a complete JSON or SSE response reported.
fn usage_of(body: &str) -> (f64, f64) {
    let usage = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .chain(std::iter::once(body))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("the response reports usage");
    (
        usage["prompt_tokens"].as_f64().unwrap(),
        usage["completion_tokens"].as_f64().unwrap(),
    )
}

fn tokens(samples: &[Sample], pool: &str) -> (f64, f64) {
    (
        sum(
            samples,
            "inference_router_prompt_tokens_total",
            &[("pool", pool)],
        ),
        sum(
            samples,
            "inference_router_completion_tokens_total",
            &[("pool", pool)],
        ),
    )
}

// ---- A pod killed mid-stream ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_mid_stream_ends_that_stream_and_leaves_the_counts_right() {
    let options = PodOptions::default();
    let doomed = Pod::start_next(options.clone()).await.unwrap();
    let healthy = Pod::start_next(options).await.unwrap();
    let (doomed_ep, healthy_ep) = (doomed.endpoint(), healthy.endpoint());
    // One pool per pod, so which pod serves which request is the test's choice.
    let config = json!({
        "pools": [pool("doomed", &[&doomed], 100), pool("healthy", &[&healthy], 100)],
        "models": [{"modelName": "a", "poolRef": "doomed"}, {"modelName": "b", "poolRef": "healthy"}],
        "defaultPool": "healthy",
        "unknownModels": "reject",
        "scheduling": {"strategy": "DEFAULT"},
    });
    let envoy = Envoy::start(&EnvoySpec::plugin(&config)).await.unwrap();
    let client = envoy.client().unwrap();
    for (pool, ep) in [("doomed", &doomed_ep), ("healthy", &healthy_ep)] {
        eventually("both pods scraped", Duration::from_secs(10), || async {
            (metric(&envoy, UP, pool, ep).await == Some(1.0)).then_some(())
        })
        .await;
    }

    // Two streams in flight on the doomed pod, held after their first chunk.
    doomed.set_hold(Hold::AfterFirstChunk);
    let mut cut = Vec::new();
    for _ in 0..2 {
        let mut s = client
            .post_streaming("/v1/completions", completion("a", 8, true), &[])
            .await
            .unwrap();
        assert_eq!(s.status, 200);
        let first = s.next_event(Duration::from_secs(5)).await.unwrap().unwrap();
        assert!(first.starts_with("data: {"), "{first}");
        cut.push(s);
    }
    // Meanwhile the healthy pod completes a stream and a JSON response.
    let stream = client
        .post("/v1/completions", completion("b", 5, true), &[])
        .await
        .unwrap();
    let json_reply = client
        .post("/v1/completions", completion("b", 7, false), &[])
        .await
        .unwrap();
    assert_eq!((stream.status, json_reply.status), (200, 200));
    assert!(stream.text().contains("data: [DONE]"));
    let (p1, c1) = usage_of(&stream.text());
    let (p2, c2) = usage_of(&json_reply.text());

    doomed.kill().await;
    for mut s in cut {
        // The stream ends — cleanly cut or with an error — and never claims to be complete.
        let rest = s.rest_events(Duration::from_secs(5)).await;
        if let Ok(events) = &rest {
            assert!(
                !events.iter().any(|e| e.contains("[DONE]")),
                "a cut stream must not end with [DONE]: {events:?}"
            );
        }
        eprintln!("cut stream ended with: {rest:?}");
    }

    // Nothing stays in flight; the counters hold exactly what the completed responses reported.
    for (pool, ep) in [("doomed", &doomed_ep), ("healthy", &healthy_ep)] {
        eventually("in-flight back to zero", Duration::from_secs(5), || async {
            (metric(&envoy, IN_FLIGHT, pool, ep).await == Some(0.0)).then_some(())
        })
        .await;
    }
    let samples = prometheus(&envoy).await;
    assert_eq!(tokens(&samples, "healthy"), (p1 + p2, c1 + c2));
    assert_eq!(tokens(&samples, "doomed"), (0.0, 0.0));
    // And the pool that lost its only pod answers a defined error, not a hang.
    let after = client
        .post("/v1/completions", completion("a", 3, false), &[])
        .await
        .unwrap();
    assert!(
        [502, 503].contains(&after.status),
        "a pool with no live pod: {} {}",
        after.status,
        after.text()
    );
    let ok = client
        .post("/v1/completions", completion("b", 3, false), &[])
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

// ---- /metrics that misbehaves -------------------------------------------------------------------

/// Bytes a broken exporter might send: every byte value, half-written series, no newline at the end.
fn garbage_page() -> Bytes {
    let mut page: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    page.extend_from_slice(b"\nvllm:num_requests_waiting{model_name=\"tiny\n{{{ 1e999999 \xff\xfe");
    Bytes::from(page)
}

/// `mb` MB of well-formed lines: only its size is wrong.
fn huge_page(mb: usize) -> Bytes {
    let line = b"vllm:num_requests_waiting{model_name=\"tiny-llama\",engine=\"0\"} 0\n";
    Bytes::from(line.repeat(mb * 1024 * 1024 / line.len()))
}

/// Warn-level Envoy log lines about scrapes of `endpoint`.
fn scrape_warnings(envoy: &Envoy, endpoint: &str) -> usize {
    let needle = format!("scrape of {endpoint} failed");
    envoy
        .log()
        .lines()
        .filter(|l| l.contains("[warning]") && l.contains(&needle))
        .count()
}

async fn served_by(envoy: &Envoy, n: usize) -> Vec<String> {
    let client = envoy.client().unwrap();
    let mut pods = Vec::new();
    for _ in 0..n {
        let r = client
            .post("/v1/completions", completion("tiny-llama", 2, false), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        pods.push(r.pod().unwrap().to_string());
    }
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_that_are_garbage_huge_or_flapping_cost_a_pod_its_turn_and_nothing_else() {
    let pods = start_pods(3, &PodOptions::default()).await.unwrap();
    let eps: Vec<String> = pods.iter().map(Pod::endpoint).collect();
    let config = json!({
        "pools": [pool("p", &pods.iter().collect::<Vec<_>>(), 250)],
        "defaultPool": "p",
        "scheduling": {"strategy": "DEFAULT"},
    });
    let envoy = Envoy::start(&EnvoySpec::plugin(&config)).await.unwrap();
    let up =
        |i: usize, want: f64| {
            let (envoy, ep) = (&envoy, eps[i].clone());
            async move {
                eventually(&format!("{ep} up = {want}"), Duration::from_secs(10), || {
                let ep = ep.clone();
                async move { (metric(envoy, UP, "p", &ep).await == Some(want)).then_some(()) }
            })
            .await
            }
        };
    for i in 0..3 {
        up(i, 1.0).await;
    }
    let memory_before = value(&prometheus(&envoy).await, WASM_MEMORY, &[]).unwrap_or(0.0);

    // 5 MB: over maxPageBytes (4 MiB by default), refused by the plugin unread. 50 MB: over the
    // buffer limit of Envoy's HTTP calls, which fails the call (this used to trap the VM: the
    // SDK's getters on a call that failed).
    pods[0].set_metrics_page(Some(garbage_page()));
    pods[1].set_metrics_page(Some(huge_page(5)));
    up(0, 0.0).await;
    up(1, 0.0).await;
    eventually(
        "the 5 MB refusal is said",
        Duration::from_secs(5),
        || async {
            envoy
                .log()
                .contains("over metrics.maxPageBytes (4194304)")
                .then_some(())
        },
    )
    .await;
    pods[1].set_metrics_page(Some(huge_page(50)));
    let errors_then = metric(&envoy, SCRAPE_ERRORS, "p", &eps[1]).await.unwrap();
    eventually(
        "more refused 50 MB pages",
        Duration::from_secs(10),
        || async {
            let now = metric(&envoy, SCRAPE_ERRORS, "p", &eps[1]).await.unwrap();
            (now >= errors_then + 3.0).then_some(())
        },
    )
    .await;
    // Two of three pods failing at once looks like a pool-wide metrics outage: their last numbers
    // are trusted while within staleness (2 s), so traffic does not herd onto the third. After
    // that only the pod with a good page serves.
    let since = Instant::now();
    eventually(
        "only the pod with a good page serves",
        Duration::from_secs(6),
        || async {
            let served = served_by(&envoy, 10).await;
            served.iter().all(|p| *p == eps[2]).then_some(())
        },
    )
    .await;
    eprintln!(
        "failing pods out of rotation {:?} after they were down",
        since.elapsed()
    );
    let served = served_by(&envoy, 20).await;
    assert!(served.iter().all(|p| *p == eps[2]), "{served:?}");
    let samples = prometheus(&envoy).await;
    let memory_after = value(&samples, WASM_MEMORY, &[]).unwrap();
    eprintln!(
        "wasm memory high-water mark: {memory_before} before, {memory_after} after 50 MB pages"
    );
    assert!(
        memory_after < 16.0 * 1024.0 * 1024.0,
        "a 50 MB page must not reach the VM: {memory_after} bytes"
    );
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());

    // Good pages again: back in rotation.
    pods[0].set_metrics_page(None);
    pods[1].set_metrics_page(None);
    up(0, 1.0).await;
    up(1, 1.0).await;
    let served = served_by(&envoy, 30).await;
    for ep in &eps[..2] {
        assert!(served.contains(ep), "{ep} is back: {served:?}");
    }

    // Pod 0 flaps (500, good, 500, …) for 3 s while traffic flows: every request succeeds.
    let flapper = {
        let stop = Instant::now() + Duration::from_secs(3);
        let pod = &pods[0];
        async move {
            let mut bad = true;
            while Instant::now() < stop {
                pod.set_metrics_fail(if bad {
                    MetricsFail::Status500
                } else {
                    MetricsFail::Ok
                });
                bad = !bad;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            pod.set_metrics_fail(MetricsFail::Ok);
        }
    };
    let traffic = async {
        let mut n = 0;
        let stop = Instant::now() + Duration::from_secs(3);
        while Instant::now() < stop {
            served_by(&envoy, 1).await;
            n += 1;
        }
        n
    };
    let ((), n) = tokio::join!(flapper, traffic);
    eprintln!("{n} requests while pod 0 flapped, all 200");
    let errors = metric(&envoy, SCRAPE_ERRORS, "p", &eps[0]).await.unwrap();
    assert!(errors >= 3.0, "the flapping was seen: {errors} errors");
    // Said at warn once a minute per pod, not at every failed scrape.
    for ep in &eps[..2] {
        assert_eq!(scrape_warnings(&envoy, ep), 1, "{ep}:\n{}", envoy.log());
    }
    let text = envoy.admin_get("/stats/prometheus").await.unwrap();
    assert!(!parse_prometheus(&text).is_empty());
}

// ---- The VM crashing ---------------------------------------------------------------------------

fn istio_manifests() -> Manifests {
    Manifests::example(
        "istio",
        &["wasmplugin.yaml", "routing.yaml", "gateway.yaml"],
    )
    .unwrap()
}

fn eg_manifests() -> Manifests {
    Manifests::example(
        "envoy-gateway",
        &[
            "extension-policy.yaml",
            "traffic-policies.yaml",
            "gateway.yaml",
        ],
    )
    .unwrap()
}

async fn canary_pods(n: usize) -> Vec<Pod> {
    let options = PodOptions {
        adapters: vec!["tweet-summary".into(), "sql-lora".into()],
        ..PodOptions::default()
    };
    start_pods(n, &options).await.unwrap()
}

fn addrs(pods: &[Pod]) -> Vec<std::net::SocketAddr> {
    pods.iter().map(Pod::addr).collect()
}

/// Wait until every pod has been scraped `more` times beyond `from` (per pod).
async fn scraped_again(pods: &[Pod], from: &[usize], more: usize, what: &str) {
    eventually(what, Duration::from_secs(15), || async {
        pods.iter()
            .zip(from)
            .all(|(p, n)| p.scrape_count() >= n + more)
            .then_some(())
    })
    .await;
}

/// `n` canary requests one after another: their statuses.
async fn canary_statuses(client: &wasm_tests::client::Client, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let r = client
            .post("/v1/completions", completion("lora-request", 2, false), &[])
            .await
            .unwrap();
        statuses.push(r.status);
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// A page that makes the fault-injection build's collector trap.
fn trap_page() -> Bytes {
    let mut page = std::fs::read(wasm_tests::fixtures_dir().join("metrics-idle.txt")).unwrap();
    page.extend_from_slice(b"# inference-router-fault: trap\n");
    Bytes::from(page)
}

async fn crash_and_recover(plane: ControlPlane, manifests: Manifests, reloads: bool) {
    let pods = canary_pods(3).await;
    let running = start_install(plane, &manifests, &addrs(&pods), faults_module())
        .await
        .unwrap();
    let envoy = &running.envoy;
    let client = wasm_tests::client::Client::fresh_connections(running.listener).unwrap();
    scraped_again(&pods, &[0, 0, 0], 2, "first scrapes").await;
    assert_eq!(count(&canary_statuses(&client, 10).await, 200), 10);

    // 1. The collector traps on a page. Whichever VM holds the lease dies: the main thread's
    // (its root context ticks too and serves no requests) or a worker's.
    crash_collector(envoy, &pods[0], 1).await;
    let counts: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
    scraped_again(&pods, &counts, 3, "scrapes resume after the crash").await;
    if reloads {
        let (took, failed) = until_all_served(&client, Instant::now()).await;
        eprintln!("{plane:?}: all served {took:?} after the collector's crash ({failed} failed)");
        // 2. Again: the holder now is another VM.
        crash_collector(envoy, &pods[0], 2).await;
        let counts: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
        scraped_again(&pods, &counts, 3, "scrapes resume after the second crash").await;
        let (took, failed) = until_all_served(&client, Instant::now()).await;
        eprintln!("{plane:?}: all served {took:?} after the second crash ({failed} failed)");
    }

    // 3. A request makes its worker's VM trap mid-request.
    let traps_before = envoy
        .log()
        .matches("fault injection: this VM traps now")
        .count();
    let r = client
        .post(
            "/v1/completions",
            completion("lora-request", 2, false),
            &[("x-inference-router-fault", "trap")],
        )
        .await
        .unwrap();
    eprintln!(
        "{plane:?}: the request that trapped its VM got {}",
        r.status
    );
    if !reloads {
        // Envoy Gateway's API has only failOpen: unset, the filter is FAIL_CLOSED, and a crashed
        // worker answers 503 until the next configuration push or a restart (README, Limits).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = canary_statuses(&client, 40).await;
        eprintln!("{plane:?}: 2 s after a worker crashed: {later:?}");
        assert!(
            count(&later, 503) > 0,
            "Envoy now reloads: update the README: {later:?}"
        );
        assert_eq!(count(&later, 200) + count(&later, 503), 40, "{later:?}");
        return;
    }
    assert_eq!(r.status, 503);
    assert!(
        envoy
            .log()
            .matches("fault injection: this VM traps now")
            .count()
            > traps_before
    );
    let (took, failed) = until_all_served(&client, Instant::now()).await;
    eprintln!("{plane:?}: all served {took:?} after a request's crash ({failed} failed)");
    let counts: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
    scraped_again(&pods, &counts, 3, "scrapes go on after the third crash").await;
}

/// Serve the trap page from `pod` until the `n`th trap, then the normal page again.
async fn crash_collector(envoy: &Envoy, pod: &Pod, n: usize) {
    pod.set_metrics_page(Some(trap_page()));
    eventually(&format!("trap {n}"), Duration::from_secs(10), || async {
        let traps = envoy
            .log()
            .matches("fault injection: this VM traps now")
            .count();
        (traps >= n).then_some(())
    })
    .await;
    pod.set_metrics_page(None);
}

/// Send batches of 20 until one is all 200 (at most 10 s): how long it took, how many failed.
async fn until_all_served(
    client: &wasm_tests::client::Client,
    since: Instant,
) -> (Duration, usize) {
    let mut failed = 0;
    loop {
        let batch = canary_statuses(client, 20).await;
        failed += 20 - count(&batch, 200);
        if count(&batch, 200) == 20 {
            return (since.elapsed(), failed);
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "not reloaded within 10 s: {batch:?}"
        );
    }
}

/// Istio's `failStrategy: FAIL_RELOAD` (Istio ≥ 1.27), as the shipped WasmPlugins set it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_fail_reload_brings_a_crashed_vm_and_its_collector_back() {
    crash_and_recover(ControlPlane::Istio, istio_manifests(), true).await;
}

/// Envoy Gateway: the collector comes back; a crashed worker VM does not (FAIL_CLOSED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_brings_the_collector_back_but_not_a_crashed_worker() {
    crash_and_recover(ControlPlane::EnvoyGateway, eg_manifests(), false).await;
}

// ---- Configuration and membership changes under load -------------------------------------------

fn reader_config(m: &mut Manifests) -> &mut Value {
    &mut m.named_mut("WasmPlugin", "inference-router").unwrap()["spec"]["pluginConfig"]
}

/// Envoy's count of ECDS updates applied to the reader.
async fn reader_config_reloads(envoy: &Envoy) -> u64 {
    let stats = envoy
        .admin_get("/stats?filter=config_reload")
        .await
        .unwrap();
    stats
        .lines()
        .find(|l| l.contains("wasmplugin/default.inference-router.config_reload"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One canary request on a new connection: (status, the model the pod saw).
async fn canary(client: &wasm_tests::client::Client, pods: &[Pod]) -> (u16, Option<String>) {
    let r = client
        .post("/v1/completions", completion("lora-request", 2, false), &[])
        .await
        .unwrap();
    let model = r.pod().and_then(|addr| {
        pods.iter()
            .find(|p| p.endpoint() == addr)
            .and_then(|p| p.requests().last().and_then(|rec| rec.model()))
    });
    (r.status, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_pushed_while_requests_are_in_flight_drops_none() {
    let pods = canary_pods(3).await;
    let mut manifests = istio_manifests();
    let running = start_install(
        ControlPlane::Istio,
        &manifests,
        &addrs(&pods),
        faults_module(),
    )
    .await
    .unwrap();
    let envoy = &running.envoy;
    scraped_again(&pods, &[0, 0, 0], 2, "first scrapes").await;
    let listener = running.listener;

    // 12 requests held by the pods, on the old configuration.
    for p in &pods {
        p.set_hold(Hold::Whole);
    }
    let held: Vec<_> = (0..12)
        .map(|_| {
            tokio::spawn(async move {
                let client = wasm_tests::client::Client::fresh_connections(listener).unwrap();
                let r = client
                    .post("/v1/completions", completion("lora-request", 2, false), &[])
                    .await
                    .unwrap();
                (r.status, r.text())
            })
        })
        .collect();
    wasm_tests::pod::wait_total_held(&pods, 12, Duration::from_secs(10))
        .await
        .unwrap();

    // The push: the canary goes all-in on sql-lora, and the pool's scrape settings change, so the
    // new document's collector works under a new instance name (new shared-data keys).
    let config = reader_config(&mut manifests);
    config["models"][0]["targetModels"] = json!([
        {"name": "tweet-summary", "weight": 0}, {"name": "sql-lora", "weight": 100}]);
    config["pools"][0]["metrics"]["intervalMs"] = json!(150);
    let reloads_before = reader_config_reloads(envoy).await;
    running.push(&manifests, 2).unwrap();
    eventually(
        "the new configuration applied",
        Duration::from_secs(10),
        || async { (reader_config_reloads(envoy).await > reloads_before).then_some(()) },
    )
    .await;

    // New requests follow the new document while the old ones are still held.
    let client = wasm_tests::client::Client::fresh_connections(listener).unwrap();
    for p in &pods {
        p.set_hold(Hold::Off);
    }
    let mut new_models = Vec::new();
    for _ in 0..30 {
        let (status, model) = canary(&client, &pods).await;
        assert_eq!(status, 200);
        new_models.push(model.unwrap());
    }
    assert!(
        new_models.iter().all(|m| m == "sql-lora"),
        "after the push: {new_models:?}"
    );
    // The held requests complete: none was dropped by the push.
    for p in &pods {
        p.release_all();
    }
    for h in held {
        let (status, text) = h.await.unwrap();
        assert_eq!(status, 200, "a request in flight during the push: {text}");
    }
    // Nothing stays in flight under the new instance: the old documents' counters are not read.
    for p in &pods {
        eventually(
            "in-flight back to zero",
            Duration::from_secs(10),
            || async {
                let v = metric(envoy, IN_FLIGHT, "vllm-llama2-7b-pool", &p.endpoint()).await;
                (v == Some(0.0)).then_some(())
            },
        )
        .await;
    }
    assert!(!envoy.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_membership_changing_under_load_costs_no_request() {
    let pods = canary_pods(4).await;
    let mut manifests = istio_manifests();
    reader_config(&mut manifests)["pools"][0]["discovery"]["refreshMs"] = json!(300);
    let all = addrs(&pods);
    let running = start_install(ControlPlane::Istio, &manifests, &all[..2], faults_module())
        .await
        .unwrap();
    scraped_again(&pods[..2], &[0, 0], 2, "first scrapes").await;
    let listener = running.listener;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients sending back to back for the whole test.
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = wasm_tests::client::Client::fresh_connections(listener).unwrap();
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = client
                        .post("/v1/completions", completion("lora-request", 2, false), &[])
                        .await
                        .unwrap();
                    statuses.push(r.status);
                }
                statuses
            })
        })
        .collect();

    for members in [&all[1..3], &all[2..4], &all[..]] {
        running.set_members(members).unwrap();
        let since = Instant::now();
        // The change has taken effect when every member serves and no one else does.
        eventually(
            "the members serve, the others not",
            Duration::from_secs(10),
            || async {
                let before: Vec<usize> = pods.iter().map(Pod::request_count).collect();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let served: Vec<usize> = pods
                    .iter()
                    .zip(&before)
                    .map(|(p, b)| p.request_count() - b)
                    .collect();
                let ok = pods.iter().zip(&served).all(|(p, n)| {
                    let member = members.contains(&p.addr());
                    (member && *n > 0) || (!member && *n == 0)
                });
                ok.then_some(())
            },
        )
        .await;
        // And the plugin itself picks the new members (not only Envoy's fallback balancing).
        for m in members.iter() {
            eventually(
                "the plugin picks every member",
                Duration::from_secs(10),
                || async {
                    let picks = metric(
                        &running.envoy,
                        "inference_router_endpoint_picks_total",
                        "vllm-llama2-7b-pool",
                        &m.to_string(),
                    )
                    .await;
                    (picks.unwrap_or(0.0) > 0.0).then_some(())
                },
            )
            .await;
        }
        eprintln!("members {members:?} in effect after {:?}", since.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for l in load {
        statuses.extend(l.await.unwrap());
    }
    eprintln!("{} requests while the members changed", statuses.len());
    assert!(statuses.len() > 100);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
}

// ---- A pool of 1,000 endpoints -----------------------------------------------------------------

fn small_page(waiting: u32) -> Bytes {
    Bytes::from(format!(
        "vllm:num_requests_waiting{{model_name=\"tiny-llama\"}} {waiting}\n\
         vllm:num_requests_running{{model_name=\"tiny-llama\"}} 1\n\
         vllm:kv_cache_usage_perc{{model_name=\"tiny-llama\"}} 0.2\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_a_thousand_endpoints_is_scraped_and_routed() {
    let pods = start_pods(1000, &PodOptions::default()).await.unwrap();
    for p in &pods {
        p.set_metrics_page(Some(small_page(4)));
    }
    // One pod is clearly the best: the picks must find it among 1,000.
    pods[617].set_metrics_page(Some(small_page(0)));
    let config = json!({
        "pools": [{"name": "big", "endpoints": pods.iter().map(Pod::endpoint).collect::<Vec<_>>(),
                   "metrics": {"intervalMs": 1000, "stalenessMs": 5000}}],
        "defaultPool": "big",
        "scheduling": {"strategy": "DEFAULT"},
    });
    let started = Instant::now();
    let envoy = Envoy::start(&EnvoySpec::plugin(&config)).await.unwrap();
    eventually("all 1,000 scraped", Duration::from_secs(20), || async {
        let samples = prometheus(&envoy).await;
        let up = sum(&samples, UP, &[("pool", "big")]);
        (up == 1000.0).then_some(())
    })
    .await;
    eprintln!("1,000 endpoints up {:?} after the start", started.elapsed());
    let client = envoy.client().unwrap();
    let mut to_best = 0;
    for _ in 0..10 {
        let r = client
            .post("/v1/completions", completion("tiny-llama", 2, false), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        if r.pod() == Some(pods[617].endpoint().as_str()) {
            to_best += 1;
        }
    }
    assert!(to_best >= 5, "the best of 1,000 got {to_best} of 10");
    // Scrapes keep their interval: each pod about once a second.
    let before: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
    let t = Instant::now();
    scraped_again(&pods, &before, 3, "three more rounds").await;
    eprintln!("three rounds of 1,000 scrapes in {:?}", t.elapsed());
    let memory = value(&prometheus(&envoy).await, WASM_MEMORY, &[]).unwrap();
    eprintln!("wasm memory high-water mark with 1,000 endpoints: {memory}");
    assert!(memory < 32.0 * 1024.0 * 1024.0);
}

// ---- Plain Envoy: the service collector crashing -----------------------------------------------

/// envoy/envoy.yaml's service collector is a bootstrap Wasm service: Envoy restarts no such VM.
/// When it crashes, traffic keeps flowing (FailOpen: least in-flight, counted as `failed_open`,
/// which the shipped alert watches) and the collector stays down until Envoy restarts. The
/// embedded collector has no such gap: a worker takes the lease over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_envoy_service_collector_crash_fails_open_and_embedded_takes_over() {
    for mode in ["service", "embedded"] {
        let pods = start_pods(2, &PodOptions::default()).await.unwrap();
        let config = json!({
            "pools": [pool("p", &pods.iter().collect::<Vec<_>>(), 100)],
            "models": [{"modelName": "tiny-llama", "poolRef": "p"}],
            "defaultPool": "p",
            "scheduling": {"strategy": "DEFAULT"},
            "collector": {"mode": mode},
        });
        let mut spec = EnvoySpec::plugin(&config);
        spec.wasm = faults_module();
        let envoy = Envoy::start(&spec).await.unwrap();
        let client = wasm_tests::client::Client::fresh_connections(envoy.addr().unwrap()).unwrap();
        scraped_again(&pods, &[0, 0], 2, "first scrapes").await;
        crash_collector(&envoy, &pods[0], 1).await;
        let failed_open = || async {
            sum(
                &prometheus(&envoy).await,
                "inference_router_requests_total",
                &[("pool", "p"), ("outcome", "failed_open")],
            )
        };
        match mode {
            "service" => {
                // Past staleness (2 s) every pick is a fail-open one; all are served.
                eventually("requests fail open", Duration::from_secs(10), || async {
                    let before = failed_open().await;
                    served_by(&envoy, 5).await;
                    (failed_open().await >= before + 5.0).then_some(())
                })
                .await;
                let counts: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
                assert_eq!(counts, now, "no one scrapes after the service's crash");
            }
            _ => {
                let counts: Vec<usize> = pods.iter().map(Pod::scrape_count).collect();
                scraped_again(&pods, &counts, 3, "a worker scrapes").await;
                let before = failed_open().await;
                let served = served_by(&envoy, 20).await;
                assert_eq!(served.len(), 20);
                assert_eq!(
                    failed_open().await,
                    before,
                    "fresh metrics: no fail-open picks"
                );
            }
        }
        let statuses = canary_statuses_plain(&client, 20).await;
        assert!(statuses.iter().all(|s| *s == 200), "{mode}: {statuses:?}");
    }
}

async fn canary_statuses_plain(client: &wasm_tests::client::Client, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let r = client
            .post("/v1/completions", completion("tiny-llama", 2, false), &[])
            .await
            .unwrap();
        statuses.push(r.status);
    }
    statuses
}
