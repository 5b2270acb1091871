//! Soak: mixed traffic through the real Envoy and the plugin for `SOAK_SECONDS` (default 60;
//! `make soak` runs 600 and docs/robustness.md records that run), against simulated vLLM pods:
//! JSON and streamed completions and chats, 2 KB and 1 MB bodies, bad input, and clients that go
//! away mid-stream. At the end, with nothing in flight:
//! - no 5xx the pods did not cause (they cause none);
//! - the plugin's token counters equal the `usage` the pods reported for the requests they
//!   completed (requests whose client left are not completed, and report none);
//! - every endpoint's in-flight count is back to zero;
//! - memory is flat after warm-up: each Wasm VM's linear memory (the module's own gauge) and
//!   Envoy's resident memory.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sched_support;

use sched_support::{prometheus, sum};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasm_tests::client::Client;
use wasm_tests::envoy::{Envoy, EnvoySpec};
use wasm_tests::sim::{endpoints, start_sims, SimConfig};

const POOL: &str = "pool-a";
const CLIENTS: usize = 12;

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [{"name": POOL, "endpoints": endpoints, "metrics": {"intervalMs": 100}}],
        "models": [{"modelName": "lora-request", "poolRef": POOL,
                    "targetModels": [{"name": "sql-lora", "weight": 1}, {"name": "tweet-summary", "weight": 1}]},
                   {"modelName": "tiny-llama", "poolRef": POOL}],
        "defaultPool": POOL,
        "scheduling": {"strategy": "DEFAULT"},
    })
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    bad_input: AtomicU64,
    aborted: AtomicU64,
    server_errors: AtomicU64,
    other: AtomicU64,
}

fn prompt_of(bytes: usize) -> String {
    "word ".repeat(bytes / 5)
}

