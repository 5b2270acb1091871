//! Input that must never be trusted, through the real Envoy with the real module: client-sent
//! routing headers in any casing and repeated, model names with control characters, huge and
//! deeply nested JSON, bytes that are not UTF-8, label values a client could make unbounded, and
//! oversized headers. Each gets a defined reply, the VM keeps serving (a trap would fail the next
//! request on that worker), the log stays bounded, and the plugin's metrics keep a bounded set of
//! series.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeSet;
use wasm_tests::client::Client;
use wasm_tests::envoy::Envoy;
use wasm_tests::pod::{Pod, PodOptions};
use wasm_tests::stack::Stack;

const DESTINATION: &str = "x-gateway-destination-endpoint";
const MODEL_HEADER: &str = "x-gateway-model-name";
const MAX_BODY: u64 = 1 << 20;

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [{"name": "pool-a", "endpoints": endpoints}],
        "models": [{"modelName": "chat", "poolRef": "pool-a",
                    "targetModels": [{"name": "sql-lora", "weight": 1}]}],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "maxRequestBodyBytes": MAX_BODY,
        "scheduling": {"strategy": "ROUND_ROBIN"},
    })
}

/// The VM still serves: a good request on each of a few fresh connections (both workers) is
/// routed, and nothing in the log says a VM trapped or panicked.
async fn still_serving(stack: &Stack, what: &str) {
    let fresh = Client::fresh_connections(stack.envoy.addr().unwrap()).unwrap();
    for _ in 0..4 {
        let r = fresh
            .post("/v1/completions", r#"{"model":"chat","prompt":"hi"}"#, &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "after {what}: {}", r.text());
    }
    let log = stack.envoy.log();
    for sign in ["panicked", "RuntimeError", "unreachable", "wasm trap"] {
        assert!(!log.contains(sign), "after {what}: the log says {sign:?}");
    }
}

/// No log line longer than this: a client's text is never copied whole into the log.
const LOG_LINE_MAX: usize = 4096;

fn longest_log_line(envoy: &Envoy) -> usize {
    envoy.log().lines().map(str::len).max().unwrap_or(0)
}

fn error_type(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(body));
    });
    v["error"]["type"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_routing_headers_never_pick_the_pod() {
    // A pod outside the pool, running: a spoofed destination would reach it.
    let outsider = Pod::start_next(PodOptions::default()).await.unwrap();
    let stack = Stack::start(2, config).await.unwrap();
    let members = stack.endpoints();
    let spoof = outsider.endpoint();
    let casings = [
        "x-gateway-destination-endpoint",
        "X-Gateway-Destination-Endpoint",
        "X-GATEWAY-DESTINATION-ENDPOINT",
        "x-GaTeWaY-dEsTiNaTiOn-EnDpOiNt",
    ];
    for (i, name) in casings.iter().enumerate() {
        // The header once, and repeated with other values, and the model header too.
        let mut headers = vec![(*name, spoof.as_str()), (MODEL_HEADER, "evil-model")];
        if i % 2 == 1 {
            headers.push((*name, "10.255.255.1:80"));
            headers.push(("X-Gateway-Destination-Endpoint", spoof.as_str()));
        }
        for (path, body) in [
            ("/v1/completions", r#"{"model":"chat","prompt":"hi"}"#),
            ("/v1/chat/completions", r#"{"model":"chat","messages":[]}"#),
        ] {
            let r = stack.client.post(path, body, &headers).await.unwrap();
            assert_eq!(r.status, 200, "{name}: {}", r.text());
        }
    }
    // A request the plugin does not route (not an inference path) loses the headers too.
    let r = stack
        .client
        .get("/healthz", &[(DESTINATION, spoof.as_str())])
        .await
        .unwrap();
    assert_ne!(r.status, 0);
    assert!(
        outsider.requests().is_empty(),
        "the spoofed destination was reached: {:?}",
        outsider.requests()
    );
    // Passed through as it is not an inference request, without the client's header.
    let other: Vec<_> = stack
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/healthz")
        .collect();
    for req in &other {
        assert!(
            !req.header_values(DESTINATION).contains(&spoof),
            "the client's destination header reached the pod"
        );
    }
    let routed: Vec<_> = stack
        .requests()
        .into_iter()
        .filter(|r| r.path() != "/healthz")
        .collect();
    assert_eq!(routed.len(), 2 * casings.len());
    for req in &routed {
        let dest = req.header_values(DESTINATION);
        assert_eq!(
            dest.len(),
            1,
            "one destination header, the plugin's: {dest:?}"
        );
        assert!(members.contains(&dest[0]), "{dest:?} is a member");
        assert_eq!(
            req.pod.to_string(),
            dest[0],
            "and it is where the request went"
        );
        assert_eq!(
            req.header_values(MODEL_HEADER),
            vec!["sql-lora".to_string()],
            "the model header is the plugin's"
        );
        assert_eq!(req.model().as_deref(), Some("sql-lora"));
    }
    still_serving(&stack, "spoofed headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_model_names_get_a_defined_reply_and_a_bounded_log() {
    let stack = Stack::start(1, config).await.unwrap();
    let long = "m".repeat(100 * 1024);
    let names = [
        "nul\u{0}byte",
        "new\nline\r\n",
        "esc\u{1b}[31mred",
        "quote\"and\\backslash",
        "tab\tand\u{7f}del",
        "\u{202e}right-to-left",
        long.as_str(),
    ];
    for name in names {
        let body = json!({"model": name, "prompt": "hi"}).to_string();
        let r = stack
            .client
            .post("/v1/completions", body, &[])
            .await
            .unwrap();
        assert_eq!(
            r.status,
            404,
            "unknown model {:?}: {}",
            &name[..name.len().min(40)],
            r.text()
        );
        assert!(!error_type(&r.body).is_empty());
        // The reply names the model (JSON-escaped: the client's own text, back to it), bounded.
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.len() < 1024,
            "reply message of {} bytes",
            message.len()
        );
    }
    // A model value that is not a string, or an escape that is not one.
    for body in [
        r#"{"model":"\ud800","prompt":"hi"}"#.to_string(),
        r#"{"model":"bad\escape","prompt":"hi"}"#.to_string(),
        r#"{"model":"unterminated"#.to_string(),
    ] {
        let r = stack
            .client
            .post("/v1/completions", body.clone(), &[])
            .await
            .unwrap();
        assert!(
            r.status == 400 || r.status == 404,
            "{body}: {} {}",
            r.status,
            r.text()
        );
    }
    assert!(stack.requests().is_empty(), "no pod saw any of them");
    let longest = longest_log_line(&stack.envoy);
    assert!(longest <= LOG_LINE_MAX, "a log line of {longest} bytes");
    let log = stack.envoy.log();
    for c in ['\u{0}', '\u{1b}', '\u{202e}'] {
        assert!(!log.contains(c), "the log holds a raw {c:?} from a client");
    }
    still_serving(&stack, "hostile model names").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_deep_and_non_utf8_bodies_get_a_defined_reply() {
    let stack = Stack::start(1, config).await.unwrap();
    let client = &stack.client;

    // Larger than maxRequestBodyBytes, announced (content-length) and streamed (chunked).
    let big = format!(
        r#"{{"model":"chat","prompt":"{}"}}"#,
        "a".repeat(MAX_BODY as usize + 1)
    );
    let r = client
        .post("/v1/completions", big.clone(), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    let chunks: Vec<bytes::Bytes> = big
        .as_bytes()
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let r = client
        .post_chunked("/v1/completions", chunks, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 413, "chunked: {}", r.text());

    // Deeply nested JSON: up to serde_json's limit (127 levels, the body's object included) it is
    // routed;
    // deeper is refused with 400, whatever the depth (the scan keeps a fixed-size stack, it does
    // not recurse per level).
    let nest = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let ok = format!(r#"{{"prompt":{},"model":"chat"}}"#, nest(126));
    let r = client.post("/v1/completions", ok, &[]).await.unwrap();
    assert_eq!(r.status, 200, "127 levels: {}", r.text());
    let depth = 200_000;
    let nested = nest(depth);
    let before = format!(r#"{{"prompt":{nested},"model":"chat"}}"#);
    let r = client.post("/v1/completions", before, &[]).await.unwrap();
    assert_eq!(r.status, 400, "nesting before the model: {}", r.text());
    assert!(r.text().contains("nesting too deep"), "{}", r.text());
    let as_model = format!(r#"{{"model":{nested}}}"#);
    let r = client.post("/v1/completions", as_model, &[]).await.unwrap();
    assert_eq!(r.status, 400, "an array as the model: {}", r.text());
    let unclosed = format!(r#"{{"model":"chat","prompt":{}"#, "{\"a\":".repeat(depth));
    let r = client.post("/v1/completions", unclosed, &[]).await.unwrap();
    assert_eq!(r.status, 400, "unclosed nesting: {}", r.text());

    // Bytes that are not UTF-8: in the prompt (passed on untouched, byte for byte) and in the
    // model (refused).
    let mut body = br#"{"model":"chat","prompt":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0x80]);
    body.extend_from_slice(br#""}"#);
    let r = client
        .post("/v1/completions", body.clone(), &[])
        .await
        .unwrap();
    let routed = stack.requests();
    if r.status == 200 {
        let seen = &routed.last().unwrap().body;
        assert!(
            seen.windows(5).any(|w| w == [0xff, 0xfe, 0xc3, 0x28, 0x80]),
            "the prompt's bytes reach the pod unchanged"
        );
    } else {
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let mut body = br#"{"model":"ch"#.to_vec();
    body.extend_from_slice(&[0xff, 0xc0, 0xaf]);
    body.extend_from_slice(br#"at","prompt":"hi"}"#);
    let r = client.post("/v1/completions", body, &[]).await.unwrap();
    assert!(
        r.status == 400 || r.status == 404,
        "a model that is not UTF-8: {} {}",
        r.status,
        r.text()
    );

    let longest = longest_log_line(&stack.envoy);
    assert!(longest <= LOG_LINE_MAX, "a log line of {longest} bytes");
    still_serving(&stack, "huge, deep and non-UTF-8 bodies").await;
}

/// The plugin's stat names, from admin `/stats` (every series Envoy holds for it).
async fn plugin_stats(envoy: &Envoy) -> BTreeSet<String> {
    envoy
        .admin_get("/stats")
        .await
        .unwrap()
        .lines()
        .filter(|l| l.contains("inference_router"))
        .filter_map(|l| l.split_once(": ").map(|(name, _)| name.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_values_never_become_new_metric_series() {
    let stack = Stack::start(1, |eps| {
        let mut c = config(eps);
        // Unknown models pass through (as `other`), so every distinct name reaches the counters.
        c["unknownModels"] = json!("passthrough");
        c["flowControl"] = json!({"enabled": true});
        c
    })
    .await
    .unwrap();
    let client = &stack.client;
    // Warm up every label the traffic below can use: a known and an unknown model, streamed
    // and not, with and without the headers.
    for model in ["chat", "warm-up-unknown"] {
        let r = client
            .post(
                "/v1/completions",
                json!({"model": model, "prompt": "hi"}).to_string(),
                &[
                    ("x-gateway-inference-objective", "warm-up"),
                    ("x-gateway-inference-fairness-id", "warm-up"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let before = plugin_stats(&stack.envoy).await;
    for i in 0..300 {
        let model = format!("model-{i}-{}", "x".repeat(i % 50));
        let tenant = format!("tenant-{i}");
        let objective = format!("objective-{i}");
        let r = client
            .post(
                "/v1/completions",
                json!({"model": model, "prompt": "hi"}).to_string(),
                &[
                    ("x-gateway-inference-objective", objective.as_str()),
                    ("x-gateway-inference-fairness-id", tenant.as_str()),
                    ("x-session-id", tenant.as_str()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let after = plugin_stats(&stack.envoy).await;
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(
        new.is_empty(),
        "300 client-chosen model names, tenants and objectives made {} new series: {:?}",
        new.len(),
        new.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        !after.iter().any(|s| s.contains("model-1")),
        "a client's model name became a label"
    );
    eprintln!("plugin series: {} before and after", before.len());
    still_serving(&stack, "300 distinct client values").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_numerous_headers_are_envoys_to_refuse() {
    let stack = Stack::start(1, config).await.unwrap();
    let body = r#"{"model":"chat","prompt":"hi"}"#;
    // One header over Envoy's 60 KiB limit: Envoy answers 431 before any filter runs.
    let huge = "v".repeat(70 * 1024);
    let r = stack
        .client
        .post("/v1/completions", body, &[("x-huge", huge.as_str())])
        .await;
    match r {
        Ok(r) => assert_eq!(r.status, 431, "{}", r.text()),
        // Envoy may also close the connection on headers it will not read.
        Err(e) => eprintln!("70 KiB header: connection closed ({e})"),
    }
    // Under the limit: a 40 KiB header and 90 headers go through the plugin and are routed.
    let big = "v".repeat(40 * 1024);
    let names: Vec<String> = (0..90).map(|i| format!("x-extra-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("x-big", big.as_str()));
    let r = stack
        .client
        .post("/v1/completions", body, &headers)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let routed = stack.requests();
    assert_eq!(
        routed.last().unwrap().header("x-big").map(str::len),
        Some(40 * 1024)
    );
    still_serving(&stack, "oversized headers").await;
}
