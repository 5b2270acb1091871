//! `GET /v1/models` as the gateway answers it: the served names it knows (each `modelName`,
//! marked with its pool), then, when the gateway also asked a pod, what that pod lists (its base
//! model and loaded adapters) that is not listed already. OpenAI clients and UIs list models before
//! they send; without this they would see only the pod's own names, not `lora-request`.

use crate::config::Config;
use serde_json::{json, Value};

/// The list's JSON. `pod_list`: a pod's own `/v1/models` answer (ignored unless it is an OpenAI
/// list); `created`: the Unix time to give the gateway's entries.
pub fn models_list(config: &Config, pod_list: Option<&[u8]>, created: u64) -> String {
    let mut data: Vec<Value> = config
        .models
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": created,
                "owned_by": "inference-router",
                "pool": config.pools.get(m.pool).map(|p| p.name.as_str()),
            })
        })
        .collect();
    let pod: Option<Value> = pod_list.and_then(|b| serde_json::from_slice(b).ok());
    let pod_models = pod
        .as_ref()
        .and_then(|v| v.get("data"))
        .and_then(Value::as_array);
    for entry in pod_models.into_iter().flatten() {
        let Some(id) = entry.get("id").and_then(Value::as_str) else {
            continue;
        };
        if !data
            .iter()
            .any(|d| d.get("id").and_then(Value::as_str) == Some(id))
        {
            data.push(entry.clone());
        }
    }
    json!({"object": "list", "data": data}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const POD: &[u8] = include_bytes!("../../../testdata/vllm-0.32-cpu/models.json");

    fn config() -> Config {
        Config::parse(
            br#"{"pools":[{"name":"p","endpoints":[]}],
                 "models":[{"modelName":"lora-request","poolRef":"p"},
                           {"modelName":"sql-lora","poolRef":"p"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn served_names_first_then_the_pods_own_without_repeats() {
        let out: Value = serde_json::from_str(&models_list(&config(), Some(POD), 7)).unwrap();
        let ids: Vec<&str> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![
                "lora-request",
                "sql-lora",
                "tiny-llama",
                "tweet-summary",
                "travel-helper"
            ]
        );
        assert_eq!(out["data"][0]["pool"], "p");
        assert_eq!(out["data"][0]["created"], 7);
        assert_eq!(
            out["data"][2]["owned_by"], "vllm",
            "the pod's entries as it sent them"
        );
    }

    #[test]
    fn without_or_with_a_bad_pod_list_only_the_served_names() {
        for pod in [None, Some(&b"<html>"[..]), Some(&br#"{"data":7}"#[..])] {
            let out: Value = serde_json::from_str(&models_list(&config(), pod, 1)).unwrap();
            assert_eq!(out["object"], "list");
            assert_eq!(out["data"].as_array().unwrap().len(), 2);
        }
    }
}
