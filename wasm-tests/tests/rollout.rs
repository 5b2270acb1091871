//! Weighted LoRA rollout and sticky sessions, through the real Envoy with the real module.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use wasm_tests::client::Client;
use wasm_tests::envoy::MODEL_HEADER;
use wasm_tests::stack::Stack;
use wasm_tests::stats::{chi_square, chi_square_critical_df2, tally};

const TARGETS: [&str; 3] = ["sql-lora", "tweet-summary", "travel-helper"];
const WEIGHTS: [u32; 3] = [50, 30, 20];
const CONCURRENCY: usize = 32;

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [{"name": "pool-a", "endpoints": endpoints}],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a", "targetModels": [
            {"name": TARGETS[0], "weight": WEIGHTS[0]},
            {"name": TARGETS[1], "weight": WEIGHTS[1]},
            {"name": TARGETS[2], "weight": WEIGHTS[2]},
        ]}],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
        "sessionHeader": "x-session-id",
    })
}

fn probabilities() -> Vec<f64> {
    let sum: u32 = WEIGHTS.iter().sum();
    WEIGHTS
        .iter()
        .map(|&w| f64::from(w) / f64::from(sum))
        .collect()
}

/// Chi-square with 2 degrees of freedom at alpha = 1e-6: a correct router fails with probability
/// 1e-6 (the statistic's survival function is exactly exp(-x/2)); a split off by a few points of
/// percentage over thousands of draws lands far above it.
fn assert_split(counts: &[usize], what: &str) {
    let x2 = chi_square(counts, &probabilities());
    let critical = chi_square_critical_df2(1e-6);
    assert!(
        x2 < critical,
        "{what}: counts {counts:?} for {TARGETS:?} at weights {WEIGHTS:?}: chi-square {x2:.1} ≥ {critical:.1}"
    );
}

