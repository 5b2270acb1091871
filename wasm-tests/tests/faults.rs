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
use wasm_tests::envoy::{Envoy, EnvoySpec};
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
