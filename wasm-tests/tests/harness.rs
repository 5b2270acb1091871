//! The harness itself, through a real Envoy *without* the plugin: if these fail, the end-to-end
//! failures elsewhere say nothing about the module.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use serde_json::json;
use wasm_tests::envoy::{Envoy, EnvoySpec, DESTINATION_HEADER};
use wasm_tests::pod::{release_all, start_pods, wait_total_held, Hold, PodOptions};
use wasm_tests::PROMPT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_envoy_routes_by_destination_header_and_round_robins_otherwise() {
    let pods = start_pods(3, &PodOptions::default()).await.unwrap();
    let addrs: Vec<_> = pods.iter().map(|p| p.addr()).collect();
    let envoy = Envoy::start(&EnvoySpec::without_plugin(addrs[..2].to_vec()))
        .await
        .unwrap();
    let client = envoy.client().unwrap();

    // No header: the passthrough cluster spreads over the first two pods only. Each of Envoy's
    // two workers keeps its own round-robin position (starting at a random one) and the client's
    // requests may land on either worker, so the split need not be 2/2; but one worker serves at
    // least two of the four, and its round-robin then reaches both pods.
    for _ in 0..4 {
        let r = client.get("/v1/models", &[]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let (first, second) = (pods[0].request_count(), pods[1].request_count());
    assert_eq!(first + second, 4);
    assert!(first >= 1 && second >= 1, "split {first}/{second}");
    assert_eq!(pods[2].request_count(), 0);

    // The header: ORIGINAL_DST goes exactly there, even to the pod outside the static cluster.
    let third = pods[2].endpoint();
    let body = r#"{"model":"m","prompt":"x"}"#;
    let r = client
        .post("/v1/completions", body, &[(DESTINATION_HEADER, &third)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.pod(), Some(third.as_str()));
    let seen = pods[2].requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from(body));
    assert_eq!(seen[0].header(DESTINATION_HEADER), Some(third.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_hold_until_released_and_stream_after_the_first_chunk() {
    let pods = start_pods(1, &PodOptions::default()).await.unwrap();
    let envoy = Envoy::start(&EnvoySpec::without_plugin(vec![pods[0].addr()]))
        .await
        .unwrap();
    let client = envoy.client().unwrap();

    pods[0].set_hold(Hold::AfterFirstChunk);
    let body = json!({"model": "m", "prompt": "x", "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true}});
    let mut stream = client
        .post_streaming("/v1/completions", body.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(stream.status, 200);
    let first = stream.next_event(PROMPT).await.unwrap().unwrap();
    assert!(first.starts_with("data: {"), "{first}");
    wait_total_held(&pods, 1, PROMPT).await.unwrap();
    release_all(&pods);
    let rest = stream.rest_events(PROMPT).await.unwrap();
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"));
    assert!(rest.iter().any(|e| e.contains("\"usage\"")), "{rest:?}");
    assert_eq!(rest.len(), 4 + 1, "three more token chunks, usage, [DONE]");

    // Whole hold: nothing comes back until the release.
    pods[0].set_hold(Hold::Whole);
    let c = client.clone();
    let pending = tokio::spawn(async move { c.completion("m", &[]).await });
    pods[0].wait_for_requests(2, PROMPT).await.unwrap();
    wait_total_held(&pods, 1, PROMPT).await.unwrap();
    assert!(!pending.is_finished());
    pods[0].release_all();
    assert_eq!(pending.await.unwrap().unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_arrive_whole() {
    let pods = start_pods(1, &PodOptions::default()).await.unwrap();
    let envoy = Envoy::start(&EnvoySpec::without_plugin(vec![pods[0].addr()]))
        .await
        .unwrap();
    let client = envoy.client().unwrap();
    let chunks: Vec<Bytes> = vec![
        Bytes::from_static(br#"{"model":"#),
        Bytes::from_static(br#""m","prompt""#),
        Bytes::from_static(br#":"x"}"#),
    ];
    let r = client
        .post_chunked("/v1/completions", chunks, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = pods[0].requests();
    assert_eq!(
        seen[0].body,
        Bytes::from_static(br#"{"model":"m","prompt":"x"}"#)
    );
    assert_eq!(seen[0].header("content-length"), None);
    assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_reports_the_exit_status_and_log() {
    let mut spec = EnvoySpec::without_plugin(Vec::new());
    spec.pool_clusters = vec!["dup".to_string(), "dup".to_string()];
    let failure = Envoy::try_start(&spec).await.err().unwrap();
    assert!(failure.status.is_some_and(|s| !s.success()), "{failure}");
    assert!(failure.log.contains("dup"), "{failure}");
}