/// One client's loop: a request kind per iteration, chosen by a cheap generator.
async fn client_loop(client: Client, until: Instant, seed: u64, tally: Arc<Tally>) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let big = prompt_of(1 << 20);
    let small = prompt_of(2000);
    while Instant::now() < until {
        let kind = next() % 10;
        let model = if next() % 4 == 0 {
            "tiny-llama"
        } else {
            "lora-request"
        };
        let status = match kind {
            // JSON completions, 2 KB.
            0..=3 => {
                let body = json!({"model": model, "prompt": small, "max_tokens": 8});
                client
                    .post("/v1/completions", body.to_string(), &[])
                    .await
                    .map(|r| r.status)
            }
            // 1 MB prompt.
            4 => {
                let body = json!({"model": model, "prompt": big, "max_tokens": 2});
                client
                    .post("/v1/completions", body.to_string(), &[])
                    .await
                    .map(|r| r.status)
            }
            // Streamed chat without usage (the gateway asks for it and takes it out again), and
            // with usage asked by the client.
            5 | 6 => {
                let mut body = json!({"model": model, "stream": true, "max_tokens": 6,
                                      "messages": [{"role": "user", "content": small}]});
                if kind == 6 {
                    body["stream_options"] = json!({"include_usage": true});
                }
                match client
                    .post_streaming("/v1/chat/completions", body.to_string(), &[])
                    .await
                {
                    Ok(mut s) => {
                        let status = s.status;
                        let rest = s.rest_events(Duration::from_secs(60)).await;
                        rest.map(|events| {
                            let usage_seen = events.iter().any(|e| e.contains("\"usage\":{"));
                            assert_eq!(
                                usage_seen,
                                kind == 6,
                                "usage event where not asked, or missing"
                            );
                            status
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            // Bad input.
            7 => client
                .post("/v1/completions", "{\"model\": oops", &[])
                .await
                .map(|r| r.status),
            // A client that goes away after the first event of a long stream. Long enough that
            // the pod cannot finish it before Envoy's reset reaches it: a pod that completed a
            // stream whose client had left would count usage the gateway never saw (seen once
            // in a 60 s run with 400 tokens, ~0.5 s of generation here).
            _ => {
                let body = json!({"model": model, "stream": true, "max_tokens": 3000,
                                  "prompt": "tell me everything"});
                if let Ok(mut s) = client
                    .post_streaming("/v1/completions", body.to_string(), &[])
                    .await
                {
                    let _ = s.next_event(Duration::from_secs(30)).await;
                }
                tally.aborted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let counter = match status {
            Ok(200) => &tally.ok,
            Ok(400) => &tally.bad_input,
            Ok(s) if s >= 500 => &tally.server_errors,
            _ => &tally.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The largest value of a gauge over every series of that name.
async fn gauge_max(envoy: &Envoy, name: &str) -> f64 {
    prometheus(envoy)
        .await
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let sim = SimConfig {
        time_scale: 0.05,
        adapters: vec!["sql-lora".into(), "tweet-summary".into()],
        ..SimConfig::default()
    };
    let sims = start_sims(4, &sim).await.unwrap();
    let eps = endpoints(&sims);
    let envoy = Envoy::start(&EnvoySpec::plugin(&config(&eps)))
        .await
        .unwrap();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let client = envoy.client().unwrap();
        tasks.push(tokio::spawn(client_loop(
            client,
            until,
            0x5eed + i as u64,
            Arc::clone(&tally),
        )));
    }
    // Memory: sampled through the run; warm-up is the first fifth.
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let wasm = gauge_max(&envoy, "inference_router_wasm_memory_bytes").await;
        let rss = envoy.rss_bytes().unwrap_or(0) as f64;
        samples.push((started.elapsed().as_secs_f64(), wasm, rss));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Quiet: let the last requests end and the collector scrape once more.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (ok, bad, aborted, server_errors, other) = (
        tally.ok.load(Ordering::Relaxed),
        tally.bad_input.load(Ordering::Relaxed),
        tally.aborted.load(Ordering::Relaxed),
        tally.server_errors.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak {seconds} s: {ok} ok, {bad} bad input (400), {aborted} aborted by the client, \
         {server_errors} 5xx, {other} other"
    );
    assert_eq!(server_errors, 0, "5xx the pods did not cause");
    assert_eq!(other, 0, "unexpected statuses or client errors");
    assert!(ok > 0 && bad > 0 && aborted > 0);

    // Tokens: the plugin counted exactly what the pods reported for the requests they completed.
    let (mut prompt, mut completion) = (0u64, 0u64);
    for s in &sims {
        let st = s.stats().await;
        prompt += st.usage_prompt_tokens;
        completion += st.usage_completion_tokens;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = prometheus(&envoy).await;
        let p = sum(&samples, "inference_router_prompt_tokens_total", &[]);
        let c = sum(&samples, "inference_router_completion_tokens_total", &[]);
        if p == prompt as f64 && c == completion as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counted prompt {p}, completion {c}; pods reported {prompt}, {completion}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing in flight any more, by the collector's last look at every endpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let in_flight = gauge_max(&envoy, "inference_router_endpoint_in_flight").await;
        if in_flight == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in flight at the end: {in_flight}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Memory flat after warm-up: the last third grows no further than the middle third reached.
    // (A VM's memory only grows, in 64 KiB pages: a leak keeps raising it with the traffic.)
    let third = seconds as f64 / 3.0;
    let max_in = |from: f64, to: f64, f: fn(&(f64, f64, f64)) -> f64| {
        samples
            .iter()
            .filter(|s| s.0 >= from && s.0 < to)
            .map(f)
            .fold(0.0, f64::max)
    };
    let (middle_wasm, last_wasm) = (
        max_in(third, 2.0 * third, |s| s.1),
        max_in(2.0 * third, f64::MAX, |s| s.1),
    );
    let (middle_rss, last_rss) = (
        max_in(third, 2.0 * third, |s| s.2),
        max_in(2.0 * third, f64::MAX, |s| s.2),
    );
    eprintln!(
        "memory: largest wasm VM {:.1} MiB in the middle third, {:.1} MiB in the last; Envoy RSS \
         {:.1} → {:.1} MiB",
        middle_wasm / 1048576.0,
        last_wasm / 1048576.0,
        middle_rss / 1048576.0,
        last_rss / 1048576.0
    );
    assert!(middle_wasm > 0.0, "no memory samples: {samples:?}");
    assert!(
        last_wasm <= middle_wasm + 1048576.0,
        "wasm memory grew: {samples:?}"
    );
    assert!(
        last_rss <= middle_rss * 1.10 + 8.0 * 1048576.0,
        "Envoy RSS grew: {samples:?}"
    );
}
