//! `envoy/envoy.yaml` (what `make run` serves) works as shipped: the same document as
//! `examples/canary/config.json`, and a real Envoy started from it routes the canary model.
//! The fixed ports and pod addresses are swapped for free ones so this runs beside `make run`.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::HashSet;
use wasm_tests::envoy::{Envoy, MODEL_HEADER};
use wasm_tests::pod::{Pod, PodOptions};
use wasm_tests::repo_root;

const FIXED_PODS: [&str; 4] = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];

fn shipped_yaml() -> String {
    std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap()
}

/// envoy/envoy.yaml with fresh pods in place of the fixed addresses and kernel-chosen ports.
async fn with_fresh_pods(yaml: &str, options: &PodOptions) -> (String, Vec<Pod>) {
    let mut pods = Vec::new();
    let mut rewritten = yaml
        .replace("port_value: 8080", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0");
    for ip in FIXED_PODS {
        let pod = Pod::start_next(options.clone()).await.unwrap();
        let (new_ip, new_port) = (pod.addr().ip().to_string(), pod.addr().port().to_string());
        rewritten = rewritten
            .replace(
                &format!("\"{ip}:8000\""),
                &format!("\"{new_ip}:{new_port}\""),
            )
            .replace(
                &format!("address: {ip}, port_value: 8000"),
                &format!("address: {new_ip}, port_value: {new_port}"),
            );
        pods.push(pod);
    }
    let left: Vec<&str> = rewritten
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(":8000"))
        .collect();
    assert!(left.is_empty(), "addresses left unreplaced: {left:?}");
    (rewritten, pods)
}

/// Envoy started from `yaml` (envoy.yaml or a variant) with fresh pods, from the repository root
/// as `make run` starts it (the module path is relative to it). The directory holds the config.
async fn start_shipped(yaml: &str, options: &PodOptions) -> (Envoy, Vec<Pod>, tempfile::TempDir) {
    let (rewritten, pods) = with_fresh_pods(yaml, options).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, rewritten).unwrap();
    let envoy = Envoy::start_file(&config, &repo_root()).await.unwrap();
    (envoy, pods, dir)
}

