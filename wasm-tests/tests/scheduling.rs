//! Metrics-based scheduling (`DEFAULT` and `PREFIX_CACHE`) through the real Envoy, in front of
//! simulated vLLM pods whose `/metrics` are pinned to chosen values: which pod each request
//! reaches, what a client gets when the pool is saturated or has no metrics, and the request
//! counters. Readiness is the collector's per-endpoint gauges at `/stats/prometheus` showing the
//! pinned values, polled with a deadline; the only fixed waits are `settle` (two scrape intervals
//! for the published snapshot to catch up with its gauges) and stated bounds.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sched_support;

use futures_util::future::join_all;
use sched_support::*;
use serde_json::json;
use std::time::Duration;
use wasm_tests::client::{Client, Reply};
use wasm_tests::envoy::{Envoy, EnvoySpec};
use wasm_tests::sim::{endpoints, Pin, Sim, SimConfig};

fn assert_openai_error(what: &str, r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type:?}"
    );
    let body = r.json().unwrap();
    let error = &body["error"];
    assert!(error["message"].is_string(), "{what}: message in {body}");
    assert!(error["type"].is_string(), "{what}: type in {body}");
    assert_eq!(error["code"], json!(status), "{what}: code in {body}");
}

// ---- Load: queue and KV cache ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_long_queue_is_avoided() {
    long_queue_is_avoided(None).await;
}

