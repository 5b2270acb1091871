//! The shipped observability examples on a real Prometheus (Debian's package, installed when
//! missing) in front of the real Envoy with the plugin and simulated vLLM 0.32 pods:
//!
//! - promtool accepts `examples/prometheus/` (configs, rules) and its rule unit tests pass;
//! - token counters in Prometheus equal the `usage` the pods returned, per model and target
//!   model, streaming and not;
//! - every PromQL expression of both Grafana dashboards and of the rules parses, and returns data
//!   unless listed in [`NO_DATA_HERE`] with the reason;
//! - the alerts the stack can be driven into (saturation, shedding, a failing scrape, a full KV
//!   cache) go pending or firing;
//! - the Kubernetes scrape config's relabelling finds annotated pods and Istio proxies, and the
//!   Istio stats matcher regex of `examples/istio/stats.yaml` keeps the plugin's metrics.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../prometheus/mod.rs"]
mod prom;

use prom::{expand_grafana, Prometheus};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use wasm_tests::client::Client;
use wasm_tests::envoy::{Envoy, EnvoySpec};
use wasm_tests::sim::{endpoints, start_sims, MetricsFail, Pin, Sim, SimConfig};

const POOL: &str = "pool-a";
const GATEWAY_DASHBOARD: &str = "grafana/inference-gateway.json";
const ENGINE_DASHBOARD: &str = "grafana/vllm-engines.json";
/// What `$__rate_interval` becomes: the whole test's traffic stays inside it.
const RATE_WINDOW: &str = "5m";
/// Bound on waiting for Prometheus to show what the stack did (1 s scrapes and evaluations).
const SETTLE: Duration = Duration::from_secs(45);

/// Dashboard queries that have no data against this stack, legitimately: (dashboard, panel
/// title prefix, refId or "*", reason).
const NO_DATA_HERE: &[(&str, &str, &str, &str)] = &[
    (
        ENGINE_DASHBOARD,
        "SGLang",
        "*",
        "no SGLang server in the stack: the simulator is vLLM 0.32",
    ),
    (
        ENGINE_DASHBOARD,
        "Scheduler state",
        "C",
        "vllm:num_requests_swapped: V0 engines only, vLLM 0.32 no longer exports it",
    ),
];

/// Alerts the test does not drive, with the reason; every other alert must go pending/firing.
const NOT_DRIVEN: &[(&str, &str)] = &[
    (
        "InferenceTTFTSLOBreach",
        "the simulated pods answer in milliseconds, far under the 2 s SLO",
    ),
    (
        "InferenceRouterFailingOpen",
        "needs the collector gone while traffic flows",
    ),
    (
        "InferenceRouterUnavailable",
        "needs a pool without endpoints",
    ),
    (
        "InferenceFlowQueueWaitHigh",
        "held requests here wait at most the 200 ms ttlMs, far under the 10 s threshold",
    ),
];

fn no_data_reason(q: &prom::PanelQuery) -> Option<&'static str> {
    NO_DATA_HERE
        .iter()
        .find(|(d, title, r, _)| {
            *d == q.dashboard && q.panel.starts_with(title) && (*r == "*" || *r == q.ref_id)
        })
        .map(|(_, _, _, why)| *why)
}

async fn installed() {
    tokio::task::spawn_blocking(prom::ensure_installed)
        .await
        .unwrap()
        .unwrap();
}

/// Poll `f` every 250 ms until it returns Ok, at most `timeout`; the last error otherwise.
async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn fast_sim() -> SimConfig {
    SimConfig {
        time_scale: 0.05,
        ..SimConfig::default()
    }
}

// ---- promtool on the shipped files --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_shipped_configs_and_the_rule_tests_pass() {
    installed().await;
    let dir = prom::examples_dir().join("prometheus");
    let dir = dir.as_path();
    prom::promtool(dir, &["check", "rules", "alerts.yml"]).unwrap();
    prom::promtool(dir, &["check", "config", "prometheus.yml"]).unwrap();
    let out = prom::promtool(dir, &["test", "rules", "alerts_test.yml"]).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
    // kubernetes-scrape.yml: Debian builds Prometheus without Kubernetes service discovery, so
    // promtool refuses kubernetes_sd_configs here; the relabelling test below checks it with
    // the discovery replaced by equivalent static targets.

    // Every alert has unit tests (promtool itself checks what they expect).
    let rules = prom::read_example("prometheus/alerts.yml");
    let tests = prom::read_example("prometheus/alerts_test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for a in alerts {
        let firing = tests.matches(&format!("alertname: {a}\n")).count();
        assert!(firing >= 1, "alerts_test.yml has no test of {a}");
    }
}

