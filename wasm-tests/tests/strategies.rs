//! Endpoint picking: ROUND_ROBIN, RANDOM and LEAST_REQUEST, observed as which pod got each request.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use wasm_tests::pod::{release_all, wait_total_held, wait_total_requests, Hold, Pod};
use wasm_tests::stack::Stack;
use wasm_tests::stats::{chi_square, chi_square_critical_df2};
use wasm_tests::PROMPT;

/// Envoy runs with `--concurrency 2`.
const WORKERS: usize = 2;

fn config(strategy: &str) -> impl FnOnce(&[String]) -> Value + '_ {
    move |endpoints| {
        json!({
            "pools": [{"name": "pool-a", "endpoints": endpoints}],
            "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                        "targetModels": [{"name": "sql-lora", "weight": 1}]}],
            "defaultPool": "pool-a",
            "unknownModels": "reject",
            "scheduling": {"strategy": strategy},
        })
    }
}

fn counts(pods: &[Pod]) -> Vec<usize> {
    pods.iter().map(Pod::request_count).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let stack = Stack::start(3, config("ROUND_ROBIN")).await.unwrap();
    const N: usize = 300;
    // Sequential, over two clients (two connections, which Envoy may give to different workers).
    let other = stack.envoy.client().unwrap();
    for i in 0..N {
        let client = if i % 3 == 0 { &other } else { &stack.client };
        let r = client.completion("lora-request", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each worker keeps its own counter, so each worker's share is spread within ±1 per pod:
    // the total is within ±WORKERS of N/k.
    let counts = counts(&stack.pods);
    let fair = N / stack.pods.len();
    for (pod, &c) in stack.pods.iter().zip(&counts) {
        assert!(
            c.abs_diff(fair) <= WORKERS,
            "{}: {c} of {N} requests, expected {fair} ± {WORKERS}; all {counts:?}",
            pod.endpoint()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_roughly_evenly() {
    let stack = Stack::start(3, config("RANDOM")).await.unwrap();
    const N: usize = 900;
    let statuses: Vec<u16> = stream::iter(0..N)
        .map(|_| {
            let client = stack.client.clone();
            async move { client.completion("lora-request", &[]).await.unwrap().status }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // Chi-square, 2 degrees of freedom, alpha = 1e-6 (see stats::chi_square_critical_df2).
    let counts = counts(&stack.pods);
    let x2 = chi_square(&counts, &[1.0 / 3.0; 3]);
    assert!(
        x2 < chi_square_critical_df2(1e-6),
        "{counts:?}: chi-square {x2:.1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_balances_in_flight_requests() {
    let stack = Stack::start(4, config("LEAST_REQUEST")).await.unwrap();
    const PER_POD: usize = 3;
    let total = PER_POD * stack.pods.len();
    stack.pods.iter().for_each(|p| p.set_hold(Hold::Whole));

    // All at once, on separate connections spread over both workers; every response is held, so
    // each pick sees the in-flight counts of all earlier picks.
    let pending: Vec<_> = (0..total)
        .map(|_| {
            let client = stack.client.clone();
            tokio::spawn(async move { client.completion("lora-request", &[]).await })
        })
        .collect();
    wait_total_requests(&stack.pods, total, PROMPT)
        .await
        .unwrap();
    wait_total_held(&stack.pods, total, PROMPT).await.unwrap();
    let held = counts(&stack.pods);
    // ±1: two workers can pick at the same instant from the same counts.
    for (pod, &c) in stack.pods.iter().zip(&held) {
        assert!(
            c.abs_diff(PER_POD) <= 1,
            "{} holds {c}, expected {PER_POD} ± 1; all {held:?}",
            pod.endpoint()
        );
    }
    release_all(&stack.pods);
    for p in pending {
        assert_eq!(p.await.unwrap().unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_busy_pod_until_it_finishes() {
    let stack = Stack::start(3, config("LEAST_REQUEST")).await.unwrap();
    stack.pods.iter().for_each(|p| p.set_hold(Hold::Whole));
    let client = stack.client.clone();
    let long = tokio::spawn(async move { client.completion("lora-request", &[]).await });
    wait_total_held(&stack.pods, 1, PROMPT).await.unwrap();
    let busy = stack.pods.iter().position(|p| p.held_count() == 1).unwrap();
    for (i, p) in stack.pods.iter().enumerate() {
        if i != busy {
            p.release_all();
        }
    }

    // Sequential requests finish before the next starts: the others always have 0 in flight, the
    // busy pod 1.
    let before = counts(&stack.pods);
    for _ in 0..12 {
        let r = stack.client.completion("lora-request", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(
            r.pod(),
            Some(stack.pods[busy].endpoint().as_str()),
            "picked the busy pod"
        );
    }
    assert_eq!(counts(&stack.pods)[busy], before[busy]);

    // Once it finishes, its count is back to 0: with every response held and requests sent one at
    // a time, three picks give each pod exactly one.
    stack.pods[busy].release_all();
    assert_eq!(long.await.unwrap().unwrap().status, 200);
    stack.pods.iter().for_each(|p| p.set_hold(Hold::Whole));
    let mut pending = Vec::new();
    for n in 1..=stack.pods.len() {
        let client = stack.client.clone();
        pending.push(tokio::spawn(async move {
            client.completion("lora-request", &[]).await
        }));
        wait_total_held(&stack.pods, n, PROMPT).await.unwrap();
    }
    let held: Vec<usize> = stack.pods.iter().map(Pod::held_count).collect();
    assert_eq!(held, vec![1; stack.pods.len()], "one held request per pod");
    release_all(&stack.pods);
    for p in pending {
        assert_eq!(p.await.unwrap().unwrap().status, 200);
    }
}
