//! Requests that end with trailers: over HTTP/2 the body's last DATA frame does not end the
//! stream, the trailers do. The plugin must decide then (route, reject, shed), never let such a
//! request through undecided.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::net::SocketAddr;
use wasm_tests::stack::Stack;

async fn post_with_trailers(addr: SocketAddr, body: &str) -> (u16, bytes::Bytes) {
    wasm_tests::client::post_h2_with_trailers(addr, "/v1/completions", body)
        .await
        .unwrap()
}

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [{"name": "pool-a", "endpoints": endpoints}],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                    "targetModels": [{"name": "sql-lora", "weight": 1}]}],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_ending_with_trailers_are_decided() {
    let stack = Stack::start(1, config).await.unwrap();
    let addr = stack.envoy.addr().unwrap();
    let (status, body) = post_with_trailers(
        addr,
        r#"{"model":"lora-request","prompt":"one two","max_tokens":2}"#,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let routed = stack.requests();
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0].model().as_deref(), Some("sql-lora"), "rewritten");
    assert_eq!(
        routed[0].header("x-gateway-destination-endpoint"),
        Some(stack.pods[0].endpoint().as_str())
    );
    let (status, _) = post_with_trailers(addr, r#"{"model":"unknown","prompt":"x"}"#).await;
    assert_eq!(status, 404, "rejected");
    let (status, _) = post_with_trailers(addr, r#"{"model":"#).await;
    assert_eq!(status, 400, "not JSON");
    assert_eq!(stack.requests().len(), 1, "nothing more reached the pod");
}
