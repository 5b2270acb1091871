//! docs/contract.md section 4: the plugin's own replies (all but 429, which needs scraped
//! metrics). Each is an OpenAI error `{"error":{"message","type","code"}}` with code = the status,
//! and no pod ever sees the request.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use serde_json::{json, Value};
use wasm_tests::client::Reply;
use wasm_tests::stack::Stack;

const LIMIT: usize = 1024 * 1024;

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [
            {"name": "pool-a", "endpoints": endpoints},
            {"name": "pool-empty", "endpoints": []},
        ],
        "models": [
            {"modelName": "lora-request", "poolRef": "pool-a",
             "targetModels": [{"name": "sql-lora", "weight": 1}]},
            {"modelName": "orphan", "poolRef": "pool-empty"},
        ],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
        "maxRequestBodyBytes": LIMIT,
    })
}

fn assert_error(what: &str, r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: content-type {:?}",
        r.header("content-type")
    );
    let body = r.json().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message in {body}"
    );
    assert!(error["type"].is_string(), "{what}: no type in {body}");
    assert_eq!(error["code"], json!(status), "{what}: code in {body}");
}

/// A valid completion body of exactly `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let head = br#"{"model":"lora-request","prompt":""#;
    let tail = br#""}"#;
    let fill = len - head.len() - tail.len();
    [head.as_slice(), &vec![b'a'; fill], tail].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_400() {
    let stack = Stack::start(1, config).await.unwrap();
    let cases: [(&str, &[u8]); 11] = [
        ("not JSON", b"model=lora-request"),
        ("truncated JSON", br#"{"model":"lora-request""#),
        ("empty body", b""),
        ("trailing garbage", br#"{"model":"lora-request"} x"#),
        ("a JSON array", br#"[{"model":"lora-request"}]"#),
        ("model missing", br#"{"prompt":"hi"}"#),
        (
            "model only nested",
            br#"{"messages":[{"role":"user","content":"x","model":"lora-request"}]}"#,
        ),
        ("model is a number", br#"{"model":42,"prompt":"hi"}"#),
        ("model is null", br#"{"model":null,"prompt":"hi"}"#),
        (
            "model is an array",
            br#"{"model":["lora-request"],"prompt":"hi"}"#,
        ),
        (
            "model is an object",
            br#"{"model":{"name":"lora-request"},"prompt":"hi"}"#,
        ),
    ];
    for path in ["/v1/completions", "/v1/chat/completions"] {
        for (what, body) in cases {
            let r = stack
                .client
                .post(path, Bytes::from_static(body), &[])
                .await
                .unwrap();
            assert_error(&format!("{path} {what}"), &r, 400);
        }
    }
    assert!(stack.requests().is_empty(), "a pod saw a bad request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let stack = Stack::start(1, config).await.unwrap();

    // At the limit: served.
    let r = stack
        .client
        .post("/v1/completions", body_of_len(LIMIT), &[])
        .await
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "a body of exactly maxRequestBodyBytes: {}",
        r.text()
    );
    assert_eq!(
        stack.pods[0].requests()[0].body.len(),
        LIMIT - "lora-request".len() + "sql-lora".len(),
        "rewritten to sql-lora"
    );
    stack.pods[0].clear();

    // One byte over, with content-length.
    let r = stack
        .client
        .post("/v1/completions", body_of_len(LIMIT + 1), &[])
        .await
        .unwrap();
    assert_error("content-length limit + 1", &r, 413);

    // Well over, chunked (no content-length): found out while the body streams in.
    let body = body_of_len(3 * LIMIT);
    let chunks: Vec<Bytes> = body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let r = stack
        .client
        .post_chunked("/v1/chat/completions", chunks, &[])
        .await
        .unwrap();
    assert_error("chunked 3 × limit", &r, 413);

    // One byte over, chunked.
    let body = body_of_len(LIMIT + 1);
    let chunks: Vec<Bytes> = body
        .chunks(100 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let r = stack
        .client
        .post_chunked("/v1/completions", chunks, &[])
        .await
        .unwrap();
    assert_error("chunked limit + 1", &r, 413);

    assert!(
        stack.requests().is_empty(),
        "a pod saw an oversized request"
    );
    // The plugin still serves afterwards.
    let r = stack.client.completion("lora-request", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_get_404_and_pools_without_endpoints_503() {
    let stack = Stack::start(1, config).await.unwrap();
    for path in [
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/responses",
    ] {
        let r = stack
            .client
            .post(
                path,
                json!({"model": "no-such-model", "input": "x"}).to_string(),
                &[],
            )
            .await
            .unwrap();
        assert_error(&format!("{path} unknown model"), &r, 404);
        let r = stack
            .client
            .post(
                path,
                json!({"model": "orphan", "input": "x"}).to_string(),
                &[],
            )
            .await
            .unwrap();
        assert_error(
            &format!("{path} model of a pool without endpoints"),
            &r,
            503,
        );
    }
    assert!(stack.requests().is_empty(), "a pod saw a refused request");
    // Every inference path is served for a configured model.
    for path in [
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/responses",
    ] {
        let body = json!({"model": "lora-request", "input": "x", "messages": [], "prompt": "x"});
        let r = stack
            .client
            .post(path, body.to_string(), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json().unwrap()["model"], "sql-lora", "{path}");
    }
}

/// The outcomes the shipped alerts watch exist at zero from the start, per pool: `increase()`
/// sees the first shed or 503, and dashboards show 0 rather than "no data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerting_outcomes_exist_at_zero_before_the_first() {
    let stack = Stack::start(1, config).await.unwrap();
    let text = stack.envoy.admin_get("/stats/prometheus").await.unwrap();
    for outcome in ["shed", "unavailable", "failed_open", "rejected"] {
        let line = text
            .lines()
            .find(|l| {
                l.contains("inference_router_requests_total{")
                    && l.contains("pool=\"pool-a\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .unwrap_or_else(|| panic!("no {outcome} series:\n{text}"));
        assert!(line.ends_with(" 0"), "{line}");
    }
}