// ---- The stack ----------------------------------------------------------------------------

fn plugin_config(eps: &[String]) -> Value {
    json!({
        "pools": [{"name": POOL, "endpoints": eps, "metrics": {"intervalMs": 100}}],
        "models": [
            {"modelName": "tiny-llama", "poolRef": POOL},
            {"modelName": "lora-request", "poolRef": POOL,
             "targetModels": [{"name": "sql-lora", "weight": 50},
                              {"name": "tweet-summary", "weight": 50}]},
            {"modelName": "batch", "poolRef": POOL, "criticality": "Sheddable",
             "targetModels": [{"name": "travel-helper", "weight": 1}]},
        ],
        "defaultPool": POOL,
        "unknownModels": "reject",
        "scheduling": {"strategy": "DEFAULT"},
        // Flow control on, with a short wait: Sheddable requests to the saturated pool are held,
        // then answered 429 (ttl_expired), so its panels and alerts have data too.
        "flowControl": {"enabled": true, "ttlMs": 200},
    })
}

/// Tokens the pods reported, per (model asked for, model that served).
type Usage = BTreeMap<(String, String), (u64, u64)>;

/// One request through the gateway; records the usage the pod returned.
async fn infer(client: &Client, model: &str, chat: bool, stream: bool, n: u32, usage: &mut Usage) {
    let mut body = if chat {
        json!({"model": model, "max_tokens": n,
               "messages": [{"role": "user", "content": format!("Summarise item {n} in a tweet")}]})
    } else {
        json!({"model": model, "max_tokens": n, "prompt": format!("SELECT {n} rows from the orders table")})
    };
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let (served, u) = if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let mut s = client
            .post_streaming(path, body.to_string(), &[])
            .await
            .unwrap();
        assert_eq!(s.status, 200, "{model} {path} (stream)");
        let events = s.rest_events(wasm_tests::PROMPT).await.unwrap();
        let chunks: Vec<Value> = events
            .iter()
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let served = chunks[0]["model"].as_str().unwrap().to_string();
        let u = chunks
            .iter()
            .rev()
            .find(|c| c["usage"].is_object())
            .unwrap_or_else(|| panic!("no usage chunk in {events:?}"))["usage"]
            .clone();
        (served, u)
    } else {
        let r = client.post(path, body.to_string(), &[]).await.unwrap();
        assert_eq!(r.status, 200, "{model} {path}: {}", r.text());
        let v = r.json().unwrap();
        (v["model"].as_str().unwrap().to_string(), v["usage"].clone())
    };
    let e = usage.entry((model.to_string(), served)).or_default();
    e.0 += u["prompt_tokens"].as_u64().unwrap();
    e.1 += u["completion_tokens"].as_u64().unwrap();
}

/// The shipped prometheus.yml with its targets replaced by this stack's.
fn prometheus_yml(envoy: &Envoy, eps: &[String]) -> String {
    let text = prom::fast_intervals(&prom::read_example("prometheus/prometheus.yml"));
    let text = prom::replace_once(
        &text,
        "[\"127.0.0.1:9901\"]",
        &format!("[\"{}\"]", envoy.admin()),
    );
    let pods = r#"["127.0.0.11:8000", "127.0.0.12:8000", "127.0.0.13:8000", "127.0.0.14:8000"]"#;
    let ours: Vec<String> = eps.iter().map(|e| format!("\"{e}\"")).collect();
    prom::replace_once(&text, pods, &format!("[{}]", ours.join(", ")))
}