/// Four pods, pod 0 with its KV cache 95% full, the others 10%.
async fn full_kv_stack() -> (Vec<Sim>, Vec<String>, Envoy) {
    let sims = sims(4, &fast_sim()).await;
    let eps = endpoints(&sims);
    sims[0].pin(load(0, 0.95)).await;
    for s in &sims[1..] {
        s.pin(load(0, 0.1)).await;
    }
    let envoy = start_envoy(&config(&eps, "DEFAULT")).await;
    wait_gauges(&envoy, KV_PERMILLE, &eps, &[950.0, 100.0, 100.0, 100.0]).await;
    settle().await;
    (sims, eps, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_nearly_full_kv_cache_is_avoided() {
    let (_sims, eps, envoy) = full_kv_stack().await;
    let client = envoy.client().unwrap();
    let pods = sequential(&client, BASE, 40).await;
    let counts = tally(&eps, &pods);
    assert_eq!(
        counts[0], 0,
        "{} reports its KV cache 95% full, the others 10%, yet it got {} of 40 requests: {counts:?}",
        eps[0], counts[0]
    );
}

/// `n` sequential requests, each after the collector has scraped again (two intervals), so no
/// pick since the last scrape weighs in the queue scorer: if the unpaced variant of a test fails
/// and this one passes, the scorer is right and the accounting of picks between scrapes is not.
async fn paced(client: &Client, model: &str, n: usize) -> Vec<String> {
    let mut pods = Vec::new();
    for _ in 0..n {
        settle().await;
        pods.extend(sequential(client, model, 1).await);
    }
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_nearly_full_kv_cache_is_avoided_by_requests_a_scrape_apart() {
    let (_sims, eps, envoy) = full_kv_stack().await;
    let pods = paced(&envoy.client().unwrap(), BASE, 5).await;
    let counts = tally(&eps, &pods);
    assert_eq!(counts[0], 0, "{counts:?}");
}

// ---- LoRA affinity ----------------------------------------------------------------------------

/// Four pods at equal load; pod 2 runs sql-lora, the others another adapter with a free slot.
async fn lora_stack() -> (Vec<Sim>, Vec<String>, Envoy) {
    let sims = sims(4, &fast_sim()).await;
    let eps = endpoints(&sims);
    for (i, s) in sims.iter().enumerate() {
        let adapter = if i == 2 { SQL_ADAPTER } else { "tweet-summary" };
        s.pin(Pin {
            waiting: Some(0),
            running: Some(1),
            kv: Some(0.1),
            running_adapters: Some(vec![adapter.to_string()]),
            waiting_adapters: Some(vec![]),
            max_lora: Some(2),
        })
        .await;
    }
    let envoy = start_envoy(&config(&eps, "DEFAULT")).await;
    wait_gauges(&envoy, KV_PERMILLE, &eps, &[100.0; 4]).await;
    wait_gauges(&envoy, RUNNING, &eps, &[1.0; 4]).await;
    settle().await;
    (sims, eps, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_an_adapter_go_to_the_pod_running_it() {
    let (sims, eps, envoy) = lora_stack().await;
    // 20 sequential requests for a model whose single target is sql-lora: at least 18 (90%) on
    // the pod that has the adapter loaded. Nothing else tells the pods apart, so only LoRA
    // affinity can send them there.
    let client = envoy.client().unwrap();
    let pods = sequential(&client, SQL, 20).await;
    let counts = tally(&eps, &pods);
    assert!(
        counts[2] >= 18,
        "{} runs {SQL_ADAPTER} and got {} of 20 requests for it (want ≥ 18): {counts:?}",
        eps[2],
        counts[2]
    );
    // The pod saw the adapter's name.
    let stats = sims[2].stats().await;
    assert_eq!(
        stats
            .requests_by_model
            .get(SQL_ADAPTER)
            .copied()
            .unwrap_or(0),
        counts[2] as u64,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_an_adapter_a_scrape_apart_go_to_the_pod_running_it() {
    let (_sims, eps, envoy) = lora_stack().await;
    let pods = paced(&envoy.client().unwrap(), SQL, 5).await;
    let counts = tally(&eps, &pods);
    assert_eq!(counts[2], 5, "{counts:?}");
}

// ---- Saturation -------------------------------------------------------------------------------

/// Every pod pinned to `pin`: a saturated pool. Sheddable requests get 429 in the OpenAI error
/// shape and never reach a pod; Critical and Standard ones are still served.
async fn saturated_pool_sheds_only_sheddable(pin: Pin, gauge: &str, shown: f64) {
    let sims = sims(3, &fast_sim()).await;
    let eps = endpoints(&sims);
    for s in &sims {
        s.pin(pin.clone()).await;
    }
    let envoy = start_envoy(&config(&eps, "DEFAULT")).await;
    wait_gauges(&envoy, gauge, &eps, &[shown; 3]).await;
    settle().await;

    let client = envoy.client().unwrap();
    const N: usize = 10;
    for i in 0..N {
        let r = complete(&client, SHEDDABLE).await;
        assert_openai_error(&format!("sheddable request {i}"), &r, 429);
    }
    let served_before: usize = sims.iter().map(Sim::request_count).sum();
    assert_eq!(served_before, 0, "a shed request reached a pod");
    for model in [CRITICAL, STANDARD] {
        for i in 0..N {
            let r = complete(&client, model).await;
            assert_eq!(r.status, 200, "{model} request {i}: {}", r.text());
        }
    }
    assert_eq!(requests_total(&envoy, SHEDDABLE, "shed").await, N as f64);
    assert_eq!(requests_total(&envoy, SHEDDABLE, "routed").await, 0.0);
    assert_eq!(requests_total(&envoy, CRITICAL, "routed").await, N as f64);
    assert_eq!(requests_total(&envoy, STANDARD, "routed").await, N as f64);
    assert_eq!(requests_total(&envoy, CRITICAL, "shed").await, 0.0);
    assert_eq!(requests_total(&envoy, STANDARD, "shed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_queues_are_all_long_sheds_sheddable_requests_only() {
    saturated_pool_sheds_only_sheddable(load(50, 0.1), QUEUE_SIZE, 50.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_kv_caches_are_all_full_sheds_sheddable_requests_only() {
    saturated_pool_sheds_only_sheddable(load(0, 0.95), KV_PERMILLE, 950.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_requests_go_only_to_pods_with_headroom() {
    let sims = sims(4, &fast_sim()).await;
    let eps = endpoints(&sims);
    // Pod 3 alone has headroom (queue ≤ 5 and KV ≤ 0.8): the pool is not saturated.
    for (i, s) in sims.iter().enumerate() {
        s.pin(if i == 3 { load(2, 0.5) } else { load(50, 0.5) })
            .await;
    }
    let envoy = start_envoy(&config(&eps, "DEFAULT")).await;
    wait_gauges(&envoy, QUEUE_SIZE, &eps, &[50.0, 50.0, 50.0, 2.0]).await;
    settle().await;

    let client = envoy.client().unwrap();
    let pods = sequential(&client, SHEDDABLE, 20).await;
    assert_eq!(
        tally(&eps, &pods),
        vec![0, 0, 0, 20],
        "sheddable requests belong on the one pod with headroom"
    );
    assert_eq!(requests_total(&envoy, SHEDDABLE, "routed").await, 20.0);
    assert_eq!(requests_total(&envoy, SHEDDABLE, "shed").await, 0.0);
}

// ---- Bursts -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spreads_over_equal_pods_instead_of_herding() {
    // Slow decode steps (250 ms each): 4 tokens take about a second at the batch sizes of this
    // burst, so the whole burst is in flight together and the router sees its own earlier picks
    // (open picks since the last scrape, in-flight counts). Few steps keep the simulators' CPU
    // low, so the collector's scrapes stay on time on a busy machine.
    let sims = sims(
        4,
        &SimConfig {
            base_itl_s: 0.25,
            ..slow_sim()
        },
    )
    .await;
    let eps = endpoints(&sims);
    let envoy = start_envoy(&config(&eps, "DEFAULT")).await;
    wait_all_up(&envoy, &eps).await;
    wait_gauges(&envoy, QUEUE_SIZE, &eps, &[0.0; 4]).await;
    settle().await;

    const N: usize = 200;
    let client = envoy.client().unwrap();
    let burst = join_all((0..N).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .post("/v1/completions", completion_body(BASE, "Say hi", 4), &[])
                .await
                .unwrap()
        })
    }));
    let (replies, timeline) = with_gauge_timeline(&envoy, &eps, burst).await;
    let pods: Vec<String> = replies
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.pod().unwrap().to_string()
        })
        .collect();
    // Fair share 50. The bound 25..=75 is far outside what a balancing router produces (the
    // shared pick counts keep pods within a few requests of each other) and still within ±4σ of
    // even a uniformly random picker (σ = √(200·¼·¾) ≈ 6.1); a router that herds on the snapshot
    // it last read sends ≥ 100 of the burst to one pod.
    let counts = tally(&eps, &pods);
    eprintln!("burst of {N}: {counts:?}");
    for (e, c) in eps.iter().zip(&counts) {
        assert!(
            (25..=75).contains(c),
            "{e} got {c} of {N} concurrent requests (want 25..=75): {counts:?}\n\
             gauges during the burst:\n{timeline}"
        );
    }
}

// ---- PREFIX_CACHE ---------------------------------------------------------------------------------

/// `len` bytes of lowercase words, different for each `seed` from the first byte on.
fn text(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = format!("doc{seed} ");
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word_len = 2 + (x % 7) as usize;
        for k in 0..word_len {
            out.push((b'a' + ((x >> (8 + 5 * k)) % 26) as u8) as char);
        }
        out.push(' ');
    }
    out.truncate(len);
    out
}

async fn prefix_request(client: &Client, prompt: &str) -> String {
    let r = client
        .post("/v1/completions", completion_body(BASE, prompt, 2), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.pod().unwrap().to_string()
}

async fn prefix_stack(n: usize) -> (Vec<Sim>, Vec<String>, Envoy) {
    let sims = sims(n, &fast_sim()).await;
    let eps = endpoints(&sims);
    let envoy = start_envoy(&config(&eps, "PREFIX_CACHE")).await;
    wait_all_up(&envoy, &eps).await;
    settle().await;
    (sims, eps, envoy)
}

/// The pods in `order` as indices of `eps`, for messages.
fn indices(eps: &[String], order: &[String]) -> Vec<usize> {
    order
        .iter()
        .map(|p| eps.iter().position(|e| e == p).unwrap())
        .collect()
}

/// At least 27 of 30 (90%) on the pod the first went to.
fn assert_one_pod(eps: &[String], pods: &[String], how: &str) {
    let counts = tally(eps, pods);
    let on_first = pods.iter().filter(|p| **p == pods[0]).count();
    assert!(
        on_first >= 27,
        "30 prompts sharing a 4 KB prefix, {how}: {on_first} on {}, where the first went \
         (want ≥ 27, 90%): {counts:?}; in order: {:?}",
        pods[0],
        indices(eps, pods)
    );
}

fn shared_prefix_prompt(shared: &str, i: usize) -> String {
    format!("{shared}\nQuestion {i}: what does line {i} say?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_a_long_prefix_on_one_connection_land_on_one_pod() {
    let (_sims, eps, envoy) = prefix_stack(4).await;
    let shared = text(1, 4096);
    // One connection: one Envoy worker decides every request from its own prefix index.
    let mut conn = KeepAlive::connect(envoy.addr().unwrap()).await;
    let mut pods = Vec::new();
    for i in 0..30 {
        let body = completion_body(BASE, &shared_prefix_prompt(&shared, i), 2);
        let r = conn.post("/v1/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        pods.push(r.header("x-pod").unwrap().to_string());
    }
    assert_one_pod(&eps, &pods, "on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_a_long_prefix_each_on_a_new_connection_land_on_one_pod() {
    let (_sims, eps, envoy) = prefix_stack(4).await;
    let shared = text(2, 4096);
    // What `curl` in a loop does: every request on a new connection, so Envoy hands them to
    // either of its two workers, one right after the other.
    let mut pods = Vec::new();
    for i in 0..30 {
        let client = envoy.client().unwrap();
        pods.push(prefix_request(&client, &shared_prefix_prompt(&shared, i)).await);
    }
    assert_one_pod(&eps, &pods, "each on a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_different_prefixes_spread_over_pods() {
    let (_sims, eps, envoy) = prefix_stack(4).await;
    let client = envoy.client().unwrap();
    let mut pods = Vec::new();
    for i in 0..30 {
        let prompt = format!("{}\nQuestion {i}?", text(100 + i, 4096));
        pods.push(prefix_request(&client, &prompt).await);
    }
    // Nothing to be affine to: load decides, so every pod gets some and none more than half.
    let counts = tally(&eps, &pods);
    assert!(
        counts.iter().all(|&c| (1..=15).contains(&c)),
        "30 unrelated prompts over 4 pods (want 1..=15 each): {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_is_shared_between_envoy_workers() {
    let (_sims, eps, envoy) = prefix_stack(4).await;
    let shared = text(7, 4096);
    let mut pods =
        vec![prefix_request(&envoy.client().unwrap(), &shared_prefix_prompt(&shared, 0)).await];
    // Workers exchange what they learned every 100 ms; give it five periods.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each request on a new connection: Envoy spreads connections over its two workers, so about
    // half of these are decided by the worker that did not route the first.
    for i in 1..30 {
        let client = envoy.client().unwrap();
        pods.push(prefix_request(&client, &shared_prefix_prompt(&shared, i)).await);
    }
    assert_one_pod(
        &eps,
        &pods,
        "the first 500 ms before the others, on new connections",
    );
}

// ---- No metrics -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_fail_open_routes_by_in_flight_requests() {
    let sims = sims(4, &slow_sim()).await;
    let eps = endpoints(&sims);
    let config = config(&eps, "DEFAULT");
    assert!(
        config.get("failureMode").is_none(),
        "FailOpen is the default"
    );
    let envoy = Envoy::start(&EnvoySpec::plugin(&config).without_collector())
        .await
        .unwrap();
    let client = envoy.client().unwrap();

    // 12 concurrent requests of about a second each: all in flight together, so least-in-flight
    // gives each of the 4 pods 3 (± 1: two workers can pick from the same counts at once).
    const N: usize = 12;
    let pending: Vec<_> = (0..N)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .post("/v1/completions", completion_body(BASE, "Say hi", 64), &[])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let replies: Vec<Reply> = join_all(pending)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let pods: Vec<String> = replies
        .iter()
        .map(|r| r.pod().unwrap().to_string())
        .collect();
    let counts = tally(&eps, &pods);
    for (e, c) in eps.iter().zip(&counts) {
        assert!(
            c.abs_diff(N / 4) <= 1,
            "{e} got {c} of {N} (want 3 ± 1): {counts:?}"
        );
    }
    assert_eq!(requests_total(&envoy, BASE, "failed_open").await, N as f64);
    assert_eq!(requests_total(&envoy, BASE, "routed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_fail_close_answers_503() {
    let sims = sims(2, &fast_sim()).await;
    let eps = endpoints(&sims);
    let mut config = config(&eps, "DEFAULT");
    config["failureMode"] = json!("FailClose");
    let envoy = Envoy::start(&EnvoySpec::plugin(&config).without_collector())
        .await
        .unwrap();
    let client = envoy.client().unwrap();
    for model in [CRITICAL, STANDARD, SHEDDABLE, BASE] {
        let r = complete(&client, model).await;
        assert_openai_error(model, &r, 503);
    }
    assert_eq!(sims.iter().map(Sim::request_count).sum::<usize>(), 0);
    assert_eq!(requests_total(&envoy, BASE, "unavailable").await, 1.0);
    assert_eq!(requests_total(&envoy, CRITICAL, "unavailable").await, 1.0);
    // The pods themselves are fine: with the collector the same configuration serves.
    let envoy = start_envoy(&config).await;
    wait_all_up(&envoy, &eps).await;
    settle().await;
    let r = complete(&envoy.client().unwrap(), BASE).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
