use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const CONTRACT_EXAMPLE: &str = r#"{
  "pools": [
    {
      "name": "vllm-llama2-7b-pool",
      "endpoints": ["10.0.0.11:8000", "10.0.0.12:8000"],
      "engine": "vllm",
      "metrics": { "path": "/metrics", "port": null, "intervalMs": 100, "timeoutMs": 1000, "stalenessMs": 2000 }
    }
  ],
  "models": [
    {
      "modelName": "lora-request",
      "poolRef": "vllm-llama2-7b-pool",
      "criticality": "Standard",
      "targetModels": [ { "name": "tweet-summary", "weight": 50 }, { "name": "sql-lora", "weight": 50 } ]
    }
  ],
  "defaultPool": "vllm-llama2-7b-pool",
  "unknownModels": "passthrough",
  "scheduling": { "strategy": "LEAST_REQUEST" },
  "collector": { "mode": "service" },
  "destinationHeader": "x-gateway-destination-endpoint",
  "sessionHeader": "x-session-id",
  "maxRequestBodyBytes": 8388608,
  "failureMode": "FailOpen"
}"#;

fn refused(doc: &str) -> ConfigError {
    match Config::parse(doc.as_bytes()) {
        Ok(_) => panic!("accepted: {doc}"),
        Err(e) => e,
    }
}

