//! An invalid configuration makes Envoy refuse to start, and the plugin's log line names the
//! offending field (docs/contract.md section 3).

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use wasm_tests::envoy::{Envoy, EnvoySpec};

fn valid() -> Value {
    json!({
        "pools": [{"name": "pool-a", "endpoints": ["127.0.0.11:18001", "127.0.0.12:18001"]}],
        "models": [{"modelName": "lora-request", "poolRef": "pool-a", "targetModels": [
            {"name": "sql-lora", "weight": 70}, {"name": "tweet-summary", "weight": 30}]}],
        "defaultPool": "pool-a",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
        "sessionHeader": "x-session-id",
        "maxRequestBodyBytes": 1048576,
    })
}

/// Start Envoy with `config`; it must exit non-zero, with a plugin log line naming `field`.
async fn assert_refused(config: String, field: &str) {
    let failure = match Envoy::try_start(&EnvoySpec::raw_plugin(config.clone())).await {
        Ok(_) => panic!("Envoy accepted an invalid configuration ({field}): {config}"),
        Err(f) => f,
    };
    assert!(
        failure.status.is_some_and(|s| !s.success()),
        "Envoy did not exit with an error status for {field}: {failure}"
    );
    let named = failure
        .log
        .lines()
        .any(|l| l.contains("wasm log") && l.contains(field));
    assert!(
        named,
        "no plugin log line names {field:?}:\n{}",
        failure.log
    );
}

fn with(mutate: impl FnOnce(&mut Value)) -> String {
    let mut config = valid();
    mutate(&mut config);
    config.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valid_baseline_starts() {
    let envoy = Envoy::start(&EnvoySpec::plugin(&valid())).await;
    assert!(envoy.is_ok(), "{:#}", envoy.err().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pool_reference() {
    assert_refused(
        with(|c| c["models"][0]["poolRef"] = json!("no-such-pool")),
        "models[0].poolRef",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_model_name() {
    let config = with(|c| {
        let copy = c["models"][0].clone();
        c["models"].as_array_mut().unwrap().push(copy);
    });
    assert_refused(config, "models[1].modelName").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoint() {
    assert_refused(
        with(|c| c["pools"][0]["endpoints"][1] = json!("nope")),
        "pools[0].endpoints[1]",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_weight() {
    let config = with(|c| c["models"][0]["targetModels"][1]["weight"] = json!(-5));
    assert_refused(config, "models[0].targetModels[1].weight").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_strategy() {
    assert_refused(
        with(|c| c["scheduling"]["strategy"] = json!("FASTEST")),
        "scheduling.strategy",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scheduling_settings() {
    assert_refused(
        with(|c| c["scheduling"] = json!({"strategy": "DEFAULT", "scorers": {"queue": -2}})),
        "scheduling.scorers.queue",
    )
    .await;
    assert_refused(
        with(|c| {
            c["scheduling"] = json!({"strategy": "PREFIX_CACHE", "saturation": {"kvCacheUsage": 2}})
        }),
        "scheduling.saturation.kvCacheUsage",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_default_pool_and_unknown_models_mode() {
    assert_refused(with(|c| c["defaultPool"] = json!("nowhere")), "defaultPool").await;
    assert_refused(
        with(|c| c["unknownModels"] = json!("drop")),
        "unknownModels",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type() {
    assert_refused(
        with(|c| c["pools"][0]["endpoints"] = json!("127.0.0.11:18001")),
        "pools[0].endpoints",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_json_at_all() {
    // No field to name: the plugin names the document.
    assert_refused("pools: [oops".to_string(), "configuration").await;
}