/// Send `bodies` (with per-request headers) `CONCURRENCY` at a time; returns the target model each
/// one reached, as the pod saw it, in request order.
async fn targets_reached(
    client: &Client,
    requests: Vec<(String, Vec<(String, String)>)>,
) -> Vec<String> {
    let replies: Vec<_> = stream::iter(requests)
        .map(|(body, headers)| {
            let client = client.clone();
            async move {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                client
                    .post("/v1/completions", body, &headers)
                    .await
                    .unwrap()
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text());
            // The pod echoes the model it received.
            r.json().unwrap()["model"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_matches_the_weights() {
    let stack = Stack::start(2, config).await.unwrap();
    const N: usize = 2000;
    let body =
        json!({"model": "lora-request", "prompt": "Write a query", "max_tokens": 2}).to_string();
    let reached = targets_reached(&stack.client, vec![(body, Vec::new()); N]).await;
    let counts = tally(&TARGETS, reached.iter().map(String::as_str)).unwrap();
    assert_eq!(counts.iter().sum::<usize>(), N);
    assert_split(&counts, "2000 requests without a session");

    // What the pods saw agrees: the body's model and the x-gateway-model-name header.
    let seen = stack.requests();
    assert_eq!(seen.len(), N);
    for r in &seen {
        assert_eq!(
            r.header(MODEL_HEADER).map(str::to_string),
            r.model(),
            "{r:?}"
        );
    }
}

/// Each session sent `REPEATS` times, interleaved so repeats go over different connections and
/// workers; returns the target per session, asserting it never changed.
async fn sticky_targets(
    client: &Client,
    sessions: &[(String, Vec<(String, String)>)],
) -> Vec<String> {
    const REPEATS: usize = 3;
    let requests: Vec<_> = (0..REPEATS)
        .flat_map(|_| sessions.iter().cloned())
        .collect();
    let reached = targets_reached(client, requests).await;
    let mut per_session: Vec<Option<&String>> = vec![None; sessions.len()];
    for (i, target) in reached.iter().enumerate() {
        let s = i % sessions.len();
        match per_session[s] {
            None => per_session[s] = Some(target),
            Some(first) => assert_eq!(
                first, target,
                "session {:?} moved from {first} to {target}",
                sessions[s]
            ),
        }
    }
    per_session.into_iter().flatten().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_to_one_target_and_spread_by_weight() {
    let stack = Stack::start(2, config).await.unwrap();
    const SESSIONS: usize = 240;
    let plain = json!({"model": "lora-request", "prompt": "hi", "max_tokens": 2}).to_string();

    // By header.
    let by_header: Vec<_> = (0..SESSIONS)
        .map(|i| {
            (
                plain.clone(),
                vec![("x-session-id".to_string(), format!("session-{i}"))],
            )
        })
        .collect();
    let targets = sticky_targets(&stack.client, &by_header).await;
    let counts = tally(&TARGETS, targets.iter().map(String::as_str)).unwrap();
    assert_split(&counts, "240 header sessions");

    // By the body's `user` when there is no session header.
    let by_user: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let body = json!({"model": "lora-request", "prompt": "hi", "max_tokens": 2,
                "user": format!("user-{i}")});
            (body.to_string(), Vec::new())
        })
        .collect();
    let targets = sticky_targets(&stack.client, &by_user).await;
    let counts = tally(&TARGETS, targets.iter().map(String::as_str)).unwrap();
    assert_split(&counts, "240 body-user sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_header_wins_over_the_body_user() {
    let stack = Stack::start(1, config).await.unwrap();
    // 25 different users under one session header: if `user` decided, they would all agree only
    // with probability 0.5^25 + 0.3^25 + 0.2^25 < 1e-7.
    let requests: Vec<_> = (0..25)
        .map(|i| {
            let body = json!({"model": "lora-request", "prompt": "hi", "user": format!("u{i}")});
            (
                body.to_string(),
                vec![("x-session-id".to_string(), "one-session".to_string())],
            )
        })
        .collect();
    let reached = targets_reached(&stack.client, requests).await;
    let distinct: HashMap<&String, usize> = reached.iter().fold(HashMap::new(), |mut m, t| {
        *m.entry(t).or_default() += 1;
        m
    });
    assert_eq!(distinct.len(), 1, "one session reached {distinct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_target_across_restarts() {
    let sessions: Vec<_> = (0..60)
        .map(|i| {
            let body = json!({"model": "lora-request", "prompt": "hi"}).to_string();
            (
                body,
                vec![("x-session-id".to_string(), format!("restart-{i}"))],
            )
        })
        .collect();
    let first = {
        let stack = Stack::start(1, config).await.unwrap();
        targets_reached(&stack.client, sessions.clone()).await
    };
    // A new Envoy (new VMs, new random seeds) with the same configuration.
    let stack = Stack::start(1, config).await.unwrap();
    let second = targets_reached(&stack.client, sessions).await;
    assert_eq!(first, second, "sessions changed target after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_weights() {
    let stack = Stack::start(1, |endpoints| {
        json!({
            "pools": [{"name": "pool-a", "endpoints": endpoints}],
            "models": [
                {"modelName": "all-zero", "poolRef": "pool-a", "targetModels": [
                    {"name": TARGETS[0], "weight": 0},
                    {"name": TARGETS[1], "weight": 0},
                    {"name": TARGETS[2], "weight": 0}]},
                {"modelName": "one-zero", "poolRef": "pool-a", "targetModels": [
                    {"name": TARGETS[0], "weight": 1},
                    {"name": TARGETS[1], "weight": 0},
                    {"name": TARGETS[2], "weight": 1}]},
            ],
            "scheduling": {"strategy": "ROUND_ROBIN"},
        })
    })
    .await
    .unwrap();
    let request = |model: &str| {
        let body = json!({"model": model, "prompt": "hi"}).to_string();
        vec![(body, Vec::new()); 600]
    };

    // All zero: uniform (chi-square, 2 degrees of freedom, alpha = 1e-6).
    let reached = targets_reached(&stack.client, request("all-zero")).await;
    let counts = tally(&TARGETS, reached.iter().map(String::as_str)).unwrap();
    let x2 = chi_square(&counts, &[1.0 / 3.0; 3]);
    assert!(
        x2 < chi_square_critical_df2(1e-6),
        "all-zero weights: {counts:?}, chi-square {x2:.1}"
    );

    // A zero weight among others: never picked, also not by a session.
    let mut requests = request("one-zero");
    requests.extend((0..200).map(|i| {
        let body = json!({"model": "one-zero", "prompt": "hi", "user": format!("u{i}")});
        (body.to_string(), Vec::new())
    }));
    let reached = targets_reached(&stack.client, requests).await;
    let counts = tally(&TARGETS, reached.iter().map(String::as_str)).unwrap();
    assert_eq!(counts[1], 0, "a zero-weight target was picked: {counts:?}");
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
}

/// Header values are bytes: a session header (or any header the plugin reads) that is not UTF-8
/// must not trap the VM. Sent over a raw connection, since HTTP clients refuse such values.
#[tokio::test]
async fn a_session_header_that_is_not_utf8_is_still_sticky_and_harmless() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start(2, config).await.unwrap();
    let addr = stack.envoy.addr().unwrap();
    let raw = |session: &[u8]| {
        let body = json!({"model": "lora-request", "prompt": "hi"}).to_string();
        let mut req = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\nx-session-id: ",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(session);
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(body.as_bytes());
        req
    };
    for _ in 0..6 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(&raw(b"caf\xe9-\xff")).await.unwrap();
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).await.unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let mut models: Vec<String> = stack
        .requests()
        .iter()
        .map(|r| r.header(MODEL_HEADER).unwrap_or_default().to_string())
        .collect();
    assert_eq!(models.len(), 6);
    models.sort();
    models.dedup();
    assert_eq!(models.len(), 1, "one session, one target: {models:?}");
    // And the VM still serves ordinary requests.
    let r = stack
        .client
        .post(
            "/v1/completions",
            json!({"model": "lora-request", "prompt": "hi"}).to_string(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
