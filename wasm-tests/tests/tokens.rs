//! Token accounting through the real Envoy: what the pods report in `usage` (JSON or the SSE
//! stream) becomes `inference_router_{prompt,completion}_tokens_total`, and a streaming client that
//! did not ask for usage gets exactly the events it would have got without the gateway, though
//! the gateway asked the server for usage to count the tokens.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sched_support;

use sched_support::{prometheus, sum};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wasm_tests::envoy::Envoy;
use wasm_tests::stack::Stack;

const POOL: &str = "pool-a";

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [{"name": POOL, "endpoints": endpoints}],
        "models": [{"modelName": "lora-request", "poolRef": POOL,
                    "targetModels": [{"name": "sql-lora", "weight": 1}]}],
        "defaultPool": POOL,
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
    })
}

/// The pods' token arithmetic (see `wasm_tests::pod`): prompt tokens are the prompt's words,
/// completion tokens `max_tokens`.
fn body(prompt: &str, max_tokens: u64, stream: Option<Value>) -> String {
    let mut b = json!({"model": "lora-request", "prompt": prompt, "max_tokens": max_tokens});
    if let Some(s) = stream {
        b["stream"] = json!(true);
        if !s.is_null() {
            b["stream_options"] = s;
        }
    }
    b.to_string()
}

async fn tokens(envoy: &Envoy, name: &str) -> f64 {
    sum(
        &prometheus(envoy).await,
        name,
        &[
            ("pool", POOL),
            ("model", "lora-request"),
            ("target_model", "sql-lora"),
        ],
    )
}

/// Poll the counters until they reach the expected totals (bounded): the last request's tokens are
/// counted when its response ends.
async fn wait_tokens(envoy: &Envoy, prompt: f64, completion: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = tokens(envoy, "inference_router_prompt_tokens_total").await;
        let c = tokens(envoy, "inference_router_completion_tokens_total").await;
        if p == prompt && c == completion {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tokens counted: prompt {p}, completion {c}; pods reported prompt {prompt}, completion {completion}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_responses_count_the_usage_the_pods_reported() {
    let stack = Stack::start(2, config).await.unwrap();
    let (mut prompt, mut completion) = (0.0, 0.0);
    for i in 1..=6u64 {
        let r = stack
            .client
            .post("/v1/completions", body("one two three four", i, None), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let usage = &r.json().unwrap()["usage"];
        prompt += usage["prompt_tokens"].as_f64().unwrap();
        completion += usage["completion_tokens"].as_f64().unwrap();
    }
    assert_eq!((prompt, completion), (24.0, 21.0));
    wait_tokens(&stack.envoy, prompt, completion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_usage_is_counted_and_reaches_the_client_unchanged() {
    let stack = Stack::start(1, config).await.unwrap();
    let mut s = stack
        .client
        .post_streaming("/v1/completions", body("a b c", 4, Some(Value::Null)), &[])
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    let events = s.rest_events(Duration::from_secs(10)).await.unwrap();
    // A strict client: every event is a token chunk or [DONE]; no usage it did not ask for.
    assert_eq!(
        events.last().map(String::as_str),
        Some("data: [DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks.len(), 4, "one chunk per token: {events:?}");
    for c in &chunks {
        assert!(
            c.get("usage").is_none(),
            "usage the client did not ask for: {c}"
        );
        assert_eq!(c["choices"].as_array().map(Vec::len), Some(1), "{c}");
    }
    // The gateway asked the server for it, and counted it.
    let seen = stack.pods[0].requests().pop().unwrap().json().unwrap();
    assert_eq!(
        seen["stream_options"]["include_usage"],
        json!(true),
        "{seen}"
    );
    assert_eq!(seen["model"], "sql-lora");
    wait_tokens(&stack.envoy, 3.0, 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_usage_keeps_it_and_is_counted() {
    let stack = Stack::start(1, config).await.unwrap();
    let sent = body("a b c d e", 3, Some(json!({"include_usage": true})));
    let mut s = stack
        .client
        .post_streaming("/v1/completions", sent.clone(), &[])
        .await
        .unwrap();
    let events = s.rest_events(Duration::from_secs(10)).await.unwrap();
    let usage: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e.strip_prefix("data: ")?).ok())
        .filter(|c| c.get("usage").is_some_and(|u| !u.is_null()))
        .collect();
    assert_eq!(usage.len(), 1, "the usage the client asked for: {events:?}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], 3);
    // Body untouched apart from the model.
    let seen = stack.pods[0].requests().pop().unwrap();
    assert_eq!(seen.body, sent.replace("lora-request", "sql-lora"));
    wait_tokens(&stack.envoy, 5.0, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_are_recorded() {
    let stack = Stack::start(1, config).await.unwrap();
    for _ in 0..3 {
        let mut s = stack
            .client
            .post_streaming("/v1/completions", body("x y", 5, Some(Value::Null)), &[])
            .await
            .unwrap();
        s.rest_events(Duration::from_secs(10)).await.unwrap();
    }
    // Histograms appear after a stats flush (1 s in the harness): poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let samples = prometheus(&stack.envoy).await;
        let count = |name: &str| {
            sum(
                &samples,
                name,
                &[("pool", POOL), ("target_model", "sql-lora")],
            )
        };
        let counts = [
            count("inference_router_request_duration_ms_count"),
            count("inference_router_time_to_first_token_ms_count"),
            count("inference_router_time_per_output_token_ms_count"),
        ];
        if counts == [3.0, 3.0, 3.0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "histogram counts {counts:?}, expected 3 each"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
