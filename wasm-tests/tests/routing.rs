//! Where requests go: pools, unknown models, spoofed routing headers, and requests the plugin
//! must leave alone.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashSet;
use wasm_tests::envoy::{EnvoySpec, DESTINATION_HEADER, MODEL_HEADER};
use wasm_tests::pod::{endpoints, start_pods, Pod, PodOptions};
use wasm_tests::stack::Stack;

fn completion(model: &str) -> String {
    json!({"model": model, "prompt": "hi", "max_tokens": 2}).to_string()
}

/// The pod saw the destination header naming itself, exactly once.
fn assert_routed_to_self(pod: &Pod) {
    for r in pod.requests() {
        assert_eq!(
            r.header_values(DESTINATION_HEADER),
            vec![pod.endpoint()],
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_reaches_only_its_own_pool() {
    let a = start_pods(2, &PodOptions::default()).await.unwrap();
    let b = start_pods(2, &PodOptions::default()).await.unwrap();
    let config = json!({
        "pools": [
            {"name": "pool-a", "endpoints": endpoints(&a)},
            {"name": "pool-b", "endpoints": endpoints(&b)},
        ],
        "models": [
            {"modelName": "model-a", "poolRef": "pool-a"},
            {"modelName": "model-b", "poolRef": "pool-b",
             "targetModels": [{"name": "model-b-lora", "weight": 1}]},
        ],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
    });
    let stack = Stack::with_pods(a.into_iter().chain(b).collect(), &config)
        .await
        .unwrap();
    for i in 0..40 {
        let model = if i % 2 == 0 { "model-a" } else { "model-b" };
        let r = stack
            .client
            .post("/v1/completions", completion(model), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (pool_a, pool_b) = stack.pods.split_at(2);
    for pod in pool_a {
        let models: HashSet<_> = pod.requests().iter().filter_map(|r| r.model()).collect();
        assert_eq!(
            models,
            HashSet::from(["model-a".to_string()]),
            "pool-a pod {}",
            pod.endpoint()
        );
        assert_routed_to_self(pod);
    }
    for pod in pool_b {
        let models: HashSet<_> = pod.requests().iter().filter_map(|r| r.model()).collect();
        assert_eq!(
            models,
            HashSet::from(["model-b-lora".to_string()]),
            "pool-b pod {}",
            pod.endpoint()
        );
        assert_routed_to_self(pod);
    }
    // Round robin within each pool uses both of its pods.
    assert_eq!(pool_a.iter().map(Pod::request_count).sum::<usize>(), 20);
    assert_eq!(pool_b.iter().map(Pod::request_count).sum::<usize>(), 20);
    assert!(
        stack.pods.iter().all(|p| p.request_count() > 0),
        "an idle pod"
    );
}

fn two_pool_config(a: &[Pod], b: &[Pod], unknown: &str) -> Value {
    json!({
        "pools": [
            {"name": "pool-a", "endpoints": endpoints(a)},
            {"name": "pool-b", "endpoints": endpoints(b)},
        ],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                    "targetModels": [{"name": "sql-lora", "weight": 1}]}],
        "defaultPool": "pool-b",
        "unknownModels": unknown,
        "scheduling": {"strategy": "ROUND_ROBIN"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_pass_through_to_the_default_pool_unchanged() {
    let a = start_pods(1, &PodOptions::default()).await.unwrap();
    let b = start_pods(2, &PodOptions::default()).await.unwrap();
    let config = two_pool_config(&a, &b, "passthrough");
    let stack = Stack::with_pods(a.into_iter().chain(b).collect(), &config)
        .await
        .unwrap();
    let body = r#"{"prompt":"hi" , "model" : "mystery-model","max_tokens":2,"x":1e400}"#;
    for _ in 0..4 {
        let r = stack
            .client
            .post("/v1/completions", body, &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        stack.pods[0].request_count(),
        0,
        "the model's pool got an unknown model"
    );
    assert_eq!(
        stack.pods[1].request_count() + stack.pods[2].request_count(),
        4
    );
    for pod in &stack.pods[1..] {
        assert_routed_to_self(pod);
        for r in pod.requests() {
            assert_eq!(r.body, Bytes::from(body));
            assert_eq!(
                r.header("content-length"),
                Some(body.len().to_string().as_str())
            );
            assert_eq!(
                r.header_values(MODEL_HEADER),
                vec!["mystery-model".to_string()]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_are_rejected_with_404_when_configured() {
    let a = start_pods(1, &PodOptions::default()).await.unwrap();
    let b = start_pods(1, &PodOptions::default()).await.unwrap();
    let config = two_pool_config(&a, &b, "reject");
    let stack = Stack::with_pods(a.into_iter().chain(b).collect(), &config)
        .await
        .unwrap();
    let r = stack
        .client
        .post("/v1/completions", completion("mystery-model"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let error = &r.json().unwrap()["error"];
    assert_eq!(error["code"], 404, "{}", r.text());
    assert!(stack.requests().is_empty(), "a pod saw a rejected request");
    // The configured model still works.
    let r = stack
        .client
        .post("/v1/completions", completion("lora-request"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_routing_headers_are_never_honoured() {
    let pool = start_pods(2, &PodOptions::default()).await.unwrap();
    // A live pod outside the pool: if a spoofed header were honoured, it would answer.
    let outsider = Pod::start_next(PodOptions::default()).await.unwrap();
    let outside = outsider.endpoint();
    let config = json!({
        "pools": [{"name": "pool-a", "endpoints": endpoints(&pool)}],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                    "targetModels": [{"name": "sql-lora", "weight": 1}]}],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
        // /v1/models goes to a pod as any non-inference request (not answered by the gateway).
        "listModels": "pool",
    });
    let mut pods = pool;
    pods.push(outsider);
    let stack = Stack::with_spec(pods, &EnvoySpec::plugin(&config).with_plain_listener())
        .await
        .unwrap();
    let (pool, outsider) = (&stack.pods[..2], &stack.pods[2]);

    // Without the plugin the spoof works: the test can see the attack it guards against.
    let plain = stack.envoy.plain_client().unwrap();
    let r = plain
        .get("/v1/models", &[(DESTINATION_HEADER, &outside)])
        .await
        .unwrap();
    assert_eq!(r.pod(), Some(outside.as_str()));
    outsider.clear();
    let before = outsider.request_count();

    let spoofs: [&[(&str, &str)]; 3] = [
        &[(DESTINATION_HEADER, &outside)],
        &[(DESTINATION_HEADER, &outside), (MODEL_HEADER, "evil-model")],
        &[
            (DESTINATION_HEADER, &outside),
            (DESTINATION_HEADER, &outside),
            (MODEL_HEADER, "a"),
            (MODEL_HEADER, "b"),
        ],
    ];
    for headers in spoofs {
        // Inference: routed by the plugin's own pick, headers overwritten.
        let r = stack
            .client
            .post("/v1/completions", completion("lora-request"), headers)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        let pod = r.pod().unwrap().to_string();
        assert_ne!(
            pod, outside,
            "{headers:?}: the spoofed destination was honoured"
        );
        let picked = pool.iter().find(|p| p.endpoint() == pod).unwrap();
        let seen = picked.requests().pop().unwrap();
        assert_eq!(seen.path(), "/v1/completions");
        assert_eq!(
            seen.header_values(DESTINATION_HEADER),
            vec![pod.clone()],
            "{headers:?}"
        );
        assert_eq!(
            seen.header_values(MODEL_HEADER),
            vec!["sql-lora".to_string()],
            "{headers:?}"
        );

        // Not inference: the spoofed headers are removed, the request goes where it would anyway.
        for r in [
            stack.client.get("/v1/models", headers).await.unwrap(),
            stack
                .client
                .post("/tokenize", completion("lora-request"), headers)
                .await
                .unwrap(),
        ] {
            assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
            assert_ne!(
                r.pod(),
                Some(outside.as_str()),
                "{headers:?}: the spoofed destination was honoured"
            );
        }
    }
    assert_eq!(
        outsider.request_count(),
        before,
        "the pod outside the pool was reached"
    );
    for r in pool
        .iter()
        .flat_map(Pod::requests)
        .filter(|r| r.path() != "/v1/completions")
    {
        assert!(
            r.header(DESTINATION_HEADER).is_none(),
            "spoofed header forwarded: {r:?}"
        );
        assert!(
            r.header(MODEL_HEADER).is_none(),
            "spoofed header forwarded: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_inference_requests_pass_through_untouched() {
    let stack = Stack::start(2, |e| {
        json!({
            "pools": [{"name": "pool-a", "endpoints": e}],
            "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                        "targetModels": [{"name": "sql-lora", "weight": 1}]}],
            "defaultPool": "pool-a",
            "unknownModels": "reject",
            "listModels": "pool",
        })
    })
    .await
    .unwrap();
    let headers = [
        ("authorization", "Bearer sk-test"),
        ("x-custom", "kept as is"),
        ("accept", "application/json"),
    ];

    // GET /v1/models with listModels: pool: the pod's own answer, the request as sent.
    let r = stack
        .client
        .get("/v1/models?limit=5", &headers)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["object"], "list");
    let seen = stack
        .requests()
        .into_iter()
        .find(|s| s.uri == "/v1/models?limit=5")
        .unwrap();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/v1/models?limit=5");
    assert!(seen.body.is_empty());
    for (name, value) in headers {
        assert_eq!(seen.header_values(name), vec![value.to_string()], "{name}");
    }
    assert!(seen.header(MODEL_HEADER).is_none());
    assert!(seen.header(DESTINATION_HEADER).is_none());

    // A POST to a non-inference path whose body names a configured model: not rewritten.
    for path in ["/tokenize", "/v1/completions/extra", "/v2/completions"] {
        let body = r#"{"model":"lora-request","prompt":"hi"}"#;
        let r = stack.client.post(path, body, &headers).await.unwrap();
        let seen = stack
            .requests()
            .into_iter()
            .find(|s| s.path() == path)
            .unwrap();
        assert_eq!(seen.body, Bytes::from(body), "{path}");
        assert!(seen.header(MODEL_HEADER).is_none(), "{path}");
        assert!(seen.header(DESTINATION_HEADER).is_none(), "{path}");
        for (name, value) in headers {
            assert_eq!(
                seen.header_values(name),
                vec![value.to_string()],
                "{path} {name}"
            );
        }
        // The pod's own status comes back (404 for paths it does not serve), not the plugin's.
        let expected = if path == "/tokenize" { 200 } else { 404 };
        assert_eq!(r.status, expected, "{path}: {}", r.text());
    }

    // The inference path with another method is not inference either; even a body that is not
    // JSON goes through.
    let r = stack.client.get("/v1/completions", &headers).await.unwrap();
    assert_eq!(
        r.status,
        404,
        "the pod's 404 for GET, not a plugin error: {}",
        r.text()
    );
    let seen = stack
        .requests()
        .into_iter()
        .find(|s| s.method == "GET" && s.path() == "/v1/completions");
    assert!(seen.is_some(), "GET /v1/completions never reached a pod");
}
