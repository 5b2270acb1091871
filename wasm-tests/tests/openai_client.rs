//! The gateway as users' code sees it: the official OpenAI Python client (installed in `.venv` by
//! the Makefile) lists the models (the gateway answers `GET /v1/models` with its served names,
//! merged with a pod's own list), completes, and streams a chat without asking for usage (the
//! gateway asks on its behalf and takes the usage event out again; the strict client must not
//! notice).

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::process::Command;
use wasm_tests::pod::PodOptions;
use wasm_tests::stack::Stack;

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=30)
ids = [m.id for m in client.models.list()]
done = client.completions.create(model="lora-request", prompt="one two", max_tokens=3)
chunks = list(client.chat.completions.create(
    model="lora-request", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
print(json.dumps({
    "models": ids,
    "completion_model": done.model,
    "completion_tokens": done.usage.completion_tokens,
    "stream_chunks": len(chunks),
    "stream_usage": [c.usage is not None for c in chunks],
    "stream_text": "".join((c.choices[0].delta.content or "") for c in chunks if c.choices),
}))
"#;

fn run_client(base: &str) -> Value {
    let python = wasm_tests::repo_root().join(".venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", SCRIPT, base])
        .env("NO_PROXY", "*")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the Makefile's python-deps installs it)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "openai client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn config(endpoints: &[String], list_models: &str) -> Value {
    json!({
        "pools": [{"name": "pool-a", "endpoints": endpoints}],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a",
                    "targetModels": [{"name": "sql-lora", "weight": 1}]}],
        "defaultPool": "pool-a",
        "scheduling": {"strategy": "ROUND_ROBIN"},
        "listModels": list_models,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_lists_completes_and_streams_through_the_gateway() {
    let options = PodOptions {
        adapters: vec!["sql-lora".into()],
        ..PodOptions::default()
    };
    let pods = wasm_tests::pod::start_pods(2, &options).await.unwrap();
    let eps = wasm_tests::pod::endpoints(&pods);
    let stack = Stack::with_pods(pods, &config(&eps, "merge"))
        .await
        .unwrap();
    let base = format!("http://{}/v1", stack.envoy.addr().unwrap());
    let out = tokio::task::spawn_blocking(move || run_client(&base))
        .await
        .unwrap();
    let models: Vec<&str> = out["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    // The served name first, then the pod's own list (its base model and adapter).
    assert_eq!(
        models,
        vec!["lora-request", "tiny-llama", "sql-lora"],
        "{out}"
    );
    assert_eq!(out["completion_model"], "sql-lora");
    assert_eq!(out["completion_tokens"], 3);
    // The client did not ask for usage: no chunk carries any, though the pod sent it.
    assert!(out["stream_chunks"].as_u64().unwrap() >= 2, "{out}");
    assert!(
        out["stream_usage"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u == false),
        "{out}"
    );
    assert!(!out["stream_text"].as_str().unwrap().is_empty(), "{out}");
    // And the gateway counted the stream's tokens all the same.
    let stats = stack
        .envoy
        .admin_get("/stats?filter=completion_tokens")
        .await
        .unwrap();
    assert!(stats.contains("target_model=.=sql-lora"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_list_is_configurable() {
    let pods = wasm_tests::pod::start_pods(1, &PodOptions::default())
        .await
        .unwrap();
    let eps = wasm_tests::pod::endpoints(&pods);
    let stack = Stack::with_pods(pods, &config(&eps, "gateway"))
        .await
        .unwrap();
    let r = stack.client.get("/v1/models", &[]).await.unwrap();
    let ids: Vec<String> = r.json().unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["lora-request"], "gateway only");
    assert_eq!(stack.requests().len(), 0, "no pod asked");
    drop(stack);
    let pods = wasm_tests::pod::start_pods(1, &PodOptions::default())
        .await
        .unwrap();
    let eps = wasm_tests::pod::endpoints(&pods);
    let stack = Stack::with_pods(pods, &config(&eps, "pool")).await.unwrap();
    let r = stack.client.get("/v1/models", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        !r.text().contains("lora-request"),
        "the pod's own answer: {}",
        r.text()
    );
    assert_eq!(stack.requests().len(), 1, "passed through to the pod");
}
