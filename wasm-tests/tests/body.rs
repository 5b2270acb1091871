//! The body the pod receives is the client's, byte for byte, except the model value. (A stream
//! whose client did not ask for usage also gets `stream_options.include_usage`: `tokens.rs`.)

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use serde_json::{json, Value};
use wasm_tests::envoy::MODEL_HEADER;
use wasm_tests::pod::Recorded;
use wasm_tests::stack::Stack;

fn config(endpoints: &[String]) -> Value {
    json!({
        "pools": [{"name": "pool-a", "endpoints": endpoints}],
        "models": [
            // A single target, so every substitution is known in advance.
            {"modelName": "lora-request", "poolRef": "pool-a",
             "targetModels": [{"name": "sql-lora-v2", "weight": 1}]},
            // Served as named: the body must not change at all.
            {"modelName": "tiny-llama", "poolRef": "pool-a"},
        ],
        "defaultPool": "pool-a",
        "unknownModels": "passthrough",
        "scheduling": {"strategy": "ROUND_ROBIN"},
    })
}

/// A body as the text before the model value, the model value exactly as sent (a JSON string
/// literal, quotes included), and the text after it.
struct Case {
    name: &'static str,
    path: &'static str,
    before: String,
    model: &'static str,
    after: String,
}

impl Case {
    fn new(
        name: &'static str,
        path: &'static str,
        before: &str,
        model: &'static str,
        after: &str,
    ) -> Case {
        Case {
            name,
            path,
            before: before.to_string(),
            model,
            after: after.to_string(),
        }
    }

    fn sent(&self) -> Vec<u8> {
        [
            self.before.as_bytes(),
            self.model.as_bytes(),
            self.after.as_bytes(),
        ]
        .concat()
    }

    fn expected(&self, target: &str) -> Vec<u8> {
        [
            self.before.as_bytes(),
            format!("\"{target}\"").as_bytes(),
            self.after.as_bytes(),
        ]
        .concat()
    }
}

fn cases() -> Vec<Case> {
    let big_prompt = "lorem ipsum \\\"model\\\": \\\"x\\\" ".repeat(200 * 1024 / 28);
    vec![
        Case::new(
            "simple",
            "/v1/completions",
            r#"{"model":"#,
            r#""lora-request""#,
            r#","prompt":"hi"}"#,
        ),
        Case::new(
            "key order kept, model in the middle",
            "/v1/completions",
            r#"{"prompt":"hi","max_tokens":5,"model":"#,
            r#""lora-request""#,
            r#","temperature":0.5,"echo":false,"logit_bias":{"50256":-100}}"#,
        ),
        Case::new(
            "whitespace everywhere",
            "/v1/completions",
            "{\n  \"prompt\" : \"hi\" ,\r\n\t\"model\"  :  ",
            r#""lora-request""#,
            "  ,\n  \"n\" : 1\n}\n",
        ),
        Case::new(
            "unicode, raw and escaped",
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"héllo 数据源 😀 \u00e9\ud83d\ude00"}],"model":"#,
            r#""lora-request""#,
            r#","stop":["\u2028","\\u0041"]}"#,
        ),
        Case::new(
            "escaped model name (\\u002d)",
            "/v1/completions",
            r#"{"model":"#,
            r#""lora\u002drequest""#,
            r#","prompt":"hi"}"#,
        ),
        Case::new(
            "escaped model name (\\u006c, \\/)",
            "/v1/completions",
            r#"{"prompt":"hi","model":"#,
            r#""\u006cora-request""#,
            r#"}"#,
        ),
        Case::new(
            "escapes in other strings",
            "/v1/completions",
            r#"{"prompt":"say \"model\": \"lora-request\" \\ \/ \b\f\n\r\t","model":"#,
            r#""lora-request""#,
            r#","suffix":"\"}"}"#,
        ),
        Case::new(
            "huge and exact numbers",
            "/v1/completions",
            r#"{"temperature":1e400,"seed":123456789012345678901234567890,"top_p":0.1000000000000000055511151231257827,"n":-0,"x":1E-400,"model":"#,
            r#""lora-request""#,
            r#","frequency_penalty":-0.0e+0}"#,
        ),
        Case::new(
            "nested model keys left alone",
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x","model":"lora-request"},{"role":"assistant","content":[{"type":"text","text":"y","model":"lora-request"}]}],"metadata":{"model":"lora-request","deep":[[{"model":"lora-request"}]]},"model":"#,
            r#""lora-request""#,
            r#","tools":[{"type":"function","function":{"name":"model","parameters":{"model":{"type":"string"}}}}]}"#,
        ),
        Case {
            name: "model last after a 200 KB prompt",
            path: "/v1/completions",
            before: format!(r#"{{"prompt":"{big_prompt}","max_tokens":1,"model":"#),
            model: r#""lora-request""#,
            after: "}".to_string(),
        },
        Case::new(
            "embeddings",
            "/v1/embeddings",
            r#"{"input":["a","b"],"encoding_format":"float","model":"#,
            r#""lora-request""#,
            "}",
        ),
        Case::new(
            "responses",
            "/v1/responses",
            r#"{"model":"#,
            r#""lora-request""#,
            r#","input":[{"role":"user","content":"hi"}],"max_output_tokens":3}"#,
        ),
    ]
}