#[test]
fn the_contract_example_parses() {
    let c = Config::parse(CONTRACT_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(c.pools.len(), 1);
    assert_eq!(c.pools[0].cluster, "vllm-llama2-7b-pool");
    assert_eq!(c.pools[0].endpoints, ["10.0.0.11:8000", "10.0.0.12:8000"]);
    assert_eq!(c.pools[0].metrics.interval_ms, 100);
    let m = c.model("lora-request").unwrap();
    assert_eq!(m.pool, 0);
    assert_eq!(m.criticality, Criticality::Standard);
    assert_eq!(
        m.targets.as_ref().unwrap().names(),
        ["tweet-summary", "sql-lora"]
    );
    assert_eq!(c.default_pool, Some(0));
    assert_eq!(c.strategy, Strategy::LeastRequest);
    assert_eq!(c.session_header.as_deref(), Some("x-session-id"));
    assert_eq!(c.failure_mode, FailureMode::FailOpen);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = Config::parse(br#"{"pools":[{"name":"p","endpoints":["[::1]:80"]}]}"#).unwrap();
    assert_eq!(c.destination_header, DEFAULT_DESTINATION_HEADER);
    assert_eq!(c.max_request_body_bytes, DEFAULT_MAX_REQUEST_BODY_BYTES);
    assert_eq!(c.unknown_models, UnknownModels::Passthrough);
    assert_eq!(c.collector, CollectorMode::Service);
    assert_eq!(c.pools[0].engine, Engine::Vllm);
    assert_eq!(c.pools[0].endpoints, ["[::1]:80"]);
    assert_eq!(c.session_header, None);
    assert_eq!(c.strategy, Strategy::Default);
    assert_eq!(c.pools[0].metrics.max_page_bytes, DEFAULT_MAX_PAGE_BYTES);
    assert!(
        c.access_log_fields,
        "the access log's fields are on unless switched off"
    );
    let off = Config::parse(
        br#"{"pools":[{"name":"p","endpoints":["[::1]:80"]}],"accessLogFields":false}"#,
    )
    .unwrap();
    assert!(!off.access_log_fields);
}

#[test]
fn each_error_names_its_field() {
    let cases: &[(&str, &str)] = &[
        ("{", "configuration"),
        ("[]", "configuration"),
        (r#"{"pools":[{"name":"p"}],"bogus":1}"#, "bogus"),
        (
            r#"{"pools":[{"name":"p","endpoints":["nope"]}]}"#,
            "pools[0].endpoints[0]",
        ),
        (
            r#"{"pools":[{"name":"p","endpoints":["host:80"]}]}"#,
            "pools[0].endpoints[0]",
        ),
        (
            r#"{"pools":[{"name":"p","endpoints":["1.2.3.4:0"]}]}"#,
            "pools[0].endpoints[0]",
        ),
        (
            r#"{"pools":[{"name":"p","endpoints":["1.2.3.4:1","1.2.3.4:1"]}]}"#,
            "pools[0].endpoints[1]",
        ),
        (r#"{"pools":[{"name":"p"},{"name":"p"}]}"#, "pools[1].name"),
        (
            r#"{"pools":[{"name":"p","engine":"tgi"}]}"#,
            "pools[0].engine",
        ),
        (
            r#"{"pools":[{"name":"p","discovery":{}}]}"#,
            "pools[0].discovery",
        ),
        (
            r#"{"pools":[{"name":"p","metrics":{"intervalMs":0}}]}"#,
            "pools[0].metrics.intervalMs",
        ),
        (
            r#"{"pools":[{"name":"p","endpoints":[3]}]}"#,
            "pools[0].endpoints[0]",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"x"}]}"#,
            "models[0].poolRef",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m"}]}"#,
            "models[0].poolRef",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"p"},{"modelName":"m","poolRef":"p"}]}"#,
            "models[1].modelName",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"p","targetModels":[{"name":"a","weight":-1}]}]}"#,
            "models[0].targetModels[0].weight",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"p","targetModels":[{"name":"a","weight":1.5}]}]}"#,
            "models[0].targetModels[0].weight",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"p","targetModels":[{"name":"a","weight":1},{"name":"a","weight":1}]}]}"#,
            "models[0].targetModels[1].name",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"p","targetModels":[]}]}"#,
            "models[0].targetModels",
        ),
        (
            r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"p","criticality":"High"}]}"#,
            "models[0].criticality",
        ),
        (r#"{"defaultPool":"x"}"#, "defaultPool"),
        (r#"{"unknownModels":"drop"}"#, "unknownModels"),
        (
            r#"{"scheduling":{"strategy":"FASTEST"}}"#,
            "scheduling.strategy",
        ),
        (r#"{"collector":{"mode":"sidecar"}}"#, "collector.mode"),
        (
            r#"{"pools":[{"name":"p","metrics":{"names":{"queueLength":"x"}}}]}"#,
            "pools[0].metrics.names",
        ),
        (
            r#"{"scheduling":{"scorers":{"queue":-1}}}"#,
            "scheduling.scorers.queue",
        ),
        (
            r#"{"scheduling":{"saturation":{"kvCacheUsage":1.5}}}"#,
            "scheduling.saturation.kvCacheUsage",
        ),
        (r#"{"scheduling":{"bogus":1}}"#, "scheduling.bogus"),
        (r#"{"destinationHeader":"bad header"}"#, "destinationHeader"),
        (r#"{"sessionHeader":""}"#, "sessionHeader"),
        (r#"{"maxRequestBodyBytes":0}"#, "maxRequestBodyBytes"),
        (r#"{"maxRequestBodyBytes":-5}"#, "maxRequestBodyBytes"),
        (r#"{"failureMode":"FailSoft"}"#, "failureMode"),
    ];
    for (doc, field) in cases {
        let e = refused(doc);
        assert_eq!(e.field, *field, "{doc}: {e}");
        assert!(!e.message.is_empty());
    }
}

#[test]
fn discovery_defaults() {
    let c =
        Config::parse(br#"{"pools":[{"name":"p","discovery":{"cluster":"vllm-eds"}}]}"#).unwrap();
    let d = c.pools[0].discovery.as_ref().unwrap();
    assert_eq!(d.cluster, "vllm-eds");
    assert_eq!(d.admin_cluster, "envoy-admin");
    assert_eq!(d.admin_path, "/clusters?format=json");
    assert_eq!(d.refresh_ms, 5000);
    assert!(c.pools[0].endpoints.is_empty());
}

#[test]
fn default_and_prefix_cache_are_accepted() {
    for (doc, strategy) in [
        (
            r#"{"scheduling":{"strategy":"DEFAULT"}}"#,
            Strategy::Default,
        ),
        (
            r#"{"scheduling":{"strategy":"PREFIX_CACHE"}}"#,
            Strategy::PrefixCache,
        ),
    ] {
        match Config::parse(doc.as_bytes()) {
            Ok(c) => assert_eq!(c.strategy, strategy, "{doc}"),
            Err(e) => panic!("{doc}: {e}"),
        }
    }
}

#[test]
fn mixed_weighted_and_unweighted_targets_are_refused() {
    let e = refused(
        r#"{"pools":[{"name":"p"}],"models":[{"modelName":"m","poolRef":"p","targetModels":[{"name":"a","weight":1},{"name":"b"}]}]}"#,
    );
    assert_eq!(e.field, "models[0].targetModels");
}

#[test]
fn headers_are_lowercased_and_model_without_pool_uses_default() {
    let c = Config::parse(
        br#"{"pools":[{"name":"p"}],"defaultPool":"p","models":[{"modelName":"m"}],
             "destinationHeader":"X-Dest","sessionHeader":"X-Session-Id"}"#,
    )
    .unwrap();
    assert_eq!(c.destination_header, "x-dest");
    assert_eq!(c.session_header.as_deref(), Some("x-session-id"));
    assert_eq!(c.model("m").unwrap().pool, 0);
}

#[test]
fn times_and_the_prefix_index_are_bounded() {
    let too_long = r#"{"pools":[{"name":"p","endpoints":[],"metrics":{"intervalMs":600001}}]}"#;
    assert_eq!(
        Config::parse(too_long.as_bytes()).unwrap_err().field,
        "pools[0].metrics.intervalMs"
    );
    for pages in [1023, 64 * 1024 * 1024 + 1] {
        let doc = format!(
            r#"{{"pools":[{{"name":"p","endpoints":[],"metrics":{{"maxPageBytes":{pages}}}}}]}}"#
        );
        assert_eq!(
            Config::parse(doc.as_bytes()).unwrap_err().field,
            "pools[0].metrics.maxPageBytes"
        );
    }
    let gate = r#"{"gate":{"timeoutMs":0}}"#;
    assert_eq!(
        Config::parse(gate.as_bytes()).unwrap_err().field,
        "gate.timeoutMs"
    );
    let eps: Vec<String> = (0..100).map(|i| format!("\"10.0.0.{i}:80\"")).collect();
    let big = format!(
        r#"{{"pools":[{{"name":"p","endpoints":[{}]}}],
            "scheduling":{{"strategy":"PREFIX_CACHE","prefix":{{"capacity":1000000}}}}}}"#,
        eps.join(",")
    );
    assert_eq!(
        Config::parse(big.as_bytes()).unwrap_err().field,
        "scheduling.prefix.capacity"
    );
}

#[test]
fn instances_default_to_the_pools_and_can_be_named() {
    let a = Config::parse(br#"{"pools":[{"name":"a","endpoints":[]}]}"#).unwrap();
    let b = Config::parse(br#"{"pools":[{"name":"b","endpoints":[]}]}"#).unwrap();
    let a2 = Config::parse(br#"{"pools":[{"name":"a","endpoints":["10.0.0.1:80"]}]}"#).unwrap();
    assert_ne!(a.instance, b.instance);
    assert_eq!(
        a.instance, a2.instance,
        "same pool, same cluster: same instance"
    );
    assert_ne!(
        a.pools_fingerprint, a2.pools_fingerprint,
        "but not the same pools"
    );
    let named = Config::parse(br#"{"instanceName":"team-a"}"#).unwrap();
    assert_eq!(named.instance, "team-a");
    assert!(Config::parse(br#"{"instanceName":"a/b"}"#).is_err());
}

#[test]
fn objectives_rewrites_and_flow_control() {
    let c = Config::parse(
        br#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"]},{"name":"q","endpoints":[]}],
             "defaultPool":"p",
             "objectives":[{"name":"premium","priority":10},{"name":"batch","priority":-5,"poolRef":"q"}],
             "defaultObjective":"premium",
             "models":[{"modelName":"chat","objective":"premium"},
                       {"modelName":"old","criticality":"Sheddable"}],
             "modelRewrites":[{"name":"canary","poolRef":"p","rules":[
                 {"matches":[{"model":{"type":"Exact","value":"food-review"}}],
                  "targets":[{"modelRewrite":"food-review-v1","weight":90},
                             {"modelRewrite":"food-review-v2","weight":10}]},
                 {"matches":[],"targets":[{"modelRewrite":"base"}]}]}],
             "flowControl":{"enabled":true,"ttlMs":30000}}"#,
    )
    .unwrap();
    assert_eq!(c.default_priority, 10);
    let chat = c.model("chat").unwrap();
    assert_eq!(
        (chat.priority, chat.criticality),
        (10, Criticality::Critical)
    );
    let old = c.model("old").unwrap();
    assert_eq!(
        (old.priority, old.criticality),
        (-1, Criticality::Sheddable)
    );
    // An exact rewrite serves its name like a models[] entry, ranked by the default objective.
    let food = c.model("food-review").unwrap();
    assert_eq!((food.pool, food.priority), (0, 10));
    assert_eq!(
        food.targets.as_ref().unwrap().names(),
        ["food-review-v1", "food-review-v2"]
    );
    assert_eq!(
        c.rewrite_fallbacks[0].as_ref().map(|t| t.names().to_vec()),
        Some(vec!["base".to_string()])
    );
    assert!(c.rewrite_fallbacks[1].is_none());
    assert_eq!(
        c.objective_header.as_deref(),
        Some("x-gateway-inference-objective")
    );
    assert_eq!(
        c.fairness_header.as_deref(),
        Some("x-gateway-inference-fairness-id")
    );
    let flow = c.flow_control.unwrap();
    assert_eq!((flow.ttl_ms, flow.no_endpoint_ttl_ms), (30000, 10000));
    // An objective bound to pool q does not apply to p.
    assert!(find_objective(&c.objectives, b"batch", Some(0)).is_none());
    assert_eq!(
        find_objective(&c.objectives, b"batch", Some(1)).map(|o| o.priority),
        Some(-5)
    );
}

#[test]
fn objective_and_rewrite_errors_name_their_field() {
    let base = r#""pools":[{"name":"p","endpoints":[]}],"defaultPool":"p""#;
    for (extra, field) in [
        (
            r#""models":[{"modelName":"m","objective":"x"}]"#,
            "models[0].objective",
        ),
        (
            r#""objectives":[{"name":"o"}],"models":[{"modelName":"m","objective":"o","criticality":"Critical"}]"#,
            "models[0].objective",
        ),
        (
            r#""objectives":[{"name":"o","priority":3000000000}]"#,
            "objectives[0].priority",
        ),
        (
            r#""objectives":[{"name":"o"},{"name":"o"}]"#,
            "objectives[1].name",
        ),
        (r#""defaultObjective":"none""#, "defaultObjective"),
        (
            r#""models":[{"modelName":"m"}],"modelRewrites":[{"rules":[{"matches":[{"model":{"value":"m"}}],"targets":[{"modelRewrite":"x"}]}]}]"#,
            "modelRewrites[0].rules[0].matches[0].model.value",
        ),
        (
            r#""modelRewrites":[{"rules":[{"matches":[{"model":{"type":"RegularExpression","value":"m.*"}}],"targets":[{"modelRewrite":"x"}]}]}]"#,
            "modelRewrites[0].rules[0].matches[0].model.type",
        ),
        (
            r#""modelRewrites":[{"rules":[{"matches":[],"targets":[{"modelRewrite":"x"}]},{"targets":[{"modelRewrite":"y"}]}]}]"#,
            "modelRewrites[0].rules[1].matches",
        ),
        (
            r#""modelRewrites":[{"rules":[{"matches":[],"targets":[{"modelRewrite":"x","weight":-1}]}]}]"#,
            "modelRewrites[0].rules[0].targets[0].weight",
        ),
        (
            r#""modelRewrites":[{"poolRef":"nope","rules":[]}]"#,
            "modelRewrites[0].poolRef",
        ),
        (
            r#""flowControl":{"enabled":true,"ttlMs":0}"#,
            "flowControl.ttlMs",
        ),
        (
            r#""flowControl":{"enabled":true,"maxRequestsPerBand":0}"#,
            "flowControl.maxRequestsPerBand",
        ),
        (r#""objectiveHeader":"bad header""#, "objectiveHeader"),
    ] {
        let doc = format!("{{{base},{extra}}}");
        assert_eq!(refused(&doc).field, field, "{extra}");
    }
    // Headers can be turned off; flow control is off unless enabled.
    let c = Config::parse(
        format!(
            r#"{{{base},"objectiveHeader":"","fairnessHeader":"","flowControl":{{"ttlMs":5}}}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!((c.objective_header, c.fairness_header), (None, None));
    assert!(c.flow_control.is_none());
}