async fn wait_gauge(envoy: &Envoy, name: &str, endpoint: &str, want: f64) {
    let needle = format!("{name}{{pool=\"{POOL}\",endpoint=\"{endpoint}\"}} ");
    eventually(wasm_tests::PROMPT, || async {
        let text = envoy
            .admin_get("/stats/prometheus")
            .await
            .map_err(|e| e.to_string())?;
        let v: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok());
        (v == Some(want))
            .then_some(())
            .ok_or(format!("{name} of {endpoint} is {v:?}, want {want}"))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_work_on_a_real_prometheus_in_front_of_the_gateway() {
    installed().await;
    let sims = start_sims(3, &fast_sim()).await.unwrap();
    let eps = endpoints(&sims);
    let envoy = Envoy::start(&EnvoySpec::plugin(&plugin_config(&eps)))
        .await
        .unwrap();
    for e in &eps {
        wait_gauge(&envoy, "inference_router_endpoint_up", e, 1.0).await;
    }
    let prometheus = Prometheus::start(
        &[
            ("prometheus.yml", prometheus_yml(&envoy, &eps)),
            ("alerts.yml", prom::read_example("prometheus/alerts.yml")),
        ],
        "prometheus.yml",
    )
    .await
    .unwrap();

    // Traffic, spread over several scrapes so every counter also rises after it first appears
    // (Prometheus' rate() counts from a series' first sample). Each round waits until Prometheus
    // has scraped the previous one, histograms included (Envoy shows them after its 1 s stats
    // flush): on a loaded machine a slow first scrape would otherwise see all of it at once.
    let client = envoy.client().unwrap();
    let mut usage = Usage::new();
    let mut seen = 0.0;
    for round in 0..3u32 {
        seen = eventually(SETTLE, || async {
            let total = prometheus
                .query("sum(inference_router_request_duration_ms_count)")
                .await
                .map_err(|e| e.to_string())?
                .first()
                .map_or(0.0, |s| s.value);
            // The first round waits for Prometheus to scrape the gateway at all.
            let ready = if round == 0 {
                !prometheus
                    .query("up{job=\"inference-gateway\"} == 1")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_empty()
            } else {
                total > seen
            };
            ready.then_some(total).ok_or(format!(
                "Prometheus has not scraped round {round} yet: {total}"
            ))
        })
        .await
        .unwrap();
        for chat in [false, true] {
            for stream in [false, true] {
                for model in ["tiny-llama", "lora-request", "batch"] {
                    let n = 4 + round * 3 + u32::from(chat) + 2 * u32::from(stream);
                    infer(&client, model, chat, stream, n, &mut usage).await;
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        }
        let r = client.completion("no-such-model", &[]).await.unwrap();
        assert_eq!(r.status, 404, "unknown model with unknownModels: reject");
    }
    eprintln!("usage the pods returned: {usage:?}");

    // Saturate the pool (every queue 50, KV 95 %): Sheddable requests get 429.
    for s in &sims {
        s.pin(Pin {
            waiting: Some(50),
            kv: Some(0.95),
            ..Pin::default()
        })
        .await;
    }
    for e in &eps {
        wait_gauge(&envoy, "inference_router_endpoint_queue_size", e, 50.0).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..12 {
        let r = client.completion("batch", &[]).await.unwrap();
        assert_eq!(
            r.status,
            429,
            "Sheddable request to a saturated pool: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One pod's /metrics fails: up = 0, scrape errors rise.
    // The pod with the fewest adapter requests: LoRA affinity may have sent every adapter request
    // to one pod, whose `vllm:lora_requests_info` the engine dashboard must still see.
    let mut adapter_requests = Vec::new();
    for s in &sims {
        let st = s.stats().await;
        let base = &s.config().base_model;
        let n: u64 = st
            .requests_by_model
            .iter()
            .filter(|(m, _)| *m != base)
            .map(|(_, n)| n)
            .sum();
        adapter_requests.push(n);
    }
    let down = (0..sims.len())
        .min_by_key(|i| adapter_requests[*i])
        .unwrap();
    sims[down].set_metrics_fail(MetricsFail::Status500).await;
    wait_gauge(&envoy, "inference_router_endpoint_up", &eps[down], 0.0).await;

    let mut failures: Vec<String> = Vec::new();

    // (b) Every dashboard expression parses, and returns data unless listed in NO_DATA_HERE.
    let mut queries = prom::panel_queries(GATEWAY_DASHBOARD);
    queries.extend(prom::panel_queries(ENGINE_DASHBOARD));
    assert!(queries.len() > 40, "{} dashboard queries", queries.len());
    let deadline = Instant::now() + SETTLE;
    for q in &queries {
        let expr = expand_grafana(&q.expr, RATE_WINDOW);
        let what = format!(
            "{} / {:?} {} ({})",
            q.dashboard, q.panel, q.ref_id, q.legend
        );
        let reason = no_data_reason(q);
        let result = eventually(
            deadline.saturating_duration_since(Instant::now()),
            || async {
                let samples = prometheus
                    .query(&expr)
                    .await
                    .map_err(|e| format!("does not run: {e}"))?;
                let finite = samples.iter().any(|s| s.value.is_finite());
                match (reason, finite) {
                    (Some(_), _) | (None, true) => Ok(samples),
                    (None, false) => {
                        Err(format!("no data ({} samples, none finite)", samples.len()))
                    }
                }
            },
        )
        .await;
        match (result, reason) {
            (Err(e), _) => failures.push(format!("(b) {what}: {e}\n    {expr}")),
            (Ok(samples), Some(why)) if !samples.is_empty() => failures.push(format!(
                "(b) {what} is listed as having no data here ({why}), yet returns {samples:?}"
            )),
            _ => {}
        }
    }
    for file in [GATEWAY_DASHBOARD, ENGINE_DASHBOARD] {
        for (var, expr) in prom::variable_queries(file) {
            let expr = expand_grafana(&expr, RATE_WINDOW);
            match prometheus.query(&expr).await {
                Ok(s) if !s.is_empty() => {}
                Ok(_) => failures.push(format!("(b) {file} variable ${var}: no values: {expr}")),
                Err(e) => failures.push(format!("(b) {file} variable ${var}: {e}: {expr}")),
            }
        }
    }

    // (b) Every rule is loaded, evaluates without error, and its expression runs as a query;
    // recording rules return data; the alerts this stack was driven into are pending or firing.
    let rules = eventually(SETTLE, || async {
        let rules = prometheus.rules().await.map_err(|e| e.to_string())?;
        let alerting = |name: &str| -> Option<String> {
            rules
                .iter()
                .find(|r| r["name"] == name && r["type"] == "alerting")
                .and_then(|r| r["state"].as_str().map(str::to_string))
        };
        let mut missing = Vec::new();
        for r in rules.iter().filter(|r| r["type"] == "alerting") {
            let name = r["name"].as_str().unwrap_or_default();
            let driven = !NOT_DRIVEN.iter().any(|(n, _)| *n == name);
            let state = alerting(name).unwrap_or_default();
            if driven && state != "pending" && state != "firing" {
                missing.push(format!("{name} is {state:?}"));
            }
        }
        if missing.is_empty() && !rules.is_empty() {
            Ok(rules)
        } else {
            Err(format!("alerts not pending/firing: {missing:?}"))
        }
    })
    .await;
    let rules = match rules {
        Ok(r) => r,
        Err(e) => {
            failures.push(format!("(b) {e}"));
            prometheus.rules().await.unwrap()
        }
    };
    assert!(rules.len() >= 10, "rules loaded: {rules:?}");
    for r in &rules {
        let name = r["name"].as_str().unwrap_or_default();
        let expr = r["query"].as_str().unwrap_or_default();
        if r["health"] != "ok" {
            failures.push(format!(
                "(b) rule {name}: health {} {}",
                r["health"], r["lastError"]
            ));
        }
        if let Err(e) = prometheus.query(expr).await {
            failures.push(format!("(b) rule {name} does not run: {e}\n    {expr}"));
        }
        if r["type"] == "recording" {
            match prometheus.query(name).await {
                Ok(s) if s.iter().any(|s| s.value.is_finite()) => {}
                other => failures.push(format!("(b) recording rule {name}: no data: {other:?}")),
            }
        }
        if r["type"] == "alerting" {
            let why = NOT_DRIVEN.iter().find(|(n, _)| *n == name).map(|(_, w)| *w);
            eprintln!("alert {name}: {} ({})", r["state"], why.unwrap_or("driven"));
        }
    }

    // (a) Token counters equal the pods' usage, per model and target model.
    for (metric, pick) in [
        ("inference_router_prompt_tokens_total", 0usize),
        ("inference_router_completion_tokens_total", 1),
    ] {
        let want: BTreeMap<(String, String), f64> = usage
            .iter()
            .map(|(k, v)| (k.clone(), [v.0, v.1][pick] as f64))
            .collect();
        let expr = format!("sum by (model, target_model) ({metric}{{pool=\"{POOL}\"}})");
        let got = eventually(SETTLE, || async {
            let samples = prometheus.query(&expr).await.map_err(|e| e.to_string())?;
            let got: BTreeMap<(String, String), f64> = samples
                .iter()
                .map(|s| {
                    let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                    ((l("model"), l("target_model")), s.value)
                })
                .collect();
            if got == want {
                Ok(got)
            } else {
                Err(format!(
                    "{expr}: Prometheus has {got:?}, the pods returned {want:?}"
                ))
            }
        })
        .await;
        if let Err(e) = got {
            failures.push(format!("(a) {e}"));
        }
    }

    for s in &sims {
        s.unpin().await;
    }
    sims[down].set_metrics_fail(MetricsFail::Ok).await;
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- Kubernetes relabelling and Istio's stats matcher -------------------------------------

/// `kubernetes_sd_configs` of one job replaced by static targets carrying the labels Kubernetes
/// discovery would give these pods: the relabelling then runs exactly as in a cluster.
fn discovered(pods: &[(&str, Vec<(&str, String)>)]) -> String {
    let mut out = String::from("    static_configs:\n");
    for (target, labels) in pods {
        out.push_str(&format!(
            "      - targets: [\"{target}\"]\n        labels:\n"
        ));
        for (k, v) in labels {
            out.push_str(&format!("          {k}: \"{v}\"\n"));
        }
    }
    out
}

fn pod(name: &str, phase: &str, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut labels = vec![
        ("__meta_kubernetes_namespace", "default".to_string()),
        ("__meta_kubernetes_pod_name", name.to_string()),
        ("__meta_kubernetes_pod_phase", phase.to_string()),
    ];
    labels.extend(more.iter().cloned());
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_relabelling_finds_annotated_pods_and_istio_proxies() {
    installed().await;
    let sims: Vec<Sim> = start_sims(1, &fast_sim()).await.unwrap();
    let eps = endpoints(&sims);
    let sim = sims[0].addr();
    // The gateway as an Istio proxy with examples/istio/stats.yaml's matcher regex: only what it
    // includes is kept (and a plain `inference_router` prefix would include nothing).
    let spec = EnvoySpec::plugin(&plugin_config(&eps));
    let matcher = json!({"safe_regex": {"regex": "wasmcustom\\..*inference_router_.*"}});
    let (envoy, _dir) = start_with_matcher(&spec, matcher).await;
    let (plain_prefix, _dir2) =
        start_with_matcher(&spec, json!({"prefix": "inference_router"})).await;
    wait_gauge(&envoy, "inference_router_endpoint_up", &eps[0], 1.0).await;
    // Both collectors started together and scrape every 100 ms: the second one has too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = plain_prefix.admin_get("/stats/prometheus").await.unwrap();
    assert!(
        !text.contains("inference_router_"),
        "prefix `inference_router` matched wasm metrics after all:\n{text}"
    );
    drop(plain_prefix);

    let admin = envoy.admin();
    let annotated = |port: u16, path: Option<&str>, app: &str| {
        let mut l = vec![
            (
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
                "true".to_string(),
            ),
            (
                "__meta_kubernetes_pod_annotation_prometheus_io_port",
                port.to_string(),
            ),
            ("__meta_kubernetes_pod_label_app", app.to_string()),
        ];
        if let Some(p) = path {
            l.push((
                "__meta_kubernetes_pod_annotation_prometheus_io_path",
                p.to_string(),
            ));
        }
        l
    };
    // Pods' declared container port (:9) differs from the annotated one, as for a real pod
    // with several ports: the relabelling must move the address to the annotated port.
    let pods_job = discovered(&[
        (
            &format!("{}:9", sim.ip()),
            pod(
                "vllm-0",
                "Running",
                &annotated(sim.port(), None, "vllm-llama2-7b"),
            ),
        ),
        (
            "127.0.0.1:9",
            pod(
                "gateway-0",
                "Running",
                &annotated(admin.port(), Some("/stats/prometheus"), "inference-gateway"),
            ),
        ),
        ("127.0.0.1:9", pod("unannotated-0", "Running", &[])),
        (
            &format!("{}:9", sim.ip()),
            pod(
                "pending-0",
                "Pending",
                &annotated(sim.port(), None, "vllm-llama2-7b"),
            ),
        ),
    ]);
    // Envoy's admin stands in for Istio's :15090, which serves the same /stats/prometheus.
    let istio_job = discovered(&[
        (
            &admin.to_string(),
            pod(
                "gateway-istio-0",
                "Running",
                &[
                    (
                        "__meta_kubernetes_pod_container_port_name",
                        "istio-envoy-prom".to_string(),
                    ),
                    (
                        "__meta_kubernetes_pod_label_app",
                        "inference-gateway".to_string(),
                    ),
                ],
            ),
        ),
        (
            "127.0.0.1:9",
            pod(
                "gateway-istio-0",
                "Running",
                &[(
                    "__meta_kubernetes_pod_container_port_name",
                    "http".to_string(),
                )],
            ),
        ),
    ]);
    let sd = "    kubernetes_sd_configs:\n      - role: pod\n";
    let text = prom::fast_intervals(&prom::read_example("prometheus/kubernetes-scrape.yml"));
    let text = prom::with_job_section(&text, "kubernetes-pods", |s| {
        prom::replace_once(s, sd, &pods_job)
    });
    let text = prom::with_job_section(&text, "istio-envoy", |s| {
        prom::replace_once(s, sd, &istio_job)
    });
    let prometheus = Prometheus::start(
        &[
            ("prometheus.yml", text),
            ("alerts.yml", prom::read_example("prometheus/alerts.yml")),
        ],
        "prometheus.yml",
    )
    .await
    .unwrap();

    let want = vec![
        (
            "istio-envoy".to_string(),
            "gateway-istio-0".to_string(),
            format!("http://{admin}/stats/prometheus"),
        ),
        (
            "kubernetes-pods".to_string(),
            "gateway-0".to_string(),
            format!("http://127.0.0.1:{}/stats/prometheus", admin.port()),
        ),
        (
            "kubernetes-pods".to_string(),
            "vllm-0".to_string(),
            format!("http://{sim}/metrics"),
        ),
    ];
    // Discovery results reach the scrape manager a few seconds after start.
    let targets = eventually(SETTLE, || async {
        let targets = prometheus.targets().await.map_err(|e| e.to_string())?;
        let mut active: Vec<(String, String, String)> = targets["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let l = |k: &str| t["labels"][k].as_str().unwrap_or_default().to_string();
                (
                    l("job"),
                    l("pod"),
                    t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        active.sort();
        if active == want {
            Ok(targets)
        } else {
            Err(format!("active targets {active:?}, want {want:?}"))
        }
    })
    .await
    .unwrap();
    let dropped = targets["droppedTargets"].as_array().unwrap().len();
    assert_eq!(
        dropped, 3,
        "dropped: unannotated, pending, non-Envoy port: {targets}"
    );

    // Scraped, with the labels the relabelling sets and, through the Istio-style matcher, the
    // plugin's metrics with their stats_tags labels (the sidecar job keeps only those families).
    let checks = [
        r#"vllm:num_requests_running{job="kubernetes-pods",namespace="default",pod="vllm-0",app="vllm-llama2-7b"}"#.to_string(),
        format!(
            "inference_router_endpoint_up{{job=\"istio-envoy\",pod=\"gateway-istio-0\",pool=\"{POOL}\",endpoint=\"{}\"}} == 1",
            eps[0]
        ),
        format!(
            "inference_router_endpoint_queue_size{{job=\"kubernetes-pods\",pod=\"gateway-0\",pool=\"{POOL}\",endpoint=\"{}\"}}",
            eps[0]
        ),
    ];
    for expr in &checks {
        eventually(SETTLE, || async {
            let s = prometheus.query(expr).await.map_err(|e| e.to_string())?;
            (!s.is_empty())
                .then_some(())
                .ok_or(format!("no data: {expr}"))
        })
        .await
        .unwrap();
    }
    let others = prometheus
        .query(r#"count({job="istio-envoy", __name__!~"inference_router_.*|istio_.*|envoy_server_.*|envoy_cluster_upstream_rq_.*|up|scrape_.*"})"#)
        .await
        .unwrap();
    assert!(
        others.is_empty(),
        "istio-envoy kept other families: {others:?}"
    );
}

/// The plugin's Envoy with `stats_config.stats_matcher` including only `prefix` (what Istio's
/// `proxyStatsMatcher.inclusionPrefixes` generates).
async fn start_with_matcher(spec: &EnvoySpec, pattern: Value) -> (Envoy, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("envoy-istio-")
        .tempdir()
        .unwrap();
    let mut bootstrap = spec.render(&dir.path().join("access.log")).unwrap();
    bootstrap["stats_config"]["stats_matcher"] = json!({"inclusion_list": {"patterns": [pattern]}});
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    let envoy = Envoy::start_file(&path, dir.path()).await.unwrap();
    (envoy, dir)
}