/// The shipped access log's JSON lines, once `done` holds for them. Envoy writes a line when its
/// request ends, so poll (bounded, 10 s) rather than sleep; `what` names what was awaited.
async fn access_log_until(
    envoy: &Envoy,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = envoy
            .log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if done(&lines) {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {:?}",
            lines.iter().rev().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The block scalar under `value: &plugin-config |` in envoy.yaml: the plugin's inline
/// configuration (the filter refers to it by the YAML alias).
fn inline_configuration(yaml: &str) -> Value {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("value: &plugin-config |"));
    let header = lines
        .next()
        .expect("a `value: &plugin-config |` block in envoy/envoy.yaml");
    let indent = header.len() - header.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect();
    serde_json::from_str(&block.join("\n")).expect("the inline configuration is JSON")
}

fn targets(config: &Value) -> HashSet<String> {
    config["models"][0]["targetModels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// Pods that serve exactly the configuration's target adapters (anything else is their 404).
fn pods_for(config: &Value) -> PodOptions {
    PodOptions {
        adapters: targets(config).into_iter().collect(),
        strict_models: true,
        ..PodOptions::default()
    }
}

/// The request the shipped example's canary rollout applies to.
const CANARY_REQUEST: &str = r#"{"model":"lora-request","prompt":"hi","max_tokens":5}"#;

#[test]
fn envoy_yaml_carries_the_canary_example() {
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/canary/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(inline_configuration(&shipped_yaml()), example);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_yaml_serves_the_canary_rollout() {
    let yaml = shipped_yaml();
    let canary = inline_configuration(&yaml);
    let (envoy, pods, _dir) = start_shipped(&yaml, &pods_for(&canary)).await;
    let client = envoy.client().unwrap();

    let allowed = targets(&canary);
    let mut reached = HashSet::new();
    for _ in 0..60 {
        let r = client
            .post("/v1/completions", CANARY_REQUEST, &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let model = r.json().unwrap()["model"].as_str().unwrap().to_string();
        assert!(allowed.contains(&model), "{model}");
        reached.insert(model);
    }
    // Ten equal weights over 60 requests: a target is missed with probability 0.9^60 < 0.002 each;
    // demand only a spread, not all ten.
    assert!(reached.len() >= 5, "only {reached:?}");
    for pod in &pods {
        for r in pod.requests() {
            assert_eq!(r.header(MODEL_HEADER).map(str::to_string), r.model());
        }
    }

    // unknownModels: passthrough — the base model goes to the default pool as named.
    let r = client
        .post(
            "/v1/completions",
            r#"{"model":"tiny-llama","prompt":"hi"}"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["model"], "tiny-llama");
    let models = client.get("/v1/models", &[]).await.unwrap();
    assert_eq!(models.status, 200);

    // The shipped access log: one JSON line per request with the plugin's decision.
    let bad = client
        .post("/v1/completions", r#"{"model":3}"#, &[])
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let endpoints: HashSet<String> = pods.iter().map(|p| p.endpoint()).collect();
    access_log_until(&envoy, "access log lacks the plugin's fields", |lines| {
        let routed = lines.iter().any(|l| {
            l["outcome"] == "routed"
                && l["model"] == "lora-request"
                && l["target_model"]
                    .as_str()
                    .is_some_and(|t| allowed.contains(t))
                && l["endpoint"]
                    .as_str()
                    .is_some_and(|e| endpoints.contains(e))
                && l["status"] == 200
                // The pods answer `max_tokens` (5) completion tokens.
                && l["completion_tokens"] == "5"
                && l["prompt_tokens"].as_str().is_some_and(|p| p.parse::<u64>().is_ok())
        });
        let rejected = lines
            .iter()
            .any(|l| l["outcome"] == "rejected" && l["status"] == 400);
        let passthrough = lines
            .iter()
            .any(|l| l["outcome"] == "passthrough" && l["model"] == "tiny-llama");
        routed && rejected && passthrough
    })
    .await;
}

/// With the plugin gone from the chain (its VM failed and fail-open skipped it, say), a client's
/// own destination header reaches only members of the pool: the shipped cluster's override_host
/// skips any other address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_plugin_a_spoofed_destination_reaches_no_non_member() {
    let yaml = shipped_yaml();
    let start = yaml
        .find("                  - name: inference-router\n")
        .unwrap();
    let end = yaml
        .find("                  - name: envoy.filters.http.router")
        .unwrap();
    let without_plugin = format!("{}{}", &yaml[..start], &yaml[end..]);
    let (envoy, pods, _dir) = start_shipped(&without_plugin, &PodOptions::default()).await;
    let rogue = Pod::start_next(PodOptions::default()).await.unwrap();
    let client = envoy.client().unwrap();
    for _ in 0..10 {
        let r = client
            .post(
                "/v1/completions",
                r#"{"model":"tiny-llama","prompt":"hi"}"#,
                &[("x-gateway-destination-endpoint", &rogue.endpoint())],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(rogue.request_count(), 0, "a non-member was reached");
    assert_eq!(pods.iter().map(Pod::request_count).sum::<usize>(), 10);
}

/// `accessLogFields: false` (the switch for installs whose access log does not read them): the
/// request is routed as before and the shipped log line carries none of the plugin's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_switched_off_leave_the_log_without_them() {
    let yaml = shipped_yaml().replacen(
        "value: &plugin-config |\n            {\n",
        "value: &plugin-config |\n            {\n              \"accessLogFields\": false,\n",
        1,
    );
    assert_eq!(inline_configuration(&yaml)["accessLogFields"], false);
    let (envoy, pods, _dir) = start_shipped(&yaml, &pods_for(&inline_configuration(&yaml))).await;
    let client = envoy.client().unwrap();
    let r = client
        .post("/v1/completions", CANARY_REQUEST, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pods.iter().map(|p| p.requests().len()).sum::<usize>(), 1);
    let lines = access_log_until(&envoy, "no access log line for the request", |lines| {
        lines.iter().any(|l| l["status"] == 200)
    })
    .await;
    let line = lines.iter().find(|l| l["status"] == 200).unwrap();
    for field in [
        "model",
        "target_model",
        "endpoint",
        "outcome",
        "completion_tokens",
    ] {
        assert!(
            line[field].is_null() || line[field] == "-",
            "{field} is in the log with the switch off: {line}"
        );
    }
}
