//! Streaming responses pass through chunk by chunk: the client reads the first events while the
//! pod still holds the rest.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use wasm_tests::pod::{wait_total_held, Hold};
use wasm_tests::stack::Stack;
use wasm_tests::PROMPT;

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [{"name": "pool-a", "endpoints": endpoints}],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                    "targetModels": [{"name": "tweet-summary", "weight": 1}]}],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
    })
}

fn data(event: &str) -> Value {
    let payload = event
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("not a data event: {event:?}"));
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_arrives_while_the_pod_holds_the_rest() {
    let stack = Stack::start(1, config).await.unwrap();
    let pod = &stack.pods[0];
    pod.set_hold(Hold::AfterFirstChunk);
    let body = json!({"model": "lora-request", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}});
    let mut stream = stack
        .client
        .post_streaming("/v1/chat/completions", body.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .headers
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream")),
        "{:?}",
        stream.headers
    );

    // The first event arrives while the pod is provably still holding the rest.
    let first = stream
        .next_event(PROMPT)
        .await
        .unwrap()
        .expect("a first event");
    wait_total_held(&stack.pods, 1, PROMPT).await.unwrap();
    assert_eq!(pod.held_count(), 1, "the pod released early");
    let first = data(&first);
    assert_eq!(first["model"], "tweet-summary");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    pod.release_all();
    let rest = stream.rest_events(PROMPT).await.unwrap();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("data: [DONE]"),
        "{rest:?}"
    );
    let chunks: Vec<Value> = rest[..rest.len() - 1].iter().map(|e| data(e)).collect();
    assert_eq!(
        chunks.len(),
        5 + 1,
        "five content chunks and the usage chunk: {rest:?}"
    );
    let usage = &chunks[5]["usage"];
    assert_eq!(usage["completion_tokens"], 5, "{rest:?}");
    assert!(chunks[..5]
        .iter()
        .all(|c| c["model"] == "tweet-summary" && c.get("usage").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_stream_without_usage_is_incremental_too() {
    let stack = Stack::start(1, config).await.unwrap();
    let pod = &stack.pods[0];
    pod.set_hold(Hold::AfterFirstChunk);
    let body = json!({"model": "lora-request", "prompt": "hi", "max_tokens": 4, "stream": true});
    let mut stream = stack
        .client
        .post_streaming(
            "/v1/completions",
            body.to_string(),
            &[("x-session-id", "s1")],
        )
        .await
        .unwrap();
    assert_eq!(stream.status, 200);
    let first = data(
        &stream
            .next_event(PROMPT)
            .await
            .unwrap()
            .expect("a first event"),
    );
    assert_eq!(first["model"], "tweet-summary");
    wait_total_held(&stack.pods, 1, PROMPT).await.unwrap();
    pod.release_all();
    let rest = stream.rest_events(PROMPT).await.unwrap();
    assert_eq!(rest.len(), 3 + 1, "three more tokens and [DONE]: {rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"));
    assert!(
        rest.iter().all(|e| !e.contains("\"usage\"")),
        "usage without include_usage: {rest:?}"
    );
}