fn check(case: &str, seen: &Recorded, sent: &[u8], expected: &[u8], target: &str) {
    assert_eq!(
        seen.body,
        Bytes::copy_from_slice(expected),
        "{case}: the pod did not receive the client's bytes with only the model replaced\n sent: {}\n seen: {}",
        String::from_utf8_lossy(&sent[..sent.len().min(400)]),
        String::from_utf8_lossy(&seen.body[..seen.body.len().min(400)]),
    );
    if let Some(length) = seen.header("content-length") {
        assert_eq!(length, expected.len().to_string(), "{case}: content-length");
    }
    assert_eq!(
        seen.header(MODEL_HEADER),
        Some(target),
        "{case}: {MODEL_HEADER}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_model_value_changes() {
    let stack = Stack::start(1, config).await.unwrap();
    for case in cases() {
        stack.pods[0].clear();
        let r = stack
            .client
            .post(case.path, case.sent(), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}: {}", case.name, r.text());
        let seen = stack.pods[0].requests();
        assert_eq!(seen.len(), 1, "{}", case.name);
        assert!(
            seen[0].header("content-length").is_some(),
            "{}: content-length dropped",
            case.name
        );
        check(
            case.name,
            &seen[0],
            &case.sent(),
            &case.expected("sql-lora-v2"),
            "sql-lora-v2",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_rewritten_the_same_way() {
    let stack = Stack::start(1, config).await.unwrap();
    for case in cases() {
        stack.pods[0].clear();
        // Small chunks that split the model key and value across chunk boundaries.
        let chunks: Vec<Bytes> = case.sent().chunks(7).map(Bytes::copy_from_slice).collect();
        let r = stack
            .client
            .post_chunked(case.path, chunks, &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}: {}", case.name, r.text());
        let seen = stack.pods[0].requests();
        assert_eq!(seen.len(), 1, "{}", case.name);
        check(
            case.name,
            &seen[0],
            &case.sent(),
            &case.expected("sql-lora-v2"),
            "sql-lora-v2",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_without_targets_and_unknown_models_arrive_unchanged() {
    let stack = Stack::start(1, config).await.unwrap();
    for (model, literal) in [
        ("tiny-llama", r#""tiny-llama""#),
        ("tiny-llama", r#""tiny\u002dllama""#),
        ("some-other-model", r#""some-other-model""#),
    ] {
        for case in cases() {
            let case = Case {
                model: literal,
                ..case
            };
            stack.pods[0].clear();
            let r = stack
                .client
                .post(case.path, case.sent(), &[])
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{} / {model}: {}", case.name, r.text());
            let seen = stack.pods[0].requests();
            check(
                &format!("{} / {literal}", case.name),
                &seen[0],
                &case.sent(),
                &case.sent(),
                model,
            );
        }
    }
}
